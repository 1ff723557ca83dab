/*
 * stream_common.cuh: what the three W-stream kernels share (register_stream.cu, bulk_stream.cu,
 * deferred_stream.cu): the mma operand layout, the staging of the normalized input, the reduction
 * of the warps' partial tiles, and the tensor-copy geometry of the two Hopper kernels.
 *
 * At decode M the op is a stream over W: every weight byte is read once and used M times, so
 * these kernels are built to keep DRAM busy, not the ALUs. Shared facts:
 * - Output features are cut into tiles of 16 (one mma.m16n8k16 "A" operand); tokens are the mma's
 *   N (8 per token tile). Within a tile the 8 warps split K and the block sums their partials.
 * - W is the A operand. A lane loads 8 consecutive k of two W rows with one 16-byte load each,
 *   instead of the 2-element pieces the A fragment layout names: a permutation of k inside each
 *   32-wide chunk. Reading the x operand with the same permutation leaves every dot product
 *   unchanged. For lane (g, t) = (lane / 4, lane % 4) and mma step s in {0, 1} of a chunk:
 *   fragment k {2t, 2t+1} -> chunk k 8t + 4s + {0, 1}; fragment k {2t+8, 2t+9} -> 8t + 4s + {2, 3}.
 * - The staged input is y = gamma * (s * rrms) rounded to the dtype, exactly what an unfused
 *   rms_norm produces (staging gamma * s and deferring rrms could overflow fp16 where y cannot).
 * - Weights are constants of the model: with PDL a kernel may request W before waiting for the
 *   previous kernel; x, residual and every write come after the wait.
 * Measurements behind each choice: docs/design.md.
 */
#ifndef MINIVLLM_QKV_STREAM_COMMON_CUH
#define MINIVLLM_QKV_STREAM_COMMON_CUH

#include <cstdint>

#include <cuda.h> /* CUtensorMap and its enums (types only: the encoder is found at run time) */

#include "cuda/common.cuh"
#include "cuda/fused_rms_norm_qkv/paths.h"
#include "cuda/hopper.cuh"

namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kTileFeatures = 16; /* mma M */
constexpr int kChunkK = 32;       /* k per warp per chunk: 4 lanes x 8 consecutive k */
constexpr int kBatch = 4;         /* chunks whose W loads are issued together */
constexpr int kVec = 8;           /* 16-byte vectors of 16-bit elements */
constexpr int kMaxTokens = mv_qkv_stream_max_rows; /* paths.h */

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

/* 8 consecutive elements as they are in memory (one 16-byte load where the caller proved
   alignment), and back to floats. */
template <typename T>
__device__ __forceinline__ uint4 load8_raw(const T *p, bool vector_ok) {
    if (vector_ok) return *reinterpret_cast<const uint4 *>(p);
    uint4 raw;
    T *e = reinterpret_cast<T *>(&raw);
#pragma unroll
    for (int i = 0; i < kVec; ++i) e[i] = p[i];
    return raw;
}
template <typename T>
__device__ __forceinline__ void unpack8(const uint4 &raw, float out[kVec]) {
    const T *e = reinterpret_cast<const T *>(&raw);
#pragma unroll
    for (int i = 0; i < kVec; ++i) out[i] = mv_to_float(e[i]);
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

/* stage_row_sum for a warp's two rows m[0 .. count) (count <= 2) at once, lane `lane` taking
   vectors lane, lane + 32, ...: kStageUnroll loads of both rows are issued before any is used, and
   each row's sum runs in stage_row_sum's order. */
constexpr int kRowPair = 2;
template <typename T, bool kHasResidual, int kStageUnroll>
__device__ __forceinline__ void stage_row_pair_sum(const mv_qkv_args &args, const mv_stream_flags &flags, T *xs,
                                                   int xs_stride, const int (&m)[kRowPair], int count, int lane,
                                                   float (&sum_sq)[kRowPair]) {
    const mv_norm_input &in = args.in;
    const int vecs = static_cast<int>(in.hidden) / kVec;
#pragma unroll
    for (int r = 0; r < kRowPair; ++r) sum_sq[r] = 0.0f;
    for (int v0 = lane; v0 < vecs; v0 += kStageUnroll * 32) {
        /* raw vectors until used: half the registers of floats, so two rows fit where one did */
        uint4 s[kRowPair][kStageUnroll], res[kRowPair][kStageUnroll];
#pragma unroll
        for (int r = 0; r < kRowPair; ++r)
#pragma unroll
            for (int u = 0; u < kStageUnroll; ++u) {
                const int v = v0 + u * 32;
                if (r < count && v < vecs) {
                    s[r][u] = load8_raw(static_cast<const T *>(in.x) + m[r] * in.x_stride + v * kVec, flags.x_vec);
                    if (kHasResidual)
                        res[r][u] = load8_raw(static_cast<const T *>(in.residual) + m[r] * in.residual_stride + v * kVec,
                                              flags.residual_vec);
                }
            }
#pragma unroll
        for (int r = 0; r < kRowPair; ++r) {
            if (r >= count) break;
            T *residual_out = static_cast<T *>(in.residual_out) + m[r] * in.residual_out_stride;
#pragma unroll
            for (int u = 0; u < kStageUnroll; ++u) {
                const int v = v0 + u * 32;
                if (v >= vecs) break;
                float f[kVec];
                unpack8<T>(s[r][u], f);
                if (kHasResidual) {
                    float fr[kVec];
                    unpack8<T>(res[r][u], fr);
#pragma unroll
                    for (int i = 0; i < kVec; ++i) f[i] = mv_round_to<T>(f[i] + fr[i]);
                    if (flags.residual_in_kernel && (static_cast<int64_t>(m[r]) * vecs + v) % gridDim.x == blockIdx.x)
                        store8(residual_out + v * kVec, flags.residual_out_vec, f);
                    store8(xs + m[r] * xs_stride + v * kVec, true, f); /* exact: f holds T values */
                } else {
                    *reinterpret_cast<uint4 *>(xs + m[r] * xs_stride + v * kVec) = s[r][u];
                }
#pragma unroll
                for (int i = 0; i < kVec; ++i) sum_sq[r] += f[i] * f[i];
            }
        }
    }
}

/* stage_row_scale for the two rows of stage_row_pair_sum, each gamma vector read once for both. */
template <typename T, int kStageUnroll>
__device__ __forceinline__ void stage_row_pair_scale(const mv_qkv_args &args, const mv_stream_flags &flags, T *xs,
                                                     int xs_stride, const int (&m)[kRowPair], int count,
                                                     const float (&rrms)[kRowPair], int lane) {
    const int vecs = static_cast<int>(args.in.hidden) / kVec;
    const T *gamma = static_cast<const T *>(args.in.norm_weight);
    for (int v0 = lane; v0 < vecs; v0 += kStageUnroll * 32) {
        float gm[kStageUnroll][kVec];
#pragma unroll
        for (int u = 0; u < kStageUnroll; ++u)
            if (v0 + u * 32 < vecs) load8(gamma + (v0 + u * 32) * kVec, flags.gamma_vec, gm[u]);
#pragma unroll
        for (int r = 0; r < kRowPair; ++r) {
            if (r >= count) break;
#pragma unroll
            for (int u = 0; u < kStageUnroll; ++u) {
                const int v = v0 + u * 32;
                if (v >= vecs) break;
                T *staged = xs + m[r] * xs_stride + v * kVec;
                float s[kVec];
                load8(staged, true, s);
#pragma unroll
                for (int i = 0; i < kVec; ++i) s[i] = gm[u][i] * (s[i] * rrms[r]);
                store8(staged, true, s);
            }
        }
    }
}

/* Stage the normalized input of a call of more than kWarps rows (at most 2 * kWarps, the W
   streams' second token tile), as stage_normalized_input does but each warp's two rows (warp and
   warp + kWarps) at once: both rows' loads in flight together, raw 16-byte vectors until used, each
   gamma vector read once for both, no barrier. The same bits as stage_normalized_input. The
   one-token-tile kernels keep that function's float form: this one's, bit-identical, ran 0.05-0.4
   us slower there (dev/logs/stream-staging-nvidia-h200-h100-2026-11-28.log). */
template <typename T, bool kHasResidual, int kStageUnroll>
__device__ __forceinline__ void stage_normalized_row_pairs(const mv_qkv_args &args, const mv_stream_flags &flags, T *xs,
                                                           int xs_stride, int warp, int lane) {
    static_assert(kMaxTokens <= 2 * kWarps, "a warp stages at most two rows");
    const int rows = static_cast<int>(args.in.rows);
    const int m[kRowPair] = {warp, warp + kWarps};
    const int count = m[1] < rows ? 2 : 1; /* rows > kWarps */
    float sum_sq[kRowPair], rrms[kRowPair];
    stage_row_pair_sum<T, kHasResidual, kStageUnroll>(args, flags, xs, xs_stride, m, count, lane, sum_sq);
    const float inv_hidden = 1.0f / static_cast<float>(args.in.hidden);
#pragma unroll
    for (int r = 0; r < kRowPair; ++r) rrms[r] = rsqrtf(mv_warp_sum(sum_sq[r]) * inv_hidden + args.in.eps);
    stage_row_pair_scale<T, kStageUnroll>(args, flags, xs, xs_stride, m, count, rrms, lane);
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

/* ---- The Hopper kernels' tensor-copy geometry (bulk_stream.cu, deferred_stream.cu) ---------------
   W as the copy engine sees it: [N][H / 64][64], a stage a box of features x stage_lines lines of
   64 k (128 bytes), stored line after line with the 128-byte swizzle (16-byte chunk j of line L at
   chunk j ^ (L % 8)). With stage_lines = 4 mod 8, the two rows a quarter-warp reads sit in opposite
   halves of the swizzle: no bank conflicts. Rows past N and k past H are filled with zeros by the
   copy itself. */
constexpr int kLineK = 64;                             /* k per 128-byte line of a stage */
constexpr int kLineBytes = kLineK * 2;
constexpr int kStageLineChoices[] = {36, 28, 20, 12, 4}; /* each 4 mod 8 (see above), widest first */
constexpr int kMaxStages = 12;
constexpr int kBulkThreads = kThreads + 32;            /* 8 consumer warps + 1 producer warp */
constexpr int kMinFeaturesPerBlock = 8;
constexpr int kSwizzleAlign = 1024;                    /* the 128-byte swizzle repeats every 1 KiB */

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
   lines x 64 k (cached per layer: device.h). */
bool encode_weight_map(CUtensorMap *map, const mv_qkv_args &a, int64_t cols, int stage_lines,
                       int box_features = kTileFeatures) {
    const cuuint64_t dims[3] = {static_cast<cuuint64_t>(kLineK), static_cast<cuuint64_t>(a.in.hidden / kLineK),
                                static_cast<cuuint64_t>(cols)};
    const cuuint64_t strides[2] = {static_cast<cuuint64_t>(kLineBytes), static_cast<cuuint64_t>(a.w_stride_n) * 2};
    const cuuint32_t box[3] = {static_cast<cuuint32_t>(kLineK), static_cast<cuuint32_t>(stage_lines),
                               static_cast<cuuint32_t>(box_features)};
    return mv_swizzled_tensor_map(map, a.in.dtype == MV_BFLOAT16, 3, a.w, dims, strides, box, true);
}

} // namespace

#endif /* MINIVLLM_QKV_STREAM_COMMON_CUH */
