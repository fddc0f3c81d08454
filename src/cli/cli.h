// The `shardwise` command: each verb is a function that takes its arguments
// and output streams and returns the exit code, so tests call them directly.
// Exit codes: 0 success; 1 the operation found a problem (corruption,
// failed save); 2 usage error or unreadable root.
#pragma once

#include <ostream>
#include <string>
#include <vector>

#include "shardwise/cli.h"

namespace shardwise::cli {

inline constexpr int kExitOk = 0;
inline constexpr int kExitProblem = 1;
inline constexpr int kExitUsage = 2;

using Argv = std::vector<std::string>;

int RunLs(const Argv& args, std::ostream& out, std::ostream& err);
int RunInspect(const Argv& args, std::ostream& out, std::ostream& err);
int RunVerify(const Argv& args, std::ostream& out, std::ostream& err);
int RunGc(const Argv& args, std::ostream& out, std::ostream& err);
int RunBench(const Argv& args, std::ostream& out, std::ostream& err);
int RunOptions(const Argv& args, std::ostream& out, std::ostream& err);

}  // namespace shardwise::cli
