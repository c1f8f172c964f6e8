#!/usr/bin/env bash
# run_fuzzer.sh TARGET SECONDS CORPUS [SEED_DIR...] [-- libFuzzer options]
# Runs a libFuzzer target for SECONDS over CORPUS (new inputs are added there)
# and the seed folders that exist, then sorts every crash by where it
# happened. Exit 0 only when no crash, leak, timeout, out-of-memory or
# sanitizer report has its faulting frame in basin's code.
#
# Why the sorting: basin's code is compiled with ASan/UBSan and libFuzzer's
# coverage; libhdf5 (Debian's 1.10.8, not instrumented) parses the file's
# metadata first, and on damaged metadata it has memory errors of its own
# (over-reads and use-after-free seen by ASan's interceptors, NULL
# dereferences after a failed allocation of a corrupted length). Those are
# HDF5's, not fixable here: libFuzzer runs in fork mode, goes on after each
# crash, and a crash whose first frame outside the sanitizer and libc is in
# libhdf5 is reported as "hdf5" and kept under ARTIFACTS/ (the folder beside
# CORPUS). Any other crash is basin's and fails the run.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
target=$1 seconds=$2 corpus=$3
shift 3
dirs=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
  [ -d "$1" ] && dirs+=("$1")
  shift
done
[ "${1:-}" = "--" ] && shift
mkdir -p "$corpus"
artifacts=$(cd "$(dirname "$corpus")" && pwd)/artifacts
rm -rf "$artifacts" && mkdir -p "$artifacts"
export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=0:detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$here/../lsan.supp:print_suppressions=0}
# -close_fd_mask=2: the one-line refusals of each input stay quiet; libFuzzer
# still prints its own reports and the sanitizers'.
"$target" -fork=1 -ignore_crashes=1 -ignore_ooms=1 -ignore_timeouts=1 -max_total_time="$seconds" \
  -max_len=300000 -timeout=20 -rss_limit_mb=4096 -close_fd_mask=2 -print_final_stats=1 \
  -artifact_prefix="$artifacts/" "$@" "$corpus" "${dirs[@]}"
rc=$?
echo "fuzz: $(basename "$target"): libFuzzer exit $rc, corpus $(ls "$corpus" | wc -l) files"

# The first stack frame of a report that is neither the sanitizer, libFuzzer
# nor libc.
first_frame() {
  grep -E '^ +#[0-9]+ ' | grep -vE '__interceptor_|__asan|__sanitizer|__ubsan|fuzzer::|libc\.so|/string/|sysdeps|in (malloc|calloc|realloc|free|strdup|memcpy|memmove|memset) ' | head -1
}
ours=0 theirs=0
for a in "$artifacts"/*; do
  [ -f "$a" ] || continue
  report=$("$target" -runs=1 -timeout=20 -rss_limit_mb=4096 "$a" 2>&1)
  frame=$(printf '%s\n' "$report" | first_frame)
  summary=$(printf '%s\n' "$report" | grep -m1 -E 'SUMMARY|ERROR: libFuzzer' || true)
  if [ -z "$summary" ]; then
    echo "fuzz: $(basename "$a"): does not reproduce alone"
  elif printf '%s' "$frame" | grep -q libhdf5; then
    theirs=$((theirs + 1))
    echo "fuzz: hdf5: $(basename "$a"): $summary"
  else
    ours=$((ours + 1))
    echo "fuzz: BASIN: $(basename "$a"): $summary"
    echo "      at $frame"
  fi
done
echo "fuzz: $(basename "$target"): $ours crash(es) in basin's code, $theirs in libhdf5 (kept in $artifacts)"
[ "$ours" -eq 0 ]
