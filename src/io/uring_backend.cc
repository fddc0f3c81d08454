// io_uring backend: one ring of queue_depth entries and as many registered
// buffers. Worker threads (Options::threads) fill buffers, or consume what
// was read; the calling thread submits and reaps. So copies and checksums
// run on the rank's cores while the device works. Short transfers are
// resubmitted for the remainder; a transfer making no progress is an
// error.
//
// Fixed buffers: the ring's table holds its own I/O buffers (slots 0 to
// depth - 1) and, after them, pieces of announced memory
// (io/registered_memory.h: the staging pool's slabs) that writes were made
// from. A piece is registered the first time a write comes from it and stays
// until its memory is withdrawn. Where the kernel refuses (RLIMIT_MEMLOCK,
// a kernel without sparse tables), writes go through plain buffers.
#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

#include "io/aligned_buffer.h"
#include "io/backend.h"
#include "io/registered_memory.h"
#include "os/fault.h"
#include "os/posix.h"

#ifdef SHARDWISE_HAVE_URING
#include <liburing.h>
#include <sys/eventfd.h>
#include <unistd.h>
#endif

namespace shardwise::io {

namespace {
// The kernel registers at most 1 GiB per buffer: announced memory is
// registered in pieces of this size.
std::uint64_t g_piece_bytes = 1ull << 30;
}  // namespace

void SetRegisteredPieceBytesForTesting(std::uint64_t bytes) { g_piece_bytes = bytes; }

#ifdef SHARDWISE_HAVE_URING
namespace {

// Table slots for pieces of announced memory, after the I/O buffers'.
constexpr int kPieceSlots = 64;

class UringBackend final : public IoBackend, private announced::Holder {
 public:
  UringBackend(const Options& o, io_uring ring, int event_fd)
      : ring_(ring),
        depth_(o.queue_depth),
        workers_(o.EffectiveThreads()),
        event_fd_(event_fd),
        max_unit_(o.io_unit_bytes),
        use_fixed_(o.fixed_buffers) {
    // A sparse table (Linux 5.19) lets buffers be added and dropped one
    // at a time; without it only the I/O buffers are registered, at once.
    if (use_fixed_ &&
        io_uring_register_buffers_sparse(&ring_, static_cast<unsigned>(depth_ + kPieceSlots)) ==
            0) {
      sparse_ = true;
      pieces_.resize(kPieceSlots);
      auto lock = announced::Lock();
      announced::AddHolder(this);
    }
  }
  ~UringBackend() override {
    if (sparse_) {
      auto lock = announced::Lock();
      announced::RemoveHolder(this);
    }
    if (leaked_) {
      // The kernel may still use them: kept for the life of the process.
      new std::vector<AlignedBuffer>(std::move(buffers_));
      return;
    }
    io_uring_queue_exit(&ring_);
    ::close(event_fd_);
  }

  std::string_view name() const override { return "uring"; }
  // A forked child shares the parent's ring and its registered buffers
  // (which hold the parent's pages): it must open its own.
  bool usable() const override { return !broken_ && ::getpid() == owner_; }
  IoStats stats() const override {
    IoStats st = stats_;
    st.fixed_io_buffers = fixed_;
    st.sparse_table = sparse_;
    auto lock = announced::Lock();
    for (const Piece& p : pieces_) st.registered_source_bytes += p.bytes;
    return st;
  }

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
    if (::getpid() != owner_)
      return Status(StatusCode::kUnavailable,
                    "this io_uring ring belongs to process " + std::to_string(owner_) +
                        "; a forked child must open its own repository");
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
      // A registered piece holds the whole unit, so any remainder too.
      const int table_slot = unit_fixed_[slots_[slot].unit];
      if (table_slot >= 0)
        io_uring_prep_write_fixed(sqe, u.fd, u.src + done, len, u.offset + done, table_slot);
      else
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
    UnregisterBuffers();  // before their memory is freed
    buffers_.clear();
    for (int i = 0; i < depth_; ++i) buffers_.emplace_back(need);
    if (!use_fixed_) return;
    std::vector<iovec> iov(depth_);
    for (int i = 0; i < depth_; ++i) iov[i] = {buffers_[i].data(), buffers_[i].size()};
    // Fixed buffers save a page-pinning per I/O; without enough locked
    // memory (RLIMIT_MEMLOCK) plain buffers work too.
    if (!sparse_) {
      fixed_ = io_uring_register_buffers(&ring_, iov.data(), iov.size()) == 0;
      return;
    }
    fixed_ = true;  // so that a partial update is undone
    if (io_uring_register_buffers_update_tag(&ring_, 0, iov.data(), nullptr,
                                             static_cast<unsigned>(depth_)) != depth_)
      UnregisterBuffers();
  }

  void UnregisterBuffers() {
    if (!fixed_) return;
    fixed_ = false;
    if (!sparse_) {
      io_uring_unregister_buffers(&ring_);
      return;
    }
    std::vector<iovec> none(depth_, iovec{nullptr, 0});
    io_uring_register_buffers_update_tag(&ring_, 0, none.data(), nullptr,
                                         static_cast<unsigned>(depth_));
  }

  // For each unit written from memory: the table slot of the registered
  // piece of announced memory that holds it, registering the piece if it is
  // not yet; -1 for a plain write (memory not announced, a unit across two
  // pieces, or registration refused).
  void PlanSources(std::span<const IoUnit> units, bool write) {
    unit_fixed_.assign(units.size(), -1);
    if (!write) return;
    std::unique_lock<std::mutex> lock;
    for (std::size_t u = 0; u < units.size(); ++u) {
      if (!units[u].src) continue;
      if (sparse_) {
        if (!lock.owns_lock()) lock = announced::Lock();
        unit_fixed_[u] = SlotFor(units[u].src, units[u].length);
      }
      ++(unit_fixed_[u] >= 0 ? stats_.fixed_source_writes : stats_.plain_source_writes);
    }
  }

  // With the registry's lock held.
  int SlotFor(const std::byte* src, std::uint32_t length) {
    const announced::Region r = announced::Find(src, length);
    if (r.id == 0) return -1;
    const std::uint64_t at = static_cast<std::uint64_t>(src - r.base);
    const std::uint64_t piece = at / g_piece_bytes;
    if ((at + length - 1) / g_piece_bytes != piece) return -1;
    int free_slot = -1;
    for (int i = 0; i < kPieceSlots; ++i) {
      if (pieces_[i].region == r.id && pieces_[i].index == piece) return depth_ + i;
      if (pieces_[i].region == 0 && free_slot < 0) free_slot = i;
    }
    if (free_slot < 0 || std::find(refused_.begin(), refused_.end(), r.id) != refused_.end())
      return -1;
    const std::uint64_t start = piece * g_piece_bytes;
    iovec iov{const_cast<std::byte*>(r.base + start), std::min(g_piece_bytes, r.bytes - start)};
    if (io_uring_register_buffers_update_tag(&ring_, static_cast<unsigned>(depth_ + free_slot),
                                             &iov, nullptr, 1) != 1) {
      refused_.push_back(r.id);  // not asked again for this memory
      ++stats_.refused_registrations;
      return -1;
    }
    pieces_[free_slot] = {r.id, piece, iov.iov_len};
    return depth_ + free_slot;
  }

  // announced::Holder, with the registry's lock held: the region's memory
  // is about to be freed; no write from it is in flight (its owner is
  // done with it).
  void Forget(std::uint64_t region) override {
    // A forked child has a copy of this object but shares the parent's
    // ring: it must not change the parent's table.
    if (::getpid() != owner_) return;
    std::erase(refused_, region);
    for (int i = 0; i < kPieceSlots; ++i) {
      if (pieces_[i].region != region) continue;
      // Clearing a slot fails only if the ring is gone; counted, for tests.
      iovec none{nullptr, 0};
      if (io_uring_register_buffers_update_tag(&ring_, static_cast<unsigned>(depth_ + i), &none,
                                               nullptr, 1) != 1)
        ++stats_.failed_unregistrations;
      pieces_[i] = Piece{};
    }
  }

  // The calling thread owns the ring: it submits, reaps and resubmits short
  // transfers (requests belong to the thread that submits them, so no
  // short-lived thread may). `workers_` threads fill buffers for writes, or
  // consume what was read, so copies and checksums use the rank's cores
  // while depth_ transfers are in flight; they wake the ring thread through
  // an eventfd it keeps a read armed on.
  Status Run(std::span<const IoUnit> units, bool write, const UnitFn& fn) {
    if (units.empty()) return Status::Ok();
    SW_RETURN_IF_ERROR(CheckUnitsFit(units, max_unit_));
    EnsureBuffers(units);
    PlanSources(units, write);
    slots_.assign(depth_, Slot{});
    RunState st;
    for (int i = depth_ - 1; i >= 0; --i) st.free_slots.push_back(i);
    const int workers = std::clamp(workers_, 1, depth_);
    st.workers_left = workers;
    std::vector<std::thread> pool;
    pool.reserve(workers);
    try {
      for (int w = 0; w < workers; ++w)
        pool.emplace_back([&] { write ? FillWork(units, fn, st) : ConsumeWork(units, fn, st); });
    } catch (const std::system_error&) {
      // No thread to be had (EAGAIN: a container's pids limit): the ones
      // started do the work; with none, nothing was submitted.
      std::lock_guard lock(st.mu);
      st.workers_left -= workers - static_cast<int>(pool.size());
      if (pool.empty())
        return Status(StatusCode::kUnavailable, "no thread to be had for the I/O workers", 0,
                      *units[0].path);
    }
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
    st.cv.notify_all();  // Abandon waits for the workers to leave
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
      const os::FaultDecision d = os::Check(os::Op::kRing);
      do {
        r = d.kind == os::FaultKind::kErrno ? -d.err : io_uring_submit(&ring_);
      } while (r == -EINTR);
      if (r < 0) {
        // Nothing was submitted, and the entries stay queued in the ring:
        // it is not used again. Transfers of earlier rounds still run.
        Abandon(st, IoError("io_uring_submit", *units[0].path, -r), inflight);
        return;
      }
      inflight += queued;
      io_uring_cqe* cqe = nullptr;
      do {
        r = io_uring_wait_cqe(&ring_, &cqe);
      } while (r == -EINTR);
      if (r < 0) {
        // Cannot reap: stop the workers and never use this ring again.
        Abandon(st, IoError("io_uring_wait_cqe", *units[0].path, -r), inflight);
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

  // The ring failed: it is never used again. Fails the run, waits until
  // the kernel is done with the `inflight` transfers (their memory, the
  // buffers' or the caller's, may be reused once this returns), and for
  // the workers to leave.
  void Abandon(RunState& st, Status why, int inflight) {
    broken_ = true;
    {
      std::lock_guard lock(st.mu);
      st.Fail(std::move(why));
    }
    Drain(inflight);
    std::unique_lock lock(st.mu);
    st.cv.wait(lock, [&] { return st.workers_left == 0; });
  }

  // Reaps until no transfer is in flight, handling none. Where the ring
  // cannot even be waited on, the kernel may still use the buffers: the
  // ring and the buffers are then never freed (leaked_), and the caller's
  // memory of an unfinished in-place read is not safe to reuse.
  void Drain(int inflight) {
    while (inflight > 0) {
      io_uring_cqe* cqe = nullptr;
      int r;
      do {
        r = io_uring_wait_cqe(&ring_, &cqe);
      } while (r == -EINTR);
      if (r < 0) {
        leaked_ = true;
        return;
      }
      unsigned head, seen = 0;
      io_uring_for_each_cqe(&ring_, head, cqe) {
        ++seen;
        if (io_uring_cqe_get_data64(cqe) == kWake) {
          armed_ = false;
        } else {
          --inflight;
        }
      }
      io_uring_cq_advance(&ring_, seen);
    }
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
  bool leaked_ = false;  // transfers may still run: ring and buffers are never freed
  std::uint64_t max_unit_;
  bool use_fixed_;     // Options::fixed_buffers
  bool fixed_ = false;  // the I/O buffers are registered
  bool sparse_ = false;  // the table is sparse: pieces of announced memory can join it
  struct Piece {
    std::uint64_t region = 0;  // 0: a free slot
    std::uint64_t index = 0;   // which piece of the region
    std::uint64_t bytes = 0;
  };
  std::vector<Piece> pieces_;  // table slots depth_ + i; under the registry's lock
  std::vector<std::uint64_t> refused_;  // regions the kernel would not register
  std::vector<int> unit_fixed_;         // this run: the table slot of each unit's source
  IoStats stats_;
  pid_t owner_ = ::getpid();  // the process whose ring this is
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
