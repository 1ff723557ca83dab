#!/usr/bin/env bash
# What stream-K buys the GEMM engine: two builds side by side (MV_ENGINE_EXPERIMENT 0, stream-K,
# and 2, whole tiles per CTA; csrc/cuda/fused_rms_norm_qkv/engine.cu), each timed with the engine
# forced; variant 0 also with the automatic table and cuBLAS. (The run of 2026-11-23 also built a
# variant 1 that skipped the helpers' work; the bench's self-check rightly refused to time it.) usage: bash dev/engine_variants.sh [OUTDIR] (default $OUT)
set -uo pipefail
out=${1:-${OUT:-engine-variants-out}}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
root=$PWD
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/gpu.txt"
for v in 0 2; do
    rm -rf /tmp/v$v; mkdir -p /tmp/v$v
    cp -r csrc minivllm setup.py pyproject.toml README.md /tmp/v$v/
    (cd /tmp/v$v && MINIVLLM_EXTRA_NVCCFLAGS=-DMV_ENGINE_EXPERIMENT=$v python3 setup.py -q build_ext --inplace \
        >"$out/build-$v.log" 2>&1; echo "build $v: rc $?") &
done
wait
models=${MODELS:-"llama-3-8b llama-3-70b qwen3-0.6b"}
ms=${MS:-"1 16 64 128 256"}
for v in 0 2; do
    impls="minivllm"; [ $v = 0 ] && impls="minivllm cublas"
    mkdir -p "$out/v$v"
    PYTHONPATH=/tmp/v$v timeout 120 python3 "$root/benchmarks/bench_fused_rms_norm_qkv.py" --models $models \
        --dtypes bf16 --m $ms --impls $impls --no-compile --no-host --no-plot --replays 7 --path engine \
        --out "$out/v$v" >"$out/bench-v$v.log" 2>&1
    echo "bench v$v: rc $?"
done
PYTHONPATH=/tmp/v0 timeout 120 python3 "$root/benchmarks/bench_fused_rms_norm_qkv.py" --models $models --dtypes bf16 \
    --m $ms --impls minivllm --no-compile --no-host --no-plot --replays 7 --out "$out/auto" >"$out/bench-auto.log" 2>&1
python3 - "$out" <<'PY'
import glob, json, sys
out = sys.argv[1]
def load(d):
    f = glob.glob(f"{out}/{d}/qkv-*.json")
    return {(r["model"], r["rows"]): r for r in json.load(open(f[0]))["results"]} if f else {}
runs = {d: load(d) for d in ("v0", "v2", "auto")}
us = lambda d, k, n="minivllm": runs[d].get(k, {}).get("impls", {}).get(n, {}).get("us", float("nan"))
print("engine us: v0 product (stream-K), v2 whole tiles per CTA; auto table; cuBLAS; floor")
print(f"{'model':12} {'M':>4} {'v0':>7} {'v2':>7} {'auto':>7} {'cuBLAS':>7} {'floor':>7}")
for k in runs["v0"]:
    print(f"{k[0]:12} {k[1]:4d} " + " ".join(f"{us(d, k):7.2f}" for d in ("v0", "v2", "auto"))
          + f" {us('v0', k, 'cublas'):7.2f} {runs['v0'][k]['floor_us']:7.2f}")
PY
