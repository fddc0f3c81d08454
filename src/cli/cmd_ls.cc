#include <nlohmann/json.hpp>

#include "args.h"
#include "cli.h"
#include "output.h"
#include "shardwise/repository.h"

namespace shardwise::cli {

constexpr char kLsHelp[] = R"(Usage: shardwise ls ROOT [--json]

List the checkpoints under ROOT.

Committed checkpoints are shown oldest first with their step, commit time
(UTC), number of ranks, size and whether `latest` names them. Below them,
staging directories: saves in progress ("active") or abandoned by a crash
("abandoned", removed by `shardwise gc`), and leftovers of replaced or
deleted checkpoints. A directory whose manifest is damaged is listed as
"invalid" with the reason.

When exports to S3 are requested (SHARDWISE_EXPORT, docs/lustre.md), or any
checkpoint has an export record, an EXPORT column shows each checkpoint's
export state: not requested, pending, exported or failed (asked of `aws fsx
describe-data-repository-tasks` or `lfs hsm_state`).

Options:
  --json    machine-readable output (schema in docs/cli.md)
  --help    this text

Exit codes: 0 listed; 2 ROOT missing or unreadable.
)";

namespace {

using Json = nlohmann::ordered_json;

// A committed or invalid checkpoint, as `ls --json` lists it.
Json CheckpointJson(const CheckpointInfo& c) {
  Json e;
  e["name"] = c.name;
  e["state"] = CheckpointStateName(c.state);
  e["step"] = c.step >= 0 ? Json(c.step) : nullptr;
  e["time_unix"] = c.created_unix;
  e["world_size"] = c.world_size;
  e["bytes"] = c.bytes;
  e["items"] = c.items;
  e["save_id"] = c.save_id;
  e["latest"] = c.is_latest;
  e["problem"] = c.problem.empty() ? nullptr : Json(c.problem);
  const ExportInfo ex = c.export_info.value_or(ExportInfo{});
  e["export"] = {{"state", ExportStateName(ex.state)},
                 {"detail", ex.detail.empty() ? Json(nullptr) : Json(ex.detail)}};
  return e;
}

// A staging directory or leftover, as `ls --json` lists it.
Json StagingJson(const CheckpointInfo& c, double now) {
  Json e;
  e["dir"] = c.dir_name;
  e["name"] = c.name;
  e["state"] = CheckpointStateName(c.state);
  e["save_id"] = c.save_id;
  e["active"] = c.active;
  e["age_s"] = now - c.created_unix;
  return e;
}

void PrintLsJson(std::ostream& out, const Repository& repo,
                 const std::vector<CheckpointInfo>& list, double now) {
  Json j;
  j["root"] = repo.root();
  auto latest = repo.Latest();
  j["latest"] = latest.ok() && *latest ? Json(**latest) : nullptr;
  j["checkpoints"] = Json::array();
  j["staging"] = Json::array();
  for (const auto& c : list) {
    if (c.state == CheckpointInfo::State::kCommitted ||
        c.state == CheckpointInfo::State::kInvalid) {
      j["checkpoints"].push_back(CheckpointJson(c));
    } else {
      j["staging"].push_back(StagingJson(c, now));
    }
  }
  WriteJson(out, j);
}

// The human-readable listing: checkpoints, then the notes on invalid ones
// and failed exports, then staging directories. The EXPORT column appears
// only when `exports`.
void PrintLsTable(std::ostream& out, const Repository& repo,
                  const std::vector<CheckpointInfo>& list, bool exports, double now) {
  std::vector<std::vector<std::string>> rows = {
      {"NAME", "STEP", "TIME (UTC)", "RANKS", "SIZE", "LATEST"}};
  std::vector<std::vector<std::string>> staging = {{"DIRECTORY", "STATE", "AGE"}};
  std::vector<std::string> invalid, export_notes;
  if (exports) rows[0].push_back("EXPORT");
  for (const auto& c : list) {
    switch (c.state) {
      case CheckpointInfo::State::kCommitted: {
        rows.push_back({c.name, c.step >= 0 ? std::to_string(c.step) : "-",
                        FormatTime(c.created_unix), std::to_string(c.world_size),
                        FormatBytes(c.bytes), c.is_latest ? "*" : ""});
        if (exports) {
          const ExportInfo ex = c.export_info.value_or(ExportInfo{});
          rows.back().push_back(std::string(ExportStateName(ex.state)));
          if (ex.state == ExportState::kFailed)
            export_notes.push_back(c.name + ": export failed: " + ex.detail);
        }
        break;
      }
      case CheckpointInfo::State::kInvalid:
        rows.push_back({c.name, "?", "-", "-", "-", "INVALID"});
        if (exports) rows.back().push_back("-");
        invalid.push_back(c.name + ": " + c.problem);
        break;
      case CheckpointInfo::State::kStaging:
        staging.push_back({c.dir_name, c.active ? "active" : "abandoned",
                           FormatSeconds(now - c.created_unix)});
        break;
      case CheckpointInfo::State::kLeftover:
        staging.push_back({c.dir_name, "leftover", FormatSeconds(now - c.created_unix)});
        break;
    }
  }
  if (rows.size() == 1) {
    out << "No committed checkpoints in " << repo.root() << ".\n";
  } else {
    PrintTable(out, rows, {1, 3, 4});
  }
  for (const auto& line : invalid) out << "invalid: " << line << '\n';
  for (const auto& line : export_notes) out << line << '\n';
  if (staging.size() > 1) {
    out << "\nStaging and leftovers (not checkpoints; `shardwise gc` removes abandoned ones):\n";
    PrintTable(out, staging, {2});
  }
}

}  // namespace

int RunLs(const Argv& argv, std::ostream& out, std::ostream& err) {
  auto args = Args::Parse(argv, {{"json"}});
  if (!args.ok()) return UsageError(err, "ls", args.status().message());
  if (args->help()) {
    out << kLsHelp;
    return kExitOk;
  }
  if (args->positional().size() != 1) return UsageError(err, "ls", "expected one ROOT");
  const std::string root = args->positional()[0];
  if (int rc = CheckpointGivenAsRoot(err, "ls", root); rc >= 0) return rc;
  auto opts = Options::FromEnv();
  if (!opts.ok()) return UsageError(err, "ls", opts.status().message());
  auto repo = Repository::Open(root, *opts, /*create=*/false);
  if (!repo.ok()) return PathError(err, "ls", repo.status().message());
  const bool exports = (*repo)->ExportsInUse();
  // JSON always reports export states (not requested, when none was).
  auto list = (*repo)->List(/*with_exports=*/exports || args->json());
  if (!list.ok()) return PathError(err, "ls", list.status().message());

  const double now = UnixNow();
  if (args->json()) {
    PrintLsJson(out, **repo, *list, now);
  } else {
    PrintLsTable(out, **repo, *list, exports, now);
  }
  return kExitOk;
}

}  // namespace shardwise::cli
