#!/usr/bin/env bash
# QKV variants side by side on one GPU, in one call: build offline, a quick float64 check of each
# variant (scripts/qkv_smoke.py), the QKV tests once, then bench_qkv (minivllm and cuBLAS alone)
# once per variant. A variant is NAME or NAME:VAR=VALUE[,VAR=VALUE...], an environment for the
# whole run of it, e.g.  nopdl:MINIVLLM_PDL=0  or  gemm:MINIVLLM_QKV_PATH=gemm.
#   usage: scripts/qkv_variants.sh OUTDIR VARIANT...
#   M="1 16 256" MODELS="Qwen3-0.6B Llama-3-8B" DTYPES="bf16 fp16" TESTS=0 SMOKE_M="1 16" \
#       scripts/qkv_variants.sh OUT auto nopdl:MINIVLLM_PDL=0
# Logs land in OUTDIR (file names from NAME); one table of every variant's times is printed
# (scripts/variants_table.py).
set -uo pipefail
out=${1:?usage: scripts/qkv_variants.sh OUTDIR VARIANT...}
shift
[ $# -gt 0 ] || set -- default
mkdir -p "$out"
out=$(cd "$out" && pwd)
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
root=$PWD
status=0

if ! python3 -m pip install --no-build-isolation ".[test]" >"$out/build.log" 2>&1; then
    tail -n 40 "$out/build.log"
    echo "build FAILED"
    exit 1
fi

name_of() { echo "${1%%:*}"; }
env_of() { [[ $1 == *:* ]] && tr ',' '\n' <<<"${1#*:}"; }

cd /tmp
kept=()
for v in "$@"; do
    n=$(name_of "$v")
    env $(env_of "$v") timeout "${SMOKE_TIMEOUT:-180}" python3 "$root/scripts/qkv_smoke.py" \
        ${SMOKE_M:+--m $SMOKE_M} >"$out/smoke-$n.log" 2>&1
    rc=$?
    grep -E "FAIL|smoke:" "$out/smoke-$n.log" | sed "s/^/$n: /" | head -n 20
    if [ $rc -eq 0 ]; then kept+=("$v"); else echo "$n: smoke exit $rc, left out"; status=1; fi
done
[ ${#kept[@]} -gt 0 ] || exit 1

if [ "${TESTS:-1}" != 0 ]; then
    v=${kept[0]}
    env $(env_of "$v") timeout 600 python3 -m pytest "$root/tests/test_fused_rms_norm_qkv.py" -q -x -k cuda \
        -p no:cacheprovider >"$out/tests-$(name_of "$v").log" 2>&1 || status=1
    echo "QKV tests ($(name_of "$v")): $(tail -n 1 "$out/tests-$(name_of "$v").log")"
fi

read -r -a models <<<"${MODELS:-Qwen3-0.6B Llama-3-8B Qwen2.5-0.5B Qwen3-4B}"
read -r -a ms <<<"${M:-1 2 4 8 16 32 64}"
read -r -a dtypes <<<"${DTYPES:-bf16}"
for v in "${kept[@]}"; do
    n=$(name_of "$v")
    env $(env_of "$v") timeout 600 python3 "$root/benchmarks/bench_qkv.py" --impls minivllm cublas \
        --no-compile --no-host --models "${models[@]}" --m "${ms[@]}" --dtypes "${dtypes[@]}" \
        --out "$out/bench-$n" >"$out/bench-$n.log" 2>&1 || status=1
done
names=()
for v in "${kept[@]}"; do names+=("$(name_of "$v")"); done
echo "== bench_qkv: minivllm µs per variant, cuBLAS alone µs =="
python3 "$root/scripts/variants_table.py" "$out" "${names[@]}"
exit $status
