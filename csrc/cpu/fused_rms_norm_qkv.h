/*
 * fused_rms_norm_qkv.h: fused RMSNorm + QKV on the CPU (the kernel of
 * csrc/binding/fused_rms_norm_qkv.c); the numerics and the threading are in norm_row.h's comment.
 * Compiled once per SIMD level (kernels_*.c include it after norm_row.h).
 */
/* ---- QKV ------------------------------------------------------------------------------------- */

/* out[r * out_stride + c] += sum_k y[r * y_stride + k] * w_c[k] for r < MR, c < NC, k < depth,
   where w_c is W's row c (w + c * w_row_bytes, dtype wdt). Summed as the file comment says. */
MV_ALWAYS_INLINE void dot_tile(mv_dtype wdt, int MR, int NC, const char *w, int64_t w_row_bytes,
                               const float *y, int64_t y_stride, int64_t depth, float *out,
                               int64_t out_stride)
{
    float sums[DOT_MR][DOT_NC] = {{0.0f}};
    const int64_t whole = depth - depth % VL;
    for (int64_t k0 = 0; k0 < whole; k0 += DOT_BLOCK) {
        const int64_t k1 = min64(k0 + DOT_BLOCK, whole);
        vf acc[DOT_MR][DOT_NC];
        for (int r = 0; r < MR; r++)
            for (int c = 0; c < NC; c++)
                acc[r][c] = vf_zero();
        for (int64_t k = k0; k < k1; k += VL) {
            vf wv[DOT_NC];
            for (int c = 0; c < NC; c++) {
                const char *wk = w + c * w_row_bytes + k * mv_dtype_size(wdt);
                if (MV_PREFETCH_BYTES > 0)
                    __builtin_prefetch(wk + MV_PREFETCH_BYTES);
                wv[c] = vf_load_dt(wdt, wk);
            }
            for (int r = 0; r < MR; r++) {
                const vf yv = vf_loadu(y + r * y_stride + k);
                for (int c = 0; c < NC; c++)
                    acc[r][c] = vf_fma(yv, wv[c], acc[r][c]);
            }
        }
        for (int r = 0; r < MR; r++)
            for (int c = 0; c < NC; c++)
                sums[r][c] += vf_hsum(acc[r][c]);
    }
    for (int64_t k = whole; k < depth; k++)
        for (int c = 0; c < NC; c++) {
            const float wk = mv_load(wdt, w + c * w_row_bytes, k);
            for (int r = 0; r < MR; r++)
                sums[r][c] += y[r * y_stride + k] * wk;
        }
    for (int r = 0; r < MR; r++)
        for (int c = 0; c < NC; c++)
            out[r * out_stride + c] += sums[r][c];
}

#define DOT_CASE(wdt, mr, nc)                                                                      \
    dot_tile(wdt, mr, nc, w, w_row_bytes, y, y_stride, depth, out, out_stride)

static void dot_tile_any(mv_dtype wdt, int mr, int nc, const char *w, int64_t w_row_bytes,
                         const float *y, int64_t y_stride, int64_t depth, float *out,
                         int64_t out_stride)
{
#define BY_ROWS(wdt, nc)                                                                           \
    switch (mr) {                                                                                  \
    case 1: DOT_CASE(wdt, 1, nc); break;                                                           \
    case 2: DOT_CASE(wdt, 2, nc); break;                                                           \
    case 3: DOT_CASE(wdt, 3, nc); break;                                                           \
    default: DOT_CASE(wdt, 4, nc); break;                                                          \
    }
#define BY_COLS(wdt)                                                                               \
    if (nc == DOT_NC) {                                                                            \
        BY_ROWS(wdt, DOT_NC)                                                                       \
    } else {                                                                                       \
        BY_ROWS(wdt, 1)                                                                            \
    }
    switch (wdt) {
    case MV_FLOAT32: BY_COLS(MV_FLOAT32) break;
    case MV_FLOAT16: BY_COLS(MV_FLOAT16) break;
    default: BY_COLS(MV_BFLOAT16) break;
    }
#undef BY_COLS
#undef BY_ROWS
}

/* Columns [n0, n0 + cols) of `rows` rows of results (acc, row stride acc_stride), global rows
   from m0, to q, k and v, split where the range straddles their boundaries. */
static void store_columns(const mv_qkv_args *a, const float *acc, int64_t acc_stride, int64_t m0,
                          int64_t rows, int64_t n0, int64_t cols)
{
    const mv_dtype dt = a->in.dtype;
    const int64_t q_end = a->q_cols, k_end = a->q_cols + a->kv_cols;
    int64_t n = n0;
    while (n < n0 + cols) {
        void *base;
        int64_t stride, first, end;
        if (n < q_end) {
            base = a->q, stride = a->q_stride, first = 0, end = q_end;
        } else if (n < k_end) {
            base = a->k, stride = a->k_stride, first = q_end, end = k_end;
        } else {
            base = a->v, stride = a->v_stride, first = k_end, end = n0 + cols;
        }
        const int64_t count = min64(end, n0 + cols) - n;
        for (int64_t r = 0; r < rows; r++)
            store_f32_row(dt, acc + r * acc_stride + (n - n0), count,
                          at_mut(base, dt, (m0 + r) * stride + (n - first)));
        n += count;
    }
}

typedef struct {
    const mv_qkv_args *a;
    float *y;     /* rows [m0, m0 + rows) normalized, float32, row stride hidden */
    int64_t m0;
    int64_t rows;
    atomic_int failed; /* a thread's scratch allocation failed */
} qkv_job;

static void qkv_norm_task(void *ctx, int index, int count)
{
    qkv_job *job = ctx;
    int64_t begin, end;
    split_range(job->rows, 1, index, count, &begin, &end);
    for (int64_t r = begin; r < end; r++)
        norm_row(&job->a->in, job->m0 + r, MV_FLOAT32, job->y + r * job->a->in.hidden);
}

static void qkv_columns_task(void *ctx, int index, int count)
{
    qkv_job *job = ctx;
    const mv_qkv_args *a = job->a;
    const mv_dtype dt = a->in.dtype;
    const int64_t hidden = a->in.hidden, rows = job->rows;
    const int64_t n_total = a->q_cols + 2 * a->kv_cols;
    const int64_t es = mv_dtype_size(dt);
    /* W streamed as it is (nn.Linear layout, few rows), or converted a block at a time. */
    const int direct = rows <= DIRECT_MAX_ROWS && a->w_stride_k == 1;
    int64_t begin, end;
    split_range(n_total, 16, index, count, &begin, &end);
    if (begin >= end)
        return;
    float *acc = malloc((size_t)(rows * COL_BLOCK) * sizeof(float));
    float *wbuf = direct ? NULL : malloc((size_t)COL_BLOCK * DOT_BLOCK * sizeof(float));
    if (acc == NULL || (!direct && wbuf == NULL)) {
        atomic_store(&job->failed, 1);
        free(acc);
        free(wbuf);
        return;
    }
    for (int64_t n0 = begin; n0 < end; n0 += COL_BLOCK) {
        const int64_t cols = min64(COL_BLOCK, end - n0);
        memset(acc, 0, (size_t)(rows * COL_BLOCK) * sizeof(float));
        if (direct) {
            /* four rows of W at a time, whole, against every row of y (from cache after the
               first group of y rows) */
            const int64_t w_row_bytes = a->w_stride_n * es;
            int64_t c = 0;
            for (; c < cols; c += DOT_NC) {
                const int nc = cols - c >= DOT_NC ? DOT_NC : 1;
                for (int64_t r = 0; r < rows; r += DOT_MR)
                    dot_tile_any(dt, (int)min64(DOT_MR, rows - r), nc,
                                 at(a->w, dt, (n0 + c) * a->w_stride_n), w_row_bytes,
                                 job->y + r * hidden, hidden, hidden, acc + r * COL_BLOCK + c,
                                 COL_BLOCK);
                if (nc == 1)
                    c -= DOT_NC - 1; /* the last few columns go one at a time */
            }
        } else {
            for (int64_t k0 = 0; k0 < hidden; k0 += DOT_BLOCK) {
                const int64_t depth = min64(DOT_BLOCK, hidden - k0);
                const int64_t w_row_bytes = depth * (int64_t)sizeof(float);
                /* wbuf[c][k] = W[n0 + c, k0 + k] as float32 */
                for (int64_t c = 0; c < cols; c++) {
                    const char *src = at(a->w, dt, (n0 + c) * a->w_stride_n + k0 * a->w_stride_k);
                    float *dst = wbuf + c * depth;
                    if (a->w_stride_k == 1)
                        load_f32_row(dt, src, depth, dst);
                    else
                        for (int64_t k = 0; k < depth; k++)
                            dst[k] = mv_load(dt, src, k * a->w_stride_k);
                }
                for (int64_t r = 0; r < rows; r += DOT_MR) {
                    const int mr = (int)min64(DOT_MR, rows - r);
                    const float *y_rows = job->y + r * hidden + k0;
                    float *acc_rows = acc + r * COL_BLOCK;
                    int64_t c = 0;
                    for (; c + DOT_NC <= cols; c += DOT_NC)
                        dot_tile_any(MV_FLOAT32, mr, DOT_NC, (const char *)(wbuf + c * depth),
                                     w_row_bytes, y_rows, hidden, depth, acc_rows + c, COL_BLOCK);
                    for (; c < cols; c++)
                        dot_tile_any(MV_FLOAT32, mr, 1, (const char *)(wbuf + c * depth),
                                     w_row_bytes, y_rows, hidden, depth, acc_rows + c, COL_BLOCK);
                }
            }
        }
        store_columns(a, acc, COL_BLOCK, job->m0, rows, n0, cols);
    }
    free(acc);
    free(wbuf);
}

int MV_NAME(mv_fused_rms_norm_qkv_cpu)(const mv_qkv_args *a)
{
    const int64_t rows = a->in.rows, hidden = a->in.hidden;
    const int64_t n_total = a->q_cols + 2 * a->kv_cols;
    if (rows <= 0 || n_total <= 0)
        return MV_OK;
    const int64_t chunk = min64(rows, ROW_CHUNK);
    float *y = malloc((size_t)(chunk * hidden) * sizeof(float));
    if (y == NULL)
        return MV_ERR_NOMEM;
    qkv_job job = {a, y, 0, 0, 0};
    for (int64_t m0 = 0; m0 < rows && !atomic_load(&job.failed); m0 += ROW_CHUNK) {
        job.m0 = m0;
        job.rows = min64(ROW_CHUNK, rows - m0);
        mv_pool_run(qkv_norm_task, &job,
                    threads_for(job.rows * hidden, PARALLEL_MIN_ELEMENTS, job.rows));
        mv_pool_run(qkv_columns_task, &job,
                    threads_for(job.rows * hidden * n_total, PARALLEL_MIN_MACS, (n_total + 15) / 16));
    }
    free(y);
    return atomic_load(&job.failed) ? MV_ERR_NOMEM : MV_OK;
}
