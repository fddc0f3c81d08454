// Asynchronous saves: SaveAsync() copies the state into a reusable staging
// pool and returns; checksumming, writing, fsync and the commit run on a
// background thread while training continues. See docs/cpp-api.md, "Async".
//
// Stall: when the state fits the pool, SaveAsync costs one parallel memcpy of
// the state into already-faulted memory. When it does not, the state is
// staged in waves into the two halves of the pool: while one half is written
// the next wave is copied into the other, and SaveAsync returns when the last
// wave is staged. The stall is then about (state - pool/2) / write bandwidth
// plus the copy: bounded memory costs stall time.
//
// Shutdown: destroying an AsyncSaver waits for the save in flight to finish
// (it commits, or fails cleanly). If the process dies instead (SIGKILL,
// exit() without destroying the saver, power loss), the commit protocol
// leaves only a staging directory, which readers never see and gc removes:
// never a partial committed checkpoint.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "shardwise/options.h"
#include "shardwise/repository.h"
#include "shardwise/staging.h"
#include "shardwise/status.h"
#include "shardwise/types.h"

namespace shardwise {

// What SaveAsync does when the previous save is still persisting.
enum class OverlapPolicy {
  kWait,  // block until it is done (the wait counts as stall)
  kSkip,  // do not save; the returned handle says skipped()
};

struct AsyncOptions {
  // Staging memory per save. 0: the whole state (the pool grows to the
  // largest state saved). Smaller than the state: staged in waves (see
  // above); it must hold at least two I/O units. It bounds what a save
  // allocates, not what it uses: where the process's pool already holds a
  // larger idle slab, the save takes it, and stages in fewer waves
  // (staging_bytes() below says how much it took).
  std::uint64_t staging_bytes = 0;
  OverlapPolicy overlap = OverlapPolicy::kWait;
  // Threads for the staging copy; 0: the repository's Options::threads
  // (default: the rank's share of the CPUs).
  int copy_threads = 0;
  // Back the saver's memory with transparent huge pages (a pool of its own
  // instead of the process's). Off by default: measured on our machines,
  // faulting 1 GiB of huge pages took 1.6 s against 0.3 s, for a 3% faster
  // copy.
  bool huge_pages = false;
};

// One asynchronous save. Thread-safe.
class AsyncSave {
 public:
  struct State;
  explicit AsyncSave(std::shared_ptr<State> state) : state_(std::move(state)) {}

  bool Done() const;
  // Blocks until the save finished; its outcome. Observing the outcome here
  // (or through status()) keeps it from being reported again by the next
  // SaveAsync.
  Status Wait();
  // OK while running or after success.
  Status status() const;
  bool skipped() const;
  const std::string& name() const;
  // Seconds SaveAsync blocked the caller (waiting for a previous save under
  // kWait, planning, staging copies).
  double stall_seconds() const;
  // Seconds from SaveAsync's return until the save was committed (or
  // failed); 0 while running.
  double persist_seconds() const;
  std::uint64_t bytes() const;  // file bytes written
  // State bytes the CPU copied for this save: the staging copy, once.
  std::uint64_t copied_bytes() const;
  int waves() const;

 private:
  std::shared_ptr<State> state_;
};

class AsyncSaver {
 public:
  // `repo` must outlive the saver. With `pool` null, saves stage into the
  // process's pool (StagingPool::ForProcess()), shared with every other
  // saver and the Python layer.
  static Result<std::unique_ptr<AsyncSaver>> Create(Repository& repo,
                                                    const AsyncOptions& options = {},
                                                    std::unique_ptr<StagingPool> pool = nullptr);
  ~AsyncSaver();  // waits for the save in flight

  // Stages `items` and returns; the save continues in the background. The
  // item memory may change as soon as this returns. Rank 0 (or a lone rank)
  // commits in the background; other ranks wait for that commit, so every
  // rank's handle reports the save's outcome. Fails without saving when the
  // previous save failed and nobody observed it (the error is returned once).
  Result<std::shared_ptr<AsyncSave>> SaveAsync(const SaveSpec& spec,
                                               std::span<const WriteItem> items);
  // Waits for the save in flight, if any; its outcome.
  Status WaitIdle();
  // Bytes of staging memory the last save used.
  std::uint64_t staging_bytes() const;

 private:
  struct Impl;
  explicit AsyncSaver(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace shardwise
