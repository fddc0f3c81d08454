#!/usr/bin/env bash
# Builds the libFuzzer targets (preset "asan": clang, ASan+UBSan) and runs
# each for SECONDS (default 30), starting from the checked-in seed corpus in
# fuzz/corpus/TARGET (copied: the checked-in corpus is never modified).
# Runs one target per core. Exits non-zero after any crash, leak, timeout or
# sanitizer report; the reproducer is left in the printed directory (replay it with
# build/asan/TARGET_fuzz FILE).
#   scripts/fuzz.sh [SECONDS] [TARGET...]      targets: manifest shard_header checkpoint_dir rank_index index
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-30}
[[ $# -gt 0 ]] && shift
targets=("$@")
((${#targets[@]})) || targets=(manifest shard_header checkpoint_dir rank_index index)

scripts/setup.sh asan
work=$(mktemp -d "${TMPDIR:-/tmp}/shardwise-fuzz-XXXXXX")
# The files the targets write, in memory; removed however the run ends.
scratch=$(mktemp -d /dev/shm/shardwise-fuzz-XXXXXX)
jobs=$(nproc)
echo "fuzz: ${seconds}s per target, $jobs at a time, work directory $work"
# One target: its own corpus copy, log and artifacts under $work/TARGET.
fuzz_one() {
  local t=$1
  mkdir -p "$work/$t/corpus" "$work/$t/artifacts"
  cp fuzz/corpus/"$t"/* "$work/$t/corpus/"
  # The checkpoint_dir target writes files and fsyncs them: keep them in
  # memory (/dev/shm) so that it runs at a useful rate.
  TMPDIR=$scratch build/asan/"${t}"_fuzz -max_total_time="$seconds" -timeout=10 \
    -rss_limit_mb=4096 -max_len=262144 -print_final_stats=1 \
    -artifact_prefix="$work/$t/artifacts/" "$work/$t/corpus" >"$work/$t/log" 2>&1
}
# Each target is single-threaded: run one per core, then report in order.
# Stopped early (a failure below, Ctrl-C), the others stop too.
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$scratch"' EXIT
pids=()
for t in "${targets[@]}"; do
  while (($(jobs -rp | wc -l) >= jobs)); do wait -n || true; done
  fuzz_one "$t" &
  pids+=($!)
done
failed=0
for i in "${!targets[@]}"; do
  t=${targets[$i]}
  if ! wait "${pids[$i]}"; then
    tail -40 "$work/$t/log" || true
    echo "fuzz: $t FAILED; reproducer in $work/$t/artifacts/" >&2
    failed=1
    continue
  fi
  runs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$work/$t/log" | grep -o '[0-9]*$')
  echo "fuzz: $t: $runs executions in ${seconds}s, no crash"
done
((failed == 0)) || exit 1
rm -rf "$work"
