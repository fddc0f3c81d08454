// gc: removes abandoned staging directories and leftovers, and applies
// retention. Deleting a committed checkpoint first renames it to a hidden
// .NAME.deleting-ID entry, so it vanishes from listings atomically and a
// crash mid-delete leaves nothing that looks like a checkpoint.
#include <algorithm>
#include <map>
#include <set>
#include <utility>

#include "format/manifest.h"
#include "os/fault.h"
#include "os/posix.h"
#include "repo/export.h"
#include "repo/listing.h"
#include "repo/repository_impl.h"
#include "shardwise/names.h"

namespace shardwise {
namespace {

// A checkpoint is valid when its manifest parses and every file is present
// with its size and header; with full_verify, every checksum too.
bool IsValid(const Repository& repo, const std::string& name, bool full_verify) {
  auto reader = repo.OpenCheckpoint(name);
  if (!reader.ok()) return false;
  if (!(*reader)->CheckFiles().ok()) return false;
  if (!full_verify) return true;
  auto report = (*reader)->Verify();
  return report.ok() && report->problems.empty();
}

// Step 1 of gc: a replaced checkpoint whose successor never arrived is put
// back; then staging directories nobody works on, and leftovers, are
// removed.
Status RemoveAbandonedStaging(const std::string& root, const std::vector<CheckpointInfo>& all,
                              double grace, bool dry_run, GcReport* report) {
  // The attempts with a staging directory, as listed before any is removed.
  std::map<std::pair<std::string, std::string>, std::string> staged;
  for (const auto& c : all) {
    std::string name, id;
    if (names::ParseHiddenDir(c.dir_name, names::Hidden::kStaging, &name, &id))
      staged.emplace(std::make_pair(name, id), os::JoinPath(root, c.dir_name));
  }
  // First the put-backs, before anything is removed. A replaced copy comes
  // back when its replace was cut between its two renames: the attempt's
  // staging directory is still there, nobody works on it, and NAME is
  // free. Any other replaced copy is a leftover, maybe half removed, of a
  // checkpoint whose name has moved on (or been deleted since).
  // Replaced copies kept for now: put back, or whose attempt is live (its
  // replace may be between its two renames: a later gc decides).
  std::set<std::string> kept;
  for (const auto& c : all) {
    std::string name, id;
    if (c.state != CheckpointInfo::State::kLeftover ||
        !names::ParseHiddenDir(c.dir_name, names::Hidden::kReplaced, &name, &id))
      continue;
    const auto attempt = staged.find({name, id});
    const std::string path = os::JoinPath(root, c.dir_name);
    if (attempt == staged.end()) continue;
    if (repo::StagingActive(attempt->second, grace, nullptr)) {
      kept.insert(c.dir_name);
      continue;
    }
    // Whatever it holds (a stock DCP checkpoint can be replaced too): the
    // old copy is removed only after its successor took NAME, so one whose
    // attempt is still staged is whole.
    if (os::Exists(os::JoinPath(root, name))) continue;
    kept.insert(c.dir_name);  // put back, or left for a later gc if that fails
    if (!dry_run) {
      Status back = os::RenameNoReplace(path, os::JoinPath(root, name));
      if (back.ok()) back = os::FsyncDir(root);
      if (!back.ok()) report->errors.push_back("putting back " + name + ": " + back.message());
    }
  }
  for (const auto& c : all) {
    if ((c.state != CheckpointInfo::State::kStaging &&
         c.state != CheckpointInfo::State::kLeftover) ||
        kept.count(c.dir_name))
      continue;
    std::string path = os::JoinPath(root, c.dir_name);
    if (c.state == CheckpointInfo::State::kStaging &&
        repo::StagingActive(path, grace, nullptr))
      continue;
    if (Status removed = dry_run ? Status::Ok() : os::RemoveTree(path); !removed.ok()) {
      report->errors.push_back(removed.message());
      continue;
    }
    report->removed_staging.push_back(c.dir_name);
  }
  return Status::Ok();
}

// Temporary files of interrupted atomic writes (latest.tmp-*), and O_DIRECT
// probe files of processes killed while probing, once older than `grace`.
Status RemoveStaleTempFiles(const std::string& root, double grace, bool dry_run,
                            GcReport* report) {
  SW_ASSIGN_OR_RETURN(auto entries, os::ListDir(root));
  for (const auto& e : entries) {
    if (e.type != DT_REG ||
        (!names::IsTempOf(e.name, names::kLatest) && !names::IsProbeFile(e.name)))
      continue;
    std::string path = os::JoinPath(root, e.name);
    auto st = os::Lstat(path);
    if (st.ok() && os::NowUnix() - static_cast<double>(st->st_mtim.tv_sec) >= grace) {
      if (Status gone = dry_run ? Status::Ok() : os::Unlink(path); !gone.ok()) {
        report->errors.push_back(gone.message());
        continue;
      }
      report->removed_staging.push_back(e.name);
    }
  }
  return Status::Ok();
}

// The index in `committed` of the newest valid checkpoint, or -1.
std::ptrdiff_t NewestValid(const Repository& repo,
                           const std::vector<const CheckpointInfo*>& committed,
                           bool full_verify) {
  for (std::ptrdiff_t i = static_cast<std::ptrdiff_t>(committed.size()) - 1; i >= 0; --i)
    if (IsValid(repo, committed[i]->name, full_verify)) return i;
  return -1;
}

// Hides the checkpoint retention decided to delete, if it is still the one
// the listing saw and `latest` does not name it: under the process's
// `latest` mutex, so that no commit or Delete of this process moves either
// meanwhile (a replace of that step, or a Delete that made it `latest`).
// The hidden path, or "" when it changed.
Result<std::string> HideIfUnchanged(const std::string& root, const CheckpointInfo& c) {
  std::lock_guard lock(repo::LatestMutex());
  if (repo::ReadLatestFile(root) == c.name) return std::string();
  const std::string mpath = os::JoinPath(os::JoinPath(root, c.name), names::kManifest);
  auto text = os::ReadSmallFile(mpath, format::kMaxManifestBytes);
  auto m = text.ok() ? format::Parse(*text, format::kManifestKind, mpath)
                     : Result<Manifest>(text.status());
  if (!m.ok() || m->save_id != c.save_id) return std::string();
  return repo::HideCommitted(root, c.name);
}

// Step 2 of gc: keeps the anchor and everything newer, `latest`, and what
// the retention options keep (and, with `requires_export`, what is not
// exported yet); deletes the rest.
Status ApplyRetention(const std::string& root, const std::vector<const CheckpointInfo*>& committed,
                      std::ptrdiff_t anchor, const GcOptions& gc, bool requires_export,
                      bool recycle, GcReport* report) {
  const std::ptrdiff_t n = static_cast<std::ptrdiff_t>(committed.size());
  for (std::ptrdiff_t i = 0; i < n; ++i) {
    const CheckpointInfo& c = *committed[i];
    bool keep = i >= anchor || c.is_latest ||
                (gc.keep_last && anchor - i < *gc.keep_last) ||
                (gc.keep_every && c.step >= 0 && c.step % *gc.keep_every == 0);
    if (!keep && requires_export &&
        repo::QueryExport(root, c.name).state != ExportState::kExported) {
      keep = true;  // its only copy may be this one
      report->kept_unexported.push_back(c.name);
    }
    if (keep) {
      report->kept.push_back(c.name);
      continue;
    }
    if (gc.dry_run) {
      report->removed_checkpoints.push_back(c.name);
      continue;
    }
    auto hidden = HideIfUnchanged(root, c);
    if (!hidden.ok()) {
      report->errors.push_back(hidden.status().message());
      continue;
    }
    if (hidden->empty()) {  // committed again or made `latest` since the listing
      report->kept.push_back(c.name);
      continue;
    }
    if (Status gone = repo::FinishRemoval(root, *hidden, recycle); !gone.ok()) {
      report->errors.push_back(gone.message());
      continue;
    }
    report->removed_checkpoints.push_back(c.name);
  }
  return Status::Ok();
}

}  // namespace

Result<GcReport> Repository::Gc(const GcOptions& gc) {
  if (gc.keep_last && *gc.keep_last < 1) return InvalidArgument("keep_last must be >= 1");
  if (gc.keep_every && *gc.keep_every < 1) return InvalidArgument("keep_every must be >= 1");
  const std::string& root = impl_->root;
  const double grace = gc.staging_grace_s.value_or(impl_->options.staging_grace_s);
  GcReport report;
  report.dry_run = gc.dry_run;
  // gc deletes: only the job that writes the root may (a staging directory
  // whose writer has not locked it yet, or a recycle bin a save takes files
  // from, is safe from another process only so). Where the lock cannot be
  // taken at all (a read-only root, another user's lock file, whose job may
  // be running), nothing is removed either.
  if (Status claim = gc.dry_run ? Status::Ok() : LockForWriting(); !claim.ok()) {
    const bool held = claim.code() == StatusCode::kAborted;
    return Status(claim.code(),
                  claim.message() +
                      (held ? " gc removes nothing on a root another job writes: run it once "
                              "that job has exited, or as a dry run to see what it would "
                              "remove."
                            : " (gc removes nothing without the root's writer lock; a dry run "
                              "needs none)"),
                  claim.err(), claim.path());
  }
  SW_ASSIGN_OR_RETURN(auto all, List());

  // 1. Staging directories nobody works on, leftovers, stale temporary files.
  SW_RETURN_IF_ERROR(RemoveAbandonedStaging(root, all, grace, gc.dry_run, &report));
  SW_RETURN_IF_ERROR(RemoveStaleTempFiles(root, grace, gc.dry_run, &report));
  // A recycle bin left from when recycle_files was on holds a checkpoint's
  // worth of space that no save will take any more. Best effort: a job
  // that recycles may be adding to it (the next gc removes it then).
  if (const std::string bin = os::JoinPath(root, names::kRecycleDir);
      !impl_->options.recycle_files && os::Exists(bin)) {
    if (gc.dry_run || os::RemoveTree(bin).ok())
      report.removed_staging.emplace_back(names::kRecycleDir);
  }

  // 2. Retention over committed checkpoints (oldest first in `all`).
  std::vector<const CheckpointInfo*> committed;
  for (const auto& c : all)
    if (c.state == CheckpointInfo::State::kCommitted) committed.push_back(&c);
  if (!gc.keep_last && !gc.keep_every) {
    for (auto* c : committed) report.kept.push_back(c->name);
    return report;
  }
  // Anchor: the newest checkpoint that is valid. Nothing newer is deleted
  // (it may be a damaged one an operator wants to look at), and if none is
  // valid nothing is deleted at all.
  const std::ptrdiff_t anchor = NewestValid(*this, committed, gc.full_verify);
  if (anchor < 0) {
    for (auto* c : committed) report.kept.push_back(c->name);
    return report;
  }
  report.newest_valid = committed[anchor]->name;
  os::RunPoint("gc_decided");  // tests: a commit or Delete between decision and deletion
  SW_RETURN_IF_ERROR(ApplyRetention(root, committed, anchor, gc,
                                    impl_->options.retention_requires_export,
                                    impl_->options.recycle_files, &report));
  return report;
}

}  // namespace shardwise
