// Soak: many consecutive asynchronous saves with retention, watching for
// leaks. docs/RELIABILITY.md records a long run; src/repo/soak_test.cc runs a
// short one in CI.
//
//   sw_soak --dir D [--saves 200] [--size 256MiB] [--keep-last 3] [--warmup 10]
//
// Each iteration changes the state (as training would), starts an async save
// of it, runs a little "training" while it persists, waits for it, and
// applies retention. After `warmup` saves it samples resident memory, open
// descriptors and threads; at the end it samples again, verifies every kept
// checkpoint (every checksum) and compares the newest one bit-exactly with
// the state it saved. Prints one JSON object; exits 1 when an invariant
// fails: RSS growth >= 5%, more descriptors or threads than after warmup,
// a staging pool that changed, a kept checkpoint that does not verify, or a
// count of kept checkpoints other than keep-last.
#include <dirent.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include "cli/synthetic.h"
#include "common/sanitizers.h"
#include "os/posix.h"
#include "shardwise/shardwise.h"

using namespace shardwise;

namespace {

// Under ASan or TSan, freed memory sits in the sanitizer's quarantine and
// shadow memory grows: resident memory says nothing about leaks there (ASan's
// own leak check at exit does). The RSS bound applies to normal builds.
#if defined(SW_ASAN) || defined(SW_TSAN)
constexpr bool kCheckRss = false;
#else
constexpr bool kCheckRss = true;
#endif

std::uint64_t RssBytes() {
  std::ifstream f("/proc/self/statm");
  std::uint64_t size = 0, resident = 0;
  f >> size >> resident;
  return resident * static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
}

int CountEntries(const char* dir) {
  int n = 0;
  if (DIR* d = ::opendir(dir)) {
    while (dirent* e = ::readdir(d))
      if (e->d_name[0] != '.') ++n;
    ::closedir(d);
  }
  return n - 1;  // opendir's own descriptor (fd) / none (task)
}

int Threads() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("Threads:", 0) == 0) return std::atoi(line.c_str() + 8);
  return -1;
}

int Fail(const std::string& why) {
  std::fprintf(stderr, "sw_soak: %s\n", why.c_str());
  return 2;
}

// An error that ends the run (exit 2), or nothing.
using Problem = std::optional<std::string>;

struct Config {
  std::string dir;
  int saves = 200, keep_last = 3, warmup = 10;
  std::uint64_t size = 256ull << 20;
};

Problem ParseArgs(int argc, char** argv, Config* c) {
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    std::string v = i + 1 < argc ? argv[i + 1] : "";
    if (a == "--dir") c->dir = v, ++i;
    else if (a == "--saves") c->saves = std::atoi(v.c_str()), ++i;
    else if (a == "--keep-last") c->keep_last = std::atoi(v.c_str()), ++i;
    else if (a == "--warmup") c->warmup = std::atoi(v.c_str()), ++i;
    else if (a == "--size") {
      auto s = ParseSize(v);
      if (!s.ok()) return s.status().message();
      c->size = *s;
      ++i;
    } else {
      return "usage: sw_soak --dir D [--saves N] [--size SIZE] [--keep-last K] [--warmup W]";
    }
  }
  if (c->dir.empty() || c->saves <= c->warmup || c->keep_last < 1 || c->warmup < 1)
    return "need --dir, --saves > --warmup >= 1, --keep-last >= 1";
  return std::nullopt;
}

// What may leak: resident memory, descriptors, threads, the staging pool.
struct Sample {
  std::uint64_t rss = 0, pool = 0;
  int fds = 0, threads = 0;
};

Sample TakeSample(const AsyncSaver& saver) {
  Sample s;
  s.rss = RssBytes();
  s.fds = CountEntries("/proc/self/fd");
  s.threads = Threads();
  s.pool = saver.staging_bytes();
  return s;
}

// "Training": every tensor changes a little.
void Train(cli::SyntheticState& state, int step) {
  for (auto& item : state.items) {
    auto* p = static_cast<std::byte*>(const_cast<void*>(item.data));
    for (std::uint64_t b = 0; b < item.nbytes; b += 4096)
      p[b] = static_cast<std::byte>(static_cast<int>(p[b]) + step);
  }
}

struct Stalls {
  double sum = 0, max = 0;
};

// The saves, each followed by retention; samples after `warmup` of them.
Problem RunSaves(const Config& c, Repository& repo, AsyncSaver& saver,
                 cli::SyntheticState& state, Sample* warm, Stalls* stalls) {
  GcOptions gc;
  gc.keep_last = c.keep_last;
  volatile double sink = 0;
  for (int s = 1; s <= c.saves; ++s) {
    Train(state, s);
    SaveSpec spec;
    spec.step = s;
    auto h = saver.SaveAsync(spec, state.items);
    if (!h.ok()) return "save " + std::to_string(s) + ": " + h.status().ToString();
    for (int k = 0; k < 20000; ++k) sink = sink + k * 0.5;  // work while it persists
    if (Status w = (*h)->Wait(); !w.ok()) return "save " + std::to_string(s) + ": " + w.ToString();
    stalls->sum += (*h)->stall_seconds();
    stalls->max = std::max(stalls->max, (*h)->stall_seconds());
    auto r = repo.Gc(gc);
    if (!r.ok()) return "retention after save " + std::to_string(s) + ": " + r.status().ToString();
    if (s == c.warmup) *warm = TakeSample(saver);
  }
  return std::nullopt;
}

struct Kept {
  int count = 0, failing_verify = 0;
  bool newest_exact = false;
};

// Every kept checkpoint verifies; the newest holds the last state.
Problem CheckKept(const Repository& repo, int saves, const cli::SyntheticState& state,
                  Kept* kept) {
  auto list = repo.List();
  if (!list.ok()) return list.status().ToString();
  std::string newest;
  for (const auto& c : *list) {
    if (c.state != CheckpointInfo::State::kCommitted) continue;
    ++kept->count;
    newest = c.name;
    auto reader = repo.OpenCheckpoint(c.name);
    auto report = reader.ok() ? (*reader)->Verify() : Result<VerifyReport>(reader.status());
    if (!report.ok() || !report->problems.empty()) ++kept->failing_verify;
  }
  bool exact = newest == Repository::StepName(saves);
  if (exact) {
    auto reader = repo.OpenCheckpoint(newest);
    for (const auto& item : state.items) {
      std::vector<std::byte> back(item.nbytes);
      if (!reader.ok() || !(*reader)->ReadItem(item.name, back.data(), back.size()).ok() ||
          std::memcmp(back.data(), item.data, item.nbytes) != 0) {
        exact = false;
        break;
      }
    }
  }
  kept->newest_exact = exact;
  return std::nullopt;
}

// Prints the JSON report; returns whether every invariant holds.
bool Report(const Config& c, const cli::SyntheticState& state, double seconds,
            const Stalls& stalls, const Sample& warm, const Sample& end, const Kept& kept) {
  const double growth = warm.rss ? (static_cast<double>(end.rss) - static_cast<double>(warm.rss)) /
                                       static_cast<double>(warm.rss)
                                 : 0;
  const bool ok = (!kCheckRss || growth < 0.05) && end.fds <= warm.fds &&
                  end.threads <= warm.threads && end.pool == warm.pool &&
                  kept.failing_verify == 0 && kept.count == c.keep_last && kept.newest_exact;
  std::printf(
      "{\"saves\": %d, \"state_bytes\": %llu, \"keep_last\": %d, \"seconds\": %.1f,\n"
      " \"stall_mean_s\": %.4f, \"stall_max_s\": %.4f,\n"
      " \"rss_after_warmup\": %llu, \"rss_end\": %llu, \"rss_growth\": %.4f, \"rss_checked\": %s,\n"
      " \"fds_after_warmup\": %d, \"fds_end\": %d, \"threads_after_warmup\": %d, \"threads_end\": %d,\n"
      " \"staging_bytes_after_warmup\": %llu, \"staging_bytes_end\": %llu,\n"
      " \"kept\": %d, \"kept_failing_verify\": %d, \"newest_bit_exact\": %s, \"ok\": %s}\n",
      c.saves, static_cast<unsigned long long>(state.bytes), c.keep_last, seconds,
      stalls.sum / c.saves, stalls.max, static_cast<unsigned long long>(warm.rss),
      static_cast<unsigned long long>(end.rss), growth, kCheckRss ? "true" : "false", warm.fds,
      end.fds, warm.threads, end.threads, static_cast<unsigned long long>(warm.pool),
      static_cast<unsigned long long>(end.pool), kept.count, kept.failing_verify,
      kept.newest_exact ? "true" : "false", ok ? "true" : "false");
  return ok;
}

}  // namespace

int main(int argc, char** argv) {
  Config c;
  if (Problem p = ParseArgs(argc, argv, &c)) return Fail(*p);
  auto repo = Repository::Open(c.dir, Options());
  if (!repo.ok()) return Fail(repo.status().ToString());
  auto saver = AsyncSaver::Create(**repo);
  if (!saver.ok()) return Fail(saver.status().ToString());
  cli::SyntheticState state = cli::MakeTransformerState(c.size, 0, 1, 42);

  Sample warm;
  Stalls stalls;
  const double t0 = os::MonotonicSeconds();
  if (Problem p = RunSaves(c, **repo, **saver, state, &warm, &stalls)) return Fail(*p);
  const double seconds = os::MonotonicSeconds() - t0;
  const Sample end = TakeSample(**saver);

  Kept kept;
  if (Problem p = CheckKept(**repo, c.saves, state, &kept)) return Fail(*p);
  return Report(c, state, seconds, stalls, warm, end, kept) ? 0 : 1;
}
