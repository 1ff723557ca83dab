#!/usr/bin/env bash
# On the GPU machine: builds register_window_probe.cu there and runs it over SHAPES (H,HEADS,KV,HD
# entries; default below: four zoo shapes and four off-zoo ones) at M = 1 4 8.
#   OUT=... bash dev/probes/register_window_run.sh
set -eu
out=${OUT:?}
nvcc -std=c++17 -O3 --expt-relaxed-constexpr -Icsrc -gencode=arch=compute_90a,code=sm_90a -DMINIVLLM_HAVE_SM90A \
    dev/probes/register_window_probe.cu csrc/cuda/fused_rms_norm_qkv/register_stream.cu \
    csrc/cuda/fused_rms_norm_qkv/bulk_stream.cu csrc/cuda/device.cu -lcublasLt -lcuda -o /tmp/rwp
for s in ${SHAPES:-4096,32,8,128 4096,32,32,128 3072,32,32,96 2560,32,8,128 3584,28,4,128 5120,32,8,128 5120,40,8,128 8192,64,8,128}; do
    timeout 120 /tmp/rwp "$s" ${MS:-1 4 8} 2>&1 | tee -a "$out/window.log"
done
