#!/usr/bin/env bash
# An experiment rms_norm.cu holding two forms of the staged norm kernel as kernels of their own (each at
# its own register count, so an A/B compares occupancy too): NEW with OLD's staged section (from its
# "rows off the 16-byte grid, staged through shared memory" banner to launch_staged) copied into
# namespace staged_old, and launch_staged sending calls there under MV_EXP_STAGED_OLD=1.
#   bash dev/probes/staged_old_switch.sh OLD_rms_norm.cu NEW_rms_norm.cu > exp.cu
#   bash dev/probes/site_build.sh build/site_x exp.cu   (then dev/probes/norm_env_ab.sh with old=MV_EXP_STAGED_OLD=1)
set -euo pipefail
old=$1 new=$2
first=$(grep -n "^/\* ---- rows off the 16-byte grid, staged through shared memory" "$old" | cut -d: -f1)
old_end=$(( $(grep -n "^cudaError_t launch_staged(" "$old" | cut -d: -f1) + 8 ))
at=$(grep -n "^cudaError_t launch_staged(" "$new" | cut -d: -f1)
head -n $((at - 2)) "$new"
echo "namespace staged_old { /* EXPERIMENT: the old staged kernel as a kernel of its own */"
sed -n "${first},${old_end}p" "$old"
echo "} // namespace staged_old"
echo
sed -n "$((at - 1)),$((at + 1))p" "$new"
cat <<'EOS'
    static const int use_old = [] { const char *s = getenv("MV_EXP_STAGED_OLD"); return s != nullptr && s[0] == '1'; }();
    if (use_old) return staged_old::launch_staged<T, TW, V>(a, group_threads, dev, stream, pdl);
EOS
sed -n "$((at + 2)),\$p" "$new"
