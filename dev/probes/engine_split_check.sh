#!/usr/bin/env bash
# Device call for the engine's cluster split with every CTA adding its share of a tile (session 55):
# the engine-path QKV and prologue tests on a carried build, then the engine forced against the
# table and cuBLAS alone after a fill and in chains (qkv_start.py) at small and mid W, 16-256 rows.
#   SITE=/tmp/site_cs TESTS=1 SHAPES="qwen3-0.6b:16 ..." bash dev/probes/engine_split_check.sh
set -u
repo=$PWD; t0=$(date +%s); site=${SITE:-/tmp/site_cs}
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
if [ "${TESTS:-1}" = 1 ]; then
    (cd /tmp && PYTHONPATH=$site timeout 200 python3 -m pytest -q -x -n 8 -p no:cacheprovider \
        "$repo"/tests/test_fused_rms_norm_qkv.py "$repo"/tests/test_attention_prologue.py \
        -k "engine and not fuzz" > "$OUT/tests.log" 2>&1; echo "tests rc $? $(( $(date +%s) - t0 )) s"; tail -3 "$OUT/tests.log")
fi
shapes=${SHAPES:-}
if [ -z "$shapes" ]; then
    for m in qwen2.5-0.5b qwen3-0.6b gemma-3-1b qwen2.5-1.5b llama-3.2-1b gemma-2-2b; do
        for r in 16 32 64 128 256; do shapes="$shapes $m:$r"; done
    done
    for m in qwen3-4b llama-3-8b; do for r in 16 32 64; do shapes="$shapes $m:$r"; done; done
fi
(cd /tmp && PYTHONPATH=$site timeout $(( ${LIMIT:-560} - ($(date +%s) - t0) )) python3 "$repo/dev/probes/qkv_start.py" \
    --paths auto engine --seps ${SEPS:-fill none} -- $shapes 2>&1 | grep -v Warning | tee "$OUT/start.log")
echo "total $(( $(date +%s) - t0 )) s"
