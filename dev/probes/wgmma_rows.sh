#!/usr/bin/env bash
# The one-kernel wgmma path's tile forms side by side (dev experiment of session 27), on the GPU
# machine: 64-row tiles (consumers on alternate k stages) against 128-row tiles (a consumer per 64
# rows of every stage), gamma * x in registers (A from registers) against rewritten in shared
# memory (A from shared memory), chosen through the dev-only MINIVLLM_DEV_WGMMA="rows,staged".
# The kernel forms are those of dev/wgmma_rows128_staged.patch, applied to the device's copy of the
# tree first (dev/logs/wgmma-rows128-staged-nvidia-h200-2026-11-25.log: not kept).
# usage (device): OUT=$OUT bash dev/probes/wgmma_rows.sh build|test|bench ["models"] ["M values"]
set -u
repo=$PWD t0=$(date +%s)
patch -s -p1 -N < dev/wgmma_rows128_staged.patch >/dev/null || grep -q MINIVLLM_DEV_WGMMA csrc/cuda/fused_rms_norm_qkv/wgmma.cu ||
  { echo "cannot apply dev/wgmma_rows128_staged.patch"; exit 1; }
step=${1:-all} models=${2:-"qwen3-0.6b qwen2.5-0.5b llama-3.2-1b gemma-3-1b llama-3-8b qwen3-4b"}
ms=${3:-"64 128 256 512"}
if [ "$step" = build ] || [ "$step" = all ]; then
  MINIVLLM_CUDA_ARCHS=90 python3 -m pip install -q --no-deps --no-build-isolation --target /tmp/site "$repo" \
    >"$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
  echo "built in $(( $(date +%s) - t0 )) s"
fi
cd /tmp
if [ "$step" = test ] || [ "$step" = build ] || [ "$step" = all ]; then
  for form in 128,0 128,1 64,1; do
    ( MINIVLLM_DEV_WGMMA=$form PYTHONPATH=/tmp/site timeout 300 python3 -m pytest -q -x -p no:cacheprovider \
        "$repo/tests/test_fused_rms_norm_qkv.py" -k "cuda-wgmma or forced_path" > "$OUT/tests-${form/,/_}.log" 2>&1
      echo "tests $form: rc $? at $(( $(date +%s) - t0 )) s: $(tail -n 1 "$OUT/tests-${form/,/_}.log")" ) &
  done
  wait
fi
if [ "$step" = bench ] || [ "$step" = all ]; then
  run() { # name, env form, extra args...
    local name=$1 form=$2; shift 2
    MINIVLLM_DEV_WGMMA=$form PYTHONPATH=/tmp/site timeout 200 python3 "$repo/benchmarks/bench_fused_rms_norm_qkv.py" \
      --models $models --dtypes bf16 --m $ms --no-compile --no-host --progress off --no-plot --replays 9 \
      --out "$OUT/$name" "$@" > "$OUT/$name.log" 2>&1
    echo "$name: rc $? at $(( $(date +%s) - t0 )) s"
  }
  run auto 0,0 --impls minivllm cublas
  for form in 64,0 128,0 64,1 128,1; do run "wgmma-${form/,/_}" $form --impls minivllm --path wgmma; done
  python3 "$repo/dev/probes/wgmma_forms_table.py" "$OUT" wgmma-64_0 wgmma-128_0 wgmma-64_1 wgmma-128_1
fi
echo "total $(( $(date +%s) - t0 )) s"
