#!/usr/bin/env bash
# launch/slurm.sbatch under a real one-node Slurm (Debian's slurm-wlm, see
# cluster.sh): every way Slurm ends a job ends in a checkpoint of the step in
# flight and the state the README promises, with 0 steps lost.
#
#   tests/slurm/slurm.sh BUILD DATA REPO
#
# Scenarios (2 ranks each, submitted from a folder that is not the
# repository, with --ntasks alone):
#   normal       runs to the end: COMPLETED, exit 0
#   usr1         SIGUSR1 to the batch shell: exit 75, the script requeues, the
#                job resumes at the stop's step and completes
#   requeue      scontrol requeue of the running job 10 times, each run resumes
#                at the step the previous one stopped; then scancel: CANCELLED,
#                exit 75, not requeued
#   timelimit    --time=1 without a warning signal: SIGTERM at the limit,
#                TIMEOUT, exit 75, a checkpoint of the step in flight
#   preempt      a higher-priority job preempts two: PreemptMode=REQUEUE (the
#                job comes back and completes) and CANCEL (PREEMPTED, exit 75)
# Skips (77) where it cannot run Slurm (not root, packages missing, daemons
# that do not start); installs slurm-wlm and munge with apt-get when root and
# they are missing and BASIN_SLURM_INSTALL=1.
set -u
build=$1 data=$2 repo=$3
here=$(cd "$(dirname "$0")" && pwd)
if [ "$(id -u)" = 0 ] && ! command -v slurmctld >/dev/null && [ "${BASIN_SLURM_INSTALL:-0}" = 1 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends slurm-wlm munge >/dev/null 2>&1
fi
# shellcheck source=tests/slurm/cluster.sh
. "$here/cluster.sh"
work=$(mktemp -d)
cleanup() {
  scancel --full --signal=KILL $(squeue -h -o %i 2>/dev/null) >/dev/null 2>&1
  slurm_stop
  pkill -9 -f "$work" 2>/dev/null
  if [ "${BASIN_SLURM_KEEP:-0}" = 1 ]; then echo "kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
slurm_start "$work/slurm"
rc=$?
[ "$rc" = 0 ] || exit "$rc"

eval "$(sed -n 's/^#define BASIN_EXIT_\([A-Z_]*\) \([0-9]*\).*/BASIN_EXIT_\1=\2/p' "$repo/src/core/exit_codes.h")"
export BASIN_BUILD=$build OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
unset BASIN_HOME
failures=0 checks=0
fail() { echo "FAILED: $*" >&2; failures=$((failures + 1)); }
submit_dir=$work/submit
mkdir -p "$submit_dir"

# 2000 samples, 20 a step: 100 steps an epoch, a few ms a step. No periodic
# checkpoints: a resumed run can only start from the checkpoint of its stop.
job() { # NAME EPOCHS [sbatch options]: submits, prints the job id
  local name=$1 epochs=$2
  shift 2
  (cd "$submit_dir" && sbatch --parsable --ntasks=2 --job-name="$name" --output="$work/$name.out" "$@" \
    "$repo/launch/slurm.sbatch" -- --data "$data" --model mlp --limit-train 2000 --batch 20 \
    --epochs "$epochs" --eval-every 0 --log-every 20 --checkpoint-seconds 0 --output-dir "$work/$name")
}
field() { scontrol show job "$1" 2>/dev/null | grep -o "\b$2=[^ ]*" | head -n 1 | cut -d= -f2-; }
# Waits until the job has ended, or is pending again after a requeue.
wait_state() { # JOB STATE...: until its state is one of them
  local j=$1 s
  shift
  while :; do
    s=$(field "$j" JobState)
    for w in "$@"; do [ "$s" = "$w" ] && return 0; done
    sleep 0.5
  done
}
runs() { local n; n=$(grep -c "^train: mpirun" "$work/$1.out" 2>/dev/null); echo "${n:-0}"; }
# Until run N of the job has trained at least one logged interval; fails
# when the job has ended before.
wait_training() { # NAME RUN JOB
  while :; do
    [ "$(runs "$1")" -ge "$2" ] && awk -v n="$2" '/^train: mpirun/ { r++ } r == n && /^epoch / { f = 1 } END { exit !f }' \
      "$work/$1.out" && return 0
    case $(field "$3" JobState) in
      COMPLETED|FAILED|CANCELLED|TIMEOUT|PREEMPTED|NODE_FAIL|OUT_OF_MEMORY|BOOT_FAIL|DEADLINE)
        fail "$1: job $3 ended ($(field "$3" JobState), exit $(field "$3" ExitCode)) before run $2 trained: $(tail -n 1 "$work/$1.out" 2>/dev/null)"
        return 1 ;;
    esac
    sleep 0.3
  done
}
# Every stop wrote a checkpoint of its step and the next run resumed there;
# no run failed, lost steps or restarted; the output says "stops" stops.
check_chain() { # NAME STOPS
  local name=$1 want=$2 out=$work/$1.out
  local stops resumes
  stops=$(grep -o 'preempted after step [0-9]*; checkpoint written' "$out" | grep -o '[0-9]*' | tr '\n' ' ')
  resumes=$(grep -o 'resumed from [^ ]*ckpt-[0-9]*\.h5 at step [0-9]*' "$out" | sed 's/.* at step //' | tr '\n' ' ')
  [ "$(echo "$stops" | wc -w)" = "$want" ] || fail "$name: $(echo "$stops" | wc -w) checkpointed stops, not $want ($stops)"
  grep -E -q 'step\(s\) lost|^train: restart|^train: giving up|without saying what it saved|exited on signal' "$out" \
    && fail "$name: $(grep -E 'step\(s\) lost|^train: restart|^train: giving up|without saying|exited on signal' "$out" | head -n 1)"
  echo "$name: stops at [ $stops] resumes at [ $resumes]"
  case "$stops" in "$resumes"*) ;; *) fail "$name: resumes [ $resumes] are not at the stops [ $stops]" ;; esac
}
check_job() { # JOB NAME STATE EXITCODE RESTARTS
  local s e r
  s=$(field "$1" JobState) e=$(field "$1" ExitCode) r=$(field "$1" Restarts)
  echo "$2: job $1 $s ExitCode=$e Restarts=$r Comment=$(scontrol show job "$1" 2>/dev/null | sed -n "s/^ *Comment=//p")"
  [ "$s" = "$3" ] || fail "$2: state $s, not $3"
  [ "$e" = "$4:0" ] || fail "$2: ExitCode $e, not $4:0"
  [ "$r" = "$5" ] || fail "$2: $r restarts, not $5"
}
status_of() { cat "$work/$1/status" 2>/dev/null; }

t0=$(date +%s)
# Four jobs side by side (8 CPUs): they are in the partition "high", so that
# the preemption below can only take the ones it is meant to.
checks=$((checks + 4))
j_norm=$(job normal 3 -p high)
j_usr1=$(job usr1 200 -p high)
j_req=$(job requeue 1000 -p high)
# Only the time limit ends this one: SIGURG is the warning bash ignores.
j_time=$(job timelimit 1000 -p high --time=1 --signal=B:URG@1)

wait_training usr1 1 "$j_usr1" &&
  scancel --batch --signal=USR1 "$j_usr1"

for i in $(seq 10); do
  wait_training requeue "$i" "$j_req" || break
  scontrol requeue "$j_req" || fail "requeue $i: scontrol requeue refused"
done
wait_training requeue 11 "$j_req" && scancel "$j_req"

wait_state "$j_norm" COMPLETED FAILED CANCELLED
check_job "$j_norm" normal COMPLETED "$BASIN_EXIT_OK" 0
check_chain normal 0
status_of normal | grep -q "^exit=$BASIN_EXIT_OK step=300 " || fail "normal: status '$(status_of normal)'"
grep -q 'checkpoint (final) at step 300' "$work/normal.out" || fail "normal: no final checkpoint at step 300"

wait_state "$j_usr1" COMPLETED FAILED CANCELLED
check_job "$j_usr1" usr1 COMPLETED "$BASIN_EXIT_OK" 1
check_chain usr1 1
grep -q "^basin: exit $BASIN_EXIT_PREEMPTED after the warning signal; requeueing" "$work/usr1.out" \
  || fail "usr1: the script did not requeue the job after exit $BASIN_EXIT_PREEMPTED"
grep -q 'checkpoint (final) at step 20000' "$work/usr1.out" || fail "usr1: did not complete after the requeue"

wait_state "$j_req" CANCELLED COMPLETED FAILED
check_job "$j_req" requeue CANCELLED "$BASIN_EXIT_PREEMPTED" 10
check_chain requeue 11
status_of requeue | grep -q "^exit=$BASIN_EXIT_PREEMPTED .* lost=0 " || fail "requeue: status '$(status_of requeue)'"

# Preemption: one job in "low" (PreemptMode=REQUEUE), one in "lowc"
# (CANCEL); a job of "high" that needs the whole node takes both.
wait_state "$j_time" TIMEOUT COMPLETED FAILED CANCELLED
check_job "$j_time" timelimit TIMEOUT "$BASIN_EXIT_PREEMPTED" 0
check_chain timelimit 1
status_of timelimit | grep -q "^exit=$BASIN_EXIT_PREEMPTED .* lost=0 " || fail "timelimit: status '$(status_of timelimit)'"

checks=$((checks + 2))
j_pre=$(job preempt-requeue 200 -p low)
j_prc=$(job preempt-cancel 1000 -p lowc)
wait_training preempt-requeue 1 "$j_pre"
wait_training preempt-cancel 1 "$j_prc"
j_big=$(cd "$submit_dir" && sbatch --parsable -p high --ntasks=8 --output=/dev/null --wrap "sleep 1")
wait_state "$j_prc" PREEMPTED COMPLETED FAILED CANCELLED
wait_state "$j_pre" COMPLETED FAILED CANCELLED
wait_state "$j_big" COMPLETED FAILED CANCELLED
check_job "$j_pre" preempt-requeue COMPLETED "$BASIN_EXIT_OK" 1
check_chain preempt-requeue 1
grep -q 'checkpoint (final) at step 20000' "$work/preempt-requeue.out" || fail "preempt-requeue: did not complete"
check_job "$j_prc" preempt-cancel PREEMPTED "$BASIN_EXIT_PREEMPTED" 0
check_chain preempt-cancel 1
status_of preempt-cancel | grep -q "^exit=$BASIN_EXIT_PREEMPTED .* lost=0 " || fail "preempt-cancel: status '$(status_of preempt-cancel)'"

echo "slurm: $((checks - failures)) of $checks scenarios passed in $(($(date +%s) - t0)) s"
if [ "$failures" != 0 ]; then
  for f in "$work"/*.out; do echo "--- $f"; grep -E '^(train|basin):' "$f" | grep -v -E 'checkpoint \(|^basin: [0-9]|^basin: no checkpoint|^basin: [0-9]+ (training|parameters)|supernode' | tail -n 40; done >&2
  exit 1
fi
