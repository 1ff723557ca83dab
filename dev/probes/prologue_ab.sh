#!/usr/bin/env bash
# A/B of the attention prologue on the GPU machine: the tree against the tree with PATCH
# reverse-applied (e.g. git diff HEAD > dev/ab_old/change.patch), both built in parallel; the GPU
# prologue tests on the new build, then bench_attention_prologue.py on each (no torch.compile),
# results under $OUT/new and $OUT/old.
# usage (device): OUT=$OUT bash dev/probes/prologue_ab.sh PATCH "models" "m values"
set -u
patch=$1 models=$2 ms=$3
source "$(dirname "$0")/ab_build.sh"
cd "$repo/tests" && PYTHONPATH=/tmp/ab_site_new timeout 300 python3 -m pytest -q -x -p no:cacheprovider test_attention_prologue.py test_torch_attention_prologue.py 2>&1 | tail -2 | tee "$OUT/tests.txt"
cd /tmp
for side in new old; do
  echo "=== $side ==="
  PYTHONPATH=/tmp/ab_site_$side timeout 400 python3 "$repo/benchmarks/bench_attention_prologue.py" --models $models --m $ms --no-compile --no-plot --out "$OUT/$side" 2>&1 | grep -v Warning | sed -n '/^µs per call/,/^results/p'
done
echo "total $(( $(date +%s) - t0 )) s"
