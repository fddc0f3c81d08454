// Repository::Delete: removes one committed checkpoint, keeping `latest`
// pointed at a checkpoint that exists.
#include "fs/recycle.h"
#include "os/posix.h"
#include "repo/export.h"
#include "repo/listing.h"
#include "repo/repository_impl.h"
#include "shardwise/names.h"

namespace shardwise {

Result<std::string> repo::HideCommitted(const std::string& root, const std::string& name) {
  const std::string hidden =
      os::JoinPath(root, names::HiddenDir(name, names::Hidden::kDeleting, os::RandomHex(6)));
  SW_RETURN_IF_ERROR(os::Rename(os::JoinPath(root, name), hidden));
  SW_RETURN_IF_ERROR(os::FsyncDir(root));
  RemoveExportRecord(root, name);  // now: whatever happens to the tree
  return hidden;
}

Status repo::FinishRemoval(const std::string& root, const std::string& hidden, bool recycle) {
  // Hidden first, durably: the files leave a checkpoint nobody can open any
  // more. Recycling is best effort; what it leaves goes with the tree.
  if (recycle) fs::RecycleFiles(root, hidden);
  return os::RemoveTree(hidden);
}

Status repo::RemoveCommitted(const std::string& root, const std::string& name, bool recycle) {
  SW_ASSIGN_OR_RETURN(std::string hidden, HideCommitted(root, name));
  return FinishRemoval(root, hidden, recycle);
}

std::mutex& repo::LatestMutex() {
  static std::mutex mu;
  return mu;
}

Status Repository::Delete(const std::string& name, bool damaged_too) {
  const std::string& root = impl_->root;
  SW_RETURN_IF_ERROR(LockForWriting());
  // The successor is chosen and `latest` written with no commit of this
  // process moving `latest` meanwhile.
  std::lock_guard latest_lock(repo::LatestMutex());
  SW_ASSIGN_OR_RETURN(auto all, List());
  const CheckpointInfo* target = nullptr;
  std::optional<std::string> successor;  // the newest committed one after NAME goes
  for (const auto& c : all) {
    const bool damaged = damaged_too && c.state == CheckpointInfo::State::kInvalid &&
                         c.dir_name == name;
    if (c.state != CheckpointInfo::State::kCommitted && !damaged) continue;
    if (c.name == name) target = &c;
    else successor = c.name;
  }
  if (!target) {
    for (const auto& c : all)
      if (c.dir_name == name && c.state == CheckpointInfo::State::kInvalid)
        return Corrupt(os::JoinPath(root, name) + ": not a valid checkpoint (" + c.problem +
                           "); remove it by hand after looking at it",
                       os::JoinPath(root, name));
    return NotFound("no committed checkpoint '" + name + "' in " + root, os::JoinPath(root, name));
  }
  // `latest` moves first, so it never names a checkpoint that is gone.
  if (repo::ReadLatestFile(root) == name) {
    const std::string latest = os::JoinPath(root, names::kLatest);
    if (successor) {
      SW_RETURN_IF_ERROR(os::WriteFileAtomic(latest, *successor + "\n", "latest"));
    } else {
      SW_RETURN_IF_ERROR(os::Unlink(latest));
      SW_RETURN_IF_ERROR(os::FsyncDir(root));
    }
  }
  return repo::RemoveCommitted(root, name, impl_->options.recycle_files);
}

}  // namespace shardwise
