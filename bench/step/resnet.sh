#!/usr/bin/env bash
# Training-step time of the residual networks, basin against PyTorch, one
# core, and the table in bench/results/step-resnet.md.
#
#   bench/step/resnet.sh [--rounds N] [--repeats N] [--warmup N] [--cpu C]
#                        [--kernels env|native|both] [--check] [--no-build]
#                        [--out FILE] [BUILD_DIR]
#
# Configurations (model, input, classes, batch):
#   resnet20 1x28x28 10 at batch 64 and 128, resnet20 3x32x32 10 at batch 64
#   and 128, resnet50 3x224x224 1000 at batch 8.
# basin-bench-step runs basin's presets; bench/step/torch_step.py runs their
# PyTorch twins (bench/torch_models.py: the CIFAR ResNet written like basin's
# resnet20, torchvision.models.resnet50). First, every configuration runs one
# untimed step in both programs and the parameter counts must agree with each
# other and with the expected ones (272,186 and 272,474 for resnet20 at
# 1x28x28 and 3x32x32, 25,557,032 for resnet50); a mismatch stops the script.
#
# Timing is bench/step/run.sh's: both programs pinned to the same core
# (taskset -c C, default 0), one BLAS/OpenMP thread (OMP_NUM_THREADS,
# OPENBLAS_NUM_THREADS, MKL_NUM_THREADS = 1; torch.set_num_threads(1)),
# alternating, the order reversed every round; each program reports the
# median over --repeats (default 5) after --warmup untimed steps (default 2),
# and the table shows the median over --rounds (default 3). Times are by CPU
# time (the table; equal to wall time on an idle core) and by wall time (the
# second table). Each OpenBLAS kernel mode of run.sh ("env": this shell's
# OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE; "native": both unset) gets its
# table; --kernels picks (default both). basin's --profile of every
# configuration follows the tables.
#
# --check runs only the parameter-count check (a few seconds) and writes
# nothing. --no-build uses BUILD_DIR's basin-bench-step as it is. BUILD_DIR defaults to build/ (configured Release when missing).
# Run it on an otherwise idle machine: about 10 minutes with the defaults on
# a 2-core AMD EPYC machine (most of it resnet50). Targets missed are reported, not
# failed; errors fail.
set -euo pipefail

cmdline="bench/step/resnet.sh${*:+ $*}"
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
rounds=3
repeats=5
warmup=2
cpu=0
kernels=both
check_only=0
no_build=0
out="$root/bench/results/step-resnet.md"
build=""
py=/usr/bin/python3 # Debian's interpreter: the one with python3-torch

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
die() { echo "resnet.sh: error: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --rounds|--repeats|--warmup|--cpu|--kernels|--out)
      [ $# -ge 2 ] || die "$1 needs a value"
      case "$1" in
        --rounds) rounds=$2 ;; --repeats) repeats=$2 ;; --warmup) warmup=$2 ;;
        --cpu) cpu=$2 ;; --kernels) kernels=$2 ;; --out) out=$2 ;;
      esac
      shift 2 ;;
    --check) check_only=1; shift ;;
    --no-build) no_build=1; shift ;;
    -h|--help) usage; exit 0 ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) [ -z "$build" ] || die "one build directory only, not also '$1'"; build=$1; shift ;;
  esac
done
[[ "$rounds" =~ ^[1-9][0-9]*$ ]] || die "--rounds wants a positive integer, not '$rounds'"
[[ "$repeats" =~ ^[1-9][0-9]*$ ]] || die "--repeats wants a positive integer, not '$repeats'"
[[ "$warmup" =~ ^[0-9]+$ ]] || die "--warmup wants an integer >= 0, not '$warmup'"
[[ "$cpu" =~ ^[0-9]+$ ]] || die "--cpu wants a core number, not '$cpu'"
case "$kernels" in env) modes=(env) ;; native) modes=(native) ;; both) modes=(env native) ;;
  *) die "--kernels wants env, native or both, not '$kernels'" ;; esac
command -v taskset >/dev/null || die "taskset (util-linux) is needed to pin the runs"
taskset -c "$cpu" true 2>/dev/null || die "cannot pin to core $cpu (taskset -c $cpu)"
"$py" -c 'import torch, torchvision' 2>/dev/null ||
  die "$py cannot import torch and torchvision (apt install python3-torch python3-torchvision)"

# ---- build --------------------------------------------------------------------
build=${build:-$root/build}
if [ "$no_build" = 0 ]; then
  if [ ! -f "$build/CMakeCache.txt" ]; then
    echo "configuring $build (Release)"
    cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
  fi
  cmake --build "$build" --target basin-bench-step -j"$(nproc)" >"$build/bench-step-build.log" 2>&1 ||
    { tail -n 30 "$build/bench-step-build.log" >&2; die "build failed (log: $build/bench-step-build.log)"; }
fi
[ -f "$build/CMakeCache.txt" ] || die "$build is not a configured build folder"
build_type=$(sed -n 's/^CMAKE_BUILD_TYPE:[A-Z]*=//p' "$build/CMakeCache.txt")
sanitize=$(sed -n 's/^BASIN_SANITIZE:[A-Z]*=//p' "$build/CMakeCache.txt")
if [ "$build_type" != Release ] || [ "$sanitize" = ON ]; then
  echo "resnet.sh: warning: $build is a ${build_type:-default} build (sanitizers ${sanitize:-OFF}); the numbers will not be Release numbers" >&2
fi
bench="$build/bench/step/basin-bench-step"
[ -x "$bench" ] || die "no $bench after the build"

# ---- configurations ---------------------------------------------------------------
# model input classes batch steps-per-repeat expected-parameters
configs=(
  "resnet20 1x28x28 10 64 2 272186"
  "resnet20 1x28x28 10 128 1 272186"
  "resnet20 3x32x32 10 64 2 272474"
  "resnet20 3x32x32 10 128 1 272474"
  "resnet50 3x224x224 1000 8 1 25557032"
)
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1
pin=(taskset -c "$cpu")

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
results="$tmp/results.jsonl"
: >"$results"

kernel_env() {
  if [ "$1" = native ]; then echo "env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE"; else echo env; fi
}
kernel_core() {
  $(kernel_env "$1") OPENBLAS_VERBOSE=2 "$bench" --model mlp --batch 1 --steps 1 --repeats 1 \
    --warmup 0 2>&1 | sed -n 's/^Core: *//p' | head -n 1
}

# run LOG MODE CMD...: run one benchmark, keep its output in LOG, print its
# JSON line tagged with the kernel mode.
run() {
  local log=$1 mode=$2; shift 2
  if ! "$@" >"$log" 2>&1; then
    cat "$log" >&2
    die "failed: $*"
  fi
  local line
  line=$(grep '^{' "$log" | tail -n 1) || die "no JSON result from: $*"
  echo "{\"kernel\":\"$mode\",${line#\{}"
}
json_field() { sed -n "s/.*\"$1\":\"\{0,1\}\([^,\"}]*\).*/\1/p"; }

# ---- parameter counts -------------------------------------------------------------
checked=" "
for c in "${configs[@]}"; do
  read -r model input classes batch steps want <<<"$c"
  [[ "$checked" != *" $model-$input-$classes "* ]] || continue
  checked+="$model-$input-$classes "
  one=(--model "$model" --input "$input" --classes "$classes" --batch 2 --steps 1 --repeats 1
       --warmup 0 --threads 1)
  b=$(run "$tmp/check-basin.log" env "$bench" "${one[@]}" | json_field params)
  t=$(run "$tmp/check-torch.log" env "$py" "$here/torch_step.py" "${one[@]}" | json_field params)
  [ "$b" = "$want" ] && [ "$t" = "$want" ] ||
    die "$model at $input, $classes classes: parameters basin $b, PyTorch $t, expected $want"
  echo "parameters: $model $input $classes classes: basin $b = PyTorch $t"
done
[ "$check_only" = 0 ] || { echo "parameter counts agree (--check: nothing timed)"; exit 0; }

for mode in "${modes[@]}"; do
  core=$(kernel_core "$mode")
  [ -n "$core" ] || die "OPENBLAS_VERBOSE=2 did not name the OpenBLAS core ($mode kernels)"
  eval "core_$mode=\$core"
done
echo "kernels: ${core_env:+env -> $core_env }${core_native:+native -> $core_native}"

# ---- timed runs -------------------------------------------------------------------
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
start=$(date +%s)
for r in $(seq 1 "$rounds"); do
  for c in "${configs[@]}"; do
    read -r model input classes batch steps want <<<"$c"
    args=(--model "$model" --input "$input" --classes "$classes" --batch "$batch" --steps "$steps"
          --repeats "$repeats" --warmup "$warmup" --threads 1)
    order=()
    for mode in "${modes[@]}"; do order+=("basin $mode" "torch $mode"); done
    if [ $((r % 2)) -eq 0 ]; then # reversed every other round
      rev=(); for ((i = ${#order[@]} - 1; i >= 0; i--)); do rev+=("${order[i]}"); done
      order=("${rev[@]}")
    fi
    for j in "${order[@]}"; do
      read -r impl mode <<<"$j"
      if [ "$impl" = basin ]; then cmd=("$bench" "${args[@]}")
      else cmd=("$py" "$here/torch_step.py" "${args[@]}"); fi
      log="$tmp/$impl-$mode-$model-$input-$batch-$r.log"
      run "$log" "$mode" $(kernel_env "$mode") "${pin[@]}" "${cmd[@]}" >>"$results"
    done
    echo "round $r/$rounds: $model $input batch $batch done ($(( $(date +%s) - start )) s)"
  done
done
# Where basin's step spends its time: one profiled run per configuration and mode.
for mode in "${modes[@]}"; do
  for c in "${configs[@]}"; do
    read -r model input classes batch steps want <<<"$c"
    log="$tmp/profile-$mode-$model-$input-$batch.log"
    $(kernel_env "$mode") "${pin[@]}" "$bench" --model "$model" --input "$input" \
      --classes "$classes" --batch "$batch" --steps "$steps" --repeats 1 --warmup 1 --threads 1 \
      --profile >"$log" 2>&1 || { cat "$log" >&2; die "failed: basin-bench-step --profile for $model $input batch $batch ($mode kernels)"; }
  done
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
elapsed=$(( $(date +%s) - start ))

# ---- report -----------------------------------------------------------------------
cpu_model=$(lscpu | sed -n 's/^Model name: *//p' | head -n 1)
first=$(ls "$tmp"/basin-*-1.log | head -n 1)
openblas=$(sed -n 's/.*BLAS threads, //p' "$first" | head -n 1)
first=$(ls "$tmp"/torch-*-1.log | head -n 1)
torch_ver=$(sed -n 's/^torch \([^ ]*\) .*/\1/p' "$first" | head -n 1)
commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
mkdir -p "$(dirname "$out")"
RN_RESULTS=$results RN_TMP=$tmp RN_OUT=$out RN_ROUNDS=$rounds RN_REPEATS=$repeats RN_WARMUP=$warmup \
RN_CPU=$cpu RN_MODES="${modes[*]}" RN_CONFIGS="$(printf '%s\n' "${configs[@]}")" \
RN_CPU_MODEL=$cpu_model RN_OPENBLAS=$openblas RN_TORCH=$torch_ver RN_COMMIT=$commit \
RN_LOAD="$load_before -> $load_after" RN_ELAPSED=$elapsed RN_CMDLINE=$cmdline \
RN_BUILD_TYPE="${build_type:-?}, sanitizers ${sanitize:-OFF}" RN_BENCH=$bench \
RN_CORE_ENV=${core_env:-} RN_CORE_NATIVE=${core_native:-} \
RN_CORETYPE=${OPENBLAS_CORETYPE:-} RN_L2=${OPENBLAS_L2_SIZE:-} \
  "$py" "$here/resnet_report.py"
echo "wrote $out"
