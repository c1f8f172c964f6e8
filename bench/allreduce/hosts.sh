#!/usr/bin/env bash
# The all-reduce across 2, 4 and 8 simulated hosts (launch/simcluster.sh, one
# rank per host, 1 Gbit/s links) at 16-64 MiB, against the link bound and
# MPI_Allreduce, with a 32-bit and a bf16 wire. Writes
# bench/results/allreduce-hosts.md. Root (network namespaces).
#
# Link bound: an all-reduce of N bytes over W hosts must move 2 (W-1)/W N
# bytes out of every host (reduce-scatter, then all-gather), so at link rate
# R its algbw (N / time) is at most R W / (2 (W-1)); R = 0.125 GB/s.
#
# Spread. On this 2-core machine the simulated hosts share the cores with
# the kernel's packet processing, so one run's median moves by +-5 % (at
# 8 hosts and 64 MiB one all-reduce takes ~1 s, and a few of them take
# ~150 ms longer). The whole sweep is repeated REPEATS times, the
# configurations interleaved, and the table shows the median over the
# repeats of each repeat's median run, with the repeats' range beside the
# headline figures.
#
#   bench/allreduce/hosts.sh [BUILD_DIR [REPEATS]]     (default build 3)
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:-build}
repeats=${2:-3}
bench=$build/bench/allreduce/basin-bench-allreduce
[ -x "$bench" ] || { echo "hosts.sh: $bench missing (cmake --build $build)" >&2; exit 2; }
[[ "$repeats" =~ ^[1-9][0-9]*$ ]] || { echo "hosts.sh: REPEATS must be a positive integer, not '$repeats'" >&2; exit 2; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
start=$(date +%s)
runs=()
for rep in $(seq 1 "$repeats"); do
  for h in 2 4 8; do
    for wire in fp32 bf16; do
      algos=hier,ring,mpi
      [ "$wire" = fp32 ] && algos=hier,rhd,ring,mpi
      echo "hosts.sh: repeat $rep/$repeats, $h hosts, wire $wire" >&2
      launch/simcluster.sh --hosts "$h" --ranks-per-host 1 --rate 1gbit -- "$bench" --min-bytes 16777216 \
        --max-bytes 67108864 --algos "$algos" --wire "$wire" --runs 5 --csv "$work/$rep-$h-$wire.csv" \
        >"$work/$rep-$h-$wire.log" </dev/null
      runs+=("$rep:$h:$wire:$work/$rep-$h-$wire.csv")
    done
  done
done
elapsed=$(($(date +%s) - start))
/usr/bin/python3 - "$build" "$repeats" "$elapsed" "${runs[@]}" >bench/results/allreduce-hosts.md <<'PY'
import csv, os, statistics, subprocess, sys, time
rate = 0.125  # GB/s: 1 Gbit/s
repeats, elapsed = int(sys.argv[2]), int(sys.argv[3])
reps = {}  # (hosts, wire, algo, bytes) -> [algbw of each repeat]
for spec in sys.argv[4:]:
    rep, h, wire, path = spec.split(":", 3)
    for r in csv.DictReader(open(path)):
        reps.setdefault((int(h), wire, r["algo"], int(r["bytes"])), []).append(float(r["algbw_gbs"]))
rows = {k: statistics.median(v) for k, v in reps.items()}
def spread(k, scale=1.0):
    v = reps[k]
    return f"{min(v) * scale:.0f}-{max(v) * scale:.0f}" if len(v) > 1 else ""
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
print("# All-reduce across simulated hosts at 1 Gbit/s: link bound, MPI_Allreduce, bf16 wire\n")
print(f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; commit {commit}; machine: {cpu}, 2 cores; "
      "hosts are network namespaces with tc-limited 1 Gbit/s links, one rank each (launch/simcluster.sh); "
      f"run time {elapsed // 60} min.\n")
print(f"    bench/allreduce/hosts.sh build {repeats}   (each repeat: launch/simcluster.sh --hosts H --ranks-per-host 1 "
      "--rate 1gbit -- basin-bench-allreduce --min-bytes 16777216 --max-bytes 67108864 --wire fp32|bf16 --runs 5)\n")
print("Link bound: algbw <= R W / (2 (W - 1)), R = 0.125 GB/s (every host sends 2 (W-1)/W of the buffer). "
      "TCP/IP and Ethernet headers take 66 of every 1514 bytes on the link, so about 95.6 % of the bound is "
      f"the most a TCP payload can reach. Each figure is the median over {repeats} repeats of the sweep of each "
      "repeat's median of 5 runs (the range over the repeats in brackets); algbw counts the fp32 buffer, also "
      "with a bf16 wire.\n")
eager = os.environ.get("OMPI_MCA_btl_tcp_eager_limit")
print("Transport: Open MPI's TCP eager limit " + (f"{eager} bytes, from the environment" if eager else
      "1 MiB, basin's default (allreduce_mpi_init)") + "; a bare TCP stream between two of these hosts "
      "carries about 94.5 % of the link rate (iperf3 on every link at once, 8 hosts: bench/allreduce/linkrate.sh).\n")
print("| hosts | size (MiB) | bound (GB/s) | hier fp32 | of bound (range) | MPI_Allreduce | hier / MPI | hier bf16 | bf16 / fp32 |")
print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for h in (2, 4, 8):
    bound = rate * h / (2 * (h - 1))
    for n in sorted({k[3] for k in rows if k[0] == h}):
        kf, km, kb = (h, "fp32", "hier", n), (h, "fp32", "mpi", n), (h, "bf16", "hier", n)
        if kf not in rows or km not in rows or kb not in rows:
            continue
        f, m, b = rows[kf], rows[km], rows[kb]
        rng = spread(kf, 100 / bound)
        print(f"| {h} | {n >> 20} | {bound:.4f} | {f:.4f} | {100 * f / bound:.0f} %{f' ({rng} %)' if rng else ''} "
              f"| {m:.4f} | {f / m:.2f}x | {b:.4f} | {b / f:.2f}x |")
print("\nTargets (4 and 8 hosts, >= 16 MiB): hier >= 85 % of the bound and >= 1.3x MPI_Allreduce; "
      "bf16 >= 1.8x fp32.\n")
print("All algorithms, algbw GB/s (median over the repeats):\n")
print("| hosts | wire | size (MiB) | " + " | ".join(("hier", "rhd", "ring", "mpi")) + " |")
print("|---:|:--|---:|---:|---:|---:|---:|")
for (h, wire, n) in sorted({(k[0], k[1], k[3]) for k in rows}):
    print(f"| {h} | {wire} | {n >> 20} | " + " | ".join(
        f"{rows[(h, wire, a, n)]:.4f}" if (h, wire, a, n) in rows else "" for a in ("hier", "rhd", "ring", "mpi")) + " |")
if repeats > 1:
    print("\nhier per repeat (GB/s), in the order run:\n")
    print("| hosts | wire | size (MiB) | repeats |")
    print("|---:|:--|---:|:--|")
    for (h, wire, n) in sorted({(k[0], k[1], k[3]) for k in rows}):
        k = (h, wire, "hier", n)
        if k in reps:
            print(f"| {h} | {wire} | {n >> 20} | " + " / ".join(f"{v:.4f}" for v in reps[k]) + " |")
PY
cat bench/results/allreduce-hosts.md | head -30
