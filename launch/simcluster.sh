#!/bin/bash
# A simulated cluster on one machine: H hosts as network namespaces joined by
# a bridge, each with its own hostname (UTS namespace) and a rate-limited
# link, and mpirun started inside the first host.
#
#   launch/simcluster.sh [--hosts H] [--ranks-per-host N] [--rate RATE]
#                        [--mpirun-args "ARGS"] -- PROGRAM [ARGS...]
#
#   --hosts H            simulated hosts (default 2)
#   --ranks-per-host N   MPI ranks on each host (default 2)
#   --rate RATE          per-host link rate in each direction, a tc rate such
#                        as 1gbit or 100mbit; "none" for no limit (default 1gbit)
#   --delay TIME         added one-way delay per link direction, a tc time such
#                        as 1ms (needs the kernel's netem; exit 77 without it)
#   --mpirun-args ARGS   extra mpirun arguments, split on spaces
#   --exec               run PROGRAM itself inside the first host instead of
#                        under mpirun: it starts its own mpirun (a launcher),
#                        with the cluster's settings in OMPI_MCA_* variables
#                        and a hostfile of the hosts in $BASIN_SIM_HOSTFILE
#
# Layout (all of it inside namespaces this script creates and deletes):
#
#   namespace <p>sw: bridge br0 with ports p1..pH
#   namespace <p>h<i>: eth0 = 10.77.0.<i>/24, veth peer of p<i>, hostname
#                      basin-sim-h<i> (set per process tree by unshare --uts)
#   tc tbf at RATE on eth0 (host -> switch) and on p<i> (switch -> host).
#   The kernel has no netem here: the links are rate-limited, not delayed.
#
# Sessions. The first host's ranks run in a session of their own (setsid),
# as the other hosts' ranks do under their orted. Linux schedules each
# session as one group (autogroup), so every simulated host is one group and
# the first host no longer shares one with whatever else the caller runs
# (ctest's other tests): with two busy loops beside it on 2 cores, the
# test's async part took 1.7-2.0 s that way and 0.2-0.4 s with setsid.
#
# What it cannot represent: the hosts share this machine's cores and memory
# (H x N ranks on 2 cores run oversubscribed: compute slows by the sharing,
# and a rank that waits yields its core), so compute speed, NUMA and memory
# bandwidth are not a real cluster's; the switch is one Linux bridge with
# no fabric contention of its own; there is no RDMA, only TCP; link delay
# needs netem (absent from some kernels, e.g. this project's CI machine: the
# links are then rate-limited only). Tested with up to 8 hosts (see
# tests/allreduce); --hosts accepts up to 200.
#
# Open MPI sees H distinct hosts: shared memory (vader) inside a host, TCP
# between hosts (btl_tcp_links 2 for full duplex over one link). The rsh
# agent launch/simcluster_rsh.sh enters the target host's namespaces. Only
# addresses inside the created namespaces are used; the root namespace gets
# no interface, address or route. Everything is removed on exit, on failure
# and on SIGINT/SIGTERM.
#
# Exit: the program's (mpirun's) exit code; 2 for a usage mistake; 77 when
# this machine cannot create network namespaces (not root, no CAP_NET_ADMIN,
# no ip/tc/unshare, no tbf).
set -u

die_usage() { echo "simcluster.sh: $*" >&2; exit 2; }
skip() { echo "simcluster.sh: $*" >&2; exit 77; }

hosts=2
per_host=2
rate=1gbit
delay=""
extra=""
exec_mode=0
while [ $# -gt 0 ]; do
    case "$1" in
    --hosts) [ $# -ge 2 ] || die_usage "--hosts needs a value"; hosts=$2; shift 2 ;;
    --ranks-per-host) [ $# -ge 2 ] || die_usage "--ranks-per-host needs a value"; per_host=$2; shift 2 ;;
    --rate) [ $# -ge 2 ] || die_usage "--rate needs a value"; rate=$2; shift 2 ;;
    --delay) [ $# -ge 2 ] || die_usage "--delay needs a value"; delay=$2; shift 2 ;;
    --mpirun-args) [ $# -ge 2 ] || die_usage "--mpirun-args needs a value"; extra=$2; shift 2 ;;
    --exec) exec_mode=1; shift ;;
    --help|-h) sed -n '2,/^set -u/p' "$0" | sed 's/^# \{0,1\}//;/^set -u/d'; exit 0 ;;
    --) shift; break ;;
    *) die_usage "unknown option '$1' (see --help)" ;;
    esac
done
[ $# -ge 1 ] || die_usage "no program given: simcluster.sh [options] -- PROGRAM [ARGS...]"
case "$hosts" in ''|*[!0-9]*) die_usage "--hosts must be a number from 1 to 200" ;; esac
case "$per_host" in ''|*[!0-9]*) die_usage "--ranks-per-host must be a positive number" ;; esac
[ "$hosts" -ge 1 ] && [ "$hosts" -le 200 ] || die_usage "--hosts must be a number from 1 to 200"
[ "$per_host" -ge 1 ] || die_usage "--ranks-per-host must be a positive number"

[ "$(id -u)" -eq 0 ] || skip "needs root to create network namespaces and set tc rate limits; run it as root (sudo)"
for tool in ip tc unshare setsid mpirun; do
    command -v "$tool" >/dev/null 2>&1 || skip "'$tool' not found"
done

here=$(cd "$(dirname "$0")" && pwd)
agent=$here/simcluster_rsh.sh
[ -x "$agent" ] || skip "rsh agent $agent missing or not executable"

prefix="bsim$$-"
subnet=10.77.0
created=()

simhosts=$(mktemp)
cleanup() {
    trap - EXIT INT TERM HUP
    rm -f "$simhosts"
    for ns in "${created[@]}"; do
        pids=$(ip netns pids "$ns" 2>/dev/null)
        [ -n "$pids" ] && kill $pids 2>/dev/null
    done
    sleep 0.2
    for ns in "${created[@]}"; do
        pids=$(ip netns pids "$ns" 2>/dev/null)
        [ -n "$pids" ] && kill -9 $pids 2>/dev/null
        ip netns del "$ns" 2>/dev/null
    done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

mkns() {
    ip netns add "$1" 2>/dev/null || skip "cannot create network namespace $1 (no CAP_SYS_ADMIN/CAP_NET_ADMIN?)"
    created+=("$1")
    ip -n "$1" link set lo up || skip "cannot configure namespace $1"
}

shape() { # namespace device
    if [ -n "$delay" ]; then
        # netem delays every packet; a tbf below it limits the rate.
        ip netns exec "$1" tc qdisc add dev "$2" root handle 1: netem delay "$delay" \
            || skip "tc netem delay '$delay' failed on $2 (bad time, or no sch_netem in this kernel)"
        [ "$rate" = none ] && return 0
        ip netns exec "$1" tc qdisc add dev "$2" parent 1:1 handle 10: tbf rate "$rate" burst 256kb latency 50ms \
            || skip "tc tbf at rate '$rate' failed on $2 (bad rate, or no sch_tbf in this kernel)"
        return 0
    fi
    [ "$rate" = none ] && return 0
    ip netns exec "$1" tc qdisc add dev "$2" root tbf rate "$rate" burst 256kb latency 50ms \
        || skip "tc tbf at rate '$rate' failed on $2 (bad rate, or no sch_tbf in this kernel)"
}

sw=${prefix}sw
mkns "$sw"
ip -n "$sw" link add br0 type bridge || skip "cannot create a bridge"
ip -n "$sw" link set br0 up
hostlist=""
for i in $(seq 1 "$hosts"); do
    h=${prefix}h$i
    mkns "$h"
    ip -n "$sw" link add "p$i" type veth peer name eth0 netns "$h" || skip "cannot create veth pair for host $i"
    ip -n "$sw" link set "p$i" master br0 up
    ip -n "$h" addr add "$subnet.$i/24" dev eth0
    ip -n "$h" link set eth0 up
    shape "$h" eth0
    shape "$sw" "p$i"
    hostlist="$hostlist${hostlist:+,}$subnet.$i:$per_host"
done

export BASIN_SIM_PREFIX=$prefix BASIN_SIM_SUBNET=$subnet
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
np=$((hosts * per_host))
echo "simcluster: $hosts hosts x $per_host ranks, links $rate, namespaces ${prefix}*" >&2
# Every simulated host believes its ranks have cores of their own, so Open
# MPI would spin without yielding. When the ranks outnumber this machine's
# cores, a spinning rank starves the one it waits for (all-reduces stalled
# for minutes that way): make idle ranks yield. OMPI_MCA_mpi_yield_when_idle,
# when set, decides instead (the tests set it: other tests share the cores).
# --mpirun-args naming it decides too (mpirun refuses a parameter given twice).
yield=${OMPI_MCA_mpi_yield_when_idle:-0}
[ -z "${OMPI_MCA_mpi_yield_when_idle:-}" ] && [ "$np" -gt "$(nproc)" ] && yield=1
yield_args=(--mca mpi_yield_when_idle "$yield")
case "$extra" in *mpi_yield_when_idle*) yield_args=() ;; esac
if [ "$exec_mode" = 1 ]; then
    for i in $(seq 1 "$hosts"); do echo "$subnet.$i slots=$per_host"; done >"$simhosts"
    export BASIN_SIM_HOSTFILE=$simhosts
    export OMPI_MCA_plm_rsh_agent=$agent OMPI_MCA_plm_rsh_no_tree_spawn=1
    export OMPI_MCA_btl=self,vader,tcp OMPI_MCA_btl_tcp_links=2 OMPI_MCA_mpi_yield_when_idle=$yield
    export OMPI_MCA_btl_tcp_if_include=$subnet.0/24 OMPI_MCA_oob_tcp_if_include=$subnet.0/24
    ip netns exec "${prefix}h1" unshare --uts sh -c 'hostname basin-sim-h1 && exec setsid -w "$@"' sh "$@"
    exit $?
fi
# shellcheck disable=SC2086
ip netns exec "${prefix}h1" unshare --uts sh -c 'hostname basin-sim-h1 && exec setsid -w "$@"' sh \
    mpirun --allow-run-as-root --oversubscribe --bind-to none -np "$np" --host "$hostlist" \
    --mca plm_rsh_agent "$agent" --mca plm_rsh_no_tree_spawn 1 \
    --mca btl self,vader,tcp --mca btl_tcp_links 2 "${yield_args[@]}" \
    --mca btl_tcp_if_include "$subnet.0/24" --mca oob_tcp_if_include "$subnet.0/24" \
    -x BASIN_SIM_PREFIX -x BASIN_SIM_SUBNET $extra "$@"
rc=$?
exit $rc
