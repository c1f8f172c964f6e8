#!/usr/bin/env bash
# One of 2 ranks at half speed: --balance equal against --balance auto.
#
# Rank 0 runs alone on core 0; rank 1 on core 1 beside a busy loop pinned to
# that core. Each rank and the busy loop run in a session of their own, and
# Linux gives each session (autogroup) an equal part of a core it competes
# for, so rank 1 gets half of core 1: half speed. (A cgroup CPU quota would do
# the same; this needs no cgroup set-up.) Each
# configuration trains cnn for 5 epochs on Fashion-MNIST from the same seed,
# one after the other, and reports the median images/s over the logging
# intervals (the first skipped as warm-up), the shares auto reached, and the
# final test accuracy. Writes bench/results/balance-halfspeed.md.
#
# Targets: auto >= 1.3x the images/s of equal shares; accuracy within 0.3
# points of equal shares. Needs 2 idle cores: nothing else may run.
#
#   bench/balance/halfspeed.sh [BUILD_DIR] [EPOCHS]     (default build 5)
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:-build}
epochs=${2:-5}
train=$build/launch/basin-train
[ -x "$train" ] || { echo "halfspeed.sh: $train missing (cmake --build $build)" >&2; exit 2; }
data=${BASIN_DATA:-data/fashion-mnist.h5}
[ -f "$data" ] || { echo "halfspeed.sh: $data missing (launch/train.sh imports it)" >&2; exit 2; }
[ "$(nproc)" -ge 2 ] || { echo "halfspeed.sh: needs 2 cores" >&2; exit 2; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
out=runs/balance-halfspeed
rm -rf "$out"
mkdir -p "$out"
# Each rank pinned to the core of its rank number, in a session of its own.
cat >"$out/pin.sh" <<'PIN'
#!/bin/sh
exec setsid -w taskset -c "$OMPI_COMM_WORLD_RANK" "$@"
PIN
chmod +x "$out/pin.sh"
setsid taskset -c 1 sh -c 'while :; do :; done' &
busy=$!
trap 'kill "$busy" 2>/dev/null || true' EXIT
args=(--data "$data" --model cnn --epochs "$epochs" --batch 64 --lr 0.02 --seed 1 --log-every 50)
for mode in equal auto; do
  echo "halfspeed.sh: cnn $epochs epochs, rank 1 at half speed, --balance $mode" >&2
  mpirun --oversubscribe --bind-to none -np 2 "$out/pin.sh" "$train" "${args[@]}" --balance "$mode" \
    --output-dir "$out/$mode" >"$out/$mode.log" 2>&1
done
kill "$busy" 2>/dev/null || true
/usr/bin/python3 - "$out" "${args[*]}" "$epochs" >bench/results/balance-halfspeed.md <<'PY'
import json, statistics, sys, time
out, args, epochs = sys.argv[1], sys.argv[2], sys.argv[3]
res = {}
for mode in ("equal", "auto"):
    recs = [json.loads(l) for l in open(f"{out}/{mode}/metrics.jsonl")]
    steps = [r for r in recs if r.get("event") == "step"]
    evals = [r for r in recs if r.get("event") == "eval"]
    ips = statistics.median(r["images_per_s"] for r in steps[1:])
    shares = steps[-1].get("shares")
    busy = steps[-1].get("busy_s")
    res[mode] = dict(ips=ips, acc=100 * evals[-1]["test_accuracy"], shares=shares, busy=busy,
                     curve=[100 * e["test_accuracy"] for e in evals])
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
ratio = res["auto"]["ips"] / res["equal"]["ips"]
dacc = res["auto"]["acc"] - res["equal"]["acc"]
fmt = lambda v: ":".join(str(x) for x in v) if v else "even"
print("# One of 2 ranks at half speed: --balance auto against equal shares\n")
print(f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; machine: {cpu}, 2 cores. Rank 0 alone on "
      "core 0; rank 1 on core 1 beside a busy loop; each in a session (autogroup) of its own, so rank 1 gets half "
      "a core.\n")
print("    bench/balance/halfspeed.sh")
print(f"    mpirun -np 2 (rank r pinned to core r) basin-train {args} --balance equal|auto\n")
print(f"images/s: median over the logging intervals (50 steps each, the first skipped). Test accuracy after "
      f"{epochs} epochs.\n")
print("| --balance | images/s | final shares (of 64) | busy s per step (last interval) | test accuracy |")
print("|---|---:|---|---|---:|")
for mode in ("equal", "auto"):
    r = res[mode]
    busy = ":".join(f"{b * 1e3:.0f} ms" for b in r["busy"]) if r["busy"] else "-"
    print(f"| {mode} | {r['ips']:.0f} | {fmt(r['shares'])} | {busy} | {r['acc']:.2f} % |")
print()
print(f"auto / equal images/s: **{ratio:.2f}x** (target >= 1.3x: {'met' if ratio >= 1.3 else 'missed'}); "
      f"accuracy difference {dacc:+.2f} points (target within 0.3: {'met' if abs(dacc) <= 0.3 else 'missed'}).\n")
print("| epoch | equal | auto |")
print("|---:|---:|---:|")
for i, (a, b) in enumerate(zip(res["equal"]["curve"], res["auto"]["curve"])):
    print(f"| {i + 1} | {a:.2f} % | {b:.2f} % |")
PY
cat bench/results/balance-halfspeed.md
