#!/usr/bin/env bash
# bench/fuzz/run.sh [BUILD_DIR [SECONDS]]
# Runs both fuzz targets at once for SECONDS (default 600) each, from the
# seeds of BUILD_DIR (a sanitizer build, default build-asan: run
# `ctest -R fuzz_seeds` there first, or let this script do it), and writes
# bench/results/fuzz.md: command, date, machine, executions, crashes sorted
# into basin's and libhdf5's (tests/fuzz/run_fuzzer.sh), corpus sizes and
# libFuzzer's coverage counters.
set -uo pipefail
cd "$(dirname "$0")/../.."
build=$(cd "${1:-build-asan}" && pwd)
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

out=bench/results/fuzz.md
{
  echo "# Fuzzing the data-set validator and the checkpoint reader"
  echo
  echo "Command: \`bench/fuzz/run.sh $(basename "$build") $seconds\` (both targets at once), started $start."
  echo
  echo "Machine: \`$(uname -a)\`; $(lscpu | grep -m1 'Model name' | sed 's/  */ /g'), $(nproc) CPUs;"
  echo "$(clang --version | head -1); HDF5 $(dpkg-query -W -f '${Version}' libhdf5-dev 2>/dev/null)."
  echo
  echo "| target | seconds | executions | exec/s | corpus files | coverage (cov/ft) | crashes in basin | crashes in libhdf5 | result |"
  echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
  i=0
  for t in dataset checkpoint; do
    log=$work/$t.log
    execs=$(grep -oE '#[0-9]+' "$log" | tail -1 | tr -d '#')
    speed=$(grep -oE 'exec/s:? [0-9]+' "$log" | tail -1 | awk '{print $2}')
    cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -1 | awk '{print $2 "/" $4}')
    units=$(ls "$work/$t/corpus" | wc -l)
    line=$(grep -E "^fuzz: fuzz_$t: [0-9]+ crash" "$log")
    ours=$(echo "$line" | awk '{print $3}') theirs=$(echo "$line" | awk '{print $8}')
    echo "| fuzz_$t | $seconds | ${execs:-?} | ${speed:-?} | $units | ${cov:-?} | ${ours:-?} | ${theirs:-?} | $([ "${rcs[$i]}" = 0 ] && echo pass || echo FAIL) |"
    i=$((i + 1))
  done
  echo
  echo "Inputs that crashed once but not when rerun alone (not counted): $(cat "$work"/*.log | grep -c 'does not reproduce')."
  echo "Sanitizer reports in basin's code: $(cat "$work"/*.log | grep -c '^fuzz: BASIN:')."
  echo "Crashes in libhdf5 (first frame outside the sanitizer and libc in libhdf5_serial.so), by kind:"
  echo
  cat "$work"/*.log | grep '^fuzz: hdf5:' | sed -E 's/.*(SUMMARY: [A-Za-z]+Sanitizer|ERROR: libFuzzer): ([a-z-]+|SEGV).*/\2/' | sort | uniq -c | \
    awk '{print "- " $2 ": " $1}'
} > "$out"
cat "$out"
[ "${rcs[0]}" = 0 ] && [ "${rcs[1]}" = 0 ]
