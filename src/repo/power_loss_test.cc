// A power cut at each step of the commit protocol leaves either the old
// state or the new one (the model: src/os/power_loss.h). The save runs in its
// own process (sw_save_helper) with SHARDWISE_POWER_LOSS=1 and
// SHARDWISE_CRASH_AT=STEP: at that step everything not yet durable is undone
// and the process is killed.
#include "os/power_loss.h"

#include <fcntl.h>
#include <sys/wait.h>

#include <algorithm>

#include <gtest/gtest.h>

#include "os/posix.h"
#include "shardwise/shardwise.h"
#include "testing/test_util.h"

namespace shardwise {
namespace {

using testing::TempDir;

constexpr char kSeed[] = "11";
constexpr char kSize[] = "262144";

struct Step {
  const char* crash_at;
  bool new_state;  // true: the new checkpoint must be there after the cut
};

class PowerLoss : public ::testing::TestWithParam<Step> {};

TEST_P(PowerLoss, LeavesTheOldStateOrTheNew) {
  const Step step = GetParam();
  TempDir root;
  auto first = testing::RunProcess({SW_SAVE_HELPER, "save", root.path(), "1", kSeed, kSize});
  ASSERT_EQ(first.exit_code, 0) << first.out;
  auto cut = testing::RunProcess({SW_SAVE_HELPER, "save", root.path(), "2", kSeed, kSize},
                                 {"SHARDWISE_POWER_LOSS=1",
                                  std::string("SHARDWISE_CRASH_AT=") + step.crash_at});
  ASSERT_EQ(cut.exit_code, -1) << "the save was not cut at " << step.crash_at << ": " << cut.out;

  auto repo = Repository::Open(root.path(), Options());
  ASSERT_TRUE(repo.ok());
  auto list = (*repo)->List();
  ASSERT_TRUE(list.ok());
  std::vector<std::string> committed;
  for (const auto& c : *list) {
    EXPECT_NE(c.state, CheckpointInfo::State::kInvalid) << c.name << ": " << c.problem;
    if (c.state == CheckpointInfo::State::kCommitted) committed.push_back(c.name);
  }
  std::vector<std::string> old_state = {"step-000000000001"};
  std::vector<std::string> new_state = {"step-000000000001", "step-000000000002"};
  EXPECT_EQ(committed, step.new_state ? new_state : old_state) << step.crash_at;
  // whatever is there is whole and bit-exact
  for (const auto& name : committed) {
    auto reader = (*repo)->OpenCheckpoint(name);
    ASSERT_TRUE(reader.ok()) << name;
    EXPECT_TRUE((*reader)->Verify()->problems.empty()) << name;
    std::string stepno = name == "step-000000000001" ? "1" : "2";
    auto check = testing::RunProcess({SW_SAVE_HELPER, "check", root.path(), stepno, kSeed, kSize, "1"});
    EXPECT_EQ(check.exit_code, 0) << name << ": " << check.out;
  }
  // `latest` names a committed checkpoint; Latest() the newest one
  auto latest_file = testing::ReadAll(root / "latest");
  EXPECT_NE(std::find(committed.begin(), committed.end(),
                      latest_file.substr(0, latest_file.find('\n'))),
            committed.end())
      << latest_file;
  auto latest = (*repo)->Latest();
  ASSERT_TRUE(latest.ok() && *latest);
  EXPECT_EQ(**latest, committed.back());
  // gc cleans up; the next save works
  GcOptions gc;
  gc.staging_grace_s = 0;
  ASSERT_TRUE((*repo)->Gc(gc).ok());
  auto after = (*repo)->List();
  for (const auto& c : *after) EXPECT_EQ(c.state, CheckpointInfo::State::kCommitted) << c.dir_name;
  auto again = testing::RunProcess({SW_SAVE_HELPER, "save", root.path(), "3", kSeed, kSize});
  EXPECT_EQ(again.exit_code, 0) << again.out;
}

INSTANTIATE_TEST_SUITE_P(
    CommitProtocol, PowerLoss,
    ::testing::Values(Step{"shard_written", false}, Step{"fragment.tmp_synced", false},
                      Step{"fragment.renamed", false}, Step{"fragment_written", false},
                      Step{"index.tmp_synced", false}, Step{"index.renamed", false},
                      Step{"manifest.tmp_synced", false}, Step{"manifest.renamed", false},
                      Step{"manifest_written", false}, Step{"staging_synced", false},
                      Step{"renamed", false}, Step{"root_synced", true},
                      Step{"latest.tmp_synced", true}, Step{"latest.renamed", true},
                      Step{"committed", true}),
    [](const auto& info) {
      std::string n = info.param.crash_at;
      for (char& c : n)
        if (c == '.') c = '_';
      return n;
    });

// The first save into a root that did not exist: once committed, a power
// cut keeps it, and the directories made for the root with it.
TEST(PowerLossNewRoot, TheCommittedFirstCheckpointSurvives) {
  TempDir dir;
  const std::string root = dir / "new/root";
  auto cut = testing::RunProcess({SW_SAVE_HELPER, "save", root, "1", kSeed, kSize},
                                 {"SHARDWISE_POWER_LOSS=1", "SHARDWISE_CRASH_AT=committed"});
  ASSERT_EQ(cut.exit_code, -1) << cut.out;
  auto check = testing::RunProcess({SW_SAVE_HELPER, "check", root, "1", kSeed, kSize, "1"});
  EXPECT_EQ(check.exit_code, 0) << check.out;
}

// The model itself: unsynced data and entries are dropped, synced ones kept.
TEST(PowerLossModel, DropsWhatWasNeverSynced) {
  TempDir dir;
  pid_t pid = ::fork();
  if (pid == 0) {
    os::power_loss::SetActiveForTesting(true);
    auto write = [&](const std::string& name, const std::string& data, bool sync_file) {
      auto f = os::Open(dir / name, O_WRONLY | O_CREAT | O_TRUNC, 0644);
      (void)os::PwriteAll(f->fd(), data.data(), data.size(), 0, dir / name);
      if (sync_file) (void)os::Fsync(f->fd(), dir / name);
    };
    write("durable", "kept", true);
    (void)os::FsyncDir(dir.path());        // entry durable too
    write("synced-data-only", "gone", true);  // data synced, entry never
    write("durable", "kept and more", false);  // unsynced growth of a durable file
    (void)os::Rename(dir / "durable", dir / "renamed");  // rename never synced
    (void)os::Mkdir(dir / "newdir", 0755, false);
    os::power_loss::LoseUnsynced();
    ::_exit(0);
  }
  int st = 0;
  ::waitpid(pid, &st, 0);
  ASSERT_TRUE(WIFEXITED(st));
  EXPECT_EQ(testing::ReadAll(dir / "durable"), "kept");
  EXPECT_FALSE(os::Exists(dir / "renamed"));
  EXPECT_FALSE(os::Exists(dir / "synced-data-only"));
  EXPECT_FALSE(os::Exists(dir / "newdir"));
}

}  // namespace
}  // namespace shardwise
