// CRC32C (Castagnoli), the checksum of every extent block and of the manifest.
// Uses SSE4.2 with three interleaved streams when the CPU has it, a
// slicing-by-8 table otherwise. Results are identical on both paths.
#pragma once

#include <cstddef>
#include <cstdint>

namespace shardwise::format {

// CRC32C of `n` bytes at `data`, continuing from `crc` (0 to start).
std::uint32_t Crc32c(const void* data, std::size_t n, std::uint32_t crc = 0);

// Copies `n` bytes from `src` to `dst` and returns their CRC32C, in one pass
// over the data. The buffers must not overlap.
std::uint32_t Crc32cCopy(void* dst, const void* src, std::size_t n,
                         std::uint32_t crc = 0);

// True when the SSE4.2 path is in use.
bool Crc32cHardware();

// Forces the portable path (tests compare both). Not thread-safe; call before
// any concurrent use.
void Crc32cForcePortable(bool portable);

}  // namespace shardwise::format
