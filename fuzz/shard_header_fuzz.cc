// libFuzzer target: the 4 KiB shard header decoder.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "format/shard_header.h"

using namespace shardwise;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::vector<std::byte> block(format::kShardHeaderBytes, std::byte{0});
  std::memcpy(block.data(), data, size < block.size() ? size : block.size());
  auto h = format::DecodeShardHeader(block.data(), "fuzz/rank-00000.shard");
  if (h.ok()) {
    // A header that decodes must encode back to the same bytes.
    std::vector<std::byte> again(format::kShardHeaderBytes);
    format::EncodeShardHeader(*h, again.data());
    auto h2 = format::DecodeShardHeader(again.data(), "fuzz/again");
    if (!h2.ok() || h2->rank != h->rank || h2->file_size != h->file_size ||
        h2->checksum_block != h->checksum_block || h2->save_id != h->save_id)
      __builtin_trap();
  }
  return 0;
}
