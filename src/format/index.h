// The format-2 index (docs/format.md, "Format 2"): files, items and chunk
// extents in one binary file next to manifest.json, laid out so that a
// reader that needs N items reads O(N) bytes of it plus a small fixed part.
//
//   logical stream: header | items table | per item: fence, chunk records |
//                   file records | chunk checksums
//   on disk: the stream cut into 4092-byte pieces, each followed by its
//            CRC32C (4096-byte blocks, each verifiable alone)
//
// Chunk records have a fixed size per item and are sorted by the item's
// sort dimension, so a box lookup is a bisection of the item's fence (one
// key per 64 records) and a read of the records it points at.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "format/chunk_source.h"
#include "shardwise/status.h"
#include "shardwise/types.h"

namespace shardwise::format {

inline constexpr std::size_t kIndexBlockBytes = 4096;
inline constexpr std::size_t kIndexPayloadBytes = kIndexBlockBytes - 4;
inline constexpr std::size_t kIndexFenceStride = 64;
inline constexpr std::uint64_t kMaxIndexBytes = 1ull << 42;  // 4 TiB

// The on-disk bytes of an index, in page-aligned memory from the kernel:
// zeroed, faulted in at once, and ready to be written with O_DIRECT as it is.
class IndexImage {
 public:
  IndexImage() = default;
  static Result<IndexImage> Zeroed(std::size_t bytes);  // a multiple of 4096
  IndexImage(IndexImage&& o) noexcept;
  IndexImage& operator=(IndexImage&& o) noexcept;
  ~IndexImage();

  char* data() const { return data_; }
  std::size_t size() const { return size_; }
  std::string_view view() const { return {data_, size_}; }

 private:
  char* data_ = nullptr;
  std::size_t size_ = 0;
};

// Encodes the index of a complete manifest `m` whose shard files carry the
// names the writer gives them (rank-NNNNN.shard, rank-NNNNN.partP.shard).
// Returns the file's bytes (a multiple of 4096) and fills *ref with what
// manifest.json records about it.
Result<IndexImage> EncodeIndex(const Manifest& m, IndexRef* ref);
// The same for files and items held elsewhere (the gathered commit's merge),
// with world_size, checksum_block and save_id from `header`. Items are
// planned and written in parallel.
Result<IndexImage> EncodeIndex(const ChunkSource& src, const Manifest& header, IndexRef* ref);

// The on-disk form of a logical stream: 4092-byte pieces (the last padded
// with zeros), each followed by its CRC32C. EncodeIndex uses it; tests and
// the fuzz target use it to build hostile indexes that pass the checksums.
std::string SealIndexBlocks(std::string_view logical);

// Reads `len` bytes of the index file at byte `offset` into `dst`.
using IndexReadFn = std::function<Status(std::uint64_t offset, std::size_t len, char* dst)>;

// Reads an index a piece at a time. Every block read is checked against its
// CRC32C, and every record against the rules of docs/format.md, before it
// is used. Chunks, ChunksOverlapping and File may run on several threads at
// once (their reads too; read_fn must allow it, as pread does); ReadAll
// may not run beside anything.
class IndexReader {
 public:
  // Reads the header and the items table, and checks them against the
  // commit record `commit` (counts, save id, world size, block size).
  static Result<std::unique_ptr<IndexReader>> Open(IndexReadFn read, const Manifest& commit,
                                                   const std::string& path);
  ~IndexReader();

  // Every item, without chunks, in the order the index stores them.
  const std::vector<ItemRecord>& items() const;
  std::size_t Find(std::string_view name) const;  // items().size() if absent

  // All chunks of item i, in index order.
  Result<std::vector<ChunkRecord>> Chunks(std::size_t i);
  // The chunks of item i that overlap the box [offsets, offsets + sizes)
  // of its global shape, in index order.
  Result<std::vector<ChunkRecord>> ChunksOverlapping(std::size_t i,
                                                     const std::vector<std::int64_t>& offsets,
                                                     const std::vector<std::int64_t>& sizes);
  Result<FileRecord> File(std::uint32_t f);

  // The whole checkpoint as a format-1 style manifest (files and chunks
  // filled in), checked by format::Validate: for tools that need it all.
  Result<Manifest> ReadAll();

  std::uint64_t bytes_read() const;  // index bytes read from the file so far

 private:
  struct Impl;
  explicit IndexReader(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace shardwise::format
