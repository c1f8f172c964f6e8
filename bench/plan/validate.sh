#!/bin/bash
# Validation of basin-plan against the simulated cluster: predicted against measured.
# Needs root (network namespaces) and an otherwise idle machine: it times
# training steps. Takes about 1-2 hours on 2 cores.
#
#   bench/plan/validate.sh [--build DIR] [--data PATH] [--steps N] [--repeats R] [--quick]
#
# 1. Calibrate, on configurations that are not predicted later:
#    - links: basin-bench-allreduce (hier, rhd, ring; 4 KiB .. 16 MiB) on
#      2 hosts x 1 rank and 2 hosts x 2 ranks, at each link rate, fitted by
#      `basin-plan calibrate` into links-<rate>.json;
#    - compute: basin-bench-step --profile-json for each model, run as W
#      concurrent processes for every rank count W predicted later, scaled
#      from CPU time to wall time by each process's own wall/CPU ratio, so
#      the compute terms carry the same sharing of this machine's cores as the
#      runs they predict (the simulated hosts share 2 cores; the planner
#      itself takes real per-host rates). Choice stated: calibrate under the
#      same sharing, not communication-dominated configurations only.
# 2. Predict the held-out set and write the predictions (and their hash)
#    first: 2x2, 4x1, 4x2, 8x1 hosts x ranks at 1 Gbit/s and 250 Mbit/s for
#    mlp, cnn and a wide MLP (2 x 2048 hidden units, 5.8 M parameters).
#    Nothing measured on the held-out set is used by the predictions.
# 3. Measure each held-out configuration with basin-train on
#    launch/simcluster.sh (weak scaling, 64 samples per rank, hier, 25 MiB
#    buckets; step time from metrics.jsonl after the first interval).
# 4. Print and write predicted vs measured with the error:
#    bench/results/plan-validation.{md,csv,png}.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=$root/build-h-plan
data=$root/data/fashion-mnist.h5
steps=120
repeats=3
rates="1gbit 250mbit"
layouts="2x2 4x1 4x2 8x1"
models="mlp cnn wide-mlp"
args="$*"
while [ $# -gt 0 ]; do
    case "$1" in
    --build) build=$2; shift 2 ;;
    --data) data=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --repeats) repeats=$2; shift 2 ;;
    --quick) steps=60; repeats=1; shift ;;
    *) echo "validate.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
plan=$build/launch/basin-plan
sim=$root/launch/simcluster.sh
for f in "$plan" "$build/launch/basin-train" "$build/bench/allreduce/basin-bench-allreduce" \
         "$build/bench/step/basin-bench-step" "$data" "$sim"; do
    [ -e "$f" ] || { echo "validate.sh: missing $f" >&2; exit 2; }
done
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
work=$(mktemp -d /tmp/basin-plan-validate.XXXXXX)
echo "validate: work directory $work"
declare -A spec=([mlp]=mlp [cnn]=cnn [wide-mlp]="flatten,fc:2048,relu,fc:2048,relu,fc:10")
yield="--mca mpi_yield_when_idle 1"

# 1a. link terms
for rate in $rates; do
    runs=()
    for cal in "2 1" "2 2"; do
        set -- $cal
        csv=$work/ar-$rate-$1x$2.csv
        "$sim" --hosts "$1" --ranks-per-host "$2" --rate "$rate" --mpirun-args "$yield" -- \
            "$build/bench/allreduce/basin-bench-allreduce" --algos hier,rhd,ring --min-bytes 4096 \
            --max-bytes 16777216 --runs 3 --csv "$csv" >"$work/ar-$rate-$1x$2.log"
        lay=$(for _ in $(seq 1 "$1"); do printf '%s,' "$2"; done); lay=${lay%,}
        runs+=(--run "$lay:fp32:$csv")
    done
    "$plan" calibrate "${runs[@]}" -o "$work/links-$rate.json"
done

# 1b. compute terms under the sharing of W ranks
for model in $models; do
    for W in 4 8; do
        pids=()
        for i in $(seq 1 "$W"); do
            "$build/bench/step/basin-bench-step" --model "${spec[$model]}" --batch 64 --steps 10 --repeats 3 \
                --profile-json "$work/step-$model-w$W-$i.json" >"$work/step-$model-w$W-$i.log" &
            pids+=($!)
        done
        for p in "${pids[@]}"; do wait "$p"; done
        # The profile counts CPU time; under sharing a step takes longer by
        # wall time: scale each process's profile by its wall/CPU ratio
        # (the last line of its output), then take the median process.
        best=$work/step-$model-w$W.json
        /usr/bin/python3 - "$work" "$model" "$W" "$best" <<'PY'
import json, sys
work, model, W, out = sys.argv[1:]
profs = []
for i in range(1, int(W) + 1):
    base = "%s/step-%s-w%s-%d" % (work, model, W, i)
    p = json.load(open(base + ".json"))
    last = json.loads(open(base + ".log").read().strip().splitlines()[-1])
    k = last["img_s_cpu"] / last["img_s_wall"]
    for l in p["layers"]:
        l["fwd_ms"] *= k
        l["bwd_ms"] *= k
    for key in ("loss_fwd_ms", "loss_bwd_ms", "sgd_ms"):
        p[key] *= k
    profs.append((sum(l["fwd_ms"] + l["bwd_ms"] for l in p["layers"]), i, p))
profs.sort(key=lambda t: t[:2])
json.dump(profs[len(profs) // 2][2], open(out, "w"))
PY
        "$plan" calibrate --step-profile "$best" -o "$work/compute-$model-w$W.json" >/dev/null
    done
done

# 2. predictions first
configs=$work/configs.txt
: >"$configs"
for model in $models; do for rate in $rates; do for l in $layouts; do
    echo "$model ${l%x*} ${l#*x} $rate 64" >>"$configs"
done; done; done
/usr/bin/python3 "$root/bench/plan/validate.py" predict "$plan" "$work" "$configs" "$work/predictions.csv"
cp "$work/predictions.csv" "$root/bench/results/plan-validation-predictions.csv"

# 3. measurements
mkdir -p "$work/runs"
for rep in $(seq 1 "$repeats"); do
    while read -r model hosts rph rate batch; do
        dir=$work/runs/$model-${hosts}x$rph-$rate-rep$rep
        mkdir -p "$dir"
        W=$((hosts * rph))
        # mpirun forwards its standard input to rank 0: never the list being read.
        "$sim" --hosts "$hosts" --ranks-per-host "$rph" --rate "$rate" --mpirun-args "$yield" -- \
            "$build/launch/basin-train" --model "${spec[$model]}" --data "$data" --batch $((batch * W)) \
            --max-steps "$steps" --log-every $((steps / 6)) --eval-every 0 --allreduce hier --bucket-mb 25 \
            --output-dir "$dir" </dev/null >"$dir/log" 2>&1 || { tail -n 20 "$dir/log" >&2; exit 1; }
    done <"$configs"
done

# 4. the comparison
/usr/bin/python3 "$root/bench/plan/validate.py" report "$work/predictions.csv" "$work/runs" \
    "$root/bench/results/plan-validation" "bench/plan/validate.sh $args"
cat "$root/bench/results/plan-validation.md"
