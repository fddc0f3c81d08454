// Backend selection: io_uring when it can be set up, the thread pool when it
// cannot. "Cannot" is produced for real, with the seccomp filter container
// runtimes use to block io_uring_setup.
#include "io/backend.h"

#include <gtest/gtest.h>
#include <sys/mman.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fcntl.h>

#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "io/registered_memory.h"
#include "os/fault.h"
#include "testing/test_util.h"

namespace shardwise::io {
namespace {

// Makes io_uring_setup fail with EPERM in this process.
bool BlockIoUring() {
  struct sock_filter filter[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA)),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  struct sock_fprog prog = {static_cast<unsigned short>(sizeof(filter) / sizeof(filter[0])),
                            filter};
  return ::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0 &&
         ::prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) == 0;
}

TEST(IoBackend, ThreadsOnRequest) {
  Options o;
  o.io_backend = IoBackendKind::kThreads;
  auto b = MakeIoBackend(o);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ((*b)->name(), "threads");
}

// A unit longer than the I/O buffers is refused before any I/O, by both
// backends, and nothing is called or written.
TEST(IoBackend, AUnitLongerThanTheBuffersIsAnError) {
  testing::TempDir dir;
  const std::string path = dir / "f";
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT, 0644);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::ftruncate(fd, 1 << 20), 0);
  for (auto kind : {IoBackendKind::kThreads, IoBackendKind::kUring}) {
    Options o;
    o.io_backend = kind;
    o.checksum_block_bytes = o.io_unit_bytes = 64 << 10;
    auto b = MakeIoBackend(o);
    if (!b.ok() && kind == IoBackendKind::kUring) continue;  // no io_uring here: threads only
    ASSERT_TRUE(b.ok());
    std::vector<IoUnit> units = {{fd, &path, 0, 64 << 10}, {fd, &path, 64 << 10, 128 << 10}};
    int calls = 0;
    auto fn = [&](std::size_t, std::byte*) { ++calls; return Status::Ok(); };
    for (bool write : {false, true}) {
      Status st = write ? (*b)->Write(units, fn) : (*b)->Read(units, fn);
      EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << (*b)->name();
      EXPECT_NE(st.message().find("exceeds the I/O buffers"), std::string::npos) << st.message();
    }
    EXPECT_EQ(calls, 0) << (*b)->name();
  }
  ::close(fd);
}

// The ring itself fails mid-run (io_uring_submit: ENOMEM), with transfers
// of earlier rounds in flight and fill workers waiting for slots: the run
// returns the error, after the kernel is done with those transfers, for a
// write and for a read; the ring is not used again.
TEST(IoBackend, ARingThatFailsMidRunReturnsItsError) {
  testing::TempDir dir;
  const std::string path = dir / "f";
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT, 0644);
  ASSERT_GE(fd, 0);
  constexpr std::uint32_t kUnit = 64 << 10;
  constexpr int kUnits = 64;
  ASSERT_EQ(::ftruncate(fd, std::int64_t{kUnit} * kUnits), 0);
  std::vector<IoUnit> units;
  for (int u = 0; u < kUnits; ++u) units.push_back({fd, &path, std::uint64_t{kUnit} * u, kUnit});
  for (bool write : {true, false}) {
    Options o;
    o.io_backend = IoBackendKind::kUring;
    o.checksum_block_bytes = o.io_unit_bytes = kUnit;
    o.queue_depth = 4;
    o.threads = 2;
    auto b = MakeIoBackend(o);
    if (!b.ok()) GTEST_SKIP() << "io_uring is not available here";
    os::SetFaults({{os::Op::kRing, 3, false, ENOMEM, false, false}});
    auto fn = [](std::size_t, std::byte* buf) {
      std::memset(buf, 7, kUnit);
      return Status::Ok();
    };
    Status st = write ? (*b)->Write(units, fn) : (*b)->Read(units, fn);
    os::ClearFaults();
    EXPECT_EQ(st.code(), StatusCode::kIoError) << st.ToString();
    EXPECT_NE(st.message().find("io_uring_submit"), std::string::npos) << st.ToString();
    EXPECT_FALSE((*b)->usable());
    EXPECT_FALSE((*b)->Write(units, fn).ok());
  }
  ::close(fd);
}

TEST(IoBackend, FallsBackWhenIoUringIsBlocked) {
  pid_t pid = ::fork();
  if (pid == 0) {
    if (!BlockIoUring()) ::_exit(10);
    Options o;
    auto auto_backend = MakeIoBackend(o);
    if (!auto_backend.ok() || (*auto_backend)->name() != "threads") ::_exit(11);
    o.io_backend = IoBackendKind::kUring;
    auto forced = MakeIoBackend(o);
    if (forced.ok() || forced.status().code() != StatusCode::kUnavailable) ::_exit(12);
    ::_exit(0);
  }
  int st = 0;
  ::waitpid(pid, &st, 0);
  ASSERT_TRUE(WIFEXITED(st));
  EXPECT_EQ(WEXITSTATUS(st), 0) << "10: seccomp unavailable, 11: no fallback, 12: kUring "
                                   "did not report kUnavailable";
}

// Writes from announced memory go through fixed buffers: each piece is
// registered the first time a write comes from it, kept for later writes,
// and dropped when the memory is withdrawn. A unit across two pieces, and
// memory nobody announced, are written plainly. Every write lands intact.
class FixedSources : public ::testing::Test {
 protected:
  static constexpr std::uint64_t kMiB = 1 << 20;
  static constexpr std::uint64_t kBytes = 8 * kMiB;

  void SetUp() override {
    SetRegisteredPieceBytesForTesting(2 * kMiB);
    mem_ = static_cast<std::byte*>(::mmap(nullptr, kBytes, PROT_READ | PROT_WRITE,
                                          MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0));
    ASSERT_NE(mem_, MAP_FAILED);
    for (std::uint64_t i = 0; i < kBytes; ++i) mem_[i] = static_cast<std::byte>(i * 31 / 4096);
    fd_ = ::open((dir_ / "out").c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    ASSERT_GE(fd_, 0);
  }
  void TearDown() override {
    SetRegisteredPieceBytesForTesting(1ull << 30);
    ::close(fd_);
    ::munmap(mem_, kBytes);
  }

  // Units of 1 MiB from `mem_` at these offsets (in KiB), written at the
  // same file offsets; then the file must match the memory there.
  void WriteAndCheck(IoBackend& b, std::vector<std::uint64_t> kib) {
    std::vector<IoUnit> units;
    for (std::uint64_t k : kib)
      units.push_back({fd_, &path_, k << 10, static_cast<std::uint32_t>(kMiB), mem_ + (k << 10)});
    ASSERT_TRUE(b.Write(units, [](std::size_t, std::byte* buf) {
                   return buf == nullptr ? Status::Ok() : Status(StatusCode::kInternal, "buf");
                 }).ok());
    std::vector<std::byte> got(kMiB);
    for (std::uint64_t k : kib) {
      ASSERT_EQ(::pread(fd_, got.data(), kMiB, static_cast<off_t>(k << 10)),
                static_cast<ssize_t>(kMiB));
      ASSERT_EQ(std::memcmp(got.data(), mem_ + (k << 10), kMiB), 0) << k;
    }
  }

  std::unique_ptr<IoBackend> Uring(bool fixed) {
    Options o;
    o.io_backend = IoBackendKind::kUring;
    o.fixed_buffers = fixed;
    o.io_unit_bytes = kMiB;
    o.checksum_block_bytes = kMiB;
    auto b = MakeIoBackend(o);
    if (!b.ok()) return nullptr;
    return std::move(*b);
  }

  testing::TempDir dir_;
  std::string path_ = "out";
  std::byte* mem_ = nullptr;
  int fd_ = -1;
};

// Memory the kernel holds pinned for this process, as /proc reports it: the
// registrations themselves, not the backend's own bookkeeping.
std::uint64_t PinnedBytes() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line))
    if (line.rfind("VmPin:", 0) == 0) return std::stoull(line.substr(6)) << 10;
  return 0;
}

TEST_F(FixedSources, RegisteredOncePerPieceAndDroppedWhenWithdrawn) {
  auto b = Uring(true);
  if (!b) GTEST_SKIP() << "io_uring is not available here";
  if (!b->stats().sparse_table) GTEST_SKIP() << "this kernel has no sparse buffer tables";
  WriteAndCheck(*b, {0});  // not announced yet: plain; the ring registers its I/O buffers
  const std::uint64_t pinned = PinnedBytes();
  auto announced = std::make_unique<AnnouncedMemory>(mem_, kBytes);
  // Pieces of 2 MiB: [0, 1) MiB in piece 0, [4.5, 5.5) MiB in piece 2,
  // [1.5, 2.5) MiB across pieces 0 and 1.
  WriteAndCheck(*b, {0, 4608, 1536});
  IoStats st = b->stats();
  if (st.refused_registrations > 0)
    GTEST_SKIP() << "this process may not lock memory enough (RLIMIT_MEMLOCK)";
  EXPECT_EQ(st.fixed_source_writes, 2u);
  EXPECT_EQ(st.plain_source_writes, 2u);
  EXPECT_EQ(st.registered_source_bytes, 4 * kMiB);
  EXPECT_EQ(PinnedBytes(), pinned + 4 * kMiB);
  // Again, and a new piece: the registered pieces are reused.
  WriteAndCheck(*b, {0, 4608, 6144});
  st = b->stats();
  EXPECT_EQ(st.fixed_source_writes, 5u);
  EXPECT_EQ(st.registered_source_bytes, 6 * kMiB);
  EXPECT_EQ(PinnedBytes(), pinned + 6 * kMiB);
  // Withdrawn: the ring lets go of it at once (the kernel unpins it), and
  // writes from the same (still mapped) memory are plain ones.
  announced.reset();
  EXPECT_EQ(b->stats().registered_source_bytes, 0u);
  EXPECT_EQ(b->stats().failed_unregistrations, 0u);
  EXPECT_EQ(PinnedBytes(), pinned);
  WriteAndCheck(*b, {0, 4608});
  st = b->stats();
  EXPECT_EQ(st.fixed_source_writes, 5u);
  EXPECT_EQ(st.plain_source_writes, 4u);
  // Announced again (as a new slab at the same address would be): registered
  // anew, from the memory as it is now.
  for (std::uint64_t i = 0; i < kMiB; ++i) mem_[i] = std::byte{0x5a};
  AnnouncedMemory again(mem_, kBytes);
  WriteAndCheck(*b, {0});
  EXPECT_EQ(b->stats().fixed_source_writes, 6u);
  EXPECT_EQ(b->stats().registered_source_bytes, 2 * kMiB);
}

// A forked child shares its parent's ring, whose registered buffers hold
// the parent's pages: it gets an error, never the parent's bytes.
TEST_F(FixedSources, AForkedChildCannotUseItsParentsRing) {
  auto b = Uring(true);
  if (!b) GTEST_SKIP() << "io_uring is not available here";
  AnnouncedMemory announced(mem_, kBytes);
  WriteAndCheck(*b, {0});
  const pid_t pid = ::fork();
  if (pid == 0) {
    std::memset(mem_, 0x77, kMiB);  // the child's copy differs from the parent's
    IoUnit u{fd_, &path_, 0, static_cast<std::uint32_t>(kMiB), mem_};
    Status s = b->Write(std::span(&u, 1), [](std::size_t, std::byte*) { return Status::Ok(); });
    ::_exit(!b->usable() && s.code() == StatusCode::kUnavailable ? 0 : 1);
  }
  int st = 0;
  ::waitpid(pid, &st, 0);
  ASSERT_TRUE(WIFEXITED(st));
  EXPECT_EQ(WEXITSTATUS(st), 0);
  EXPECT_TRUE(b->usable());
  WriteAndCheck(*b, {0});  // the parent's ring still works
}

TEST_F(FixedSources, OffMeansNoRegistration) {
  auto b = Uring(false);
  if (!b) GTEST_SKIP() << "io_uring is not available here";
  AnnouncedMemory announced(mem_, kBytes);
  WriteAndCheck(*b, {0, 4608});
  const IoStats st = b->stats();
  EXPECT_FALSE(st.fixed_io_buffers);
  EXPECT_EQ(st.fixed_source_writes, 0u);
  EXPECT_EQ(st.plain_source_writes, 2u);
  EXPECT_EQ(st.registered_source_bytes, 0u);
}

TEST_F(FixedSources, MemoryNobodyAnnouncedIsWrittenPlainly) {
  auto b = Uring(true);
  if (!b) GTEST_SKIP() << "io_uring is not available here";
  WriteAndCheck(*b, {0, 4608});
  EXPECT_EQ(b->stats().fixed_source_writes, 0u);
  EXPECT_EQ(b->stats().registered_source_bytes, 0u);
}

}  // namespace
}  // namespace shardwise::io
