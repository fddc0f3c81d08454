// Process-wide staging pools and their leases (include/shardwise/staging.h).
#include "shardwise/staging.h"

#if defined(__x86_64__) || defined(__SSE2__)
#include <emmintrin.h>
#include <xmmintrin.h>
#endif

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <system_error>
#include <thread>

#include "common/parallel.h"
#include "engine/copy_count.h"
#include "io/aligned_buffer.h"
#include "io/registered_memory.h"
#include "os/fault.h"
#include "os/posix.h"
#include "shardwise/options.h"

namespace shardwise {
namespace {

constexpr std::uint64_t kSlabRounding = 2ull << 20;
// Copies are cut into pieces of this size so that one large tensor spreads
// over every copy thread.
constexpr std::uint64_t kCopyPiece = 8ull << 20;

std::atomic<std::uint64_t> g_copied{0};

// Staging copies stream through memory once and are read again only by the
// writer, much later: non-temporal stores skip the cache's read-for-
// ownership and pollution. glibc's memcpy picks them only for sizes above a
// threshold (3/4 of the last-level cache), which single tensors often are
// not; measured here: 8 MiB pieces by memcpy ran at half the speed of one
// 1 GiB memcpy, and at its speed with this loop.
void StreamCopy(std::byte* dst, const std::byte* src, std::uint64_t n) {
#if defined(__x86_64__) || defined(__SSE2__)
  constexpr std::uint64_t kMin = 256 << 10;
  if (n >= kMin && reinterpret_cast<std::uintptr_t>(dst) % 16 == 0) {
    const std::uint64_t blocks = n / 64;
    for (std::uint64_t i = 0; i < blocks; ++i) {
      const auto* s = reinterpret_cast<const __m128i*>(src + i * 64);
      auto* d = reinterpret_cast<__m128i*>(dst + i * 64);
      _mm_prefetch(reinterpret_cast<const char*>(src + i * 64 + 512), _MM_HINT_T0);
      const __m128i a = _mm_loadu_si128(s), b = _mm_loadu_si128(s + 1);
      const __m128i c = _mm_loadu_si128(s + 2), e = _mm_loadu_si128(s + 3);
      _mm_stream_si128(d, a);
      _mm_stream_si128(d + 1, b);
      _mm_stream_si128(d + 2, c);
      _mm_stream_si128(d + 3, e);
    }
    _mm_sfence();  // streamed stores are visible before the copy is reported done
    std::memcpy(dst + blocks * 64, src + blocks * 64, n - blocks * 64);
    return;
  }
#endif
  std::memcpy(dst, src, n);
}

// Unreleased leases by slab address, for Find().
std::mutex& RegistryMutex() {
  static auto* mu = new std::mutex;
  return *mu;
}
std::map<std::uintptr_t, std::weak_ptr<StagingLease>>& Registry() {
  static auto* leases = new std::map<std::uintptr_t, std::weak_ptr<StagingLease>>;
  return *leases;
}

}  // namespace

namespace engine {
void AddCopiedStateBytes(std::uint64_t n) { g_copied.fetch_add(n, std::memory_order_relaxed); }
}  // namespace engine

std::uint64_t CopiedStateBytes() { return g_copied.load(std::memory_order_relaxed); }

Result<StagingMemory> AllocateStagingMemory(std::uint64_t bytes, bool huge_pages) {
  if (bytes == 0) return InvalidArgument("staging memory of 0 bytes");
  const std::uint64_t size = io::AlignUp(bytes, kSlabRounding);
  auto mapped = os::MapAnonymous(size, huge_pages);
  if (!mapped.ok())
    return std::move(mapped).status().WithContext("staging memory of " + FormatBytes(size));
  void* p = *mapped;
  return StagingMemory{static_cast<std::byte*>(p), size,
                       std::shared_ptr<void>(p, [size](void* q) { os::Unmap(q, size); })};
}

struct StagingLease::Slab {
  StagingMemory mem;
  bool leased = false;
  // Announced to the I/O layer, so io_uring registers the slab once for
  // the writes made from it; declared after `mem`, so withdrawn first.
  io::AnnouncedMemory announced;
};

struct StagingPool::State {
  std::mutex mu;
  StagingAllocator allocator;
  bool fixed = false;  // Wrap(): one slab of caller memory
  std::vector<std::shared_ptr<StagingLease::Slab>> slabs;
  std::uint64_t allocations = 0;

  // Keeps at most one idle slab (the largest): a pool holds one slab per
  // save in flight plus one for the next save. Called with mu held; returns
  // the slabs let go, for the caller to drop after unlocking (an allocator's
  // memory may be freed through Python, which takes the GIL).
  std::vector<std::shared_ptr<StagingLease::Slab>> TrimIdle() {
    std::vector<std::shared_ptr<StagingLease::Slab>> dropped;
    if (fixed) return dropped;
    std::shared_ptr<StagingLease::Slab> keep;
    for (const auto& s : slabs)
      if (!s->leased && (!keep || s->mem.size > keep->mem.size)) keep = s;
    for (auto& s : slabs)
      if (!s->leased && s != keep) dropped.push_back(std::move(s));
    std::erase(slabs, nullptr);
    return dropped;
  }
};

StagingPool& StagingPool::ForProcess(std::string_view kind) {
  // Never destroyed: leases may end during static destruction.
  static auto* mu = new std::mutex;
  static auto* pools = new std::map<std::string, StagingPool*, std::less<>>;
  std::lock_guard lock(*mu);
  auto it = pools->find(kind);
  if (it == pools->end()) it = pools->emplace(std::string(kind), new StagingPool()).first;
  return *it->second;
}

void StagingPool::ReleaseAllFree() {
  for (const char* kind : {"pageable", "pinned", "shared", "shared-pinned"})
    ForProcess(kind).ReleaseFree();
}

StagingPool::StagingPool(StagingAllocator allocator) : state_(std::make_shared<State>()) {
  state_->allocator = std::move(allocator);
}

StagingPool::~StagingPool() = default;

Result<std::unique_ptr<StagingPool>> StagingPool::Wrap(void* data, std::uint64_t bytes) {
  if (!data || bytes < io::kAlignment) return InvalidArgument("staging memory is empty");
  if (reinterpret_cast<std::uintptr_t>(data) % io::kAlignment != 0)
    return InvalidArgument("staging memory must be 4096-byte aligned");
  auto pool = std::make_unique<StagingPool>();
  auto slab = std::make_shared<StagingLease::Slab>();
  // Not announced for io_uring registration: the pool does not own this
  // memory and cannot tell when it goes (a registration must never outlive
  // its memory, nor be matched by other memory mapped at its address).
  slab->mem = {static_cast<std::byte*>(data), io::AlignDown(bytes), nullptr};
  pool->state_->fixed = true;
  pool->state_->slabs.push_back(std::move(slab));
  return pool;
}

void StagingPool::SetAllocator(StagingAllocator allocator) {
  std::lock_guard lock(state_->mu);
  state_->allocator = std::move(allocator);
}

Result<std::shared_ptr<StagingLease>> StagingPool::Acquire(std::uint64_t bytes) {
  bytes = io::AlignUp(std::max<std::uint64_t>(bytes, 1));
  StagingAllocator allocator;
  std::vector<std::shared_ptr<StagingLease::Slab>> dropped;  // freed outside the lock
  {
    std::lock_guard lock(state_->mu);
    std::shared_ptr<StagingLease::Slab> best;
    for (const auto& s : state_->slabs)
      if (!s->leased && s->mem.size >= bytes && (!best || s->mem.size < best->mem.size)) best = s;
    if (best) {
      best->leased = true;
      auto lease = std::make_shared<StagingLease>(state_, best, false);
      std::lock_guard reg(RegistryMutex());
      Registry()[reinterpret_cast<std::uintptr_t>(best->mem.data)] = lease;
      return lease;
    }
    if (state_->fixed)
      return InvalidArgument("staging memory of " + FormatBytes(state_->slabs[0]->mem.size) +
                             (state_->slabs[0]->leased ? " is in use by another save"
                                                       : " cannot hold " + FormatBytes(bytes)));
    // A larger state arrived: the idle slabs are too small for it.
    for (auto& s : state_->slabs)
      if (!s->leased) dropped.push_back(std::move(s));
    std::erase(state_->slabs, nullptr);
    allocator = state_->allocator;
  }
  dropped.clear();
  // Allocating (and faulting in) a large slab takes a while: not under the lock.
  Result<StagingMemory> mem = allocator ? allocator(bytes) : AllocateStagingMemory(bytes);
  if (!mem.ok()) return std::move(mem).status();
  if (mem->size < bytes || reinterpret_cast<std::uintptr_t>(mem->data) % io::kAlignment != 0)
    return Status(StatusCode::kInternal, "the staging allocator returned " +
                                             FormatBytes(mem->size) +
                                             " (or unaligned memory) for a request of " +
                                             FormatBytes(bytes));
  auto slab = std::make_shared<StagingLease::Slab>();
  slab->mem = std::move(*mem);
  slab->announced = io::AnnouncedMemory(slab->mem.data, slab->mem.size);
  slab->leased = true;
  std::lock_guard lock(state_->mu);
  state_->slabs.push_back(slab);
  ++state_->allocations;
  auto lease = std::make_shared<StagingLease>(state_, slab, true);
  std::lock_guard reg(RegistryMutex());
  Registry()[reinterpret_cast<std::uintptr_t>(slab->mem.data)] = lease;
  return lease;
}

void StagingPool::ReleaseFree() {
  std::vector<std::shared_ptr<StagingLease::Slab>> dropped;  // freed outside the lock
  std::lock_guard lock(state_->mu);
  if (state_->fixed) return;
  for (auto& s : state_->slabs)
    if (!s->leased) dropped.push_back(std::move(s));
  std::erase(state_->slabs, nullptr);
}

std::uint64_t StagingPool::capacity() const {
  std::lock_guard lock(state_->mu);
  return state_->fixed ? state_->slabs[0]->mem.size : 0;
}

StagingStats StagingPool::stats() const {
  std::lock_guard lock(state_->mu);
  StagingStats st;
  st.allocations = state_->allocations;
  for (const auto& s : state_->slabs) {
    st.reserved_bytes += s->mem.size;
    ++st.slabs;
    if (s->leased) {
      st.leased_bytes += s->mem.size;
      ++st.leased;
    }
  }
  return st;
}

struct StagingLease::Impl {
  std::shared_ptr<StagingPool::State> pool;
  std::shared_ptr<Slab> slab;
  mutable std::mutex mu;
  std::condition_variable cv;
  std::map<std::uint64_t, std::uint64_t> extents;  // offset -> bytes staged there
  std::thread background;
  bool copying = false;
  bool released = false;
  std::atomic<std::uint64_t> copied{0};

  // Checks the copies against the slab and each other, and records them.
  // Earlier extents they cover are forgotten: staging over memory replaces
  // what was staged there (waves reuse the halves of a slab). Called with mu
  // held.
  Status Record(std::span<const Copy> copies) {
    std::map<std::uint64_t, std::uint64_t> added;
    for (const Copy& c : copies) {
      if (c.bytes == 0) continue;  // nothing to stage, no place taken
      const std::uint64_t end = c.offset + io::AlignUp(c.bytes);
      if (c.offset % io::kAlignment != 0 || end > slab->mem.size || end < c.offset)
        return InvalidArgument("staging copy of " + std::to_string(c.bytes) + " bytes at offset " +
                               std::to_string(c.offset) + " does not fit a 4 KiB-aligned place in " +
                               FormatBytes(slab->mem.size) + " of staging memory");
      if (c.bytes > 0 && c.src == nullptr) return InvalidArgument("staging copy from null");
      auto next = added.lower_bound(c.offset);
      bool overlap = next != added.end() && next->first < end;
      if (!overlap && next != added.begin()) {
        auto prev = std::prev(next);
        overlap = prev->first + io::AlignUp(prev->second) > c.offset;
      }
      if (overlap)
        return InvalidArgument("staging copies overlap at offset " + std::to_string(c.offset));
      added[c.offset] = c.bytes;
    }
    for (const auto& [off, bytes] : added) {
      const std::uint64_t end = off + io::AlignUp(bytes);
      auto it = extents.upper_bound(off);
      if (it != extents.begin()) {
        auto prev = std::prev(it);
        if (prev->first + io::AlignUp(prev->second) > off) it = prev;
      }
      while (it != extents.end() && it->first < end) it = extents.erase(it);
    }
    extents.merge(added);
    return Status::Ok();
  }

  void CopyAll(std::vector<StagingLease::Copy> copies, int threads) {
    struct Piece {
      const std::byte* src;
      std::byte* dst;
      std::uint64_t bytes;
      std::uint64_t zero;  // bytes to clear after it
    };
    std::vector<Piece> pieces;
    std::uint64_t total = 0;
    for (const auto& c : copies) {
      std::byte* dst = slab->mem.data + c.offset;
      const auto* src = static_cast<const std::byte*>(c.src);
      const std::uint64_t pad = io::AlignUp(c.bytes) - c.bytes;
      if (c.bytes == 0) continue;
      for (std::uint64_t b = 0; b < c.bytes; b += kCopyPiece) {
        const std::uint64_t n = std::min(kCopyPiece, c.bytes - b);
        pieces.push_back({src + b, dst + b, n, b + n == c.bytes ? pad : 0});
      }
      total += c.bytes;
    }
    ParallelFor(0, pieces.size(), threads, [&](std::size_t i) {
      const Piece& p = pieces[i];
      StreamCopy(p.dst, p.src, p.bytes);
      if (p.zero) std::memset(p.dst + p.bytes, 0, p.zero);
    });
    copied.fetch_add(total, std::memory_order_relaxed);
    engine::AddCopiedStateBytes(total);
  }

  void JoinBackground(std::unique_lock<std::mutex>& lock) {
    cv.wait(lock, [&] { return !copying; });
    if (background.joinable()) {
      std::thread t = std::move(background);
      lock.unlock();
      t.join();
      os::RunPoint("staging_joined");  // tests: another Release while the lock is let go
      lock.lock();
    }
  }
};

StagingLease::StagingLease(std::shared_ptr<StagingPool::State> pool, std::shared_ptr<Slab> slab,
                           bool fresh)
    : impl_(std::make_unique<Impl>()), fresh_(fresh) {
  impl_->pool = std::move(pool);
  impl_->slab = std::move(slab);
}

StagingLease::~StagingLease() { Release(); }

std::byte* StagingLease::data() const { return impl_->slab->mem.data; }
std::uint64_t StagingLease::size() const { return impl_->slab->mem.size; }
std::shared_ptr<void> StagingLease::keep() const {
  // Caller memory (Wrap) has no owner: the slab itself stands in, so views
  // at least keep the pool's record alive.
  return impl_->slab->mem.keep ? impl_->slab->mem.keep : std::shared_ptr<void>(impl_->slab);
}

Status StagingLease::Stage(std::span<const Copy> copies, int threads) {
  {
    std::lock_guard lock(impl_->mu);
    if (impl_->released) return InvalidArgument("staging into a released lease");
    SW_RETURN_IF_ERROR(impl_->Record(copies));
  }
  impl_->CopyAll({copies.begin(), copies.end()}, threads > 0 ? threads : CpusPerLocalRank());
  return Status::Ok();
}

Status StagingLease::StageInBackground(std::vector<Copy> copies, int threads) {
  std::unique_lock lock(impl_->mu);
  if (impl_->released) return InvalidArgument("staging into a released lease");
  impl_->JoinBackground(lock);
  SW_RETURN_IF_ERROR(impl_->Record(copies));
  impl_->copying = true;
  const int n = threads > 0 ? threads : std::max(1, CpusPerLocalRank() - 1);
  auto work = std::make_shared<std::vector<Copy>>(std::move(copies));
  auto copy = [impl = impl_.get(), work, n] {
    os::PausePoint("staging_background");
    impl->CopyAll(std::move(*work), n);
    std::lock_guard done(impl->mu);
    impl->copying = false;
    impl->cv.notify_all();
  };
  try {
    impl_->background = std::thread(copy);
  } catch (const std::system_error&) {
    // No thread to be had (EAGAIN: a container's pids limit): the copy
    // runs here, before this returns; slower, never a lease whose waiters
    // wait for a copy that never started.
    lock.unlock();
    copy();
  }
  return Status::Ok();
}

Status StagingLease::Adopt(std::span<const Copy> extents) {
  std::vector<Copy> records(extents.begin(), extents.end());
  for (Copy& c : records) c.src = data() + c.offset;  // Record checks src for null only
  std::lock_guard lock(impl_->mu);
  if (impl_->released) return InvalidArgument("adopting into a released lease");
  return impl_->Record(records);
}

Status StagingLease::WaitStaged() {
  std::unique_lock lock(impl_->mu);
  impl_->JoinBackground(lock);
  return Status::Ok();
}

bool StagingLease::staged() const {
  std::lock_guard lock(impl_->mu);
  return !impl_->copying;
}

std::uint64_t StagingLease::copied_bytes() const {
  return impl_->copied.load(std::memory_order_relaxed);
}

bool StagingLease::IsStagedExtent(const void* p, std::uint64_t bytes) const {
  const auto* b = static_cast<const std::byte*>(p);
  const std::byte* base = impl_->slab->mem.data;
  if (b < base || b >= base + impl_->slab->mem.size) return false;
  std::lock_guard lock(impl_->mu);
  auto it = impl_->extents.find(static_cast<std::uint64_t>(b - base));
  return it != impl_->extents.end() && it->second == bytes;
}

void StagingLease::Release() {
  {
    std::unique_lock lock(impl_->mu);
    if (impl_->released) return;
    impl_->JoinBackground(lock);  // never hand out memory a copy still writes
    // JoinBackground lets the lock go while it joins: a Release on another
    // thread may have released the slab meanwhile, and it may be leased
    // again already. Only one Release gives it back.
    if (impl_->released) return;
    impl_->released = true;
  }
  {
    // Declared before the lock: if another thread dropped the last other
    // reference meanwhile, that lease's destructor (which takes the
    // registry's lock) runs after the lock is released.
    std::shared_ptr<StagingLease> holder;
    std::lock_guard reg(RegistryMutex());
    auto it = Registry().find(reinterpret_cast<std::uintptr_t>(impl_->slab->mem.data));
    // The entry may already name the slab's next lease if this one expired
    // first; only remove our own.
    if (it != Registry().end()) {
      holder = it->second.lock();
      if (!holder || holder.get() == this) Registry().erase(it);
    }
  }
  std::vector<std::shared_ptr<Slab>> dropped;
  {
    std::lock_guard lock(impl_->pool->mu);
    impl_->slab->leased = false;
    dropped = impl_->pool->TrimIdle();
  }
}

bool StagingLease::released() const {
  std::lock_guard lock(impl_->mu);
  return impl_->released;
}

std::shared_ptr<StagingLease> StagingLease::Find(const void* p, std::uint64_t bytes) {
  const auto addr = reinterpret_cast<std::uintptr_t>(p);
  // Before the lock, as in Release(): a lease found here whose last other
  // reference goes meanwhile is destroyed (and takes the lock) after it.
  std::shared_ptr<StagingLease> lease;
  std::lock_guard reg(RegistryMutex());
  auto& leases = Registry();
  auto it = leases.upper_bound(addr);
  if (it == leases.begin()) return nullptr;
  --it;
  lease = it->second.lock();
  if (!lease || addr + bytes > it->first + lease->size()) return nullptr;
  return lease;
}

}  // namespace shardwise
