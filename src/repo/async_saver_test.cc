#include "shardwise/async.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <future>

#include "os/fault.h"
#include "shardwise/shardwise.h"
#include "testing/holds.h"
#include "testing/test_util.h"

namespace shardwise {
namespace {

using testing::Holds;
using testing::OwnedItems;
using testing::TempDir;

Options SmallUnits() {
  Options o;
  o.checksum_block_bytes = 16 << 10;
  o.io_unit_bytes = 64 << 10;
  o.poll_interval_s = 0.005;
  return o;
}

OwnedItems State(std::uint64_t seed, std::int64_t rows = 2000) {
  OwnedItems it;
  it.Add("w", DType::kFloat32, {rows, 257}, seed);  // ~2 MiB
  it.Add("b", DType::kFloat32, {257}, seed + 1);
  it.Add("step", DType::kInt64, {}, seed + 2);
  return it;
}

class AsyncTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto r = Repository::Open(dir_.path(), SmallUnits());
    ASSERT_TRUE(r.ok());
    repo_ = std::move(*r);
  }
  void TearDown() override { os::ClearFaults(); }
  std::vector<std::string> Committed() {
    std::vector<std::string> out;
    auto list = repo_->List();
    for (const auto& c : *list)
      if (c.state == CheckpointInfo::State::kCommitted) out.push_back(c.name);
    return out;
  }
  TempDir dir_;
  std::unique_ptr<Repository> repo_;
};

// The caller may overwrite its tensors as soon as SaveAsync returns.
TEST_F(AsyncTest, StagedCopyIsWhatGetsSaved) {
  auto saver = AsyncSaver::Create(*repo_);
  ASSERT_TRUE(saver.ok());
  for (int step = 1; step <= 3; ++step) {
    OwnedItems state = State(static_cast<std::uint64_t>(step));
    OwnedItems expected = state;  // a deep copy of the bytes
    for (std::size_t i = 0; i < expected.items.size(); ++i)
      expected.items[i].data = expected.data[i].data();
    SaveSpec spec;
    spec.step = step;
    auto h = (*saver)->SaveAsync(spec, state.items);
    ASSERT_TRUE(h.ok()) << h.status().ToString();
    for (auto& d : state.data) std::fill(d.begin(), d.end(), std::byte{0xEE});  // "training"
    ASSERT_TRUE((*h)->Wait().ok()) << (*h)->status().ToString();
    EXPECT_EQ((*h)->waves(), 1);
    EXPECT_GT((*h)->stall_seconds(), 0);
    EXPECT_TRUE(Holds(*repo_, Repository::StepName(step), expected));
  }
  // One pool, allocated on the first save and reused.
  EXPECT_GE((*saver)->staging_bytes(), 2000u * 257 * 4);
  EXPECT_EQ(Committed().size(), 3u);
}

TEST_F(AsyncTest, WavesWithATinyPoolAreBitExact) {
  AsyncOptions ao;
  ao.staging_bytes = 2 << 20;  // the state is ~6 MiB
  auto saver = AsyncSaver::Create(*repo_, ao);
  ASSERT_TRUE(saver.ok());
  OwnedItems state = State(7, 6000);
  SaveSpec spec;
  spec.step = 1;
  auto h = (*saver)->SaveAsync(spec, state.items);
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  ASSERT_TRUE((*h)->Wait().ok()) << (*h)->status().ToString();
  EXPECT_GT((*h)->waves(), 4);
  EXPECT_EQ((*saver)->staging_bytes(), 2u << 20);
  EXPECT_TRUE(Holds(*repo_, "step-000000000001", state));
  auto reader = repo_->OpenCheckpoint("step-000000000001");
  EXPECT_TRUE((*reader)->Verify()->problems.empty());
}

TEST_F(AsyncTest, PoolTooSmallForWaves) {
  void* mem = std::aligned_alloc(4096, 64 << 10);
  auto pool = StagingPool::Wrap(mem, 64 << 10);
  ASSERT_TRUE(pool.ok());
  auto saver = AsyncSaver::Create(*repo_, {}, std::move(*pool));
  ASSERT_TRUE(saver.ok());
  OwnedItems state = State(1);
  SaveSpec spec;
  spec.step = 1;
  auto h = (*saver)->SaveAsync(spec, state.items);
  EXPECT_EQ(h.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(h.status().message().find("too small"), std::string::npos);
  saver->reset();
  std::free(mem);
  EXPECT_FALSE(StagingPool::Wrap(reinterpret_cast<void*>(4097), 8192).ok());  // unaligned
}

TEST_F(AsyncTest, CallerSuppliedMemory) {
  const std::size_t bytes = 8 << 20;
  void* mem = std::aligned_alloc(4096, bytes);
  {
    auto pool = StagingPool::Wrap(mem, bytes);
    ASSERT_TRUE(pool.ok());
    auto saver = AsyncSaver::Create(*repo_, {}, std::move(*pool));
    OwnedItems state = State(3);
    SaveSpec spec;
    spec.step = 1;
    auto h = (*saver)->SaveAsync(spec, state.items);
    ASSERT_TRUE(h.ok());
    ASSERT_TRUE((*h)->Wait().ok());
    EXPECT_TRUE(Holds(*repo_, "step-000000000001", state));
  }
  std::free(mem);
}

// Errors of the background persist surface on Wait(), nothing is committed,
// the previous checkpoint stays valid, and the next save works.
TEST_F(AsyncTest, BackgroundErrorsSurfaceOnWait) {
  auto saver = AsyncSaver::Create(*repo_);
  OwnedItems first = State(1);
  SaveSpec spec;
  spec.step = 1;
  ASSERT_TRUE((*(*saver)->SaveAsync(spec, first.items))->Wait().ok());
  for (auto [op, err] : {std::pair{os::Op::kWrite, EIO}, std::pair{os::Op::kWrite, ENOSPC},
                         std::pair{os::Op::kFsync, EIO}, std::pair{os::Op::kRename, EIO}}) {
    os::SetFaults({{op, 2, false, err, false, false}});
    OwnedItems state = State(2);
    spec.step = 2;
    auto h = (*saver)->SaveAsync(spec, state.items);
    ASSERT_TRUE(h.ok()) << h.status().ToString();
    Status s = (*h)->Wait();
    os::ClearFaults();
    ASSERT_FALSE(s.ok()) << os::OpName(op);
    EXPECT_EQ(s.err(), err);
    EXPECT_NE(s.message().find(dir_.path()), std::string::npos) << s.message();
    EXPECT_EQ(Committed(), std::vector<std::string>{"step-000000000001"}) << os::OpName(op);
    EXPECT_TRUE(Holds(*repo_, "step-000000000001", first));
    GcOptions gc;
    gc.staging_grace_s = 0;
    ASSERT_TRUE(repo_->Gc(gc).ok());
  }
  OwnedItems state = State(3);
  spec.step = 3;
  auto h = (*saver)->SaveAsync(spec, state.items);
  ASSERT_TRUE(h.ok());
  EXPECT_TRUE((*h)->Wait().ok());
}

TEST_F(AsyncTest, UnobservedErrorSurfacesOnTheNextSave) {
  auto saver = AsyncSaver::Create(*repo_);
  OwnedItems state = State(1);
  SaveSpec spec;
  spec.step = 1;
  os::SetFaults({{os::Op::kWrite, 1, false, EIO, false, false}});
  auto h = (*saver)->SaveAsync(spec, state.items);
  ASSERT_TRUE(h.ok());
  while (!(*h)->Done()) os::SleepSeconds(0.001);
  os::ClearFaults();
  spec.step = 2;
  auto next = (*saver)->SaveAsync(spec, state.items);  // reports step 1's failure
  ASSERT_FALSE(next.ok());
  EXPECT_EQ(next.status().err(), EIO);
  EXPECT_NE(next.status().message().find("previous async save"), std::string::npos);
  auto retry = (*saver)->SaveAsync(spec, state.items);  // reported once only
  ASSERT_TRUE(retry.ok());
  EXPECT_TRUE((*retry)->Wait().ok());
}

// An exception in the staging copy (an allocation failing) becomes the
// save's error; the background stops instead of waiting for waves that never
// come, so neither this call nor the saver's destructor hangs, and the saver
// saves again afterwards. Both a single wave and waves in a small pool.
TEST_F(AsyncTest, AnExceptionWhileStagingStopsTheBackground) {
  int round = 0;
  for (std::uint64_t staging : {std::uint64_t{0}, std::uint64_t{2} << 20}) {
    for (std::uint64_t nth : {1, 2}) {
      if (staging == 0 && nth == 2) continue;  // one wave only
      AsyncOptions opts;
      opts.staging_bytes = staging;
      // A pool of its own: the process's would lend an earlier, larger slab.
      auto saver = AsyncSaver::Create(*repo_, opts, std::make_unique<StagingPool>());
      ASSERT_TRUE(saver.ok());
      OwnedItems state = State(7, 6000);  // ~6 MiB: waves in 2 MiB
      SaveSpec spec;
      spec.name = "throws";
      const std::string after = "after-" + std::to_string(++round);
      os::SetThrowPoint("stage_wave", nth);
      auto h = (*saver)->SaveAsync(spec, state.items);
      os::SetThrowPoint("");
      ASSERT_FALSE(h.ok());
      EXPECT_EQ(h.status().code(), StatusCode::kInternal);
      EXPECT_NE(h.status().message().find("staging failed"), std::string::npos)
          << h.status().ToString();
      // The background has stopped, with the foreground's error.
      Status idle = (*saver)->WaitIdle();
      EXPECT_EQ(idle.code(), StatusCode::kInternal);
      EXPECT_EQ(idle.message(), h.status().message());
      spec.name = after;
      auto again = (*saver)->SaveAsync(spec, state.items);
      ASSERT_TRUE(again.ok()) << again.status().ToString();
      ASSERT_TRUE((*again)->Wait().ok());
      if (staging) {
        EXPECT_GT((*again)->waves(), 2);
      }
      EXPECT_TRUE(Holds(*repo_, after, state));
      for (const std::string& name : Committed()) EXPECT_NE(name, "throws");
    }
  }
}

// A save whose commit waits for a second rank stays in flight until that
// rank reports: a deterministic "still persisting".
TEST_F(AsyncTest, OverlapPolicies) {
  for (OverlapPolicy policy : {OverlapPolicy::kSkip, OverlapPolicy::kWait}) {
    TempDir d;
    auto repo = Repository::Open(d.path(), SmallUnits());
    AsyncOptions ao;
    ao.overlap = policy;
    auto saver = AsyncSaver::Create(**repo, ao);
    OwnedItems r0, r1;
    r0.Add("x", DType::kFloat32, {64, 16}, 1, {0, 0}, {32, 16});
    r1.Add("x", DType::kFloat32, {64, 16}, 2, {32, 0}, {32, 16});
    SaveSpec spec;
    spec.step = 1;
    spec.world_size = 2;
    spec.save_id = "two-ranks";
    auto first = (*saver)->SaveAsync(spec, r0.items);
    ASSERT_TRUE(first.ok());
    os::SleepSeconds(0.05);
    EXPECT_FALSE((*first)->Done());
    SaveSpec spec2 = spec;
    spec2.step = 2;
    spec2.save_id = "two-ranks-b";
    SaveSpec rank1 = spec;
    rank1.rank = 1;
    if (policy == OverlapPolicy::kSkip) {
      auto second = (*saver)->SaveAsync(spec2, r0.items);
      ASSERT_TRUE(second.ok());
      EXPECT_TRUE((*second)->skipped());
      EXPECT_EQ((*second)->Wait().code(), StatusCode::kAborted);
      ASSERT_TRUE((*repo)->WriteRank(rank1, r1.items).ok());
    } else {
      auto second = std::async(std::launch::async, [&] { return (*saver)->SaveAsync(spec2, r0.items); });
      EXPECT_EQ(second.wait_for(std::chrono::milliseconds(150)), std::future_status::timeout);
      ASSERT_TRUE((*repo)->WriteRank(rank1, r1.items).ok());  // the first save completes
      auto h2 = second.get();
      ASSERT_TRUE(h2.ok()) << h2.status().ToString();
      EXPECT_GT((*h2)->stall_seconds(), 0.1);  // it waited
      SaveSpec rank1b = spec2;
      rank1b.rank = 1;
      ASSERT_TRUE((*repo)->WriteRank(rank1b, r1.items).ok());
      EXPECT_TRUE((*h2)->Wait().ok());
    }
    EXPECT_TRUE((*first)->Wait().ok()) << (*first)->status().ToString();
  }
}

TEST_F(AsyncTest, DestroyingTheSaverCompletesTheSave) {
  {
    auto saver = AsyncSaver::Create(*repo_);
    OwnedItems state = State(4);
    SaveSpec spec;
    spec.step = 9;
    ASSERT_TRUE((*saver)->SaveAsync(spec, state.items).ok());
  }  // destroyed while persisting
  EXPECT_EQ(Committed(), std::vector<std::string>{"step-000000000009"});
}

// SIGKILL while the background persists: the previous checkpoint stays
// valid, the new one is invisible, gc removes the rest.
TEST_F(AsyncTest, KillDuringBackgroundPersist) {
  OwnedItems first = State(1);
  SaveSpec spec;
  spec.step = 1;
  ASSERT_TRUE(repo_->Save(spec, first.items).ok());
  for (const char* point : {"shard_written", "fragment.renamed", "manifest_written"}) {
    pid_t pid = ::fork();
    if (pid == 0) {
      auto repo = Repository::Open(dir_.path(), SmallUnits());
      auto saver = AsyncSaver::Create(**repo);
      OwnedItems state = State(2);
      SaveSpec s2;
      s2.step = 2;
      os::SetCrashPoint(point);
      auto h = (*saver)->SaveAsync(s2, state.items);
      if (!h.ok()) ::_exit(3);
      // The foreground keeps "training" until the background kills us.
      for (int i = 0; i < 1000; ++i) os::SleepSeconds(0.01);
      ::_exit(4);
    }
    int st = 0;
    ::waitpid(pid, &st, 0);
    ASSERT_TRUE(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL) << point << " status " << st;
    EXPECT_EQ(Committed(), std::vector<std::string>{"step-000000000001"}) << point;
    EXPECT_TRUE(Holds(*repo_, "step-000000000001", first));
    GcOptions gc;
    gc.staging_grace_s = 0;
    auto report = repo_->Gc(gc);
    ASSERT_TRUE(report.ok());
    EXPECT_EQ(report->removed_staging.size(), 1u) << point;
  }
}

}  // namespace
}  // namespace shardwise
