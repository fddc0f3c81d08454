// The only place shardwise calls POSIX. Each wrapper consults the fault seam
// (os/fault.h), retries EINTR, and returns a Status naming the path.
// scripts/check_layers.py fails on a system call outside src/os/, except in
// the few files it lists with the reason (the filesystem probes, which must
// not consume a fault meant for the save; io_uring's eventfd; dlopen).
#pragma once

#include <dirent.h>
#include <sys/stat.h>
#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "shardwise/status.h"

namespace shardwise::os {

// An owned file descriptor with the path it was opened from (for errors).
class File {
 public:
  File() = default;
  File(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}
  File(File&& o) noexcept : fd_(o.fd_), path_(std::move(o.path_)) { o.fd_ = -1; }
  File& operator=(File&& o) noexcept;
  File(const File&) = delete;
  File& operator=(const File&) = delete;
  ~File();

  int fd() const { return fd_; }
  const std::string& path() const { return path_; }
  bool is_open() const { return fd_ >= 0; }
  // Closes and reports the error (close can report deferred write errors).
  Status Close();
  // Hands the descriptor to the caller, who closes it.
  int Release() {
    path_.clear();
    return std::exchange(fd_, -1);
  }

 private:
  int fd_ = -1;
  std::string path_;
};

Result<File> Open(const std::string& path, int flags, mode_t mode = 0644);
// One pwrite; may move fewer bytes (the caller loops).
Result<std::size_t> Pwrite(int fd, const void* buf, std::size_t n,
                           std::uint64_t off, const std::string& path);
// Writes all n bytes, looping over short writes. A write that makes no
// progress is an error.
Status PwriteAll(int fd, const void* buf, std::size_t n, std::uint64_t off,
                 const std::string& path);
Result<std::size_t> Pread(int fd, void* buf, std::size_t n, std::uint64_t off,
                          const std::string& path);
// Reads exactly n bytes; hitting end of file is kCorrupt ("truncated").
Status PreadAll(int fd, void* buf, std::size_t n, std::uint64_t off,
                const std::string& path);
Status Fsync(int fd, const std::string& path);
// Reserves space; filesystems without fallocate are not an error.
Status Fallocate(int fd, std::uint64_t off, std::uint64_t len,
                 const std::string& path);
Status Ftruncate(int fd, std::uint64_t len, const std::string& path);
// Makes [off, off + len) of the file read as zeros, within its size:
// punches a hole, or where the filesystem has no holes writes zeros
// (with O_DIRECT cleared on `fd` meanwhile).
Status ZeroRange(int fd, std::uint64_t off, std::uint64_t len, const std::string& path);
Status FsyncDir(const std::string& dir);
Status Rename(const std::string& from, const std::string& to);
// Fails with kAlreadyExists when `to` exists. Falls back to a check + rename
// on filesystems without renameat2(RENAME_NOREPLACE); with `atomic_only`,
// fails there with kUnavailable instead.
Status RenameNoReplace(const std::string& from, const std::string& to, bool atomic_only = false);
// Whether `fd` (open for writing) is the only open of its file on this
// machine, descriptors and mappings of every process included: a write
// lease is granted only then, and is dropped at once. False where it is
// not granted or leases are unsupported (NFS, Lustre, leases-enable 0).
bool SoleOpener(int fd);
// Clears O_NONBLOCK on `fd` (set to open a file that might be a FIFO).
Status ClearNonBlocking(int fd, const std::string& path);
// Atomically swaps two paths; kUnavailable where the filesystem cannot.
Status RenameExchange(const std::string& a, const std::string& b);
// Creates a directory; an existing directory is fine when exist_ok.
Status Mkdir(const std::string& path, mode_t mode = 0755, bool exist_ok = false);
// Creates `path` and its missing parents, each made durable in its parent
// (fsync of the parent directory).
Status MkdirAll(const std::string& path, mode_t mode = 0755);
Status Unlink(const std::string& path);
Status Rmdir(const std::string& path);
// Removes a tree without following symlinks; what another remover took
// meanwhile (ENOENT) counts as removed.
Status RemoveTree(const std::string& path);
// Closes fd in the child of a fork (a pthread_atfork handler): no fault
// seam, no allocation, errors ignored (only async-signal-safe calls).
void CloseInForkChild(int fd);

struct DirEntry {
  std::string name;
  unsigned char type;  // DT_DIR, DT_REG, DT_LNK, DT_UNKNOWN...
};
Result<std::vector<DirEntry>> ListDir(const std::string& dir);
Result<struct stat> Stat(const std::string& path);
Result<struct stat> Fstat(int fd, const std::string& path);
// Sets or clears O_DIRECT on an open file (fcntl F_SETFL).
Status SetDirectIo(int fd, bool on, const std::string& path);
// Sets the file's times to now (futimens): a sign of life for gc.
Status Touch(int fd, const std::string& path);
// ioctl(fd, request, arg); the error keeps errno for the caller to judge.
Status Ioctl(int fd, unsigned long request, void* arg, const std::string& what,
             const std::string& path);
// statfs(2)'s f_type of `dir`.
Result<long> FilesystemMagic(const std::string& dir);
Result<struct stat> Lstat(const std::string& path);
bool Exists(const std::string& path);

// Reads a whole regular file, refusing anything larger than max_bytes and
// anything that is not a regular file (no devices, no FIFOs).
Result<std::string> ReadSmallFile(const std::string& path,
                                  std::uint64_t max_bytes);
// The durable file write: tmp in the same directory, write, fsync,
// rename over `path`, fsync the directory. With a crash_tag, the crash points
// TAG.tmp_synced and TAG.renamed are passed between the steps. With
// kDirect, page-aligned `data` of whole pages is written with O_DIRECT
// (no copy into the page cache) where the filesystem takes it, and through
// the page cache where it does not; the result is the same file.
enum class WriteVia { kPageCache, kDirect };
Status WriteFileAtomic(const std::string& path, std::string_view data,
                       std::string_view crash_tag = {}, WriteVia via = WriteVia::kPageCache);

// Anonymous private memory of `bytes` (a multiple of the page size), every
// page faulted in now (MAP_POPULATE), or with huge_pages, advised to use
// transparent huge pages and then faulted in. Unmap() gives it back.
Result<void*> MapAnonymous(std::uint64_t bytes, bool huge_pages);
// Anonymous private memory never touched, in 4 KiB pages (advised against
// huge pages): each first write pays a page fault, as tmpfs pays per page.
Result<void*> MapUntouched(std::uint64_t bytes);
void Unmap(void* p, std::uint64_t bytes);

// Advisory whole-file lock (flock). try_only: fail with kUnavailable instead
// of waiting. Filesystems without flock report kUnavailable too.
Status Flock(int fd, bool exclusive, bool try_only, const std::string& path);

std::string JoinPath(std::string_view a, std::string_view b);
std::string Dirname(const std::string& path);
std::string Basename(const std::string& path);

// A random hex string of `bytes` bytes from the kernel's generator.
std::string RandomHex(int bytes);
// This process, its parent, this host, and the canonical form of `path`
// (`path` itself when it cannot be resolved).
long ProcessId();
long ParentProcessId();
std::string HostName();
std::string RealPath(const std::string& path);
double NowUnix();
double MonotonicSeconds();
void SleepSeconds(double s);

// Runs argv[0] (looked up on PATH) with argv, no shell, standard input
// closed; captures standard output and error (up to 16 MiB each). Kills it
// after timeout_s. NotFound when the program cannot be started.
struct CommandResult {
  int exit_code = -1;  // -1: killed by a signal or the timeout
  std::string out, err;
};
Result<CommandResult> RunCommand(const std::vector<std::string>& argv, double timeout_s);

}  // namespace shardwise::os
