// The flags of `shardwise bench` and its --help. The engine flags
// (--io-backend, --queue-depth, ...) are rows of the option table
// (shardwise/options.h): the same parser as their SHARDWISE_* variables.
#include <cmath>
#include <cstdlib>

#include "args.h"
#include "bench.h"
#include "output.h"

namespace shardwise::cli {
namespace {

constexpr char kUsage[] = R"(Usage: shardwise bench --dir D [--ranks R] [--size-per-rank SIZE] [--keep] [--json]
                       [engine and Lustre flags] [--provisioned-mbps X]
       shardwise bench --async --dir D [--size-per-rank SIZE] [--saves N]
                       [--staging-budget SIZE] [engine flags] [--json]

Measure checkpoint throughput on directory D (created if missing). R
processes each build a synthetic rank state shaped like a transformer layer
stack (projection matrices, biases, norms; bf16), then all save at once
through the full commit protocol (shards fsynced, manifest, directory
fsyncs, rename). Then every rank loads its part back, verifying every
checksum, and compares it with what it saved.

Save time runs from the start signal until the coordinator's commit is
durable; load time until the last rank has read and verified its data.
The ranks run as torchrun's would on one node (LOCAL_WORLD_SIZE=R unless
set), so each copies and checksums on its share of the CPUs by default.
The report also gives the CPU time of each (user + system, every thread
of every rank, per GB), the machine's copy and CRC32C rates measured
afterwards over as many bytes as the ranks saved (at most 256 MiB), with the
time one copy and one checksum pass of those bytes take (the limit where
the data stays in memory, as on tmpfs), and the I/O
mode the root's filesystem got (O_DIRECT or buffered, and why). Its
"filesystem:" line names the filesystem and says whether Lustre layouts
were applied to the shard files (docs/lustre.md).

Options:
  --dir D              where to write (a checkpoint root)            [required]
  --ranks R            writer processes                              [2]
  --size-per-rank SIZE bytes per rank: 512MiB, 2GiB, 100MB...        [1GiB]
  --keep               leave the committed checkpoint in D
  --json               machine-readable output (schema in docs/cli.md)
  --provisioned-mbps X the file system's provisioned throughput in MB/s:
                       also report efficiency = achieved / provisioned.
                       For FSx for Lustre, `deploy/aws/fsx throughput
                       --mbps` prints it.

Engine and Lustre flags (each overrides its SHARDWISE_* variable; the
defaults are those of `shardwise options`):
)";

constexpr char kAsyncHelp[] = R"(
Asynchronous saves (one process, several saves through one engine):
  --async              report the stall (until SaveAsync returns; median of
                       the saves after the first), the first stall (sets up
                       the staging pool), the background persist time, the
                       memcpy bandwidth over the same bytes, how much of its
                       speed a CPU-bound "training" loop keeps while saves
                       persist, and the peak resident memory
  --saves N            saves to run                                  [5]
  --staging-budget S   staging pool size; smaller than the state: waves
                                                                     [state size]
  --help               this text

Exit codes: 0 measured and verified; 1 a save, load or comparison failed;
2 usage error.
)";

std::string EngineFlagLines() {
  std::string out;
  const Options defaults;
  for (const OptionInfo& row : OptionTable())
    if (!row.flag.empty())
      out += Wrap("  " + std::string(row.flag) + " " + std::string(row.values),
                  std::string(row.help) + " [" + row.show(defaults) + "]", 23);
  return out;
}

}  // namespace

std::string BenchHelp() { return kUsage + EngineFlagLines() + kAsyncHelp; }

Result<BenchParams> ParseBenchFlags(const Argv& argv, bool* help) {
  std::vector<OptSpec> spec = {{"json"}, {"keep"}, {"async"}, {"dir", true}, {"ranks", true},
                               {"size-per-rank", true}, {"saves", true},
                               {"staging-budget", true}, {"provisioned-mbps", true}};
  for (const OptionInfo& row : OptionTable())
    if (!row.flag.empty()) spec.push_back({std::string(row.flag.substr(2)), true});
  SW_ASSIGN_OR_RETURN(Args args, Args::Parse(argv, spec));
  *help = args.help();
  BenchParams p;
  if (*help) return p;
  if (!args.positional().empty())
    return InvalidArgument("unexpected argument '" + args.positional()[0] + "'");
  auto dir = args.Get("dir");
  if (!dir) return InvalidArgument("--dir is required");
  p.dir = *dir;
  p.json = args.json();
  p.keep = args.Has("keep");
  p.async = args.Has("async");
  SW_ASSIGN_OR_RETURN(p.options, Options::FromEnv());
  for (const OptionInfo& row : OptionTable())
    if (auto v = row.flag.empty() ? std::nullopt : args.Get(std::string(row.flag.substr(2))))
      SW_RETURN_IF_ERROR(SetOption(p.options, row.flag, *v));
  SW_RETURN_IF_ERROR(p.options.Validate());
  SW_ASSIGN_OR_RETURN(auto ranks, args.GetInt("ranks", 1, 1024));
  p.ranks = static_cast<int>(ranks.value_or(p.async ? 1 : 2));
  if (auto s = args.Get("size-per-rank")) {
    auto v = ParseSize(*s);
    if (!v.ok()) return v.status().WithContext("--size-per-rank");
    if (*v < (1u << 20)) return InvalidArgument("--size-per-rank must be at least 1MiB");
    p.size_per_rank = *v;
  }
  if (auto v = args.Get("provisioned-mbps")) {
    char* end = nullptr;
    p.provisioned_mbps = std::strtod(v->c_str(), &end);
    if (end == v->c_str() || *end != '\0' || !(p.provisioned_mbps > 0) ||
        !std::isfinite(p.provisioned_mbps))
      return InvalidArgument("--provisioned-mbps expects a positive number of MB/s");
  }
  if (!p.async) {
    if (args.Has("saves") || args.Has("staging-budget"))
      return InvalidArgument("--saves and --staging-budget go with --async");
    return p;
  }
  SW_ASSIGN_OR_RETURN(auto saves, args.GetInt("saves", 2, 10000));
  p.saves = static_cast<int>(saves.value_or(5));
  if (auto b = args.Get("staging-budget")) {
    auto v = ParseSize(*b);
    if (!v.ok()) return v.status().WithContext("--staging-budget");
    p.staging_budget = *v;
  }
  return p;
}

}  // namespace shardwise::cli
