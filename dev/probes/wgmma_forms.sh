#!/usr/bin/env bash
# A dev patch's forms of the wgmma path, each chosen by dev-only environment variables, on the GPU
# machine: the patch applied to the device's copy of the tree and built (patched_build.sh); one call
# per form and shape against a float64 reference (H = 960 has a stage whose second 64-k box lies
# wholly past H); the wgmma QKV tests with the first form after "1" (TEST_SECONDS, default 100);
# then bench_fused_rms_norm_qkv with the path forced in each form, beside the table and cuBLAS alone.
# A form is the variables' values joined by ":" (a missing one: 0).
# usage (device): OUT=$OUT bash dev/probes/wgmma_forms.sh PATCH MARKER VAR[,VAR...] ["models"] ["M values"] ["forms"]
#   dev/wgmma_stage_lines.patch MINIVLLM_DEV_WGMMA_LINES MINIVLLM_DEV_WGMMA_LINES,MINIVLLM_DEV_WGMMA_STAGES
#     forms LINES[:STAGES]: 128-byte lines of k per stage, the ring cut (dev/logs/wgmma-stage-bound-*)
#   dev/wgmma_two_ctas.patch MINIVLLM_DEV_WGMMA_CTAS MINIVLLM_DEV_WGMMA_CTAS
#     forms CTAS: one or two CTAs a multiprocessor (widths <= 64 for two)
set -u
R=$PWD t0=$(date +%s)
patch_file=$1 marker=$2 vars=$3
models=${4:-"llama-3-8b qwen3-4b qwen3-0.6b"} ms=${5:-"64 256"} forms=${6:-"1 2"}
. "$R/dev/probes/patched_build.sh"
patched_build "$patch_file" "$marker"
cd /tmp
with_form() { # FORM command...
  local f=$1 names vals i; shift
  IFS=, read -r -a names <<< "$vars"
  IFS=: read -r -a vals <<< "$f"
  local env=()
  for i in "${!names[@]}"; do env+=("${names[$i]}=${vals[$i]:-0}"); done
  env "${env[@]}" PYTHONPATH=/tmp/site "$@"
}
for f in $forms; do
  MINIVLLM_DEV_WGMMA_PRINT=1 with_form $f timeout 60 python3 $R/dev/probes/wgmma_rows_check.py 64,1024 128,4096 48,1536 \
    64,896,14,2,64 200,1000 64,960 20,2048 256,4096,32,8,128 2>&1 | grep -E 'plan|M=|Error' | sed "s/^/form $f: /"
  echo "form $f rc=${PIPESTATUS[0]}"
done
test_form=$(for f in $forms; do [ "$f" != 1 ] && { echo $f; break; }; done)
( with_form ${test_form:-1} timeout ${TEST_SECONDS:-100} python3 -m pytest -q -x -p no:cacheprovider \
    $R/tests/test_fused_rms_norm_qkv.py -k "cuda-wgmma" > $OUT/tests.log 2>&1
  echo "tests, form ${test_form:-1}: rc $?: $(tail -1 $OUT/tests.log)"; grep -E '^FAILED|^E ' $OUT/tests.log | head -6 )
echo "checks and tests at $(( $(date +%s) - t0 )) s"
run() { # name, form, extra args...
  local name=$1 f=$2; shift 2
  with_form $f timeout 100 python3 "$R/benchmarks/bench_fused_rms_norm_qkv.py" --models $models --dtypes bf16 --m $ms \
    --no-compile --no-host --progress off --no-plot --replays 9 --out "$OUT/$name" "$@" > "$OUT/$name.log" 2>&1
  echo "$name: rc $? at $(( $(date +%s) - t0 )) s"
}
run auto 1 --impls minivllm cublas
names=""
for f in $forms; do run "form${f//:/x}" $f --impls minivllm --path wgmma; names="$names form${f//:/x}"; done
python3 "$R/dev/probes/wgmma_forms_table.py" "$OUT" $names
echo "total $(( $(date +%s) - t0 )) s"
