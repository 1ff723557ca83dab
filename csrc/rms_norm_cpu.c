/*
 * rms_norm_cpu.c: RMSNorm and fused residual-add + RMSNorm on the CPU (numerics in
 * minivllm_kernels.h).
 *
 * Each row is converted to float32 once into a per-thread scratch row, which is also what makes
 * the in-place forms safe: the whole input row has been read before any of the output row is
 * written.
 */
#include <math.h>
#include <stdlib.h>

#include "half_convert.h"
#include "minivllm_kernels.h"

/* Without -fopenmp the kernels run single-threaded; the macro keeps -Wunknown-pragmas quiet. */
#ifdef _OPENMP
#define MV_OMP(...) _Pragma(#__VA_ARGS__)
#else
#define MV_OMP(...)
#endif

/* Below this many elements a thread team costs more than it saves. */
#define PARALLEL_MIN_ELEMENTS ((int64_t)1 << 16)

/* The residual is converted in chunks on the stack so a thread needs only one scratch row. */
#define RESIDUAL_CHUNK 256

/* Partial sums of squares: enough independent lanes for the compiler to vectorize the reduction
   without reassociation flags, and shorter sums, hence smaller float32 rounding error. */
#define SUM_LANES 16

static const void *row_at(const void *base, mv_dtype dt, int64_t row, int64_t stride)
{
    return (const unsigned char *)base + row * stride * mv_dtype_size(dt);
}

static void *mutable_row_at(void *base, mv_dtype dt, int64_t row, int64_t stride)
{
    return (unsigned char *)base + row * stride * mv_dtype_size(dt);
}

/* sum = x[row] (+ residual[row], rounded to the dtype and written to residual_out[row]). */
static void load_summed_row(const mv_norm_input *in, int64_t row, float *sum)
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

static float reciprocal_rms(const float *values, int64_t count, float eps)
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

int mv_rms_norm_cpu(const mv_rms_norm_args *a)
{
    const mv_norm_input *in = &a->in;
    const mv_dtype dt = in->dtype;
    const int64_t rows = in->rows;
    const int64_t hidden = in->hidden;
    if (rows <= 0)
        return MV_OK;

    float *gamma = malloc((size_t)hidden * sizeof(float));
    if (gamma == NULL)
        return MV_ERR_NOMEM;
    mv_load_row(dt, in->norm_weight, hidden, gamma);

    int status = MV_OK;
    MV_OMP(omp parallel if (rows > 1 && rows * hidden >= PARALLEL_MIN_ELEMENTS))
    {
        float *scratch = malloc((size_t)hidden * sizeof(float));
        if (scratch == NULL) {
            MV_OMP(omp atomic write)
            status = MV_ERR_NOMEM;
        }
        MV_OMP(omp for schedule(static))
        for (int64_t row = 0; row < rows; row++) {
            if (scratch == NULL)
                continue;
            load_summed_row(in, row, scratch);
            const float scale = reciprocal_rms(scratch, hidden, in->eps);
            for (int64_t i = 0; i < hidden; i++)
                scratch[i] = gamma[i] * (scratch[i] * scale);
            mv_store_row(dt, scratch, hidden, mutable_row_at(a->out, dt, row, a->out_stride));
        }
        free(scratch);
    }
    free(gamma);
    return status;
}
