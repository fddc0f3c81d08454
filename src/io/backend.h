// The I/O engine behind shard writes and reads. A backend runs a list of
// units (one aligned file range each) with several in flight: for writes it
// asks `fill` to produce the unit's bytes into a buffer it owns and then
// writes them; for reads it reads the bytes and hands them to `consume`.
// `fill`/`consume` may run on several threads at once.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "shardwise/options.h"
#include "shardwise/status.h"

namespace shardwise::io {

struct IoUnit {
  int fd = -1;
  const std::string* path = nullptr;  // for error messages; outlives the call
  std::uint64_t offset = 0;           // 4 KiB-aligned
  std::uint32_t length = 0;           // multiple of 4 KiB, <= io_unit_bytes
  // Writes only: when set, the bytes are written from here (4 KiB-aligned
  // for O_DIRECT) and `fill` is called with a null buffer, for side work
  // such as checksums. This is how async saves write from staging memory
  // without a second copy.
  const std::byte* src = nullptr;
  // Reads only (buffered I/O, any alignment and length): when set, the
  // bytes are read straight into here and `consume` is called with it.
  std::byte* dst = nullptr;
};

// Called with the unit's index and its buffer (io_unit_bytes, aligned).
using UnitFn = std::function<Status(std::size_t index, std::byte* buf)>;

// What a backend did with fixed (pre-registered) buffers, for tests and
// benchmarks. Only io_uring registers buffers.
struct IoStats {
  bool fixed_io_buffers = false;           // its own I/O buffers are registered
  bool sparse_table = false;               // announced memory can be registered (Linux 5.19)
  std::uint64_t refused_registrations = 0;  // the kernel refused a piece (RLIMIT_MEMLOCK)
  std::uint64_t failed_unregistrations = 0;
  std::uint64_t fixed_source_writes = 0;   // units written from registered announced memory
  std::uint64_t plain_source_writes = 0;   // units written from other caller memory
  std::uint64_t registered_source_bytes = 0;  // announced memory registered now
};

class IoBackend {
 public:
  virtual ~IoBackend() = default;
  virtual std::string_view name() const = 0;
  // Runs every unit; returns the first error, after in-flight I/O settled.
  virtual Status Write(std::span<const IoUnit> units, const UnitFn& fill) = 0;
  virtual Status Read(std::span<const IoUnit> units, const UnitFn& consume) = 0;
  // False once the backend cannot run transfers any more (an io_uring whose
  // submission failed): a pool drops it rather than hand it out again.
  virtual bool usable() const { return true; }
  virtual IoStats stats() const { return {}; }
};

// kInvalidArgument when a unit that goes through the backend's buffers
// (no src, no dst) is longer than they are (`max_unit`, io_unit_bytes):
// checked before any I/O, so a caller's mistake is an error and never a
// write past a buffer.
inline Status CheckUnitsFit(std::span<const IoUnit> units, std::uint64_t max_unit) {
  for (const IoUnit& u : units)
    if (!u.src && !u.dst && u.length > max_unit)
      return InvalidArgument("an I/O unit of " + std::to_string(u.length) + " bytes" +
                             (u.path ? " in " + *u.path : std::string()) +
                             " exceeds the I/O buffers of " + std::to_string(max_unit) +
                             " bytes (io_unit_bytes)");
  return Status::Ok();
}

// Makes the backend `options.io_backend` asks for. kAuto tries io_uring and
// falls back to threads; kUring fails with kUnavailable when io_uring cannot
// be set up.
Result<std::unique_ptr<IoBackend>> MakeIoBackend(const Options& options);

std::unique_ptr<IoBackend> MakeThreadBackend(const Options& options);
// kUnavailable when io_uring is not compiled in or cannot be initialised.
Result<std::unique_ptr<IoBackend>> MakeUringBackend(const Options& options);
// Tests: the size of the pieces announced memory is registered in (default
// 1 GiB, the kernel's limit per buffer). Set it before making backends.
void SetRegisteredPieceBytesForTesting(std::uint64_t bytes);

}  // namespace shardwise::io
