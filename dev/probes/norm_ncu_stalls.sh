#!/usr/bin/env bash
# Warp-stall breakdown (ncu, each kernel alone) of the library's lanes norm kernel, Inductor's norm
# and scratch_norm_probe.cu's kernels at one shape: why is the lanes kernel slower alone?
#   bash dev/probes/norm_ncu_stalls.sh SO MODEL:M   (SO: scratch_norm_probe.cu built as its header says)
set -euo pipefail
so=$1; shape=$2
M="gpu__time_duration.sum,sm__cycles_active.avg,smsp__inst_executed.sum,dram__bytes_read.sum,dram__bytes_write.sum"
for s in long_scoreboard barrier membar short_scoreboard wait no_instruction drain lg_throttle math_pipe_throttle \
         sleeping dispatch_stall imc_miss branch_resolving selected not_selected mio_throttle misc; do
    M="$M,smsp__average_warps_issue_stalled_${s}_per_issue_active.ratio"
done
ncu --clock-control none --kernel-name regex:'norm' --metrics "$M" --csv \
    python3 "$(dirname "$0")/norm_kernel_ncu.py" "$so" "$shape" > /tmp/ncu_stalls.csv 2>/tmp/ncu_stalls.err || tail /tmp/ncu_stalls.err
python3 "$(dirname "$0")/ncu_table.py" < /tmp/ncu_stalls.csv
