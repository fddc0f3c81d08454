// Where a chunk lies inside its tensor and how many bytes it holds: the one
// rule that both the writer (engine::ValidateWriteItem, before anything is
// written) and the manifest validator (for what was read) apply. Each caller
// words its own messages, for its own input (WriteItem fields or manifest
// JSON paths), so the rule reports what failed and where, not a message.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <vector>

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

// A box of a tensor: where it starts and how far it reaches per dimension.
struct Box {
  std::span<const std::int64_t> offsets;
  std::span<const std::int64_t> sizes;
};

struct Tiling {
  enum class Problem : std::uint8_t {
    kNone,
    kOverlap,  // chunks `first` and `second` share elements inside the box
    kGap,      // some element of the box lies in no chunk
    kTooIrregular,  // not decided: the chunks are neither a grid nor few
                    // enough to compare (no writer lays chunks out so)
  };
  Problem problem = Problem::kNone;
  std::size_t first = 0;
  std::size_t second = 0;
  // What no reader or commit accepts: chunks that overlap, or a layout the
  // check could not decide (a gap is a problem only where a whole tensor is
  // read).
  bool Refused() const {
    return problem == Problem::kOverlap || problem == Problem::kTooIrregular;
  }
};

// Whether the chunks tile `box` exactly: their parts inside it do not
// overlap and leave no element out. Chunks must already fit their tensor
// (FitChunk) and have the box's rank. Row and column shards listed in order
// cost one pass, without allocating. Grid layouts (per-dimension splits:
// the cells the chunks' bounds cut the box into number at most 4n + 64)
// cost O(n log n), the cells being marked, and so does any layout of at most
// two dimensions (a sweep that keeps the active chunks in order). Other
// layouts of three or more dimensions are swept along the dimension with
// the most distinct starts, up to 64 n + 2^24 comparisons of chunks; past
// that, kTooIrregular (chunks laid out to stay active together would
// otherwise cost O(n^2)).
// Chunk c of n is chunk(c): read where the chunks are held, no copy made.
Tiling CheckTiling(std::size_t n, const std::function<Box(std::size_t)>& chunk, Box box);

}  // namespace shardwise::format
