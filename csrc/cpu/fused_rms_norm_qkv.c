/*
 * cpu/fused_rms_norm_qkv.c: RMSNorm (optionally after a residual add) followed by the QKV
 * projection y . W^T on the CPU (numerics in minivllm_kernels.h).
 *
 * Rows are handled in blocks of ROW_BLOCK. A block is normalized into a float32 scratch matrix Y
 * (y is deliberately not rounded to the dtype), then Y . W^T is computed tile by tile, a tile
 * being the whole row block times COL_BLOCK output columns. For each K_BLOCK slice of the
 * reduction the tile's slice of W is packed, converted to float32, into a per-thread panel, so
 * every W element is converted once per row block and the micro-kernel reads contiguous floats.
 *
 * The micro-kernel sums each K_BLOCK slice from zero in registers and only then adds it to the
 * tile's accumulators: this two-level summation keeps float32 rounding error near 1e-7 relative
 * even for H = 8192.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/norm_row.h"

/* Below this many multiply-adds a thread team costs more than it saves. */
#define PARALLEL_MIN_MACS ((int64_t)1 << 20)

#define ROW_BLOCK 256
#define COL_BLOCK 64
#define K_BLOCK 256
/* Micro-tile shape chosen by measurement with gcc 12 -O3, for both baseline x86-64 and
   -march=native: 4 x 32 was fastest in both (each W vector loaded is reused for 4 rows). With
   8 or 16 columns gcc vectorizes the k loop instead of the columns and runs 3-10x slower. */
#define MICRO_ROWS 4
#define MICRO_COLS 32
_Static_assert(ROW_BLOCK % MICRO_ROWS == 0 && COL_BLOCK % MICRO_COLS == 0,
               "blocks must hold whole micro-tiles");

static int64_t min_i64(int64_t a, int64_t b)
{
    return a < b ? a : b;
}

/* panel[group][k][j] = W[n0 + group * MICRO_COLS + j, k0 + k] as float32, zero past column
   count, so the micro-kernel can always run full width. */
static void pack_w_panel(const mv_qkv_args *a, int64_t n0, int64_t cols, int64_t k0,
                         int64_t depth, float *panel)
{
    const mv_dtype dt = a->in.dtype;
    const int64_t groups = (cols + MICRO_COLS - 1) / MICRO_COLS;
    memset(panel, 0, (size_t)(groups * depth * MICRO_COLS) * sizeof(float));

    if (a->w_stride_k == 1) {
        /* nn.Linear layout: a column's K_BLOCK slice is contiguous; convert it, then scatter. */
        float slice[K_BLOCK];
        for (int64_t col = 0; col < cols; col++) {
            const int64_t n = n0 + col;
            mv_load_row(dt, row_at(a->w, dt, n * a->w_stride_n + k0, 1), depth, slice);
            float *dst = panel + (col / MICRO_COLS) * depth * MICRO_COLS + col % MICRO_COLS;
            for (int64_t k = 0; k < depth; k++)
                dst[k * MICRO_COLS] = slice[k];
        }
        return;
    }
    /* Transposed layout (w_stride_n == 1): each k holds the tile's columns contiguously. */
    float row[COL_BLOCK];
    for (int64_t k = 0; k < depth; k++) {
        mv_load_row(dt, row_at(a->w, dt, (k0 + k) * a->w_stride_k + n0, 1), cols, row);
        for (int64_t col = 0; col < cols; col++)
            panel[((col / MICRO_COLS) * depth + k) * MICRO_COLS + col % MICRO_COLS] = row[col];
    }
}

/* acc[MICRO_ROWS x MICRO_COLS] += y[rows, 0:depth] . panel_group^T, the slice summed from zero
   first (see the file comment). Fixed trip counts let gcc keep acc in vector registers. */
static void micro_kernel(const float *y, int64_t y_stride, const float *panel_group, int64_t depth,
                         float *acc, int64_t acc_stride)
{
    float sums[MICRO_ROWS][MICRO_COLS] = {{0.0f}};
    for (int64_t k = 0; k < depth; k++) {
        const float *w = panel_group + k * MICRO_COLS;
        for (int r = 0; r < MICRO_ROWS; r++) {
            const float y_rk = y[r * y_stride + k];
            for (int j = 0; j < MICRO_COLS; j++)
                sums[r][j] += y_rk * w[j];
        }
    }
    for (int r = 0; r < MICRO_ROWS; r++)
        for (int j = 0; j < MICRO_COLS; j++)
            acc[r * acc_stride + j] += sums[r][j];
}

/* Writes acc columns [n0, n0 + cols) of the first `rows` rows, starting at global row m0, to q,
   k and v, splitting the range where it straddles their boundaries. */
static void store_tile(const mv_qkv_args *a, const float *acc, int64_t m0, int64_t rows,
                       int64_t n0, int64_t cols)
{
    const mv_dtype dt = a->in.dtype;
    const int64_t q_end = a->q_cols;
    const int64_t k_end = a->q_cols + a->kv_cols;
    int64_t n = n0;
    while (n < n0 + cols) {
        void *base;
        int64_t stride, first_col, end;
        if (n < q_end) {
            base = a->q, stride = a->q_stride, first_col = 0, end = q_end;
        } else if (n < k_end) {
            base = a->k, stride = a->k_stride, first_col = q_end, end = k_end;
        } else {
            base = a->v, stride = a->v_stride, first_col = k_end, end = n0 + cols;
        }
        const int64_t count = min_i64(end, n0 + cols) - n;
        for (int64_t r = 0; r < rows; r++) {
            void *dst_row = mutable_row_at(base, dt, m0 + r, stride);
            mv_store_row(dt, acc + r * COL_BLOCK + (n - n0), count,
                         mutable_row_at(dst_row, dt, n - first_col, 1));
        }
        n += count;
    }
}

static void compute_tile(const mv_qkv_args *a, const float *y_block, int64_t m0, int64_t rows,
                         int64_t padded_rows, int64_t n0, float *panel, float *acc)
{
    const int64_t hidden = a->in.hidden;
    const int64_t n_total = a->q_cols + 2 * a->kv_cols;
    const int64_t cols = min_i64(COL_BLOCK, n_total - n0);
    const int64_t groups = (cols + MICRO_COLS - 1) / MICRO_COLS;

    memset(acc, 0, (size_t)(padded_rows * COL_BLOCK) * sizeof(float));
    for (int64_t k0 = 0; k0 < hidden; k0 += K_BLOCK) {
        const int64_t depth = min_i64(K_BLOCK, hidden - k0);
        pack_w_panel(a, n0, cols, k0, depth, panel);
        /* Group-outer order keeps one group's panel slice (32 KiB) hot in L1 while Y streams. */
        for (int64_t group = 0; group < groups; group++)
            for (int64_t r0 = 0; r0 < padded_rows; r0 += MICRO_ROWS)
                micro_kernel(y_block + r0 * hidden + k0, hidden,
                             panel + group * depth * MICRO_COLS, depth,
                             acc + r0 * COL_BLOCK + group * MICRO_COLS, COL_BLOCK);
    }
    store_tile(a, acc, m0, rows, n0, cols);
}

int mv_fused_rms_norm_qkv_cpu(const mv_qkv_args *a)
{
    const mv_norm_input *in = &a->in;
    const mv_dtype dt = in->dtype;
    const int64_t rows = in->rows;
    const int64_t hidden = in->hidden;
    const int64_t n_total = a->q_cols + 2 * a->kv_cols;
    if (rows <= 0 || n_total <= 0)
        return MV_OK;

    /* Y rows are padded to a multiple of MICRO_ROWS (padding rows are zero) so the micro-kernel
       never needs a partial-row variant. */
    const int64_t block_capacity =
        min_i64(ROW_BLOCK, (rows + MICRO_ROWS - 1) / MICRO_ROWS * MICRO_ROWS);
    float *gamma = malloc((size_t)hidden * sizeof(float));
    float *y_block = malloc((size_t)(block_capacity * hidden) * sizeof(float));
    if (gamma == NULL || y_block == NULL) {
        free(gamma);
        free(y_block);
        return MV_ERR_NOMEM;
    }
    mv_load_row(dt, in->norm_weight, hidden, gamma);

    const int64_t col_tiles = (n_total + COL_BLOCK - 1) / COL_BLOCK;
    int out_of_memory = 0;
    MV_OMP(omp parallel if (rows * hidden * n_total >= PARALLEL_MIN_MACS))
    {
        float *panel = malloc((size_t)K_BLOCK * COL_BLOCK * sizeof(float));
        float *acc = malloc((size_t)(block_capacity * COL_BLOCK) * sizeof(float));
        if (panel == NULL || acc == NULL) {
            MV_OMP(omp atomic write)
            out_of_memory = 1;
        }
        /* Every thread must take the same branch below, or the worksharing loops would hang. */
        MV_OMP(omp barrier)
        int give_up;
        MV_OMP(omp atomic read)
        give_up = out_of_memory;

        for (int64_t m0 = 0; !give_up && m0 < rows; m0 += ROW_BLOCK) {
            const int64_t block_rows = min_i64(ROW_BLOCK, rows - m0);
            const int64_t padded_rows = (block_rows + MICRO_ROWS - 1) / MICRO_ROWS * MICRO_ROWS;

            MV_OMP(omp for schedule(static))
            for (int64_t r = 0; r < padded_rows; r++) {
                float *y = y_block + r * hidden;
                if (r >= block_rows) {
                    memset(y, 0, (size_t)hidden * sizeof(float));
                    continue;
                }
                load_summed_row(in, m0 + r, y);
                const float scale = reciprocal_rms(y, hidden, in->eps);
                for (int64_t i = 0; i < hidden; i++)
                    y[i] = gamma[i] * (y[i] * scale);
            }
            /* The implicit barrier above publishes y_block before any tile reads it. */
            MV_OMP(omp for schedule(static))
            for (int64_t tile = 0; tile < col_tiles; tile++)
                compute_tile(a, y_block, m0, block_rows, padded_rows, tile * COL_BLOCK, panel,
                             acc);
            /* ...and the barrier here keeps y_block intact until every tile is done with it. */
        }
        free(panel);
        free(acc);
    }
    free(gamma);
    free(y_block);
    return out_of_memory ? MV_ERR_NOMEM : MV_OK;
}
