#!/usr/bin/env bash
# Faults around the output folders, with basin-train's exit codes read from
# src/core/exit_codes.h: a full disk at the final and at a preemption
# checkpoint, a folder that turns read-only, --checkpoint-failure continue
# and stop, two runs given one folder, unfinished files of a dead writer, a
# signal while MPI starts, an oversized supernode and a resume that would
# change the optimizer. Each case checks the exit code, the one line that
# explains it, --status-file and what is left on disk.
#
#   faults.sh BUILD_DIR DATA REPO
#
# The full and read-only folders are tmpfs mounts: those cases need root and
# are skipped (with a line) without it.
set -u
build=$1 data=$2 repo=$3
train=$build/launch/basin-train
work=$(mktemp -d)
mounts=()
cleanup() {
  pkill -9 -f "$work" 2>/dev/null
  for m in "${mounts[@]}"; do umount "$m" 2>/dev/null; done
  rm -rf "$work"
}
trap cleanup EXIT
eval "$(sed -n 's/^#define \(BASIN_EXIT_[A-Z_]*\) \([0-9]*\).*/\1=\2/p' "$repo/src/core/exit_codes.h")"
[ -n "${BASIN_EXIT_PREEMPTED_UNSAVED:-}" ] || { echo "faults: cannot read $repo/src/core/exit_codes.h" >&2; exit 1; }

failures=0 checks=0
fail() {
  echo "FAILED: $*" >&2
  for f in "$work/out" "$work/err"; do [ -s "$f" ] && sed "s/^/    $(basename "$f"): /" "$f" >&2; done
  failures=$((failures + 1))
}
check() { checks=$((checks + 1)); echo "faults: case $checks ($SECONDS s)"; }
# Every run is bounded: a hang fails its case (exit 124) instead of the test.
bounded() { timeout -k 5 120 "$@"; }
# wait for a background run, at most 120 s, then kill it.
wait_bounded() {
  local pid=$1
  for _ in $(seq 1200); do
    kill -0 "$pid" 2>/dev/null || { wait "$pid"; return $?; }
    sleep 0.1
  done
  echo "faults: process $pid still running after 120 s: killed" >&2
  kill -9 "$pid" 2>/dev/null
  wait "$pid"
  return 124
}
mpi=(mpirun --oversubscribe --bind-to none --allow-run-as-root)
# mlp: 1.9 M parameters, so a checkpoint is 15 MB.
job=(--data "$data" --model mlp --limit-train 1440 --limit-test 200 --batch 36 --epochs 1 --log-every 10
     --eval-every 0)
errors() { grep -c "error" "$work/err"; }

root=0
if [ "$(id -u)" = 0 ] && mkdir -p "$work/probe" && mount -t tmpfs -o size=1m tmpfs "$work/probe" 2>/dev/null; then
  umount "$work/probe"
  root=1
fi
# A folder of its own file system, SIZE MiB: 10 holds no checkpoint, 20 one.
small_disk() { mkdir -p "$1" && mount -t tmpfs -o "size=$2m" tmpfs "$1" && mounts+=("$1"); }

if [ "$root" = 1 ]; then
# 1. Full disk at the final checkpoint: 74, one error line, what was lost.
check
small_disk "$work/full" 10
bounded "$train" "${job[@]}" --output-dir "$work/full/o" --status-file "$work/s1" >"$work/out" 2>"$work/err"
rc=$?
[ "$rc" = "$BASIN_EXIT_CHECKPOINT_FAILED" ] && [ "$(errors)" = 1 ] && grep -q "No space left on device" "$work/err" \
  && grep -q "final checkpoint failed: exit $rc; resuming starts from step 0 (no checkpoint yet): 40 step(s) lost" "$work/out" \
  && grep -q "^exit=$rc step=40 checkpoint_step=-1 lost=40 checkpoint=$" "$work/s1" \
  && ! ls "$work/full/o/checkpoints"/*ckpt-* >/dev/null 2>&1 || fail "full disk, final checkpoint: exit $rc"

# 2. Full disk at a preemption checkpoint: 76, the earlier checkpoint kept.
#    The checkpoint of step 5 fills the folder; the signal lands in step 8.
check
small_disk "$work/full2" 20
BASIN_TEST_SIGNAL=1:7 bounded "${mpi[@]}" -x BASIN_TEST_SIGNAL -np 2 "$train" "${job[@]}" --checkpoint-steps 5 \
  --output-dir "$work/full2/o" --status-file "$work/s2" >"$work/out" 2>"$work/err"
rc=$?
ckpt5=$work/full2/o/checkpoints/ckpt-0000000005.h5
[ "$rc" = "$BASIN_EXIT_PREEMPTED_UNSAVED" ] && [ "$(errors)" = 1 ] \
  && grep -q "preempted after step 8, but its checkpoint failed: exit $rc; resuming starts from step 5 ($ckpt5): 3 step(s) lost" "$work/out" \
  && grep -q "^exit=$rc step=8 checkpoint_step=5 lost=3 checkpoint=$ckpt5$" "$work/s2" \
  && [ "$(ls "$work/full2/o/checkpoints"/*ckpt-*)" = "$ckpt5" ] || fail "full disk, preemption checkpoint: exit $rc"
# ... and a resume starts at step 5 from it.
check
bounded "$train" "${job[@]}" --output-dir "$work/after2" --resume "$ckpt5" >"$work/out" 2>"$work/err"
rc=$?
[ "$rc" = 0 ] && grep -q "resumed from .*ckpt-0000000005.h5 at step 5" "$work/out" || fail "resume after 76: exit $rc"

# 3. --checkpoint-failure continue: each failed write is one line, training
#    goes on to the end, and the failed final checkpoint still makes it 74.
check
small_disk "$work/full3" 10
bounded "$train" "${job[@]}" --checkpoint-steps 15 --output-dir "$work/full3/o" >"$work/out" 2>"$work/err"
rc=$?
[ "$rc" = "$BASIN_EXIT_CHECKPOINT_FAILED" ] && [ "$(errors)" = 3 ] \
  && [ "$(grep -c "training goes on after the failed checkpoint" "$work/out")" = 2 ] \
  && grep -q "trained 40 steps, but the final checkpoint failed" "$work/out" \
  || fail "--checkpoint-failure continue: exit $rc"
# ... and stop ends the run at the first failed write with 74.
check
bounded "$train" "${job[@]}" --checkpoint-steps 15 --checkpoint-failure stop --output-dir "$work/full3/o2" \
  >"$work/out" 2>"$work/err"
rc=$?
[ "$rc" = "$BASIN_EXIT_CHECKPOINT_FAILED" ] && [ "$(errors)" = 1 ] \
  && grep -q "stopped after step 15 because its checkpoint failed (--checkpoint-failure stop): exit $rc" "$work/out" \
  && ! grep -q "step     20" "$work/out" || fail "--checkpoint-failure stop: exit $rc"

# 4. The checkpoint folder turns read-only during the run (a read-only file
#    system mounted over it): the preemption checkpoint fails, 76; the
#    checkpoint written before is untouched underneath.
check
long=(--data "$data" --model mlp --limit-train 1440 --batch 36 --epochs 1000 --eval-every 0 --log-every 1000
      --checkpoint-seconds 0)
bounded "$train" "${long[@]}" --max-steps 3 --output-dir "$work/ro" >"$work/out" 2>"$work/err" || fail "case 4's first run"
before=$(md5sum "$work/ro/checkpoints"/ckpt-*)
"$train" "${long[@]}" --output-dir "$work/ro" --resume auto --status-file "$work/s4" >"$work/out" 2>"$work/err" &
pid=$!
for _ in $(seq 600); do grep -q "resumed from" "$work/out" && break; sleep 0.05; done
mount -t tmpfs -o ro,size=1m tmpfs "$work/ro/checkpoints" && mounts+=("$work/ro/checkpoints")
kill -TERM "$pid"
wait_bounded "$pid"
rc=$?
umount "$work/ro/checkpoints"
[ "$rc" = "$BASIN_EXIT_PREEMPTED_UNSAVED" ] && [ "$(errors)" = 1 ] && grep -q "Read-only file system" "$work/err" \
  && grep -q "but its checkpoint failed: exit $rc; resuming starts from step 3 (.*ckpt-0000000003.h5)" "$work/out" \
  && [ "$before" = "$(md5sum "$work/ro/checkpoints"/ckpt-*)" ] \
  && grep -q "^exit=$rc step=[0-9]* checkpoint_step=3 " "$work/s4" || fail "read-only folder, preemption checkpoint: exit $rc"
# An output folder on a read-only file system is refused before training.
check
mkdir -p "$work/rofs" && mount -t tmpfs -o ro,size=1m tmpfs "$work/rofs" && mounts+=("$work/rofs")
bounded "$train" "${job[@]}" --output-dir "$work/rofs/o" >"$work/out" 2>"$work/err"
rc=$?
[ "$rc" = "$BASIN_EXIT_USAGE" ] && [ "$(wc -l <"$work/err")" = 1 ] && grep -q "Read-only file system" "$work/err" \
  && ! grep -q "step" "$work/out" || fail "read-only output folder: exit $rc"
else
  echo "faults: not root: the full and read-only folder cases (tmpfs mounts) are skipped" >&2
fi

# 5. Two runs, one output folder: the second is refused naming the first;
#    with only the checkpoint folder or the metrics file shared, too; the
#    first goes on, and its metrics are whole JSON lines of its own steps.
check
long=(--data "$data" --model mlp --limit-train 1440 --batch 36 --epochs 1000 --eval-every 0 --log-every 20)
"${mpi[@]}" -np 2 "$train" "${long[@]}" --output-dir "$work/shared" >"$work/first.out" 2>"$work/first.err" &
first=$!
for _ in $(seq 600); do [ -s "$work/shared/.basin.lock" ] && [ -s "$work/shared/checkpoints/.basin.lock" ] && break; sleep 0.05; done
holder=$(pgrep -f "basin-train.*$work/shared" | head -1)
bounded "${mpi[@]}" -np 2 "$train" "${long[@]}" --output-dir "$work/shared" --resume auto >"$work/out" 2>"$work/err"
rc=$?
[ "$rc" = "$BASIN_EXIT_USAGE" ] && [ "$(grep -c "^basin" "$work/err")" = 1 ] \
  && grep -q "output-dir $work/shared is in use by another run (process [0-9]* on host $(hostname) since" "$work/err" \
  || fail "second run in one --output-dir: exit $rc"
check
bounded "$train" "${long[@]}" --output-dir "$work/other" --checkpoint-dir "$work/shared/checkpoints" >"$work/out" 2>"$work/err"
rc=$?
[ "$rc" = "$BASIN_EXIT_USAGE" ] && [ "$(wc -l <"$work/err")" = 1 ] && grep -q "checkpoint-dir .* is in use" "$work/err" \
  || fail "second run in one --checkpoint-dir: exit $rc"
check
before=$(wc -l <"$work/shared/metrics.jsonl")
bounded "$train" "${long[@]}" --output-dir "$work/other2" --metrics "$work/shared/metrics.jsonl" >"$work/out" 2>"$work/err"
rc=$?
[ "$rc" = "$BASIN_EXIT_USAGE" ] && [ "$(wc -l <"$work/err")" = 1 ] \
  && grep -q "metrics file $work/shared/metrics.jsonl is being written by another run" "$work/err" \
  && [ "$(wc -l <"$work/shared/metrics.jsonl")" -ge "$before" ] || fail "second run on one --metrics: exit $rc"
check
kill -USR1 "$first" # mpirun passes it on: checkpoint and stop
wait_bounded "$first"
rc=$?
[ "$rc" = "$BASIN_EXIT_PREEMPTED" ] && [ -n "$holder" ] && /usr/bin/python3 -c '
import json, sys
lines = open(sys.argv[1]).read().split("\n")
assert lines[-1] == "", "no newline at the end"
steps = [json.loads(l)["step"] for l in lines[:-1]]
assert steps == sorted(steps) and len(steps) == len(set(steps)), steps
# Losses at full precision: 9 significant digits (a float has about 7.2).
import re
digits = [len(re.sub(r"[^0-9]", "", v.split("e")[0]).lstrip("0")) for v in re.findall(r"\"loss\":([-0-9.e+]+)", "".join(lines))]
assert digits and max(digits) >= 8, digits
' "$work/shared/metrics.jsonl" || fail "the first run (exit $rc) or its metrics"

# 6. Unfinished files of a writer that died are removed at the next start.
check
mkdir -p "$work/stale/checkpoints"
head -c 100000 /dev/zero >"$work/stale/checkpoints/.ckpt-0000000012.h5.tmp.4242"
: >"$work/stale/checkpoints/.ckpt-notours.tmp.1"
bounded "$train" "${job[@]}" --max-steps 2 --output-dir "$work/stale" --resume auto >"$work/out" 2>"$work/err"
rc=$?
[ "$rc" = 0 ] && grep -q "removed 1 unfinished checkpoint file(s) of a writer that died (.ckpt-0000000012.h5.tmp.4242)" "$work/out" \
  && [ ! -e "$work/stale/checkpoints/.ckpt-0000000012.h5.tmp.4242" ] && [ -e "$work/stale/checkpoints/.ckpt-notours.tmp.1" ] \
  || fail "unfinished checkpoint file: exit $rc"

# 7. SIGTERM while MPI and the data start up: 75 without a checkpoint, and a
#    good checkpoint already there is not written over. The signal goes as
#    soon as the process has its handler (SigCgt in /proc: set first thing
#    in main, before MPI_Init), and 0.05 and 0.15 s later. (Before main, while
#    the loader maps the libraries, SIGTERM still kills: nothing has run.)
check
for delay in 0 0.05 0.15; do
  rm -rf "$work/early"
  mkdir -p "$work/early"
  cp -r "$work/stale/checkpoints" "$work/early/" # ckpt-2 of case 6
  before=$(md5sum "$work/early/checkpoints"/ckpt-*)
  "$train" "${job[@]}" --output-dir "$work/early" --resume auto --status-file "$work/s7" >"$work/out" 2>"$work/err" &
  pid=$!
  for _ in $(seq 20000); do
    mask=$(sed -n 's/^SigCgt:[[:space:]]*//p' "/proc/$pid/status" 2>/dev/null)
    [ -n "$mask" ] && (( 0x$mask & 0x4000 )) && break
  done
  sleep "$delay"
  kill -TERM "$pid"
  wait_bounded "$pid"
  rc=$?
  [ "$rc" = "$BASIN_EXIT_PREEMPTED" ] && grep -q "stopped by a signal before the first step" "$work/out" \
    && [ "$before" = "$(md5sum "$work/early/checkpoints"/ckpt-*)" ] \
    && grep -q "^exit=75 step=2 checkpoint_step=2 lost=0" "$work/s7" || fail "SIGTERM $delay s after the handler: exit $rc"
done

# 7b. The grace period runs out while the preemption checkpoint is written
#     (the write is made to stall 4 s): 76 within --grace-seconds, one line,
#     and the status file says so; the earlier checkpoint is untouched.
check
rm -rf "$work/grace" && cp -r "$work/stale" "$work/grace" && rm -f "$work/grace/metrics.jsonl"
before=$(md5sum "$work/grace/checkpoints"/ckpt-*)
BASIN_TEST_SIGNAL=0:4 BASIN_TEST_CKPT_STALL=4 bounded "$train" "${job[@]}" --output-dir "$work/grace" --resume auto \
  --grace-seconds 1 --status-file "$work/s7b" >"$work/out" 2>"$work/err"
rc=$?
[ "$rc" = "$BASIN_EXIT_PREEMPTED_UNSAVED" ] && [ "$(wc -l <"$work/err")" = 1 ] \
  && grep -q "grace period (--grace-seconds 1) ran out before the checkpoint of step 5 was written: exit $rc; resuming starts from step 2 (.*ckpt-0000000002.h5): 3 step(s) lost" "$work/err" \
  && grep -q "^exit=$rc step=5 checkpoint_step=2 lost=3 checkpoint=.*ckpt-0000000002.h5$" "$work/s7b" \
  && [ "$before" = "$(md5sum "$work/grace/checkpoints"/ckpt-*)" ] || fail "grace period ran out: exit $rc"

# 8. Options that cannot be honoured: one line for the whole job, exit 2.
check
bounded "${mpi[@]}" -np 2 "$train" "${job[@]}" --supernode-size 5 --output-dir "$work/sn" >"$work/out" 2>"$work/err"
rc=$?
[ "$rc" = "$BASIN_EXIT_USAGE" ] && [ "$(grep -c "supernode-size 5 is larger than the 2 rank" "$work/err")" = 1 ] \
  && [ ! -e "$work/sn" ] || fail "--supernode-size 5 with 2 ranks: exit $rc"
check
before=$(md5sum "$work/stale/checkpoints"/ckpt-*)
bounded "$train" "${job[@]}" --output-dir "$work/stale" --resume auto --lr 0.1 --momentum 0.5 >"$work/out" 2>"$work/err"
rc=$?
[ "$rc" = "$BASIN_EXIT_USAGE" ] && [ "$(wc -l <"$work/err")" = 1 ] \
  && grep -q "other optimizer options: --lr 0.1 (was 0.02), --momentum 0.5 (was 0.9)" "$work/err" \
  && [ "$before" = "$(md5sum "$work/stale/checkpoints"/ckpt-*)" ] || fail "resume with another --lr: exit $rc"
check
bounded "$train" "${job[@]}" --epochs 2 --max-steps 4 --output-dir "$work/stale" --resume auto >"$work/out" 2>"$work/err"
rc=$?
[ "$rc" = 0 ] && grep -q "the run now ends at step 4, not 2: the cosine schedule is stretched" "$work/out" \
  && grep -q "resumed from .* at step 2" "$work/out" || fail "resume with a longer run: exit $rc"
# ... and run again, it says that --max-steps, not --epochs, ended it.
check
bounded "$train" "${job[@]}" --epochs 2 --max-steps 4 --output-dir "$work/stale" --resume auto >"$work/out" 2>"$work/err"
rc=$?
[ "$rc" = 0 ] && grep -q "nothing left to train (raise --max-steps to go on" "$work/out" \
  || fail "a finished --max-steps run: exit $rc"

echo "faults: $((checks - failures)) passed, $failures failed"
[ "$failures" = 0 ]
