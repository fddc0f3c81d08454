// The I/O mode per root: the decision table (docs/cpp-api.md, "I/O mode"),
// the O_DIRECT probe against an independent O_DIRECT write, the
// measurement, and one decision per root.
#include "fs/io_mode.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <string>

#include "os/posix.h"
#include "testing/test_util.h"

namespace shardwise::fs {
namespace {

using shardwise::testing::TempDir;

// A measurement that must not be taken.
Result<WriteRates> NoMeasure() {
  ADD_FAILURE() << "measured where the filesystem type decides";
  return WriteRates{};
}

TEST(IoMode, MemoryFilesystemsAreBuffered) {
  for (const char* type : {"tmpfs", "ramfs"}) {
    auto m = DecideIoMode(type, /*direct_works=*/true, DirectIoMode::kAuto, NoMeasure);
    ASSERT_TRUE(m.ok()) << m.status().ToString();
    EXPECT_FALSE(m->direct_writes) << type;
    EXPECT_FALSE(m->direct_reads) << type;
    EXPECT_NE(m->why.find(type), std::string::npos) << m->why;
  }
}

TEST(IoMode, LustreUsesODirectWithoutMeasuring) {
  auto m = DecideIoMode("lustre", true, DirectIoMode::kAuto, NoMeasure);
  ASSERT_TRUE(m.ok());
  EXPECT_TRUE(m->direct_writes);
  EXPECT_TRUE(m->direct_reads);
  EXPECT_FALSE(m->measured);
}

TEST(IoMode, NfsAndFilesystemsWithoutODirectAreBuffered) {
  auto nfs = DecideIoMode("nfs", true, DirectIoMode::kAuto, NoMeasure);
  ASSERT_TRUE(nfs.ok());
  EXPECT_FALSE(nfs->direct_writes);
  EXPECT_FALSE(nfs->direct_reads);
  auto none = DecideIoMode("ext4", false, DirectIoMode::kAuto, NoMeasure);
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->direct_writes);
  EXPECT_FALSE(none->direct_reads);
  EXPECT_NE(none->why.find("does not work"), std::string::npos) << none->why;
}

TEST(IoMode, OtherFilesystemsAreMeasuredAndBufferedMustWinClearly) {
  auto with = [](double direct, double buffered) {
    return DecideIoMode("ext4", true, DirectIoMode::kAuto,
                        [=] { return Result<WriteRates>(WriteRates{direct, buffered}); });
  };
  auto d = with(2.0, 2.2);  // buffered 10% faster: not enough
  ASSERT_TRUE(d.ok());
  EXPECT_TRUE(d->measured);
  EXPECT_TRUE(d->direct_writes);
  EXPECT_TRUE(d->direct_reads);
  EXPECT_NE(d->why.find("2.00 GB/s"), std::string::npos) << d->why;
  auto b = with(1.0, 3.0);
  ASSERT_TRUE(b.ok());
  EXPECT_FALSE(b->direct_writes);
  EXPECT_TRUE(b->direct_reads);  // reads still see the storage
  EXPECT_NE(b->why.find("buffered by measurement"), std::string::npos) << b->why;
  // A failed measurement falls back to O_DIRECT and says why.
  auto f = DecideIoMode("xfs", true, DirectIoMode::kAuto, [] {
    return Result<WriteRates>(Status(StatusCode::kIoError, "write: EIO", EIO));
  });
  ASSERT_TRUE(f.ok());
  EXPECT_TRUE(f->direct_writes);
  EXPECT_NE(f->why.find("measurement failed"), std::string::npos) << f->why;
}

TEST(IoMode, OptionsOverrideTheTable) {
  auto off = DecideIoMode("lustre", true, DirectIoMode::kOff, NoMeasure);
  ASSERT_TRUE(off.ok());
  EXPECT_FALSE(off->direct_writes);
  EXPECT_FALSE(off->direct_reads);
  auto on = DecideIoMode("tmpfs", true, DirectIoMode::kOn, NoMeasure);
  ASSERT_TRUE(on.ok());
  EXPECT_TRUE(on->direct_writes);
  EXPECT_TRUE(on->direct_reads);
  auto refused = DecideIoMode("nfs", false, DirectIoMode::kOn, NoMeasure);
  EXPECT_EQ(refused.status().code(), StatusCode::kUnavailable);
  EXPECT_NE(refused.status().message().find("O_DIRECT was required"), std::string::npos);
}

// The probe agrees with an independent O_DIRECT write in the same
// directory (tmpfs gained O_DIRECT in Linux 6.6, so no filesystem here is
// known to refuse it).
TEST(IoMode, DirectIoProbe) {
  for (const char* dir : {"/tmp", "/dev/shm"}) {
    if (::access(dir, W_OK) != 0) continue;
    std::string path = std::string(dir) + "/sw-odirect-check-" + std::to_string(::getpid());
    bool works = false;
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_DIRECT, 0600);
    if (fd >= 0) {
      void* buf = std::aligned_alloc(4096, 4096);
      std::memset(buf, 0, 4096);
      works = ::pwrite(fd, buf, 4096, 0) == 4096;
      std::free(buf);
      ::close(fd);
    }
    ::unlink(path.c_str());
    EXPECT_EQ(ProbeDirectIo(dir), works) << dir;
  }
}

TEST(IoMode, MeasurementWritesBothModesAndLeavesNothing) {
  TempDir dir;
  if (!ProbeDirectIo(dir.path())) GTEST_SKIP() << "no O_DIRECT in " << dir.path();
  auto r = MeasureWriteModes(dir.path());
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_GT(r->direct_gbps, 0);
  EXPECT_GT(r->buffered_gbps, 0);
  auto left = os::ListDir(dir.path());
  ASSERT_TRUE(left.ok());
  EXPECT_TRUE(left->empty()) << (*left)[0].name;
}

// One decision per root: asked again, the process answers from its cache,
// even after the root is gone (a new probe would fail on statfs). Different
// roots and different requested modes are decided apart.
TEST(IoMode, DecidedOncePerRoot) {
  ForgetIoModesForTesting();
  auto root = std::make_unique<TempDir>("/dev/shm");
  const std::string path = root->path();
  Options auto_mode;
  auto first = IoModeFor(path, auto_mode);
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  EXPECT_FALSE(first->direct_writes);  // tmpfs
  root.reset();
  auto again = IoModeFor(path, auto_mode);
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_EQ(again->why, first->why);
  Options off;
  off.direct_io = DirectIoMode::kOff;
  EXPECT_EQ(IoModeFor(path, off).status().code(), StatusCode::kNotFound);  // decided anew: the root is gone
  EXPECT_EQ(IoModeFor(path + "-other", auto_mode).status().code(), StatusCode::kNotFound);
  ForgetIoModesForTesting();
  EXPECT_FALSE(IoModeFor(path, auto_mode).ok());
}

// Readers decide whether to read with O_DIRECT without writing into the
// root (no probe file, no measurement): the root's mtime does not move, and
// the answer agrees with the write probe's.
TEST(IoMode, ReadModeWritesNothing) {
  TempDir root;
  const std::string file = root / "manifest.json";
  testing::WriteAll(file, "{}");
  ForgetIoModesForTesting();
  struct stat before {}, after {};
  ASSERT_EQ(::stat(root.path().c_str(), &before), 0);
  ::usleep(20000);
  auto mode = ReadModeFor(root.path(), file, Options());
  ASSERT_TRUE(mode.ok()) << mode.status().ToString();
  ASSERT_EQ(::stat(root.path().c_str(), &after), 0);
  EXPECT_EQ(before.st_mtim.tv_sec, after.st_mtim.tv_sec);
  EXPECT_EQ(before.st_mtim.tv_nsec, after.st_mtim.tv_nsec);
  EXPECT_FALSE(mode->measured);
  auto full = IoModeFor(root.path(), Options());
  ASSERT_TRUE(full.ok());
  EXPECT_EQ(mode->direct_reads, full->direct_reads);
  Options off;
  off.direct_io = DirectIoMode::kOff;
  EXPECT_FALSE(ReadModeFor(root.path(), file, off)->direct_reads);
}

// The measurement is shared through the root: a second process (here, the
// same one after forgetting its cache) reads the recorded rates instead of
// writing its own probe files; a record of another filesystem or a damaged
// one is measured again.
TEST(IoMode, MeasurementIsSharedThroughTheRoot) {
  TempDir root;
  if (!ProbeDirectIo(root.path())) GTEST_SKIP() << "no O_DIRECT in " << root.path();
  ForgetIoModesForTesting();
  auto first = IoModeFor(root.path(), Options());
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  if (!first->measured) GTEST_SKIP() << "the filesystem type decides here: " << first->why;
  const std::string record = root / ".io-mode";
  const std::string text = testing::ReadAll(record);
  EXPECT_EQ(text.rfind("shardwise-io-mode 1 ", 0), 0u) << text;
  ForgetIoModesForTesting();
  auto second = IoModeFor(root.path(), Options());
  ASSERT_TRUE(second.ok());
  EXPECT_TRUE(second->measured);
  EXPECT_NEAR(second->direct_gbps, first->direct_gbps, 1e-3);
  EXPECT_NEAR(second->buffered_gbps, first->buffered_gbps, 1e-3);
  EXPECT_EQ(testing::ReadAll(record), text);  // read, not measured again
  testing::WriteAll(record, "shardwise-io-mode 1 1 ext4 nan 3\n");
  ForgetIoModesForTesting();
  auto third = IoModeFor(root.path(), Options());
  ASSERT_TRUE(third.ok());
  EXPECT_NE(testing::ReadAll(record), "shardwise-io-mode 1 1 ext4 nan 3\n");
  // Nothing else is left in the root.
  auto left = os::ListDir(root.path());
  ASSERT_TRUE(left.ok());
  EXPECT_EQ(left->size(), 2u);  // .io-mode and its lock
  ForgetIoModesForTesting();
}

}  // namespace
}  // namespace shardwise::fs
