#!/usr/bin/env bash
# Session 68, fourth device call on the carried build of the tree with the packed compiled kernel's
# rule (build/carry/site_s68c.tgz): bench_rms_norm at rows of a head (H 64-256, bf16) against the
# peers, then test_norm_jit.py (three processes, by dtype) and the norm tests' GPU cases.
#   source dev/probes/carry_unpack.sh; COMMIT=<sha> bash dev/probes/s68_final.sh
set -uo pipefail
R=$PWD; export MINIVLLM_COMMIT=${COMMIT:?}
S=/tmp/site_s68c
t0=$(date +%s)
mkdir -p "$OUT/heads"
if [ "${GRID:-1}" = 1 ]; then  # GRID=0: the tests only (run so in session 68: the device time left)
    PYTHONPATH=$S:/tmp/wheels timeout 100 python3 benchmarks/bench_rms_norm.py --dtypes bf16 --hidden 64 128 256 \
        --rows 16 128 1024 8192 65536 262144 --shapes none --out "$OUT/heads" > "$OUT/heads/grid.log" 2>&1
    echo "grid rc $? $(( $(date +%s) - t0 )) s"; tail -7 "$OUT/heads/grid.log"
fi
cd /tmp
lim=$(( ${TOTAL_S:-300} - ($(date +%s) - t0) ))
for sel in bfloat16 "float16 and not bfloat16" "not float16"; do
    PYTHONPATH=$S timeout $lim python3 -m pytest -q -p no:cacheprovider "$R/tests/test_norm_jit.py" -k "$sel" \
        > "$OUT/t-jit-${sel// /_}.log" 2>&1 &
done
PYTHONPATH=$S timeout $lim python3 -m pytest -q -p no:cacheprovider -k cuda "$R/tests/test_rms_norm.py" \
    "$R/tests/test_fused_add_rms_norm.py" "$R/tests/test_norm_views.py" "$R/tests/test_norm_weights.py" \
    "$R/tests/test_norm_kernels_cuda.py" > "$OUT/t-norm.log" 2>&1 &
wait
for f in "$OUT"/t-*.log; do echo "$(basename "$f"): $(tail -n 1 "$f")"; grep -E "^FAILED" "$f" | head -5; done
echo "# total $(( $(date +%s) - t0 )) s"
