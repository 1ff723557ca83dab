/*
 * simd.h: the vector layer the CPU kernels (norm_row.h, rms_norm.h, fused_rms_norm_qkv.h,
 * attention_prologue.h) are written against, one definition per instruction-set level. The file
 * that includes it defines exactly one of MV_ISA_AVX512, MV_ISA_AVX2 or neither (the portable
 * level: plain C, 4-lane vectors of GCC's and Clang's vector extensions, or one float per "vector"
 * elsewhere, conversions as half_convert.h's), and MV_SUFFIX, the suffix
 * of the kernels' entry points; MV_ISA_AVX512BF16 as well as MV_ISA_AVX512 gives AVX512_BF16's
 * bf16 stores.
 *
 *   vf                 float32 vector of VL lanes
 *   vf_load_dt(dt, p)  VL elements of dtype dt at p, as float32 (bf16: a shift; fp16: F16C)
 *   vf_store_dt(dt, p, v)  v rounded to dt (round to nearest even, NaN kept quiet), stored at p
 * Loads and stores are unaligned; tails shorter than VL are the callers' (scalar) business.
 */
#ifndef MINIVLLM_CPU_SIMD_H
#define MINIVLLM_CPU_SIMD_H

#include "cpu/half_convert.h"

#define MV_ALWAYS_INLINE static inline __attribute__((always_inline))
/* Register tiles are arrays of vectors: unrolled before GCC's scalar replacement runs, they stay in
   registers (unrolled later, every element went through the stack on each iteration). */
#if defined(__clang__)
#define MV_UNROLL _Pragma("unroll")
#elif defined(__GNUC__)
#define MV_UNROLL _Pragma("GCC unroll 16")
#else
#define MV_UNROLL
#endif

#if defined(MV_ISA_AVX512)
#include <immintrin.h>
#define VL 16
typedef __m512 vf;
#define vf_zero() _mm512_setzero_ps()
#define vf_set1(x) _mm512_set1_ps(x)
#define vf_add(a, b) _mm512_add_ps(a, b)
#define vf_sub(a, b) _mm512_sub_ps(a, b)
#define vf_mul(a, b) _mm512_mul_ps(a, b)
#define vf_fma(a, b, c) _mm512_fmadd_ps(a, b, c)
#define vf_loadu(p) _mm512_loadu_ps(p)
#define vf_storeu(p, v) _mm512_storeu_ps(p, v)
#define vf_bcast(p) _mm512_set1_ps(*(p))

MV_ALWAYS_INLINE float vf_hsum(vf v) { return _mm512_reduce_add_ps(v); }

MV_ALWAYS_INLINE vf vf_load_dt(mv_dtype dt, const void *p)
{
    if (dt == MV_FLOAT32)
        return _mm512_loadu_ps(p);
    const __m256i h = _mm256_loadu_si256((const __m256i *)p);
    if (dt == MV_FLOAT16)
        return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/* float32 bits rounded to nearest even at bit 16 (mv_f32_to_bf16 without its NaN case). */
MV_ALWAYS_INLINE __m512i bf16_round_bits(__m512i bits)
{
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
    return _mm512_srli_epi32(_mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))),
                             16);
}

MV_ALWAYS_INLINE void vf_store_dt(mv_dtype dt, void *p, vf v)
{
    if (dt == MV_FLOAT32) {
        _mm512_storeu_ps(p, v);
    } else if (dt == MV_FLOAT16) {
        _mm256_storeu_si256((__m256i *)p, _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    } else {
#if defined(MV_ISA_AVX512BF16)
        /* vcvtneps2bf16 rounds as mv_f32_to_bf16 does (nearest even, NaN truncated with the quiet
           bit set) except that it flushes float32 denormal inputs to signed zero (every 2^32 input
           checked: dev/probes/bf16_convert_probe.c); those rare lanes take the exact rounding. */
        __m256i half = (__m256i)_mm512_cvtneps_pbh(v);
        const __mmask16 denormal = _mm512_fpclass_ps_mask(v, 0x20); /* vfpclassps: denormal */
        if (__builtin_expect(denormal != 0, 0))
            half = _mm256_mask_blend_epi16(
                denormal, half, _mm512_cvtepi32_epi16(bf16_round_bits(_mm512_castps_si512(v))));
        _mm256_storeu_si256((__m256i *)p, half);
#else
        /* bf16 as mv_f32_to_bf16 does it: round to nearest even, NaN truncated with the quiet
           bit set. */
        const __m512i bits = _mm512_castps_si512(v);
        const __m512i rounded = bf16_round_bits(bits);
        const __m512i quiet = _mm512_or_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(0x40));
        const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
        const __m512i result = _mm512_mask_blend_epi32(nan, rounded, quiet);
        _mm256_storeu_si256((__m256i *)p, _mm512_cvtepi32_epi16(result));
#endif
    }
}

#if defined(MV_ISA_AVX512BF16)
/* vf_store_dt's bf16 store without its fix-up: v's float32 denormal lanes are stored as signed
   zero and returned, for the caller to store again through vf_store_dt. */
MV_ALWAYS_INLINE __mmask16 vf_store_bf16_unchecked(void *p, vf v)
{
    _mm256_storeu_si256((__m256i *)p, (__m256i)_mm512_cvtneps_pbh(v));
    return _mm512_fpclass_ps_mask(v, 0x20); /* vfpclassps: denormal */
}
#endif

#elif defined(MV_ISA_AVX2)
#include <immintrin.h>
#define VL 8
typedef __m256 vf;
#define vf_zero() _mm256_setzero_ps()
#define vf_set1(x) _mm256_set1_ps(x)
#define vf_add(a, b) _mm256_add_ps(a, b)
#define vf_sub(a, b) _mm256_sub_ps(a, b)
#define vf_mul(a, b) _mm256_mul_ps(a, b)
#define vf_fma(a, b, c) _mm256_fmadd_ps(a, b, c)
#define vf_loadu(p) _mm256_loadu_ps(p)
#define vf_storeu(p, v) _mm256_storeu_ps(p, v)
#define vf_bcast(p) _mm256_broadcast_ss(p)

MV_ALWAYS_INLINE float vf_hsum(vf v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

MV_ALWAYS_INLINE vf vf_load_dt(mv_dtype dt, const void *p)
{
    if (dt == MV_FLOAT32)
        return _mm256_loadu_ps(p);
    const __m128i h = _mm_loadu_si128((const __m128i *)p);
    if (dt == MV_FLOAT16)
        return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

MV_ALWAYS_INLINE void vf_store_dt(mv_dtype dt, void *p, vf v)
{
    if (dt == MV_FLOAT32) {
        _mm256_storeu_ps(p, v);
    } else if (dt == MV_FLOAT16) {
        _mm_storeu_si128((__m128i *)p, _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    } else {
        const __m256i bits = _mm256_castps_si256(v);
        const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
        const __m256i rounded = _mm256_srli_epi32(
            _mm256_add_epi32(bits, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), 16);
        const __m256i quiet = _mm256_or_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(0x40));
        const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
        const __m256i result = _mm256_blendv_epi8(rounded, quiet, nan);
        /* values are < 2^16, so the saturating pack is exact; it packs within 128-bit lanes */
        const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(result, result), 0x08);
        _mm_storeu_si128((__m128i *)p, _mm256_castsi256_si128(packed));
    }
}

/* bf16 in pairs of vectors without cross-lane shuffles: 16 bf16 widen to float32 by unpacking
   with zero inside each 128-bit lane, lo = elements 0-3 and 8-11, hi = 4-7 and 12-15; rounded
   back, the saturating pack of (lo, hi) restores the order. Per 16 elements that is 2 shuffles
   instead of 4 on the load, and 1 pack and one NaN test instead of 2 packs, 2 permutes and 2
   blends on the store (the bf16 norms were bound by these uops). */
MV_ALWAYS_INLINE void bf16x16_load(const void *p, vf *lo, vf *hi)
{
    const __m256i raw = _mm256_loadu_si256((const __m256i *)p);
    *lo = _mm256_castsi256_ps(_mm256_unpacklo_epi16(_mm256_setzero_si256(), raw));
    *hi = _mm256_castsi256_ps(_mm256_unpackhi_epi16(_mm256_setzero_si256(), raw));
}

/* float32 -> the bf16 bits in the low half of each lane, as vf_store_dt rounds them. */
MV_ALWAYS_INLINE __m256i bf16_bits_avx2(vf v)
{
    const __m256i bits = _mm256_castps_si256(v);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
    return _mm256_srli_epi32(_mm256_add_epi32(bits, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), 16);
}

/* lo, hi as bf16x16_load lays them out, rounded; returns the rounded bits (for a caller that
   reads the stored values back as float32: bits << 16) through *lo_bits and *hi_bits. */
MV_ALWAYS_INLINE void bf16x16_store(void *p, vf lo, vf hi, __m256i *lo_bits, __m256i *hi_bits)
{
    __m256i a = bf16_bits_avx2(lo), b = bf16_bits_avx2(hi);
    /* one compare tests both: unordered where a lane of lo or of hi is NaN */
    if (__builtin_expect(_mm256_movemask_ps(_mm256_cmp_ps(lo, hi, _CMP_UNORD_Q)) != 0, 0)) {
        const __m256 nan_lo = _mm256_cmp_ps(lo, lo, _CMP_UNORD_Q), nan_hi = _mm256_cmp_ps(hi, hi, _CMP_UNORD_Q);
        const __m256i quiet = _mm256_set1_epi32(0x40);
        a = _mm256_blendv_epi8(a, _mm256_or_si256(_mm256_srli_epi32(_mm256_castps_si256(lo), 16), quiet),
                               _mm256_castps_si256(nan_lo));
        b = _mm256_blendv_epi8(b, _mm256_or_si256(_mm256_srli_epi32(_mm256_castps_si256(hi), 16), quiet),
                               _mm256_castps_si256(nan_hi));
    }
    _mm256_storeu_si256((__m256i *)p, _mm256_packus_epi32(a, b));
    *lo_bits = a;
    *hi_bits = b;
}

#elif defined(__GNUC__) /* portable, GCC or Clang */
/* Plain C with the compilers' generic vector extensions: 4 float32 lanes of 16 bytes, which GCC
   and Clang lower to what every 64-bit target has (SSE2 on x86-64, NEON on aarch64). 32-byte
   vectors were split into scalar code wherever SSE2 lacks an instruction (compares among them).
   The conversions give half_convert.h's bits for every input (scripts/portable_convert_check.c:
   all 2^16 half and 2^32 float32 inputs, on x86-64 and on aarch64 under qemu). Against one float
   per "vector" (below), x86-64 forced to this level: the norms 1.04-1.70x as fast, the QKV op 1.5-4.8x
   (dev/logs/cpu-portable-vectors-amd-epyc-2c-2026-11-29.log); fp16 rows stay far from memory speed
   without a hardware conversion (F16C: the AVX2 level). */
#define VL 4
#if defined(__aarch64__) && defined(__ARM_NEON)
/* fp16 through the hardware's conversions (fcvtl, fcvtn: AArch64's base vector set), one
   instruction per 4 elements where the generic code below takes about 35: the same bits under the
   default floating-point environment (round to nearest even, no flush to zero, NaN payloads
   propagated), as portable_convert_check.c checks */
#include <arm_neon.h>
#define MV_NEON_FP16 1
#endif
typedef float vf __attribute__((vector_size(16)));
typedef uint32_t vu32 __attribute__((vector_size(16)));
typedef int32_t vi32 __attribute__((vector_size(16)));
typedef uint16_t vu16 __attribute__((vector_size(8)));

MV_ALWAYS_INLINE vf vf_set1(float x) { return (vf){x, x, x, x}; }
#define vf_zero() vf_set1(0.0f)
#define vf_add(a, b) ((a) + (b))
#define vf_sub(a, b) ((a) - (b))
#define vf_mul(a, b) ((a) * (b))
#define vf_fma(a, b, c) ((a) * (b) + (c))
MV_ALWAYS_INLINE vf vf_loadu(const float *p)
{
    vf v;
    memcpy(&v, p, sizeof v);
    return v;
}
MV_ALWAYS_INLINE void vf_storeu(float *p, vf v) { memcpy(p, &v, sizeof v); }
#define vf_bcast(p) vf_set1(*(p))

/* The lanes pairwise: (0 + 2) + (1 + 3). */
MV_ALWAYS_INLINE float vf_hsum(vf v) { return (v[0] + v[2]) + (v[1] + v[3]); }

MV_ALWAYS_INLINE vu32 vu32_set1(uint32_t x) { return (vu32){x, x, x, x}; }

/* Lanes of `yes` where mask is all ones, of `no` where it is zero. */
MV_ALWAYS_INLINE vu32 vu32_select(vi32 mask, vu32 yes, vu32 no)
{
    return ((vu32)mask & yes) | (~(vu32)mask & no);
}

/* The conversions use only what every target's vector unit has (no per-lane shifts, no integer
   to float conversions, signed compares of values below 2^31: SSE2 has no unsigned one, and GCC
   made those scalar): the rebias of the exponent, and a float addition that lines subnormals up
   with a fixed exponent and rounds them (to nearest even, the default rounding mode). */
MV_ALWAYS_INLINE vf vf_load_dt(mv_dtype dt, const void *p)
{
    if (dt == MV_FLOAT32)
        return vf_loadu((const float *)p);
#if defined(MV_NEON_FP16)
    if (dt == MV_FLOAT16) {
        const float32x4_t wide = vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16((const uint16_t *)p)));
        vf r;
        memcpy(&r, &wide, sizeof r);
        return r;
    }
#endif
    vu16 h16;
    memcpy(&h16, p, sizeof h16);
    const vu32 h = __builtin_convertvector(h16, vu32);
    if (dt == MV_BFLOAT16)
        return (vf)(h << 16);
    /* mv_f16_to_f32: exponent and mantissa moved into place and rebiased by 112; Inf and NaN
       rebiased once more (NaN made quiet); zero and subnormals, as 2^-14 * 0.mantissa, by a
       float subtraction of 2^-14 from 2^-14 * 1.mantissa */
    const vu32 shifted = (h & 0x7fffu) << 13, exponent = shifted & 0x0f800000u;
    const vu32 rebiased = shifted + (112u << 23);
    const vi32 has_mantissa = (shifted & 0x7fffffu) != 0u;
    const vu32 special = (rebiased + (112u << 23)) | ((vu32)has_mantissa & 0x400000u);
    const vf one_mantissa = (vf)(rebiased + (1u << 23)), smallest_normal = (vf)vu32_set1(113u << 23);
    const vu32 small = (vu32)(one_mantissa - smallest_normal);
    const vi32 is_special = exponent == 0x0f800000u, is_small = exponent == 0u;
    const vu32 magnitude = vu32_select(is_special, special, vu32_select(is_small, small, rebiased));
    return (vf)(magnitude | ((h & 0x8000u) << 16));
}

MV_ALWAYS_INLINE void vf_store_dt(mv_dtype dt, void *p, vf v)
{
    if (dt == MV_FLOAT32) {
        vf_storeu((float *)p, v);
        return;
    }
#if defined(MV_NEON_FP16)
    if (dt == MV_FLOAT16) {
        float32x4_t wide;
        memcpy(&wide, &v, sizeof wide);
        vst1_u16((uint16_t *)p, vreinterpret_u16_f16(vcvt_f16_f32(wide)));
        return;
    }
#endif
    const vu32 bits = (vu32)v;
    vu32 out;
    if (dt == MV_BFLOAT16) {
        /* mv_f32_to_bf16: NaN truncated with the quiet bit, else round to nearest even */
        const vu32 rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
        const vi32 is_nan = (vi32)(bits & 0x7fffffffu) > 0x7f800000;
        out = vu32_select(is_nan, (bits >> 16) | 0x40u, rounded);
    } else {
        /* mv_f32_to_f16: NaN (quiet, payload kept), Inf from 65520 up, normal halves rounded to
           nearest even in the integer bits, subnormal halves by a float addition of 2^-1 (whose
           ulp is the smallest half subnormal: the sum's low bits are the result, rounded) */
        const vu32 sign = (bits >> 16) & 0x8000u, magnitude = bits & 0x7fffffffu;
        const vu32 nan = 0x7e00u | ((magnitude >> 13) & 0x3ffu);
        const vu32 normal = (magnitude + 0xfffu + ((magnitude >> 13) & 1u) - (112u << 23)) >> 13;
        const vu32 half_bits = vu32_set1(126u << 23);
        const vu32 subnormal = (vu32)((vf)magnitude + (vf)half_bits) - half_bits;
        const vi32 m = (vi32)magnitude;
        const vi32 is_nan = m > 0x7f800000, is_inf = m >= 0x477ff000, is_normal = m >= 0x38800000;
        const vu32 finite = vu32_select(is_normal, normal, subnormal);
        out = sign | vu32_select(is_nan, nan, vu32_select(is_inf, vu32_set1(0x7c00u), finite));
    }
    const vu16 narrow = __builtin_convertvector(out, vu16);
    memcpy(p, &narrow, sizeof narrow);
}

#else /* portable: one float per "vector" (compilers without vector extensions) */
#define VL 1
typedef float vf;
#define vf_zero() 0.0f
#define vf_set1(x) (x)
#define vf_add(a, b) ((a) + (b))
#define vf_sub(a, b) ((a) - (b))
#define vf_mul(a, b) ((a) * (b))
#define vf_fma(a, b, c) ((a) * (b) + (c))
#define vf_loadu(p) (*(p))
#define vf_storeu(p, v) (*(p) = (v))
#define vf_bcast(p) (*(p))
#define vf_hsum(v) (v)
#define vf_load_dt(dt, p) mv_load(dt, p, 0)
#define vf_store_dt(dt, p, v) mv_store(dt, p, 0, v)
#endif

#endif /* MINIVLLM_CPU_SIMD_H */
