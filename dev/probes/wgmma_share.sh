#!/usr/bin/env bash
# The wgmma path with x's tile shared over neighbouring column tiles and W's over neighbouring row
# tiles by tensor-copy multicast (dev/wgmma_share_x.patch, applied to the device's copy of the tree
# first), on the GPU machine. "check": build; one call per form and shape against a float64
# reference; the wgmma tests with forms forced. "bench": bench_fused_rms_norm_qkv with the path
# forced in each form, beside the table (the product's tiling) and cuBLAS alone. "sanitize":
# compute-sanitizer memcheck, racecheck and synccheck on a few calls of two forms.
# A form is XS:WS[:MC], the dev-only MINIVLLM_DEV_WGMMA_SHARE and MINIVLLM_DEV_WGMMA_WSHARE: 1 none,
# 0 the patch's byte model, n > 1 only n; MC (MINIVLLM_DEV_WGMMA_MC): 2 multicast (default), 1 each
# CTA copies every slice itself but releases stages across the cluster, 0 self copies, local release,
# 3 and 4 as 2 and 1 with CTA-scope release; WIDTH, SPLIT (0 any) force the tiling, STAGES cuts an
# unsplit ring (0 none); COLS 1 puts both consumers on every stage, each on half its columns
# (unsplit only): e.g. 1:1:2:64:1:4:1 is 64 x 64 tiles, unsplit, 4 stages, consumers by columns. Each step stays within a device call's limit.
# usage (device): OUT=$OUT bash dev/probes/wgmma_share.sh check|bench|sanitize|ncu ["models"] ["M values"] ["forms"]
# (check: TEST_FORMS="..." picks the three forms the QKV suite runs with, default "0:0 2:2 1:4",
# TEST_SECONDS their limit, default 170; "all": check, then bench, in one call)
# (its output goes straight to the terminal: no pipe to tail, which prints nothing if a limit hits)
set -u
R=$PWD t0=$(date +%s)
step=${1:-check} models=${2:-"qwen3-0.6b qwen2.5-0.5b llama-3.2-1b gemma-3-1b llama-3-8b qwen3-4b"}
ms=${3:-"32 64 128 256 512"} forms=${4:-"1:1 0:0 4:1 2:2 1:4 1:2"}
. "$R/dev/probes/patched_build.sh"
patched_build dev/wgmma_share_x.patch MINIVLLM_DEV_WGMMA_SHARE
cd /tmp
with_form() { # XS:WS[:MC[:WIDTH[:SPLIT[:STAGES[:COLS]]]]] command...
  local f=$1 xs ws mc width split stages cols; shift
  IFS=: read -r xs ws mc width split stages cols <<< "$f"
  MINIVLLM_DEV_WGMMA_SHARE=$xs MINIVLLM_DEV_WGMMA_WSHARE=$ws MINIVLLM_DEV_WGMMA_MC=${mc:-2} \
    MINIVLLM_DEV_WGMMA_WIDTH=${width:-0} MINIVLLM_DEV_WGMMA_SPLIT=${split:-0} MINIVLLM_DEV_WGMMA_STAGES=${stages:-0} \
    MINIVLLM_DEV_WGMMA_COLS=${cols:-0} PYTHONPATH=/tmp/site "$@"
}
if [ "$step" = check ] || [ "$step" = all ]; then
  for f in $forms; do
    MINIVLLM_DEV_WGMMA_PRINT=1 with_form $f timeout 60 python3 $R/dev/probes/wgmma_rows_check.py 64,1024 128,4096 48,1536 \
      64,896,14,2,64 200,1000 20,2048 256,4096,32,8,128 2>&1 | grep -E 'plan|M=|Error' | sed "s/^/form $f: /"
    echo "form $f rc=${PIPESTATUS[0]}"
  done
  echo "checks at $(( $(date +%s) - t0 )) s"
  for f in ${TEST_FORMS:-0:0 2:2 1:4}; do
    ( with_form $f timeout ${TEST_SECONDS:-170} python3 -m pytest -q -x -p no:cacheprovider $R/tests/test_fused_rms_norm_qkv.py \
        -k "cuda-wgmma" > $OUT/tests-${f/:/x}.log 2>&1
      echo "tests $f rc $?: $(tail -1 $OUT/tests-${f/:/x}.log)"; grep -E '^FAILED|^E ' $OUT/tests-${f/:/x}.log | head -6 ) &
  done
  # the norm kernels' GPU tests beside them (a change to the norms can ride on the same build)
  ( PYTHONPATH=/tmp/site timeout ${TEST_SECONDS:-170} python3 -m pytest -q -x -p no:cacheprovider $R/tests/test_norm_kernels_cuda.py \
      $R/tests/test_batch_invariance.py $R/tests/test_rms_norm.py $R/tests/test_fused_add_rms_norm.py -k "cuda" \
      > $OUT/tests-norms.log 2>&1
    echo "norm tests rc $?: $(tail -1 $OUT/tests-norms.log)"; grep -E '^FAILED|^E ' $OUT/tests-norms.log | head -6 ) &
  wait
  echo "tests at $(( $(date +%s) - t0 )) s"
  [ "$step" = all ] || exit 0
fi
if [ "$step" = ncu ]; then # one call per form and shape under Nsight Compute: stall reasons, and the SASS lines most sampled
  i=0
  for f in $forms; do for shape in $ms; do i=$((i+1))
    with_form $f timeout 150 ncu --kernel-name regex:qkv_wgmma --launch-count 1 --section SpeedOfLight --section WarpStateStats \
      --section SchedulerStats --section MemoryWorkloadAnalysis --section SourceCounters -o /tmp/prof$i -f \
      python3 $R/dev/probes/wgmma_rows_check.py $shape > /tmp/ncu$i.log 2>&1
    echo "== form $f shape $shape: rc $?"; grep -E 'M=|Error|ERR' /tmp/ncu$i.log | head -3
    ncu --import /tmp/prof$i.ncu-rep --print-details all 2>&1 | grep -vE '^ +-+$|^ *$' | grep -E 'Duration|Throughput|Stall|Warp Cycles|Issued|Eligible|Active Warps|No Eligible|L2|DRAM|Mem Busy' | head -40
    ncu --import /tmp/prof$i.ncu-rep --page source --print-source sass --csv > /tmp/src$i.csv 2>/dev/null
    python3 $R/dev/probes/ncu_top_sass.py /tmp/src$i.csv 24
  done; done
  exit 0
fi
if [ "$step" = sanitize ]; then
  for f in 2:2 4:1; do for tool in memcheck racecheck synccheck; do
    with_form $f timeout 120 compute-sanitizer --tool $tool --error-exitcode 9 python3 $R/dev/probes/wgmma_rows_check.py \
      128,1024 200,1000 64,896,14,2,64 > $OUT/sanitize-${f/:/x}-$tool.log 2>&1
    echo "$tool $f: rc $? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|hazard' $OUT/sanitize-${f/:/x}-$tool.log | tail -1)"
  done; done
  exit 0
fi
run() { # name, form, extra args...
  local name=$1 f=$2; shift 2
  with_form $f timeout 100 python3 "$R/benchmarks/bench_fused_rms_norm_qkv.py" --models $models --dtypes bf16 --m $ms \
    --no-compile --no-host --progress off --no-plot --replays 9 --out "$OUT/$name" "$@" > "$OUT/$name.log" 2>&1
  echo "$name: rc $? at $(( $(date +%s) - t0 )) s"
}
run auto 1:1 --impls minivllm cublas
names=""
for f in $forms; do run "form${f//:/x}" $f --impls minivllm --path wgmma; names="$names form${f//:/x}"; done
python3 "$R/dev/probes/wgmma_forms_table.py" "$OUT" $names
echo "total $(( $(date +%s) - t0 )) s"
