#!/usr/bin/env bash
# The landing tree's GPU checks for the engine-start change: build (sm_90 only), the engine-path
# QKV tests and the prologue tests (no fuzz), then bench_attention_prologue at decode sizes (its
# "fused" column is the engine's one-kernel form). Outputs in $OUT.
set -u
repo=$PWD; t0=$(date +%s)
MINIVLLM_CUDA_ARCHS=90 python3 -m pip install -q --no-deps --no-build-isolation --target /tmp/site "$repo" >"$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
echo "built in $(( $(date +%s) - t0 )) s"
cd "$repo/tests"
PYTHONPATH=/tmp/site timeout 90 python3 -m pytest -q -x -p no:cacheprovider test_attention_prologue.py -k "not fuzz" 2>&1 | tail -n 3 | tee "$OUT/tests.txt"
PYTHONPATH=/tmp/site timeout 150 python3 -m pytest -q -x -p no:cacheprovider test_fused_rms_norm_qkv.py -k "engine and not fuzz" 2>&1 | tail -n 3 | tee -a "$OUT/tests.txt"
echo "tests done at $(( $(date +%s) - t0 )) s"
cd /tmp
PYTHONPATH=/tmp/site timeout $(( 585 - ($(date +%s) - t0) )) python3 "$repo/benchmarks/bench_attention_prologue.py" --m 1 4 8 16 --no-compile --out "$OUT" 2>&1 | grep -v Warning > "$OUT/prologue.log"; sed -n '/^µs per call/,/^op-level/p' "$OUT/prologue.log"
echo "total $(( $(date +%s) - t0 )) s"
