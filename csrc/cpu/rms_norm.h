/*
 * rms_norm.h: rms_norm and fused add + rms_norm on the CPU (the kernels of csrc/binding/rms_norm.c):
 * rows claimed in chunks by the pool's threads, each normalized by norm_row (norm_row.h, whose comment
 * gives the numerics). Compiled once per SIMD level (kernels_*.c include it after norm_row.h).
 */
typedef struct {
    const mv_rms_norm_args *a;
    const float *gamma;   /* norm_gamma_f32's weights, made once for the call's threads, or NULL */
    _Atomic int64_t next; /* the next row to claim */
} norm_job;

static void norm_task(void *ctx, int index, int count)
{
    (void)index;
    (void)count;
    norm_job *job = ctx;
    const mv_rms_norm_args *a = job->a;
    const mv_dtype dt = a->in.dtype;
    const float *gamma = job->gamma;
    int64_t begin, end;
    while (claim(&job->next, norm_chunk_rows(a->in.hidden), a->in.rows, &begin, &end)) {
        if (a->outer.inner_rows == 0) {
            for (int64_t row = begin; row < end; row++)
                norm_row(&a->in, gamma, row, dt, at_mut(a->out, dt, row * a->out_stride));
            continue;
        }
        /* Rows in two strides: the rows of one outer step are rows of one stride from where that
           step starts, so norm_row runs on them unchanged (same bits as any other layout). */
        for (int64_t row = begin; row < end;) {
            const int64_t step = row / a->outer.inner_rows, first = step * a->outer.inner_rows;
            const int64_t stop = min64(end, first + a->outer.inner_rows);
            mv_norm_input in = a->in;
            in.x = at(in.x, dt, step * a->outer.x);
            if (in.residual != NULL) {
                in.residual = at(in.residual, dt, step * a->outer.residual);
                in.residual_out = at_mut(in.residual_out, dt, step * a->outer.residual_out);
            }
            char *out = at_mut(a->out, dt, step * a->outer.out);
            for (; row < stop; row++)
                norm_row(&in, gamma, row - first, dt, at_mut(out, dt, (row - first) * a->out_stride));
        }
    }
}

int MV_NAME(mv_rms_norm_cpu)(const mv_rms_norm_args *a)
{
    if (a->in.rows <= 0)
        return MV_OK;
    float gamma_buf[NORM_GAMMA_MAX_BYTES / sizeof(float)];
    norm_job job = {a, norm_gamma_f32(&a->in, &gamma_buf), 0};
    mv_pool_run(norm_task, &job,
                threads_for(a->in.rows * a->in.hidden, PARALLEL_MIN_ELEMENTS, a->in.rows));
    return MV_OK;
}

