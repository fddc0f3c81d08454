// The shardwise CLI. main only dispatches; the verbs live in src/cli.
#include <iostream>

#include "cli/cli.h"

int main(int argc, char** argv) {
  std::ios::sync_with_stdio(false);
  shardwise::cli::Argv args(argv, argv + argc);
  int rc = shardwise::cli::RunCli(args, std::cout, std::cerr);
  std::cout.flush();
  return rc;
}
