#!/usr/bin/env bash
# The whole GPU check, one command: build and install the package offline, run the full test
# suite once (every QKV GPU path is exercised in-process: tests/test_fused_rms_norm_qkv.py runs
# each test on the automatic choice and on each path forced through _path=; the fuzz and leak
# tests print their "fuzz:" and "leaks:" figures), then the bench CLI's self-check, and write
# every log plus a results JSON (scripts/gpu_results.py) under the output folder, ending with a
# summary table. About 6 minutes on an H200 with a prebuilt package (MINIVLLM_SITE).
#   usage: bash scripts/gpu_check.sh [OUTDIR]    (default: $OUT if set, else gpu-check-out)
#   WITH="sanitizers benchmarks" adds compute-sanitizer runs over scripts/sanitize_cases.py and
#   the two benchmarks in quick mode (several minutes more; SANITIZERS="memcheck ..." picks runs);
#   WITH=host_cost adds benchmarks/host_cost.py (host time of one eager call, about a minute).
#   MINIVLLM_COMMIT names the commit where the tree has no .git; MINIVLLM_SITE, a folder holding
#   a build of the package for this Python (dev/probes/site_build.sh), skips the build.
# The suite runs as seventeen pytest processes side by side (the GPU has room, and the float64
# references use the host's cores; a few minutes on an H200), then the leak tests alone:
# together they are the suite, each test once.
set -uo pipefail
out=${1:-${OUT:-gpu-check-out}}
mkdir -p "$out"
out=$(cd "$out" && pwd)
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.." || exit 1
root=$PWD
with=" ${WITH:-} "

status=0
nvidia-smi >"$out/nvidia-smi.txt" 2>&1 || true
step_times=()
step_start=$(date +%s)
timed() {  # timed NAME: record how long the step since the last call took
    local now
    now=$(date +%s)
    step_times+=("$1=$(( now - step_start ))")
    step_start=$now
}

if [ -n "${MINIVLLM_SITE:-}" ]; then
    # a build made elsewhere for this Python (dev/probes/site_build.sh), put first on the path
    site=$(cd "$MINIVLLM_SITE" && pwd) || exit 1
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
    echo "== build: none, $MINIVLLM_SITE =="
    echo "prebuilt: $MINIVLLM_SITE" >"$out/build.log"
else
    echo "== build (offline) =="
    if ! python3 -m pip install --no-build-isolation . >"$out/build.log" 2>&1; then
        tail -n 60 "$out/build.log"
        echo "build FAILED"
        exit 1
    fi
fi
timed build
echo "built in ${step_times[-1]#*=} s"

echo "== tests =="
# (pytest arguments of each process; together: tests/, each test once)
# The QKV file's tests that force a path carry its name (cuda-NAME); each path has a process,
# and the rest of the file two, by dtype. The other files go to seven processes by theme (the
# compiled norm kernels' tests two, by dtype), so that no process takes much longer than the
# others (H200, session 68: 15 s to 5.3 minutes each, 6 in all).
paths=(deferred register bulk wgmma cublaslt tile generic engine)
forced=$(printf 'cuda-%s or ' "${paths[@]}"); forced=${forced% or }
t=$root/tests
shards=(prologue invariance cpu-errors norms norm-jit norm-jit-other fuzz qkv-bf16 qkv-other "${paths[@]/#/path-}")
shard_args=(
    "$t/test_attention_prologue.py $t/test_torch_attention_prologue.py $t/test_hf_patch.py $t/test_torch_fast_path.py"
    "$t/test_batch_invariance.py"
    "$t/test_cpu_simd.py $t/test_cpu_numerics.py $t/test_cpu_threads.py $t/test_dlpack.py $t/test_errors.py"
    "$t/test_rms_norm.py $t/test_fused_add_rms_norm.py $t/test_norm_views.py $t/test_norm_weights.py $t/test_norm_kernels_cuda.py"
    "$t/test_norm_jit.py -k bfloat16"
    "$t/test_norm_jit.py -k not bfloat16"
    "$t/test_fuzz.py $t/test_pdl.py $t/test_interop.py $t/test_torch_ops.py $t/test_threads.py"
    "$t/test_fused_rms_norm_qkv.py -k not ($forced) and bfloat16"
    "$t/test_fused_rms_norm_qkv.py -k not ($forced) and not bfloat16"
)
for p in "${paths[@]}"; do shard_args+=("$t/test_fused_rms_norm_qkv.py -k cuda-$p"); done
# Every test file but the leak tests' must sit in one shard (checked here, so a new file cannot
# be left out of the GPU check).
for f in "$t"/test_*.py; do
    [ "$(basename "$f")" = test_leaks.py ] && continue
    [[ " ${shard_args[*]} " == *"$f "* ]] || { echo "gpu_check: $f is in no shard"; exit 1; }
done
# Two BLAS threads per process: seven processes of the host's default thread count each made
# the float64 references fight for the cores.
threads=$(( $(nproc) / ${#shards[@]} ))
threads=$(( threads < 1 ? 1 : threads ))
pids=()
cd /tmp || exit 1   # test the installed package, not the source tree
for i in "${!shards[@]}"; do
    args=${shard_args[$i]}
    selection=()
    if [[ $args == *" -k "* ]]; then
        selection=(-k "${args#* -k }")
        args=${args%% -k *}
    fi
    # shellcheck disable=SC2086  # $args: paths and options, split on purpose
    OMP_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=$threads MKL_NUM_THREADS=$threads \
        python3 -m pytest $args "${selection[@]}" -q -rs -p no:cacheprovider --durations=10 \
        --junitxml="$out/pytest-${shards[$i]}.xml" >"$out/pytest-${shards[$i]}.log" 2>&1 &
    pids+=($!)
done
for i in "${!shards[@]}"; do
    wait "${pids[$i]}" || status=1
    echo "tests ${shards[$i]}: $(tail -n 1 "$out/pytest-${shards[$i]}.log")"
done
# The leak tests last and alone: they read the device's free memory, which the other processes'
# allocations would move.
python3 -m pytest "$root/tests/test_leaks.py" -q -rs -p no:cacheprovider \
    --junitxml="$out/pytest-leaks.xml" >"$out/pytest-leaks.log" 2>&1 || status=1
echo "tests leaks: $(tail -n 1 "$out/pytest-leaks.log")"
cd "$root" || exit 1
grep -hE "^(fuzz|leaks):" "$out"/pytest-fuzz.log "$out"/pytest-leaks.log || true
grep -hE "^(FAILED|ERROR) " "$out"/pytest-*.log | head -n 40 || true
timed tests

echo "== bench self-check =="
(cd /tmp && python3 -m minivllm.bench --no-progress) >"$out/bench.log" 2>&1 || status=1
cat "$out/bench.log"
timed bench_selfcheck

if [[ $with == *" sanitizers "* ]]; then
    echo "== compute-sanitizer =="
    sanitizer=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
    if [ -x "$sanitizer" ]; then
        "$sanitizer" --version >"$out/sanitizer-version.txt" 2>&1 || true
        # memcheck and initcheck see every case; racecheck and synccheck (shared-memory and
        # barrier hazards, which depend on the kernel path rather than the dtype) see every M
        # in one dtype each. initcheck does not track the TMA stores of cuBLASLt's Hopper
        # kernels nor copy-engine stores (it reports what they wrote as uninitialized), so its
        # default pass stops the QKV cases at M = 16 and a second pass forces the generic
        # kernel. The -wgmma, -deferred and -engine runs force those paths for every call they take.
        # Each run has a time limit (seconds; MINIVLLM_SANITIZER_TIMEOUT overrides them all).
        for run in ${SANITIZERS:-memcheck initcheck initcheck-generic racecheck synccheck memcheck-wgmma racecheck-wgmma synccheck-wgmma memcheck-deferred racecheck-deferred synccheck-deferred memcheck-engine racecheck-engine synccheck-engine}; do
            tool=${run%%-*}
            case $run in
                memcheck) cases=(); limit=150 ;;
                initcheck) cases=(--qkv-max-m 16); limit=100 ;;
                initcheck-generic) cases=(--ops qkv --path generic); limit=60 ;;
                racecheck) cases=(--dtypes bfloat16); limit=100 ;;
                synccheck) cases=(--dtypes bfloat16); limit=60 ;;
                *-wgmma) cases=(--ops qkv --dtypes bfloat16 --path wgmma); limit=60 ;;
                *-deferred) cases=(--ops qkv --dtypes bfloat16 float16 --qkv-max-m 32 --path deferred); limit=60 ;;
                # the engine, on shapes it takes: M = 4096 its stream-K form, the others its cluster
                # split; racecheck and synccheck in bf16 as above (in fp16 they also see the
                # hazards racecheck reports inside cuBLASLt's own kernels, which take the calls
                # the engine refuses)
                memcheck-engine) cases=(--ops qkv --dtypes bfloat16 float16 --ms 1 17 100 4096 --path engine
                                        --qkv-shapes 96:2:1:24 1024:8:2:64 2048:16:2:128); limit=150 ;;
                *-engine) cases=(--ops qkv --dtypes bfloat16 --ms 1 17 100 4096 --path engine
                                 --qkv-shapes 96:2:1:24 1024:8:2:64 2048:16:2:128); limit=150 ;;
                *) echo "unknown sanitizer run $run"; status=1; continue ;;
            esac
            limit=${MINIVLLM_SANITIZER_TIMEOUT:-$limit}
            t0=$(date +%s)
            (cd /tmp && PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout "$limit" "$sanitizer" \
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

if [[ $with == *" benchmarks "* ]]; then
    echo "== benchmarks (quick) =="
    for bench in bench_rms_norm bench_fused_rms_norm_qkv; do
        (cd /tmp && python3 "$root/benchmarks/$bench.py" --quick --out "$out") \
            >"$out/$bench.log" 2>&1 || status=1
        tail -n 15 "$out/$bench.log"
    done
    timed benchmarks
fi

if [[ $with == *" host_cost "* ]]; then
    echo "== host cost per eager call =="
    (cd /tmp && python3 "$root/benchmarks/host_cost.py" --device cuda --calls 5000 \
        --out "$out/host-cost.json") >"$out/host-cost.log" 2>&1 || status=1
    cat "$out/host-cost.log"
    timed host_cost
fi

MINIVLLM_STEP_SECONDS="${step_times[*]}" python3 scripts/gpu_results.py "$out" || status=1
exit $status
