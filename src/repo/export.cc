#include "repo/export.h"

#include <algorithm>
#include <sstream>

#include <nlohmann/json.hpp>

#include "format/manifest.h"
#include "os/posix.h"
#include "shardwise/names.h"

namespace shardwise::repo {
namespace {

constexpr double kCommandTimeoutS = 120;

std::string RecordPath(const std::string& root, const std::string& name) {
  return os::JoinPath(os::JoinPath(root, names::kExportsDir), name + ".json");
}

std::string FirstLine(const std::string& s) {
  std::string line = s.substr(0, s.find('\n'));
  return line.size() > 300 ? line.substr(0, 300) + "..." : line;
}

std::string Failure(const std::vector<std::string>& argv, const Result<os::CommandResult>& r) {
  if (!r.ok()) return r.status().message();
  return argv[0] + " " + argv[1] + " exited " + std::to_string(r->exit_code) + ": " +
         FirstLine(r->err.empty() ? r->out : r->err);
}

// The checkpoint's files, absolute paths, sorted.
Result<std::vector<std::string>> CheckpointFiles(const std::string& dir) {
  SW_ASSIGN_OR_RETURN(auto entries, os::ListDir(dir));
  std::vector<std::string> files;
  for (const auto& e : entries)
    if (e.type == DT_REG) files.push_back(os::JoinPath(dir, e.name));
  std::sort(files.begin(), files.end());
  return files;
}

// The save id in DIR's manifest, or "" where it cannot be read.
std::string SaveIdOf(const std::string& dir) {
  const std::string mpath = os::JoinPath(dir, names::kManifest);
  auto text = os::ReadSmallFile(mpath, format::kMaxManifestBytes);
  if (!text.ok()) return "";
  auto m = format::Parse(*text, format::kManifestKind, mpath);
  return m.ok() ? m->save_id : "";
}

}  // namespace


Status RequestExport(const std::string& root, const std::string& name, const Options& options,
                     std::string* request_error) {
  request_error->clear();
  if (options.export_mode == ExportMode::kOff) return Status::Ok();
  const std::string dir = os::JoinPath(root, name);
  nlohmann::ordered_json rec;
  rec["checkpoint"] = name;
  // Records are kept by name: the save id says which checkpoint of that
  // name this one is about (a later one, saved again, was not exported).
  rec["save_id"] = SaveIdOf(dir);
  rec["requested_unix"] = os::NowUnix();
  std::string error;
  if (options.export_mode == ExportMode::kFsxTask) {
    rec["mode"] = "fsx-task";
    std::string mount = options.fsx_mount;
    while (mount.size() > 1 && mount.back() == '/') mount.pop_back();
    if (options.fsx_id.empty() || mount.empty()) {
      error = "SHARDWISE_FSX_ID and SHARDWISE_FSX_MOUNT must both be set for fsx-task exports";
    } else if (dir.rfind(mount + "/", 0) != 0) {
      error = "checkpoint " + dir + " is not under SHARDWISE_FSX_MOUNT " + mount;
    } else {
      std::string rel = dir.substr(mount.size() + 1);
      rec["file_system_id"] = options.fsx_id;
      rec["path"] = rel;
      std::vector<std::string> argv = {"aws", "fsx", "create-data-repository-task",
                                       "--file-system-id", options.fsx_id,
                                       "--type", "EXPORT_TO_REPOSITORY", "--paths", rel,
                                       "--report", "Enabled=false", "--output", "json"};
      auto r = os::RunCommand(argv, kCommandTimeoutS);
      if (!r.ok() || r->exit_code != 0) {
        error = Failure(argv, r);
      } else {
        auto j = nlohmann::json::parse(r->out, nullptr, false);
        if (j.is_discarded() || !j.contains("DataRepositoryTask") ||
            !j["DataRepositoryTask"].contains("TaskId") ||
            !j["DataRepositoryTask"]["TaskId"].is_string())
          error = "aws fsx create-data-repository-task printed no task id: " + FirstLine(r->out);
        else
          rec["task_id"] = j["DataRepositoryTask"]["TaskId"];
      }
    }
  } else {
    rec["mode"] = "hsm";
    auto files = CheckpointFiles(dir);
    if (!files.ok()) {
      error = files.status().message();
    } else {
      std::vector<std::string> argv = {"lfs", "hsm_archive"};
      argv.insert(argv.end(), files->begin(), files->end());
      auto r = os::RunCommand(argv, kCommandTimeoutS);
      if (!r.ok() || r->exit_code != 0) error = Failure(argv, r);
      rec["files"] = *files;
    }
  }
  rec["error"] = error.empty() ? nlohmann::ordered_json(nullptr) : nlohmann::ordered_json(error);
  *request_error = error;
  SW_RETURN_IF_ERROR(os::MkdirAll(os::JoinPath(root, names::kExportsDir)));
  return os::WriteFileAtomic(RecordPath(root, name), rec.dump(2) + "\n", "export record");
}

ExportStatus QueryExport(const std::string& root, const std::string& name) {
  ExportStatus st;
  auto text = os::ReadSmallFile(RecordPath(root, name), 1 << 20);
  if (!text.ok()) return st;  // no record: not requested
  auto rec = nlohmann::json::parse(*text, nullptr, false);
  auto str = [&](const char* k) {
    return rec.contains(k) && rec[k].is_string() ? rec[k].get<std::string>() : std::string();
  };
  if (rec.is_discarded() || !rec.is_object()) {
    st.state = ExportState::kFailed;
    st.detail = "unreadable export record " + RecordPath(root, name);
    return st;
  }
  if (!str("save_id").empty() && str("save_id") != SaveIdOf(os::JoinPath(root, name))) {
    st.detail = "the export record is of an earlier checkpoint of that name";
    return st;  // not requested for this one
  }
  if (!str("error").empty()) {
    st.state = ExportState::kFailed;
    st.detail = str("error");
    return st;
  }
  if (str("mode") == "fsx-task") {
    std::vector<std::string> argv = {"aws", "fsx", "describe-data-repository-tasks",
                                     "--task-ids", str("task_id"), "--output", "json"};
    auto r = os::RunCommand(argv, kCommandTimeoutS);
    st.detail = str("task_id");
    if (!r.ok() || r->exit_code != 0) {
      st.state = ExportState::kPending;  // cannot tell now; the request stands
      st.detail += " (state unknown: " + Failure(argv, r) + ")";
      return st;
    }
    auto j = nlohmann::json::parse(r->out, nullptr, false);
    std::string life;
    if (!j.is_discarded() && j.contains("DataRepositoryTasks") &&
        j["DataRepositoryTasks"].is_array() && !j["DataRepositoryTasks"].empty() &&
        j["DataRepositoryTasks"][0].contains("Lifecycle") &&
        j["DataRepositoryTasks"][0]["Lifecycle"].is_string())
      life = j["DataRepositoryTasks"][0]["Lifecycle"].get<std::string>();
    if (life == "SUCCEEDED") {
      st.state = ExportState::kExported;
    } else if (life == "FAILED" || life == "CANCELED") {
      st.state = ExportState::kFailed;
      st.detail += " " + life;
      const auto& t = j["DataRepositoryTasks"][0];
      if (t.contains("FailureDetails") && t["FailureDetails"].contains("Message"))
        st.detail += ": " + t["FailureDetails"]["Message"].get<std::string>();
    } else {
      st.state = ExportState::kPending;
      st.detail += life.empty() ? " (no lifecycle reported)" : " " + life;
    }
    return st;
  }
  // hsm: every file must be archived.
  std::vector<std::string> argv = {"lfs", "hsm_state"};
  if (rec.contains("files") && rec["files"].is_array())
    for (const auto& f : rec["files"])
      if (f.is_string()) argv.push_back(f.get<std::string>());
  auto r = os::RunCommand(argv, kCommandTimeoutS);
  if (!r.ok() || r->exit_code != 0) {
    st.state = ExportState::kPending;
    st.detail = "state unknown: " + Failure(argv, r);
    return st;
  }
  std::size_t files = argv.size() - 2, archived = 0;
  std::istringstream lines(r->out);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.find(" lost") != std::string::npos) {
      st.state = ExportState::kFailed;
      st.detail = "lost in the archive: " + FirstLine(line);
      return st;
    }
    if (line.find(" archived") != std::string::npos) ++archived;
  }
  st.state = archived == files && files > 0 ? ExportState::kExported : ExportState::kPending;
  st.detail = std::to_string(archived) + "/" + std::to_string(files) + " files archived";
  return st;
}

void RemoveExportRecord(const std::string& root, const std::string& name) {
  (void)os::Unlink(RecordPath(root, name));
}

}  // namespace shardwise::repo
