/*
 * kernels_avx512bf16.c: the avx512 kernels (kernels_avx512.c) with AVX512_BF16's float32 -> bf16
 * conversion in the bf16 stores (simd.h), for CPUs that have it. A level of its own so that tests
 * can force the one below and compare. Target set by pragma, as in kernels_avx2.c.
 */
#include "cpu/dispatch.h"

#if MV_BUILD_BF16_LEVEL
#ifdef __clang__
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512bf16"))), apply_to = function)
#else
#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")
#endif
#define MV_ISA_AVX512 1
#define MV_ISA_AVX512BF16 1
#define MV_SUFFIX avx512bf16
#include "cpu/norm_row.h"
#include "cpu/rms_norm.h"
#include "cpu/fused_rms_norm_qkv.h"
#include "cpu/attention_prologue.h"
#ifdef __clang__
#pragma clang attribute pop
#endif
#endif
