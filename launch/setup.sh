#!/usr/bin/env bash
# Prepare this machine for basin: install the Debian packages that are
# missing (only those), then configure and build. Safe to run again: with
# everything in place it installs nothing and rebuilds only what changed.
#
#   launch/setup.sh [--sanitize] [--bench]
#     --sanitize  also build build-asan/ (ASan + UBSan) and install what all tests need
#     --bench     also install what the benchmarks compare against (PyTorch)
set -euo pipefail
cd "$(dirname "$0")/.."

sanitize=0 bench=0
for arg in "$@"; do
  case "$arg" in
    --sanitize) sanitize=1 ;;
    --bench) bench=1 ;;
    -h|--help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "setup: unknown option '$arg' (see --help)" >&2; exit 2 ;;
  esac
done

packages=(build-essential cmake pkg-config openmpi-bin libopenmpi-dev libhdf5-dev hdf5-tools
          libopenblas-dev zlib1g-dev libxxhash-dev dataset-fashion-mnist iproute2)
# The test suite's fuzz targets (libFuzzer from Debian's clang), its
# one-node Slurm (tests/slurm), and what the export tests run basin-export
# and check its files with (tests/export: PyTorch, ONNX, h5py, NumPy).
[ "$sanitize" = 1 ] && packages+=(clang libclang-rt-14-dev slurm-wlm munge
                                 python3-torch python3-onnx python3-h5py python3-numpy)
[ "$bench" = 1 ] && packages+=(python3-torch python3-h5py python3-matplotlib python3-numpy)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  sudo=""
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || { echo "setup: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
    sudo="sudo"
  fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "setup: all packages in place"
fi

jobs=$(nproc)
build() {
  local dir=$1; shift
  mkdir -p "$dir"
  # Configured once, and again when the options below change.
  if [ ! -f "$dir/CMakeCache.txt" ] || [ "$(cat "$dir/.setup-options" 2>/dev/null)" != "$*" ]; then
    echo "setup: configuring $dir"
    if ! cmake -S . -B "$dir" "$@" >"$dir/configure.log" 2>&1; then
      cat "$dir/configure.log" >&2; echo "setup: configuring $dir failed" >&2; exit 1
    fi
    grep 'basin:' "$dir/configure.log" | sed 's/^-- basin: */setup:   /'
    printf '%s' "$*" >"$dir/.setup-options"
  fi
  if ! cmake --build "$dir" -j "$jobs" >"$dir/build.log" 2>&1; then
    grep -E -B2 -A8 'error|Error' "$dir/build.log" | head -60 >&2
    echo "setup: building $dir failed (full log: $dir/build.log)" >&2; exit 1
  fi
  echo "setup: $dir is up to date"
}
build build -DCMAKE_BUILD_TYPE=Release
# The sanitizer build runs the CUDA backend on the CPU (cuda/host): its
# kernels and GPU tests run there under ASan and UBSan, with or without a GPU.
[ "$sanitize" = 1 ] && build build-asan -DCMAKE_BUILD_TYPE=Debug -DBASIN_SANITIZE=ON -DBASIN_CUDA_HOST=ON
exit 0
