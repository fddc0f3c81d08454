// Asynchronous saves (include/shardwise/async.h). The foreground stages the
// shard's exact file image (header, extents, padding) into a lease from the
// staging pool with the pool's parallel copy (StagingLease::Stage); a
// background thread checksums the staged bytes,
// writes them straight from the pool (no second copy), fsyncs, leaves the
// rank's fragment and commits, all through the same protocol as synchronous
// saves. When the state is larger than the pool, waves alternate between the
// pool's two halves: the foreground stages wave k+1 while wave k is written.
#include "shardwise/async.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include "engine/shard_writer.h"
#include "io/aligned_buffer.h"
#include "io/backend.h"
#include "os/fault.h"
#include "os/posix.h"
#include "repo/repository_impl.h"

namespace shardwise {

struct AsyncSave::State {
  mutable std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  bool skipped = false;
  bool observed = false;
  Status status;
  std::string name;
  double stall = 0, persist = 0, returned_at = 0;
  std::uint64_t bytes = 0;
  std::uint64_t copied = 0;
  int waves = 0;

  void Finish(Status s) {
    std::lock_guard lock(mu);
    status = std::move(s);
    persist = returned_at > 0 ? os::MonotonicSeconds() - returned_at : 0;
    done = true;
    cv.notify_all();
  }
};

bool AsyncSave::Done() const {
  std::lock_guard lock(state_->mu);
  return state_->done;
}

Status AsyncSave::Wait() {
  std::unique_lock lock(state_->mu);
  state_->cv.wait(lock, [&] { return state_->done; });
  state_->observed = true;
  return state_->status;
}

Status AsyncSave::status() const {
  std::lock_guard lock(state_->mu);
  if (state_->done) state_->observed = true;
  return state_->status;
}

bool AsyncSave::skipped() const { return state_->skipped; }
const std::string& AsyncSave::name() const { return state_->name; }
double AsyncSave::stall_seconds() const {
  std::lock_guard lock(state_->mu);
  return state_->stall;
}
double AsyncSave::persist_seconds() const {
  std::lock_guard lock(state_->mu);
  return state_->persist;
}
std::uint64_t AsyncSave::bytes() const { return state_->bytes; }
std::uint64_t AsyncSave::copied_bytes() const {
  std::lock_guard lock(state_->mu);
  return state_->copied;
}
int AsyncSave::waves() const { return state_->waves; }

namespace {

// A wave: units [u0, u1) of the plan, staged at pool + pool_base, where the
// unit at position `file_base` (Unit::pos, across all part files) lands first.
struct Wave {
  std::size_t u0, u1;
  std::uint64_t file_base, pool_base;
};

// Hand-off between the staging foreground and the writing background.
struct Job {
  SaveSpec spec;
  engine::ShardPlan plan;
  std::vector<WriteItem> meta;  // the items without their data pointers
  std::vector<Wave> waves;
  // Held until both the foreground and the background are done with it
  // (the last reference to the job goes): then the slab is free again.
  std::shared_ptr<StagingLease> lease;
  std::byte* pool = nullptr;

  std::mutex mu;
  std::condition_variable cv;
  std::size_t staged = 0;   // waves staged by the foreground
  std::size_t written = 0;  // waves written by the background
  bool failed = false;      // the background gave up
  bool abandon = false;     // the foreground gave up
  Status abandon_status;    // why: the background's outcome too

  const std::byte* Image(std::size_t u, const Wave& w) const {
    return pool + w.pool_base + (plan.units[u].pos - w.file_base);
  }
};

std::vector<Wave> CutWaves(const engine::ShardPlan& plan, std::uint64_t pool_size) {
  const std::size_t n = plan.units.size();
  if (plan.total_size <= pool_size) return {{0, n, 0, 0}};
  const std::uint64_t half = io::AlignDown(pool_size / 2);
  std::vector<Wave> waves;
  std::size_t u0 = 0;
  while (u0 < n) {
    std::size_t u1 = u0 + 1;
    const std::uint64_t base = plan.units[u0].pos;
    while (u1 < n && plan.units[u1].pos + plan.units[u1].length - base <= half) ++u1;
    waves.push_back({u0, u1, base, (waves.size() % 2) * half});
    u0 = u1;
  }
  return waves;
}

// The wave's staging copies: every piece of its units, at the place the
// unit's image takes in the pool; headers are encoded in place.
std::vector<StagingLease::Copy> WaveCopies(const Job& job, std::span<const WriteItem> items,
                                           const Wave& wave) {
  std::vector<StagingLease::Copy> copies;
  for (std::size_t u = wave.u0; u < wave.u1; ++u) {
    const engine::Unit& unit = job.plan.units[u];
    const std::uint64_t image = wave.pool_base + (unit.pos - wave.file_base);
    if (unit.offset == 0) engine::EncodeHeader(job.plan, unit.file, job.pool + image);
    for (const engine::Piece& p : unit.pieces)
      copies.push_back({static_cast<const std::byte*>(items[p.item].data) + p.begin,
                        image + job.plan.extent[p.item] + p.begin - unit.offset, p.length});
  }
  return copies;
}

}  // namespace

struct AsyncSaver::Impl {
  Repository& repo;
  AsyncOptions opts;
  std::unique_ptr<StagingPool> own_pool;  // given to Create, or for huge pages
  StagingPool* pool = nullptr;
  std::uint64_t last_staging = 0;
  std::unique_ptr<io::IoBackend> backend;
  std::thread worker;
  std::shared_ptr<AsyncSave::State> current;

  Impl(Repository& r, const AsyncOptions& o) : repo(r), opts(o) {}

  void JoinWorker() {
    if (worker.joinable()) worker.join();
  }

  // The background half of a save.
  Status Persist(const std::shared_ptr<Job>& job) {
    Options options = repo.options();
    auto written = repo.WriteRankWith(job->spec, [&](const engine::ShardTarget& target,
                                                     void* out) -> Status {
      double t0 = os::MonotonicSeconds();
      SW_ASSIGN_OR_RETURN(std::vector<os::File> files, engine::CreateShardFiles(target, job->plan));
      for (std::size_t w = 0; w < job->waves.size(); ++w) {
        {
          std::unique_lock lock(job->mu);
          job->cv.wait(lock, [&] { return job->staged > w || job->abandon; });
          if (job->abandon) return job->abandon_status;
        }
        const Wave& wave = job->waves[w];
        std::vector<io::IoUnit> units;
        units.reserve(wave.u1 - wave.u0);
        for (std::size_t u = wave.u0; u < wave.u1; ++u) {
          const os::File& f = files[job->plan.units[u].file];
          units.push_back({f.fd(), &f.path(), job->plan.units[u].offset,
                           static_cast<std::uint32_t>(job->plan.units[u].length),
                           job->Image(u, wave)});
        }
        // Checksums are computed here, over the staged bytes, just before
        // each unit is written: they cost the training loop nothing.
        SW_RETURN_IF_ERROR(backend->Write(units, [&](std::size_t i, std::byte*) {
          engine::ChecksumUnit(job->plan, wave.u0 + i, units[i].src);
          return Status::Ok();
        }));
        std::lock_guard lock(job->mu);
        job->written = w + 1;
        job->cv.notify_all();
      }
      for (os::File& f : files) {
        SW_RETURN_IF_ERROR(os::Fsync(f.fd(), f.path()));
        SW_RETURN_IF_ERROR(f.Close());
      }
      os::CrashPoint("shard_written");
      auto* index = static_cast<engine::ShardIndex*>(out);
      *index = engine::MakeIndex(job->plan, job->meta, target.path, backend->name(),
                                 target.direct_io);
      index->seconds = os::MonotonicSeconds() - t0;
      return Status::Ok();
    });
    if (!written.ok()) return written.status();
    if (job->spec.rank == 0) return repo.Commit(job->spec).status();
    return repo.WaitCommitted(job->spec, options.commit_timeout_s);
  }

  // With OverlapPolicy::kSkip and the previous save still persisting: the
  // handle of a skipped save; else null.
  std::shared_ptr<AsyncSave> SkipIfBusy(const std::string& name, double t0) {
    if (!current || opts.overlap != OverlapPolicy::kSkip) return nullptr;
    {
      std::lock_guard lock(current->mu);
      if (current->done) return nullptr;
    }
    auto state = std::make_shared<AsyncSave::State>();
    state->skipped = true;
    state->name = name;
    state->status = Status(StatusCode::kAborted,
                           "skipped: the previous save (" + current->name + ") is still persisting");
    state->done = true;
    state->stall = os::MonotonicSeconds() - t0;
    return std::make_shared<AsyncSave>(state);
  }

  // Waits for the previous save; its failure, if nobody saw it yet.
  Status JoinPrevious() {
    if (!current) return Status::Ok();
    JoinWorker();
    std::lock_guard lock(current->mu);
    if (current->status.ok() || current->observed) return Status::Ok();
    current->observed = true;
    return current->status.WithContext("previous async save " + current->name +
                                       " failed (not saved now; call again to save)");
  }

  // The shard's plan, a staging lease and the waves that fit in it.
  Result<std::shared_ptr<Job>> PlanJob(const SaveSpec& in, std::span<const WriteItem> items,
                                       AsyncSave::State& state) {
    SaveSpec spec = in;
    SW_RETURN_IF_ERROR(Repository::Normalize(spec));
    state.name = spec.name;
    SW_RETURN_IF_ERROR(Repository::CheckTarget(os::JoinPath(repo.root(), spec.name), spec.replace));
    auto job = std::make_shared<Job>();
    job->spec = spec;
    SW_ASSIGN_OR_RETURN(job->plan, engine::PlanShard(items, spec.rank, spec.save_id,
                                                     repo.options()));
    const std::uint64_t total = job->plan.total_size;
    std::uint64_t want = opts.staging_bytes ? std::min(total, opts.staging_bytes) : total;
    if (pool->capacity() > 0) want = std::min(want, pool->capacity());
    std::uint64_t max_unit = 0;
    for (const auto& u : job->plan.units) max_unit = std::max(max_unit, u.length);
    // Waves need room for two I/O units: one being written, one staged.
    auto too_small = [&](std::uint64_t size) -> Status {
      if (total <= size || io::AlignDown(size / 2) >= max_unit) return Status::Ok();
      return InvalidArgument("staging memory of " + FormatBytes(size) +
                             " is too small to stage in waves: it must hold two I/O units (" +
                             FormatBytes(2 * max_unit) + ")");
    };
    SW_RETURN_IF_ERROR(too_small(want));
    SW_ASSIGN_OR_RETURN(job->lease, pool->Acquire(want));
    SW_RETURN_IF_ERROR(too_small(job->lease->size()));
    last_staging = job->lease->size();
    job->waves = CutWaves(job->plan, job->lease->size());
    job->pool = job->lease->data();
    job->meta.assign(items.begin(), items.end());
    for (auto& w : job->meta) w.data = nullptr;  // the background never reads them
    state.bytes = job->plan.total_size;
    state.waves = static_cast<int>(job->waves.size());
    return job;
  }

  // Copies wave after wave into the pool, each once the background wrote
  // the wave two before it. Returns when the last is staged (the caller's
  // stall ends), or with the background's error if it failed meanwhile.
  Status StageWaves(Job& job, std::span<const WriteItem> items, AsyncSave::State& state,
                    double t0) {
    const int threads = opts.copy_threads > 0 ? opts.copy_threads
                                              : repo.options().EffectiveThreads();
    for (std::size_t w = 0; w < job.waves.size(); ++w) {
      {
        std::unique_lock lock(job.mu);
        job.cv.wait(lock, [&] { return w < 2 || job.written >= w - 1 || job.failed; });
        if (job.failed) break;
      }
      os::ThrowPoint("stage_wave");
      Status staged = job.lease->Stage(WaveCopies(job, items, job.waves[w]), threads);
      if (!staged.ok()) {
        // A bug (the plan and the pool disagree): stop the background, report it.
        Abandon(job, state, staged);
        return staged;
      }
      if (w + 1 == job.waves.size()) {
        // The caller is free from here on; set before the last hand-off so
        // the background's persist time is measured from this moment.
        std::lock_guard lock(state.mu);
        state.returned_at = os::MonotonicSeconds();
        state.stall = state.returned_at - t0;
        state.copied = job.lease->copied_bytes();
      }
      std::lock_guard lock(job.mu);
      job.staged = w + 1;
      job.cv.notify_all();
    }
    {
      std::lock_guard lock(job.mu);
      if (!job.failed) return Status::Ok();
    }
    // The background failed while we were still staging: report it now.
    JoinWorker();
    std::lock_guard lock(state.mu);
    state.observed = true;
    return state.status;
  }

  // Stops the background of a save the foreground gave up on, and waits for
  // it: the background would otherwise wait for waves that never come.
  void Abandon(Job& job, AsyncSave::State& state, const Status& why) {
    {
      std::lock_guard lock(job.mu);
      job.abandon = true;
      job.abandon_status = why;
      job.cv.notify_all();
    }
    JoinWorker();
    std::lock_guard lock(state.mu);
    state.observed = true;  // the caller gets the foreground's error instead
  }

  // StageWaves, with an exception (an allocation failing) turned into the
  // save's error once the background has stopped.
  Status StageOrAbandon(Job& job, std::span<const WriteItem> items, AsyncSave::State& state,
                        double t0) {
    std::string what;
    try {
      return StageWaves(job, items, state, t0);
    } catch (const std::exception& e) {
      what = e.what();
    } catch (...) {
      what = "an exception that is not a std::exception";
    }
    Status failed(StatusCode::kInternal, "async save " + state.name + ": staging failed: " + what);
    Abandon(job, state, failed);
    return failed;
  }

  void RunWorker(std::shared_ptr<Job> job, std::shared_ptr<AsyncSave::State> state) {
    Status s;
    try {
      s = Persist(job);
    } catch (const std::exception& e) {
      // Never let an exception escape a background thread (that would abort
      // the process); it becomes the save's error.
      s = Status(StatusCode::kInternal, std::string("async save: ") + e.what());
    } catch (...) {
      s = Status(StatusCode::kInternal, "async save: an exception that is not a std::exception");
    }
    {
      std::lock_guard lock(job->mu);
      if (!s.ok()) job->failed = true;
      job->cv.notify_all();
    }
    state->Finish(std::move(s));
  }
};

AsyncSaver::AsyncSaver(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

AsyncSaver::~AsyncSaver() { impl_->JoinWorker(); }

Result<std::unique_ptr<AsyncSaver>> AsyncSaver::Create(Repository& repo,
                                                       const AsyncOptions& options,
                                                       std::unique_ptr<StagingPool> pool) {
  auto impl = std::make_unique<Impl>(repo, options);
  if (!pool && options.huge_pages)
    pool = std::make_unique<StagingPool>(
        [](std::uint64_t bytes) { return AllocateStagingMemory(bytes, /*huge_pages=*/true); });
  impl->own_pool = std::move(pool);
  impl->pool = impl->own_pool ? impl->own_pool.get() : &StagingPool::ForProcess();
  // A backend of its own: the foreground may use the repository meanwhile.
  SW_ASSIGN_OR_RETURN(impl->backend, io::MakeIoBackend(repo.options()));
  return std::unique_ptr<AsyncSaver>(new AsyncSaver(std::move(impl)));
}

std::uint64_t AsyncSaver::staging_bytes() const { return impl_->last_staging; }

Status AsyncSaver::WaitIdle() {
  impl_->JoinWorker();
  if (!impl_->current) return Status::Ok();
  std::lock_guard lock(impl_->current->mu);
  impl_->current->observed = true;
  return impl_->current->status;
}

Result<std::shared_ptr<AsyncSave>> AsyncSaver::SaveAsync(const SaveSpec& in,
                                                         std::span<const WriteItem> items) {
  Impl& m = *impl_;
  const double t0 = os::MonotonicSeconds();
  // 1. The previous save: wait for it, or skip this one.
  if (auto skipped = m.SkipIfBusy(in.name, t0)) return skipped;
  SW_RETURN_IF_ERROR(m.JoinPrevious());
  // 2. Plan the shard and the waves.
  auto state = std::make_shared<AsyncSave::State>();
  SW_ASSIGN_OR_RETURN(std::shared_ptr<Job> job, m.PlanJob(in, items, *state));
  // 3. Start the background, then stage wave after wave.
  try {
    m.worker = std::thread([&m, job, state] { m.RunWorker(job, state); });
  } catch (const std::exception& e) {  // system_error, or bad_alloc
    return Status(StatusCode::kUnavailable, "async save " + state->name +
                                                ": cannot start its background thread: " + e.what());
  }
  m.current = state;
  SW_RETURN_IF_ERROR(m.StageOrAbandon(*job, items, *state, t0));
  return std::make_shared<AsyncSave>(state);
}

}  // namespace shardwise
