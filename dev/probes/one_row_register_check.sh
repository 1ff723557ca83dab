#!/usr/bin/env bash
# The one-row register rule (dispatch.cu register_one_row_wanted, fast DRAM, H <= 2048) on a GPU machine:
# the QKV and prologue GPU tests on the new build, the table's path old against new after a down_proj
# GEMM and a fill (qkv_start.py), and decode steps with the MLP through the op (decode_mlp_norm.py).
# Builds carried as build/carry/site_head.tgz (before) and site_new.tgz (after):  bash dev/probes/one_row_register_check.sh
# shellcheck source=dev/probes/carry_unpack.sh
source dev/probes/carry_unpack.sh
R=$PWD
(cd /tmp && PYTHONPATH=/tmp/site_new timeout 230 python3 -m pytest -q -x -n 8 -p no:cacheprovider "$R"/tests/test_fused_rms_norm_qkv.py \
    "$R"/tests/test_attention_prologue.py -k "not cpu" > "$OUT"/tests.log 2>&1; echo "tests rc $?"; tail -3 "$OUT"/tests.log)
S="896,74,1,128:1 1536,138,1,128:1 2048,126,1,128:1 2048,16,16,128:1 2304,142,1,128:1 qwen2.5-1.5b:1 llama-3.2-1b:1 qwen3-4b:1"
for site in site_head site_new; do
  # shellcheck disable=SC2086  # $S: one argument a shape
  PYTHONPATH=/tmp/$site timeout 80 python3 "$R"/dev/probes/qkv_start.py --paths auto --seps down fill -- $S 2>&1 | grep -v "^#\|arn" > "$OUT/ab-$site.txt"
  # shellcheck disable=SC2086
  PYTHONPATH=/tmp/$site timeout 60 python3 "$R"/dev/probes/qkv_start.py --paths auto --seps down --residual -- $S 2>&1 | grep -v "^#\|arn" >> "$OUT/ab-$site.txt"
done
paste -d'\n' "$OUT"/ab-site_head.txt "$OUT"/ab-site_new.txt | cut -c1-120
for r in 1 2; do for site in site_head site_new; do
  echo "== $site round $r"; PYTHONPATH=/tmp/$site timeout 100 python3 "$R"/dev/probes/decode_mlp_norm.py --models qwen2.5-1.5b llama-3.2-1b \
      --batch 1 --variants minivllm minivllm+mlp compile+mv compile+mv+mlp --rounds 1 2>&1 | grep -v "arn"
done; done 2>&1 | tee "$OUT"/decode.log
