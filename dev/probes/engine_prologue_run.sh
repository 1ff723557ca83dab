set -u
repo=$PWD; t0=$(date +%s)
MINIVLLM_CUDA_ARCHS=90 python3 -m pip install -q --no-deps --no-build-isolation --target /tmp/site "$repo" >"$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
echo "built in $(( $(date +%s) - t0 )) s"
cd "$repo/tests"
PYTHONPATH=/tmp/site timeout 150 python3 -m pytest -q -x -p no:cacheprovider test_attention_prologue.py test_torch_attention_prologue.py test_hf_patch.py -k "not fuzz" 2>&1 | tail -n 8 | tee "$OUT/tests.txt"
echo "tests done at $(( $(date +%s) - t0 )) s"
cd /tmp
PYTHONPATH=/tmp/site timeout 120 python3 "$repo/benchmarks/bench_attention_prologue.py" --m 1 2 4 8 16 32 64 256 1024 4096 --no-compile --out "$OUT" 2>&1 | grep -v Warning > "$OUT/prologue.log"; sed -n '/^µs per call/,/^op-level/p' "$OUT/prologue.log"
echo "prologue done at $(( $(date +%s) - t0 )) s"
PYTHONPATH=/tmp/site timeout $(( 580 - ($(date +%s) - t0) )) python3 "$repo/benchmarks/bench_decode.py" --batch 1 16 --out "$OUT" 2>&1 | grep -v Warning > "$OUT/decode.log"; grep -E "batch|MET" "$OUT/decode.log" | cut -c1-400
echo "total $(( $(date +%s) - t0 )) s"
