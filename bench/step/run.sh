#!/usr/bin/env bash
# Training-step throughput, basin against PyTorch, and the table in
# bench/results/step.md.
#
#   bench/step/run.sh [--rounds N] [--cpu C] [--out FILE] [BUILD_DIR]
#
# For each of (mlp, cnn) x (batch 64, 256) it runs basin-bench-step and
# bench/step/torch_step.py alternately, ROUNDS times (which of the two goes
# first alternates from round to round), so that both see the same machine:
# on a shared machine load comes and goes, and back-to-back blocks of one
# program would each catch a different part of it. Both are pinned to the
# same core (taskset -c C, default 0) with one BLAS/OpenMP thread, and each
# reports its median over repeats; the table shows the median over rounds.
#
# Rates come by CPU time (the seconds the process actually ran) and by wall
# time. The first table and its targets use CPU time: on an otherwise idle
# core the two agree, and on a shared one the CPU-time rate still measures
# the code rather than how much of the core the scheduler handed out. The
# wall-time rates are in the second table.
#
# Every configuration runs in two OpenBLAS kernel modes, interleaved within
# each round: "env", with OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE as this shell
# has them, and "native", with both removed from that one command (env -u) so
# OpenBLAS picks the kernels of the CPU it finds. PyTorch loads the same
# OpenBLAS (its Linear layers call it; its Conv2d goes through oneDNN), so
# it runs in both modes too. The kernel set of each mode is read from
# OpenBLAS itself (OPENBLAS_VERBOSE=2 prints "Core: ...").
#
# BUILD_DIR defaults to build/ at the repository root, configured (Release)
# when missing. Targets missed are reported, not failed; errors fail.
set -euo pipefail

cmdline="bench/step/run.sh${*:+ $*}"
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
rounds=5
cpu=0
out="$root/bench/results/step.md"
build=""
py=/usr/bin/python3 # Debian's interpreter: the one with python3-torch

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
die() { echo "run.sh: error: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) [ $# -ge 2 ] || die "--rounds needs a value"; rounds=$2; shift 2 ;;
    --cpu) [ $# -ge 2 ] || die "--cpu needs a value"; cpu=$2; shift 2 ;;
    --out) [ $# -ge 2 ] || die "--out needs a value"; out=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) [ -z "$build" ] || die "one build directory only, not also '$1'"; build=$1; shift ;;
  esac
done
[[ "$rounds" =~ ^[1-9][0-9]*$ ]] || die "--rounds wants a positive integer, not '$rounds'"
[[ "$cpu" =~ ^[0-9]+$ ]] || die "--cpu wants a core number, not '$cpu'"
command -v taskset >/dev/null || die "taskset (util-linux) is needed to pin the runs"
taskset -c "$cpu" true 2>/dev/null || die "cannot pin to core $cpu (taskset -c $cpu)"
"$py" -c 'import torch' 2>/dev/null || die "$py cannot import torch (apt install python3-torch)"

# ---- build --------------------------------------------------------------------
build=${build:-$root/build}
if [ ! -f "$build/CMakeCache.txt" ]; then
  echo "configuring $build (Release)"
  cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
fi
# A tree configured before bench/step existed lacks the target: configure again once.
if ! cmake --build "$build" --target basin-bench-step -j"$(nproc)" >"$build/bench-step-build.log" 2>&1; then
  cmake -S "$root" -B "$build" >/dev/null
  cmake --build "$build" --target basin-bench-step -j"$(nproc)" >"$build/bench-step-build.log" 2>&1 ||
    { tail -n 30 "$build/bench-step-build.log" >&2; die "build failed (log: $build/bench-step-build.log)"; }
fi
build_type=$(sed -n 's/^CMAKE_BUILD_TYPE:[A-Z]*=//p' "$build/CMakeCache.txt")
sanitize=$(sed -n 's/^BASIN_SANITIZE:[A-Z]*=//p' "$build/CMakeCache.txt")
if [ "$build_type" != Release ] || [ "$sanitize" = ON ]; then
  echo "run.sh: warning: $build is a ${build_type:-default} build (sanitizers ${sanitize:-OFF}); the numbers will not be Release numbers" >&2
fi
bench="$build/bench/step/basin-bench-step"
[ -x "$bench" ] || die "no $bench after the build"

# ---- runs -----------------------------------------------------------------------
# model batch steps: steps per repeat sized so a repeat lasts ~0.1-0.3 s of CPU.
configs=("mlp 64 20" "mlp 256 6" "cnn 64 3" "cnn 256 1")
common=(--repeats 5 --warmup 2 --threads 1)
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1
pin=(taskset -c "$cpu")

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
results="$tmp/results.jsonl"
: >"$results"

# The two kernel modes, and the command prefix of each: plain env for "env",
# env -u ... for "native" (word-split on purpose where it is used).
modes=(env native)
kernel_env() {
  if [ "$1" = native ]; then echo "env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE"; else echo env; fi
}
# The kernel set OpenBLAS loads in a mode, as it names it ("Haswell", ...).
kernel_core() {
  $(kernel_env "$1") OPENBLAS_VERBOSE=2 "$bench" --model mlp --batch 1 --steps 1 --repeats 1 \
    --warmup 0 2>&1 | sed -n 's/^Core: *//p' | head -n 1
}
core_env=$(kernel_core env)
core_native=$(kernel_core native)
[ -n "$core_env" ] && [ -n "$core_native" ] || die "OPENBLAS_VERBOSE=2 did not name the OpenBLAS core"
echo "kernels: env -> $core_env, native -> $core_native"

# run NAME MODE CMD...: run one benchmark, keep its output, append its JSON
# line tagged with the kernel mode.
run() {
  local name=$1 mode=$2; shift 2
  local log="$tmp/$name.log"
  if ! "$@" >"$log" 2>&1; then
    cat "$log" >&2
    die "failed: $*"
  fi
  local line
  line=$(grep '^{' "$log" | tail -n 1) || die "no JSON result from: $*"
  echo "{\"kernel\":\"$mode\",${line#\{}" >>"$results"
}

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
start=$(date +%s)
for r in $(seq 1 "$rounds"); do
  for c in "${configs[@]}"; do
    read -r model batch steps <<<"$c"
    args=(--model "$model" --batch "$batch" --steps "$steps" "${common[@]}")
    # The four runs of a configuration, in an order that reverses every round.
    order=("basin env" "torch env" "basin native" "torch native")
    [ $((r % 2)) -eq 1 ] || order=("torch native" "basin native" "torch env" "basin env")
    for j in "${order[@]}"; do
      read -r impl mode <<<"$j"
      if [ "$impl" = basin ]; then cmd=("$bench" "${args[@]}")
      else cmd=("$py" "$here/torch_step.py" "${args[@]}"); fi
      run "$impl-$mode-$model-$batch-$r" "$mode" $(kernel_env "$mode") "${pin[@]}" "${cmd[@]}"
    done
    echo "round $r/$rounds: $model batch $batch done ($(( $(date +%s) - start )) s)"
  done
done
# Where basin's step spends its time, once per configuration and mode.
for mode in "${modes[@]}"; do
  for c in "${configs[@]}"; do
    read -r model batch steps <<<"$c"
    log="$tmp/profile-$mode-$model-$batch.log"
    $(kernel_env "$mode") "${pin[@]}" "$bench" --model "$model" --batch "$batch" --steps "$steps" \
      "${common[@]}" --profile >"$log" 2>&1 || {
      cat "$log" >&2
      die "failed: basin-bench-step --profile for $model batch $batch ($mode kernels)"
    }
  done
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
elapsed=$(( $(date +%s) - start ))

# ---- report -----------------------------------------------------------------------
# Machine and software, for the header.
cpu_model=$(lscpu | sed -n 's/^Model name: *//p' | head -n 1)
cores=$(lscpu | awk -F: '/^Core\(s\) per socket/ {c=$2} /^Socket\(s\)/ {s=$2} END {print c*s}')
openblas=$(sed -n 's/.*BLAS threads, //p' "$tmp/basin-env-mlp-64-1.log" | head -n 1)
torch_ver=$(sed -n 's/^torch \([^ ]*\) .*/\1/p' "$tmp/torch-env-mlp-64-1.log" | head -n 1)
avx512=no
grep -qw avx512f /proc/cpuinfo && avx512=yes
commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)

mkdir -p "$(dirname "$out")"
STEP_RESULTS=$results STEP_TMP=$tmp STEP_OUT=$out STEP_ROUNDS=$rounds STEP_CPU=$cpu \
STEP_CONFIGS="${configs[*]}" STEP_COMMON="${common[*]}" STEP_BENCH=$bench \
STEP_CPU_MODEL=$cpu_model STEP_CORES=$cores STEP_OPENBLAS=$openblas STEP_TORCH=$torch_ver \
STEP_AVX512=$avx512 STEP_COMMIT=$commit STEP_LOAD="$load_before -> $load_after" \
STEP_ELAPSED=$elapsed STEP_CMDLINE=$cmdline STEP_CORETYPE=${OPENBLAS_CORETYPE:-} \
STEP_BUILD_TYPE="${build_type:-?}, sanitizers ${sanitize:-OFF}" STEP_L2=${OPENBLAS_L2_SIZE:-} \
STEP_CORE_ENV=$core_env STEP_CORE_NATIVE=$core_native \
  "$py" "$here/report.py"
echo "wrote $out"
