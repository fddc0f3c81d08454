#include "format/chunk_geometry.h"

namespace shardwise::format {

ChunkFit FitChunk(std::span<const std::int64_t> shape, std::span<const std::int64_t> offsets,
                  std::span<const std::int64_t> sizes, std::uint32_t element_size) {
  using P = ChunkFit::Problem;
  if (offsets.size() != shape.size()) return {P::kOffsetsRank};
  if (sizes.size() != shape.size()) return {P::kSizesRank};
  // Bounds first, for every dimension: a chunk outside its tensor is the
  // more telling error when its sizes are absurd as well.
  for (std::size_t d = 0; d < shape.size(); ++d) {
    std::int64_t end;
    if (shape[d] < 0 || offsets[d] < 0 || sizes[d] < 0 ||
        __builtin_add_overflow(offsets[d], sizes[d], &end) || end > shape[d])
      return {P::kOutside, d};
  }
  std::uint64_t volume = 1;
  for (std::int64_t s : sizes)
    if (__builtin_mul_overflow(volume, static_cast<std::uint64_t>(s), &volume))
      return {P::kVolumeOverflow};
  std::uint64_t bytes;
  if (__builtin_mul_overflow(volume, static_cast<std::uint64_t>(element_size), &bytes))
    return {P::kBytesOverflow};
  return {P::kNone, 0, bytes};
}

}  // namespace shardwise::format
