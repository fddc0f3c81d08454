// The one small parallel loop of the core: staging copies, checksums and
// commit-time parsing all fan out through it.
#pragma once

#include <sched.h>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdlib>
#include <system_error>
#include <thread>
#include <vector>

namespace shardwise {

// Runs fn(i) for every i in [begin, end) on up to `threads` threads, the
// caller's own included; returns when all are done. Indices are handed out
// one at a time, so uneven work balances itself.
template <typename Fn>
void ParallelFor(std::size_t begin, std::size_t end, int threads, Fn&& fn) {
  if (begin >= end) return;
  std::atomic<std::size_t> next{begin};
  auto body = [&] {
    for (std::size_t i = next++; i < end; i = next++) fn(i);
  };
  const std::size_t extra = std::min<std::size_t>(std::max(threads, 1), end - begin) - 1;
  std::vector<std::thread> pool;
  pool.reserve(extra);
  try {
    for (std::size_t t = 0; t < extra; ++t) pool.emplace_back(body);
  } catch (const std::system_error&) {
    // No thread to be had (EAGAIN: a container's pids limit): the threads
    // started, and this one, do the work; slower, never a terminate.
  }
  body();
  for (auto& t : pool) t.join();
}

// The CPUs this process may run on (its affinity mask), at least 1.
inline int AvailableCpus() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0) return std::max(1, CPU_COUNT(&set));
  return std::max(1u, std::thread::hardware_concurrency());
}

// Threads worth starting for `work` units of which one thread should do at
// least `per_thread`: 1 for small work (starting threads costs more than it
// saves), at most the available CPUs.
inline int ThreadsFor(std::size_t work, std::size_t per_thread) {
  const std::size_t want = work / std::max<std::size_t>(per_thread, 1);
  return static_cast<int>(std::clamp<std::size_t>(want, 1, static_cast<std::size_t>(AvailableCpus())));
}

// A rank's share of the CPUs: the available ones divided by the ranks on
// this node (LOCAL_WORLD_SIZE, as torchrun sets it), at least 1.
inline int CpusPerLocalRank() {
  int local = 1;
  if (const char* v = std::getenv("LOCAL_WORLD_SIZE")) local = std::max(1, std::atoi(v));
  return std::max(1, AvailableCpus() / local);
}

}  // namespace shardwise
