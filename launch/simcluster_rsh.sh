#!/bin/sh
# rsh agent for launch/simcluster.sh: Open MPI calls it as
#   simcluster_rsh.sh [options] HOST COMMAND...
# like ssh. HOST is 10.77.0.<i>; the command runs in namespace <prefix>h<i>
# with hostname basin-sim-h<i>, through a shell as ssh would run it.
while [ $# -gt 0 ]; do
    case "$1" in
    -*) shift ;;
    *) break ;;
    esac
done
[ $# -ge 2 ] || { echo "simcluster_rsh.sh: usage: simcluster_rsh.sh HOST COMMAND..." >&2; exit 255; }
host=$1
shift
: "${BASIN_SIM_PREFIX:?simcluster_rsh.sh: only for use by launch/simcluster.sh}"
i=${host##*.}
case "$host" in
"$BASIN_SIM_SUBNET".*) ;;
*) echo "simcluster_rsh.sh: host $host is not a simulated host ($BASIN_SIM_SUBNET.x)" >&2; exit 255 ;;
esac
exec ip netns exec "${BASIN_SIM_PREFIX}h$i" unshare --uts \
    sh -c 'hostname "$1" && shift && exec sh -c "$*"' sh "basin-sim-h$i" "$@"
