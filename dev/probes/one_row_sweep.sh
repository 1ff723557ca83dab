#!/usr/bin/env bash
# One row of the QKV op as a model runs it (dev/probes/qkv_start.py: after a down_proj GEMM writing x,
# and after a fill), the table's path beside the tensor-copy and register streams forced, at W of
# 12-259 MiB: the zoo's mid-H shapes, and MLP-like shapes (N = 2 x intermediate as gate_up's, read as
# heads of 128: "H,N/128-2,1,128") of nine real models, which no QKV shape reaches at small H.
# Two rounds, without and with a residual, on a carried build (site_build.sh, carry_unpack.sh):
#   PYTHONPATH=/tmp/SITE OUT=... bash dev/probes/one_row_sweep.sh
set -u
S=${SHAPES:-"896,74,1,128 1024,46,1,128 1536,138,1,128 2048,126,1,128 2304,142,1,128 2560,150,1,128 3072,126,1,128
3584,294,1,128 4096,222,1,128 gemma-2-2b qwen3-4b 3072,24,8,128 llama-3-8b"}
A=""; for s in $S; do A="$A $s:1"; done
R=$(cd "$(dirname "$0")/../.." && pwd)
for round in 1 2; do
  # shellcheck disable=SC2086
  timeout 150 python3 "$R"/dev/probes/qkv_start.py --paths auto bulk register --seps down fill -- $A 2>&1 \
      | grep -v "^#\|Warn\|warn" >> "$OUT/sweep-r$round.txt"
  # shellcheck disable=SC2086
  timeout 110 python3 "$R"/dev/probes/qkv_start.py --paths auto bulk register --seps down --residual -- $A 2>&1 \
      | grep -v "^#\|Warn\|warn" >> "$OUT/sweep-res-r$round.txt"
  echo "round $round $(date -u +%T)"
done
