// The format-2 index (format/index.h): round trip, lookups that read only a
// few blocks however large the index, and damage is kCorrupt, never a crash.
#include "format/index.h"

#include <gtest/gtest.h>

#include <cstring>

#include "common/sanitizers.h"
#include "format/manifest.h"

namespace shardwise::format {
namespace {

// `ranks` ranks, each holding row slice r of every one of `items` items
// (as FSDP shards a model), plus one bytes item on rank 0.
Manifest Sharded(int ranks, int items, int parts = 1) {
  Manifest m;
  m.name = "step-000000000009";
  m.step = 9;
  m.save_id = "s9-abc";
  m.world_size = ranks;
  m.created_unix = 1764806400.5;
  m.checksum_block = 1 << 20;
  const std::uint64_t chunk = 64 * 16 * 4;  // 64x16 float32
  for (int r = 0; r < ranks; ++r)
    for (int p = 0; p < parts; ++p) {
      std::string name = "rank-" + std::string(5 - std::to_string(r).size(), '0') +
                         std::to_string(r) + (p ? ".part" + std::to_string(p) : "") + ".shard";
      m.files.push_back({name, r, 4096 + 4096 * static_cast<std::uint64_t>(items + 1),
                         p % 2 ? "threads" : "uring", p == 0});
    }
  for (int i = 0; i < items; ++i) {
    ItemRecord it;
    it.name = "layers." + std::to_string(i) + ".w";
    it.dtype = DType::kFloat32;
    it.shape = {64LL * ranks, 16};
    // Stored out of order: the index sorts them.
    for (int r = ranks - 1; r >= 0; --r)
      it.chunks.push_back({{64LL * r, 0}, {64, 16}, static_cast<std::uint32_t>(r * parts),
                           4096 + 4096 * static_cast<std::uint64_t>(i), chunk,
                           {0x1000u + static_cast<std::uint32_t>(r * 7 + i)}});
    m.items.push_back(std::move(it));
  }
  ItemRecord b;
  b.name = "extra";
  b.kind = ItemKind::kBytes;
  b.shape = {5};
  b.chunks.push_back({{0}, {5}, 0, 4096 + 4096 * static_cast<std::uint64_t>(items), 5, {7u}});
  m.items.push_back(b);
  return m;
}

struct Opened {
  std::string bytes;
  Manifest record;
  std::unique_ptr<IndexReader> reader;
  Status status;
};

// Opens `bytes` as the index of the commit record `record`.
Opened OpenBytes(const Manifest& record, std::string bytes) {
  Opened o;
  o.bytes = std::move(bytes);
  o.record = record;
  const std::string* data = &o.bytes;
  auto r = IndexReader::Open(
      [data](std::uint64_t off, std::size_t len, char* dst) -> Status {
        if (off > data->size() || len > data->size() - off)
          return Corrupt("index.swi: file is truncated", "index.swi");
        std::memcpy(dst, data->data() + off, len);
        return Status::Ok();
      },
      o.record, "ckpt/index.swi");
  if (r.ok()) o.reader = std::move(*r);
  else o.status = r.status();
  return o;
}

Opened OpenIndex(const Manifest& m, const std::function<void(std::string&)>& damage = {}) {
  Manifest rec = HeaderOf(m);
  auto bytes = EncodeIndex(m, &rec.index);
  if (!bytes.ok()) {
    Opened o;
    o.status = bytes.status();
    return o;
  }
  std::string copy(bytes->view());
  if (damage) damage(copy);
  return OpenBytes(rec, std::move(copy));
}

TEST(Index, RoundTripsEveryField) {
  const Manifest m = Sharded(5, 3, 2);
  Opened o = OpenIndex(m);
  ASSERT_TRUE(o.reader) << o.status.ToString();
  EXPECT_EQ(o.bytes.size() % kIndexBlockBytes, 0u);
  EXPECT_EQ(o.record.index.files, 10u);
  EXPECT_EQ(o.record.index.items, 4u);
  EXPECT_EQ(o.record.index.chunks, 16u);
  EXPECT_EQ(o.record.index.file_bytes, m.TotalBytes());
  auto all = o.reader->ReadAll();
  ASSERT_TRUE(all.ok()) << all.status().ToString();
  ASSERT_EQ(all->files.size(), m.files.size());
  for (std::size_t f = 0; f < m.files.size(); ++f) {
    EXPECT_EQ(all->files[f].name, m.files[f].name);
    EXPECT_EQ(all->files[f].rank, m.files[f].rank);
    EXPECT_EQ(all->files[f].size, m.files[f].size);
    EXPECT_EQ(all->files[f].backend, m.files[f].backend);
    EXPECT_EQ(all->files[f].direct_io, m.files[f].direct_io);
  }
  ASSERT_EQ(all->items.size(), m.items.size());
  for (std::size_t i = 0; i < m.items.size(); ++i) {
    const ItemRecord& a = m.items[i];
    const ItemRecord& b = all->items[i];
    EXPECT_EQ(b.name, a.name);
    EXPECT_EQ(b.kind, a.kind);
    EXPECT_EQ(b.dtype, a.dtype);
    EXPECT_EQ(b.shape, a.shape);
    ASSERT_EQ(b.chunks.size(), a.chunks.size());
    // Sorted by offsets: the same chunks, in ascending order.
    for (std::size_t c = 0; c < b.chunks.size(); ++c) {
      const ChunkRecord& want = a.chunks[a.chunks.size() - 1 - c];
      EXPECT_EQ(b.chunks[c].offsets, want.offsets);
      EXPECT_EQ(b.chunks[c].sizes, want.sizes);
      EXPECT_EQ(b.chunks[c].file, want.file);
      EXPECT_EQ(b.chunks[c].offset, want.offset);
      EXPECT_EQ(b.chunks[c].length, want.length);
      EXPECT_EQ(b.chunks[c].crc32c, want.crc32c);
    }
  }
}

TEST(Index, RefusesFilesItCannotName) {
  Manifest m = Sharded(2, 1);
  m.files[1].name = "other.bin";
  IndexRef ref;
  auto bytes = EncodeIndex(m, &ref);
  ASSERT_FALSE(bytes.ok());
  EXPECT_NE(bytes.status().message().find("other.bin"), std::string::npos);
}

// A rank's lookup reads the fixed part and a few blocks, flat in world size.
TEST(Index, BoxLookupReadsOnlyWhatItNeeds) {
  std::uint64_t small_read = 0;
  for (int ranks : {256, 4096}) {
    Opened o = OpenIndex(Sharded(ranks, 4));
    ASSERT_TRUE(o.reader) << o.status.ToString();
    const std::uint64_t after_open = o.reader->bytes_read();
    const std::size_t i = o.reader->Find("layers.2.w");
    ASSERT_LT(i, o.reader->items().size());
    const std::int64_t r = ranks / 2 + 1;
    auto chunks = o.reader->ChunksOverlapping(i, {64 * r + 10, 0}, {64, 16});
    ASSERT_TRUE(chunks.ok()) << chunks.status().ToString();
    ASSERT_EQ(chunks->size(), 2u);  // straddles rank r's and r+1's slices
    EXPECT_EQ((*chunks)[0].offsets, (std::vector<std::int64_t>{64 * r, 0}));
    EXPECT_EQ((*chunks)[1].offsets, (std::vector<std::int64_t>{64 * (r + 1), 0}));
    EXPECT_EQ((*chunks)[0].crc32c, std::vector<std::uint32_t>{0x1000u + static_cast<std::uint32_t>(r * 7 + 2)});
    const std::uint64_t lookup = o.reader->bytes_read() - after_open;
    EXPECT_LE(lookup, 8 * kIndexBlockBytes) << ranks << " ranks";
    if (ranks == 4096) {
      EXPECT_LT(lookup, o.bytes.size() / 32);
    }
    if (ranks == 256) {
      small_read = lookup;
    } else {
      EXPECT_LE(lookup, small_read + 2 * kIndexBlockBytes);
    }
    // The first and last slices, and a box past every chunk's start.
    auto first = o.reader->ChunksOverlapping(i, {0, 0}, {1, 1});
    ASSERT_TRUE(first.ok());
    ASSERT_EQ(first->size(), 1u);
    EXPECT_EQ((*first)[0].offsets[0], 0);
    auto last = o.reader->ChunksOverlapping(i, {64LL * ranks - 1, 15}, {1, 1});
    ASSERT_TRUE(last.ok());
    ASSERT_EQ(last->size(), 1u);
    EXPECT_EQ((*last)[0].offsets[0], 64LL * (ranks - 1));
    auto everything = o.reader->ChunksOverlapping(i, {0, 0}, {64LL * ranks, 16});
    ASSERT_TRUE(everything.ok());
    EXPECT_EQ(everything->size(), static_cast<std::size_t>(ranks));
    EXPECT_FALSE(o.reader->ChunksOverlapping(i, {0}, {1}).ok());
    EXPECT_FALSE(o.reader->ChunksOverlapping(i, {64LL * ranks, 0}, {1, 1}).ok());
  }
}

TEST(Index, EveryFlippedBlockIsCaught) {
  const Manifest m = Sharded(300, 2);
  Opened clean = OpenIndex(m);
  ASSERT_TRUE(clean.reader);
  const std::size_t blocks = clean.bytes.size() / kIndexBlockBytes;
  for (std::size_t b = 0; b < blocks; ++b) {
    Opened o = OpenIndex(m, [&](std::string& bytes) { bytes[b * kIndexBlockBytes + 100] ^= 0x10; });
    Status s = o.status;
    if (o.reader) s = o.reader->ReadAll().status();
    ASSERT_EQ(s.code(), StatusCode::kCorrupt) << "block " << b;
    EXPECT_NE(s.message().find("fails its checksum"), std::string::npos) << s.message();
    EXPECT_NE(s.message().find("ckpt/index.swi"), std::string::npos);
  }
}

// Reseals block `b`, so that only the meaning is wrong.
void Reseal(std::string& bytes, std::size_t b) {
  const std::string block = SealIndexBlocks(
      std::string_view(bytes).substr(b * kIndexBlockBytes, kIndexPayloadBytes));
  bytes.replace(b * kIndexBlockBytes, kIndexBlockBytes, block);
}

// Every 3rd offset in the release and ASan builds. Under TSan (this test
// runs on one thread: nothing for TSan to find, and 150 s of CI there) every
// 31st.
#if defined(SW_TSAN)
constexpr std::size_t kDamageStride = 31;
#else
constexpr std::size_t kDamageStride = 3;
#endif

TEST(Index, MeaningfulDamageIsCorruptNotACrash) {
  const Manifest m = Sharded(100, 3);
  Opened clean = OpenIndex(m);
  ASSERT_TRUE(clean.reader);
  // Overwrite 8 bytes at every offset of the first blocks with hostile
  // values (huge, negative, zero), resealed: each open and full read must
  // either succeed with a valid manifest or fail as kCorrupt.
  const std::size_t span = std::min<std::size_t>(clean.bytes.size(), 3 * kIndexBlockBytes);
  for (std::uint64_t value : {0ull, ~0ull, 1ull << 62, 0x8000000000000000ull, 4097ull}) {
    for (std::size_t at = 0; at + 8 <= span; at += kDamageStride) {
      if (at % kIndexBlockBytes > kIndexPayloadBytes - 8) continue;
      std::string bytes = clean.bytes;
      std::memcpy(bytes.data() + at, &value, 8);
      Reseal(bytes, at / kIndexBlockBytes);
      Opened o = OpenBytes(clean.record, std::move(bytes));
      Status s = o.status;
      if (o.reader) {
        auto all = o.reader->ReadAll();
        s = all.status();
        if (all.ok()) {
          EXPECT_TRUE(Validate(*all, "x").ok());
        }
        auto part = o.reader->ChunksOverlapping(0, {64, 0}, {64, 16});
        if (!part.ok()) {
          EXPECT_EQ(part.status().code(), StatusCode::kCorrupt);
        }
      }
      if (!s.ok()) {
        ASSERT_EQ(s.code(), StatusCode::kCorrupt) << at << ": " << s.ToString();
      }
    }
  }
}

// A forged header (resealed) declares a 60 GiB items table in an index the
// commit record says is 64 GiB, of which only the first blocks hold data
// (a sparse file). Opening it fails at the first block of zeros: memory
// follows the bytes verified, not the lengths declared.
TEST(Index, DeclaredLengthsAllocateNothingBeforeTheyAreVerified) {
  const Manifest m = Sharded(4, 2);
  Manifest rec = HeaderOf(m);
  auto encoded = EncodeIndex(m, &rec.index);
  ASSERT_TRUE(encoded.ok());
  std::string bytes(encoded->view());
  rec.index.size = 64ull << 30;
  const std::uint64_t logical = rec.index.size / kIndexBlockBytes * kIndexPayloadBytes;
  auto put = [&](int k, std::uint64_t v) { std::memcpy(bytes.data() + 8 + 8 * k, &v, 8); };
  std::uint64_t items_off = 0;
  std::memcpy(&items_off, bytes.data() + 8 + 8 * 6, 8);
  const std::uint64_t items_bytes = 60ull << 30, files_off = items_off + items_bytes;
  const std::uint64_t crcs_off = files_off + rec.index.files * 24;
  put(7, items_bytes);
  put(8, files_off);
  put(9, crcs_off);
  put(5, (logical - crcs_off) / 4);
  Reseal(bytes, 0);
  const std::string* data = &bytes;
  auto r = IndexReader::Open(
      [data](std::uint64_t off, std::size_t len, char* dst) -> Status {
        // Past the real bytes, the zeros of a sparse file.
        const std::size_t have = off < data->size() ? std::min(len, data->size() - off) : 0;
        if (have) std::memcpy(dst, data->data() + off, have);
        std::memset(dst + have, 0, len - have);
        return Status::Ok();
      },
      rec, "ckpt/index.swi");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kCorrupt) << r.status().ToString();
  EXPECT_NE(r.status().message().find("fails its checksum"), std::string::npos)
      << r.status().ToString();
}

TEST(Index, DisagreeingWithTheCommitRecordIsCorrupt) {
  const Manifest m = Sharded(4, 2);
  IndexRef ref;
  auto bytes = EncodeIndex(m, &ref);
  ASSERT_TRUE(bytes.ok());
  auto open = [&](Manifest rec) {
    const std::string_view data = bytes->view();
    return IndexReader::Open(
        [data](std::uint64_t off, std::size_t len, char* dst) {
          std::memcpy(dst, data.data() + off, len);
          return Status::Ok();
        },
        rec, "p/index.swi");
  };
  Manifest rec = HeaderOf(m);
  rec.index = ref;
  ASSERT_TRUE(open(rec).ok());
  Manifest other = rec;
  other.save_id = "another";
  auto r = open(other);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("belongs to save attempt"), std::string::npos);
  other = rec;
  other.index.chunks += 1;
  EXPECT_EQ(open(other).status().code(), StatusCode::kCorrupt);
  other = rec;
  other.index.size -= 4096;
  EXPECT_EQ(open(other).status().code(), StatusCode::kCorrupt);
  other = rec;
  other.world_size = 3;
  EXPECT_EQ(open(other).status().code(), StatusCode::kCorrupt);
}

TEST(Index, CommitRecordRoundTripsThroughJson) {
  Manifest m = Sharded(3, 2);
  Manifest rec = HeaderOf(m);
  rec.format_version = 2;
  ASSERT_TRUE(EncodeIndex(m, &rec.index).ok());
  const std::string text = Serialize(rec, kManifestKind);
  EXPECT_EQ(text.find("\"files\":["), std::string::npos);
  EXPECT_EQ(text.find("\"chunks\":["), std::string::npos);
  auto back = Parse(text, kManifestKind, "m.json");
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->format_version, 2);
  EXPECT_EQ(back->index.size, rec.index.size);
  EXPECT_EQ(back->index.chunks, rec.index.chunks);
  EXPECT_EQ(back->TotalBytes(), m.TotalBytes());
  EXPECT_TRUE(back->items.empty());
  // A format-2 record with a files list, or without its index, is refused.
  std::string with_files = text;
  with_files.insert(with_files.find("\"index\""), "\"files\":[],");
  with_files = Seal(with_files.substr(0, with_files.find(",\"self_crc32c\"")) + "}");
  auto bad = Parse(with_files, kManifestKind, "m.json");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("not part of format 2"), std::string::npos);
  // A fragment never claims format 2.
  std::string frag = Serialize(rec, kFragmentKind);
  EXPECT_FALSE(Parse(frag, kFragmentKind, "f.json").ok());
}

}  // namespace
}  // namespace shardwise::format
