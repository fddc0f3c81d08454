// Shared by the files that implement format/manifest.h (manifest.cc writes,
// manifest_parse.cc reads): the self-checksum trailer's spelling. Not for
// other users.
#pragma once

#include <cstddef>
#include <string_view>

namespace shardwise::format::internal {

// A sealed manifest ends with ,"self_crc32c":"xxxxxxxx"}\n
inline constexpr std::string_view kTrailerKey = ",\"self_crc32c\":\"";
inline constexpr std::size_t kTrailerLen = kTrailerKey.size() + 8 + 3;  // hex "}\n

}  // namespace shardwise::format::internal
