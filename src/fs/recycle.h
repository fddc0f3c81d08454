// ROOT/.recycle: the files of checkpoints that retention removed, kept for
// later saves to overwrite in place.
//
// On tmpfs (a local tier on /dev/shm) a write into a new file allocates and
// zeroes a page per 4 KiB, and that costs more than the copy itself; a file
// overwritten in place keeps its pages. So where Options::recycle_files is
// on, removing a checkpoint moves its shard files here, and a save or an
// install renames one back into its new checkpoint and overwrites it,
// zeroing whatever it does not write (docs/format.md, "Recycled files").
// The bin holds at most the shard files of the last checkpoint removed.
//
// Recycling only saves time, so it never fails an operation: a file that
// cannot be binned is left for the caller to remove, and a save that finds
// nothing it may take creates a new file. It is refused wherever it could
// change bytes someone else reads:
// - on filesystems where the kernel does not see every open of a file
//   (anything but local ones: NFS and Lustre clients on other nodes);
// - for a file someone has open or mapped, or with other hard links;
// - for a bin that is not this user's own directory (a symbolic link to
//   one included).
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "os/posix.h"

namespace shardwise::fs {

// Whether ROOT's filesystem is a local one (tmpfs, ext4, xfs, btrfs, f2f2,
// ramfs), the only kind recycling runs on.
bool RecyclingSupported(const std::string& root);

// Moves the shard files of `dir` (a removed checkpoint, already hidden
// under ROOT, its rename durable) into ROOT/.recycle, after unlinking what
// the bin held. Best effort: whatever is not moved stays in `dir`.
void RecycleFiles(const std::string& root, const std::string& dir);

// A shard file from ROOT/.recycle, renamed to `path` (which must not exist)
// and opened with `flags` (O_WRONLY, maybe O_DIRECT; no O_CREAT): the
// smallest one of at least `bytes`, else the largest. Nothing when `path`
// is not a shard file name or the bin has no file that may be taken; a
// file renamed but then refused is unlinked.
std::optional<os::File> TakeRecycled(const std::string& root, const std::string& path,
                                     std::uint64_t bytes, int flags);

}  // namespace shardwise::fs
