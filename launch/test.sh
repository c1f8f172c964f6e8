#!/usr/bin/env bash
# Run the whole test suite: installs and builds what is missing, then runs
# every test twice, in the release build (-Wall -Wextra -Werror) and in the
# sanitizer build (AddressSanitizer + UndefinedBehaviorSanitizer).
#
#   launch/test.sh [ctest options, e.g. -R allreduce]
set -euo pipefail
cd "$(dirname "$0")/.."

launch/setup.sh --sanitize

# One test per core at a time. GNU nproc obeys OMP_NUM_THREADS (set to 1
# below, and perhaps by the caller), so it is counted without it. The multi-rank tests oversubscribe the cores
# and take the basin_mpi resource lock, so they run one at a time, beside
# the single-process tests.
jobs=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)

# Multi-rank tests run under mpirun on this one machine.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
export ASAN_OPTIONS=abort_on_error=0:detect_leaks=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export LSAN_OPTIONS=suppressions=$PWD/tests/lsan.supp:print_suppressions=0

echo "test: release build"
(cd build && ctest --output-on-failure -j "$jobs" "$@")
echo "test: sanitizer build"
(cd build-asan && ctest --output-on-failure -j "$jobs" -LE no-sanitizer "$@")
