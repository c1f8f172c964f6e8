#!/usr/bin/env bash
# Prepare, on a machine with Debian's package registry, what bench/gpu.sh
# needs on a GPU machine that has CUDA, CMake, a compiler and PyTorch but no
# Open MPI, HDF5 or OpenBLAS, no network, and an unknown Linux:
#
#   bench/gpu_prepare.sh [OUT_DIR]        (default: gpu-kit/ at the repository root)
#
# writes (git-ignored, small enough to travel with the working tree):
#   OUT_DIR/deps.tar.gz        Debian 11 "bullseye" packages unpacked with dpkg -x
#                              (no maintainer scripts run): HDF5, OpenBLAS, zlib
#                              and libaec as STATIC archives with their headers
#                              (linked into the programs: nothing of them is
#                              loaded at run time), the xxHash header (used
#                              header-only), and Open MPI 4.1 as shared
#                              libraries with mpirun and every library it
#                              loads (libevent, hwloc, pmix, libfabric, ucx,
#                              ...). Bullseye's glibc is 2.31: what is built
#                              against it runs on 2.31 and every later glibc,
#                              where Debian 12's libevent alone needs 2.36.
#   OUT_DIR/KIT                the kit's glibc floor ("glibc 2.31"), read by gpu.sh
#   OUT_DIR/fashion-mnist.h5   the first 4,096 training and 1,000 test samples of
#                              data/fashion-mnist.h5 (imported first when missing)
#
# The packages come through apt-get with a private configuration (its own
# sources list, lists and cache under a temporary folder): this machine's
# apt state is not touched. bench/gpu_roots.sh checks the kit on Debian 11
# and Debian 13 roots.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${1:-$ROOT/gpu-kit}
MIRROR=${BASIN_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=bullseye GLIBC_FLOOR=2.31
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
# Static: headers and archives. Open MPI: libopenmpi3's dependencies minus
# libc6/libgcc-s1/libstdc++6 (every Linux has them) and minus
# libhwloc-plugins (optional; it drags X11, libxml2 and OpenCL).
PACKAGES=(libhdf5-dev libaec-dev zlib1g-dev libxxhash-dev libopenblas-dev libopenblas-pthread-dev
          libopenmpi-dev libopenmpi3 openmpi-bin openmpi-common libpmix2 libhwloc15
          libevent-core-2.1-7 libevent-pthreads-2.1-7 libfabric1 libucx0 libibverbs1 ibverbs-providers
          librdmacm1 libpsm2-2 libpsm-infinipath1 libnl-3-200 libnl-route-3-200 libnuma1 libudev1
          zlib1g libssl1.1 libpciaccess0 libbsd0 libmd0 libltdl7)

die() { printf 'gpu_prepare.sh: %s\n' "$*" >&2; exit 2; }
command -v apt-get >/dev/null && command -v dpkg >/dev/null || die "needs apt-get and dpkg (a Debian machine)"
[ -f "$KEYRING" ] || die "needs $KEYRING (debian-archive-keyring)"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/lists/partial" "$tmp/cache/archives/partial" "$tmp/debs" "$tmp/root" "$OUT"
echo "deb [signed-by=$KEYRING] $MIRROR $SUITE main" >"$tmp/sources.list"
touch "$tmp/status"
APT=(-o "Dir::Etc::SourceList=$tmp/sources.list" -o Dir::Etc::SourceParts=/dev/null
     -o "Dir::State::Lists=$tmp/lists" -o "Dir::Cache=$tmp/cache" -o "Dir::State::status=$tmp/status"
     -o APT::Architecture=amd64 -o APT::Sandbox::User=root)
echo "gpu_prepare: $SUITE package lists"
apt-get "${APT[@]}" update >"$tmp/apt.log" 2>&1 || { cat "$tmp/apt.log" >&2; die "apt-get update ($SUITE) failed"; }
echo "gpu_prepare: downloading ${#PACKAGES[@]} packages"
(cd "$tmp/debs" && apt-get "${APT[@]}" download "${PACKAGES[@]}" >"$tmp/apt.log" 2>&1) ||
    { cat "$tmp/apt.log" >&2; die "apt-get download failed"; }
for f in "$tmp"/debs/*.deb; do dpkg -x "$f" "$tmp/root"; done
L=$tmp/root/usr/lib/x86_64-linux-gnu
for f in "$L/hdf5/serial/libhdf5.a" "$L/openblas-pthread/libopenblas.a" "$L/libz.a" "$L/libsz.a" "$L/libaec.a" \
         "$tmp/root/usr/bin/mpirun.openmpi"; do
    [ -e "$f" ] || die "${f#"$tmp/root"} is missing from the packages"
done
# What no build uses: documentation, Fortran and C++ bindings, the shared
# HDF5/OpenBLAS (the static ones are linked).
rm -rf "$tmp/root/usr/share/doc" "$tmp/root/usr/share/man" "$tmp/root/usr/share/locale" "$L/fortran"
find "$tmp/root" \( -name '*fortran*' -o -name '*hdf5*cpp*' -o -name '*hl_cpp*' -o -name 'liblapack*' \
                    -o -name 'libblas*' \) -prune -exec rm -rf {} +
find "$L/hdf5" "$L/openblas-pthread" -name '*.so*' -delete
echo "glibc $GLIBC_FLOOR" >"$tmp/root/KIT"
tar czf "$OUT/deps.tar.gz.tmp" -C "$tmp/root" .
mv "$OUT/deps.tar.gz.tmp" "$OUT/deps.tar.gz"
printf 'glibc %s\nsuite %s\n' "$GLIBC_FLOOR" "$SUITE" >"$OUT/KIT"

DATA=$ROOT/data/fashion-mnist.h5
# The dataset subset: imported first where this machine has none (setup.sh
# installs Debian's dataset-fashion-mnist and builds basin-data), cut with
# h5py (installed here when missing).
if [ ! -f "$DATA" ]; then
    echo "gpu_prepare: importing Fashion-MNIST into $DATA"
    "$ROOT/launch/setup.sh" >/dev/null
    "$ROOT/build/launch/basin-data" import fashion-mnist --output "$DATA" >/dev/null
fi
if ! /usr/bin/python3 -c 'import h5py' 2>/dev/null && [ "$(id -u)" = 0 ]; then
    echo "gpu_prepare: installing python3-h5py"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-h5py >/dev/null
fi
if [ ! -f "$DATA" ]; then
    echo "gpu_prepare: no $DATA: the kit has no dataset (test_train_cuda and equivalence_cuda_* then fail)"
elif ! /usr/bin/python3 -c 'import h5py' 2>/dev/null; then
    echo "gpu_prepare: no python3-h5py: the kit has no dataset (apt-get install python3-h5py, then run this again)"
else
    /usr/bin/python3 - "$DATA" "$OUT/fashion-mnist.h5.tmp" <<'PY'
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
PY
    mv "$OUT/fashion-mnist.h5.tmp" "$OUT/fashion-mnist.h5"
fi
du -sh "$OUT"/* | sed 's/^/gpu_prepare: /'
echo "gpu_prepare: carry ${OUT#"$ROOT"/}/ along to the GPU machine and run bench/gpu.sh there"
