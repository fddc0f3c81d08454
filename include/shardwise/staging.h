// Host memory for asynchronous saves, owned by the process.
//
// An asynchronous save copies the state into staging memory once (the only
// stall) and persists from there. The memory belongs to the process, not to
// a saver or a DCP writer: a pool hands out one slab per save (a lease),
// takes it back when the save no longer needs it, and keeps it for the next
// save, so a new writer per save allocates nothing. A pool grows only when a
// larger state arrives, and frees its idle slabs on ReleaseFree() (Python:
// shardwise.release_staging(), also at exit). Two saves in flight never
// share a slab. See docs/cpp-api.md, "Staging memory".
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string_view>
#include <vector>

#include "shardwise/status.h"

namespace shardwise {

// Memory an allocator hands to a pool: 4 KiB-aligned and already faulted in.
// `keep` owns it; the memory is freed when the last copy of `keep` is gone
// (leases and views of a slab hold copies).
struct StagingMemory {
  std::byte* data = nullptr;
  std::uint64_t size = 0;
  std::shared_ptr<void> keep;
};
using StagingAllocator = std::function<Result<StagingMemory>(std::uint64_t bytes)>;

// The default allocator: anonymous memory, mapped and pre-faulted (rounded
// up to 2 MiB), so no save pays for page faults. With huge_pages, backed by
// transparent huge pages where the kernel agrees.
Result<StagingMemory> AllocateStagingMemory(std::uint64_t bytes, bool huge_pages = false);

struct StagingStats {
  std::uint64_t allocations = 0;     // slabs allocated over the pool's life
  std::uint64_t reserved_bytes = 0;  // held by its slabs now, leased or idle
  std::uint64_t leased_bytes = 0;
  int slabs = 0;
  int leased = 0;
};

class StagingLease;

class StagingPool {
 public:
  // The process's pool of one kind, created on first use. "pageable" uses
  // AllocateStagingMemory; other kinds (the Python layer adds "pinned" and
  // "shared") get their allocator through SetAllocator before first use.
  static StagingPool& ForProcess(std::string_view kind = "pageable");
  // ReleaseFree() on every process pool.
  static void ReleaseAllFree();

  explicit StagingPool(StagingAllocator allocator = {});
  // A pool over memory the caller owns (4 KiB-aligned, outliving the pool):
  // one slab, never grown or freed.
  static Result<std::unique_ptr<StagingPool>> Wrap(void* data, std::uint64_t bytes);
  ~StagingPool();
  StagingPool(const StagingPool&) = delete;
  StagingPool& operator=(const StagingPool&) = delete;

  void SetAllocator(StagingAllocator allocator);
  // A slab of at least `bytes`, exclusive to the caller until the lease is
  // released. Reuses an idle slab that is large enough; otherwise frees the
  // idle ones (too small) and allocates one.
  Result<std::shared_ptr<StagingLease>> Acquire(std::uint64_t bytes);
  // Frees the idle slabs. Leased slabs are freed once their lease ends.
  void ReleaseFree();
  StagingStats stats() const;
  // The largest lease this pool can give: its size for Wrap(), else 0 (no
  // limit but memory).
  std::uint64_t capacity() const;

  struct State;

 private:
  std::shared_ptr<State> state_;
};

// One save's slab. Thread-safe.
class StagingLease {
 public:
  // Copies `bytes` from `src` to `offset` in the slab (4 KiB-aligned), and
  // zeroes the rest of its last page, as the shard format pads extents.
  struct Copy {
    const void* src = nullptr;
    std::uint64_t offset = 0;
    std::uint64_t bytes = 0;
  };
  struct Slab;
  StagingLease(std::shared_ptr<StagingPool::State> pool, std::shared_ptr<Slab> slab, bool fresh);
  ~StagingLease();  // releases
  StagingLease(const StagingLease&) = delete;
  StagingLease& operator=(const StagingLease&) = delete;

  std::byte* data() const;
  std::uint64_t size() const;
  // Keeps the slab's memory valid (for views that may outlive the lease).
  std::shared_ptr<void> keep() const;
  // Whether the slab was allocated for this lease (not reused).
  bool fresh() const { return fresh_; }

  // The staging copy, on `threads` threads (0: this rank's share of the
  // CPUs); returns when done. Copies must not overlap each other; staging
  // over memory staged before replaces it.
  Status Stage(std::span<const Copy> copies, int threads = 0);
  // The same, in the background (0: the rank's CPUs less one, at least 1,
  // leaving a core to the training loop); WaitStaged() waits for it. One
  // background copy at a time.
  Status StageInBackground(std::vector<Copy> copies, int threads = 0);
  // Records extents that another process already staged into this memory
  // (src is ignored): a DCP checkpoint process writing from its parent's
  // shared staging memory adopts them, so they are written without a copy.
  Status Adopt(std::span<const Copy> extents);
  // Waits for the background copy, if any.
  Status WaitStaged();
  bool staged() const;
  // Bytes copied into this slab so far.
  std::uint64_t copied_bytes() const;
  // Whether exactly [p, p + bytes) was staged by one copy: such memory can
  // be written as whole pages (its padding is zero).
  bool IsStagedExtent(const void* p, std::uint64_t bytes) const;

  // Returns the slab to its pool (after a background copy finished). The
  // memory stays valid while keep() copies exist, but the next save may
  // overwrite it. Idempotent.
  void Release();
  bool released() const;

  // The unreleased lease whose slab holds [p, p + bytes), from any pool.
  static std::shared_ptr<StagingLease> Find(const void* p, std::uint64_t bytes);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  bool fresh_;
};

// Bytes of state this process copied with the CPU for saves: staging copies
// and copies into I/O buffers. Benchmarks and tests read it around a save.
std::uint64_t CopiedStateBytes();

}  // namespace shardwise
