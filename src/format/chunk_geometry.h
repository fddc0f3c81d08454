// Where a chunk lies inside its tensor and how many bytes it holds: the one
// rule that both the writer (engine::ValidateWriteItem, before anything is
// written) and the manifest validator (for what was read) apply. Each caller
// words its own messages, for its own input (WriteItem fields or manifest
// JSON paths), so the rule reports what failed and where, not a message.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

namespace shardwise::format {

struct ChunkFit {
  enum class Problem : std::uint8_t {
    kNone,
    kOffsetsRank,    // offsets do not have one entry per dimension of the shape
    kSizesRank,      // sizes do not have one entry per dimension of the shape
    kOutside,        // in dimension `dim`: a negative value, or offset + size
                     // beyond the shape
    kVolumeOverflow, // the chunk's element count overflows 64 bits
    kBytesOverflow,  // its element count times the element size overflows
  };
  Problem problem = Problem::kNone;
  std::size_t dim = 0;      // kOutside: the first dimension that fails
  std::uint64_t bytes = 0;  // kNone: the chunk's size in bytes
};

// Checks, in this order: the ranks of `offsets` and `sizes`, that every
// dimension lies inside `shape` (first failing dimension reported), then
// that the element count and the byte size fit 64 bits.
ChunkFit FitChunk(std::span<const std::int64_t> shape, std::span<const std::int64_t> offsets,
                  std::span<const std::int64_t> sizes, std::uint32_t element_size);

}  // namespace shardwise::format
