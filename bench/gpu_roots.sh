#!/usr/bin/env bash
# Runs bench/gpu.sh's parts that need no GPU on two foreign Linux roots, to
# show that the GPU kit (bench/gpu_prepare.sh) starts on a glibc and zlib
# older and newer than the machine that made it:
#
#   bench/gpu_roots.sh make [DIR]    debootstrap Debian 11 (glibc 2.31, zlib
#                                    1.2.11) and Debian 13 (glibc 2.41, zlib
#                                    1.3) into DIR (default /work/roots)
#   bench/gpu_roots.sh check [DIR]   in each root: copy the working tree and
#                                    gpu-kit/, run bench/gpu.sh with the GPU
#                                    parts off (BASIN_GPU_DRY=1): unpack the
#                                    kit, configure, build, start every test
#                                    binary and expect 77 (no GPU)
#
# A root imitates the GPU machine: CMake, a C and C++ compiler, make and
# nothing else (no Open MPI, HDF5, OpenBLAS or zlib headers); the CUDA toolkit
# is this machine's /usr/local/cuda, bind-mounted read-only. Run as root.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MIRROR=${BASIN_DEBIAN_MIRROR:-http://deb.debian.org/debian}
DIR=${2:-/work/roots}
SUITES=(bullseye trixie)
INCLUDE=cmake,make,gcc,g++,libc6-dev

die() { printf 'gpu_roots.sh: %s\n' "$*" >&2; exit 2; }
[ "$(id -u)" = 0 ] || die "needs root (debootstrap, chroot, mount)"

make_roots() {
    command -v debootstrap >/dev/null || die "needs debootstrap (apt-get install debootstrap)"
    mkdir -p "$DIR"
    for s in "${SUITES[@]}"; do
        [ -x "$DIR/$s/usr/bin/cmake" ] && { echo "gpu_roots: $DIR/$s exists"; continue; }
        echo "gpu_roots: debootstrap $s into $DIR/$s"
        t0=$(date +%s)
        debootstrap --variant=minbase --include=$INCLUDE "$s" "$DIR/$s" "$MIRROR" >"$DIR/$s.log" 2>&1 ||
            { tail -n 20 "$DIR/$s.log" >&2; die "debootstrap $s failed (log: $DIR/$s.log)"; }
        echo "gpu_roots: $s ready in $(( $(date +%s) - t0 )) s"
    done
}

# One root: the working tree and gpu-kit/ copied in, CUDA bind-mounted
# read-only, gpu.sh run with BASIN_GPU_DRY=1 under chroot with a clean
# environment. Mounts are undone on every exit path.
check_root() {
    local s=$1 r=$DIR/$1 cuda
    cuda=$(readlink -f /usr/local/cuda)
    [ -x "$r/usr/bin/cmake" ] || die "$r is not made: bench/gpu_roots.sh make"
    [ -f "$ROOT/gpu-kit/deps.tar.gz" ] || die "no gpu-kit/: run bench/gpu_prepare.sh first"
    rm -rf "$r/src" && mkdir -p "$r/src" "$r/usr/local/cuda" "$r/proc" "$r/dev"
    (cd "$ROOT" && git ls-files -co --exclude-standard -z | tar --null -cf - -T - gpu-kit) | tar -xf - -C "$r/src"
    mount --bind "$cuda" "$r/usr/local/cuda"
    mount -o remount,ro,bind "$r/usr/local/cuda"
    mount -t proc proc "$r/proc"
    mount --bind /dev "$r/dev"
    local t0 rc
    t0=$(date +%s)
    chroot "$r" /usr/bin/env -i PATH=/usr/local/cuda/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
        BASIN_GPU_DRY=1 BASIN_JOBS="$(nproc)" /bin/bash /src/bench/gpu.sh >"$DIR/$s.check.log" 2>&1
    rc=$?
    umount "$r/dev" "$r/proc" "$r/usr/local/cuda"
    {
        printf '### %s: %s, zlib %s, cmake %s, gcc %s\n\n' "$s" "$(chroot "$r" getconf GNU_LIBC_VERSION)" \
            "$(chroot "$r" dpkg-query -W -f '${Version}' zlib1g)" \
            "$(chroot "$r" cmake --version | sed -n 's/cmake version //p')" "$(chroot "$r" gcc -dumpversion)"
        printf 'gpu.sh (BASIN_GPU_DRY=1): exit %s after %s s. Installed besides minbase: %s (no MPI, HDF5,\n' \
            "$rc" "$(( $(date +%s) - t0 ))" "$INCLUDE"
        printf 'OpenBLAS or zlib headers); CUDA: this machine'"'"'s %s, bind-mounted.\n\n```\n' "$cuda"
        sed -n '/^gpu.sh: [0-9]* GPU/,/^plan: allreduce_gpu_np4_k2/p' "$DIR/$s.check.log"
        echo '...'
        sed -n '/^== summary/,$p' "$DIR/$s.check.log"
        printf '```\n\n'
    } >>"$REPORT"
    echo "gpu_roots: $s: gpu.sh exit $rc ($DIR/$s.check.log)"
    return "$rc"
}

check_roots() {
    REPORT=${BASIN_ROOTS_REPORT:-$DIR/gpu-roots.md}
    : >"$REPORT"
    trap 'for s in "${SUITES[@]}"; do for m in dev proc usr/local/cuda; do mountpoint -q "$DIR/$s/$m" && umount "$DIR/$s/$m"; done; done' EXIT
    local rc=0
    for s in "${SUITES[@]}"; do check_root "$s" || rc=1; done
    echo "gpu_roots: report in $REPORT"
    return "$rc"
}

case "${1:-}" in
    make) make_roots ;;
    check) check_roots ;;
    *) die "usage: bench/gpu_roots.sh make|check [DIR]" ;;
esac
