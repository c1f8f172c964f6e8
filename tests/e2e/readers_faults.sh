#!/usr/bin/env bash
# Faults in the data tier (basin-train --readers): a reader that stalls
# (BASIN_TEST_READER=stall:STEP) stops the job within --collective-timeout
# with a line naming it; a reader that dies (die:STEP) ends the job, mpirun
# naming its rank. In both cases --resume auto completes the run with the
# final parameters and momentum of an uninterrupted run (h5diff on the final
# checkpoints). Also: the refusals of basin-train --readers print one line
# and exit 2.
#
#   readers_faults.sh BUILD_DIR DATA
set -u
build=$1 data=$2
train=$build/launch/basin-train
command -v h5diff > /dev/null || { echo "readers_faults: h5diff not found: skipped"; exit 77; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failures=0
fail() {
  echo "FAILED: $*" >&2
  [ -s "$work/err" ] && sed 's/^/    err: /' "$work/err" | tail -20 >&2
  failures=$((failures + 1))
}
mpi=(mpirun --oversubscribe --bind-to none --allow-run-as-root -np 3)
# 40 steps of 36 on 2 trainers and 1 reader; a checkpoint every 10 steps.
job=(--data "$data" --model mlp --limit-train 1440 --batch 36 --epochs 1 --log-every 10 --eval-every 0
     --augment crop:2,flip --readers 1 --checkpoint-steps 10 --collective-timeout 4)
final=ckpt-0000000040.h5

timeout -k 5 200 "${mpi[@]}" "$train" "${job[@]}" --output-dir "$work/ref" > "$work/out" 2> "$work/err" ||
  fail "the uninterrupted run failed"

for kind in stall die; do
  out=$work/$kind
  start=$SECONDS
  timeout -k 5 200 "${mpi[@]}" -x BASIN_TEST_READER="$kind:25" "$train" "${job[@]}" --output-dir "$out" \
    > "$work/out" 2> "$work/err"
  rc=$? took=$((SECONDS - start))
  [ "$rc" != 0 ] && [ "$rc" != 124 ] || fail "$kind: the job returned $rc"
  [ "$took" -lt 60 ] || fail "$kind: the job took $took s to end (timeout 4 s)"
  if [ "$kind" = stall ]; then
    grep -q "no batch from reader rank 2 within 4 s" "$work/err" || fail "stall: no line naming reader rank 2"
  else
    grep -Eq "rank 2|,2\]" "$work/err" || fail "die: nothing names rank 2"
  fi
  [ -e "$out/checkpoints/ckpt-0000000020.h5" ] || fail "$kind: no checkpoint at step 20"
  timeout -k 5 200 "${mpi[@]}" "$train" "${job[@]}" --output-dir "$out" --resume auto > "$work/out" 2> "$work/err" ||
    fail "$kind: the resumed run failed"
  grep -q "resumed from .*ckpt-0000000020.h5" "$work/out" || fail "$kind: did not resume from step 20"
  for d in params momentum; do
    h5diff -q "$work/ref/checkpoints/$final" "$out/checkpoints/$final" "/$d" "/$d" ||
      fail "$kind: /$d after resuming differs from the uninterrupted run's"
  done
  echo "readers_faults: $kind at step 25: ended in $took s (exit $rc), resumed, same final state"
done

# Refusals: one line, exit 2.
refuse() {
  local want=$1; shift
  timeout -k 5 60 mpirun --oversubscribe --bind-to none --allow-run-as-root "$@" > "$work/out" 2> "$work/err"
  local rc=$? n
  n=$(grep -c "error" "$work/err")
  [ "$rc" = 2 ] && [ "$n" = 1 ] && grep -q -- "$want" "$work/err" ||
    fail "refusal '$want': exit $rc, $n error line(s)"
}
refuse "no trainer would be left" -np 2 "$train" --data "$data" --model mlp --batch 36 --readers 2 \
  --output-dir "$work/r"
refuse "synthetic data is generated" -np 3 "$train" --data synthetic:1x8x8:10:600 --model mlp --batch 36 \
  --readers 1 --output-dir "$work/r"
refuse "larger than the 20 samples" -np 3 "$train" --data "$data" --limit-train 20 --model mlp --batch 36 \
  --readers 1 --output-dir "$work/r"
refuse "expected an integer" -np 1 "$train" --data "$data" --model mlp --reader-prefetch 0 --output-dir "$work/r"

[ "$failures" = 0 ] || { echo "readers_faults: $failures failure(s)" >&2; exit 1; }
echo "readers_faults: all checks passed"
