/*
 * norm_row.h: the per-row half of RMSNorm on the CPU, shared by cpu/rms_norm.c and
 * cpu/fused_rms_norm_qkv.c so both ops normalize rows identically.
 */
#ifndef MINIVLLM_NORM_ROW_CPU_H
#define MINIVLLM_NORM_ROW_CPU_H

#include <math.h>
#include <stdint.h>

#include "cpu/half_convert.h"
#include "minivllm_kernels.h"

/* Without -fopenmp the kernels run single-threaded; the macro keeps -Wunknown-pragmas quiet. */
#ifdef _OPENMP
#define MV_OMP(...) _Pragma(#__VA_ARGS__)
#else
#define MV_OMP(...)
#endif

/* The residual is converted in chunks on the stack so a thread needs only one scratch row. */
#define RESIDUAL_CHUNK 256

/* Partial sums of squares: enough independent lanes for the compiler to vectorize the reduction
   without reassociation flags, and shorter sums, hence smaller float32 rounding error. */
#define SUM_LANES 16

static inline const void *row_at(const void *base, mv_dtype dt, int64_t row, int64_t stride)
{
    return (const unsigned char *)base + row * stride * mv_dtype_size(dt);
}

static inline void *mutable_row_at(void *base, mv_dtype dt, int64_t row, int64_t stride)
{
    return (unsigned char *)base + row * stride * mv_dtype_size(dt);
}

/* sum = x[row] (+ residual[row], rounded to the dtype and written to residual_out[row]). */
static inline void load_summed_row(const mv_norm_input *in, int64_t row, float *sum)
{
    const mv_dtype dt = in->dtype;
    const int64_t hidden = in->hidden;
    mv_load_row(dt, row_at(in->x, dt, row, in->x_stride), hidden, sum);
    if (in->residual == NULL)
        return;

    const void *residual = row_at(in->residual, dt, row, in->residual_stride);
    void *residual_out = mutable_row_at(in->residual_out, dt, row, in->residual_out_stride);
    float chunk[RESIDUAL_CHUNK];
    for (int64_t start = 0; start < hidden; start += RESIDUAL_CHUNK) {
        const int64_t count = hidden - start < RESIDUAL_CHUNK ? hidden - start : RESIDUAL_CHUNK;
        void *chunk_out = mutable_row_at(residual_out, dt, start, 1);
        /* The chunk is read before it is written: residual_out may be residual itself. */
        mv_load_row(dt, row_at(residual, dt, start, 1), count, chunk);
        for (int64_t i = 0; i < count; i++)
            sum[start + i] += chunk[i];
        mv_store_row(dt, sum + start, count, chunk_out);
        /* Reading the stored chunk back is the rounding to the dtype, one conversion each way. */
        if (dt != MV_FLOAT32)
            mv_load_row(dt, chunk_out, count, sum + start);
    }
}

static inline float reciprocal_rms(const float *values, int64_t count, float eps)
{
    float lanes[SUM_LANES] = {0.0f};
    int64_t i = 0;
    for (; i + SUM_LANES <= count; i += SUM_LANES)
        for (int lane = 0; lane < SUM_LANES; lane++)
            lanes[lane] += values[i + lane] * values[i + lane];
    for (int lane = 0; i < count; i++, lane++)
        lanes[lane] += values[i] * values[i];
    /* Pairwise combination keeps the final additions balanced. */
    for (int width = SUM_LANES / 2; width > 0; width /= 2)
        for (int lane = 0; lane < width; lane++)
            lanes[lane] += lanes[lane + width];
    return 1.0f / sqrtf(lanes[0] / (float)count + eps);
}

#endif /* MINIVLLM_NORM_ROW_CPU_H */
