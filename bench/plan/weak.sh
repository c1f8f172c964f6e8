#!/usr/bin/env bash
# Weak-scaling efficiency of cnn and mlp across simulated hosts, measured on
# 2, 4 and 8 hosts x 1 rank at 1 Gbit/s (launch/simcluster.sh) beside
# basin-plan's prediction of the same runs, and predicted by basin-plan to
# 256 ranks (1 .. 32 hosts x 8 ranks) on 10 GbE and 100 GbE. Writes one
# table, bench/results/scaling-hosts-weak.md, and one plot,
# bench/results/scaling-hosts-weak.png. Root (network namespaces); about
# 5-10 minutes on an idle 2-core machine with the defaults.
#
#   bench/plan/weak.sh [options]
#
#   --steps N        training steps per run (default 60); metrics every N/6
#                    steps, the first interval is warm-up and left out
#   --repeats R      runs of each configuration, interleaved; figures are
#                    medians over the logging intervals of all R (default 3)
#   --quick          a trial that checks the script end to end: 12 steps,
#                    1 repeat, a short link calibration (numbers meaningless)
#   --no-calibrate   predict the 1 Gbit/s runs with basin-plan's default link
#                    terms (50 us per message, 30 us per request) and
#                    --inter-bw 1, instead of terms fitted to the cluster
#   --build DIR      build folder (default build)
#   --data PATH      data set (default data/fashion-mnist.h5)
#   --out-dir DIR    where the table and the plot go (default bench/results)
#   --help           this text
#
# Method (the table says it too). The simulated hosts share this machine's
# 2 cores, so images/s per rank falls with the host count for reasons that
# are not communication. The measured efficiency is therefore taken inside
# each run: compute (data wait + forward + backward + optimizer, means over
# ranks from metrics.jsonl) / (compute + exposed communication): the part
# of the step not spent waiting on the network. basin-plan predicts the
# same fraction for the same layout with that run's forward + backward as
# --compute-s. The predictions to 256 ranks use one rank's compute measured
# alone by basin-bench-step (not shared) and real link rates.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cmdline="bench/plan/weak.sh${*:+ $*}"
py=/usr/bin/python3

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
die() { echo "weak.sh: $*" >&2; exit 2; }
posint() { [[ "$2" =~ ^[1-9][0-9]*$ ]] || die "$1 '$2': expected a positive integer"; }

steps=60 repeats=3 quick=0 calibrate=1 build=build data=data/fashion-mnist.h5 out_dir=bench/results
while [ $# -gt 0 ]; do
  case "$1" in
    --steps|--repeats|--build|--data|--out-dir)
      [ $# -ge 2 ] || die "$1 needs a value"
      case "$1" in
        --steps) steps=$2 ;; --repeats) repeats=$2 ;; --build) build=$2 ;;
        --data) data=$2 ;; --out-dir) out_dir=$2 ;;
      esac
      shift 2 ;;
    --quick) quick=1; steps=12; repeats=1; shift ;;
    --no-calibrate) calibrate=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
done
posint --steps "$steps"
posint --repeats "$repeats"
log_every=$(( steps / 6 > 0 ? steps / 6 : 1 ))
[ $(( steps / log_every )) -ge 2 ] || die "--steps $steps leaves no interval after the warm-up one"

cd "$root"
train=$build/launch/basin-train
plan=$build/launch/basin-plan
stepbench=$build/bench/step/basin-bench-step
arbench=$build/bench/allreduce/basin-bench-allreduce
sim=launch/simcluster.sh
for f in "$train" "$plan" "$stepbench" "$arbench" "$data" "$sim"; do
  [ -e "$f" ] || die "missing $f (build first: cmake --build $build)"
done
"$py" -c 'import matplotlib' 2>/dev/null || die "$py cannot import matplotlib (apt-get install python3-matplotlib)"
mkdir -p "$out_dir"

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
work=$(mktemp -d /tmp/basin-weak.XXXXXX)
echo "weak.sh: work directory $work (kept: logs, metrics, profiles)"
commands=$work/commands.txt
: >"$commands"
yield="--mca mpi_yield_when_idle 1"
models="cnn mlp"
hosts_list="2 4 8"
bucket_mb=4

# sim NAME HOSTS ARGS...: one program on HOSTS simulated hosts x 1 rank at
# 1 Gbit/s, output in $work/NAME.log; 77 (no namespaces) ends the script.
sim() {
  local name=$1 h=$2; shift 2
  echo "$sim --hosts $h --ranks-per-host 1 --rate 1gbit --mpirun-args \"$yield\" -- $*" >>"$commands"
  local rc=0
  "$sim" --hosts "$h" --ranks-per-host 1 --rate 1gbit --mpirun-args "$yield" -- "$@" >"$work/$name.log" 2>&1 || rc=$?
  if [ "$rc" -eq 77 ]; then
    tail -n 3 "$work/$name.log" >&2
    echo "weak.sh: the simulated cluster cannot run here (root and network namespaces needed)" >&2
    exit 77
  elif [ "$rc" -ne 0 ]; then
    tail -n 20 "$work/$name.log" >&2
    echo "weak.sh: $name failed (exit $rc); see $work/$name.log" >&2
    exit 1
  fi
}

# 1. One rank's compute, alone on a core: basin-bench-step per-layer profile.
st_steps=20 st_repeats=5
[ "$quick" = 1 ] && { st_steps=5; st_repeats=1; }
for m in $models; do
  echo "weak.sh: compute profile of $m (basin-bench-step, alone)"
  echo "$stepbench --model $m --batch 64 --steps $st_steps --repeats $st_repeats --profile-json $work/step-$m.json" >>"$commands"
  "$stepbench" --model "$m" --batch 64 --steps "$st_steps" --repeats "$st_repeats" \
    --profile-json "$work/step-$m.json" >"$work/step-$m.log"
  echo "$plan calibrate --step-profile $work/step-$m.json -o $work/compute-$m.json" >>"$commands"
  "$plan" calibrate --step-profile "$work/step-$m.json" -o "$work/compute-$m.json" >>"$work/calibrate.log"
done

# 2. Link terms of the simulated 1 Gbit/s links, fitted on 2 hosts x 1 rank
#    only (the 4- and 8-host runs are not used by the fit).
if [ "$calibrate" = 1 ]; then
  echo "weak.sh: link calibration, 2 hosts x 1 rank at 1 Gbit/s (basin-bench-allreduce)"
  max_bytes=16777216 ar_runs=3
  [ "$quick" = 1 ] && { max_bytes=1048576; ar_runs=1; }
  sim ar-2x1 2 "$arbench" --algos hier,rhd,ring --min-bytes 4096 --max-bytes "$max_bytes" --runs "$ar_runs" \
    --csv "$work/ar-2x1.csv"
  for m in $models; do
    echo "$plan calibrate --run 1,1:fp32:$work/ar-2x1.csv --step-profile $work/step-$m.json -o $work/links-$m.json" >>"$commands"
    "$plan" calibrate --run "1,1:fp32:$work/ar-2x1.csv" --step-profile "$work/step-$m.json" \
      -o "$work/links-$m.json" >>"$work/calibrate.log"
  done
  grep -m1 'inter' "$work/calibrate.log" | sed 's/^/weak.sh: /'
fi

# 3. The measured runs: weak scaling, 64 samples per rank, interleaved (every
#    model and host count in turn, the order reversed every repeat).
configs=()
for m in $models; do for h in $hosts_list; do configs+=("$m $h"); done; done
mkdir -p "$work/runs"
for rep in $(seq 1 "$repeats"); do
  order=("${configs[@]}")
  if [ $((rep % 2)) -eq 0 ]; then
    order=(); for ((i = ${#configs[@]} - 1; i >= 0; i--)); do order+=("${configs[i]}"); done
  fi
  for c in "${order[@]}"; do
    set -- $c
    m=$1 h=$2
    name=$m-${h}x1-rep$rep
    echo "weak.sh: repeat $rep/$repeats: $m on $h hosts x 1 rank, $steps steps"
    sim "runs/$name" "$h" "$train" --model "$m" --data "$data" --batch $((64 * h)) --max-steps "$steps" \
      --log-every "$log_every" --eval-every 0 --checkpoint-seconds 0 --allreduce hier --bucket-mb "$bucket_mb" \
      --output-dir "$work/runs/$name"
  done
done

# 4. Predictions, the table and the plot.
"$py" "$root/bench/plan/weak.py" --plan "$plan" --work "$work" --steps "$steps" --log-every "$log_every" \
  --repeats "$repeats" --calibrated "$calibrate" --quick "$quick" --bucket-mb "$bucket_mb" \
  --cmdline "$cmdline" --out "$out_dir/scaling-hosts-weak"
cat "$out_dir/scaling-hosts-weak.md"
