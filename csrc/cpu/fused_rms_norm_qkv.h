/*
 * fused_rms_norm_qkv.h: fused RMSNorm + QKV on the CPU (the kernel of
 * csrc/binding/fused_rms_norm_qkv.c); the numerics and the threading are in norm_row.h's comment.
 * Compiled once per SIMD level (kernels_*.c include it after norm_row.h).
 */
/* ---- QKV ------------------------------------------------------------------------------------- */

/* out[r * out_stride + c] += sum_k y[r * y_stride + k] * w_c[k] for r < MR, c < NC, k < depth,
   where w_c is W's row c (w + c * w_row_bytes, dtype wdt). Summed as the file comment says.
   A one-row tile (M = 1) has DOT_KA accumulators per column, over alternate vectors of k: one
   accumulator a column gave 4 FMA chains, too few to hide the FMA latency; and it prefetches, a
   line at a time, the tile it runs next (pf_next bytes from w; 0: none known), where each row's
   own 1 KiB ahead ran past its end into rows already loaded (a Qwen3-0.6B fp16 row is 2 KiB).
   dev/logs/cpu-gemv-m1-amd-epyc-2c-2026-11-23.log has the variants' timings. */
MV_ALWAYS_INLINE void dot_tile(mv_dtype wdt, int MR, int NC, const char *w, int64_t w_row_bytes,
                               int64_t pf_next, const float *y, int64_t y_stride, int64_t depth,
                               float *out, int64_t out_stride)
{
    const int KA = MR == 1 ? DOT_KA : 1;
    const int64_t esize = mv_dtype_size(wdt);
    float sums[DOT_MR][DOT_NC] = {{0.0f}};
    const int64_t whole = depth - depth % (KA * VL);
    for (int64_t k0 = 0; k0 < whole; k0 += DOT_BLOCK) {
        const int64_t k1 = min64(k0 + DOT_BLOCK, whole);
        vf acc[DOT_KA][DOT_MR][DOT_NC];
        for (int a = 0; a < KA; a++)
            for (int r = 0; r < MR; r++)
                for (int c = 0; c < NC; c++)
                    acc[a][r][c] = vf_zero();
        for (int64_t k = k0; k < k1; k += KA * VL) {
            MV_UNROLL
            for (int a = 0; a < KA; a++) {
                const int64_t ka = k + a * VL;
                vf wv[DOT_NC];
                for (int c = 0; c < NC; c++) {
                    const char *wk = w + c * w_row_bytes + ka * esize;
                    if (MR == 1) {
                        if (pf_next != 0 && ((ka * esize) & 63) == 0)
                            __builtin_prefetch(wk + pf_next);
                    } else if (MV_PREFETCH_BYTES > 0) {
                        __builtin_prefetch(wk + MV_PREFETCH_BYTES);
                    }
                    wv[c] = vf_load_dt(wdt, wk);
                }
                for (int r = 0; r < MR; r++) {
                    const vf yv = vf_loadu(y + r * y_stride + ka);
                    for (int c = 0; c < NC; c++)
                        acc[a][r][c] = vf_fma(yv, wv[c], acc[a][r][c]);
                }
            }
        }
        for (int r = 0; r < MR; r++)
            for (int c = 0; c < NC; c++)
                sums[r][c] += vf_hsum(KA == 2 ? vf_add(acc[0][r][c], acc[1][r][c]) : acc[0][r][c]);
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
    dot_tile(wdt, mr, nc, w, w_row_bytes, pf_next, y, y_stride, depth, out, out_stride)

static void dot_tile_any(mv_dtype wdt, int mr, int nc, const char *w, int64_t w_row_bytes,
                         int64_t pf_next, const float *y, int64_t y_stride, int64_t depth,
                         float *out, int64_t out_stride)
{
#define BY_ROWS(wdt, nc)                                                                           \
    switch (mr) {                                                                                  \
    case 1: DOT_CASE(wdt, 1, nc); break;                                                           \
    case 2: DOT_CASE(wdt, 2, nc); break;                                                           \
    case 3: DOT_CASE(wdt, DOT_MR < 3 ? DOT_MR : 3, nc); break; /* (never 3 where DOT_MR is 2) */   \
    default: DOT_CASE(wdt, DOT_MR, nc); break;                                                     \
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

/* ---- GEMM (M > DIRECT_MAX_ROWS, or W not k-contiguous) ---------------------------------------
 * C^T = W y^T in register tiles of GEMM_NB columns of the output (rows of W, broadcast one float
 * at a time) x GEMM_MP rows of y (GEMM_MV vectors, loaded whole): 14 x 32 on AVX-512 (28 of the
 * 32 zmm registers accumulate), 6 x 16 on AVX2 (12 of 16 ymm), 4 x 4 scalars in portable C.
 * Operands are packed once per call (y, transposed into panels of GEMM_MP rows: y_pack[k][m]) or
 * once per block of GEMM_NC x GEMM_KC of W (converted to float32, rows GEMM_KC apart, so that the
 * tile's broadcasts are constant offsets from one pointer); the y block of a panel (GEMM_KC x
 * GEMM_MP floats, 32 KiB on AVX-512) stays in L1 while the W tiles of the block stream from L2.
 * Sums: each GEMM_KC block of an output is one float32 FMA chain started from zero, the block
 * sums added in order (the direct path's error bound, file comment of norm_row.h). */
#if VL >= 16
#define GEMM_NB 14
#define GEMM_MV 2
#elif VL >= 8
#define GEMM_NB 6
#define GEMM_MV 2
#else
#define GEMM_NB 4
#define GEMM_MV 4
#endif
#define GEMM_MP (GEMM_MV * VL)
#define GEMM_KC 256
#define GEMM_NC (GEMM_NB * 16)

/* c[i][m] (i < GEMM_NB, m < mv * VL, row stride GEMM_MP) = (first ? 0 : c) + the sum over k < kc
   of w[i * GEMM_KC + k] * y[k * GEMM_MP + m]. */
MV_ALWAYS_INLINE void gemm_tile(int mv, const float *w, const float *y, int64_t kc, float *c,
                                int first)
{
    vf acc[GEMM_NB][GEMM_MV];
    MV_UNROLL
    for (int i = 0; i < GEMM_NB; i++)
        MV_UNROLL
        for (int j = 0; j < GEMM_MV; j++)
            acc[i][j] = vf_zero();
    for (int64_t k = 0; k < kc; k++) {
        vf yv[GEMM_MV];
        MV_UNROLL
        for (int j = 0; j < GEMM_MV; j++)
            yv[j] = j < mv ? vf_loadu(y + k * GEMM_MP + j * VL) : vf_zero();
        MV_UNROLL
        for (int i = 0; i < GEMM_NB; i++) {
            const vf wv = vf_bcast(w + i * GEMM_KC + k);
            MV_UNROLL
            for (int j = 0; j < GEMM_MV; j++)
                if (j < mv)
                    acc[i][j] = vf_fma(wv, yv[j], acc[i][j]);
        }
    }
    MV_UNROLL
    for (int i = 0; i < GEMM_NB; i++)
        MV_UNROLL
        for (int j = 0; j < GEMM_MV; j++)
            if (j < mv) {
                float *ci = c + i * GEMM_MP + j * VL;
                vf_storeu(ci, first ? acc[i][j] : vf_add(vf_loadu(ci), acc[i][j]));
            }
}

/* The panel's rows are zero past the call's last row: mv = the vectors that hold real rows. */
static void gemm_tile_any(int mv, const float *w, const float *y, int64_t kc, float *c, int first)
{
    switch (mv) {
    case 1: gemm_tile(1, w, y, kc, c, first); break;
#if GEMM_MV > 2
    case 2: gemm_tile(2, w, y, kc, c, first); break;
    case 3: gemm_tile(3, w, y, kc, c, first); break;
#endif
    default: gemm_tile(GEMM_MV, w, y, kc, c, first); break;
    }
}

/* w_pack[i * GEMM_KC + k] = W[n0 + i, k0 + k] as float32 for i < cols, zero for cols <= i <
   cols_pad (whole tiles; those columns are never stored). */
static void pack_w(const mv_qkv_args *a, int64_t n0, int64_t cols, int64_t cols_pad, int64_t k0,
                   int64_t kc, float *w_pack)
{
    const mv_dtype dt = a->in.dtype;
    for (int64_t i = 0; i < cols; i++) {
        const char *src = at(a->w, dt, (n0 + i) * a->w_stride_n + k0 * a->w_stride_k);
        float *dst = w_pack + i * GEMM_KC;
        if (a->w_stride_k == 1)
            load_f32_row(dt, src, kc, dst);
        else
            for (int64_t k = 0; k < kc; k++)
                dst[k] = mv_load(dt, src, k * a->w_stride_k);
    }
    for (int64_t i = cols; i < cols_pad; i++)
        memset(w_pack + i * GEMM_KC, 0, (size_t)kc * sizeof(float));
}

/* Rows [n0, n0 + cols) of W, elements [k0, k0 + kc), toward L2: the next block's pack then
   finds W there instead of waiting on memory (W is read once per call, from DRAM for big ones). */
static void prefetch_w(const mv_qkv_args *a, int64_t n0, int64_t cols, int64_t k0, int64_t kc)
{
    const mv_dtype dt = a->in.dtype;
    const int64_t bytes = kc * mv_dtype_size(dt);
    for (int64_t i = 0; i < cols; i++) {
        const char *row = at(a->w, dt, (n0 + i) * a->w_stride_n + k0);
        for (int64_t b = 0; b < bytes; b += 64)
            __builtin_prefetch(row + b, 0, 2);
    }
}

typedef struct {
    const mv_qkv_args *a;
    float *y;      /* direct: rows [m0, m0 + rows) normalized, float32, row stride hidden;
                      GEMM: the same rows packed in panels (gemm_pack_row) */
    int64_t m0;
    int64_t rows;
    int gemm;
    _Atomic int64_t next; /* the next row (norm) or output column (GEMM) to claim */
    atomic_int failed;    /* a thread's scratch allocation failed */
    /* decode GEMV: the output columns cut into `segments` parts, one per thread, each claimed in
       chunks from its own counter (chunks claimed so far), backwards when `reverse` */
    int segments;
    int reverse;
    _Atomic int64_t segment_next[GEMV_MAX_SEGMENTS];
} qkv_job;

/* The next chunk of the decode GEMV's columns for thread `index`: its own segment first, then
   the others' in turn (a thread the OS holds up leaves its segment to the rest, as with claim()).
   Each call gives a thread the same part of W, which stays in that core's L2 and LLC share, and
   every other call walks the segments backwards, so that the W a core read last (still in its
   L2) is read first. */
static int gemv_claim(qkv_job *job, int index, int64_t total, int64_t *begin, int64_t *end)
{
    const int segs = job->segments;
    const int64_t chunks = (total + DIRECT_CHUNK_COLS - 1) / DIRECT_CHUNK_COLS;
    for (int i = 0; i < segs; i++) {
        const int s = (index + i) % segs;
        const int64_t first = chunks * s / segs, count = chunks * (s + 1) / segs - first;
        const int64_t j = atomic_fetch_add(&job->segment_next[s], 1);
        if (j >= count)
            continue;
        const int64_t chunk = first + (job->reverse ? count - 1 - j : j);
        *begin = chunk * DIRECT_CHUNK_COLS;
        *end = min64(total, *begin + DIRECT_CHUNK_COLS);
        return 1;
    }
    return 0;
}

static inline int64_t gemm_panels(int64_t rows) { return (rows + GEMM_MP - 1) / GEMM_MP; }

/* Row r of y (float32, hidden long) into its panel: y_pack[panel][k][r % GEMM_MP]. */
static void gemm_pack_row(float *y_pack, int64_t hidden, int64_t r, const float *row)
{
    float *dst = y_pack + (r / GEMM_MP) * hidden * GEMM_MP + r % GEMM_MP;
    for (int64_t k = 0; k < hidden; k++)
        dst[k * GEMM_MP] = row == NULL ? 0.0f : row[k];
}

static void qkv_norm_task(void *ctx, int index, int count)
{
    (void)index;
    (void)count;
    qkv_job *job = ctx;
    const int64_t hidden = job->a->in.hidden, chunk = norm_chunk_rows(hidden);
    int64_t begin, end;
    if (!job->gemm) {
        while (claim(&job->next, chunk, job->rows, &begin, &end))
            for (int64_t r = begin; r < end; r++)
                norm_row(&job->a->in, NULL, job->m0 + r, MV_FLOAT32, job->y + r * hidden);
        return;
    }
    float *row = malloc((size_t)hidden * sizeof(float));
    if (row == NULL) {
        atomic_store(&job->failed, 1);
        return;
    }
    while (claim(&job->next, chunk, job->rows, &begin, &end))
        for (int64_t r = begin; r < end; r++) {
            norm_row(&job->a->in, NULL, job->m0 + r, MV_FLOAT32, row);
            gemm_pack_row(job->y, hidden, r, row);
        }
    free(row);
}

/* The chunk's rows by the GEMM, GEMM_NC output columns per claim. */
static void qkv_gemm(qkv_job *job)
{
    const mv_qkv_args *a = job->a;
    const int64_t hidden = a->in.hidden, rows = job->rows, panels = gemm_panels(rows);
    const int64_t n_total = a->q_cols + 2 * a->kv_cols;
    float *w_pack = malloc((size_t)GEMM_NC * GEMM_KC * sizeof(float));
    float *c = malloc((size_t)(panels * GEMM_NC * GEMM_MP) * sizeof(float)); /* [panel][n][m] */
    float *acc = malloc((size_t)(rows * GEMM_NC) * sizeof(float));           /* [m][n] */
    if (w_pack == NULL || c == NULL || acc == NULL) {
        atomic_store(&job->failed, 1);
        goto done;
    }
    int64_t n0, n_end;
    while (claim(&job->next, GEMM_NC, n_total, &n0, &n_end)) {
        const int64_t cols = n_end - n0;
        const int64_t tiles = (cols + GEMM_NB - 1) / GEMM_NB;
        for (int64_t k0 = 0; k0 < hidden; k0 += GEMM_KC) {
            const int64_t kc = min64(GEMM_KC, hidden - k0);
            pack_w(a, n0, cols, tiles * GEMM_NB, k0, kc, w_pack);
            for (int64_t p = 0; p < panels; p++) {
                const int64_t real = min64(GEMM_MP, rows - p * GEMM_MP);
                const int mv = (int)((real + VL - 1) / VL);
                const float *y = job->y + p * hidden * GEMM_MP + k0 * GEMM_MP;
                for (int64_t t = 0; t < tiles; t++) {
                    if (p == 0 && k0 + GEMM_KC < hidden && a->w_stride_k == 1)
                        prefetch_w(a, n0 + t * GEMM_NB, min64(GEMM_NB, cols - t * GEMM_NB),
                                   k0 + GEMM_KC, min64(GEMM_KC, hidden - k0 - GEMM_KC));
                    gemm_tile_any(mv, w_pack + t * GEMM_NB * GEMM_KC, y, kc,
                                  c + (p * GEMM_NC + t * GEMM_NB) * GEMM_MP, k0 == 0);
                }
            }
        }
        for (int64_t m = 0; m < rows; m++) {
            const float *src = c + (m / GEMM_MP) * GEMM_NC * GEMM_MP + m % GEMM_MP;
            for (int64_t n = 0; n < cols; n++)
                acc[m * GEMM_NC + n] = src[n * GEMM_MP];
        }
        store_columns(a, acc, GEMM_NC, job->m0, rows, n0, cols);
    }
done:
    free(w_pack);
    free(c);
    free(acc);
}

static void qkv_columns_task(void *ctx, int index, int count)
{
    (void)count;
    qkv_job *job = ctx;
    const mv_qkv_args *a = job->a;
    const mv_dtype dt = a->in.dtype;
    const int64_t hidden = a->in.hidden, rows = job->rows;
    const int64_t n_total = a->q_cols + 2 * a->kv_cols;
    if (job->gemm) {
        qkv_gemm(job);
        return;
    }
    float *acc = malloc((size_t)(rows * COL_BLOCK) * sizeof(float));
    if (acc == NULL) {
        atomic_store(&job->failed, 1);
        return;
    }
    /* the decode GEMV: W streamed as it is (nn.Linear layout), four rows of it at a time, whole,
       against every row of y (from cache after the first group of y rows) */
    const int64_t w_row_bytes = a->w_stride_n * mv_dtype_size(dt);
    int64_t begin, end;
    while (gemv_claim(job, index, n_total, &begin, &end)) {
        /* the chunk after this one, as gemv_claim will most likely hand it out */
        const int64_t after = job->reverse ? begin - DIRECT_CHUNK_COLS : end;
        for (int64_t n0 = begin; n0 < end; n0 += COL_BLOCK) {
            const int64_t cols = min64(COL_BLOCK, end - n0);
            memset(acc, 0, (size_t)(rows * COL_BLOCK) * sizeof(float));
            int64_t c = 0;
            for (; c < cols; c += DOT_NC) {
                const int nc = cols - c >= DOT_NC ? DOT_NC : 1;
                int64_t next = n0 + c + DOT_NC < end ? n0 + c + DOT_NC : after;
                if (next < 0 || next + DOT_NC > n_total)
                    next = n0 + c; /* nothing to prefetch */
                const int64_t pf_next = (next - (n0 + c)) * w_row_bytes;
                for (int64_t r = 0; r < rows; r += DOT_MR)
                    dot_tile_any(dt, (int)min64(DOT_MR, rows - r), nc,
                                 at(a->w, dt, (n0 + c) * a->w_stride_n), w_row_bytes, pf_next,
                                 job->y + r * hidden, hidden, hidden, acc + r * COL_BLOCK + c,
                                 COL_BLOCK);
                if (nc == 1)
                    c -= DOT_NC - 1; /* the last few columns go one at a time */
            }
            store_columns(a, acc, COL_BLOCK, job->m0, rows, n0, cols);
        }
    }
    free(acc);
}

/* Calls so far: the decode GEMV's direction alternates with it (gemv_claim). */
static atomic_uint gemv_calls;

int MV_NAME(mv_fused_rms_norm_qkv_cpu)(const mv_qkv_args *a)
{
    const int64_t rows = a->in.rows, hidden = a->in.hidden;
    const int64_t n_total = a->q_cols + 2 * a->kv_cols;
    if (rows <= 0 || n_total <= 0)
        return MV_OK;
    const int64_t chunk = min64(rows, ROW_CHUNK);
    const int gemm = chunk > DIRECT_MAX_ROWS || a->w_stride_k != 1;
    const int64_t y_rows = gemm ? gemm_panels(chunk) * GEMM_MP : chunk;
    /* on a cache line: every tile loads y beside W, and a y vector split across two lines cost
       the M = 1 GEMV 4-9% with W in the LLC (dev/logs/cpu-gemv-m1-align-amd-epyc-2c-2026-11-24.log) */
    float *y = aligned_alloc(64, ((size_t)(y_rows * hidden) * sizeof(float) + 63) / 64 * 64);
    if (y == NULL)
        return MV_ERR_NOMEM;
    qkv_job job = {.a = a, .y = y};
    for (int64_t m0 = 0; m0 < rows && !atomic_load(&job.failed); m0 += ROW_CHUNK) {
        job.m0 = m0;
        job.rows = min64(ROW_CHUNK, rows - m0);
        job.gemm = gemm;
        atomic_store(&job.next, 0);
        if (gemm) /* the last panel's rows past the chunk's are zero */
            for (int64_t r = job.rows; r < gemm_panels(job.rows) * GEMM_MP; r++)
                gemm_pack_row(y, hidden, r, NULL);
        mv_pool_run(qkv_norm_task, &job,
                    threads_for(job.rows * hidden, PARALLEL_MIN_ELEMENTS, job.rows));
        if (atomic_load(&job.failed))
            break;
        atomic_store(&job.next, 0);
        const int threads =
            threads_for(job.rows * hidden * n_total, PARALLEL_MIN_MACS, (n_total + 15) / 16);
        job.segments = threads < GEMV_MAX_SEGMENTS ? threads : GEMV_MAX_SEGMENTS;
        job.reverse = (int)(atomic_fetch_add(&gemv_calls, 1) & 1);
        for (int i = 0; i < job.segments; i++)
            atomic_store(&job.segment_next[i], 0);
        mv_pool_run(qkv_columns_task, &job, threads);
    }
    free(y);
    return atomic_load(&job.failed) ? MV_ERR_NOMEM : MV_OK;
}
