/*
 * dispatch.h: the CPU kernels' instruction-set levels and their entry points (dispatch.c picks
 * the highest level the CPU has, capped by mv_cpu_set_simd_cap for tests).
 */
#ifndef MINIVLLM_CPU_DISPATCH_H
#define MINIVLLM_CPU_DISPATCH_H

#include "minivllm_kernels.h"

/* The x86-64 levels are built with GCC >= 9 or clang (target pragmas, __builtin_cpu_supports). */
#if defined(__x86_64__) && (defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 9))
#define MV_BUILD_X86_LEVELS 1
#else
#define MV_BUILD_X86_LEVELS 0
#endif
/* The avx512bf16 level needs the target "avx512bf16" and its intrinsics: GCC >= 10, clang >= 9. */
#if MV_BUILD_X86_LEVELS && (defined(__clang__) ? __clang_major__ >= 9 : __GNUC__ >= 10)
#define MV_BUILD_BF16_LEVEL 1
#else
#define MV_BUILD_BF16_LEVEL 0
#endif

enum {
    MV_SIMD_PORTABLE = 0,
    MV_SIMD_AVX2 = 1,
    MV_SIMD_AVX512 = 2,
    MV_SIMD_AVX512BF16 = 3, /* avx512 with AVX512_BF16's conversions */
    MV_SIMD_LEVELS = 4
};

int mv_rms_norm_cpu_portable(const mv_rms_norm_args *a);
int mv_fused_rms_norm_qkv_cpu_portable(const mv_qkv_args *a);
int mv_attention_prologue_cpu_portable(const mv_prologue_args *a);
#if MV_BUILD_X86_LEVELS
int mv_rms_norm_cpu_avx2(const mv_rms_norm_args *a);
int mv_fused_rms_norm_qkv_cpu_avx2(const mv_qkv_args *a);
int mv_attention_prologue_cpu_avx2(const mv_prologue_args *a);
int mv_rms_norm_cpu_avx512(const mv_rms_norm_args *a);
int mv_fused_rms_norm_qkv_cpu_avx512(const mv_qkv_args *a);
int mv_attention_prologue_cpu_avx512(const mv_prologue_args *a);
#endif
#if MV_BUILD_BF16_LEVEL
int mv_rms_norm_cpu_avx512bf16(const mv_rms_norm_args *a);
int mv_fused_rms_norm_qkv_cpu_avx512bf16(const mv_qkv_args *a);
int mv_attention_prologue_cpu_avx512bf16(const mv_prologue_args *a);
#endif

/* The highest level this CPU (and build) supports. */
int mv_cpu_simd_detected(void);
/* The level the kernels use: min(detected, cap). */
int mv_cpu_simd_level(void);
/* Caps the level (tests force lower ones); returns the previous cap. */
int mv_cpu_set_simd_cap(int cap);
/* "portable", "avx2", "avx512", "avx512bf16" */
const char *mv_cpu_simd_name(int level);

#endif /* MINIVLLM_CPU_DISPATCH_H */
