/*
 * kernels_avx2.c: the CPU kernels for x86-64 with AVX2 + FMA + F16C (rms_norm.h,
 * fused_rms_norm_qkv.h, attention_prologue.h over norm_row.h). The target is set by pragma, not by
 * command-line flags, so this file builds (and the analysers parse it) with the same flags as the
 * rest; dispatch.c calls it only where the CPU has them.
 */
#include "cpu/dispatch.h"

#if MV_BUILD_X86_LEVELS
#ifdef __clang__
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC target("avx2,fma,f16c")
#endif
#define MV_ISA_AVX2 1
#define MV_SUFFIX avx2
#include "cpu/norm_row.h"
#include "cpu/rms_norm.h"
#include "cpu/fused_rms_norm_qkv.h"
#include "cpu/attention_prologue.h"
#ifdef __clang__
#pragma clang attribute pop
#endif
#endif
