#!/usr/bin/env bash
# Mutation check of the deployment toolkit's tests: applies each mutation
# below to a copy of deploy/ and asserts that the test suite then FAILS.
# A mutation the suite survives is a defect the tests cannot see.
#
#   deploy/tests/mutate.sh [PYTHON]      (default: .venv/bin/python)
#
# Each mutation: a name, a file under deploy/, and a sed expression that must
# change that file (the script checks it did).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
python=${1:-$repo/.venv/bin/python}

mutations=(
  "hard-coded partition|aws/lib/cluster.sh|s/arn:\$part:iam::aws:policy/arn:aws:iam::aws:policy/"
  "no wait for AVAILABLE|aws/fsx|s/^  wait_file_system     # 6\.$/  : # wait_file_system removed/"
  "export not awaited|aws/fsx|s/^    wait_exported \"\$fs\"$/    : # wait_exported removed/"
  "backup of a linked file system|aws/fsx|s/if ((linked == 0)) \&\& \[\[ \${CFG\[FINAL_BACKUP\]} == true \]\]; then/if [[ \${CFG[FINAL_BACKUP]} == true ]]; then/"
  "one token for every creation|aws/lib/filesystem.sh|s/--client-request-token \"\$token\"/--client-request-token \"\${CFG[STACK_NAME]}\"/"
  "foreign eksctl stack deleted|aws/fsx|s/elif \[\[ \$(stack_owner \"\$stack\") != \"\${CFG\[STACK_NAME\]}\" \]\]; then/elif false; then/"
  "background cascade|aws/fsx|s/--ignore-not-found --cascade=foreground --wait$/--ignore-not-found --wait/"
  "namespace deleted over foreign objects|aws/fsx|s/^    if ! left=\$(foreign_objects \"\$ns\"); then$/    if ! left=; then/"
  "bucket deleted without emptying it|aws/fsx|s/awsj s3 rb \"s3:\/\/\$bucket\" --force/awsj s3 rb \"s3:\/\/\$bucket\"/"
  "tuning order|k8s/lustre-tuning/tune.sh|/max_rpcs_in_flight 64/{h;d};/max_mod_rpcs_in_flight 50/G"
)

"$python" -c 'import xdist' 2>/dev/null ||
  { echo "mutate: $python has no pytest-xdist (scripts/setup.sh installs it)" >&2; exit 2; }
work=$(mktemp -d /tmp/shardwise-mutate.XXXXXX)
trap 'rm -rf "$work"' EXIT
survived=0
for m in "${mutations[@]}"; do
  IFS='|' read -r name file expr <<<"$m"
  rm -rf "$work/deploy"
  cp -r "$repo/deploy" "$work/deploy"
  before=$(sha256sum "$work/deploy/$file")
  sed -i -e "$expr" "$work/deploy/$file"
  if [[ $(sha256sum "$work/deploy/$file") == "$before" ]]; then
    echo "mutate: '$name' did not change $file: the script no longer matches the code" >&2
    exit 2
  fi
  rc=0
  "$python" -m pytest -q -x -p no:cacheprovider -n "$(nproc)" "$work/deploy/tests" >"$work/log" 2>&1 ||
    rc=$?
  # 1: a test failed; 2 with a FAILED line: xdist stopped the run after the
  # first failure (-x); any other exit (a usage or internal error, no tests)
  # means nothing was tested
  killed=$(grep -m1 -o '^FAILED [^ ]*' "$work/log" || true)
  if ((rc == 0)); then
    echo "mutate: SURVIVED: $name ($file): no test failed" >&2
    survived=$((survived + 1))
  elif [[ -n $killed ]] && ((rc == 1 || rc == 2)); then
    echo "mutate: killed: $name ($killed)"
  else
    tail -20 "$work/log" >&2
    echo "mutate: pytest could not run the suite for '$name' (exit $rc)" >&2
    exit 2
  fi
done
((survived == 0)) || { echo "mutate: $survived mutation(s) survived" >&2; exit 1; }
echo "mutate: every mutation was caught"
