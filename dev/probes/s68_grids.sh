#!/usr/bin/env bash
# Session 68, second device call on the carried build (build/carry/site_s68.tgz, Liger-Kernel's
# wheel beside it): bench_rms_norm at rows of a head (H 64-256, 16-262144 rows: per-head q/k
# norms) in bf16, then the fp16 and float32 grids (the compiled kernels' first run there).
#   source dev/probes/carry_unpack.sh; COMMIT=<sha> bash dev/probes/s68_grids.sh
set -uo pipefail
export MINIVLLM_COMMIT=${COMMIT:?}
t0=$(date +%s)
grid() {  # grid NAME LIMIT ARGS...: one bench_rms_norm run into $OUT/NAME
    local name=$1 limit=$2; shift 2; mkdir -p "$OUT/$name"
    PYTHONPATH=/tmp/site_s68:/tmp/wheels timeout "$limit" python3 benchmarks/bench_rms_norm.py "$@" \
        --out "$OUT/$name" > "$OUT/$name/grid.log" 2>&1
    echo "## $name rc $? at $(( $(date +%s) - t0 )) s"; grep -v "Warn\|warn" "$OUT/$name/grid.log" | tail -8
}
grid heads 150 --dtypes bf16 --hidden 64 128 256 --rows 16 128 1024 8192 65536 262144 --shapes none
grid fp16 200 --dtypes fp16
grid fp32 200 --dtypes fp32
