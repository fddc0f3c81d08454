// The first 4 KiB of every shard file: identifies the file, the rank and the
// save attempt that wrote it, so a reader never mixes files of two attempts.
// Layout (little-endian), rest of the 4 KiB zero:
//   0  char[8]  magic "SWSHARD1"
//   8  u32      format version (1)
//   12 i32      rank
//   16 u64      file size
//   24 u64      checksum block bytes
//   32 char[64] save id, NUL-padded
//   96 u32      CRC32C of bytes 0..95
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "shardwise/status.h"

namespace shardwise::format {

inline constexpr std::size_t kShardHeaderBytes = 4096;
inline constexpr std::size_t kMaxSaveIdBytes = 64;

struct ShardHeader {
  std::int32_t rank = 0;
  std::uint64_t file_size = 0;
  std::uint64_t checksum_block = 0;
  std::string save_id;
};

// Writes the header into `out` (kShardHeaderBytes bytes).
void EncodeShardHeader(const ShardHeader& h, std::byte* out);
// Decodes and checks magic, version and CRC.
Result<ShardHeader> DecodeShardHeader(const std::byte* in, const std::string& path);

}  // namespace shardwise::format
