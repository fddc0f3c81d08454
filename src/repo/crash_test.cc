// Crash consistency with real processes. A save runs in sw_save_helper and
// is killed with SIGKILL: at every named point of the commit protocol, at the
// Nth call of each kind of syscall, and at random moments. After every kill:
// only complete checkpoints are listed, the previous checkpoint verifies and
// loads bit-exactly, and gc removes the leftovers.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <random>
#include <utility>

#include "shardwise/shardwise.h"
#include "testing/test_util.h"

namespace shardwise {
namespace {

using testing::ProcResult;
using testing::RunProcess;
using testing::TempDir;

constexpr const char* kHelper = SW_SAVE_HELPER;
constexpr const char* kSeed = "5";
constexpr const char* kSize = "2097152";  // 2 MiB per save: many units at 256 KiB

const std::vector<std::string> kEnv = {"SHARDWISE_IO_UNIT=256k", "SHARDWISE_CHECKSUM_BLOCK=64k"};

ProcResult Helper(std::vector<std::string> args, std::vector<std::string> env = {}) {
  args.insert(args.begin(), kHelper);
  env.insert(env.end(), kEnv.begin(), kEnv.end());
  return RunProcess(args, env);
}

class CrashTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ProcResult r = Helper({"save", dir_.path(), "1", kSeed, kSize});
    ASSERT_EQ(r.exit_code, 0) << r.out;
  }

  // The invariants after a crash of the save of `step`.
  void CheckAfterCrash(std::int64_t step, const std::string& ctx) {
    Options o;
    o.staging_grace_s = 0;
    auto repo = Repository::Open(dir_.path(), o);
    ASSERT_TRUE(repo.ok());
    auto list = (*repo)->List();
    ASSERT_TRUE(list.ok());
    bool new_visible = false;
    for (const auto& c : *list) {
      EXPECT_NE(c.state, CheckpointInfo::State::kInvalid) << ctx << ": " << c.problem;
      if (c.state != CheckpointInfo::State::kCommitted) continue;
      ASSERT_TRUE(c.name == "step-000000000001" || c.name == Repository::StepName(step))
          << ctx << ": unexpected " << c.name;
      if (c.name == Repository::StepName(step)) new_visible = true;
    }
    // The previous checkpoint verifies and loads bit-exactly.
    ProcResult prev = Helper({"check", dir_.path(), "1", kSeed, kSize, "1"});
    EXPECT_EQ(prev.exit_code, 0) << ctx << ": " << prev.out;
    // A visible new checkpoint is complete.
    if (new_visible) {
      ProcResult cur = Helper({"check", dir_.path(), std::to_string(step), kSeed, kSize, "1"});
      EXPECT_EQ(cur.exit_code, 0) << ctx << ": " << cur.out;
    }
    auto latest = (*repo)->Latest();
    ASSERT_TRUE(latest.ok() && latest->has_value());
    EXPECT_EQ(**latest, new_visible ? Repository::StepName(step) : "step-000000000001") << ctx;
    // gc removes every leftover; after it, the new save can be retried.
    GcOptions gc;
    ASSERT_TRUE((*repo)->Gc(gc).ok()) << ctx;
    auto listed = (*repo)->List();
    ASSERT_TRUE(listed.ok());
    for (const auto& c : *listed)
      EXPECT_TRUE(c.state == CheckpointInfo::State::kCommitted) << ctx << ": left " << c.dir_name;
    if (new_visible) {
      // Undo, so the next trial starts from the same state.
      ASSERT_TRUE(os::RemoveTree(dir_ / Repository::StepName(step)).ok());
    }
    ASSERT_TRUE(os::WriteFileAtomic(dir_ / "latest", "step-000000000001\n").ok());
  }

  TempDir dir_;
};

// The named steps of the protocol, in order; the new checkpoint must become
// visible exactly from "renamed" on.
TEST_F(CrashTest, KillAtEveryCommitStep) {
  const std::vector<std::pair<std::string, bool>> points = {
      {"shard_written", false},      {"fragment.tmp_synced", false},
      {"fragment.renamed", false},   {"fragment_written", false},
      {"index.tmp_synced", false},   {"index.renamed", false},
      {"manifest.tmp_synced", false}, {"manifest.renamed", false},
      {"manifest_written", false},   {"staging_synced", false},
      {"renamed", true},             {"root_synced", true},
      {"latest.tmp_synced", true},   {"latest.renamed", true},
      {"committed", true},
  };
  for (const auto& [point, visible] : points) {
    ProcResult r = Helper({"save", dir_.path(), "2", kSeed, kSize},
                          {"SHARDWISE_CRASH_AT=" + point});
    ASSERT_EQ(r.signal, SIGKILL) << point << " was never reached: " << r.out;
    auto repo = Repository::Open(dir_.path());
    bool seen = os::Exists(dir_ / "step-000000000002/manifest.json");
    EXPECT_EQ(seen, visible) << point;
    CheckAfterCrash(2, "crash at " + point);
  }
}

// SIGKILL at the Nth call of each syscall kind, for every N a save makes.
TEST_F(CrashTest, KillAtEverySyscall) {
  int trials = 0;
  for (const char* op : {"open", "write", "fsync", "rename", "mkdir", "unlink", "fallocate"}) {
    for (int n = 1; n < 200; ++n) {
      std::string rule = std::string(op) + "@" + std::to_string(n) + "=kill";
      ProcResult r = Helper({"save", dir_.path(), "3", kSeed, kSize},
                            {"SHARDWISE_FAULTS=" + rule});
      if (r.exit_code == 0) {
        // The save made fewer than n calls: it completed. Undo and move on.
        CheckAfterCrash(3, rule + " (completed)");
        break;
      }
      ASSERT_EQ(r.signal, SIGKILL) << rule << ": " << r.out;
      CheckAfterCrash(3, rule);
      ++trials;
    }
  }
  EXPECT_GT(trials, 25);
}

// A file's inode and birth time (0 where the filesystem keeps none).
std::pair<std::uint64_t, std::int64_t> Born(const std::string& path) {
  struct statx sx {};
  if (::statx(AT_FDCWD, path.c_str(), AT_SYMLINK_NOFOLLOW, STATX_INO | STATX_BTIME, &sx) != 0)
    return {0, -1};
  const std::int64_t btime = (sx.stx_mask & STATX_BTIME)
                                 ? sx.stx_btime.tv_sec * 1000000000LL + sx.stx_btime.tv_nsec
                                 : 0;
  return {sx.stx_ino, btime};
}

// Recycled files (the local tier's setting): retention moves step 1's
// shard into the bin, and the save of step 3 takes it back and overwrites
// it; SIGKILL at the Nth call of each syscall kind in either. After each
// kill: every visible checkpoint is complete and bit-exact (the one whose
// file is being overwritten was hidden, durably, first), step 2 always is,
// and gc leaves only committed checkpoints.
TEST(CrashRecycled, KillAtEverySyscallOfRetentionAndTheSaveThatRecycles) {
  // Where a local tier lives (fsync costs nothing there: about 50 kills in 3 s)
  static const std::string kLocalTier = os::Exists("/dev/shm") ? "/dev/shm" : "";
  if (const std::string why = testing::RecyclingUnavailable(TempDir(kLocalTier)); !why.empty())
    GTEST_SKIP() << why;
  const std::vector<std::string> recycle = {"SHARDWISE_RECYCLE_FILES=1"};
  int trials = 0, kinds_completed = 0;
  for (const char* op : {"open", "fsync", "rename", "unlink", "fallocate"}) {
    for (int n = 1; n < 200; ++n) {
      TempDir dir(kLocalTier);
      for (const char* step : {"1", "2"})
        ASSERT_EQ(Helper({"save", dir.path(), step, kSeed, kSize}, recycle).exit_code, 0);
      const auto first = Born(dir / Repository::StepName(1) + "/rank-00000.shard");
      ASSERT_NE(first.first, 0u);
      const std::string rule = std::string(op) + "@" + std::to_string(n) + "=kill";
      std::vector<std::string> env = recycle;
      env.push_back("SHARDWISE_FAULTS=" + rule);
      ProcResult r = Helper({"gcsave", dir.path(), "1", "3", kSeed, kSize}, env);
      if (r.exit_code != 0) {
        ASSERT_EQ(r.signal, SIGKILL) << rule << ": " << r.out;
      }
      Options o;
      o.staging_grace_s = 0;
      o.recycle_files = true;
      auto repo = Repository::Open(dir.path(), o);
      ASSERT_TRUE(repo.ok());
      auto list = (*repo)->List();
      ASSERT_TRUE(list.ok());
      bool saw_2 = false;
      for (const auto& c : *list) {
        EXPECT_NE(c.state, CheckpointInfo::State::kInvalid) << rule << ": " << c.problem;
        if (c.state != CheckpointInfo::State::kCommitted) continue;
        const std::string step = std::to_string(std::stoll(c.name.substr(5)));  // step-NNN
        ProcResult same = Helper({"check", dir.path(), step, kSeed, kSize, "1"});
        EXPECT_EQ(same.exit_code, 0) << rule << ": " << c.name << ": " << same.out;
        saw_2 = saw_2 || step == "2";
      }
      EXPECT_TRUE(saw_2) << rule;
      ASSERT_TRUE((*repo)->Gc({}).ok()) << rule;
      auto listed = (*repo)->List();
      ASSERT_TRUE(listed.ok());
      for (const auto& c : *listed)
        EXPECT_EQ(c.state, CheckpointInfo::State::kCommitted) << rule << ": left " << c.dir_name;
      if (r.exit_code == 0) {  // fewer than n calls of this kind: done with it
        // ... and it overwrote step 1's shard: the path under test ran.
        // (The same inode and birth time: a new file could reuse a freed inode.)
        EXPECT_EQ(Born(dir / Repository::StepName(3) + "/rank-00000.shard"), first) << rule;
        ++kinds_completed;
        break;
      }
      ++trials;
    }
  }
  EXPECT_EQ(kinds_completed, 5);
  EXPECT_GT(trials, 20);
  std::printf("%d kills\n", trials);
}

// Real SIGKILLs at random moments of a larger save.
TEST_F(CrashTest, KillAtRandomMoments) {
  std::mt19937 rng(20261129);
  for (int trial = 0; trial < 12; ++trial) {
    pid_t pid = ::fork();
    if (pid == 0) {
      for (const auto& e : kEnv) ::putenv(const_cast<char*>(e.c_str()));
      int devnull = ::open("/dev/null", O_WRONLY);
      ::dup2(devnull, 1);
      ::execl(kHelper, kHelper, "save", dir_.path().c_str(), "4", kSeed, "33554432",
              static_cast<char*>(nullptr));
      ::_exit(127);
    }
    int delay_us = std::uniform_int_distribution<int>(0, 250000)(rng);
    ::usleep(static_cast<useconds_t>(delay_us));
    ::kill(pid, SIGKILL);
    int st = 0;
    ::waitpid(pid, &st, 0);
    std::string ctx = "random kill after " + std::to_string(delay_us) + " us";
    if (WIFEXITED(st) && WEXITSTATUS(st) == 0) {
      ProcResult cur = Helper({"check", dir_.path(), "4", kSeed, "33554432", "1"});
      EXPECT_EQ(cur.exit_code, 0) << ctx << ": " << cur.out;
      ASSERT_TRUE(os::RemoveTree(dir_ / "step-000000000004").ok());
      ASSERT_TRUE(os::WriteFileAtomic(dir_ / "latest", "step-000000000001\n").ok());
      continue;
    }
    // Size differs from kSize for step 4: check only step 1 and visibility.
    auto repo = Repository::Open(dir_.path());
    auto listed = (*repo)->List();
    ASSERT_TRUE(listed.ok());
    for (const auto& c : *listed)
      if (c.state == CheckpointInfo::State::kCommitted && c.name != "step-000000000001") {
        ProcResult cur = Helper({"check", dir_.path(), "4", kSeed, "33554432", "1"});
        EXPECT_EQ(cur.exit_code, 0) << ctx << ": partial checkpoint visible: " << cur.out;
        ASSERT_TRUE(os::RemoveTree(dir_ / c.name).ok());
      }
    ProcResult prev = Helper({"check", dir_.path(), "1", kSeed, kSize, "1"});
    EXPECT_EQ(prev.exit_code, 0) << ctx << ": " << prev.out;
    GcOptions gc;
    gc.staging_grace_s = 0;
    ASSERT_TRUE((*repo)->Gc(gc).ok());
    auto after_gc = (*repo)->List();
    ASSERT_TRUE(after_gc.ok());
    for (const auto& c : *after_gc)
      EXPECT_EQ(c.state, CheckpointInfo::State::kCommitted) << ctx;
    ASSERT_TRUE(os::WriteFileAtomic(dir_ / "latest", "step-000000000001\n").ok());
  }
}

// One rank of three dies mid-write: the coordinator gives up (timeout), the
// previous checkpoint is intact, gc cleans up, and a new attempt succeeds.
TEST_F(CrashTest, RankKilledMidSave) {
  std::vector<std::string> env_fast = {"SHARDWISE_COMMIT_TIMEOUT_S=2"};
  std::vector<pid_t> pids;
  auto spawn = [&](std::vector<std::string> args, std::vector<std::string> env) {
    pid_t pid = ::fork();
    if (pid == 0) {
      ProcResult r = Helper(args, env);
      ::_exit(r.signal ? 200 + r.signal : r.exit_code);
    }
    return pid;
  };
  pid_t r0 = spawn({"rank", dir_.path(), "5", kSeed, kSize, "3", "0", "attempt1"}, {});
  pid_t r1 = spawn({"rank", dir_.path(), "5", kSeed, kSize, "3", "1", "attempt1"},
                   {"SHARDWISE_FAULTS=write@3=kill"});
  pid_t r2 = spawn({"rank", dir_.path(), "5", kSeed, kSize, "3", "2", "attempt1"}, {});
  ProcResult commit = Helper({"commit", dir_.path(), "5", "3", "attempt1"}, env_fast);
  EXPECT_NE(commit.exit_code, 0);
  EXPECT_NE(commit.out.find("timed out"), std::string::npos) << commit.out;
  int st;
  ::waitpid(r0, &st, 0);
  EXPECT_EQ(WEXITSTATUS(st), 0);
  ::waitpid(r1, &st, 0);
  EXPECT_EQ(WEXITSTATUS(st), 200 + SIGKILL);
  ::waitpid(r2, &st, 0);
  EXPECT_EQ(WEXITSTATUS(st), 0);
  CheckAfterCrash(5, "rank 1 killed");
  // The restarted job uses a new save id and succeeds.
  std::vector<pid_t> ok;
  for (int r = 0; r < 3; ++r)
    ok.push_back(spawn({"rank", dir_.path(), "5", kSeed, kSize, "3", std::to_string(r), "attempt2"}, {}));
  ProcResult c2 = Helper({"commit", dir_.path(), "5", "3", "attempt2"});
  EXPECT_EQ(c2.exit_code, 0) << c2.out;
  for (pid_t p : ok) ::waitpid(p, nullptr, 0);
  ProcResult check = Helper({"check", dir_.path(), "5", kSeed, kSize, "3"});
  EXPECT_EQ(check.exit_code, 0) << check.out;
}

}  // namespace
}  // namespace shardwise
