// The `shardwise` command line tool as a function, for programs that ship it
// under another name (the Python package's `shardwise` command calls it).
// docs/cli.md describes the verbs. Exit codes: 0 success; 1 the operation
// found a problem (corruption, failed save); 2 usage error or unreadable
// root. Lives in the shardwise_cli library.
#pragma once

#include <ostream>
#include <string>
#include <vector>

namespace shardwise::cli {

// argv[0] is the program name; argv[1] the verb (ls, inspect, verify, gc,
// bench); --help or no verb prints the overview.
int RunCli(const std::vector<std::string>& argv, std::ostream& out, std::ostream& err);

}  // namespace shardwise::cli
