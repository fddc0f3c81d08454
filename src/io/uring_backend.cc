// io_uring backend: one ring of queue_depth entries and as many registered
// buffers. The calling thread fills a buffer, submits it, and reaps
// completions, so copying overlaps with the device's work. Short transfers
// are resubmitted for the remainder; a transfer making no progress is an
// error.
#include <algorithm>
#include <cstring>
#include <vector>

#include "io/aligned_buffer.h"
#include "io/backend.h"
#include "os/fault.h"
#include "os/posix.h"

#ifdef SHARDWISE_HAVE_URING
#include <liburing.h>
#endif

namespace shardwise::io {

#ifdef SHARDWISE_HAVE_URING
namespace {

class UringBackend final : public IoBackend {
 public:
  UringBackend(const Options& o, io_uring ring)
      : ring_(ring), depth_(o.queue_depth), max_unit_(o.io_unit_bytes) {}
  ~UringBackend() override { io_uring_queue_exit(&ring_); }

  std::string_view name() const override { return "uring"; }

  Status Write(std::span<const IoUnit> units, const UnitFn& fill) override {
    return Run(units, true, fill);
  }
  Status Read(std::span<const IoUnit> units, const UnitFn& consume) override {
    return Run(units, false, consume);
  }

 private:
  struct Slot {
    std::size_t unit = 0;
    std::uint32_t done = 0;  // bytes already transferred
  };

  void Prep(std::span<const IoUnit> units, int slot, bool write,
            std::uint32_t len) {
    const IoUnit& u = units[slots_[slot].unit];
    std::uint32_t done = slots_[slot].done;
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);  // never null: depth bound
    if (write && u.src) {
      io_uring_prep_write(sqe, u.fd, u.src + done, len, u.offset + done);
      io_uring_sqe_set_data64(sqe, static_cast<std::uint64_t>(slot));
      return;
    }
    std::byte* buf = buffers_[slot].data() + done;
    if (write) {
      if (fixed_)
        io_uring_prep_write_fixed(sqe, u.fd, buf, len, u.offset + done, slot);
      else
        io_uring_prep_write(sqe, u.fd, buf, len, u.offset + done);
    } else {
      if (fixed_)
        io_uring_prep_read_fixed(sqe, u.fd, buf, len, u.offset + done, slot);
      else
        io_uring_prep_read(sqe, u.fd, buf, len, u.offset + done);
    }
    io_uring_sqe_set_data64(sqe, static_cast<std::uint64_t>(slot));
  }

  // Starts (or continues) slot's transfer, applying the fault seam exactly as
  // the pwrite/pread wrappers do.
  Status Start(std::span<const IoUnit> units, int slot, bool write) {
    const IoUnit& u = units[slots_[slot].unit];
    std::uint32_t len = u.length - slots_[slot].done;
    os::FaultDecision d = os::Check(write ? os::Op::kWrite : os::Op::kRead);
    if (d.kind == os::FaultKind::kErrno)
      return IoError(write ? "write" : "read", *u.path, d.err);
    if (d.kind == os::FaultKind::kShort) len = static_cast<std::uint32_t>(os::ShortLength(len));
    Prep(units, slot, write, len);
    return Status::Ok();
  }

  // Buffers are sized to the largest unit seen so far (at most io_unit_bytes)
  // and kept: a small checkpoint does not pin queue_depth x io_unit bytes.
  void EnsureBuffers(std::span<const IoUnit> units) {
    std::uint64_t need = 0;
    for (const IoUnit& u : units)
      if (!u.src) need = std::max<std::uint64_t>(need, u.length);
    need = std::min<std::uint64_t>(std::max<std::uint64_t>(AlignUp(need), kAlignment), max_unit_);
    if (!buffers_.empty() && buffers_[0].size() >= need) return;
    if (fixed_) io_uring_unregister_buffers(&ring_);
    buffers_.clear();
    for (int i = 0; i < depth_; ++i) buffers_.emplace_back(need);
    std::vector<iovec> iov(depth_);
    for (int i = 0; i < depth_; ++i) iov[i] = {buffers_[i].data(), buffers_[i].size()};
    // Fixed buffers save a page-pinning per I/O; without enough locked
    // memory (RLIMIT_MEMLOCK) plain buffers work too.
    fixed_ = io_uring_register_buffers(&ring_, iov.data(), iov.size()) == 0;
  }

  Status Run(std::span<const IoUnit> units, bool write, const UnitFn& fn) {
    if (units.empty()) return Status::Ok();
    EnsureBuffers(units);
    slots_.assign(depth_, Slot{});
    std::vector<int> free_slots;
    for (int i = depth_ - 1; i >= 0; --i) free_slots.push_back(i);
    std::size_t next = 0;
    int inflight = 0;
    Status first;
    auto fail = [&](Status s) {
      if (first.ok()) first = std::move(s);
    };
    while ((first.ok() && next < units.size()) || inflight > 0) {
      int queued = 0;
      while (first.ok() && next < units.size() && !free_slots.empty()) {
        int slot = free_slots.back();
        slots_[slot] = Slot{next, 0};
        if (write) {
          Status s = fn(next, units[next].src ? nullptr : buffers_[slot].data());
          if (!s.ok()) {
            fail(std::move(s));
            break;
          }
        }
        Status s = Start(units, slot, write);
        if (!s.ok()) {
          fail(std::move(s));
          break;
        }
        free_slots.pop_back();
        ++next;
        ++queued;
      }
      if (queued > 0) {
        int r;
        do {
          r = io_uring_submit(&ring_);
        } while (r == -EINTR);
        if (r < 0) {
          // Nothing was submitted; those slots are not in flight.
          fail(IoError("io_uring_submit", *units[0].path, -r));
          break;
        }
        inflight += queued;
      }
      if (inflight == 0) break;
      io_uring_cqe* cqe = nullptr;
      int r;
      do {
        r = io_uring_wait_cqe(&ring_, &cqe);
      } while (r == -EINTR);
      if (r < 0) {
        fail(IoError("io_uring_wait_cqe", *units[0].path, -r));
        break;  // cannot reap: leave; the ring is torn down with the backend
      }
      unsigned head;
      unsigned seen = 0;
      io_uring_for_each_cqe(&ring_, head, cqe) {
        ++seen;
        int slot = static_cast<int>(io_uring_cqe_get_data64(cqe));
        Slot& s = slots_[slot];
        const IoUnit& u = units[s.unit];
        int res = cqe->res;
        --inflight;
        if (res < 0) {
          fail(IoError(write ? "write" : "read", *u.path, -res));
          free_slots.push_back(slot);
          continue;
        }
        if (res == 0) {
          fail(write ? IoError("write (no progress)", *u.path, EIO)
                     : Corrupt("read " + *u.path +
                                   ": file is truncated (end of file at " +
                                   std::to_string(u.offset + s.done) + ")",
                               *u.path));
          free_slots.push_back(slot);
          continue;
        }
        s.done += static_cast<std::uint32_t>(res);
        if (s.done < u.length && first.ok()) {
          Status st = Start(units, slot, write);
          if (st.ok()) {
            ++inflight;
            io_uring_submit(&ring_);
            continue;
          }
          fail(std::move(st));
          free_slots.push_back(slot);
          continue;
        }
        if (!write && first.ok() && s.done == u.length) {
          Status st = fn(s.unit, buffers_[slot].data());
          if (!st.ok()) fail(std::move(st));
        }
        free_slots.push_back(slot);
      }
      io_uring_cq_advance(&ring_, seen);
    }
    return first;
  }

  io_uring ring_;
  int depth_;
  std::uint64_t max_unit_;
  bool fixed_ = false;
  std::vector<AlignedBuffer> buffers_;
  std::vector<Slot> slots_;
};

}  // namespace

Result<std::unique_ptr<IoBackend>> MakeUringBackend(const Options& options) {
  io_uring ring;
  int r = io_uring_queue_init(static_cast<unsigned>(options.queue_depth), &ring, 0);
  if (r < 0)
    return Status(StatusCode::kUnavailable,
                  std::string("io_uring_queue_init: ") + std::strerror(-r), -r);
  return std::unique_ptr<IoBackend>(new UringBackend(options, ring));
}

#else

Result<std::unique_ptr<IoBackend>> MakeUringBackend(const Options&) {
  return Status(StatusCode::kUnavailable,
                "io_uring support was not compiled in (liburing missing)");
}

#endif

Result<std::unique_ptr<IoBackend>> MakeIoBackend(const Options& options) {
  if (options.io_backend == IoBackendKind::kThreads)
    return MakeThreadBackend(options);
  auto uring = MakeUringBackend(options);
  if (uring.ok() || options.io_backend == IoBackendKind::kUring) return uring;
  return MakeThreadBackend(options);
}

}  // namespace shardwise::io
