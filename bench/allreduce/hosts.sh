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
#   bench/allreduce/hosts.sh [BUILD_DIR]        (default build)
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:-build}
bench=$build/bench/allreduce/basin-bench-allreduce
[ -x "$bench" ] || { echo "hosts.sh: $bench missing (cmake --build $build)" >&2; exit 2; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
runs=()
for h in 2 4 8; do
  for wire in fp32 bf16; do
    algos=hier,ring,mpi
    [ "$wire" = fp32 ] && algos=hier,rhd,ring,mpi
    echo "hosts.sh: $h hosts, wire $wire" >&2
    launch/simcluster.sh --hosts "$h" --ranks-per-host 1 --rate 1gbit -- "$bench" --min-bytes 16777216 \
      --max-bytes 67108864 --algos "$algos" --wire "$wire" --runs 5 --csv "$work/$h-$wire.csv" >"$work/$h-$wire.log"
    runs+=("$h:$wire:$work/$h-$wire.csv")
  done
done
/usr/bin/python3 - "$build" "${runs[@]}" >bench/results/allreduce-hosts.md <<'PY'
import csv, subprocess, sys, time
rate = 0.125  # GB/s: 1 Gbit/s
rows = {}
for spec in sys.argv[2:]:
    h, wire, path = spec.split(":", 2)
    for r in csv.DictReader(open(path)):
        rows[(int(h), wire, r["algo"], int(r["bytes"]))] = float(r["algbw_gbs"])
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
print("# All-reduce across simulated hosts at 1 Gbit/s: link bound, MPI_Allreduce, bf16 wire\n")
print(f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; machine: {cpu}, 2 cores; hosts are network "
      "namespaces with tc-limited 1 Gbit/s links, one rank each (launch/simcluster.sh).\n")
print("    bench/allreduce/hosts.sh   (launch/simcluster.sh --hosts H --ranks-per-host 1 --rate 1gbit -- "
      "basin-bench-allreduce --min-bytes 16777216 --max-bytes 67108864 --wire fp32|bf16 --runs 5)\n")
print("Link bound: algbw <= R W / (2 (W - 1)), R = 0.125 GB/s (every host sends 2 (W-1)/W of the buffer). "
      "Medians of 5 runs; algbw counts the fp32 buffer, also with a bf16 wire.\n")
print("| hosts | size (MiB) | bound (GB/s) | hier fp32 | of bound | MPI_Allreduce | hier / MPI | hier bf16 | bf16 / fp32 |")
print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for h in (2, 4, 8):
    bound = rate * h / (2 * (h - 1))
    for n in sorted({k[3] for k in rows if k[0] == h}):
        f = rows.get((h, "fp32", "hier", n)); m = rows.get((h, "fp32", "mpi", n)); b = rows.get((h, "bf16", "hier", n))
        if f is None or m is None or b is None:
            continue
        print(f"| {h} | {n >> 20} | {bound:.4f} | {f:.4f} | {100 * f / bound:.0f} % | {m:.4f} | {f / m:.2f}x | {b:.4f} | {b / f:.2f}x |")
print("\nTargets (4 and 8 hosts, >= 16 MiB): hier >= 85 % of the bound and >= 1.3x MPI_Allreduce; "
      "bf16 >= 1.8x fp32.\n")
print("All algorithms, algbw GB/s:\n")
print("| hosts | wire | size (MiB) | " + " | ".join(("hier", "rhd", "ring", "mpi")) + " |")
print("|---:|:--|---:|---:|---:|---:|---:|")
for (h, wire, n) in sorted({(k[0], k[1], k[3]) for k in rows}):
    print(f"| {h} | {wire} | {n >> 20} | " + " | ".join(
        f"{rows[(h, wire, a, n)]:.4f}" if (h, wire, a, n) in rows else "" for a in ("hier", "rhd", "ring", "mpi")) + " |")
PY
cat bench/results/allreduce-hosts.md
