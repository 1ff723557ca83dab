/*
 * half_convert.h: float16 / bfloat16 <-> float32 conversions and dtype-generic element access for
 * the CPU kernels. Written from the IEEE 754 binary16 and bfloat16 formats; it deliberately avoids
 * __fp16/_Float16 and conversion intrinsics so it builds with any C11 compiler on any target.
 *
 * Float <-> bits always goes through memcpy: type punning through pointers or unions of a
 * misaligned tensor element would be undefined behaviour, and compilers lower these fixed-size
 * copies to a single move.
 */
#ifndef MINIVLLM_HALF_CONVERT_H
#define MINIVLLM_HALF_CONVERT_H

#include <stdint.h>
#include <string.h>

#include "minivllm_kernels.h"

static inline uint32_t mv_f32_bits(float value)
{
    uint32_t bits;
    memcpy(&bits, &value, sizeof bits);
    return bits;
}

static inline float mv_f32_from_bits(uint32_t bits)
{
    float value;
    memcpy(&value, &bits, sizeof value);
    return value;
}

static inline float mv_f16_to_f32(uint16_t half)
{
    const uint32_t sign = (uint32_t)(half & 0x8000u) << 16;
    const uint32_t exponent = (half >> 10) & 0x1fu;
    const uint32_t mantissa = half & 0x3ffu;
    if (exponent == 0x1fu) {
        /* Inf or NaN; a NaN is made quiet so it cannot trap later, its payload is kept. */
        const uint32_t quiet_bit = mantissa != 0 ? 0x400000u : 0u;
        return mv_f32_from_bits(sign | 0x7f800000u | quiet_bit | (mantissa << 13));
    }
    if (exponent == 0) {
        /* Zero or subnormal: mantissa * 2^-24 is exact in float32, so let the FPU normalize. */
        const float magnitude = (float)mantissa * 0x1p-24f;
        return sign ? -magnitude : magnitude;
    }
    /* Rebias the exponent from 15 to 127. */
    return mv_f32_from_bits(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

static inline uint16_t mv_f32_to_f16(float value)
{
    const uint32_t bits = mv_f32_bits(value);
    const uint16_t sign = (uint16_t)((bits >> 16) & 0x8000u);
    const uint32_t magnitude = bits & 0x7fffffffu;

    if (magnitude > 0x7f800000u) {
        /* NaN: keep the top payload bits and force the quiet bit, so the result is never Inf. */
        return (uint16_t)(sign | 0x7e00u | ((magnitude >> 13) & 0x3ffu));
    }
    /* 65520 is halfway between 65504 (largest half, odd mantissa) and 2^16: ties-to-even sends it,
       and everything above it (Inf included), to Inf. */
    if (magnitude >= 0x477ff000u)
        return (uint16_t)(sign | 0x7c00u);

    if (magnitude >= 0x38800000u) {
        /* Normal half (>= 2^-14). Adding just under half an output ulp, plus the lowest kept bit,
           rounds to nearest even; a mantissa carry correctly bumps the exponent. */
        const uint32_t lowest_kept_bit = (magnitude >> 13) & 1u;
        const uint32_t rounded = magnitude + 0xfffu + lowest_kept_bit;
        return (uint16_t)(sign | ((rounded >> 13) - (112u << 10)));
    }

    /* Subnormal half: the result is round(value * 2^24) as an integer, 1024 meaning the smallest
       normal, which is also its correct encoding. */
    const uint32_t exponent = magnitude >> 23;
    const uint32_t shift = 126u - exponent; /* >= 14 here */
    if (shift > 24u)
        return sign; /* below 2^-25: rounds to zero (exactly 2^-25 ties to even zero) */
    const uint32_t significand = (magnitude & 0x7fffffu) | 0x800000u;
    uint32_t quotient = significand >> shift;
    const uint32_t remainder = significand & ((1u << shift) - 1u);
    const uint32_t halfway = 1u << (shift - 1u);
    if (remainder > halfway || (remainder == halfway && (quotient & 1u)))
        quotient++;
    return (uint16_t)(sign | quotient);
}

static inline float mv_bf16_to_f32(uint16_t bf16)
{
    return mv_f32_from_bits((uint32_t)bf16 << 16);
}

static inline uint16_t mv_f32_to_bf16(float value)
{
    const uint32_t bits = mv_f32_bits(value);
    /* Rounding could carry a NaN's low payload into the exponent's Inf pattern; set the quiet bit
       on the truncated value instead. */
    if ((bits & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((bits >> 16) | 0x40u);
    /* Round to nearest even; overflow past the largest finite value correctly lands on Inf. */
    const uint32_t lowest_kept_bit = (bits >> 16) & 1u;
    return (uint16_t)((bits + 0x7fffu + lowest_kept_bit) >> 16);
}

static inline float mv_load(mv_dtype dt, const void *base, int64_t i)
{
    const unsigned char *bytes = (const unsigned char *)base;
    if (dt == MV_FLOAT32) {
        float value;
        memcpy(&value, bytes + i * (int64_t)sizeof(float), sizeof value);
        return value;
    }
    uint16_t half;
    memcpy(&half, bytes + i * (int64_t)sizeof(uint16_t), sizeof half);
    return dt == MV_FLOAT16 ? mv_f16_to_f32(half) : mv_bf16_to_f32(half);
}

static inline void mv_store(mv_dtype dt, void *base, int64_t i, float v)
{
    unsigned char *bytes = (unsigned char *)base;
    if (dt == MV_FLOAT32) {
        memcpy(bytes + i * (int64_t)sizeof(float), &v, sizeof v);
        return;
    }
    const uint16_t half = dt == MV_FLOAT16 ? mv_f32_to_f16(v) : mv_f32_to_bf16(v);
    memcpy(bytes + i * (int64_t)sizeof(uint16_t), &half, sizeof half);
}

static inline float mv_round_to(mv_dtype dt, float v)
{
    switch (dt) {
    case MV_FLOAT16:
        return mv_f16_to_f32(mv_f32_to_f16(v));
    case MV_BFLOAT16:
        return mv_bf16_to_f32(mv_f32_to_bf16(v));
    default:
        return v;
    }
}


/* Row-wise forms: the dtype test is hoisted out of the loop so each loop body is branch-free
   (and the float32 one a plain copy). */
static inline void mv_load_row(mv_dtype dt, const void *src, int64_t count, float *dst)
{
    int64_t i;
    switch (dt) {
    case MV_FLOAT32:
        memcpy(dst, src, (size_t)count * sizeof(float));
        break;
    case MV_FLOAT16:
        for (i = 0; i < count; i++)
            dst[i] = mv_load(MV_FLOAT16, src, i);
        break;
    default:
        for (i = 0; i < count; i++)
            dst[i] = mv_load(MV_BFLOAT16, src, i);
        break;
    }
}

static inline void mv_store_row(mv_dtype dt, const float *src, int64_t count, void *dst)
{
    int64_t i;
    switch (dt) {
    case MV_FLOAT32:
        memcpy(dst, src, (size_t)count * sizeof(float));
        break;
    case MV_FLOAT16:
        for (i = 0; i < count; i++)
            mv_store(MV_FLOAT16, dst, i, src[i]);
        break;
    default:
        for (i = 0; i < count; i++)
            mv_store(MV_BFLOAT16, dst, i, src[i]);
        break;
    }
}

#endif /* MINIVLLM_HALF_CONVERT_H */
