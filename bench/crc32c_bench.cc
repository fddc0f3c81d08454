// Micro-benchmark of CRC32C: hardware (SSE4.2, 3 streams) vs portable, and
// the fused copy+checksum against a plain memcpy of the same size.
#include <benchmark/benchmark.h>

#include <cstring>
#include <vector>

#include "format/crc32c.h"

namespace {

using shardwise::format::Crc32c;
using shardwise::format::Crc32cCopy;
using shardwise::format::Crc32cForcePortable;

std::vector<char> Data(std::size_t n) {
  std::vector<char> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = static_cast<char>(i * 131 + 7);
  return v;
}

void BM_Crc32cHardware(benchmark::State& state) {
  Crc32cForcePortable(false);
  auto d = Data(static_cast<std::size_t>(state.range(0)));
  for (auto _ : state) benchmark::DoNotOptimize(Crc32c(d.data(), d.size()));
  state.SetBytesProcessed(state.iterations() * state.range(0));
}

void BM_Crc32cPortable(benchmark::State& state) {
  Crc32cForcePortable(true);
  auto d = Data(static_cast<std::size_t>(state.range(0)));
  for (auto _ : state) benchmark::DoNotOptimize(Crc32c(d.data(), d.size()));
  state.SetBytesProcessed(state.iterations() * state.range(0));
  Crc32cForcePortable(false);
}

void BM_Crc32cCopy(benchmark::State& state) {
  auto d = Data(static_cast<std::size_t>(state.range(0)));
  std::vector<char> out(d.size());
  for (auto _ : state) benchmark::DoNotOptimize(Crc32cCopy(out.data(), d.data(), d.size()));
  state.SetBytesProcessed(state.iterations() * state.range(0));
}

void BM_Memcpy(benchmark::State& state) {
  auto d = Data(static_cast<std::size_t>(state.range(0)));
  std::vector<char> out(d.size());
  for (auto _ : state) {
    std::memcpy(out.data(), d.data(), d.size());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * state.range(0));
}

}  // namespace

// 1 MiB (a checksum block, in cache) and 64 MiB (streaming from memory).
BENCHMARK(BM_Crc32cHardware)->Arg(1 << 20)->Arg(64 << 20);
BENCHMARK(BM_Crc32cPortable)->Arg(1 << 20);
BENCHMARK(BM_Crc32cCopy)->Arg(1 << 20)->Arg(64 << 20);
BENCHMARK(BM_Memcpy)->Arg(1 << 20)->Arg(64 << 20);

BENCHMARK_MAIN();
