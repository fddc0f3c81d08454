#!/usr/bin/env bash
# The shardwise demo on a local directory: builds everything (scripts/setup.sh),
# then
#   1. measures parallel save and load with `shardwise bench` (2 processes);
#   2. runs a C++ trainer that checkpoints every 100 steps, kills it with
#      SIGKILL mid-run, and resumes it from the newest committed checkpoint;
#   3. lists, inspects and verifies the checkpoints, damages one byte of a
#      copy to show detection, and applies retention with gc.
# Usage: scripts/demo.sh [DIR]   (default: a new temporary directory)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh release
bin=build/release
dir=${1:-$(mktemp -d /tmp/shardwise-demo.XXXXXX)}
mkdir -p "$dir"
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "1. Parallel save and load: 2 processes x 256 MiB, commit, verify"
"$bin/shardwise" bench --dir "$dir/bench" --ranks 2 --size-per-rank 256MiB

say "2. Training with checkpoints every 100 steps; SIGKILL mid-run"
"$bin/example_trainer" "$dir/train" --steps 1000 --save-every 100 --step-ms 3 &
pid=$!
sleep 1.5
kill -9 "$pid" 2>/dev/null || true
wait "$pid" 2>/dev/null || true
echo "(trainer killed)"
"$bin/shardwise" ls "$dir/train"

say "   Resume from the newest committed checkpoint and finish"
"$bin/example_trainer" "$dir/train" --steps 1000 --save-every 100

say "   The same run without interruption ends in the same state"
"$bin/example_trainer" "$dir/train-straight" --steps 1000 --save-every 100 | tail -1

say "3. Inspect and verify"
"$bin/shardwise" inspect "$dir/train/step-000000001000"
"$bin/shardwise" verify "$dir/train"

say "   One flipped byte in a copy is detected (exit code 1)"
cp -r "$dir/train/step-000000001000" "$dir/damaged"
printf '\xff' | dd of="$dir/damaged/rank-00000.shard" bs=1 seek=5000 conv=notrunc status=none
set +e
"$bin/shardwise" verify "$dir/damaged"
echo "verify exit code: $?"
set -e

say "   Retention: keep the 3 newest"
"$bin/shardwise" gc "$dir/train" --keep-last 3
"$bin/shardwise" ls "$dir/train"
echo
echo "Demo files are in $dir"
