// The binary rank index (format/rank_index.h): round trip, and every kind of
// damage is kCorrupt naming where it came from, never a crash.
#include "format/rank_index.h"

#include <gtest/gtest.h>

#include "format/crc32c.h"
#include "format/manifest.h"

namespace shardwise::format {
namespace {

Manifest Fragment() {
  Manifest f;
  f.name = "step-000000000007";
  f.step = 7;
  f.save_id = "ab12-0";
  f.world_size = 4;
  f.rank = 2;
  f.created_unix = 1764806400.25;
  f.checksum_block = 1 << 20;
  f.files.push_back({"rank-00002.shard", 2, 4096 + (3u << 20), "uring", true});
  ItemRecord w;
  w.name = "layers.0.w";
  w.dtype = DType::kBFloat16;
  w.shape = {1024, 1024};
  w.chunks.push_back({{512, 0}, {256, 1024}, 0, 4096, 512 << 10, {0xdeadbeefu}});
  f.items.push_back(w);
  ItemRecord b;
  b.name = "extra";
  b.kind = ItemKind::kBytes;
  b.shape = {5};
  b.chunks.push_back({{0}, {5}, 0, 4096 + (1u << 20), 5, {0x1u}});
  f.items.push_back(b);
  return f;
}

// Rewrites the trailing CRC so that only the body's meaning is wrong.
std::string Reseal(std::string bytes) {
  bytes.resize(bytes.size() - 4);
  const std::uint32_t crc = Crc32c(bytes.data(), bytes.size());
  for (int i = 0; i < 4; ++i) bytes += static_cast<char>(crc >> (8 * i));
  return bytes;
}

TEST(RankIndex, RoundTripsEveryField) {
  const Manifest f = Fragment();
  const std::string bytes = EncodeRankIndex(f);
  auto back = DecodeRankIndex(bytes, "r2");
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->name, f.name);
  EXPECT_EQ(back->step, 7);
  EXPECT_EQ(back->save_id, f.save_id);
  EXPECT_EQ(back->world_size, 4);
  EXPECT_EQ(back->rank, 2);
  EXPECT_EQ(back->created_unix, f.created_unix);
  ASSERT_EQ(back->files.size(), 1u);
  EXPECT_EQ(back->files[0].name, "rank-00002.shard");
  EXPECT_TRUE(back->files[0].direct_io);
  ASSERT_EQ(back->items.size(), 2u);
  EXPECT_EQ(back->items[0].dtype, DType::kBFloat16);
  EXPECT_EQ(back->items[0].chunks[0].offsets, (std::vector<std::int64_t>{512, 0}));
  EXPECT_EQ(back->items[0].chunks[0].crc32c, std::vector<std::uint32_t>{0xdeadbeefu});
  EXPECT_EQ(back->items[1].kind, ItemKind::kBytes);
  EXPECT_EQ(EncodeRankIndex(*back), bytes);
  // Much smaller than the JSON fragment it replaces.
  EXPECT_LT(bytes.size(), Serialize(f, kFragmentKind).size() / 2);
}

TEST(RankIndex, DamageIsCorruptNamingTheSource) {
  const std::string good = EncodeRankIndex(Fragment());
  for (std::size_t n = 0; n < good.size(); ++n) {  // every truncation
    auto r = DecodeRankIndex(good.substr(0, n), "rank 2's index");
    ASSERT_FALSE(r.ok()) << n;
    EXPECT_EQ(r.status().code(), StatusCode::kCorrupt);
    EXPECT_NE(r.status().message().find("rank 2's index"), std::string::npos);
  }
  for (std::size_t i = 0; i < good.size(); ++i) {  // every flipped byte
    std::string bad = good;
    bad[i] = static_cast<char>(bad[i] ^ 0x40);
    EXPECT_EQ(DecodeRankIndex(bad, "x").status().code(), StatusCode::kCorrupt) << i;
  }
  std::string v2 = good;
  v2[4] = 2;
  EXPECT_NE(DecodeRankIndex(v2, "x").status().message().find("version 2"), std::string::npos);
  EXPECT_NE(DecodeRankIndex(Reseal(good + "zz"), "x").status().message().find("trailing"),
            std::string::npos);
}

TEST(RankIndex, MeaningIsValidatedLikeAFragment) {
  Manifest f = Fragment();
  f.items[0].chunks[0].offsets = {1000, 0};  // past the global shape
  auto r = DecodeRankIndex(EncodeRankIndex(f), "x");
  EXPECT_EQ(r.status().code(), StatusCode::kCorrupt);
  f = Fragment();
  f.files[0].name = "../escape";
  EXPECT_EQ(DecodeRankIndex(EncodeRankIndex(f), "x").status().code(), StatusCode::kCorrupt);
  // A count larger than the bytes left cannot make the decoder allocate it:
  // name "", step 0, save id "", world 1, rank 0, block 1, created 0, then
  // 2^35 files.
  const std::string huge("SWRX\x01\x00\x00\x00\x01\x00\x01\x00\xff\xff\xff\xff\x7f" "0000", 21);
  auto h = DecodeRankIndex(Reseal(huge), "x");
  EXPECT_EQ(h.status().code(), StatusCode::kCorrupt);
  EXPECT_NE(h.status().message().find("more entries than it holds"), std::string::npos)
      << h.status().message();
}

}  // namespace
}  // namespace shardwise::format
