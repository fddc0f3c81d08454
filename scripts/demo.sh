#!/usr/bin/env bash
# The shardwise demo on a local directory. Sets everything up first
# (scripts/setup.sh: system packages, C++ build, .venv with torch), then:
#   1. trains a small transformer with torchrun on 2 CPU processes (gloo),
#      checkpointing asynchronously every 25 steps with shardwise.Checkpointer;
#      kills the whole job with SIGKILL mid-run; restarts it, which resumes from
#      the newest valid checkpoint and finishes; prints the stall of each save
#      and the share of training time checkpointing cost;
#   2. lists and verifies the checkpoints, and shows that one flipped byte is
#      detected (exit code 1);
#   3. measures parallel save/load and the async stall with `shardwise bench`.
# Usage: scripts/demo.sh [DIR]   (default: a new temporary directory)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh release python
export PATH="$PWD/.venv/bin:$PATH"
bin=build/release
dir=${1:-$(mktemp -d /tmp/shardwise-demo.XXXXXX)}
mkdir -p "$dir"
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run_job() {
  torchrun --nproc-per-node 2 --master-port "$1" examples/python/train_demo.py \
    --root "$dir/ckpt" --steps 300 --save-every 25 2>&1 | grep --line-buffered '\[demo\]'
}

say "1. Training on 2 processes; async checkpoints every 25 steps; SIGKILL after 15 s"
setsid bash -c "$(declare -f run_job); dir='$dir'; run_job 29517" &
job=$!
sleep 15
# torchrun starts its workers in sessions of their own: kill them by name too.
pkill -9 -f "train_demo.py --root $dir/ckpt" 2>/dev/null || true
kill -9 -- "-$job" 2>/dev/null || true
wait "$job" 2>/dev/null || true
sleep 1
if pgrep -f "train_demo.py --root $dir/ckpt" >/dev/null; then
  echo "demo: a training process survived SIGKILL" >&2
  exit 1
fi
echo "(every process of the job killed with SIGKILL)"
shardwise ls "$dir/ckpt"

say "   Restart: resumes from the newest valid checkpoint and finishes"
run_job 29518

say "2. Verify every checkpoint; one flipped byte in a copy is detected"
shardwise verify "$dir/ckpt"
latest=$(shardwise ls "$dir/ckpt" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["latest"])')
cp -r "$dir/ckpt/$latest" "$dir/damaged"
printf '\xff' | dd of="$dir/damaged/rank-00000.shard" bs=1 seek=5000 conv=notrunc status=none
set +e
shardwise verify "$dir/damaged"
echo "verify exit code: $?"
set -e

say "3. Parallel save and load: 2 processes x 256 MiB (durable, then verified)"
"$bin/shardwise" bench --dir "$dir/bench" --ranks 2 --size-per-rank 256MiB
say "   Async saves of a 512 MiB state: the stall against memcpy"
"$bin/shardwise" bench --async --dir "$dir/bench" --size-per-rank 512MiB --saves 4
echo
echo "Demo files are in $dir"
