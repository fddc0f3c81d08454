// The process-wide count behind shardwise::CopiedStateBytes(): every copy
// of state bytes by the CPU (staging, I/O buffers) adds to it.
#pragma once

#include <cstdint>

namespace shardwise::engine {

void AddCopiedStateBytes(std::uint64_t n);

}  // namespace shardwise::engine
