#!/usr/bin/env bash
# Run the whole test suite: installs and builds what is missing, then runs
# every test twice, in the release build (-Wall -Wextra -Werror) and in the
# sanitizer build (AddressSanitizer + UndefinedBehaviorSanitizer).
#
#   launch/test.sh [ctest options, e.g. -R allreduce]
set -euo pipefail
cd "$(dirname "$0")/.."

launch/setup.sh --sanitize

# Multi-rank tests run under mpirun on this one machine.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
export ASAN_OPTIONS=abort_on_error=0:detect_leaks=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export LSAN_OPTIONS=suppressions=$PWD/tests/lsan.supp:print_suppressions=0

jobs=$(nproc)
echo "test: release build"
(cd build && ctest --output-on-failure -j "$jobs" "$@")
echo "test: sanitizer build"
(cd build-asan && ctest --output-on-failure -j "$jobs" -LE no-sanitizer "$@")
