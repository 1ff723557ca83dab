#!/usr/bin/env bash
# On the GPU machine: where the tensor-copy W stream's time goes at one row of a large W, against
# a bare read of the same bytes. A build of the tree with dev/bulk_ring_switch.patch (made here by
# site_build.sh, carried and unpacked to /tmp/SITE) reads three environment variables in its plan:
#   MV_EXP_BULK_SKIP=1     consumers only release each stage (no norm, no mma, no stores): the ring alone
#   MV_EXP_BULK_SKIP=2     the norm's staging, then the ring alone
#   MV_EXP_BULK_SKIP=3     all but each tile's reduction over the warps and its stores
#   MV_EXP_BULK_SKIP=4     each warp's W of a stage read into registers and the slot released before
#                          its mma (stages of at most 4 chunks a warp); 5: two accumulators taking
#                          alternate chunks; 6: both; 7: the next chunk's W read before this chunk's mma;
#                          8: the stage's reads without the mma; 9: the mma without the stage's reads
#                          12: skip2 with each consumer warp holding each stage MV_EXP_BULK_DELAY clock
#                          cycles; 13: the block's whole W asked of L2 before the ring's copies
#   MV_EXP_BULK_WAIT=W     1: producer and consumers spin on test_wait (2: the producer, 3: the consumers)
#   MV_EXP_BULK_LINES=L    stages of L 64-k lines (16 features x L x 128 bytes a stage)
#   MV_EXP_BULK_STAGES=S   at most S stages in the ring
# qkv_bound.py first (cuBLAS alone, the table's path, an empty launch, a bare read, W read in
# 16-row tiles), then qkv_start.py after a fill for each variant, the bulk path forced.
#   SITE=site_exp OUT=... bash dev/probes/bulk_ring_probe.sh "llama-3-8b:1 llama-2-7b:1"
set -u
S=/tmp/${SITE:?}; shapes=$1; out=${OUT:?}
# shellcheck disable=SC2086
[ "${BOUND:-1}" = 0 ] || PYTHONPATH=$S timeout 150 python3 dev/probes/qkv_bound.py --json "$out/bound.json" -- $shapes 2>&1 | tee "$out/bound.log"
# VARIANTS: one "NAME VAR=VALUE ..." a line (default: the variants below, as run on 2026-11-28)
default_variants='base
skip1 MV_EXP_BULK_SKIP=1
skip2 MV_EXP_BULK_SKIP=2
skip3 MV_EXP_BULK_SKIP=3
m5 MV_EXP_BULK_SKIP=5
m7 MV_EXP_BULK_SKIP=7
m8 MV_EXP_BULK_SKIP=8
m9 MV_EXP_BULK_SKIP=9
l20s5 MV_EXP_BULK_LINES=20 MV_EXP_BULK_STAGES=5
l12s8 MV_EXP_BULK_LINES=12 MV_EXP_BULK_STAGES=8
skip1-l12s8 MV_EXP_BULK_SKIP=1 MV_EXP_BULK_LINES=12 MV_EXP_BULK_STAGES=8
m4-l12s8 MV_EXP_BULK_SKIP=4 MV_EXP_BULK_LINES=12 MV_EXP_BULK_STAGES=8
l36s3 MV_EXP_BULK_LINES=36 MV_EXP_BULK_STAGES=3
l28s2 MV_EXP_BULK_LINES=28 MV_EXP_BULK_STAGES=2
l4s12 MV_EXP_BULK_LINES=4 MV_EXP_BULK_STAGES=12'
printf '%s\n' "${VARIANTS:-$default_variants}" | while read -r name vars; do
    [ -z "$name" ] && continue
    echo "== $name: $vars"
    # shellcheck disable=SC2086
    env $vars MV_EXP_BULK_VERBOSE=1 PYTHONPATH=$S timeout 90 python3 dev/probes/qkv_start.py --paths bulk --seps fill -- $shapes 2>&1 |
        grep -E "after|bulk:" | sort -u
done
