#!/usr/bin/env bash
# On the GPU machine: today's product figures into OUT on a carried build (build/carry_c/SITE.tgz,
# the Liger-Kernel wheel beside it): the QKV zoo at decode rows (bench_fused_rms_norm_qkv, bf16,
# chains of the op's own calls, no torch.compile), then bench_rms_norm at the rows of 129-256
# 16-byte vectors that session 53's rule sends to the pair kernel in short calls, PDL on and off.
#   SITE=site_final COMMIT=<the build's commit> bash dev/probes/results_refresh.sh
set -u
export MINIVLLM_COMMIT=${COMMIT:?} PYTHONUNBUFFERED=1
S=${SITE:?}
tar -xzf build/carry_c/$S.tgz -C /tmp
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/wheels build/carry_c/*.whl
echo "# $(nvidia-smi --query-gpu=name,clocks.max.sm,driver_version --format=csv,noheader | head -1), $(date -u +%FT%TZ)"
t0=$(date +%s); mkdir -p "$OUT/qkv"
PYTHONPATH=/tmp/$S timeout ${QKV_S:-240} python3 benchmarks/bench_fused_rms_norm_qkv.py --m 1 2 4 8 16 --dtypes bf16 \
    --impls torch cublas --no-compile --no-host --progress off --out "$OUT/qkv" > "$OUT/qkv/bench.log" 2>&1
echo "qkv rc $? $(( $(date +%s) - t0 )) s"
for pdl in on off; do
    t0=$(date +%s); mkdir -p "$OUT/norm-pdl-$pdl"
    PYTHONPATH=/tmp/$S:/tmp/wheels timeout ${NORM_S:-150} python3 benchmarks/bench_rms_norm.py --dtypes bf16 fp32 \
        --hidden 768 1536 2048 --rows 1 4 16 64 132 --shapes none --pdl $pdl --out "$OUT/norm-pdl-$pdl" \
        > "$OUT/norm-pdl-$pdl/bench.log" 2>&1
    echo "norm pdl $pdl rc $? $(( $(date +%s) - t0 )) s"
done
echo "# end $(date -u +%FT%TZ)"
