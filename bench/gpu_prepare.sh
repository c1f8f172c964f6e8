#!/usr/bin/env bash
# Prepare, on a machine with Debian's package registry, what bench/gpu.sh
# needs on a GPU machine that has CUDA, cmake and PyTorch but no Open MPI,
# HDF5 or OpenBLAS and no network:
#
#   bench/gpu_prepare.sh [OUT_DIR]        (default: gpu-kit/ at the repository root)
#
# writes (both git-ignored, small enough to travel with the working tree):
#   OUT_DIR/deps.tar.gz          Open MPI (runtime, mpirun, headers), HDF5
#                                (serial), OpenBLAS, zlib and their libraries:
#                                the Debian packages unpacked with dpkg -x (no
#                                maintainer scripts run), documentation and
#                                static libraries left out
#   OUT_DIR/fashion-mnist.h5     the first 4,096 training and 1,000 test samples
#                                of data/fashion-mnist.h5 (same layout), enough
#                                for every GPU test
# On the GPU machine, `bench/gpu.sh` finds gpu-kit/ by itself: it unpacks the
# tarball into a temporary folder, points BASIN_DEPS_PREFIX at it and uses the
# small dataset when data/fashion-mnist.h5 is not there.
#
# The package list is Debian 12 "bookworm"'s; apt-get download fetches the
# exact versions this machine would install.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${1:-$ROOT/gpu-kit}
PACKAGES=(libopenmpi-dev libopenmpi3 openmpi-bin openmpi-common libpmix2 libhwloc15
          libevent-core-2.1-7 libevent-pthreads-2.1-7 libfabric1 libucx0 libibverbs1 librdmacm1
          libpsm2-2 libpsm-infinipath1 libnl-3-200 libnl-route-3-200 libmunge2
          libhdf5-dev libhdf5-103-1 libsz2 libaec0 libcurl4 libnghttp2-14 librtmp1 libssh2-1
          libpsl5 libbrotli1 libldap-2.5-0 libsasl2-2
          libopenblas-dev libopenblas0-pthread libopenblas-pthread-dev libgfortran5
          zlib1g-dev libssl-dev)

die() { printf 'gpu_prepare.sh: %s\n' "$*" >&2; exit 2; }
command -v apt-get >/dev/null && command -v dpkg >/dev/null || die "needs apt-get and dpkg (a Debian machine)"
DATA=$ROOT/data/fashion-mnist.h5
[ -f "$DATA" ] || die "$DATA is missing: run ./launch/train.sh once (it imports the dataset), or basin-data import"
[ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import h5py' 2>/dev/null ||
    die "needs Debian's python3-h5py (apt-get install python3-h5py)"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/debs" "$tmp/root" "$OUT"
echo "gpu_prepare: downloading ${#PACKAGES[@]} packages"
(cd "$tmp/debs" && apt-get download "${PACKAGES[@]}" >/dev/null 2>"$tmp/apt.err") ||
    { cat "$tmp/apt.err" >&2; die "apt-get download failed (run apt-get update first?)"; }
for f in "$tmp"/debs/*.deb; do dpkg -x "$f" "$tmp/root"; done
rm -rf "$tmp/root/usr/share/doc" "$tmp/root/usr/share/man" "$tmp/root/usr/share/locale" \
       "$tmp/root/usr/lib/x86_64-linux-gnu/fortran"
find "$tmp/root" -name '*.a' -delete
tar czf "$OUT/deps.tar.gz.tmp" -C "$tmp/root" .
mv "$OUT/deps.tar.gz.tmp" "$OUT/deps.tar.gz"

/usr/bin/python3 - "$DATA" "$OUT/fashion-mnist.h5.tmp" <<'EOF'
import sys
import h5py
src, dst = sys.argv[1], sys.argv[2]
keep = {"train": 4096, "test": 1000}
with h5py.File(src, "r") as a, h5py.File(dst, "w") as b:
    for k, v in a.attrs.items():
        b.attrs[k] = v
    for split, n in keep.items():
        g = b.create_group(split)
        for k, v in a[split].attrs.items():
            g.attrs[k] = v
        for name in ("images", "labels"):
            d = a[split][name]
            out = g.create_dataset(name, data=d[:n])
            for k, v in d.attrs.items():
                out.attrs[k] = v
EOF
mv "$OUT/fashion-mnist.h5.tmp" "$OUT/fashion-mnist.h5"
du -sh "$OUT"/* | sed 's/^/gpu_prepare: /'
echo "gpu_prepare: carry ${OUT#"$ROOT"/}/ along to the GPU machine and run bench/gpu.sh there"
