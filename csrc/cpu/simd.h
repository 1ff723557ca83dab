/*
 * simd.h: the vector layer the CPU kernels (norm_row.h, rms_norm.h, fused_rms_norm_qkv.h,
 * attention_prologue.h) are written against, one definition per instruction-set level. The file
 * that includes it defines exactly one of MV_ISA_AVX512, MV_ISA_AVX2 or neither (the portable
 * level: plain C, "vectors" of one float, conversions by half_convert.h), and MV_SUFFIX, the suffix
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

#else /* portable: one float per "vector" */
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
