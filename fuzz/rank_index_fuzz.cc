// libFuzzer target: the binary rank index a coordinator decodes from what a
// collective gathered (format/rank_index.h).
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "format/rank_index.h"

using namespace shardwise;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view bytes(reinterpret_cast<const char*>(data), size);
  auto m = format::DecodeRankIndex(bytes, "fuzz (rank 0's index)");
  if (m.ok()) {
    // An index that decodes encodes back to the same bytes.
    if (format::EncodeRankIndex(*m) != bytes) __builtin_trap();
  }
  return 0;
}
