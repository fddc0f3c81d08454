#!/usr/bin/env bash
# Runs every test: the C++ suite with warnings as errors under
# AddressSanitizer+UndefinedBehaviorSanitizer (clang, which also builds the
# benchmarks and the fuzz targets) and under ThreadSanitizer (g++); the
# Python suite (real multi-process torch.distributed), and again against a
# manylinux wheel installed where no compiler is on PATH; the deployment
# toolkit's tests (stub cloud CLIs, kustomize renders); the layer check
# (scripts/check_layers.py) and the function-length check; a short libFuzzer run
# of every fuzz target (scripts/fuzz.sh); shellcheck. Sets
# everything up first (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

start=$SECONDS
# A stage's title, with the time since the start (CI must stay under 30 minutes).
stage() { echo "== [$((SECONDS - start)) s] $*"; }
scripts/setup.sh asan tsan python

jobs=$(nproc)
stage "Layers (scripts/check_layers.py: includes follow docs/architecture.md)"
python3 scripts/check_layers.py --self-test 2>/dev/null
python3 scripts/check_layers.py
stage "Function length (scripts/check_function_length.py: at most 80 lines in src/)"
python3 scripts/check_function_length.py --self-test >/dev/null
python3 scripts/check_function_length.py
stage "C++ tests under ASan+UBSan (clang-14, -Wall -Wextra -Werror)"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1 \
  ctest --preset asan -j "$jobs"
stage "C++ tests under TSan (g++, -Wall -Wextra -Werror)"
# Under TSan, not the fork-and-kill harnesses (CrashTest.*, CrashRecycled.*:
# SIGKILLed helper processes, 11 to 40 s each here), an index parser fed
# damaged bytes, a randomized crash run, and the chunk-geometry checks
# (CheckTiling.*, and a validator test that runs one on 40,000 chunks: up to
# 20 s each under TSan): none has threads of its own to race, ASan ran them
# above, and the saves they kill run under TSan in the repository and async
# tests.
TSAN_OPTIONS=halt_on_error=1 ctest --preset tsan -j "$jobs" \
  -E '^(CrashTest\..*|CrashRecycled\..*|Index\.MeaningfulDamageIsCorruptNotACrash|Torture\.ShortRandomizedRunKeepsEveryInvariant|CheckTiling\..*|Manifest\.AnItemTooIrregularToCheckIsRefused)$'
stage "Python tests (pytest; torch.distributed with gloo, several processes)"
.venv/bin/python -m pytest -q -p no:cacheprovider --durations=10 python/tests
stage "Wheel: built (scripts/build_wheel.sh, relinked from build/python), installed in a fresh"
echo "   venv with no compiler on PATH (torch and pytest lent by .venv), and the tests of"
echo "   the CLI and the DCP plugin run against it (scripts/test_wheel.sh; every Python"
echo "   test ran above, against the same code)"
SHARDWISE_WHEEL_CMAKE_DIR=build/python SHARDWISE_WHEEL_TEST_DEPS=.venv scripts/test_wheel.sh -- \
  python/tests/test_cli.py python/tests/test_dcp_parity.py
stage "Deployment toolkit tests (stub aws/eksctl/helm/kubectl; kubectl kustomize)"
command -v kubectl >/dev/null ||
  { echo "kubectl (with kustomize v5) is needed to render deploy/k8s; this machine image ships it" >&2; exit 1; }
# one worker per core (pytest-xdist): each test runs the toolkit's bash against
# stub CLIs in subprocesses; each worker starts its own moto helper
.venv/bin/python -m pytest -q -p no:cacheprovider --durations=10 -n "$jobs" deploy/tests
stage "Fuzzing (libFuzzer, short: 5 s per target)"
scripts/fuzz.sh 5
stage "shellcheck"
shellcheck -x scripts/*.sh .ci/run bench/run.sh deploy/aws/fsx deploy/aws/lib/*.sh deploy/aws/node/*.sh \
  deploy/tests/mutate.sh deploy/k8s/lustre-tuning/tune.sh
stage "all tests passed"
