#!/usr/bin/env bash
# The engine's start in a model, knob by knob, and the QKV paths after a kernel that lets nothing
# overlap: build the tree (sm_90 only; dev/engine_experiments.patch applied), then
# dev/engine_trace.py in the decode step under each knob setting of KNOBS ("EXPERIMENT:EARLY" pairs),
# then dev/probes/qkv_chains.py --paths $PATHS for SHAPES. Outputs in $OUT.
# usage (device): OUT=$OUT bash dev/probes/engine_start.sh "qwen3-0.6b:16 llama-3-8b:1" "0:0 64:0 0:1 64:1 32:0" \
#                   "auto engine deferred" "llama-3-8b:16 qwen3-4b:32"
set -u
repo=$PWD; t0=$(date +%s)
MINIVLLM_CUDA_ARCHS=90 python3 -m pip install -q --no-deps --no-build-isolation --target /tmp/site "$repo" >"$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
echo "built in $(( $(date +%s) - t0 )) s"
cd /tmp
PYTHONPATH=/tmp/site timeout 250 python3 "$repo/dev/probes/qkv_chains.py" --paths $3 -- $4 2>&1 | grep -v -i warn | tee "$OUT/chains.txt"
echo "chains done at $(( $(date +%s) - t0 )) s"
for spec in $1; do
  for knob in $2; do
    echo "== ${spec} experiment ${knob%:*} early ${knob#*:}" | tee -a "$OUT/trace.txt"
    # engine_trace.py sets MV_ENGINE_EXPERIMENT to the traced launch << 8; the knob bits ride in MV_ENGINE_KNOBS
    MV_ENGINE_KNOBS=${knob%:*} MV_ENGINE_EARLY=${knob#*:} PYTHONPATH=/tmp/site timeout 60 python3 "$repo/dev/engine_trace.py" model "${spec%:*}" "${spec#*:}" 2>&1 | grep -v -i warn | tee -a "$OUT/trace.txt"
  done
done
echo "total $(( $(date +%s) - t0 )) s"
