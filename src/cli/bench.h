// `shardwise bench`: the flags (shared by the synchronous and the --async
// runs), the rank-process harness, the reports. cmd_bench.cc ties them.
#pragma once

#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include "cli.h"
#include "shardwise/host.h"
#include "shardwise/options.h"
#include "shardwise/repository.h"

namespace shardwise::cli {

struct BenchParams {
  std::string dir;
  int ranks = 2;
  std::uint64_t size_per_rank = 1ull << 30;
  Options options;  // the environment, then the engine flags
  bool keep = false;
  bool json = false;
  double provisioned_mbps = 0;  // 0: not given
  // --async
  bool async = false;
  int saves = 5;
  std::uint64_t staging_budget = 0;  // 0: the state's size
};

// `shardwise bench --help`: the engine flags come from the option table.
std::string BenchHelp();
// Parses the flags. `help` is set for --help (nothing else is checked).
// Errors are usage errors (exit code 2).
Result<BenchParams> ParseBenchFlags(const Argv& argv, bool* help);

// What the rank processes of one synchronous run measured.
struct RankFigures {
  double save_s = 0, load_s = 0;  // wall clock, parent's view
  double max_write_s = 0, commit_s = 0;
  double save_cpu_s = 0, load_cpu_s = 0;  // every thread of every rank
  std::uint64_t data_bytes = 0, file_bytes = 0;
  std::size_t items = 0;
  std::string backend;
  bool direct_io = false;
};
// Forks p.ranks processes that save one checkpoint named spec.name into
// `root` at once (rank 0 commits), then load it back, verify every checksum
// and compare it bit for bit.
Result<RankFigures> RunRanks(const BenchParams& p, const std::string& root, const SaveSpec& spec,
                             std::ostream& err);

struct BenchReport {
  const BenchParams& params;
  std::string root;
  StorageReport storage;
  RankFigures figures;
  HostLimits limits;
  std::string kept;  // the checkpoint's directory with --keep
};
void PrintBenchReport(const BenchReport& r, std::ostream& out);
void PrintBenchJson(const BenchReport& r, std::ostream& out);

int RunAsyncBench(const BenchParams& p, std::ostream& out, std::ostream& err);

// Removes the benchmark's checkpoint, and the root itself when the run
// created it and nothing else is in it, so the directory is left as found.
void RemoveBenchCheckpoint(Repository& repo, const std::string& name, bool root_created);

// Refuses, before anything is allocated or written, a run that cannot fit:
// `copies` x the ranks' state in the memory the host has available, or the
// checkpoint on the filesystem of D (of its nearest existing parent).
Status CheckBenchFits(const BenchParams& p, int copies);

// A random [0-9a-f] id of `chars` characters (checkpoint names of a run).
std::string RandomId(int chars);

}  // namespace shardwise::cli
