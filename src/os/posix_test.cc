#include "os/posix.h"

#include <fcntl.h>
#include <sys/mman.h>

#include <algorithm>
#include <optional>
#include <gtest/gtest.h>

#include "os/fault.h"
#include "testing/test_util.h"

namespace shardwise::os {
namespace {

using shardwise::testing::TempDir;

class PosixTest : public ::testing::Test {
 protected:
  void TearDown() override { ClearFaults(); }
  TempDir dir_;
};

TEST_F(PosixTest, ParseFaults) {
  auto r = ParseFaults("write@3=EIO,fsync@1+=ENOSPC,read@2=short,rename@1=kill");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ASSERT_EQ(r->size(), 4u);
  EXPECT_EQ((*r)[0].op, Op::kWrite);
  EXPECT_EQ((*r)[0].nth, 3u);
  EXPECT_EQ((*r)[0].err, EIO);
  EXPECT_TRUE((*r)[1].and_later);
  EXPECT_EQ((*r)[1].err, ENOSPC);
  EXPECT_TRUE((*r)[2].short_io);
  EXPECT_TRUE((*r)[3].kill);
  for (const char* bad : {"write", "write@0=EIO", "bogus@1=EIO", "write@1=EWHAT", "write@x=EIO"})
    EXPECT_FALSE(ParseFaults(bad).ok()) << bad;
}

TEST_F(PosixTest, NthWriteFailsWithChosenErrno) {
  auto f = Open(dir_ / "f", O_WRONLY | O_CREAT, 0644);
  ASSERT_TRUE(f.ok());
  SetFaults({{Op::kWrite, 2, false, ENOSPC, false, false}});
  char buf[16] = {};
  EXPECT_TRUE(PwriteAll(f->fd(), buf, 16, 0, f->path()).ok());
  Status s = PwriteAll(f->fd(), buf, 16, 16, f->path());
  EXPECT_EQ(s.err(), ENOSPC);
  EXPECT_NE(s.message().find(dir_ / "f"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("ENOSPC"), std::string::npos) << s.message();
  EXPECT_TRUE(PwriteAll(f->fd(), buf, 16, 32, f->path()).ok());  // only the 2nd
}

TEST_F(PosixTest, ShortWritesAreCompleted) {
  auto f = Open(dir_ / "f", O_RDWR | O_CREAT, 0644);
  ASSERT_TRUE(f.ok());
  SetFaults({{Op::kWrite, 1, true, 0, true, false}});  // every write is short
  std::string data(100000, 'x');
  for (std::size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>('a' + i % 26);
  ASSERT_TRUE(PwriteAll(f->fd(), data.data(), data.size(), 0, f->path()).ok());
  EXPECT_GT(Count(Op::kWrite), 5u);
  ClearFaults();
  std::string back(100000, '\0');
  ASSERT_TRUE(PreadAll(f->fd(), back.data(), back.size(), 0, f->path()).ok());
  EXPECT_EQ(back, data);
}

TEST_F(PosixTest, ReadPastEndIsTruncation) {
  auto f = Open(dir_ / "f", O_RDWR | O_CREAT, 0644);
  ASSERT_TRUE(f.ok());
  ASSERT_TRUE(PwriteAll(f->fd(), "abc", 3, 0, f->path()).ok());
  char buf[8];
  Status s = PreadAll(f->fd(), buf, 8, 0, f->path());
  EXPECT_EQ(s.code(), StatusCode::kCorrupt);
  EXPECT_NE(s.message().find("truncated"), std::string::npos);
}

TEST_F(PosixTest, WriteFileAtomicFailsCleanly) {
  std::string path = dir_ / "latest";
  ASSERT_TRUE(WriteFileAtomic(path, "one\n").ok());
  for (Op op : {Op::kWrite, Op::kFsync, Op::kRename}) {
    SetFaults({{op, 1, false, EIO, false, false}});
    Status s = WriteFileAtomic(path, "two\n");
    EXPECT_FALSE(s.ok()) << OpName(op);
    ClearFaults();
    EXPECT_EQ(shardwise::testing::ReadAll(path), "one\n") << OpName(op);
    auto entries = ListDir(dir_.path());
    ASSERT_TRUE(entries.ok());
    EXPECT_EQ(entries->size(), 1u) << "temporary file left behind after " << OpName(op);
  }
}

// Pages of `path` in the page cache.
std::size_t CachedPages(const std::string& path, std::size_t bytes) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  void* p = ::mmap(nullptr, bytes, PROT_READ, MAP_SHARED, fd, 0);
  ::close(fd);
  if (p == MAP_FAILED) return SIZE_MAX;
  std::vector<unsigned char> in(bytes / 4096);
  std::size_t n = SIZE_MAX;
  if (::mincore(p, bytes, in.data()) == 0) n = std::count_if(in.begin(), in.end(), [](auto c) {
    return (c & 1) != 0;
  });
  ::munmap(p, bytes);
  return n;
}

TEST_F(PosixTest, WriteFileAtomicDirectWritesTheSameBytes) {
  constexpr std::size_t kBytes = 8 * 4096;
  auto mem = MapAnonymous(kBytes, false);
  ASSERT_TRUE(mem.ok());
  char* data = static_cast<char*>(*mem);
  for (std::size_t i = 0; i < kBytes; ++i) data[i] = static_cast<char>(i * 7 + i / 4096);
  const std::string_view all(data, kBytes);
  std::vector<std::string> dirs = {dir_.path()};
  std::optional<TempDir> shm;  // tmpfs: O_DIRECT refused by older kernels
  if (Exists("/dev/shm")) dirs.push_back(shm.emplace("/dev/shm").path());
  for (const std::string& d : dirs) {
    const std::string path = JoinPath(d, "index");
    // Whole pages: O_DIRECT where the filesystem takes it, so nothing of
    // the file lands in the page cache there.
    ASSERT_TRUE(WriteFileAtomic(path, all, "", WriteVia::kDirect).ok()) << d;
    EXPECT_EQ(shardwise::testing::ReadAll(path), all) << d;
    // Every write short (by whole pages): the writes go on from there.
    SetFaults({{Op::kWrite, 1, true, 0, true, false}});
    ASSERT_TRUE(WriteFileAtomic(path, all, "", WriteVia::kDirect).ok()) << d;
    EXPECT_GT(Count(Op::kWrite), 1u);
    ClearFaults();
    EXPECT_EQ(shardwise::testing::ReadAll(path), all) << d;
    // A direct write refused (EINVAL: the filesystem took O_DIRECT at open
    // but not this write): the page cache takes the bytes instead.
    SetFaults({{Op::kWrite, 1, false, EINVAL, false, false}});
    ASSERT_TRUE(WriteFileAtomic(path, all.substr(4096), "", WriteVia::kDirect).ok()) << d;
    EXPECT_EQ(Count(Op::kWrite), 2u);
    ClearFaults();
    EXPECT_EQ(shardwise::testing::ReadAll(path), all.substr(4096)) << d;
    // Not whole pages: through the page cache.
    ASSERT_TRUE(WriteFileAtomic(path, all.substr(1, kBytes - 100), "", WriteVia::kDirect).ok());
    EXPECT_EQ(shardwise::testing::ReadAll(path), all.substr(1, kBytes - 100)) << d;
    // A failed write leaves the old file and no temporary.
    SetFaults({{Op::kWrite, 1, false, EIO, false, false}});
    EXPECT_FALSE(WriteFileAtomic(path, all, "", WriteVia::kDirect).ok());
    ClearFaults();
    EXPECT_EQ(shardwise::testing::ReadAll(path), all.substr(1, kBytes - 100)) << d;
    auto entries = ListDir(d);
    ASSERT_TRUE(entries.ok());
    EXPECT_EQ(entries->size(), 1u) << d;
  }
  const std::string path = dir_ / "direct";
  ASSERT_TRUE(WriteFileAtomic(path, all, "", WriteVia::kDirect).ok());
  const std::string buffered = dir_ / "buffered";
  ASSERT_TRUE(WriteFileAtomic(buffered, all).ok());
  auto probe = Open(dir_ / "probe", O_WRONLY | O_CREAT, 0644);
  ASSERT_TRUE(probe.ok());
  // Where the filesystem takes O_DIRECT and is not memory itself (tmpfs
  // takes it since Linux 6.6, into its page cache), nothing was cached.
  auto magic = FilesystemMagic(dir_.path());
  const bool memory_fs = magic.ok() && (*magic == 0x01021994 || *magic == 0x858458f6);
  if (SetDirectIo(probe->fd(), true, probe->path()).ok() && !memory_fs) {
    EXPECT_EQ(CachedPages(path, kBytes), 0u);
  }
  EXPECT_EQ(CachedPages(buffered, kBytes), kBytes / 4096);
  Unmap(*mem, kBytes);
}

TEST_F(PosixTest, ReadSmallFileRefusesSymlinksDevicesAndHugeFiles) {
  std::string target = dir_ / "t";
  shardwise::testing::WriteAll(target, "hello");
  ASSERT_EQ(::symlink(target.c_str(), (dir_ / "link").c_str()), 0);
  EXPECT_FALSE(ReadSmallFile(dir_ / "link", 100).ok());
  EXPECT_EQ(ReadSmallFile("/dev/zero", 100).status().code(), StatusCode::kCorrupt);
  EXPECT_EQ(ReadSmallFile(target, 3).status().code(), StatusCode::kCorrupt);
  auto ok = ReadSmallFile(target, 100);
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(*ok, "hello");
}

TEST_F(PosixTest, RenameNoReplaceRefusesExisting) {
  ASSERT_TRUE(Mkdir(dir_ / "a").ok());
  ASSERT_TRUE(Mkdir(dir_ / "b").ok());
  EXPECT_EQ(RenameNoReplace(dir_ / "a", dir_ / "b").code(), StatusCode::kAlreadyExists);
  EXPECT_TRUE(RenameNoReplace(dir_ / "a", dir_ / "c").ok());
}

}  // namespace
}  // namespace shardwise::os
