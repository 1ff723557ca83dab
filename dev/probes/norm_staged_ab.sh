#!/usr/bin/env bash
# On the GPU machine: a carried experiment build of a norm kernel (e.g. dev/probes/staged_old_switch.sh,
# site_build.sh, packed as build/carry_c/SITE.tgz): the GPU norm tests (TESTS=1), compute-sanitizer memcheck,
# racecheck and synccheck over the norms at 600 rows (SAN=1), then bench_rms_norm on SHAPES (default: odd-H shapes
# the staged kernel takes) in AB_DTYPES (default bf16 fp16): the new form, then each of VARIANTS (default: the old
# staged kernel, MV_EXP_STAGED_OLD=1, and the new again for drift), Liger beside the first.
#   SITE=site_x SAN=1 OUT=... [SHAPES=...] [VARIANTS="name=ENV=VAL ..."] bash dev/probes/norm_staged_ab.sh
set -u
R=$(pwd); export PYTHONUNBUFFERED=1
S=${SITE:?}
tar -xzf build/carry_c/$S.tgz -C /tmp
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/wheels build/carry_c/*.whl
echo "# $(nvidia-smi --query-gpu=name,clocks.max.sm,driver_version --format=csv,noheader | head -1), $(date -u +%FT%TZ)"
if [ "${SAN:-0}" = 1 ]; then
  san=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
  for tool in memcheck racecheck synccheck; do
    t1=$(date +%s)
    (cd /tmp && PYTHONPATH=/tmp/$S PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 110 $san --tool $tool --print-limit 20 \
       python3 $R/scripts/sanitize_cases.py --ops rms_norm fused_add_rms_norm --dtypes bfloat16 float16 --ms 600 2 > $OUT/san-$tool.log 2>&1)
    echo "$tool rc $? $(( $(date +%s) - t1 )) s: $(grep -E 'SUMMARY|sanitize_cases:' $OUT/san-$tool.log | tr '\n' ' ')"
  done
fi
[ "${TESTS:-1}" = 1 ] && { . dev/probes/norm_checks.sh; norm_gpu_tests /tmp/$S $OUT; grep -E "staged_rows" $OUT/tests.log | head -5; }
AB_NEW=/tmp/$S AB_DTYPES="${AB_DTYPES:-bf16 fp16}" \
  bash dev/probes/norm_env_ab.sh "${SHAPES:-600x8191 4096x8191 4096x5119 4096x5125 1024x6001 2048x4097 600x5119 8192x4097}" \
  "${VARIANTS:-old=MV_EXP_STAGED_OLD=1 new2=MV_EXP_STAGED_OLD=0}"
echo "# end $(date -u +%FT%TZ)"
