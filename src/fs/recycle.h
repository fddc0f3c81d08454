// ROOT/.recycle: the files of checkpoints that retention removed, kept for
// later saves to overwrite in place.
//
// On tmpfs (a local tier on /dev/shm) a write into a new file allocates and
// zeroes a page per 4 KiB, and that costs more than the copy itself; a file
// overwritten in place keeps its pages. So where Options::recycle_files is
// on, removing a checkpoint moves its files here, and a save or an install
// renames one back into its new checkpoint and overwrites it, zeroing
// whatever it does not write (docs/format.md, "Recycled files"). The bin
// holds at most the files of the last checkpoint removed.
#pragma once

#include <cstdint>
#include <string>

#include "shardwise/status.h"

namespace shardwise::fs {

// Moves the regular files of `dir` (a removed checkpoint, already hidden
// under ROOT) into ROOT/.recycle, after unlinking what the bin held.
Status RecycleFiles(const std::string& root, const std::string& dir);

// Renames a file from ROOT/.recycle to `path` (which must not exist): the
// smallest one of at least `bytes`, else the largest. False when the bin
// is empty or missing.
Result<bool> TakeRecycled(const std::string& root, const std::string& path, std::uint64_t bytes);

}  // namespace shardwise::fs
