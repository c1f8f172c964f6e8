#!/usr/bin/env bash
# One command for a GPU machine: build basin for sm_90, run the CUDA tests,
# print the GEMM table.
#
#   bench/gpu.sh                       # from the repository root
#   BASIN_DEPS_PREFIX=/opt/deps bench/gpu.sh
#
# What it does
#   (a) configures and builds a CUDA build (sm_90 only, to halve the compile)
#       into build-gpu/ (BASIN_GPU_BUILD overrides the folder);
#   (b) runs the GPU tests: ctest -R 'cuda|gpu' (test_ops_cuda: every op
#       against the CPU; test_step_cuda: one training step against the CPU;
#       test_train_cuda: training runs and checkpoints moving between the
#       devices; allreduce_gpu_*: the GPU all-reduce under mpirun;
#       equivalence_cuda_*: 2 and 3 GPU ranks against 1). The
#       training test reads data/fashion-mnist.h5 when it is there (carry
#       it along: the GPU machine has no dataset package to import from);
#   (c) prints GEMM TFLOP/s of the mlp and cnn layer shapes through
#       ops_cuda.gemm against a large square cuBLAS sgemm
#       (build-gpu/cuda/basin-bench-gemm);
#   (d) times training steps of mlp and cnn at batch 256 and 1024 on GPU 0,
#       basin (basin-bench-step --device cuda) against PyTorch with CUDA
#       (bench/step/torch_step.py --device cuda, python3 or $BASIN_PYTHON),
#       the batch copied from host memory every step in both, and prints
#       images/s, the ratio and the per-step copy and compute times.
#   It exits non-zero when the build fails, a test fails or is skipped (a
#   skip here means no GPU was seen), or the benchmark fails.
#
# Assumptions (write them down, the GPU machine is not this one)
#   - nvcc (CUDA 12 or 13) and cmake >= 3.18 are installed; nvcc is on PATH
#     or in /usr/local/cuda/bin. A GPU and its driver are present.
#   - Open MPI, HDF5 (serial), OpenBLAS and zlib development files may be
#     missing. The top-level CMakeLists.txt requires them even for the GPU
#     tests, so they can come from Debian packages unpacked WITHOUT
#     installing them, on a machine of the same Debian/Ubuntu release:
#       apt-get download libopenmpi-dev libopenmpi3 libpmix2 libhwloc15 \
#         libevent-core-2.1-7 libevent-pthreads-2.1-7 libfabric1 libucx0 \
#         libibverbs1 librdmacm1 libpsm2-2 libpsm-infinipath1 libnl-3-200 \
#         libnl-route-3-200 libmunge2 libhdf5-dev libhdf5-103-1 libsz2 libaec0 \
#         libcurl4 libnghttp2-14 librtmp1 libssh2-1 libpsl5 libbrotli1 \
#         libldap-2.5-0 libsasl2-2 libopenblas-dev libopenblas0-pthread \
#         libopenblas-pthread-dev libgfortran5 zlib1g-dev libssl-dev
#       for f in *.deb; do dpkg -x "$f" /opt/deps; done
#     (the list is for Debian 12 "bookworm"; `apt-cache depends` names the
#     libraries of another release) and BASIN_DEPS_PREFIX=/opt/deps names
#     that root (the folder holding usr/). dpkg -x does not run maintainer
#     scripts, so the alternatives symlinks (libmpi.so, libblas.so.3,
#     mpirun) do not exist there: this script finds the real files instead.
#     Without BASIN_DEPS_PREFIX the system's packages are used.
#     bench/gpu_prepare.sh does all of this on a Debian machine and writes
#     gpu-kit/ (deps.tar.gz and a 4,096-sample fashion-mnist.h5): carried
#     along, this script unpacks it and uses it by itself.
#   - The multi-rank GPU tests start mpirun, and the one-rank ones initialize
#     MPI as singletons: Open MPI's runtime comes from the same prefix
#     (OPAL_PREFIX).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${BASIN_GPU_BUILD:-$ROOT/build-gpu}
JOBS=${BASIN_JOBS:-$(nproc 2>/dev/null || echo 4)}
ARCH=$(uname -m)-linux-gnu

say() { printf '\n== %s\n' "$*"; }
die() { printf 'gpu.sh: %s\n' "$*" >&2; exit 2; }

command -v cmake >/dev/null || die "cmake not found"
if ! command -v nvcc >/dev/null; then
    [ -x /usr/local/cuda/bin/nvcc ] || die "nvcc not found (not on PATH, not in /usr/local/cuda/bin)"
    export PATH=/usr/local/cuda/bin:$PATH
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true

CMAKE_ARGS=(-DCMAKE_BUILD_TYPE=Release -DBASIN_CUDA=ON -DBASIN_CUDA_ARCHS=90
            -DCMAKE_CUDA_ARCHITECTURES=90)

KIT=$ROOT/gpu-kit
if [ -z "${BASIN_DEPS_PREFIX:-}" ] && [ -f "$KIT/deps.tar.gz" ]; then
    BASIN_DEPS_PREFIX=$BUILD-deps
    if [ ! -f "$BASIN_DEPS_PREFIX/.unpacked" ]; then
        say "unpacking $KIT/deps.tar.gz into $BASIN_DEPS_PREFIX"
        rm -rf "$BASIN_DEPS_PREFIX" && mkdir -p "$BASIN_DEPS_PREFIX"
        tar xzf "$KIT/deps.tar.gz" -C "$BASIN_DEPS_PREFIX"
        touch "$BASIN_DEPS_PREFIX/.unpacked"
    fi
fi

if [ -n "${BASIN_DEPS_PREFIX:-}" ]; then
    P=$(cd "$BASIN_DEPS_PREFIX" && pwd) || die "BASIN_DEPS_PREFIX=$BASIN_DEPS_PREFIX is not a folder"
    [ -d "$P/usr" ] || die "BASIN_DEPS_PREFIX=$P holds no usr/ (expected the root of dpkg -x)"
    LIB=$P/usr/lib/$ARCH
    first() { find "$P" \( -type f -o -type l \) -path "$1" 2>/dev/null | sort | head -n 1; }

    MPI_H=$(first "*/openmpi/include/mpi.h")
    MPI_LIB=$(first "*/openmpi/lib/libmpi.so")
    [ -n "$MPI_LIB" ] || MPI_LIB=$(first "*/libmpi.so.[0-9]*")
    HDF5_H=$(first "*/include/hdf5/serial/hdf5.h")
    HDF5_LIB=$(first "*/hdf5/serial/libhdf5.so")
    CBLAS_H=$(first "*/openblas-pthread/cblas.h")
    [ -n "$CBLAS_H" ] || CBLAS_H=$(first "*/include/cblas.h")
    OPENBLAS_LIB=$(first "*/openblas-pthread/libopenblas.so")
    [ -n "$OPENBLAS_LIB" ] || OPENBLAS_LIB=$(first "*/libopenblas.so*")
    ZLIB_H=$(first "*/usr/include/zlib.h")
    ZLIB_LIB=$(first "*/libz.so")
    MPIRUN=$(first "*/bin/mpirun.openmpi")
    for v in MPI_H MPI_LIB HDF5_H HDF5_LIB CBLAS_H OPENBLAS_LIB; do
        [ -n "${!v}" ] || die "$v: not found under $P (see the package list at the top of this script)"
    done

    # Every folder of a shared library under the prefix, for the linker's
    # transitive look-ups (-rpath-link follows LD_LIBRARY_PATH) and at run time.
    LIBDIRS=$(find "$P" -name '*.so*' \( -type f -o -type l \) -printf '%h\n' 2>/dev/null | sort -u | paste -sd: -)
    export LD_LIBRARY_PATH=$LIBDIRS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    export OPAL_PREFIX=$P/usr # where Open MPI looks for its own files (plugins, help texts)
    export PATH=$P/usr/bin:$PATH # orted, which mpirun and singleton MPI_Init start
    export PKG_CONFIG_PATH=$LIB/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}

    CMAKE_ARGS+=(
        "-DCMAKE_PREFIX_PATH=$P/usr"
        "-DCMAKE_LIBRARY_PATH=$LIB;$(dirname "$OPENBLAS_LIB");$(dirname "$HDF5_LIB")"
        # MPI: no wrapper compiler (its paths point at /usr); name header and library.
        -DMPI_SKIP_COMPILER_WRAPPER=ON -DMPI_ASSUME_NO_BUILTIN_MPI=ON
        "-DMPI_C_HEADER_DIR=$(dirname "$MPI_H")" "-DMPI_C_ADDITIONAL_INCLUDE_DIRS=$(dirname "$MPI_H")"
        -DMPI_C_LIB_NAMES=mpi "-DMPI_mpi_LIBRARY=$MPI_LIB" "-DMPI_C_LIBRARIES=$MPI_LIB"
        # HDF5: no h5cc; the header and library folders directly.
        -DHDF5_NO_FIND_PACKAGE_CONFIG_FILE=ON
        "-DHDF5_ROOT=$P/usr/include;$LIB;$P/usr"
        "-DHDF5_C_INCLUDE_DIR=$(dirname "$HDF5_H")"
        "-DHDF5_hdf5_LIBRARY_RELEASE=$HDF5_LIB"
        # OpenBLAS: the real library, not the alternatives link.
        "-DBLAS_openblas_LIBRARY=$OPENBLAS_LIB"
        "-DCBLAS_INCLUDE_DIR=$(dirname "$CBLAS_H")"
    )
    [ -n "$ZLIB_H" ] && CMAKE_ARGS+=("-DZLIB_INCLUDE_DIR=$(dirname "$ZLIB_H")")
    [ -n "$ZLIB_LIB" ] && CMAKE_ARGS+=("-DZLIB_LIBRARY=$ZLIB_LIB")
    [ -n "$MPIRUN" ] && CMAKE_ARGS+=("-DMPIEXEC_EXECUTABLE=$MPIRUN")
    say "dependencies from $P"
    printf '  mpi.h     %s\n  libmpi    %s\n  hdf5.h    %s\n  libhdf5   %s\n  cblas.h   %s\n  openblas  %s\n' \
        "$MPI_H" "$MPI_LIB" "$HDF5_H" "$HDF5_LIB" "$CBLAS_H" "$OPENBLAS_LIB"
fi

say "(a) configure and build for sm_90 into $BUILD"
cmake -S "$ROOT" -B "$BUILD" "${CMAKE_ARGS[@]}"
[ -f "$BUILD/tests/cuda/CTestTestfile.cmake" ] ||
    die "the configure step did not enable the CUDA backend (nvcc, cuBLAS or NCCL not found): see its 'basin: CUDA' line"
cmake --build "$BUILD" -j "$JOBS" --target basin_cuda basin-bench-gemm basin-bench-step test_ops_cuda \
    test_step_cuda test_train_cuda test_allreduce_gpu test_equivalence_cuda basin-train basin-data

say "(b) CUDA tests (ctest -R cuda)"
# --no-tests=error: zero matching tests is a failure, not a pass.
CTEST_ARGS=(-R 'cuda|gpu' --output-on-failure --no-tests=error --timeout 600)
DATA=$ROOT/data/fashion-mnist.h5
[ -f "$DATA" ] || DATA=$KIT/fashion-mnist.h5
if [ -f "$DATA" ]; then
    # The dataset comes along: skip the import that would need the package.
    mkdir -p "$BUILD/test-data"
    cp "$DATA" "$BUILD/test-data/fashion-mnist.h5"
    CTEST_ARGS+=(-FS fmnist)
fi
set +e
(cd "$BUILD" && ctest "${CTEST_ARGS[@]}") | tee "$BUILD/gpu-ctest.log"
ctest_rc=${PIPESTATUS[0]}
set -e
if grep -q 'Skipped' "$BUILD/gpu-ctest.log"; then
    echo "gpu.sh: a CUDA test was SKIPPED: no usable GPU was seen (its reason: grep SKIPPED $BUILD/Testing/Temporary/LastTest.log)" >&2
    ctest_rc=1
fi

say "(c) GEMM throughput, FP32 (TF32 off), through ops_cuda.gemm"
set +e
"$BUILD/cuda/basin-bench-gemm" --batch 256 --batch 1024
bench_rc=$?
set -e

say "(d) training steps on GPU 0: basin against PyTorch (wall time, medians of 5 repeats)"
PY=${BASIN_PYTHON:-python3}
json() { grep '^{' | tail -n 1; }
field() { "$PY" -c 'import json,sys; print(json.loads(sys.stdin.read())[sys.argv[1]])' "$1"; }
step_rc=0
printf '| model | batch | basin img/s | PyTorch img/s | basin/PyTorch | basin copy / compute ms | PyTorch copy / compute ms |\n'
printf '|---|---:|---:|---:|---:|---|---|\n'
for model in mlp cnn; do
    for batch in 256 1024; do
        steps=$([ "$model" = mlp ] && echo 100 || echo 30)
        common=(--model "$model" --batch "$batch" --steps "$steps" --repeats 5 --warmup 10 --device cuda)
        b=$("$BUILD/bench/step/basin-bench-step" "${common[@]}" 2>"$BUILD/step-basin.err" | json) || true
        t=$("$PY" "$ROOT/bench/step/torch_step.py" "${common[@]}" 2>"$BUILD/step-torch.err" | json) || true
        if [ -z "$b" ] || [ -z "$t" ]; then
            printf '| %s | %s | %s | %s | | | |\n' "$model" "$batch" "${b:+ok}${b:-FAILED}" "${t:+ok}${t:-FAILED}"
            tail -n 3 "$BUILD/step-basin.err" "$BUILD/step-torch.err" >&2
            step_rc=1
            continue
        fi
        bi=$(field img_s_wall <<<"$b") ti=$(field img_s_wall <<<"$t")
        printf '| %s | %s | %.0f | %.0f | %.3f | %.3f / %.3f | %.3f / %.3f |\n' "$model" "$batch" "$bi" "$ti" \
            "$("$PY" -c "print($bi / $ti)")" "$(field copy_ms <<<"$b")" "$(field compute_ms <<<"$b")" \
            "$(field copy_ms <<<"$t")" "$(field compute_ms <<<"$t")"
    done
done
echo "target: basin/PyTorch >= 1.0 (issue 6)"

say "summary"
echo "ctest -R 'cuda|gpu': $([ "$ctest_rc" = 0 ] && echo passed || echo FAILED)"
echo "basin-bench-gemm: $([ "$bench_rc" = 0 ] && echo ok || echo "FAILED (rc $bench_rc)")"
echo "training steps: $([ "$step_rc" = 0 ] && echo ok || echo FAILED)"
[ "$ctest_rc" = 0 ] && [ "$bench_rc" = 0 ] && [ "$step_rc" = 0 ]
