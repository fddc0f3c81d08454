#include "repo/writer_lock.h"

#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
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
      ::close(fd);
      std::string owner = n > 0 ? std::string(buf, static_cast<std::size_t>(n)) : "";
      while (!owner.empty() && (owner.back() == '\n' || owner.back() == ' ')) owner.pop_back();
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
