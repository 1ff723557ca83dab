#!/bin/bash
# cpu_gemv_harness_build.sh SRC OUT "name:flags" ...: each variant's kernels_avx512.c (from SRC/csrc) built with its flags under the suffix name, linked with SRC's pool.c into OUT (run from the repository root)
src=$1; out=$2; shift 2; objs=""; list=""
mkdir -p /tmp/cpu_gemv_vobj
for spec in "$@"; do n=${spec%%:*}; f=${spec#*:}; [ "$f" = "$spec" ] && f=""
  sed "s/#define MV_SUFFIX avx512/#define MV_SUFFIX $n/" $src/csrc/cpu/kernels_avx512.c > $src/csrc/cpu/kv_$n.c
  gcc -std=c11 -O3 -pthread -fPIC -I$src/csrc $f -c -o /tmp/cpu_gemv_vobj/$n.o $src/csrc/cpu/kv_$n.c || exit 1
  rm $src/csrc/cpu/kv_$n.c; objs="$objs /tmp/cpu_gemv_vobj/$n.o"; list="$list X($n)"; done
gcc -std=c11 -O3 -pthread -I$src/csrc "-DVARIANTS=$list" -o $out dev/probes/cpu_gemv_harness.c $objs $src/csrc/cpu/pool.c -lm
