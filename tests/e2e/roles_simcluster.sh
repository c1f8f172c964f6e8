#!/usr/bin/env bash
# basin-train --roles across hosts: on 2 simulated hosts x 2 ranks
# (launch/simcluster.sh --exec: network namespaces with hostnames
# basin-sim-h<i>, a hostfile that names them by address 10.77.0.<i>), mpirun
# and basin-train are given the same hostfile, one host marked
# '# basin:reader'. Two placements:
#   node: host 2 reads, ranks placed round robin (--map-by node): readers are
#         ranks 1 and 3, between the trainers 0 and 2;
#   slot: host 1 reads, ranks placed in order: readers are ranks 0 and 1, the
#         trainers come after them (rank 0 does not train).
# Each must train the same bits (final parameters and momentum, h5diff) and
# evaluate the same as 2 ranks reading in-process on one host; the readers
# also run --reader-cost 3, which must not change the data. Exit 77 (skip)
# where the simulated cluster cannot be made (not root, no namespaces).
#
#   roles_simcluster.sh SOURCE_DIR BUILD_DIR DATA
set -u
src=$1 build=$2 data=$3
train=$build/launch/basin-train
job=(--data "$data" --model mlp --limit-train 1440 --limit-test 200 --batch 36 --epochs 1 --max-steps 20
     --log-every 10 --eval-every 1 --augment crop:2,flip --checkpoint-seconds 0)
final=ckpt-0000000020.h5

# Inside the simulated cluster (host 1): one run per placement.
if [ "${4:-}" = --inner ]; then
  work=$5
  status=0
  for place in node:10.77.0.2 slot:10.77.0.1; do
    map=${place%%:*} reader_host=${place#*:}
    hosts=$work/hosts-$map
    while read -r host rest; do
      if [ "$host" = "$reader_host" ]; then echo "$host $rest   # basin:reader"; else echo "$host $rest"; fi
    done < "$BASIN_SIM_HOSTFILE" > "$hosts"
    timeout -k 5 240 mpirun --hostfile "$hosts" -np 4 --map-by "$map" --bind-to none \
      "$train" "${job[@]}" --roles "$hosts" --reader-cost 3 --output-dir "$work/$map" \
      > "$work/$map.out" 2> "$work/$map.err" || { echo "roles run '$map' failed" >&2; status=1; }
  done
  exit $status
fi

command -v h5diff > /dev/null || { echo "roles_simcluster: h5diff not found: skipped"; exit 77; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failures=0
fail() {
  echo "FAILED: $*" >&2
  failures=$((failures + 1))
}

timeout -k 5 200 mpirun --oversubscribe --bind-to none --allow-run-as-root -np 2 "$train" "${job[@]}" \
  --output-dir "$work/ref" > "$work/ref.out" 2> "$work/ref.err" ||
  { sed 's/^/    /' "$work/ref.err" | tail -20 >&2; fail "the in-process run failed"; }

"$src/launch/simcluster.sh" --exec --hosts 2 --ranks-per-host 2 --rate none -- \
  bash "$0" "$src" "$build" "$data" --inner "$work" 2> "$work/sim.err"
rc=$?
[ "$rc" = 77 ] && { cat "$work/sim.err" >&2; echo "roles_simcluster: skipped"; exit 77; }
[ "$rc" = 0 ] || { tail -30 "$work/sim.err" >&2; fail "the simulated cluster's runs returned $rc"; }

check() { # placement, the reader ranks the log must name
  local map=$1 ranks=$2 out=$work/$1.out
  [ -s "$out" ] || { fail "$map: no output"; [ -s "$work/$map.err" ] && tail -20 "$work/$map.err" >&2; return; }
  grep -q -- "--roles .*: rank(s) $ranks read (reader hosts" "$out" || fail "$map: no line naming reader ranks $ranks"
  grep -q "2 reader process(es), rank(s) $ranks, read" "$out" || fail "$map: the trainers did not say readers $ranks"
  grep -q '"readers":2' "$work/$map/metrics.jsonl" 2> /dev/null || fail "$map: the metrics have no readers"
  for d in params momentum; do
    h5diff -q "$work/ref/checkpoints/$final" "$work/$map/checkpoints/$final" "/$d" "/$d" ||
      fail "$map: /$d differs from the in-process run's"
  done
  local want got
  want=$(grep -o "test loss [0-9.]*  test acc [0-9.]*%" "$work/ref.out")
  got=$(grep -o "test loss [0-9.]*  test acc [0-9.]*%" "$out")
  [ -n "$want" ] && [ "$want" = "$got" ] || fail "$map: evaluation '$got', in-process '$want'"
  echo "roles_simcluster: $map: readers $ranks, same parameters, momentum and evaluation as in-process"
}
check node 1,3
check slot 0,1

[ "$failures" = 0 ] || { echo "roles_simcluster: $failures failure(s)" >&2; exit 1; }
echo "roles_simcluster: all checks passed"
