#!/usr/bin/env bash
# bench/faults/data_inputs.sh BUILD_DIR
# Runs `basin-train --check` and `basin-data info` on each malformed data file
# of tests/reader/faults.h (written by BUILD_DIR's gen_data_faults) and on
# damaged checkpoints (`basin-train --check --resume FILE`), and on the files
# of tests/fuzz/hdf5-known that crash libhdf5 in-process, and prints one
# markdown row per input and program:
#   | fault | exit code | line printed | what is kept on disk |
# "What is kept on disk" compares the folder before and after: --check and
# info write nothing, and the input files stay as they were.
set -uo pipefail
build=${1:?usage: bench/faults/data_inputs.sh BUILD_DIR}
build=$(cd "$build" && pwd)
train=$build/launch/basin-train data=$build/launch/basin-data gen=$build/tests/reader/gen_data_faults
for p in "$train" "$data" "$gen"; do
  [ -x "$p" ] || { echo "data_inputs.sh: $p is missing (build $build first)" >&2; exit 2; }
done
work=$(mktemp -d "${TMPDIR:-/tmp}/basin-faults-XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/data" "$work/out"
"$gen" "$work/data" > "$work/faults.tsv"

# Every file under the work folder with its size and checksum.
snapshot() { (cd "$work" && find . -type f ! -name stderr.txt -print0 | sort -z | xargs -0 md5sum); }
row() { # fault, command...
  local fault=$1; shift
  local before after kept line rc
  before=$(snapshot)
  "$@" >/dev/null 2>"$work/stderr.txt"
  rc=$?
  after=$(snapshot)
  line=$(head -3 "$work/stderr.txt" | tr '\n' ' ' | sed 's/ *$//; s/|/\\|/g')
  line=${line//$work\//}
  if [ "$before" = "$after" ]; then
    kept="input unchanged, nothing written"
  else
    kept="changed: $(diff <(echo "$before") <(echo "$after") | grep '^>' | awk '{print $3}' | head -3 | tr '\n' ' ')"
  fi
  printf '| %s | %s | `%s` | %s |\n' "$fault" "$rc" "$line" "$kept"
}

echo "| fault | exit code | line printed | what is kept on disk |"
echo "| --- | --- | --- | --- |"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
while IFS=$'\t' read -r name fault; do
  f=$work/data/$name.h5
  row "data: $fault (basin-train --check)" "$train" --check --data "$f" --model mlp --eval-every 0 --output-dir "$work/out"
  row "data: $fault (basin-data info)" "$data" info "$f"
done < "$work/faults.tsv"

# Checkpoints: a real one from a short run on the good file, then damaged copies.
good=$work/data/good.h5 ck=$work/ckrun
"$train" --data "$good" --model mlp --max-steps 2 --batch 8 --eval-every 0 --output-dir "$ck" >/dev/null 2>&1
real=$(ls "$ck"/checkpoints/ckpt-*.h5 2>/dev/null | tail -1)
if [ -z "$real" ]; then
  echo "data_inputs.sh: could not write a checkpoint with $train" >&2
  exit 1
fi
size=$(stat -c %s "$real")
mk() { cp "$real" "$work/data/$1"; echo "$work/data/$1"; }
for frac in 1 50 99; do
  p=$(mk "ckpt-truncated-$frac.h5"); truncate -s $((size * frac / 100)) "$p"
  row "checkpoint truncated to $frac %" "$train" --check --data "$good" --model mlp --batch 8 --eval-every 0 --resume "$p" --output-dir "$work/out"
done
p=$(mk ckpt-flipped-data.h5)
printf '\x55' | dd of="$p" bs=1 seek=$((size - 5)) conv=notrunc status=none
row "checkpoint with a flipped byte in /momentum" "$train" --check --data "$good" --model mlp --batch 8 --eval-every 0 --resume "$p" --output-dir "$work/out"
p=$(mk ckpt-zeroed-superblock.h5)
dd if=/dev/zero of="$p" bs=1 count=8 conv=notrunc status=none
row "checkpoint with its superblock zeroed" "$train" --check --data "$good" --model mlp --batch 8 --eval-every 0 --resume "$p" --output-dir "$work/out"
p=$(mk ckpt-empty.h5); : > "$p"
row "checkpoint of 0 bytes" "$train" --check --data "$good" --model mlp --batch 8 --eval-every 0 --resume "$p" --output-dir "$work/out"

# Files on which libhdf5 1.10.8 itself crashes when it parses them in this
# process (tests/fuzz/hdf5-known): the readers parse them in a child first.
known=$(cd "$(dirname "$0")/../../tests/fuzz/hdf5-known" && pwd)
for f in "$known"/dataset-*; do
  p=$work/data/$(basename "$f").h5; cp "$f" "$p"
  row "data: $(basename "$f") (crashes libhdf5 in-process; basin-train --check)" "$train" --check --data "$p" --model mlp --eval-every 0 --output-dir "$work/out"
  row "data: $(basename "$f") (crashes libhdf5 in-process; basin-data info)" "$data" info "$p"
done
for f in "$known"/checkpoint-*; do
  p=$work/data/$(basename "$f").h5; cp "$f" "$p"
  row "$(basename "$f") (crashes libhdf5 in-process)" "$train" --check --data "$good" --model mlp --batch 8 --eval-every 0 --resume "$p" --output-dir "$work/out"
done
