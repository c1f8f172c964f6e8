#!/usr/bin/env bash
# The faults table: every fault basin is known to meet, tried for real, with
# its outcome (exit code, the lines printed, what is on disk after), written
# to bench/results/faults.md. Root (tmpfs mounts, the one-node Slurm).
#
#   bench/faults/run.sh [BUILD_DIR]      (default build/)
#
# Sections: output folders and checkpoints (basin-train), the launcher,
# malformed data files and checkpoints (bench/faults/data_inputs.sh),
# Slurm (tests/slurm/slurm.sh), and the fuzzers' last long run
# (bench/results/fuzz.md, from bench/fuzz/run.sh).
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=$(cd "${1:-$root/build}" && pwd)
train=$build/launch/basin-train
data=$build/test-data/fashion-mnist.h5
out=$root/bench/results/faults.md
[ -x "$train" ] || { echo "faults: no $train (build first)" >&2; exit 2; }
[ -f "$data" ] || "$build/launch/basin-data" import fashion-mnist --output "$data" >/dev/null
[ "$(id -u)" = 0 ] || { echo "faults: needs root (tmpfs mounts, Slurm)" >&2; exit 2; }
work=$(mktemp -d)
mounts=()
cleanup() {
  pkill -9 -f "$work" 2>/dev/null
  for m in "${mounts[@]}"; do umount "$m" 2>/dev/null; done
  rm -rf "$work"
}
trap cleanup EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_mpi_yield_when_idle=1 BASIN_BUILD=$build
mpi=(mpirun --oversubscribe --bind-to none --allow-run-as-root)
job=(--data "$data" --model mlp --limit-train 1440 --limit-test 200 --batch 36 --epochs 1 --log-every 10
     --eval-every 0)
long=(--data "$data" --model mlp --limit-train 1440 --batch 36 --epochs 1000 --eval-every 0 --log-every 1000
      --checkpoint-seconds 0)
disk() { mkdir -p "$1" && mount -t tmpfs -o "size=$2m" tmpfs "$1" && mounts+=("$1"); }
waitfor() { for _ in $(seq 600); do eval "$1" && return 0; sleep 0.05; done; return 1; }

# The lines that say what happened: errors, and the outcome lines of the
# run (exit codes, resumes, stops, removals, notes); paths shortened.
said() {
  cat "$work/out" "$work/err" 2>/dev/null |
    grep -E '(error|warning):|exit [0-9]+|resumed from|removed|stopped|preempted|note:|^train: (restart|done|giving|stopped|preempted|the )' |
    grep -v -E '^(Primary job|mpirun)' | head -4 | sed "s#$work/##g; s/|/\\\\|/g" | tr '\n' ' ' | sed 's/ *$//'
}
ckpts() { # what is in a checkpoint folder
  local d=$1
  [ -d "$d" ] || { echo "no folder"; return; }
  local l
  l=$(cd "$d" && ls -A | grep -v '^\.basin\.lock$' | tr '\n' ' ' | sed 's/ *$//')
  echo "${l:-no checkpoint}"
}
rows=()
row() { rows+=("| $1 | $2 | \`$(said)\` | $3 |"); echo "faults: $1: exit $2" >&2; }

# ---- output folders and checkpoints ------------------------------------------
disk "$work/full1" 10
"$train" "${job[@]}" --output-dir "$work/full1/o" >"$work/out" 2>"$work/err"
row "disk full at the final checkpoint (10 MiB tmpfs, 15 MB checkpoint)" $? "$(ckpts "$work/full1/o/checkpoints")"

disk "$work/full2" 20
BASIN_TEST_SIGNAL=1:7 "${mpi[@]}" -x BASIN_TEST_SIGNAL -np 2 "$train" "${job[@]}" --checkpoint-steps 5 \
  --output-dir "$work/full2/o" >"$work/out" 2>"$work/err"
row "disk full at the preemption checkpoint (room for one checkpoint; SIGTERM in step 8, 2 ranks)" $? \
  "$(ckpts "$work/full2/o/checkpoints")"

disk "$work/full3" 10
"$train" "${job[@]}" --checkpoint-steps 15 --output-dir "$work/full3/o" >"$work/out" 2>"$work/err"
row "disk full, --checkpoint-failure continue (checkpoints at 15, 30, final 40)" $? "$(ckpts "$work/full3/o/checkpoints")"
"$train" "${job[@]}" --checkpoint-steps 15 --checkpoint-failure stop --output-dir "$work/full3/o2" \
  >"$work/out" 2>"$work/err"
row "disk full, --checkpoint-failure stop" $? "$(ckpts "$work/full3/o2/checkpoints")"

"$train" "${long[@]}" --max-steps 3 --output-dir "$work/ro" >/dev/null 2>&1
before=$(md5sum "$work/ro/checkpoints"/ckpt-*)
"$train" "${long[@]}" --output-dir "$work/ro" --resume auto >"$work/out" 2>"$work/err" &
pid=$!
waitfor 'grep -q "resumed from" "$work/out"'
mount -t tmpfs -o ro,size=1m tmpfs "$work/ro/checkpoints" && mounts+=("$work/ro/checkpoints")
kill -TERM "$pid"
wait "$pid"
rc=$?
umount "$work/ro/checkpoints"
same=$([ "$before" = "$(md5sum "$work/ro/checkpoints"/ckpt-*)" ] && echo "unchanged" || echo "CHANGED")
row "checkpoint folder turns read-only, then SIGTERM" $rc "$(ckpts "$work/ro/checkpoints") ($same)"

mkdir -p "$work/rofs" && mount -t tmpfs -o ro,size=1m tmpfs "$work/rofs" && mounts+=("$work/rofs")
"$train" "${job[@]}" --output-dir "$work/rofs/o" >"$work/out" 2>"$work/err"
row "output folder on a read-only file system" $? "nothing written"

"${mpi[@]}" -np 2 "$train" "${long[@]}" --output-dir "$work/shared" >"$work/first.out" 2>&1 &
first=$!
waitfor '[ -s "$work/shared/checkpoints/.basin.lock" ]'
sleep 1
"${mpi[@]}" -np 2 "$train" "${long[@]}" --output-dir "$work/shared" --resume auto >"$work/out" 2>"$work/err"
row "second run, same --output-dir, --resume auto, while the first runs" $? "the first run's files untouched"
"$train" "${long[@]}" --output-dir "$work/other" --checkpoint-dir "$work/shared/checkpoints" >"$work/out" 2>"$work/err"
row "second run, another --output-dir, same --checkpoint-dir" $? "the first run's files untouched"
"$train" "${long[@]}" --output-dir "$work/other2" --metrics "$work/shared/metrics.jsonl" >"$work/out" 2>"$work/err"
row "second run, another --output-dir, same --metrics" $? "the first run's metrics untouched"
kill -USR1 "$first"
wait "$first"
rc=$?
cp "$work/first.out" "$work/out"; : >"$work/err"
valid=$(/usr/bin/python3 -c 'import json,sys; [json.loads(l) for l in open(sys.argv[1])]; print("every line JSON")' \
  "$work/shared/metrics.jsonl" 2>&1 | tail -1)
row "... the first run, stopped by SIGUSR1 to its mpirun" $rc "$(ckpts "$work/shared/checkpoints"); metrics.jsonl: $valid"

big=(--data "$data" --model "flatten,fc:8192,relu,fc:8192,relu,fc:10" --limit-train 1440 --batch 36 --epochs 1000
     --eval-every 0 --log-every 1000 --checkpoint-steps 2 --keep-checkpoints 1)
"$train" "${big[@]}" --output-dir "$work/killed" >/dev/null 2>&1 &
pid=$!
waitfor 'ls "$work/killed/checkpoints"/.ckpt-*.tmp.* >/dev/null 2>&1'
kill -9 "$pid"
wait "$pid" 2>/dev/null
left=$(ckpts "$work/killed/checkpoints")
"$train" "${big[@]}" --max-steps 1 --output-dir "$work/killed" --resume auto >"$work/out" 2>"$work/err"
row "SIGKILL while a checkpoint is written (0.6 GB), then the next start (left: $left)" $? \
  "$(ckpts "$work/killed/checkpoints")"
rm -rf "$work/killed"

"$train" "${job[@]}" --max-steps 2 --output-dir "$work/early" >/dev/null 2>&1
before=$(md5sum "$work/early/checkpoints"/ckpt-*)
"$train" "${job[@]}" --output-dir "$work/early" --resume auto >"$work/out" 2>"$work/err" &
pid=$!
waitfor 'mask=$(sed -n "s/^SigCgt:[[:space:]]*//p" /proc/$pid/status 2>/dev/null); [ -n "$mask" ] && (( 0x$mask & 0x4000 ))'
kill -TERM "$pid"
wait "$pid"
rc=$?
same=$([ "$before" = "$(md5sum "$work/early/checkpoints"/ckpt-*)" ] && echo "unchanged" || echo "CHANGED")
row "SIGTERM during MPI start-up (as soon as the handler is in place)" $rc "$(ckpts "$work/early/checkpoints") ($same)"

BASIN_TEST_SIGNAL=0:4 BASIN_TEST_CKPT_STALL=4 "$train" "${job[@]}" --output-dir "$work/early" --resume auto \
  --grace-seconds 1 >"$work/out" 2>"$work/err"
row "grace period (1 s) runs out during the preemption checkpoint (write stalled 4 s)" $? \
  "$(ckpts "$work/early/checkpoints")"

"${mpi[@]}" -np 2 "$train" "${job[@]}" --supernode-size 5 --output-dir "$work/sn" >"$work/out" 2>"$work/err"
row "--supernode-size 5 with 2 ranks" $? "nothing written"
"$train" "${job[@]}" --output-dir "$work/early" --resume auto --lr 0.1 --nesterov >"$work/out" 2>"$work/err"
row "resume with another --lr and --nesterov" $? "$(ckpts "$work/early/checkpoints")"
"$train" "${job[@]}" --epochs 2 --output-dir "$work/early" --resume auto >"$work/out" 2>"$work/err"
row "resume with a longer --epochs (allowed)" $? "$(ckpts "$work/early/checkpoints")"

# ---- earlier cases: the launcher, killed ranks, corruption, another world ---
lj=(--data "$data" --model mlp --limit-train 3600 --batch 36 --epochs 10 --eval-every 0 --log-every 100
    --checkpoint-steps 10)
"$root/launch/train.sh" --np 2 -- "${lj[@]}" --output-dir "$work/l1" >"$work/out" 2>"$work/err" &
pid=$!
waitfor 'ls "$work/l1/checkpoints"/ckpt-* >/dev/null 2>&1'
kill -TERM "$pid"
wait "$pid"
row "SIGTERM to launch/train.sh" $? "$(ckpts "$work/l1/checkpoints")"

"$root/launch/train.sh" --np 3 -- "${lj[@]}" --output-dir "$work/l2" >"$work/out" 2>"$work/err" &
pid=$!
waitfor 'ls "$work/l2/checkpoints"/ckpt-* >/dev/null 2>&1'
kill -9 "$(pgrep -f "basin-train.*$work/l2" | tail -1)"
wait "$pid"
row "SIGKILL to one of 3 ranks under launch/train.sh" $? "$(ckpts "$work/l2/checkpoints")"

cp -r "$work/l1" "$work/l3"
newest=$(ls "$work/l3/checkpoints"/ckpt-*.h5 | tail -1)
truncate -s 1000 "$newest"
"$train" "${lj[@]}" --max-steps 20 --output-dir "$work/l3" --resume auto >"$work/out" 2>"$work/err"
row "newest checkpoint truncated to 1000 bytes, --resume auto" $? "$(ckpts "$work/l3/checkpoints")"

"${mpi[@]}" -np 3 "$train" "${lj[@]}" --output-dir "$work/l1" --resume auto --max-steps 60 >"$work/out" 2>"$work/err"
row "resume a 2-rank checkpoint on 3 ranks" $? "$(ckpts "$work/l1/checkpoints")"

disk "$work/lfull" 20
"$root/launch/train.sh" --np 2 -- "${lj[@]}" --checkpoint-steps 0 --checkpoint-seconds 0 --max-steps 30 \
  --output-dir "$work/lfull/o" >/dev/null 2>&1
dd if=/dev/zero of="$work/lfull/ballast" bs=1M count=4 status=none 2>/dev/null
"$root/launch/train.sh" --np 2 -- "${lj[@]}" --checkpoint-steps 0 --checkpoint-seconds 0 --max-steps 60 \
  --output-dir "$work/lfull/o" >"$work/out" 2>"$work/err"
row "launch/train.sh, final checkpoint on a full disk (one checkpoint kept)" $? "$(ckpts "$work/lfull/o/checkpoints")"

{
  echo "# Faults"
  echo
  echo "Every fault tried for real, with its outcome: the exit code (\`src/core/exit_codes.h\`: 0 done, 1 failed,"
  echo "2 refused, 74 checkpoint failed, 75 preempted and saved, 76 preempted with steps lost), the lines the"
  echo "job printed that say what happened, and what is on disk afterwards."
  echo
  echo "- command: \`bench/faults/run.sh ${1:-build}\`"
  echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "- machine: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores, $(uname -sr)"
  echo
  echo "## Output folders, checkpoints and signals"
  echo
  echo "| fault | exit | lines printed | on disk after |"
  echo "| --- | --- | --- | --- |"
  printf '%s\n' "${rows[@]}"
  echo
  echo "## Malformed data files and checkpoints (\`bench/faults/data_inputs.sh\`)"
  echo
  bash "$root/bench/faults/data_inputs.sh" "$build" 2>&1
  echo
  echo "## Slurm (\`tests/slurm/slurm.sh\`, a one-node Slurm from Debian's slurm-wlm)"
  echo
  echo '```'
  bash "$root/tests/slurm/slurm.sh" "$build" "$data" "$root" 2>&1 | grep -E '^(slurm|[a-z].*: (job|stops))' | sed "s#$work/##g"
  echo '```'
  echo
  echo "## Fuzzing"
  echo
  echo "From \`bench/results/fuzz.md\` (its own command, date and machine there):"
  echo
  sed -n '/^|/p' "$root/bench/results/fuzz.md"
} >"$out.tmp" && mv "$out.tmp" "$out"
echo "faults: wrote $out" >&2
