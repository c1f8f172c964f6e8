#!/usr/bin/env bash
# bench/gpu.sh --plan with stand-ins for nvidia-smi and nvcc: what runs on
# 0, 1 and 2 GPUs, with a driver too old for the CUDA version, and on a glibc
# older than the kit's. Every expectation is one line of the plan; the first
# that does not hold fails the test.
set -u
ROOT=$1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fails=0

mkdir -p "$tmp/bin" "$tmp/kit"
echo fake >"$tmp/kit/deps.tar.gz"
cat >"$tmp/bin/nvcc" <<'X'
#!/bin/sh
echo "Cuda compilation tools, release 13.0, V13.0.88"
X
cat >"$tmp/bin/nvidia-smi" <<'X'
#!/bin/sh
# FAKE_GPUS GPUs, driver FAKE_DRIVER
case "$1" in
-L) i=0; while [ "$i" -lt "$FAKE_GPUS" ]; do echo "GPU $i: NVIDIA H200 (UUID: GPU-fake-$i)"; i=$((i + 1)); done ;;
--query-gpu=driver_version) i=0; while [ "$i" -lt "$FAKE_GPUS" ]; do echo "$FAKE_DRIVER"; i=$((i + 1)); done ;;
*) i=0; while [ "$i" -lt "$FAKE_GPUS" ]; do echo "$i, NVIDIA H200, $FAKE_DRIVER, 143771 MiB"; i=$((i + 1)); done ;;
esac
X
chmod +x "$tmp/bin/nvcc" "$tmp/bin/nvidia-smi"

plan() { # gpus driver kit-glibc
    echo "glibc $3" >"$tmp/kit/KIT"
    FAKE_GPUS=$1 FAKE_DRIVER=$2 PATH="$tmp/bin:$PATH" BASIN_GPU_KIT="$tmp/kit" BASIN_PYTHON=false \
        BASIN_GPU_DRY=0 bash "$ROOT/bench/gpu.sh" --plan
}
expect() { # output, part, expected verdict (a prefix of it)
    local line
    line=$(grep "^plan: $2 " <<<"$1" | head -n 1)
    line=$(sed 's/^plan: [^ ]* *//' <<<"$line")
    if [ "${line#"$3"}" = "$line" ]; then
        echo "FAILED: $CASE: $2: got '$line', want '$3...'" >&2
        fails=$((fails + 1))
    fi
}

CASE="0 GPUs"; out=$(plan 0 580.65 2.17)
expect "$out" build-single "run"
for t in test_ops_cuda test_step_cuda test_upload_cuda basin-bench-gemm basin-bench-step; do
    expect "$out" "$t" "skip: no GPU: nvidia-smi -L lists none (the binary is started: it must exit 77)"
done
expect "$out" torch_step.py "skip: no GPU"
expect "$out" build-mpi "run"
expect "$out" allreduce_gpu_np2_k1 "skip: no GPU: nvidia-smi -L lists none (started under mpirun"
expect "$out" allreduce_gpu_np4_k2 "skip: no GPU"

CASE="1 GPU"; out=$(plan 1 580.65 2.17)
for t in test_ops_cuda test_step_cuda test_upload_cuda basin-bench-gemm basin-bench-step test_train_cuda \
         allreduce_gpu_np2_k1 allreduce_gpu_np3_k1 equivalence_cuda_np2 equivalence_cuda_np3; do
    expect "$out" "$t" "run"
done
expect "$out" torch_step.py "skip: false cannot import torch"
for t in allreduce_gpu_np2 allreduce_gpu_np3_k2 allreduce_gpu_np4_k2; do
    expect "$out" "$t" "skip: needs 2 GPUs (one per rank of an NCCL communicator), 1 seen"
done

CASE="2 GPUs"; out=$(plan 2 580.65 2.17)
for t in test_ops_cuda test_upload_cuda allreduce_gpu_np2_k1 allreduce_gpu_np2 allreduce_gpu_np3_k2 \
         allreduce_gpu_np4_k2 equivalence_cuda_np3 test_train_cuda; do
    expect "$out" "$t" "run"
done

CASE="old driver"; out=$(plan 1 535.104 2.17)
expect "$out" test_ops_cuda "skip: driver 535.104 is older than CUDA 13.0 needs (580)"
expect "$out" allreduce_gpu_np2_k1 "skip: driver 535.104"

CASE="old glibc"; out=$(plan 1 580.65 99.1)
expect "$out" build-single "skip: glibc "
expect "$out" build-mpi "skip: glibc "
expect "$out" allreduce_gpu_np2_k1 "skip: no MPI: glibc "

CASE="no nvidia-smi"; out=$(PATH="$tmp/bin:$PATH" BASIN_NVIDIA_SMI=/nonexistent/nvidia-smi BASIN_GPU_KIT="$tmp/kit" \
                            BASIN_PYTHON=false bash "$ROOT/bench/gpu.sh" --plan)
expect "$out" test_ops_cuda "skip: no GPU: nvidia-smi not found"

if [ "$fails" -gt 0 ]; then echo "test_gpu_plan: $fails expectation(s) failed" >&2; exit 1; fi
echo "test_gpu_plan: every expectation held"
