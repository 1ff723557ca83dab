/*
 * fused_rms_norm_qkv_stream.cu: the skinny-M path of qkv = rms_norm(x (+ residual)) . W^T
 * (decode and small batches, M <= 64, fp16/bf16). At such M the op is a stream over W: every weight
 * byte is read once and used M times, so the kernel is built to keep DRAM busy, not the ALUs.
 *
 * - Each block first stages the whole (tiny) normalized input y = gamma * (s * rrms) in shared
 *   memory, rounded to the dtype: tensor cores take 16-bit operands, and this is exactly the y an
 *   unfused rms_norm would produce. (Staging s * gamma and deferring rrms to the epilogue would
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
 *
 * Residual: with a residual, s = x + residual is rounded to the dtype (the model's new residual).
 * Every block stages all of s, so unless residual_out is residual itself (in-place form) the blocks
 * share the residual_out writes (each 8-element piece written by exactly one block). In the
 * in-place form no block may write before all have read, so the caller launches the separate
 * store kernel afterwards (stream order) instead.
 */
#include <cstdint>

#include "cuda_common.cuh"
#include "fused_rms_norm_qkv_paths.h"

namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kTileFeatures = 16; /* mma M */
constexpr int kChunkK = 32;       /* k per warp per chunk: 4 lanes x 8 consecutive k */
constexpr int kBatch = 4;         /* chunks whose W loads are issued together */
constexpr int kVec = 8;           /* 16-byte vectors of 16-bit elements */
constexpr int kMaxTokens = 64;

template <typename T>
__device__ __forceinline__ void mma_16x8x16(float c[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                            uint32_t b0, uint32_t b1);

template <>
__device__ __forceinline__ void mma_16x8x16<__nv_bfloat16>(float c[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                                           uint32_t a3, uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

template <>
__device__ __forceinline__ void mma_16x8x16<__half>(float c[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                                    uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

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

    /* Stage y = gamma * (s * rrms), rounded to the dtype, for every row: one warp per row, 8
       elements per lane per step. Pass 1 stores s and sums s^2; pass 2 rescales what the same
       lane stored, so only the warp's own lanes touch its row and no block barrier is needed. */
    {
        const T *x = static_cast<const T *>(in.x);
        const T *residual = static_cast<const T *>(in.residual);
        T *residual_out = static_cast<T *>(in.residual_out);
        const T *gamma = static_cast<const T *>(in.norm_weight);
        const int vecs = hidden / kVec;
        for (int m = warp; m < rows; m += kWarps) {
            T *staged = xs + m * geo.xs_stride;
            float sum_sq = 0.0f;
            for (int v = lane; v < vecs; v += 32) {
                const int64_t k = static_cast<int64_t>(v) * kVec;
                float s[kVec];
                load8(x + m * in.x_stride + k, flags.x_vec, s);
                if (kHasResidual) {
                    float r[kVec];
                    load8(residual + m * in.residual_stride + k, flags.residual_vec, r);
#pragma unroll
                    for (int i = 0; i < kVec; ++i) s[i] = mv_round_to<T>(s[i] + r[i]);
                    if (flags.residual_in_kernel &&
                        (static_cast<int64_t>(m) * vecs + v) % gridDim.x == blockIdx.x)
                        store8(residual_out + m * in.residual_out_stride + k, flags.residual_out_vec, s);
                }
#pragma unroll
                for (int i = 0; i < kVec; ++i) sum_sq += s[i] * s[i];
                store8(staged + k, true, s); /* exact: s is a T value */
            }
            const float rrms = rsqrtf(mv_warp_sum(sum_sq) / static_cast<float>(hidden) + in.eps);
            for (int v = lane; v < vecs; v += 32) {
                const int64_t k = static_cast<int64_t>(v) * kVec;
                float s[kVec], gm[kVec];
                load8(staged + k, true, s);
                load8(gamma + k, flags.gamma_vec, gm);
#pragma unroll
                for (int i = 0; i < kVec; ++i) s[i] = gm[i] * (s[i] * rrms);
                store8(staged + k, true, s);
            }
        }
    }
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
                const bool k_ok = k < hidden;
#pragma unroll
                for (int tt = 0; tt < kTokenTiles; ++tt) {
                    const int token = tt * 8 + g;
                    uint4 yv = make_uint4(0, 0, 0, 0);
                    if (k_ok && token < rows) yv = *reinterpret_cast<const uint4 *>(xs + token * geo.xs_stride + k);
#pragma unroll
                    for (int s = 0; s < 2; ++s)
                        mma_16x8x16<T>(acc[tt], word(cur_a[b], 2 * s), word(cur_b[b], 2 * s), word(cur_a[b], 2 * s + 1),
                                       word(cur_b[b], 2 * s + 1), word(yv, 2 * s), word(yv, 2 * s + 1));
                }
            }
#pragma unroll
            for (int b = 0; b < kBatch; ++b) {
                cur_a[b] = next_a[b];
                cur_b[b] = next_b[b];
            }
        }

        /* Sum the warps' partial tiles. Accumulator r of lane (g, t), token tile tt, holds
           feature g + 8 * (r / 2) and token 8 * tt + 2 * t + r % 2. */
        __syncthreads(); /* the previous tile's reads of partial are done */
#pragma unroll
        for (int tt = 0; tt < kTokenTiles; ++tt)
#pragma unroll
            for (int r = 0; r < 4; ++r) partial[((warp * kTokenTiles + tt) * 4 + r) * 32 + lane] = acc[tt][r];
        __syncthreads();
        for (int id = threadIdx.x; id < kTokenTiles * 4 * 32; id += kThreads) {
            const int out_lane = id & 31, r = (id >> 5) & 3, tt = id >> 7;
            const int token = tt * 8 + 2 * (out_lane & 3) + (r & 1);
            const int64_t n = tile * kTileFeatures + (out_lane >> 2) + 8 * (r >> 1);
            if (token >= rows || n >= geo.cols) continue;
            float sum = 0.0f;
#pragma unroll
            for (int w = 0; w < kWarps; ++w) sum += partial[((w * kTokenTiles + tt) * 4 + r) * 32 + out_lane];
            T *dst;
            if (n < args.q_cols)
                dst = static_cast<T *>(args.q) + token * args.q_stride + n;
            else if (n < args.q_cols + args.kv_cols)
                dst = static_cast<T *>(args.k) + token * args.k_stride + (n - args.q_cols);
            else
                dst = static_cast<T *>(args.v) + token * args.v_stride + (n - args.q_cols - args.kv_cols);
            mv_store_float(dst, sum);
        }
    }
}

/* Staged rows (pitch = 64 mod 128 bytes: the 8 rows read by one mma step land in distinct banks)
   and the warps' partial tiles. */
size_t row_pitch_bytes(int hidden) { return static_cast<size_t>(hidden * 2 + 127) / 128 * 128 + 64; }
size_t shared_bytes(int rows, int hidden, int token_tiles) {
    return static_cast<size_t>(rows) * row_pitch_bytes(hidden) + static_cast<size_t>(kWarps) * token_tiles * 4 * 32 * 4;
}

bool aligned16(const void *p, int64_t stride_elems, int64_t elem_size) {
    return (reinterpret_cast<uintptr_t>(p) % 16 == 0) && ((stride_elems * elem_size) % 16 == 0);
}

template <typename T, int kTokenTiles>
int launch(const mv_qkv_args &a, cudaStream_t stream, bool residual_in_kernel, int max_shared_bytes) {
    const int rows = static_cast<int>(a.in.rows);
    const int hidden = static_cast<int>(a.in.hidden);
    StreamGeometry geo;
    geo.cols = a.q_cols + 2 * a.kv_cols;
    geo.tiles = (geo.cols + kTileFeatures - 1) / kTileFeatures;
    geo.chunks = (hidden + kChunkK - 1) / kChunkK;
    const int chunks_per_warp = (geo.chunks + kWarps - 1) / kWarps;
    geo.batches = (chunks_per_warp + kBatch - 1) / kBatch;
    geo.xs_stride = static_cast<int>(row_pitch_bytes(hidden) / 2);

    mv_stream_flags flags;
    flags.x_vec = aligned16(a.in.x, a.in.x_stride, 2);
    flags.residual_vec = a.in.residual != nullptr && aligned16(a.in.residual, a.in.residual_stride, 2);
    flags.residual_out_vec = a.in.residual_out != nullptr && aligned16(a.in.residual_out, a.in.residual_out_stride, 2);
    flags.gamma_vec = aligned16(a.in.norm_weight, 0, 2);
    flags.residual_in_kernel = residual_in_kernel;

    const size_t smem = shared_bytes(rows, hidden, kTokenTiles);
    if (smem > static_cast<size_t>(max_shared_bytes)) return static_cast<int>(cudaErrorInvalidValue);
    void (*kernel)(mv_qkv_args, StreamGeometry, mv_stream_flags) =
        a.in.residual != nullptr ? fused_rms_norm_qkv_stream_kernel<T, kTokenTiles, true>
                                 : fused_rms_norm_qkv_stream_kernel<T, kTokenTiles, false>;
    int device = 0, sms = 0, blocks_per_sm = 0;
    cudaError_t err = cudaGetDevice(&device);
    if (err == cudaSuccess) err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
    if (err == cudaSuccess && smem > 48 * 1024)
        err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (err == cudaSuccess)
        err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks_per_sm, kernel, kThreads, smem);
    if (err != cudaSuccess) return static_cast<int>(err);
    if (blocks_per_sm < 1) return static_cast<int>(cudaErrorInvalidConfiguration);
    const int64_t resident = static_cast<int64_t>(blocks_per_sm) * sms;
    const unsigned grid = static_cast<unsigned>(geo.tiles < resident ? geo.tiles : resident);
    kernel<<<grid, kThreads, smem, stream>>>(a, geo, flags);
    return static_cast<int>(cudaGetLastError());
}

} // namespace

/* Whether the stream path takes this call; see fused_rms_norm_qkv_paths.h. */
extern "C" int mv_qkv_stream_supported(const mv_qkv_args *a, int max_shared_bytes) {
    if (a->in.dtype == MV_FLOAT32) return 0;
    if (a->in.rows < 1 || a->in.rows > kMaxTokens) return 0;
    if (a->in.hidden % kVec != 0 || a->in.hidden > (1 << 20)) return 0;
    if (a->w_stride_k != 1 || !aligned16(a->w, a->w_stride_n, 2)) return 0;
    const int64_t tiles = (a->in.rows + 7) / 8;
    const int token_tiles = tiles <= 1 ? 1 : tiles <= 2 ? 2 : tiles <= 4 ? 4 : 8;
    return shared_bytes(static_cast<int>(a->in.rows), static_cast<int>(a->in.hidden), token_tiles) <=
           static_cast<size_t>(max_shared_bytes);
}

extern "C" int mv_qkv_stream_cuda(const mv_qkv_args *a, void *stream, int residual_in_kernel, int max_shared_bytes) {
    cudaStream_t s = static_cast<cudaStream_t>(stream);
    const int64_t token_tiles = (a->in.rows + 7) / 8;
    const bool ok = residual_in_kernel != 0;
    switch (a->in.dtype) {
    case MV_FLOAT16:
        if (token_tiles <= 1) return launch<__half, 1>(*a, s, ok, max_shared_bytes);
        if (token_tiles <= 2) return launch<__half, 2>(*a, s, ok, max_shared_bytes);
        if (token_tiles <= 4) return launch<__half, 4>(*a, s, ok, max_shared_bytes);
        return launch<__half, 8>(*a, s, ok, max_shared_bytes);
    case MV_BFLOAT16:
        if (token_tiles <= 1) return launch<__nv_bfloat16, 1>(*a, s, ok, max_shared_bytes);
        if (token_tiles <= 2) return launch<__nv_bfloat16, 2>(*a, s, ok, max_shared_bytes);
        if (token_tiles <= 4) return launch<__nv_bfloat16, 4>(*a, s, ok, max_shared_bytes);
        return launch<__nv_bfloat16, 8>(*a, s, ok, max_shared_bytes);
    default:
        return static_cast<int>(cudaErrorInvalidValue);
    }
}
