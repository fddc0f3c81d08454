// shardwise bench --async: several saves through one AsyncSaver, in one
// process. For each save it measures the stall (until SaveAsync returns) and
// the background persist time; while the persist runs, a CPU-bound loop
// stands in for training and its iteration rate is compared with its rate
// undisturbed. The machine's memcpy bandwidth over the same bytes into the
// same pre-faulted staging memory is measured in the same run.
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "bench.h"
#include "output.h"
#include "shardwise/async.h"
#include "synthetic.h"

namespace shardwise::cli {
namespace {

// VmHWM (peak) or VmRSS (current) of this process, bytes.
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
    double t0 = MonotonicNow(), t;
    long n = 0;
    do {
      Step();
      ++n;
      t = MonotonicNow();
    } while (t - t0 < seconds);
    return static_cast<double>(n) / (t - t0);
  }
};

// What the saves measured.
struct AsyncFigures {
  std::vector<double> stalls;  // the saves after the first
  std::vector<double> persists;
  std::vector<double> quiet;   // the loop's undisturbed rate, between saves
  double first_stall = 0;
  long busy_steps = 0;         // the loop's steps while saves persisted
  double busy_seconds = 0;
  std::uint64_t file_bytes = 0, staging_bytes = 0, baseline_rss = 0, peak_rss = 0;
  int waves = 0;
  Rate copy;  // the limit for the stall
  int threads = 1;
};

// Runs p.saves saves of `state` through one engine while a CPU-bound loop
// stands in for training; keeps only the newest checkpoint on disk. Returns
// the name of the last one.
Result<std::string> RunSaves(const BenchParams& p, Repository& repo, const SyntheticState& state,
                             AsyncFigures& f, std::ostream& err) {
  AsyncOptions ao;
  ao.staging_bytes = p.staging_budget;
  SW_ASSIGN_OR_RETURN(auto saver, AsyncSaver::Create(repo, ao));
  TrainingLoop loop;
  loop.Rate(0.2);  // warm up
  const std::string id = RandomId(12);
  std::string previous;
  const bool tty = StderrIsTty() && !p.json;
  for (int i = 0; i < p.saves; ++i) {
    if (tty) err << "\rbench --async: save " << (i + 1) << "/" << p.saves << std::flush;
    SaveSpec spec;
    spec.name = "bench-async-" + id + "-" + std::to_string(i);
    SW_ASSIGN_OR_RETURN(auto h, saver->SaveAsync(spec, state.items));
    // "Training" continues while the save persists.
    const double t0 = MonotonicNow();
    long steps = 0;
    for (; !h->Done(); ++steps) loop.Step();
    const double busy = MonotonicNow() - t0;
    SW_RETURN_IF_ERROR(h->Wait());
    if (i == 0) f.first_stall = h->stall_seconds();
    else f.stalls.push_back(h->stall_seconds());
    f.persists.push_back(h->persist_seconds());
    f.busy_steps += steps;
    f.busy_seconds += busy;
    f.file_bytes = h->bytes();
    f.waves = h->waves();
    // The undisturbed rate is sampled between saves, so both rates see the
    // same machine conditions.
    f.quiet.push_back(loop.Rate(std::max(0.2, std::min(busy, 1.0))));
    if (!previous.empty()) (void)repo.Delete(previous);
    previous = spec.name;
  }
  if (tty) err << "\r\033[K" << std::flush;
  f.staging_bytes = saver->staging_bytes();
  return previous;
}

void PrintAsyncJson(const BenchParams& p, const std::string& root, std::uint64_t bytes,
                    const AsyncFigures& f, std::ostream& out) {
  using J = nlohmann::ordered_json;
  const double stall = Median(f.stalls), persist = Median(f.persists);
  const double undisturbed = Median(f.quiet);
  // Too short a persist to time the loop against: no figure.
  const bool timed = f.busy_seconds >= 0.05;
  const double during = timed ? static_cast<double>(f.busy_steps) / f.busy_seconds : 0;
  const double memcpy_s = f.copy.best() > 0 ? static_cast<double>(bytes) / (f.copy.best() * 1e9) : 0;
  auto gbps = [&](double s) { return s > 0 ? static_cast<double>(bytes) / s / 1e9 : 0; };
  J j;
  j["mode"] = "async";
  j["dir"] = root;
  j["saves"] = p.saves;
  j["state_bytes"] = bytes;
  j["file_bytes"] = f.file_bytes;
  j["staging_bytes"] = f.staging_bytes;
  j["waves"] = f.waves;
  j["backend"] = std::string(IoBackendKindName(p.options.io_backend));
  j["stall"] = {{"bytes", bytes}, {"seconds", stall}, {"gb_per_s", gbps(stall)}};
  j["first_stall"] = {{"bytes", bytes}, {"seconds", f.first_stall}, {"gb_per_s", gbps(f.first_stall)}};
  j["persist"] = {{"bytes", bytes}, {"seconds", persist}, {"gb_per_s", gbps(persist)}};
  j["memcpy_gb_per_s"] = f.copy.best();
  j["memcpy"] = {{"one_thread_gb_per_s", f.copy.one_thread_gbps},
                 {"all_threads_gb_per_s", f.copy.all_threads_gbps},
                 {"threads", f.threads}};
  j["stall_over_memcpy"] = memcpy_s > 0 ? stall / memcpy_s : 0;
  j["training"] = {{"undisturbed_steps_per_s", undisturbed},
                   {"during_persist_steps_per_s", timed ? J(during) : J(nullptr)},
                   {"ratio", timed && undisturbed > 0 ? J(during / undisturbed) : J(nullptr)}};
  j["baseline_rss_bytes"] = f.baseline_rss;
  j["peak_rss_bytes"] = f.peak_rss;
  j["rss_overhead_bytes"] = static_cast<std::int64_t>(f.peak_rss) -
                            static_cast<std::int64_t>(f.baseline_rss + bytes + f.staging_bytes);
  WriteJson(out, j);
}

void PrintAsyncReport(const BenchParams& p, const std::string& root, std::uint64_t bytes,
                      const AsyncFigures& f, std::ostream& out) {
  const double stall = Median(f.stalls), persist = Median(f.persists);
  const double undisturbed = Median(f.quiet);
  const double memcpy_s = f.copy.best() > 0 ? static_cast<double>(bytes) / (f.copy.best() * 1e9) : 0;
  auto gbps = [&](double s) { return s > 0 ? static_cast<double>(bytes) / s / 1e9 : 0; };
  const std::int64_t overhead = static_cast<std::int64_t>(f.peak_rss) -
                                static_cast<std::int64_t>(f.baseline_rss + bytes + f.staging_bytes);
  char line[256];
  out << "shardwise bench --async: " << p.saves << " saves of " << FormatBytes(bytes)
      << " through one engine in " << root << "\n";
  out << "  staging pool " << FormatBytes(f.staging_bytes) << " (" << f.waves << " wave"
      << (f.waves == 1 ? "" : "s") << " per save)\n";
  std::snprintf(line, sizeof line,
                "  stall     %s median (%.2f GB/s); copy limit %s (%.2f GB/s): %.2fx\n",
                FormatSeconds(stall).c_str(), gbps(stall), FormatSeconds(memcpy_s).c_str(),
                f.copy.best(), memcpy_s > 0 ? stall / memcpy_s : 0);
  out << line;
  std::snprintf(line, sizeof line,
                "            (the limit is the best memcpy into pre-faulted memory: %.2f GB/s on "
                "1 thread, %.2f GB/s on %d)\n",
                f.copy.one_thread_gbps, f.copy.all_threads_gbps, f.threads);
  out << line;
  std::snprintf(line, sizeof line, "  first     %s (allocates and faults in the pool)\n",
                FormatSeconds(f.first_stall).c_str());
  out << line;
  std::snprintf(line, sizeof line, "  persist   %s median in the background (%.2f GB/s)\n",
                FormatSeconds(persist).c_str(), gbps(persist));
  out << line;
  if (f.busy_seconds >= 0.05) {
    const double during = static_cast<double>(f.busy_steps) / f.busy_seconds;
    std::snprintf(line, sizeof line,
                  "  training  %.0f%% of its undisturbed rate while persisting\n",
                  undisturbed > 0 ? 100 * during / undisturbed : 0);
    out << line;
  } else {
    out << "  training  (persist too short to measure)\n";
  }
  out << "  memory    peak RSS " << FormatBytes(f.peak_rss) << " = baseline "
      << FormatBytes(f.baseline_rss) << " + state " << FormatBytes(bytes) << " + pool "
      << FormatBytes(f.staging_bytes) << " + " << FormatBytes(overhead > 0 ? overhead : 0) << "\n";
}

}  // namespace


int RunAsyncBench(const BenchParams& p, std::ostream& out, std::ostream& err) {
  if (p.ranks != 1)
    return UsageError(err, "bench", "--async runs one process (several saves through one "
                                    "engine); use --ranks 1");
  // The state and its staged copy in memory; on disk, the checkpoint being
  // written while the previous one is kept.
  if (Status s = CheckBenchFits(p, 2); !s.ok()) return UsageError(err, "bench", s.message());
  std::error_code ec;
  const bool root_created = !std::filesystem::exists(p.dir, ec);
  auto repo = Repository::Open(p.dir, p.options, true);
  if (!repo.ok()) return PathError(err, "bench", repo.status().message());
  AsyncFigures f;
  f.baseline_rss = StatusField("VmRSS:");
  const SyntheticState state = MakeTransformerState(p.size_per_rank, 0, 1, 20261129);
  auto last = RunSaves(p, **repo, state, f, err);
  if (!last.ok() && root_created)
    std::filesystem::remove_all((*repo)->root(), ec);  // what the run made
  if (!last.ok()) {
    // A flag the engine refuses (--staging-budget too small) is a usage error.
    if (last.status().code() == StatusCode::kInvalidArgument)
      return UsageError(err, "bench", last.status().message());
    err << "\nshardwise bench: " << last.status().message() << '\n';
    return kExitProblem;
  }
  f.peak_rss = StatusField("VmHWM:");
  // The limit for the stall, measured now on the same bytes and memory.
  if (auto probe = AllocateStagingMemory(state.bytes); probe.ok())
    f.copy = MeasureCopyInto({probe->data, state.bytes}, &f.threads);
  if (!p.keep) RemoveBenchCheckpoint(**repo, *last, root_created);
  if (p.json) PrintAsyncJson(p, (*repo)->root(), state.bytes, f, out);
  else PrintAsyncReport(p, (*repo)->root(), state.bytes, f, out);
  return kExitOk;
}

}  // namespace shardwise::cli
