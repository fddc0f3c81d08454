#!/usr/bin/env bash
# Installs what shardwise needs on a fresh Debian machine (idempotent) and
# builds the given targets: CMake presets (dev, release, asan, tsan) and
# "python" (the .venv with torch and the shardwise package). Default:
# release and python.
#   scripts/setup.sh [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages: compilers come with the machine; these are the libraries
# and tools. liburing is optional at build time (the thread backend remains),
# but we install it so the io_uring backend is built and tested.
packages=(g++ cmake ninja-build pkg-config liburing-dev libgtest-dev libgmock-dev
          libbenchmark-dev nlohmann-json3-dev fio shellcheck
          jq bsdextrautils)  # jq, column: deploy/aws/fsx and its tests
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

# Python: a virtual environment in .venv with the CPU build of torch (pip
# takes torch 2.13.0 from the local mirror), the test tools, and shardwise
# itself built from this checkout (scikit-build-core + nanobind).
setup_python() {
  if [[ ! -x .venv/bin/python ]]; then
    echo "setup: creating .venv"
    python3 -m venv .venv
  fi
  # (grep drops the notes this machine's pip configuration prints per package)
  # (pytest-xdist: the deploy tests, stub CLIs in subprocesses, run one worker per core)
  .venv/bin/pip install -q --disable-pip-version-check torch==2.13.0 pytest pytest-xdist==3.8.0 \
    numpy pyyaml \
    "scikit-build-core>=0.10" "nanobind>=2.0" 2>&1 | { grep -v "^WARNING: Location" || true; }
  # The frameworks the integrations are tested with, and prometheus_client
  # for the metrics (pure Python; they keep the torch above, which satisfies
  # their ranges).
  .venv/bin/pip install -q --disable-pip-version-check pytorch-lightning==2.6.6 \
    prometheus_client==0.26.0 2>&1 |
    { grep -v "^WARNING: Location" || true; }
  # torchtitan 0.3.0's dependencies include a data, tokenizer and logging
  # stack (datasets, tokenizers, tensorboard, wandb...) the checkpoint
  # integration never touches: install it without its dependencies, plus
  # what its checkpoint, model and config code imports.
  # (Its Triton kernels and FlexAttention's CPU gap are patched in
  # python/tests/torchtitan_job.py, never in the product.)
  .venv/bin/pip install -q --disable-pip-version-check --no-deps torchtitan==0.3.0 \
    spmd_types==0.2.3 tyro==1.0.17 docstring_parser==0.18.0 typeguard==4.6.1 2>&1 |
    { grep -v "^WARNING: Location" || true; }
  # The real AWS CLI (version 1, pure Python) and its botocore: the deploy
  # tests replay every `aws` call the toolkit makes through its argument
  # parsing and parameter validation (deploy/tests/awscli_check.py). This
  # index's awscli names neither botocore nor s3transfer: pinned here. moto's
  # server mode answers those calls for EC2, S3, IAM, STS, CloudFormation and
  # CloudWatch (deploy/tests/test_moto.py); boto3 pinned to the same botocore.
  .venv/bin/pip install -q --disable-pip-version-check awscli==1.46.2 botocore==1.43.62 \
    s3transfer==0.19.3 boto3==1.43.62 "moto[server]==5.1.18" 2>&1 |
    { grep -v "^WARNING: Location" || true; }
  echo "setup: building and installing the shardwise Python package"
  .venv/bin/pip install -q --disable-pip-version-check --no-build-isolation . 2>&1 |
    { grep -v "^WARNING: Location" || true; }
  .venv/bin/python -c "import shardwise._core" # fails loudly if the build did
}

targets=("$@")
((${#targets[@]})) || targets=(release python)
# The asan preset (which also builds the fuzz targets) needs clang and its
# sanitizer and libFuzzer runtimes.
for target in "${targets[@]}"; do
  if [[ "$target" == asan ]] && ! dpkg -s clang-14 libclang-rt-14-dev >/dev/null 2>&1; then
    echo "setup: installing clang-14 libclang-rt-14-dev"
    sudo_cmd=()
    [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
    "${sudo_cmd[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq clang-14 \
      libclang-rt-14-dev >/dev/null
  fi
done
for target in "${targets[@]}"; do
  if [[ "$target" == python ]]; then
    setup_python
    continue
  fi
  echo "setup: building preset '$target'"
  cmake --preset "$target" >/dev/null
  cmake --build --preset "$target"
done
