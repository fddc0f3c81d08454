// A rank's shard split into several part files (Options::files_per_rank).
#include <gtest/gtest.h>

#include <fcntl.h>

#include "engine/shard_writer.h"
#include "fs/placement.h"
#include "repo/repository_impl.h"
#include "shardwise/async.h"
#include "shardwise/shardwise.h"
#include "testing/holds.h"
#include "testing/test_util.h"
#include "shardwise/names.h"

namespace shardwise {
namespace {

using testing::OwnedItems;
using testing::TempDir;

Options Split(int parts) {
  Options o;
  o.checksum_block_bytes = 16 << 10;
  o.io_unit_bytes = 64 << 10;
  o.poll_interval_s = 0.005;
  o.files_per_rank = parts;
  return o;
}

OwnedItems Layers(int n) {
  OwnedItems it;
  for (int l = 0; l < n; ++l) {
    it.Add("layer" + std::to_string(l) + ".w", DType::kFloat32, {300, 257}, 10 + l);  // ~300 KiB
    it.Add("layer" + std::to_string(l) + ".b", DType::kFloat32, {257}, 100 + l);
  }
  it.Add("step", DType::kInt64, {}, 7);
  return it;
}

// Every checksum verifies, and every item is what was saved.
::testing::AssertionResult VerifiedAndHolds(Repository& repo, const std::string& name,
                                            const OwnedItems& want) {
  auto reader = repo.OpenCheckpoint(name);
  if (!reader.ok()) return ::testing::AssertionFailure() << reader.status().ToString();
  auto report = (*reader)->Verify();
  if (!report.ok() || !report->problems.empty())
    return ::testing::AssertionFailure() << "verify found problems";
  return testing::Holds(repo, name, want);
}

TEST(SplitPlan, PartsHoldWholeItemsInOrderWithTheirOwnHeaders) {
  OwnedItems state = Layers(6);
  auto plan = engine::PlanShard(state.items, 3, "sid", Split(3));
  ASSERT_TRUE(plan.ok());
  ASSERT_EQ(plan->file_sizes.size(), 3u);
  std::uint64_t total = 0;
  for (auto s : plan->file_sizes) total += s;
  EXPECT_EQ(plan->total_size, total);
  for (std::size_t i = 1; i < state.items.size(); ++i)
    EXPECT_GE(plan->item_file[i], plan->item_file[i - 1]);  // contiguous groups
  // sizes within a layer of each other
  auto [mn, mx] = std::minmax_element(plan->file_sizes.begin(), plan->file_sizes.end());
  EXPECT_LE(*mx - *mn, 2 * 300 * 257 * 4u);
  // units: a header unit at offset 0 of each file; positions contiguous
  std::uint64_t pos = 0;
  std::vector<int> headers(3, 0);
  for (const auto& u : plan->units) {
    EXPECT_EQ(u.pos, pos);
    pos += u.length;
    if (u.offset == 0) ++headers[u.file];
  }
  EXPECT_EQ(pos, plan->total_size);
  EXPECT_EQ(headers, (std::vector<int>{1, 1, 1}));
  EXPECT_EQ(names::ShardPartPath("/r/rank-00003.shard", 0), "/r/rank-00003.shard");
  EXPECT_EQ(names::ShardPartPath("/r/rank-00003.shard", 2), "/r/rank-00003.part2.shard");
}

TEST(SplitPlan, OneHugeItemMakesFewerFiles) {
  OwnedItems state;
  state.Add("huge", DType::kFloat32, {4000, 257}, 1);
  state.Add("tiny", DType::kFloat32, {3}, 2);
  auto plan = engine::PlanShard(state.items, 0, "sid", Split(4));
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->file_sizes.size(), 2u);  // huge | tiny: no empty files
}

TEST(SplitSave, SyncSaveWritesPartFilesAndLoadsBitExact) {
  TempDir dir;
  auto repo = Repository::Open(dir.path(), Split(3));
  ASSERT_TRUE(repo.ok());
  OwnedItems state = Layers(6);
  SaveSpec spec;
  spec.step = 5;
  auto c = (*repo)->Save(spec, state.items);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  std::string ck = dir / "step-000000000005";
  EXPECT_TRUE(os::Exists(ck + "/rank-00000.shard"));
  EXPECT_TRUE(os::Exists(ck + "/rank-00000.part1.shard"));
  EXPECT_TRUE(os::Exists(ck + "/rank-00000.part2.shard"));
  EXPECT_FALSE(os::Exists(ck + "/rank-00000.part3.shard"));
  auto reader = (*repo)->OpenCheckpoint("step-000000000005");
  ASSERT_TRUE(reader.ok());
  EXPECT_TRUE(VerifiedAndHolds(**repo, "step-000000000005", state));
  // shardwise verify agrees, from the outside
  auto v = testing::RunProcess({SW_CLI, "verify", ck, "--no-progress"});
  EXPECT_EQ(v.exit_code, 0) << v.out;
}

TEST(SplitSave, AsyncSaveInWavesAcrossPartFiles) {
  TempDir dir;
  auto repo = Repository::Open(dir.path(), Split(3));
  ASSERT_TRUE(repo.ok());
  // A pool far smaller than the state (1.5 MiB): many waves, crossing
  // part-file boundaries.
  std::unique_ptr<void, decltype(&std::free)> mem(std::aligned_alloc(4096, 256 << 10), &std::free);
  auto pool = StagingPool::Wrap(mem.get(), 256 << 10);
  ASSERT_TRUE(pool.ok());
  auto saver = AsyncSaver::Create(**repo, {}, std::move(*pool));
  ASSERT_TRUE(saver.ok());
  for (int step = 1; step <= 2; ++step) {
    OwnedItems state = Layers(5);
    SaveSpec spec;
    spec.step = step;
    auto h = (*saver)->SaveAsync(spec, state.items);
    ASSERT_TRUE(h.ok()) << h.status().ToString();
    ASSERT_TRUE((*h)->Wait().ok()) << (*h)->status().ToString();
    EXPECT_GT((*h)->waves(), 2);
    EXPECT_TRUE(VerifiedAndHolds(**repo, Repository::StepName(step), state));
  }
}

class CountingSetter final : public fs::LayoutSetter {
 public:
  std::vector<std::string> paths;
  std::string_view name() const override { return "counting"; }
  Result<Created> Create(const std::string& path, int flags, int mode,
                         const fs::Layout&) override {
    paths.push_back(path);
    int fd = ::open(path.c_str(), flags, mode);
    if (fd < 0) return Status(StatusCode::kIoError, "open " + path, errno, path);
    return Created{fd, true, "counting"};
  }
};

TEST(SplitSave, EveryPartFileGoesThroughThePlacement) {
  TempDir dir;
  Options o = Split(2);
  auto repo = Repository::Open(dir.path(), o);
  ASSERT_TRUE(repo.ok());
  auto setter = std::make_unique<CountingSetter>();
  CountingSetter* seen = setter.get();
  fs::FsInfo lustre;
  lustre.type = "lustre";
  lustre.lustre = true;
  lustre.ost_count = 8;
  o.stripe_count = 1;  // make the policy apply with an explicit count
  SetPlacementForTesting(**repo, std::make_unique<fs::Placement>(lustre, std::move(setter), o));
  OwnedItems state = Layers(4);
  SaveSpec spec;
  spec.step = 1;
  ASSERT_TRUE((*repo)->Save(spec, state.items).ok());
  ASSERT_EQ(seen->paths.size(), 2u);
  EXPECT_NE(seen->paths[1].find("rank-00000.part1.shard"), std::string::npos);
}

TEST(SplitSave, FilesPerRankIsValidated) {
  ::setenv("SHARDWISE_FILES_PER_RANK", "0", 1);
  EXPECT_FALSE(Options::FromEnv().ok());
  ::setenv("SHARDWISE_FILES_PER_RANK", "4", 1);
  auto o = Options::FromEnv();
  ASSERT_TRUE(o.ok());
  EXPECT_EQ(o->files_per_rank, 4);
  ::unsetenv("SHARDWISE_FILES_PER_RANK");
}

}  // namespace
}  // namespace shardwise
