#!/usr/bin/env bash
# The whole benchmark suite, from a fresh machine: builds the release binaries
# and the Python package, installs the plotting dependency, then runs
# bench/run_all.py on the directory given (default /tmp/shardwise-bench).
# Arguments after the directory go to run_all.py (see bench/run_all.py --help).
#
#   bench/run.sh [DIR] [--runs 3] [--quick] ...
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-/tmp/shardwise-bench}
[[ $# -gt 0 ]] && shift
scripts/setup.sh release python
.venv/bin/pip install --quiet -r bench/requirements.txt 2>&1 | { grep -v '^WARNING: Location' || true; }
exec .venv/bin/python bench/run_all.py --dir "$dir" "$@"
