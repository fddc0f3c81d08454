#include <filesystem>
#include <system_error>

#include <nlohmann/json.hpp>

#include "args.h"
#include "cli.h"
#include "output.h"
#include "shardwise/repository.h"
#include "shardwise/names.h"

namespace shardwise::cli {

constexpr char kVerifyHelp[] = R"(Usage: shardwise verify PATH [--json] [--no-progress]

Re-read every byte of a checkpoint and check every CRC32C, every file's size
and header, and the manifest's own checksum. PATH is a checkpoint directory,
or a root: then every committed checkpoint under it is verified. Files are
read in parallel (with O_DIRECT where the filesystem supports it, so the
device is checked, not the page cache). On a terminal, progress is shown on
stderr.

Every problem is reported with the file it concerns: a flipped byte (item,
file and byte range), a missing or truncated file, a damaged manifest.

Options:
  --json         machine-readable output (schema in docs/cli.md)
  --no-progress  no progress line even on a terminal
  --help         this text

Exit codes:
  0  every checkpoint verified intact
  1  any corruption, or a missing or truncated file (each one reported), or
     no committed checkpoint to verify under PATH
  2  usage error, or PATH missing or unreadable
)";

namespace {

struct Outcome {
  std::string name, dir;
  bool ok = true;
  std::uint64_t bytes = 0, files = 0;
  double seconds = 0;
  std::vector<VerifyProblem> problems;
};

Outcome VerifyOne(const std::string& dir, const std::string& name, const Options& opts,
                  bool progress, std::ostream& err) {
  Outcome o;
  o.dir = dir;
  o.name = name;
  double t0 = MonotonicNow();
  auto reader = CheckpointReader::Open(dir, opts);
  if (!reader.ok()) {
    o.ok = false;
    // The file in the checkpoint the status names (index.swi), else the
    // manifest (also when it names the checkpoint's directory).
    auto norm = [](std::filesystem::path p) {
      p = p.lexically_normal();
      return p.has_filename() ? p : p.parent_path();  // "a/b/" is "a/b"
    };
    const std::filesystem::path where(reader.status().path());
    const bool in_dir = where.has_parent_path() && norm(where.parent_path()) == norm(dir);
    o.problems.push_back(
        {in_dir ? where.filename().string() : std::string(names::kManifest), reader.status()});
    return o;
  }
  Progress bar(err, progress, "verify " + name);
  auto report = (*reader)->Verify([&](std::uint64_t d, std::uint64_t t) { bar.Update(d, t); });
  bar.Finish();
  o.seconds = MonotonicNow() - t0;
  if (!report.ok()) {
    o.ok = false;
    o.problems.push_back({"", report.status()});
    return o;
  }
  o.bytes = report->bytes_checked;
  o.files = report->files_checked;
  o.problems = report->problems;
  o.ok = o.problems.empty();
  return o;
}

// A checkpoint that cannot be verified at all: its manifest is missing or
// damaged.
Outcome Damaged(const std::string& dir, const std::string& name, Status why) {
  Outcome o;
  o.dir = dir;
  o.name = name;
  o.ok = false;
  o.problems.push_back({std::string(names::kManifest), std::move(why)});
  return o;
}

// Verifies every committed checkpoint under the root `root`; invalid ones
// are reported damaged. An error: the root cannot be opened or listed.
Result<std::vector<Outcome>> VerifyRoot(const std::string& root, const Options& opts,
                                        bool progress, std::ostream& err) {
  auto repo = Repository::Open(root, opts, false);
  if (!repo.ok()) return repo.status();
  auto list = (*repo)->List();
  if (!list.ok()) return list.status();
  std::vector<Outcome> outcomes;
  for (const auto& c : *list) {
    std::string dir = (std::filesystem::path(root) / c.name).string();
    if (c.state == CheckpointInfo::State::kCommitted) {
      outcomes.push_back(VerifyOne(dir, c.name, opts, progress, err));
    } else if (c.state == CheckpointInfo::State::kInvalid) {
      outcomes.push_back(Damaged(dir, c.name, Corrupt(c.problem)));
    }
  }
  return outcomes;
}

void PrintVerifyJson(std::ostream& out, const std::string& path, bool all_ok,
                     const std::vector<Outcome>& outcomes) {
  using J = nlohmann::ordered_json;
  J j;
  j["path"] = path;
  j["ok"] = all_ok;
  j["checkpoints"] = J::array();
  for (const auto& o : outcomes) {
    J e = {{"name", o.name}, {"dir", o.dir}, {"ok", o.ok}, {"bytes_checked", o.bytes},
           {"files_checked", o.files}, {"seconds", o.seconds}};
    e["problems"] = J::array();
    for (const auto& p : o.problems)
      e["problems"].push_back({{"file", p.file},
                               {"code", StatusCodeName(p.status.code())},
                               {"message", p.status.message()}});
    j["checkpoints"].push_back(std::move(e));
  }
  WriteJson(out, j);
}

void PrintVerifyText(std::ostream& out, const std::string& path,
                     const std::vector<Outcome>& outcomes) {
  if (outcomes.empty()) out << "No committed checkpoints in " << path << ": nothing verified.\n";
  for (const auto& o : outcomes) {
    if (o.ok) {
      double gbs = o.seconds > 0 ? static_cast<double>(o.bytes) / o.seconds / 1e9 : 0;
      char rate[32];
      std::snprintf(rate, sizeof rate, "%.2f GB/s", gbs);
      out << "OK       " << o.name << "  " << FormatBytes(o.bytes) << " in " << o.files
          << " file(s), " << FormatSeconds(o.seconds) << " (" << rate << ")\n";
    } else {
      out << "DAMAGED  " << o.name << "  (" << o.dir << ")\n";
      for (const auto& p : o.problems) out << "  - " << p.status.message() << '\n';
    }
  }
}

}  // namespace

int RunVerify(const Argv& argv, std::ostream& out, std::ostream& err) {
  auto args = Args::Parse(argv, {{"json"}, {"no-progress"}});
  if (!args.ok()) return UsageError(err, "verify", args.status().message());
  if (args->help()) {
    out << kVerifyHelp;
    return kExitOk;
  }
  if (args->positional().size() != 1)
    return UsageError(err, "verify", "expected one PATH (a checkpoint or a root)");
  auto opts = Options::FromEnv();
  if (!opts.ok()) return UsageError(err, "verify", opts.status().message());
  std::string path = args->positional()[0];
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (ec) return UsageError(err, "verify", "stat " + path + ": " + ec.message());
  if (!fs::is_directory(st)) return UsageError(err, "verify", path + " is not a directory");
  const bool progress = !args->json() && !args->Has("no-progress") && StderrIsTty();

  // PATH is a checkpoint (it has a manifest), the remains of one (shard
  // files but no manifest), or else a root.
  bool is_checkpoint = false, has_shards = false;
  for (fs::directory_iterator it(path, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string e = it->path().filename().string();
    if (e == names::kManifest) is_checkpoint = true;
    if (names::IsShardFile(e)) has_shards = true;
  }
  if (ec) return UsageError(err, "verify", "list " + path + ": " + ec.message());
  const std::string base = fs::path(path).filename().string();
  std::vector<Outcome> outcomes;
  if (is_checkpoint) {
    outcomes.push_back(VerifyOne(path, base, *opts, progress, err));
  } else if (has_shards) {
    outcomes.push_back(Damaged(path, base,
                               Corrupt(path + "/manifest.json: missing (the directory holds "
                                              "shard files but no commit record)")));
  } else {
    auto all = VerifyRoot(path, *opts, progress, err);
    if (!all.ok()) return UsageError(err, "verify", all.status().message());
    outcomes = std::move(*all);
  }

  // Nothing to verify (a root without checkpoints, a mistyped path) is not
  // a pass: a check in a script must not succeed on it.
  bool all_ok = !outcomes.empty();
  for (const auto& o : outcomes) all_ok = all_ok && o.ok;
  if (args->json()) {
    PrintVerifyJson(out, path, all_ok, outcomes);
  } else {
    PrintVerifyText(out, path, outcomes);
  }
  return all_ok ? kExitOk : kExitProblem;
}

}  // namespace shardwise::cli
