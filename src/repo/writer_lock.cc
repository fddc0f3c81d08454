#include "repo/writer_lock.h"

#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <ctime>
#include <map>
#include <mutex>

#include "os/posix.h"

namespace shardwise::repo {
namespace {

std::mutex g_mu;
std::map<std::string, std::weak_ptr<WriterLock>>& Held() {
  static auto* held = new std::map<std::string, std::weak_ptr<WriterLock>>();
  return *held;
}

// The parent pid of `pid` (from /proc), or -1.
long ParentOf(long pid) {
  std::string stat;
  if (FILE* f = std::fopen(("/proc/" + std::to_string(pid) + "/stat").c_str(), "r")) {
    char buf[1024];
    std::size_t n = std::fread(buf, 1, sizeof buf - 1, f);
    std::fclose(f);
    stat.assign(buf, n);
  }
  auto close = stat.rfind(')');  // the command name may hold spaces and parentheses
  if (close == std::string::npos) return -1;
  char state;
  long ppid = -1;
  if (std::sscanf(stat.c_str() + close + 1, " %c %ld", &state, &ppid) != 2) return -1;
  return ppid;
}

// True when the holder described by `owner` ("pid P on HOST since ...") is
// this process's parent or child on this host: one job, where a helper
// process commits for the trainer (torch's async_save in process mode).
bool SameJob(const std::string& owner) {
  long pid = -1;
  char host[256] = {};
  if (std::sscanf(owner.c_str(), "pid %ld on %255s", &pid, host) != 2) return false;
  char self[256] = "?";
  (void)::gethostname(self, sizeof self - 1);
  if (std::string(host) != self) return false;
  return pid == static_cast<long>(::getppid()) || ParentOf(pid) == static_cast<long>(::getpid());
}

std::string Describe() {
  char host[256] = "?";
  (void)::gethostname(host, sizeof host - 1);
  char when[64];
  std::time_t now = std::time(nullptr);
  std::strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S UTC", std::gmtime(&now));
  return "pid " + std::to_string(::getpid()) + " on " + host + " since " + when;
}

}  // namespace

Result<std::shared_ptr<WriterLock>> WriterLock::Acquire(const std::string& root) {
  char real[PATH_MAX];
  std::string key = ::realpath(root.c_str(), real) ? std::string(real) : root;
  std::lock_guard lock(g_mu);
  if (auto it = Held().find(key); it != Held().end())
    if (auto held = it->second.lock()) return held;
  const std::string path = os::JoinPath(root, kWriterLockName);
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0644);
  if (fd < 0) return Status(StatusCode::kIoError, "open " + path, errno, path);
  int r;
  do {
    r = ::flock(fd, LOCK_EX | LOCK_NB);
  } while (r != 0 && errno == EINTR);
  std::string note;
  if (r != 0) {
    int err = errno;
    if (err == EWOULDBLOCK) {
      char buf[512] = {};
      ssize_t n = ::pread(fd, buf, sizeof buf - 1, 0);
      std::string owner = n > 0 ? std::string(buf, static_cast<std::size_t>(n)) : "";
      while (!owner.empty() && (owner.back() == '\n' || owner.back() == ' ')) owner.pop_back();
      if (SameJob(owner)) {  // our parent or child holds it for the job: share
        auto held = std::shared_ptr<WriterLock>(
            new WriterLock(key, fd, "the root is held by this job's " + owner));
        Held()[key] = held;
        return held;
      }
      ::close(fd);
      return Status(StatusCode::kAborted,
                    root + " is being written by another job (" +
                        (owner.empty() ? std::string("holder unknown") : owner) +
                        "): two jobs must not share a checkpoint root; give this job its own "
                        "root. The lock (" + path +
                        ") is released as soon as that job's coordinator exits.",
                    err, path);
    }
    if (err != ENOLCK && err != EOPNOTSUPP && err != ENOSYS) {
      ::close(fd);
      return Status(StatusCode::kIoError, "flock " + path, err, path);
    }
    note = "flock is not available on this filesystem (mount Lustre with -o flock): "
           "concurrent jobs on one root are not detected";
  } else {
    std::string who = Describe() + "\n";
    if (::ftruncate(fd, 0) == 0) (void)::pwrite(fd, who.data(), who.size(), 0);
  }
  auto held = std::shared_ptr<WriterLock>(new WriterLock(key, fd, note));
  Held()[key] = held;
  return held;
}

WriterLock::~WriterLock() {
  std::lock_guard lock(g_mu);
  Held().erase(key_);
  ::close(fd_);  // releases the flock
}

}  // namespace shardwise::repo
