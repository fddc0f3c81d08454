#include "fs/io_mode.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "common/parallel.h"
#include "fs/placement.h"
#include "os/posix.h"
#include "shardwise/names.h"

namespace shardwise::fs {
namespace {

constexpr std::size_t kPage = 4096;
// The measurement: this many bytes per run, written in pieces of kPiece by
// up to kProbeThreads threads; buffered I/O is chosen only when it is this
// much faster (O_DIRECT keeps checkpoints out of the page cache, which the
// training job needs, and makes the final fsync cheap).
constexpr std::size_t kProbeBytes = 32 << 20;
constexpr std::size_t kPiece = 4 << 20;
constexpr std::size_t kProbeBuffer = 256 << 10;
constexpr int kProbeThreads = 4;
constexpr double kBufferedMustWinBy = 1.2;

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};

// A probe file in `dir`: unnamed (O_TMPFILE) where the filesystem has
// that, so a crash leaves nothing; else named with kProbePrefix and
// unlinked at once (gc removes it if we die first). Raw syscalls: see
// ProbeDirectIo.
int OpenProbe(const std::string& dir, int flags, const char* what) {
  int fd = ::open(dir.c_str(), O_TMPFILE | O_WRONLY | O_CLOEXEC | flags, 0600);
  if (fd >= 0 || (errno != EOPNOTSUPP && errno != EISDIR && errno != ENOENT)) return fd;
  std::string path = os::JoinPath(dir, std::string(names::kProbePrefix) + std::string(what) + os::RandomHex(6));
  fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | flags, 0600);
  if (fd >= 0) ::unlink(path.c_str());
  return fd;
}

// One timed run: a fresh file, preallocated as shard files are, written in
// pieces of kPiece (one small buffer repeated, so the probe adds little to
// the process's memory) and made durable. Returns GB/s.
Result<double> TimedWrite(const std::string& dir, bool direct, const std::byte* buf) {
  const int fd = OpenProbe(dir, direct ? O_DIRECT : 0, "write-");
  if (fd < 0) return Status(StatusCode::kIoError, "open a probe file in " + dir, errno, dir);
  const auto t0 = std::chrono::steady_clock::now();
  (void)::posix_fallocate(fd, 0, kProbeBytes);
  const int threads = std::clamp(AvailableCpus(), 1, kProbeThreads);
  std::vector<iovec> iov(kPiece / kProbeBuffer, {const_cast<std::byte*>(buf), kProbeBuffer});
  std::atomic<int> failed{0};
  ParallelFor(0, kProbeBytes / kPiece, threads, [&](std::size_t i) {
    if (::pwritev(fd, iov.data(), static_cast<int>(iov.size()), static_cast<off_t>(i * kPiece)) !=
        static_cast<ssize_t>(kPiece))
      failed.store(errno ? errno : EIO);
  });
  if (!failed.load() && ::fdatasync(fd) != 0) failed.store(errno);
  const double s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ::close(fd);
  if (int e = failed.load())
    return Status(StatusCode::kIoError, "write a probe file in " + dir, e, dir);
  return static_cast<double>(kProbeBytes) / std::max(s, 1e-9) / 1e9;
}

bool IsMemoryFs(std::string_view type) { return type == "tmpfs" || type == "ramfs"; }

}  // namespace

bool ProbeDirectIo(const std::string& dir) {
  const int fd = OpenProbe(dir, O_DIRECT, "odirect-");
  if (fd < 0) return false;
  std::unique_ptr<void, FreeDeleter> buf(std::aligned_alloc(kPage, kPage));
  std::memset(buf.get(), 0, kPage);
  // Some filesystems accept the open flag and fail the first write.
  const bool ok = ::pwrite(fd, buf.get(), kPage, 0) == static_cast<ssize_t>(kPage);
  ::close(fd);
  return ok;
}

Result<WriteRates> MeasureWriteModes(const std::string& dir) {
  std::unique_ptr<void, FreeDeleter> mem(std::aligned_alloc(kPage, kProbeBuffer));
  if (!mem) return Status(StatusCode::kIoError, "no memory for the I/O probe", ENOMEM);
  auto* buf = static_cast<std::byte*>(mem.get());
  for (std::size_t i = 0; i < kProbeBuffer; ++i) buf[i] = static_cast<std::byte>(i * 131 + 7);
  WriteRates r;
  for (int round = 0; round < 2; ++round) {
    SW_ASSIGN_OR_RETURN(double d, TimedWrite(dir, true, buf));
    SW_ASSIGN_OR_RETURN(double b, TimedWrite(dir, false, buf));
    r.direct_gbps = std::max(r.direct_gbps, d);
    r.buffered_gbps = std::max(r.buffered_gbps, b);
  }
  return r;
}

Result<IoMode> DecideIoMode(std::string_view fs_type, bool direct_works,
                            DirectIoMode requested,
                            const std::function<Result<WriteRates>()>& measure) {
  IoMode m;
  const std::string fs(fs_type);
  char line[256];
  switch (requested) {
    case DirectIoMode::kOn:
      if (!direct_works)
        return Status(StatusCode::kUnavailable,
                      "O_DIRECT was required (direct_io=on) but does not work on this " + fs,
                      EINVAL);
      m.direct_writes = m.direct_reads = true;
      m.why = "O_DIRECT: required by the options (direct_io=on)";
      return m;
    case DirectIoMode::kOff:
      m.why = "buffered: O_DIRECT is off in the options (direct_io=off)";
      return m;
    case DirectIoMode::kAuto: break;
  }
  if (IsMemoryFs(fs_type)) {
    // Its O_DIRECT is a copy as well, page by page (measured here: 1.17x
    // the time and 1.14x the CPU of buffered saves; docs/PERFORMANCE.md).
    m.why = fs + " keeps files in memory: buffered, written from tensor memory byte for byte";
    return m;
  }
  if (!direct_works) {
    m.why = "buffered: O_DIRECT does not work on this " + fs;
    return m;
  }
  if (fs_type == "nfs") {
    m.why = "nfs: buffered (O_DIRECT makes every write a synchronous round trip; the final "
            "fsync flushes them together)";
    return m;
  }
  m.direct_reads = true;  // loads and verify see the storage, not the page cache
  if (fs_type == "lustre") {
    m.direct_writes = true;
    m.why = "lustre: O_DIRECT with stripe-aligned units (no client page cache, no "
            "per-page locking)";
    return m;
  }
  auto rates = measure();
  if (!rates.ok()) {
    m.direct_writes = true;
    m.why = fs + ": O_DIRECT (the write measurement failed: " + rates.status().message() + ")";
    return m;
  }
  m.measured = true;
  m.direct_gbps = rates->direct_gbps;
  m.buffered_gbps = rates->buffered_gbps;
  m.direct_writes = rates->buffered_gbps < kBufferedMustWinBy * rates->direct_gbps;
  std::snprintf(line, sizeof line,
                "%s: %s by measurement (durable writes: O_DIRECT %.2f GB/s, buffered %.2f "
                "GB/s; buffered must win by %.0f%%)",
                fs.c_str(), m.direct_writes ? "O_DIRECT" : "buffered", rates->direct_gbps,
                rates->buffered_gbps, (kBufferedMustWinBy - 1) * 100);
  m.why = line;
  return m;
}

namespace {
std::mutex g_mu;
std::map<std::pair<std::string, DirectIoMode>, IoMode>& Cache() {
  static auto* cache = new std::map<std::pair<std::string, DirectIoMode>, IoMode>;
  return *cache;
}

// The measurement is shared by every process of a job through two files in
// the root: ranks that start together would otherwise each write their own
// probe files at once (64 ranks: 8 GiB). The first process measures under
// an exclusive flock and records the rates with the filesystem's device and
// type; the others wait for the lock and read them.
// Raw syscalls here, as in ProbeDirectIo: the shared measurement must not
// consume faults injected for the save itself.
std::optional<WriteRates> ReadShared(const std::string& path, dev_t dev, const std::string& type) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) return std::nullopt;
  char text[256] = {};
  const ssize_t n = ::read(fd, text, sizeof text - 1);
  ::close(fd);
  if (n <= 0) return std::nullopt;
  unsigned long long d = 0;
  char t[64] = {};
  WriteRates r;
  if (std::sscanf(text, "shardwise-io-mode 1 %llu %63s %lf %lf", &d, t, &r.direct_gbps,
                  &r.buffered_gbps) != 4 ||
      d != static_cast<unsigned long long>(dev) || type != t || !(r.direct_gbps > 0) ||
      !(r.buffered_gbps > 0))
    return std::nullopt;
  return r;
}

void WriteShared(const std::string& path, const std::string& line) {
  // Named as a probe file, so that gc removes it if we die before the rename.
  const std::string tmp = os::JoinPath(os::Dirname(path), std::string(names::kProbePrefix) +
                                                              "io-mode-" + os::RandomHex(6));
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
  if (fd < 0) return;  // best effort: the next process measures again
  const bool ok = ::write(fd, line.data(), line.size()) == static_cast<ssize_t>(line.size());
  ::close(fd);
  if (!ok || ::rename(tmp.c_str(), path.c_str()) != 0) ::unlink(tmp.c_str());
}

Result<WriteRates> SharedMeasurement(const std::string& root, const std::string& type) {
  const std::string path = os::JoinPath(root, names::kIoModeFile);
  struct stat st {};
  if (::stat(root.c_str(), &st) != 0) return MeasureWriteModes(root);
  if (auto r = ReadShared(path, st.st_dev, type)) return *r;
  const std::string lock_path = path + ".lock";
  const int lock = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0644);
  if (lock < 0) return MeasureWriteModes(root);  // a read-only root: measure alone
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }  // releases the flock too
  } closer{lock};
  int rc;
  do {
    rc = ::flock(lock, LOCK_EX);
  } while (rc != 0 && errno == EINTR);
  if (rc != 0) return MeasureWriteModes(root);  // no flock here: measure alone
  if (auto r = ReadShared(path, st.st_dev, type)) return *r;  // measured while we waited
  SW_ASSIGN_OR_RETURN(WriteRates r, MeasureWriteModes(root));
  char line[160];
  std::snprintf(line, sizeof line, "shardwise-io-mode 1 %llu %s %.4f %.4f\n",
                static_cast<unsigned long long>(st.st_dev), type.c_str(), r.direct_gbps,
                r.buffered_gbps);
  WriteShared(path, line);
  return r;
}
}  // namespace

Result<IoMode> IoModeFor(const std::string& root, const Options& options) {
  const auto key = std::make_pair(root, options.direct_io);
  // One decision at a time: two first saves into one root measure once.
  std::lock_guard lock(g_mu);
  if (auto it = Cache().find(key); it != Cache().end()) return it->second;
  SW_ASSIGN_OR_RETURN(const long magic, os::FilesystemMagic(root));
  const std::string type = FsTypeName(magic);
  const bool direct_works = options.direct_io != DirectIoMode::kOff && ProbeDirectIo(root);
  SW_ASSIGN_OR_RETURN(IoMode mode, DecideIoMode(type, direct_works, options.direct_io,
                                                [&] { return SharedMeasurement(root, type); }));
  Cache()[key] = mode;
  return mode;
}

Result<IoMode> ReadModeFor(const std::string& root, const std::string& file,
                           const Options& options) {
  {
    std::lock_guard lock(g_mu);
    if (auto it = Cache().find({root, options.direct_io}); it != Cache().end()) return it->second;
  }
  SW_ASSIGN_OR_RETURN(const long magic, os::FilesystemMagic(root));
  bool direct_works = false;
  if (options.direct_io != DirectIoMode::kOff) {
    // A read-only probe: opening an existing file with O_DIRECT fails with
    // EINVAL where the filesystem does not take it. Nothing is written.
    const int fd = ::open(file.c_str(), O_RDONLY | O_DIRECT | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd >= 0) {
      direct_works = true;
      ::close(fd);
    }
  }
  // Only direct_reads is used: the write measurement is not made.
  return DecideIoMode(FsTypeName(magic), direct_works, options.direct_io, [] {
    return Result<WriteRates>(
        Status(StatusCode::kUnavailable, "not measured: the mode is for reading"));
  });
}

void ForgetIoModesForTesting() {
  std::lock_guard lock(g_mu);
  Cache().clear();
}

}  // namespace shardwise::fs
