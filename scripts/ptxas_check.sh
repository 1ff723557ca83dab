#!/usr/bin/env bash
# Hopper kernels that ptxas quietly slows down: compiles every source that uses wgmma (the files that
# include csrc/cuda/wgmma_ops.cuh: the product's sm_90a sources and the dev probes) for sm_90a with
# `-Xptxas -v`, and fails on any "Potential Performance Loss" ptxas reports: wgmma serialized
# (C7518: a wgmma wait or an accumulator access in a data-dependent branch; C7512: not enough
# registers) or a setmaxnreg ignored (C7507). Such a kernel still computes the right thing, so no
# test sees it, and a GPU run would only show it slow. Register spills are listed, not failed on.
#   usage: scripts/ptxas_check.sh     (needs nvcc; where there is none it says so and passes)
set -euo pipefail
cd "$(dirname "$0")/.."
nvcc=$(command -v nvcc || true)
[ -n "$nvcc" ] || { [ -x "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" ] && nvcc="${CUDA_HOME:-/usr/local/cuda}/bin/nvcc"; }
if [ -z "$nvcc" ]; then
    echo "ptxas_check: no nvcc here, nothing compiled"
    exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mapfile -t sources < <(grep -l '#include "\(cuda/\|../../csrc/cuda/\)wgmma_ops.cuh"' csrc/cuda/*.cu csrc/cuda/*/*.cu dev/probes/*.cu)
compile() { # source -> its ptxas report in $work
    local src=$1 log="$work/$(echo "$1" | tr / _).log"
    # the product's flags for its sm_90a files (setup.py); the probes build the same way
    "$nvcc" -std=c++17 -O3 --expt-relaxed-constexpr -Icsrc -gencode=arch=compute_90a,code=sm_90a \
        -DMINIVLLM_HAVE_SM90A -Xptxas -v -c "$src" -o "$work/obj.$$.$RANDOM.o" >"$log" 2>&1 ||
        { echo "ptxas_check: $src does not compile"; tail -n 20 "$log"; return 1; }
}
pids=()
for src in "${sources[@]}"; do
    compile "$src" &
    pids+=($!)
    # two at a time: the machines this runs on have two cores
    if [ ${#pids[@]} -ge 2 ]; then wait "${pids[0]}"; pids=("${pids[@]:1}"); fi
done
for p in "${pids[@]}"; do wait "$p"; done
status=0
for src in "${sources[@]}"; do
    log="$work/$(echo "$src" | tr / _).log"
    [ -f "$log" ] || { echo "ptxas_check: no report for $src"; status=1; continue; }
    losses=$(grep -c "Potential Performance Loss" "$log" || true)
    spills=$(grep -E "[1-9][0-9]* bytes spill stores" "$log" | sort | uniq -c | sed 's/^ */    /' || true)
    kernels=$(grep -c "Compiling entry function" "$log" || true)
    echo "$src: $kernels kernels, $losses performance-loss reports"
    [ -z "$spills" ] || printf '  spills:\n%s\n' "$spills"
    if [ "$losses" -gt 0 ]; then
        grep "Potential Performance Loss" "$log" | sed 's/^ptxas info *: /  /' | cut -c1-220 | sort -u
        status=1
    fi
done
[ $status -eq 0 ] && echo "ptxas_check: clean" || echo "ptxas_check: FAILED"
exit $status
