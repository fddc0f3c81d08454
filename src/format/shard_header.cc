#include "format/shard_header.h"

#include <cstring>

#include "format/crc32c.h"

namespace shardwise::format {
namespace {
constexpr char kMagic[8] = {'S', 'W', 'S', 'H', 'A', 'R', 'D', '1'};
constexpr std::uint32_t kVersion = 1;
}  // namespace

void EncodeShardHeader(const ShardHeader& h, std::byte* out) {
  std::memset(out, 0, kShardHeaderBytes);
  std::memcpy(out, kMagic, 8);
  std::memcpy(out + 8, &kVersion, 4);
  std::memcpy(out + 12, &h.rank, 4);
  std::memcpy(out + 16, &h.file_size, 8);
  std::memcpy(out + 24, &h.checksum_block, 8);
  std::memcpy(out + 32, h.save_id.data(), std::min(h.save_id.size(), kMaxSaveIdBytes));
  std::uint32_t crc = Crc32c(out, 96);
  std::memcpy(out + 96, &crc, 4);
}

Result<ShardHeader> DecodeShardHeader(const std::byte* in, const std::string& path) {
  if (std::memcmp(in, kMagic, 8) != 0)
    return Corrupt(path + ": not a shardwise shard file (bad magic)", path);
  std::uint32_t crc, version;
  std::memcpy(&crc, in + 96, 4);
  if (Crc32c(in, 96) != crc)
    return Corrupt(path + ": shard header checksum mismatch", path);
  for (std::size_t i = 100; i < kShardHeaderBytes; ++i)
    if (in[i] != std::byte{0})
      return Corrupt(path + ": shard header has non-zero bytes after its checksum (offset " +
                         std::to_string(i) + ")",
                     path);
  std::memcpy(&version, in + 8, 4);
  if (version != kVersion)
    return Corrupt(path + ": shard format version " + std::to_string(version) +
                       " is not supported",
                   path);
  ShardHeader h;
  std::memcpy(&h.rank, in + 12, 4);
  std::memcpy(&h.file_size, in + 16, 8);
  std::memcpy(&h.checksum_block, in + 24, 8);
  const char* id = reinterpret_cast<const char*>(in + 32);
  h.save_id.assign(id, strnlen(id, kMaxSaveIdBytes));
  return h;
}

}  // namespace shardwise::format
