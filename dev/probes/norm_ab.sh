#!/usr/bin/env bash
# A/B of the norm kernels on a GPU machine, in one call: the tree's csrc/cuda/rms_norm.cu against
# an older one, both built side by side; norm_odd_check under compute-sanitizer; the GPU norm tests
# on the tree's build; bench_rms_norm of both on the given shapes (Liger-Kernel, torch and HF eager
# beside the tree's); then a table (norm_sites_table.py, old first). Session 17's runs (dev/logs/norm-lanes-kernel-*,
# norm-reference-batched-loads-*, norm-session17-*) were local drafts of this script (dev/ab_old/v11-v17,
# not in git); this consolidated form first ran in session 18 (dev/logs/norm-wide-rows-*-2026-11-24.log).
#
#   git show REV:csrc/cuda/rms_norm.cu > OLD.cu          # on this machine: the device has no .git
#   nvcc -std=c++17 -O3 --expt-relaxed-constexpr -Icsrc -arch=sm_90 dev/probes/norm_odd_check.cu \
#        csrc/cuda/rms_norm.cu csrc/cuda/device.cu -o ODD_CHECK
#   OUT=... bash dev/probes/norm_ab.sh OLD.cu ODD_CHECK "1x121 16x999 4096x4096" [WHEEL_DIR]
#
# AB_DTYPES: the benchmark's dtypes (default "bf16 fp32"). AB_TESTS=0: no GPU norm tests (a call
# that runs the whole GPU check apart). AB_SAN_S: each sanitizer's time limit in seconds.
# With AB_SITE_NEW and AB_SITE_OLD set (folders of both builds made on this machine for the
# device's Python by dev/probes/site_build.sh and carried), nothing is built there: OLD.cu is then
# only a name, and the call saves the ~5 min the two builds take.
#
# WHEEL_DIR: where a liger_kernel wheel lies (carried to the device); none: no Liger column.
# Shapes are M x H; the default grid is cut to 1 x 4096 (--hidden 4096 --rows 1), so a call of a
# dozen shapes in bf16 and float32 fits the device's 600 s with both builds.
set -uo pipefail
old_cu=$1; odd_check=$2; shapes=$3; wheels=${4:-}
out=${OUT:?set OUT to a results folder}; repo=$PWD; export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/gpu.txt"
liger=""
if [ -n "$wheels" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/ab_liger "$wheels"/*.whl && liger=/tmp/ab_liger
fi
site_new=${AB_SITE_NEW:-/tmp/ab_site_new}; site_old=${AB_SITE_OLD:-/tmp/ab_site_old}
if [ -z "${AB_SITE_NEW:-}" ]; then
    rm -rf /tmp/ab_old_src /tmp/ab_site_old /tmp/ab_site_new && mkdir /tmp/ab_old_src
    cp -r "$repo"/{setup.py,pyproject.toml,csrc,minivllm,README.md} /tmp/ab_old_src/ && cp "$old_cu" /tmp/ab_old_src/csrc/cuda/rms_norm.cu
    t0=$(date +%s)
    (MINIVLLM_CUDA_ARCHS=90 python3 -m pip install -q --no-deps --no-build-isolation --target /tmp/ab_site_new "$repo" >/tmp/ab_build_new.log 2>&1; echo "new build rc $? $(( $(date +%s) - t0 )) s") &
    (MINIVLLM_CUDA_ARCHS=90 python3 -m pip install -q --no-deps --no-build-isolation --target /tmp/ab_site_old /tmp/ab_old_src >/tmp/ab_build_old.log 2>&1; echo "old build rc $? $(( $(date +%s) - t0 )) s") &
fi
# shellcheck source=dev/probes/norm_checks.sh
. "$repo"/dev/probes/norm_checks.sh
norm_sanitizers "$odd_check" "$out"
wait
[ "${AB_TESTS:-1}" = 0 ] || norm_gpu_tests "$site_new" "$out"
# shellcheck disable=SC2086
for v in new old; do
    t0=$(date +%s)
    extra=""; path=$site_new; [ $v = old ] && path=$site_old
    if [ $v = new ] && [ -n "$liger" ]; then path=$path:$liger; else extra=--no-liger; fi
    PYTHONPATH=$path timeout 160 python3 benchmarks/bench_rms_norm.py --dtypes ${AB_DTYPES:-bf16 fp32} --shapes $shapes \
        --hidden 4096 --rows 1 $extra --no-compile --no-plot --out /tmp/ab_res_$v > "$out/bench-$v.log" 2>&1
    echo "bench $v rc $? $(( $(date +%s) - t0 )) s"; cp /tmp/ab_res_$v/norm-*.json "$out/1-$v.json"
done
python3 dev/probes/norm_sites_table.py "$out" old new | tee "$out/table.txt"
