#!/usr/bin/env bash
# Session 67, one device call on a carried build of the tree (build/carry/site_cur.tgz,
# dev/probes/site_build.sh): the whole test suite (scripts/gpu_check.sh), compute-sanitizer
# memcheck and racecheck over the norm cases (the run-time compiled kernels take their short and
# one-wave calls), then the compiled kernels against the built-in ones past a row per SM
# (norm_jit_ab.py), where the compiled kernel now takes every call the lanes kernels take.
#   source dev/probes/carry_unpack.sh; bash dev/probes/s67_check.sh
set -uo pipefail
R=$PWD
t0=$(date +%s)
echo "## scripts/gpu_check.sh"
MINIVLLM_SITE=/tmp/site_cur timeout 330 bash scripts/gpu_check.sh "$OUT/check" 2>&1 | tail -22
echo "gpu_check $(( $(date +%s) - t0 )) s"
export PYTHONPATH=/tmp/site_cur
san=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
for tool in memcheck racecheck; do
    t1=$(date +%s)
    (cd /tmp && PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 75 "$san" --tool $tool --print-limit 20 --error-exitcode 3 \
        python3 "$R/scripts/sanitize_cases.py" --ops rms_norm fused_add_rms_norm --dtypes bfloat16 float32) \
        > "$OUT/sanitizer-norm-$tool.log" 2>&1
    echo "$tool rc $? $(( $(date +%s) - t1 )) s: $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|sanitize_cases:' "$OUT/sanitizer-norm-$tool.log" | tr '\n' ' ')"
done
echo "## A/B: compiled (jit) against built-in (lanes) kernels; - PDL off, + PDL on"
ab() { timeout 60 python3 dev/probes/norm_jit_ab.py --no-compile "$@" 2>&1 | grep -v Warn; }
ab --hidden 1024 2048 4096 8192 --m 600 1024 2048
ab --hidden 896 1024 4096 8192 --m 1024 4096 32768 --op fused_add_rms_norm
ab --hidden 5120 8192 --m 1 64
ab --hidden 1024 4096 --m 64 600 2048 --dtype fp32
ab --hidden 1024 4096 --m 1024 8192 --dtype fp32 --op fused_add_rms_norm
echo "# total $(( $(date +%s) - t0 )) s"
