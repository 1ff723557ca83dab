#!/usr/bin/env bash
# Session 67, second device call on the carried build (build/carry/site_cur.tgz, Liger-Kernel's
# wheel beside it): bench_rms_norm's bf16 grid against the peers, then the whole test suite
# (scripts/gpu_check.sh, its logs packed into check.tgz).
#   source dev/probes/carry_unpack.sh; COMMIT=<sha> bash dev/probes/s67_grid_tests.sh
set -uo pipefail
export MINIVLLM_COMMIT=${COMMIT:?}
t0=$(date +%s); mkdir -p "$OUT/bf16"
PYTHONPATH=/tmp/site_cur:/tmp/wheels timeout 240 python3 benchmarks/bench_rms_norm.py --dtypes bf16 --out "$OUT/bf16" \
    > "$OUT/bf16/grid.log" 2>&1
echo "grid bf16 rc $? $(( $(date +%s) - t0 )) s"; tail -12 "$OUT/bf16/grid.log"
t1=$(date +%s)
MINIVLLM_SITE=/tmp/site_cur timeout 320 bash scripts/gpu_check.sh /tmp/check 2>&1 | tail -30
echo "gpu_check $(( $(date +%s) - t1 )) s"
tar -czf "$OUT/check.tgz" -C /tmp check
