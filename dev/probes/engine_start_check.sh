#!/usr/bin/env bash
# The tree as it lands after the engine-start work: build (sm_90 only), the QKV and prologue GPU
# tests (no fuzz), the QKV paths after a kernel that lets nothing overlap (qkv_chains.py --paths),
# and the decode step's kernels with the product's prologue and the engine's one-kernel form
# (decode_profile.py --graph). Outputs in $OUT.
# usage (device): OUT=$OUT bash dev/probes/engine_start_check.sh "auto engine deferred bulk" "falcon-7b:1 ..." "qwen3-0.6b:16 ..."
set -u
repo=$PWD; t0=$(date +%s)
MINIVLLM_CUDA_ARCHS=90 python3 -m pip install -q --no-deps --no-build-isolation --target /tmp/site "$repo" >"$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
echo "built in $(( $(date +%s) - t0 )) s"
cd "$repo/tests"
PYTHONPATH=/tmp/site timeout 200 python3 -m pytest -q -x -p no:cacheprovider test_fused_rms_norm_qkv.py test_attention_prologue.py -k "not fuzz" 2>&1 | tail -n 4 | tee "$OUT/tests.txt"
echo "tests done at $(( $(date +%s) - t0 )) s"
cd /tmp
PYTHONPATH=/tmp/site timeout 90 python3 "$repo/dev/probes/qkv_chains.py" --paths $1 -- $2 2>&1 | grep -v -i warn | tee "$OUT/chains.txt"
echo "chains done at $(( $(date +%s) - t0 )) s"
for spec in $3; do
  for pp in "" engine_prologue; do
    PYTHONPATH=/tmp/site timeout 40 python3 "$repo/dev/decode_profile.py" --model "${spec%:*}" --batch "${spec#*:}" --graph \
      --variants minivllm ${pp:+--prologue-path $pp} --top 3 2>&1 | grep -v -i warn | tee -a "$OUT/profile.txt"
  done
done
echo "total $(( $(date +%s) - t0 )) s"
