// One rank's shard index in binary: what a rank sends the coordinator
// through a collective (DCP gathers it in WriteResult.storage_data), in
// place of a fragment file. The same content as a fragment (docs/format.md,
// "Rank index"): the save it belongs to, the rank's files, and every chunk
// it wrote with its extent and block checksums.
//
//   "SWRX" | u8 version (1) | fields as varints, zigzag for signed values,
//   strings as varint length + bytes, f64 as 8 bytes little-endian |
//   u32 CRC32C (little-endian) of everything before it
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "format/chunk_source.h"
#include "shardwise/status.h"
#include "shardwise/types.h"

namespace shardwise::format {

// A decoded rank index with its chunks in flat arrays (no allocation per
// item or chunk): what the gathered commit merges, thousands at a time. Item
// names point into the decoded bytes, which must outlive it.
class RankColumns final : public ChunkSource {
 public:
  struct Entry {  // one item: its fields and its chunks [first, first + count)
    std::string_view name;
    ItemKind kind = ItemKind::kTensor;
    DType dtype = DType::kUInt8;
    std::uint32_t ndim = 0;
    std::uint64_t shape_at = 0;  // its shape starts at dims[shape_at]
    std::size_t first = 0, count = 0;
  };
  struct Extent {  // one chunk; its offsets then sizes start at dims[dims_at]
    std::uint64_t dims_at = 0, offset = 0, length = 0, crc_first = 0;
    std::uint32_t file = 0, crcs = 0;
  };

  Manifest header;  // the fragment's fields and files; no items
  std::vector<Entry> entries;
  std::vector<Extent> extents;
  std::vector<std::int64_t> dims;
  std::vector<std::uint32_t> crcs;

  const std::vector<FileRecord>& Files() const override { return header.files; }
  std::size_t ItemCount() const override { return entries.size(); }
  ItemView Item(std::size_t i) const override {
    const Entry& e = entries[i];
    return {e.name, e.kind, e.dtype, {dims.data() + e.shape_at, e.ndim}};
  }
  std::size_t ChunkCount(std::size_t i) const override { return entries[i].count; }
  ChunkView Chunk(std::size_t i, std::size_t k) const override {
    const Extent& e = extents[entries[i].first + k];
    const std::size_t nd = entries[i].ndim;
    return {{dims.data() + e.dims_at, nd},
            {dims.data() + e.dims_at + nd, nd},
            e.file,
            e.offset,
            e.length,
            {crcs.data() + e.crc_first, e.crcs}};
  }
};

// Decodes and validates a rank index (as DecodeRankIndex) into columns.
Result<RankColumns> DecodeRankColumns(std::string_view bytes, const std::string& where);

// Encodes a fragment (Manifest with rank >= 0).
std::string EncodeRankIndex(const Manifest& fragment);

// Decodes and validates what EncodeRankIndex wrote; anything else (a
// truncated or altered index, absurd counts, trailing bytes) is kCorrupt
// naming `where`. The result passes format::Validate.
Result<Manifest> DecodeRankIndex(std::string_view bytes, const std::string& where);

}  // namespace shardwise::format
