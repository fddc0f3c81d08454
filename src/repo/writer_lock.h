// One job writes a checkpoint root at a time (docs/format.md, "Writers").
// The job's coordinator holds ROOT/.writer.lock with flock(LOCK_EX) from its
// first commit, delete or gc for as long as a Repository of that process on
// the root lives (in practice, until it exits); a second job's commit (or gc)
// fails at once with a clear error naming the holder. The kernel (or, on Lustre with
// the `flock` mount option, the servers) release the lock when the holder
// dies, so a crashed job never blocks the next one.
#pragma once

#include <memory>
#include <string>

#include "os/posix.h"
#include "shardwise/status.h"

namespace shardwise::repo {


class WriterLock {
 public:
  // Takes the lock of `root` for this process, or shares the one this
  // process already holds, or the one its parent or child process holds (one
  // job: torch's async_save in process mode commits from a child). kAborted
  // with the holder's description when another process holds it. Where the filesystem has no flock (Lustre
  // mounted without `flock`), returns an unlocked holder: nothing is
  // enforced, and note() says so.
  static Result<std::shared_ptr<WriterLock>> Acquire(const std::string& root);
  ~WriterLock();
  WriterLock(const WriterLock&) = delete;
  WriterLock& operator=(const WriterLock&) = delete;
  const std::string& note() const { return note_; }

 private:
  WriterLock(std::string key, os::File file, std::string note)
      : key_(std::move(key)), file_(std::move(file)), note_(std::move(note)) {}
  long pid_ = os::ProcessId();  // the process that took it (not a fork's child)
  std::string key_;
  os::File file_;  // closing it releases the flock
  std::string note_;
};

}  // namespace shardwise::repo
