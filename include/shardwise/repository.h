// A checkpoint repository: a root directory holding committed checkpoints,
// staging directories of saves in progress, and `latest`. The commit
// protocol (docs/format.md, "Commit protocol") makes a checkpoint either
// complete and durable or invisible.
//
// Multi-rank saves need no network: every rank calls WriteRank (its shard and
// a fragment land in the save's staging directory), the coordinator calls
// Commit (it waits for every fragment, then commits), and the others may call
// WaitCommitted. All ranks must pass the same SaveSpec; save_id names the
// attempt, so a restarted job (new save_id) never mixes with a dead one.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "shardwise/options.h"
#include "shardwise/reader.h"
#include "shardwise/status.h"
#include "shardwise/types.h"

namespace shardwise {
namespace fs {
class Placement;  // internal (src/fs)
}
namespace engine {
struct ShardTarget;  // internal (src/engine)
}

struct SaveSpec {
  std::string name;          // empty: "step-%012d" of step
  std::int64_t step = -1;    // >= 0, or -1: none, or the one a "step-%012d" name names
  std::string save_id;       // [A-Za-z0-9_-]{1,64}; empty: random (1 rank only)
  std::int32_t world_size = 1;
  std::int32_t rank = 0;
  bool replace = false;      // allow replacing a committed checkpoint
  std::string user_json = "{}";  // metadata stored in the manifest
  std::string dcp_json;          // DCP planner data, or empty
  // A collective carries each rank's index to the coordinator (DCP gathers
  // RankResult::index in WriteResult.storage_data), which commits with
  // CommitGathered: ranks write no fragment files and nobody polls the
  // staging directory. false: the filesystem protocol (fragments, Commit).
  bool gathered = false;
};

struct RankResult {
  std::string shard_path;
  std::uint64_t bytes = 0;  // file size, header and padding included
  double seconds = 0;       // write + fsync
  std::string backend;
  bool direct_io = false;
  // Tensor bytes copied into I/O buffers; 0 when every tensor was written
  // straight from staging memory (StagingLease).
  std::uint64_t copied_bytes = 0;
  // With SaveSpec::gathered: this rank's shard index, binary (docs/format.md,
  // "Rank index"), for the coordinator's CommitGathered.
  std::string index;
};

struct CommitResult {
  std::string name;
  std::string dir;
  std::uint64_t bytes = 0;
  bool latest_updated = false;
  // Set when `latest` (a hint: docs/format.md) could not be updated after
  // the commit point; the checkpoint is committed and durable regardless.
  std::string latest_error;
  // Set when an export was requested (Options::export_mode) and the request
  // failed; the checkpoint is committed regardless.
  std::string export_error;
};

// The S3 export of a committed checkpoint (docs/lustre.md).
enum class ExportState { kNotRequested, kPending, kExported, kFailed };
std::string_view ExportStateName(ExportState state);  // "not requested", "pending", ...
struct ExportInfo {
  ExportState state = ExportState::kNotRequested;
  std::string detail;  // task id, failure reason, ...
};

struct CheckpointInfo {
  enum class State {
    kCommitted,  // has a valid manifest
    kInvalid,    // looks committed but its manifest is unreadable
    kStaging,    // a save in progress, or abandoned (see active)
    kLeftover,   // a replaced or half-deleted directory awaiting gc
  };
  State state = State::kCommitted;
  std::string name;      // checkpoint name (for staging: the target name)
  std::string dir_name;  // entry name under the root
  std::int64_t step = -1;
  std::int32_t world_size = 0;
  std::uint64_t bytes = 0;
  double created_unix = 0;  // committed: manifest; others: newest mtime
  std::string save_id;
  std::size_t items = 0;
  bool is_latest = false;
  bool active = false;      // staging: a live process holds it or it is fresh
  std::string problem;      // kInvalid: why
  // Committed, and listed with exports: its export state (asks aws or lfs
  // when a request is pending).
  std::optional<ExportInfo> export_info;
};
std::string_view CheckpointStateName(CheckpointInfo::State state);

struct GcOptions {
  std::optional<int> keep_last;     // keep the N newest committed
  std::optional<int> keep_every;    // keep those whose step % K == 0
  bool dry_run = false;
  bool full_verify = false;  // verify the newest checkpoint's data, not only
                             // its manifest, sizes and headers
  std::optional<double> staging_grace_s;  // overrides Options
};

struct GcReport {
  std::vector<std::string> removed_staging;      // entry names
  std::vector<std::string> removed_checkpoints;  // checkpoint names
  std::vector<std::string> kept;
  // Kept only because their export to S3 is not done yet
  // (Options::retention_requires_export).
  std::vector<std::string> kept_unexported;
  std::string newest_valid;  // the checkpoint retention was anchored on
  bool dry_run = false;
  // What could not be removed (or put back), each with why. gc goes on past
  // them: one entry it cannot remove does not stop retention. Non-empty
  // means gc did not finish its work (the CLI exits 1).
  std::vector<std::string> errors;
};

// Where the shard files of a save go on a root, and how they are written:
// what the root's filesystem and the options decide (docs/lustre.md;
// docs/cpp-api.md, "I/O mode").
struct StorageReport {
  std::string filesystem;     // "ext4", "tmpfs", "lustre", ... or "0x<magic>"
  bool lustre = false;
  bool layout_applied = false;
  std::string layout_reason;  // on Lustre with layouts on: the policy's reason
  int stripe_count = 0;       // when applied
  std::uint64_t stripe_size = 0;
  bool direct_writes = false;  // O_DIRECT
  bool direct_reads = false;
  bool io_measured = false;    // decided by a measurement on this root
  std::string io_why;
  std::string summary;         // one line saying all of the above
};

class Repository {
 public:
  // Opens ROOT (creating it when `create`).
  static Result<std::unique_ptr<Repository>> Open(const std::string& root,
                                                  const Options& options = {},
                                                  bool create = true);
  ~Repository();

  const std::string& root() const;
  const Options& options() const;

  // Every rank: writes its items as one shard into the staging directory,
  // fsyncs it and leaves its fragment. On failure, leaves a failure marker
  // so the coordinator stops waiting. `released`, when given, is called once
  // the items' memory is no longer read (every byte copied into I/O buffers
  // or written), before the last writes and the fsync complete, or when the
  // write fails: a caller streaming from live memory may let it change then.
  Result<RankResult> WriteRank(const SaveSpec& spec, std::span<const WriteItem> items,
                               const std::function<void()>& released = {});
  // The coordinator: waits (up to options.commit_timeout_s) for every rank's
  // fragment, then commits. Returns only once the checkpoint is durable.
  Result<CommitResult> Commit(const SaveSpec& spec);
  // The coordinator of a gathered save (SaveSpec::gathered): commits from
  // every rank's RankResult::index (indexes[r]: rank r's; empty for a rank
  // that wrote nothing), once the collective has them all. The same commit
  // protocol as Commit from step 3 on; a damaged or foreign index is
  // kCorrupt naming the rank.
  Result<CommitResult> CommitGathered(const SaveSpec& spec, std::span<const std::string> indexes);
  // Any rank: waits until the coordinator committed this save.
  Status WaitCommitted(const SaveSpec& spec, double timeout_s);
  // Any rank: records that this rank failed, so Commit aborts promptly.
  Status ReportFailure(const SaveSpec& spec, const Status& why);
  // One process, world_size 1: WriteRank + Commit.
  Result<CommitResult> Save(SaveSpec spec, std::span<const WriteItem> items);

  // Committed checkpoints (oldest first), then staging and leftovers.
  // `with_exports`: each committed one also gets its export_info.
  Result<std::vector<CheckpointInfo>> List(bool with_exports = false) const;
  // Whether exports matter here: requested by the options, or recorded.
  bool ExportsInUse() const;
  // The newest committed checkpoint (highest step, then newest commit), or
  // nullopt. ROOT/latest names the same one except after a crash between a
  // commit's rename and its update of `latest`; tools may read either.
  Result<std::optional<std::string>> Latest() const;
  Result<std::unique_ptr<CheckpointReader>> OpenCheckpoint(const std::string& name) const;

  // Deletes the committed checkpoint NAME (and its export record). It
  // vanishes atomically: a crash midway leaves a hidden leftover that gc
  // removes, never a partial checkpoint. When `latest` names it, `latest`
  // first moves to the newest remaining checkpoint (or goes). Claims the
  // root for writing (LockForWriting). NotFound when NAME is not committed;
  // CORRUPT when NAME is a checkpoint directory whose manifest does not
  // check out, unless `damaged_too` (then it is removed the same way: for
  // callers told to remove everything of some steps, as discard_after is).
  Status Delete(const std::string& name, bool damaged_too = false);

  // Installs a copy of a committed checkpoint made in another root (a
  // partner node's replica of a local checkpoint, docs/tiers.md): FILES are
  // its files by name (flat, safe names). They are written into a hidden
  // staging directory and fsynced, every checksum is verified over FILES'
  // bytes (sizes, headers and metadata are read from the written files:
  // CheckpointReader::VerifyCopy), and the
  // directory is renamed to NAME atomically, never over an existing one
  // (kAlreadyExists); then the root is fsynced. A copy that fails
  // verification is refused (kCorrupt, naming the file) and leaves nothing.
  // Claims the root for writing.
  Status Install(const std::string& name,
                 const std::vector<std::pair<std::string, std::string_view>>& files);

  // Removes abandoned staging directories and leftovers, and applies
  // retention. Never removes what `latest` names, anything newer than the
  // newest valid checkpoint, or a save still in progress.
  Result<GcReport> Gc(const GcOptions& gc);

  // Claims ROOT for this job: one job writes a root at a time. Commit and
  // retention call it; a job's coordinator may call it at start to fail
  // early. Fails (kAborted, naming the holder) while another process holds
  // the root; the claim ends when every Repository of this process on ROOT
  // is gone, or the process exits.
  Status LockForWriting();

  // One line about where shard files go: the filesystem, and whether (and
  // how) Lustre layouts are applied, or why not (docs/lustre.md). Probes the
  // root on first use.
  std::string FilesystemSummary();
  // The same, in fields, for a save of `files` shard files of
  // `bytes_per_file` each (the Lustre layout depends on both).
  Result<StorageReport> DescribeStorage(int files, std::uint64_t bytes_per_file);

  // Fills spec.name and spec.save_id defaults and checks the spec. A name
  // of the form StepName gives ("step-000000001000") sets a step of -1 to
  // the one it names, and refuses any other step.
  static Status Normalize(SaveSpec& spec);
  static std::string StepName(std::int64_t step);
  // The step a name such as StepName gives names ("step-000000001000":
  // 1000), or nullopt for any other name.
  static std::optional<std::int64_t> StepOfName(std::string_view name);
  std::string StagingDir(const SaveSpec& spec) const;
  // Whether a save may publish the checkpoint directory `dir` (ROOT/NAME):
  // nothing is there, or, with `replace`, a checkpoint (a directory holding
  // manifest.json, or a stock DCP checkpoint's .metadata), the remains of a
  // save that never committed (only shard, index.swi or .distcp files) or
  // an empty directory. Anything else is never replaced, replace or not (a checkpoint
  // root given as a checkpoint, a file, a link): kAlreadyExists saying what
  // is there. Every save checks it before it writes and again as it commits.
  static Status CheckTarget(const std::string& dir, bool replace);

 private:
  friend class AsyncSaver;
  friend void SetPlacementForTesting(Repository&, std::unique_ptr<fs::Placement>);
  // Writes this rank's shard through `write_shard(shard_path, direct_io)`
  // inside the staging protocol (directory, lock, fragment, failure marker).
  // `index` is an engine::ShardIndex* to fill; the target says where the
  // shard goes and how it is written (the root's I/O mode). Internal; used
  // by WriteRank and AsyncSaver.
  Result<RankResult> WriteRankWith(
      const SaveSpec& spec,
      const std::function<Status(const engine::ShardTarget& target, void* index)>& write_shard);
  Result<CommitResult> CommitNormalized(const SaveSpec& spec);
  void RequestExportFor(CommitResult& result);  // Options::export_mode after a commit
  struct Impl;
  explicit Repository(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace shardwise
