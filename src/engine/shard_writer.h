// Writes one rank's items into one shard file: plans 4 KiB-aligned extents,
// cuts them into I/O units (small items share a unit), fills each unit with
// a fused copy+CRC32C pass and writes the units in parallel through the
// backend, then fsyncs. See docs/format.md for the layout.
#pragma once

#include <span>
#include <string>
#include <vector>

#include "io/backend.h"
#include "shardwise/options.h"
#include "shardwise/types.h"

namespace shardwise::engine {

// What a rank reports after writing: its file and its chunks, as manifest
// records (file indices are local: 0 is this rank's file).
struct ShardIndex {
  FileRecord file;
  std::vector<ItemRecord> items;  // one chunk each
  double seconds = 0;
};

// Checks one item before anything is written: name, shape, bounds, size.
Status ValidateWriteItem(const WriteItem& item);

// Plans and writes `items` into a new file at `path` (which must not
// exist). Returns after the data and the file size are durable.
Result<ShardIndex> WriteShard(const std::string& path, std::int32_t rank,
                              const std::string& save_id,
                              std::span<const WriteItem> items,
                              const Options& options, io::IoBackend& backend,
                              bool direct_io);

}  // namespace shardwise::engine
