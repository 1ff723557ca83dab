#!/usr/bin/env bash
# Session 67, third device call: two carried builds, site_cur (the tree) and site_mw (the tree with
# rms_norm's calls past one wave of rows on the compiled kernel too: a probe of the rule).
# 1. norm_jit_ab.py on site_mw past one wave: jit (compiled) against jit=False (the general kernel).
# 2. bench_fused_rms_norm_qkv on site_cur at M = 32-1024 (the op's norm on the compiled kernel)
#    against torch, torch.compile and cuBLAS alone.
# 3. tests/test_norm_jit.py (with its longer calls), test_batch_invariance.py and the norm tests'
#    GPU cases on site_mw (a superset of site_cur's compiled-kernel calls).
#   source dev/probes/carry_unpack.sh; COMMIT=<sha> bash dev/probes/s67_final.sh
set -uo pipefail
R=$PWD; export MINIVLLM_COMMIT=${COMMIT:?}
t0=$(date +%s)
echo "## 1. A/B past one wave (site_mw)"
ab() { PYTHONPATH=/tmp/site_mw timeout 50 python3 dev/probes/norm_jit_ab.py --no-compile "$@" 2>&1 | grep -v Warn; }
ab --hidden 896 1024 2048 4096 8192 --m 4096 32768
ab --hidden 1024 4096 --m 4096 32768 --dtype fp32
echo "## 2. QKV op, M = 32-1024 (site_cur) $(( $(date +%s) - t0 )) s"
mkdir -p "$OUT/qkv"
(cd /tmp && PYTHONPATH=/tmp/site_cur timeout 230 python3 "$R/benchmarks/bench_fused_rms_norm_qkv.py" \
    --models qwen3-0.6b llama-3-8b qwen2.5-0.5b qwen3-4b --m 32 128 512 1024 --dtypes bf16 \
    --impls minivllm torch cublas compile --autotune-m none --no-host --out "$OUT/qkv") > "$OUT/qkv/qkv.log" 2>&1
echo "qkv rc $?"; grep -v "AUTOTUNE\|Warn" "$OUT/qkv/qkv.log" | tail -45
echo "## 3. tests (site_mw) $(( $(date +%s) - t0 )) s"
cd /tmp
PYTHONPATH=/tmp/site_mw timeout 200 python3 -m pytest -q -p no:cacheprovider "$R/tests/test_norm_jit.py" > "$OUT/t-jit.log" 2>&1 &
PYTHONPATH=/tmp/site_mw timeout 200 python3 -m pytest -q -p no:cacheprovider "$R/tests/test_batch_invariance.py" > "$OUT/t-inv.log" 2>&1 &
PYTHONPATH=/tmp/site_mw timeout 200 python3 -m pytest -q -p no:cacheprovider -k cuda "$R/tests/test_rms_norm.py" \
    "$R/tests/test_fused_add_rms_norm.py" "$R/tests/test_norm_views.py" > "$OUT/t-norm.log" 2>&1 &
wait
for f in t-jit t-inv t-norm; do echo "$f: $(tail -n 1 "$OUT/$f.log")"; grep -E "^FAILED" "$OUT/$f.log" | head -5; done
echo "# total $(( $(date +%s) - t0 )) s"
