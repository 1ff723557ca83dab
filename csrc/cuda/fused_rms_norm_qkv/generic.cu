/*
 * generic.cu: the correctness fallback of qkv = rms_norm(x (+ residual)) . W^T: any dtype, layout,
 * alignment and size, on any GPU; and the residual store that follows a kernel which read the
 * residual without writing the new one.
 *
 * Deferred-rstd identity: rms_norm(s) . W^T = diag(rrms) . (s . (gamma (.) W)^T), since
 * y[m,k] = gamma[k] * s[m,k] * rrms[m] and rrms[m] does not depend on k. So one tiled GEMM of s
 * against gamma-scaled W tiles produces the row sums of s^2 as a by-product of loading s, and the
 * epilogue scales each output row by rrms: no separate norm pass, no scratch buffer. (y is
 * therefore not rounded to the dtype before the product; the difference is within the dtype's
 * rounding.) Each 256-thread block owns a 64 x 64 output tile (4 x 4 outputs per thread) and walks
 * K in steps of 32 through shared memory, accumulating in float.
 *
 * residual_out: every column tile of a row block needs s = x + residual, so every block reads
 * residual. If the GEMM wrote residual_out and residual_out were residual (in-place form), a block
 * scheduled later would read the updated value. So the GEMM never writes residual_out; the store
 * kernel, launched after it on the same stream, writes residual_out = round(x + residual).
 */
#include <climits>

#include "cuda/common.cuh"
#include "cuda/fused_rms_norm_qkv/paths.h"

namespace {

constexpr int kTileM = 64;  /* output rows per block */
constexpr int kTileN = 64;  /* output columns per block */
constexpr int kTileK = 32;  /* hidden elements per shared-memory step; = warp size, see loads */
constexpr int kThreads = 256;
constexpr int kThreadsN = 16; /* threads along N; kThreads / kThreadsN = 16 along M */
constexpr int kThreadsM = kThreads / kThreadsN;
constexpr int kOutPerThreadM = kTileM / kThreadsM; /* 4 */
constexpr int kOutPerThreadN = kTileN / kThreadsN; /* 4 */
constexpr int kWarps = kThreads / 32;
constexpr int kInputRowsPerWarp = kTileM / kWarps; /* 8: warp w loads tile rows w, w+8, ... */
/* Shared tiles are stored k-major ([k][m], [k][n]) so the inner product loop reads consecutive m/n.
   The +1 pad makes the transposing stores (lanes along k, fixed m or n) hit 32 distinct banks. */
constexpr int kPad = 1;

static_assert(kTileK == 32, "input tile loads map one lane to one k and reduce sum_sq per warp");
static_assert(kTileM % kWarps == 0 && kTileN % kWarps == 0, "whole tile rows per warp");
static_assert(kThreads % kTileN == 0 && kTileK % (kThreads / kTileN) == 0, "n-contiguous W loads");

/* Grid-stride limits: grid.x (row tiles) may be up to 2^31-1, grid.y (column tiles) up to 65535. */
constexpr int64_t kMaxGridX = INT_MAX;
constexpr int64_t kMaxGridY = 65535;

/* kWeightKContiguous: W is [N, H] with w_stride_k == 1 (nn.Linear); otherwise w_stride_n == 1
   ([H, N], the .t() view). Only the thread -> element mapping of the W tile load differs, chosen so
   that consecutive lanes read consecutive addresses in both layouts; the address itself always uses
   both strides, so either instantiation is correct for any layout (merely uncoalesced). */
template <typename T, bool kHasResidual, bool kWeightKContiguous>
__global__ void __launch_bounds__(kThreads) fused_rms_norm_qkv_kernel(mv_qkv_args args) {
    __shared__ float input_tile[kTileK][kTileM + kPad];          /* s[m, k] */
    __shared__ float scaled_weight_tile[kTileK][kTileN + kPad];  /* gamma[k] * W[n, k] */
    __shared__ float row_rrms[kTileM];

    const mv_norm_input &in = args.in;
    const int64_t rows = in.rows;
    const int64_t hidden = in.hidden;
    const int64_t cols = args.q_cols + 2 * args.kv_cols;
    const T *x = static_cast<const T *>(in.x);
    const T *residual = static_cast<const T *>(in.residual);
    const T *gamma = static_cast<const T *>(in.norm_weight);
    const T *w = static_cast<const T *>(args.w);

    const int tid = threadIdx.x;
    const int lane = tid % 32;
    const int warp = tid / 32;
    const int thread_n = tid % kThreadsN; /* outputs at columns thread_n + 16 * j */
    const int thread_m = tid / kThreadsN; /* outputs at rows thread_m + 16 * i */

    const int64_t row_tiles = (rows + kTileM - 1) / kTileM;
    const int64_t col_tiles = (cols + kTileN - 1) / kTileN;

    for (int64_t row_tile = blockIdx.x; row_tile < row_tiles; row_tile += gridDim.x) {
        for (int64_t col_tile = blockIdx.y; col_tile < col_tiles; col_tile += gridDim.y) {
            const int64_t row0 = row_tile * kTileM;
            const int64_t col0 = col_tile * kTileN;

            float acc[kOutPerThreadM][kOutPerThreadN] = {};
            /* Partial sums of s^2 for the tile rows this thread loads (warp + 8 * i), over its k
               lane; reduced across the warp after the K loop. */
            float sum_sq[kInputRowsPerWarp] = {};

            for (int64_t k0 = 0; k0 < hidden; k0 += kTileK) {
                /* s tile: lane = k, so a warp reads 32 consecutive elements of one row. Elements
                   past M or H load as 0, contributing nothing to the products or to sum_sq. */
                const int64_t load_k = k0 + lane;
#pragma unroll
                for (int i = 0; i < kInputRowsPerWarp; ++i) {
                    const int tile_row = warp + kWarps * i;
                    const int64_t m = row0 + tile_row;
                    float s = 0.0f;
                    if (m < rows && load_k < hidden) {
                        s = mv_load_float(x + m * in.x_stride + load_k);
                        if (kHasResidual)
                            s = mv_round_to<T>(s + mv_load_float(residual + m * in.residual_stride + load_k));
                    }
                    sum_sq[i] += s * s;
                    input_tile[lane][tile_row] = s;
                }

                if (kWeightKContiguous) {
                    /* lane = k: a warp reads 32 consecutive k of one W row. */
                    const float g = load_k < hidden ? mv_load_float(gamma + load_k) : 0.0f;
#pragma unroll
                    for (int i = 0; i < kTileN / kWarps; ++i) {
                        const int tile_col = warp + kWarps * i;
                        const int64_t n = col0 + tile_col;
                        float wv = 0.0f;
                        if (n < cols && load_k < hidden)
                            wv = g * mv_load_float(w + n * args.w_stride_n + load_k * args.w_stride_k);
                        scaled_weight_tile[lane][tile_col] = wv;
                    }
                } else {
                    /* 64 consecutive threads = 64 consecutive n of one k row of [H, N]. */
                    const int tile_col = tid % kTileN;
                    const int64_t n = col0 + tile_col;
#pragma unroll
                    for (int i = 0; i < kTileK / (kThreads / kTileN); ++i) {
                        const int tile_k = tid / kTileN + (kThreads / kTileN) * i;
                        const int64_t k = k0 + tile_k;
                        float wv = 0.0f;
                        if (n < cols && k < hidden)
                            wv = mv_load_float(gamma + k) * mv_load_float(w + n * args.w_stride_n + k * args.w_stride_k);
                        scaled_weight_tile[tile_k][tile_col] = wv;
                    }
                }
                __syncthreads(); /* tiles complete before anyone reads them */

#pragma unroll 8
                for (int kk = 0; kk < kTileK; ++kk) {
                    float a[kOutPerThreadM], b[kOutPerThreadN];
#pragma unroll
                    for (int i = 0; i < kOutPerThreadM; ++i) a[i] = input_tile[kk][thread_m + kThreadsM * i];
#pragma unroll
                    for (int j = 0; j < kOutPerThreadN; ++j) b[j] = scaled_weight_tile[kk][thread_n + kThreadsN * j];
#pragma unroll
                    for (int i = 0; i < kOutPerThreadM; ++i)
#pragma unroll
                        for (int j = 0; j < kOutPerThreadN; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
                }
                __syncthreads(); /* everyone done reading before the next step overwrites the tiles */
            }

            /* Each warp loaded all 32 k lanes of its rows, so a warp sum gives the full row sum. */
#pragma unroll
            for (int i = 0; i < kInputRowsPerWarp; ++i) {
                const float row_sum_sq = mv_warp_sum(sum_sq[i]);
                if (lane == 0)
                    row_rrms[warp + kWarps * i] = rsqrtf(row_sum_sq / static_cast<float>(hidden) + in.eps);
            }
            __syncthreads(); /* row_rrms complete */

#pragma unroll
            for (int i = 0; i < kOutPerThreadM; ++i) {
                const int tile_row = thread_m + kThreadsM * i;
                const int64_t m = row0 + tile_row;
                if (m >= rows) continue;
                const float rrms = row_rrms[tile_row];
#pragma unroll
                for (int j = 0; j < kOutPerThreadN; ++j) {
                    const int64_t n = col0 + thread_n + kThreadsN * j;
                    if (n >= cols) continue;
                    mv_store_float(mv_qkv_output<T>(args, m, n), acc[i][j] * rrms);
                }
            }
            __syncthreads(); /* row_rrms read by all before the next tile rewrites it */
        }
    }
}

/* residual_out = round(x + residual): the s the GEMM used, stored after the GEMM finished reading
   residual (see the file comment). One block per row, grid-stride over rows; each element is read
   and written by one thread, so residual_out may be residual. */
template <typename T>
__global__ void residual_add_store_kernel(mv_norm_input in) {
    const T *x = static_cast<const T *>(in.x);
    const T *residual = static_cast<const T *>(in.residual);
    T *residual_out = static_cast<T *>(in.residual_out);
    for (int64_t row = blockIdx.x; row < in.rows; row += gridDim.x) {
        const T *x_row = x + row * in.x_stride;
        const T *residual_row = residual + row * in.residual_stride;
        T *residual_out_row = residual_out + row * in.residual_out_stride;
        for (int64_t i = threadIdx.x; i < in.hidden; i += blockDim.x)
            mv_store_float(residual_out_row + i, mv_load_float(x_row + i) + mv_load_float(residual_row + i));
    }
}

constexpr int64_t kMaxResidualRowBlocks = 65536;
constexpr int kResidualMaxThreads = 256;

/* No PDL for the generic kernel and the store: neither waits on the previous grid before reading. */
template <typename T, bool kHasResidual>
cudaError_t launch_fused_rms_norm_qkv(const mv_qkv_args &a, dim3 grid, cudaStream_t stream) {
    return mv_launch(a.w_stride_k == 1 ? fused_rms_norm_qkv_kernel<T, kHasResidual, true>
                                       : fused_rms_norm_qkv_kernel<T, kHasResidual, false>,
                     grid, dim3(kThreads), 0, stream, false, a);
}

int launch_generic(const mv_qkv_args *a, cudaStream_t stream) {
    const int64_t rows = a->in.rows;
    const int64_t cols = a->q_cols + 2 * a->kv_cols;
    const int64_t row_tiles = (rows + kTileM - 1) / kTileM;
    const int64_t col_tiles = (cols + kTileN - 1) / kTileN;
    /* Rows on grid.x (limit 2^31-1) so that M up to 2^31-1 needs no looping at all. */
    const dim3 grid(static_cast<unsigned>(row_tiles < kMaxGridX ? row_tiles : kMaxGridX),
                    static_cast<unsigned>(col_tiles < kMaxGridY ? col_tiles : kMaxGridY));
    MV_DISPATCH_DTYPE(a->in.dtype, T, {
        return (int)(a->in.residual != nullptr ? launch_fused_rms_norm_qkv<T, true>(*a, grid, stream)
                                               : launch_fused_rms_norm_qkv<T, false>(*a, grid, stream));
    })
    return (int)cudaErrorInvalidValue;
}

int launch_residual_store(const mv_qkv_args *a, cudaStream_t stream) {
    const int64_t rows = a->in.rows;
    const int64_t hidden_warps_rounded = (a->in.hidden + 31) / 32 * 32;
    const int residual_threads =
        static_cast<int>(hidden_warps_rounded < kResidualMaxThreads ? hidden_warps_rounded : kResidualMaxThreads);
    const unsigned residual_blocks = static_cast<unsigned>(rows < kMaxResidualRowBlocks ? rows : kMaxResidualRowBlocks);
    MV_DISPATCH_DTYPE(a->in.dtype, T, {
        return (int)mv_launch(residual_add_store_kernel<T>, dim3(residual_blocks),
                              dim3(static_cast<unsigned>(residual_threads)), 0, stream, false, a->in);
    })
    return (int)cudaErrorInvalidValue;
}

} // namespace

bool mv_qkv_generic_plan(const mv_qkv_args &, const mv_cuda_device &, mv_qkv_plan *plan) {
    plan->writes_residual = false; /* the store kernel follows (see the file comment) */
    return true;
}

cudaError_t mv_qkv_generic_launch(const mv_qkv_args &a, const mv_qkv_plan &, const mv_cuda_device &,
                                  cudaStream_t stream) {
    return static_cast<cudaError_t>(launch_generic(&a, stream));
}

cudaError_t mv_qkv_residual_store(const mv_qkv_args &a, cudaStream_t stream) {
    return static_cast<cudaError_t>(launch_residual_store(&a, stream));
}
