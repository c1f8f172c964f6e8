#!/usr/bin/env bash
# Data parallelism must not change what is learned: the cnn preset trained on
# 1 rank and on 4 ranks (oversubscribed here) with the same global batch ends
# at the same test accuracy (target: within 0.3 points). Writes
# bench/results/accuracy-ranks.md.
#
#   bench/accuracy/ranks.sh [--epochs N]     (default 3)
set -euo pipefail
cd "$(dirname "$0")/../.."
epochs=3
[ "${1:-}" = --epochs ] && epochs=$2
launch/setup.sh >/dev/null
out=runs/accuracy-ranks
rm -rf "$out"
mkdir -p "$out"
args=(--model cnn --epochs "$epochs" --batch 64 --lr 0.02 --log-every 500)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mpi=(mpirun --oversubscribe --bind-to none -x OPENBLAS_NUM_THREADS=1)
for np in 1 4; do
  "${mpi[@]}" -np "$np" build/launch/basin-train "${args[@]}" --output-dir "$out/np$np" | tee "$out/np$np.log"
done
acc() { grep '"event":"eval"' "$1" | tail -1 | sed 's/.*"test_accuracy":\([0-9.e-]*\).*/\1/'; }
a1=$(acc "$out/np1/metrics.jsonl") a4=$(acc "$out/np4/metrics.jsonl")
{
  echo "# Test accuracy: 1 rank against 4 ranks, same global batch"
  echo
  echo "Date: $(date -u '+%Y-%m-%d %H:%M UTC'); machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores (4 ranks oversubscribed)."
  echo
  echo "    mpirun -np {1,4} build/launch/basin-train ${args[*]}"
  echo
  echo "| ranks | per-rank batch | final test accuracy |"
  echo "| --- | --- | --- |"
  echo "| 1 | 64 | $(awk -v a="$a1" 'BEGIN { printf "%.2f%%", 100 * a }') |"
  echo "| 4 | 16 | $(awk -v a="$a4" 'BEGIN { printf "%.2f%%", 100 * a }') |"
  echo
  awk -v a="$a1" -v b="$a4" 'BEGIN { d = 100 * (a - b); if (d < 0) d = -d;
    printf "Difference: %.2f points (target <= 0.30): %s\n", d, d <= 0.3 ? "met" : "NOT met" }'
} >bench/results/accuracy-ranks.md
cat bench/results/accuracy-ranks.md
