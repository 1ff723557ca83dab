#!/usr/bin/env bash
# A/B of two carried builds (dev/probes/site_build.sh) of attention_prologue on the GPU machine (issue 30): the prologue's GPU
# tests on the new build, then bench_attention_prologue on both builds alternately (no compile, no
# plot), each into its own JSON. Usage (after dev/probes/carry_unpack.sh):
#   OUT=$OUT/ab AB_OLD=/tmp/site_old AB_NEW=/tmp/site_new AB_MODELS="qwen3-0.6b ..." AB_M="1 2 4" \
#   [AB_TESTS="-k epilogue"] [AB_ROUNDS=2] bash dev/probes/prologue_site_ab.sh
set -uo pipefail
mkdir -p "$OUT"
if [ -n "${AB_TESTS+x}" ]; then
    (cd tests && PYTHONPATH=$AB_NEW timeout 300 python3 -m pytest -q -x -p no:cacheprovider \
        test_attention_prologue.py test_torch_attention_prologue.py $AB_TESTS 2>&1 | tail -15) | tee "$OUT/tests.txt"
fi
for round in $(seq "${AB_ROUNDS:-1}"); do
    for side in old new; do
        site=$AB_OLD; [ "$side" = new ] && site=$AB_NEW
        echo "## round $round: $side ($site)"
        PYTHONPATH=$site python3 benchmarks/bench_attention_prologue.py --models $AB_MODELS --m $AB_M \
            --no-compile --no-plot --out "$OUT/$side-$round" 2>&1 | grep -v "^\s*$" | tail -40
    done
done
