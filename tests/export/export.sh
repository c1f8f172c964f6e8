#!/usr/bin/env bash
# A short training run of one model, then its checkpoint exported with
# basin-export to TorchScript and ONNX and checked against basin-eval by
# check_export.py (PyTorch on 1,000 test images; onnx.checker, the graph's
# layers and shapes, a NumPy walk over its nodes; the layer table's offsets).
# Skipped (77) when Debian's python3 lacks torch, onnx, h5py or numpy.
# Usage: export.sh BASIN_TRAIN BASIN_EVAL BASIN_EXPORT DATA MODEL WALK_N [TRAIN OPTIONS...]
set -u
train=$1 evaluate=$2 export=$3 data=$4 model=$5 walk_n=$6
shift 6
here=$(cd "$(dirname "$0")" && pwd)
py=/usr/bin/python3
if ! "$py" -c 'import torch, onnx, h5py, numpy' 2>/dev/null; then
  echo "SKIP: $py lacks torch, onnx, h5py or numpy (launch/setup.sh --sanitize installs them)"; exit 77
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if ! "$train" --data "$data" --model "$model" --limit-train 400 --limit-test 40 --epochs 1 --batch 20 \
      --output-dir "$work/run" "$@" >"$work/train.log" 2>&1; then
  echo "FAILED: basin-train --model $model:" >&2; sed 's/^/    /' "$work/train.log" >&2; exit 1
fi
ckpt=$(ls "$work"/run/checkpoints/ckpt-*.h5 | tail -n 1)
for args in "--limit 1000" "--limit $walk_n"; do
  out="$work/eval${args#--limit }.json"
  if ! "$evaluate" "$ckpt" --data "$data" $args --json >"$out" 2>"$work/eval.err"; then
    echo "FAILED: basin-eval $args:" >&2; sed 's/^/    /' "$work/eval.err" >&2; exit 1
  fi
done
for fmt in torch onnx; do
  if ! "$export" "$ckpt" --format "$fmt" --output "$work/model.$fmt" >"$work/export.out" 2>&1; then
    echo "FAILED: basin-export --format $fmt:" >&2; sed 's/^/    /' "$work/export.out" >&2; exit 1
  fi
  grep -q "^basin-export: wrote $work/model.$fmt" "$work/export.out" || {
    echo "FAILED: basin-export --format $fmt said:" >&2; cat "$work/export.out" >&2; exit 1; }
done
ls -a "$work" | grep -q '\.tmp$' && { echo "FAILED: a temporary file was left" >&2; exit 1; }
"$py" "$here/check_export.py" "$ckpt" "$data" "$work/model.torch" "$work/model.onnx" "$work/eval1000.json" \
  "$work/eval$walk_n.json" "$walk_n" "$(dirname "$export")" || exit 1
echo "export of $model: all checks passed"
