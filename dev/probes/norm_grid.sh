#!/usr/bin/env bash
# On the GPU machine: bench_rms_norm's whole grid on a carried build (dev/probes/site_build.sh, packed as
# build/carry_c/SITE.tgz) with the Liger-Kernel wheel carried beside it: bf16 in one run, fp16 and float32 in
# a second (each JSON, PNG and log under OUT/bf16 and OUT/fp16-fp32).
#   SITE=site_x COMMIT=<the build's commit> OUT=... bash dev/probes/norm_grid.sh
# (COMMIT goes into the JSON: the device's copy of .git can lag the tree.)
set -u
export MINIVLLM_COMMIT=${COMMIT:?}
S=${SITE:?}; export PYTHONUNBUFFERED=1
tar -xzf build/carry_c/$S.tgz -C /tmp
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/wheels build/carry_c/*.whl
echo "# $(nvidia-smi --query-gpu=name,clocks.max.sm,driver_version --format=csv,noheader | head -1), $(date -u +%FT%TZ)"
for part in "bf16" "fp16 fp32"; do
    name=${part// /-}; mkdir -p "$OUT/$name"; t0=$(date +%s)
    # shellcheck disable=SC2086
    PYTHONPATH=/tmp/$S:/tmp/wheels timeout 280 python3 benchmarks/bench_rms_norm.py --dtypes $part --out "$OUT/$name" \
        > "$OUT/$name/grid.log" 2>&1
    echo "grid $name rc $? $(( $(date +%s) - t0 )) s"; tail -4 "$OUT/$name/grid.log"
done
echo "# end $(date -u +%FT%TZ)"
