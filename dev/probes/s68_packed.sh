#!/usr/bin/env bash
# Session 68, third device call on the carried build of the tree with rows of at most 32 vectors
# sharing a block in the compiled norm kernel at every M (build/carry/site_s68b.tgz):
# 1. norm_jit_ab.py at H 64-256 (per-head rows), 16-262144 rows: jit (the packed compiled kernel)
#    against jit=False (the built-in kernels, with the fused add's no-PDL lanes rule now refusing
#    rows of one-warp blocks), PDL on and off, bits compared.
# 2. bench_rms_norm at those shapes (bf16) against Liger-Kernel and torch.compile.
# 3. tests: test_norm_jit.py, the norm tests' GPU cases, test_batch_invariance.py.
#   source dev/probes/carry_unpack.sh; COMMIT=<sha> bash dev/probes/s68_packed.sh
set -uo pipefail
R=$PWD; export MINIVLLM_COMMIT=${COMMIT:?}
S=/tmp/site_s68b
t0=$(date +%s)
echo "## 1. A/B"
ab() { PYTHONPATH=$S timeout 80 python3 dev/probes/norm_jit_ab.py --no-compile "$@" 2>&1 | grep -v Warn; }
ab --hidden 64 128 256 --m 16 128 1024 8192 65536 262144
ab --hidden 64 128 256 --m 16 128 1024 8192 65536 262144 --op fused_add_rms_norm
ab --hidden 32 64 128 --m 128 8192 262144 --dtype fp32
ab --hidden 32 64 128 --m 128 8192 262144 --dtype fp32 --op fused_add_rms_norm
echo "## 2. grid $(( $(date +%s) - t0 )) s"
mkdir -p "$OUT/heads"
PYTHONPATH=$S:/tmp/wheels timeout 130 python3 benchmarks/bench_rms_norm.py --dtypes bf16 --hidden 64 128 256 \
    --rows 16 128 1024 8192 65536 262144 --shapes none --out "$OUT/heads" > "$OUT/heads/grid.log" 2>&1
echo "grid rc $?"; tail -8 "$OUT/heads/grid.log"
echo "## 3. tests $(( $(date +%s) - t0 )) s"
cd /tmp
lim=$(( 560 - ($(date +%s) - t0) ))
PYTHONPATH=$S timeout $lim python3 -m pytest -q -p no:cacheprovider "$R/tests/test_norm_jit.py" > "$OUT/t-jit.log" 2>&1 &
PYTHONPATH=$S timeout $lim python3 -m pytest -q -p no:cacheprovider "$R/tests/test_batch_invariance.py" > "$OUT/t-inv.log" 2>&1 &
PYTHONPATH=$S timeout $lim python3 -m pytest -q -p no:cacheprovider -k cuda "$R/tests/test_rms_norm.py" \
    "$R/tests/test_fused_add_rms_norm.py" "$R/tests/test_norm_views.py" "$R/tests/test_norm_weights.py" \
    "$R/tests/test_norm_kernels_cuda.py" > "$OUT/t-norm.log" 2>&1 &
wait
for f in t-jit t-inv t-norm; do echo "$f: $(tail -n 1 "$OUT/$f.log")"; grep -E "^FAILED" "$OUT/$f.log" | head -5; done
echo "# total $(( $(date +%s) - t0 )) s"
