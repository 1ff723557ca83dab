/*
 * dispatch.c: picks the CPU kernels' instruction-set level at run time, so one build runs on any
 * x86-64 and uses what the CPU offers (dispatch.h). Other targets have the portable level only.
 */
#include "cpu/dispatch.h"

#include <stdatomic.h>
#if MV_BUILD_BF16_LEVEL
#include <cpuid.h>
#endif

static atomic_int simd_cap = MV_SIMD_LEVELS - 1;

int mv_cpu_simd_detected(void)
{
#if MV_BUILD_X86_LEVELS
    /* __builtin_cpu_supports also checks that the OS saves the vector state (XGETBV). */
    static atomic_int detected = -1;
    int level = atomic_load(&detected);
    if (level >= 0)
        return level;
    __builtin_cpu_init();
    level = MV_SIMD_PORTABLE;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
        __builtin_cpu_supports("f16c")) {
        level = MV_SIMD_AVX2;
        if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
            __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
            level = MV_SIMD_AVX512;
    }
#if MV_BUILD_BF16_LEVEL
    /* AVX512_BF16 is CPUID leaf 7 subleaf 1, EAX bit 5 (read directly: older compilers'
       __builtin_cpu_supports does not know the name); the OS check is avx512f's above. */
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    if (level == MV_SIMD_AVX512 && __get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx) &&
        (eax & (1u << 5)))
        level = MV_SIMD_AVX512BF16;
#endif
    atomic_store(&detected, level);
    return level;
#else
    return MV_SIMD_PORTABLE;
#endif
}

int mv_cpu_simd_level(void)
{
    const int detected = mv_cpu_simd_detected();
    const int cap = atomic_load(&simd_cap);
    return cap < detected ? cap : detected;
}

int mv_cpu_set_simd_cap(int cap)
{
    if (cap < 0)
        cap = 0;
    if (cap > MV_SIMD_LEVELS - 1)
        cap = MV_SIMD_LEVELS - 1;
    return atomic_exchange(&simd_cap, cap);
}

const char *mv_cpu_simd_name(int level)
{
    static const char *const names[MV_SIMD_LEVELS] = {"portable", "avx2", "avx512",
                                                            "avx512bf16"};
    return level >= 0 && level < MV_SIMD_LEVELS ? names[level] : "unknown";
}

int mv_rms_norm_cpu(const mv_rms_norm_args *a)
{
    switch (mv_cpu_simd_level()) {
#if MV_BUILD_BF16_LEVEL
    case MV_SIMD_AVX512BF16: return mv_rms_norm_cpu_avx512bf16(a);
#endif
#if MV_BUILD_X86_LEVELS
    case MV_SIMD_AVX512: return mv_rms_norm_cpu_avx512(a);
    case MV_SIMD_AVX2: return mv_rms_norm_cpu_avx2(a);
#endif
    default: return mv_rms_norm_cpu_portable(a);
    }
}

int mv_fused_rms_norm_qkv_cpu(const mv_qkv_args *a)
{
    switch (mv_cpu_simd_level()) {
#if MV_BUILD_BF16_LEVEL
    case MV_SIMD_AVX512BF16: return mv_fused_rms_norm_qkv_cpu_avx512bf16(a);
#endif
#if MV_BUILD_X86_LEVELS
    case MV_SIMD_AVX512: return mv_fused_rms_norm_qkv_cpu_avx512(a);
    case MV_SIMD_AVX2: return mv_fused_rms_norm_qkv_cpu_avx2(a);
#endif
    default: return mv_fused_rms_norm_qkv_cpu_portable(a);
    }
}

int mv_attention_prologue_cpu(const mv_prologue_args *a)
{
    switch (mv_cpu_simd_level()) {
#if MV_BUILD_BF16_LEVEL
    case MV_SIMD_AVX512BF16: return mv_attention_prologue_cpu_avx512bf16(a);
#endif
#if MV_BUILD_X86_LEVELS
    case MV_SIMD_AVX512: return mv_attention_prologue_cpu_avx512(a);
    case MV_SIMD_AVX2: return mv_attention_prologue_cpu_avx2(a);
#endif
    default: return mv_attention_prologue_cpu_portable(a);
    }
}
