// The process-wide staging pool, its leases, and writes straight from
// staged memory.
#include "shardwise/staging.h"

#include <gtest/gtest.h>

#include <cstring>
#include <thread>
#include <tuple>

#include "io/aligned_buffer.h"
#include "io/registered_memory.h"
#include "os/fault.h"
#include "shardwise/shardwise.h"
#include "testing/holds.h"
#include "testing/test_util.h"

namespace shardwise {
namespace {

using testing::Holds;
using testing::OwnedItems;
using testing::TempDir;

constexpr std::uint64_t kMiB = 1 << 20;

TEST(StagingPool, ReusesItsSlabAndGrowsOnlyForALargerState) {
  StagingPool pool;
  {
    auto a = pool.Acquire(3 * kMiB);
    ASSERT_TRUE(a.ok());
    EXPECT_TRUE((*a)->fresh());
    EXPECT_GE((*a)->size(), 3 * kMiB);
  }
  for (int i = 0; i < 3; ++i) {
    auto b = pool.Acquire(3 * kMiB);  // the same size again: the same slab
    ASSERT_TRUE(b.ok());
    EXPECT_FALSE((*b)->fresh());
  }
  EXPECT_EQ(pool.stats().allocations, 1u);
  {
    auto smaller = pool.Acquire(kMiB);  // fits the idle slab too
    ASSERT_TRUE(smaller.ok());
    EXPECT_FALSE((*smaller)->fresh());
  }
  {
    auto larger = pool.Acquire(9 * kMiB);
    ASSERT_TRUE(larger.ok());
    EXPECT_TRUE((*larger)->fresh());
  }
  StagingStats st = pool.stats();
  EXPECT_EQ(st.allocations, 2u);
  EXPECT_EQ(st.slabs, 1);  // the smaller idle slab was freed for the larger
  EXPECT_GE(st.reserved_bytes, 9 * kMiB);
  EXPECT_EQ(st.leased, 0);
  pool.ReleaseFree();
  EXPECT_EQ(pool.stats().slabs, 0);
  EXPECT_EQ(pool.stats().reserved_bytes, 0u);
}

TEST(StagingPool, SavesInFlightNeverShareBytes) {
  StagingPool pool;
  auto a = pool.Acquire(2 * kMiB);
  auto b = pool.Acquire(2 * kMiB);  // a is still leased: a second slab
  ASSERT_TRUE(a.ok() && b.ok());
  const std::byte* a0 = (*a)->data();
  const std::byte* b0 = (*b)->data();
  EXPECT_TRUE(a0 + (*a)->size() <= b0 || b0 + (*b)->size() <= a0);
  EXPECT_EQ(pool.stats().leased, 2);
  (*a)->Release();
  (*b)->Release();
  // One idle slab is kept for the next save, not two.
  EXPECT_EQ(pool.stats().slabs, 1);
  EXPECT_EQ(pool.stats().leased, 0);
}

TEST(StagingPool, ReleasedMemoryStaysValidForItsViews) {
  StagingPool pool;
  std::shared_ptr<void> keep;
  std::byte* data;
  {
    auto a = pool.Acquire(kMiB);
    ASSERT_TRUE(a.ok());
    keep = (*a)->keep();
    data = (*a)->data();
  }
  pool.ReleaseFree();  // the slab leaves the pool; `keep` still maps it
  std::memset(data, 7, kMiB);
  EXPECT_EQ(data[kMiB - 1], std::byte{7});
}

// A slab is announced to the I/O layer (for io_uring's fixed buffers) while
// the pool holds it, and withdrawn before it is freed.
TEST(StagingPool, SlabsAreAnnouncedForTheirLifetime) {
  StagingPool pool;
  const std::byte* data;
  std::uint64_t size;
  {
    auto a = pool.Acquire(3 * kMiB);
    ASSERT_TRUE(a.ok());
    data = (*a)->data();
    size = (*a)->size();
  }
  auto found = [&] {
    auto lock = io::announced::Lock();
    const io::announced::Region r = io::announced::Find(data + size - 4096, 4096);
    return r.id != 0 && r.base == data && r.bytes == size;
  };
  EXPECT_TRUE(found());  // idle, kept for the next save: still announced
  pool.ReleaseFree();
  EXPECT_FALSE(found());
}

TEST(StagingPool, WrappedMemoryIsOneFixedSlab) {
  std::unique_ptr<void, decltype(&std::free)> mem(std::aligned_alloc(4096, kMiB), &std::free);
  auto pool = StagingPool::Wrap(mem.get(), kMiB);
  ASSERT_TRUE(pool.ok());
  EXPECT_EQ((*pool)->capacity(), kMiB);
  auto a = (*pool)->Acquire(kMiB);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ((*a)->data(), mem.get());
  {
    // Caller-owned memory is never registered with io_uring: the pool
    // cannot tell when it is freed.
    auto lock = io::announced::Lock();
    EXPECT_EQ(io::announced::Find(static_cast<std::byte*>(mem.get()), 4096).id, 0u);
  }
  auto busy = (*pool)->Acquire(4096);
  ASSERT_FALSE(busy.ok());
  EXPECT_NE(busy.status().message().find("in use"), std::string::npos);
  (*a)->Release();
  auto big = (*pool)->Acquire(2 * kMiB);
  ASSERT_FALSE(big.ok());
  EXPECT_NE(big.status().message().find("cannot hold"), std::string::npos);
  EXPECT_FALSE(StagingPool::Wrap(reinterpret_cast<void*>(4097), 8192).ok());
}

TEST(StagingLease, StagesCopiesAndZeroesTheirPadding) {
  StagingPool pool;
  auto lease = pool.Acquire(64 << 10);
  ASSERT_TRUE(lease.ok());
  std::memset((*lease)->data(), 0xAB, (*lease)->size());  // what a previous save left
  std::vector<std::byte> a(5000, std::byte{1}), b(4096, std::byte{2});
  std::vector<StagingLease::Copy> copies = {{a.data(), 0, a.size()}, {b.data(), 8192, b.size()}};
  ASSERT_TRUE((*lease)->Stage(copies, 2).ok());
  const std::byte* m = (*lease)->data();
  EXPECT_EQ(std::memcmp(m, a.data(), a.size()), 0);
  for (std::size_t i = a.size(); i < 8192; ++i) ASSERT_EQ(m[i], std::byte{0}) << i;
  EXPECT_EQ(std::memcmp(m + 8192, b.data(), b.size()), 0);
  EXPECT_EQ(m[12288], std::byte{0xAB});  // untouched beyond the copies
  EXPECT_EQ((*lease)->copied_bytes(), a.size() + b.size());
  EXPECT_TRUE((*lease)->IsStagedExtent(m, a.size()));
  EXPECT_FALSE((*lease)->IsStagedExtent(m, 4096));  // part of an extent: its padding is data
  EXPECT_FALSE((*lease)->IsStagedExtent(m + 4096, 904));
}

TEST(StagingLease, RefusesCopiesThatDoNotFitOrOverlap) {
  StagingPool pool;
  auto lease = pool.Acquire(16 << 10);
  ASSERT_TRUE(lease.ok());
  const std::uint64_t size = (*lease)->size();
  std::vector<std::byte> x(8192);
  std::vector<StagingLease::Copy> unaligned = {{x.data(), 100, 10}};
  EXPECT_EQ((*lease)->Stage(unaligned).code(), StatusCode::kInvalidArgument);
  std::vector<StagingLease::Copy> past_end = {{x.data(), size - 4096, 4097}};
  EXPECT_EQ((*lease)->Stage(past_end).code(), StatusCode::kInvalidArgument);
  std::vector<StagingLease::Copy> overlap = {{x.data(), 0, 5000}, {x.data(), 4096, 10}};
  Status s = (*lease)->Stage(overlap);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("overlap"), std::string::npos);
  EXPECT_EQ((*lease)->copied_bytes(), 0u);
  std::vector<StagingLease::Copy> null_src = {{nullptr, 0, 10}};
  EXPECT_EQ((*lease)->Stage(null_src).code(), StatusCode::kInvalidArgument);
}

TEST(StagingLease, BackgroundCopyIsDoneWhenWaitStagedReturns) {
  StagingPool pool;
  const std::uint64_t n = 48 * kMiB;
  std::vector<std::byte> src(n);
  for (std::uint64_t i = 0; i < n; i += 4096) src[i] = static_cast<std::byte>(i >> 12);
  auto lease = pool.Acquire(n);
  ASSERT_TRUE(lease.ok());
  ASSERT_TRUE((*lease)->StageInBackground({{src.data(), 0, n}}, 2).ok());
  ASSERT_TRUE((*lease)->WaitStaged().ok());
  EXPECT_TRUE((*lease)->staged());
  EXPECT_EQ(std::memcmp((*lease)->data(), src.data(), n), 0);
  EXPECT_EQ((*lease)->copied_bytes(), n);
}

TEST(StagingLease, ReleaseWaitsForTheBackgroundCopy) {
  StagingPool pool;
  const std::uint64_t n = 64 * kMiB;
  std::vector<std::byte> src(n, std::byte{3});
  auto lease = pool.Acquire(n);
  ASSERT_TRUE(lease.ok());
  ASSERT_TRUE((*lease)->StageInBackground({{src.data(), 0, n}}).ok());
  (*lease)->Release();  // must not hand out memory the copy still writes
  EXPECT_TRUE((*lease)->staged());
  EXPECT_TRUE((*lease)->released());
  EXPECT_EQ((*lease)->copied_bytes(), n);
  EXPECT_FALSE((*lease)->Stage({}).ok());  // a released lease takes no copies
}

TEST(StagingLease, ReleasedTwiceAtOnceGivesTheSlabBackOnce) {
  // A Release that joins the background copy lets the lease's lock go; a
  // second Release gets in, gives the slab back, and a new save leases it.
  // The first must not then give back the new save's slab.
  StagingPool pool;
  const std::uint64_t n = 8 * kMiB;
  std::vector<std::byte> src(n, std::byte{5});
  auto first = pool.Acquire(n);
  ASSERT_TRUE(first.ok());
  ASSERT_TRUE((*first)->StageInBackground({{src.data(), 0, n}}, 1).ok());
  std::shared_ptr<StagingLease> next;
  os::SetRunPoint("staging_joined", [&] {
    (*first)->Release();
    auto again = pool.Acquire(n);
    ASSERT_TRUE(again.ok());
    EXPECT_EQ((*again)->data(), (*first)->data());  // the slab, leased anew
    next = *again;
  });
  (*first)->Release();
  os::SetRunPoint("", {});
  ASSERT_NE(next, nullptr);
  auto third = pool.Acquire(n);  // `next` still holds its slab: a new one
  ASSERT_TRUE(third.ok());
  EXPECT_NE((*third)->data(), next->data());
}

TEST(StagingLease, FindLocatesUnreleasedLeasesByAddress) {
  StagingPool pool;
  auto lease = pool.Acquire(kMiB);
  ASSERT_TRUE(lease.ok());
  std::byte* m = (*lease)->data();
  EXPECT_EQ(StagingLease::Find(m, 4096), *lease);
  EXPECT_EQ(StagingLease::Find(m + 8192, 4096), *lease);
  EXPECT_EQ(StagingLease::Find(m + (*lease)->size() - 4096, 8192), nullptr);  // runs past
  int local = 0;
  EXPECT_EQ(StagingLease::Find(&local, sizeof local), nullptr);
  (*lease)->Release();
  EXPECT_EQ(StagingLease::Find(m, 4096), nullptr);
}

// Items staged into a lease, laid out as the Python stager does: each at a
// 4 KiB-aligned offset in state order.
struct Staged {
  std::shared_ptr<StagingLease> lease;
  std::vector<WriteItem> items;
};

Staged StageAll(StagingPool& pool, const OwnedItems& state, bool skip_odd = false) {
  Staged s;
  std::uint64_t total = 0;
  for (const auto& w : state.items) total += io::AlignUp(w.nbytes);
  s.lease = *pool.Acquire(total);
  std::vector<StagingLease::Copy> copies;
  std::uint64_t off = 0;
  for (std::size_t i = 0; i < state.items.size(); ++i) {
    WriteItem w = state.items[i];
    copies.push_back({w.data, off, w.nbytes});
    w.data = s.lease->data() + off;
    off += io::AlignUp(w.nbytes);
    if (!(skip_odd && i % 2 == 1)) s.items.push_back(w);  // a deduplicating planner's subset
  }
  EXPECT_TRUE(s.lease->Stage(copies).ok());
  return s;
}

using DirectParam = std::tuple<IoBackendKind, DirectIoMode>;

class DirectWrite : public ::testing::TestWithParam<DirectParam> {
 protected:
  Options opts() const {
    Options o;
    o.io_backend = std::get<0>(GetParam());
    o.direct_io = std::get<1>(GetParam());
    o.checksum_block_bytes = 16 << 10;
    o.io_unit_bytes = 64 << 10;
    return o;
  }
  static OwnedItems Mixed() {
    OwnedItems it;
    it.Add("big", DType::kFloat32, {300, 257}, 1);  // several units
    it.Add("bias", DType::kBFloat16, {257}, 2);     // odd sizes: padding
    it.Add("norm", DType::kFloat16, {64}, 3);
    it.Add("empty", DType::kFloat32, {0, 4}, 4);
    it.Add("scalar", DType::kInt64, {}, 5);
    it.Add("page", DType::kUInt8, {4096}, 6);
    it.Add("exact", DType::kUInt8, {64 << 10}, 7);
    return it;
  }
  TempDir dir_;
};

TEST_P(DirectWrite, StagedItemsAreWrittenWithoutACopy) {
  auto repo = Repository::Open(dir_.path(), opts());
  ASSERT_TRUE(repo.ok());
  StagingPool pool;
  OwnedItems state = Mixed();
  Staged staged = StageAll(pool, state);
  const std::uint64_t before = CopiedStateBytes();
  SaveSpec spec;
  spec.step = 1;
  spec.save_id = "direct1";
  auto r = (*repo)->WriteRank(spec, staged.items);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->copied_bytes, 0u);
  EXPECT_EQ(CopiedStateBytes(), before);
  ASSERT_TRUE((*repo)->Commit(spec).ok());
  EXPECT_TRUE(Holds(**repo, "step-000000000001", state));
  auto reader = (*repo)->OpenCheckpoint("step-000000000001");
  ASSERT_TRUE(reader.ok());
  EXPECT_TRUE((*reader)->Verify()->problems.empty());
}

TEST_P(DirectWrite, ASubsetOfStagedItemsAndUnstagedOnesMixed) {
  auto repo = Repository::Open(dir_.path(), opts());
  ASSERT_TRUE(repo.ok());
  StagingPool pool;
  OwnedItems state = Mixed();
  Staged staged = StageAll(pool, state, /*skip_odd=*/true);  // not contiguous any more
  OwnedItems extra;
  extra.Add("unstaged", DType::kFloat32, {1000}, 9);
  std::vector<WriteItem> items = staged.items;
  items.insert(items.begin() + 1, extra.items[0]);
  SaveSpec spec;
  spec.step = 2;
  spec.save_id = "direct2";
  auto r = (*repo)->WriteRank(spec, items);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->copied_bytes, extra.items[0].nbytes);  // only the unstaged item
  ASSERT_TRUE((*repo)->Commit(spec).ok());
  OwnedItems want;
  for (std::size_t i = 0; i < state.items.size(); i += 2) {
    want.items.push_back(state.items[i]);
    want.data.push_back(state.data[i]);
  }
  want.items.push_back(extra.items[0]);
  want.data.push_back(extra.data[0]);
  EXPECT_TRUE(Holds(**repo, "step-000000000002", want));
  auto reader = (*repo)->OpenCheckpoint("step-000000000002");
  EXPECT_TRUE((*reader)->Verify()->problems.empty());
}

TEST_P(DirectWrite, AViewInsideAStagedExtentIsCopiedNotWrittenWithForeignPadding) {
  auto repo = Repository::Open(dir_.path(), opts());
  ASSERT_TRUE(repo.ok());
  StagingPool pool;
  OwnedItems state = Mixed();
  Staged staged = StageAll(pool, state);
  WriteItem head = staged.items[0];  // the first 4000 bytes of "big"
  head.name = "head";
  head.dtype = DType::kUInt8;
  head.global_shape = {4000};
  head.nbytes = 4000;
  SaveSpec spec;
  spec.step = 3;
  spec.save_id = "direct3";
  auto r = (*repo)->WriteRank(spec, std::vector<WriteItem>{head});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->copied_bytes, 4000u);
  ASSERT_TRUE((*repo)->Commit(spec).ok());
  // The extent's padding is zero, as the format says, not "big"'s next bytes.
  std::string shard = testing::ReadAll(dir_ / "step-000000000003/rank-00000.shard");
  ASSERT_EQ(shard.size(), 8192u);
  for (std::size_t i = 4096 + 4000; i < 8192; ++i) ASSERT_EQ(shard[i], '\0') << i;
}

INSTANTIATE_TEST_SUITE_P(
    Backends, DirectWrite,
    ::testing::Combine(::testing::Values(IoBackendKind::kThreads, IoBackendKind::kAuto),
                       ::testing::Values(DirectIoMode::kOff, DirectIoMode::kAuto)));

TEST(AsyncSaver, CopiesTheStateOnceIntoTheProcessPool) {
  TempDir dir;
  auto repo = Repository::Open(dir.path());
  ASSERT_TRUE(repo.ok());
  OwnedItems state;
  state.Add("w", DType::kFloat32, {1000, 300}, 1);
  state.Add("b", DType::kFloat32, {300}, 2);
  std::uint64_t bytes = 0;
  for (const auto& w : state.items) bytes += w.nbytes;
  const std::uint64_t allocations = StagingPool::ForProcess().stats().allocations;
  for (int step = 1; step <= 3; ++step) {
    auto saver = AsyncSaver::Create(**repo);  // a new saver per save
    ASSERT_TRUE(saver.ok());
    SaveSpec spec;
    spec.step = step;
    auto h = (*saver)->SaveAsync(spec, state.items);
    ASSERT_TRUE(h.ok()) << h.status().ToString();
    ASSERT_TRUE((*h)->Wait().ok());
    EXPECT_EQ((*h)->copied_bytes(), bytes);
  }
  // Every saver staged into the same process pool: at most one allocation.
  EXPECT_LE(StagingPool::ForProcess().stats().allocations, allocations + 1);
  EXPECT_EQ(StagingPool::ForProcess().stats().leased, 0);
}

}  // namespace
}  // namespace shardwise
