// Disk full mid-save, on a real small filesystem: a tmpfs mounted for the
// test (root only; elsewhere the test is skipped, and the fault seam's ENOSPC
// tests in shard_io_test.cc and async_saver_test.cc still run).
#include <sys/mount.h>
#include <sys/statvfs.h>
#include <fcntl.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include "os/posix.h"
#include "shardwise/shardwise.h"
#include "testing/test_util.h"

namespace shardwise {
namespace {

using testing::OwnedItems;
using testing::TempDir;

class SmallFs : public ::testing::Test {
 protected:
  void SetUp() override {
    mnt_ = dir_ / "small";
    ASSERT_TRUE(os::MkdirAll(mnt_).ok());
    if (::mount("tmpfs", mnt_.c_str(), "tmpfs", 0, "size=24m") != 0)
      GTEST_SKIP() << "cannot mount a tmpfs here (" << std::strerror(errno)
                   << "); the ENOSPC fault-seam tests cover the logic";
    mounted_ = true;
  }
  void TearDown() override {
    if (mounted_) ::umount2(mnt_.c_str(), MNT_DETACH);
  }
  std::uint64_t FreeBytes() {
    struct statvfs st {};
    EXPECT_EQ(::statvfs(mnt_.c_str(), &st), 0);
    return static_cast<std::uint64_t>(st.f_bavail) * st.f_frsize;
  }
  TempDir dir_;
  std::string mnt_;
  bool mounted_ = false;
};

OwnedItems State(std::int64_t rows, std::uint64_t seed) {
  OwnedItems it;
  it.Add("w", DType::kFloat32, {rows, 1024}, seed);  // rows x 4 KiB
  it.Add("step", DType::kInt64, {}, seed + 1);
  return it;
}

TEST_F(SmallFs, DiskFullMidSaveFailsCleanlyKeepsThePreviousAndReclaimsSpace) {
  std::string root = mnt_ + "/ckpt";
  auto repo = Repository::Open(root, Options());
  ASSERT_TRUE(repo.ok());
  OwnedItems first = State(2048, 1);  // 8 MiB
  SaveSpec spec;
  spec.step = 1;
  ASSERT_TRUE((*repo)->Save(spec, first.items).ok());
  const std::uint64_t free_before = FreeBytes();

  OwnedItems big = State(5120, 2);  // 20 MiB: does not fit in what is left
  spec.step = 2;
  auto r = (*repo)->Save(spec, big.items);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().err(), ENOSPC) << r.status().ToString();
  EXPECT_NE(r.status().ToString().find("rank-00000.shard"), std::string::npos)
      << r.status().ToString();

  // The previous checkpoint is intact and still the newest.
  auto latest = (*repo)->Latest();
  ASSERT_TRUE(latest.ok() && *latest);
  EXPECT_EQ(**latest, "step-000000000001");
  auto reader = (*repo)->OpenCheckpoint("step-000000000001");
  ASSERT_TRUE(reader.ok());
  EXPECT_TRUE((*reader)->Verify()->problems.empty());
  EXPECT_EQ(testing::ReadAll(root + "/latest"), "step-000000000001\n");

  // gc reclaims the failed attempt's space.
  GcOptions gc;
  gc.staging_grace_s = 0;
  auto report = (*repo)->Gc(gc);
  ASSERT_TRUE(report.ok());
  EXPECT_EQ(report->removed_staging.size(), 1u);
  EXPECT_GE(FreeBytes() + (64u << 10), free_before);

  // And a save that fits works again.
  spec.step = 3;
  OwnedItems small = State(512, 3);
  EXPECT_TRUE((*repo)->Save(spec, small.items).ok());
}

// Every rank's shard is written, then the disk fills before the commit:
// the commit fails, and the ranks waiting for it learn so at once from
// commit.failed (made without data blocks), not after commit_timeout_s.
TEST_F(SmallFs, ACommitThatFindsTheDiskFullStopsTheWaitingRanks) {
  std::string root = mnt_ + "/ckpt";
  auto repo = Repository::Open(root, Options());
  ASSERT_TRUE(repo.ok());
  SaveSpec spec;
  spec.step = 1;
  spec.world_size = 2;
  spec.save_id = "diskfullcommit";
  for (int r = 0; r < 2; ++r) {
    OwnedItems part;
    part.Add("w" + std::to_string(r), DType::kFloat32, {256, 1024}, 1 + r);  // 1 MiB each
    spec.rank = r;
    ASSERT_TRUE((*repo)->WriteRank(spec, part.items).ok());
  }
  {  // Fill what is left.
    auto fill = os::Open(mnt_ + "/filler", O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ASSERT_TRUE(fill.ok());
    std::string block(1 << 16, 'x');
    while (::write(fill->fd(), block.data(), block.size()) > 0) {
    }
    std::string one(1, 'x');
    while (::write(fill->fd(), one.data(), 1) > 0) {
    }
  }
  ASSERT_EQ(FreeBytes(), 0u);
  spec.rank = 0;
  auto c = (*repo)->Commit(spec);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().err(), ENOSPC) << c.status().ToString();
  spec.rank = 1;
  const double t0 = os::MonotonicSeconds();
  Status waited = (*repo)->WaitCommitted(spec, 60);
  EXPECT_EQ(waited.code(), StatusCode::kAborted) << waited.ToString();
  EXPECT_LT(os::MonotonicSeconds() - t0, 5.0);
  EXPECT_NE(waited.ToString().find("commit.failed"), std::string::npos) << waited.ToString();
  auto latest = (*repo)->Latest();
  ASSERT_TRUE(latest.ok());
  EXPECT_FALSE(*latest);  // nothing was committed
}

TEST_F(SmallFs, DiskFullDuringAnAsyncSaveIsReportedAndRecoverable) {
  std::string root = mnt_ + "/ckpt";
  auto repo = Repository::Open(root, Options());
  ASSERT_TRUE(repo.ok());
  AsyncOptions ao;
  ao.staging_bytes = 32 << 20;  // holds the larger state too: no waves
  auto saver = AsyncSaver::Create(**repo, ao);
  ASSERT_TRUE(saver.ok());
  OwnedItems first = State(2048, 1);
  SaveSpec spec;
  spec.step = 1;
  auto h1 = (*saver)->SaveAsync(spec, first.items);
  ASSERT_TRUE(h1.ok());
  ASSERT_TRUE((*h1)->Wait().ok());
  OwnedItems big = State(5120, 2);
  spec.step = 2;
  auto h2 = (*saver)->SaveAsync(spec, big.items);
  // The background fails at once (fallocate); if that happens while the
  // foreground is still staging, SaveAsync itself reports it, else Wait().
  Status s = h2.ok() ? (*h2)->Wait() : h2.status();
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.err(), ENOSPC) << s.ToString();
  auto latest = (*repo)->Latest();
  ASSERT_TRUE(latest.ok() && *latest);
  EXPECT_EQ(**latest, "step-000000000001");
  GcOptions gc;
  gc.staging_grace_s = 0;
  ASSERT_TRUE((*repo)->Gc(gc).ok());
  spec.step = 3;
  auto h3 = (*saver)->SaveAsync(spec, first.items);
  ASSERT_TRUE(h3.ok());
  EXPECT_TRUE((*h3)->Wait().ok());
}

}  // namespace
}  // namespace shardwise
