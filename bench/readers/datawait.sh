#!/usr/bin/env bash
# Reader processes on a host of their own against the prefetch thread, on a
# decoding-heavy pipeline: cnn on Fashion-MNIST with --augment crop:2,flip
# and --reader-cost N (the 8x8 DCT rounds of a JPEG decoder per sample), N
# chosen so that reading a batch takes about 60 % of the trainer's compute
# for it (50-70 %).
#
#   (a) in-process: 1 simulated host x 1 rank, pinned to one core; its
#       prefetch thread reads on that same core, beside the training.
#   (b) readers:    2 simulated hosts x 1 rank, one hostfile for mpirun and
#       basin-train --roles, host 2 marked '# basin:reader'; the trainer
#       (host 1) pinned to the first core, the reader (host 2) to the second.
# Both run on launch/simcluster.sh (network namespaces, 1 Gbit/s links), so
# they see the same network stack. A rank is pinned by a wrapper that runs
# taskset -c CORE basin-train, CORE chosen by the simulated hostname.
#
# Each configuration runs --repeats times, interleaved (a b a b ...). From
# each run's metrics.jsonl (step lines; the first logging interval skipped
# as warm-up) it takes the median over intervals of images_per_s, the step
# time (batch / images_per_s), data_wait_s, compute_s (forward, backward and
# optimizer) and, with readers, reader_busy; a configuration's figure is the
# median over its runs. Reported: the trainer's data wait as % of its step
# time, and images/s of (b) / (a). Targets: data wait with readers < 2 % of
# the step; images/s >= 1.3x in-process.
#
# --cost auto (the default) calibrates N first: two short runs of (b), at
# cost 0 and 40, give the reader's seconds per batch at each (reader_busy x
# step time) and the trainer's compute per step; N is where the line through
# them reaches 60 % of that compute (clamped to [1, 1000]).
#
# Needs root (network namespaces), taskset, /usr/bin/python3, 2 idle cores:
# nothing else may run. Writes bench/results/readers-datawait.md (or --out).
#
#   bench/readers/datawait.sh [--build DIR] [--steps N] [--log-every N]
#       [--repeats R] [--cost N|auto] [--cores A,B] [--out FILE]
#   defaults: build, 600 steps, every 50, 3 repeats, auto, 0,1
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
build=build steps=600 every=50 repeats=3 cost=auto cores=0,1 out=bench/results/readers-datawait.md
while [ $# -gt 0 ]; do
  case "$1" in
  --build) build=$2; shift 2 ;;
  --steps) steps=$2; shift 2 ;;
  --log-every) every=$2; shift 2 ;;
  --repeats) repeats=$2; shift 2 ;;
  --cost) cost=$2; shift 2 ;;
  --cores) cores=$2; shift 2 ;;
  --out) out=$2; shift 2 ;;
  --inner) break ;;
  *) echo "datawait.sh: unknown option '$1' (see the comment at the top)" >&2; exit 2 ;;
  esac
done
case "$build" in /*) ;; *) build=$root/$build ;; esac
train=$build/launch/basin-train
data=${BASIN_DATA:-$root/data/fashion-mnist.h5}
batch=64
job=(--data "$data" --model cnn --batch "$batch" --augment crop:2,flip --epochs 100 --eval-every 0
     --checkpoint-seconds 0 --check-every 0 --seed 1)

# Inside the simulated cluster (host 1): one run. MODE a or b, its cost,
# steps, logging interval, output folder; the wrapper pins by hostname.
if [ "${1:-}" = --inner ]; then
  mode=$2 n=$3 st=$4 ev=$5 dir=$6 pin=$7
  hosts=$dir/hosts
  while read -r host rest; do
    if [ "$mode" = b ] && [ "$host" = 10.77.0.2 ]; then echo "$host $rest   # basin:reader"; else echo "$host $rest"; fi
  done < "$BASIN_SIM_HOSTFILE" > "$hosts"
  roles=()
  [ "$mode" = b ] && roles=(--roles "$hosts")
  np=1
  [ "$mode" = b ] && np=2
  exec mpirun --hostfile "$hosts" -np "$np" --bind-to none "$pin" "${job[@]}" "${roles[@]}" --reader-cost "$n" \
    --max-steps "$st" --log-every "$ev" --output-dir "$dir/out"
fi

[ -x "$train" ] || { echo "datawait.sh: $train missing (cmake --build $build)" >&2; exit 2; }
[ -f "$data" ] || { echo "datawait.sh: $data missing (launch/train.sh imports it)" >&2; exit 2; }
command -v taskset > /dev/null || { echo "datawait.sh: taskset missing (util-linux)" >&2; exit 2; }
[ "$(nproc)" -ge 2 ] || { echo "datawait.sh: needs 2 cores" >&2; exit 2; }
core_a=${cores%%,*} core_b=${cores#*,}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
export OMPI_MCA_mpi_yield_when_idle=1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat > "$work/pin.sh" <<PIN
#!/bin/sh
# Simulated host 2 (the reader's) on core $core_b, every other on core $core_a.
case "\$(hostname)" in basin-sim-h2) core=$core_b ;; *) core=$core_a ;; esac
exec taskset -c "\$core" "$train" "\$@"
PIN
chmod +x "$work/pin.sh"

# run MODE COST STEPS NAME: one run on the simulated cluster; its metrics in $work/NAME.
run() {
  local mode=$1 n=$2 st=$3 name=$4 hosts=1
  [ "$mode" = b ] && hosts=2
  mkdir -p "$work/$name"
  echo "datawait.sh: $name: ($mode) cost $n, $st steps" >&2
  if ! launch/simcluster.sh --exec --hosts "$hosts" --ranks-per-host 1 --rate 1gbit -- \
      bash "$0" --inner "$mode" "$n" "$st" "$every" "$work/$name" "$work/pin.sh" \
      > "$work/$name/log" 2>&1; then
    tail -20 "$work/$name/log" >&2
    echo "datawait.sh: run $name failed" >&2
    exit 1
  fi
}

# Medians over one run's logging intervals (the first skipped), as JSON.
summary() {
  /usr/bin/python3 - "$work/$1/out/metrics.jsonl" "$batch" <<'PY'
import json, statistics, sys
steps = [json.loads(l) for l in open(sys.argv[1]) if '"event":"step"' in l][1:]
batch = float(sys.argv[2])
if not steps:
    sys.exit("datawait.sh: no logging interval after the first: raise --steps")
med = lambda f: statistics.median(f(s) for s in steps)
out = {"images_per_s": med(lambda s: s["images_per_s"]), "step_s": med(lambda s: batch / s["images_per_s"]),
       "data_wait_s": med(lambda s: s["data_wait_s"]), "compute_s": med(lambda s: s["compute_s"]),
       "wait_pct": med(lambda s: 100 * s["data_wait_s"] * s["images_per_s"] / batch),
       "intervals": len(steps)}
if "reader_busy" in steps[0]:
    out["reader_busy"] = med(lambda s: s["reader_busy"])
    out["read_s"] = med(lambda s: s["reader_busy"] * batch / s["images_per_s"])  # reader's seconds per batch
print(json.dumps(out))
PY
}

if [ "$cost" = auto ]; then
  cal=$(( steps / 4 > 3 * every ? steps / 4 : 3 * every ))
  run b 0 "$cal" cal0
  run b 40 "$cal" cal40
  cost=$(/usr/bin/python3 - "$(summary cal0)" "$(summary cal40)" <<'PY'
import json, sys
a, b = json.loads(sys.argv[1]), json.loads(sys.argv[2])
per = (b["read_s"] - a["read_s"]) / 40
want = 0.6 * b["compute_s"]
n = round((want - a["read_s"]) / per) if per > 0 else 1000
print(max(1, min(1000, n)))
PY
)
  echo "datawait.sh: --reader-cost $cost (calibrated: reading about 60 % of the trainer's compute)" >&2
fi

for i in $(seq 1 "$repeats"); do
  run a "$cost" "$steps" "a$i"
  run b "$cost" "$steps" "b$i"
done

mkdir -p "$(dirname "$out")"
runs=()
for i in $(seq 1 "$repeats"); do runs+=("a:$(summary "a$i")" "b:$(summary "b$i")"); done
/usr/bin/python3 - "$cost" "$steps" "$every" "$repeats" "$cores" "$batch" "${runs[@]}" > "$out" <<'PY'
import json, statistics, sys, time
cost, steps, every, repeats, cores, batch = sys.argv[1:7]
runs = {"a": [], "b": []}
for spec in sys.argv[7:]:
    mode, js = spec.split(":", 1)
    runs[mode].append(json.loads(js))
med = lambda mode, key: statistics.median(r[key] for r in runs[mode])
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
ratio = med("b", "images_per_s") / med("a", "images_per_s")
wait_b = med("b", "wait_pct")
read_frac = med("b", "read_s") / med("b", "compute_s")
print("# Reader processes on their own host against the prefetch thread: data wait and images/s\n")
print(f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; machine: {cpu}; cores {cores} "
      "(trainer, reader); simulated hosts: launch/simcluster.sh, 1 Gbit/s links.\n")
print(f"    bench/readers/datawait.sh --steps {steps} --log-every {every} --repeats {repeats} --cost {cost}\n")
print(f"Pipeline: basin-train --model cnn --batch {batch} --augment crop:2,flip --reader-cost {cost} on "
      "data/fashion-mnist.h5. (a): 1 host x 1 rank on one core, the prefetch thread reading beside the training. "
      "(b): 2 hosts x 1 rank, `--roles` marks host 2 reader; trainer and reader each on a core of its own. "
      f"Medians over logging intervals of {every} steps (the first skipped), then over {repeats} interleaved runs. "
      f"Reading one batch took {100 * read_frac:.0f} % of the trainer's compute for it (reader_busy x step "
      "time / compute_s, in (b)).\n")
print("| config | images/s | step (ms) | compute (ms) | data wait (ms) | data wait % of step | reader busy |")
print("|:--|---:|---:|---:|---:|---:|---:|")
for mode, name in (("a", "(a) in-process, 1 core"), ("b", "(b) reader process, own host and core")):
    busy = f"{med(mode, 'reader_busy'):.2f}" if mode == "b" else ""
    print(f"| {name} | {med(mode, 'images_per_s'):.0f} | {1e3 * med(mode, 'step_s'):.1f} | "
          f"{1e3 * med(mode, 'compute_s'):.1f} | {1e3 * med(mode, 'data_wait_s'):.2f} | {med(mode, 'wait_pct'):.1f} | "
          f"{busy} |")
print(f"\nimages/s (b) / (a): {ratio:.2f}x.\n")
print("Per run (a1, b1, a2, b2, ...): images/s " + ", ".join(
    f"{runs[m][i]['images_per_s']:.0f}" for i in range(int(repeats)) for m in ("a", "b")) + ".\n")
ok_wait, ok_ratio = wait_b < 2.0, ratio >= 1.3
print(f"Targets: data wait with readers < 2 % of the step: {wait_b:.1f} %, {'met' if ok_wait else 'not met'}; "
      f"images/s >= 1.3x in-process: {ratio:.2f}x, {'met' if ok_ratio else 'not met'}.")
PY
cat "$out"
