#!/usr/bin/env bash
# A/B of whole decode steps on the GPU machine: the tree against the tree with PATCH reverse-applied,
# both built in parallel (sm_90 only); bench_decode.py (graph replay) on each, twice in the order
# new, old, new, old, then dev/decode_profile.py on each (kernels of one eager step, by name).
# usage (device): OUT=$OUT bash dev/probes/decode_ab.sh PATCH "models" "batches" "variants" PROFILE_MODEL PROFILE_BATCH
set -u
patch=$1 models=$2 batches=$3 variants=$4 pmodel=$5 pbatch=$6
source "$(dirname "$0")/ab_build.sh"
cd /tmp
for round in 1 2; do
  for side in new old; do
    echo "=== $side (round $round) ==="
    PYTHONPATH=/tmp/ab_site_$side timeout 200 python3 "$repo/benchmarks/bench_decode.py" --models $models --batch $batches \
      --variants $variants --no-plot --out "$OUT/$side$round" 2>&1 | grep -E "^[A-Z].*batch" | sed 's/ (err[^)]*)//g' | cut -c1-300
  done
done
for side in new old; do
  echo "=== profile $side ==="
  PYTHONPATH=/tmp/ab_site_$side timeout 120 python3 "$repo/dev/decode_profile.py" --model $pmodel --batch $pbatch \
    --variants minivllm 2>&1 | grep -v Warning | tail -n 24
done
echo "total $(( $(date +%s) - t0 )) s"
