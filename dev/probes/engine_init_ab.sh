#!/usr/bin/env bash
# Device call (session 55): the GEMM engine's barriers initialized a stage a thread against one
# thread initializing all of them (a build with dev/engine_serial_init_switch.patch applied:
# MV_EXP_SERIAL_INIT=1 the product's form), the engine forced, after a fill and in chains, two
# rounds interleaved; then the engine-path tests and the engine's sanitizer runs.
#   SITE=/tmp/site_ab bash dev/probes/engine_init_ab.sh
set -u
repo=$PWD; t0=$(date +%s); site=${SITE:-/tmp/site_ab}
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
shapes=${SHAPES:-"qwen2.5-0.5b:16 qwen3-0.6b:16 llama-3.2-1b:8 falcon-7b:1 qwen2.5-7b:4 llama-3-8b:16 qwen3-4b:32 llama-3-70b:8"}
for round in 1 2; do
    for v in 1 0; do
        echo "== round $round MV_EXP_SERIAL_INIT=$v"
        (cd /tmp && MV_EXP_SERIAL_INIT=$v PYTHONPATH=$site timeout 150 python3 "$repo/dev/probes/qkv_start.py" \
            --paths engine --seps fill none -- $shapes 2>&1 | grep -v Warning)
    done
done | tee "$OUT/ab.log"
echo "timings done $(( $(date +%s) - t0 )) s"
(cd /tmp && PYTHONPATH=$site timeout 170 python3 -m pytest -q -x -n 8 -p no:cacheprovider \
    "$repo"/tests/test_fused_rms_norm_qkv.py "$repo"/tests/test_attention_prologue.py \
    -k "engine and not fuzz" > "$OUT/tests.log" 2>&1; echo "tests rc $? $(( $(date +%s) - t0 )) s"; tail -1 "$OUT/tests.log")
san=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
for tool in racecheck synccheck memcheck; do
    (cd /tmp && PYTHONPATH=$site PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout ${SAN_S:-70} "$san" --tool $tool \
        --print-limit 20 --error-exitcode 3 python3 "$repo/scripts/sanitize_cases.py" --ops qkv --dtypes bfloat16 \
        --ms 1 17 100 4096 --path engine --qkv-shapes 96:2:1:24 1024:8:2:64 2048:16:2:128 > "$OUT/san-$tool.log" 2>&1
     echo "$tool rc $? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|sanitize_cases:' "$OUT/san-$tool.log" | tr '\n' ' ')")
done
echo "total $(( $(date +%s) - t0 )) s"
