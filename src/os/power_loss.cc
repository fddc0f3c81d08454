#include "os/power_loss.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <atomic>
#include <map>
#include <mutex>
#include <vector>

namespace shardwise::os::power_loss {
namespace {

enum class Kind { kCreateFile, kCreateDir, kRename, kExchange, kUnlinkFile, kRemoveDir };

struct DirOp {
  Kind kind;
  std::string a, b;    // path; or from/to for renames and exchanges
  std::string backup;  // the content a rename replaced or an unlink removed
  std::string parent;  // the directory whose fsync makes it durable
  bool durable = false;
};

struct Journal {
  std::mutex mu;
  // -1: not read from the environment yet. Atomic: every open, fsync and
  // rename asks, and must not take the journal's lock when the model is off.
  std::atomic<int> active{-1};
  std::map<std::string, std::uint64_t> synced_size;  // tracked files
  std::vector<DirOp> ops;
};

Journal& J() {
  static auto* j = new Journal();
  return *j;
}

std::string Parent(const std::string& p) {
  auto pos = p.find_last_of('/');
  if (pos == std::string::npos) return ".";
  if (pos == 0) return "/";
  return p.substr(0, pos);
}

bool ActiveLocked(Journal& j) {
  int a = j.active.load(std::memory_order_relaxed);
  if (a < 0) {
    const char* v = std::getenv("SHARDWISE_POWER_LOSS");
    a = v && *v && std::string(v) != "0" ? 1 : 0;
    j.active.store(a, std::memory_order_relaxed);
  }
  return a == 1;
}

// The content of the regular file at `path`, kept in memory so that an
// operation that replaces or removes it can be undone (files of the commit
// protocol are small; larger ones are not kept, and cannot be restored).
bool Backup(const std::string& path, std::string* out) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode) || st.st_size > (64 << 20))
    return false;
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  out->resize(static_cast<std::size_t>(st.st_size));
  ssize_t n = st.st_size ? ::pread(fd, out->data(), out->size(), 0) : 0;
  ::close(fd);
  return n == st.st_size;
}

void Restore(const std::string& path, const std::string& data) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return;
  if (!data.empty()) (void)!::pwrite(fd, data.data(), data.size(), 0);
  ::close(fd);
}

void MovePrefix(Journal& j, const std::string& from, const std::string& to) {
  std::map<std::string, std::uint64_t> moved;
  for (auto it = j.synced_size.begin(); it != j.synced_size.end();) {
    const std::string& k = it->first;
    if (k == from || k.rfind(from + "/", 0) == 0) {
      moved[to + k.substr(from.size())] = it->second;
      it = j.synced_size.erase(it);
    } else {
      ++it;
    }
  }
  for (auto& [k, v] : moved) j.synced_size[k] = v;
}

void RemoveTreeRaw(const std::string& path) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) return;
  if (!S_ISDIR(st.st_mode)) {
    ::unlink(path.c_str());
    return;
  }
  if (DIR* d = ::opendir(path.c_str())) {
    std::vector<std::string> names;
    while (dirent* e = ::readdir(d))
      if (std::string(e->d_name) != "." && std::string(e->d_name) != "..") names.push_back(e->d_name);
    ::closedir(d);
    for (const auto& n : names) RemoveTreeRaw(path + "/" + n);
  }
  ::rmdir(path.c_str());
}

}  // namespace

bool Active() {
  Journal& j = J();
  if (int a = j.active.load(std::memory_order_relaxed); a >= 0) return a == 1;
  std::lock_guard lock(j.mu);
  return ActiveLocked(j);
}

void SetActiveForTesting(bool on) {
  Journal& j = J();
  std::lock_guard lock(j.mu);
  j.active.store(on ? 1 : 0, std::memory_order_relaxed);
  j.synced_size.clear();
  j.ops.clear();
}

void BeforeOpen(const std::string& path, int flags, bool* existed) {
  *existed = true;
  if (!(flags & (O_WRONLY | O_RDWR | O_CREAT)) || !Active()) return;
  struct stat st {};
  *existed = ::lstat(path.c_str(), &st) == 0;
}

void AfterOpen(const std::string& path, int flags, bool existed, int fd) {
  if (!(flags & (O_WRONLY | O_RDWR | O_CREAT)) || fd < 0) return;
  if (!Active()) return;
  Journal& j = J();
  std::lock_guard lock(j.mu);
  if (!ActiveLocked(j)) return;
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) return;
  if (!existed) {
    j.ops.push_back({Kind::kCreateFile, path, "", "", Parent(path)});
    j.synced_size[path] = 0;
  } else if (!j.synced_size.count(path)) {
    j.synced_size[path] = static_cast<std::uint64_t>(st.st_size);  // durable before we came
  }
}

void AfterFsync(int fd, const std::string& path) {
  if (!Active()) return;
  Journal& j = J();
  std::lock_guard lock(j.mu);
  if (!ActiveLocked(j)) return;
  struct stat st {};
  if (::fstat(fd, &st) != 0) return;
  if (S_ISDIR(st.st_mode)) {
    for (DirOp& op : j.ops)
      if (op.parent == path) op.durable = true;
  } else if (S_ISREG(st.st_mode)) {
    j.synced_size[path] = static_cast<std::uint64_t>(st.st_size);
  }
}

void BeforeRename(const std::string& from, const std::string& to, std::string* backup) {
  if (!Active()) return;
  Journal& j = J();
  std::lock_guard lock(j.mu);
  if (!ActiveLocked(j)) return;
  (void)from;
  std::string data;
  *backup = Backup(to, &data) ? "+" + data : "";
}

void AfterRename(const std::string& from, const std::string& to, const std::string& backup) {
  if (!Active()) return;
  Journal& j = J();
  std::lock_guard lock(j.mu);
  if (!ActiveLocked(j)) return;
  j.ops.push_back({Kind::kRename, from, to, backup, Parent(to)});
  MovePrefix(j, from, to);
}

void AfterExchange(const std::string& a, const std::string& b) {
  if (!Active()) return;
  Journal& j = J();
  std::lock_guard lock(j.mu);
  if (!ActiveLocked(j)) return;
  j.ops.push_back({Kind::kExchange, a, b, "", Parent(b)});
  const std::string tmp = a + "\x01swap";
  MovePrefix(j, a, tmp);
  MovePrefix(j, b, a);
  MovePrefix(j, tmp, b);
}

void AfterMkdir(const std::string& path) {
  if (!Active()) return;
  Journal& j = J();
  std::lock_guard lock(j.mu);
  if (!ActiveLocked(j)) return;
  j.ops.push_back({Kind::kCreateDir, path, "", "", Parent(path)});
}

void BeforeUnlink(const std::string& path, bool is_dir, std::string* backup) {
  if (!Active()) return;
  Journal& j = J();
  std::lock_guard lock(j.mu);
  if (!ActiveLocked(j) || is_dir) return;
  std::string data;
  *backup = Backup(path, &data) ? "+" + data : "";
}

void AfterUnlink(const std::string& path, bool is_dir, const std::string& backup) {
  if (!Active()) return;
  Journal& j = J();
  std::lock_guard lock(j.mu);
  if (!ActiveLocked(j)) return;
  j.ops.push_back({is_dir ? Kind::kRemoveDir : Kind::kUnlinkFile, path, "", backup, Parent(path)});
  j.synced_size.erase(path);
}

void LoseUnsynced() {
  if (!Active()) return;
  Journal& j = J();
  std::lock_guard lock(j.mu);
  if (!ActiveLocked(j)) return;
  // 1. Data: every tracked file back to its durable size.
  for (const auto& [path, size] : j.synced_size) {
    struct stat st {};
    if (::lstat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) &&
        static_cast<std::uint64_t>(st.st_size) != size)
      (void)::truncate(path.c_str(), static_cast<off_t>(size));
  }
  // 2. Directory entries: undo what is not durable, newest first.
  for (auto it = j.ops.rbegin(); it != j.ops.rend(); ++it) {
    const DirOp& op = *it;
    if (op.durable) continue;
    switch (op.kind) {
      case Kind::kCreateFile:
      case Kind::kCreateDir: RemoveTreeRaw(op.a); break;
      case Kind::kRename:
        (void)::rename(op.b.c_str(), op.a.c_str());
        if (!op.backup.empty()) Restore(op.b, op.backup.substr(1));
        break;
      case Kind::kExchange:
        (void)::renameat2(AT_FDCWD, op.a.c_str(), AT_FDCWD, op.b.c_str(), RENAME_EXCHANGE);
        break;
      case Kind::kUnlinkFile:
        if (!op.backup.empty()) Restore(op.a, op.backup.substr(1));
        break;
      case Kind::kRemoveDir: (void)::mkdir(op.a.c_str(), 0755); break;
    }
  }
}

}  // namespace shardwise::os::power_loss
