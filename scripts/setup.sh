#!/usr/bin/env bash
# Installs what shardwise needs on a fresh Debian machine (idempotent) and
# builds the given CMake presets (default: release).
#   scripts/setup.sh [PRESET...]
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages: compilers come with the machine; these are the libraries
# and tools. liburing is optional at build time (the thread backend remains),
# but we install it so the io_uring backend is built and tested.
packages=(g++ cmake ninja-build pkg-config liburing-dev libgtest-dev libgmock-dev
          libbenchmark-dev nlohmann-json3-dev fio shellcheck)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
# cmake and ninja may come from pip instead of Debian; accept either.
if command -v cmake >/dev/null && command -v ninja >/dev/null; then
  filtered=()
  for p in "${missing[@]}"; do
    [[ "$p" == cmake || "$p" == ninja-build ]] || filtered+=("$p")
  done
  missing=("${filtered[@]}")
fi
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  sudo_cmd=()
  [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
fi

presets=("$@")
((${#presets[@]})) || presets=(release)
for preset in "${presets[@]}"; do
  echo "setup: building preset '$preset'"
  cmake --preset "$preset" >/dev/null
  cmake --build --preset "$preset"
done
