#!/usr/bin/env bash
# --wire bf16|fp16 end to end: a few steps of mlp on 2 and 3 ranks (two
# supernodes, uneven ones, the ring, without overlap and sharded update)
# stay within a tolerance of the fp32 run, with replicas checked bit for bit
# every step; a resume with another --wire and bad values are refused with
# one line and exit 2.
#   wire.sh BASIN_TRAIN DATA
# Tolerance: at every logged step (20 steps, batch 60) the training loss of
# the 16-bit run is within 0.5 % + 0.005 of the fp32 run's (measured: at
# most 0.003 with bf16, 0.0003 with fp16), and the two are not identical
# (the 16-bit path ran).
set -u
train=$1 data=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failures=0 checks=0
fail() { echo "FAILED: $*" >&2; failures=$((failures + 1)); }
mpi=(mpirun --oversubscribe --bind-to none --allow-run-as-root --mca mpi_yield_when_idle 1)
small=(--data "$data" --model mlp --limit-train 1200 --batch 60 --epochs 1 --eval-every 0 --log-every 1
       --check-every 1)
losses() { grep '"event":"step"' "$1/metrics.jsonl" | sed 's/.*"step":\([0-9]*\),"loss":\([^,]*\),.*/\1 \2/'; }

run() { # NAME NP ARGS...
  local name=$1 np=$2; shift 2
  "${mpi[@]}" -np "$np" "$train" "${small[@]}" "$@" --output-dir "$work/$name" >"$work/$name.out" 2>"$work/$name.err"
}

compare() { # LABEL NP ARGS...
  local label=$1 np=$2; shift 2
  run "$label-fp32" "$np" "$@" --wire fp32 || { fail "$label fp32 run"; sed 's/^/    /' "$work/$label-fp32.err" >&2; return; }
  losses "$work/$label-fp32" >"$work/$label-fp32.loss"
  for w in bf16 fp16; do
    checks=$((checks + 1))
    if ! run "$label-$w" "$np" "$@" --wire "$w"; then
      fail "$label --wire $w run failed"; sed 's/^/    /' "$work/$label-$w.err" >&2; continue
    fi
    losses "$work/$label-$w" >"$work/$label-$w.loss"
    local verdict
    verdict=$(paste "$work/$label-fp32.loss" "$work/$label-$w.loss" | awk '
      { n++; d = $4 - $2; if (d < 0) d = -d; if (d > worst) worst = d
        if ($1 != $3 || d > 0.005 * $2 + 0.005) bad++; if ($2 != $4) differ++ }
      END { printf "%d %d %d %g", n, bad + 0, differ + 0, worst }')
    local n bad differ worst
    read -r n bad differ worst <<<"$verdict"
    echo "$label --wire $w: $n steps, largest loss difference $worst"
    [ "$n" = 20 ] || fail "$label --wire $w: $n steps logged, expected 20"
    [ "$bad" = 0 ] || fail "$label --wire $w: $bad steps beyond the tolerance (largest difference $worst)"
    [ "$differ" -gt 0 ] || fail "$label --wire $w: losses identical to fp32: was the wire used?"
  done
}

compare hier-2x1 2 --supernode-size 1
compare hier-uneven 3 --supernode-size 2
compare ring 2 --allreduce ring
compare rhd-plain 3 --allreduce rhd --no-overlap --no-sharded-update

# A resume with another --wire changes the trajectory: refused, naming both.
checks=$((checks + 1))
"${mpi[@]}" -np 2 "$train" "${small[@]}" --supernode-size 1 --wire bf16 --epochs 2 --resume auto \
  --output-dir "$work/hier-2x1-fp32" >"$work/out" 2>"$work/err"
rc=$?
if [ "$rc" != 2 ] || ! grep -q -- "--wire bf16 (was fp32)" "$work/err"; then
  fail "resume with another --wire: exit $rc"; sed 's/^/    /' "$work/err" >&2
fi

# Bad values: one line, exit 2.
expect_usage() { # PATTERN ARGS...
  local pattern=$1; shift
  checks=$((checks + 1))
  "$train" "${small[@]}" "$@" --output-dir "$work/bad" >"$work/out" 2>"$work/err"
  local rc=$?
  if [ "$rc" != 2 ] || ! grep -q -- "$pattern" "$work/err" || [ "$(wc -l <"$work/err")" != 1 ]; then
    fail "$* : exit $rc"; sed 's/^/    /' "$work/err" >&2
  fi
}
expect_usage "expected fp32, bf16 or fp16" --wire fp8
expect_usage "mpi sends fp32 only" --wire bf16 --allreduce mpi
expect_usage "nccl sends fp32 only" --wire fp16 --allreduce nccl --device cuda

echo "wire: $checks checks, $failures failed"
[ "$failures" = 0 ]
