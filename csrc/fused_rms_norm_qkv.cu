/*
 * fused_rms_norm_qkv.cu: qkv = rms_norm(x (+ residual)) . W^T on the GPU, split into q, k, v:
 * the dispatcher (mv_fused_rms_norm_qkv_cuda, at the bottom) and the generic kernel.
 *
 * Paths, chosen by M, dtype, layout and what is loadable (fused_rms_norm_qkv_paths.h):
 * - skinny M, fp16/bf16: fused_rms_norm_qkv_stream.cu, a W stream on tensor cores (tensor copies
 *   into shared memory on sm_90+, register loads elsewhere; on sm_90 in fp16/bf16 up to M = 32
 *   the deferred-norm kernel, which streams the input beside W);
 * - everything else: fused_rms_norm_qkv_gemm.cu, the rms_norm kernel into scratch then cuBLASLt;
 * - no libcublasLt loadable: the generic kernel below, correct for any dtype, layout and size.
 *
 * Generic kernel, deferred-rstd identity: rms_norm(s) . W^T = diag(rrms) . (s . (gamma (.) W)^T),
 * since y[m,k] = gamma[k] * s[m,k] * rrms[m] and rrms[m] does not depend on k. So one tiled GEMM
 * of s against gamma-scaled W tiles produces the row sums of s^2 as a by-product of loading s, and
 * the epilogue scales each output row by rrms. There is no separate norm pass and no scratch
 * buffer. (y is therefore not rounded to the dtype before the product, unlike an unfused norm +
 * matmul and unlike the two fast paths; the difference is within the dtype's rounding.)
 *
 * Each 256-thread block owns a 64 x 64 output tile (4 x 4 outputs per thread) and walks K in steps
 * of 32 through shared memory, accumulating in float.
 *
 * residual_out: every column tile of a row block needs s = x + residual, so every block reads
 * residual. If the GEMM wrote residual_out and residual_out were residual (in-place form), a block
 * scheduled later would read the updated value and compute x + (x + r). So the GEMM never writes
 * residual_out; a small elementwise kernel, launched after it on the same stream (stream order
 * means it starts only after every GEMM block has finished reading), writes
 * residual_out = round(x + residual), the same s the GEMM used.
 */
#include <climits>
#include <cstdlib>
#include <cstring>

#include "cuda_common.cuh"
#include "fused_rms_norm_qkv_paths.h"

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

/* The W stream takes M <= 16 when the staged input is at most 24576 elements (48 KiB); beyond,
   norm + cuBLASLt is faster. H200, bf16, graph-timed, stream vs norm + cuBLASLt in us: Llama-3-8B
   (H 4096) M = 4 17.6 vs 19.5, M = 8 19.9 vs 18.9; Qwen3-4B (H 2560) M = 8 13.2 vs 13.8, M = 16
   16.4 vs 13.9; Qwen3-0.6B (H 1024) M = 16 7.8 vs 7.8; Qwen2.5-0.5B (H 896) M = 16 5.8 vs 7.0. */
constexpr int64_t kStreamMaxRows = 16;
constexpr int64_t kStreamMaxStagedElements = 24576;
/* Where the one-kernel wgmma path (sm_90, bf16) beat norm + cuBLASLt on an H200 (bf16, graph-timed,
   us, wgmma vs norm + cuBLASLt; benchmarks/results/qkv-wgmma-nvidia-h200-2026-11-22.log):
   - its 64-row kernel: Qwen2.5-0.5B (H 896, N 1152) M = 32 5.47 vs 7.00, 64 5.27 vs 7.00, 128
     5.60 vs 7.11, 256 7.03 vs 7.55; Qwen3-0.6B (H 1024, N 4096) M = 32 7.40 vs 7.70, 64 7.35 vs
     7.81, but 128 9.58 vs 8.05;
   - its 128-row kernel (M >= 512) is not taken: it won only where its tiles fill whole waves of
     multiprocessors (Qwen3-0.6B M = 1024 16.56 vs 17.89, 2048 29.62 vs 30.26) and loses just
     past them (M = 1029: 26.1 us, a second, nearly empty wave), at 512 (13.37 vs 11.96) and 4096
     (56.76 vs 55.82); Qwen2.5-0.5B loses at every M (M = 1024 11.17 vs 9.28;
     benchmarks/results/qkv-prefill-nvidia-h200-2026-11-22.log);
   - Llama-3-8B and Qwen3-4B (H 4096, 2560) lose at every M (M = 32: 23.1 vs 18.9, 15.8 vs 14.1;
     M = 4096: 309 vs 279, 195 vs 178): each tile walks all of H in 64-k stages, and the 128-row
     kernel's main loop runs at ~670 TFLOP/s where cuBLAS reaches ~770. */
/* Where the deferred-norm W stream (sm_90, fp16/bf16, no residual, M <= 32) beat the paths below on
   an H200 (bf16, graph-timed, us, deferred vs automatic before it; run D5 of
   benchmarks/results/qkv-deferred-nvidia-h200-2026-11-22.log): Llama-3-8B M = 2 16.15 vs 16.48, 4 16.33 vs 17.38, 8 16.42 vs 18.85, 16 17.29 vs
   19.10; Qwen3-4B M = 4 11.66 vs 12.22, 16 12.40 vs 14.03; Qwen3-0.6B M = 4 4.34 vs 4.83, 16 5.04
   vs 6.30, 32 6.73 vs 7.44; Qwen2.5-0.5B M = 16 4.05 vs 4.48, 24 5.04 vs 5.38. It lost where the
   other W streams are at their best: M = 1 (Qwen3-4B 11.61 vs 10.68), and few rows of a small W
   (Qwen2.5-0.5B, N = 1152: M = 4 3.41 vs 3.20, M = 8 3.45 vs 3.32). The same rule holds for fp16,
   which the kernel took later (H200, fp16, deferred vs the stream path, or norm + cuBLASLt at
   M = 32: Llama-3-8B M = 8 15.70 vs 18.80, 16 16.40 vs 23.31; Qwen3-4B M = 16 11.84 vs 16.17;
   Qwen3-0.6B M = 4 4.14 vs 4.69, 16 4.84 vs 6.04, 32 6.53 vs 7.83; Qwen2.5-0.5B M = 16 3.93 vs
   4.40, 32 5.17 vs 6.91; benchmarks/results/qkv-decode-timeline-nvidia-h200-2026-11-22.log).
   Below 4 rows it wins at M = 3 for a large W, and at M = 2 where H >= 4096 too (the other W
   streams stage the rows before their first product; this one streams them beside W) (H200,
   graph-timed, two passes each, deferred vs the path M = 2, 3 took before, bf16 / fp16: Llama-3-8B
   M = 2 15.71-15.75 vs 15.95-16.02 / 15.63-15.65 vs 16.13-16.19, M = 3 15.82-15.85 vs 16.47-16.48 /
   15.72-15.76 vs 16.57-16.62; Qwen3-4B M = 3 11.40-11.41 vs 11.50-11.51 / 11.33-11.36 vs 11.58,
   but M = 2 11.33-11.39 vs 11.14-11.16 / 11.27-11.31 vs 11.17-11.22; Qwen3-0.6B M = 3 4.15 vs
   4.54-4.55 / 4.10-4.11 vs 4.56, M = 2 even; Qwen2.5-0.5B, N = 1152, M = 3 3.39 vs 3.11-3.12;
   benchmarks/results/qkv-small-batch-nvidia-h200-2026-11-22.log).
   On an H100 (3.35 TB/s of DRAM against the H200's 4.8) it wins at M = 2 and, for H <= 1024 (where
   the register stream would run), at M = 1 too; the tensor-copy stream still wins at M = 1 for
   larger H (H100, graph-timed, two passes each, bf16 / fp16, deferred vs the other W stream:
   Qwen3-0.6B M = 1 4.20 vs 4.53-4.55 / 4.14 vs 4.53-4.55, M = 2 4.19-4.22 vs 4.70-4.73 / 4.13 vs
   4.71-4.73; Qwen3-4B M = 2 13.33-13.38 vs 13.56-13.58 / 13.30 vs 13.63-13.65, but M = 1 13.30 vs
   12.69-12.73 / 13.28 vs 12.77-12.79; Llama-3-8B M = 1 even, 19.26-19.33 vs 19.19-19.30;
   benchmarks/results/qkv-small-batch-nvidia-h100-2026-11-22.log). Two GPUs measured, so the
   line between them, 4 TB/s, is where they part, not a measured threshold. */
constexpr int kSlowDramGbps = 4000;
bool deferred_wins(int64_t rows, int64_t hidden, int64_t cols, int dram_gbps) {
    if (rows >= 16) return true;
    if (cols < 2048) return false;
    if (rows >= 3) return true;
    if (dram_gbps > 0 && dram_gbps < kSlowDramGbps) return rows == 2 || hidden <= 1024;
    return rows == 2 && hidden >= 4096;
}
bool wgmma_wins(int64_t rows, int64_t hidden, int64_t cols) {
    if (hidden > 1024) return false;
    return rows <= 64 || (cols <= 2048 && rows <= 256);
}
constexpr int kResidualMaxThreads = 256;

template <typename T, bool kHasResidual>
void launch_fused_rms_norm_qkv(const mv_qkv_args &a, dim3 grid, cudaStream_t stream) {
    if (a.w_stride_k == 1)
        fused_rms_norm_qkv_kernel<T, kHasResidual, true><<<grid, kThreads, 0, stream>>>(a);
    else
        fused_rms_norm_qkv_kernel<T, kHasResidual, false><<<grid, kThreads, 0, stream>>>(a);
}

/* The generic path: the tiled FMA kernel above, any dtype, layout, alignment and size. */
int launch_generic(const mv_qkv_args *a, cudaStream_t cuda_stream) {
    const int64_t rows = a->in.rows;
    const int64_t cols = a->q_cols + 2 * a->kv_cols;
    const int64_t row_tiles = (rows + kTileM - 1) / kTileM;
    const int64_t col_tiles = (cols + kTileN - 1) / kTileN;
    /* Rows on grid.x (limit 2^31-1) so that M up to 2^31-1 needs no looping at all. */
    const dim3 grid(static_cast<unsigned>(row_tiles < kMaxGridX ? row_tiles : kMaxGridX),
                    static_cast<unsigned>(col_tiles < kMaxGridY ? col_tiles : kMaxGridY));
    MV_DISPATCH_DTYPE(a->in.dtype, T, {
        if (a->in.residual != nullptr)
            launch_fused_rms_norm_qkv<T, true>(*a, grid, cuda_stream);
        else
            launch_fused_rms_norm_qkv<T, false>(*a, grid, cuda_stream);
    })
    return (int)cudaGetLastError();
}

/* residual_out = round(x + residual) after the GEMM (see the file comment). */
int launch_residual_store(const mv_qkv_args *a, cudaStream_t cuda_stream) {
    const int64_t rows = a->in.rows;
    const int64_t hidden_warps_rounded = (a->in.hidden + 31) / 32 * 32;
    const int residual_threads =
        static_cast<int>(hidden_warps_rounded < kResidualMaxThreads ? hidden_warps_rounded : kResidualMaxThreads);
    const unsigned residual_blocks = static_cast<unsigned>(rows < kMaxResidualRowBlocks ? rows : kMaxResidualRowBlocks);
    MV_DISPATCH_DTYPE(a->in.dtype, T, {
        residual_add_store_kernel<T><<<residual_blocks, residual_threads, 0, cuda_stream>>>(a->in);
    })
    return (int)cudaGetLastError();
}

} // namespace

namespace {
thread_local const char *last_gpu_path = "none";
}

extern "C" const char *mv_qkv_last_gpu_path(void) { return last_gpu_path; }

mv_qkv_path mv_qkv_forced_path() {
    static const mv_qkv_path path = [] {
        const char *v = getenv("MINIVLLM_QKV_PATH");
        if (v == nullptr) return mv_qkv_path::automatic;
        if (strcmp(v, "stream") == 0) return mv_qkv_path::stream;
        if (strcmp(v, "register") == 0) return mv_qkv_path::register_stream;
        if (strcmp(v, "bulk") == 0) return mv_qkv_path::bulk_stream;
        if (strcmp(v, "deferred") == 0) return mv_qkv_path::deferred;
        if (strcmp(v, "wgmma") == 0) return mv_qkv_path::wgmma;
        if (strcmp(v, "tile") == 0) return mv_qkv_path::tile;
        if (strcmp(v, "gemm") == 0) return mv_qkv_path::gemm;
        if (strcmp(v, "generic") == 0) return mv_qkv_path::generic;
        return mv_qkv_path::automatic;
    }();
    return path;
}

/* The dispatcher. One rule per path, in order:
   - few rows on sm_90 in fp16/bf16 without a residual (3 <= M <= 32 where N >= 2048, 2 <= M where H
     is 4096 or more too, or on a GPU with less DRAM bandwidth, M = 1 where H <= 1024 and M = 2 as
     well; 16 <= M <= 32 for a small W: deferred_wins): the W stream with the input streamed beside
     it and the norm deferred;
   - skinny M (decode, small batches; fp16/bf16, M <= kStreamMaxRows and M * H <=
     kStreamMaxStagedElements, nn.Linear layout, H % 8 == 0): the W stream on tensor cores;
   - then, on sm_90 in bf16 where wgmma_wins (small H, M up to 64 or 256): the one-kernel norm +
     GEMM on wgmma;
   - otherwise the rms_norm kernel + a GEMM: cuBLASLt where libcublasLt loads, else (fp16/bf16,
     sm_80+, nn.Linear layout, H % 8 == 0) our own tensor-core GEMM, slower than cuBLASLt but far
     faster than
   - the generic tiled kernel, which takes everything else.
   When the chosen kernel cannot write residual_out itself, the store kernel follows it. */
extern "C" int mv_fused_rms_norm_qkv_cuda(const mv_qkv_args *a, void *stream) {
    if (a->in.rows == 0) return (int)cudaSuccess;
    cudaStream_t cuda_stream = static_cast<cudaStream_t>(stream);
    const bool has_residual = a->in.residual != nullptr;
    const bool residual_in_place = has_residual && a->in.residual_out == a->in.residual;

    mv_cuda_device dev;
    cudaError_t err = mv_current_device(&dev);
    if (err != cudaSuccess) return (int)err;

    const mv_qkv_path forced = mv_qkv_forced_path();
    const bool stream_forced = forced == mv_qkv_path::stream || forced == mv_qkv_path::register_stream ||
                               forced == mv_qkv_path::bulk_stream;
    const bool stream_fits = a->in.rows <= kStreamMaxRows && a->in.rows * a->in.hidden <= kStreamMaxStagedElements;
    bool residual_written = false;
    bool launched = false;
    if ((forced == mv_qkv_path::deferred ||
         (forced == mv_qkv_path::automatic &&
          deferred_wins(a->in.rows, a->in.hidden, a->q_cols + 2 * a->kv_cols, dev.dram_gbps))) &&
        mv_qkv_deferred_supported(a, &dev)) {
        err = (cudaError_t)mv_qkv_deferred_cuda(a, stream, &dev);
        launched = err != cudaErrorNotSupported; /* N too large for its tiles, or a refused map: go on */
        if (launched) last_gpu_path = "deferred";
    }
    if (!launched) {
        if ((stream_forced || (forced == mv_qkv_path::automatic && stream_fits)) && mv_qkv_stream_supported(a, &dev)) {
            last_gpu_path = "stream";
            err = (cudaError_t)mv_qkv_stream_cuda(a, stream, has_residual && !residual_in_place, &dev);
            residual_written = has_residual && !residual_in_place;
        } else if ((forced == mv_qkv_path::wgmma || (forced == mv_qkv_path::automatic &&
                                                   wgmma_wins(a->in.rows, a->in.hidden, a->q_cols + 2 * a->kv_cols))) &&
                   mv_qkv_wgmma_supported(a, &dev)) {
            last_gpu_path = "wgmma";
            err = (cudaError_t)mv_qkv_wgmma_cuda(a, stream, &dev);
        } else if (forced != mv_qkv_path::generic && (mv_qkv_gemm_available() || mv_qkv_tile_supported(a, &dev))) {
            const bool own_gemm = (forced == mv_qkv_path::tile || !mv_qkv_gemm_available()) && mv_qkv_tile_supported(a, &dev);
            last_gpu_path = own_gemm ? "tile" : "gemm";
            err = (cudaError_t)mv_qkv_gemm_cuda(a, stream, &dev, own_gemm);
            residual_written = has_residual; /* the norm kernel writes it, in place or not */
        } else {
            last_gpu_path = "generic";
            err = (cudaError_t)launch_generic(a, cuda_stream);
        }
    }
    if (err != cudaSuccess) return (int)err;
    if (has_residual && !residual_written) return launch_residual_store(a, cuda_stream);
    return (int)cudaSuccess;
}
