// The shardwise CLI. main only dispatches; the verbs live in src/cli, behind
// the public entry point shardwise/cli.h.
#include <iostream>

#include <string>
#include <vector>

#include "shardwise/cli.h"

int main(int argc, char** argv) {
  std::ios::sync_with_stdio(false);
  std::vector<std::string> args(argv, argv + argc);
  int rc = shardwise::cli::RunCli(args, std::cout, std::cerr);
  std::cout.flush();
  return rc;
}
