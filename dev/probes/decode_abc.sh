#!/usr/bin/env bash
# Whole decode steps of three builds on the GPU machine: a = the tree, b = the tree with PATCH_B
# applied, c = the tree with PATCH_C reverse-applied; built in parallel (sm_90 only), then
# bench_decode.py (graph replay) on each, twice in the order a, b, c.
# usage (device): OUT=$OUT bash dev/probes/decode_abc.sh PATCH_B PATCH_C "models" "batches" "variants"
set -u
repo=$PWD pb=$1 pc=$2 models=$3 batches=$4 variants=$5
t0=$(date +%s)
for side in b c; do rm -rf /tmp/src_$side && mkdir -p /tmp/src_$side && cp -r "$repo"/. /tmp/src_$side/; done
(cd /tmp/src_b && patch -s -p1 < "$repo/$pb") || { echo "patch b failed"; exit 1; }
(cd /tmp/src_c && patch -s -R -p1 < "$repo/$pc") || { echo "patch c failed"; exit 1; }
for side in a b c; do
  src=/tmp/src_$side; [ $side = a ] && src=$repo
  (MINIVLLM_CUDA_ARCHS=90 python3 -m pip install -q --no-deps --no-build-isolation --target /tmp/site_$side "$src" >/tmp/build_$side.log 2>&1; echo "$side build rc $? $(( $(date +%s) - t0 )) s") &
done
wait
cd /tmp
for round in 1 2; do
  for side in a b c; do
    echo "=== $side (round $round, $(( $(date +%s) - t0 )) s) ==="
    PYTHONPATH=/tmp/site_$side timeout 120 python3 "$repo/benchmarks/bench_decode.py" --models $models --batch $batches \
      --variants $variants --no-plot --out "$OUT/$side$round" 2>&1 | grep -E "^[A-Z].*batch" | sed 's/ (err[^)]*)//g' | cut -c1-260
  done
done
echo "total $(( $(date +%s) - t0 )) s"
