#!/usr/bin/env bash
# Data-parallel training throughput, basin against PyTorch DistributedDataParallel,
# and the table in bench/results/ddp.md.
#
#   bench/ddp/run.sh [--rounds N] [--ranks N] [--out FILE] [--data PATH] [BUILD_DIR]
#
# For mlp and cnn, with RANKS processes (default 2) and a batch of 64 per
# rank, it runs, alternately and ROUNDS times (default 4; the order reverses
# every round):
#   basin: mpirun -np RANKS basin-train --batch 64xRANKS --max-steps N --eval-every 0
#          on the real data (data/fashion-mnist.h5); images/s from its metrics
#          file, every logging interval but the first (warm-up);
#   PyTorch: mpirun -np RANKS bench/ddp/torch_ddp.py (gloo, DDP, random data in
#          memory); images/s over timed windows after a warm-up.
# Both under mpirun with --bind-to core, one BLAS/OpenMP thread per rank
# (OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1, and torch.set_num_threads(1)).
# The headline is wall-time images/s over all ranks.
#
# Each run happens in two OpenBLAS kernel modes: "env", with OPENBLAS_CORETYPE
# and OPENBLAS_L2_SIZE as this shell has them, and "native", with both unset
# for that command (env -u), so OpenBLAS picks the kernels of the CPU. PyTorch
# loads the same OpenBLAS for its Linear layers (Conv2d goes through oneDNN),
# so it runs in both modes too, and each mode compares like with like.
#
# BUILD_DIR defaults to build/ at the repository root (launch/setup.sh makes it
# when missing). Targets missed are reported, not failed; errors fail.
set -euo pipefail

cmdline="bench/ddp/run.sh${*:+ $*}"
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
rounds=4 ranks=2 out="$root/bench/results/ddp.md" data="" build=""
py=/usr/bin/python3 # Debian's interpreter: the one with python3-torch
per_rank=64

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
die() { echo "run.sh: error: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) [ $# -ge 2 ] || die "--rounds needs a value"; rounds=$2; shift 2 ;;
    --ranks) [ $# -ge 2 ] || die "--ranks needs a value"; ranks=$2; shift 2 ;;
    --out) [ $# -ge 2 ] || die "--out needs a value"; out=$2; shift 2 ;;
    --data) [ $# -ge 2 ] || die "--data needs a value"; data=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) [ -z "$build" ] || die "one build directory only, not also '$1'"; build=$1; shift ;;
  esac
done
[[ "$rounds" =~ ^[1-9][0-9]*$ ]] || die "--rounds wants a positive integer, not '$rounds'"
[[ "$ranks" =~ ^[1-9][0-9]*$ ]] || die "--ranks wants a positive integer, not '$ranks'"
command -v mpirun >/dev/null || die "mpirun not found (launch/setup.sh installs openmpi-bin)"
"$py" -c 'import torch.distributed as d; assert d.is_available()' 2>/dev/null ||
  die "$py cannot import torch.distributed (launch/setup.sh --bench installs python3-torch)"

cd "$root"
build=${build:-build}
data=${data:-data/fashion-mnist.h5}
train="$build/launch/basin-train"
if [ ! -x "$train" ]; then
  if [ "$build" = build ]; then launch/setup.sh
  else
    cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
    cmake --build "$build" -j"$(nproc)" >/dev/null
  fi
  [ -x "$train" ] || die "no $train after the build"
fi
if [ ! -f "$data" ]; then
  echo "run.sh: importing Fashion-MNIST into $data"
  mkdir -p "$(dirname "$data")"
  "$build/launch/basin-data" import fashion-mnist --output "$data"
fi
build_type=$(sed -n 's/^CMAKE_BUILD_TYPE:[A-Z]*=//p' "$build/CMakeCache.txt" 2>/dev/null || true)
[ "$build_type" = Release ] ||
  echo "run.sh: warning: $build is a ${build_type:-default} build; the numbers will not be Release numbers" >&2
cores=$(nproc)
[ "$ranks" -le "$cores" ] ||
  echo "run.sh: warning: $ranks ranks on $cores cores: oversubscribed" >&2

# ---- runs -----------------------------------------------------------------------------
# model, basin steps and logging interval, PyTorch warm-up / steps per window:
# each run lasts a few seconds.
configs=("mlp 300 50 20 40" "cnn 60 10 4 8")
modes=(env native)
kernel_env() {
  if [ "$1" = native ]; then echo "env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE"; else echo env; fi
}
declare -A core_of=()
for m in "${modes[@]}"; do
  core_of[$m]=$($(kernel_env "$m") OPENBLAS_VERBOSE=2 "$train" --help 2>&1 | sed -n 's/^Core: *//p' | head -n 1)
  [ -n "${core_of[$m]}" ] || die "OPENBLAS_VERBOSE=2 did not name the OpenBLAS core ($m mode)"
done
echo "kernels: env -> ${core_of[env]}, native -> ${core_of[native]}"

mpi=(-np "$ranks" -x OPENBLAS_NUM_THREADS=1 -x OMP_NUM_THREADS=1 -x MKL_NUM_THREADS=1)
[ "$(id -u)" = 0 ] && mpi+=(--allow-run-as-root)
if [ "$ranks" -le "$cores" ]; then mpi+=(--bind-to core --map-by core)
else mpi+=(--oversubscribe --bind-to none); fi
batch=$(( per_rank * ranks ))
# Validate basin's options once before the first run.
"$train" --check="$ranks" --model mlp --batch "$batch" --data "$data" >/dev/null ||
  die "basin-train rejects the options (see above)"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
results="$tmp/results.csv"
echo "impl,model,kernel,round,source" >"$results"
port=$(( 20000 + RANDOM % 20000 ))
run_limit=120 # seconds; a run takes a few
: >"$tmp/retries"

# run IMPL MODEL MODE ROUND: one run, its output kept, its result noted.
run() {
  local impl=$1 model=$2 mode=$3 r=$4 steps=$5 log_every=$6 warm=$7 tsteps=$8
  local dir="$tmp/$impl-$model-$mode-$r" cmd
  mkdir -p "$dir"
  if [ "$impl" = basin ]; then
    cmd=($(kernel_env "$mode") mpirun "${mpi[@]}" "$train" --model "$model" --batch "$batch"
         --max-steps "$steps" --eval-every 0 --log-every "$log_every" --data "$data"
         --output-dir "$dir")
  else
    port=$(( port + 1 ))
    cmd=($(kernel_env "$mode") mpirun "${mpi[@]}" "$py" "$here/torch_ddp.py" --model "$model"
         --batch "$per_rank" --warmup "$warm" --steps "$tsteps" --repeats 5 --threads 1
         --port "$port")
  fi
  echo "${cmd[*]}" >"$dir/command"
  # A run is a few seconds; one that takes minutes hangs (seen once with
  # gloo's rendezvous): PyTorch gets one more try on a fresh port, then it fails.
  local rc=0
  timeout -k 10 "$run_limit" "${cmd[@]}" >"$dir/log" 2>&1 || rc=$?
  if [ "$rc" = 124 ] && [ "$impl" = torch ]; then
    echo "run.sh: warning: $impl $model ($mode) hung for ${run_limit} s; once more on another port" >&2
    echo "$impl $model $mode round $r" >>"$tmp/retries"
    port=$(( port + 1 ))
    cmd[-1]=$port
    echo "${cmd[*]}" >"$dir/command"
    rc=0
    timeout -k 10 "$run_limit" "${cmd[@]}" >"$dir/log" 2>&1 || rc=$?
  fi
  if [ "$rc" != 0 ]; then
    tail -n 30 "$dir/log" >&2
    [ "$rc" = 124 ] && echo "run.sh: error: no result after ${run_limit} s" >&2
    echo "run.sh: error: failed: ${cmd[*]}" >&2
    exit 1
  fi
  if [ "$impl" = basin ]; then
    [ -s "$dir/metrics.jsonl" ] || { echo "run.sh: error: no metrics from: ${cmd[*]}" >&2; exit 1; }
    echo "$impl,$model,$mode,$r,$dir/metrics.jsonl" >>"$results"
  else
    grep -q '^{' "$dir/log" || { echo "run.sh: error: no JSON result from: ${cmd[*]}" >&2; exit 1; }
    echo "$impl,$model,$mode,$r,$dir/log" >>"$results"
  fi
}

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
start=$(date +%s)
for r in $(seq 1 "$rounds"); do
  for c in "${configs[@]}"; do
    read -r model steps log_every warm tsteps <<<"$c"
    order=("basin env" "torch env" "basin native" "torch native")
    [ $((r % 2)) -eq 1 ] || order=("torch native" "basin native" "torch env" "basin env")
    for j in "${order[@]}"; do
      read -r impl mode <<<"$j"
      run "$impl" "$model" "$mode" "$r" "$steps" "$log_every" "$warm" "$tsteps"
    done
    echo "round $r/$rounds: $model done ($(( $(date +%s) - start )) s)"
  done
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
elapsed=$(( $(date +%s) - start ))

mkdir -p "$(dirname "$out")"
DDP_RESULTS=$results DDP_OUT=$out DDP_ROUNDS=$rounds DDP_RANKS=$ranks DDP_PER_RANK=$per_rank \
DDP_CONFIGS="${configs[*]}" DDP_CORE_ENV=${core_of[env]} DDP_CORE_NATIVE=${core_of[native]} \
DDP_CMDLINE=$cmdline DDP_LOAD="$load_before -> $load_after" DDP_ELAPSED=$elapsed \
DDP_CORETYPE=${OPENBLAS_CORETYPE:-} DDP_L2=${OPENBLAS_L2_SIZE:-} DDP_TMP=$tmp \
DDP_RETRIES="$(wc -l <"$tmp/retries")" DDP_COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown) \
DDP_OPENBLAS="$(dpkg-query -W -f='${Version}' libopenblas0-pthread 2>/dev/null || echo '?')" \
DDP_MPI="$(mpirun --version 2>/dev/null | head -n 1)" \
  "$py" "$here/report.py"
echo "wrote $out"
