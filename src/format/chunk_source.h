// Chunks as the validator and the format-2 index encoder see them: items
// with their chunks reachable by number, whatever holds them. A Manifest
// holds each chunk as three small heap vectors; a decoded rank index
// (RankColumns) and the merge of many (the gathered commit) hold them in flat
// arrays. One validator and one encoder serve all of them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "shardwise/types.h"

namespace shardwise::format {

// One item's own fields, borrowed from its holder.
struct ItemView {
  std::string_view name;
  ItemKind kind = ItemKind::kTensor;
  DType dtype = DType::kUInt8;
  std::span<const std::int64_t> shape;
};

inline ItemView ViewOf(const ItemRecord& it) { return {it.name, it.kind, it.dtype, it.shape}; }

// One chunk, borrowed from its holder.
struct ChunkView {
  std::span<const std::int64_t> offsets;
  std::span<const std::int64_t> sizes;
  std::uint32_t file = 0;  // index into the source's files
  std::uint64_t offset = 0;
  std::uint64_t length = 0;
  std::span<const std::uint32_t> crc32c;
};

inline ChunkView ViewOf(const ChunkRecord& c) {
  return {c.offsets, c.sizes, c.file, c.offset, c.length, c.crc32c};
}

class ChunkSource {
 public:
  virtual ~ChunkSource() = default;
  virtual const std::vector<FileRecord>& Files() const = 0;
  virtual std::size_t ItemCount() const = 0;
  virtual ItemView Item(std::size_t i) const = 0;
  virtual std::size_t ChunkCount(std::size_t i) const = 0;
  virtual ChunkView Chunk(std::size_t i, std::size_t k) const = 0;
};

// A Manifest's files and items.
class ManifestSource final : public ChunkSource {
 public:
  explicit ManifestSource(const Manifest& m) : m_(m) {}
  const std::vector<FileRecord>& Files() const override { return m_.files; }
  std::size_t ItemCount() const override { return m_.items.size(); }
  ItemView Item(std::size_t i) const override { return ViewOf(m_.items[i]); }
  std::size_t ChunkCount(std::size_t i) const override { return m_.items[i].chunks.size(); }
  ChunkView Chunk(std::size_t i, std::size_t k) const override {
    return ViewOf(m_.items[i].chunks[k]);
  }

 private:
  const Manifest& m_;
};

// Every item of `s` with its chunks copied out, as a Manifest holds them.
std::vector<ItemRecord> Materialize(const ChunkSource& s);

}  // namespace shardwise::format
