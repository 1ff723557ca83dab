#!/usr/bin/env bash
# The QKV table's rules as a model runs the op: every path forced (and the table's choice, "auto")
# at the given row counts of 17 shapes (the zoo's N >= 2048 models and six real shapes outside it:
# Qwen2.5-3B, Qwen3-1.7B, Llama-3.2-3B, Qwen2.5-14B, Gemma-2-9B, Phi-3-medium), after a fill and after
# a down_proj GEMM writing x (dev/probes/qkv_start.py), ROUNDS rounds into $OUT/sweep-TAG-rN.txt.
# Runs on a carried build (site_build.sh, packed as build/carry_c/SITE.tgz or build/carry/SITE.tgz).
#
#   bash dev/probes/qkv_rules_sweep.sh SITE TAG "9 12 15" "auto bulk deferred register engine cublaslt" [ROUNDS] [--residual]
#
# Then here: python3 dev/probes/qkv_start_table.py sweep-TAG-r*.txt (and --ab for two builds' "auto").
# Sessions 48-49 (dev/logs/qkv-after-gemm-rules-*, qkv-many-rows-after-gemm-*) ran it this way.
# SHAPES="H,heads,kv,head_dim ..." replaces the 17 shapes; session 50's large-W sweep (dev/logs/qkv-large-w-*)
# was SHAPES="5120,64,8,128 5376,32,16,128 6144,48,8,128 5120,40,40,128 4096,32,32,128 8192,64,8,128 8192,128,8,64
# 8192,64,64,128 7168,56,8,128" with ROWS "9 12 16 24 32" and PATHS "auto engine cublaslt"; session 62's one-row
# sweep (dev/logs/one-row-register-*, call 3, then a script of its own) was SHAPES="896,74,1,128 1024,46,1,128
# 1536,138,1,128 2048,126,1,128 2304,142,1,128 2560,150,1,128 3072,126,1,128 3584,294,1,128 4096,222,1,128
# gemma-2-2b qwen3-4b 3072,24,8,128 llama-3-8b" (gate_up shapes as "H,N/128-2,1,128") with ROWS "1" and PATHS
# "auto bulk register", without and with --residual.
set -u
SITE=$1; TAG=$2; ROWS=$3; PATHS=$4; ROUNDS=${5:-2}; RES=${6:-}
R=$(pwd)
export PYTHONUNBUFFERED=1
for carry in build/carry_c build/carry; do [ -e "$carry/$SITE.tgz" ] && tar -xzf "$carry/$SITE.tgz" -C /tmp; done
echo "# $(nvidia-smi --query-gpu=name,clocks.max.sm,driver_version --format=csv,noheader | head -1), $(date -u +%FT%TZ)"
cd /tmp
export PYTHONPATH=/tmp/$SITE
MODELS=${SHAPES:-"qwen3-0.6b llama-3-8b qwen3-4b llama-3.2-1b qwen2.5-1.5b gemma-2-2b phi-3-mini qwen2.5-7b falcon-7b
llama-2-7b llama-3-70b 2048,16,2,128 2048,16,8,128 3072,24,8,128 5120,40,8,128 3584,16,8,256 5120,40,10,128"}
for round in $(seq 1 "$ROUNDS"); do
  for m in $MODELS; do
    S=""
    for r in $ROWS; do S="$S $m:$r"; done
    timeout 100 python3 "$R/dev/probes/qkv_start.py" --paths $PATHS --seps fill down $RES -- $S 2>&1 | grep -v "^#" >> "$OUT/sweep-$TAG-r$round.txt"
  done
  wc -l "$OUT/sweep-$TAG-r$round.txt"
done
echo "# end $(date -u +%FT%TZ)"
