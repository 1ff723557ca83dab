#!/usr/bin/env bash
# Device call for the prologue's QKV call at 9-16 rows (session 57): optional tests on the new build
# (TESTS=site name), then carried builds side by side on the table's path (attention_prologue after a
# down_proj GEMM, with and without a residual; prologue_paths.py) and in whole decode steps
# (decode_paths.py), ROUNDS rounds, builds alternating.
#   SITES="site_old site_new" TESTS=site_new ROUNDS=2 bash dev/probes/prologue_two_tiles_ab.sh
# (sites carried as build/carry_c/NAME.tgz). Forced paths: prologue_paths.py --paths auto register cublaslt bulk.
set -u
R=$PWD; mkdir -p "$OUT/o"; t0=$(date +%s)
for f in build/carry_c/*.tgz; do tar -xzf "$f" -C /tmp; done
nvidia-smi --query-gpu=name --format=csv,noheader
cd /tmp
if [ -n "${TESTS:-}" ]; then
    PYTHONPATH=/tmp/$TESTS timeout 260 python3 -m pytest -q -x -n 8 -p no:cacheprovider "$R"/tests/test_fused_rms_norm_qkv.py \
        "$R"/tests/test_attention_prologue.py -k "${TESTK:-(register or rules or prologue or epilogue or each_path) and not fuzz}" \
        > "$OUT/o/tests.log" 2>&1; echo "tests rc $? $(( $(date +%s) - t0 )) s"; tail -1 "$OUT/o/tests.log"
fi
S=${SHAPES:-qwen2.5-0.5b qwen3-0.6b gemma-3-1b qwen2.5-1.5b llama-3.2-1b 1280,10,2,128 1536,24,8,64}
for r in $(seq 1 "${ROUNDS:-1}"); do for site in $SITES; do
    for form in res nores; do
        extra=; [ $form = nores ] && extra=--no-residual
        PYTHONPATH=/tmp/$site timeout 100 python3 "$R"/dev/probes/prologue_paths.py $S --m ${M:-9 12 16} --paths auto \
            --shared-step-inputs --after-down-proj 4 $extra 2>&1 | grep -v Warning >> "$OUT/o/ab_${form}_$site.txt"
    done
done; done
for r in $(seq 1 "${ROUNDS:-1}"); do for site in $SITES; do
    left=$(( ${LIMIT:-560} - ($(date +%s) - t0) )); [ "$left" -lt 40 ] && break 2
    PYTHONPATH=/tmp/$site timeout "$left" python3 "$R"/dev/probes/decode_paths.py --models ${DECODERS:-qwen2.5-0.5b gemma-3-1b qwen3-0.6b qwen2.5-1.5b} \
        --batch 12 16 --paths auto --rounds 1 2>&1 | grep -v Warning >> "$OUT/o/decode_$site.txt"
done; done
echo "total $(( $(date +%s) - t0 )) s"
