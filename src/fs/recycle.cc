// The recycle bin of a root (fs/recycle.h).
#include "fs/recycle.h"

#include <dirent.h>
#include <sys/stat.h>

#include <cerrno>
#include <vector>

#include "os/posix.h"
#include "shardwise/names.h"

namespace shardwise::fs {
namespace {

struct Binned {
  std::string path;
  std::uint64_t bytes;
};

// The bin's regular files; none if it does not exist.
Result<std::vector<Binned>> ListBin(const std::string& bin) {
  std::vector<Binned> files;
  if (!os::Exists(bin)) return files;
  SW_ASSIGN_OR_RETURN(auto entries, os::ListDir(bin));
  for (const auto& e : entries) {
    if (e.type != DT_REG) continue;
    const std::string path = os::JoinPath(bin, e.name);
    auto st = os::Lstat(path);
    if (st.ok()) files.push_back({path, static_cast<std::uint64_t>(st->st_size)});
  }
  return files;
}

}  // namespace

Status RecycleFiles(const std::string& root, const std::string& dir) {
  const std::string bin = os::JoinPath(root, names::kRecycleDir);
  SW_RETURN_IF_ERROR(os::Mkdir(bin, 0755, /*exist_ok=*/true));
  // What the last removal left was not taken: it goes now.
  SW_ASSIGN_OR_RETURN(auto stale, ListBin(bin));
  for (const Binned& f : stale) {
    Status st = os::Unlink(f.path);
    if (!st.ok() && st.err() != ENOENT) return st;  // a save may have just taken it
  }
  SW_ASSIGN_OR_RETURN(auto entries, os::ListDir(dir));
  for (const auto& e : entries) {
    if (e.type != DT_REG) continue;
    SW_RETURN_IF_ERROR(
        os::Rename(os::JoinPath(dir, e.name), os::JoinPath(bin, os::RandomHex(8))));
  }
  return Status::Ok();
}

Result<bool> TakeRecycled(const std::string& root, const std::string& path, std::uint64_t bytes) {
  const std::string bin = os::JoinPath(root, names::kRecycleDir);
  SW_ASSIGN_OR_RETURN(auto files, ListBin(bin));
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
    Status st = os::RenameNoReplace(files[best].path, path);
    if (st.ok()) return true;
    if (st.err() != ENOENT) return st;
    files.erase(files.begin() + static_cast<std::ptrdiff_t>(best));
  }
  return false;
}

}  // namespace shardwise::fs
