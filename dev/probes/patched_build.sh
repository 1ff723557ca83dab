# Sourced by the probes that time a dev patch on the GPU machine (wgmma_share.sh, wgmma_forms.sh):
# `patched_build PATCH MARKER` applies PATCH to the device's copy of the tree (or finds it applied:
# MARKER is a string the patch adds to wgmma.cu) and builds it into /tmp/site, unless the warm
# machine's last build there is of the same patched tree. Needs $OUT and $t0.
patched_build() {
  local patch=$1 marker=$2 sum
  patch -s -p1 -N < "$patch" >/dev/null || grep -q "$marker" csrc/cuda/fused_rms_norm_qkv/wgmma.cu ||
    { echo "cannot apply $patch"; exit 1; }
  # a build of another tree or patch (a warm machine keeps /tmp/site between calls) is rebuilt
  sum=$(cat "$patch" $(find csrc -type f | sort) 2>/dev/null | md5sum | cut -c1-32)
  [ "$(cat /tmp/site/.tree-sum 2>/dev/null)" = "$sum" ] || rm -rf /tmp/site
  if [ ! -d /tmp/site/minivllm ]; then
    MINIVLLM_CUDA_ARCHS=90 python3 -m pip install -q --no-deps --no-build-isolation --target /tmp/site . > $OUT/build.log 2>&1 ||
      { tail -30 $OUT/build.log; exit 1; }
    echo "$sum" > /tmp/site/.tree-sum
    echo "built $(( $(date +%s) - t0 )) s"
  fi
}
