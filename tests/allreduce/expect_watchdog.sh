#!/bin/sh
# Run a command that must be stopped by the all-reduce watchdog:
#   expect_watchdog.sh RANK MAX_SECONDS command...
# Passes when the command exits non-zero within MAX_SECONDS and its output has
# a watchdog line naming RANK as the peer waited on.
rank=$1
max=$2
shift 2
out=$(mktemp)
trap 'rm -f "$out"' EXIT
start=$(date +%s)
timeout -k 5 $((max + 30)) "$@" >"$out" 2>&1
rc=$?
elapsed=$(($(date +%s) - start))
cat "$out"
fail=0
if [ "$rc" -eq 0 ]; then
    echo "expect_watchdog: FAILED: the job exited 0; the watchdog should have stopped it"; fail=1
fi
if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    echo "expect_watchdog: FAILED: the job hung until killed ($rc)"; fail=1
fi
if [ "$elapsed" -gt "$max" ]; then
    echo "expect_watchdog: FAILED: took ${elapsed} s, more than ${max} s"; fail=1
fi
if ! grep -q "all-reduce watchdog: collective #2 .* waited [0-9.]* s on rank $rank in " "$out"; then
    echo "expect_watchdog: FAILED: no watchdog line naming rank $rank"; fail=1
fi
[ "$fail" -eq 0 ] && echo "expect_watchdog: passed (exit code $rc after ${elapsed} s)"
exit $fail
