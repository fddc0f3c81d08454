// Shared parameters of `shardwise bench` (sync: cmd_bench.cc, async:
// cmd_bench_async.cc).
#pragma once

#include <cstdint>
#include <ostream>
#include <string>

#include "shardwise/options.h"

namespace shardwise::cli {

struct BenchParams {
  std::string dir;
  int ranks = 2;
  std::uint64_t size_per_rank = 1ull << 30;
  Options options;
  bool keep = false;
  bool json = false;
  // --async
  int saves = 5;
  std::uint64_t staging_budget = 0;  // 0: the state's size
};

int RunAsyncBench(const BenchParams& p, std::ostream& out, std::ostream& err);

// Peak and current resident memory of this process (VmHWM, VmRSS), bytes.
std::uint64_t PeakRssBytes();
std::uint64_t CurrentRssBytes();

}  // namespace shardwise::cli
