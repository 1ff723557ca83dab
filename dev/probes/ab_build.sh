#!/usr/bin/env bash
# Sourced by the A/B probes (prologue_ab.sh, decode_ab.sh, decode_profile_ab.sh), on the GPU
# machine in the repository root: builds the tree into /tmp/ab_site_new and the tree with $patch
# reverse-applied into /tmp/ab_site_old, in parallel (sm_90 only); sets repo and t0.
repo=$PWD
t0=$(date +%s)
rm -rf /tmp/ab_old_src && mkdir -p /tmp/ab_old_src && cp -r "$repo"/. /tmp/ab_old_src/ &&
  (cd /tmp/ab_old_src && patch -s -R -p1 < "$repo/$patch") || { echo "patch -R failed"; exit 1; }
(MINIVLLM_CUDA_ARCHS=90 python3 -m pip install -q --no-deps --no-build-isolation --target /tmp/ab_site_new "$repo" >/tmp/ab_build_new.log 2>&1; echo "new build rc $? $(( $(date +%s) - t0 )) s") &
(MINIVLLM_CUDA_ARCHS=90 python3 -m pip install -q --no-deps --no-build-isolation --target /tmp/ab_site_old /tmp/ab_old_src >/tmp/ab_build_old.log 2>&1; echo "old build rc $? $(( $(date +%s) - t0 )) s") &
wait
