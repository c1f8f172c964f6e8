#!/bin/sh
# Every algorithm across 2 simulated hosts x 2 ranks (launch/simcluster.sh):
# shared memory inside a host, TCP over a 1 Gbit/s link between them. The
# big count gives hier shards above 1 MiB, so its ring across hosts runs too.
#   simcluster_test.sh SIMCLUSTER_SH TEST_ALLREDUCE
# Exit 77 (skipped) where network namespaces cannot be created.
sim=$1
prog=$2
[ "$(id -u)" -eq 0 ] || { echo "SKIPPED: simulated cluster needs root"; exit 77; }
exec "$sim" --hosts 2 --ranks-per-host 2 --rate 1gbit -- \
    "$prog" --layouts 0,1 --expect-nodes 2 --only exact,bits,async --big-count 600011
