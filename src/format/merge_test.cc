// The merge of rank indexes (format/merge.h): what it builds matches the
// rank-order merge of the ranks' manifests item for item, the format-2 index
// encoded from it is byte for byte the one encoded from that manifest, and
// every disagreement between ranks is kCorrupt naming what disagrees.
#include "format/merge.h"

#include <gtest/gtest.h>

#include <deque>
#include <functional>

#include "format/index.h"
#include "format/manifest.h"
#include "format/rank_index.h"
#include "testing/test_util.h"

namespace shardwise::format {
namespace {

constexpr int kWorld = 4;

// Rows [rows * slot, rows * (slot + 1)) of a tensor of `slots` such slices.
ItemRecord RowSlice(const std::string& name, int slot, std::uint64_t at, int rows = 8,
                    int slots = kWorld) {
  ItemRecord it;
  it.name = name;
  it.dtype = DType::kFloat32;
  it.shape = {rows * slots, 16};
  const std::uint64_t len = static_cast<std::uint64_t>(rows) * 16 * 4;
  it.chunks.push_back({{rows * slot, 0}, {rows, 16}, 0, at, len,
                       {0x1000u + static_cast<std::uint32_t>(slot)}});
  return it;
}

// Rank r's fragment: "a" and "b" on every rank, in an order that differs on
// rank 1; "only13" on ranks 1 and 3; rank 2 writes two chunks of "b" (two
// row slices of its share); rank 0 saves nothing when `empty_first` (the
// others then hold every row). The chunks of each item tile its shape.
Manifest Fragment(int r, bool empty_first = false) {
  Manifest f;
  f.name = "step-000000000003";
  f.save_id = "merge-0";
  f.world_size = kWorld;
  f.rank = r;
  f.checksum_block = 1 << 20;
  if (empty_first && r == 0) return f;
  f.files.push_back({"rank-0000" + std::to_string(r) + ".shard", r, 4096 * 8, "uring", true});
  const int slot = empty_first ? r - 1 : r, slots = empty_first ? kWorld - 1 : kWorld;
  ItemRecord a = RowSlice("a", slot, 4096, 8, slots), b = RowSlice("b", slot, 8192, 8, slots);
  if (r == 2) {
    b = RowSlice("b", slot, 8192, 4, slots);
    b.shape = {8 * slots, 16};
    b.chunks[0].offsets = {8 * slot, 0};
    ChunkRecord second = b.chunks[0];
    second.offsets = {8 * slot + 4, 0};
    second.offset = 12288;
    b.chunks.push_back(second);
  }
  if (r == 1) f.items = {b, a};
  else f.items = {a, b};
  if (r == 1 || r == 3) f.items.push_back(RowSlice("only13", r / 2, 16384, 8, 2));
  return f;
}

// The ranks' manifests merged the plain way: items in order of first
// appearance, chunks in rank order, file indexes rebased.
Manifest Expected(const std::vector<Manifest>& frags) {
  Manifest m = frags.back();
  m.rank = -1;
  m.files.clear();
  m.items.clear();
  for (const Manifest& f : frags) {
    const auto base = static_cast<std::uint32_t>(m.files.size());
    m.files.insert(m.files.end(), f.files.begin(), f.files.end());
    for (ItemRecord it : f.items) {
      for (ChunkRecord& c : it.chunks) c.file += base;
      ItemRecord* have = nullptr;
      for (ItemRecord& h : m.items)
        if (h.name == it.name) have = &h;
      if (!have) m.items.push_back(it);
      else have->chunks.insert(have->chunks.end(), it.chunks.begin(), it.chunks.end());
    }
  }
  return m;
}

struct Merge {
  std::vector<std::string> bytes;
  std::deque<RankColumns> cols;
  std::vector<RankPart> parts;
  Manifest spec;

  explicit Merge(const std::vector<Manifest>& frags) {
    spec.name = frags[0].name;
    spec.save_id = frags[0].save_id;
    spec.world_size = kWorld;
    for (const Manifest& f : frags) bytes.push_back(EncodeRankIndex(f));
    for (std::size_t r = 0; r < frags.size(); ++r) {
      auto c = DecodeRankColumns(bytes[r], "rank " + std::to_string(r));
      EXPECT_TRUE(c.ok()) << c.status().ToString();
      cols.push_back(std::move(*c));
      parts.push_back({&cols.back().header, &cols.back(), "rank " + std::to_string(r)});
    }
  }
  Result<MergedRanks> Run() { return MergeRanks(parts, spec, "ckpt/manifest.json"); }
};

std::vector<Manifest> Fragments(bool empty_first = false) {
  std::vector<Manifest> frags;
  for (int r = 0; r < kWorld; ++r) frags.push_back(Fragment(r, empty_first));
  return frags;
}

TEST(MergeRanks, MatchesThePlainMergeAndEncodesTheSameIndex) {
  for (bool empty_first : {false, true}) {
    SCOPED_TRACE(empty_first ? "rank 0 saved nothing" : "every rank saved");
    const auto frags = Fragments(empty_first);
    Merge merge(frags);
    auto merged = merge.Run();
    ASSERT_TRUE(merged.ok()) << merged.status().ToString();
    const Manifest want = Expected(frags);
    EXPECT_EQ(merged->checksum_block(), 1u << 20);
    ASSERT_EQ(merged->Files().size(), want.files.size());
    for (std::size_t f = 0; f < want.files.size(); ++f)
      EXPECT_EQ(merged->Files()[f].name, want.files[f].name);
    Manifest got = want;
    got.items = Materialize(*merged);
    ASSERT_EQ(got.items.size(), want.items.size());
    for (std::size_t i = 0; i < want.items.size(); ++i) {
      EXPECT_EQ(got.items[i].name, want.items[i].name);
      EXPECT_EQ(got.items[i].shape, want.items[i].shape);
      ASSERT_EQ(got.items[i].chunks.size(), want.items[i].chunks.size()) << want.items[i].name;
      for (std::size_t k = 0; k < want.items[i].chunks.size(); ++k)
        EXPECT_TRUE(testing::SameChunk(got.items[i].chunks[k], want.items[i].chunks[k]))
            << want.items[i].name << " chunk " << k;
    }
    IndexRef from_merge, from_manifest;
    auto a = EncodeIndex(*merged, want, &from_merge);
    auto b = EncodeIndex(want, &from_manifest);
    ASSERT_TRUE(a.ok() && b.ok());
    EXPECT_TRUE(a->view() == b->view()) << "the index encoded from the merge differs";
    EXPECT_EQ(from_merge.chunks, from_manifest.chunks);
  }
}

void ExpectCorrupt(const std::function<void(std::vector<Manifest>&)>& damage,
                   const std::string& words) {
  auto frags = Fragments();
  damage(frags);
  Merge merge(frags);
  auto m = merge.Run();
  ASSERT_FALSE(m.ok()) << "accepted: " << words;
  EXPECT_EQ(m.status().code(), StatusCode::kCorrupt);
  EXPECT_NE(m.status().message().find(words), std::string::npos) << m.status().ToString();
}

TEST(MergeRanks, RejectsWhatNoSingleRankShows) {
  // An item of the reference (rank 0's) with another shape on rank 3.
  ExpectCorrupt([](auto& f) { f[3].items[0].shape = {64, 16}; },
                "ranks disagree about item 'a'");
  // An item the reference lacks, with another dtype on its second rank.
  ExpectCorrupt([](auto& f) {
    f[3].items[2].dtype = DType::kFloat16;
    f[3].items[2].chunks[0].length /= 2;
  }, "ranks disagree about item 'only13'");
  // Two ranks write the same rows of "a".
  ExpectCorrupt([](auto& f) { f[3].items[0].chunks[0].offsets = {8, 0}; },
                "item 'a': two chunks start at the same offsets");
  // Rank 3's rows of "a" reach into rank 2's, and leave its own last ones out.
  ExpectCorrupt([](auto& f) { f[3].items[0].chunks[0].offsets = {20, 0}; },
                "item 'a': chunks 2 and 3 overlap");
  // Two ranks name the same shard file.
  ExpectCorrupt([](auto& f) { f[3].files[0].name = "rank-00001.shard"; },
                "file 'rank-00001.shard' is listed twice");
  // A rank index of another save, or sent by another rank.
  ExpectCorrupt([](auto& f) { f[2].save_id = "merge-1"; }, "rank 2: belongs to another save");
  ExpectCorrupt([](auto& f) { f[2].rank = 1; }, "rank 2: belongs to another save");
  ExpectCorrupt([](auto& f) { f[1].checksum_block = 1 << 16; },
                "checksum block size differs");
}

}  // namespace
}  // namespace shardwise::format
