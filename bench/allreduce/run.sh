#!/bin/sh
# Run the all-reduce benchmarks and write bench/results/allreduce.md.
#   bench/allreduce/run.sh BENCH_BINARY [--no-simcluster] [--quick]
# BENCH_BINARY is the built basin-bench-allreduce. Sections:
#   1. one host, 2 ranks, shared-window buffers, every algorithm, 4 KiB-256 MiB
#   2. one host, 2 ranks, private buffers (hier needs a copy-in), hier vs mpi
#   3. simulated cluster, 4 hosts x 2 ranks, 1 Gbit/s links (needs root)
# --mca mpi_yield_when_idle 1: ranks that wait give the core away, so a busy
# or oversubscribed machine measures the algorithms, not the scheduler.
set -u
cmdline="$0 $*"
bench=${1:?usage: run.sh BENCH_BINARY [--no-simcluster] [--quick]}
shift
sim=1
max=268435456
runs=5
for a in "$@"; do
    case "$a" in
    --no-simcluster) sim=0 ;;
    --quick) max=16777216; runs=3 ;;
    *) echo "run.sh: unknown option $a" >&2; exit 2 ;;
    esac
done
root=$(cd "$(dirname "$0")/../.." && pwd)
out=$root/bench/results/allreduce.md
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mpirun="mpirun --bind-to none --mca btl self,vader,tcp --mca mpi_yield_when_idle 1"

section() { # title command...
    title=$1
    shift
    {
        echo
        echo "## $title"
        echo
        echo '```'
        echo "$*"
        echo '```'
        echo
        echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
        echo
    } >>"$out"
    "$@" >"$tmp/run.txt" 2>&1
    rc=$?
    sed 's/^### /#### /; s/^# basin/basin/' "$tmp/run.txt" >>"$out"
    echo >>"$out"
    echo "exit code: $rc; load average after: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$out"
}

{
    echo "# All-reduce benchmark results"
    echo
    echo "Written by \`$cmdline\` on $(date -u '+%Y-%m-%d %H:%M UTC')."
    echo
    echo "- machine: $(hostname), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), Linux $(uname -r)"
    echo "- MPI: $(mpirun --version | head -1)"
    echo "- time = slowest rank, median of $runs runs; algbw = bytes/time; busbw = algbw * 2(n-1)/n;"
    echo "  #wrong = wrong elements of a check on exact inputs, run outside the timed loop."
    echo "- The machine is shared: the load average printed around each section shows"
    echo "  how busy it was; on 2 cores, other jobs make single points noisy (2-3x)."
} >"$out"

section "One host, 2 ranks, buffers in the shared window (the trainer's case)" \
    $mpirun -np 2 "$bench" --max-bytes $max --runs $runs --csv "$tmp/host.csv"
section "One host, 2 ranks, private buffers (hier copies in)" \
    $mpirun -np 2 "$bench" --max-bytes $max --runs $runs --algos auto,hier,mpi --placement private
if [ "$sim" -eq 1 ]; then
    section "Simulated cluster: 4 hosts x 2 ranks, 1 Gbit/s per host link" \
        "$root/launch/simcluster.sh" --hosts 4 --ranks-per-host 2 --rate 1gbit \
        --mpirun-args "--mca mpi_yield_when_idle 1" -- \
        "$bench" --max-bytes 67108864 --runs 3 --algos auto,hier,rhd,ring,mpi
    {
        echo
        echo "Link bound: each host moves 2(H-1)/H = 1.5x the buffer through its link, so"
        echo "1 Gbit/s (125 MB/s) allows 0.083 GB/s algbw; TCP over 1500-byte frames carries"
        echo "~118 MB/s of payload (measured host to host here), which allows ~0.079 GB/s."
    } >>"$out"
fi
# Plot of the one-host table (Debian's python3 carries matplotlib).
if /usr/bin/python3 "$root/bench/allreduce/plot.py" "$tmp/host.csv" --png "$root/bench/results/allreduce.png" \
    --title "all-reduce busbw, 1 host x 2 ranks" >/dev/null; then
    printf '\n![busbw against size, one host](allreduce.png)\n' >>"$out"
fi
echo "wrote $out"
