#!/usr/bin/env bash
# The tensor-copy stream's tail boxes on the GPU machine: build (sm_90) and run its tests in three
# processes side by side: the tail-size test and each forced path once, then every QKV test on the
# forced bulk path (two halves); last, the bulk path and the table at 1-2 rows on the shapes whose
# tails changed most (Phi-3-mini, Falcon-7B), beside cuBLAS alone.   usage: bash dev/probes/bulk_tail_tests.sh
out=${OUT:-/tmp/bulk_tail_out}
mkdir -p "$out"
repo=$PWD
t0=$(date +%s)
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/gpu.txt"
MINIVLLM_CUDA_ARCHS=90 python3 -m pip install -q --no-deps --no-build-isolation --target /tmp/site . >"$out/build.log" 2>&1 ||
    { tail -20 "$out/build.log"; exit 1; }
echo "build $(( $(date +%s) - t0 )) s"
cd "$repo/tests"
sel=("bulk_stream_last_tile or forced_path or engine_stream_k or engine_takes"
     "cuda-bulk and (model_shapes or hidden_sizes or rows or skinny or long)"
     "cuda-bulk and not (model_shapes or hidden_sizes or rows or skinny or long)")
for i in 0 1 2; do
    PYTHONPATH=/tmp/site timeout 270 python3 -m pytest -q -x -rs -p no:cacheprovider test_fused_rms_norm_qkv.py \
        -k "${sel[$i]}" >"$out/tests-$i.log" 2>&1 &
done
wait
for i in 0 1 2; do echo "tests $i (${sel[$i]}): $(tail -n 1 "$out/tests-$i.log")"; done
cd "$repo"
PYTHONPATH=/tmp/site timeout 60 python3 benchmarks/bench_fused_rms_norm_qkv.py --models Phi-3-mini Falcon-7B --dtypes bf16 \
    --m 1 2 --no-compile --no-host --no-plot --impls minivllm cublas --out "$out/bench" >"$out/bench.log" 2>&1
grep -A4 "^Phi-3-mini\|^Falcon-7B" "$out/bench.log"
echo "total $(( $(date +%s) - t0 )) s"
