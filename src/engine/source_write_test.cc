// Writes straight from the caller's memory (Source::kPages with O_DIRECT,
// kExact with buffered I/O) against the copying path: bit-exact round trips
// for aligned and unaligned memory, views at offsets, sizes from 1 byte to
// several I/O units, both backends, O_DIRECT on and off, on a disk and on
// tmpfs (whose I/O mode writes buffered); zero padding; and exactly the
// bytes that had to be copied.
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <tuple>

#include "io/aligned_buffer.h"
#include "shardwise/shardwise.h"
#include "testing/test_util.h"

namespace shardwise {
namespace {

using testing::TempDir;

constexpr std::uint64_t kUnit = 64 << 10;
constexpr std::uint64_t kOwnWritesMin = 256 << 10;  // engine/shard_writer.cc

// Sizes around every boundary: pages, I/O units, the own-writes threshold.
const std::vector<std::uint64_t> kSizes = {1,          4095,          4096,         4097,
                                           kUnit - 1,  kUnit + 1,     kOwnWritesMin,
                                           kOwnWritesMin + 1, 5 * kUnit + 4095, 3 * kUnit * 7 + 5};

// Items whose bytes lie `shift` bytes past a 4 KiB boundary, in memory of
// their own (a view with a storage offset, when shift > 0).
struct Items {
  std::vector<WriteItem> items;
  std::vector<std::unique_ptr<std::byte, decltype(&std::free)>> memory;

  explicit Items(std::uint64_t shift) {
    for (std::size_t k = 0; k < kSizes.size(); ++k) {
      const std::uint64_t n = kSizes[k];
      auto* p = static_cast<std::byte*>(std::aligned_alloc(4096, io::AlignUp(n + shift) + 4096));
      memory.emplace_back(p, &std::free);
      std::uint64_t x = 0x9E3779B97F4A7C15ull * (k + 1);
      for (std::uint64_t i = 0; i < n + shift; ++i) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        p[i] = static_cast<std::byte>(x);
      }
      // Bytes right after the item are not zero: they must not reach the file.
      std::memset(p + shift + n, 0xEE, 4096);
      WriteItem w;
      w.name = "t" + std::to_string(k);
      w.dtype = DType::kUInt8;
      w.global_shape = {static_cast<std::int64_t>(n)};
      w.data = p + shift;
      w.nbytes = n;
      items.push_back(w);
    }
  }
};

using Param = std::tuple<IoBackendKind, DirectIoMode, std::uint64_t, const char*>;

class SourceWrite : public ::testing::TestWithParam<Param> {
 protected:
  SourceWrite() : dir_(std::get<3>(GetParam())) {}
  Options opts() const {
    Options o;
    o.io_backend = std::get<0>(GetParam());
    o.direct_io = std::get<1>(GetParam());
    o.io_unit_bytes = kUnit;
    o.checksum_block_bytes = 16 << 10;
    o.queue_depth = 4;
    return o;
  }
  TempDir dir_;
};

TEST_P(SourceWrite, RoundTripsBitExactAndCopiesOnlyWhatItMust) {
  const std::uint64_t shift = std::get<2>(GetParam());
  auto repo = Repository::Open(dir_.path(), opts());
  ASSERT_TRUE(repo.ok());
  Items in(shift);
  SaveSpec spec;
  spec.step = 1;
  spec.save_id = "src1";
  auto r = (*repo)->WriteRank(spec, in.items);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ASSERT_TRUE((*repo)->Commit(spec).ok());

  // What had to be copied: small items always; with O_DIRECT, the tails
  // past the last whole page of aligned items, and all of unaligned ones.
  std::uint64_t want_copied = 0;
  for (std::uint64_t n : kSizes) {
    if (n < kOwnWritesMin) want_copied += n;
    else if (r->direct_io) want_copied += shift % 4096 == 0 ? n % 4096 : n;
  }
  EXPECT_EQ(r->copied_bytes, want_copied) << "direct_io=" << r->direct_io;
  if (std::string(std::get<3>(GetParam())) == "/dev/shm") {
    EXPECT_FALSE(r->direct_io);
  }
  RecordProperty("direct_io", r->direct_io ? "on" : "off");

  auto reader = (*repo)->OpenCheckpoint("step-000000000001");
  ASSERT_TRUE(reader.ok());
  EXPECT_TRUE((*reader)->Verify()->problems.empty());
  for (const auto& w : in.items) {
    std::vector<std::byte> back(w.nbytes);
    ASSERT_TRUE((*reader)->ReadItem(w.name, back.data(), back.size()).ok()) << w.name;
    ASSERT_EQ(std::memcmp(back.data(), w.data, w.nbytes), 0) << w.name;
  }
  // Padding is zero, as the format says: never the bytes after an item.
  std::string shard = testing::ReadAll(dir_ / "step-000000000001/rank-00000.shard");
  ASSERT_EQ(shard.size() % 4096, 0u);
  ASSERT_TRUE((*reader)->LoadAll().ok());
  const Manifest& m = (*reader)->manifest();
  for (const auto& it : m.items) {
    const ChunkRecord& c = it.chunks[0];
    for (std::uint64_t i = c.offset + c.length; i < io::AlignUp(c.offset + c.length); ++i)
      ASSERT_EQ(shard[i], '\0') << it.name << " at " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(
    Modes, SourceWrite,
    ::testing::Combine(::testing::Values(IoBackendKind::kThreads, IoBackendKind::kAuto),
                       ::testing::Values(DirectIoMode::kOff, DirectIoMode::kAuto),
                       ::testing::Values(std::uint64_t{0}, std::uint64_t{1}, std::uint64_t{8},
                                         std::uint64_t{4096 + 24}),
                       ::testing::Values("/tmp", "/dev/shm")));

}  // namespace
}  // namespace shardwise

namespace shardwise {
namespace {

// Buffered reads (tmpfs) land straight in the destination and are checked
// there: a flipped byte is still found, and named, and a read of a slice
// (not one contiguous run) takes the buffered path and finds it as well.
TEST(ReadInPlace, FindsAFlippedByteOnEitherBackend) {
  for (IoBackendKind backend : {IoBackendKind::kThreads, IoBackendKind::kAuto}) {
    testing::TempDir dir("/dev/shm");
    Options o;
    o.io_backend = backend;
    o.io_unit_bytes = 64 << 10;
    o.checksum_block_bytes = 16 << 10;
    auto repo = Repository::Open(dir.path(), o);
    ASSERT_TRUE(repo.ok());
    testing::OwnedItems in;
    in.Add("w", DType::kFloat32, {300, 257}, 7);
    SaveSpec spec;
    spec.step = 1;
    ASSERT_TRUE((*repo)->Save(spec, in.items).ok());
    auto reader = (*repo)->OpenCheckpoint("step-000000000001");
    ASSERT_TRUE(reader.ok());
    const std::uint64_t n = in.items[0].nbytes;
    std::vector<std::byte> back(n);
    ASSERT_TRUE((*reader)->ReadItem("w", back.data(), n).ok());
    ASSERT_EQ(std::memcmp(back.data(), in.items[0].data, n), 0);

    const ChunkRecord& c = testing::FindItem(**reader, "w")->chunks[0];
    const std::string shard = dir / "step-000000000001/rank-00000.shard";
    std::string bytes = testing::ReadAll(shard);
    bytes[c.offset + 100000] ^= 0x10;
    testing::WriteAll(shard, bytes);
    auto again = (*repo)->OpenCheckpoint("step-000000000001");
    ASSERT_TRUE(again.ok());
    Status s = (*again)->ReadItem("w", back.data(), n);
    EXPECT_EQ(s.code(), StatusCode::kCorrupt) << s.ToString();
    EXPECT_NE(s.message().find("checksum mismatch in item 'w'"), std::string::npos)
        << s.message();
    // Rows 90..99 of the 257-wide rows: a slice whose runs are not one.
    ReadRequest q;
    q.item = testing::FindItem(**again, "w");
    q.chunk = 0;
    q.offsets = {90, 1};
    q.lengths = {10, 200};
    std::vector<std::byte> part(10 * 200 * 4);
    q.dst = part.data();
    q.dst_bytes = part.size();
    s = (*again)->Read({&q, 1});
    EXPECT_EQ(s.code(), StatusCode::kCorrupt) << s.ToString();
  }
}

}  // namespace
}  // namespace shardwise
