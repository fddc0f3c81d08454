// What this host allows a save or load of memory-resident data, measured:
// the limits `shardwise bench` reports our figures against (docs/cli.md).
// Each rate is the median of three runs, taken on one thread and on every
// CPU this process may use (each thread copying its own contiguous share).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "shardwise/types.h"

namespace shardwise {

struct Rate {
  double one_thread_gbps = 0;
  double all_threads_gbps = 0;
  double best() const { return one_thread_gbps > all_threads_gbps ? one_thread_gbps
                                                                  : all_threads_gbps; }
};

struct HostLimits {
  int threads = 1;  // CPUs available to this process
  Rate copy;        // memcpy into pre-faulted memory
  // memcpy into memory never touched before (4 KiB pages): what a
  // filesystem that keeps files in memory (tmpfs) pays for every page it
  // stores.
  Rate fresh_copy;
  Rate crc32c;  // the checksum shards carry
  // Seconds one copy pass and one checksum pass over `bytes` take at the best
  // rates: the limit where the data stays in memory. 0 when unmeasured.
  double Seconds(std::uint64_t bytes) const;
  double FreshSeconds(std::uint64_t bytes) const;  // the same, copying into new pages
};

// Measures over `bytes` of memory (allocated and freed here).
HostLimits MeasureHostLimits(std::uint64_t bytes = 256ull << 20);

// The plain memcpy rate into `dst`, which the caller pre-faulted (e.g.
// staging memory), from pre-faulted memory of the same size, on one thread
// and on every CPU (each thread one memcpy of its contiguous share): the
// stall an asynchronous save of dst.size() bytes cannot beat. `threads` of
// the result is set.
Rate MeasureCopyInto(std::span<std::byte> dst, int* threads = nullptr);

// The CPUs this process may run on (its affinity mask), at least 1.
int AvailableCpuCount();

}  // namespace shardwise
