#!/usr/bin/env bash
# The whole attention prologue in the GEMM engine's kernel (_path="engine_prologue"), on the GPU
# machine: build (sm_90 only), the prologue tests named by TESTS and the engine's forced QKV tests
# (residual calls included since the engine takes them), then bench_attention_prologue.py without
# torch.compile (minivllm = the table's choice, fused = the engine forced, qkv_op).
# usage (device): OUT=$OUT bash dev/probes/engine_prologue_check.sh "models" "m values"
set -u
repo=$PWD models=$1 ms=$2
t0=$(date +%s)
MINIVLLM_CUDA_ARCHS=90 python3 -m pip install -q --no-deps --no-build-isolation --target /tmp/site "$repo" \
  >"$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
echo "built in $(( $(date +%s) - t0 )) s"
cd "$repo/tests"
PYTHONPATH=/tmp/site timeout "${TEST_S:-200}" python3 -m pytest -q -x -p no:cacheprovider test_attention_prologue.py \
  -k "${TESTS:-engine_prologue or epilogue_on_each_path}" 2>&1 | tail -n 25 | tee "$OUT/tests.txt"
PYTHONPATH=/tmp/site timeout "${QKV_S:-150}" python3 -m pytest -q -x -p no:cacheprovider test_fused_rms_norm_qkv.py \
  -k "${QKV_TESTS:-cuda-engine or forced_path or engine_stream}" 2>&1 | tail -n 25 | tee -a "$OUT/tests.txt"
echo "tests done at $(( $(date +%s) - t0 )) s"
cd /tmp
PYTHONPATH=/tmp/site timeout "${BENCH_S:-300}" python3 "$repo/benchmarks/bench_attention_prologue.py" --models $models \
  --m $ms --no-compile --no-plot --out "$OUT" 2>&1 | grep -v Warning | sed -n '/^µs per call/,$p' | tee "$OUT/bench.txt"
echo "total $(( $(date +%s) - t0 )) s"
