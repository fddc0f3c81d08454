// Two jobs on one root: the second is refused with a clear error, neither
// corrupts the other, and a dead holder does not block.
#include "repo/writer_lock.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>

#include <gtest/gtest.h>

#include "os/posix.h"
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

// Another job: a process that is neither our child nor our parent (a
// grandchild, re-parented away from us; a parent or child would count as the
// same job), that claims the root like a job's coordinator, saves step 100,
// then waits until told to finish (or until its pipe closes, or it is killed).
struct OtherJob {
  pid_t pid = -1;  // the grandchild
  int wfd = -1;
  std::string root;
  explicit OtherJob(const std::string& dir) : root(dir) {
    int go[2], ready[2];
    EXPECT_EQ(::pipe(go), 0);
    EXPECT_EQ(::pipe(ready), 0);
    pid_t mid = ::fork();
    if (mid == 0) {
      if (::fork() != 0) ::_exit(0);  // the middle process leaves at once
      ::close(go[1]);
      ::close(ready[0]);
      pid_t self = ::getpid();
      auto repo = Repository::Open(root, Options());
      if (!repo.ok() || !(*repo)->LockForWriting().ok() || !SaveStep(**repo, 100).ok())
        ::_exit(3);
      (void)!::write(ready[1], &self, sizeof self);
      char c;
      (void)!::read(go[0], &c, 1);  // returns 0 when the test process is gone
      ::_exit(0);
    }
    ::waitpid(mid, nullptr, 0);
    ::close(go[0]);
    ::close(ready[1]);
    EXPECT_EQ(::read(ready[0], &pid, sizeof pid), static_cast<ssize_t>(sizeof pid));
    ::close(ready[0]);
    wfd = go[1];
  }
  ~OtherJob() {
    if (wfd >= 0) ::close(wfd);
  }
  // Gone once it exited (a zombie waiting for init to reap it counts as gone;
  // its lock may outlive it a moment: WaitGone waits for that too).
  bool Alive() const {
    std::string stat = testing::ReadAll("/proc/" + std::to_string(pid) + "/stat");
    auto close = stat.rfind(')');
    return close != std::string::npos && close + 2 < stat.size() && stat[close + 2] != 'Z';
  }
  // Up to 20 s: under TSan, with the other suites running in parallel, a
  // process can take seconds to exit. Then up to 20 s more for its lock: the
  // kernel may drop the last reference to the lock file a moment after the
  // process shows as exited (one CI run saw the flock still held then).
  void WaitGone() {
    for (int i = 0; i < 20000 && Alive(); ++i) ::usleep(1000);
    for (int i = 0; i < 20000 && !LockIsFree(); ++i) ::usleep(1000);
  }
  bool LockIsFree() const {
    int fd = ::open((root + "/" + std::string(names::kWriterLock)).c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return true;  // no lock file: nothing holds it
    bool held = ::flock(fd, LOCK_EX | LOCK_NB) != 0 && errno == EWOULDBLOCK;
    ::close(fd);  // releases our probe
    return !held;
  }
  void Finish() {
    ::close(wfd);
    wfd = -1;
    WaitGone();
  }
  void Kill() {
    ::kill(pid, SIGKILL);
    WaitGone();
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
  // and so is a gc without retention: a staging directory whose writer has
  // not locked it yet looks abandoned to anyone but its job
  const std::string staging = root.path() + "/.step-000000000101.staging-fresh";
  ASSERT_TRUE(os::Mkdir(staging).ok());
  GcOptions plain;
  plain.staging_grace_s = 0;
  EXPECT_EQ((*repo)->Gc(plain).status().code(), StatusCode::kAborted);
  EXPECT_TRUE(os::Exists(staging));
  auto cli = testing::RunProcess({SW_CLI, "gc", root.path(), "--grace", "0"});
  EXPECT_NE(cli.exit_code, 0) << cli.out;
  EXPECT_NE(cli.out.find("gc removes nothing on a root another job writes"), std::string::npos)
      << cli.out;
  EXPECT_TRUE(os::Exists(staging));
  other.Finish();
  ASSERT_FALSE(other.Alive());
  // the holder is gone: the root is free
  Status again = SaveStep(**repo, 6);
  EXPECT_TRUE(again.ok()) << again.ToString();
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

// A lock that cannot be taken at all (here a directory in its place; for an
// operator, another user's lock file) is no licence to clean up: that
// user's job may be running.
TEST(WriterLock, GcWithoutTheLockRemovesNothing) {
  TempDir root;
  auto repo = Repository::Open(root.path(), Options());
  ASSERT_TRUE(repo.ok());
  ASSERT_TRUE(os::Mkdir(root.path() + "/" + std::string(names::kWriterLock)).ok());
  const std::string staging = root.path() + "/.step-000000000001.staging-fresh";
  ASSERT_TRUE(os::Mkdir(staging).ok());
  GcOptions gc;
  gc.staging_grace_s = 0;
  const auto refused = (*repo)->Gc(gc);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("gc removes nothing without the root's writer lock"),
            std::string::npos)
      << refused.status().message();
  EXPECT_TRUE(os::Exists(staging));
  gc.dry_run = true;
  const auto dry = (*repo)->Gc(gc);
  ASSERT_TRUE(dry.ok()) << dry.status().ToString();
  EXPECT_EQ(dry->removed_staging, std::vector<std::string>{".step-000000000001.staging-fresh"});
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

namespace shardwise {
namespace {

TEST(WriterLock, AChildOfTheHolderSharesTheClaim) {
  TempDir root;
  auto repo = Repository::Open(root.path(), Options());
  ASSERT_TRUE(repo.ok());
  ASSERT_TRUE((*repo)->LockForWriting().ok());  // this process holds it
  pid_t pid = ::fork();
  if (pid == 0) {  // a helper process of the same job commits
    auto child = Repository::Open(root.path(), Options());
    ::_exit(child.ok() && SaveStep(**child, 9).ok() ? 0 : 1);
  }
  int st = 0;
  ::waitpid(pid, &st, 0);
  EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  EXPECT_TRUE((*repo)->OpenCheckpoint("step-000000000009").ok());
}

// A child made by fork (a data loader's worker) that outlives the holder's
// claim does not keep the flock: the process takes its root again, and so
// does the next job, while the child still runs.
TEST(WriterLock, AForkedChildDoesNotKeepTheClaim) {
  TempDir root;
  auto repo = Repository::Open(root.path(), Options());
  ASSERT_TRUE(repo.ok());
  ASSERT_TRUE((*repo)->LockForWriting().ok());
  int go[2];
  ASSERT_EQ(::pipe(go), 0);
  pid_t pid = ::fork();
  if (pid == 0) {  // a worker that knows nothing of checkpoints
    char c;
    (void)::read(go[0], &c, 1);
    ::_exit(0);
  }
  repo->reset();  // the last Repository on the root: the claim ends
  auto again = Repository::Open(root.path(), Options());
  ASSERT_TRUE(again.ok());
  Status s = (*again)->LockForWriting();
  EXPECT_TRUE(s.ok()) << s.ToString();
  again->reset();
  // A process that opens the lock file afresh takes it too: the flock is
  // free (the forked worker's inherited copy no longer holds it).
  int fd = ::open((root.path() + "/.writer.lock").c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  pid_t other = ::fork();
  if (other == 0) {
    int own = ::open((root.path() + "/.writer.lock").c_str(), O_RDWR);
    ::_exit(own >= 0 && ::flock(own, LOCK_EX | LOCK_NB) == 0 ? 0 : 1);
  }
  int st = 0;
  ::waitpid(other, &st, 0);
  EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  ::close(fd);
  ASSERT_EQ(::write(go[1], "x", 1), 1);
  ::waitpid(pid, &st, 0);
  ::close(go[0]);
  ::close(go[1]);
}

}  // namespace
}  // namespace shardwise
