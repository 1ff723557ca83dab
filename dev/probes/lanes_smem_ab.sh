#!/usr/bin/env bash
# One device call: does the lanes norm kernels' static shared memory (parts[1024], 4224 bytes a block
# whatever its size) or their shared-memory carveout cost them time (session 65: alone, 0.4-0.5 us
# over Inductor's kernel with the same SM active cycles; dev/logs/qkv-scratch-norm-nvidia-h200-2026-11-29.log,
# call 12)? Builds carried: build/carry/site_base.tgz (the product) and site_lsm.tgz (site_build.sh with
# lanes_dynamic_smem.patch applied: parts[] sized to the block; MV_PROBE_CARVEOUT=<percent> sets the
# lanes kernels' preferred carveout).
#   source dev/probes/carry_unpack.sh; bash dev/probes/lanes_smem_ab.sh
set -uo pipefail
nvcc -std=c++17 -O3 -shared -Xcompiler -fPIC -gencode=arch=compute_90a,code=sm_90a \
     dev/probes/scratch_norm_probe.cu -o /tmp/snp.so || exit 1
R=$PWD
echo "## norm tests on site_lsm"
(cd /tmp && PYTHONPATH=/tmp/site_lsm python3 -m pytest -q -x -p no:cacheprovider "$R/tests/test_rms_norm.py" \
    "$R/tests/test_fused_add_rms_norm.py" "$R/tests/test_batch_invariance.py" "$R/tests/test_norm_kernels_cuda.py" 2>&1 | tail -2)
for v in "base:" "lsm:" "lsm:100" "lsm:0"; do
    site=${v%%:*}; carve=${v#*:}
    echo "## ncu, site_$site, MV_PROBE_CARVEOUT=$carve"
    MV_PROBE_CARVEOUT=$carve PYTHONPATH=/tmp/site_$site ncu --clock-control none --kernel-name regex:'lanes|triton' \
        --metrics gpu__time_duration.sum,sm__cycles_active.avg --csv \
        python3 dev/probes/norm_kernel_ncu.py /tmp/snp.so qwen2.5-0.5b:256 qwen3-0.6b:128 llama-3-8b:128 2>/dev/null |
        python3 dev/probes/ncu_table.py
    echo "## the op and its norm in front of F.linear, site_$site, MV_PROBE_CARVEOUT=$carve"
    MV_PROBE_CARVEOUT=$carve PYTHONPATH=/tmp/site_$site python3 dev/probes/qkv_after_linear.py \
        --models qwen2.5-0.5b qwen3-0.6b llama-3-8b --m 32 128 512 --cols op+ "lin>op+" "lin>comp" 2>&1 | grep -v Warn
done
