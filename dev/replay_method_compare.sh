#!/usr/bin/env bash
# Installs minivllm and runs the norm and QKV benches on a few shapes twice: with the old timing
# (one call per buffer set per graph, --min-replay-us 0) and the new one (buffer sets cycled until
# a replay lasts >= 300 µs, bench_fused_rms_norm_qkv's default; bench_rms_norm's is now 2000 µs), so the two methods'
# per-call times can be compared in one run.
#   usage: dev/replay_method_compare.sh OUTDIR
set -uo pipefail
out=${1:?usage: dev/replay_method_compare.sh OUTDIR}
mkdir -p "$out"; out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."
python3 -m pip install --no-build-isolation . >"$out/build.log" 2>&1 || { tail -40 "$out/build.log"; exit 1; }
root=$PWD; cd /tmp
for us in 0 300; do
    echo "== min-replay-us $us =="
    python3 "$root/benchmarks/bench_rms_norm.py" --dtypes bf16 --hidden 1024 4096 8192 --rows 1 1024 4096 \
        --no-compile --no-plot --min-replay-us $us --out "$out/norm-$us" 2>&1 | grep -E "^\[|copy" 
    python3 "$root/benchmarks/bench_fused_rms_norm_qkv.py" --models llama-3-8b qwen3-0.6b qwen2.5-0.5b --dtypes bf16 \
        --m 1 8 16 256 4096 --impls minivllm cublas torch --no-compile --no-host --no-plot \
        --min-replay-us $us --out "$out/qkv-$us" 2>&1 | grep -E "^\[|copy"
done
