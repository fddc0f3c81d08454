// shardwise bench --async: several saves through one AsyncSaver, in one
// process. For each save it measures the stall (until SaveAsync returns) and
// the background persist time; while the persist runs, a CPU-bound loop
// stands in for training and its iteration rate is compared with its rate
// undisturbed. The machine's memcpy bandwidth over the same bytes into the
// same pre-faulted staging memory is measured in the same run.
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cli/bench.h"
#include "cli/cli.h"
#include "cli/output.h"
#include "cli/synthetic.h"
#include "common/parallel.h"
#include "io/aligned_buffer.h"
#include "os/posix.h"
#include "shardwise/async.h"

namespace shardwise::cli {
namespace {

std::uint64_t StatusField(const char* key) {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind(key, 0) == 0) return std::stoull(line.substr(std::strlen(key))) * 1024;
  return 0;
}

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  std::size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

// The stand-in for a training step: a 64x64 matrix product, compute-bound
// and cache-resident, like the inner loop of a real step.
struct TrainingLoop {
  std::vector<float> a = std::vector<float>(64 * 64, 1.0001f), b = a, c = a;
  void Step() {
    for (int i = 0; i < 64; ++i)
      for (int k = 0; k < 64; ++k) {
        float x = a[i * 64 + k];
        for (int j = 0; j < 64; ++j) c[i * 64 + j] += x * b[k * 64 + j];
      }
    a.swap(c);
    if (a[0] > 1e30f) std::fill(a.begin(), a.end(), 1.0001f);
  }
  // Steps per second over `seconds`.
  double Rate(double seconds) {
    double t0 = os::MonotonicSeconds(), t;
    long n = 0;
    do {
      Step();
      ++n;
      t = os::MonotonicSeconds();
    } while (t - t0 < seconds);
    return static_cast<double>(n) / (t - t0);
  }
};

// The machine's copy limit for the stall: plain memcpy of the state's bytes
// into pre-faulted memory, on one thread and on every CPU (each thread its
// own contiguous share), best median of 3 of either.
struct CopyLimit {
  double one_thread_gbps = 0, all_threads_gbps = 0;
  int threads = 1;
  double best() const { return std::max(one_thread_gbps, all_threads_gbps); }
};

CopyLimit MeasureCopyLimit(const SyntheticState& s, std::byte* pool, std::uint64_t pool_bytes) {
  // Each thread copies whole items round-robin into its own slice of the pool.
  auto run = [&](int threads) {
    std::vector<double> rates;
    const std::uint64_t slice = io::AlignDown(pool_bytes / threads);
    for (int rep = 0; rep < 3; ++rep) {
      double t0 = os::MonotonicSeconds();
      ParallelFor(0, threads, threads, [&](std::size_t t) {
        std::byte* dst = pool + t * slice;
        std::uint64_t off = 0;
        for (std::size_t i = t; i < s.items.size(); i += threads) {
          const auto* src = static_cast<const std::byte*>(s.items[i].data);
          for (std::uint64_t done = 0; done < s.items[i].nbytes;) {
            if (off >= slice) off = 0;
            std::uint64_t n = std::min(s.items[i].nbytes - done, slice - off);
            std::memcpy(dst + off, src + done, n);
            off += n;
            done += n;
          }
        }
      });
      rates.push_back(static_cast<double>(s.bytes) / (os::MonotonicSeconds() - t0) / 1e9);
    }
    return Median(rates);
  };
  CopyLimit limit;
  limit.threads = AvailableCpus();
  limit.one_thread_gbps = run(1);
  limit.all_threads_gbps = limit.threads > 1 ? run(limit.threads) : limit.one_thread_gbps;
  return limit;
}

}  // namespace

std::uint64_t PeakRssBytes() { return StatusField("VmHWM:"); }
std::uint64_t CurrentRssBytes() { return StatusField("VmRSS:"); }

int RunAsyncBench(const BenchParams& p, std::ostream& out, std::ostream& err) {
  if (p.ranks != 1) {
    err << "shardwise bench: --async runs one process (several saves through one engine); "
           "use --ranks 1\n";
    return kExitUsage;
  }
  if (p.saves < 2) {
    err << "shardwise bench: --saves must be at least 2 (the first save sets up the pool)\n";
    return kExitUsage;
  }
  auto repo = Repository::Open(p.dir, p.options, true);
  if (!repo.ok()) return UsageError(err, "bench", repo.status().message());
  const std::uint64_t baseline_rss = CurrentRssBytes();
  SyntheticState state = MakeTransformerState(p.size_per_rank, 0, 1, 20261129);
  AsyncOptions ao;
  ao.staging_bytes = p.staging_budget;
  auto saver = AsyncSaver::Create(**repo, ao);
  if (!saver.ok()) {
    err << "shardwise bench: " << saver.status().message() << '\n';
    return kExitProblem;
  }
  TrainingLoop loop;
  loop.Rate(0.2);  // warm up
  // The undisturbed rate is sampled between saves, so both rates see the
  // same machine conditions.
  std::vector<double> quiet;
  const std::string id = os::RandomHex(6);
  std::vector<double> stalls, persists;
  long busy_steps = 0;
  double busy_seconds = 0;
  double first_stall = 0;
  std::uint64_t file_bytes = 0;
  int waves = 0;
  std::string previous;
  bool tty = StderrIsTty() && !p.json;
  for (int i = 0; i < p.saves; ++i) {
    if (tty) err << "\rbench --async: save " << (i + 1) << "/" << p.saves << std::flush;
    SaveSpec spec;
    spec.name = "bench-async-" + id + "-" + std::to_string(i);
    auto h = (*saver)->SaveAsync(spec, state.items);
    if (!h.ok()) {
      err << "\nshardwise bench: " << h.status().message() << '\n';
      return kExitProblem;
    }
    // "Training" continues while the save persists.
    double t0 = os::MonotonicSeconds();
    long steps = 0;
    while (!(*h)->Done()) {
      loop.Step();
      ++steps;
    }
    double busy = os::MonotonicSeconds() - t0;
    Status s = (*h)->Wait();
    if (!s.ok()) {
      err << "\nshardwise bench: " << s.message() << '\n';
      return kExitProblem;
    }
    if (i == 0) first_stall = (*h)->stall_seconds();
    else stalls.push_back((*h)->stall_seconds());
    persists.push_back((*h)->persist_seconds());
    busy_steps += steps;
    busy_seconds += busy;
    file_bytes = (*h)->bytes();
    waves = (*h)->waves();
    quiet.push_back(loop.Rate(std::max(0.2, std::min(busy, 1.0))));
    // Keep only the newest benchmark checkpoint on disk.
    if (!previous.empty()) (void)os::RemoveTree(os::JoinPath((*repo)->root(), previous));
    previous = spec.name;
  }
  const double undisturbed = Median(quiet);
  if (tty) err << "\r\033[K" << std::flush;
  const std::uint64_t peak_rss = PeakRssBytes();
  // The limit for the stall, measured now on the same bytes and memory.
  auto probe = AllocateStagingMemory(state.bytes);
  const CopyLimit limit = probe.ok() ? MeasureCopyLimit(state, probe->data, probe->size)
                                     : CopyLimit{};
  const double memcpy_gbps = limit.best();
  if (!p.keep) {
    (void)os::RemoveTree(os::JoinPath((*repo)->root(), previous));
    auto latest = os::ReadSmallFile(os::JoinPath((*repo)->root(), "latest"), 4096);
    if (latest.ok() && latest->rfind("bench-async-" + id, 0) == 0)
      (void)os::Unlink(os::JoinPath((*repo)->root(), "latest"));
    RemoveLoneWriterLock((*repo)->root());
  }
  const std::uint64_t bytes = state.bytes;
  const double stall = Median(stalls), persist = Median(persists);
  // Too short a persist to time the loop against: no figure.
  const bool timed = busy_seconds >= 0.05;
  const double during_rate = timed ? static_cast<double>(busy_steps) / busy_seconds : 0;
  const double memcpy_s = memcpy_gbps > 0 ? static_cast<double>(bytes) / (memcpy_gbps * 1e9) : 0;
  auto gbps = [&](double s) { return s > 0 ? static_cast<double>(bytes) / s / 1e9 : 0; };
  const std::uint64_t staging = (*saver)->staging_bytes();
  const std::int64_t overhead = static_cast<std::int64_t>(peak_rss) -
                                static_cast<std::int64_t>(baseline_rss + bytes + staging);
  if (p.json) {
    using J = nlohmann::ordered_json;
    J j;
    j["mode"] = "async";
    j["dir"] = (*repo)->root();
    j["saves"] = p.saves;
    j["state_bytes"] = bytes;
    j["file_bytes"] = file_bytes;
    j["staging_bytes"] = staging;
    j["waves"] = waves;
    j["backend"] = std::string(IoBackendKindName(p.options.io_backend));
    j["stall"] = {{"bytes", bytes}, {"seconds", stall}, {"gb_per_s", gbps(stall)}};
    j["first_stall"] = {{"bytes", bytes}, {"seconds", first_stall}, {"gb_per_s", gbps(first_stall)}};
    j["persist"] = {{"bytes", bytes}, {"seconds", persist}, {"gb_per_s", gbps(persist)}};
    j["memcpy_gb_per_s"] = memcpy_gbps;
    j["memcpy"] = {{"one_thread_gb_per_s", limit.one_thread_gbps},
                   {"all_threads_gb_per_s", limit.all_threads_gbps},
                   {"threads", limit.threads}};
    j["stall_over_memcpy"] = memcpy_s > 0 ? stall / memcpy_s : 0;
    j["training"] = {{"undisturbed_steps_per_s", undisturbed},
                     {"during_persist_steps_per_s", timed ? J(during_rate) : J(nullptr)},
                     {"ratio", timed && undisturbed > 0 ? J(during_rate / undisturbed) : J(nullptr)}};
    j["baseline_rss_bytes"] = baseline_rss;
    j["peak_rss_bytes"] = peak_rss;
    j["rss_overhead_bytes"] = overhead;
    WriteJson(out, j);
    return kExitOk;
  }
  char line[256];
  out << "shardwise bench --async: " << p.saves << " saves of " << FormatBytes(bytes)
      << " through one engine in " << (*repo)->root() << "\n";
  out << "  staging pool " << FormatBytes(staging) << " (" << waves << " wave"
      << (waves == 1 ? "" : "s") << " per save)\n";
  std::snprintf(line, sizeof line,
                "  stall     %s median (%.2f GB/s); copy limit %s (%.2f GB/s): %.2fx\n",
                FormatSeconds(stall).c_str(), gbps(stall), FormatSeconds(memcpy_s).c_str(),
                memcpy_gbps, memcpy_s > 0 ? stall / memcpy_s : 0);
  out << line;
  std::snprintf(line, sizeof line,
                "            (the limit is the best memcpy into pre-faulted memory: %.2f GB/s on "
                "1 thread, %.2f GB/s on %d)\n",
                limit.one_thread_gbps, limit.all_threads_gbps, limit.threads);
  out << line;
  std::snprintf(line, sizeof line, "  first     %s (allocates and faults in the pool)\n",
                FormatSeconds(first_stall).c_str());
  out << line;
  std::snprintf(line, sizeof line, "  persist   %s median in the background (%.2f GB/s)\n",
                FormatSeconds(persist).c_str(), gbps(persist));
  out << line;
  if (timed) {
    std::snprintf(line, sizeof line,
                  "  training  %.0f%% of its undisturbed rate while persisting\n",
                  undisturbed > 0 ? 100 * during_rate / undisturbed : 0);
    out << line;
  } else {
    out << "  training  (persist too short to measure)\n";
  }
  out << "  memory    peak RSS " << FormatBytes(peak_rss) << " = baseline "
      << FormatBytes(baseline_rss) << " + state " << FormatBytes(bytes) << " + pool "
      << FormatBytes(staging) << " + " << FormatBytes(overhead > 0 ? overhead : 0) << "\n";
  return kExitOk;
}

}  // namespace shardwise::cli
