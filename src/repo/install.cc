// Repository::Install: a copy of a committed checkpoint made in another root
// (a partner node's replica of a local checkpoint) becomes a checkpoint of
// this root, whole and verified, or nothing.
#include <fcntl.h>

#include <optional>

#include "fs/recycle.h"
#include "os/posix.h"
#include "repo/repository_impl.h"
#include "shardwise/names.h"
#include "shardwise/reader.h"

namespace shardwise {

Status Repository::Install(const std::string& name,
                           const std::vector<std::pair<std::string, std::string_view>>& files) {
  const std::string& root = impl_->root;
  if (!names::IsSafeName(name))
    return InvalidArgument("not a checkpoint name: '" + name + "'", root);
  if (files.empty()) return InvalidArgument("checkpoint '" + name + "': no files to install", root);
  for (const auto& [file, data] : files)
    if (!names::IsSafeName(file) || file.front() == '.')
      return InvalidArgument("checkpoint '" + name + "': not a file name of a checkpoint: '" +
                                 file + "'",
                             root);
  SW_RETURN_IF_ERROR(LockForWriting());
  const std::string target = os::JoinPath(root, name);
  if (os::Exists(target))
    return Status(StatusCode::kAlreadyExists, "checkpoint '" + name + "' exists in " + root, 0,
                  target);
  // Hidden while it is written: listings show it as a save in progress, and
  // gc removes it if this process dies before the rename.
  const std::string staging =
      os::JoinPath(root, names::HiddenDir(name, names::Hidden::kStaging, os::RandomHex(6)));
  SW_RETURN_IF_ERROR(os::Mkdir(staging, 0755));
  auto discard = [&](Status why) {
    (void)os::RemoveTree(staging);
    return why;
  };
  for (const auto& [file, data] : files) {
    const std::string path = os::JoinPath(staging, file);
    // A recycled shard file (Options::recycle_files) is overwritten whole,
    // then cut to size.
    std::optional<os::File> recycled;
    if (impl_->options.recycle_files)
      recycled = fs::TakeRecycled(root, path, data.size(), O_WRONLY | O_CLOEXEC);
    Result<os::File> f = recycled ? Result<os::File>(std::move(*recycled))
                                  : os::Open(path, O_WRONLY | O_CLOEXEC | O_CREAT | O_EXCL);
    if (!f.ok()) return discard(f.status());
    Status st = os::PwriteAll(f->fd(), data.data(), data.size(), 0, path);
    if (st.ok() && recycled) st = os::Ftruncate(f->fd(), data.size(), path);
    if (st.ok()) st = os::Fsync(f->fd(), path);
    if (st.ok()) st = f->Close();
    if (!st.ok()) return discard(st);
  }
  if (Status st = os::FsyncDir(staging); !st.ok()) return discard(st);
  // Every checksum, before it becomes visible: a copy damaged on the way is
  // refused here, not found at restore. The metadata, sizes and headers are
  // read from the files just written; the checksums run over the bytes that
  // were written, in memory, instead of reading the shards back (a save
  // trusts its writes the same way).
  auto reader = CheckpointReader::Open(staging, impl_->options);
  if (!reader.ok()) return discard(reader.status());
  auto report = (*reader)->VerifyCopy(files);
  reader->reset();
  if (!report.ok()) return discard(report.status());
  if (!report->problems.empty()) {
    const auto& p = report->problems.front();
    return discard(Corrupt("copy of checkpoint '" + name + "' for " + root + ": " + p.file + ": " +
                               p.status.message(),
                           target));
  }
  if (Status st = os::RenameNoReplace(staging, target); !st.ok()) return discard(st);
  return os::FsyncDir(root);
}

}  // namespace shardwise
