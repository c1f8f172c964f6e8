#!/usr/bin/env bash
# bench/fuzz/run.sh [BUILD_DIR [SECONDS]]
# Runs both fuzz targets at once for SECONDS (default 600) each, from the
# seeds of BUILD_DIR (a sanitizer build, default build-asan; the seeds are
# written here by its fuzz_seeds), and writes bench/results/fuzz.md from the
# runs' own output (tests/fuzz/run_fuzzer.sh): command, date, machine,
# executions, exec/s, crashes, sanitizer reports, corpus size, coverage. Any
# crash or sanitizer report fails the run, wherever it happened.
set -uo pipefail
cd "$(dirname "$0")/../.."
build_arg=${1:-build-asan}
build=$(cd "$build_arg" && pwd)
seconds=${2:-600}
fz=$build/tests/fuzz
for t in dataset checkpoint; do
  [ -x "$fz/targets/fuzz_$t" ] || { echo "run.sh: $fz/targets/fuzz_$t is missing (a sanitizer build with clang)" >&2; exit 2; }
done
"$build/tests/fuzz/fuzz_seeds" "$fz/seeds" || exit 1
work=$fz/long
rm -rf "$work" && mkdir -p "$work"
start=$(date -u '+%Y-%m-%d %H:%M UTC')
pids=()
for t in dataset checkpoint; do
  tests/fuzz/run_fuzzer.sh "$fz/targets/fuzz_$t" "$seconds" "$work/$t/corpus" "$fz/seeds/$t" "tests/fuzz/regress/$t" \
    > "$work/$t.log" 2>&1 &
  pids+=($!)
done
rcs=()
for p in "${pids[@]}"; do wait "$p"; rcs+=($?); done
end=$(date -u '+%Y-%m-%d %H:%M UTC')

# A field of run_fuzzer.sh's last line: "fuzz: NAME: executions E, exec/s S, ..."
field() { grep -E "^fuzz: fuzz_$1: executions" "$work/$1.log" | tail -1 | grep -oE "$2 [^,]+" | head -1 | sed "s|^$2 ||"; }

out=bench/results/fuzz.md
{
  echo "# Fuzzing the data-set validator and the checkpoint reader"
  echo
  echo "Written by \`bench/fuzz/run.sh\` from its runs' own output; do not edit by hand."
  echo
  echo "Command: \`bench/fuzz/run.sh $build_arg $seconds\` (both targets at once), $start to $end."
  echo
  echo "Machine: $(lscpu | grep -m1 'Model name' | sed 's/Model name: *//'), $(nproc) CPUs; \`$(uname -a)\`;"
  echo "load average at the end $(cut -d' ' -f1-3 /proc/loadavg) (other work shares the host); $(clang --version | head -1);"
  echo "HDF5 $(dpkg-query -W -f '${Version}' libhdf5-dev 2>/dev/null); ASAN_OPTIONS as in tests/fuzz/run_fuzzer.sh."
  echo
  echo "The targets run the product path: each input is first parsed by libhdf5 in a child process"
  echo "(\`src/reader/h5guard.h\`), so a libhdf5 crash is a refusal with one line. Every crash or"
  echo "sanitizer report of the target counts, wherever it happened."
  echo
  echo "| target | seconds | executions | exec/s | crashes | sanitizer reports | corpus (inputs) | new corpus files | coverage (cov/ft) | result |"
  echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
  i=0
  for t in dataset checkpoint; do
    echo "| fuzz_$t | $seconds | $(field $t executions) | $(field $t exec/s) | $(field $t crashes) | $(field $t 'sanitizer reports') | $(field $t corpus) | $(field $t 'new files') | $(field $t coverage) | $([ "${rcs[$i]}" = 0 ] && echo pass || echo FAIL) |"
    i=$((i + 1))
  done
  echo
  if grep -qh '^fuzz: crash:' "$work"/*.log; then
    echo "Crashes (rerun alone):"
    echo
    grep -h -A1 '^fuzz: crash:' "$work"/*.log | grep -v '^--' | sed 's/^/    /'
  else
    echo "No crash and no sanitizer report."
  fi
} > "$out"
cat "$out"
[ "${rcs[0]}" = 0 ] && [ "${rcs[1]}" = 0 ]
