#!/usr/bin/env bash
# The tensor-copy W stream's last tile in 4-feature boxes (bulk_stream.cu), before and after in one
# run: builds the tree and the tree with $PATCH reverse-applied side by side (ab_build.sh, sm_90),
# times the bulk path forced in both and the new table's choice beside cuBLAS alone and the engine at
# 1-2 rows on every preset, bf16 (tests: bulk_tail_tests.sh). The GPU machine's copy
# of .git may lag the working tree, so the old tree comes from a patch made here first, e.g.
#   git diff a2d67c4 c306f1a -- csrc > dev/probes/bulk_tail.patch     (untracked; copied over)
#   usage (GPU machine, repo root): [PATCH=file] bash dev/probes/bulk_tail_ab.sh    (outputs under $OUT)
out=${OUT:-/tmp/bulk_tail_out}
mkdir -p "$out"
patch=${PATCH:-dev/probes/bulk_tail.patch}
source dev/probes/ab_build.sh
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
echo "total $(( $(date +%s) - t0 )) s"
