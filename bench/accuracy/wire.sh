#!/usr/bin/env bash
# The accuracy cost of a bf16 wire: cnn for 15 epochs on 2 simulated hosts x 1
# rank (launch/simcluster.sh, 1 Gbit/s links), once with --wire fp32 and once
# with --wire bf16, same seed; writes bench/results/accuracy-wire.md with
# both test-accuracy curves. Target: bf16 within 0.2 points of fp32. Root
# (network namespaces). Accuracy only: nothing here is timed, so it may run
# beside other work.
#
#   bench/accuracy/wire.sh [--fresh] [BUILD_DIR]        (default build)
#
# A run that stopped (a signal, a lost host) continues from its checkpoint
# when the script is started again (--resume auto); --fresh starts over.
set -euo pipefail
cd "$(dirname "$0")/../.."
fresh=0
[ "${1:-}" = --fresh ] && { fresh=1; shift; }
build=${1:-build}
train=$build/launch/basin-train
[ -x "$train" ] || { echo "wire.sh: $train missing (cmake --build $build)" >&2; exit 2; }
data=${BASIN_DATA:-data/fashion-mnist.h5}
[ -f "$data" ] || { echo "wire.sh: $data missing (launch/train.sh imports it)" >&2; exit 2; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
out=runs/accuracy-wire
[ "$fresh" = 1 ] && rm -rf "$out"
mkdir -p "$out"
args=(--data "$data" --model cnn --epochs 15 --batch 64 --lr 0.02 --seed 1 --resume auto)
for wire in fp32 bf16; do
  echo "wire.sh: cnn 15 epochs, 2 hosts x 1 rank, --wire $wire" >&2
  launch/simcluster.sh --hosts 2 --ranks-per-host 1 --rate 1gbit -- "$train" "${args[@]}" --wire "$wire" \
    --output-dir "$out/$wire" >>"$out/$wire.log" 2>&1
done
/usr/bin/python3 - "$out" "${args[*]}" >bench/results/accuracy-wire.md <<'PY'
import json, sys, time
out, args = sys.argv[1], sys.argv[2]
def evals(wire):
    return [json.loads(l) for l in open(f"{out}/{wire}/metrics.jsonl") if '"eval"' in l]
e = {w: [r for r in evals(w) if r.get("event") == "eval"] for w in ("fp32", "bf16")}
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
key = "test_accuracy"
a32, a16 = 100 * e["fp32"][-1][key], 100 * e["bf16"][-1][key]
diff = a16 - a32
print("# cnn with a bf16 wire between hosts: test accuracy against fp32\n")
print(f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; machine: {cpu}, 2 cores; 2 simulated hosts "
      "(launch/simcluster.sh, 1 Gbit/s links), 1 rank each, so every gradient crosses the wire.\n")
print("    bench/accuracy/wire.sh")
print(f"    launch/simcluster.sh --hosts 2 --ranks-per-host 1 --rate 1gbit -- basin-train {args} --wire fp32|bf16\n")
print(f"Final test accuracy: fp32 {a32:.2f} %, bf16 {a16:.2f} %, difference {diff:+.2f} points "
      f"(target: within 0.2): **{'met' if abs(diff) <= 0.2 else 'missed'}**.\n")
print("| epoch | fp32 | bf16 |")
print("|---:|---:|---:|")
for i, (x, y) in enumerate(zip(e["fp32"], e["bf16"])):
    print(f"| {i + 1} | {100 * x[key]:.2f} % | {100 * y[key]:.2f} % |")
PY
cat bench/results/accuracy-wire.md
