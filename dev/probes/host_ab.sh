#!/usr/bin/env bash
# Host cost of two carried builds side by side in one device call (the same host: hosts differ by
# up to 1.5x between calls): dev/probes/prologue_host_pieces.py for each build twice, interleaved
# (old, new, old, new), then benchmarks/host_cost.py for each, then the CUDA runtime's launch path
# (/tmp/cuda_host_calls, when carried), then the torch-facing GPU tests on the new build.
#
#   source dev/probes/carry_unpack.sh; AB_OLD=/tmp/site_old AB_NEW=/tmp/site_new OUT=$OUT \
#       bash dev/probes/host_ab.sh
set -uo pipefail
out=${OUT:?set OUT to a results folder}; root=$PWD
old=${AB_OLD:?set AB_OLD to the older carried build}; new=${AB_NEW:?set AB_NEW to the newer one}
export PYTHONUNBUFFERED=1
run() { # name, limit in s, site, command...
    local name=$1 limit=$2 site=$3; shift 3; local t0; t0=$(date +%s)
    (cd /tmp && PYTHONPATH="$site" timeout "$limit" "$@") >"$out/$name.log" 2>&1
    echo "== $name rc $? $(( $(date +%s) - t0 )) s"; cat "$out/$name.log" | tail -n 45
}
for round in 1 2; do
    run "pieces-old-$round" 60 "$old" python3 "$root/dev/probes/prologue_host_pieces.py"
    run "pieces-new-$round" 60 "$new" python3 "$root/dev/probes/prologue_host_pieces.py"
done
run host-cost-old 150 "$old" python3 "$root/benchmarks/host_cost.py" --no-generic --calls 3000 \
    --out "$out/host-cost-old.json"
run host-cost-new 150 "$new" python3 "$root/benchmarks/host_cost.py" --no-generic --calls 3000 \
    --out "$out/host-cost-new.json"
[ -x /tmp/cuda_host_calls ] && { /tmp/cuda_host_calls | tee "$out/cuda-host-calls.log"; }
run tests-new 200 "$new" python3 -m pytest -q -x -p no:cacheprovider -W ignore \
    "$root/tests/test_torch_fast_path.py" "$root/tests/test_torch_ops.py" \
    "$root/tests/test_torch_attention_prologue.py" "$root/tests/test_hf_patch.py" \
    "$root/tests/test_leaks.py" -k "not cpu_calls and not capsule"
