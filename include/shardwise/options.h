// Every tunable of shardwise, with its default, in one place. FromEnv() reads
// the SHARDWISE_* variables documented in docs/cpp-api.md.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "shardwise/status.h"

namespace shardwise {

enum class IoBackendKind { kAuto, kUring, kThreads };
enum class DirectIoMode { kAuto, kOn, kOff };
enum class LayoutMode { kAuto, kOff };
enum class ExportMode { kOff, kFsxTask, kHsm };

std::string_view IoBackendKindName(IoBackendKind kind);
Result<IoBackendKind> ParseIoBackendKind(std::string_view text);

struct Options {
  // I/O engine. kAuto tries io_uring and falls back to the thread pool when
  // io_uring cannot be set up (old kernel, seccomp profile). SHARDWISE_IO_BACKEND
  IoBackendKind io_backend = IoBackendKind::kAuto;
  // I/Os in flight per rank (io_uring queue depth, or pool threads).
  // SHARDWISE_QUEUE_DEPTH
  int queue_depth = 8;
  // Threads per rank for copies, checksums and I/O submission (staging
  // copies, the checksum pass, io_uring's fill and consume work). 0: the
  // CPUs this process may use divided by the ranks on this node
  // (LOCAL_WORLD_SIZE, as torchrun sets it). SHARDWISE_THREADS
  int threads = 0;
  // Size of one write or read. A multiple of checksum_block_bytes and of
  // 4 KiB. SHARDWISE_IO_UNIT
  std::uint64_t io_unit_bytes = 8ull << 20;
  // Every extent is checksummed in blocks of this size, so a slice of a saved
  // tensor is verified by reading only the blocks it touches.
  // SHARDWISE_CHECKSUM_BLOCK
  std::uint64_t checksum_block_bytes = 1ull << 20;
  // O_DIRECT: kAuto probes the directory and uses it where it works.
  // SHARDWISE_DIRECT_IO=auto|on|off
  DirectIoMode direct_io = DirectIoMode::kAuto;
  // How long the coordinator waits for every rank's fragment.
  // SHARDWISE_COMMIT_TIMEOUT_S
  double commit_timeout_s = 1800;
  // gc removes a staging directory only when nothing in it changed for this
  // long and no live process holds its lock. SHARDWISE_STAGING_GRACE_S
  double staging_grace_s = 900;
  // Lustre layouts of shard files (docs/lustre.md). kAuto: on Lustre, each
  // shard file is created with the layout the policy picks; elsewhere
  // nothing is applied. SHARDWISE_LAYOUT=auto|off
  LayoutMode layout = LayoutMode::kAuto;
  // Overrides of the policy: stripes per shard file (0: policy, -1: every
  // OST) and stripe size (0: policy, 4 MiB; a multiple of 64 KiB).
  // SHARDWISE_STRIPE_COUNT, SHARDWISE_STRIPE_SIZE
  int stripe_count = 0;
  std::uint64_t stripe_size = 0;
  // Split each rank's shard into this many files of about equal size, at
  // tensor boundaries (more independent streams and OST objects per rank).
  // SHARDWISE_FILES_PER_RANK (1-64)
  int files_per_rank = 1;
  // liblustreapi to load (default: liblustreapi.so.1 from the library path).
  // SHARDWISE_LUSTREAPI
  std::string lustre_api;
  // Export to S3 after each commit (docs/lustre.md): kFsxTask runs `aws fsx
  // create-data-repository-task --type EXPORT_TO_REPOSITORY` (needs fsx_id
  // and fsx_mount, the local mount point of the file system); kHsm runs
  // `lfs hsm_archive`. A failed request is recorded, never fails the save.
  // SHARDWISE_EXPORT=off|fsx-task|hsm, SHARDWISE_FSX_ID, SHARDWISE_FSX_MOUNT
  ExportMode export_mode = ExportMode::kOff;
  std::string fsx_id;
  std::string fsx_mount;
  // Retention keeps every checkpoint whose export is not "exported".
  // SHARDWISE_RETENTION_REQUIRES_EXPORT=0|1
  bool retention_requires_export = false;
  // The on-disk format commits write (docs/format.md): 2, the commit record
  // plus a binary index read in part, or 1, the whole index in
  // manifest.json, for readers older than format 2. Readers take both.
  // SHARDWISE_FORMAT_VERSION
  int format_version = 2;
  // io_uring fixed buffers: register the I/O buffers, and the staging
  // memory async saves write from, with the ring once, so the kernel does
  // not pin their pages for every I/O. Needs locked memory (RLIMIT_MEMLOCK
  // or CAP_IPC_LOCK); where it is refused, plain buffers are used.
  // SHARDWISE_FIXED_BUFFERS=0|1
  bool fixed_buffers = true;
  // Retention and deletes keep the files of the checkpoints they remove
  // (ROOT/.recycle), and the next save or install overwrites them in place:
  // on tmpfs that skips allocating (and zeroing) new pages. Checkpointer
  // turns it on for its local tier. SHARDWISE_RECYCLE_FILES=0|1
  bool recycle_files = false;
  // Polling interval while waiting on the filesystem (fragments, commits).
  // SHARDWISE_POLL_INTERVAL_S
  double poll_interval_s = 0.02;

  // Applies SHARDWISE_* variables on top of `base`; a malformed value is an
  // error naming the variable.
  static Result<Options> FromEnv();
  static Result<Options> FromEnv(Options base);
  // Checks the invariants above.
  Status Validate() const;
  // `threads`, or its default when 0.
  int EffectiveThreads() const;
};

// One row of the option table, the one description of every option: its
// Options field, SHARDWISE_* variable, Python keyword (Writer, Reader,
// Checkpointer, Repository), `shardwise bench` flag, the values it takes,
// its default and its help line. FromEnv, the bench flags, the binding's
// keywords, `shardwise options` and docs/cpp-api.md all come from it.
struct OptionInfo {
  std::string_view field;    // "io_unit_bytes"
  std::string_view env;      // "SHARDWISE_IO_UNIT"
  std::string_view keyword;  // "io_unit": the Python keyword
  std::string_view flag;     // "--io-unit"; empty: not a `shardwise bench` flag
  std::string_view values;   // what the parser takes: "SIZE", "1-256", "auto|on|off"
  std::string_view help;     // one line
  // Parses `text` (range included) into the field; the message says what is
  // expected, without naming the option (SetOption adds the name).
  Status (*parse)(Options& options, std::string_view text);
  // The field's value as parse accepts it ("" for an unset string).
  std::string (*show)(const Options& options);
};
std::span<const OptionInfo> OptionTable();
// The row whose field, variable, keyword or flag is `name`; null if none.
const OptionInfo* FindOption(std::string_view name);
// Parses `text` into the option `name` (field, variable, keyword or flag).
// Errors name the option as `name` was spelled.
Status SetOption(Options& options, std::string_view name, std::string_view text);

// Parses "512MiB", "2GiB", "4k", "1000000" into bytes.
Result<std::uint64_t> ParseSize(std::string_view text);
// "1.50 GiB"
std::string FormatBytes(std::uint64_t bytes);

}  // namespace shardwise
