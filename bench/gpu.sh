#!/usr/bin/env bash
# One command for a GPU machine: build basin for sm_90, run every GPU test
# the machine can run, print the GEMM table and the training-step baselines.
#
#   bench/gpu.sh            from the repository root, gpu-kit/ beside it
#   bench/gpu.sh --plan     print what would run and what not (and why), stop
#
# The GPU machine is not this one. What is assumed of it: CUDA 12 or 13
# (nvcc on PATH or in /usr/local/cuda/bin), CMake >= 3.18, a C and C++
# compiler, python3 with PyTorch for the baselines, an NVIDIA driver and
# nvidia-smi; no Open MPI, HDF5 or OpenBLAS, no package registry, and any
# Linux with glibc >= 2.31. bench/gpu_prepare.sh, run beforehand on a
# Debian machine, writes gpu-kit/ (carry it along): HDF5, OpenBLAS and zlib
# as static archives, Open MPI as shared libraries with mpirun, all from
# Debian 11 (glibc 2.31), and a 4,096-sample fashion-mnist.h5.
#
# Two builds, so that the parts needing no MPI run whatever happens to MPI:
#   build-gpu-single/  -DBASIN_MPI=OFF: test_ops_cuda, test_step_cuda,
#                      test_upload_cuda, basin-bench-gemm, basin-bench-step.
#                      Needs at run time only the CUDA libraries and glibc.
#   build-gpu-mpi/     the kit's Open MPI: test_train_cuda (1 rank),
#                      allreduce_gpu_* and equivalence_cuda_* under mpirun.
# Checked up front, one line each (`plan:`): the GPU count (nvidia-smi -L),
# the driver against nvcc's CUDA version, glibc against the kit's, whether
# the kit's mpirun starts. A part that cannot run gets one line saying why
# and the rest runs. The multi-rank tests that put two ranks of one NCCL
# communicator on a GPU need one GPU per rank and are skipped below that;
# allreduce_gpu_np2_k1 / _np3_k1 (every rank its own supernode: NCCL
# communicators of one rank, the host-staged rhd between them) and
# equivalence_cuda_* run with all ranks on one GPU.
#
# Without a GPU (none listed, or BASIN_GPU_DRY=1) it builds both and starts
# every test binary, each of which must exit 77 (skipped: no GPU); that is
# what bench/gpu_roots.sh runs in foreign Linux roots. Exit status: 0 when
# everything that ran passed (and, with a GPU, every GPU test ran rather
# than skipped); 1 when something failed; 3 when no GPU was seen and
# BASIN_GPU_DRY was not set (nothing was measured).
#
# Environment: BASIN_GPU_BUILD (folder prefix, default build-gpu),
# BASIN_GPU_KIT (default gpu-kit), BASIN_NVIDIA_SMI (default nvidia-smi),
# BASIN_PYTHON (default python3), BASIN_JOBS, BASIN_GPU_MPI=auto|no (no: skip
# the MPI build), BASIN_GPU_DRY=1.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PREFIX=${BASIN_GPU_BUILD:-$ROOT/build-gpu}
KIT=${BASIN_GPU_KIT:-$ROOT/gpu-kit}
SMI=${BASIN_NVIDIA_SMI:-nvidia-smi}
PY=${BASIN_PYTHON:-python3}
JOBS=${BASIN_JOBS:-$(nproc 2>/dev/null || echo 4)}
PLAN_ONLY=0
[ "${1:-}" = --plan ] && PLAN_ONLY=1

say() { printf '\n== %s\n' "$*"; }
plan() { printf 'plan: %-22s %s\n' "$1" "$2"; }
# version_ge A B: A >= B for dotted versions
version_ge() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n 1)" = "$2" ]; }

# ---- what this machine has ---------------------------------------------------
if ! command -v nvcc >/dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then export PATH=/usr/local/cuda/bin:$PATH; fi
NVCC_VER=$(nvcc --version 2>/dev/null | sed -n 's/.*release \([0-9][0-9.]*\).*/\1/p' | head -n 1)
CMAKE_VER=$(cmake --version 2>/dev/null | sed -n 's/^cmake version \([0-9.]*\).*/\1/p')
GLIBC=$(getconf GNU_LIBC_VERSION 2>/dev/null | awk '{print $2}')
KIT_GLIBC=$(sed -n 's/^glibc //p' "$KIT/KIT" 2>/dev/null)
if command -v "$SMI" >/dev/null; then
    GPUS=$("$SMI" -L 2>/dev/null | grep -c '^GPU [0-9]')
    DRIVER=$("$SMI" --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -n 1 | tr -d ' ')
    GPU_WHY="nvidia-smi -L lists none"
else
    GPUS=0 DRIVER="" GPU_WHY="nvidia-smi not found"
fi
case "${NVCC_VER%%.*}" in 13) NEED_DRIVER=580 ;; 12) NEED_DRIVER=525 ;; *) NEED_DRIVER=0 ;; esac

echo "gpu.sh: $GPUS GPU(s)${DRIVER:+, driver $DRIVER}; nvcc ${NVCC_VER:-missing}; cmake ${CMAKE_VER:-missing};" \
     "glibc ${GLIBC:-unknown}; kit ${KIT_GLIBC:+built for glibc $KIT_GLIBC}$([ -f "$KIT/deps.tar.gz" ] || echo missing)"
[ "$GPUS" -gt 0 ] && "$SMI" --query-gpu=index,name,driver_version,memory.total --format=csv,noheader 2>/dev/null

# ---- what runs ------------------------------------------------------------------
FATAL=""
[ -n "$CMAKE_VER" ] || FATAL="cmake not found"
[ -n "$NVCC_VER" ] || FATAL="nvcc not found (not on PATH, not in /usr/local/cuda/bin)"
[ -n "$CMAKE_VER" ] && ! version_ge "$CMAKE_VER" 3.18 && FATAL="cmake $CMAKE_VER is older than 3.18"

# GPU runs: a GPU whose driver runs this CUDA, unless dry.
GPU_OK=1 GPU_NO=""
if [ "$GPUS" -eq 0 ]; then GPU_OK=0 GPU_NO="no GPU: $GPU_WHY"
elif [ -n "$DRIVER" ] && [ "$NEED_DRIVER" != 0 ] && ! version_ge "$DRIVER" "$NEED_DRIVER"; then
    GPU_OK=0 GPU_NO="driver $DRIVER is older than CUDA $NVCC_VER needs ($NEED_DRIVER)"
fi
[ "${BASIN_GPU_DRY:-0}" = 1 ] && GPU_OK=0 GPU_NO="BASIN_GPU_DRY=1"

# The kit: static HDF5/OpenBLAS/zlib for both builds, Open MPI for the second.
KIT_OK=1 KIT_NO=""
if [ ! -f "$KIT/deps.tar.gz" ]; then KIT_OK=0 KIT_NO="no $KIT/deps.tar.gz (run bench/gpu_prepare.sh on a Debian machine)"
elif [ -n "$GLIBC" ] && [ -n "$KIT_GLIBC" ] && ! version_ge "$GLIBC" "$KIT_GLIBC"; then
    KIT_OK=0 KIT_NO="glibc $GLIBC is older than the kit's $KIT_GLIBC"
fi
MPI_OK=$KIT_OK MPI_NO=$KIT_NO
[ "${BASIN_GPU_MPI:-auto}" = no ] && MPI_OK=0 MPI_NO="BASIN_GPU_MPI=no"

SINGLE_TESTS=(test_ops_cuda test_step_cuda test_upload_cuda)
# name:GPUs needed. Two ranks of one NCCL communicator cannot share a GPU.
MPI_TESTS=(test_train_cuda:1 allreduce_gpu_np2_k1:1 allreduce_gpu_np3_k1:1 equivalence_cuda_np2:1
           equivalence_cuda_np3:1 allreduce_gpu_np2:2 allreduce_gpu_np3_k2:2 allreduce_gpu_np4_k2:2)

if [ -n "$FATAL" ]; then plan build "skip: $FATAL"
elif [ "$KIT_OK" = 1 ]; then plan build-single "run: BASIN_MPI=OFF, the kit's static HDF5/OpenBLAS/zlib"
else plan build-single "skip: $KIT_NO"; fi
for t in "${SINGLE_TESTS[@]}" basin-bench-gemm basin-bench-step; do
    if [ "$GPU_OK" = 1 ]; then plan "$t" run; else plan "$t" "skip: $GPU_NO (the binary is started: it must exit 77)"; fi
done
if [ "$GPU_OK" = 1 ] && "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    TORCH_OK=1; plan torch_step.py run
else
    TORCH_OK=0; plan torch_step.py "skip: $([ "$GPU_OK" = 1 ] && echo "$PY cannot import torch with CUDA" || echo "$GPU_NO")"
fi
if [ "$MPI_OK" = 1 ]; then plan build-mpi "run: the kit's Open MPI (checked to start after unpacking)"
else plan build-mpi "skip: $MPI_NO"; fi
RUN_MPI=()
for e in "${MPI_TESTS[@]}"; do
    t=${e%%:*} need=${e##*:}
    if [ "$MPI_OK" != 1 ]; then plan "$t" "skip: no MPI: $MPI_NO"
    elif [ "$GPU_OK" != 1 ]; then plan "$t" "skip: $GPU_NO (started under mpirun: it must exit 77)"; RUN_MPI+=("$t")
    elif [ "$GPUS" -lt "$need" ]; then plan "$t" "skip: needs $need GPUs (one per rank of an NCCL communicator), $GPUS seen"
    else plan "$t" run; RUN_MPI+=("$t"); fi
done
[ "$PLAN_ONLY" = 1 ] && exit 0
[ -n "$FATAL" ] && { echo "gpu.sh: $FATAL" >&2; exit 1; }
[ "$KIT_OK" = 1 ] || { echo "gpu.sh: $KIT_NO" >&2; exit 1; }

# ---- the kit ----------------------------------------------------------------------
DEPS=$PREFIX-deps
if [ ! -f "$DEPS/.unpacked" ] || [ "$KIT/deps.tar.gz" -nt "$DEPS/.unpacked" ]; then
    say "unpacking $KIT/deps.tar.gz into $DEPS"
    rm -rf "$DEPS" && mkdir -p "$DEPS" && tar xzf "$KIT/deps.tar.gz" -C "$DEPS" && touch "$DEPS/.unpacked" ||
        { echo "gpu.sh: cannot unpack $KIT/deps.tar.gz" >&2; exit 1; }
fi
ARCH=$(uname -m)-linux-gnu
L=$DEPS/usr/lib/$ARCH
# Only the MPI runs see the kit's shared libraries (cmake, python3 and the
# compilers keep the system's: the kit's libz or libstdc++ must not reach them).
KIT_LIBS=$(find "$DEPS" -name '*.so*' \( -type f -o -type l \) -printf '%h\n' 2>/dev/null | sort -u | paste -sd: -)
# Open MPI refuses to start, even on one host, when its remote agent (ssh or
# rsh) is missing: name one that exists, it is never called on one host.
RSH=ssh
command -v ssh >/dev/null || command -v rsh >/dev/null || RSH=false
kitenv() {
    env LD_LIBRARY_PATH="$KIT_LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" OPAL_PREFIX="$DEPS/usr" \
        PATH="$DEPS/usr/bin:$PATH" OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
        OMPI_MCA_plm_rsh_agent="$RSH" PMIX_INSTALL_PREFIX="$L/pmix2" \
        PMIX_MCA_mca_base_component_path="$L/pmix2/lib/pmix" "$@"
}
# The CUDA libraries where nvcc's are, in the programs' RPATH: the GPU
# machine's loader may not know that folder (no ld.so.conf entry), and an
# LD_LIBRARY_PATH would also reach PyTorch, which brings its own.
NVCC_DIR=$(dirname "$(readlink -f "$(command -v nvcc)")")
CUDA_RPATH=$(for d in "$NVCC_DIR/../lib64" "$NVCC_DIR/../lib" "$NVCC_DIR/../targets/$(uname -m)-linux/lib"; do
                 ls "$d"/libcudart.so* >/dev/null 2>&1 && readlink -f "$d"; done | sort -u | paste -sd';' -)
# -DBASIN_WERROR=OFF: the GPU machine's compiler is of unknown version, and a
# warning that a newer one adds must not cost the run (Debian 12's gcc builds
# with -Werror in the test suite; warnings here are still printed).
STATIC_ARGS=(-DCMAKE_BUILD_TYPE=Release -DBASIN_CUDA=ON -DBASIN_CUDA_ARCHS=90 -DCMAKE_CUDA_ARCHITECTURES=90
    -DBASIN_WERROR=OFF
    "-DBASIN_HDF5_INCLUDE_DIR=$DEPS/usr/include/hdf5/serial" "-DBASIN_HDF5_LIBRARIES=$L/hdf5/serial/libhdf5.a"
    "-DBLAS_LIBRARIES=$L/openblas-pthread/libopenblas.a" "-DCBLAS_INCLUDE_DIR=$DEPS/usr/include/$ARCH/openblas-pthread"
    "-DZLIB_INCLUDE_DIR=$DEPS/usr/include" "-DZLIB_LIBRARY=$L/libz.a" "-DBASIN_EXTRA_LIBS=$L/libsz.a;$L/libaec.a"
    "-DXXHASH_INCLUDE_DIR=$DEPS/usr/include"
    "-DCMAKE_BUILD_RPATH=$CUDA_RPATH")

fail=0
note() { printf 'gpu.sh: %s\n' "$*" | tee -a "$PREFIX-summary.log"; }
: >"$PREFIX-summary.log"

# In dry mode: every binary must start and say "skipped" (77).
expect_skip() { # name, command...
    local name=$1; shift
    "$@" >"$PREFIX-dry-$name.log" 2>&1
    local rc=$?
    if [ "$rc" = 77 ]; then note "$name: started, skipped (77): $(grep -m1 -i 'skip\|no CUDA' "$PREFIX-dry-$name.log")"
    else note "$name: FAILED: exit $rc, expected 77 (log: $PREFIX-dry-$name.log)"; tail -n 5 "$PREFIX-dry-$name.log" >&2; fail=1; fi
}
# ctest of named tests; with a GPU a skip is a failure.
run_ctest() { # build dir, label, tests..., via an optional env wrapper in WRAP
    local dir=$1 label=$2; shift 2
    local re; re="^($(IFS='|'; echo "$*"))\$"
    (cd "$dir" && ${WRAP:-} ctest -R "$re" --output-on-failure --timeout 600 $CTEST_FS) | tee "$dir/gpu-ctest.log"
    local rc=${PIPESTATUS[0]}
    if grep -q '\*\*\*Skipped\|Not Run' "$dir/gpu-ctest.log"; then
        note "$label: a test was SKIPPED with a GPU present (why: grep -A3 SKIPPED $dir/Testing/Temporary/LastTest.log)"; rc=1
    fi
    note "$label: $([ "$rc" = 0 ] && echo passed || echo FAILED)"
    [ "$rc" = 0 ] || fail=1
}

DATA=$ROOT/data/fashion-mnist.h5
[ -f "$DATA" ] || DATA=$KIT/fashion-mnist.h5
CTEST_FS=""

# ---- (a) the single-process build ---------------------------------------------------
SINGLE=$PREFIX-single
say "(a) build without MPI into $SINGLE"
if cmake -S "$ROOT" -B "$SINGLE" -DBASIN_MPI=OFF "${STATIC_ARGS[@]}" >"$SINGLE.configure.log" 2>&1 &&
   grep -q 'basin: CUDA .*nvcc' "$SINGLE.configure.log" &&
   cmake --build "$SINGLE" -j "$JOBS" --target "${SINGLE_TESTS[@]}" basin-bench-gemm basin-bench-step >"$SINGLE.build.log" 2>&1; then
    note "build-single: ok"
    SINGLE_OK=1
else
    grep -h 'basin:\|rror' "$SINGLE.configure.log" "$SINGLE.build.log" 2>/dev/null | tail -n 15 >&2
    note "build-single: FAILED (logs: $SINGLE.configure.log, $SINGLE.build.log)"
    SINGLE_OK=0 fail=1
fi

if [ "$SINGLE_OK" = 1 ]; then
    if [ "$GPU_OK" = 1 ]; then
        say "(b) one-process GPU tests"
        run_ctest "$SINGLE" "ctest (one process)" "${SINGLE_TESTS[@]}"
    else
        say "(b) no GPU ($GPU_NO): every binary must start and skip"
        for t in "${SINGLE_TESTS[@]}"; do expect_skip "$t" "$SINGLE/tests/cuda/$t"; done
        expect_skip basin-bench-gemm "$SINGLE/cuda/basin-bench-gemm"
        "$SINGLE/bench/step/basin-bench-step" --device cuda --steps 1 >"$PREFIX-dry-bench-step.log" 2>&1
        if grep -q 'no CUDA device' "$PREFIX-dry-bench-step.log"; then note "basin-bench-step: started, no CUDA device"
        else note "basin-bench-step: FAILED to start: $(tail -n 1 "$PREFIX-dry-bench-step.log")"; fail=1; fi
    fi
fi

# ---- (c) GEMM table and (d) training steps -------------------------------------------
if [ "$GPU_OK" = 1 ] && [ "$SINGLE_OK" = 1 ]; then
    say "(c) GEMM throughput, FP32 (TF32 off), through ops_cuda.gemm"
    "$SINGLE/cuda/basin-bench-gemm" --batch 256 --batch 1024 || { note "basin-bench-gemm: FAILED"; fail=1; }

    say "(d) training steps on GPU 0: basin against PyTorch, strict FP32 (wall time, medians of 5 repeats)"
    json() { grep '^{' | tail -n 1; }
    field() { "$PY" -c 'import json,sys; print(json.loads(sys.stdin.read())[sys.argv[1]])' "$1"; }
    printf '| model | batch | basin img/s | PyTorch img/s | basin/PyTorch | PyTorch TF32 on img/s (information) | basin copy / compute ms | PyTorch copy / compute ms |\n'
    printf '|---|---:|---:|---:|---:|---:|---|---|\n'
    # model, input, classes, batch, timed steps per repeat
    for cfgline in "mlp 1x28x28 10 256 100" "mlp 1x28x28 10 1024 100" "cnn 1x28x28 10 256 30" \
                   "cnn 1x28x28 10 1024 30" "resnet20 3x32x32 10 128 20" "resnet20 3x32x32 10 512 10" \
                   "resnet50 3x224x224 1000 32 5"; do
        read -r model input classes batch steps <<<"$cfgline"
        {
            common=(--model "$model" --input "$input" --classes "$classes" --batch "$batch" --steps "$steps"
                    --repeats 5 --warmup 3 --device cuda)
            b=$("$SINGLE/bench/step/basin-bench-step" "${common[@]}" 2>"$PREFIX-step-basin.err" | json)
            t="" t32=""
            if [ "$TORCH_OK" = 1 ]; then
                t=$("$PY" "$ROOT/bench/step/torch_step.py" "${common[@]}" --tf32 off 2>"$PREFIX-step-torch.err" | json)
                t32=$("$PY" "$ROOT/bench/step/torch_step.py" "${common[@]}" --tf32 on 2>>"$PREFIX-step-torch.err" | json)
            fi
            if [ -z "$b" ]; then
                printf '| %s | %s | FAILED | | | | | |\n' "$model $input" "$batch"; tail -n 3 "$PREFIX-step-basin.err" >&2; fail=1; continue
            fi
            bi=$(field img_s_wall <<<"$b")
            if [ -z "$t" ]; then
                printf '| %s | %s | %.0f | %s | | | %.3f / %.3f | |\n' "$model $input" "$batch" "$bi" \
                    "$([ "$TORCH_OK" = 1 ] && echo FAILED || echo skipped)" "$(field copy_ms <<<"$b")" "$(field compute_ms <<<"$b")"
                [ "$TORCH_OK" = 1 ] && { tail -n 3 "$PREFIX-step-torch.err" >&2; fail=1; }
                continue
            fi
            ti=$(field img_s_wall <<<"$t")
            t32i=$([ -n "$t32" ] && field img_s_wall <<<"$t32" || echo 0)
            printf '| %s | %s | %.0f | %.0f | %.3f | %.0f | %.3f / %.3f | %.3f / %.3f |\n' "$model $input" "$batch" "$bi" "$ti" \
                "$("$PY" -c "print($bi / $ti)")" "$t32i" "$(field copy_ms <<<"$b")" "$(field compute_ms <<<"$b")" \
                "$(field copy_ms <<<"$t")" "$(field compute_ms <<<"$t")"
        }
    done
    echo "basin/PyTorch compares strict FP32 with strict FP32 (TF32 off in both); target >= 1.0"
fi

# ---- (e) the MPI build -----------------------------------------------------------------
if [ "$MPI_OK" = 1 ]; then
    say "(e) build with the kit's Open MPI into $PREFIX-mpi"
    MPIRUN=$(find "$DEPS" -path '*/bin/mpirun.openmpi' | head -n 1)
    MPI_H=$(find "$DEPS" -path '*/openmpi/include/mpi.h' | head -n 1)
    MPI_LIB=$(find "$DEPS" -path '*/openmpi/lib/libmpi.so' | head -n 1)
    probe=$(kitenv "$MPIRUN" --oversubscribe --bind-to none -np 2 true 2>&1); prc=$?
    if [ -z "$MPIRUN" ] || [ -z "$MPI_H" ] || [ -z "$MPI_LIB" ]; then
        MPI_OK=0; note "build-mpi: skipped: the kit holds no Open MPI (mpirun, mpi.h, libmpi.so)"
    elif [ "$prc" != 0 ]; then
        MPI_OK=0; note "build-mpi: skipped: the kit's mpirun does not start here: $(printf '%s' "$probe" | grep -v '^ *$' | head -n 1)"
    fi
fi
if [ "$MPI_OK" = 1 ]; then
    MPIB=$PREFIX-mpi
    # NCCL: the toolkit's, else the one that comes with PyTorch's wheels.
    NCCL_ARGS=()
    if ! ls "$(dirname "$(command -v nvcc)")"/../lib*/libnccl.so* >/dev/null 2>&1; then
        nd=$("$PY" -c 'import nvidia.nccl, os; print(os.path.dirname(nvidia.nccl.__file__) if nvidia.nccl.__file__ else list(nvidia.nccl.__path__)[0])' 2>/dev/null)
        if [ -n "$nd" ] && [ -f "$nd/include/nccl.h" ]; then
            NCCL_ARGS=("-DNCCL_INCLUDE_DIR=$nd/include" "-DNCCL_LIBRARY=$(ls "$nd"/lib/libnccl.so* | head -n 1)")
            KIT_LIBS=$KIT_LIBS:$nd/lib
        fi
    fi
    if cmake -S "$ROOT" -B "$MPIB" "${STATIC_ARGS[@]}" "${NCCL_ARGS[@]}" \
           -DMPI_SKIP_COMPILER_WRAPPER=ON -DMPI_ASSUME_NO_BUILTIN_MPI=ON \
           "-DMPI_C_HEADER_DIR=$(dirname "$MPI_H")" "-DMPI_C_ADDITIONAL_INCLUDE_DIRS=$(dirname "$MPI_H")" \
           -DMPI_C_LIB_NAMES=mpi "-DMPI_mpi_LIBRARY=$MPI_LIB" "-DMPI_C_LIBRARIES=$MPI_LIB" \
           "-DMPIEXEC_EXECUTABLE=$MPIRUN" "-DCMAKE_EXE_LINKER_FLAGS=-Wl,-rpath-link,$KIT_LIBS" \
           >"$MPIB.configure.log" 2>&1 &&
       grep -q 'basin: NCCL' "$MPIB.configure.log" &&
       cmake --build "$MPIB" -j "$JOBS" --target test_train_cuda test_allreduce_gpu test_equivalence_cuda basin-data \
           >"$MPIB.build.log" 2>&1; then
        note "build-mpi: ok"
        if [ -f "$DATA" ]; then
            mkdir -p "$MPIB/test-data" && cp "$DATA" "$MPIB/test-data/fashion-mnist.h5"
            CTEST_FS="-FS fmnist" # the dataset came along: no import
        fi
        if [ "$GPU_OK" = 1 ]; then
            say "(f) GPU tests under MPI"
            [ ${#RUN_MPI[@]} -gt 0 ] && WRAP=kitenv run_ctest "$MPIB" "ctest (MPI)" "${RUN_MPI[@]}"
        else
            say "(f) no GPU ($GPU_NO): the MPI test binaries must start under mpirun and skip"
            R=(kitenv "$MPIRUN" --oversubscribe --bind-to none --mca btl self,vader,tcp -np 2)
            expect_skip test_train_cuda kitenv "$MPIB/tests/cuda/test_train_cuda" "$MPIB/test-data/fashion-mnist.h5" "$MPIB/out-dry"
            expect_skip test_allreduce_gpu "${R[@]}" "$MPIB/tests/cuda/test_allreduce_gpu" --supernode-size 1
            expect_skip test_equivalence_cuda "${R[@]}" "$MPIB/tests/cuda/test_equivalence_cuda" "$MPIB/test-data/fashion-mnist.h5" "$MPIB/out-dry-eq"
        fi
    else
        grep -h 'basin:\|rror' "$MPIB.configure.log" "$MPIB.build.log" 2>/dev/null | tail -n 15 >&2
        note "build-mpi: FAILED (logs: $MPIB.configure.log, $MPIB.build.log)"; fail=1
    fi
fi

say "summary"
cat "$PREFIX-summary.log"
[ "$fail" = 0 ] || exit 1
if [ "$GPUS" -eq 0 ] && [ "${BASIN_GPU_DRY:-0}" != 1 ]; then echo "gpu.sh: no GPU: nothing was measured"; exit 3; fi
exit 0
