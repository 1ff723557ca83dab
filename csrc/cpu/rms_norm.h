/*
 * rms_norm.h: rms_norm and fused add + rms_norm on the CPU (the kernels of csrc/binding/rms_norm.c):
 * rows claimed in chunks by the pool's threads, each normalized by norm_row (norm_row.h, whose comment
 * gives the numerics). Compiled once per SIMD level (kernels_*.c include it after norm_row.h).
 */
typedef struct {
    const mv_rms_norm_args *a;
    _Atomic int64_t next; /* the next row to claim */
} norm_job;

static void norm_task(void *ctx, int index, int count)
{
    (void)index;
    (void)count;
    norm_job *job = ctx;
    const mv_rms_norm_args *a = job->a;
    int64_t begin, end;
    while (claim(&job->next, norm_chunk_rows(a->in.hidden), a->in.rows, &begin, &end))
        for (int64_t row = begin; row < end; row++)
            norm_row(&a->in, row, a->in.dtype, at_mut(a->out, a->in.dtype, row * a->out_stride));
}

int MV_NAME(mv_rms_norm_cpu)(const mv_rms_norm_args *a)
{
    if (a->in.rows <= 0)
        return MV_OK;
    norm_job job = {a, 0};
    mv_pool_run(norm_task, &job,
                threads_for(a->in.rows * a->in.hidden, PARALLEL_MIN_ELEMENTS, a->in.rows));
    return MV_OK;
}

