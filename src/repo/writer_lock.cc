#include "repo/writer_lock.h"

#include <fcntl.h>
#include <pthread.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <ctime>
#include <map>
#include <mutex>

#include "os/posix.h"
#include "shardwise/names.h"

namespace shardwise::repo {
namespace {

std::mutex g_mu;
std::map<std::string, std::weak_ptr<WriterLock>>& Held() {
  static auto* held = new std::map<std::string, std::weak_ptr<WriterLock>>();
  return *held;
}

// The descriptors of the locks this process holds, for the child of a
// fork (a data loader's worker, multiprocessing's "fork"): it closes its
// copies at once, so that the flock goes when this process lets it go,
// not when every child that inherited it has exited. Lock-free: a thread
// may hold g_mu at the moment of the fork.
constexpr int kMaxLocks = 64;
std::atomic<int> g_lock_fds[kMaxLocks];

void CloseInheritedLocks() {
  for (auto& slot : g_lock_fds) {
    const int fd = slot.exchange(-1);
    if (fd >= 0) os::CloseInForkChild(fd);  // the child's copy: the parent's lock stays
  }
}

void TrackFd(int fd) {
  static const bool registered = [] {
    for (auto& slot : g_lock_fds) slot.store(-1);
    return ::pthread_atfork(nullptr, nullptr, &CloseInheritedLocks) == 0;
  }();
  (void)registered;
  for (auto& slot : g_lock_fds) {
    int none = -1;
    if (slot.compare_exchange_strong(none, fd)) return;
  }  // more roots than slots: a child keeps that one's lock, as before
}

void UntrackFd(int fd) {
  for (auto& slot : g_lock_fds) {
    int mine = fd;
    if (slot.compare_exchange_strong(mine, -1)) return;
  }
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
  if (host != os::HostName()) return false;
  return pid == os::ParentProcessId() || ParentOf(pid) == os::ProcessId();
}

// Whether `owner` ("pid P on HOST since ...") is this process.
bool IsThisProcess(const std::string& owner) {
  long pid = -1;
  char host[256] = {};
  return std::sscanf(owner.c_str(), "pid %ld on %255s", &pid, host) == 2 &&
         pid == os::ProcessId() && host == os::HostName();
}

std::string Describe() {
  char when[64];
  std::time_t now = std::time(nullptr);
  std::strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S UTC", std::gmtime(&now));
  return "pid " + std::to_string(os::ProcessId()) + " on " + os::HostName() + " since " + when;
}

// The holder's description stored in the lock file ("" when unreadable).
std::string ReadOwner(const os::File& f) {
  char buf[512] = {};
  auto n = os::Pread(f.fd(), buf, sizeof buf - 1, 0, f.path());
  std::string owner = n.ok() ? std::string(buf, *n) : "";
  while (!owner.empty() && (owner.back() == '\n' || owner.back() == ' ')) owner.pop_back();
  return owner;
}

}  // namespace

Result<std::shared_ptr<WriterLock>> WriterLock::Acquire(const std::string& root) {
  const std::string key = os::RealPath(root);
  std::lock_guard lock(g_mu);
  if (auto it = Held().find(key); it != Held().end())
    if (auto held = it->second.lock(); held && held->pid_ == os::ProcessId()) return held;
  // (A holder inherited through fork closed its descriptor in the child:
  // this process takes the lock itself, or shares its parent's.)
  const std::string path = os::JoinPath(root, names::kWriterLock);
  SW_ASSIGN_OR_RETURN(os::File file, os::Open(path, O_RDWR | O_CREAT | O_NOFOLLOW, 0644));
  Status locked = os::Flock(file.fd(), /*exclusive=*/true, /*try_only=*/true, path);
  // This process's previous holder may be between its last reference and
  // closing its descriptor (~WriterLock): it closes without g_mu, so wait
  // for it briefly instead of reporting ourselves as another job.
  for (int i = 0; i < 200 && locked.err() == EWOULDBLOCK && IsThisProcess(ReadOwner(file)); ++i) {
    os::SleepSeconds(0.005);
    locked = os::Flock(file.fd(), /*exclusive=*/true, /*try_only=*/true, path);
  }
  std::string note;
  if (locked.ok()) {
    const std::string who = Describe() + "\n";
    // The description is for people; the flock is the lock.
    if (os::Ftruncate(file.fd(), 0, path).ok())
      (void)os::Pwrite(file.fd(), who.data(), who.size(), 0, path);
  } else if (locked.err() == EWOULDBLOCK) {
    const std::string owner = ReadOwner(file);
    if (!SameJob(owner))
      return Status(StatusCode::kAborted,
                    root + " is being written by another job (" +
                        (owner.empty() ? std::string("holder unknown") : owner) +
                        "): two jobs must not share a checkpoint root; give this job its own "
                        "root. The lock (" + path +
                        ") is released as soon as that job's coordinator exits.",
                    EWOULDBLOCK, path);
    note = "the root is held by this job's " + owner;  // our parent or child: share
  } else if (locked.code() == StatusCode::kUnavailable) {
    note = "flock is not available on this filesystem (mount Lustre with -o flock): "
           "concurrent jobs on one root are not detected";
  } else {
    return locked;
  }
  if (locked.ok()) TrackFd(file.fd());
  auto held = std::shared_ptr<WriterLock>(new WriterLock(key, std::move(file), note));
  Held()[key] = held;
  return held;
}

WriterLock::~WriterLock() {
  if (pid_ != os::ProcessId()) {
    (void)file_.Release();  // a fork's copy: its descriptor was closed at the fork
  } else {
    UntrackFd(file_.fd());
    (void)file_.Close();  // releases the flock
  }
  std::lock_guard lock(g_mu);
  // An Acquire since the last reference went may have registered a new
  // holder under the same key: leave that one.
  if (auto it = Held().find(key_); it != Held().end() && it->second.expired()) Held().erase(it);
}

}  // namespace shardwise::repo
