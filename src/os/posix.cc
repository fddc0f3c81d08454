#include "os/posix.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/ioctl.h>
#include <sys/random.h>
#include <sys/statfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <chrono>
#include <cstring>
#include <thread>

#include "os/fault.h"
#include "os/power_loss.h"
#include "shardwise/names.h"

namespace shardwise::os {
namespace {

// Applies an injected errno fault; returns true when the call must fail.
bool Injected(Op op, int* err) {
  FaultDecision d = Check(op);
  if (d.kind == FaultKind::kErrno) {
    *err = d.err;
    return true;
  }
  return false;
}

}  // namespace

File& File::operator=(File&& o) noexcept {
  if (this != &o) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = o.fd_;
    path_ = std::move(o.path_);
    o.fd_ = -1;
  }
  return *this;
}

File::~File() {
  if (fd_ >= 0) ::close(fd_);
}

Status File::Close() {
  if (fd_ < 0) return Status::Ok();
  int fd = fd_;
  fd_ = -1;
  // Linux closes the descriptor even when close() fails; never retry.
  if (::close(fd) != 0 && errno != EINTR) return IoError("close", path_, errno);
  return Status::Ok();
}

Result<File> Open(const std::string& path, int flags, mode_t mode) {
  int err = 0;
  if (Injected(Op::kOpen, &err)) return IoError("open", path, err);
  bool existed = true;
  power_loss::BeforeOpen(path, flags, &existed);
  int fd;
  do {
    fd = ::open(path.c_str(), flags | O_CLOEXEC, mode);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) return IoError("open", path, errno);
  power_loss::AfterOpen(path, flags, existed, fd);
  return File(fd, path);
}

Result<std::size_t> Pwrite(int fd, const void* buf, std::size_t n,
                           std::uint64_t off, const std::string& path) {
  FaultDecision d = Check(Op::kWrite);
  if (d.kind == FaultKind::kErrno) return IoError("write", path, d.err);
  if (d.kind == FaultKind::kShort) n = ShortLength(n);
  ssize_t r;
  do {
    r = ::pwrite(fd, buf, n, static_cast<off_t>(off));
  } while (r < 0 && errno == EINTR);
  if (r < 0) return IoError("write", path, errno);
  return static_cast<std::size_t>(r);
}

Status PwriteAll(int fd, const void* buf, std::size_t n, std::uint64_t off,
                 const std::string& path) {
  const auto* p = static_cast<const char*>(buf);
  while (n > 0) {
    SW_ASSIGN_OR_RETURN(std::size_t w, Pwrite(fd, p, n, off, path));
    if (w == 0) return IoError("write (no progress)", path, EIO);
    p += w;
    n -= w;
    off += w;
  }
  return Status::Ok();
}

Result<std::size_t> Pread(int fd, void* buf, std::size_t n, std::uint64_t off,
                          const std::string& path) {
  FaultDecision d = Check(Op::kRead);
  if (d.kind == FaultKind::kErrno) return IoError("read", path, d.err);
  if (d.kind == FaultKind::kShort) n = ShortLength(n);
  ssize_t r;
  do {
    r = ::pread(fd, buf, n, static_cast<off_t>(off));
  } while (r < 0 && errno == EINTR);
  if (r < 0) return IoError("read", path, errno);
  return static_cast<std::size_t>(r);
}

Status PreadAll(int fd, void* buf, std::size_t n, std::uint64_t off,
                const std::string& path) {
  auto* p = static_cast<char*>(buf);
  while (n > 0) {
    SW_ASSIGN_OR_RETURN(std::size_t r, Pread(fd, p, n, off, path));
    if (r == 0)
      return Corrupt("read " + path + ": file is truncated (end of file at " +
                         std::to_string(off) + ")",
                     path);
    p += r;
    n -= r;
    off += r;
  }
  return Status::Ok();
}

Status Fsync(int fd, const std::string& path) {
  int err = 0;
  if (Injected(Op::kFsync, &err)) return IoError("fsync", path, err);
  if (::fsync(fd) != 0) return IoError("fsync", path, errno);
  power_loss::AfterFsync(fd, path);
  return Status::Ok();
}

Status Fallocate(int fd, std::uint64_t off, std::uint64_t len,
                 const std::string& path) {
  int err = 0;
  if (Injected(Op::kFallocate, &err)) return IoError("fallocate", path, err);
  if (len == 0) return Status::Ok();
  int r;
  do {
    r = ::fallocate(fd, 0, static_cast<off_t>(off), static_cast<off_t>(len));
  } while (r != 0 && errno == EINTR);
  if (r != 0) {
    // Preallocation is an optimisation; only a real shortage is an error.
    if (errno == EOPNOTSUPP || errno == ENOSYS || errno == EINVAL)
      return Status::Ok();
    return IoError("fallocate", path, errno);
  }
  return Status::Ok();
}

Status Ftruncate(int fd, std::uint64_t len, const std::string& path) {
  // Counted as a fallocate by the fault seam: both set a file's size.
  int err = 0;
  if (Injected(Op::kFallocate, &err)) return IoError("ftruncate", path, err);
  int r;
  do {
    r = ::ftruncate(fd, static_cast<off_t>(len));
  } while (r != 0 && errno == EINTR);
  if (r != 0) return IoError("ftruncate", path, errno);
  return Status::Ok();
}

Status ZeroRange(int fd, std::uint64_t off, std::uint64_t len, const std::string& path) {
  // Counted as a fallocate by the fault seam.
  int err = 0;
  if (Injected(Op::kFallocate, &err)) return IoError("fallocate (punch hole)", path, err);
  if (len == 0) return Status::Ok();
  int r;
  do {
    r = ::fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(off),
                    static_cast<off_t>(len));
  } while (r != 0 && errno == EINTR);
  if (r == 0) return Status::Ok();
  if (errno != EOPNOTSUPP && errno != ENOSYS && errno != EINVAL)
    return IoError("fallocate (punch hole)", path, errno);
  // No holes here: zeros are written, buffered (any alignment).
  const bool direct = (::fcntl(fd, F_GETFL) & O_DIRECT) != 0;
  if (direct) SW_RETURN_IF_ERROR(SetDirectIo(fd, false, path));
  static constexpr std::byte kZeros[64 << 10] = {};
  for (std::uint64_t done = 0; done < len;) {
    const std::uint64_t n = std::min<std::uint64_t>(sizeof kZeros, len - done);
    SW_RETURN_IF_ERROR(PwriteAll(fd, kZeros, n, off + done, path));
    done += n;
  }
  if (direct) {
    SW_RETURN_IF_ERROR(Fsync(fd, path));  // before O_DIRECT writes may overlap its pages
    SW_RETURN_IF_ERROR(SetDirectIo(fd, true, path));
  }
  return Status::Ok();
}

Status FsyncDir(const std::string& dir) {
  SW_ASSIGN_OR_RETURN(File f, Open(dir, O_RDONLY | O_DIRECTORY));
  SW_RETURN_IF_ERROR(Fsync(f.fd(), dir));
  return f.Close();
}

Status Rename(const std::string& from, const std::string& to) {
  int err = 0;
  if (Injected(Op::kRename, &err))
    return IoError("rename", from + " -> " + to, err);
  std::string backup;
  power_loss::BeforeRename(from, to, &backup);
  if (::rename(from.c_str(), to.c_str()) != 0)
    return IoError("rename", from + " -> " + to, errno);
  power_loss::AfterRename(from, to, backup);
  return Status::Ok();
}

Status RenameNoReplace(const std::string& from, const std::string& to, bool atomic_only) {
  int err = 0;
  if (Injected(Op::kRename, &err))
    return IoError("rename", from + " -> " + to, err);
  if (::renameat2(AT_FDCWD, from.c_str(), AT_FDCWD, to.c_str(),
                  RENAME_NOREPLACE) == 0) {
    power_loss::AfterRename(from, to, "");
    return Status::Ok();
  }
  if (errno != EINVAL && errno != ENOSYS)
    return IoError("rename", from + " -> " + to, errno);
  if (atomic_only)
    return Status(StatusCode::kUnavailable,
                  "rename " + from + " -> " + to + ": no RENAME_NOREPLACE here", errno, to);
  // Filesystem without RENAME_NOREPLACE (older Lustre, NFS): check, then
  // rename. rename(2) of a directory onto a non-empty one fails anyway.
  struct stat st;
  if (::lstat(to.c_str(), &st) == 0)
    return IoError("rename", from + " -> " + to, EEXIST);
  if (::rename(from.c_str(), to.c_str()) != 0)
    return IoError("rename", from + " -> " + to, errno);
  power_loss::AfterRename(from, to, "");
  return Status::Ok();
}

bool SoleOpener(int fd) {
  if (::fcntl(fd, F_SETLEASE, F_WRLCK) != 0) return false;
  (void)::fcntl(fd, F_SETLEASE, F_UNLCK);
  return true;
}

Status ClearNonBlocking(int fd, const std::string& path) {
  const int fl = ::fcntl(fd, F_GETFL);
  if (fl < 0 || ::fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) != 0) return IoError("fcntl", path, errno);
  return Status::Ok();
}

Status RenameExchange(const std::string& a, const std::string& b) {
  int err = 0;
  if (!Injected(Op::kRename, &err)) {
    if (::renameat2(AT_FDCWD, a.c_str(), AT_FDCWD, b.c_str(), RENAME_EXCHANGE) == 0) {
      power_loss::AfterExchange(a, b);
      return Status::Ok();
    }
    err = errno;
  }
  // An injected errno means what the kernel's would (EINVAL: a filesystem
  // without the exchange, as Lustre).
  if (err == EINVAL || err == ENOSYS || err == EOPNOTSUPP)
    return Status(StatusCode::kUnavailable,
                  "rename (exchange) " + a + " <-> " + b + ": not supported", err, a);
  return IoError("rename (exchange)", a + " <-> " + b, err);
}

Status Mkdir(const std::string& path, mode_t mode, bool exist_ok) {
  int err = 0;
  if (Injected(Op::kMkdir, &err)) return IoError("mkdir", path, err);
  if (::mkdir(path.c_str(), mode) == 0) {
    power_loss::AfterMkdir(path);
    return Status::Ok();
  }
  if (errno == EEXIST && exist_ok) {
    struct stat st;
    if (::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode))
      return Status::Ok();
    return IoError("mkdir", path, ENOTDIR);
  }
  return IoError("mkdir", path, errno);
}

Status MkdirAll(const std::string& path, mode_t mode) {
  if (path.empty()) return InvalidArgument("empty directory path");
  std::size_t pos = 0;
  while (true) {
    pos = path.find('/', pos + 1);
    std::string prefix = path.substr(0, pos);
    if (!prefix.empty() && !Exists(prefix)) {
      SW_RETURN_IF_ERROR(Mkdir(prefix, mode, true));
      // The new entry is durable in its parent (the first checkpoint in a
      // new root must not vanish with the root at a power loss). A parent
      // this process may not open for reading (a write-only scratch
      // directory), or a filesystem without directory fsync, leaves that to
      // the filesystem, as before.
      Status synced = FsyncDir(Dirname(prefix));
      if (!synced.ok() && synced.err() != EACCES && synced.err() != EPERM &&
          synced.err() != EINVAL)
        return synced;
    }
    if (pos == std::string::npos) break;
  }
  return Status::Ok();
}

Status Unlink(const std::string& path) {
  int err = 0;
  if (Injected(Op::kUnlink, &err)) return IoError("unlink", path, err);
  std::string backup;
  power_loss::BeforeUnlink(path, false, &backup);
  if (::unlink(path.c_str()) != 0) return IoError("unlink", path, errno);
  power_loss::AfterUnlink(path, false, backup);
  return Status::Ok();
}

Status Rmdir(const std::string& path) {
  int err = 0;
  if (Injected(Op::kUnlink, &err)) return IoError("rmdir", path, err);
  if (::rmdir(path.c_str()) != 0) return IoError("rmdir", path, errno);
  power_loss::AfterUnlink(path, true, "");
  return Status::Ok();
}

Status RemoveTree(const std::string& path) {
  // What is gone already is done: two removers of one tree (gc's sweep of
  // leftovers and a delete finishing its own) must not fail each other.
  auto gone = [](Status s) { return s.err() == ENOENT ? Status::Ok() : s; };
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return Status::Ok();
    return IoError("stat", path, errno);
  }
  if (!S_ISDIR(st.st_mode)) return gone(Unlink(path));
  auto entries = ListDir(path);
  if (!entries.ok()) return gone(entries.status());
  for (const DirEntry& e : *entries)
    SW_RETURN_IF_ERROR(RemoveTree(JoinPath(path, e.name)));
  return gone(Rmdir(path));
}

void CloseInForkChild(int fd) { (void)::close(fd); }

Result<std::vector<DirEntry>> ListDir(const std::string& dir) {
  DIR* d = ::opendir(dir.c_str());
  if (!d) return IoError("opendir", dir, errno);
  std::vector<DirEntry> out;
  // readdir reports an error only through errno, and leaves it alone at
  // the end of the directory: it is cleared before every call (an lstat
  // below of an entry renamed away meanwhile sets it).
  for (;;) {
    errno = 0;
    struct dirent* e = ::readdir(d);
    if (e == nullptr) break;
    if (std::strcmp(e->d_name, ".") == 0 || std::strcmp(e->d_name, "..") == 0)
      continue;
    unsigned char type = e->d_type;
    if (type == DT_UNKNOWN) {
      struct stat st;
      std::string full = JoinPath(dir, e->d_name);
      if (::lstat(full.c_str(), &st) == 0) {
        type = S_ISDIR(st.st_mode)   ? DT_DIR
               : S_ISREG(st.st_mode) ? DT_REG
               : S_ISLNK(st.st_mode) ? DT_LNK
                                     : DT_UNKNOWN;
      }
    }
    out.push_back({e->d_name, type});
  }
  int err = errno;
  ::closedir(d);
  if (err != 0) return IoError("readdir", dir, err);
  return out;
}

Result<struct stat> Stat(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return IoError("stat", path, errno);
  return st;
}

Result<struct stat> Lstat(const std::string& path) {
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) return IoError("stat", path, errno);
  return st;
}

bool Exists(const std::string& path) {
  struct stat st;
  return ::lstat(path.c_str(), &st) == 0;
}

Result<std::string> ReadSmallFile(const std::string& path,
                                  std::uint64_t max_bytes) {
  // O_NOFOLLOW: a symlinked manifest or pointer is refused, not followed.
  SW_ASSIGN_OR_RETURN(File f, Open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK));
  struct stat st;
  if (::fstat(f.fd(), &st) != 0) return IoError("fstat", path, errno);
  if (!S_ISREG(st.st_mode))
    return Corrupt(path + ": not a regular file", path);
  SW_RETURN_IF_ERROR(ClearNonBlocking(f.fd(), path));  // a regular file: reads block as usual
  if (static_cast<std::uint64_t>(st.st_size) > max_bytes)
    return Corrupt(path + ": " + std::to_string(st.st_size) +
                       " bytes is larger than the limit of " +
                       std::to_string(max_bytes),
                   path);
  std::string data(static_cast<std::size_t>(st.st_size), '\0');
  std::size_t got = 0;
  while (got < data.size()) {
    SW_ASSIGN_OR_RETURN(std::size_t r,
                        Pread(f.fd(), data.data() + got, data.size() - got,
                              got, path));
    if (r == 0) break;
    got += r;
  }
  data.resize(got);
  return data;
}

namespace {

// Writes `data` at offset 0 of `f`, opened with O_DIRECT. What the direct
// writes refuse or leave (EINVAL where the filesystem takes O_DIRECT at
// open but not this write; the rest after a short write that ends off a
// page) goes through the page cache.
Status PwriteDirect(File& f, std::string_view data) {
  std::size_t done = 0;
  while (done < data.size() && done % 4096 == 0) {
    auto w = Pwrite(f.fd(), data.data() + done, data.size() - done, done, f.path());
    if (!w.ok() && w.status().err() == EINVAL) break;
    SW_RETURN_IF_ERROR(w.status());
    if (*w == 0) return IoError("write (no progress)", f.path(), EIO);
    done += *w;
  }
  if (done == data.size()) return Status::Ok();
  SW_RETURN_IF_ERROR(SetDirectIo(f.fd(), false, f.path()));
  return PwriteAll(f.fd(), data.data() + done, data.size() - done, done, f.path());
}

bool WholePages(std::string_view data) {
  return !data.empty() && reinterpret_cast<std::uintptr_t>(data.data()) % 4096 == 0 &&
         data.size() % 4096 == 0;
}

}  // namespace

Status WriteFileAtomic(const std::string& path, std::string_view data,
                       std::string_view crash_tag, WriteVia via) {
  std::string tmp = names::TempPath(path, RandomHex(6));
  {
    SW_ASSIGN_OR_RETURN(File f,
                        Open(tmp, O_WRONLY | O_CREAT | O_EXCL, 0644));
    // Where the filesystem does not take O_DIRECT (older tmpfs), fcntl
    // refuses it and the write goes through the page cache.
    const bool direct = via == WriteVia::kDirect && WholePages(data) &&
                        SetDirectIo(f.fd(), true, tmp).ok();
    Status s = direct ? PwriteDirect(f, data) : PwriteAll(f.fd(), data.data(), data.size(), 0, tmp);
    if (s.ok()) s = Fsync(f.fd(), tmp);
    if (s.ok()) s = f.Close();
    if (!s.ok()) {
      ::unlink(tmp.c_str());
      return s;
    }
  }
  if (!crash_tag.empty()) CrashPoint(std::string(crash_tag) + ".tmp_synced");
  Status s = Rename(tmp, path);
  if (!s.ok()) {
    ::unlink(tmp.c_str());
    return s;
  }
  if (!crash_tag.empty()) CrashPoint(std::string(crash_tag) + ".renamed");
  return FsyncDir(Dirname(path));
}

Result<void*> MapAnonymous(std::uint64_t bytes, bool huge_pages) {
  // With huge pages the advice must come before the pages are touched, so
  // MAP_POPULATE is left out and MADV_POPULATE_WRITE (Linux 5.14) faults
  // them in afterwards; older kernels get a touch per page.
  int flags = MAP_PRIVATE | MAP_ANONYMOUS | (huge_pages ? 0 : MAP_POPULATE);
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, flags, -1, 0);
  if (p == MAP_FAILED)
    return Status(StatusCode::kIoError,
                  "cannot map " + std::to_string(bytes) + " bytes of memory: " + std::strerror(errno),
                  errno);
  if (huge_pages) {
    (void)::madvise(p, bytes, MADV_HUGEPAGE);  // a hint; fine if refused
    constexpr int kPopulateWrite = 23;          // MADV_POPULATE_WRITE
    if (::madvise(p, bytes, kPopulateWrite) != 0) {
      auto* b = static_cast<volatile std::byte*>(p);
      for (std::uint64_t off = 0; off < bytes; off += 4096) b[off] = std::byte{0};
    }
  }
  return p;
}

Result<struct stat> Fstat(int fd, const std::string& path) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) return IoError("fstat", path, errno);
  return st;
}

Status SetDirectIo(int fd, bool on, const std::string& path) {
  const int flags = ::fcntl(fd, F_GETFL);
  if (flags < 0) return IoError("fcntl(F_GETFL)", path, errno);
  if (::fcntl(fd, F_SETFL, on ? (flags | O_DIRECT) : (flags & ~O_DIRECT)) != 0)
    return IoError(on ? "fcntl(O_DIRECT)" : "fcntl(~O_DIRECT)", path, errno);
  return Status::Ok();
}

Status Touch(int fd, const std::string& path) {
  if (::futimens(fd, nullptr) != 0) return IoError("futimens", path, errno);
  return Status::Ok();
}

Status Ioctl(int fd, unsigned long request, void* arg, const std::string& what,
             const std::string& path) {
  int r;
  do {
    r = ::ioctl(fd, request, arg);
  } while (r != 0 && errno == EINTR);
  if (r != 0) return IoError("ioctl " + what, path, errno);
  return Status::Ok();
}

Result<long> FilesystemMagic(const std::string& dir) {
  struct statfs st {};
  if (::statfs(dir.c_str(), &st) != 0) return IoError("statfs", dir, errno);
  return static_cast<long>(st.f_type);
}

long ProcessId() { return static_cast<long>(::getpid()); }
long ParentProcessId() { return static_cast<long>(::getppid()); }

std::string HostName() {
  char host[256] = {};
  if (::gethostname(host, sizeof host - 1) != 0) return "?";
  return host;
}

std::string RealPath(const std::string& path) {
  char real[PATH_MAX];
  return ::realpath(path.c_str(), real) ? std::string(real) : path;
}

Result<void*> MapUntouched(std::uint64_t bytes) {
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED)
    return Status(StatusCode::kIoError,
                  "cannot map " + std::to_string(bytes) + " bytes of memory: " + std::strerror(errno),
                  errno);
  (void)::madvise(p, bytes, MADV_NOHUGEPAGE);  // a hint: huge pages would hide the cost
  return p;
}

void Unmap(void* p, std::uint64_t bytes) {
  if (p) ::munmap(p, bytes);
}

Status Flock(int fd, bool exclusive, bool try_only, const std::string& path) {
  int op = (exclusive ? LOCK_EX : LOCK_SH) | (try_only ? LOCK_NB : 0);
  int r;
  do {
    r = ::flock(fd, op);
  } while (r != 0 && errno == EINTR);
  if (r == 0) return Status::Ok();
  if (errno == EWOULDBLOCK || errno == ENOLCK || errno == ENOSYS ||
      errno == EOPNOTSUPP)
    return Status(StatusCode::kUnavailable, "flock " + path + ": busy or unsupported",
                  errno, path);
  return IoError("flock", path, errno);
}

std::string JoinPath(std::string_view a, std::string_view b) {
  std::string out(a);
  if (!out.empty() && out.back() != '/') out += '/';
  out += b;
  return out;
}

std::string Dirname(const std::string& path) {
  auto pos = path.find_last_of('/');
  if (pos == std::string::npos) return ".";
  if (pos == 0) return "/";
  return path.substr(0, pos);
}

std::string Basename(const std::string& path) {
  auto pos = path.find_last_of('/');
  return pos == std::string::npos ? path : path.substr(pos + 1);
}

std::string RandomHex(int bytes) {
  unsigned char buf[64];
  if (bytes > 64) bytes = 64;
  ssize_t got = ::getrandom(buf, static_cast<std::size_t>(bytes), 0);
  if (got != bytes) {
    // getrandom cannot fail for <=256 bytes once the pool is ready; mix in
    // time and pid as a last resort rather than returning a constant.
    auto t = std::chrono::steady_clock::now().time_since_epoch().count();
    for (int i = 0; i < bytes; ++i)
      buf[i] = static_cast<unsigned char>((t >> (i % 8 * 8)) ^ ::getpid() ^ i);
  }
  static const char kHex[] = "0123456789abcdef";
  std::string out;
  for (int i = 0; i < bytes; ++i) {
    out += kHex[buf[i] >> 4];
    out += kHex[buf[i] & 15];
  }
  return out;
}

double NowUnix() {
  return std::chrono::duration<double>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

double MonotonicSeconds() {
  return std::chrono::duration<double>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

void SleepSeconds(double s) {
  std::this_thread::sleep_for(std::chrono::duration<double>(s));
}

Result<CommandResult> RunCommand(const std::vector<std::string>& argv, double timeout_s) {
  if (argv.empty()) return InvalidArgument("RunCommand: empty argv");
  int out_pipe[2], err_pipe[2];
  if (::pipe2(out_pipe, O_CLOEXEC) != 0) return Status(StatusCode::kIoError, "pipe", errno);
  if (::pipe2(err_pipe, O_CLOEXEC) != 0) {
    int e = errno;
    ::close(out_pipe[0]);
    ::close(out_pipe[1]);
    return Status(StatusCode::kIoError, "pipe", e);
  }
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&fa, out_pipe[1], 1);
  posix_spawn_file_actions_adddup2(&fa, err_pipe[1], 2);
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid = -1;
  int rc = ::posix_spawnp(&pid, argv[0].c_str(), &fa, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  ::close(out_pipe[1]);
  ::close(err_pipe[1]);
  if (rc != 0) {
    ::close(out_pipe[0]);
    ::close(err_pipe[0]);
    return Status(rc == ENOENT ? StatusCode::kNotFound : StatusCode::kIoError,
                  "cannot run " + argv[0] + ": " + std::strerror(rc), rc);
  }
  CommandResult r;
  constexpr std::size_t kMax = 16u << 20;
  const double deadline = MonotonicSeconds() + timeout_s;
  pollfd fds[2] = {{out_pipe[0], POLLIN, 0}, {err_pipe[0], POLLIN, 0}};
  std::string* sinks[2] = {&r.out, &r.err};
  int open_fds = 2;
  bool timed_out = false;
  char buf[65536];
  while (open_fds > 0) {
    double left = deadline - MonotonicSeconds();
    if (left <= 0) {
      timed_out = true;
      break;
    }
    int n = ::poll(fds, 2, static_cast<int>(left * 1000) + 1);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) continue;
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      ssize_t got = ::read(fds[i].fd, buf, sizeof buf);
      if (got > 0) {
        if (sinks[i]->size() < kMax) sinks[i]->append(buf, static_cast<std::size_t>(got));
      } else if (got == 0 || errno != EINTR) {
        ::close(fds[i].fd);
        fds[i].fd = -1;
        --open_fds;
      }
    }
  }
  for (auto& f : fds)
    if (f.fd >= 0) ::close(f.fd);
  if (timed_out) ::kill(pid, SIGKILL);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (timed_out)
    return Status(StatusCode::kTimeout, argv[0] + " did not finish in " +
                                            std::to_string(static_cast<int>(timeout_s)) + " s");
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

}  // namespace shardwise::os
