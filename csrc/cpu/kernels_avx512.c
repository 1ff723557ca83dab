/*
 * kernels_avx512.c: the CPU kernels for x86-64 with AVX-512 F/BW/VL/DQ (plus FMA and F16C,
 * which every such CPU has): rms_norm.h, fused_rms_norm_qkv.h and attention_prologue.h at 16
 * lanes. Target set by pragma, as in kernels_avx2.c.
 */
#include "cpu/dispatch.h"

#if MV_BUILD_X86_LEVELS
#ifdef __clang__
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq"))), apply_to = function)
#else
#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq")
#endif
#define MV_ISA_AVX512 1
#define MV_SUFFIX avx512
#include "cpu/norm_row.h"
#include "cpu/rms_norm.h"
#include "cpu/fused_rms_norm_qkv.h"
#include "cpu/attention_prologue.h"
#ifdef __clang__
#pragma clang attribute pop
#endif
#endif
