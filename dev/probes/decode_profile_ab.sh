#!/usr/bin/env bash
# Kernels of one eager decode step (dev/decode_profile.py) for the tree and the tree with PATCH
# reverse-applied, both built in parallel (sm_90 only); each profile's output to $OUT/profile-*.txt.
# usage (device): OUT=$OUT bash dev/probes/decode_profile_ab.sh PATCH VARIANT "model:batch ..."
set -u
patch=$1 variant=$2 specs=$3
source "$(dirname "$0")/ab_build.sh"
cd /tmp
for spec in $specs; do
  for side in new old; do
    PYTHONPATH=/tmp/ab_site_$side timeout 100 python3 "$repo/dev/decode_profile.py" --model "${spec%:*}" --batch "${spec#*:}" \
      --variants $variant --top 12 2>&1 | grep -v -i warn > "$OUT/profile-$side-${spec%:*}-${spec#*:}.txt"
    echo "=== $side $spec ($(( $(date +%s) - t0 )) s)"; grep -v "^$" "$OUT/profile-$side-${spec%:*}-${spec#*:}.txt" | cut -c1-150 | head -n 14
  done
done
