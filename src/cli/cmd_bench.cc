// shardwise bench: the command. The flags are in bench_flags.cc, the rank
// processes in bench_ranks.cc, the report in bench_report.cc, and --async
// in cmd_bench_async.cc.
#include <sys/statvfs.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>

#include "bench.h"
#include "output.h"

namespace shardwise::cli {

std::string RandomId(int chars) {
  std::random_device rd;
  std::uniform_int_distribution<int> digit(0, 15);
  std::string id;
  for (int i = 0; i < chars; ++i) id += "0123456789abcdef"[digit(rd)];
  return id;
}

void RemoveBenchCheckpoint(Repository& repo, const std::string& name, bool root_created) {
  (void)repo.Delete(name);  // best effort: the figures are already measured
  if (!root_created) return;
  auto left = repo.List();
  if (left.ok() && left->empty()) {
    std::error_code ec;
    std::filesystem::remove_all(repo.root(), ec);
  }
}

namespace {

// /proc/meminfo's MemAvailable in bytes, or 0 where it cannot be read.
std::uint64_t MemAvailable() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  std::uint64_t kib = 0;
  std::string unit;
  while (in >> key >> kib >> unit)
    if (key == "MemAvailable:") return kib << 10;
  return 0;
}

std::string Gib(long double bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f GiB", static_cast<double>(bytes / (1ull << 30)));
  return buf;
}

}  // namespace

Status CheckBenchFits(const BenchParams& p, int copies) {
  const long double state = static_cast<long double>(p.size_per_rank) * p.ranks;
  const std::uint64_t mem = MemAvailable();
  if (mem && state * copies > mem)
    return InvalidArgument("--ranks x --size-per-rank is " + Gib(state) + " of state" +
                           (copies > 1 ? " (" + std::to_string(copies) + " copies: " +
                                             Gib(state * copies) + ")"
                                       : std::string()) +
                           ", more than the " + Gib(mem) + " of memory available here");
  std::error_code ec;
  std::filesystem::path at = std::filesystem::absolute(p.dir, ec);
  while (!at.empty() && !std::filesystem::exists(at, ec) && at != at.parent_path())
    at = at.parent_path();
  struct statvfs fs {};
  if (!at.empty() && ::statvfs(at.c_str(), &fs) == 0) {
    const long double free = static_cast<long double>(fs.f_bavail) * fs.f_frsize;
    if (state * copies > free)
      return InvalidArgument("the checkpoint needs " + Gib(state * copies) + " on " +
                             at.string() + "'s filesystem, which has " + Gib(free) + " free");
  }
  return Status::Ok();
}

int RunBench(const Argv& argv, std::ostream& out, std::ostream& err) {
  bool help = false;
  auto p = ParseBenchFlags(argv, &help);
  if (!p.ok()) return UsageError(err, "bench", p.status().message());
  if (help) {
    out << BenchHelp();
    return kExitOk;
  }
  if (p->async) return RunAsyncBench(*p, out, err);
  if (Status s = CheckBenchFits(*p, 1); !s.ok()) return UsageError(err, "bench", s.message());
  std::error_code ec;
  const bool root_created = !std::filesystem::exists(p->dir, ec);
  auto repo = Repository::Open(p->dir, p->options, /*create=*/true);
  if (!repo.ok()) return PathError(err, "bench", repo.status().message());
  // The same probe and policy the ranks' saves use, for the report.
  const int files = p->ranks * p->options.files_per_rank;
  auto storage = (*repo)->DescribeStorage(
      files, p->size_per_rank / static_cast<std::uint64_t>(p->options.files_per_rank));
  if (!storage.ok()) return UsageError(err, "bench", storage.status().message());

  SaveSpec spec;
  spec.save_id = RandomId(16);
  spec.name = "bench-" + spec.save_id;
  spec.world_size = p->ranks;
  spec.user_json = R"({"shardwise_bench":true})";
  auto figures = RunRanks(*p, (*repo)->root(), spec, err);
  if (!figures.ok()) {
    err << "shardwise bench: " << figures.status().message() << '\n';
    if (root_created) std::filesystem::remove_all((*repo)->root(), ec);  // what the run made
    return kExitProblem;
  }
  BenchReport report{*p, (*repo)->root(), *storage, *figures, {}, {}};
  // Measured once the ranks are gone, so it competes with nothing, over the
  // bytes the ranks saved (at most 256 MiB: larger buffers change nothing).
  const std::uint64_t saved = p->size_per_rank * static_cast<std::uint64_t>(p->ranks);
  report.limits = MeasureHostLimits(std::min<std::uint64_t>(saved, 256ull << 20));
  if (p->keep) report.kept = (std::filesystem::path((*repo)->root()) / spec.name).string();
  else RemoveBenchCheckpoint(**repo, spec.name, root_created);
  if (p->json) PrintBenchJson(report, out);
  else PrintBenchReport(report, out);
  return kExitOk;
}

}  // namespace shardwise::cli
