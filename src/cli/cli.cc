#include "cli.h"

#include <functional>

#include "output.h"
#include "shardwise/options.h"
#include "shardwise/version.h"

namespace shardwise::cli {
namespace {

constexpr char kOverview[] = R"(shardwise - crash-consistent parallel checkpoints

Usage: shardwise <command> [options]

Commands:
  ls ROOT          list committed checkpoints and staging (in-progress or
                   abandoned) saves
  inspect CKPT     show a checkpoint's items, dtypes, shapes, chunks and files
  verify PATH      re-read a checkpoint (or every checkpoint of a root) and
                   check every checksum; exit 1 on any damage
  gc ROOT          remove abandoned staging directories; apply retention
                   (--keep-last N, --keep-every K)
  bench --dir D    measure save and load throughput with R processes
  options          every engine option: its SHARDWISE_* variable, Python
                   keyword, bench flag, default and current value

Every command takes --help and --json (stable, documented machine output;
see docs/cli.md).

Exit codes: 0 success, 1 a problem was found (damage, failed save),
            2 usage error or unreadable path.
)";

// "Environment: SHARDWISE_IO_BACKEND, ..." from the option table.
std::string Overview() {
  std::string vars;
  for (const OptionInfo& row : OptionTable()) vars += (vars.empty() ? "" : ", ") + std::string(row.env);
  return kOverview + Wrap("\nEnvironment:", vars + " (shardwise options explains each; "
                                              "docs/cpp-api.md)", 0);
}

}  // namespace

int RunCli(const Argv& argv, std::ostream& out, std::ostream& err) {
  if (argv.size() < 2 || argv[1] == "--help" || argv[1] == "-h" || argv[1] == "help") {
    (argv.size() < 2 ? err : out) << Overview();
    return argv.size() < 2 ? kExitUsage : kExitOk;
  }
  if (argv[1] == "--version") {
    out << "shardwise " << Version() << "\n";
    return kExitOk;
  }
  using Verb = std::function<int(const Argv&, std::ostream&, std::ostream&)>;
  const std::pair<const char*, Verb> verbs[] = {
      {"ls", RunLs},       {"inspect", RunInspect}, {"verify", RunVerify},
      {"gc", RunGc},       {"bench", RunBench},     {"options", RunOptions},
  };
  Argv rest(argv.begin() + 2, argv.end());
  for (const auto& [name, fn] : verbs)
    if (argv[1] == name) return fn(rest, out, err);
  err << "shardwise: unknown command '" << argv[1] << "'\n\n" << Overview();
  return kExitUsage;
}

}  // namespace shardwise::cli
