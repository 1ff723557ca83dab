#!/usr/bin/env bash
# The wgmma path with x's tile shared over a cluster by tensor-copy multicast (dev experiment of
# session 27), on the GPU machine: build; one checked call per share and shape; the wgmma tests with
# shares forced; bench_fused_rms_norm_qkv with the path forced at each share, beside the table and
# cuBLAS alone. The share is chosen through the dev-only MINIVLLM_DEV_WGMMA_SHARE: 1 none (the
# product's tiling), 0 the patch's byte model (any share or split), n > 1 only share n.
# The kernel is that of dev/wgmma_share_x.patch, applied to the device's copy of the tree first.
# Two steps, each within a device call's limit: "check" (build, checks, tests), then "bench".
# usage (device): OUT=$OUT bash dev/probes/wgmma_share.sh check|bench ["models"] ["M values"]
# (its output goes straight to the terminal: no pipe to tail, which prints nothing if a limit hits)
set -u
R=$PWD t0=$(date +%s)
step=${1:-check} models=${2:-"qwen3-0.6b qwen2.5-0.5b llama-3.2-1b gemma-3-1b llama-3-8b qwen3-4b"} ms=${3:-"32 64 128 256"}
patch -s -p1 -N < dev/wgmma_share_x.patch >/dev/null || grep -q MINIVLLM_DEV_WGMMA_SHARE csrc/cuda/fused_rms_norm_qkv/wgmma.cu ||
  { echo "cannot apply dev/wgmma_share_x.patch"; exit 1; }
if [ ! -d /tmp/site/minivllm ]; then
  MINIVLLM_CUDA_ARCHS=90 python3 -m pip install -q --no-deps --no-build-isolation --target /tmp/site . > $OUT/build.log 2>&1 ||
    { tail -30 $OUT/build.log; exit 1; }
  echo "built $(( $(date +%s) - t0 )) s"
fi
cd /tmp
if [ "$step" = check ]; then
for share in 1 0 2 4 8; do
  for mh in "64 1024" "128 4096" "48 1536" "64 896 14 2 64" "200 1000" "20 2048"; do
    MINIVLLM_DEV_WGMMA_PRINT=1 MINIVLLM_DEV_WGMMA_SHARE=$share PYTHONPATH=/tmp/site timeout 20 \
      python3 $R/dev/probes/wgmma_rows_check.py $mh 2>&1 | grep -E 'plan|M=|Error' | tr '\n' ' ' | sed "s/^/share $share: /"
    echo " rc=${PIPESTATUS[0]}"
  done
done
echo "checks at $(( $(date +%s) - t0 )) s"
for share in 0 2 8; do
  ( MINIVLLM_DEV_WGMMA_SHARE=$share PYTHONPATH=/tmp/site timeout 170 python3 -m pytest -q -x -p no:cacheprovider \
      $R/tests/test_fused_rms_norm_qkv.py -k "cuda-wgmma" > $OUT/tests-share$share.log 2>&1
    echo "tests share $share rc $?: $(tail -1 $OUT/tests-share$share.log)"; grep -E '^FAILED|^E ' $OUT/tests-share$share.log | head -6 ) &
done
wait
echo "tests at $(( $(date +%s) - t0 )) s"
exit 0
fi
run() { # name, share, extra args...
  local name=$1 share=$2; shift 2
  MINIVLLM_DEV_WGMMA_SHARE=$share PYTHONPATH=/tmp/site timeout 100 python3 "$R/benchmarks/bench_fused_rms_norm_qkv.py" \
    --models $models --dtypes bf16 --m $ms --no-compile --no-host --progress off --no-plot --replays 9 \
    --out "$OUT/$name" "$@" > "$OUT/$name.log" 2>&1
  echo "$name: rc $? at $(( $(date +%s) - t0 )) s"
}
run auto 1 --impls minivllm cublas  # the product's tiling (no share)
for share in 1 0 2 4 8; do run "share$share" $share --impls minivllm --path wgmma; done
python3 "$R/dev/probes/wgmma_forms_table.py" "$OUT" share1 share0 share2 share4 share8
echo "total $(( $(date +%s) - t0 )) s"
