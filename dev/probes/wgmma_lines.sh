#!/usr/bin/env bash
# The wgmma path with two 128-byte lines of k per ring stage instead of one (dev/wgmma_stage_lines.patch,
# applied to the device's copy of the tree first), on the GPU machine: does the time per k stage
# follow the stage count (a fixed chain per stage: twice the k a stage, about half the time) or the
# bytes? A form is LINES[:STAGES] (MINIVLLM_DEV_WGMMA_LINES, 1 or 2; MINIVLLM_DEV_WGMMA_STAGES cuts
# an unsplit ring, 0 none). Steps: one call per form and shape against a float64 reference (H = 960
# has a stage whose second box lies wholly past H), the wgmma QKV tests with the two-line form,
# then bench_fused_rms_norm_qkv with the path forced in each form beside the table and cuBLAS alone.
# usage (device): OUT=$OUT bash dev/probes/wgmma_lines.sh ["models"] ["M values"] ["forms"]
set -u
R=$PWD t0=$(date +%s)
models=${1:-"llama-3-8b qwen3-4b qwen3-0.6b"} ms=${2:-"64 256"} forms=${3:-"1 2"}
. "$R/dev/probes/patched_build.sh"
patched_build dev/wgmma_stage_lines.patch MINIVLLM_DEV_WGMMA_LINES
cd /tmp
with_form() { # LINES[:STAGES] command...
  local f=$1 lines stages; shift
  IFS=: read -r lines stages <<< "$f"
  MINIVLLM_DEV_WGMMA_LINES=$lines MINIVLLM_DEV_WGMMA_STAGES=${stages:-0} PYTHONPATH=/tmp/site "$@"
}
for f in $forms; do
  MINIVLLM_DEV_WGMMA_PRINT=1 with_form $f timeout 60 python3 $R/dev/probes/wgmma_rows_check.py 64,1024 128,4096 48,1536 \
    64,896,14,2,64 200,1000 64,960 20,2048 256,4096,32,8,128 2>&1 | grep -E 'plan|M=|Error' | sed "s/^/form $f: /"
  echo "form $f rc=${PIPESTATUS[0]}"
done
( with_form 2 timeout ${TEST_SECONDS:-100} python3 -m pytest -q -x -p no:cacheprovider $R/tests/test_fused_rms_norm_qkv.py \
    -k "cuda-wgmma" > $OUT/tests-lines2.log 2>&1
  echo "tests lines 2 rc $?: $(tail -1 $OUT/tests-lines2.log)"; grep -E '^FAILED|^E ' $OUT/tests-lines2.log | head -6 )
echo "checks and tests at $(( $(date +%s) - t0 )) s"
run() { # name, form, extra args...
  local name=$1 f=$2; shift 2
  with_form $f timeout 100 python3 "$R/benchmarks/bench_fused_rms_norm_qkv.py" --models $models --dtypes bf16 --m $ms \
    --no-compile --no-host --progress off --no-plot --replays 9 --out "$OUT/$name" "$@" > "$OUT/$name.log" 2>&1
  echo "$name: rc $? at $(( $(date +%s) - t0 )) s"
}
run auto 1 --impls minivllm cublas
names=""
for f in $forms; do run "lines${f//:/x}" $f --impls minivllm --path wgmma; names="$names lines${f//:/x}"; done
python3 "$R/dev/probes/wgmma_forms_table.py" "$OUT" $names
echo "total $(( $(date +%s) - t0 )) s"
