/*
 * fused_rms_norm_qkv_stream.cu: the skinny-M path of qkv = rms_norm(x (+ residual)) . W^T
 * (decode and small batches, M <= 16 in fp16/bf16, M <= 32 on the deferred-norm kernel). At such
 * M the op is a stream over W: every weight
 * byte is read once and used M times, so the kernel is built to keep DRAM busy, not the ALUs.
 *
 * Three kernels share the mma operand layout and the reduction below (the first two also the
 * staging):
 * - the register kernel described next, W loaded straight into mma operand registers. On sm_90+
 *   (with PDL) it is taken where it requests ALL of W before waiting for the previous kernel: a
 *   block per 16-feature tile, all resident at once, and one batch of loads covering H (H <= 1024:
 *   Qwen3-0.6B, Qwen2.5-0.5B). Its latency is then x -> norm -> mma -> store alone, shorter than
 *   the tensor-copy kernel's producer/consumer chain (H200, bf16, graph-timed, register against
 *   tensor-copy kernel, us: Qwen2.5-0.5B M = 1 2.66 / 3.18, M = 8 3.32 / 3.84, M = 16 4.61 /
 *   5.35; Qwen3-0.6B M = 2 4.18 / 5.18, M = 8 4.82 / 5.49, M = 16 6.19 / 7.35; see
 *   benchmarks/results/qkv-decode-nvidia-h200-2026-11-22.log). Also every GPU before sm_90, and
 *   MINIVLLM_QKV_PATH=register;
 * - otherwise on sm_90 and later, H % 64 == 0: the tensor-copy kernel (the section "Hopper"
 *   further down), W streamed into a shared-memory ring by cp.async.bulk.tensor, each block an
 *   equal share of the output features, launched with programmatic dependent launch; it keeps
 *   more bytes in flight per SM, which larger W needs (Llama-3-8B M = 1: 15.5 us against 16.8 on
 *   the register kernel; Qwen3-4B M = 16: 13.5 against 17.8). MINIVLLM_QKV_PATH=bulk forces it;
 * - on sm_90 in fp16/bf16 without a residual, where the dispatcher's deferred_wins says so (3 <= M <= 32
 *   mostly): the deferred-norm kernel (its own section, after the tensor-copy kernel), which
 *   streams x beside W instead of staging it and applies rrms in the epilogue.
 *   MINIVLLM_QKV_PATH=deferred forces it. The notes below are the first two kernels'.
 *
 * - Each block first stages the whole (tiny) normalized input y = gamma * (s * rrms) in shared
 *   memory, rounded to the dtype: tensor cores take 16-bit operands, and this is exactly the y an
 *   unfused rms_norm would produce. Below 8 rows several warps share a row (one round trip for a
 *   decode token's x instead of H / 256). (Staging s * gamma and deferring rrms to the epilogue would
 *   save a pass over shared memory but can overflow fp16 where y itself cannot.)
 * - Output features are cut into tiles of 16 (one mma.m16n8k16 "A" operand); blocks loop over
 *   tiles (persistent: the grid is what fits on the GPU at once, so x is staged once per block).
 *   Within a tile the 8 warps split K; each warp accumulates a 16 x (8 * kTokenTiles) partial
 *   product in registers and the block sums the 8 partials through shared memory.
 * - The products run on tensor cores with W as the A operand straight from registers: a lane
 *   loads 8 consecutive k of two W rows with one 16-byte load each, instead of the 2-element
 *   pieces the A fragment layout names. That is a permutation of k inside each 32-wide chunk;
 *   reading the x operand from shared memory with the same permutation leaves every dot product
 *   unchanged (a sum does not care about the order of its terms). Mapping, for lane (g, t) =
 *   (lane / 4, lane % 4) and mma step s in {0, 1} of a chunk: fragment k {2t, 2t+1} -> chunk k
 *   8t + 4s + {0, 1}; fragment k {2t+8, 2t+9} -> chunk k 8t + 4s + {2, 3}.
 * - W loads for the next batch are issued before the mma work of the current one (double buffered
 *   in registers), and the first batch is in flight before the input is staged.
 *   (Measured on an H200 and slower, so not used: spreading the staging over all threads with
 *   shared-memory atomics for the row sums, and a 4-stage cp.async ring in shared memory.)
 * - Where several warps share a row (M < 8), each lane loads one vector of x at a time; with a
 *   warp per row, four (two with a residual) before using any: Qwen3-0.6B M = 16 7.21 -> 6.22 us
 *   with four, while four where warps share a row cost Qwen2.5-0.5B M = 1 2.73 -> 2.96 us (the
 *   same log, development runs A-C).
 * - Launched with PDL where the GPU has it: the first batch of W is requested before the wait for
 *   the previous kernel (the weights are constants of the model, as the tensor-copy kernel also
 *   assumes), and the input is asked of L2 (prefetch_input_l2); x, residual and every write
 *   come after it.
 *
 * Residual: with a residual, s = x + residual is rounded to the dtype (the model's new residual).
 * Every block stages all of s, so unless residual_out is residual itself (in-place form) the blocks
 * share the residual_out writes (each 8-element piece written by exactly one block). In the
 * in-place form no block may write before all have read, so the caller launches the separate
 * store kernel afterwards (stream order) instead.
 */
#include <cstdint>
#include <cstdlib> /* getenv, atoi: the deferred kernel's measurement knobs */

#include <cuda.h> /* CUtensorMap and its enums (types only: the encoder is found at run time) */

#include "cuda_common.cuh"
#include "fused_rms_norm_qkv_paths.h"
#include "hopper.cuh"

namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kTileFeatures = 16; /* mma M */
constexpr int kChunkK = 32;       /* k per warp per chunk: 4 lanes x 8 consecutive k */
constexpr int kBatch = 4;         /* chunks whose W loads are issued together */
constexpr int kVec = 8;           /* 16-byte vectors of 16-bit elements */
constexpr int kMaxTokens = 16; /* the dispatcher sends larger M to norm + cuBLASLt */

/* A streamed weight load: read-only for the kernel's lifetime and used once, so it bypasses L1. */
__device__ __forceinline__ uint4 load_weight_vec(const void *p) {
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
}

/* 8 consecutive elements as floats: one 16-byte load where the caller proved alignment. */
template <typename T>
__device__ __forceinline__ void load8(const T *p, bool vector_ok, float out[kVec]) {
    if (vector_ok) {
        const uint4 raw = *reinterpret_cast<const uint4 *>(p);
        const T *e = reinterpret_cast<const T *>(&raw);
#pragma unroll
        for (int i = 0; i < kVec; ++i) out[i] = mv_to_float(e[i]);
    } else {
#pragma unroll
        for (int i = 0; i < kVec; ++i) out[i] = mv_load_float(p + i);
    }
}

template <typename T>
__device__ __forceinline__ void store8(T *p, bool vector_ok, const float v[kVec]) {
    if (vector_ok) {
        uint4 raw;
        T *e = reinterpret_cast<T *>(&raw);
#pragma unroll
        for (int i = 0; i < kVec; ++i) e[i] = mv_from_float<T>(v[i]);
        *reinterpret_cast<uint4 *>(p) = raw;
    } else {
#pragma unroll
        for (int i = 0; i < kVec; ++i) mv_store_float(p + i, v[i]);
    }
}

__device__ __forceinline__ uint32_t word(const uint4 &v, int i) {
    return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

/* Alignment facts the launcher proved, and who writes residual_out. */
struct mv_stream_flags {
    bool x_vec, residual_vec, residual_out_vec, gamma_vec; /* 16-byte vector access is safe */
    bool residual_in_kernel;                               /* blocks share the residual_out writes */
};

/* Which 16-byte vectors a lane loads: chunk c of warp w in batch b is w + kWarps * (batch * kBatch + b). */
struct StreamGeometry {
    int64_t cols;      /* N */
    int64_t tiles;     /* ceil(N / 16) */
    int chunks;          /* ceil(H / 32) */
    int batches;         /* per tile, the same for every warp */
    int xs_stride;     /* elements between staged rows in shared memory */
};

/* W loads of one batch: lane (g, t) of warp w loads rows 16 * tile + g and + 8 at k = 32 * chunk + 8 * t,
   chunk = w + kWarps * (batch * kBatch + b): the 8 warps together read 8 consecutive chunks (512
   contiguous bytes of each row) per b. Loads past N or H read nothing and give zeros. */
template <typename T>
__device__ __forceinline__ void load_weight_batch(const mv_qkv_args &args, const StreamGeometry &geo, int64_t tile,
                                                  int batch, uint4 wa[kBatch], uint4 wb[kBatch]) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int64_t row_a = tile * kTileFeatures + g, row_b = row_a + 8;
    const T *w = static_cast<const T *>(args.w);
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
        const int chunk = warp + kWarps * (batch * kBatch + b);
        const int64_t k = static_cast<int64_t>(chunk) * kChunkK + kVec * t;
        const bool k_ok = chunk < geo.chunks && k < args.in.hidden;
        wa[b] = (k_ok && row_a < geo.cols) ? load_weight_vec(w + row_a * args.w_stride_n + k) : make_uint4(0, 0, 0, 0);
        wb[b] = (k_ok && row_b < geo.cols) ? load_weight_vec(w + row_b * args.w_stride_n + k) : make_uint4(0, 0, 0, 0);
    }
}

/* Pass 1 of staging one row: s (x, plus residual rounded to the dtype) into the staged row, and
   this lane's share of sum(s^2) returned. Lanes lane_id, lane_id + step, ... of the row's vectors;
   kStageUnroll loads are issued before any is used, so a lane waits for memory once per
   kStageUnroll vectors instead of once per vector (how many each caller takes: see
   stage_normalized_input's callers). */
template <typename T, bool kHasResidual, int kStageUnroll>
__device__ __forceinline__ float stage_row_sum(const mv_qkv_args &args, const mv_stream_flags &flags, T *staged, int m,
                                               int lane_id, int step) {
    const mv_norm_input &in = args.in;
    const int vecs = static_cast<int>(in.hidden) / kVec;
    const T *x = static_cast<const T *>(in.x) + m * in.x_stride;
    const T *residual = static_cast<const T *>(in.residual) + m * in.residual_stride;
    T *residual_out = static_cast<T *>(in.residual_out) + m * in.residual_out_stride;
    float sum_sq = 0.0f;
    for (int v0 = lane_id; v0 < vecs; v0 += kStageUnroll * step) {
        float s[kStageUnroll][kVec], r[kStageUnroll][kVec];
#pragma unroll
        for (int u = 0; u < kStageUnroll; ++u) {
            const int v = v0 + u * step;
            if (v < vecs) {
                load8(x + v * kVec, flags.x_vec, s[u]);
                if (kHasResidual) load8(residual + v * kVec, flags.residual_vec, r[u]);
            }
        }
#pragma unroll
        for (int u = 0; u < kStageUnroll; ++u) {
            const int v = v0 + u * step;
            if (v >= vecs) break;
            if (kHasResidual) {
#pragma unroll
                for (int i = 0; i < kVec; ++i) s[u][i] = mv_round_to<T>(s[u][i] + r[u][i]);
                if (flags.residual_in_kernel && (static_cast<int64_t>(m) * vecs + v) % gridDim.x == blockIdx.x)
                    store8(residual_out + v * kVec, flags.residual_out_vec, s[u]);
            }
#pragma unroll
            for (int i = 0; i < kVec; ++i) sum_sq += s[u][i] * s[u][i];
            store8(staged + v * kVec, true, s[u]); /* exact: s is a T value */
        }
    }
    return sum_sq;
}

/* Pass 2: the staged row becomes y = gamma * (s * rrms), rounded to the dtype; the same lanes and
   vectors as pass 1, so each lane rescales only what it stored itself. */
template <typename T, int kStageUnroll>
__device__ __forceinline__ void stage_row_scale(const mv_qkv_args &args, const mv_stream_flags &flags, T *staged,
                                                float rrms, int lane_id, int step) {
    const int vecs = static_cast<int>(args.in.hidden) / kVec;
    const T *gamma = static_cast<const T *>(args.in.norm_weight);
    for (int v0 = lane_id; v0 < vecs; v0 += kStageUnroll * step) {
        float gm[kStageUnroll][kVec];
#pragma unroll
        for (int u = 0; u < kStageUnroll; ++u)
            if (v0 + u * step < vecs) load8(gamma + (v0 + u * step) * kVec, flags.gamma_vec, gm[u]);
#pragma unroll
        for (int u = 0; u < kStageUnroll; ++u) {
            const int v = v0 + u * step;
            if (v >= vecs) break;
            float s[kVec];
            load8(staged + v * kVec, true, s);
#pragma unroll
            for (int i = 0; i < kVec; ++i) s[i] = gm[u][i] * (s[i] * rrms);
            store8(staged + v * kVec, true, s);
        }
    }
}

/* Stage y = gamma * (s * rrms), rounded to the dtype, for every row into xs (row pitch xs_stride
   elements), by the kWarps warps (warp < kWarps) that call it, all of which must. With at least
   kWarps rows, a warp per row and no barrier. With fewer (decode), kWarps / M warps share each
   row, so a token's 8 KiB of x is fetched by the whole block at once rather than by one warp;
   their partial sums meet in row_part (kWarps floats of shared memory) across one sync(). */
template <typename T, bool kHasResidual, int kStageUnroll, int kSharedUnroll, typename Sync>
__device__ __forceinline__ void stage_normalized_input(const mv_qkv_args &args, const mv_stream_flags &flags, T *xs,
                                                       int xs_stride, float *row_part, int warp, int lane, Sync sync) {
    const int rows = static_cast<int>(args.in.rows);
    const float inv_hidden = 1.0f / static_cast<float>(args.in.hidden);
    const int warps_per_row = rows >= kWarps ? 1 : kWarps / rows;
    const int row_groups = kWarps / warps_per_row;
    const int first_row = warp / warps_per_row;
    const int lane_id = (warp % warps_per_row) * 32 + lane, step = warps_per_row * 32;
    if (warps_per_row == 1) {
        for (int m = first_row; m < rows; m += row_groups) {
            T *staged = xs + m * xs_stride;
            const float sum_sq = mv_warp_sum(stage_row_sum<T, kHasResidual, kStageUnroll>(args, flags, staged, m, lane_id, step));
            stage_row_scale<T, kStageUnroll>(args, flags, staged, rsqrtf(sum_sq * inv_hidden + args.in.eps), lane_id, step);
        }
        return;
    }
    /* here every warp has at most one row: first_row */
    const bool has_row = first_row < rows;
    T *staged = xs + first_row * xs_stride;
    if (has_row) {
        const float sum_sq = mv_warp_sum(stage_row_sum<T, kHasResidual, kSharedUnroll>(args, flags, staged, first_row, lane_id, step));
        if (lane == 0) row_part[warp] = sum_sq;
    }
    sync();
    if (has_row) {
        float sum_sq = 0.0f;
        for (int w = first_row * warps_per_row; w < (first_row + 1) * warps_per_row; ++w) sum_sq += row_part[w];
        stage_row_scale<T, kSharedUnroll>(args, flags, staged, rsqrtf(sum_sq * inv_hidden + args.in.eps), lane_id, step);
    }
}

/* Sum the kWarps warps' partial 16 x (8 * kTokenTiles) tiles and store the features
   [feature0, feature_end) of this tile into q, k, v. Accumulator r of lane (g, t), token tile tt,
   holds feature g + 8 * (r / 2) and token 8 * tt + 2 * t + r % 2. Called by the kWarps * 32
   consumer threads with their accumulators; sync() is a barrier over exactly those threads.
   token_scale (shared memory, one float per token, or nullptr): each token's sums are multiplied
   by it before rounding (the deferred-norm kernel's rrms). */
template <typename T, int kTokenTiles, typename Sync>
__device__ __forceinline__ void reduce_and_store(const mv_qkv_args &args, float acc[kTokenTiles][4], float *partial,
                                                 int64_t feature0, int64_t feature_end, Sync sync,
                                                 const float *token_scale = nullptr) {
    const int rows = static_cast<int>(args.in.rows);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    sync(); /* the previous tile's reads of partial are done */
#pragma unroll
    for (int tt = 0; tt < kTokenTiles; ++tt)
#pragma unroll
        for (int r = 0; r < 4; ++r) partial[((warp * kTokenTiles + tt) * 4 + r) * 32 + lane] = acc[tt][r];
    sync();
    for (int id = threadIdx.x; id < kTokenTiles * 4 * 32; id += kThreads) {
        const int out_lane = id & 31, r = (id >> 5) & 3, tt = id >> 7;
        const int token = tt * 8 + 2 * (out_lane & 3) + (r & 1);
        const int64_t n = feature0 + (out_lane >> 2) + 8 * (r >> 1);
        if (token >= rows || n >= feature_end) continue;
        float sum = 0.0f;
#pragma unroll
        for (int w = 0; w < kWarps; ++w) sum += partial[((w * kTokenTiles + tt) * 4 + r) * 32 + out_lane];
        if (token_scale != nullptr) sum *= token_scale[token];
        mv_store_float(mv_qkv_output<T>(args, token, n), sum);
    }
}

/* The two m16n8k16 steps of one 32-wide k chunk: wa/wb are this lane's 8 consecutive W elements of
   features g and g + 8 (the k-permuted A fragment, see the file comment), yv the matching 8 input
   elements of token g of the token tile. */
template <typename T>
__device__ __forceinline__ void mma_k32(float acc[4], const uint4 &wa, const uint4 &wb, const uint4 &yv) {
#pragma unroll
    for (int s = 0; s < 2; ++s)
        mv_mma_16x8x16<T>(acc, word(wa, 2 * s), word(wb, 2 * s), word(wa, 2 * s + 1), word(wb, 2 * s + 1),
                          word(yv, 2 * s), word(yv, 2 * s + 1));
}

/* One 32-wide k chunk of a 16-feature tile against every token tile: wa/wb are this lane's 8
   consecutive W elements of features g and g + 8 at chunk position k (the k-permuted A fragment,
   see the file comment), and the matching 8 y elements of token 8 * tt + g come from xs. A lane
   past H (k_ok false) or past M reads y as zeros. */
template <typename T, int kTokenTiles>
__device__ __forceinline__ void mma_chunk(float acc[kTokenTiles][4], const uint4 &wa, const uint4 &wb, const T *xs,
                                          int xs_stride, int k, bool k_ok, int rows, int g) {
#pragma unroll
    for (int tt = 0; tt < kTokenTiles; ++tt) {
        const int token = tt * 8 + g;
        uint4 yv = make_uint4(0, 0, 0, 0);
        if (k_ok && token < rows) yv = *reinterpret_cast<const uint4 *>(xs + token * xs_stride + k);
        mma_k32<T>(acc[tt], wa, wb, yv);
    }
}

/* Ask L2 for the norm's inputs (x and residual rows, gamma), the grid's threads sharing the
   128-byte lines between them. */
template <typename T>
__device__ __forceinline__ void prefetch_input_l2(const mv_norm_input &in) {
    const int index = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
    const int count = static_cast<int>(gridDim.x * blockDim.x);
    const int64_t row_bytes = in.hidden * static_cast<int64_t>(sizeof(T));
    mv_prefetch_rows_l2(in.x, in.rows, row_bytes, in.x_stride * static_cast<int64_t>(sizeof(T)), index, count);
    if (in.residual != nullptr)
        mv_prefetch_rows_l2(in.residual, in.rows, row_bytes, in.residual_stride * static_cast<int64_t>(sizeof(T)), index,
                            count);
    mv_prefetch_rows_l2(in.norm_weight, 1, row_bytes, 0, index, count);
}

struct BlockSync {
    __device__ void operator()() const { __syncthreads(); }
};

template <typename T, int kTokenTiles, bool kHasResidual>
__global__ void __launch_bounds__(kThreads) fused_rms_norm_qkv_stream_kernel(mv_qkv_args args, StreamGeometry geo,
                                                                           mv_stream_flags flags) {
    extern __shared__ uint4 smem[];
    const mv_norm_input &in = args.in;
    const int rows = static_cast<int>(in.rows);
    const int hidden = static_cast<int>(in.hidden);
    T *xs = reinterpret_cast<T *>(smem);                                   /* [rows][xs_stride] */
    float *partial = reinterpret_cast<float *>(xs + rows * geo.xs_stride); /* [kWarps][kTokenTiles][4][32] */

    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, t = lane & 3;

    /* Start streaming W before anything else: the first batch flies while x is staged. */
    int64_t tile = blockIdx.x;
    uint4 cur_a[kBatch], cur_b[kBatch];
    if (tile < geo.tiles) load_weight_batch<T>(args, geo, tile, 0, cur_a, cur_b);
    /* Programmatic dependent launch, as in the tensor-copy kernel below: the weights are
       constants of the model, so the first batch is requested before waiting for the previous
       kernel; x, residual and every write come after the wait. Before it, the blocks together
       ask L2 for the input (each a share), which is safe since L2 is where the previous kernel's
       writes land, and shortens the staging that follows the wait (H200, bf16, graph-timed, us,
       without / with: Qwen2.5-0.5B M = 1 2.68 / 2.57, M = 4 3.23 / 3.16, M = 8 3.35 / 3.30;
       Qwen3-0.6B M = 1 4.07 / 4.04. The same in the tensor-copy, deferred-norm and wgmma kernels
       gained nothing or lost: Llama-3-8B M = 16 16.9 / 17.1, Qwen3-0.6B M = 32 6.65 / 6.73;
       benchmarks/results/qkv-input-prefetch-nvidia-h200-2026-11-22.log). */
    mv_pdl_trigger();
    prefetch_input_l2<T>(in);
    mv_pdl_wait();

    stage_normalized_input<T, kHasResidual, kHasResidual ? 2 : 4, 1>(args, flags, xs, geo.xs_stride, partial, warp, lane,
                                                                    BlockSync());
    __syncthreads();

    for (; tile < geo.tiles; tile += gridDim.x) {
        float acc[kTokenTiles][4];
#pragma unroll
        for (int tt = 0; tt < kTokenTiles; ++tt) acc[tt][0] = acc[tt][1] = acc[tt][2] = acc[tt][3] = 0.0f;

        for (int batch = 0; batch < geo.batches; ++batch) {
            /* Prefetch the next batch (of this tile, or the first of this block's next tile). */
            uint4 next_a[kBatch], next_b[kBatch];
            int64_t next_tile = tile;
            int next_batch = batch + 1;
            if (next_batch == geo.batches) {
                next_tile += gridDim.x;
                next_batch = 0;
            }
            if (next_tile < geo.tiles) load_weight_batch<T>(args, geo, next_tile, next_batch, next_a, next_b);

#pragma unroll
            for (int b = 0; b < kBatch; ++b) {
                const int chunk = warp + kWarps * (batch * kBatch + b);
                if (chunk >= geo.chunks) break; /* warp-uniform */
                const int k = chunk * kChunkK + kVec * t;
                mma_chunk<T, kTokenTiles>(acc, cur_a[b], cur_b[b], xs, geo.xs_stride, k, k < hidden, rows, g);
            }
#pragma unroll
            for (int b = 0; b < kBatch; ++b) {
                cur_a[b] = next_a[b];
                cur_b[b] = next_b[b];
            }
        }

        reduce_and_store<T, kTokenTiles>(args, acc, partial, tile * kTileFeatures, geo.cols, BlockSync());
    }
}


/* ---- Hopper (sm_90+): W streamed by the tensor copy engine into a shared-memory ring ----------

   The register stream above keeps at most two batches per thread in flight and hands whole
   16-feature tiles to blocks, so the last wave runs part-empty (Llama-3-8B: 384 tiles on 264
   blocks). Here each block (one per SM) owns a contiguous, equal range of output features, and one
   producer warp streams it through a ring of shared-memory stages, each stage 16 features x
   stage_k of k brought by ONE tensor copy (cp.async.bulk.tensor, completion counted in bytes on an
   mbarrier). Before the weights, the producer bulk-copies the input (x rows into the staging
   area, the residual rows and gamma beside it) when it is 16-byte aligned, so the norm's operands
   are not queued behind the weight stream. The 8 consumer warps stage y, then wait on each stage,
   run the same mma chunks as above reading W from shared memory, and release the slot.
   Why one tensor copy per stage: with one plain bulk copy per feature row, the time followed the
   number of copies, not the bytes in flight (H200, Llama-3-8B at M = 1: 4 or 12 slots of 512 k
   gave the same 21 us; 256 / 512 / 1024 / 2048 k per stage gave 38 / 21 / 17 / 16 us), and wide
   stages did not fit beside a staged input of 16 rows of H = 4096.
   The copy's view of W is 3-D: [N][H / 64][64], so a stage is a box of 16 features x stage_lines
   lines of 64 k (128 bytes), stored line after line with the 128-byte swizzle (16-byte chunk j of
   line L lands at chunk j ^ (L % 8)). A lane reads 16 bytes of features g and g + 8 at the same k;
   with stage_lines = 4 mod 8, features g and g + 1 sit in opposite halves of the swizzle, so the
   8 lanes of each quarter-warp hit 8 distinct chunks: no bank conflicts. Features past N and k
   past H (in the box but outside the tensor) are filled with zeros by the copy itself.
   Needs H % 64 == 0 (every model this library targets); other H take the register kernel.
   Measured (H200, bf16, graph replay of distinct layers): Llama-3-8B M = 1 17.1 us and M = 16
   24.1 us, against 17.9 and 28.4 with a bulk copy per feature row.
   Programmatic dependent launch (cuda_device.h): the kernel may start before the previous kernel
   on the stream ends, lets its own successor start at once, and at M = 1 requests its first W
   stage before waiting for that kernel (mv_pdl_wait); x, residual, gamma and every write come
   after the wait. Where the block fits in half an SM, two calls' blocks share one. Measured as
   above, M = 1, without / with: Qwen2.5-0.5B 5.1 / 3.2 us, Qwen3-0.6B 7.5 / 4.3, Qwen3-4B
   14.3 / 11.1, Llama-3-8B 19.7 / 16.7.
   Measured and not used (H200, bf16, M = 1 ... 1024, benchmarks/probes/README.md): asking L2
   for the block's W rows (cp.async.bulk.prefetch.L2) before the wait made every shape slower
   (Qwen3-4B M = 1 10.6 -> 14.1 us): the prefetches queue in the same copy engine as the ring's
   copies of the same bytes, and DRAM is already busy with the previous call. Nor did asking L2
   per thread (prefetch.global.L2) for a budget of the W lines after the early stages, here and
   in the deferred-norm kernel (Llama-3-8B M = 8 15.9 us without, 16.0 / 16.2 / 16.6 / 17.7 with
   2 / 4 / 8 / 16 MiB; benchmarks/results/qkv-input-prefetch-nvidia-h200-2026-11-22.log). */
constexpr int kLineK = 64;                             /* k per 128-byte line of a stage */
constexpr int kLineBytes = kLineK * 2;
constexpr int kStageLineChoices[] = {36, 28, 20, 12, 4}; /* each 4 mod 8 (see above), widest first */
constexpr int kMaxStages = 12;
constexpr int kBulkThreads = kThreads + 32;            /* 8 consumer warps + 1 producer warp */
constexpr int kMinFeaturesPerBlock = 8;
constexpr int kSwizzleAlign = 1024;                    /* the 128-byte swizzle repeats every 1 KiB */

struct BulkGeometry {
    int64_t cols;      /* N */
    int kchunks;       /* ceil(H / stage_k) */
    int stages;        /* ring slots */
    int xs_stride;     /* elements between staged rows */
    bool input_copy;   /* the producer bulk-copies x (into xs), residual and gamma first */
    int stage_lines;   /* 64-k lines per stage: stage_k = 64 * stage_lines */
    int early_stages;  /* stages requested before waiting for the previous kernel (<= stages) */
};

/* 16-byte chunk j of 128-byte line `line` of a box the copy engine stored with the 128-byte
   swizzle (from a 1 KiB boundary): it sits at chunk j ^ (line % 8) of its line. */
__device__ __forceinline__ uint4 load_swizzled(const unsigned char *box, int line, int j) {
    return *reinterpret_cast<const uint4 *>(box + line * kLineBytes + ((j ^ (line & 7)) << 4));
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
struct ConsumerSync { /* the 8 consumer warps only: the producer warp never joins */
    __device__ void operator()() const { asm volatile("bar.sync 1, %0;\n" ::"n"(kThreads) : "memory"); }
};
#endif


template <typename T, int kTokenTiles, bool kHasResidual>
__global__ void __launch_bounds__(kBulkThreads, 2) fused_rms_norm_qkv_bulk_kernel(mv_qkv_args args, BulkGeometry geo,
                                                                                mv_stream_flags flags,
                                                                                const __grid_constant__ CUtensorMap w_map) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    extern __shared__ uint4 smem[];
    const int rows = static_cast<int>(args.in.rows);
    const int hidden = static_cast<int>(args.in.hidden);
    /* [stages][16 features][stage_lines][128 bytes, swizzled], from the first 1 KiB boundary */
    unsigned char *ring = reinterpret_cast<unsigned char *>(
        (reinterpret_cast<uintptr_t>(smem) + kSwizzleAlign - 1) / kSwizzleAlign * kSwizzleAlign);
    const int stage_bytes = kTileFeatures * geo.stage_lines * kLineBytes;
    T *xs = reinterpret_cast<T *>(ring + static_cast<size_t>(geo.stages) * stage_bytes); /* [rows][xs_stride] */
    float *partial = reinterpret_cast<float *>(xs + rows * geo.xs_stride);     /* [kWarps][kTokenTiles][4][32] */
    /* with input_copy: residual rows [rows][xs_stride] (when there is a residual) and gamma [H] */
    T *residual_copy = reinterpret_cast<T *>(partial + kWarps * kTokenTiles * 4 * 32);
    T *gamma_copy = residual_copy + (geo.input_copy && kHasResidual ? rows * geo.xs_stride : 0);
    uint64_t *full = reinterpret_cast<uint64_t *>(gamma_copy + (geo.input_copy ? (hidden + 7) / 8 * 8 : 0));
    uint64_t *empty = full + geo.stages;
    uint64_t *input_full = empty + geo.stages;

    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    /* This block's features: an equal share of N, in 16-feature tiles (the last one partial). */
    const int64_t feature_begin = geo.cols * blockIdx.x / gridDim.x;
    const int64_t feature_end = geo.cols * (blockIdx.x + 1) / gridDim.x;
    const int tiles = static_cast<int>((feature_end - feature_begin + kTileFeatures - 1) / kTileFeatures);
    const int total_stages = tiles * geo.kchunks;

    if (threadIdx.x == 0) {
        for (int i = 0; i < geo.stages; ++i) {
            mv_mbarrier_init(&full[i], 1);      /* the producer's arrive (+ the bytes it expects) */
            mv_mbarrier_init(&empty[i], kWarps); /* one arrive per consumer warp */
        }
        mv_mbarrier_init(input_full, 1);
        mv_mbarrier_init_fence();
    }
    __syncthreads();

    /* Programmatic dependent launch: the next kernel in the stream may start now. Nothing it may
       read early (its weights) is written here, and before reading anything else or writing
       anything it waits for this grid to finish (mv_pdl_wait, below in this kernel too). */
    mv_pdl_trigger();

    if (warp == kWarps) {
        /* Producer: stage i of this block is tile i / kchunks, k chunk i % kchunks, in slot
           i % stages; lane 0 issues its one tensor copy. The first geo.early_stages stages go out
           before the wait for the previous kernel in the stream: weights are constants of the
           model (the README says so), so they may stream while that kernel finishes. */
        if (lane == 0) {
            const uint64_t policy = mv_evict_first_policy();
            auto issue = [&](int i) {
                const int slot = i % geo.stages, round = i / geo.stages;
                if (round > 0) mv_mbarrier_wait(&empty[slot], (round - 1) & 1);
                const int64_t feature0 = feature_begin + static_cast<int64_t>(i / geo.kchunks) * kTileFeatures;
                const int line0 = (i % geo.kchunks) * geo.stage_lines;
                mv_mbarrier_arrive_expect_tx(&full[slot], static_cast<unsigned>(stage_bytes)); /* zero fill counts */
                mv_tensor_copy_3d(ring + static_cast<size_t>(slot) * stage_bytes, &w_map, 0, line0,
                                      static_cast<int>(feature0), &full[slot], policy);
            };
            const int first_round = total_stages < geo.early_stages ? total_stages : geo.early_stages;
            for (int i = 0; i < first_round; ++i) issue(i);
            mv_pdl_wait();
            if (geo.input_copy) {
                const unsigned row_bytes = static_cast<unsigned>(hidden) * sizeof(T);
                mv_mbarrier_arrive_expect_tx(input_full, row_bytes * (1 + rows * (kHasResidual ? 2 : 1)));
                mv_bulk_copy(gamma_copy, args.in.norm_weight, row_bytes, input_full);
                for (int m = 0; m < rows; ++m) {
                    mv_bulk_copy(xs + m * geo.xs_stride,
                                        static_cast<const T *>(args.in.x) + m * args.in.x_stride, row_bytes,
                                        input_full);
                    if (kHasResidual)
                        mv_bulk_copy(residual_copy + m * geo.xs_stride,
                                            static_cast<const T *>(args.in.residual) + m * args.in.residual_stride,
                                            row_bytes, input_full);
                }
            }
            for (int i = first_round; i < total_stages; ++i) issue(i);
        }
        return;
    }

    mv_pdl_wait(); /* x, residual and the outputs are the previous kernel's */
    if (geo.input_copy) {
        /* Stage from the shared copies: x in place in xs (each lane reads the vectors it then
           writes), residual and gamma beside it; residual_out still goes to global memory. */
        mv_mbarrier_wait(input_full, 0);
        mv_qkv_args local = args;
        local.in.x = xs;
        local.in.x_stride = geo.xs_stride;
        local.in.residual = residual_copy;
        local.in.residual_stride = geo.xs_stride;
        local.in.norm_weight = gamma_copy;
        mv_stream_flags local_flags = flags;
        local_flags.x_vec = local_flags.residual_vec = local_flags.gamma_vec = true;
        stage_normalized_input<T, kHasResidual, kHasResidual ? 2 : 4, kHasResidual ? 2 : 4>(local, local_flags, xs, geo.xs_stride, partial, warp, lane,
                                                   ConsumerSync());
    } else {
        stage_normalized_input<T, kHasResidual, kHasResidual ? 2 : 4, kHasResidual ? 2 : 4>(args, flags, xs, geo.xs_stride, partial, warp, lane, ConsumerSync());
    }
    ConsumerSync()();

    const int g = lane >> 2, t = lane & 3;
    const int stage_k = geo.stage_lines * kLineK;
    const int chunks_per_stage = stage_k / kChunkK;
    for (int tile = 0, i = 0; tile < tiles; ++tile) {
        float acc[kTokenTiles][4];
#pragma unroll
        for (int tt = 0; tt < kTokenTiles; ++tt) acc[tt][0] = acc[tt][1] = acc[tt][2] = acc[tt][3] = 0.0f;
        for (int kc = 0; kc < geo.kchunks; ++kc, ++i) {
            const int slot = i % geo.stages;
            mv_mbarrier_wait(&full[slot], (i / geo.stages) & 1);
            const unsigned char *stage = ring + static_cast<size_t>(slot) * stage_bytes;
            for (int c = warp; c < chunks_per_stage; c += kWarps) {
                const int chunk_k = kc * stage_k + c * kChunkK;
                if (chunk_k >= hidden) break; /* warp-uniform; H % 64 == 0, so a chunk is all in or all out */
                const int local_k = c * kChunkK + kVec * t;
                const int line_a = g * geo.stage_lines + local_k / kLineK;
                const int line_b = line_a + 8 * geo.stage_lines;
                const int j = (local_k % kLineK) / kVec; /* 16-byte chunk within the line */
                const uint4 wa = load_swizzled(stage, line_a, j);
                const uint4 wb = load_swizzled(stage, line_b, j);
                mma_chunk<T, kTokenTiles>(acc, wa, wb, xs, geo.xs_stride, chunk_k + kVec * t, true, rows, g);
            }
            __syncwarp();
            if (lane == 0) mv_mbarrier_arrive(&empty[slot]);
        }
        reduce_and_store<T, kTokenTiles>(args, acc, partial, feature_begin + static_cast<int64_t>(tile) * kTileFeatures,
                                         feature_end, ConsumerSync());
    }
#endif
}

/* ---- The deferred-norm tensor-copy kernel (sm_90+, fp16/bf16, no residual, M <= 32) --------

   The two kernels above stage the whole normalized input in every block before the first product:
   at M = 16 and H = 4096 that is 128 KiB that each of 132 blocks reads at once (17 MiB out of L2
   in a burst) and passes over twice, while its W stream waits. Here the input travels with the
   weights instead: ring stage i holds W[this block's features][k range i] and x[all rows][k range
   i], both brought by the copy engine, and the norm is deferred (the identity of the wgmma path):
   the products accumulate (gamma * x) . W^T, with gamma * x rounded to the dtype, and each token's sums
   are multiplied by its rrms in the epilogue. The lane that loads an x fragment for the tensor
   cores scales it by gamma in registers (gamma sits in shared memory, copied once) and adds its
   x^2 to the row sums, so the norm costs no pass, no barrier and no global load per stage.
   - fp16: gamma * x can overflow fp16 where gamma * x * rrms cannot (|x| up to 65504). So in fp16
     the operand is gamma * x * 2^-e, with 2^e the least power of two above max |gamma| (e = 0
     where max |gamma| <= 1), which bounds it by |x|: no overflow for any finite input. The scale is
     exact (a power of two), so the operand equals round(gamma * x) except where it falls below
     fp16's normal range (|gamma * x| < 2^(e - 14)); the epilogue multiplies by rrms * 2^e. Each
     block takes max |gamma| from its copy of gamma before its first product (one pass over H
     elements, while W streams). bf16 has float32's range and needs no scale.
   - Blocks own equal ranges of output features (as the tensor-copy kernel) and walk K once: every
     stage feeds all of the block's 16-feature tiles (at most kDeferredMaxTiles), so x is read
     once per block, not once per tile. The W box covers 16 * tiles features from the block's
     first feature (a few of them the next block's, computed and not stored).
   - Both boxes are laid out as [row][stage_lines][128 bytes] with the 128-byte swizzle; with
     stage_lines = 4 mod 8, the two rows (features or tokens) a quarter-warp reads sit in opposite
     halves of the swizzle: no bank conflicts (see the tensor-copy kernel).
   Measured while building it (H200, bf16, graph-timed, us; runs D1-D4 of
   benchmarks/results/qkv-deferred-nvidia-h200-2026-11-22.log):
   a first form that rescaled each stage's x in place in shared memory (a pass, a proxy fence and
   a barrier per stage) with gamma read from global memory ran Llama-3-8B M = 1 in 21.7 and M = 16
   in 26.7; gamma in shared memory, 17.8 and 21.5; the scaling in registers, 16.1 and 17.3. */
constexpr int kDeferredMaxTokens = 32;
constexpr int kDeferredScalars = kDeferredMaxTokens + 4; /* row sums, then max |gamma| (16-byte multiple) */
/* features per block <= 64 (32 above 16 tokens): registers. Three tiles above 16 tokens spill
   (ptxas allows 96 registers for two blocks of 288 threads) and ran Llama-3-8B M = 32 in 22.5 us,
   against 18.7 on norm + cuBLASLt (run T6 of benchmarks/results/qkv-decode-timeline-nvidia-h200-2026-11-22.log). */
constexpr int kDeferredMaxTiles = 4;
constexpr int kDeferredLineChoices[] = {4, 12, 20, 28}; /* each 4 mod 8, narrowest first */
constexpr int kDeferredMaxStages = 16;

struct DeferredGeometry {
    int64_t cols;     /* N */
    int tiles;        /* 16-feature tiles per block */
    int stage_lines;  /* 64-k lines per stage */
    int kstages;      /* ceil(H / (64 * stage_lines)): stages per block */
    int stages;       /* ring slots */
    int w_bytes;      /* W box: 16 * tiles * stage_lines lines of 128 bytes */
    int x_bytes;      /* x box: rows * stage_lines lines */
    int slot_bytes;   /* w_bytes + x_bytes rounded up to the swizzle's 1 KiB */
    int early_stages; /* W boxes requested before waiting for the previous kernel */
};

template <typename T, int kTokenTiles, int kMaxTiles>
__global__ void __launch_bounds__(kBulkThreads, 2)
    fused_rms_norm_qkv_deferred_kernel(mv_qkv_args args, DeferredGeometry geo, const __grid_constant__ CUtensorMap w_map,
                                       const __grid_constant__ CUtensorMap x_map) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    constexpr bool kScaled = std::is_same<T, __half>::value; /* fp16: the operand scale (see above) */
    extern __shared__ uint4 smem[];
    const int rows = static_cast<int>(args.in.rows);
    const int hidden = static_cast<int>(args.in.hidden);
    unsigned char *ring = reinterpret_cast<unsigned char *>(
        (reinterpret_cast<uintptr_t>(smem) + kSwizzleAlign - 1) / kSwizzleAlign * kSwizzleAlign);
    float *row_sum = reinterpret_cast<float *>(ring + static_cast<size_t>(geo.stages) * geo.slot_bytes); /* [kDeferredScalars] */
    float *gamma_max = row_sum + kDeferredMaxTokens;
    T *gamma_s = reinterpret_cast<T *>(row_sum + kDeferredScalars); /* [H], H % 64 == 0 */
    uint64_t *full = reinterpret_cast<uint64_t *>(gamma_s + hidden);
    uint64_t *empty = full + geo.stages;
    uint64_t *gamma_full = empty + geo.stages;
    float *partial = reinterpret_cast<float *>(ring); /* the epilogue's, once the ring is drained */

    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int64_t feature_begin = geo.cols * blockIdx.x / gridDim.x;
    const int64_t feature_end = geo.cols * (blockIdx.x + 1) / gridDim.x;
    const int sl = geo.stage_lines;

    if (threadIdx.x == 0) {
        for (int i = 0; i < geo.stages; ++i) {
            mv_mbarrier_init(&full[i], 1);
            mv_mbarrier_init(&empty[i], kWarps);
        }
        mv_mbarrier_init(gamma_full, 1);
        mv_mbarrier_init_fence();
    }
    if (threadIdx.x < kDeferredScalars) row_sum[threadIdx.x] = 0.0f; /* and gamma_max */
    __syncthreads();
    mv_pdl_trigger(); /* as in the tensor-copy kernel */

    if (warp == kWarps) {
        /* Producer: stage i is k lines [i * sl, (i + 1) * sl) in slot i % stages; one W box and
           one x box, both counted on full[slot]. W boxes of the first early_stages stages go out
           before the wait for the previous kernel (weights are constants of the model); every x
           box after it. Boxes past H or N are zero-filled and counted in full. */
        if (lane == 0) {
            const uint64_t w_policy = mv_evict_first_policy(), x_policy = mv_evict_last_policy();
            const unsigned bytes = static_cast<unsigned>(geo.w_bytes + geo.x_bytes);
            auto slot_of = [&](int i) { return ring + static_cast<size_t>(i % geo.stages) * geo.slot_bytes; };
            auto arm = [&](int i) {
                const int slot = i % geo.stages, round = i / geo.stages;
                if (round > 0) mv_mbarrier_wait(&empty[slot], (round - 1) & 1);
                mv_mbarrier_arrive_expect_tx(&full[slot], bytes);
            };
            auto copy_w = [&](int i) {
                mv_tensor_copy_3d(slot_of(i), &w_map, 0, i * sl, static_cast<int>(feature_begin),
                                  &full[i % geo.stages], w_policy);
            };
            auto copy_x = [&](int i) {
                mv_tensor_copy_3d(slot_of(i) + geo.w_bytes, &x_map, 0, i * sl, 0, &full[i % geo.stages], x_policy);
            };
            /* gamma (a weight, like W) first: every stage's rescaling reads it from shared memory */
            mv_mbarrier_arrive_expect_tx(gamma_full, static_cast<unsigned>(hidden) * 2);
            mv_bulk_copy(gamma_s, args.in.norm_weight, static_cast<unsigned>(hidden) * 2, gamma_full);
            const int early = geo.kstages < geo.early_stages ? geo.kstages : geo.early_stages;
            for (int i = 0; i < early; ++i) {
                arm(i);
                copy_w(i);
            }
            mv_pdl_wait();
            for (int i = 0; i < early; ++i) copy_x(i);
            for (int i = early; i < geo.kstages; ++i) {
                arm(i);
                copy_x(i);
                copy_w(i);
            }
        }
        return;
    }

    const int g = lane >> 2, t = lane & 3;
    if constexpr (!kScaled) mv_pdl_wait(); /* the outputs may still be read by the previous kernel */
    mv_mbarrier_wait(gamma_full, 0);
    float operand_scale = 1.0f, result_scale = 1.0f; /* 2^-e and 2^e (fp16) */
    if constexpr (kScaled) { /* gamma is a weight: read before the wait, while the previous kernel ends */
        float most = 0.0f; /* fmaxf drops NaN; an infinite gamma keeps the scale at 1 */
        for (int k = threadIdx.x * kVec; k < hidden; k += kThreads * kVec) {
            const uint4 gv = *reinterpret_cast<const uint4 *>(gamma_s + k);
            const T *ge = reinterpret_cast<const T *>(&gv);
#pragma unroll
            for (int e = 0; e < kVec; ++e) most = fmaxf(most, fabsf(mv_to_float(ge[e])));
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) most = fmaxf(most, __shfl_xor_sync(0xffffffffu, most, o));
        if (lane == 0) atomicMax(reinterpret_cast<int *>(gamma_max), __float_as_int(most)); /* >= 0: ordered as ints */
        ConsumerSync()();
        most = *gamma_max;
        if (most > 1.0f && most <= 65504.0f) {
            int e;
            frexpf(most, &e); /* most < 2^e */
            operand_scale = ldexpf(1.0f, -e);
            result_scale = ldexpf(1.0f, e);
        }
        mv_pdl_wait();
    }
    float sum_sq[kTokenTiles]; /* of the x this lane loads: tokens 8 * tt + g */
    float acc[kMaxTiles][kTokenTiles][4];
#pragma unroll
    for (int tt = 0; tt < kTokenTiles; ++tt) {
        sum_sq[tt] = 0.0f;
#pragma unroll
        for (int f = 0; f < kMaxTiles; ++f) acc[f][tt][0] = acc[f][tt][1] = acc[f][tt][2] = acc[f][tt][3] = 0.0f;
    }

    for (int i = 0; i < geo.kstages; ++i) {
        const int slot = i % geo.stages;
        mv_mbarrier_wait(&full[slot], (i / geo.stages) & 1);
        const unsigned char *ws = ring + static_cast<size_t>(slot) * geo.slot_bytes;
        const unsigned char *xs = ws + geo.w_bytes;
        /* Warp w takes chunks w, w + 8, ... of the stage. H % 64 == 0, so a chunk is all inside H
           or all past it. Each (token, k) of the stage is loaded by exactly one lane: it adds x^2
           to its sum and scales x by gamma in registers, and the scaled fragment serves every
           tile. */
        for (int c = warp; c < 2 * sl; c += kWarps) {
            const int local_k = c * kChunkK + kVec * t;
            const int line = local_k / kLineK, j = (local_k % kLineK) / kVec;
            const int k = (i * sl + line) * kLineK + j * kVec;
            if (k - j * kVec >= hidden) break; /* warp-uniform: the line starts past H */
            const uint4 gv = *reinterpret_cast<const uint4 *>(gamma_s + k);
            const T *ge = reinterpret_cast<const T *>(&gv);
            float gf[kVec]; /* gamma * 2^-e: exact in float32 (bf16: the scale is 1) */
#pragma unroll
            for (int e = 0; e < kVec; ++e) gf[e] = mv_to_float(ge[e]) * operand_scale;
            uint4 yv[kTokenTiles];
#pragma unroll
            for (int tt = 0; tt < kTokenTiles; ++tt) {
                const int token = tt * 8 + g;
                const uint4 xv = token < rows ? load_swizzled(xs, token * sl + line, j) : make_uint4(0, 0, 0, 0);
                const T *xe = reinterpret_cast<const T *>(&xv);
                float scaled[kVec];
#pragma unroll
                for (int e = 0; e < kVec; ++e) {
                    const float xf = mv_to_float(xe[e]);
                    sum_sq[tt] += xf * xf;
                    scaled[e] = gf[e] * xf;
                }
                T(&ye)[kVec] = *reinterpret_cast<T(*)[kVec]>(&yv[tt]);
                mv_from_floats(ye, scaled);
            }
#pragma unroll
            for (int f = 0; f < kMaxTiles; ++f) {
                if (f >= geo.tiles) break;
                const int la = (f * kTileFeatures + g) * sl + line, lb = la + 8 * sl;
                const uint4 wa = load_swizzled(ws, la, j);
                const uint4 wb = load_swizzled(ws, lb, j);
#pragma unroll
                for (int tt = 0; tt < kTokenTiles; ++tt) mma_k32<T>(acc[f][tt], wa, wb, yv[tt]);
            }
        }
        __syncwarp();
        if (lane == 0) mv_mbarrier_arrive(&empty[slot]);
    }

    /* Row sums: the four lanes of a token (t = 0..3) first, then one lane per warp and token adds
       to the token's total. */
#pragma unroll
    for (int tt = 0; tt < kTokenTiles; ++tt) {
        float v = sum_sq[tt];
        v += __shfl_xor_sync(0xffffffffu, v, 1);
        v += __shfl_xor_sync(0xffffffffu, v, 2);
        if (t == 0 && tt * 8 + g < rows) atomicAdd(&row_sum[tt * 8 + g], v);
    }
    ConsumerSync()(); /* every row's total is in, and every warp is done with the ring */
    if (threadIdx.x < rows)
        row_sum[threadIdx.x] = rsqrtf(row_sum[threadIdx.x] / static_cast<float>(hidden) + args.in.eps) * result_scale;
    /* reduce_and_store's first barrier orders these rrms before their use. */
#pragma unroll
    for (int f = 0; f < kMaxTiles; ++f) {
        if (f >= geo.tiles) break;
        reduce_and_store<T, kTokenTiles>(args, acc[f], partial, feature_begin + static_cast<int64_t>(f) * kTileFeatures,
                                         feature_end, ConsumerSync(), row_sum);
    }
#endif
}

/* Staged rows (pitch = 64 mod 128 bytes: the 8 rows read by one mma step land in distinct banks)
   and the warps' partial tiles. */
size_t row_pitch_bytes(int hidden) { return static_cast<size_t>(hidden * 2 + 127) / 128 * 128 + 64; }
size_t shared_bytes(int rows, int hidden, int token_tiles) {
    return static_cast<size_t>(rows) * row_pitch_bytes(hidden) + static_cast<size_t>(kWarps) * token_tiles * 4 * 32 * 4;
}

mv_stream_flags stream_flags(const mv_qkv_args &a, bool residual_in_kernel) {
    mv_stream_flags flags;
    flags.x_vec = mv_aligned16(a.in.x, a.in.x_stride, 2);
    flags.residual_vec = a.in.residual != nullptr && mv_aligned16(a.in.residual, a.in.residual_stride, 2);
    flags.residual_out_vec = a.in.residual_out != nullptr && mv_aligned16(a.in.residual_out, a.in.residual_out_stride, 2);
    flags.gamma_vec = mv_aligned16(a.in.norm_weight, 0, 2);
    flags.residual_in_kernel = residual_in_kernel;
    return flags;
}


/* W as the copy engine sees it: [N][H / 64][64] elements, boxes of 16 features x stage_lines
   lines x 64 k (cached per layer: cuda_device.h). */
bool encode_weight_map(CUtensorMap *map, const mv_qkv_args &a, int64_t cols, int stage_lines,
                       int box_features = kTileFeatures) {
    const cuuint64_t dims[3] = {static_cast<cuuint64_t>(kLineK), static_cast<cuuint64_t>(a.in.hidden / kLineK),
                                static_cast<cuuint64_t>(cols)};
    const cuuint64_t strides[2] = {static_cast<cuuint64_t>(kLineBytes), static_cast<cuuint64_t>(a.w_stride_n) * 2};
    const cuuint32_t box[3] = {static_cast<cuuint32_t>(kLineK), static_cast<cuuint32_t>(stage_lines),
                               static_cast<cuuint32_t>(box_features)};
    return mv_swizzled_tensor_map(map, a.in.dtype == MV_BFLOAT16, 3, a.w, dims, strides, box, true);
}

constexpr int kMinSharedStageLines = 12; /* 768 k: narrower stages on half an SM cost more than they bring */

/* The ring for a shared-memory budget: the fewest stages per tile (one when H fits the widest
   choice), at least min_lines wide unless H is narrower, of which three (or all a block needs, or
   at least min_stages) fit beside the staged input. Returns the bytes the block needs, or 0 when
   no such ring fits. */
size_t plan_ring(BulkGeometry *geo, size_t budget, size_t base, size_t input_extra, bool input_copy_ok,
                 int64_t most_tiles, int lines, int min_lines, int min_stages) {
    int candidates[8], count = 0;
    const int choices = static_cast<int>(sizeof(kStageLineChoices) / sizeof(int));
    for (int c = 0; c < choices; ++c) {
        /* of the choices that cover H in one stage, only the narrowest */
        if (kStageLineChoices[c] >= lines && c + 1 < choices && kStageLineChoices[c + 1] >= lines) continue;
        candidates[count++] = kStageLineChoices[c];
    }
    for (int want = 3; want >= min_stages; --want) {
        for (int c = 0; c < count; ++c) {
            const int stage_lines = candidates[c];
            if (stage_lines < min_lines && stage_lines < lines) continue;
            const int kchunks = (lines + stage_lines - 1) / stage_lines;
            const int64_t needed = most_tiles * kchunks;
            const size_t per_stage = static_cast<size_t>(kTileFeatures) * stage_lines * kLineBytes + 2 * sizeof(uint64_t);
            const bool input_copy = input_copy_ok && base + input_extra + 2 * per_stage <= budget;
            const size_t fixed = base + (input_copy ? input_extra : 0);
            if (fixed > budget) return 0;
            int64_t fit = static_cast<int64_t>((budget - fixed) / per_stage);
            if (fit > kMaxStages) fit = kMaxStages;
            if (fit > needed) fit = needed < 2 ? 2 : needed;
            if (fit >= (needed < want ? needed : want) && fit >= 2) {
                geo->stages = static_cast<int>(fit);
                geo->stage_lines = stage_lines;
                geo->kchunks = kchunks;
                geo->input_copy = input_copy;
                return fixed + static_cast<size_t>(fit) * per_stage;
            }
        }
    }
    return 0;
}

/* The tensor-copy kernel (sm_90+, H % 64 == 0) when its ring gets at least two stages; returns
   cudaErrorNotSupported (launching nothing) when it does not apply, so the caller falls back.
   Launched with programmatic dependent launch: see the kernel. Where the block fits in half a
   multiprocessor, the next call's blocks can then stream their weights beside this call's. */
template <typename T, int kTokenTiles>
int launch_bulk(const mv_qkv_args &a, cudaStream_t stream, const mv_stream_flags &flags, const mv_cuda_device &dev,
                bool pdl) {
    const int rows = static_cast<int>(a.in.rows);
    const int hidden = static_cast<int>(a.in.hidden);
    if (hidden % kLineK != 0) return static_cast<int>(cudaErrorNotSupported);
    const bool has_residual = a.in.residual != nullptr;
    BulkGeometry geo;
    geo.cols = a.q_cols + 2 * a.kv_cols;
    geo.xs_stride = static_cast<int>(row_pitch_bytes(hidden) / 2);
    const int64_t by_features = (geo.cols + kMinFeaturesPerBlock - 1) / kMinFeaturesPerBlock;
    const unsigned grid = static_cast<unsigned>(by_features < dev.sms ? by_features : dev.sms);
    const int64_t most_tiles = ((geo.cols + grid - 1) / grid + kTileFeatures - 1) / kTileFeatures;
    const size_t base = kSwizzleAlign + shared_bytes(rows, hidden, kTokenTiles) + sizeof(uint64_t) /* input barrier */;
    /* The input goes by bulk copy where it is 16-byte aligned and its bytes fit one mbarrier phase
       (and where its shared copies still leave two stages). */
    const size_t input_extra = (has_residual ? static_cast<size_t>(rows) * row_pitch_bytes(hidden) : 0) +
                               static_cast<size_t>(hidden + 7) / 8 * 8 * 2;
    const size_t input_bytes = static_cast<size_t>(hidden) * 2 * (1 + rows * (has_residual ? 2 : 1));
    const bool input_copy_ok =
        flags.x_vec && flags.gamma_vec && (!has_residual || flags.residual_vec) && input_bytes < (1u << 20);
    const int lines = hidden / kLineK;
    const size_t half_sm = static_cast<size_t>(dev.max_shared_sm / 2 - dev.reserved_shared);
    const size_t whole = static_cast<size_t>(dev.max_shared_block);
    /* Half a multiprocessor where that still leaves three stages of 768 k or more, or two stages
       that hold a whole tile's K; else all of it. (H200, bf16, graph-timed: Qwen3-4B M = 1 11.1 us
       on half, 28-line stages on all 11.9; Llama-3-8B M = 4 with two 12-line stages (a sixth of
       H each) on half 19.3, on all 17.6; Qwen3-0.6B M = 16 with two 12-line stages (all of H) on
       half 7.39, on all 8.00.) */
    const size_t half_budget = half_sm < whole ? half_sm : whole;
    size_t smem = plan_ring(&geo, half_budget, base, input_extra, input_copy_ok, most_tiles, lines,
                            kMinSharedStageLines, 3);
    if (smem == 0) {
        BulkGeometry two = geo;
        const size_t two_smem =
            plan_ring(&two, half_budget, base, input_extra, input_copy_ok, most_tiles, lines, kMinSharedStageLines, 2);
        if (two_smem != 0 && two.kchunks <= 2) {
            geo = two;
            smem = two_smem;
        }
    }
    if (smem == 0) smem = plan_ring(&geo, whole, base, input_extra, input_copy_ok, most_tiles, lines, 0, 2);
    if (smem == 0) return static_cast<int>(cudaErrorNotSupported);

    /* W stages requested before waiting for the previous kernel: with PDL and a single row, one
       (H200, bf16, M = 1: Qwen3-0.6B 4.3 us against 5.1 with none); otherwise none, since the
       input's bulk copy queues behind them (with all of the first round requested first, M = 8:
       Qwen2.5-0.5B 4.3 us against 3.9; without PDL, M = 1: 5.1 against 4.4). */
    geo.early_stages = pdl && rows == 1 ? 1 : 0;
    alignas(64) CUtensorMap w_map;
    if (!encode_weight_map(&w_map, a, geo.cols, geo.stage_lines)) return static_cast<int>(cudaErrorNotSupported);
    void (*kernel)(mv_qkv_args, BulkGeometry, mv_stream_flags, const CUtensorMap) =
        a.in.residual != nullptr ? fused_rms_norm_qkv_bulk_kernel<T, kTokenTiles, true>
                                 : fused_rms_norm_qkv_bulk_kernel<T, kTokenTiles, false>;
    static mv_shared_opt_in opt_in[2]; /* by residual */
    cudaError_t err = mv_allow_shared(kernel, smem, opt_in[a.in.residual != nullptr], dev.device);
    if (err != cudaSuccess) return static_cast<int>(err);
    err = mv_launch(kernel, dim3(grid), dim3(kBulkThreads), smem, stream, pdl, a, geo, flags, w_map);
    if (err != cudaSuccess) return static_cast<int>(err);
    return static_cast<int>(cudaGetLastError());
}

/* The deferred-norm kernel's plan: tiles per block, and a ring of 4-line (256-k) stages in a
   shared-memory budget of half a multiprocessor, so that two calls' blocks share one (with PDL
   the next call then streams its first W stages while this one finishes). H200, bf16,
   graph-timed, us, benchmarks/results/qkv-deferred-nvidia-h200-2026-11-22.log): a whole
   multiprocessor's shared memory, Llama-3-8B M = 8 18.29 against 16.51 on half (run D4); 12-line
   stages, Qwen3-0.6B M = 8 7.69 against 4.37, Llama-3-8B M = 1 19.23 against 16.14 (run D5).
   Environment knobs for measurements: MINIVLLM_QKV_DEFERRED_LINES=12|20|28 and
   MINIVLLM_QKV_DEFERRED_WHOLE=1. */
int env_int(const char *name, int fallback) {
    const char *v = getenv(name);
    return v != nullptr && *v != '\0' ? atoi(v) : fallback;
}

/* Returns the block's shared-memory bytes, or 0 where no plan fits (more than max_tiles feature
   tiles per block, or no two slots in the budget). */
size_t deferred_plan(DeferredGeometry *geo, const mv_qkv_args &a, const mv_cuda_device &dev, unsigned grid,
                     int token_tiles, int max_tiles) {
    const int rows = static_cast<int>(a.in.rows);
    const int lines = static_cast<int>(a.in.hidden / kLineK);
    const int64_t most_features = (geo->cols + grid - 1) / grid;
    geo->tiles = static_cast<int>((most_features + kTileFeatures - 1) / kTileFeatures);
    if (geo->tiles > max_tiles) return 0;
    static const int whole = env_int("MINIVLLM_QKV_DEFERRED_WHOLE", 0);
    static const int forced_lines = env_int("MINIVLLM_QKV_DEFERRED_LINES", 0);
    const size_t half_sm = static_cast<size_t>(dev.max_shared_sm / 2 - dev.reserved_shared);
    size_t budget = static_cast<size_t>(dev.max_shared_block);
    if (!whole && half_sm < budget) budget = half_sm;
    /* row sums, gamma, its barrier */
    const size_t fixed = kSwizzleAlign + kDeferredScalars * sizeof(float) + static_cast<size_t>(a.in.hidden) * 2 +
                         sizeof(uint64_t);
    const size_t partial_bytes = static_cast<size_t>(kWarps) * token_tiles * 4 * 32 * sizeof(float);
    if (budget <= fixed) return 0;
    for (int c = 0; c < static_cast<int>(sizeof(kDeferredLineChoices) / sizeof(int)); ++c) {
        const int sl = kDeferredLineChoices[c];
        if (forced_lines != 0 && sl != forced_lines) continue;
        const int kstages = (lines + sl - 1) / sl;
        const int w_bytes = kTileFeatures * geo->tiles * sl * kLineBytes, x_bytes = rows * sl * kLineBytes;
        const int slot_bytes = (w_bytes + x_bytes + kSwizzleAlign - 1) / kSwizzleAlign * kSwizzleAlign;
        const size_t per_slot = static_cast<size_t>(slot_bytes) + 2 * sizeof(uint64_t);
        int fit = static_cast<int>((budget - fixed) / per_slot);
        if (fit > kDeferredMaxStages) fit = kDeferredMaxStages;
        if (fit > kstages) fit = kstages < 2 ? 2 : kstages;
        /* two slots at least; the epilogue's partial tiles reuse the ring */
        if (fit < 2 || static_cast<size_t>(fit) * slot_bytes < partial_bytes) continue;
        geo->stage_lines = sl;
        geo->kstages = kstages;
        geo->stages = fit;
        geo->w_bytes = w_bytes;
        geo->x_bytes = x_bytes;
        geo->slot_bytes = slot_bytes;
        return fixed + static_cast<size_t>(fit) * per_slot;
    }
    return 0;
}

/* W boxes before the PDL wait. Where the ring holds at least half of a block's k stages, all of
   it (H200, bf16, graph-timed, us, none / one / all: Qwen3-0.6B M = 8 5.76 / 5.61 / 4.39,
   Qwen2.5-0.5B M = 8 4.22 / 3.19 / 3.23; Qwen3-0.6B M = 32, 3 of 4 stages in the ring, two / all
   6.81-6.83 / 6.61). Where it holds less (Llama-3-8B: 3 of 16, Qwen3-4B: 3-4 of 10), two: the
   input's boxes, requested after the wait, queue behind every W box already asked for, and a
   full ring there delays them by more than it overlaps (two / all, bf16, two passes: Llama-3-8B
   M = 3 15.49-15.50 / 15.69-15.78, M = 8 15.50-15.51 / 15.70-15.72, M = 16 16.60-16.62 / 16.85;
   Qwen3-4B M = 4 11.12-11.13 / 11.45, M = 16 11.87-11.89 / 12.13-12.15; fp16 alike; and behind a
   torch GEMM, as in a model: Qwen3-4B M = 4 20.29 / 20.74, M = 16 21.63 / 22.16; one stage was
   about as fast behind the GEMM and 0.2-0.3 us slower at Llama-3-8B M = 8-16 after a call of its own;
   benchmarks/results/qkv-pdl-chains-nvidia-h200-2026-11-22.log). On an H100 two won at Llama-3-8B
   M = 3-16 (two / all, bf16: M = 8 19.64 / 20.03-20.10, M = 16 20.18-20.20 / 20.66-20.75) and
   Qwen3-4B M = 8-16 (M = 16 14.01 / 14.26-14.27) and lost 0.1 us at Qwen3-4B M = 2-4, 4 of 10
   stages in the ring (13.53-13.55 / 13.38-13.45; fp16 alike;
   benchmarks/results/qkv-pdl-chains-nvidia-h100-2026-11-22.log). */
constexpr int kEarlyStagesCycling = 2; /* deferred_plan gives every ring at least two slots */
int deferred_early_stages(const DeferredGeometry &geo) {
    return 2 * geo.stages >= geo.kstages ? geo.stages : kEarlyStagesCycling;
}

template <typename T, int kTokenTiles, int kMaxTiles>
int launch_deferred(const mv_qkv_args &a, cudaStream_t stream, const mv_cuda_device &dev) {
    const int rows = static_cast<int>(a.in.rows);
    const int hidden = static_cast<int>(a.in.hidden);
    DeferredGeometry geo;
    geo.cols = a.q_cols + 2 * a.kv_cols;
    const int64_t by_features = (geo.cols + kMinFeaturesPerBlock - 1) / kMinFeaturesPerBlock;
    const unsigned grid = static_cast<unsigned>(by_features < dev.sms ? by_features : dev.sms);
    const size_t smem = deferred_plan(&geo, a, dev, grid, kTokenTiles, kMaxTiles);
    if (smem == 0) return static_cast<int>(cudaErrorNotSupported);
    const bool pdl = mv_pdl_enabled(dev);
    geo.early_stages = pdl ? deferred_early_stages(geo) : 0;

    alignas(64) CUtensorMap w_map, x_map;
    if (!encode_weight_map(&w_map, a, geo.cols, geo.stage_lines, kTileFeatures * geo.tiles))
        return static_cast<int>(cudaErrorNotSupported);
    /* x as [M][H / 64][64], boxes of all rows x stage_lines lines (one row: any valid stride) */
    const cuuint64_t x_dims[3] = {static_cast<cuuint64_t>(kLineK), static_cast<cuuint64_t>(hidden / kLineK),
                                  static_cast<cuuint64_t>(rows)};
    const int64_t x_stride = rows > 1 ? a.in.x_stride : hidden;
    const cuuint64_t x_strides[2] = {static_cast<cuuint64_t>(kLineBytes), static_cast<cuuint64_t>(x_stride) * 2};
    const cuuint32_t x_box[3] = {static_cast<cuuint32_t>(kLineK), static_cast<cuuint32_t>(geo.stage_lines),
                                 static_cast<cuuint32_t>(rows)};
    if (!mv_swizzled_tensor_map(&x_map, a.in.dtype == MV_BFLOAT16, 3, a.in.x, x_dims, x_strides, x_box, false))
        return static_cast<int>(cudaErrorNotSupported);

    void (*kernel)(mv_qkv_args, DeferredGeometry, const CUtensorMap, const CUtensorMap) =
        fused_rms_norm_qkv_deferred_kernel<T, kTokenTiles, kMaxTiles>;
    static mv_shared_opt_in opt_in;
    cudaError_t err = mv_allow_shared(kernel, smem, opt_in, dev.device);
    if (err != cudaSuccess) return static_cast<int>(err);
    err = mv_launch(kernel, dim3(grid), dim3(kBulkThreads), smem, stream, pdl, a, geo, w_map, x_map);
    if (err != cudaSuccess) return static_cast<int>(err);
    return static_cast<int>(cudaGetLastError());
}

/* The register-stream kernel: any sm_80+ GPU; a persistent grid of what fits at once. With
   whole_weight_first it launches only where its blocks request all of W before the PDL wait (one
   batch covers H, one resident block per tile), and returns cudaErrorNotSupported otherwise. */
template <typename T, int kTokenTiles>
int launch_register(const mv_qkv_args &a, cudaStream_t stream, const mv_stream_flags &flags,
                    const mv_cuda_device &dev, bool pdl, bool whole_weight_first) {
    const int rows = static_cast<int>(a.in.rows);
    const int hidden = static_cast<int>(a.in.hidden);
    StreamGeometry geo;
    geo.cols = a.q_cols + 2 * a.kv_cols;
    geo.tiles = (geo.cols + kTileFeatures - 1) / kTileFeatures;
    geo.chunks = (hidden + kChunkK - 1) / kChunkK;
    const int chunks_per_warp = (geo.chunks + kWarps - 1) / kWarps;
    geo.batches = (chunks_per_warp + kBatch - 1) / kBatch;
    geo.xs_stride = static_cast<int>(row_pitch_bytes(hidden) / 2);
    if (whole_weight_first && geo.batches > 1) return static_cast<int>(cudaErrorNotSupported); /* before any driver call */

    const size_t smem = shared_bytes(rows, hidden, kTokenTiles);
    if (smem > static_cast<size_t>(dev.max_shared_block)) return static_cast<int>(cudaErrorInvalidValue);
    void (*kernel)(mv_qkv_args, StreamGeometry, mv_stream_flags) =
        a.in.residual != nullptr ? fused_rms_norm_qkv_stream_kernel<T, kTokenTiles, true>
                                 : fused_rms_norm_qkv_stream_kernel<T, kTokenTiles, false>;
    int blocks_per_sm = 0;
    static mv_shared_opt_in opt_in[2]; /* by residual */
    cudaError_t err = mv_allow_shared(kernel, smem, opt_in[a.in.residual != nullptr], dev.device);
    if (err == cudaSuccess) err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks_per_sm, kernel, kThreads, smem);
    if (err != cudaSuccess) return static_cast<int>(err);
    if (blocks_per_sm < 1) return static_cast<int>(cudaErrorInvalidConfiguration);
    const int64_t resident = static_cast<int64_t>(blocks_per_sm) * dev.sms;
    const unsigned grid = static_cast<unsigned>(geo.tiles < resident ? geo.tiles : resident);
    if (whole_weight_first && geo.tiles > resident) return static_cast<int>(cudaErrorNotSupported);
    err = mv_launch(kernel, dim3(grid), dim3(kThreads), smem, stream, pdl, a, geo, flags);
    if (err != cudaSuccess) return static_cast<int>(err);
    return static_cast<int>(cudaGetLastError());
}

template <typename T, int kTokenTiles>
int launch(const mv_qkv_args &a, cudaStream_t stream, bool residual_in_kernel, const mv_cuda_device &dev) {
    const mv_stream_flags flags = stream_flags(a, residual_in_kernel);
    const mv_qkv_path forced = mv_qkv_forced_path();
    const bool pdl = mv_pdl_enabled(dev);
    if (dev.major >= 9 && forced != mv_qkv_path::register_stream) {
        if (forced != mv_qkv_path::bulk_stream && pdl) {
            const int reg = launch_register<T, kTokenTiles>(a, stream, flags, dev, pdl, true);
            if (reg != static_cast<int>(cudaErrorNotSupported)) return reg;
        }
        const int bulk = launch_bulk<T, kTokenTiles>(a, stream, flags, dev, pdl);
        if (bulk != static_cast<int>(cudaErrorNotSupported)) return bulk;
    }
    return launch_register<T, kTokenTiles>(a, stream, flags, dev, pdl, false);
}

} // namespace

/* Whether the stream path takes this call; see fused_rms_norm_qkv_paths.h. */
extern "C" int mv_qkv_stream_supported(const mv_qkv_args *a, const mv_cuda_device *dev) {
    if (a->in.dtype == MV_FLOAT32) return 0;
    if (a->in.rows < 1 || a->in.rows > kMaxTokens) return 0;
    if (a->in.hidden % kVec != 0 || a->in.hidden > (1 << 20)) return 0;
    if (a->w_stride_k != 1 || !mv_aligned16(a->w, a->w_stride_n, 2)) return 0;
    const int token_tiles = a->in.rows <= 8 ? 1 : 2;
    return shared_bytes(static_cast<int>(a->in.rows), static_cast<int>(a->in.hidden), token_tiles) <=
           static_cast<size_t>(dev->max_shared_block);
}

extern "C" int mv_qkv_stream_cuda(const mv_qkv_args *a, void *stream, int residual_in_kernel,
                                  const mv_cuda_device *dev) {
    cudaStream_t s = static_cast<cudaStream_t>(stream);
    const bool ok = residual_in_kernel != 0;
    const bool one_tile = a->in.rows <= 8; /* tokens per mma: 8 */
    switch (a->in.dtype) {
    case MV_FLOAT16:
        return one_tile ? launch<__half, 1>(*a, s, ok, *dev) : launch<__half, 2>(*a, s, ok, *dev);
    case MV_BFLOAT16:
        return one_tile ? launch<__nv_bfloat16, 1>(*a, s, ok, *dev) : launch<__nv_bfloat16, 2>(*a, s, ok, *dev);
    default:
        return static_cast<int>(cudaErrorInvalidValue);
    }
}

/* The deferred-norm kernel (see the section above it): sm_90+, bf16 or fp16, no residual, 1 <= M <= 32,
   H % 64 == 0, x and W rows 16-byte aligned (W in nn.Linear layout), gamma 16-byte aligned. Whether
   N fits (at most kDeferredMaxTiles tiles per block, half that above 16 rows) is the launcher's
   plan: it returns cudaErrorNotSupported, launching nothing, where it does not. */
extern "C" int mv_qkv_deferred_supported(const mv_qkv_args *a, const mv_cuda_device *dev) {
    if (dev->major < 9 || (a->in.dtype != MV_BFLOAT16 && a->in.dtype != MV_FLOAT16) || a->in.residual != nullptr)
        return 0;
    if (a->in.rows < 1 || a->in.rows > kDeferredMaxTokens) return 0;
    const int64_t h = a->in.hidden, n = a->q_cols + 2 * a->kv_cols;
    if (h % kLineK != 0 || h * 2 >= (1 << 20) || n >= (1ll << 31)) return 0; /* gamma: one mbarrier phase */
    if (a->w_stride_k != 1 || a->w_stride_n < h || !mv_aligned16(a->w, a->w_stride_n, 2)) return 0;
    if (!mv_aligned16(a->in.x, a->in.rows > 1 ? a->in.x_stride : 0, 2) || (a->in.rows > 1 && a->in.x_stride < h))
        return 0;
    return mv_aligned16(a->in.norm_weight, 0, 2) && mv_tensor_maps_available();
}

template <typename T>
int launch_deferred_rows(const mv_qkv_args &a, cudaStream_t s, const mv_cuda_device &dev) {
    if (a.in.rows <= 8) return launch_deferred<T, 1, kDeferredMaxTiles>(a, s, dev);
    if (a.in.rows <= 16) return launch_deferred<T, 2, kDeferredMaxTiles>(a, s, dev);
    return launch_deferred<T, 4, kDeferredMaxTiles / 2>(a, s, dev); /* registers: fewer feature tiles */
}

extern "C" int mv_qkv_deferred_cuda(const mv_qkv_args *a, void *stream, const mv_cuda_device *dev) {
    cudaStream_t s = static_cast<cudaStream_t>(stream);
    return a->in.dtype == MV_FLOAT16 ? launch_deferred_rows<__half>(*a, s, *dev)
                                     : launch_deferred_rows<__nv_bfloat16>(*a, s, *dev);
}
