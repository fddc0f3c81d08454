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

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "cli/synthetic.h"
#include "os/posix.h"
#include "shardwise/shardwise.h"

using namespace shardwise;

namespace {

// Under ASan or TSan, freed memory sits in the sanitizer's quarantine and
// shadow memory grows: resident memory says nothing about leaks there (ASan's
// own leak check at exit does). The RSS bound applies to normal builds.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
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

}  // namespace

int main(int argc, char** argv) {
  std::string dir;
  int saves = 200, keep_last = 3, warmup = 10;
  std::uint64_t size = 256ull << 20;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    std::string v = i + 1 < argc ? argv[i + 1] : "";
    if (a == "--dir") dir = v, ++i;
    else if (a == "--saves") saves = std::atoi(v.c_str()), ++i;
    else if (a == "--keep-last") keep_last = std::atoi(v.c_str()), ++i;
    else if (a == "--warmup") warmup = std::atoi(v.c_str()), ++i;
    else if (a == "--size") {
      auto s = ParseSize(v);
      if (!s.ok()) return Fail(s.status().message());
      size = *s;
      ++i;
    } else {
      return Fail("usage: sw_soak --dir D [--saves N] [--size SIZE] [--keep-last K] [--warmup W]");
    }
  }
  if (dir.empty() || saves <= warmup || keep_last < 1 || warmup < 1)
    return Fail("need --dir, --saves > --warmup >= 1, --keep-last >= 1");
  auto repo = Repository::Open(dir, Options());
  if (!repo.ok()) return Fail(repo.status().ToString());
  auto saver = AsyncSaver::Create(**repo);
  if (!saver.ok()) return Fail(saver.status().ToString());
  cli::SyntheticState state = cli::MakeTransformerState(size, 0, 1, 42);
  GcOptions gc;
  gc.keep_last = keep_last;

  std::uint64_t rss_warm = 0, pool_warm = 0;
  int fds_warm = 0, threads_warm = 0;
  double t0 = os::MonotonicSeconds(), stall_sum = 0, stall_max = 0;
  volatile double sink = 0;
  for (int s = 1; s <= saves; ++s) {
    // "Training": every tensor changes a little.
    for (auto& item : state.items) {
      auto* p = static_cast<std::byte*>(const_cast<void*>(item.data));
      for (std::uint64_t b = 0; b < item.nbytes; b += 4096)
        p[b] = static_cast<std::byte>(static_cast<int>(p[b]) + s);
    }
    SaveSpec spec;
    spec.step = s;
    auto h = (*saver)->SaveAsync(spec, state.items);
    if (!h.ok()) return Fail("save " + std::to_string(s) + ": " + h.status().ToString());
    for (int k = 0; k < 20000; ++k) sink = sink + k * 0.5;  // work while it persists
    if (Status w = (*h)->Wait(); !w.ok()) return Fail("save " + std::to_string(s) + ": " + w.ToString());
    stall_sum += (*h)->stall_seconds();
    stall_max = std::max(stall_max, (*h)->stall_seconds());
    auto r = (*repo)->Gc(gc);
    if (!r.ok()) return Fail("retention after save " + std::to_string(s) + ": " + r.status().ToString());
    if (s == warmup) {
      rss_warm = RssBytes();
      fds_warm = CountEntries("/proc/self/fd");
      threads_warm = Threads();
      pool_warm = (*saver)->staging_bytes();
    }
  }
  const double seconds = os::MonotonicSeconds() - t0;
  const std::uint64_t rss_end = RssBytes();
  const int fds_end = CountEntries("/proc/self/fd");
  const int threads_end = Threads();
  const std::uint64_t pool_end = (*saver)->staging_bytes();

  // Every kept checkpoint verifies; the newest holds the last state.
  auto list = (*repo)->List();
  if (!list.ok()) return Fail(list.status().ToString());
  int kept = 0, bad = 0;
  std::string newest;
  for (const auto& c : *list) {
    if (c.state != CheckpointInfo::State::kCommitted) continue;
    ++kept;
    newest = c.name;
    auto reader = (*repo)->OpenCheckpoint(c.name);
    auto report = reader.ok() ? (*reader)->Verify() : Result<VerifyReport>(reader.status());
    if (!report.ok() || !report->problems.empty()) ++bad;
  }
  bool exact = newest == Repository::StepName(saves);
  if (exact) {
    auto reader = (*repo)->OpenCheckpoint(newest);
    for (const auto& item : state.items) {
      std::vector<std::byte> back(item.nbytes);
      if (!reader.ok() || !(*reader)->ReadItem(item.name, back.data(), back.size()).ok() ||
          std::memcmp(back.data(), item.data, item.nbytes) != 0) {
        exact = false;
        break;
      }
    }
  }
  const double growth = rss_warm ? (static_cast<double>(rss_end) - static_cast<double>(rss_warm)) /
                                       static_cast<double>(rss_warm)
                                 : 0;
  const bool ok = (!kCheckRss || growth < 0.05) && fds_end <= fds_warm && threads_end <= threads_warm &&
                  pool_end == pool_warm && bad == 0 && kept == keep_last && exact;
  std::printf(
      "{\"saves\": %d, \"state_bytes\": %llu, \"keep_last\": %d, \"seconds\": %.1f,\n"
      " \"stall_mean_s\": %.4f, \"stall_max_s\": %.4f,\n"
      " \"rss_after_warmup\": %llu, \"rss_end\": %llu, \"rss_growth\": %.4f, \"rss_checked\": %s,\n"
      " \"fds_after_warmup\": %d, \"fds_end\": %d, \"threads_after_warmup\": %d, \"threads_end\": %d,\n"
      " \"staging_bytes_after_warmup\": %llu, \"staging_bytes_end\": %llu,\n"
      " \"kept\": %d, \"kept_failing_verify\": %d, \"newest_bit_exact\": %s, \"ok\": %s}\n",
      saves, static_cast<unsigned long long>(state.bytes), keep_last, seconds,
      stall_sum / saves, stall_max, static_cast<unsigned long long>(rss_warm),
      static_cast<unsigned long long>(rss_end), growth, kCheckRss ? "true" : "false", fds_warm,
      fds_end, threads_warm,
      threads_end, static_cast<unsigned long long>(pool_warm),
      static_cast<unsigned long long>(pool_end), kept, bad, exact ? "true" : "false",
      ok ? "true" : "false");
  return ok ? 0 : 1;
}
