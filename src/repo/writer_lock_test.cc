// Two jobs on one root: the second is refused with a clear error, neither
// corrupts the other, and a dead holder does not block.
#include "repo/writer_lock.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include "shardwise/shardwise.h"
#include "testing/test_util.h"

namespace shardwise {
namespace {

using testing::OwnedItems;
using testing::TempDir;

Status SaveStep(Repository& repo, std::int64_t step) {
  OwnedItems items;
  items.Add("w", DType::kFloat32, {128}, static_cast<std::uint64_t>(step));
  SaveSpec spec;
  spec.step = step;
  return repo.Save(spec, items.items).status();
}

// A child process that claims the root (like a job's coordinator) and then
// waits for a byte on the pipe (or dies).
struct OtherJob {
  pid_t pid = -1;
  int wfd = -1;
  explicit OtherJob(const std::string& root) {
    int go[2], ready[2];
    EXPECT_EQ(::pipe(go), 0);
    EXPECT_EQ(::pipe(ready), 0);
    pid = ::fork();
    if (pid == 0) {
      auto repo = Repository::Open(root, Options());
      if (!repo.ok() || !(*repo)->LockForWriting().ok() || !SaveStep(**repo, 100).ok())
        ::_exit(3);
      char c = 1;
      (void)!::write(ready[1], &c, 1);
      (void)!::read(go[0], &c, 1);
      ::_exit(0);
    }
    char c;
    EXPECT_EQ(::read(ready[0], &c, 1), 1);
    wfd = go[1];
  }
  void Finish() {
    char c = 0;
    (void)!::write(wfd, &c, 1);
    int st;
    ::waitpid(pid, &st, 0);
  }
  void Kill() {
    ::kill(pid, SIGKILL);
    int st;
    ::waitpid(pid, &st, 0);
  }
};

TEST(WriterLock, ASecondJobIsRefusedWithAClearError) {
  TempDir root;
  OtherJob other(root.path());
  auto repo = Repository::Open(root.path(), Options());
  ASSERT_TRUE(repo.ok());
  Status s = SaveStep(**repo, 5);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kAborted);
  EXPECT_NE(s.message().find("is being written by another job (pid " + std::to_string(other.pid)),
            std::string::npos)
      << s.message();
  EXPECT_NE(s.message().find("give this job its own root"), std::string::npos);
  // its half-done save is invisible, and the other job's checkpoint intact
  auto list = (*repo)->List();
  ASSERT_TRUE(list.ok());
  int committed = 0;
  for (const auto& c : *list)
    if (c.state == CheckpointInfo::State::kCommitted) {
      ++committed;
      EXPECT_EQ(c.name, "step-000000000100");
    }
  EXPECT_EQ(committed, 1);
  auto reader = (*repo)->OpenCheckpoint("step-000000000100");
  ASSERT_TRUE(reader.ok());
  EXPECT_TRUE((*reader)->Verify()->problems.empty());
  // retention by the second job is refused too: it must not delete the other's
  GcOptions gc;
  gc.keep_last = 1;
  EXPECT_EQ((*repo)->Gc(gc).status().code(), StatusCode::kAborted);
  other.Finish();
  // the holder is gone: the root is free
  EXPECT_TRUE(SaveStep(**repo, 6).ok());
}

TEST(WriterLock, ADeadHolderDoesNotBlock) {
  TempDir root;
  OtherJob other(root.path());
  other.Kill();  // SIGKILL: no cleanup runs
  auto repo = Repository::Open(root.path(), Options());
  ASSERT_TRUE(repo.ok());
  EXPECT_TRUE(SaveStep(**repo, 1).ok());
}

TEST(WriterLock, OneProcessSharesItsClaimAcrossRepositories) {
  TempDir root;
  auto a = Repository::Open(root.path(), Options());
  auto b = Repository::Open(root.path() + "/", Options());  // same root, spelled differently
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_TRUE(SaveStep(**a, 1).ok());
  EXPECT_TRUE(SaveStep(**b, 2).ok());
  a->reset();
  EXPECT_TRUE(SaveStep(**b, 3).ok());
}

TEST(WriterLock, ReadersAndDryRunsNeedNoClaim) {
  TempDir root;
  {
    auto repo = Repository::Open(root.path(), Options());
    ASSERT_TRUE(SaveStep(**repo, 1).ok());
  }
  OtherJob other(root.path());
  auto repo = Repository::Open(root.path(), Options());
  ASSERT_TRUE(repo.ok());
  EXPECT_TRUE((*repo)->List().ok());
  EXPECT_TRUE((*repo)->OpenCheckpoint("step-000000000001").ok());
  GcOptions gc;
  gc.keep_last = 1;
  gc.dry_run = true;
  EXPECT_TRUE((*repo)->Gc(gc).ok());
  auto ls = testing::RunProcess({SW_CLI, "ls", root.path()});
  EXPECT_EQ(ls.exit_code, 0) << ls.out;
  other.Finish();
}

}  // namespace
}  // namespace shardwise
