// MeasureHostLimits and MeasureCopyInto (include/shardwise/host.h).
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <vector>

#include "common/parallel.h"
#include "format/crc32c.h"
#include "os/posix.h"
#include "shardwise/host.h"

namespace shardwise {
namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// GB/s of `bytes` moved by body(thread, threads) on `threads` threads:
// median of three runs. `before` runs untimed ahead of each run.
template <typename Body, typename Before>
double MedianRate(std::uint64_t bytes, int threads, Body&& body, Before&& before) {
  std::vector<double> rates;
  for (int rep = 0; rep < 3; ++rep) {
    if (!before()) return 0;
    const double t0 = Now();
    ParallelFor(0, static_cast<std::size_t>(threads), threads,
                [&](std::size_t t) { body(t, threads); });
    rates.push_back(static_cast<double>(bytes) / std::max(Now() - t0, 1e-9) / 1e9);
  }
  std::sort(rates.begin(), rates.end());
  return rates[1];
}

template <typename Body, typename Before>
Rate Measure(std::uint64_t bytes, int cpus, Body&& body, Before&& before) {
  Rate r;
  r.one_thread_gbps = MedianRate(bytes, 1, body, before);
  r.all_threads_gbps = cpus > 1 ? MedianRate(bytes, cpus, body, before) : r.one_thread_gbps;
  return r;
}

double PassSeconds(std::uint64_t bytes, double copy_gbps, double crc_gbps) {
  if (copy_gbps <= 0 || crc_gbps <= 0) return 0;
  return static_cast<double>(bytes) / 1e9 * (1 / copy_gbps + 1 / crc_gbps);
}

// Fresh anonymous memory in 4 KiB pages, unmapped when it goes.
class FreshPages {
 public:
  ~FreshPages() { Unmap(); }
  bool Map(std::uint64_t bytes) {
    Unmap();
    auto mem = os::MapUntouched(bytes);
    if (!mem.ok()) return false;
    data_ = static_cast<std::byte*>(*mem);
    bytes_ = bytes;
    return true;
  }
  std::byte* data() const { return data_; }

 private:
  void Unmap() {
    os::Unmap(data_, bytes_);
    data_ = nullptr;
  }
  std::byte* data_ = nullptr;
  std::uint64_t bytes_ = 0;
};

}  // namespace

int AvailableCpuCount() { return AvailableCpus(); }

double HostLimits::Seconds(std::uint64_t bytes) const {
  return PassSeconds(bytes, copy.best(), crc32c.best());
}

double HostLimits::FreshSeconds(std::uint64_t bytes) const {
  return PassSeconds(bytes, fresh_copy.best(), crc32c.best());
}

HostLimits MeasureHostLimits(std::uint64_t bytes) {
  bytes = std::max<std::uint64_t>(bytes / 4096 * 4096, 1 << 20);
  HostLimits h;
  h.threads = AvailableCpus();
  std::vector<std::byte> src(bytes), dst(bytes);
  for (std::uint64_t i = 0; i < bytes; i += 4096) src[i] = static_cast<std::byte>(i >> 12);
  std::memset(dst.data(), 0, bytes);
  // Each thread works on its own contiguous share (the last one takes the rest).
  auto share = [bytes](std::size_t t, int threads, std::uint64_t* off) {
    const std::uint64_t s = bytes / static_cast<std::uint64_t>(threads);
    *off = t * s;
    return static_cast<int>(t) == threads - 1 ? bytes - *off : s;
  };
  auto always = [] { return true; };
  h.copy = Measure(bytes, h.threads, [&](std::size_t t, int n) {
    std::uint64_t off;
    const std::uint64_t len = share(t, n, &off);
    std::memcpy(dst.data() + off, src.data() + off, len);
  }, always);
  std::atomic<std::uint32_t> sink{0};
  h.crc32c = Measure(bytes, h.threads, [&](std::size_t t, int n) {
    std::uint64_t off;
    const std::uint64_t len = share(t, n, &off);
    sink.fetch_xor(format::Crc32c(src.data() + off, len));
  }, always);
  FreshPages fresh;
  h.fresh_copy = Measure(bytes, h.threads, [&](std::size_t t, int n) {
    std::uint64_t off;
    const std::uint64_t len = share(t, n, &off);
    std::memcpy(fresh.data() + off, src.data() + off, len);
  }, [&] { return fresh.Map(bytes); });
  return h;
}

Rate MeasureCopyInto(std::span<std::byte> dst, int* threads) {
  const int cpus = AvailableCpus();
  if (threads) *threads = cpus;
  const std::uint64_t bytes = dst.size() / 4096 * 4096;
  if (bytes < 4096 * static_cast<std::uint64_t>(cpus)) return {};
  std::vector<std::byte> src(bytes);  // zeroed: every page faulted in
  // One memcpy per thread over its contiguous share: glibc takes its
  // non-temporal path for copies this large, as for one copy of the whole.
  return Measure(bytes, cpus, [&](std::size_t t, int n) {
    const std::uint64_t share = bytes / static_cast<std::uint64_t>(n) / 4096 * 4096;
    const std::uint64_t off = t * share;
    const std::uint64_t len = static_cast<int>(t) == n - 1 ? bytes - off : share;
    std::memcpy(dst.data() + off, src.data() + off, len);
  }, [] { return true; });
}

}  // namespace shardwise
