#!/usr/bin/env bash
# A QKV path's development check on one GPU: build, the QKV tests on the forced path, then
# bench_fused_rms_norm_qkv with the path forced and with the automatic table, side by side
# (minivllm and cuBLAS alone). usage: bash dev/engine_check.sh [OUTDIR] (default $OUT)
#   FORCE names the path (default engine); MODELS, MS, DTYPES override the bench's subset;
#   TESTS=0 skips the tests, TESTS_K picks them.
set -uo pipefail
out=${1:-${OUT:-engine-check-out}}
force=${FORCE:-engine}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/gpu.txt"
start=$(date +%s)
if ! python3 -m pip install --no-build-isolation . >"$out/build.log" 2>&1; then
    tail -n 40 "$out/build.log"; echo "build FAILED"; exit 1
fi
echo "built in $(( $(date +%s) - start )) s"
cd /tmp
if [ "${TESTS:-1}" = 1 ]; then
    timeout 240 python3 -m pytest -q -x -p no:cacheprovider "$OLDPWD/tests/test_fused_rms_norm_qkv.py" \
        -k "${TESTS_K:-cuda-$force or forced_path}" 2>&1 | tail -n 25 | tee "$out/tests.log"
fi
cd "$OLDPWD"
models=${MODELS:-"qwen3-0.6b llama-3-8b qwen2.5-7b falcon-7b llama-3-70b gemma-3-1b"}
ms=${MS:-"1 4 16 32 64 128 256 1024 4096"}
for path in "$force" auto; do
    extra=""; [ "$path" != auto ] && extra="--path $path"
    mkdir -p "$out/$path"
    timeout ${BENCH_TIMEOUT:-200} python3 benchmarks/bench_fused_rms_norm_qkv.py --models $models --dtypes ${DTYPES:-bf16} \
        --m $ms --impls minivllm cublas --no-compile --no-host --no-plot --replays 9 $extra \
        --out "$out/$path" >"$out/bench-$path.log" 2>&1
    echo "bench $path: rc $?"
done
python3 - "$out" "$force" <<'PY'
import json, glob, sys
out, force = sys.argv[1], sys.argv[2]
def load(p):
    f = glob.glob(f"{out}/{p}/qkv-*.json")
    return {(r["model"], r["dtype"], r["rows"]): r for r in json.load(open(f[0]))["results"]} if f else {}
e, a = load(force), load("auto")
print(f"{'model':14} {'dt':4} {'M':>5} {'floor':>7} {force:>7} {'auto':>7} {'cuBLAS':>7}  for/cuB auto/cuB for/floor")
for key in e:
    re_, ra = e[key], a.get(key)
    us = lambda r, n: r["impls"][n]["us"] if r and n in r["impls"] else float("nan")
    eu, au, cu = us(re_, "minivllm"), us(ra, "minivllm"), us(re_, "cublas")
    fail = re_["failures"].get("minivllm", "")
    print(f"{key[0]:14} {key[1]:4} {key[2]:5d} {re_['floor_us']:7.2f} {eu:7.2f} {au:7.2f} {cu:7.2f}  "
          f"{cu/eu:6.2f} {cu/au:6.2f} {re_['floor_us']/eu:6.2f} {fail}")
PY
