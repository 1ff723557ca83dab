#!/usr/bin/env bash
# One command for a GPU machine: build offline, run the whole test suite, run the bench
# self-check and timing table, and write every log plus a results JSON under OUTDIR.
#   usage: scripts/gpu_check.sh OUTDIR          (MINIVLLM_COMMIT names the commit when no .git)
set -uo pipefail
out=${1:?usage: scripts/gpu_check.sh OUTDIR}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."

status=0
nvidia-smi >"$out/nvidia-smi.txt" 2>&1 || true

echo "== build (offline) =="
start=$(date +%s)
if ! python3 -m pip install --no-build-isolation ".[test]" >"$out/build.log" 2>&1; then
    tail -n 60 "$out/build.log"
    echo "build FAILED"
    exit 1
fi
echo "built in $(( $(date +%s) - start )) s"

echo "== tests =="
cd /tmp   # test the installed package, not the source tree
python3 -m pytest "$OLDPWD/tests" -q -rs -p no:cacheprovider --junitxml="$out/pytest.xml" \
    >"$out/pytest.log" 2>&1 || status=1
tail -n 25 "$out/pytest.log"
cd "$OLDPWD"

echo "== bench =="
(cd /tmp && python3 -m minivllm.bench) >"$out/bench.log" 2>&1 || status=1
cat "$out/bench.log"

python3 scripts/gpu_results.py "$out" || status=1
exit $status
