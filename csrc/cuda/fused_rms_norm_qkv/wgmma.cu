/*
 * wgmma.cu: qkv = rms_norm(x) . W^T in ONE kernel on Hopper tensor cores (wgmma + TMA, sm_90a),
 * for the M between the decode stream and the norm + cuBLASLt path.
 *
 * Why one kernel: the norm + GEMM path pays a dependent launch before the GEMM can start, and
 * writes and reads back the normalized y. Here the norm costs (almost) nothing extra, by the
 * deferred-rrms identity
 *     y[m,k] . W[n,k] summed over k  =  rrms[m] * sum_k (gamma[k] * x[m,k]) . W[n,k]
 * since rrms[m] does not depend on k. A producer thread streams x tiles, W tiles and gamma's slice
 * into a ring of shared stages by TMA (128-byte swizzle, zeros past the edges; W's first stages
 * are requested before the PDL wait), and two consumer warpgroups, taking alternate k stages,
 * load their A fragments of x with ldmatrix, sum x^2 per row from them in float32, multiply them
 * by gamma in registers and multiply on the tensor cores with A from registers (float32
 * accumulators). Consumer 1 adds its partial products and sums into consumer 0's through shared
 * memory; the epilogue scales each row by rrms and writes q, k, v.
 *
 * A 64 x BN output tile belongs to one CTA, or to the S CTAs of a thread-block cluster (split-K),
 * each taking 1/S of its k stages: the others then store their float parts (and row sums) into
 * the first CTA's ring, idle once its own products are done, through distributed shared memory,
 * and it adds them in rank order (fixed: the bits do not depend on timing). The width BN and S are
 * chosen per call (choose_tiling) so that the grid fills the SMs in one wave with the fewest bytes
 * per CTA; S > 1 only where one 64-row tile covers M.
 *
 * Numerics (docs/numerics.md): gamma * x is rounded to bf16 before the product and rrms
 * multiplies the float32 sum. bf16 only: its range is float32's, so gamma * x cannot overflow
 * where the normalized value would not.
 */
#include <climits>
#include <cstdint>
#include <type_traits>

#include <cuda.h> /* CUtensorMap (types only: maps come from device.h) */

#include "cuda/common.cuh"
#include "cuda/fused_rms_norm_qkv/paths.h"
#include "cuda/hopper.cuh"
#include "cuda/wgmma_ops.cuh"

namespace {

constexpr int kStageK = 64;               /* k per stage: one 128-byte swizzle line per row */
constexpr int kLineBytes = kStageK * 2;   /* bf16 */
constexpr int kGroupThreads = 128;        /* a warpgroup */
constexpr int kTileRows = 64;             /* rows per block: one wgmma's M */
constexpr int kConsumers = 2;             /* consumer warpgroups, taking alternate k stages */
constexpr int kThreads = kGroupThreads * (1 + kConsumers); /* and the producer's */
constexpr int kMaxStages = 16;
constexpr int kSharedAlign = 1024;        /* the 128-byte swizzle repeats every 8 lines */

struct WgmmaParams {
    int rows, hidden, cols; /* M, H, N */
    int q_cols, kv_cols;
    int stages;
    float eps;
    int split; /* CTAs (one cluster) per tile, each taking 1/split of its k stages */
    const __nv_bfloat16 *gamma;
    __nv_bfloat16 *q, *k, *v;
    int64_t q_stride, k_stride, v_stride;
};

/* A ring stage of a kRows x BN tile: the x tile, then the W tile, each kRows (BN) lines of 64 k. */
template <int kRows, int BN>
struct Stage {
    static constexpr int a_bytes = kRows * kLineBytes;
    static constexpr int b_bytes = BN * kLineBytes;
    static constexpr int stage_bytes = a_bytes + b_bytes;
    static_assert(a_bytes % kSharedAlign == 0 && b_bytes % kSharedAlign == 0, "stages keep the swizzle alignment");
};

/* Shared memory of the 64-row kernel's block of 64 x BN outputs: the ring of stages, then gamma's
   slice of each stage, the full and empty barriers, and the partial sums consumer 1 hands to
   consumer 0. */
template <int BN>
struct Tile : Stage<kTileRows, BN> {
    static constexpr int reduce_stride = BN / 2 + 2; /* per thread: accumulators, then two row sums */
    static constexpr int tail_bytes = kMaxStages * kLineBytes + 2 * kMaxStages * 8 +
                                      (kConsumers - 1) * kGroupThreads * reduce_stride * 4;
    /* a CTA's split-K part: the first consumer's accumulators and its two row sums, per thread */
    static constexpr int part_floats = kGroupThreads * (BN / 2 + 2);
};

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)

/* The bytes of gamma's slice that travel with k stage kt: whole 16-byte chunks (H % 8 == 0). */
__device__ __forceinline__ unsigned stage_gamma_bytes(const WgmmaParams &p, int kt) {
    const int left = p.hidden - kt * kStageK;
    return static_cast<unsigned>((left < kStageK ? left : kStageK) * 2);
}

/* The thread's A fragment of k16 step kk of a 64-row stage of x, as gamma * x in bf16, adding
   x^2 of its rows to sum_sq[0] (row warp * 16 + lane / 4) and sum_sq[1] (that row + 8).
   ldmatrix.x4 gives the four 8 x 8 blocks (rows 0-7 / 8-15 x k 0-7 / 8-15) of the warp's 16
   rows in mma.sync's A fragment order; lane l names row l % 8 (+ 8 for odd l / 8) of block l / 8.
   The 128-byte swizzle stores logical chunk c of line r at position c ^ (r % 8). gamma's slice of
   the stage lies beside it; the fragment's columns are k = 2 (lane % 4) (+1) and that + 8. Rows past
   M were zero-filled by the copy, as were k past H, whose staged gamma is stale: taken as 0.
   gamma by plain loads the compiler schedules freely (explicit shared loads measured slower). */
__device__ __forceinline__ void load_scaled_fragment(uint32_t (&a)[4], const __nv_bfloat16 *tile,
                                                     const __nv_bfloat16 *stage_gamma, int k_left, int warp,
                                                     int lane, int kk, float (&sum_sq)[2]) {
    const int block = lane >> 3;
    const int row = warp * 16 + (lane & 7) + 8 * (block & 1);
    const int chunk = 2 * kk + (block >> 1);
    mv_ldmatrix_x4(a, tile + row * kStageK + ((chunk ^ (row & 7)) * 8));
    const int k = kk * 16 + 2 * (lane & 3);
    const uint32_t g_lo = k < k_left ? *reinterpret_cast<const uint32_t *>(stage_gamma + k) : 0u;
    const uint32_t g_hi = k + 8 < k_left ? *reinterpret_cast<const uint32_t *>(stage_gamma + k + 8) : 0u;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        /* bf16 -> float is a shift; the product of two bf16 is exact in float, so the bf16x2
           multiply rounds it once, as float math then a rounding would */
        const float lo = __uint_as_float(a[i] << 16), hi = __uint_as_float(a[i] & 0xffff0000u);
        sum_sq[i & 1] = fmaf(lo, lo, fmaf(hi, hi, sum_sq[i & 1]));
        const uint32_t g = i < 2 ? g_lo : g_hi;
        __nv_bfloat162 prod = __hmul2(*reinterpret_cast<const __nv_bfloat162 *>(&a[i]),
                                      *reinterpret_cast<const __nv_bfloat162 *>(&g));
        a[i] = *reinterpret_cast<uint32_t *>(&prod);
    }
}

/* rrms = 1 / sqrt(sum x^2 / H + eps) of a row, from its whole sum of squares. */
__device__ __forceinline__ float row_rrms(const WgmmaParams &p, float sum_sq) {
    return rsqrtf(sum_sq / static_cast<float>(p.hidden) + p.eps);
}

/* The epilogue: this thread's accumulators of a 64-row wgmma tile (rows row0 +
   warp * 16 + lane / 4 and that + 8, columns n0 + 8 j + 2 (lane % 4) and that + 1), scaled by
   their rows' rrms, to q / k / v as bf16 pairs (q/k/v widths are even, so a pair never straddles
   two of them). The branch is mv_qkv_output's on WgmmaParams' own fields: carrying the call's
   mv_qkv_args into the kernel instead measured slower (dev/logs/qkv-prefill-nvidia-h200-2026-11-22.log,
   run 13). */
template <int BN>
__device__ __forceinline__ void store_scaled_rows(const WgmmaParams &p, const float (&acc)[BN / 2],
                                                  const float (&rrms_rows)[2], int row0, int n0, int warp, int lane) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int row = row0 + warp * 16 + lane / 4 + 8 * h;
        if (row >= p.rows) continue;
        const float rrms = rrms_rows[h];
#pragma unroll
        for (int j = 0; j < BN / 8; ++j) {
            const int col = n0 + 8 * j + 2 * (lane % 4);
            if (col >= p.cols) continue;
            __nv_bfloat16 *dst;
            if (col < p.q_cols) {
                dst = p.q + static_cast<int64_t>(row) * p.q_stride + col;
            } else if (col < p.q_cols + p.kv_cols) {
                dst = p.k + static_cast<int64_t>(row) * p.k_stride + (col - p.q_cols);
            } else {
                dst = p.v + static_cast<int64_t>(row) * p.v_stride + (col - p.q_cols - p.kv_cols);
            }
            *reinterpret_cast<__nv_bfloat162 *>(dst) =
                __floats2bfloat162_rn(acc[4 * j + 2 * h] * rrms, acc[4 * j + 2 * h + 1] * rrms);
        }
    }
}

#endif /* __CUDA_ARCH_FEAT_SM90_ALL */

template <int BN>
__global__ void __launch_bounds__(kThreads, 1)
    qkv_wgmma_kernel(const __grid_constant__ CUtensorMap x_map, const __grid_constant__ CUtensorMap w_map,
                     WgmmaParams p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    using Sh = Tile<BN>;
    unsigned char *base = mv_swizzle_aligned_shared();
    const int stages = p.stages;
    __nv_bfloat16 *a_tiles = reinterpret_cast<__nv_bfloat16 *>(base);
    __nv_bfloat16 *b_tiles = reinterpret_cast<__nv_bfloat16 *>(base + static_cast<size_t>(stages) * Sh::a_bytes);
    unsigned char *tail = base + static_cast<size_t>(stages) * Sh::stage_bytes;
    __nv_bfloat16 *gamma_stages = reinterpret_cast<__nv_bfloat16 *>(tail);
    uint64_t *full = reinterpret_cast<uint64_t *>(tail + kMaxStages * kLineBytes);
    uint64_t *empty = full + kMaxStages;
    float *reduce = reinterpret_cast<float *>(empty + kMaxStages);

    const int group = threadIdx.x / kGroupThreads;
    const int tid = threadIdx.x % kGroupThreads;
    const int split = p.split;
    const int rank = split > 1 ? static_cast<int>(blockIdx.x) % split : 0; /* clusters run along x */
    const int n0 = static_cast<int>(blockIdx.x) / split * BN;
    const int m0 = blockIdx.y * kTileRows;
    const int k_all = (p.hidden + kStageK - 1) / kStageK;
    const int k_begin = rank * k_all / split; /* this CTA's k stages: [k_begin, k_begin + k_tiles) */
    const int k_tiles = (rank + 1) * k_all / split - k_begin;

    if (threadIdx.x == 0) {
        for (int s = 0; s < stages; ++s) {
            mv_mbarrier_init(&full[s], 1);
            /* each stage belongs to one consumer (stages is a multiple of kConsumers) */
            mv_mbarrier_init(&empty[s], 1);
        }
        mv_mbarrier_init_fence();
    }
    __syncthreads();
    if (split > 1) mv_cluster_sync(); /* every CTA of the cluster has started before any writes to another */
    /* The next kernel may launch now; it waits for this whole grid before it reads anything. */
    mv_pdl_trigger();

    if (group == 0) {
        /* ---- producer: one thread issues every copy ---- */
        if (tid == 0) {
            const uint64_t w_policy = mv_evict_first_policy();
            const uint64_t x_policy = mv_evict_last_policy();
            const int first = k_tiles < stages ? k_tiles : stages;
            /* W is a weight no kernel writes: request its first stages before waiting for the
               previous kernel (same assumption as the decode stream). x may be its output. */
            /* i: the CTA's own stage count; k stage k_begin + i of the tile */
            auto gamma_bytes = [&](int i) { return stage_gamma_bytes(p, k_begin + i); };
            for (int i = 0; i < first; ++i) {
                mv_mbarrier_arrive_expect_tx(&full[i], Sh::stage_bytes + gamma_bytes(i));
                mv_tensor_copy_2d(b_tiles + static_cast<size_t>(i) * BN * kStageK, &w_map, (k_begin + i) * kStageK, n0,
                                  &full[i], w_policy);
            }
            mv_pdl_wait();
            for (int i = 0; i < first; ++i) {
                const int k = (k_begin + i) * kStageK;
                mv_tensor_copy_2d(a_tiles + static_cast<size_t>(i) * kTileRows * kStageK, &x_map, k, m0, &full[i],
                                  x_policy);
                mv_bulk_copy(gamma_stages + i * kStageK, p.gamma + k, gamma_bytes(i), &full[i]);
            }
            for (int i = first; i < k_tiles; ++i) {
                const int s = i % stages, k = (k_begin + i) * kStageK;
                mv_mbarrier_wait(&empty[s], static_cast<unsigned>((i / stages - 1) & 1));
                mv_mbarrier_arrive_expect_tx(&full[s], Sh::stage_bytes + gamma_bytes(i));
                mv_tensor_copy_2d(b_tiles + static_cast<size_t>(s) * BN * kStageK, &w_map, k, n0, &full[s], w_policy);
                mv_tensor_copy_2d(a_tiles + static_cast<size_t>(s) * kTileRows * kStageK, &x_map, k, m0, &full[s],
                                  x_policy);
                mv_bulk_copy(gamma_stages + s * kStageK, p.gamma + k, gamma_bytes(i), &full[s]);
            }
        }
        return;
    }

    /* ---- consumers ---- */
    const int c = group - 1; /* takes k stages c, c + kConsumers, ... */
    mv_pdl_wait(); /* the outputs may be read by the previous kernel */

    float acc[BN / 2];
#pragma unroll
    for (int i = 0; i < BN / 2; ++i) acc[i] = 0.0f;
    float sum_sq[2] = {0.0f, 0.0f}; /* rows warp * 16 + lane / 4 (+ 8), this thread's columns */
    const int warp = tid / 32, lane = tid % 32;
    for (int i = c; i < k_tiles; i += kConsumers) {
        const int s = i % stages;
        mv_mbarrier_wait(&full[s], static_cast<unsigned>((i / stages) & 1));
        const __nv_bfloat16 *a = a_tiles + static_cast<size_t>(s) * kTileRows * kStageK;
        const __nv_bfloat16 *b = b_tiles + static_cast<size_t>(s) * BN * kStageK;
        uint32_t frag[kStageK / 16][4];
#pragma unroll
        for (int kk = 0; kk < kStageK / 16; ++kk)
            load_scaled_fragment(frag[kk], a, gamma_stages + s * kStageK, p.hidden - (k_begin + i) * kStageK, warp,
                                 lane, kk, sum_sq);
        mv_wgmma_fence();
        mv_wgmma_fence_accumulators(acc);
#pragma unroll
        for (int kk = 0; kk < kStageK / 16; ++kk)
            mv_wgmma_rs<__nv_bfloat16, BN>::mma(acc, frag[kk], mv_wgmma_desc_sw128(b + kk * 16), 1);
        mv_wgmma_commit();
        mv_wgmma_fence_accumulators(acc);
        /* The stage goes back to the producer as soon as its products are done: the ring's depth
           is what keeps W streaming (the fragments were read out of it before the wgmma). */
        mv_wgmma_wait<0>();
        mv_wgmma_fence_accumulators(acc);
        if (tid == 0) mv_mbarrier_arrive(&empty[s]);
    }

    /* a row's four column threads are adjacent lanes */
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int o = 1; o < 4; o <<= 1) sum_sq[i] += __shfl_xor_sync(0xffffffffu, sum_sq[i], o);
    /* consumers 1.. hand their partial products and sums to consumer 0 */
    constexpr int kStride = Sh::reduce_stride;
    if (c > 0) {
        float *mine = reduce + (c - 1) * kGroupThreads * kStride;
#pragma unroll
        for (int i = 0; i < BN / 2; ++i) mine[i * kGroupThreads + tid] = acc[i];
#pragma unroll
        for (int i = 0; i < 2; ++i) mine[(BN / 2 + i) * kGroupThreads + tid] = sum_sq[i];
    }
    mv_named_barrier(1, kGroupThreads * kConsumers); /* the consumers only: the producer has left */
    if (c > 0) return;
    for (int o = 0; o < kConsumers - 1; ++o) {
        const float *theirs = reduce + o * kGroupThreads * kStride;
#pragma unroll
        for (int i = 0; i < BN / 2; ++i) acc[i] += theirs[i * kGroupThreads + tid];
#pragma unroll
        for (int i = 0; i < 2; ++i) sum_sq[i] += theirs[(BN / 2 + i) * kGroupThreads + tid];
    }
    if (split > 1) {
        /* Split-K: the parts meet in the first CTA's ring (Sh::part_floats per CTA but the first,
           float4s [i / 4][thread], then the thread's two row sums), added there in rank order. */
        float *parts = reinterpret_cast<float *>(base);
        mv_cluster_sync(); /* every CTA's products are done: the first CTA's ring is idle */
        if (rank != 0) {
            const uint32_t dst = mv_cluster_address(parts + static_cast<size_t>(rank - 1) * Sh::part_floats, 0);
#pragma unroll
            for (int i = 0; i < BN / 2; i += 4)
                mv_cluster_store(dst + ((i / 4) * kGroupThreads + tid) * 16,
                                 make_float4(acc[i], acc[i + 1], acc[i + 2], acc[i + 3]));
            mv_cluster_store(dst + ((BN / 2) * kGroupThreads + 2 * tid) * 4, sum_sq[0]);
            mv_cluster_store(dst + ((BN / 2) * kGroupThreads + 2 * tid + 1) * 4, sum_sq[1]);
        }
        mv_cluster_sync(); /* the parts are in place; no CTA exits while another may write its memory */
        if (rank != 0) return;
        for (int r = 1; r < split; ++r) {
            const float *theirs = parts + static_cast<size_t>(r - 1) * Sh::part_floats;
#pragma unroll
            for (int i = 0; i < BN / 2; i += 4) {
                const float4 v = reinterpret_cast<const float4 *>(theirs)[(i / 4) * kGroupThreads + tid];
                acc[i] += v.x;
                acc[i + 1] += v.y;
                acc[i + 2] += v.z;
                acc[i + 3] += v.w;
            }
            const float2 sq = reinterpret_cast<const float2 *>(theirs + (BN / 2) * kGroupThreads)[tid];
            sum_sq[0] += sq.x;
            sum_sq[1] += sq.y;
        }
    }
    const float rrms_rows[2] = {row_rrms(p, sum_sq[0]), row_rrms(p, sum_sq[1])};
    store_scaled_rows<BN>(p, acc, rrms_rows, m0, n0, warp, lane);
#endif /* __CUDA_ARCH_FEAT_SM90_ALL */
}

/* ---- host side ---------------------------------------------------------------------------------- */

/* The instantiated tile widths (64 rows each). */
constexpr int kWidths[] = {16, 32, 64, 128, 192};

/* f(std::integral_constant<int, BN>()) for the tile width BN (kWidths). */
template <typename F>
decltype(auto) with_width(int width, F &&f) {
    return mv_with_constant<16, 32, 64, 128, 192>(width, f);
}

/* The deepest ring that fits the block's shared memory (a multiple of kConsumers: a stage, one
   consumer), trimmed to all of K where trim_k > 0; 0 stages where fewer than two fit. */
template <int BN>
int plan_ring(const mv_cuda_device &dev, int64_t trim_k, size_t *smem) {
    const size_t fixed = kSharedAlign + Tile<BN>::tail_bytes;
    const size_t per_stage = Tile<BN>::stage_bytes;
    const size_t budget = static_cast<size_t>(dev.max_shared_block);
    int stages = kMaxStages;
    while (stages > 0 && fixed + static_cast<size_t>(stages) * per_stage > budget) --stages;
    stages = stages / kConsumers * kConsumers;
    if (trim_k > 0) {
        const int64_t whole_k = (trim_k + kConsumers - 1) / kConsumers * kConsumers;
        if (stages > whole_k) stages = static_cast<int>(whole_k);
    }
    *smem = fixed + static_cast<size_t>(stages) * per_stage;
    return stages < 2 ? 0 : stages;
}

/* Whether `tiles` clusters of `split` CTAs of width BN can run: the other CTAs' parts fit the
   first CTA's full ring (split-K keeps the ring untrimmed, so one smem per width and split), and
   every cluster is resident at once. */
template <int BN>
bool split_fits(const mv_cuda_device &dev, int split, int64_t tiles) {
    static mv_cluster_occupancy occupancy;
    size_t smem = 0;
    const int stages = plan_ring<BN>(dev, 0, &smem);
    if (stages < 2) return false;
    if (static_cast<size_t>(split - 1) * Tile<BN>::part_floats * 4 > static_cast<size_t>(stages) * Tile<BN>::stage_bytes)
        return false;
    return mv_clusters_fit(qkv_wgmma_kernel<BN>, kThreads, smem, split, tiles, mv_opt_in_of<qkv_wgmma_kernel<BN>>(),
                           occupancy, dev.device);
}

/* The tile width and split-K factor: one wave (tiles x split <= SMs) with the fewest bytes
   through the busiest CTA, its k stages of W and x plus the parts it adds or sends (a CTA's
   chain of stages is what the call waits for, so W is spread over as many CTAs as run at once).
   Split only with one row tile (M <= 64): with more, the splits measured slower than the
   narrowest unsplit tile (Qwen2.5-0.5B M = 256: 9.26 us against 7.03; M = 64, one row tile:
   5.20 against 5.51; dev/logs/wgmma-split-nvidia-h200-2026-11-23.log). Where even the narrowest
   tiles exceed one wave, the widest tile, unsplit. */
struct Tiling {
    int width, split;
};
Tiling choose_tiling(int64_t rows, int64_t cols, int64_t hidden, const mv_cuda_device &dev) {
    const int64_t row_tiles = (rows + kTileRows - 1) / kTileRows, k_all = (hidden + kStageK - 1) / kStageK;
    Tiling best = {128, 1};
    double best_bytes = -1.0;
    for (const int w : kWidths) {
        const int64_t tiles = row_tiles * ((cols + w - 1) / w);
        const int most_split = row_tiles == 1 ? mv_max_cluster : 1;
        for (int split = 1; split <= most_split && tiles * split <= dev.sms && split <= k_all; ++split) {
            const double stream = static_cast<double>((k_all + split - 1) / split) * kLineBytes * (w + kTileRows);
            const double parts = static_cast<double>(split - 1) * kGroupThreads * (w / 2 + 2) * 4;
            if (best_bytes >= 0.0 && stream + parts >= best_bytes) continue;
            if (split > 1 && !with_width(w, [&](auto bn) { return split_fits<bn()>(dev, split, tiles); })) continue;
            best = Tiling{w, split};
            best_bytes = stream + parts;
        }
    }
    return best;
}

struct WgmmaState {
    CUtensorMap x_map;
    CUtensorMap w_map;
    WgmmaParams p;
    size_t smem;
    int width;
};

template <int BN>
cudaError_t launch_width(const WgmmaState &st, const mv_qkv_plan &plan, const mv_cuda_device &dev,
                         cudaStream_t stream) {
    auto kernel = qkv_wgmma_kernel<BN>;
    cudaError_t err = mv_allow_shared(kernel, st.smem, mv_opt_in_of<qkv_wgmma_kernel<BN>>(), dev.device);
    if (err != cudaSuccess) return err;
    const int64_t m_blocks = (st.p.rows + kTileRows - 1) / kTileRows, n_blocks = (st.p.cols + BN - 1) / BN;
    const dim3 grid(static_cast<unsigned>(n_blocks * st.p.split), static_cast<unsigned>(m_blocks));
    return mv_launch_clusters(kernel, grid, dim3(kThreads), st.smem, stream, plan.pdl,
                              static_cast<unsigned>(st.p.split), st.x_map, st.w_map, st.p);
}

} // namespace

bool mv_qkv_wgmma_plan(const mv_qkv_args &a, const mv_cuda_device &dev, mv_qkv_plan *plan) {
#if defined(MINIVLLM_HAVE_SM90A)
    if (a.in.dtype != MV_BFLOAT16 || a.in.residual != nullptr || !mv_qkv_wgmma_operands_ok(a, dev)) return false;
    const int64_t h = a.in.hidden, n = a.q_cols + 2 * a.kv_cols;

    WgmmaState *st = mv_plan_state<WgmmaState>(plan);
    WgmmaParams &p = st->p;
    p = WgmmaParams{};
    p.rows = static_cast<int>(a.in.rows);
    p.hidden = static_cast<int>(h);
    p.cols = static_cast<int>(n);
    p.q_cols = static_cast<int>(a.q_cols);
    p.kv_cols = static_cast<int>(a.kv_cols);
    p.eps = a.in.eps;
    p.gamma = static_cast<const __nv_bfloat16 *>(a.in.norm_weight);
    p.q = static_cast<__nv_bfloat16 *>(a.q);
    p.k = static_cast<__nv_bfloat16 *>(a.k);
    p.v = static_cast<__nv_bfloat16 *>(a.v);
    p.q_stride = a.q_stride;
    p.k_stride = a.k_stride;
    p.v_stride = a.v_stride;
    const Tiling tiling = choose_tiling(a.in.rows, n, h, dev);
    st->width = tiling.width;
    p.split = tiling.split;
    /* unsplit, the ring need not exceed K; split, it is the size split_fits asked about */
    const int64_t trim_k = p.split > 1 ? 0 : (h + kStageK - 1) / kStageK;
    p.stages = with_width(st->width, [&](auto bn) { return plan_ring<bn()>(dev, trim_k, &st->smem); });
    if (p.stages < 2) return false;
    if (!mv_qkv_encode_rows(&st->x_map, true, a.in.x, a.in.rows, h, a.in.x_stride, kTileRows, false) ||
        !mv_qkv_encode_rows(&st->w_map, true, a.w, n, h, a.w_stride_n, st->width, true))
        return false;
    plan->writes_residual = false; /* no residual on this path */
    return true;
#else
    (void)a;
    (void)dev;
    (void)plan;
    return false;
#endif
}

cudaError_t mv_qkv_wgmma_launch(const mv_qkv_args &, const mv_qkv_plan &plan, const mv_cuda_device &dev,
                                cudaStream_t stream) {
    const WgmmaState &st = mv_plan_state<WgmmaState>(plan);
    return with_width(st.width, [&](auto bn) { return launch_width<bn()>(st, plan, dev, stream); });
}
