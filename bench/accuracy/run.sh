#!/usr/bin/env bash
# Accuracy targets on Fashion-MNIST: the cnn preset for 15 epochs and the mlp
# preset for 20, each through the launcher, then a table and a plot of the
# test-accuracy curves in bench/results/accuracy.md and accuracy.png.
#
#   bench/accuracy/run.sh [--np N]      (default: all cores)
set -euo pipefail
cd "$(dirname "$0")/../.."
np=$(nproc)
[ "${1:-}" = --np ] && np=$2
launch/setup.sh --bench >/dev/null
out=runs/accuracy
mkdir -p "$out"
cmd_cnn=(launch/train.sh --np "$np" -- --model cnn --epochs 15 --batch 64 --lr 0.02
         --output-dir "$out/cnn")
cmd_mlp=(launch/train.sh --np "$np" -- --model mlp --epochs 20 --batch 64 --lr 0.05
         --output-dir "$out/mlp")
"${cmd_cnn[@]}" | tee "$out/cnn.log"
"${cmd_mlp[@]}" | tee "$out/mlp.log"
/usr/bin/python3 bench/accuracy/report.py \
  --run "cnn|92.0|${cmd_cnn[*]}|$out/cnn/metrics.jsonl" \
  --run "mlp|89.0|${cmd_mlp[*]}|$out/mlp/metrics.jsonl" \
  --markdown bench/results/accuracy.md --plot bench/results/accuracy.png
