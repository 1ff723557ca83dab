#!/usr/bin/env bash
# Builds minivllm on this machine (no GPU) for the GPU machine's Python, into a folder that a device
# call carries and puts on PYTHONPATH, so the call does not spend ~5 min of device time building:
#
#   bash dev/probes/site_build.sh build/site_new                  # the working tree
#   bash dev/probes/site_build.sh build/site_old OLD_rms_norm.cu  # the tree with one file replaced
#   then pack and carry them as dev/probes/carry_unpack.sh says (the repo and the carried paths
#   together must stay under 64 MiB: a packed, stripped build is 8 MB, an unpacked one 21 MB).
#
# The module links cudart statically and opens cuBLAS at run time, so a build here loads there.
# DEVICE_PY: the device's Python version (3.12 in every session so far; pyenv has it here);
# MINIVLLM_CUDA_ARCHS defaults to 90 (H100 and H200 only). Two cores: 2-3 min a build.
# Further files to replace: pass pairs, e.g. `... build/x csrc/cuda/a.cu=OLD_a.cu`; a bare .cu
# file stands for csrc/cuda/rms_norm.cu.
set -euo pipefail
target=$(realpath -m "$1"); shift
py=${DEVICE_PY:-3.12.1}
repo=$(cd "$(dirname "$0")/../.." && pwd)
src=$(mktemp -d)
cp -r "$repo"/{setup.py,pyproject.toml,csrc,minivllm,README.md} "$src"/
for swap in "$@"; do
    case $swap in
        *=*) cp "${swap#*=}" "$src/${swap%%=*}" ;;
        *) cp "$swap" "$src/csrc/cuda/rms_norm.cu" ;;
    esac
done
rm -rf "$target"
PYENV_VERSION=$py MINIVLLM_CUDA_ARCHS=${MINIVLLM_CUDA_ARCHS:-90} \
    python -m pip install -q --no-deps --no-build-isolation --no-compile --target "$target" "$src"
rm -rf "$src"
ls -la "$target"/minivllm/_C*.so
