// io_uring backend: one ring of queue_depth entries and as many registered
// buffers. Worker threads (Options::threads) fill buffers, or consume what
// was read; the calling thread submits and reaps. So copies and checksums
// run on the rank's cores while the device works. Short transfers are
// resubmitted for the remainder; a transfer making no progress is an
// error.
#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

#include "io/aligned_buffer.h"
#include "io/backend.h"
#include "os/fault.h"
#include "os/posix.h"

#ifdef SHARDWISE_HAVE_URING
#include <liburing.h>
#include <sys/eventfd.h>
#include <unistd.h>
#endif

namespace shardwise::io {

#ifdef SHARDWISE_HAVE_URING
namespace {

class UringBackend final : public IoBackend {
 public:
  UringBackend(const Options& o, io_uring ring, int event_fd)
      : ring_(ring),
        depth_(o.queue_depth),
        workers_(o.EffectiveThreads()),
        event_fd_(event_fd),
        max_unit_(o.io_unit_bytes) {}
  ~UringBackend() override {
    io_uring_queue_exit(&ring_);
    ::close(event_fd_);
  }

  std::string_view name() const override { return "uring"; }
  bool usable() const override { return !broken_; }

  Status Write(std::span<const IoUnit> units, const UnitFn& fill) override {
    SW_RETURN_IF_ERROR(Usable());
    return Run(units, true, fill);
  }
  Status Read(std::span<const IoUnit> units, const UnitFn& consume) override {
    SW_RETURN_IF_ERROR(Usable());
    return Run(units, false, consume);
  }

 private:
  struct Slot {
    std::size_t unit = 0;
    std::uint32_t done = 0;  // bytes already transferred
  };

  Status Usable() const {
    if (!broken_) return Status::Ok();
    return Status(StatusCode::kIoError,
                  "the io_uring ring failed earlier (submit or wait); open a new repository");
  }

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
    if (!write && u.dst) {
      io_uring_prep_read(sqe, u.fd, u.dst + done, len, u.offset + done);
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
      if (!u.src && !u.dst) need = std::max<std::uint64_t>(need, u.length);
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

  // The calling thread owns the ring: it submits, reaps and resubmits short
  // transfers (requests belong to the thread that submits them, so no
  // short-lived thread may). `workers_` threads fill buffers for writes, or
  // consume what was read, so copies and checksums use the rank's cores
  // while depth_ transfers are in flight; they wake the ring thread through
  // an eventfd it keeps a read armed on.
  Status Run(std::span<const IoUnit> units, bool write, const UnitFn& fn) {
    if (units.empty()) return Status::Ok();
    EnsureBuffers(units);
    slots_.assign(depth_, Slot{});
    RunState st;
    for (int i = depth_ - 1; i >= 0; --i) st.free_slots.push_back(i);
    const int workers = std::clamp(workers_, 1, depth_);
    st.workers_left = workers;
    std::vector<std::thread> pool;
    pool.reserve(workers);
    for (int w = 0; w < workers; ++w)
      pool.emplace_back([&] { write ? FillWork(units, fn, st) : ConsumeWork(units, fn, st); });
    Drive(units, write, st);
    for (auto& t : pool) t.join();
    return st.first;
  }

  static constexpr std::uint64_t kWake = ~0ull;  // user_data of the eventfd read

  struct RunState {
    std::mutex mu;  // everything below
    std::condition_variable cv;
    std::vector<int> free_slots;
    std::vector<int> filled;    // writes: slots ready to submit
    std::deque<int> read_done;  // reads: slots whose read completed, to consume
    std::size_t next = 0;       // next unit to start
    std::size_t consumed = 0;
    int workers_left = 0;
    Status first;
    void Fail(Status s) {  // with mu held
      if (first.ok()) first = std::move(s);
      cv.notify_all();
    }
  };

  void Wake() {
    std::uint64_t one = 1;
    while (::write(event_fd_, &one, sizeof one) < 0 && errno == EINTR) {
    }
  }

  void FillWork(std::span<const IoUnit> units, const UnitFn& fill, RunState& st) {
    std::unique_lock lock(st.mu);
    while (st.first.ok() && st.next < units.size()) {
      if (st.free_slots.empty()) {
        st.cv.wait(lock);
        continue;
      }
      const int slot = st.free_slots.back();
      st.free_slots.pop_back();
      const std::size_t u = st.next++;
      slots_[slot] = Slot{u, 0};
      lock.unlock();
      Status s = fill(u, units[u].src ? nullptr : buffers_[slot].data());
      lock.lock();
      if (s.ok()) {
        st.filled.push_back(slot);
      } else {
        st.Fail(std::move(s));
        st.free_slots.push_back(slot);
      }
      Wake();
    }
    --st.workers_left;
    Wake();
  }

  void ConsumeWork(std::span<const IoUnit> units, const UnitFn& consume, RunState& st) {
    std::unique_lock lock(st.mu);
    while (st.first.ok() && st.consumed < units.size()) {
      if (st.read_done.empty()) {
        st.cv.wait(lock);
        continue;
      }
      const int slot = st.read_done.front();
      st.read_done.pop_front();
      lock.unlock();
      const std::size_t u = slots_[slot].unit;
      Status s = consume(u, units[u].dst ? units[u].dst : buffers_[slot].data());
      lock.lock();
      if (!s.ok()) st.Fail(std::move(s));
      ++st.consumed;
      st.free_slots.push_back(slot);
      Wake();
    }
    --st.workers_left;
    st.cv.notify_all();
    Wake();
  }

  // The ring thread: submits what is ready, reaps, until every worker has
  // left and nothing is in flight.
  void Drive(std::span<const IoUnit> units, bool write, RunState& st) {
    int inflight = 0;  // transfers
    std::vector<int> to_start;
    while (true) {
      bool failed;
      const bool leave = TakeReady(units, write, st, &to_start, &failed);
      const int queued = StartReady(units, write, st, to_start, failed);
      to_start.clear();
      if (leave && inflight == 0 && queued == 0) return;
      ArmWake();
      int r;
      do {
        r = io_uring_submit(&ring_);
      } while (r == -EINTR);
      if (r < 0) {
        // Nothing was submitted, and the entries stay queued in the ring:
        // it is not used again (the backend keeps the buffers).
        Abandon(st, IoError("io_uring_submit", *units[0].path, -r));
        return;
      }
      inflight += queued;
      io_uring_cqe* cqe = nullptr;
      do {
        r = io_uring_wait_cqe(&ring_, &cqe);
      } while (r == -EINTR);
      if (r < 0) {
        // Cannot reap: in-flight transfers may still use the buffers; stop
        // the workers and never use this ring again.
        Abandon(st, IoError("io_uring_wait_cqe", *units[0].path, -r));
        return;
      }
      Reap(units, write, st, &inflight);
    }
  }

  // Under the lock: moves the slots ready to start into `to_start` (filled
  // ones for writes; for reads, free slots get the next units). Returns
  // whether the ring thread may leave once nothing is in flight;
  // `*failed`: the run has already failed.
  bool TakeReady(std::span<const IoUnit> units, bool write, RunState& st,
                 std::vector<int>* to_start, bool* failed) {
    std::lock_guard lock(st.mu);
    *failed = !st.first.ok();
    if (write) {
      to_start->swap(st.filled);
    } else {
      while (!*failed && st.next < units.size() && !st.free_slots.empty()) {
        const int slot = st.free_slots.back();
        st.free_slots.pop_back();
        slots_[slot] = Slot{st.next++, 0};
        to_start->push_back(slot);
      }
    }
    return st.workers_left == 0 && st.filled.empty();
  }

  // Queues the transfers of `to_start`, or, once the run has failed, hands
  // their slots back unused. Returns how many were queued.
  int StartReady(std::span<const IoUnit> units, bool write, RunState& st,
                 const std::vector<int>& to_start, bool failed) {
    int queued = 0;
    for (int slot : to_start) {
      Status s = failed ? Status::Ok() : Start(units, slot, write);
      if (failed || !s.ok()) {
        std::lock_guard lock(st.mu);
        if (!s.ok()) st.Fail(std::move(s));
        st.free_slots.push_back(slot);
        if (!write) ++st.consumed;  // never to be read: counted as done
        st.cv.notify_all();
        continue;
      }
      ++queued;
    }
    return queued;
  }

  // Keeps a read of the eventfd in the ring, so that a worker's Wake()
  // ends the ring thread's wait.
  void ArmWake() {
    if (armed_) return;
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    io_uring_prep_read(sqe, event_fd_, &event_count_, sizeof event_count_, 0);
    io_uring_sqe_set_data64(sqe, kWake);
    armed_ = true;
  }

  // The ring failed: it is never used again. Fails the run and waits for
  // the workers to leave.
  void Abandon(RunState& st, Status why) {
    broken_ = true;
    std::unique_lock lock(st.mu);
    st.Fail(std::move(why));
    st.cv.wait(lock, [&] { return st.workers_left == 0; });
  }

  // Handles every completion in the ring.
  void Reap(std::span<const IoUnit> units, bool write, RunState& st, int* inflight) {
    io_uring_cqe* cqe;
    unsigned head;
    unsigned seen = 0;
    io_uring_for_each_cqe(&ring_, head, cqe) {
      ++seen;
      const std::uint64_t tag = io_uring_cqe_get_data64(cqe);
      if (tag == kWake) {
        armed_ = false;
        continue;
      }
      --*inflight;
      const int slot = static_cast<int>(tag);
      Completed(units, write, st, slot, cqe->res, inflight);
    }
    io_uring_cq_advance(&ring_, seen);
  }

  // One transfer's completion: resubmits the rest of a short one, frees
  // the slot of a finished write, hands a finished read to the workers.
  void Completed(std::span<const IoUnit> units, bool write, RunState& st, int slot, int res,
                 int* inflight) {
    Slot& s = slots_[slot];
    const IoUnit& u = units[s.unit];
    Status error;
    if (res < 0) {
      error = IoError(write ? "write" : "read", *u.path, -res);
    } else if (res == 0) {
      error = write ? IoError("write (no progress)", *u.path, EIO)
                    : Corrupt("read " + *u.path + ": file is truncated (end of file at " +
                                  std::to_string(u.offset + s.done) + ")",
                              *u.path);
    } else {
      s.done += static_cast<std::uint32_t>(res);
    }
    std::lock_guard lock(st.mu);
    if (error.ok() && s.done < u.length && st.first.ok()) {
      error = Start(units, slot, write);
      if (error.ok()) {
        ++*inflight;  // submitted with the next round
        return;
      }
    }
    if (!error.ok()) st.Fail(std::move(error));
    if (write || !st.first.ok()) {
      st.free_slots.push_back(slot);
      if (!write) ++st.consumed;
    } else {
      st.read_done.push_back(slot);
    }
    st.cv.notify_all();
  }

  io_uring ring_;
  int depth_;
  int workers_;
  int event_fd_;  // workers wake the ring thread through it
  std::uint64_t event_count_ = 0;
  bool armed_ = false;  // a read of event_fd_ is in the ring
  bool broken_ = false;
  std::uint64_t max_unit_;
  bool fixed_ = false;
  std::vector<AlignedBuffer> buffers_;
  std::vector<Slot> slots_;
};

}  // namespace

Result<std::unique_ptr<IoBackend>> MakeUringBackend(const Options& options) {
  io_uring ring;
  // One entry more than transfers in flight: the armed read of the eventfd.
  int r = io_uring_queue_init(static_cast<unsigned>(options.queue_depth) + 1, &ring, 0);
  if (r < 0)
    return Status(StatusCode::kUnavailable,
                  std::string("io_uring_queue_init: ") + std::strerror(-r), -r);
  const int efd = ::eventfd(0, EFD_CLOEXEC);
  if (efd < 0) {
    const int err = errno;
    io_uring_queue_exit(&ring);
    return Status(StatusCode::kUnavailable, std::string("eventfd: ") + std::strerror(err), err);
  }
  return std::unique_ptr<IoBackend>(new UringBackend(options, ring, efd));
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
