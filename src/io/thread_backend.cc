// The portable backend: a pool of threads each doing fill+pwrite (or
// pread+consume) on its own aligned buffer. Used where io_uring is missing
// or blocked (container seccomp profiles often block it).
#include <algorithm>
#include <atomic>
#include <mutex>
#include <vector>

#include "common/parallel.h"
#include "io/aligned_buffer.h"
#include "io/backend.h"
#include "os/posix.h"

namespace shardwise::io {
namespace {

class ThreadBackend final : public IoBackend {
 public:
  explicit ThreadBackend(const Options& o)
      : threads_(o.queue_depth), unit_bytes_(o.io_unit_bytes) {}

  std::string_view name() const override { return "threads"; }

  Status Write(std::span<const IoUnit> units, const UnitFn& fill) override {
    return Run(units, [&](std::size_t i, std::byte* buf) -> Status {
      const IoUnit& u = units[i];
      SW_RETURN_IF_ERROR(fill(i, u.src ? nullptr : buf));
      return os::PwriteAll(u.fd, u.src ? u.src : buf, u.length, u.offset, *u.path);
    });
  }

  Status Read(std::span<const IoUnit> units, const UnitFn& consume) override {
    return Run(units, [&](std::size_t i, std::byte* buf) -> Status {
      const IoUnit& u = units[i];
      std::byte* to = u.dst ? u.dst : buf;
      SW_RETURN_IF_ERROR(os::PreadAll(u.fd, to, u.length, u.offset, *u.path));
      return consume(i, to);
    });
  }

 private:
  Status Run(std::span<const IoUnit> units, const UnitFn& work) {
    if (units.empty()) return Status::Ok();
    SW_RETURN_IF_ERROR(CheckUnitsFit(units, unit_bytes_));
    std::size_t n = std::min<std::size_t>(threads_, units.size());
    std::uint64_t need = 0;
    for (const IoUnit& u : units)
      if (!u.src && !u.dst) need = std::max<std::uint64_t>(need, u.length);
    EnsureBuffers(n, std::min<std::uint64_t>(AlignUp(need), unit_bytes_));
    std::atomic<std::size_t> next{0};
    std::atomic<bool> failed{false};
    std::mutex mu;
    Status first;
    auto body = [&](std::size_t t) {
      std::byte* buf = buffers_[t].data();
      while (!failed.load(std::memory_order_relaxed)) {
        std::size_t i = next.fetch_add(1);
        if (i >= units.size()) return;
        Status s = work(i, buf);
        if (!s.ok()) {
          std::lock_guard lock(mu);
          if (first.ok()) first = std::move(s);
          failed = true;
        }
      }
    };
    // Thread t owns buffers_[t].
    ParallelFor(0, n, static_cast<int>(n), body);
    return first;
  }

  // Sized to the largest unit seen so far (at most io_unit_bytes), kept.
  void EnsureBuffers(std::size_t n, std::uint64_t bytes) {
    if (bytes == 0) bytes = kAlignment;
    if (!buffers_.empty() && buffers_[0].size() < bytes) buffers_.clear();
    std::uint64_t size = buffers_.empty() ? bytes : buffers_[0].size();
    while (buffers_.size() < n) buffers_.emplace_back(size);
  }

  int threads_;
  std::uint64_t unit_bytes_;
  std::vector<AlignedBuffer> buffers_;  // allocated once, reused across calls
};

}  // namespace

std::unique_ptr<IoBackend> MakeThreadBackend(const Options& options) {
  return std::make_unique<ThreadBackend>(options);
}

}  // namespace shardwise::io
