// A synthetic rank state shaped like a transformer layer stack (large
// projection matrices, small biases and norms), sharded along dim 0 across
// ranks. Used by `shardwise bench`, the tests and the example.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "shardwise/types.h"

namespace shardwise::cli {

struct SyntheticState {
  std::vector<WriteItem> items;                      // point into storage
  std::vector<std::unique_ptr<std::byte[]>> storage;  // one per item
  std::uint64_t bytes = 0;
};

// About target_bytes of bf16 tensors for `rank` of `world_size`, filled with
// a pseudo-random pattern derived from seed and rank.
SyntheticState MakeTransformerState(std::uint64_t target_bytes, int rank, int world_size,
                                    std::uint64_t seed);

// Fills n bytes with the deterministic pattern of (seed, stream).
void FillPattern(std::byte* p, std::uint64_t n, std::uint64_t seed, std::uint64_t stream);

}  // namespace shardwise::cli
