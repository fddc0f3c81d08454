// shardwise options: every option of the engine, from the option table
// (shardwise/options.h), with the value the environment gives it now.
#include <cstdlib>
#include <nlohmann/json.hpp>

#include "args.h"
#include "cli.h"
#include "output.h"
#include "shardwise/options.h"

namespace shardwise::cli {
namespace {

constexpr char kOptionsHelp[] = R"(Usage: shardwise options [--json | --markdown]

List every option of the engine: its SHARDWISE_* environment variable, its
Python keyword (shardwise.dcp.Writer and Reader, Checkpointer, Repository),
its `shardwise bench` flag, the values it takes, its default, and the value
the current environment gives it. A malformed variable is reported here as
it would be by a save.

Options:
  --json       machine-readable output (schema in docs/cli.md)
  --markdown   the table of docs/cpp-api.md ("Options and environment")
  --help       this text

Exit codes: 0 listed; 1 the environment holds a malformed value (listed
anyway, with the error); 2 usage error.
)";

std::string Code(std::string_view s) { return s.empty() ? "—" : "`" + std::string(s) + "`"; }

void PrintMarkdown(std::ostream& out) {
  const Options defaults;
  out << "| `Options` field | variable | Python keyword | bench flag | values | default | "
         "meaning |\n|---|---|---|---|---|---|---|\n";
  for (const OptionInfo& r : OptionTable()) {
    std::string help(r.help);
    for (std::size_t i = 0; (i = help.find('|', i)) != std::string::npos; i += 2)
      help.replace(i, 1, "\\|");
    out << "| " << Code(r.field) << " | " << Code(r.env) << " | " << Code(r.keyword) << " | "
        << Code(r.flag) << " | " << Code(r.values) << " | " << Code(r.show(defaults)) << " | "
        << help << " |\n";
  }
}

}  // namespace

int RunOptions(const Argv& argv, std::ostream& out, std::ostream& err) {
  auto args = Args::Parse(argv, {{"json"}, {"markdown"}});
  if (!args.ok()) return UsageError(err, "options", args.status().message());
  if (args->help()) {
    out << kOptionsHelp;
    return kExitOk;
  }
  if (!args->positional().empty())
    return UsageError(err, "options", "unexpected argument '" + args->positional()[0] + "'");
  if (args->Has("markdown") && args->Has("json"))
    return UsageError(err, "options", "--json and --markdown are two formats: pick one");
  if (args->Has("markdown")) {
    PrintMarkdown(out);
    return kExitOk;
  }
  const Options defaults;
  auto env = Options::FromEnv();
  nlohmann::ordered_json list = nlohmann::ordered_json::array();
  for (const OptionInfo& r : OptionTable()) {
    const char* set = std::getenv(std::string(r.env).c_str());
    const std::string now = env.ok() ? r.show(*env) : (set ? set : r.show(defaults));
    if (args->json()) {
      list.push_back({{"field", r.field}, {"env", r.env}, {"keyword", r.keyword},
                      {"flag", r.flag.empty() ? nlohmann::ordered_json(nullptr)
                                              : nlohmann::ordered_json(r.flag)},
                      {"values", r.values}, {"default", r.show(defaults)}, {"value", now},
                      {"from_environment", set != nullptr}, {"help", r.help}});
      continue;
    }
    std::string where = std::string(r.values) + "; Python " + std::string(r.keyword) + "=";
    if (!r.flag.empty()) where += ", bench " + std::string(r.flag);
    out << Wrap(std::string(r.env) + "=" + now + (set ? "" : " (default)"),
                "(" + where + ") " + std::string(r.help), 8);
  }
  if (args->json()) {
    nlohmann::ordered_json j = {{"options", list}};
    j["error"] = env.ok() ? nlohmann::ordered_json(nullptr)
                          : nlohmann::ordered_json(env.status().message());
    WriteJson(out, j);
  }
  if (!env.ok()) {
    err << "shardwise options: " << env.status().message() << '\n';
    return kExitProblem;
  }
  return kExitOk;
}

}  // namespace shardwise::cli
