/*
 * engine.cu: the Hopper GEMM engine of fused RMSNorm + QKV (sm_90a, fp16/bf16):
 *     q, k, v = split(rms_norm(x) . W^T)
 * as one persistent, warp-specialized TMA + wgmma kernel with stream-K load balance.
 *
 * - Swapped operands: a tile is 128 output features (wgmma's M, two consumer warpgroups of 64) by
 *   T tokens (wgmma's N, T in 8..128), so decode streams W with no padding of the token side
 *   beyond the next multiple of 8 (a power of two here).
 * - Deferred norm (FlashNorm): rms_norm(x) . W^T = diag(rrms) . ((gamma * x) . W^T). Helper warps
 *   rewrite each staged x tile in shared memory as gamma * x (one rounding to the dtype; in fp16
 *   scaled by 2^-e, e from max |gamma|, so it cannot overflow) while summing x^2 per token; the
 *   epilogue multiplies by rrms (and 2^e) after the k sum is complete.
 * - A stage is kLines 128-byte lines of k (W in 64-row boxes, the weight-stream probe's faster
 *   shapes: dev/logs/weight-stream-probe-nvidia-h200-2026-11-22.log).
 * - Cluster split: where every tile fits one wave, tile c / S goes to the S CTAs of a thread-block
 *   cluster, each taking 1/S of its k stages; the others store their float parts into the first
 *   CTA's shared memory (distributed shared memory) and arrive on its barrier, and it adds them in
 *   rank order and stores q, k, v: no global round trips. S comes from choose_split's cost model.
 * - Stream-K (elsewhere): the (tile, k stage) iterations are split into equal contiguous ranges, one per
 *   CTA (one CTA per SM), so every shape fills every SM. A tile cut between CTAs is finished by
 *   its first CTA, the one holding its k stages from 0: only a range's first segment can start
 *   inside a tile, so the later parts are done early in their CTAs' ranges, written to a workspace
 *   and counted in on the tile's counter, while the tile's head is its CTA's last segment. That
 *   CTA keeps its products in registers, waits for the count, adds the others' parts in CTA order
 *   (a fixed order, so the bits do not depend on timing), resets the counter and stores q, k, v.
 *   A CTA waits only on later CTAs' first segments, which wait on nothing, and the grid is at
 *   most one CTA per SM, so the wait ends once those CTAs run.
 * - Residual (the attention prologue's form only): the producer copies the residual's tile beside
 *   x's; the helpers form s = x + residual (rounded to the dtype) in place of x, and the CTAs of
 *   the first feature tile store s to residual_out (each (token, k) is in exactly one of their
 *   stages). Where residual_out is residual (the in-place form) the kernel cannot store it while
 *   other CTAs still read residual: the caller's store kernel follows instead.
 * - Prologue epilogue (attention_prologue): where heads do not straddle tiles (head_dim divides
 *   128), the finished tile goes to shared memory in float32 and the consumer warps run each
 *   (token, head) of it through finish_head_regs (in registers, where the head allows) or
 *   finish_head (prologue_head.cuh): bias, per-head RMSNorm, RoPE and the store to q or the KV
 *   cache, on the unrounded products; no second kernel.
 * - PDL: the producer requests the first stage of W (a weight) before waiting for the previous
 *   kernel; x, the outputs and the workspace are touched only after the wait.
 * The stream-K workspace (float partials and zeroed tile counters) belongs to the (device, stream) pair,
 * allocated on a stream's first call and grown when a call needs more; never freed, since a
 * captured graph may hold it.
 */
#include <atomic>
#include <climits>
#include <cstdint>
#include <mutex>
#include <type_traits>
#include <vector>

#include <cuda.h> /* CUtensorMap (types only) */

#include "cuda/common.cuh"
#include "cuda/fused_rms_norm_qkv/paths.h"
#include "cuda/hopper.cuh"
#include "cuda/prologue_head.cuh"
#include "cuda/wgmma_ops.cuh"

namespace {

constexpr int kLines = 2;                   /* 128-byte lines of k per stage (W and x) */
constexpr int kLineK = 64;                  /* k per line: one 128-byte swizzle line per row */
constexpr int kStageK = kLineK * kLines;
constexpr int kLineBytes = 128;
constexpr int kFeatures = mv_qkv_engine_tile_features; /* per tile: one m64 per consumer warpgroup */
constexpr int kBoxRows = 64;                /* W rows per copy: the probe's faster box */
constexpr int kGroupThreads = 128;
constexpr int kConsumers = 2;
constexpr int kConsumerThreads = kGroupThreads * kConsumers;
constexpr int kHelpers = 96;                /* warps 1-3 of the first warpgroup; warp 0 copies */
constexpr int kThreads = kGroupThreads * (1 + kConsumers);
constexpr int kMaxTokens = 128;          /* 256 spills the consumers' accumulators */
constexpr int kMaxStages = 12;
constexpr int kSwizzleAlign = 1024;         /* the 128-byte swizzle repeats every 8 lines */
constexpr int kWLineBytes = kFeatures * kLineBytes;
constexpr int kWBytes = kWLineBytes * kLines;
constexpr int kMaxCounters = 1 << 16;       /* tiles per call (one counter each) */
static_assert(kLines == 1 || kLines == 2 || kLines == 4, "a token's cells must fit one warp");

struct EngineParams {
    int rows, hidden, cols, q_cols, kv_cols;
    int kiters;  /* k stages per tile */
    int m_tiles; /* token tiles; tile t is token tile t % m_tiles, feature tile t / m_tiles */
    int stages;
    int64_t total; /* tiles * kiters */
    float eps;
    const void *gamma;
    void *q, *k, *v;
    int64_t q_stride, k_stride, v_stride;
    float *partials; /* [CTAs][kFeatures * T + T]: a range's first segment, where it is a later part */
    int *counters;   /* [tiles], zero between calls */
    int split;       /* 0: stream-K; S >= 1: S CTAs (one cluster) per tile, each 1/S of its k stages */
    int slot;        /* bytes per ring stage: W, x and (with a residual) the residual's tile */
    int residual;    /* 1: the residual's tile follows x's in each stage */
    void *residual_out; /* NULL: not stored here (no residual, or the in-place form) */
    int64_t residual_out_stride;
    int prologue;    /* 1: the attention prologue's epilogue (the kernel's mv_prologue_args) */
    int fp8;         /* the prologue's cache holds e4m3 */
    int ep_offset;   /* bytes from the tail to the prologue's float tile */
    int ep_vec;      /* V where every head's epilogue runs in registers (finish_head_regs), else 0 */
};

/* Shared memory after the ring (bytes), before the cluster's parts. */
template <int kTokens>
constexpr int tail_bytes() {
    return (kMaxStages * kStageK * 2 + (3 * kMaxStages + 4) * 8 + (3 * kTokens + 4) * 4 + 15) / 16 * 16;
}
template <int kTokens>
constexpr int x_bytes() {
    return kTokens * kLineBytes * kLines;
}
template <int kTokens>
constexpr int slot_bytes(bool residual) {
    return kWBytes + x_bytes<kTokens>() * (residual ? 2 : 1);
}
/* The prologue's tile of float results: [kTokens][kEpStride] (padded against bank conflicts). */
constexpr int kEpStride = kFeatures + 8;
template <int kTokens>
constexpr int ep_bytes() {
    return kTokens * kEpStride * 4;
}
template <int kTokens>
constexpr int partial_floats() {
    return kFeatures * kTokens + kTokens;
}
/* The most CTAs that split one tile in a cluster: its first CTA holds the others' parts in shared
   memory, at most kClusterPartBytes of them (the rest stays the ring's). */
constexpr int kClusterPartBytes = 64 * 1024;
constexpr int kMaxCluster = mv_max_cluster;
template <int kTokens>
constexpr int max_split() {
    return 1 + kClusterPartBytes / (partial_floats<kTokens>() * 4) < kMaxCluster
               ? 1 + kClusterPartBytes / (partial_floats<kTokens>() * 4)
               : kMaxCluster;
}

/* First iteration of CTA c's range. */
__host__ __device__ __forceinline__ int64_t range_begin(int64_t total, int ctas, int c) {
    return total * c / ctas;
}

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)

/* One tile's part of a CTA's range: k stages [k0, k1) of tile. */
struct Segment {
    int tile, k0, k1;
};
__device__ __forceinline__ Segment segment_at(int64_t it, int64_t it_end, int kiters) {
    Segment g;
    g.tile = static_cast<int>(it / kiters);
    g.k0 = static_cast<int>(it - static_cast<int64_t>(g.tile) * kiters);
    const int64_t room = it_end - it;
    g.k1 = room < kiters - g.k0 ? g.k0 + static_cast<int>(room) : kiters;
    return g;
}

/* The CTA whose range holds iteration it (ranges are non-empty: ctas <= total). */
__device__ __forceinline__ int range_owner(int64_t total, int ctas, int64_t it) {
    int c = static_cast<int>(it * ctas / total);
    while (c + 1 < ctas && range_begin(total, ctas, c + 1) <= it) ++c;
    while (c > 0 && range_begin(total, ctas, c) > it) --c;
    return c;
}

/* 2^e for the fp16 operand scale: the least power of two above max |gamma| where that exceeds 1
   (as the deferred stream: docs/numerics.md). */
__device__ __forceinline__ int gamma_exponent(float most) {
    int e = 0;
    if (most > 1.0f && most <= 65504.0f) frexpf(most, &e);
    return e;
}

template <typename T>
__device__ __forceinline__ uint32_t mul2(uint32_t a, uint32_t b);
template <>
__device__ __forceinline__ uint32_t mul2<__nv_bfloat16>(uint32_t a, uint32_t b) {
    __nv_bfloat162 r = __hmul2(*reinterpret_cast<const __nv_bfloat162 *>(&a), *reinterpret_cast<const __nv_bfloat162 *>(&b));
    return *reinterpret_cast<uint32_t *>(&r);
}
template <>
__device__ __forceinline__ uint32_t mul2<__half>(uint32_t a, uint32_t b) {
    __half2 r = __hmul2(*reinterpret_cast<const __half2 *>(&a), *reinterpret_cast<const __half2 *>(&b));
    return *reinterpret_cast<uint32_t *>(&r);
}

template <typename T>
__device__ __forceinline__ uint32_t pack2(float a, float b);
template <>
__device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float a, float b) {
    __nv_bfloat162 v = __floats2bfloat162_rn(a, b);
    return *reinterpret_cast<uint32_t *>(&v);
}
template <>
__device__ __forceinline__ uint32_t pack2<__half>(float a, float b) {
    __half2 v = __floats2half2_rn(a, b);
    return *reinterpret_cast<uint32_t *>(&v);
}

/* Ask L1 for what the prologue's epilogue of tile reads besides the tile itself (each token's
   position, slot and cos/sin row; the tile's bias; the q/k norm weights), while the main loop
   runs: its chain of dependent loads (bias, weights, position, then cos/sin, slot) then hits L1
   instead of making one L2 round trip after another. All of it is read-only in this kernel.
   Called by the consumers after their PDL wait (positions and slots may come from the previous
   kernel). */
template <int kTokens>
__device__ __forceinline__ void prefetch_epilogue(const mv_prologue_args &pa, const EngineParams &p, int tile,
                                                  int ctid) {
    const int m0 = (tile % p.m_tiles) * kTokens, f_tile = (tile / p.m_tiles) * kFeatures;
    /* the 128-byte lines holding [base, base + bytes), each asked for at an address inside the
       range; caller `part` of `parts` takes every parts-th line */
    auto lines = [](const void *base, int64_t bytes, int part, int parts) {
        const uintptr_t first = reinterpret_cast<uintptr_t>(base), last = first + static_cast<uintptr_t>(bytes) - 1;
        for (uintptr_t line = (first & ~uintptr_t{127}) + static_cast<uintptr_t>(part) * 128; line <= last;
             line += static_cast<uintptr_t>(parts) * 128)
            mv_prefetch_l1(reinterpret_cast<const void *>(line < first ? first : line));
    };
    if (ctid < kTokens) {
        const int64_t m = m0 + ctid;
        if (m >= p.rows) return;
        if (pa.slot_mapping != nullptr)
            mv_prefetch_l1(static_cast<const char *>(pa.slot_mapping) +
                           m * pa.slot_stride * (pa.slot_dtype == MV_INT32 ? 4 : 8));
        if (pa.positions != nullptr) {
            const int64_t pos = load_index(pa.positions_dtype, pa.positions, m * pa.positions_stride);
            if (pos >= 0 && pos < pa.max_position) {
                const int64_t el = pa.cos_sin_dtype == MV_FLOAT32 ? 4 : 2;
                const char *row = static_cast<const char *>(pa.cos_sin) + pos * pa.cos_sin_stride * el;
                lines(row, pa.rotary_dim * el, 0, 1);
            }
        }
    } else if (ctid >= kConsumerThreads - 32) {
        const int lane = ctid % 32;
        const int features = p.cols - f_tile < kFeatures ? p.cols - f_tile : kFeatures;
        if (pa.bias != nullptr)
            lines(static_cast<const char *>(pa.bias) + static_cast<int64_t>(f_tile) * 2, features * 2, lane, 32);
        const int64_t w_bytes = pa.head_dim * 2;
        if (pa.q_norm_weight != nullptr) lines(pa.q_norm_weight, w_bytes, lane, 32);
        if (pa.k_norm_weight != nullptr) lines(pa.k_norm_weight, w_bytes, lane, 32);
    }
}

#endif /* __CUDA_ARCH_FEAT_SM90_ALL */

template <typename T, int kTokens>
__global__ void __launch_bounds__(kThreads, 1)
    engine_kernel(const __grid_constant__ CUtensorMap x_map, const __grid_constant__ CUtensorMap w_map,
                  const __grid_constant__ CUtensorMap r_map, EngineParams p, const mv_prologue_args pa) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    constexpr bool kScaled = std::is_same<T, __half>::value;
    const int slot_size = p.slot;
    constexpr int kX = x_bytes<kTokens>();
    constexpr int kAcc = kTokens / 2;
    unsigned char *ring = mv_swizzle_aligned_shared();
    const int stages = p.stages;
    unsigned char *tail = ring + static_cast<size_t>(stages) * slot_size;
    T *gamma_s = reinterpret_cast<T *>(tail); /* [kMaxStages][kStageK] */
    uint64_t *full = reinterpret_cast<uint64_t *>(tail + kMaxStages * kStageK * 2);
    uint64_t *ready = full + kMaxStages;
    uint64_t *empty = ready + kMaxStages;
    uint64_t *sums_full = empty + kMaxStages; /* [2] */
    uint64_t *sums_empty = sums_full + 2;     /* [2] */
    float *row_sq = reinterpret_cast<float *>(sums_empty + 2); /* [2][kTokens] */
    float *tot_sq = row_sq + 2 * kTokens;                      /* [kTokens] */
    float *scalars = tot_sq + kTokens; /* [0]: max |gamma| (bits) */
    float *cluster_parts = reinterpret_cast<float *>(tail + tail_bytes<kTokens>()); /* [split - 1][P] */

    const int ctas = static_cast<int>(gridDim.x), c = static_cast<int>(blockIdx.x);
    const int kiters = p.kiters;
    int64_t it_begin, it_end;
    if (p.split > 0) { /* tile c / S, k stages [r kiters / S, (r + 1) kiters / S) */
        const int64_t tile = c / p.split, r = c % p.split;
        it_begin = tile * kiters + r * kiters / p.split;
        it_end = tile * kiters + (r + 1) * kiters / p.split;
    } else {
        it_begin = range_begin(p.total, ctas, c);
        it_end = range_begin(p.total, ctas, c + 1);
    }

    if (threadIdx.x == 0) {
        for (int s = 0; s < kMaxStages; ++s) {
            mv_mbarrier_init(&full[s], 1);
            mv_mbarrier_init(&ready[s], kHelpers);
            mv_mbarrier_init(&empty[s], kConsumers);
        }
        for (int b = 0; b < 2; ++b) {
            mv_mbarrier_init(&sums_full[b], kHelpers);
            mv_mbarrier_init(&sums_empty[b], kConsumerThreads);
        }
        scalars[0] = 0.0f;
        mv_mbarrier_init_fence();
    }
    __syncthreads();
    if (p.split > 1) mv_cluster_sync(); /* every CTA of the cluster has started before any writes to another */
    mv_pdl_trigger();

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (warp == 0) {
        /* ---- producer: one lane issues every copy ---- */
        if (lane != 0) return;
        const uint64_t w_policy = mv_evict_first_policy(), x_policy = mv_evict_last_policy();
        const int64_t mine = it_end - it_begin;
        auto slot = [&](int64_t i) { return ring + static_cast<size_t>(i % stages) * slot_size; };
        auto arm_w = [&](int64_t i) {
            const int64_t it = it_begin + i;
            const int tile = static_cast<int>(it / kiters), kt = static_cast<int>(it % kiters);
            const int s = static_cast<int>(i % stages);
            const int left = p.hidden - kt * kStageK;
            const unsigned g_bytes = static_cast<unsigned>((left < kStageK ? left : kStageK) * 2);
            mv_mbarrier_arrive_expect_tx(&full[s], slot_size + g_bytes);
#pragma unroll
            for (int l = 0; l < kLines; ++l)
#pragma unroll
                for (int b = 0; b < kFeatures / kBoxRows; ++b)
                    mv_tensor_copy_2d(slot(i) + l * kWLineBytes + b * kBoxRows * kLineBytes, &w_map,
                                      kt * kStageK + l * kLineK, (tile / p.m_tiles) * kFeatures + b * kBoxRows,
                                      &full[s], w_policy);
            mv_bulk_copy(gamma_s + s * kStageK, static_cast<const T *>(p.gamma) + kt * kStageK, g_bytes, &full[s]);
        };
        auto copy_x = [&](int64_t i) {
            const int64_t it = it_begin + i;
            const int tile = static_cast<int>(it / kiters), kt = static_cast<int>(it % kiters);
#pragma unroll
            for (int l = 0; l < kLines; ++l)
                mv_tensor_copy_2d(slot(i) + kWBytes + l * kTokens * kLineBytes, &x_map, kt * kStageK + l * kLineK,
                                  (tile % p.m_tiles) * kTokens, &full[i % stages], x_policy);
            if (p.residual) {
#pragma unroll
                for (int l = 0; l < kLines; ++l)
                    mv_tensor_copy_2d(slot(i) + kWBytes + kX + l * kTokens * kLineBytes, &r_map,
                                      kt * kStageK + l * kLineK, (tile % p.m_tiles) * kTokens, &full[i % stages],
                                      x_policy);
            }
        };
        /* one stage of W before the wait, then x: in a model the kernel before has usually ended by
           the time this one starts, and every W copy armed ahead delays x's (a whole ring of them
           held x back 4-6 us in decode steps: dev/logs/engine-start-2026-11-24.log) */
        if (mine > 0) arm_w(0);
        mv_pdl_wait();
        if (mine > 0) copy_x(0);
        for (int64_t i = 1; i < mine; ++i) {
            mv_mbarrier_wait(&empty[i % stages], static_cast<unsigned>((i / stages - 1) & 1));
            arm_w(i);
            copy_x(i);
        }
        return;
    }

    if (warp < 4) {
        /* ---- helpers: x -> gamma * x in place (the B operand), and x^2 summed per token ---- */
        const int h = threadIdx.x - 32;
        uint32_t scale2 = 0; /* fp16: 2^-e twice */
        if constexpr (kScaled) { /* gamma is a weight: read while the previous kernel ends */
            float most = 0.0f;   /* fmaxf drops NaN; an infinite gamma keeps the scale at 1 */
            const T *g = static_cast<const T *>(p.gamma);
            for (int k = h * 8; k < p.hidden; k += kHelpers * 8) {
                const uint4 gv = *reinterpret_cast<const uint4 *>(g + k);
                const T *ge = reinterpret_cast<const T *>(&gv);
#pragma unroll
                for (int e = 0; e < 8; ++e) most = fmaxf(most, fabsf(mv_to_float(ge[e])));
            }
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) most = fmaxf(most, __shfl_xor_sync(0xffffffffu, most, o));
            if (lane == 0) atomicMax(reinterpret_cast<int *>(&scalars[0]), __float_as_int(most));
            mv_named_barrier(2, kHelpers);
            const float operand_scale = ldexpf(1.0f, -gamma_exponent(scalars[0]));
            scale2 = pack2<T>(operand_scale, operand_scale);
        }
        /* Cell (token r, line l, 16-byte chunk ch) is number (r * kLines + l) * 8 + ch; helper h
           takes cells h + kHelpers * j. kHelpers is a multiple of 8 * kLines, so a helper keeps
           one chunk and line, its cells' tokens step by kHelpers / (8 * kLines), and the 8 * kLines
           lanes of one token are neighbours in a warp: their sums meet by shuffles at the end of
           a segment. Loads are issued before any store (the cells are distinct), so a stage's
           rewrite costs a round of shared-memory latency per batch of cells, not per cell. */
        constexpr int kCells = kTokens * 8 * kLines;
        constexpr int kPer = (kCells + kHelpers - 1) / kHelpers;
        constexpr int kTokenLanes = 8 * kLines;
        constexpr int kTokenStep = kHelpers / kTokenLanes;
        constexpr int kBatch = kPer < 8 ? kPer : 8; /* loads in flight per helper */
        static_assert(kHelpers % kTokenLanes == 0, "helpers must tile whole tokens");
        const int ch = h % 8, line = (h / 8) % kLines, tok0 = h / kTokenLanes;
        float sq[kPer];
#pragma unroll
        for (int j = 0; j < kPer; ++j) sq[j] = 0.0f;
        int64_t i = 0;
        int seg = 0;
        for (int64_t it = it_begin; it < it_end; ++seg) {
            const Segment sg = segment_at(it, it_end, kiters);
            const int k0 = sg.k0, k1 = sg.k1;
            const int m0 = (sg.tile % p.m_tiles) * kTokens;
            /* the first feature tile's CTAs store s (once per (token, k)) */
            T *res_out = p.residual_out != nullptr && sg.tile / p.m_tiles == 0 ? static_cast<T *>(p.residual_out)
                                                                               : nullptr;
            for (int kt = k0; kt < k1; ++kt, ++i) {
                const int s = static_cast<int>(i % stages);
                mv_mbarrier_wait(&full[s], static_cast<unsigned>((i / stages) & 1));
                unsigned char *xs = ring + static_cast<size_t>(s) * slot_size + kWBytes + line * kTokens * kLineBytes;
                const int kcol = kt * kStageK + line * kLineK + ch * 8;
                const bool live = kcol < p.hidden; /* else k past H: zeros */
                uint4 gv = *reinterpret_cast<const uint4 *>(gamma_s + s * kStageK + line * kLineK + ch * 8);
                if constexpr (kScaled) { /* gamma * 2^-e: exact where it stays normal */
                    uint32_t *gw = reinterpret_cast<uint32_t *>(&gv);
#pragma unroll
                    for (int e = 0; e < 4; ++e) gw[e] = mul2<T>(gw[e], scale2);
                }
#pragma unroll
                for (int jb = 0; jb < kPer; jb += kBatch) {
                    uint4 xv[kBatch];
#pragma unroll
                    for (int jj = 0; jj < kBatch; ++jj) {
                        const int j = jb + jj, r = tok0 + j * kTokenStep;
                        if (j < kPer && (kCells % kHelpers == 0 || r < kTokens) && live) {
                            xv[jj] = *reinterpret_cast<const uint4 *>(xs + r * kLineBytes + ((ch ^ (r & 7)) * 16));
                            if (p.residual) { /* s = x + residual, rounded to the dtype */
                                const uint4 rv =
                                    *reinterpret_cast<const uint4 *>(xs + kX + r * kLineBytes + ((ch ^ (r & 7)) * 16));
                                mv_add_rounded(*reinterpret_cast<mv_vec<T, 8> *>(&xv[jj]),
                                               *reinterpret_cast<const mv_vec<T, 8> *>(&rv));
                                if (res_out != nullptr && m0 + r < p.rows)
                                    *reinterpret_cast<uint4 *>(res_out + static_cast<int64_t>(m0 + r) *
                                                                            p.residual_out_stride + kcol) = xv[jj];
                            }
                        } else {
                            xv[jj] = make_uint4(0u, 0u, 0u, 0u);
                        }
                    }
#pragma unroll
                    for (int jj = 0; jj < kBatch; ++jj) {
                        const int j = jb + jj, r = tok0 + j * kTokenStep;
                        if (j >= kPer || (kCells % kHelpers != 0 && r >= kTokens)) break;
                        const T *xe = reinterpret_cast<const T *>(&xv[jj]);
#pragma unroll
                        for (int e = 0; e < 8; e += 2) {
                            const float a = mv_to_float(xe[e]), b = mv_to_float(xe[e + 1]);
                            sq[j] = fmaf(a, a, fmaf(b, b, sq[j]));
                        }
                        /* the product of two 16-bit values is exact in float, so the packed
                           multiply rounds it once (gv holds gamma * 2^-e in fp16) */
                        uint4 out;
                        const uint32_t *xw = reinterpret_cast<const uint32_t *>(&xv[jj]);
                        const uint32_t *gw = reinterpret_cast<const uint32_t *>(&gv);
                        uint32_t *ow = reinterpret_cast<uint32_t *>(&out);
#pragma unroll
                        for (int e = 0; e < 4; ++e) ow[e] = live ? mul2<T>(xw[e], gw[e]) : 0u;
                        *reinterpret_cast<uint4 *>(xs + r * kLineBytes + ((ch ^ (r & 7)) * 16)) = out;
                    }
                }
                mv_fence_proxy_async_shared(); /* the tensor cores read what was just written */
                mv_mbarrier_arrive(&ready[s]);
            }
            /* the segment's row sums: the token's lanes add up in a fixed tree, then one lane
               stores; double-buffered with the consumers' epilogue */
            const int buf = seg & 1, use = seg >> 1;
            if (use > 0) mv_mbarrier_wait(&sums_empty[buf], static_cast<unsigned>((use - 1) & 1));
#pragma unroll
            for (int j = 0; j < kPer; ++j) {
                float v = sq[j];
#pragma unroll
                for (int o = 1; o < kTokenLanes; o <<= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
                const int r = tok0 + j * kTokenStep;
                if (h % kTokenLanes == 0 && r < kTokens) row_sq[buf * kTokens + r] = v;
                sq[j] = 0.0f;
            }
            mv_mbarrier_arrive(&sums_full[buf]);
            it += k1 - k0;
        }
        return;
    }

    /* ---- consumers: warpgroup g takes features [64 g, 64 g + 64) of each tile ---- */
    const int g = warp / 4 - 1, ctid = threadIdx.x - kGroupThreads, wq = warp % 4;
    mv_pdl_wait(); /* the outputs and the workspace may still be in use by the previous kernel */
    /* the tile whose epilogue this CTA runs last: the cluster's first CTA's, or a range's last
       segment (stream-K: a tile's head or a whole tile) */
    if (p.prologue && it_begin < it_end && (p.split <= 1 || mv_cluster_rank() == 0))
        prefetch_epilogue<kTokens>(pa, p, static_cast<int>((it_end - 1) / kiters), ctid);
    float acc[kAcc];

    /* q, k, v of one tile from acc, with the tile's row sums */
    auto store_tile = [&](int tile, const float *sums) {
        float result_scale = 1.0f;
        if constexpr (kScaled) result_scale = ldexpf(1.0f, gamma_exponent(scalars[0]));
        const int m0 = (tile % p.m_tiles) * kTokens;
        const int f_base = (tile / p.m_tiles) * kFeatures + g * 64 + wq * 16 + (lane >> 2);
        const bool odd = ((lane >> 2) & 1) != 0;
        const float inv_h = 1.0f / static_cast<float>(p.hidden);
        if (p.prologue) {
            /* the tile in float32 to shared memory, then each (token, head) by one warp */
            float *ep = reinterpret_cast<float *>(tail + p.ep_offset);
            const int f_tile = (tile / p.m_tiles) * kFeatures;
#pragma unroll
            for (int j = 0; j < kTokens / 8; ++j) {
#pragma unroll
                for (int hh = 0; hh < 2; ++hh) {
#pragma unroll
                    for (int u = 0; u < 2; ++u) {
                        const int t_local = 8 * j + 2 * (lane & 3) + u;
                        const float rr = rsqrtf(sums[t_local] * inv_h + p.eps) * result_scale;
                        ep[t_local * kEpStride + (f_base - f_tile) + 8 * hh] = acc[4 * j + 2 * hh + u] * rr;
                    }
                }
            }
            mv_named_barrier(3, kConsumerThreads);
            const int D = static_cast<int>(pa.head_dim);
            const int heads = (p.cols - f_tile < kFeatures ? p.cols - f_tile : kFeatures) / D;
            const int tokens = p.rows - m0 < kTokens ? p.rows - m0 : kTokens;
            const int cw = ctid / 32;
            for (int item = cw; item < tokens * heads; item += kConsumerThreads / 32) {
                const int t_local = item / heads, hi = item % heads;
                const Item one = item_of(pa, m0 + t_local, f_tile / D + hi);
                float *row = ep + t_local * kEpStride + hi * D;
                /* in registers where the head allows: its loads in one round, not one per step (the
                   tail of the kernel, where nothing hides their latency) */
                auto in_registers = [&](auto width) {
                    constexpr int V = decltype(width)::value;
                    float x[V];
#pragma unroll
                    for (int j = 0; j < V; ++j) x[j] = row[lane * V + j];
                    if (p.fp8)
                        finish_head_regs<T, true, V>(pa, one, x, item_row<T>(pa, one), lane);
                    else
                        finish_head_regs<T, false, V>(pa, one, x, item_row<T>(pa, one), lane);
                };
                if (p.ep_vec == 4)
                    in_registers(std::integral_constant<int, 4>{});
                else if (p.ep_vec == 2)
                    in_registers(std::integral_constant<int, 2>{});
                else if (p.ep_vec == 1)
                    in_registers(std::integral_constant<int, 1>{});
                else if (p.fp8)
                    finish_head<T, true>(pa, one, row, lane);
                else
                    finish_head<T, false>(pa, one, row, lane);
            }
            mv_named_barrier(3, kConsumerThreads); /* ep is the next tile's */
            return;
        }
#pragma unroll
        for (int j = 0; j < kTokens / 8; ++j) {
#pragma unroll
            for (int hh = 0; hh < 2; ++hh) {
                /* lanes l and l ^ 4 hold features f and f + 1 of tokens t and t + 1: trade one
                   value so each stores a pair of features of one token */
                const float v0 = acc[4 * j + 2 * hh], v1 = acc[4 * j + 2 * hh + 1];
                const float other = __shfl_xor_sync(0xffffffffu, odd ? v0 : v1, 4);
                const int t_local = 8 * j + 2 * (lane & 3) + (odd ? 1 : 0);
                const int tok = m0 + t_local;
                const int feat = f_base + 8 * hh - (odd ? 1 : 0);
                if (tok >= p.rows || feat >= p.cols) continue;
                const float rr = rsqrtf(sums[t_local] * inv_h + p.eps) * result_scale;
                const float a = odd ? other : v0, b = odd ? v1 : other;
                T *dst;
                if (feat < p.q_cols) {
                    dst = static_cast<T *>(p.q) + static_cast<int64_t>(tok) * p.q_stride + feat;
                } else if (feat < p.q_cols + p.kv_cols) {
                    dst = static_cast<T *>(p.k) + static_cast<int64_t>(tok) * p.k_stride + (feat - p.q_cols);
                } else {
                    dst = static_cast<T *>(p.v) + static_cast<int64_t>(tok) * p.v_stride +
                          (feat - p.q_cols - p.kv_cols);
                }
                *reinterpret_cast<uint32_t *>(dst) = pack2<T>(a * rr, b * rr);
            }
        }
    };
    /* The CTAs whose ranges hold parts of tile. */
    auto tile_owners = [&](int tile, int *first, int *last) {
        *first = range_owner(p.total, ctas, static_cast<int64_t>(tile) * kiters);
        *last = range_owner(p.total, ctas, static_cast<int64_t>(tile + 1) * kiters - 1);
    };
    /* acc and tot_sq = this CTA's part (the tile's head, in acc and sums) plus every later part of
       tile, in CTA order: the order of the CTAs' ranges, whatever their timing */
    auto gather_tile = [&](int tile, const float *sums) {
        int first, last;
        tile_owners(tile, &first, &last);
        float sq_sum = ctid < kTokens ? sums[ctid] : 0.0f;
        /* parts in groups of kGroup, every load of a group issued before its adds: one L2 round
           trip per group, not per part */
        constexpr int kGroup = kAcc >= 64 ? 1 : kAcc >= 32 ? 2 : 4; /* within the registers */
        for (int c0 = first + 1; c0 <= last; c0 += kGroup) {
            float4 v[kGroup][kAcc / 4];
            float sq_part[kGroup];
#pragma unroll
            for (int u = 0; u < kGroup; ++u) {
                const int cc = c0 + u;
                sq_part[u] = 0.0f;
                if (cc > last) continue;
                const float *theirs = p.partials + static_cast<size_t>(cc) * partial_floats<kTokens>();
#pragma unroll
                for (int a = 0; a < kAcc; a += 4)
                    v[u][a / 4] = __ldcg(reinterpret_cast<const float4 *>(theirs) + (a / 4) * kConsumerThreads + ctid);
                if (ctid < kTokens) sq_part[u] = __ldcg(theirs + kFeatures * kTokens + ctid);
            }
#pragma unroll
            for (int u = 0; u < kGroup; ++u) {
                if (c0 + u > last) break;
                sq_sum += sq_part[u];
#pragma unroll
                for (int a = 0; a < kAcc; a += 4) {
                    acc[a] += v[u][a / 4].x;
                    acc[a + 1] += v[u][a / 4].y;
                    acc[a + 2] += v[u][a / 4].z;
                    acc[a + 3] += v[u][a / 4].w;
                }
            }
        }
        if (ctid < kTokens) tot_sq[ctid] = sq_sum;
        mv_named_barrier(1, kConsumerThreads);
    };

    int64_t i = 0;
    int seg = 0;
    for (int64_t it = it_begin; it < it_end; ++seg) {
        const Segment sg = segment_at(it, it_end, kiters);
        const int tile = sg.tile, k0 = sg.k0, k1 = sg.k1;
#pragma unroll
        for (int a = 0; a < kAcc; ++a) acc[a] = 0.0f;
        int prev = -1;
        for (int kt = k0; kt < k1; ++kt, ++i) {
            const int s = static_cast<int>(i % stages);
            mv_mbarrier_wait(&ready[s], static_cast<unsigned>((i / stages) & 1));
            const unsigned char *ws = ring + static_cast<size_t>(s) * slot_size;
            mv_wgmma_fence();
            mv_wgmma_fence_accumulators(acc);
#pragma unroll
            for (int l = 0; l < kLines; ++l) {
                const unsigned char *wa = ws + l * kWLineBytes + g * 64 * kLineBytes;
                const unsigned char *xb = ws + kWBytes + l * kTokens * kLineBytes;
#pragma unroll
                for (int kk = 0; kk < kLineK / 16; ++kk)
                    mv_wgmma_ss<T, kTokens>::mma(acc, mv_wgmma_desc_sw128(wa + kk * 32), mv_wgmma_desc_sw128(xb + kk * 32),
                                                 1);
            }
            mv_wgmma_commit();
            mv_wgmma_fence_accumulators(acc);
            mv_wgmma_wait<1>(); /* the previous stage's products are done: its slot goes back */
            mv_wgmma_fence_accumulators(acc);
            if (prev >= 0 && (ctid % kGroupThreads) == 0) mv_mbarrier_arrive(&empty[prev]);
            prev = s;
        }
        mv_wgmma_wait<0>();
        mv_wgmma_fence_accumulators(acc);
        if (prev >= 0 && (ctid % kGroupThreads) == 0) mv_mbarrier_arrive(&empty[prev]);

        /* ---- epilogue ---- */
        const int buf = seg & 1;
        mv_mbarrier_wait(&sums_full[buf], static_cast<unsigned>((seg >> 1) & 1));
        const float *sums = row_sq + buf * kTokens;
        if (k0 == 0 && k1 == kiters) {
            store_tile(tile, sums);
        } else if (max_split<kTokens>() > 1 && p.split > 1) {
            /* the tile's parts meet in its first CTA's shared memory, added in rank order there */
            const int rank = static_cast<int>(mv_cluster_rank());
            constexpr int kP = partial_floats<kTokens>();
            if (rank != 0) {
                const uint32_t dst = mv_cluster_address(cluster_parts + (rank - 1) * kP, 0);
#pragma unroll
                for (int a = 0; a < kAcc; a += 4)
                    mv_cluster_store(dst + ((a / 4) * kConsumerThreads + ctid) * 16,
                                     make_float4(acc[a], acc[a + 1], acc[a + 2], acc[a + 3]));
                if (ctid < kTokens) mv_cluster_store(dst + (kFeatures * kTokens + ctid) * 4, sums[ctid]);
            }
            /* the consumers of every CTA (the cluster's other threads have exited, which the
               barrier allows): the parts are visible in the first CTA after it, and no CTA exits
               while another may still write its shared memory */
            mv_cluster_sync();
            if (rank == 0) {
                float sq = ctid < kTokens ? sums[ctid] : 0.0f;
                for (int r = 1; r < p.split; ++r) {
                    const float *theirs = cluster_parts + (r - 1) * kP;
#pragma unroll
                    for (int a = 0; a < kAcc; a += 4) {
                        const float4 v = reinterpret_cast<const float4 *>(theirs)[(a / 4) * kConsumerThreads + ctid];
                        acc[a] += v.x;
                        acc[a + 1] += v.y;
                        acc[a + 2] += v.z;
                        acc[a + 3] += v.w;
                    }
                    if (ctid < kTokens) sq += theirs[kFeatures * kTokens + ctid];
                }
                if (ctid < kTokens) tot_sq[ctid] = sq;
                mv_named_barrier(1, kConsumerThreads);
                store_tile(tile, tot_sq);
            }
        } else if (k0 > 0) {
            /* a later part of the tile (this range's first segment): to the workspace, as float4s
               [a / 4][thread][4] (coalesced, a thread's loads independent), then counted in: after
               the barrier, one thread's fence orders every consumer's stores before the count */
            float *part = p.partials + static_cast<size_t>(c) * partial_floats<kTokens>();
#pragma unroll
            for (int a = 0; a < kAcc; a += 4)
                __stcg(reinterpret_cast<float4 *>(part) + (a / 4) * kConsumerThreads + ctid,
                       make_float4(acc[a], acc[a + 1], acc[a + 2], acc[a + 3]));
            if (ctid < kTokens) __stcg(part + kFeatures * kTokens + ctid, sums[ctid]);
            mv_named_barrier(1, kConsumerThreads);
            if (ctid == 0) {
                __threadfence();
                atomicAdd(&p.counters[tile], 1);
            }
        } else {
            /* the tile's head (this range's last segment): wait for the later parts' count
               (acquire), reset it for the next call, add the parts to the products in registers */
            if (ctid == 0) {
                int first, last;
                tile_owners(tile, &first, &last);
                while (mv_load_acquire(&p.counters[tile]) < last - first) __nanosleep(32);
                p.counters[tile] = 0;
            }
            mv_named_barrier(1, kConsumerThreads);
            gather_tile(tile, sums);
            store_tile(tile, tot_sq);
        }
        mv_mbarrier_arrive(&sums_empty[buf]);
        it += k1 - k0;
    }
#endif /* __CUDA_ARCH_FEAT_SM90_ALL */
}

/* ---- host side ---------------------------------------------------------------------------------- */

/* The workspace of a (device, stream) pair. */
struct Workspace {
    int device;
    cudaStream_t stream;
    float *partials;
    size_t partial_bytes;
    int *counters;
};

std::mutex workspace_lock;
std::vector<Workspace> workspaces;

/* Device allocation that a stream capture in progress (on any stream) does not forbid. */
cudaError_t alloc_outside_capture(void **ptr, size_t bytes) {
    cudaStreamCaptureMode mode = cudaStreamCaptureModeRelaxed;
    cudaError_t err = cudaThreadExchangeStreamCaptureMode(&mode);
    if (err != cudaSuccess) return err;
    err = cudaMalloc(ptr, bytes);
    cudaStreamCaptureMode back = mode;
    const cudaError_t restore = cudaThreadExchangeStreamCaptureMode(&back);
    return err != cudaSuccess ? err : restore;
}

/* Zero bytes now, on a private stream (the caller's may be capturing). */
cudaError_t zero_now(void *ptr, size_t bytes) {
    cudaStreamCaptureMode mode = cudaStreamCaptureModeRelaxed;
    cudaError_t err = cudaThreadExchangeStreamCaptureMode(&mode);
    if (err != cudaSuccess) return err;
    cudaStream_t s;
    err = cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
    if (err == cudaSuccess) {
        err = cudaMemsetAsync(ptr, 0, bytes, s);
        const cudaError_t sync = cudaStreamSynchronize(s);
        const cudaError_t destroy = cudaStreamDestroy(s);
        if (err == cudaSuccess) err = sync != cudaSuccess ? sync : destroy;
    }
    cudaStreamCaptureMode back = mode;
    const cudaError_t restore = cudaThreadExchangeStreamCaptureMode(&back);
    return err != cudaSuccess ? err : restore;
}

cudaError_t get_workspace(int device, cudaStream_t stream, size_t partial_bytes, float **partials, int **counters) {
    std::lock_guard<std::mutex> guard(workspace_lock);
    Workspace *w = nullptr;
    for (Workspace &e : workspaces)
        if (e.device == device && e.stream == stream) w = &e;
    if (w == nullptr) {
        void *ctr = nullptr;
        cudaError_t err = alloc_outside_capture(&ctr, kMaxCounters * sizeof(int));
        if (err != cudaSuccess) return err;
        err = zero_now(ctr, kMaxCounters * sizeof(int));
        if (err != cudaSuccess) {
            cudaFree(ctr);
            return err;
        }
        workspaces.push_back(Workspace{device, stream, nullptr, 0, static_cast<int *>(ctr)});
        w = &workspaces.back();
    }
    if (w->partial_bytes < partial_bytes) {
        /* the old buffer stays allocated: a captured graph may still use it */
        void *buf = nullptr;
        const cudaError_t err = alloc_outside_capture(&buf, partial_bytes);
        if (err != cudaSuccess) return err;
        w->partials = static_cast<float *>(buf);
        w->partial_bytes = partial_bytes;
    }
    *partials = w->partials;
    *counters = w->counters;
    return cudaSuccess;
}

struct EngineState {
    CUtensorMap x_map;
    CUtensorMap w_map;
    CUtensorMap r_map; /* the residual's, where p.residual */
    EngineParams p;
    size_t smem;
    int tokens;
    int ctas;
    bool bf16;
};

constexpr int kTokenTiles[] = {8, 16, 32, 64, 128};

/* The ring's stages that fit beside the rest; sets p's slot and ep_offset and *smem. */
template <int kTokens>
int ring_stages(const mv_cuda_device &dev, EngineParams *p, size_t *smem) {
    const size_t parts = p->split > 1 ? static_cast<size_t>(p->split - 1) * partial_floats<kTokens>() * 4 : 0;
    p->ep_offset = static_cast<int>(tail_bytes<kTokens>() + parts);
    const size_t fixed = kSwizzleAlign + tail_bytes<kTokens>() + parts + (p->prologue ? ep_bytes<kTokens>() : 0);
    p->slot = slot_bytes<kTokens>(p->residual != 0);
    int stages = kMaxStages;
    while (stages >= 2 && fixed + static_cast<size_t>(stages) * p->slot > static_cast<size_t>(dev.max_shared_block))
        --stages;
    *smem = fixed + static_cast<size_t>(stages) * p->slot;
    return stages;
}

/* f(std::integral_constant<int, T>()) for the token tile T (kTokenTiles). */
template <typename F>
decltype(auto) with_tokens(int tokens, F &&f) {
    return mv_with_constant<8, 16, 32, 64, 128>(tokens, f);
}

int stages_for(int tokens, const mv_cuda_device &dev, EngineParams *p, size_t *smem) {
    return with_tokens(tokens, [&](auto t) { return ring_stages<t()>(dev, p, smem); });
}

int split_limit(int tokens) {
    return with_tokens(tokens, [](auto t) { return max_split<t()>(); });
}

/* Whether `clusters` clusters of `split` CTAs of the kernel are resident at once. */
template <typename T, int kTokens>
bool clusters_fit(const mv_cuda_device &dev, int split, size_t smem, int64_t clusters) {
    static mv_cluster_occupancy occupancy;
    return mv_clusters_fit(engine_kernel<T, kTokens>, kThreads, smem, split, clusters,
                           mv_opt_in_of<engine_kernel<T, kTokens>>(), occupancy, dev.device);
}

bool clusters_fit_for(bool bf16, int tokens, const mv_cuda_device &dev, int split, size_t smem, int64_t clusters) {
    return with_tokens(tokens, [&](auto t) {
        return bf16 ? clusters_fit<__nv_bfloat16, t()>(dev, split, smem, clusters)
                    : clusters_fit<__half, t()>(dev, split, smem, clusters);
    });
}

/* How a call's work is laid out: where every tile fits one wave, whole tiles, each split over the
   CTAs of a cluster (its parts added in shared memory, no global round trips); stream-K where
   that leaves too few SMs streaming W to beat stream-K's fix-up. The model's constants, measured
   on an H200 (dev/logs/engine-fixed-cost-nvidia-h200-2026-11-23.log): one CTA streams W at about
   kCtaGBps; stream-K's fix-up costs about kFixupUs; DRAM delivers about 85% of its peak. */
constexpr double kCtaGBps = 40.0;
constexpr double kFixupUs = 5.0;
int choose_split(int64_t tiles, int64_t kiters, int tokens, const mv_cuda_device &dev) {
    if (tiles > dev.sms) return 0;
    int split = static_cast<int>(dev.sms / tiles);
    if (split > split_limit(tokens)) split = split_limit(tokens);
    if (split > kiters) split = static_cast<int>(kiters);
    const double stage_bytes = static_cast<double>(kWBytes);
    const double cta_us = static_cast<double>((kiters + split - 1) / split) * stage_bytes / (kCtaGBps * 1e3);
    const double dram_gbps = dev.dram_gbps > 0 ? 0.85 * dev.dram_gbps : 3000.0;
    const double stream_k_us = static_cast<double>(tiles * kiters) * stage_bytes / (dram_gbps * 1e3) + kFixupUs;
    return cta_us <= stream_k_us ? split : 0;
}

template <typename T, int kTokens>
cudaError_t launch_tokens(const EngineState &st, const mv_prologue_args &pa, const mv_qkv_plan &plan,
                          const mv_cuda_device &dev, cudaStream_t stream) {
    auto kernel = engine_kernel<T, kTokens>;
    cudaError_t err = mv_allow_shared(kernel, st.smem, mv_opt_in_of<engine_kernel<T, kTokens>>(), dev.device);
    if (err != cudaSuccess) return err;
    EngineParams p = st.p;
    if (p.split == 0) { /* only stream-K's fix-up uses the workspace */
        const size_t bytes = static_cast<size_t>(st.ctas) * partial_floats<kTokens>() * sizeof(float);
        err = get_workspace(dev.device, stream, bytes, &p.partials, &p.counters);
        if (err != cudaSuccess) return err;
    }
    const unsigned cluster = p.split > 1 ? static_cast<unsigned>(p.split) : 1u;
    return mv_launch_clusters(kernel, dim3(static_cast<unsigned>(st.ctas)), dim3(kThreads), st.smem, stream, plan.pdl,
                              cluster, st.x_map, st.w_map, st.r_map, p, pa);
}

template <typename T>
cudaError_t launch_type(const EngineState &st, const mv_prologue_args &pa, const mv_qkv_plan &plan,
                        const mv_cuda_device &dev, cudaStream_t stream) {
    return with_tokens(st.tokens, [&](auto t) { return launch_tokens<T, t()>(st, pa, plan, dev, stream); });
}

/* The token tile: the smallest that holds every row, else the largest (the token tiles of one
   feature tile are neighbours in the iteration order, so W's tile is read from DRAM once). */
int choose_tokens(int64_t rows) {
    for (const int t : kTokenTiles)
        if (t >= rows) return t;
    return kMaxTokens;
}

/* The plan of one call: the QKV op (pa NULL) or the attention prologue with its epilogue. */
bool plan_engine(const mv_qkv_args &a, const mv_prologue_args *pa, const mv_cuda_device &dev, mv_qkv_plan *plan) {
#if defined(MINIVLLM_HAVE_SM90A)
    if ((a.in.dtype != MV_BFLOAT16 && a.in.dtype != MV_FLOAT16) || !mv_qkv_wgmma_operands_ok(a, dev)) return false;
    const int64_t h = a.in.hidden, n = a.q_cols + 2 * a.kv_cols, m = a.in.rows;
    const bool residual = a.in.residual != nullptr;
    /* a residual only in the prologue's form (the QKV table has not measured the engine with
       one); its tile comes by tensor copy and s is stored in 16-byte vectors */
    if (residual && pa == nullptr) return false;
    if (residual && (!mv_aligned16(a.in.residual, a.in.residual_stride, 2) ||
                     !mv_aligned16(a.in.residual_out, a.in.residual_out_stride, 2)))
        return false;
    if (pa != nullptr && (pa->head_dim > kFeatures || kFeatures % pa->head_dim != 0)) return false;

    EngineState *st = mv_plan_state<EngineState>(plan);
    st->tokens = choose_tokens(m);
    /* with a residual's tile in each stage and the prologue's float tile, the largest token tiles
       leave too little room for two stages: smaller tiles then (ring_stages) */
    for (; st->tokens > 8; st->tokens /= 2) {
        EngineParams probe = {};
        probe.residual = residual ? 1 : 0;
        probe.prologue = pa != nullptr ? 1 : 0;
        size_t bytes;
        if (stages_for(st->tokens, dev, &probe, &bytes) >= 2) break;
    }
    const int64_t m_tiles = (m + st->tokens - 1) / st->tokens, n_tiles = (n + kFeatures - 1) / kFeatures;
    const int64_t kiters = (h + kStageK - 1) / kStageK;
    if (m_tiles * n_tiles > kMaxCounters) return false;
    EngineParams &p = st->p;
    p = EngineParams{};
    p.rows = static_cast<int>(m);
    p.hidden = static_cast<int>(h);
    p.cols = static_cast<int>(n);
    p.q_cols = static_cast<int>(a.q_cols);
    p.kv_cols = static_cast<int>(a.kv_cols);
    p.kiters = static_cast<int>(kiters);
    p.m_tiles = static_cast<int>(m_tiles);
    p.total = m_tiles * n_tiles * kiters;
    p.eps = a.in.eps;
    p.gamma = a.in.norm_weight;
    p.q = a.q;
    p.k = a.k;
    p.v = a.v;
    p.q_stride = a.q_stride;
    p.k_stride = a.k_stride;
    p.v_stride = a.v_stride;
    p.residual = residual ? 1 : 0;
    /* in place (residual_out is residual: the binding allows no other overlap), other CTAs may
       still read residual: the caller's store kernel writes it after */
    p.residual_out = residual && a.in.residual_out != a.in.residual ? a.in.residual_out : nullptr;
    p.residual_out_stride = a.in.residual_out_stride;
    p.prologue = pa != nullptr ? 1 : 0;
    p.fp8 = pa != nullptr && pa->k_cache != nullptr && pa->cache_dtype == MV_FLOAT8_E4M3 ? 1 : 0;
    p.ep_vec = pa != nullptr ? mv_prologue_vec_width(*pa, 2) : 0; /* 1, 2 or 4 here: head_dim divides 128 */
    st->bf16 = a.in.dtype == MV_BFLOAT16;
    const int64_t tiles = m_tiles * n_tiles;
    p.split = choose_split(tiles, kiters, st->tokens, dev);
    for (; p.split > 0; --p.split) { /* every cluster resident at once, or a smaller split */
        p.stages = stages_for(st->tokens, dev, &p, &st->smem);
        if (p.stages >= 2 && (p.split == 1 || clusters_fit_for(st->bf16, st->tokens, dev, p.split, st->smem, tiles)))
            break;
    }
    if (p.split > 0) {
        st->ctas = static_cast<int>(tiles) * p.split;
    } else {
        st->ctas = p.total < dev.sms ? static_cast<int>(p.total) : dev.sms;
        p.stages = stages_for(st->tokens, dev, &p, &st->smem);
    }
    if (p.stages < 2) return false;
    if (!mv_qkv_encode_rows(&st->x_map, st->bf16, a.in.x, m, h, a.in.x_stride, st->tokens, false) ||
        !mv_qkv_encode_rows(&st->w_map, st->bf16, a.w, n, h, a.w_stride_n, kBoxRows, true))
        return false;
    if (residual) {
        if (!mv_qkv_encode_rows(&st->r_map, st->bf16, a.in.residual, m, h, a.in.residual_stride, st->tokens, false))
            return false;
    } else {
        st->r_map = st->x_map; /* never read */
    }
    plan->writes_residual = p.residual_out != nullptr;
    return true;
#else
    (void)a;
    (void)pa;
    (void)dev;
    (void)plan;
    return false;
#endif
}

} // namespace

bool mv_qkv_engine_plan(const mv_qkv_args &a, const mv_cuda_device &dev, mv_qkv_plan *plan) {
    return plan_engine(a, nullptr, dev, plan);
}

cudaError_t mv_qkv_engine_launch(const mv_qkv_args &, const mv_qkv_plan &plan, const mv_cuda_device &dev,
                                 cudaStream_t stream) {
    const EngineState &st = mv_plan_state<EngineState>(plan);
    const mv_prologue_args none = {};
    return st.bf16 ? launch_type<__nv_bfloat16>(st, none, plan, dev, stream)
                   : launch_type<__half>(st, none, plan, dev, stream);
}

bool mv_qkv_engine_prologue_plan(const mv_prologue_args &a, const mv_cuda_device &dev, mv_qkv_plan *plan) {
    return plan_engine(a.qkv, &a, dev, plan);
}

cudaError_t mv_qkv_engine_prologue_launch(const mv_prologue_args &a, const mv_qkv_plan &plan,
                                          const mv_cuda_device &dev, cudaStream_t stream) {
    const EngineState &st = mv_plan_state<EngineState>(plan);
    return st.bf16 ? launch_type<__nv_bfloat16>(st, a, plan, dev, stream)
                   : launch_type<__half>(st, a, plan, dev, stream);
}
