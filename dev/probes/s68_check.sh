#!/usr/bin/env bash
# Session 68, first device call: the whole GPU check (scripts/gpu_check.sh, sixteen pytest
# processes and the leak tests) on a carried build of the tree (build/carry/site_s68.tgz).
#   source dev/probes/carry_unpack.sh; COMMIT=<sha> bash dev/probes/s68_check.sh
set -uo pipefail
export MINIVLLM_COMMIT=${COMMIT:?}
t0=$(date +%s)
MINIVLLM_SITE=/tmp/site_s68 timeout ${CHECK_S:-560} bash scripts/gpu_check.sh "$OUT/check"
echo "gpu_check rc $? in $(( $(date +%s) - t0 )) s"
for f in "$OUT"/check/pytest-*.log; do echo "$(basename "$f"): $(tail -n 1 "$f")"; done
