/*
 * cpu/rms_norm.c: RMSNorm and fused residual-add + RMSNorm on the CPU (numerics in
 * minivllm_kernels.h).
 *
 * Each row is converted to float32 once into a per-thread scratch row, which is also what makes
 * the in-place forms safe: the whole input row has been read before any of the output row is
 * written.
 */
#include <math.h>
#include <stdlib.h>

#include "cpu/norm_row.h"

/* Below this many elements a thread team costs more than it saves. */
#define PARALLEL_MIN_ELEMENTS ((int64_t)1 << 16)

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
