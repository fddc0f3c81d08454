// The recycle bin of a root (fs/recycle.h).
#include "fs/recycle.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <vector>

#include "shardwise/names.h"

namespace shardwise::fs {
namespace {

struct Binned {
  std::string path;
  std::uint64_t bytes;
};

// A file that may be recycled: a regular file of this user with no other
// hard link (a copy made with `cp -al` shares the inode: overwriting it
// would change the copy).
bool Recyclable(const struct stat& st) {
  return S_ISREG(st.st_mode) && st.st_nlink == 1 && st.st_uid == ::geteuid();
}

// The bin, if it is this user's own directory (not a link to one).
bool UsableBin(const std::string& bin) {
  auto st = os::Lstat(bin);
  return st.ok() && S_ISDIR(st->st_mode) && st->st_uid == ::geteuid();
}

// The bin's files that may be taken; none if it is missing or not usable.
std::vector<Binned> ListBin(const std::string& bin) {
  std::vector<Binned> files;
  if (!UsableBin(bin)) return files;
  auto entries = os::ListDir(bin);
  if (!entries.ok()) return files;
  for (const auto& e : *entries) {
    const std::string path = os::JoinPath(bin, e.name);
    auto st = os::Lstat(path);
    if (st.ok() && Recyclable(*st)) files.push_back({path, static_cast<std::uint64_t>(st->st_size)});
  }
  return files;
}

// Gives up a file renamed out of the bin: it holds an old checkpoint's bytes
// and belongs to no checkpoint.
std::nullopt_t Refuse(const std::string& path) {
  (void)os::Unlink(path);
  return std::nullopt;
}

}  // namespace

bool RecyclingSupported(const std::string& root) {
  auto magic = os::FilesystemMagic(root);
  if (!magic.ok()) return false;
  switch (static_cast<unsigned long>(*magic)) {
    case 0x01021994:  // tmpfs
    case 0x0000EF53:  // ext2, ext3, ext4
    case 0x58465342:  // xfs
    case 0x9123683E:  // btrfs
    case 0xF2F52010:  // f2fs
    case 0x858458F6:  // ramfs
      return true;
    default:
      return false;
  }
}

void RecycleFiles(const std::string& root, const std::string& dir) {
  if (!RecyclingSupported(root)) return;
  const std::string bin = os::JoinPath(root, names::kRecycleDir);
  if (!os::Mkdir(bin, 0700, /*exist_ok=*/true).ok() || !UsableBin(bin)) return;
  // What the last removal left was not taken: it goes now (a save may
  // have just taken one: ENOENT).
  for (const Binned& f : ListBin(bin)) (void)os::Unlink(f.path);
  auto entries = os::ListDir(dir);
  if (!entries.ok()) return;
  for (const auto& e : *entries) {
    if (!names::IsShardFile(e.name)) continue;
    const std::string from = os::JoinPath(dir, e.name);
    auto st = os::Lstat(from);
    if (!st.ok() || !Recyclable(*st)) continue;
    Status moved = os::Rename(from, os::JoinPath(bin, os::RandomHex(8)));
    if (!moved.ok() && moved.err() != ENOENT) return;
  }
}

std::optional<os::File> TakeRecycled(const std::string& root, const std::string& path,
                                     std::uint64_t bytes, int flags) {
  if (!names::IsShardFile(os::Basename(path)) || !RecyclingSupported(root)) return std::nullopt;
  std::vector<Binned> files = ListBin(os::JoinPath(root, names::kRecycleDir));
  // Another writer may take a file first: then the next one is tried.
  while (!files.empty()) {
    std::size_t best = 0;
    for (std::size_t i = 1; i < files.size(); ++i) {
      const bool fits = files[i].bytes >= bytes, best_fits = files[best].bytes >= bytes;
      if (fits != best_fits ? fits
                            : (fits ? files[i].bytes < files[best].bytes
                                    : files[i].bytes > files[best].bytes))
        best = i;
    }
    // Atomic or not at all: a check-then-rename could replace a file that
    // another attempt just created at `path`.
    Status st = os::RenameNoReplace(files[best].path, path, /*atomic_only=*/true);
    if (st.err() == ENOENT) {
      files.erase(files.begin() + static_cast<std::ptrdiff_t>(best));
      continue;
    }
    if (!st.ok()) return std::nullopt;
    // It may have changed since it was listed: opened without following a
    // link or blocking on a FIFO, then checked again; and nobody may hold
    // it open or mapped (a reader of the checkpoint it came from).
    auto file = os::Open(path, (flags & ~(O_CREAT | O_EXCL)) | O_NOFOLLOW | O_NONBLOCK);
    if (!file.ok()) return Refuse(path);
    auto now = os::Fstat(file->fd(), path);
    if (!now.ok() || !Recyclable(*now) || !os::SoleOpener(file->fd())) return Refuse(path);
    if (!os::ClearNonBlocking(file->fd(), path).ok()) return Refuse(path);
    return std::move(*file);
  }
  return std::nullopt;
}

}  // namespace shardwise::fs
