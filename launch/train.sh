#!/usr/bin/env bash
# Train with synchronous data parallelism: one basin-train worker per rank,
# started by mpirun. Installs and builds what is missing, imports
# Fashion-MNIST on first use, checks the options once, then launches.
#
#   launch/train.sh [--np N] [--hostfile FILE] [--per-host N] [-- basin-train options]
#
#   --np N          ranks (default: this machine's cores)
#   --hostfile FILE Open MPI hostfile for a cluster
#   --per-host N    ranks per host (with --hostfile)
#   everything after -- goes to basin-train (see build/launch/basin-train --help);
#   with no options it trains the default model on Fashion-MNIST.
#   BASIN_BUILD=DIR uses the programs already built in DIR and skips set-up.
set -euo pipefail
cd "$(dirname "$0")/.."

np="" hostfile="" per_host=""
usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "train: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --np) [ $# -ge 2 ] || die "--np needs a value"; np=$2; shift 2 ;;
    --hostfile) [ $# -ge 2 ] || die "--hostfile needs a value"; hostfile=$2; shift 2 ;;
    --per-host) [ $# -ge 2 ] || die "--per-host needs a value"; per_host=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) die "unknown option '$1' (basin-train options go after --; see --help)" ;;
  esac
done
case "$np" in ""|*[!0-9]*|0) [ -z "$np" ] || die "--np '$np': expected a positive integer" ;; esac
case "$per_host" in ""|*[!0-9]*|0) [ -z "$per_host" ] || die "--per-host '$per_host': expected a positive integer" ;; esac
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
[ -n "$np" ] || np=$cores
# Validate everything once, in one process, before starting the job.
"$build/launch/basin-train" --check="$np" "${defaults[@]}" "${user[@]}" >/dev/null

mpi=(-np "$np" -x OPENBLAS_NUM_THREADS=1 -x OMP_NUM_THREADS=1)
[ "$(id -u)" = 0 ] && mpi+=(--allow-run-as-root)
if [ -n "$hostfile" ]; then
  mpi+=(--hostfile "$hostfile")
  [ -n "$per_host" ] && mpi+=(--map-by "ppr:$per_host:node")
  mpi+=(--bind-to core)
elif [ "$np" -le "$cores" ]; then
  mpi+=(--bind-to core --map-by core)
else
  mpi+=(--oversubscribe --bind-to none)
fi
echo "train: mpirun ${mpi[*]} $build/launch/basin-train ${defaults[*]} ${user[*]}"
exec mpirun "${mpi[@]}" "$build/launch/basin-train" "${defaults[@]}" "${user[@]}"
