#!/usr/bin/env bash
# run_fuzzer.sh TARGET SECONDS CORPUS [SEED_DIR...] [-- libFuzzer options]
# Runs a libFuzzer target for SECONDS over CORPUS (new inputs are added there)
# and the seed folders that exist. Exit 0 only when there was no crash, leak,
# timeout, out-of-memory or sanitizer report at all: wherever it happened,
# in basin's code or in libhdf5's (the readers parse every file in a child
# process first, reader/h5guard.h, so a libhdf5 crash there is a refusal
# with one line, not a crash of the target).
#
# libFuzzer runs in fork mode and goes on after a crash, so that a long run
# counts them all; each is kept under ARTIFACTS/ (the folder beside CORPUS)
# and rerun alone for its report. The last line sums the run up, for
# bench/fuzz/run.sh:
#   fuzz: NAME: executions E, exec/s S, crashes C, sanitizer reports R, corpus N inputs,
#         new files A, coverage cov/ft, libFuzzer exit X, PASS|FAIL
# (exec/s: executions over the run's whole time, as libFuzzer's own figure in
# fork mode is that of the last job only)
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
name=$(basename "$target")
mkdir -p "$corpus"
artifacts=$(cd "$(dirname "$corpus")" && pwd)/artifacts
rm -rf "$artifacts" && mkdir -p "$artifacts"
log=$(mktemp "${TMPDIR:-/tmp}/basin-fuzz-log-XXXXXX")
trap 'rm -f "$log"' EXIT
# quarantine_size_mb=16: each input forks the guard's child, and a fork
# costs in proportion to the parent's resident memory, which ASan's default
# quarantine of freed blocks (256 MB) fills: 20 exec/s with it, 75 without.
export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=0:detect_leaks=1:quarantine_size_mb=16}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$here/../lsan.supp:print_suppressions=0}
# -close_fd_mask=2: the one-line refusals of each input stay quiet; libFuzzer
# still prints its own reports and the sanitizers'.
"$target" -fork=1 -ignore_crashes=1 -ignore_ooms=1 -ignore_timeouts=1 -max_total_time="$seconds" \
  -max_len=300000 -timeout=20 -rss_limit_mb=4096 -close_fd_mask=2 -print_final_stats=1 \
  -artifact_prefix="$artifacts/" "$@" "$corpus" "${dirs[@]}" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}

# Every report, however it ended: each artifact libFuzzer kept, and each
# SUMMARY line of a sanitizer or of libFuzzer in the output (fork mode prints
# the inner process's log on a crash).
# Slow inputs (slow-unit-*: one execution over 10 s, which a loaded machine
# produces; a real hang is a timeout-* after 20 s) are listed, not counted.
crashes=$(find "$artifacts" -type f ! -name 'slow-unit-*' | wc -l)
slow=$(find "$artifacts" -type f -name 'slow-unit-*' | wc -l)
reports=$(grep -cE '^SUMMARY: ' "$log")
for a in "$artifacts"/*; do
  [ -f "$a" ] || continue
  case "$(basename "$a")" in slow-unit-*) echo "fuzz: slow input (not a failure): $(basename "$a")"; continue ;; esac
  report=$("$target" -runs=1 -timeout=20 -rss_limit_mb=4096 "$a" 2>&1)
  summary=$(printf '%s\n' "$report" | grep -m1 -E 'SUMMARY|ERROR: libFuzzer' || echo 'no report when rerun alone')
  frame=$(printf '%s\n' "$report" | grep -E '^ +#[0-9]+ ' | grep -vE '__interceptor_|__asan|__sanitizer|__ubsan|fuzzer::' | head -1)
  echo "fuzz: crash: $(basename "$a"): $summary"
  [ -n "$frame" ] && echo "      at $frame"
done
# libFuzzer's last status line in fork mode:
#   #E: cov: C ft: F corp: N exec/s S oom/timeout/crash: a/b/c time: Ts job: J
stats=$(grep -E '^#[0-9]+' "$log" | tail -1)
execs=$(printf '%s' "$stats" | grep -oE '^#[0-9]+' | tr -d '#')
elapsed=$(printf '%s' "$stats" | grep -oE '[^_]time: [0-9]+' | head -1 | awk '{print $2}')
speed=$([ -n "$execs" ] && [ "${elapsed:-0}" -gt 0 ] && echo $((execs / elapsed)))
cov=$(printf '%s' "$stats" | grep -oE 'cov: [0-9]+ ft: [0-9]+' | awk '{print $2 "/" $4}')
units=$(printf '%s' "$stats" | grep -oE 'corp: [0-9]+' | awk '{print $2}')
added=$(find "$corpus" -type f | wc -l)
result=PASS
[ "$rc" -eq 0 ] && [ "$crashes" -eq 0 ] && [ "$reports" -eq 0 ] || result=FAIL
echo "fuzz: $name: executions ${execs:-?}, exec/s ${speed:-?}, crashes $crashes, sanitizer reports $reports," \
  "corpus ${units:-?} inputs, new files $added, coverage ${cov:-?}, slow inputs $slow, libFuzzer exit $rc, $result"
[ "$result" = PASS ]
