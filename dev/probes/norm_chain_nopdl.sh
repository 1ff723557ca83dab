#!/usr/bin/env bash
# Device calls of session 66: the norm alone in chains without PDL, the library's lanes kernel against
# Inductor's and the probe kernels (norm_chain_nopdl.py): PART=chains (call 2: the chains, then ncu
# durations of each kernel at three shapes) or PART=profile (call 3: torch.profiler over the chains'
# graph replays: the replay's µs per call, its kernels' and the gap). Needs build/carry/site_base.tgz.
#   source dev/probes/carry_unpack.sh; PART=chains bash dev/probes/norm_chain_nopdl.sh
set -uo pipefail
nvcc -std=c++17 -O3 -shared -Xcompiler -fPIC -gencode=arch=compute_90a,code=sm_90a \
     dev/probes/scratch_norm_probe.cu -o /tmp/snp.so || exit 1
export PYTHONPATH=/tmp/site_base
if [ "${PART:-chains}" = chains ]; then
    python3 dev/probes/norm_chain_nopdl.py /tmp/snp.so 2>&1 | grep -v Warn
    echo "## ncu (--clock-control none, caches flushed), each kernel alone: H M kernel duration SM-active-cycles"
    for s in "1024 1" "1024 64" "4096 16"; do
        set -- $s
        echo "# H=$1 M=$2 (order: mv+ mv- comp v8p1-g0 v8p1-g1 v4p1-g1 v4p2-g1 can-g0 can-g1 can+, three rounds)"
        ncu --clock-control none --kernel-name regex:'lanes|norm_rows|triton' \
            --metrics gpu__time_duration.sum,sm__cycles_active.avg --csv \
            python3 dev/probes/norm_chain_nopdl.py /tmp/snp.so --ncu --hidden "$1" --m "$2" 2>/dev/null |
            python3 dev/probes/ncu_table.py
    done
else
    python3 dev/probes/norm_chain_nopdl.py /tmp/snp.so --profile --hidden 1024 --m 1 64 2>&1 | grep -v Warn
    python3 dev/probes/norm_chain_nopdl.py /tmp/snp.so --profile --hidden 4096 --m 16 2>&1 | grep -v Warn
fi
