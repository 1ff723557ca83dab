#!/usr/bin/env bash
# The CPU-only extension built with AddressSanitizer and UndefinedBehaviorSanitizer, then a
# subset of the test suite run against it: any invalid read or write, use after free, double
# free or undefined behaviour in the C sources (csrc/binding, csrc/cpu) aborts the run.
#   usage: scripts/sanitize_cpu.sh [pytest args]   (default: the subset below)
#
# The subset: test_fuzz.py (2,100 generated calls of the three ops with odd and bad arguments,
# the best sweep of the kernels' and checks' edge cases), test_dlpack.py (capsule ownership),
# test_errors.py (every argument check), test_threads.py (eight threads at once) and
# test_leaks.py (every call path, 100,000 times), and the CPU kernels' own files: every SIMD level
# forced in turn (test_cpu_simd.py), the numerics and checks (test_cpu_numerics.py), fork and the
# thread pool (test_cpu_threads.py), attention_prologue (its argument checks, fuzzed bad
# arguments and cache writes: test_attention_prologue.py), and the norm ops' rows in two strides
# (per-head views with strides of either sign: test_norm_views.py). The per-op test files add
# only more shapes of the same paths at three times the run time, so they are left to the plain
# run.
# Python itself is not instrumented: libasan is preloaded, and PYTHONMALLOC=malloc hands Python's
# allocations to it too. Leak reports are off (CPython keeps objects alive at exit by design);
# test_leaks.py measures leaks instead.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

libasan=$(cc -print-file-name=libasan.so)
if [ ! -e "$libasan" ]; then
    echo "sanitize_cpu: the C compiler has no libasan ($libasan)"
    exit 1
fi
libasan=$(realpath "$libasan")

tar --exclude=./build --exclude=./.git --exclude='*.so' -cf - . | (cd "$work" && tar xf -)
cd "$work"
flags="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g -O1"
echo "== ASan + UBSan build (CPU-only): $flags =="
MINIVLLM_CPU_ONLY=1 MINIVLLM_EXTRA_CFLAGS="$flags" MINIVLLM_EXTRA_LDFLAGS="-fsanitize=address,undefined" \
    "$python" setup.py -q build_ext --inplace >build.log 2>&1 || { tail -n 40 build.log; exit 1; }

if [ $# -eq 0 ]; then
    set -- tests/test_fuzz.py tests/test_dlpack.py tests/test_errors.py tests/test_threads.py \
        tests/test_leaks.py tests/test_cpu_simd.py tests/test_cpu_numerics.py tests/test_cpu_threads.py \
        tests/test_attention_prologue.py tests/test_norm_views.py
fi
# the in-place build is what gets imported from this copy's root (python -m pytest puts the
# working directory first on sys.path): say so, so a log shows which module ran
LD_PRELOAD="$libasan" ASAN_OPTIONS=detect_leaks=0 "$python" -c \
    "import minivllm._C as m; print('sanitized module:', m.__file__)"
echo "== pytest under ASan + UBSan: $* =="
LD_PRELOAD="$libasan" PYTHONMALLOC=malloc MINIVLLM_UNDER_ASAN=1 \
    ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:strict_string_checks=1:check_initialization_order=1 \
    UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    "$python" -m pytest -q -p no:cacheprovider "$@"
