#!/usr/bin/env bash
# Builds the libFuzzer targets (preset "fuzz": clang, ASan+UBSan) and runs
# each for SECONDS (default 30), starting from the checked-in seed corpus in
# fuzz/corpus/TARGET (copied: the checked-in corpus is never modified).
# Exits non-zero on the first crash, leak, timeout or sanitizer report; the
# reproducer is left in the printed directory (replay it with
# build/fuzz/TARGET_fuzz FILE).
#   scripts/fuzz.sh [SECONDS] [TARGET...]      targets: manifest shard_header checkpoint_dir rank_index index
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-30}
[[ $# -gt 0 ]] && shift
targets=("$@")
((${#targets[@]})) || targets=(manifest shard_header checkpoint_dir rank_index index)

scripts/setup.sh fuzz
work=$(mktemp -d "${TMPDIR:-/tmp}/shardwise-fuzz-XXXXXX")
echo "fuzz: ${seconds}s per target, work directory $work"
for t in "${targets[@]}"; do
  mkdir -p "$work/$t/corpus" "$work/$t/artifacts"
  cp fuzz/corpus/"$t"/* "$work/$t/corpus/"
  log="$work/$t/log"
  # The checkpoint_dir target writes files and fsyncs them: keep them in
  # memory (/dev/shm) so that it runs at a useful rate.
  if ! TMPDIR=/dev/shm build/fuzz/"${t}"_fuzz -max_total_time="$seconds" -timeout=10 \
      -rss_limit_mb=4096 -max_len=262144 -print_final_stats=1 \
      -artifact_prefix="$work/$t/artifacts/" "$work/$t/corpus" >"$log" 2>&1; then
    tail -40 "$log"
    echo "fuzz: $t FAILED; reproducer in $work/$t/artifacts/" >&2
    exit 1
  fi
  runs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$log" | grep -o '[0-9]*$')
  echo "fuzz: $t: $runs executions in ${seconds}s, no crash"
done
rm -rf "$work"
