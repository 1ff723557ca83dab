#!/usr/bin/env bash
# The QKV op on real model shapes outside the benchmark's zoo (issue 29: "other real model shapes,
# not in your zoo, are measured against your work"), on the GPU machine: builds the tree (sm_90),
# then bench_fused_rms_norm_qkv.py on those shapes (bf16; minivllm, cuBLAS alone, torch; no
# torch.compile), then the same at few rows with each of the table's decode-to-mid paths forced,
# so that a path the table passes over can be seen beating its choice. Results under $OUT.
# usage (device): OUT=$OUT bash dev/probes/offzoo_qkv.sh ["M values"] ["forced M values"] ["forced paths"] ["shapes"]
set -u
ms=${1:-"1 2 4 8 16 32 64 128 256 1024"} forced_ms=${2:-"1 4 16 32 64"} forced_paths=${3:-"engine deferred cublaslt"}
# H:heads:kv_heads:head_dim of Qwen2.5-3B, Qwen2.5-14B, Qwen3-1.7B, Gemma-2-9B, Gemma-2-27B,
# Mistral-Nemo-12B, Phi-3-medium, SmolLM2-1.7B, TinyLlama-1.1B, Yi-34B, Gemma-3-4B, Llama-3.2-3B,
# StarCoder2-3B, SmolLM2-360M (from their configs)
shapes="2048:16:2:128 5120:40:8:128 2048:16:8:128 3584:16:8:256 4608:32:16:128 5120:32:8:128 5120:40:10:128
        2048:32:32:64 2048:32:4:64 7168:56:8:128 2560:8:4:256 3072:24:8:128 3072:24:2:128 960:15:5:64"
shapes=${4:-$shapes}
repo=$PWD t0=$(date +%s)
MINIVLLM_CUDA_ARCHS=90 python3 -m pip install -q --no-deps --no-build-isolation --target /tmp/site "$repo" >"$OUT/build.log" 2>&1 ||
  { tail -40 "$OUT/build.log"; exit 1; }
echo "built in $(( $(date +%s) - t0 )) s"
cd /tmp
run() { # name, extra args...
  local name=$1; shift
  PYTHONPATH=/tmp/site timeout 300 python3 "$repo/benchmarks/bench_fused_rms_norm_qkv.py" --models $shapes --dtypes bf16 \
    --no-compile --no-host --progress off --no-plot --out "$OUT/$name" "$@" > "$OUT/$name.log" 2>&1
  echo "$name: rc $? at $(( $(date +%s) - t0 )) s"
}
run auto --m $ms --impls minivllm cublas torch
for p in $forced_paths; do run "path-$p" --m $forced_ms --impls minivllm --path $p; done
# the path the table takes for each shape and M (the benchmark does not record it)
PYTHONPATH=/tmp/site python3 - "$shapes" "$ms" > "$OUT/paths.txt" 2>&1 <<'PY'
import sys, torch, minivllm
from minivllm import _C
for s in sys.argv[1].split():
    h, nq, nkv, d = map(int, s.split(":"))
    n = (nq + 2 * nkv) * d
    w = torch.randn(n, h, device="cuda", dtype=torch.bfloat16)
    g = torch.randn(h, device="cuda", dtype=torch.bfloat16)
    taken = []
    for m in map(int, sys.argv[2].split()):
        minivllm.FusedRMSNormQKV.forward(torch.randn(m, h, device="cuda", dtype=torch.bfloat16), g, w, nq, nkv)
        taken.append(f"{m}:{_C.qkv_last_gpu_path()}")
    print(s, " ".join(taken))
PY
echo "total $(( $(date +%s) - t0 )) s"
