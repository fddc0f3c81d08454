// A power-loss model for tests, inside the os/ seam. With
// SHARDWISE_POWER_LOSS=1 in the environment (or SetPowerLossForTesting), the
// seam keeps a journal of what is not durable yet:
//   - file data: a file's size since its last fsync (data written through any
//     path, io_uring included, counts only once the file is fsynced);
//   - directory entries: creations, renames (including over an existing
//     file), exchanges and removals in a directory since that directory's
//     last fsync.
// At a crash point (SHARDWISE_CRASH_AT) the process then "loses power"
// instead of just dying: every file is truncated to its durable size, every
// non-durable directory operation is undone (newest first), and only then is
// the process killed. What is left is what a machine could show after a power
// cut at that moment, under the usual POSIX rules (data and entries are
// durable after fsync of the file and of its directory). src/repo/
// power_loss_test.cc shows that a loss at each step of the commit protocol
// leaves either the old state or the new one.
#pragma once

#include <string>

namespace shardwise::os::power_loss {

bool Active();
void SetActiveForTesting(bool on);

// Hooks, called by the os/ wrappers (no-ops unless Active()).
void BeforeOpen(const std::string& path, int flags, bool* existed);
void AfterOpen(const std::string& path, int flags, bool existed, int fd);
void AfterFsync(int fd, const std::string& path);
// `backup` carries what is needed to undo (opaque to the caller).
void BeforeRename(const std::string& from, const std::string& to, std::string* backup);
void AfterRename(const std::string& from, const std::string& to, const std::string& backup);
void AfterExchange(const std::string& a, const std::string& b);
void AfterMkdir(const std::string& path);
void BeforeUnlink(const std::string& path, bool is_dir, std::string* backup);
void AfterUnlink(const std::string& path, bool is_dir, const std::string& backup);

// Reverts everything not durable (see above). Called at a crash point.
void LoseUnsynced();

}  // namespace shardwise::os::power_loss
