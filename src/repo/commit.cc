// The commit protocol (docs/format.md, "Commit protocol"), followed literally:
//
//   1. every rank writes and fsyncs its shard in the staging directory
//      .NAME.staging-SAVEID/ (Repository::WriteRank);
//   2. every rank reports success with a fragment file, written to a temporary
//      name, fsynced, renamed, and the staging directory fsynced;
//   3. the coordinator waits for all fragments, merges them into
//      manifest.json (tmp, fsync, rename), removes the fragments, fsyncs the
//      staging directory, renames it to NAME, fsyncs ROOT, then replaces
//      `latest` (tmp, fsync, rename, fsync ROOT);
//   4. only then is the save reported complete.
//
// A crash before the rename in step 3 leaves only a staging directory, which
// readers never look at and gc removes. The os::CrashPoint names below let
// tests kill the process between every two steps.
#include <fcntl.h>
#include <sys/stat.h>

#include <algorithm>
#include <span>

#include "common/parallel.h"
#include "common/poll.h"
#include "format/index.h"
#include "format/manifest.h"
#include "format/merge.h"
#include "format/rank_index.h"
#include "os/fault.h"
#include "os/posix.h"
#include "repo/listing.h"
#include "repo/export.h"
#include "repo/repository_impl.h"
#include "shardwise/names.h"

namespace shardwise {
namespace {

// Step of a committed checkpoint, from its manifest; nullopt when unreadable.
std::optional<std::int64_t> CommittedStep(const std::string& dir) {
  std::string path = os::JoinPath(dir, names::kManifest);
  auto text = os::ReadSmallFile(path, format::kMaxManifestBytes);
  if (!text.ok()) return std::nullopt;
  auto m = format::Parse(*text, format::kManifestKind, path);
  if (!m.ok()) return std::nullopt;
  return m->step;
}

// Up to 16 rank numbers of `have` that are false, "3, 7, 12, ...".
std::string MissingRanks(const std::vector<bool>& have) {
  std::string missing;
  int shown = 0, left = 0;
  for (std::size_t r = 0; r < have.size(); ++r)
    if (!have[r] && shown++ < 16) missing += (missing.empty() ? "" : ", ") + std::to_string(r);
    else if (!have[r]) ++left;
  return left ? missing + ", ..." : missing;
}

// Waits for every rank's fragment; aborts on a failure marker or timeout.
Status WaitForFragments(const std::string& staging, const SaveSpec& spec,
                        const Options& options, int lock_fd) {
  std::vector<bool> have(spec.world_size, false);
  double last_touch = os::MonotonicSeconds();
  auto all_reported = [&]() -> Result<bool> {
    SW_ASSIGN_OR_RETURN(auto entries, os::ListDir(staging));
    for (const auto& e : entries) {
      int rank = -1;
      names::RankFile kind;
      if (!names::ParseRankFile(e.name, &rank, &kind) || rank >= spec.world_size) continue;
      if (kind == names::RankFile::kFragment) {
        have[rank] = true;
      } else if (kind == names::RankFile::kFailed) {
        auto why = os::ReadSmallFile(os::JoinPath(staging, e.name), 1 << 16);
        std::string text = why.ok() ? *why : std::string("(reason unreadable)");
        while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
        return Status(StatusCode::kAborted, "rank " + std::to_string(rank) + " failed: " + text,
                      0, staging);
      }
    }
    // Keep the staging directory visibly alive for gc on filesystems where
    // flock is not available.
    if (const double now = os::MonotonicSeconds(); now - last_touch > 10) {
      (void)os::Touch(lock_fd, staging);  // best effort: the wait goes on
      last_touch = now;
    }
    return std::count(have.begin(), have.end(), true) == spec.world_size;
  };
  return PollUntil(options.commit_timeout_s, options.poll_interval_s, all_reported, [&] {
    return Status(StatusCode::kTimeout,
                  "timed out after " + std::to_string(options.commit_timeout_s) +
                      " s waiting for ranks " + MissingRanks(have) + " to report in " + staging,
                  0, staging);
  });
}

// Reads and parses every rank's fragment file, in parallel (one per rank:
// thousands on a large job).
std::vector<Result<Manifest>> ReadFragments(const std::string& staging, const SaveSpec& spec) {
  std::vector<Result<Manifest>> frags(spec.world_size, Status(StatusCode::kInternal, "unread"));
  ParallelFor(0, static_cast<std::size_t>(spec.world_size), std::min(AvailableCpus(), 16),
              [&](std::size_t r) {
                const std::string path = os::JoinPath(
                    staging, names::RankFileName(static_cast<int>(r), names::RankFile::kFragment));
                auto text = os::ReadSmallFile(path, format::kMaxManifestBytes);
                frags[r] = text.ok() ? format::Parse(*text, format::kFragmentKind, path)
                                     : Result<Manifest>(text.status());
              });
  return frags;
}

// The shards every rank reported are there with the sizes reported. One
// stat per file, in parallel (thousands on a large job).
Status CheckShards(const std::string& staging, std::span<const format::RankPart> parts) {
  std::vector<Status> bad(parts.size());
  ParallelFor(0, parts.size(), std::min(AvailableCpus(), 16), [&](std::size_t r) {
    for (const FileRecord& fr : parts[r].header->files) {
      const std::string fpath = os::JoinPath(staging, fr.name);
      auto st = os::Lstat(fpath);
      if (!st.ok()) {
        bad[r] = st.status();
        return;
      }
      if (!S_ISREG(st->st_mode) || static_cast<std::uint64_t>(st->st_size) != fr.size) {
        bad[r] = Corrupt(fpath + ": size or type differs from what rank " + std::to_string(r) +
                             " reported",
                         fpath);
        return;
      }
    }
  });
  for (Status& s : bad) SW_RETURN_IF_ERROR(std::move(s));
  return Status::Ok();
}

// The checkpoint's own fields: everything but its files and items.
Manifest CheckpointHeader(const SaveSpec& spec, std::uint64_t checksum_block) {
  Manifest m;
  m.name = spec.name;
  m.step = spec.step;
  m.save_id = spec.save_id;
  m.world_size = spec.world_size;
  m.rank = -1;
  m.created_unix = os::NowUnix();
  m.user_json = spec.user_json;
  m.dcp_json = spec.dcp_json;
  m.checksum_block = checksum_block;
  return m;
}

// The coordinator may start before any rank created the staging directory:
// waits for it, then holds its lock (shared, as the ranks do) so gc leaves it
// alone while the commit runs.
Result<os::File> JoinStaging(const std::string& staging, const Options& o) {
  SW_RETURN_IF_ERROR(PollUntil(
      o.commit_timeout_s, o.poll_interval_s, [&]() -> Result<bool> { return os::Exists(staging); },
      [&] {
        return Status(StatusCode::kTimeout,
                      "timed out after " + std::to_string(o.commit_timeout_s) +
                          " s: no rank created " + staging,
                      0, staging);
      }));
  const std::string lock_path = os::JoinPath(staging, names::kStagingLock);
  SW_ASSIGN_OR_RETURN(os::File lock, os::Open(lock_path, O_RDWR | O_CREAT, 0644));
  (void)os::Flock(lock.fd(), false, false, lock_path);
  return lock;
}

// Points `latest` at the checkpoint just committed unless it names one of a
// later step. Returns whether it moved.
Result<bool> AdvanceLatest(const std::string& root, const SaveSpec& spec) {
  std::lock_guard lock(repo::LatestMutex());
  auto current = repo::ReadLatestFile(root);
  if (current && *current != spec.name) {
    auto cur_step = CommittedStep(os::JoinPath(root, *current));
    if (cur_step && *cur_step > spec.step) return false;
  }
  SW_RETURN_IF_ERROR(
      os::WriteFileAtomic(os::JoinPath(root, names::kLatest), spec.name + "\n", "latest"));
  return true;
}

// How a commit writes its record.
struct RecordHow {
  bool fragment_files = false;  // the ranks reported through fragment files
  int format_version = 2;
  os::WriteVia index_via = os::WriteVia::kPageCache;
};

// How the commit writes its record: the format from the options; the
// index with O_DIRECT where the shards of this root are written so (the
// root's I/O mode, when this process probed it already: the coordinator's
// own shard write did; a commit never measures). At scale the index is
// large (hundreds of MiB at 16,384 ranks) and read back only in part.
RecordHow HowFor(const Options& o, const fs::Placement* placement, bool fragment_files) {
  RecordHow how;
  how.fragment_files = fragment_files;
  how.format_version = o.format_version;
  if (placement && placement->io_mode().ok() && placement->io_mode()->direct_writes)
    how.index_via = os::WriteVia::kDirect;
  return how;
}

// Step 3a: the commit record of `merged` (the ranks' files and items)
// durable inside the staging directory. In format 2 the index goes first:
// manifest.json describes it. Returns the checkpoint's bytes.
Result<std::uint64_t> WriteRecord(const std::string& staging, const format::ChunkSource& merged,
                                  Manifest header, const RecordHow& how) {
  const std::string manifest = os::JoinPath(staging, names::kManifest);
  SW_RETURN_IF_ERROR(format::Validate(header, manifest));  // name, user and dcp JSON
  std::string record;
  if (how.format_version >= 2) {
    header.format_version = 2;
    SW_ASSIGN_OR_RETURN(format::IndexImage index,
                        format::EncodeIndex(merged, header, &header.index));
    SW_RETURN_IF_ERROR(os::WriteFileAtomic(os::JoinPath(staging, names::kIndex), index.view(),
                                           "index", how.index_via));
    record = format::Serialize(header, format::kManifestKind);
  } else {
    header.files = merged.Files();
    header.items = format::Materialize(merged);
    record = format::Serialize(header, format::kManifestKind);  // format_version 1
  }
  SW_RETURN_IF_ERROR(os::WriteFileAtomic(manifest, record, "manifest"));
  return header.TotalBytes();
}

// Step 3c when NAME exists (a replace): swaps atomically where the
// filesystem can, so NAME always holds either the old or the new one.
// Returns where the old copy went (removed by the caller).
Result<std::string> ReplaceByRenaming(const std::string& root, const SaveSpec& spec,
                                      const std::string& staging, const std::string& final_dir) {
  const std::string old =
      os::JoinPath(root, names::HiddenDir(spec.name, names::Hidden::kReplaced, spec.save_id));
  Status x = os::RenameExchange(staging, final_dir);
  if (x.ok()) {
    os::CrashPoint("exchanged");
    SW_RETURN_IF_ERROR(os::FsyncDir(root));
    // NAME already holds the new checkpoint. Should this rename fail, the
    // save is reported failed all the same (commit.failed in the staging
    // directory stops the waiting ranks, which need it gone otherwise),
    // `latest` stays, and gc removes the old copy left in staging.
    SW_RETURN_IF_ERROR(os::Rename(staging, old));
  } else if (x.code() == StatusCode::kUnavailable) {
    // No RENAME_EXCHANGE (e.g. Lustre): NAME is briefly absent, never mixed.
    SW_RETURN_IF_ERROR(os::Rename(final_dir, old));
    os::CrashPoint("old_moved_aside");
    if (Status moved = os::Rename(staging, final_dir); !moved.ok()) {
      // NAME is absent: the old checkpoint goes back before the error is
      // reported (else a restart found none until gc put it back).
      if (os::RenameNoReplace(old, final_dir).ok()) (void)os::FsyncDir(root);
      return moved;
    }
  } else {
    return x;
  }
  SW_RETURN_IF_ERROR(os::FsyncDir(root));
  return old;
}

// Step 3 of the commit protocol, once every rank's shard is durable and
// `merged` holds their indexes: the commit record, then the rename.
Result<CommitResult> PublishCommit(const std::string& root, const SaveSpec& spec,
                                   const std::string& staging,
                                   const format::MergedRanks& merged, os::File lock,
                                   const RecordHow& how) {
  const std::string final_dir = os::JoinPath(root, spec.name);
  const std::string lock_path = lock.path();
  SW_ASSIGN_OR_RETURN(const std::uint64_t bytes,
                      WriteRecord(staging, merged,
                                  CheckpointHeader(spec, merged.checksum_block()), how));
  os::CrashPoint("manifest_written");
  // Fragments and the lock are no longer needed: the committed directory
  // holds only the manifest and the shards.
  for (int r = 0; how.fragment_files && r < spec.world_size; ++r)
    SW_RETURN_IF_ERROR(
        os::Unlink(os::JoinPath(staging, names::RankFileName(r, names::RankFile::kFragment))));
  SW_RETURN_IF_ERROR(lock.Close());
  SW_RETURN_IF_ERROR(os::Unlink(lock_path));
  // Step 3b: the staging directory's entries are durable.
  SW_RETURN_IF_ERROR(os::FsyncDir(staging));
  os::CrashPoint("staging_synced");

  // Step 3c: publish by renaming. Under the process's `latest` mutex: gc
  // and Delete of this process check what NAME holds and hide it under the
  // same mutex, never in between.
  std::unique_lock publish(repo::LatestMutex());
  SW_RETURN_IF_ERROR(Repository::CheckTarget(final_dir, spec.replace));
  std::string replaced;  // the old copy, removed once the mutex is free
  if (os::Exists(final_dir)) {
    SW_ASSIGN_OR_RETURN(replaced, ReplaceByRenaming(root, spec, staging, final_dir));
  } else {
    SW_RETURN_IF_ERROR(os::RenameNoReplace(staging, final_dir));
  }
  os::CrashPoint("renamed");
  // Step 3d: the rename is durable.
  SW_RETURN_IF_ERROR(os::FsyncDir(root));
  os::CrashPoint("root_synced");
  publish.unlock();
  if (!replaced.empty()) (void)os::RemoveTree(replaced);  // gc retries if this fails

  // Step 3e: `latest` moves forward only (a re-save of an older step does not
  // pull it back).
  CommitResult result;
  result.name = spec.name;
  result.dir = final_dir;
  result.bytes = bytes;
  // Past the commit point: NAME is committed and durable. `latest` is a
  // hint (readers take the highest committed step); failing to move it
  // does not fail the save, whose ranks already see it committed.
  auto latest = AdvanceLatest(root, spec);
  if (latest.ok()) {
    result.latest_updated = *latest;
  } else {
    result.latest_error = latest.status().ToString();
  }
  os::CrashPoint("committed");
  return result;
}

// Merges the ranks' reports (parts[r]: rank r's), checks their shards, and
// publishes the checkpoint.
Result<CommitResult> MergeAndPublish(const std::string& root, const SaveSpec& spec,
                                     const std::string& staging,
                                     std::span<const format::RankPart> parts, os::File lock,
                                     const RecordHow& how) {
  Manifest want;
  want.name = spec.name;
  want.save_id = spec.save_id;
  want.world_size = spec.world_size;
  SW_ASSIGN_OR_RETURN(format::MergedRanks merged,
                      format::MergeRanks(parts, want, os::JoinPath(staging, names::kManifest)));
  SW_RETURN_IF_ERROR(CheckShards(staging, parts));
  return PublishCommit(root, spec, staging, merged, std::move(lock), how);
}

}  // namespace

Result<CommitResult> Repository::Commit(const SaveSpec& in) {
  SaveSpec spec = in;
  SW_RETURN_IF_ERROR(Normalize(spec));

  auto result = CommitNormalized(spec);
  const std::string staging = StagingDir(spec);
  if (!result.ok() && os::Exists(staging)) {
    // Tell ranks in WaitCommitted to stop waiting; they look for the name
    // only. First the name alone: an empty file takes no data blocks, so it
    // is made where a full disk (often why the commit failed) refuses the
    // reason's bytes. Then, best effort, the reason in its place.
    const std::string marker = os::JoinPath(staging, names::kCommitFailed);
    if (auto f = os::Open(marker, O_WRONLY | O_CREAT | O_EXCL, 0644); f.ok()) {
      (void)f->Close();
      (void)os::FsyncDir(staging);
    }
    (void)os::WriteFileAtomic(marker, result.status().ToString() + "\n");
  }
  if (result.ok()) RequestExportFor(*result);
  return result;
}

void Repository::RequestExportFor(CommitResult& result) {
  if (impl_->options.export_mode == ExportMode::kOff) return;
  // The checkpoint is committed whatever happens here (docs/lustre.md).
  std::string request_error;
  Status s = repo::RequestExport(impl_->root, result.name, impl_->options, &request_error);
  result.export_error = s.ok() ? request_error : s.ToString();
}


Result<CommitResult> Repository::CommitNormalized(const SaveSpec& spec) {
  // One job per root (repo/writer_lock.h); on failure, Commit tells the
  // waiting ranks through commit.failed.
  SW_RETURN_IF_ERROR(LockForWriting());
  const std::string staging = StagingDir(spec);
  SW_ASSIGN_OR_RETURN(os::File lock, JoinStaging(staging, impl_->options));
  // Steps 1-2 happened on every rank; wait until all of them reported.
  SW_RETURN_IF_ERROR(WaitForFragments(staging, spec, impl_->options, lock.fd()));
  std::vector<Result<Manifest>> frags = ReadFragments(staging, spec);
  std::vector<format::ManifestSource> chunks;
  std::vector<format::RankPart> parts;
  chunks.reserve(frags.size());
  for (int r = 0; r < spec.world_size; ++r) {
    if (!frags[r].ok()) return frags[r].status();
    chunks.emplace_back(*frags[r]);
    parts.push_back({&*frags[r], &chunks.back(),
                     os::JoinPath(staging, names::RankFileName(r, names::RankFile::kFragment))});
  }
  return MergeAndPublish(impl_->root, spec, staging, parts, std::move(lock),
                         HowFor(impl_->options, impl_->PlacementIfProbed(), /*fragment_files=*/true));
}

Result<CommitResult> Repository::CommitGathered(const SaveSpec& in,
                                                std::span<const std::string> indexes) {
  SaveSpec spec = in;
  SW_RETURN_IF_ERROR(Normalize(spec));
  if (indexes.size() != static_cast<std::size_t>(spec.world_size))
    return InvalidArgument("CommitGathered: " + std::to_string(indexes.size()) +
                           " rank indexes for a world of " + std::to_string(spec.world_size));
  SW_RETURN_IF_ERROR(LockForWriting());
  const std::string staging = StagingDir(spec);
  // Every rank finished before the collective handed the indexes over, so
  // nothing is awaited. A save where no rank wrote a file has no staging
  // directory yet.
  SW_RETURN_IF_ERROR(os::Mkdir(staging, 0755, /*exist_ok=*/true));
  const std::string lock_path = os::JoinPath(staging, names::kStagingLock);
  SW_ASSIGN_OR_RETURN(os::File lock, os::Open(lock_path, O_RDWR | O_CREAT, 0644));
  (void)os::Flock(lock.fd(), false, false, lock_path);
  auto source = [&](std::size_t r) {
    return staging + " (rank " + std::to_string(r) + "'s index)";
  };
  std::vector<Result<format::RankColumns>> cols(indexes.size(),
                                                Status(StatusCode::kInternal, "unread"));
  ParallelFor(0, indexes.size(), std::min(AvailableCpus(), 16), [&](std::size_t r) {
    if (!indexes[r].empty()) {
      cols[r] = format::DecodeRankColumns(indexes[r], source(r));
      return;
    }
    format::RankColumns none;  // a rank with nothing to save sends no index
    none.header.name = spec.name;
    none.header.save_id = spec.save_id;
    none.header.world_size = spec.world_size;
    none.header.rank = static_cast<std::int32_t>(r);
    cols[r] = std::move(none);
  });
  std::vector<format::RankPart> parts;
  parts.reserve(cols.size());
  for (std::size_t r = 0; r < cols.size(); ++r) {
    if (!cols[r].ok()) return cols[r].status();
    parts.push_back({&cols[r]->header, &*cols[r], source(r)});
  }
  auto result = MergeAndPublish(impl_->root, spec, staging, parts, std::move(lock),
                                HowFor(impl_->options, impl_->PlacementIfProbed(),
                                       /*fragment_files=*/false));
  if (result.ok()) RequestExportFor(*result);
  return result;
}

Status Repository::WaitCommitted(const SaveSpec& in, double timeout_s) {
  SaveSpec spec = in;
  SW_RETURN_IF_ERROR(Normalize(spec));
  const std::string staging = StagingDir(spec);
  const std::string manifest = os::JoinPath(os::JoinPath(impl_->root, spec.name),
                                            names::kManifest);
  auto committed = [&]() -> Result<bool> {
    if (!os::Exists(staging) && os::Exists(manifest)) {
      SW_ASSIGN_OR_RETURN(std::string text,
                          os::ReadSmallFile(manifest, format::kMaxManifestBytes));
      SW_ASSIGN_OR_RETURN(Manifest m, format::Parse(text, format::kManifestKind, manifest));
      if (m.save_id == spec.save_id) return true;
      return Status(StatusCode::kAborted,
                    manifest + " was committed by another save (" + m.save_id + ")", 0,
                    manifest);
    }
    if (os::Exists(staging)) {
      SW_ASSIGN_OR_RETURN(auto entries, os::ListDir(staging));
      for (const auto& e : entries)
        if (names::IsFailureMarker(e.name))
          return Status(StatusCode::kAborted, "save aborted: " + e.name + " in " + staging, 0,
                        staging);
    }
    return false;
  };
  return PollUntil(timeout_s, impl_->options.poll_interval_s, committed, [&] {
    return Status(StatusCode::kTimeout, "timed out waiting for the commit of " + spec.name, 0,
                  staging);
  });
}

Result<CommitResult> Repository::Save(SaveSpec spec, std::span<const WriteItem> items) {
  if (spec.world_size != 1)
    return InvalidArgument("Save() is for one process; use WriteRank and Commit for several");
  SW_RETURN_IF_ERROR(Normalize(spec));
  SW_RETURN_IF_ERROR(WriteRank(spec, items).status());
  return Commit(spec);
}

}  // namespace shardwise
