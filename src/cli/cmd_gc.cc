#include <nlohmann/json.hpp>

#include "args.h"
#include "cli.h"
#include "output.h"
#include "shardwise/names.h"
#include "shardwise/repository.h"

namespace shardwise::cli {

constexpr char kGcHelp[] = R"(Usage: shardwise gc ROOT [--keep-last N] [--keep-every K] [--dry-run]
                       [--grace SECONDS] [--verify] [--json]

Clean up a checkpoint root.

Always: remove staging directories of saves that were abandoned (a crash or a
killed job). A staging directory counts as abandoned only when no process
holds its lock and nothing in it changed for the grace period (default 900 s,
SHARDWISE_STAGING_GRACE_S), so a save still in progress is never touched.
Leftovers of replaced or interrupted deletions are removed too.

With --keep-last and/or --keep-every: retention. A committed checkpoint is
kept when it is among the N newest, or its step is a multiple of K, or
`latest` names it, or it is not older than the newest valid checkpoint (its
manifest, file sizes and headers check out; with --verify, every checksum
too). Everything else is deleted: first renamed out of sight, then removed.
If no checkpoint is valid, nothing is deleted.

Only the job that writes ROOT may delete there: while another job holds
ROOT/.writer.lock, gc (except --dry-run) refuses, names that job and removes
nothing; so it does where it cannot take that lock at all. The job's own
retention cleans up while it runs.

Options:
  --keep-last N     keep the N newest committed checkpoints (N >= 1), counted
                    from the newest valid one
  --keep-every K    also keep checkpoints whose step is a multiple of K
  --dry-run         report what would be removed; change nothing
  --grace SECONDS   staging directories younger than this are kept
  --verify          verify all data of the newest checkpoint before deleting
  --json            machine-readable output (schema in docs/cli.md)
  --help            this text

Exit codes: 0 done; 1 a removal failed, or another job writes ROOT; 2 usage error
or ROOT unreadable.
)";

int RunGc(const Argv& argv, std::ostream& out, std::ostream& err) {
  auto args = Args::Parse(argv, {{"json"}, {"dry-run"}, {"verify"},
                                 {"keep-last", true}, {"keep-every", true}, {"grace", true}});
  if (!args.ok()) return UsageError(err, "gc", args.status().message());
  if (args->help()) {
    out << kGcHelp;
    return kExitOk;
  }
  if (args->positional().size() != 1) return UsageError(err, "gc", "expected one ROOT");
  GcOptions gc;
  auto keep_last = args->GetInt("keep-last", 1, 1 << 30);
  auto keep_every = args->GetInt("keep-every", 1, 1 << 30);
  auto grace = args->GetDouble("grace", 0);
  for (const Status* s : {&keep_last.status(), &keep_every.status(), &grace.status()})
    if (!s->ok()) return UsageError(err, "gc", s->message());
  if (*keep_last) gc.keep_last = static_cast<int>(**keep_last);
  if (*keep_every) gc.keep_every = static_cast<int>(**keep_every);
  if (*grace) gc.staging_grace_s = **grace;
  if (int rc = CheckpointGivenAsRoot(err, "gc", args->positional()[0]); rc >= 0) return rc;
  gc.dry_run = args->Has("dry-run");
  gc.full_verify = args->Has("verify");
  auto opts = Options::FromEnv();
  if (!opts.ok()) return UsageError(err, "gc", opts.status().message());
  auto repo = Repository::Open(args->positional()[0], *opts, false);
  if (!repo.ok()) return PathError(err, "gc", repo.status().message());
  auto report = (*repo)->Gc(gc);
  if (!report.ok()) {
    err << "shardwise gc: " << report.status().message() << '\n';
    return kExitProblem;
  }
  if (args->json()) {
    nlohmann::ordered_json j;
    j["root"] = (*repo)->root();
    j["dry_run"] = report->dry_run;
    j["removed_staging"] = report->removed_staging;
    j["removed_checkpoints"] = report->removed_checkpoints;
    j["kept"] = report->kept;
    j["kept_unexported"] = report->kept_unexported;
    j["newest_valid"] = report->newest_valid.empty()
                            ? nlohmann::ordered_json(nullptr)
                            : nlohmann::ordered_json(report->newest_valid);
    j["errors"] = report->errors;
    WriteJson(out, j);
    return report->errors.empty() ? kExitOk : kExitProblem;
  }
  const char* verb = report->dry_run ? "would remove" : "removed";
  for (const auto& s : report->removed_staging)
    out << verb << (s == names::kRecycleDir ? " recycle bin  " : " staging  ") << s << '\n';
  for (const auto& s : report->removed_checkpoints) out << verb << " checkpoint  " << s << '\n';
  for (const auto& s : report->kept_unexported)
    out << "kept  " << s << "  (not exported to S3 yet; SHARDWISE_RETENTION_REQUIRES_EXPORT)\n";
  out << (report->dry_run ? "dry run: " : "") << report->removed_staging.size()
      << " staging/leftover entr" << (report->removed_staging.size() == 1 ? "y" : "ies")
      << " and " << report->removed_checkpoints.size() << " checkpoint(s) "
      << (report->dry_run ? "would be removed" : "removed") << "; " << report->kept.size()
      << " checkpoint(s) kept.\n";
  for (const auto& e : report->errors) err << "shardwise gc: could not remove: " << e << '\n';
  if (!report->errors.empty())
    err << "shardwise gc: " << report->errors.size()
        << " entr" << (report->errors.size() == 1 ? "y" : "ies")
        << " left in place (above); the rest was done\n";
  return report->errors.empty() ? kExitOk : kExitProblem;
}

}  // namespace shardwise::cli
