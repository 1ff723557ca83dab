#!/usr/bin/env bash
# One command for a GPU machine: build offline, run the whole test suite, the bench self-check,
# every op under compute-sanitizer (memcheck, racecheck, initcheck, synccheck), the benchmarks in
# quick mode, and write every log plus a results JSON under OUTDIR, ending with a summary table.
#   usage: scripts/gpu_check.sh OUTDIR     (MINIVLLM_COMMIT names the commit when there is no .git)
#   SKIP="bench sanitizers" scripts/gpu_check.sh OUTDIR    leaves steps out (build stays; "tests"
#   leaves the test suite out too); SANITIZERS="memcheck-wgmma ..." runs only the named sanitizer runs
# About ten minutes on an H100/H200 (the three -wgmma sanitizer runs took 20 s of it on an H200);
# where one call is limited to ten, split the check with SKIP and SANITIZERS.
set -uo pipefail
out=${1:?usage: scripts/gpu_check.sh OUTDIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
root=$PWD
skip=" ${SKIP:-} "

status=0
nvidia-smi >"$out/nvidia-smi.txt" 2>&1 || true
step_times=()
timed() {  # timed NAME: record how long the step since the last call took
    local now
    now=$(date +%s)
    step_times+=("$1=$(( now - ${step_start:-now} ))")
    step_start=$now
}
step_start=$(date +%s)

echo "== build (offline) =="
if ! python3 -m pip install --no-build-isolation ".[test]" >"$out/build.log" 2>&1; then
    tail -n 60 "$out/build.log"
    echo "build FAILED"
    exit 1
fi
timed build
echo "built in ${step_times[-1]#*=} s"

if [[ $skip != *" tests "* ]]; then
echo "== tests =="
cd /tmp   # test the installed package, not the source tree
python3 -m pytest "$root/tests" -q -rs -p no:cacheprovider --junitxml="$out/pytest.xml" \
    >"$out/pytest.log" 2>&1 || status=1
grep -E "^(fuzz|leaks):" "$out/pytest.log" || true
tail -n 25 "$out/pytest.log"
# The QKV tests once more on the paths this GPU does not take by itself: each of the stream path's
# two kernels alone (on sm_90 it picks one by the size of W); every call the deferred-norm W stream
# can take (fp16/bf16, M <= 32); every call on the stream path where it applies; every call it can take
# on the one-kernel wgmma GEMM; every call on the tile GEMM and on the generic kernel (the paths
# taken where cuBLASLt cannot be loaded).
# The seven runs go side by side (separate processes; the GPU has room) to keep the check short.
qkv_envs=(MINIVLLM_QKV_PATH=register MINIVLLM_QKV_PATH=bulk MINIVLLM_QKV_PATH=deferred MINIVLLM_QKV_PATH=stream MINIVLLM_QKV_PATH=wgmma MINIVLLM_QKV_PATH=tile
          MINIVLLM_QKV_PATH=generic)
qkv_pids=()
for qkv_env in "${qkv_envs[@]}"; do
    env "$qkv_env" python3 -m pytest "$root/tests/test_fused_rms_norm_qkv.py" -q -k cuda \
        -p no:cacheprovider >"$out/pytest-qkv-${qkv_env#*=}.log" 2>&1 &
    qkv_pids+=($!)
done
for i in "${!qkv_envs[@]}"; do
    wait "${qkv_pids[$i]}" || status=1
    echo "QKV tests with ${qkv_envs[$i]}: $(tail -n 1 "$out/pytest-qkv-${qkv_envs[$i]#*=}.log")"
done
cd "$root"
timed tests
fi

echo "== bench self-check =="
(cd /tmp && python3 -m minivllm.bench) >"$out/bench.log" 2>&1 || status=1
cat "$out/bench.log"
timed bench_selfcheck

if [[ $skip != *" sanitizers "* ]]; then
    echo "== compute-sanitizer =="
    sanitizer=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
    if [ -x "$sanitizer" ]; then
        "$sanitizer" --version >"$out/sanitizer-version.txt" 2>&1 || true
        # memcheck and initcheck see every case; racecheck and synccheck (shared-memory and
        # barrier hazards, which depend on the kernel path rather than the dtype) see every M
        # in one dtype each, to fit the time.
        # Each tool has a time limit (seconds; MINIVLLM_SANITIZER_TIMEOUT overrides all four) so
        # the whole check stays near ten minutes; a tool that runs out says so in its log and
        # the summary.
        # initcheck does not track the TMA stores of cuBLASLt's Hopper kernels (it reports the
        # q/k/v they wrote as uninitialized when torch copies them), so its default pass stops
        # the QKV cases at M = 16, where our stream kernel writes them, and a second pass runs
        # every QKV case on our generic kernel (MINIVLLM_QKV_PATH=generic).
        # The -wgmma runs put every QKV call the one-kernel Hopper path can take on it (bf16: its
        # 64-row kernel up to M = 300, its 128-row kernel, with copy-engine stores, at M = 1024);
        # no initcheck there, as it does not track copy-engine stores (see above). The -deferred
        # runs do the same for the deferred-norm W stream (fp16/bf16, M <= 32).
        for run in ${SANITIZERS:-memcheck initcheck initcheck-generic racecheck synccheck memcheck-wgmma racecheck-wgmma synccheck-wgmma memcheck-deferred racecheck-deferred synccheck-deferred}; do
            tool=${run%%-*}
            path_env=()  # extra environment for this run only
            case $run in
                memcheck) cases=(); limit=150 ;;
                initcheck) cases=(--qkv-max-m 16); limit=100 ;;
                initcheck-generic) cases=(--ops qkv); limit=60; path_env=(MINIVLLM_QKV_PATH=generic) ;;
                racecheck) cases=(--dtypes bfloat16); limit=100 ;;
                synccheck) cases=(--dtypes bfloat16); limit=60 ;;
                *-wgmma) cases=(--ops qkv --dtypes bfloat16); limit=60; path_env=(MINIVLLM_QKV_PATH=wgmma) ;;
                *-deferred) cases=(--ops qkv --dtypes bfloat16 float16 --qkv-max-m 32); limit=60; path_env=(MINIVLLM_QKV_PATH=deferred) ;;
            esac
            limit=${MINIVLLM_SANITIZER_TIMEOUT:-$limit}
            t0=$(date +%s)
            (cd /tmp && env "${path_env[@]}" PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout "$limit" "$sanitizer" \
                --tool "$tool" --print-limit 100 --error-exitcode 3 \
                python3 "$root/scripts/sanitize_cases.py" "${cases[@]}") >"$out/sanitizer-$run.log" 2>&1
            rc=$?
            if [ $rc -eq 124 ]; then
                echo "gpu_check: TIMED OUT after $limit s" >>"$out/sanitizer-$run.log"
            fi
            [ $rc -eq 0 ] || status=1
            echo "$run: $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|sanitize_cases:|TIMED OUT' "$out/sanitizer-$run.log" |
                tr '\n' ' ') ($(( $(date +%s) - t0 )) s)"
        done
    else
        echo "compute-sanitizer not found (PATH, /usr/local/cuda/bin): sanitizer step NOT RUN" |
            tee "$out/sanitizer-missing.txt"
        status=1
    fi
    timed sanitizers
fi

if [[ $skip != *" bench "* ]]; then
    echo "== benchmarks (quick) =="
    for bench in bench_norm bench_qkv; do
        if [ -f "benchmarks/$bench.py" ]; then
            (cd /tmp && python3 "$root/benchmarks/$bench.py" --quick --out "$out") \
                >"$out/$bench.log" 2>&1 || status=1
            tail -n 15 "$out/$bench.log"
        fi
    done
    timed benchmarks
fi

MINIVLLM_STEP_SECONDS="${step_times[*]}" python3 scripts/gpu_results.py "$out" || status=1
exit $status
