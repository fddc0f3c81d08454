#!/usr/bin/env bash
# Installs a shardwise wheel into a fresh virtual environment, with no
# compiler on PATH, and runs the Python tests against it.
#
#   scripts/test_wheel.sh [WHEEL] [-- PYTEST_ARGS...]
#
# WHEEL defaults to the one scripts/build_wheel.sh builds now. PYTEST_ARGS
# default to python/tests (every Python test). The venv gets torch 2.13.0
# (CPU), pytest and numpy, then the wheel (--only-binary: pip must not find
# a way to build anything). With SHARDWISE_WHEEL_TEST_DEPS=VENV, the test
# dependencies come from that venv's site-packages instead (a .pth file,
# after the venv's own: the wheel's shardwise is the one imported, which
# the script checks), which saves installing torch again. PATH
# is this venv's bin plus a copy of /usr/bin and /bin without compilers,
# linkers, CMake or make; the script checks that none is found before the
# tests run, and that the tests import shardwise from the wheel. Integration
# tests whose frameworks are not in this venv skip, saying why.
set -euo pipefail
cd "$(dirname "$0")/.."
wheel=""
if [[ $# -gt 0 && "$1" != "--" ]]; then
  wheel=$(realpath "$1")
  shift
fi
[[ "${1:-}" == "--" ]] && shift
work=$(mktemp -d /tmp/shardwise-wheel-test.XXXXXX)
trap 'rm -rf "$work"' EXIT
if [[ -z "$wheel" ]]; then
  wheel=$(scripts/build_wheel.sh "$work/dist" | tail -1)
fi
[[ -f "$wheel" ]] || { echo "test_wheel: no wheel at $wheel" >&2; exit 1; }
quiet() { { grep -v "^WARNING: Location" || true; }; }

echo "test_wheel: fresh venv in $work/venv"
python3 -m venv "$work/venv"
[[ -n "${SHARDWISE_WHEEL_TEST_DEPS:-}" ]] ||
  "$work/venv/bin/pip" install -q --disable-pip-version-check torch==2.13.0 pytest numpy 2>&1 |
  quiet
"$work/venv/bin/pip" install -q --disable-pip-version-check --no-deps --only-binary=:all: \
  "$wheel" 2>&1 | quiet
if [[ -n "${SHARDWISE_WHEEL_TEST_DEPS:-}" ]]; then
  # After the wheel: pip must not see the lending venv's shardwise as installed.
  purelib() { "$1/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'; }
  deps=$(purelib "$(realpath "$SHARDWISE_WHEEL_TEST_DEPS")")
  echo "test_wheel: torch, pytest and numpy from $deps"
  echo "$deps" >"$(purelib "$work/venv")/test-dependencies.pth"
fi

# A PATH with no way to compile: every program of /usr/bin and /bin but the
# compilers, linkers and build tools.
mkdir "$work/bin"
for dir in /usr/bin /bin; do
  for p in "$dir"/*; do
    name=$(basename "$p")
    case "$name" in
      gcc* | g++* | cc | c++ | cpp* | clang* | *-gcc* | *-g++* | ld | ld.* | *-ld | *-ld.* | \
      as | *-as | cmake | ctest | make | gmake | ninja | x86_64-linux-gnu-*) continue ;;
    esac
    [[ -e "$work/bin/$name" ]] || ln -s "$p" "$work/bin/$name"
  done
done
export PATH="$work/venv/bin:$work/bin"
for tool in cc c++ gcc g++ clang cmake make ld; do
  if command -v "$tool" >/dev/null; then
    echo "test_wheel: $tool is still on PATH ($(command -v "$tool"))" >&2
    exit 1
  fi
done
where=$("$work/venv/bin/python" -c "import shardwise._core as c; print(c.__file__)")
case "$where" in
  "$work/venv/"*) echo "test_wheel: shardwise from $where" ;;
  *) echo "test_wheel: shardwise imported from $where, not the wheel" >&2; exit 1 ;;
esac
"$work/venv/bin/shardwise" --version
# The tests import shardwise from the venv (python/tests holds no package).
(($#)) || set -- python/tests
"$work/venv/bin/python" -m pytest -q -p no:cacheprovider "$@"
