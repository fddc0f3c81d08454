// The merge of every rank's index into one checkpoint's files and items
// (docs/format.md, "Commit protocol", step 3): files in rank order, items in
// the order they first appear, each item's chunks in rank order, gathered
// into one contiguous run of columns per item so that the passes after it
// (checks, the format-2 encoder) read memory in order.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "format/chunk_source.h"
#include "shardwise/status.h"
#include "shardwise/types.h"

namespace shardwise::format {

// Rank r's report: its fragment's fields and files, and its chunks. Each
// part has passed ValidateSource on its own.
struct RankPart {
  const Manifest* header = nullptr;
  const ChunkSource* chunks = nullptr;
  std::string where;  // names the part in errors
};

class MergedRanks final : public ChunkSource {
 public:
  const std::vector<FileRecord>& Files() const override { return files_; }
  std::size_t ItemCount() const override { return items_.size(); }
  ItemView Item(std::size_t i) const override { return ViewOf(items_[i].fields); }
  std::size_t ChunkCount(std::size_t i) const override { return items_[i].n; }
  ChunkView Chunk(std::size_t i, std::size_t k) const override {
    const Merged& m = items_[i];
    const Extent& e = m.extents[k];
    const std::size_t nd = m.fields.shape.size();
    return {{m.dims.get() + 2 * nd * k, nd},
            {m.dims.get() + 2 * nd * k + nd, nd},
            e.file,
            e.offset,
            e.length,
            {m.crcs.get() + e.crc_first, e.crcs}};
  }
  std::uint64_t checksum_block() const { return checksum_block_; }

 private:
  friend Result<MergedRanks> MergeRanks(std::span<const RankPart>, const Manifest&,
                                        const std::string&);
  struct Extent {  // trivial: the arrays are filled once, never zeroed first
    std::uint64_t offset, length, crc_first;
    std::uint32_t file, crcs;
  };
  struct Merged {
    ItemRecord fields;  // no chunks
    std::size_t n = 0;  // chunks
    std::unique_ptr<Extent[]> extents;       // per chunk
    std::unique_ptr<std::int64_t[]> dims;    // per chunk: offsets, then sizes
    std::unique_ptr<std::uint32_t[]> crcs;
  };
  std::vector<FileRecord> files_;
  std::vector<Merged> items_;
  std::uint64_t checksum_block_ = 0;
};

// Merges parts[r] (rank r's) for the save `spec` (name, save_id,
// world_size). Checks what no single part can: every part belongs to this
// save and rank, ranks agree on the checksum block and on each item's kind,
// dtype and shape, file names are distinct, and no two chunks of an item
// start at the same offsets. Errors are kCorrupt naming the part, or `path`.
Result<MergedRanks> MergeRanks(std::span<const RankPart> parts, const Manifest& spec,
                               const std::string& path);

}  // namespace shardwise::format
