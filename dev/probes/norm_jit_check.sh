#!/usr/bin/env bash
# One device call (session 66): the run-time compiled short-call norms (csrc/cuda/norm_jit.cu) on a
# carried build of the tree (build/carry/site_jit.tgz, dev/probes/site_build.sh): their tests, the
# norm tests' GPU cases, then the A/B chains against the lanes kernels and torch.compile.
#   source dev/probes/carry_unpack.sh; bash dev/probes/norm_jit_check.sh
set -uo pipefail
R=$PWD
export PYTHONPATH=/tmp/site_jit
echo "## tests/test_norm_jit.py"
(cd /tmp && timeout 170 python3 -m pytest -q -x -p no:cacheprovider "$R/tests/test_norm_jit.py" 2>&1 | tail -4)
echo "## tests/test_rms_norm.py tests/test_fused_add_rms_norm.py, GPU cases"
(cd /tmp && timeout 90 python3 -m pytest -q -x -p no:cacheprovider -k cuda "$R/tests/test_rms_norm.py" \
    "$R/tests/test_fused_add_rms_norm.py" 2>&1 | tail -3)
echo "## A/B chains"
timeout 100 python3 dev/probes/norm_jit_ab.py 2>&1 | grep -v Warn
