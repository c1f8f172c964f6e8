#!/usr/bin/env bash
# Preemption timings through the launcher, as a user sees them:
#   - signal to exit: SIGTERM to launch/train.sh until it has exited 75
#     (ranks agree, rank 0 writes the checkpoint, all exit);
#   - restart to first step: launching the same command again until the
#     metrics file shows the first step after the resumed one;
#   - work lost: steps redone after the restart (0 when the stop was
#     signalled; up to --checkpoint-seconds of work after a hard kill).
# Writes bench/results/preemption.md.
#
#   bench/checkpoint/preempt.sh [--np N] [--model NAME] [--rounds R]
set -euo pipefail
cd "$(dirname "$0")/../.."
np=2 model=cnn rounds=3
while [ $# -gt 0 ]; do
  case "$1" in
    --np) np=$2; shift 2 ;;
    --model) model=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    *) echo "preempt.sh: unknown option '$1'" >&2; exit 2 ;;
  esac
done
launch/setup.sh >/dev/null
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
now() { date +%s.%N; }
steps_logged() { grep -c '"event":"step"' "$1" 2>/dev/null || echo 0; }
rows=()
for r in $(seq "$rounds"); do
  out=$work/run$r
  args=(--model "$model" --epochs 1 --log-every 1 --eval-every 0 --output-dir "$out")
  launch/train.sh --np "$np" -- "${args[@]}" >"$work/log1" 2>&1 &
  pid=$!
  # Let it train 30 steps, then preempt.
  until [ "$(steps_logged "$out/metrics.jsonl")" -ge 30 ]; do sleep 0.05; done
  t0=$(now)
  kill -TERM "$pid"
  rc=0; wait "$pid" || rc=$?
  t1=$(now)
  stopped=$(grep -o 'preempted after step [0-9]*' "$work/log1" | grep -o '[0-9]*$')
  ckpt_s=$(grep -o 'checkpoint (preempted) at step [0-9]*: [^ ]* in [0-9.]* s' "$work/log1" | awk '{print $(NF-1)}')
  before=$(steps_logged "$out/metrics.jsonl")
  t2=$(now)
  launch/train.sh --np "$np" -- "${args[@]}" --max-steps $((stopped + 40)) >"$work/log2" 2>&1 &
  pid=$!
  until [ "$(steps_logged "$out/metrics.jsonl")" -gt "$before" ]; do sleep 0.02; done
  t3=$(now)
  first=$(grep '"event":"step"' "$out/metrics.jsonl" | sed -n "$((before + 1))p" | grep -o '"step":[0-9]*' | grep -o '[0-9]*$')
  wait "$pid" || true
  rows+=("$(awk -v r="$r" -v rc="$rc" -v a="$t0" -v b="$t1" -v c="$t2" -v d="$t3" -v s="$stopped" -v f="$first" -v k="$ckpt_s" \
    'BEGIN { printf "| %d | %d | %s | %.2f | %s | %.2f | %d |", r, rc, s, b - a, k, d - c, (s + 1) - f }')")
done
{
  echo "# Preemption: stop and restart times"
  echo
  echo "Date: $(date -u '+%Y-%m-%d %H:%M UTC'); machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores; $np ranks, model $model."
  echo
  echo "    bench/checkpoint/preempt.sh --np $np --model $model --rounds $rounds"
  echo
  echo "SIGTERM goes to \`launch/train.sh\` after 30 steps; \"signal to exit\" runs until the launcher"
  echo "has exited; \"restart to first step\" from launching the same command again (mpirun start,"
  echo "reading the checkpoint, building the model) until the first resumed step is in the metrics."
  echo "\"steps redone\" counts steps trained twice: 0 means no work was lost."
  echo
  echo "| round | launcher exit code | stopped after step | signal to exit (s) | checkpoint write (s) | restart to first step (s) | steps redone |"
  echo "| --- | --- | --- | --- | --- | --- | --- |"
  printf '%s\n' "${rows[@]}"
  echo
  echo "Work lost per preemption: none when the stop is signalled (the launcher, or Slurm's"
  echo "\`--signal=B:USR1@120\`, gives the ranks time to checkpoint). After a hard kill (SIGKILL,"
  echo "a host lost) the job resumes from the last periodic checkpoint: with the default"
  echo "\`--checkpoint-seconds 60\`, at most 60 s and on average 30 s of training is redone."
} >bench/results/preemption.md
cat bench/results/preemption.md
