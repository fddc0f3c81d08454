// Round trips through the real write and read paths, on both I/O backends,
// with and without O_DIRECT, plus damage and injected faults.
#include <fcntl.h>
#include <gtest/gtest.h>

#include <limits>
#include <unistd.h>

#include <random>
#include <tuple>

#include "format/manifest.h"
#include "os/fault.h"
#include "shardwise/shardwise.h"
#include "testing/test_util.h"

namespace shardwise {
namespace {

using testing::OwnedItems;
using testing::TempDir;

Options SmallUnits(IoBackendKind backend, DirectIoMode direct) {
  Options o;
  o.io_backend = backend;
  o.direct_io = direct;
  o.queue_depth = 4;
  o.checksum_block_bytes = 16 << 10;
  o.io_unit_bytes = 64 << 10;  // many units and blocks even for small data
  return o;
}

OwnedItems MixedItems() {
  OwnedItems it;
  it.Add("big", DType::kFloat32, {300, 257}, 1);      // ~300 KiB: several units
  it.Add("empty", DType::kFloat32, {0, 16}, 2);
  it.Add("scalar", DType::kInt64, {}, 3);
  it.Add("bias", DType::kBFloat16, {257}, 4);         // odd size, packed
  it.Add("norm", DType::kFloat16, {64}, 5);
  it.Add("exact", DType::kUInt8, {64 << 10}, 6);      // exactly one unit
  it.Add("blob", DType::kUInt8, {1000}, 7);
  it.items.back().kind = ItemKind::kBytes;
  it.Add("unicode.é.名前", DType::kFloat64, {3, 3}, 8);
  return it;
}

using Param = std::tuple<IoBackendKind, DirectIoMode>;

class ShardIo : public ::testing::TestWithParam<Param> {
 protected:
  void TearDown() override { os::ClearFaults(); }
  Options opts() const { return SmallUnits(std::get<0>(GetParam()), std::get<1>(GetParam())); }
  TempDir dir_;
};

TEST_P(ShardIo, RoundTripIsBitExact) {
  auto repo = Repository::Open(dir_.path(), opts());
  ASSERT_TRUE(repo.ok()) << repo.status().ToString();
  OwnedItems items = MixedItems();
  SaveSpec spec;
  spec.step = 7;
  auto saved = (*repo)->Save(spec, items.items);
  ASSERT_TRUE(saved.ok()) << saved.status().ToString();
  auto reader = (*repo)->OpenCheckpoint(saved->name);
  ASSERT_TRUE(reader.ok()) << reader.status().ToString();
  if (std::get<0>(GetParam()) == IoBackendKind::kThreads) {
    EXPECT_EQ((*reader)->backend_name(), "threads");
  }
  for (std::size_t i = 0; i < items.items.size(); ++i) {
    const WriteItem& w = items.items[i];
    std::vector<std::byte> back(w.nbytes);
    Status s = (*reader)->ReadItem(w.name, back.data(), back.size());
    ASSERT_TRUE(s.ok()) << w.name << ": " << s.ToString();
    if (w.nbytes > 0) {
      EXPECT_EQ(0, std::memcmp(back.data(), w.data, w.nbytes)) << w.name;
    }
  }
  const ItemRecord* blob = testing::FindItem(**reader, "blob");
  ASSERT_NE(blob, nullptr);
  EXPECT_EQ(blob->kind, ItemKind::kBytes);
  auto report = (*reader)->Verify();
  ASSERT_TRUE(report.ok());
  EXPECT_TRUE(report->problems.empty());
  EXPECT_GT(report->bytes_checked, 300u * 257 * 4);
}

// Any box of a saved chunk reads back exactly what the reference holds.
TEST_P(ShardIo, HyperRectangleReads) {
  auto repo = Repository::Open(dir_.path(), opts());
  ASSERT_TRUE(repo.ok());
  OwnedItems items;
  const std::vector<std::int64_t> shape = {7, 33, 129};
  items.Add("t", DType::kFloat32, shape, 42);
  SaveSpec spec;
  spec.step = 1;
  ASSERT_TRUE((*repo)->Save(spec, items.items).ok());
  auto reader = (*repo)->OpenCheckpoint("step-000000000001");
  ASSERT_TRUE(reader.ok());
  const ItemRecord* it = testing::FindItem(**reader, "t");
  const auto* ref = static_cast<const float*>(items.items[0].data);
  std::mt19937 rng(1);
  for (int trial = 0; trial < 60; ++trial) {
    std::vector<std::int64_t> o(3), L(3);
    for (int d = 0; d < 3; ++d) {
      o[d] = std::uniform_int_distribution<std::int64_t>(0, shape[d] - 1)(rng);
      L[d] = std::uniform_int_distribution<std::int64_t>(1, shape[d] - o[d])(rng);
    }
    if (trial == 0) o = {0, 0, 0}, L = shape;           // whole
    if (trial == 1) o = {2, 0, 0}, L = {3, 33, 129};    // row slice
    std::vector<float> got(static_cast<std::size_t>(L[0] * L[1] * L[2]), -1.f);
    ReadRequest q;
    q.item = it;
    q.offsets = o;
    q.lengths = L;
    q.dst = got.data();
    q.dst_bytes = got.size() * sizeof(float);
    Status s = (*reader)->Read({&q, 1});
    ASSERT_TRUE(s.ok()) << s.ToString();
    for (std::int64_t a = 0; a < L[0]; ++a)
      for (std::int64_t b = 0; b < L[1]; ++b)
        for (std::int64_t c = 0; c < L[2]; ++c) {
          float want = ref[((o[0] + a) * shape[1] + o[1] + b) * shape[2] + o[2] + c];
          float have = got[static_cast<std::size_t>((a * L[1] + b) * L[2] + c)];
          ASSERT_EQ(std::memcmp(&want, &have, 4), 0) << "trial " << trial;
        }
  }
  // Boxes whose offset plus length would wrap past INT64_MAX are refused,
  // never read into memory outside the destination.
  constexpr std::int64_t kMax = std::numeric_limits<std::int64_t>::max();
  std::vector<float> small(4, -1.f);
  struct Hostile {
    std::vector<std::int64_t> offsets, lengths, dst_shape, dst_offsets;
  };
  for (const Hostile& h : {Hostile{{0, 0, 0}, {1, 1, 4}, {1, 1, 4}, {kMax, 0, 0}},
                           Hostile{{0, 0, 0}, {1, 1, 4}, {1, 1, 4}, {0, 0, kMax - 1}},
                           Hostile{{kMax, 0, 0}, {1, 1, 4}, {1, 1, 4}, {0, 0, 0}},
                           Hostile{{0, 0, kMax - 2}, {1, 1, 4}, {1, 1, 4}, {0, 0, 0}}}) {
    ReadRequest q;
    q.item = it;
    q.offsets = h.offsets;
    q.lengths = h.lengths;
    q.dst_shape = h.dst_shape;
    q.dst_offsets = h.dst_offsets;
    q.dst = small.data();
    q.dst_bytes = small.size() * sizeof(float);
    Status s = (*reader)->Read({&q, 1});
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.ToString();
  }
  EXPECT_EQ(small, std::vector<float>(4, -1.f));
}

TEST_P(ShardIo, InjectedWriteErrorsFailTheSaveAndCommitNothing) {
  auto repo = Repository::Open(dir_.path(), opts());
  ASSERT_TRUE(repo.ok());
  OwnedItems items = MixedItems();
  for (int err : {EIO, ENOSPC}) {
    for (int nth : {1, 3}) {
      os::SetFaults({{os::Op::kWrite, static_cast<std::uint64_t>(nth), false, err, false, false}});
      SaveSpec spec;
      spec.step = 100 + nth;
      auto saved = (*repo)->Save(spec, items.items);
      os::ClearFaults();
      ASSERT_FALSE(saved.ok());
      EXPECT_EQ(saved.status().err(), err);
      EXPECT_NE(saved.status().message().find("rank-00000.shard"), std::string::npos)
          << saved.status().message();
      auto list = (*repo)->List();
      ASSERT_TRUE(list.ok());
      for (const auto& c : *list) EXPECT_NE(c.state, CheckpointInfo::State::kCommitted);
    }
  }
}

TEST_P(ShardIo, ShortWritesAndReadsAreCompleted) {
  auto repo = Repository::Open(dir_.path(), opts());
  ASSERT_TRUE(repo.ok());
  OwnedItems items = MixedItems();
  os::SetFaults({{os::Op::kWrite, 1, true, 0, true, false}, {os::Op::kRead, 1, true, 0, true, false}});
  SaveSpec spec;
  spec.step = 3;
  auto saved = (*repo)->Save(spec, items.items);
  ASSERT_TRUE(saved.ok()) << saved.status().ToString();
  auto reader = (*repo)->OpenCheckpoint(saved->name);
  ASSERT_TRUE(reader.ok());
  std::vector<std::byte> back(items.items[0].nbytes);
  ASSERT_TRUE((*reader)->ReadItem("big", back.data(), back.size()).ok());
  os::ClearFaults();
  EXPECT_EQ(0, std::memcmp(back.data(), items.items[0].data, back.size()));
}

INSTANTIATE_TEST_SUITE_P(
    Backends, ShardIo,
    ::testing::Combine(::testing::Values(IoBackendKind::kThreads, IoBackendKind::kAuto),
                       ::testing::Values(DirectIoMode::kOff, DirectIoMode::kAuto)),
    [](const auto& info) {
      return std::string(std::get<0>(info.param) == IoBackendKind::kThreads ? "threads" : "auto") +
             (std::get<1>(info.param) == DirectIoMode::kOff ? "_buffered" : "_direct");
    });

// Damage to a committed checkpoint: every case is an error naming the file.
class Damage : public ::testing::Test {
 protected:
  void SetUp() override {
    auto repo = Repository::Open(dir_.path(), SmallUnits(IoBackendKind::kAuto, DirectIoMode::kAuto));
    ASSERT_TRUE(repo.ok());
    repo_ = std::move(*repo);
    items_ = MixedItems();
    SaveSpec spec;
    spec.step = 1;
    ASSERT_TRUE(repo_->Save(spec, items_.items).ok());
    ckpt_ = dir_ / "step-000000000001";
    shard_ = ckpt_ + "/rank-00000.shard";
  }
  // Opens, reads every item and verifies; returns the first error seen.
  Status ReadEverything(bool verify_only = false) {
    auto reader = CheckpointReader::Open(ckpt_, repo_->options());
    if (!reader.ok()) return reader.status();
    if (!verify_only) {
      for (const auto& w : items_.items) {
        std::vector<std::byte> back(w.nbytes);
        Status s = (*reader)->ReadItem(w.name, back.data(), back.size());
        if (!s.ok()) return s;
      }
    }
    auto report = (*reader)->Verify();
    if (!report.ok()) return report.status();
    if (!report->problems.empty()) return report->problems[0].status;
    return Status::Ok();
  }
  TempDir dir_;
  std::unique_ptr<Repository> repo_;
  OwnedItems items_;
  std::string ckpt_, shard_;
};

TEST_F(Damage, FlippedDataByteNamesItemFileAndOffset) {
  auto reader = CheckpointReader::Open(ckpt_);
  ASSERT_TRUE(reader.ok());
  const ItemRecord* big = testing::FindItem(**reader, "big");
  std::uint64_t off = big->chunks[0].offset + 100000;
  reader->reset();
  testing::FlipByte(shard_, off);
  std::vector<std::byte> back(items_.items[0].nbytes);
  auto r2 = CheckpointReader::Open(ckpt_);
  ASSERT_TRUE(r2.ok());
  Status s = (*r2)->ReadItem("big", back.data(), back.size());
  ASSERT_EQ(s.code(), StatusCode::kCorrupt) << s.ToString();
  EXPECT_NE(s.message().find("'big'"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find(shard_), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("checksum mismatch"), std::string::npos);
  // Other items still read.
  std::vector<std::byte> norm(items_.items[4].nbytes);
  EXPECT_TRUE((*r2)->ReadItem("norm", norm.data(), norm.size()).ok());
  // A box that avoids the damaged block reads fine too (only touched blocks
  // are read and checked).
  std::vector<float> row(257);
  ReadRequest q;
  q.item = testing::FindItem(**r2, "big");
  q.offsets = {0, 0};
  q.lengths = {1, 257};
  q.dst = row.data();
  q.dst_bytes = row.size() * 4;
  EXPECT_TRUE((*r2)->Read({&q, 1}).ok());
  EXPECT_EQ(ReadEverything(true).code(), StatusCode::kCorrupt);
}

TEST_F(Damage, FlippedHeaderByte) {
  testing::FlipByte(shard_, 20);
  Status s = ReadEverything();
  EXPECT_EQ(s.code(), StatusCode::kCorrupt);
  EXPECT_NE(s.message().find(shard_), std::string::npos) << s.message();
}

TEST_F(Damage, TruncatedShard) {
  auto st = os::Stat(shard_);
  ASSERT_EQ(::truncate(shard_.c_str(), st->st_size - 4096), 0);
  Status s = ReadEverything();
  EXPECT_EQ(s.code(), StatusCode::kCorrupt);
  EXPECT_NE(s.message().find("truncated"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find(shard_), std::string::npos);
}

TEST_F(Damage, ExtraBytes) {
  auto st = os::Stat(shard_);
  ASSERT_EQ(::truncate(shard_.c_str(), st->st_size + 1), 0);
  EXPECT_EQ(ReadEverything().code(), StatusCode::kCorrupt);
}

TEST_F(Damage, MissingShard) {
  ASSERT_EQ(::unlink(shard_.c_str()), 0);
  Status s = ReadEverything();
  EXPECT_EQ(s.code(), StatusCode::kCorrupt);
  EXPECT_NE(s.message().find("missing"), std::string::npos) << s.message();
}

TEST_F(Damage, ShardReplacedBySymlinkIsRefused) {
  std::string outside = dir_ / "outside.shard";
  ASSERT_EQ(::rename(shard_.c_str(), outside.c_str()), 0);
  ASSERT_EQ(::symlink(outside.c_str(), shard_.c_str()), 0);
  Status s = ReadEverything();
  EXPECT_EQ(s.code(), StatusCode::kCorrupt);
  EXPECT_NE(s.message().find("symbolic link"), std::string::npos) << s.message();
}

TEST_F(Damage, ShardReplacedByFifoDoesNotHang) {
  ASSERT_EQ(::unlink(shard_.c_str()), 0);
  ASSERT_EQ(::mkfifo(shard_.c_str(), 0644), 0);
  Status s = ReadEverything();
  EXPECT_EQ(s.code(), StatusCode::kCorrupt);
  EXPECT_NE(s.message().find("not a regular file"), std::string::npos) << s.message();
}

TEST_F(Damage, ShardFromAnotherAttemptIsRefused) {
  // Same step saved again by a different attempt into another root; its shard
  // dropped into our checkpoint must not be accepted.
  TempDir other;
  auto repo2 = Repository::Open(other.path(), repo_->options());
  ASSERT_TRUE(repo2.ok());
  SaveSpec spec;
  spec.step = 1;
  ASSERT_TRUE((*repo2)->Save(spec, items_.items).ok());
  std::string foreign = other / "step-000000000001/rank-00000.shard";
  ASSERT_EQ(::rename(foreign.c_str(), shard_.c_str()), 0);
  Status s = ReadEverything();
  EXPECT_EQ(s.code(), StatusCode::kCorrupt);
  EXPECT_NE(s.message().find("save attempt"), std::string::npos) << s.message();
}

TEST_F(Damage, ManifestDamage) {
  std::string m = ckpt_ + "/manifest.json";
  std::string text = testing::ReadAll(m);
  testing::WriteAll(m, text.substr(0, text.size() / 2));
  EXPECT_EQ(ReadEverything().code(), StatusCode::kCorrupt);
  testing::WriteAll(m, "not json at all");
  EXPECT_EQ(ReadEverything().code(), StatusCode::kCorrupt);
  ASSERT_EQ(::unlink(m.c_str()), 0);
  ASSERT_EQ(::symlink("/etc/hostname", m.c_str()), 0);
  Status s = ReadEverything();
  EXPECT_EQ(s.code(), StatusCode::kCorrupt);
  EXPECT_NE(s.message().find("symbolic link"), std::string::npos) << s.message();
}

// One rank may save two chunks of the same tensor.
TEST(ShardWriterInput, SeveralChunksOfOneItemPerRank) {
  TempDir dir;
  auto repo = Repository::Open(dir.path());
  ASSERT_TRUE(repo.ok());
  OwnedItems it;
  it.Add("t", DType::kInt32, {10, 3}, 1, {0, 0}, {4, 3});
  it.Add("t", DType::kInt32, {10, 3}, 2, {4, 0}, {6, 3});
  SaveSpec spec;
  spec.step = 1;
  ASSERT_TRUE((*repo)->Save(spec, it.items).ok());
  auto reader = (*repo)->OpenCheckpoint("step-000000000001");
  ASSERT_TRUE(reader.ok());
  ASSERT_EQ(testing::FindItem(**reader, "t")->chunks.size(), 2u);
  std::vector<std::int32_t> all(30);
  ASSERT_TRUE((*reader)->ReadItem("t", all.data(), all.size() * 4).ok());
  EXPECT_EQ(0, std::memcmp(all.data(), it.data[0].data(), 48));
  EXPECT_EQ(0, std::memcmp(all.data() + 12, it.data[1].data(), 72));
}

TEST(ShardWriterInput, BadItemsAreClearErrors) {
  TempDir dir;
  auto repo = Repository::Open(dir.path());
  ASSERT_TRUE(repo.ok());
  auto expect_bad = [&](OwnedItems items, const char* phrase) {
    SaveSpec spec;
    spec.step = 1;
    auto r = (*repo)->Save(spec, items.items);
    ASSERT_FALSE(r.ok()) << phrase;
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(r.status().message().find(phrase), std::string::npos) << r.status().message();
  };
  OwnedItems dup;
  dup.Add("a", DType::kUInt8, {4}, 1);
  dup.Add("a", DType::kUInt8, {4}, 2);
  expect_bad(dup, "added twice");
  OwnedItems mixed;
  mixed.Add("a", DType::kUInt8, {8}, 1, {0}, {4});
  mixed.Add("a", DType::kInt8, {8}, 2, {4}, {4});
  expect_bad(mixed, "disagree");
  OwnedItems size;
  size.Add("a", DType::kFloat32, {4}, 1);
  size.items[0].nbytes = 15;
  expect_bad(size, "does not match");
  OwnedItems outside;
  outside.Add("a", DType::kFloat32, {4}, 1, {2}, {4});
  expect_bad(outside, "outside the global shape");
  OwnedItems utf;
  utf.Add("bad\xC0\xAF", DType::kUInt8, {1}, 1);
  expect_bad(utf, "UTF-8");
  OwnedItems empty;
  empty.Add("", DType::kUInt8, {1}, 1);
  expect_bad(empty, "empty name");
}

}  // namespace
}  // namespace shardwise

namespace shardwise {
namespace {

// Every byte of a shard file we wrote is covered: data by CRC32C, header by
// its CRC and zero tail, padding by the zero check. A flip at any position is
// reported by Verify, naming the file.
TEST(FlipAnywhere, EveryPositionIsDetected) {
  testing::TempDir dir;
  Options o;
  o.checksum_block_bytes = 16 << 10;
  o.io_unit_bytes = 64 << 10;
  auto repo = Repository::Open(dir.path(), o);
  ASSERT_TRUE(repo.ok());
  testing::OwnedItems items;
  items.Add("a", DType::kFloat32, {100, 33}, 1);   // 13200 bytes: padded
  items.Add("b", DType::kBFloat16, {7}, 2);        // tiny, packed
  items.Add("c", DType::kUInt8, {40000}, 3);       // several blocks
  SaveSpec spec;
  spec.step = 1;
  ASSERT_TRUE((*repo)->Save(spec, items.items).ok());
  std::string ckpt = dir / "step-000000000001";
  std::string shard = ckpt + "/rank-00000.shard";
  auto size = static_cast<std::uint64_t>(os::Stat(shard)->st_size);
  int checked = 0;
  for (std::uint64_t pos = 0; pos < size; pos += 509) {
    testing::FlipByte(shard, pos);
    auto reader = CheckpointReader::Open(ckpt, o);
    ASSERT_TRUE(reader.ok());
    auto report = (*reader)->Verify();
    ASSERT_TRUE(report.ok());
    ASSERT_EQ(report->problems.size(), 1u) << "flip at byte " << pos << " went unnoticed";
    EXPECT_EQ(report->problems[0].file, "rank-00000.shard");
    EXPECT_NE(report->problems[0].status.message().find(shard), std::string::npos)
        << report->problems[0].status.message();
    testing::FlipByte(shard, pos);  // undo
    ++checked;
  }
  EXPECT_GT(checked, 100);
  auto reader = CheckpointReader::Open(ckpt, o);
  EXPECT_TRUE((*reader)->Verify()->problems.empty());
}

}  // namespace
}  // namespace shardwise
