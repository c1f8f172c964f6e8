#!/usr/bin/env bash
# Train with synchronous data parallelism: one basin-train worker per rank,
# started by mpirun. Installs and builds what is missing, imports
# Fashion-MNIST on first use, checks the options once, then launches.
#
#   launch/train.sh [--np N] [--hostfile FILE] [--per-host N] [--max-restarts N]
#                   [-- basin-train options]
#
#   --np N            ranks (default: the hostfile's slots, or this machine's cores)
#   --hostfile FILE   Open MPI hostfile for a cluster; read again at every restart,
#                     so a job continues on the hosts it names then
#   --per-host N      ranks per host (with --hostfile)
#   --max-restarts N  restarts after a preemption or a failed rank (default 10)
#
#   The job resumes from the newest good checkpoint of its output directory
#   (--resume auto). SIGTERM or SIGUSR1 to this script reach every rank as
#   SIGUSR1: they checkpoint and stop, and the script exits 75 (resumable).
#   everything after -- goes to basin-train (see build/launch/basin-train --help);
#   with no options it trains the default model on Fashion-MNIST.
#   BASIN_BUILD=DIR uses the programs already built in DIR and skips set-up.
set -euo pipefail
cd "$(dirname "$0")/.."

np="" hostfile="" per_host="" max_restarts=10
usage() { sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "train: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --np) [ $# -ge 2 ] || die "--np needs a value"; np=$2; shift 2 ;;
    --hostfile) [ $# -ge 2 ] || die "--hostfile needs a value"; hostfile=$2; shift 2 ;;
    --per-host) [ $# -ge 2 ] || die "--per-host needs a value"; per_host=$2; shift 2 ;;
    --max-restarts) [ $# -ge 2 ] || die "--max-restarts needs a value"; max_restarts=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) die "unknown option '$1' (basin-train options go after --; see --help)" ;;
  esac
done
case "$np" in ""|*[!0-9]*|0) [ -z "$np" ] || die "--np '$np': expected a positive integer" ;; esac
case "$per_host" in ""|*[!0-9]*|0) [ -z "$per_host" ] || die "--per-host '$per_host': expected a positive integer" ;; esac
case "$max_restarts" in ""|*[!0-9]*) die "--max-restarts '$max_restarts': expected a number >= 0" ;; esac
if [ -n "$hostfile" ]; then
  [ -f "$hostfile" ] || die "hostfile '$hostfile' does not exist"
  grep -Eq '^[[:space:]]*[^#[:space:]]' "$hostfile" || die "hostfile '$hostfile' names no hosts"
fi

if [ -n "${BASIN_BUILD:-}" ]; then
  build=$BASIN_BUILD
  [ -x "$build/launch/basin-train" ] || die "BASIN_BUILD=$build holds no launch/basin-train"
else
  build=build
  launch/setup.sh
fi

# The bundled default job: the cnn preset on Fashion-MNIST; options given
# after -- come later and so override these.
defaults=(--model cnn --epochs 5 --batch 64 --lr 0.02 --schedule cosine)
user=("$@")
data=data/fashion-mnist.h5
for ((i = 0; i < ${#user[@]}; i++)); do
  case "${user[i]}" in --data) data=${user[i+1]:-} ;; --data=*) data=${user[i]#--data=} ;; esac
done
if [ "$data" = data/fashion-mnist.h5 ] && [ ! -f "$data" ]; then
  echo "train: importing Fashion-MNIST into $data"
  "$build/launch/basin-data" import fashion-mnist --output "$data"
fi

cores=$(nproc)
# Ranks: --np, else the slots the hostfile names now, else the cores here.
count_ranks() {
  if [ -n "$np" ]; then echo "$np"
  elif [ -n "$hostfile" ]; then
    awk '/^[[:space:]]*(#|$)/ {next} { n = 1; for (i = 2; i <= NF; i++) if ($i ~ /^slots=/) { split($i, a, "="); n = a[2] } s += n } END { print s + 0 }' "$hostfile"
  else echo "$cores"; fi
}
ranks=$(count_ranks)
[ "$ranks" -gt 0 ] 2>/dev/null || die "hostfile '$hostfile' names no slots"
# Validate everything once, in one process, before starting the job.
"$build/launch/basin-train" --check="$ranks" "${defaults[@]}" "${user[@]}" >/dev/null

signalled=0 pid=""
forward() { signalled=1; [ -n "$pid" ] && kill -USR1 "$pid" 2>/dev/null; }
trap forward TERM USR1

restarts=0
while :; do
  if [ -n "$hostfile" ]; then
    [ -f "$hostfile" ] || die "hostfile '$hostfile' does not exist"
    ranks=$(count_ranks)
    [ "$ranks" -gt 0 ] 2>/dev/null || die "hostfile '$hostfile' names no slots"
  fi
  mpi=(-np "$ranks" -x OPENBLAS_NUM_THREADS=1 -x OMP_NUM_THREADS=1)
  [ "$(id -u)" = 0 ] && mpi+=(--allow-run-as-root)
  if [ -n "$hostfile" ]; then
    mpi+=(--hostfile "$hostfile" --bind-to core)
    [ -n "$per_host" ] && mpi+=(--map-by "ppr:$per_host:node")
  elif [ "$ranks" -le "$cores" ]; then
    mpi+=(--bind-to core --map-by core)
  else
    mpi+=(--oversubscribe --bind-to none)
  fi
  echo "train: mpirun ${mpi[*]} $build/launch/basin-train ${defaults[*]} ${user[*]} --resume auto"
  mpirun "${mpi[@]}" "$build/launch/basin-train" "${defaults[@]}" "${user[@]}" --resume auto &
  pid=$!
  # wait returns early when a trapped signal arrives: wait again until mpirun is gone.
  rc=0
  while :; do
    if wait "$pid"; then rc=0; else rc=$?; fi
    kill -0 "$pid" 2>/dev/null || break
  done
  pid=""
  case $rc in
    0) echo "train: done"; exit 0 ;;
    2) exit 2 ;;
  esac
  if [ "$signalled" = 1 ]; then
    echo "train: stopped by a signal after checkpointing; run the same command to resume" >&2
    exit 75
  fi
  if [ "$restarts" -ge "$max_restarts" ]; then
    echo "train: giving up: the job failed (exit $rc) after $restarts restart(s)" >&2
    exit "$rc"
  fi
  restarts=$((restarts + 1))
  if [ "$rc" = 75 ]; then reason="a rank was preempted (SIGTERM/SIGUSR1) and checkpointed"
  else reason="the job failed (exit $rc): a rank died or aborted"; fi
  echo "train: restart $restarts/$max_restarts: $reason; resuming from the newest good checkpoint" >&2
done
