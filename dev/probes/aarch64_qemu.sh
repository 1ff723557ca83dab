#!/usr/bin/env bash
# The CPU-only module built for aarch64 with the cross compiler (Debian's gcc-aarch64-linux-gnu,
# GCC 12) and its test suite run under qemu-aarch64-static against a Debian bookworm arm64 root
# (python3.11, numpy 1.24, pytest; ml_dtypes from PyPI's aarch64 wheel). No binfmt is needed:
# qemu runs the root's python with -L. Session 68: the first such run found that GCC 12 for
# aarch64 stopped with an internal compiler error in kernels_portable.c at -O3 (norm_row.h's
# fmaxf reduction), i.e. the package did not build there.
#   apt-get install debootstrap qemu-user-static gcc-aarch64-linux-gnu
#   bash dev/probes/aarch64_qemu.sh [ROOT=/tmp/arm64root] [OUT=/tmp/a64pkg]
set -euo pipefail
root=${ROOT:-/tmp/arm64root}; out=${OUT:-/tmp/a64pkg}; site=$out-site
repo=$(cd "$(dirname "$0")/../.." && pwd)
if [ ! -x "$root/usr/bin/python3.11" ]; then
    debootstrap --foreign --arch=arm64 --variant=minbase \
        --include=python3,python3-numpy,python3-pytest,python3-dev,python3-hypothesis \
        bookworm "$root" http://deb.debian.org/debian
    for d in "$root"/var/cache/apt/archives/*.deb; do dpkg-deb -x "$d" "$root"; done  # no second stage
    ln -sf blas/libblas.so.3 "$root/usr/lib/aarch64-linux-gnu/libblas.so.3"
    ln -sf lapack/liblapack.so.3 "$root/usr/lib/aarch64-linux-gnu/liblapack.so.3"
fi
if [ ! -d "$site/ml_dtypes" ]; then
    mkdir -p "$site"
    python3 -m pip download -q --no-deps --platform manylinux2014_aarch64 --python-version 311 \
        --only-binary=:all: "ml_dtypes==0.4.1" -d "$site"
    (cd "$site" && python3 -m zipfile -e ml_dtypes-*.whl .)
fi
rm -rf "$out"; mkdir -p "$out" "$out/inc"
cp -r "$repo/minivllm" "$repo/tests" "$out/"
ln -sfn "$root/usr/include/aarch64-linux-gnu" "$out/inc/aarch64-linux-gnu"
mapfile -t srcs < <(python3 -c "
import re; s = open('$repo/setup.py').read(); i = s.index('C_SOURCES = [')
print('\n'.join(re.findall(r'\"(csrc/[^\"]+)\"', s[i:s.index(']', i)])))")
(cd "$repo" && aarch64-linux-gnu-gcc -std=c11 -O3 -Wall -Wextra -Werror -fvisibility=hidden -pthread \
    -fPIC -shared -Icsrc -isystem "$out/inc" -isystem "$root/usr/include/python3.11" "${srcs[@]}" \
    -o "$out/minivllm/_C.cpython-311-aarch64-linux-gnu.so" -lm)
cd "$out"
PYTHONPATH=$out:$site qemu-aarch64-static -L "$root" "$root/usr/bin/python3.11" -m pytest -q \
    -p no:cacheprovider -rfE tests/
