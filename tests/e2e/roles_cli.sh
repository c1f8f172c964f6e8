#!/usr/bin/env bash
# basin-train --roles FILE and --reader-cost N from the command line, on one
# machine: every refusal is one line and exit 2 and writes nothing (a
# hostfile that cannot be read, a malformed line, a role word other than
# reader or trainer, every rank on a reader host, a reader host that runs no
# rank, --readers disagreeing with the file, a cost out of bounds). A file
# with no reader host trains on every rank; --check=RANKS reads the file and
# names its reader hosts. Which ranks read across hosts is
# tests/e2e/roles_simcluster.sh.
#
#   roles_cli.sh BASIN_TRAIN DATA
set -u
train=$1 data=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failures=0
fail() {
  echo "FAILED: $*" >&2
  [ -s "$work/err" ] && sed 's/^/    err: /' "$work/err" | tail -20 >&2
  failures=$((failures + 1))
}
mpi=(timeout -k 5 120 mpirun --oversubscribe --bind-to none --allow-run-as-root)
job=(--data "$data" --model mlp --limit-train 720 --batch 36 --max-steps 4 --eval-every 0 --log-every 2)

host=$(hostname)
printf '%s slots=4   # basin:reader\n' "$host" > "$work/all-readers"
printf 'localhost slots=4 # basin:writer\n' > "$work/bad-role"
printf 'localhost slots=4\nlocalhost slot 4\n' > "$work/malformed"
printf 'localhost slots=4\n10.255.255.254 slots=2 # basin:reader\n' > "$work/absent"
printf '# no roles\nlocalhost slots=4 # basin:trainer\n' > "$work/no-reader"

# One error line, exit 2, the words wanted, no output folder.
refuse() {
  local want=$1; shift
  rm -rf "$work/out"
  "$@" > "$work/stdout" 2> "$work/err"
  local rc=$? n
  n=$(grep -c "error" "$work/err")
  [ "$rc" = 2 ] && [ "$n" = 1 ] && grep -q -- "$want" "$work/err" ||
    fail "refusal '$want': exit $rc, $n error line(s)"
  [ ! -e "$work/out" ] || fail "refusal '$want': $work/out was written"
}
refuse "cannot read it" "${mpi[@]}" -np 2 "$train" "${job[@]}" --roles "$work/missing" --output-dir "$work/out"
refuse "line 2: 'slot' is not a host's field" "${mpi[@]}" -np 2 "$train" "${job[@]}" --roles "$work/malformed" \
  --output-dir "$work/out"
refuse "role 'writer'" "${mpi[@]}" -np 2 "$train" "${job[@]}" --roles "$work/bad-role" --output-dir "$work/out"
refuse "a hostfile role that names no trainer" "${mpi[@]}" -np 3 "$train" "${job[@]}" --roles "$work/all-readers" \
  --output-dir "$work/out"
refuse "reader host 10.255.255.254 runs no rank of this job" "${mpi[@]}" -np 2 "$train" "${job[@]}" \
  --roles "$work/absent" --output-dir "$work/out"
refuse "puts 0 rank(s) on reader hosts but --readers says 1" "${mpi[@]}" -np 3 "$train" "${job[@]}" \
  --roles "$work/no-reader" --readers 1 --output-dir "$work/out"
refuse "expected an Open MPI hostfile" "$train" "${job[@]}" --roles "" --output-dir "$work/out"
for cost in -1 1001 x; do
  refuse "--reader-cost '$cost': expected an integer in \[0, 1000\]" "$train" "${job[@]}" --reader-cost "$cost" \
    --output-dir "$work/out"
done

# No reader host: every rank trains (and the log says so).
"${mpi[@]}" -np 2 "$train" "${job[@]}" --roles "$work/no-reader" --reader-cost 2 --output-dir "$work/plain" \
  > "$work/stdout" 2> "$work/err" || fail "a file without reader hosts: the run failed"
grep -q "no host is marked '# basin:reader': every rank trains" "$work/stdout" || fail "no line saying every rank trains"
grep -q "step      4/4" "$work/stdout" || fail "a file without reader hosts: no 4 steps"

# --check=RANKS: the file is read and checked, its reader hosts named; with
# --readers the ranks that would train are checked (36 divides by 2, not 3).
"$train" "${job[@]}" --check=3 --roles "$work/all-readers" --readers 1 > "$work/stdout" 2> "$work/err" ||
  fail "--check=3 --roles --readers 1 refused"
grep -q "the ranks on $host (line 1) will read" "$work/stdout" || fail "--check: no line naming the reader host"
grep -q "configuration OK: 2 rank(s)" "$work/stdout" || fail "--check=3 --readers 1 did not check 2 trainers"
refuse "role 'writer'" "$train" "${job[@]}" --check=3 --roles "$work/bad-role"

[ "$failures" = 0 ] || { echo "roles_cli: $failures failure(s)" >&2; exit 1; }
echo "roles_cli: all checks passed"
