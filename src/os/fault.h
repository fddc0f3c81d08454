// The fault-injection seam. Every syscall wrapper in os/ asks Check() before
// it runs; a test (or SHARDWISE_FAULTS in the environment) can make the Nth
// call of an operation fail with an errno, come back short, or kill the
// process on the spot. CrashPoint() marks named steps of the commit protocol
// where SHARDWISE_CRASH_AT can kill the process.
//
// SHARDWISE_FAULTS grammar:  rule[,rule...]   rule = OP@N=ACTION
//   OP     open|write|read|fsync|rename|fallocate|mkdir|unlink|ring
//          (fallocate counts ftruncate too: both set a file's size; ring:
//          an io_uring submission, failing the ring as a whole)
//   N      1-based index of the call of that OP that fails (counted per OP,
//          over the whole process; "N+" fails the Nth and every later call)
//   ACTION an errno name (EIO, ENOSPC, EDQUOT, EROFS, EACCES, EINTR...),
//          "short" (a write or read moves about half the bytes, rounded
//          down to 4 KiB as real short transfers on regular files are, so
//          O_DIRECT stays valid; a transfer of under 8 KiB is not
//          shortened), or "kill" (SIGKILL)
// SHARDWISE_CRASH_AT grammar: NAME[@N]  (SIGKILL at the Nth pass of NAME)
// SHARDWISE_PAUSE_AT grammar: NAME:MS[,NAME:MS...]  (sleep MS milliseconds at
//          every pass of NAME: tests widen a race window with it, e.g. to
//          kill a process in the middle of a background copy)
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "shardwise/status.h"

namespace shardwise::os {

enum class Op : int {
  kOpen,
  kWrite,
  kRead,
  kFsync,
  kRename,
  kFallocate,
  kMkdir,
  kUnlink,
  kRing,  // io_uring_submit (the ring itself failing, not one transfer)
  kCount
};

std::string_view OpName(Op op);

struct FaultRule {
  Op op = Op::kWrite;
  std::uint64_t nth = 1;  // 1-based
  bool and_later = false;
  int err = 0;            // errno to fail with, when not short/kill
  bool short_io = false;  // move half the bytes
  bool kill = false;      // SIGKILL the process
};

enum class FaultKind { kNone, kErrno, kShort };

struct FaultDecision {
  FaultKind kind = FaultKind::kNone;
  int err = 0;
};

// Replaces the active rules and resets the per-op counters.
void SetFaults(std::vector<FaultRule> rules);
void ClearFaults();
// Parses the SHARDWISE_FAULTS grammar.
Result<std::vector<FaultRule>> ParseFaults(std::string_view spec);
// Counts one call of `op` and says whether it must fail. Kills the process
// when a "kill" rule matches.
FaultDecision Check(Op op);
// The length a "short" fault lets through for a transfer of n bytes.
std::size_t ShortLength(std::size_t n);
// How many calls of `op` were counted since the last SetFaults/ClearFaults.
std::uint64_t Count(Op op);

// Kills the process with SIGKILL if SHARDWISE_CRASH_AT (or SetCrashPoint)
// names this point. Names are listed in docs/format.md (commit protocol).
void CrashPoint(std::string_view name);
void SetCrashPoint(std::string name, std::uint64_t nth = 1);
// Sleeps when SHARDWISE_PAUSE_AT names this point (read at every call, so a
// test may set it in a running process).
void PausePoint(std::string_view name);
// Throws std::bad_alloc at the Nth pass of NAME after SetThrowPoint (tests
// only; no environment variable): it stands in for an allocation failing
// where a real one would be too hard to provoke.
void ThrowPoint(std::string_view name);
void SetThrowPoint(std::string name, std::uint64_t nth = 1);  // "" clears it
// Runs `fn` once, at the next pass of NAME after SetRunPoint (tests only):
// another actor's step at a chosen moment, to show what a race would do.
void RunPoint(std::string_view name);
void SetRunPoint(std::string name, std::function<void()> fn);  // "" clears it

}  // namespace shardwise::os
