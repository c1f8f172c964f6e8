#!/usr/bin/env bash
# Multi-rank behaviour seen from outside: the replica check catches a rank
# whose parameters were corrupted on purpose; ranks started with different
# options refuse to train; the launcher rejects bad hostfiles and batches with
# one line, and runs a small job end to end on 2 ranks.
set -u
build=$1 data=$2 repo=$3
train=$build/launch/basin-train
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failures=0 checks=0
fail() { echo "FAILED: $*" >&2; failures=$((failures + 1)); }
mpi=(mpirun --oversubscribe --bind-to none --allow-run-as-root)
small=(--data "$data" --model mlp --limit-train 600 --batch 60 --epochs 1 --eval-every 0 --log-every 5)

# 1. Replica consistency: rank 2 corrupts one parameter at the end of step 5
#    (index 4), the step the check every 5 steps runs after; it must stop the
#    job and name rank 2. (An earlier corruption would not last: with the
#    sharded update the next step copies that parameter from its owner.)
checks=$((checks + 1))
BASIN_TEST_CORRUPT=2:4 "${mpi[@]}" -np 3 "$train" "${small[@]}" --check-every 5 \
  --output-dir "$work/o1" >"$work/out" 2>"$work/err"
rc=$?
if [ "$rc" = 0 ] || ! grep -q "replicas diverged at step 5: the parameters of rank(s) 2 differ" "$work/err"; then
  fail "corrupted replica: exit $rc"; sed 's/^/    /' "$work/err" >&2
fi
# ... and without the corruption the same job passes.
checks=$((checks + 1))
"${mpi[@]}" -np 3 "$train" "${small[@]}" --check-every 5 --output-dir "$work/o2" >"$work/out" 2>"$work/err" \
  || { fail "clean 3-rank job failed"; sed 's/^/    /' "$work/err" >&2; }

# 1b. Sharding: in every step the 3 ranks together read each sample of the
#     global batch exactly once, the same samples one rank reads alone.
checks=$((checks + 1))
pairs() { cat "$1".rank* | awk '{ for (i = 2; i <= NF; i++) print $1, $i }' | sort -n -k1,1 -k2,2; }
BASIN_TEST_SAMPLES=$work/s1 "$train" "${small[@]}" --output-dir "$work/o6" >"$work/out" 2>"$work/err"
BASIN_TEST_SAMPLES=$work/s3 "${mpi[@]}" -np 3 "$train" "${small[@]}" --output-dir "$work/o7" >"$work/out" 2>"$work/err"
pairs "$work/s1" >"$work/p1"
pairs "$work/s3" >"$work/p3"
if [ "$(wc -l <"$work/p1")" != 600 ] || ! cmp -s "$work/p1" "$work/p3" || [ -n "$(uniq -d "$work/p3")" ]; then
  fail "sharding: 3 ranks did not read each sample of each global batch once"
fi

# 2. Ranks started with different options (MPMD): one line, exit 2.
checks=$((checks + 1))
"${mpi[@]}" -np 1 "$train" "${small[@]}" --lr 0.1 --output-dir "$work/o3" : \
  -np 1 "$train" "${small[@]}" --lr 0.2 --output-dir "$work/o3" >"$work/out" 2>"$work/err"
rc=$?
if [ "$rc" != 2 ] || ! grep -q "different options: rank 1" "$work/err" || [ -e "$work/o3" ]; then
  fail "mismatched options: exit $rc"; sed 's/^/    /' "$work/err" >&2
fi

# 3. Launcher: bad input gets one line and exit 2, nothing written.
launch=("$repo/launch/train.sh")
export BASIN_BUILD=$build
expect_usage() { # NAME PATTERN ARGS...
  local name=$1 pattern=$2; shift 2
  checks=$((checks + 1))
  "${launch[@]}" "$@" >"$work/out" 2>"$work/err"
  local rc=$?
  if [ "$rc" != 2 ] || [ "$(wc -l <"$work/err")" != 1 ] || ! grep -q -- "$pattern" "$work/err" || [ -e "$work/o4" ]; then
    fail "launcher $name: exit $rc"; sed 's/^/    /' "$work/err" >&2
  fi
}
: >"$work/empty-hosts"
expect_usage "missing hostfile" "does not exist" --hostfile "$work/nowhere" -- "${small[@]}" --output-dir "$work/o4"
expect_usage "empty hostfile" "names no hosts" --hostfile "$work/empty-hosts" -- "${small[@]}" --output-dir "$work/o4"
expect_usage "bad --np" "--np 'x'" --np x -- "${small[@]}" --output-dir "$work/o4"
expect_usage "indivisible batch" "not divisible by the 2 ranks" --np 2 -- "${small[@]}" --batch 61 --output-dir "$work/o4"
expect_usage "unknown launcher flag" "--frob" --frob
expect_usage "bad training flag" "--frob" --np 2 -- "${small[@]}" --frob --output-dir "$work/o4"

# 4. Launcher end to end: 2 ranks train and evaluate, metrics are written.
checks=$((checks + 1))
"${launch[@]}" --np 2 -- "${small[@]}" --eval-every 1 --limit-test 500 --output-dir "$work/o5" \
  >"$work/out" 2>"$work/err"
rc=$?
if [ "$rc" != 0 ] || ! grep -q '"event":"eval"' "$work/o5/metrics.jsonl" 2>/dev/null \
   || ! grep -q "2 rank(s)" "$work/out"; then
  fail "launcher run: exit $rc"; sed 's/^/    /' "$work/err" "$work/out" >&2
fi

echo "dataparallel: $((checks - failures)) passed, $failures failed"
[ "$failures" = 0 ]
