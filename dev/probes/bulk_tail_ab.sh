#!/usr/bin/env bash
# The tensor-copy W stream's last tile in 4-feature boxes (bulk_stream.cu), before and after in one
# run: builds the tree and the commit $OLD (default HEAD~1) side by side (sm_90), times the bulk path
# forced in both and the new table's choice beside cuBLAS alone and the engine at 1-2 rows on every
# preset, bf16, then a short test run of the new bulk path.   usage (GPU machine, repo root):
#   [OLD=rev] bash dev/probes/bulk_tail_ab.sh      (outputs under $OUT)
out=${OUT:-/tmp/bulk_tail_out}
mkdir -p "$out"
repo=$PWD
t0=$(date +%s)
rm -rf /tmp/ab_old_src && mkdir -p /tmp/ab_old_src && git archive "${OLD:-HEAD~1}" | tar -x -C /tmp/ab_old_src ||
    { echo "git archive ${OLD:-HEAD~1} failed"; exit 1; }
(MINIVLLM_CUDA_ARCHS=90 python3 -m pip install -q --no-deps --no-build-isolation --target /tmp/ab_site_new "$repo" >/tmp/ab_build_new.log 2>&1; echo "new build rc $? $(( $(date +%s) - t0 )) s") &
(MINIVLLM_CUDA_ARCHS=90 python3 -m pip install -q --no-deps --no-build-isolation --target /tmp/ab_site_old /tmp/ab_old_src >/tmp/ab_build_old.log 2>&1; echo "old build rc $? $(( $(date +%s) - t0 )) s") &
wait
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/gpu.txt"
bench() { # SITE NAME ARGS...
    local site=$1 name=$2; shift 2
    PYTHONPATH=$site timeout 150 python3 benchmarks/bench_fused_rms_norm_qkv.py --models all --dtypes bf16 --m 1 2 \
        --no-compile --no-host --no-plot --out "$out/$name" "$@" > "$out/$name.log" 2>&1
    echo "$name rc $?"
}
bench /tmp/ab_site_old old-bulk --impls minivllm cublas --path bulk
bench /tmp/ab_site_new new-bulk --impls minivllm cublas --path bulk
bench /tmp/ab_site_new new-auto --impls minivllm cublas engine
cd "$repo/tests" && PYTHONPATH=/tmp/ab_site_new timeout 150 python3 -m pytest -q -x -p no:cacheprovider \
    test_fused_rms_norm_qkv.py -k "bulk_stream_last_tile or (cuda-bulk and (model_shapes or rows or residual))" 2>&1 | tail -2 | tee "$out/tests.log"
cd "$repo"
echo "total $(( $(date +%s) - t0 )) s"
