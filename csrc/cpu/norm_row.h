/*
 * norm_row.h: what the CPU kernels share (the per-row RMSNorm both ops use, row conversions, the
 * thread split), written once against the vector layer of simd.h and compiled once per
 * instruction-set level with the ops (rms_norm.h, fused_rms_norm_qkv.h) by kernels_portable.c,
 * kernels_avx2.c, kernels_avx512.c and kernels_avx512bf16.c; dispatch.c picks a level at run time.
 * Numerics as minivllm_kernels.h documents them; the choices this file makes:
 *
 * Sum of squares (float32): each row is cut into blocks of NORM_BLOCK elements; a block is summed
 *   in NORM_CHAINS * VL vector lanes (2 * VL, 4 * VL on AVX2: at most 32 terms each), the chains
 *   added pairwise lane by lane, the block
 *   sums combined by a pairwise cascade in each lane (a binary counter), and the lanes pairwise at
 *   the end (plus the row's last few elements, summed in order), so the rounding error grows with
 *   log2(H), not H: ~1e-7 relative for any H (2^24 included; tests/test_cpu_numerics.py).
 * Overflow and underflow: where the float32 sum of squares overflows (|x| >~ 1.8e19) or falls
 *   below 2^-100 (squares lose their precision to underflow), the row is redone in float64 scaled
 *   by its largest magnitude m: rrms = 1 / sqrt(m^2 * sum((s_i / m)^2) / H + eps), and
 *   y_i = weight_i * float(s_i * rrms) with s_i * rrms in float64 (rrms itself may not be
 *   representable in float32). Every other row takes the float32 path above.
 * QKV products: y (float32, never rounded to the dtype) times W converted to float32 (exact), in
 *   float32 FMAs. Decode GEMV: each output is summed in VL lanes over blocks of DOT_BLOCK
 *   elements (at most DOT_BLOCK / VL terms a lane; in one-row tiles, M = 1, two sets of lanes
 *   over alternate vectors, added before the lanes are), the lanes added, and the block sums
 *   added in order. Blocked GEMM: each output is one FMA chain per block of GEMM_KC elements, the
 *   block sums added in order (fused_rms_norm_qkv.h). Either way the error grows with the block
 *   length plus the number of blocks, not with H.
 *
 * Threads (pool.h): work is claimed in chunks from a shared counter (claim()), rows for the
 * norms, output columns for the products (the decode GEMV: from one counter per thread's segment
 * of the columns, gemv_claim()). At M <= DIRECT_MAX_ROWS, W (nn.Linear layout) is
 * streamed straight from memory, four rows of it at a time (the decode GEMV); above that, or for
 * W in any other layout, the blocked GEMM of fused_rms_norm_qkv.h packs y once and W a block at
 * a time and multiplies them in register tiles.
 */
#include <float.h>
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/pool.h"
#include "cpu/simd.h"

#define MV_CAT2(a, b) a##_##b
#define MV_CAT(a, b) MV_CAT2(a, b)
#define MV_NAME(name) MV_CAT(name, MV_SUFFIX)

#define NORM_BLOCK (32 * VL)
/* FMA chains of a block's sum of squares (pass 1). AVX2: 4, since 2 chains of 8 lanes left one
   thread waiting on the FMA latency (4 cycles per 16 elements; dev/logs/cpu-norm-avx2-*). */
#if defined(MV_ISA_AVX2)
#define NORM_CHAINS 4
#else
#define NORM_CHAINS 2
#endif
#define DOT_BLOCK 1024
#define DOT_NC 4
/* Rows of y per decode-GEMV tile. AVX2 has 16 ymm registers: 4 rows x 4 columns of accumulators
   and the 4 W vectors spilled; 2 rows do not (Qwen3-0.6B M = 8 fp16 0.69 -> 0.50 ms, M = 16
   1.84 -> 1.45 ms; dev/logs/cpu-gemv-rows-avx2-2026-11-23.log). */
#if defined(MV_ISA_AVX2)
#define DOT_MR 2
#else
#define DOT_MR 4
#endif
#define DOT_KA 2
#define COL_BLOCK 32
#define ROW_CHUNK 256
#define DIRECT_MAX_ROWS 16
/* Output columns per claim in the decode GEMV: 64 rows of W (256 KiB of float32 at H = 1024). */
#define DIRECT_CHUNK_COLS (2 * COL_BLOCK)
_Static_assert(DIRECT_CHUNK_COLS % DOT_NC == 0, "chunks of whole tiles (the next-tile prefetch)");
/* Most threads the decode GEMV gives a segment of W of its own (gemv_claim). */
#define GEMV_MAX_SEGMENTS 16
#ifndef MV_PREFETCH_BYTES
#define MV_PREFETCH_BYTES 1024
#endif
/* Below these sizes a second thread costs more (wake-up, ~10 us) than it saves. */
#define PARALLEL_MIN_ELEMENTS ((int64_t)1 << 16)
#define PARALLEL_MIN_MACS ((int64_t)1 << 19)

_Static_assert(DOT_BLOCK % 16 == 0 && COL_BLOCK % DOT_NC == 0, "whole vectors and tiles");

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

static inline const char *at(const void *base, mv_dtype dt, int64_t elements)
{
    return (const char *)base + elements * mv_dtype_size(dt);
}

static inline char *at_mut(void *base, mv_dtype dt, int64_t elements)
{
    return (char *)base + elements * mv_dtype_size(dt);
}

/* Work is handed out in chunks from a shared counter, not in equal parts: a thread the OS does
   not run for a while (NumPy's BLAS threads spinning after a matmul, a busy VM) leaves its chunks
   to the others instead of holding up the whole call. Returns 0 when nothing is left. */
static inline int claim(_Atomic int64_t *next, int64_t chunk, int64_t total, int64_t *begin,
                        int64_t *end)
{
    const int64_t b = atomic_fetch_add(next, chunk);
    if (b >= total)
        return 0;
    *begin = b;
    *end = min64(total, b + chunk);
    return 1;
}

/* Rows per claimed chunk of a norm: about NORM_CHUNK_ELEMENTS elements (a few microseconds of
   work, so the counter costs nothing and the last chunk finishes soon after the others). */
#define NORM_CHUNK_ELEMENTS ((int64_t)1 << 15)
static inline int64_t norm_chunk_rows(int64_t hidden)
{
    return hidden >= NORM_CHUNK_ELEMENTS ? 1 : NORM_CHUNK_ELEMENTS / hidden;
}

static inline int threads_for(int64_t work, int64_t threshold, int64_t max_parts)
{
    if (work < threshold || max_parts < 2)
        return 1;
    const int n = mv_pool_threads();
    return (int64_t)n > max_parts ? (int)max_parts : n;
}

/* ---- row conversions ------------------------------------------------------------------------ */

MV_ALWAYS_INLINE void convert_row(mv_dtype src_dt, const void *src, int64_t count, mv_dtype dst_dt,
                                  void *dst)
{
    int64_t i = 0;
    for (; i + VL <= count; i += VL)
        vf_store_dt(dst_dt, at_mut(dst, dst_dt, i), vf_load_dt(src_dt, at(src, src_dt, i)));
    for (; i < count; i++)
        mv_store(dst_dt, dst, i, mv_load(src_dt, src, i));
}

/* float32 -> dtype, the results' stores. */
static void store_f32_row(mv_dtype dt, const float *src, int64_t count, void *dst)
{
    switch (dt) {
    case MV_FLOAT32: memcpy(dst, src, (size_t)count * sizeof(float)); break;
    case MV_FLOAT16: convert_row(MV_FLOAT32, src, count, MV_FLOAT16, dst); break;
    default: convert_row(MV_FLOAT32, src, count, MV_BFLOAT16, dst); break;
    }
}

static void load_f32_row(mv_dtype dt, const void *src, int64_t count, float *dst)
{
    switch (dt) {
    case MV_FLOAT32: memcpy(dst, src, (size_t)count * sizeof(float)); break;
    case MV_FLOAT16: convert_row(MV_FLOAT16, src, count, MV_FLOAT32, dst); break;
    default: convert_row(MV_BFLOAT16, src, count, MV_FLOAT32, dst); break;
    }
}

/* ---- RMSNorm of one row --------------------------------------------------------------------- */

/* Pairwise combination of block sums, lane by lane: level[l] holds the sum of 2^l blocks. The
   lanes are added once, at the end of the row (a horizontal sum per block cost ~10% of a 16-bit
   row: dev/logs/cpu-norm-amd-epyc-2c-2026-11-23.log). 48 levels: 2^48 blocks. */
typedef struct {
    vf level[48];
    uint64_t count;
} cascade;

MV_ALWAYS_INLINE void cascade_add(cascade *c, vf x)
{
    uint64_t k = c->count++;
    int l = 0;
    for (; k & 1u; k >>= 1, l++)
        x = vf_add(x, c->level[l]);
    c->level[l] = x;
}

MV_ALWAYS_INLINE vf cascade_total(const cascade *c)
{
    vf total = vf_zero();
    for (int l = 0; l < 48; l++)
        if ((c->count >> l) & 1u)
            total = vf_add(total, c->level[l]);
    return total;
}

/* s = x (+ residual, rounded to dt and written to residual_out) for the pair of vectors at i;
   s^2 added to *acc0 and *acc1. */
MV_ALWAYS_INLINE void square_pair(mv_dtype dt, int with_residual, const void *x, const void *residual,
                                  void *residual_out, int64_t i, vf *acc0, vf *acc1)
{
    vf s0, s1;
#if defined(MV_ISA_AVX2)
    if (dt == MV_BFLOAT16) { /* two vectors in bf16x16_load's order (simd.h) */
        bf16x16_load(at(x, dt, i), &s0, &s1);
        if (with_residual) {
            vf r0, r1;
            __m256i b0_bits, b1_bits;
            bf16x16_load(at(residual, dt, i), &r0, &r1);
            bf16x16_store(at_mut(residual_out, dt, i), vf_add(s0, r0), vf_add(s1, r1), &b0_bits,
                          &b1_bits);
            /* the rounded value is what gets normalized */
            s0 = _mm256_castsi256_ps(_mm256_slli_epi32(b0_bits, 16));
            s1 = _mm256_castsi256_ps(_mm256_slli_epi32(b1_bits, 16));
        }
        *acc0 = vf_fma(s0, s0, *acc0);
        *acc1 = vf_fma(s1, s1, *acc1);
        return;
    }
#endif
    s0 = vf_load_dt(dt, at(x, dt, i));
    s1 = vf_load_dt(dt, at(x, dt, i + VL));
    if (with_residual) {
        s0 = vf_add(s0, vf_load_dt(dt, at(residual, dt, i)));
        s1 = vf_add(s1, vf_load_dt(dt, at(residual, dt, i + VL)));
        vf_store_dt(dt, at_mut(residual_out, dt, i), s0);
        vf_store_dt(dt, at_mut(residual_out, dt, i + VL), s1);
        if (dt != MV_FLOAT32) { /* the rounded value is what gets normalized */
            s0 = vf_load_dt(dt, at(residual_out, dt, i));
            s1 = vf_load_dt(dt, at(residual_out, dt, i + VL));
        }
    }
    *acc0 = vf_fma(s0, s0, *acc0);
    *acc1 = vf_fma(s1, s1, *acc1);
}

/* Pass 1: s = x (+ residual, rounded to dt and written to residual_out); returns sum(s^2). */
MV_ALWAYS_INLINE float sum_squares(mv_dtype dt, int with_residual, const void *x,
                                   const void *residual, void *residual_out, int64_t hidden)
{
    cascade c;
    c.count = 0;
    float tail = 0.0f; /* the elements past the last whole pair of vectors */
    for (int64_t b0 = 0; b0 < hidden; b0 += NORM_BLOCK) {
        const int64_t n = min64(NORM_BLOCK, hidden - b0);
        vf acc[NORM_CHAINS];
        for (int a = 0; a < NORM_CHAINS; a++)
            acc[a] = vf_zero();
        int64_t i = b0;
        for (; i + NORM_CHAINS * VL <= b0 + n; i += NORM_CHAINS * VL) {
            MV_UNROLL
            for (int a = 0; a < NORM_CHAINS; a += 2)
                square_pair(dt, with_residual, x, residual, residual_out, i + a * VL, &acc[a],
                            &acc[a + 1]);
        }
        for (; i + 2 * VL <= b0 + n; i += 2 * VL)
            square_pair(dt, with_residual, x, residual, residual_out, i, &acc[0], &acc[1]);
        for (; i < b0 + n; i++) {
            float s = mv_load(dt, x, i);
            if (with_residual) {
                s += mv_load(dt, residual, i);
                mv_store(dt, residual_out, i, s);
                s = mv_load(dt, residual_out, i);
            }
            tail += s * s;
        }
        for (int a = NORM_CHAINS / 2; a > 1; a /= 2) /* pairwise: chains a.. onto 0.. */
            for (int j = 0; j < a; j++)
                acc[j] = vf_add(acc[j], acc[j + a]);
        cascade_add(&c, vf_add(acc[0], acc[1]));
    }
    return vf_hsum(cascade_total(&c)) + tail;
}

/* The row's weights: gamma (dtype wdt) plus the offset, in float32. */
typedef struct {
    const void *data;
    mv_dtype dt;
    float offset;
    int folded; /* data is norm_gamma_f32's (offset added): loaded as it is */
} row_weight;

/* Pass 2: out = (weight + offset) * (s * rrms), rounded to out_dt. */
MV_ALWAYS_INLINE void scale_row(mv_dtype dt, const void *s, row_weight w, float rrms,
                                mv_dtype out_dt, void *out, int64_t hidden)
{
    const vf r = vf_set1(rrms);
    const vf offset = vf_set1(w.offset);
    int64_t i = 0;
#if defined(MV_ISA_AVX512BF16)
    /* bf16 out: vcvtneps2bf16 with the denormal test of the whole row at its end, not per vector
       (vf_store_dt's); a row with a float32 denormal result is stored again, as vf_store_dt
       does (not in place: s would be gone). ~5% of a bf16 row
       (dev/logs/cpu-norm-amd-epyc-2c-2026-11-23.log). */
    if (out_dt == MV_BFLOAT16 && (const void *)out != s) {
        __mmask16 denormal = 0;
        for (; i + VL <= hidden; i += VL) {
            const vf g = w.folded ? vf_loadu((const float *)w.data + i)
                                  : vf_add(vf_load_dt(w.dt, at(w.data, w.dt, i)), offset);
            denormal |= vf_store_bf16_unchecked(at_mut(out, out_dt, i),
                                                vf_mul(g, vf_mul(vf_load_dt(dt, at(s, dt, i)), r)));
        }
        if (__builtin_expect(denormal != 0, 0))
            i = 0; /* the row again, through vf_store_dt below */
    }
#endif
#if defined(MV_ISA_AVX2)
    /* bf16 rows, 16 elements at a time in bf16x16_load's order (simd.h); gamma taken the same way */
    if (dt == MV_BFLOAT16 && out_dt == MV_BFLOAT16) {
        for (; i + 2 * VL <= hidden; i += 2 * VL) {
            vf lo, hi, g_lo, g_hi;
            __m256i bits_lo, bits_hi;
            bf16x16_load(at(s, dt, i), &lo, &hi);
            if (w.folded) { /* norm_gamma_f32 stored it in this order */
                g_lo = vf_loadu((const float *)w.data + i);
                g_hi = vf_loadu((const float *)w.data + i + VL);
            } else if (w.dt == MV_BFLOAT16) {
                bf16x16_load(at(w.data, w.dt, i), &g_lo, &g_hi);
                g_lo = vf_add(g_lo, offset);
                g_hi = vf_add(g_hi, offset);
            } else { /* float32 weights: elements 0-7 and 8-15 into the two lanes' halves */
                const vf g0 = vf_add(vf_loadu((const float *)w.data + i), offset);
                const vf g1 = vf_add(vf_loadu((const float *)w.data + i + VL), offset);
                g_lo = _mm256_permute2f128_ps(g0, g1, 0x20);
                g_hi = _mm256_permute2f128_ps(g0, g1, 0x31);
            }
            bf16x16_store(at_mut(out, out_dt, i), vf_mul(g_lo, vf_mul(lo, r)), vf_mul(g_hi, vf_mul(hi, r)),
                          &bits_lo, &bits_hi);
        }
    }
#endif
    for (; i + VL <= hidden; i += VL) {
        const vf g = w.folded ? vf_loadu((const float *)w.data + i)
                              : vf_add(vf_load_dt(w.dt, at(w.data, w.dt, i)), offset);
        const vf y = vf_mul(g, vf_mul(vf_load_dt(dt, at(s, dt, i)), r));
        vf_store_dt(out_dt, at_mut(out, out_dt, i), y);
    }
    for (; i < hidden; i++) {
        const float g = w.folded ? ((const float *)w.data)[i] : mv_load(w.dt, w.data, i) + w.offset;
        mv_store(out_dt, out, i, g * (mv_load(dt, s, i) * rrms));
    }
}

/* The float64 redo of rows whose float32 sum of squares overflowed or underflowed (file
   comment). Returns 0 (nothing written) where the row has no finite nonzero magnitude. */
static int scaled_row(mv_dtype dt, const void *s, row_weight w, float eps, mv_dtype out_dt,
                      void *out, int64_t hidden)
{
    /* not fmaxf: GCC 12 for aarch64 failed (internal compiler error) vectorizing that reduction at
       -O3; NaN is passed over either way */
    float largest = 0.0f;
    for (int64_t i = 0; i < hidden; i++) {
        const float a = fabsf(mv_load(dt, s, i));
        if (a > largest)
            largest = a;
    }
    if (!(largest > 0.0f) || isinf(largest))
        return 0;
    const double inv = 1.0 / (double)largest;
    double sum = 0.0;
    for (int64_t i = 0; i < hidden; i++) {
        const double t = (double)mv_load(dt, s, i) * inv;
        sum += t * t;
    }
    const double rrms = 1.0 / sqrt((double)largest * largest * (sum / (double)hidden) + eps);
    for (int64_t i = 0; i < hidden; i++)
        mv_store(out_dt, out, i,
                 (mv_load(w.dt, w.data, i) + w.offset) * (float)(mv_load(dt, s, i) * rrms));
    return 1;
}

MV_ALWAYS_INLINE void norm_row_dt(mv_dtype dt, const mv_norm_input *in, const float *gamma,
                                  int64_t row, mv_dtype out_dt, void *out)
{
    const int64_t hidden = in->hidden;
    const void *x = at(in->x, dt, row * in->x_stride);
    const void *s = x;
    float sum;
    if (in->residual != NULL) {
        void *residual_out = at_mut(in->residual_out, dt, row * in->residual_out_stride);
        sum = sum_squares(dt, 1, x, at(in->residual, dt, row * in->residual_stride), residual_out,
                          hidden);
        s = residual_out;
    } else {
        sum = sum_squares(dt, 0, x, NULL, NULL, hidden);
    }
    const row_weight w = {in->norm_weight, in->weight_float32 ? MV_FLOAT32 : dt, in->weight_offset, 0};
    if ((isinf(sum) || sum < 0x1p-100f) && scaled_row(dt, s, w, in->eps, out_dt, out, hidden))
        return;
    const float rrms = 1.0f / sqrtf(sum / (float)hidden + in->eps);
    const mv_dtype o = out_dt == MV_FLOAT32 ? MV_FLOAT32 : dt;
    if (gamma != NULL) {
        const row_weight g = {gamma, MV_FLOAT32, 0.0f, 1};
        scale_row(dt, s, g, rrms, o, out, hidden);
    } else {
        scale_row(dt, s, w, rrms, o, out, hidden);
    }
}

/* out_dt is the input's dtype (the norm ops) or float32 (QKV's y). gamma: NULL, or the weights
   as norm_gamma_f32 gives them (the same bits either way). */
static void norm_row(const mv_norm_input *in, const float *gamma, int64_t row, mv_dtype out_dt,
                     void *out)
{
    switch (in->dtype) {
    case MV_FLOAT32: norm_row_dt(MV_FLOAT32, in, gamma, row, out_dt, out); break;
    case MV_FLOAT16: norm_row_dt(MV_FLOAT16, in, gamma, row, out_dt, out); break;
    default: norm_row_dt(MV_BFLOAT16, in, gamma, row, out_dt, out); break;
    }
}

/* gamma + offset in float32, as scale_row computes it per element (so the same bits), made once
   for a call of many 16-bit rows without a residual: pass 2 then loads it instead of converting
   the weight again in every row (these rows are bound by the conversions' vector
   uops). Not for one row (no gain), the fused add (slower at 1024 x 4096) or float32 gamma over
   NORM_GAMMA_MAX_BYTES (slower at H = 16384, where it fills L1): NULL.
   dev/logs/cpu-norm-amd-epyc-2c-2026-11-23.log. Written to buf, the caller's (on its stack:
   the pool's threads read it while the caller waits in mv_pool_run). */
#define NORM_GAMMA_MAX_BYTES (16 << 10)
static const float *norm_gamma_f32(const mv_norm_input *in, float (*buf)[NORM_GAMMA_MAX_BYTES / sizeof(float)])
{
    const int64_t hidden = in->hidden;
    if (in->rows < 2 || in->dtype == MV_FLOAT32 || in->residual != NULL ||
        hidden * (int64_t)sizeof(float) > NORM_GAMMA_MAX_BYTES)
        return NULL;
    float *gamma = *buf;
    const mv_dtype wdt = in->weight_float32 ? MV_FLOAT32 : in->dtype;
    const vf offset = vf_set1(in->weight_offset);
    int64_t i = 0;
    for (; i + VL <= hidden; i += VL)
        vf_storeu(gamma + i, vf_add(vf_load_dt(wdt, at(in->norm_weight, wdt, i)), offset));
    for (; i < hidden; i++)
        gamma[i] = mv_load(wdt, in->norm_weight, i) + in->weight_offset;
#if defined(MV_ISA_AVX2)
    /* bf16 rows: each 16 in bf16x16_load's order (simd.h), so that scale_row loads them as they
       are instead of permuting two vectors per 16 elements */
    if (in->dtype == MV_BFLOAT16)
        for (int64_t j = 0; j + 2 * VL <= hidden; j += 2 * VL) {
            const vf g0 = vf_loadu(gamma + j), g1 = vf_loadu(gamma + j + VL);
            vf_storeu(gamma + j, _mm256_permute2f128_ps(g0, g1, 0x20));
            vf_storeu(gamma + j + VL, _mm256_permute2f128_ps(g0, g1, 0x31));
        }
#endif
    return gamma;
}
