#!/usr/bin/env bash
# QKV variants side by side on one GPU, in one call: build offline, the bench CLI's float64
# self-check of each variant (minivllm-bench --check-only), the QKV tests once, then
# bench_fused_rms_norm_qkv (minivllm and cuBLAS alone) once per variant. A variant is NAME or
# NAME:OPTIONS, benchmark options for the whole run of it (comma-separated), e.g.
# nopdl:--pdl,off  or  tile:--path,tile  (the kernels' pdl= and _path= arguments).
#   usage: dev/qkv_variants.sh OUTDIR VARIANT...
#   M="1 16 256" MODELS="Qwen3-0.6B Llama-3-8B" DTYPES="bf16 fp16" TESTS=0 \
#       dev/qkv_variants.sh OUT auto nopdl:--pdl,off
# Logs land in OUTDIR (file names from NAME); one table of every variant's times is printed
# (dev/variants_table.py).
set -uo pipefail
out=${1:?usage: dev/qkv_variants.sh OUTDIR VARIANT...}
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
opts_of() { [[ $1 == *:* ]] && tr ',' '\n' <<<"${1#*:}"; }

cd /tmp
kept=()
for v in "$@"; do
    n=$(name_of "$v")
    # shellcheck disable=SC2046  # one option per line
    timeout "${SMOKE_TIMEOUT:-180}" python3 -m minivllm.bench --check-only --model all \
        $(opts_of "$v") >"$out/smoke-$n.log" 2>&1
    rc=$?
    grep -E "FAIL|passed" "$out/smoke-$n.log" | sed "s/^/$n: /" | head -n 20
    if [ $rc -eq 0 ]; then kept+=("$v"); else echo "$n: self-check exit $rc, left out"; status=1; fi
done
[ ${#kept[@]} -gt 0 ] || exit 1

if [ "${TESTS:-1}" != 0 ]; then
    # every GPU path in one process (the tests force each through _path=)
    timeout 600 python3 -m pytest "$root/tests/test_fused_rms_norm_qkv.py" -q -x -k cuda \
        -p no:cacheprovider >"$out/tests.log" 2>&1 || status=1
    echo "QKV tests: $(tail -n 1 "$out/tests.log")"
fi

read -r -a models <<<"${MODELS:-Qwen3-0.6B Llama-3-8B Qwen2.5-0.5B Qwen3-4B}"
read -r -a ms <<<"${M:-1 2 4 8 16 32 64}"
read -r -a dtypes <<<"${DTYPES:-bf16}"
for v in "${kept[@]}"; do
    n=$(name_of "$v")
    # shellcheck disable=SC2046
    timeout 600 python3 "$root/benchmarks/bench_fused_rms_norm_qkv.py" $(opts_of "$v") --impls minivllm cublas \
        --no-compile --no-host --models "${models[@]}" --m "${ms[@]}" --dtypes "${dtypes[@]}" \
        --out "$out/bench-$n" >"$out/bench-$n.log" 2>&1 || status=1
done
names=()
for v in "${kept[@]}"; do names+=("$(name_of "$v")"); done
echo "== bench_fused_rms_norm_qkv: minivllm µs per variant, cuBLAS alone µs =="
python3 "$root/dev/variants_table.py" "$out" "${names[@]}"
exit $status
