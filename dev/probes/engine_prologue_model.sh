#!/usr/bin/env bash
# Where the engine's one-kernel prologue loses time inside a model's decode step: build the tree
# (sm_90 only; with dev/engine_experiments.patch applied for the MV_ENGINE_EXPERIMENT knobs), then
# dev/decode_profile.py --graph --timeline of the product and of _path="engine_prologue", and the
# engine kernel's per-step total under each knob. Outputs in $OUT/profile-*.txt.
# usage (device): OUT=$OUT bash dev/probes/engine_prologue_model.sh "qwen3-0.6b:16 llama-3-8b:1" "8 16 32"
set -u
specs=$1 knobs=${2:-}
repo=$PWD; t0=$(date +%s)
MINIVLLM_CUDA_ARCHS=90 python3 -m pip install -q --no-deps --no-build-isolation --target /tmp/site "$repo" >"$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
echo "built in $(( $(date +%s) - t0 )) s"
cd /tmp
for spec in $specs; do
  m=${spec%:*} b=${spec#*:}
  f="$OUT/profile-$m-$b.txt"
  PYTHONPATH=/tmp/site timeout 120 python3 "$repo/dev/decode_profile.py" --model "$m" --batch "$b" --graph --timeline \
    --variants minivllm --top 14 2>&1 | grep -v -i warn > "$f"
  PYTHONPATH=/tmp/site timeout 120 python3 "$repo/dev/decode_profile.py" --model "$m" --batch "$b" --graph --timeline \
    --variants minivllm --prologue-path engine_prologue --top 14 2>&1 | grep -v -i warn >> "$f"
  for k in $knobs; do
    echo "== MV_ENGINE_EXPERIMENT=$k" >> "$f"
    MV_ENGINE_EXPERIMENT=$k PYTHONPATH=/tmp/site timeout 120 python3 "$repo/dev/decode_profile.py" --model "$m" --batch "$b" \
      --graph --variants minivllm --prologue-path engine_prologue --top 4 2>&1 | grep -v -i warn >> "$f"
  done
  echo "=== $spec ($(( $(date +%s) - t0 )) s)"; cut -c1-150 "$f"
done
