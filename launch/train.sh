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
#   --max-restarts N  restarts after a failed rank (default 10)
#
#   The job resumes from the newest good checkpoint of its output directory
#   (--resume auto). SIGTERM or SIGUSR1 to this script reach every rank as
#   SIGUSR1 (again every second until mpirun is gone, so that a signal that
#   comes before the ranks run is not lost): they checkpoint and stop. The
#   exit code says what happened (src/core/exit_codes.h), read from the
#   status file rank 0 writes (<output-dir>/status unless --status-file):
#   0 done; 75 stopped with a checkpoint of the current step; 76 stopped
#   but steps are lost (the line says how many; a missing status file counts
#   as unknown, never as saved); 74 a checkpoint failed and the job stopped
#   (no restart: it needs a person); 1 failed after --max-restarts; 2 refused.
#   mpirun runs with SIGTERM blocked: a SIGTERM that reaches every process at
#   once (Slurm) does not make it kill the ranks while they write.
#   everything after -- goes to basin-train (see build/launch/basin-train --help);
#   with no options it trains the default model on Fashion-MNIST.
#   BASIN_BUILD=DIR uses the programs already built in DIR and skips set-up.
set -euo pipefail
cd "$(dirname "$0")/.."

# The exit codes, from the one table.
eval "$(sed -n 's/^#define BASIN_EXIT_\([A-Z_]*\) \([0-9]*\).*/BASIN_EXIT_\1=\2/p' src/core/exit_codes.h)"
for code in OK FAILED USAGE CHECKPOINT_FAILED PREEMPTED PREEMPTED_UNSAVED; do
  v=BASIN_EXIT_$code
  [ -n "${!v:-}" ] || { echo "train: src/core/exit_codes.h defines no BASIN_EXIT_$code" >&2; exit 2; }
done

# A signal from the start on only asks for a stop; it is acted upon below.
signalled=0 pid="" ticker=""
# Tell mpirun (which tells every rank) now and every second while it runs: a
# signal before mpirun or the ranks are ready for it is not lost.
start_ticker() {
  [ -n "$pid" ] && [ -z "$ticker" ] || return 0
  ( trap '' TERM USR1; while kill -USR1 "$pid" 2>/dev/null; do sleep 1; done ) &
  ticker=$!
}
on_signal() { signalled=1; start_ticker; }
trap on_signal TERM USR1

np="" hostfile="" per_host="" max_restarts=10
usage() { sed -n '2,31p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "train: $*" >&2; exit "$BASIN_EXIT_USAGE"; }
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
data=data/fashion-mnist.h5 outdir=out status=""
for ((i = 0; i < ${#user[@]}; i++)); do
  case "${user[i]}" in
    --data) data=${user[i+1]:-} ;; --data=*) data=${user[i]#--data=} ;;
    --output-dir) outdir=${user[i+1]:-} ;; --output-dir=*) outdir=${user[i]#--output-dir=} ;;
    --status-file) status=${user[i+1]:-} ;; --status-file=*) status=${user[i]#--status-file=} ;;
  esac
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

# The outcome comes from the status file rank 0 writes at exit; a build
# without --status-file is believed by its exit code.
status_args=()
if "$build/launch/basin-train" --help 2>/dev/null | grep -q -- '--status-file'; then
  [ -n "$status" ] || { status=$outdir/status; status_args=(--status-file "$status"); }
else
  status=""
fi
# mpirun with SIGTERM blocked (its ranks start with it unblocked): Slurm's
# SIGTERM to every process of a job would otherwise make mpirun kill the
# ranks (SIGTERM, then SIGKILL 1 s later: odls_base_sigkill_timeout) while
# they write their checkpoint. SIGUSR1 still reaches mpirun, which passes it on.
shield=()
if env --block-signal=TERM true 2>/dev/null; then shield=(env --block-signal=TERM)
elif perl -MPOSIX -e 1 2>/dev/null; then
  shield=(perl -MPOSIX -e 'sigprocmask(SIG_BLOCK, POSIX::SigSet->new(SIGTERM)); exec { $ARGV[0] } @ARGV or die "$ARGV[0]: $!\n"')
fi

# The last run's outcome: code, step, checkpoint_step, lost, checkpoint.
st_code="" st_step="" st_good="" st_lost="" st_path=""
read_outcome() {
  local rc=$1 line="" kv
  st_code="" st_step="" st_good="" st_lost="" st_path=""
  if [ -z "$status" ]; then st_code=$rc; return; fi
  [ -f "$status" ] && [ "$status" -nt "$marker" ] && line=$(head -n 1 "$status")
  for kv in $line; do
    case $kv in
      exit=*) st_code=${kv#exit=} ;; step=*) st_step=${kv#step=} ;;
      checkpoint_step=*) st_good=${kv#checkpoint_step=} ;; lost=*) st_lost=${kv#lost=} ;;
    esac
  done
  case $line in *checkpoint=*) st_path=${line#*checkpoint=} ;; esac
  case $st_code in ""|*[!0-9]*) st_code=unknown ;; esac
  # A refusal happens before there is anything to record.
  [ "$st_code" = unknown ] && [ "$rc" = "$BASIN_EXIT_USAGE" ] && st_code=$rc
  return 0
}
good_text() {
  if [ -n "$st_path" ]; then echo "the checkpoint of step $st_good ($st_path)"
  else echo "the newest good checkpoint of $outdir"; fi
}

marker=$(mktemp "${TMPDIR:-/tmp}/basin-train.XXXXXX")
trap 'rm -f "$marker"' EXIT
restarts=0 last=none
while :; do
  if [ "$signalled" = 1 ]; then
    # Told to stop between two runs: nothing is running, nothing more is lost.
    case $last in
      none|"$BASIN_EXIT_PREEMPTED") echo "train: stopped by a signal before the job (re)started; run the same command to resume" >&2
                                    exit "$BASIN_EXIT_PREEMPTED" ;;
      *) echo "train: stopped by a signal before the restart; resume from the newest good checkpoint of $outdir (the failure above lost what came after it)" >&2
         exit "$BASIN_EXIT_PREEMPTED_UNSAVED" ;;
    esac
  fi
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
  if [ -n "$status" ]; then
    rm -f "$status"
    [ ! -e "$status" ] || die "cannot remove the old status file '$status'"
    touch "$marker"
  fi
  echo "train: mpirun ${mpi[*]} $build/launch/basin-train ${defaults[*]} ${user[*]} ${status_args[*]} --resume auto"
  "${shield[@]}" mpirun "${mpi[@]}" "$build/launch/basin-train" "${defaults[@]}" "${user[@]}" "${status_args[@]}" \
    --resume auto &
  pid=$!
  [ "$signalled" = 1 ] && start_ticker
  # wait returns early when a trapped signal arrives: wait again until mpirun is gone.
  rc=0
  while :; do
    if wait "$pid"; then rc=0; else rc=$?; fi
    kill -0 "$pid" 2>/dev/null || break
  done
  pid=""
  if [ -n "$ticker" ]; then kill -KILL "$ticker" 2>/dev/null; wait "$ticker" 2>/dev/null || true; ticker=""; fi
  read_outcome "$rc"
  last=$st_code
  case $st_code in
    "$BASIN_EXIT_OK")
      echo "train: done"; exit "$BASIN_EXIT_OK" ;;
    "$BASIN_EXIT_USAGE")
      exit "$BASIN_EXIT_USAGE" ;;
    "$BASIN_EXIT_CHECKPOINT_FAILED")
      echo "train: a checkpoint could not be written and the job stopped after step ${st_step:-?}; ${st_lost:-an unknown number of} step(s) after $(good_text) are not saved; not restarting: make room, then run the same command" >&2
      exit "$BASIN_EXIT_CHECKPOINT_FAILED" ;;
  esac
  if [ "$signalled" = 1 ]; then
    case $st_code in
      "$BASIN_EXIT_PREEMPTED")
        echo "train: stopped by a signal after step ${st_step:-?} with its checkpoint${st_path:+ $st_path} (0 steps lost); run the same command to resume" >&2
        exit "$BASIN_EXIT_PREEMPTED" ;;
      "$BASIN_EXIT_PREEMPTED_UNSAVED")
        echo "train: stopped by a signal after step ${st_step:-?}, but its checkpoint failed: ${st_lost:-?} step(s) lost; run the same command to resume from $(good_text)" >&2
        exit "$BASIN_EXIT_PREEMPTED_UNSAVED" ;;
      *)
        echo "train: stopped by a signal, but the job ended (mpirun exit $rc) without saying what it saved; the steps after the newest good checkpoint of $outdir may be lost; run the same command to resume from it" >&2
        exit "$BASIN_EXIT_PREEMPTED_UNSAVED" ;;
    esac
  fi
  case $st_code in
    "$BASIN_EXIT_PREEMPTED") reason="the ranks were told to stop (SIGTERM/SIGUSR1) and checkpointed step ${st_step:-?}" ;;
    "$BASIN_EXIT_PREEMPTED_UNSAVED") reason="the ranks were told to stop, but the checkpoint of step ${st_step:-?} failed (${st_lost:-?} step(s) lost)" ;;
    unknown) reason="the job ended (mpirun exit $rc) without a status file: a rank died or aborted" ;;
    *) reason="the job failed (exit $st_code): a rank died or aborted" ;;
  esac
  if [ "$restarts" -ge "$max_restarts" ]; then
    echo "train: giving up after $restarts restart(s): $reason" >&2
    exit "$BASIN_EXIT_FAILED"
  fi
  restarts=$((restarts + 1))
  echo "train: restart $restarts/$max_restarts: $reason; resuming from the newest good checkpoint" >&2
done
