// The on-disk names and their parsers (shardwise/names.h).
#include "shardwise/names.h"

#include <gtest/gtest.h>

namespace shardwise::names {
namespace {

TEST(Names, RankFilesRoundTrip) {
  for (RankFile k : {RankFile::kShard, RankFile::kFragment, RankFile::kFailed}) {
    int rank = -1;
    RankFile got;
    ASSERT_TRUE(ParseRankFile(RankFileName(1234567, k), &rank, &got));
    EXPECT_EQ(rank, 1234567);
    EXPECT_EQ(got, k);
  }
  EXPECT_EQ(RankFileName(3, RankFile::kShard), "rank-00003.shard");
  EXPECT_EQ(RankFileName(123456, RankFile::kShard), "rank-123456.shard");
  int rank;
  RankFile kind;
  for (const char* bad : {"rank-3.shard", "rank-00003.part1.shard", "rank-00003.shard.tmp-ab",
                          "rank-x0003.failed", "rank-00003", "xrank-00003.failed",
                          "rank-99999999999.shard", "rank-000003.fragment.json"})
    EXPECT_FALSE(ParseRankFile(bad, &rank, &kind)) << bad;
  EXPECT_TRUE(IsFailureMarker("rank-00007.failed"));
  EXPECT_TRUE(IsFailureMarker(kCommitFailed));
  EXPECT_FALSE(IsFailureMarker("rank-00007.fragment.json"));
  EXPECT_FALSE(IsFailureMarker("notes.failed"));
}

TEST(Names, HiddenDirsRoundTrip) {
  std::string name, id;
  for (Hidden k : {Hidden::kStaging, Hidden::kReplaced, Hidden::kDeleting}) {
    ASSERT_TRUE(ParseHiddenDir(HiddenDir("step-1.x", k, "ab_c-1"), k, &name, &id));
    EXPECT_EQ(name, "step-1.x");
    EXPECT_EQ(id, "ab_c-1");
  }
  EXPECT_EQ(HiddenDir("n", Hidden::kStaging, "i"), ".n.staging-i");
  EXPECT_FALSE(ParseHiddenDir(".n.staging-i", Hidden::kReplaced, &name, &id));
  EXPECT_FALSE(ParseHiddenDir(".n.staging-", Hidden::kStaging, &name, &id));  // no id
  EXPECT_FALSE(ParseHiddenDir("..staging-i", Hidden::kStaging, &name, &id));  // no name
  EXPECT_FALSE(ParseHiddenDir(".a/b.staging-i", Hidden::kStaging, &name, &id));
  EXPECT_FALSE(ParseHiddenDir(".n.staging-i!", Hidden::kStaging, &name, &id));
}

TEST(Names, TempProbeShardAndSafeNames) {
  EXPECT_EQ(TempPath("/r/latest", "abc"), "/r/latest.tmp-abc");
  EXPECT_TRUE(IsTempOf("latest.tmp-abc", kLatest));
  EXPECT_FALSE(IsTempOf("latest", kLatest));
  EXPECT_FALSE(IsTempOf("latestx.tmp-abc", kLatest));
  EXPECT_TRUE(IsProbeFile(".shardwise-probe-odirect-1"));
  EXPECT_TRUE(IsProbeFile(".shardwise-odirect-probe-1"));  // the spelling before 0.1.0
  EXPECT_FALSE(IsProbeFile("shardwise-probe-1"));
  EXPECT_EQ(ShardPartPath("/r/rank-00003.shard", 0), "/r/rank-00003.shard");
  EXPECT_EQ(ShardPartPath("/r/rank-00003.shard", 2), "/r/rank-00003.part2.shard");
  EXPECT_TRUE(IsShardFile("rank-00003.part2.shard"));
  EXPECT_FALSE(IsShardFile("rank-00003.fragment.json"));
  EXPECT_TRUE(IsSafeName("step-000000000001"));
  EXPECT_TRUE(IsSafeName("epoch=3-step=1200.ckpt"));  // as Lightning names checkpoints
  for (const char* bad : {"", ".hidden", "a/b", "a b", "é", "a:b", "a\\b"})
    EXPECT_FALSE(IsSafeName(bad)) << bad;
  EXPECT_FALSE(IsSafeName(std::string(256, 'a')));
  EXPECT_TRUE(IsSafeSaveId(std::string(64, 'a')));
  EXPECT_FALSE(IsSafeSaveId(std::string(65, 'a')));
  EXPECT_FALSE(IsSafeSaveId("a.b"));
}

}  // namespace
}  // namespace shardwise::names
