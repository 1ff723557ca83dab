#!/usr/bin/env bash
# Device call for the W streams' input staging (session 56): the register and tensor-copy stream
# tests on one build (TESTS=site name, none by default), then carried builds side by side
# (alternating, ROUNDS rounds) on forced QKV paths and the table's choice, after a fill and after a
# down_proj GEMM (qkv_start.py), at the rows and shapes given (MODEL:M or H,HEADS,KV,HEAD_DIM:M).
#   SITES="site_final site_new" PATHS="auto register bulk" SHAPES="qwen3-0.6b:16 ..." \
#       bash dev/probes/stream_staging_ab.sh        (sites carried as build/carry_c/NAME.tgz)
# QARGS: more qkv_start.py arguments (--residual: the calls take a residual).
set -u
repo=$PWD; t0=$(date +%s)
for f in build/carry_c/*.tgz; do tar -xzf "$f" -C /tmp; done
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
if [ -n "${TESTS:-}" ]; then
    (cd /tmp && PYTHONPATH=/tmp/$TESTS timeout 240 python3 -m pytest -q -x -n 8 -p no:cacheprovider \
        "$repo"/tests/test_fused_rms_norm_qkv.py "$repo"/tests/test_attention_prologue.py \
        -k "${TESTK:-(register or bulk or rules) and not fuzz}" > "$OUT/tests.log" 2>&1; echo "tests rc $? $(( $(date +%s) - t0 )) s"; tail -3 "$OUT/tests.log")
fi
for round in $(seq 1 "${ROUNDS:-1}"); do
    for site in $SITES; do
        left=$(( ${LIMIT:-570} - ($(date +%s) - t0) ))
        [ "$left" -lt 30 ] && { echo "out of time before $site round $round"; break 2; }
        echo "## $site round $round"
        (cd /tmp && PYTHONPATH=/tmp/$site timeout "$left" python3 "$repo/dev/probes/qkv_start.py" \
            --paths ${PATHS:-auto register bulk} --seps ${SEPS:-fill down} ${QARGS:-} -- $SHAPES 2>&1 | grep -v Warning \
            | tee "$OUT/$site-r$round.txt")
    done
done
echo "total $(( $(date +%s) - t0 )) s"
