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

#include "shardwise/status.h"
#include "shardwise/types.h"

namespace shardwise::format {

// Encodes a fragment (Manifest with rank >= 0).
std::string EncodeRankIndex(const Manifest& fragment);

// Decodes and validates what EncodeRankIndex wrote; anything else (a
// truncated or altered index, absurd counts, trailing bytes) is kCorrupt
// naming `where`. The result passes format::Validate.
Result<Manifest> DecodeRankIndex(std::string_view bytes, const std::string& where);

}  // namespace shardwise::format
