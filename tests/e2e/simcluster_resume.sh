#!/usr/bin/env bash
# A host of the cluster is lost mid-run: on the simulated cluster (2 hosts x
# 2 ranks, launch/simcluster.sh) the launcher trains from a hostfile; after
# the first checkpoint every process of host 2 is killed and the hostfile
# loses that host, as a scheduler would; the launcher must restart on the
# remaining host from the last checkpoint and finish the run.
#   simcluster_resume.sh REPO BUILD DATA
# Exit 77 (skipped) where network namespaces cannot be created.
set -u
repo=$1 build=$2 data=$3
[ "$(id -u)" = 0 ] || { echo "SKIPPED: the simulated cluster needs root"; exit 77; }
if [ "${BASIN_SIM_HOSTFILE:-}" = "" ]; then
  exec "$repo/launch/simcluster.sh" --hosts 2 --ranks-per-host 2 --rate none --exec -- bash "$0" "$@"
fi

# Inside the first simulated host.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp "$BASIN_SIM_HOSTFILE" "$work/hosts"
out=$work/run
BASIN_BUILD=$build "$repo/launch/train.sh" --hostfile "$work/hosts" -- --data "$data" --model mlp \
  --limit-train 4800 --batch 48 --epochs 10 --eval-every 0 --log-every 100 --checkpoint-steps 20 \
  --collective-timeout 20 --output-dir "$out" >"$work/out" 2>"$work/err" &
launcher=$!
for _ in $(seq 600); do ls "$out/checkpoints"/ckpt-*.h5 >/dev/null 2>&1 && break; sleep 0.1; done
# Host 2 is gone: first from the hostfile, then its processes.
sed -i '/^'"${BASIN_SIM_SUBNET}"'\.2 /d' "$work/hosts"
pids=$(ip netns pids "${BASIN_SIM_PREFIX}h2")
[ -n "$pids" ] && kill -9 $pids
wait "$launcher"
rc=$?
failures=0
fail() { echo "FAILED: $*" >&2; sed 's/^/    /' "$work/err" "$work/out" | tail -40 >&2; failures=$((failures + 1)); }
[ "$rc" = 0 ] || fail "the launcher exited $rc"
[ -n "$pids" ] || fail "found no process on host 2 to kill"
grep -q "restart 1/" "$work/err" || fail "the launcher did not restart"
grep -q "resumed from .*ckpt-" "$work/out" || fail "the restart did not resume from a checkpoint"
grep -q "^basin: 2 rank(s)" "$work/out" || fail "the restart did not run on the 2 ranks of the remaining host"
[ -f "$out/checkpoints/ckpt-0000001000.h5" ] || fail "the run did not reach its last step (1000)"
echo "simcluster_resume: $((5 - failures)) passed, $failures failed"
[ "$failures" = 0 ]
