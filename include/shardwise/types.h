// The data model shared by the writer, the reader and the repository: what a
// caller hands in (WriteItem) and what a checkpoint records (Manifest).
// The on-disk form is specified in docs/format.md.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "shardwise/status.h"

namespace shardwise {

enum class DType : std::uint8_t {
  kBool, kUInt8, kInt8, kInt16, kInt32, kInt64, kUInt16, kUInt32, kUInt64,
  kFloat16, kBFloat16, kFloat32, kFloat64, kComplex64, kComplex128,
  kFloat8E4M3FN, kFloat8E5M2,
};

// "float32", "bfloat16"... (torch's spelling without the "torch." prefix).
std::string_view DTypeName(DType dtype);
Result<DType> ParseDType(std::string_view name);
std::uint32_t DTypeSize(DType dtype);

// kTensor: an N-d array chunk. kBytes: an opaque byte string (dtype uint8,
// shape [n]) such as a serialized non-tensor object from DCP.
enum class ItemKind : std::uint8_t { kTensor, kBytes };
std::string_view ItemKindName(ItemKind kind);

// One chunk of one item, handed to a writer. The memory must stay valid and
// unchanged until the write returns.
struct WriteItem {
  std::string name;  // fully qualified name, unique per chunk position
  ItemKind kind = ItemKind::kTensor;
  DType dtype = DType::kUInt8;
  std::vector<std::int64_t> global_shape;
  std::vector<std::int64_t> chunk_offsets;  // empty: all zeros
  std::vector<std::int64_t> chunk_sizes;    // empty: the global shape
  const void* data = nullptr;               // row-major chunk bytes
  std::uint64_t nbytes = 0;
};

// Where a saved chunk lives and how to check it.
struct ChunkRecord {
  std::vector<std::int64_t> offsets;
  std::vector<std::int64_t> sizes;
  std::uint32_t file = 0;      // index into Manifest::files
  std::uint64_t offset = 0;    // byte offset in the file, 4 KiB-aligned
  std::uint64_t length = 0;    // bytes
  std::vector<std::uint32_t> crc32c;  // one per checksum block
};

struct ItemRecord {
  std::string name;
  ItemKind kind = ItemKind::kTensor;
  DType dtype = DType::kUInt8;
  std::vector<std::int64_t> shape;  // global shape
  std::vector<ChunkRecord> chunks;
};

struct FileRecord {
  std::string name;  // a plain file name inside the checkpoint directory
  std::int32_t rank = 0;
  std::uint64_t size = 0;
  std::string backend;  // "uring" or "threads", as written
  bool direct_io = false;
};

// Format 2 keeps files, items and chunks in a binary index next to
// manifest.json (docs/format.md, "Format 2"); manifest.json then records
// only this summary of it.
struct IndexRef {
  std::uint64_t size = 0;        // bytes of the index file
  std::uint64_t files = 0, items = 0, chunks = 0;
  std::uint64_t file_bytes = 0;  // sum of the shard files' sizes
};

// One checkpoint's commit record (manifest.json), or one rank's fragment.
// format_version 1: files and items are here (format-1 manifests,
// fragments, rank indexes, and every manifest a reader hands out in full).
// format_version 2: a commit record as read from disk, whose files and items
// are empty and live in the index that `index` describes.
struct Manifest {
  static constexpr int kLatestFormat = 2;  // what commits write by default
  int format_version = 1;
  std::string name;           // checkpoint directory name
  std::int64_t step = -1;     // -1 when the caller gave none
  std::string save_id;        // the attempt that wrote it
  std::int32_t world_size = 1;
  std::int32_t rank = -1;     // fragments only: the reporting rank
  double created_unix = 0;
  std::uint64_t checksum_block = 1 << 20;
  std::vector<FileRecord> files;
  std::vector<ItemRecord> items;
  std::string user_json = "{}";  // caller metadata, a JSON object
  std::string dcp_json;          // DCP planner data (JSON) or empty
  IndexRef index;                // format 2 only

  std::uint64_t TotalBytes() const;
  const ItemRecord* FindItem(std::string_view name) const;
};

}  // namespace shardwise
