#!/usr/bin/env bash
# Issue 30's three measurements of a carried build in one device call (about 7 min on an H100):
# the op level (bench_attention_prologue: its default models and M), the model level
# (bench_decode: its default decoders, batch sizes and variants) and the host cost of one eager
# call (host_cost.py), each into $OUT with its log. ISSUE30_PARTS picks some of them (default
# "prologue decode host_cost"), so the parts can go to calls of their own under the 600 s limit.
#
#   source dev/probes/carry_unpack.sh; MINIVLLM_SITE=/tmp/site_new MINIVLLM_COMMIT=<sha> \
#       OUT=$OUT bash dev/probes/issue30_refresh.sh
set -uo pipefail
out=${OUT:?set OUT to a results folder}; root=$PWD
export PYTHONPATH="${MINIVLLM_SITE:?set MINIVLLM_SITE to a carried build}${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
run() { # name, limit in s, command...
    local name=$1 limit=$2; shift 2; local t0; t0=$(date +%s)
    (cd /tmp && timeout "$limit" "$@") >"$out/$name.log" 2>&1
    echo "$name rc $? $(( $(date +%s) - t0 )) s"; tail -n 30 "$out/$name.log"
}
want() { [[ " ${ISSUE30_PARTS:-prologue decode host_cost} " == *" $1 "* ]]; }
if want prologue; then
    run prologue 200 python3 "$root/benchmarks/bench_attention_prologue.py" --replays 10 --out "$out"
fi
if want decode; then run decode 300 python3 "$root/benchmarks/bench_decode.py" --out "$out"; fi
if want host_cost; then
    run host_cost 200 python3 "$root/benchmarks/host_cost.py" --device cuda --calls 3000 \
        --models llama-3-8b qwen3-0.6b --out "$out/host-cost.json"
fi
