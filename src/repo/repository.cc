// Repository basics: opening, naming, and the per-rank write.
// The commit protocol itself is in commit.cc; listing in listing.cc; gc and
// retention in gc.cc.
#include <fcntl.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdio>

#include "engine/shard_writer.h"
#include "format/manifest.h"
#include "format/rank_index.h"
#include "os/fault.h"
#include "os/posix.h"
#include "repo/repository_impl.h"
#include "shardwise/names.h"

namespace shardwise {
namespace repo {

}  // namespace repo

Result<Repository::Impl::BackendLease> Repository::Impl::Backend() {
  std::unique_ptr<io::IoBackend> b;
  std::vector<std::unique_ptr<io::IoBackend>> stale;  // freed outside the lock
  {
    std::lock_guard lock(backend_mu);
    while (!b && !idle_backends.empty()) {
      b = std::move(idle_backends.back());
      idle_backends.pop_back();
      // A forked child cannot use its parent's rings: it makes its own.
      if (!b->usable()) stale.push_back(std::move(b));
    }
  }
  if (!b) {
    SW_ASSIGN_OR_RETURN(b, io::MakeIoBackend(options));
  }
  return BackendLease(b.release(), [this](io::IoBackend* done) {
    if (!done->usable()) {  // a broken ring is never handed out again
      delete done;
      return;
    }
    std::lock_guard lock(backend_mu);
    idle_backends.emplace_back(done);
  });
}

fs::Placement* Repository::Impl::Placement() {
  std::lock_guard lock(placement_mu);
  if (!placement) placement = fs::Placement::ForDirectory(root, options);
  return placement.get();
}

const fs::Placement* Repository::Impl::PlacementIfProbed() {
  std::lock_guard lock(placement_mu);
  return placement.get();
}

std::string Repository::FilesystemSummary() { return impl_->Placement()->Summary(); }

Result<StorageReport> Repository::DescribeStorage(int files, std::uint64_t bytes_per_file) {
  if (files < 1) return InvalidArgument("DescribeStorage: files must be >= 1");
  fs::Placement* placement = impl_->Placement();
  const Options& opts = impl_->options;
  StorageReport r;
  r.filesystem = placement->fs().type;
  r.lustre = placement->fs().lustre;
  r.summary = placement->Summary();
  if (r.lustre && opts.layout != LayoutMode::kOff) {
    const fs::LayoutDecision d = fs::DecideLayout(
        {files, bytes_per_file, placement->fs().ost_count, opts.stripe_count, opts.stripe_size});
    r.layout_applied = d.apply;
    r.layout_reason = d.reason;
    if (d.apply) {
      r.stripe_count = d.layout.stripe_count;
      r.stripe_size = d.layout.stripe_size;
      r.summary += "; shard files: " + std::to_string(d.layout.stripe_count) +
                   " stripe(s) of " + FormatBytes(d.layout.stripe_size) + " (" +
                   d.reason + ")";
    } else {
      r.summary += "; " + d.reason;
    }
  }
  SW_ASSIGN_OR_RETURN(const fs::IoMode& mode, placement->io_mode());
  r.direct_writes = mode.direct_writes;
  r.direct_reads = mode.direct_reads;
  r.io_measured = mode.measured;
  r.io_why = mode.why;
  return r;
}

Status Repository::LockForWriting() {
  std::lock_guard lock(impl_->writer_mu);
  if (impl_->writer_lock) return Status::Ok();
  SW_ASSIGN_OR_RETURN(impl_->writer_lock, repo::WriterLock::Acquire(impl_->root));
  return Status::Ok();
}

void SetPlacementForTesting(Repository& repo, std::unique_ptr<fs::Placement> placement) {
  std::lock_guard lock(repo.impl_->placement_mu);
  repo.impl_->placement = std::move(placement);
}

std::string_view CheckpointStateName(CheckpointInfo::State state) {
  switch (state) {
    case CheckpointInfo::State::kCommitted: return "committed";
    case CheckpointInfo::State::kInvalid: return "invalid";
    case CheckpointInfo::State::kStaging: return "staging";
    case CheckpointInfo::State::kLeftover: return "leftover";
  }
  return "unknown";
}

Repository::Repository(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Repository::~Repository() = default;
const std::string& Repository::root() const { return impl_->root; }
const Options& Repository::options() const { return impl_->options; }

Result<std::unique_ptr<Repository>> Repository::Open(const std::string& root,
                                                     const Options& options, bool create) {
  SW_RETURN_IF_ERROR(options.Validate());
  if (root.empty()) return InvalidArgument("empty repository root");
  std::string r = root;
  while (r.size() > 1 && r.back() == '/') r.pop_back();
  if (create) SW_RETURN_IF_ERROR(os::MkdirAll(r));
  auto st = os::Stat(r);
  if (!st.ok()) return st.status().WithContext("open repository");
  if (!S_ISDIR(st->st_mode)) return InvalidArgument(r + " is not a directory", r);
  auto impl = std::make_unique<Impl>();
  impl->root = r;
  impl->options = options;
  // On Lustre, writes are cut at stripe boundaries: the I/O unit must be a
  // multiple or a divisor of the stripe size (docs/lustre.md).
  if (options.layout != LayoutMode::kOff && fs::IsLustre(r)) {
    impl->options.io_unit_bytes = fs::AlignIoUnit(
        options.io_unit_bytes, options.stripe_size ? options.stripe_size : fs::kDefaultStripeSize,
        options.checksum_block_bytes);
  }
  return std::unique_ptr<Repository>(new Repository(std::move(impl)));
}

std::string Repository::StepName(std::int64_t step) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "step-%012lld", static_cast<long long>(step));
  return buf;
}

std::optional<std::int64_t> Repository::StepOfName(std::string_view name) {
  constexpr std::string_view kPrefix = "step-";
  if (name.size() <= kPrefix.size() || name.substr(0, kPrefix.size()) != kPrefix ||
      name.size() > kPrefix.size() + 18)
    return std::nullopt;
  std::int64_t step = 0;
  for (char c : name.substr(kPrefix.size())) {
    if (c < '0' || c > '9') return std::nullopt;
    step = step * 10 + (c - '0');
  }
  // Only the name StepName gives: "step-7" or "step-0000000000007" name no step.
  if (StepName(step) != name) return std::nullopt;
  return step;
}

Status Repository::Normalize(SaveSpec& spec) {
  if (spec.step < -1) return InvalidArgument("step must be >= 0 (or -1 for none)");
  if (spec.name.empty()) {
    if (spec.step < 0) return InvalidArgument("a save needs a name or a step");
    spec.name = StepName(spec.step);
  }
  // A checkpoint named as a step's (what DCP users pass as the path) is that
  // step's: listings, `latest` and retention order checkpoints by step.
  if (const auto named = StepOfName(spec.name)) {
    if (spec.step < 0) spec.step = *named;
    if (spec.step != *named)
      return InvalidArgument("checkpoint name '" + spec.name + "' is the name of step " +
                             std::to_string(*named) + ", but the save's step is " +
                             std::to_string(spec.step));
  }
  if (!names::IsSafeName(spec.name) || spec.name == names::kLatest)
    return InvalidArgument("checkpoint name '" + spec.name +
                           "' must match [A-Za-z0-9._=-]+, not start with '.', and not "
                           "be 'latest'");
  if (spec.world_size < 1 || spec.world_size > format::kMaxWorldSize)
    return InvalidArgument("world_size must be in [1, 2^20]");
  if (spec.rank < 0 || spec.rank >= spec.world_size)
    return InvalidArgument("rank " + std::to_string(spec.rank) + " is outside [0, " +
                           std::to_string(spec.world_size) + ")");
  if (spec.save_id.empty()) {
    // Ranks of one save must agree on the id; only a lone rank may draw it.
    if (spec.world_size != 1)
      return InvalidArgument("a save with several ranks needs a save_id shared by all ranks");
    spec.save_id = os::RandomHex(8);
  }
  if (!names::IsSafeSaveId(spec.save_id))
    return InvalidArgument("save_id '" + spec.save_id + "' must match [A-Za-z0-9_-]{1,64}");
  if (spec.user_json.empty()) spec.user_json = "{}";
  return Status::Ok();
}

std::string Repository::StagingDir(const SaveSpec& spec) const {
  return os::JoinPath(impl_->root, names::HiddenDir(spec.name, names::Hidden::kStaging, spec.save_id));
}

Result<RankResult> Repository::WriteRank(const SaveSpec& spec, std::span<const WriteItem> items,
                                         const std::function<void()>& released) {
  // However the write ends, the caller learns that the items are free.
  struct Once {
    const std::function<void()>& fn;
    bool done = false;
    void operator()() {
      if (!done && fn) fn();
      done = true;
    }
    ~Once() { (*this)(); }
  } once{released};
  return WriteRankWith(spec, [&](const engine::ShardTarget& target, void* out) -> Status {
    SW_ASSIGN_OR_RETURN(Impl::BackendLease backend, impl_->Backend());
    SW_ASSIGN_OR_RETURN(engine::ShardIndex index,
                        engine::WriteShard(target, spec.rank, spec.save_id, items,
                                           impl_->options, *backend, [&] { once(); }));
    *static_cast<engine::ShardIndex*>(out) = std::move(index);
    return Status::Ok();
  });
}

Status Repository::CheckTarget(const std::string& final_dir, bool replace) {
  auto st = os::Lstat(final_dir);
  if (!st.ok()) return st.status().err() == ENOENT ? Status::Ok() : st.status();
  std::string what;
  if (!S_ISDIR(st->st_mode)) {
    what = S_ISLNK(st->st_mode) ? "a symbolic link" : "not a directory";
  } else if (!os::Exists(os::JoinPath(final_dir, names::kManifest)) &&
             !os::Exists(os::JoinPath(final_dir, ".metadata"))) {
    // The remains of a save that never committed (shard files without
    // their manifest; a stock DCP save's .distcp files without .metadata)
    // are a checkpoint's too; anything else (a root: checkpoints in
    // directories) is not.
    SW_ASSIGN_OR_RETURN(auto entries, os::ListDir(final_dir));
    auto checkpoint_file = [](const os::DirEntry& e) {
      const std::string_view n = e.name;
      return e.type != DT_DIR && e.type != DT_LNK &&
             (names::IsShardFile(n) || n == names::kIndex || n.starts_with(".metadata") ||
              n.ends_with(".distcp"));
    };
    if (!std::all_of(entries.begin(), entries.end(), checkpoint_file))
      what = "a directory that holds no manifest.json and more than checkpoint files: is it a "
             "checkpoint root? Name a checkpoint inside it";
  }
  if (!what.empty())
    return Status(StatusCode::kAlreadyExists,
                  final_dir + " exists and is not a checkpoint (" + what +
                      "); a save never replaces it",
                  EEXIST, final_dir);
  if (!replace)
    return Status(StatusCode::kAlreadyExists,
                  "checkpoint " + final_dir + " already exists (pass replace to overwrite it)",
                  EEXIST, final_dir);
  return Status::Ok();
}

Result<RankResult> Repository::WriteRankWith(
    const SaveSpec& in,
    const std::function<Status(const engine::ShardTarget&, void*)>& write_shard) {
  SaveSpec spec = in;
  SW_RETURN_IF_ERROR(Normalize(spec));
  SW_RETURN_IF_ERROR(Repository::CheckTarget(os::JoinPath(impl_->root, spec.name), spec.replace));
  const std::string staging = StagingDir(spec);
  auto run = [&]() -> Result<RankResult> {
    SW_RETURN_IF_ERROR(os::Mkdir(staging, 0755, /*exist_ok=*/true));
    // Holding the staging lock tells gc this save is alive.
    std::string lock_path = os::JoinPath(staging, names::kStagingLock);
    SW_ASSIGN_OR_RETURN(os::File lock, os::Open(lock_path, O_RDWR | O_CREAT, 0644));
    (void)os::Flock(lock.fd(), /*exclusive=*/false, /*try_only=*/false, lock_path);
    fs::Placement* placement = impl_->Placement();
    SW_ASSIGN_OR_RETURN(fs::IoMode mode, placement->io_mode());
    std::string shard =
        os::JoinPath(staging, names::RankFileName(spec.rank, names::RankFile::kShard));
    const bool direct = mode.direct_writes;
    engine::ShardTarget target{shard, direct, placement, spec.world_size,
                               impl_->options.recycle_files ? impl_->root : std::string()};
    engine::ShardIndex index;
    Status written = write_shard(target, &index);
    if (!written.ok()) {
      if (written.err() == EEXIST)
        return Status(StatusCode::kAlreadyExists,
                      shard + " was already written by this save attempt; use a new save_id",
                      EEXIST, shard);
      return written;
    }
    Manifest frag;
    frag.name = spec.name;
    frag.step = spec.step;
    frag.save_id = spec.save_id;
    frag.world_size = spec.world_size;
    frag.rank = spec.rank;
    frag.created_unix = os::NowUnix();
    frag.checksum_block = impl_->options.checksum_block_bytes;
    frag.files = index.files;
    frag.items = std::move(index.items);
    RankResult r;
    if (spec.gathered) {
      r.index = format::EncodeRankIndex(frag);  // the collective carries it
    } else {
      SW_RETURN_IF_ERROR(os::WriteFileAtomic(
          os::JoinPath(staging, names::RankFileName(spec.rank, names::RankFile::kFragment)),
          format::Serialize(frag, format::kFragmentKind), "fragment"));
      os::CrashPoint("fragment_written");
    }
    r.shard_path = shard;
    r.bytes = 0;
    for (const FileRecord& f : index.files) r.bytes += f.size;
    r.seconds = index.seconds;
    r.backend = index.files.empty() ? "" : index.files[0].backend;
    r.direct_io = direct;
    r.copied_bytes = index.copied_bytes;
    return r;
  };
  auto result = run();
  if (!result.ok()) (void)ReportFailure(spec, result.status());
  return result;
}

Status Repository::ReportFailure(const SaveSpec& in, const Status& why) {
  SaveSpec spec = in;
  SW_RETURN_IF_ERROR(Normalize(spec));
  std::string staging = StagingDir(spec);
  if (!os::Exists(staging)) return Status::Ok();
  return os::WriteFileAtomic(
      os::JoinPath(staging, names::RankFileName(spec.rank, names::RankFile::kFailed)),
      why.ToString() + "\n");
}

}  // namespace shardwise
