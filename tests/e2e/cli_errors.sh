#!/usr/bin/env bash
# Every user mistake gets exactly one line on stderr naming the problem, exit
# code 2, and writes nothing: no output directory, no metrics, no data file.
set -u
train=$1 data_tool=$2 good=$3
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failures=0 checks=0

expect_usage_error() { # NAME PATTERN COMMAND...
  local name=$1 pattern=$2; shift 2
  checks=$((checks + 1))
  (cd "$work" && "$@") >"$work/out" 2>"$work/err"
  local rc=$? lines
  lines=$(wc -l <"$work/err")
  if [ "$rc" != 2 ] || [ "$lines" != 1 ] || ! grep -q -- "$pattern" "$work/err"; then
    echo "FAILED: $name: exit $rc, $lines stderr line(s), want 2 / 1 line matching '$pattern':" >&2
    sed 's/^/    /' "$work/err" >&2
    failures=$((failures + 1))
  fi
  if [ -e "$work/out-dir" ]; then
    echo "FAILED: $name: wrote an output directory" >&2
    failures=$((failures + 1)); rm -rf "$work/out-dir"
  fi
}

printf 'not an HDF5 file\n' >"$work/text.h5"
h5copy -p -i "$good" -o "$work/no-labels.h5" -s /train/images -d /train/images
h5copy -p -i "$good" -o "$work/no-labels.h5" -s /test -d /test
run=("$train" --output-dir out-dir --epochs 1 --max-steps 2)

expect_usage_error "unknown flag" "--bogus" "${run[@]}" --data "$good" --bogus
expect_usage_error "missing value" "--batch" "${run[@]}" --data "$good" --batch
expect_usage_error "stray argument" "extra" "${run[@]}" --data "$good" extra
expect_usage_error "zero batch" "--batch '0'" "${run[@]}" --data "$good" --batch 0
expect_usage_error "negative batch" "--batch '-4'" "${run[@]}" --data "$good" --batch -4
expect_usage_error "zero lr" "--lr '0'" "${run[@]}" --data "$good" --lr 0
expect_usage_error "negative lr" "--lr '-0.1'" "${run[@]}" --data "$good" --lr -0.1
expect_usage_error "junk lr" "--lr '0.1x'" "${run[@]}" --data "$good" --lr 0.1x
expect_usage_error "bad schedule" "linear" "${run[@]}" --data "$good" --schedule linear
expect_usage_error "bad model" "conv:32:x" "${run[@]}" --data "$good" --model conv:32:x,relu,fc:10
expect_usage_error "model of wrong width" "fc:10" "${run[@]}" --data "$good" --model fc:7
expect_usage_error "missing data" "nowhere.h5" "${run[@]}" --data "$work/nowhere.h5"
expect_usage_error "not HDF5" "text.h5" "${run[@]}" --data "$work/text.h5"
expect_usage_error "missing labels" "labels" "${run[@]}" --data "$work/no-labels.h5"
expect_usage_error "batch above samples" "larger than" "${run[@]}" --data "$good" --limit-train 10 --batch 64
expect_usage_error "indivisible batch" "not divisible" "${run[@]}" --data "$good" --batch 63 --check=2
expect_usage_error "bad conv algorithm" "BASIN_CONV='fft'" env BASIN_CONV=fft "${run[@]}" --data "$good"
expect_usage_error "bad device" "--device 'gpu'" "${run[@]}" --data "$good" --device gpu
expect_usage_error "unknown all-reduce" "--allreduce 'bogus': expected auto, rhd, ring, hier, mpi or nccl" \
  "${run[@]}" --data "$good" --allreduce bogus
expect_usage_error "status file under a file" "text.h5/status" \
  "${run[@]}" --data "$good" --status-file "$work/text.h5/status"
expect_usage_error "nccl on the CPU" "nccl needs --device cuda" "${run[@]}" --data "$good" --allreduce nccl
expect_usage_error "host all-reduce on the GPU" "device cuda" "${run[@]}" --data "$good" --device cuda --allreduce ring
# Without a GPU (or without the CUDA backend), --device cuda is refused
# (BASIN_HOST_CUDA_DEVICES=0: a sanitizer build runs the CUDA backend on
# the CPU, cuda/host, and shows it no device).
if ! ls /dev/nvidia0 >/dev/null 2>&1; then
  export BASIN_HOST_CUDA_DEVICES=0
  expect_usage_error "no GPU" "device cuda: " "${run[@]}" --data "$good" --device cuda
  unset BASIN_HOST_CUDA_DEVICES
fi

before=$(md5sum "$good")
expect_usage_error "import: unknown dataset" "cifar" "$data_tool" import cifar --output "$good"
expect_usage_error "import: missing source" "nowhere" "$data_tool" import fashion-mnist --source "$work/nowhere" --output "$good"
[ "$(md5sum "$good")" = "$before" ] || { echo "FAILED: a failed import changed $good" >&2; failures=$((failures + 1)); }
expect_usage_error "data: unknown flag" "--frobnicate" "$data_tool" --frobnicate

echo "cli_errors: $((checks - failures)) passed, $failures failed"
[ "$failures" = 0 ]
