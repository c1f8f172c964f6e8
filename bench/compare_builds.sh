#!/usr/bin/env bash
# Two builds of basin, timed in one run, interleaved round by round so that
# the machine's drift falls on both alike: a one-core training step
# (basin-bench-step, mlp and cnn at batch 64), a 2-rank training run
# (basin-train, mlp, images/s of the run), and the one-host all-reduce
# (basin-bench-allreduce, 2 ranks, auto at 4 and 64 MiB). Prints medians
# of the rounds as a markdown table.
#
#   bench/compare_builds.sh BEFORE_BUILD AFTER_BUILD [ROUNDS] [DATA.h5]
#
# Both builds must hold launch/basin-train, bench/step/basin-bench-step and
# bench/allreduce/basin-bench-allreduce.
set -euo pipefail
a=$(cd "$1" && pwd) b=$(cd "$2" && pwd) rounds=${3:-5}
data=${4:-$b/test-data/fashion-mnist.h5}
[ -f "$data" ] || "$b/launch/basin-data" import fashion-mnist --output "$data" >/dev/null
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
mpi=(mpirun --bind-to none --mca btl self,vader,tcp --mca mpi_yield_when_idle 1 -np 2)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

measure() { # build label -> appends "label value" lines to $work/<build name>
  local build=$1 tag=$2 f=$work/$2
  for m in mlp cnn; do
    taskset -c 0 "$build/bench/step/basin-bench-step" --model "$m" --batch 64 --steps 3 --repeats 3 --warmup 2 \
      --threads 1 | tail -1 | sed -n "s/.*\"img_s_cpu\":\([0-9.]*\).*/step_${m}_img_s \1/p" >>"$f"
  done
  rm -rf "$work/run"
  "${mpi[@]}" "$build/launch/basin-train" --data "$data" --model mlp --limit-train 7680 --batch 64 --epochs 2 \
    --eval-every 0 --log-every 1000 --checkpoint-seconds 0 --output-dir "$work/run" 2>/dev/null |
    sed -n 's/.*trained [0-9]* steps in [0-9.]* s (\([0-9]*\) images\/s).*/train_2ranks_mlp_img_s \1/p' >>"$f"
  "${mpi[@]}" "$build/bench/allreduce/basin-bench-allreduce" --algos auto --min-bytes 4194304 --max-bytes 67108864 \
    --runs 5 --csv "$work/ar.csv" >/dev/null 2>&1
  /usr/bin/python3 - "$work/ar.csv" >>"$f" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
for r in rows:
    size = int(r.get("bytes") or r.get("size_bytes") or 0)
    if size in (4194304, 67108864):
        bw = r.get("algbw_GBps") or r.get("algbw") or r.get("algbw_gbs")
        print(f"allreduce_auto_{size >> 20}MiB_algbw_GBps {bw}")
PY
}

for r in $(seq "$rounds"); do
  echo "round $r/$rounds" >&2
  measure "$a" before
  measure "$b" after
done

/usr/bin/python3 - "$work/before" "$work/after" "$a" "$b" "$rounds" <<'PY'
import statistics, sys
def load(p):
    d = {}
    for line in open(p):
        k, v = line.split()
        d.setdefault(k, []).append(float(v))
    return d
before, after = load(sys.argv[1]), load(sys.argv[2])
print(f"before: `{sys.argv[3]}`, after: `{sys.argv[4]}`, {sys.argv[5]} interleaved rounds, medians (min..max)\n")
print("| measure | before | after | after / before |")
print("| --- | ---: | ---: | ---: |")
for k in before:
    x, y = before[k], after.get(k, [])
    if not y:
        continue
    mx, my = statistics.median(x), statistics.median(y)
    print(f"| {k} | {mx:.4g} ({min(x):.4g}..{max(x):.4g}) | {my:.4g} ({min(y):.4g}..{max(y):.4g}) | {my / mx:.3f} |")
PY
