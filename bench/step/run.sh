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

# run NAME CMD...: run one benchmark, keep its output, append its JSON line.
run() {
  local name=$1; shift
  local log="$tmp/$name.log"
  if ! "$@" >"$log" 2>&1; then
    cat "$log" >&2
    die "failed: $*"
  fi
  local line
  line=$(grep '^{' "$log" | tail -n 1) || die "no JSON result from: $*"
  echo "$line" >>"$results"
}

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
start=$(date +%s)
for r in $(seq 1 "$rounds"); do
  for c in "${configs[@]}"; do
    read -r model batch steps <<<"$c"
    args=(--model "$model" --batch "$batch" --steps "$steps" "${common[@]}")
    basin_cmd=("${pin[@]}" "$bench" "${args[@]}")
    torch_cmd=("${pin[@]}" "$py" "$here/torch_step.py" "${args[@]}")
    if [ $((r % 2)) -eq 1 ]; then
      run "basin-$model-$batch-$r" "${basin_cmd[@]}"
      run "torch-$model-$batch-$r" "${torch_cmd[@]}"
    else
      run "torch-$model-$batch-$r" "${torch_cmd[@]}"
      run "basin-$model-$batch-$r" "${basin_cmd[@]}"
    fi
    echo "round $r/$rounds: $model batch $batch done ($(( $(date +%s) - start )) s)"
  done
done
# Where basin's step spends its time, once per configuration.
for c in "${configs[@]}"; do
  read -r model batch steps <<<"$c"
  "${pin[@]}" "$bench" --model "$model" --batch "$batch" --steps "$steps" "${common[@]}" \
    --profile >"$tmp/profile-$model-$batch.log" 2>&1 || {
    cat "$tmp/profile-$model-$batch.log" >&2
    die "failed: basin-bench-step --profile for $model batch $batch"
  }
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
elapsed=$(( $(date +%s) - start ))

# ---- report -----------------------------------------------------------------------
# Machine and software, for the header.
cpu_model=$(lscpu | sed -n 's/^Model name: *//p' | head -n 1)
cores=$(lscpu | awk -F: '/^Core\(s\) per socket/ {c=$2} /^Socket\(s\)/ {s=$2} END {print c*s}')
openblas=$(sed -n 's/.*BLAS threads, //p' "$tmp/basin-mlp-64-1.log" | head -n 1)
torch_ver=$(sed -n 's/^torch \([^ ]*\) .*/\1/p' "$tmp/torch-mlp-64-1.log" | head -n 1)
avx512=no
grep -qw avx512f /proc/cpuinfo && avx512=yes
# What OpenBLAS picks when OPENBLAS_CORETYPE does not force a kernel set.
auto_log=$(env -u OPENBLAS_CORETYPE "${pin[@]}" "$bench" --model mlp --batch 1 --steps 1 \
  --repeats 1 --warmup 0) || die "basin-bench-step failed without OPENBLAS_CORETYPE"
auto_json=$(grep '^{' <<<"$auto_log")
auto_core=$(sed -n 's/.*BLAS threads, //p' <<<"$auto_log")
commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)

mkdir -p "$(dirname "$out")"
STEP_RESULTS=$results STEP_TMP=$tmp STEP_OUT=$out STEP_ROUNDS=$rounds STEP_CPU=$cpu \
STEP_CONFIGS="${configs[*]}" STEP_COMMON="${common[*]}" STEP_BENCH=$bench \
STEP_CPU_MODEL=$cpu_model STEP_CORES=$cores STEP_OPENBLAS=$openblas STEP_TORCH=$torch_ver \
STEP_AVX512=$avx512 STEP_COMMIT=$commit STEP_LOAD="$load_before -> $load_after" \
STEP_ELAPSED=$elapsed STEP_CMDLINE=$cmdline STEP_CORETYPE=${OPENBLAS_CORETYPE:-} \
STEP_BUILD_TYPE="${build_type:-?}, sanitizers ${sanitize:-OFF}" STEP_L2=${OPENBLAS_L2_SIZE:-} STEP_AUTO_JSON=$auto_json STEP_AUTO_CORE=$auto_core \
  "$py" "$here/report.py"
echo "wrote $out"
