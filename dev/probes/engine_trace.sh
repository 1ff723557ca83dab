#!/usr/bin/env bash
# Per-CTA phase times of the engine's one-kernel prologue in a model's decode step and in a chain
# of its own calls (dev/engine_trace.py). Run with dev/engine_experiments.patch applied to the
# tree; builds sm_90 only. TESTS (optional): pytest -k
# expression for tests/test_attention_prologue.py, run after the traces.
# usage (device): OUT=$OUT [TESTS="not fuzz"] bash dev/probes/engine_trace.sh "qwen3-0.6b:16 llama-3-8b:1"
set -u
repo=$PWD; t0=$(date +%s)
MINIVLLM_CUDA_ARCHS=90 python3 -m pip install -q --no-deps --no-build-isolation --target /tmp/site "$repo" >"$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
echo "built in $(( $(date +%s) - t0 )) s"
cd /tmp
for spec in $1; do
  for ctx in model chain; do
    PYTHONPATH=/tmp/site timeout 100 python3 "$repo/dev/engine_trace.py" $ctx "${spec%:*}" "${spec#*:}" 2>&1 | grep -v -i warn | tee -a "$OUT/trace.txt"
  done
done
echo "traces done at $(( $(date +%s) - t0 )) s"
if [ -n "${TESTS:-}" ]; then
  cd "$repo/tests"
  PYTHONPATH=/tmp/site timeout $(( 585 - ($(date +%s) - t0) )) python3 -m pytest -q -x -p no:cacheprovider test_attention_prologue.py -k "$TESTS" 2>&1 | tail -n 6 | tee "$OUT/tests.txt"
fi
echo "total $(( $(date +%s) - t0 )) s"
