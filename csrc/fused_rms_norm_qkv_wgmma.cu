/*
 * fused_rms_norm_qkv_wgmma.cu: qkv = rms_norm(x) . W^T in ONE kernel on Hopper tensor cores
 * (wgmma + TMA, sm_90a), for the M between the decode stream and long prefill.
 *
 * Why one kernel: the norm + GEMM path pays a dependent launch (~2-3 us on an H200) before the
 * GEMM can start, and writes and reads back the normalized y. Here the norm costs (almost)
 * nothing extra, by the deferred-rrms identity
 *     y[m,k] . W[n,k] summed over k  =  rrms[m] * sum_k (gamma[k] * x[m,k]) . W[n,k]
 * since rrms[m] does not depend on k. Two kernels share the operand handling: a producer thread
 * streams x tiles, W tiles and gamma's slice into a ring of shared stages by TMA (128-byte
 * swizzle, zeros past the edges; W's first stages are requested before the PDL wait, so they
 * overlap the previous kernel), and consumer warpgroups load their A fragments of x with
 * ldmatrix, sum x^2 per row from them in float32, multiply them by gamma in registers (bf16) and
 * multiply on the tensor cores with A from registers (wgmma, float32 accumulators); the epilogue
 * scales each row by rrms = 1 / sqrt(sum x^2 / H + eps) and writes q, k, v.
 *   - The 64-row kernel (M up to a few hundred): a block per 64 x BN tile, its two consumers
 *     taking alternate k stages, consumer 1 adding its partial products and sums into consumer
 *     0's through shared memory at the end. An earlier form rewrote each x tile in shared memory
 *     as gamma * x (then a proxy fence and a barrier per stage) and kept two stages per consumer:
 *     1.3-3x slower.
 *   - The 128-row kernel (long prefill): persistent blocks of 128 x BN tiles (BN 128/192/256),
 *     each consumer owning 64 rows over all of K, two k16 wgmma groups in flight, the output
 *     stored by the copy engine; see its section below.
 * Where each runs (the dispatcher's wgmma_wins, fused_rms_norm_qkv.cu): the 64-row kernel only
 * where it beat norm + cuBLASLt on an H200; the 128-row kernel only when forced
 * (MINIVLLM_QKV_PATH=wgmma), as it beat norm + cuBLASLt only where its tiles fill whole waves.
 * Both lose for large H: each tile walks all of H in 64-k stages, and the 128-row kernel's main
 * loop (RS wgmma plus the norm's work per fragment) runs at ~670 dense bf16 TFLOP/s where cuBLAS
 * reaches ~770.
 *
 * Numerics (documented in minivllm_kernels.h): gamma * x is rounded to bf16 before the product
 * and rrms multiplies the float32 sum, where the other fast paths round gamma * x * rrms. Same
 * error size (one bf16 rounding per operand); bf16 only, whose range is float32's, so gamma * x
 * cannot overflow where the normalized value would not (fp16 could: those calls stay on the norm
 * + GEMM path).
 *
 * Requirements (mv_qkv_wgmma_supported): an sm_90 (9.0) GPU and this file built for sm_90a, bf16,
 * no residual, H % 8 == 0, x and W rows 16-byte aligned (TMA), W in nn.Linear layout, q/k/v
 * column counts even and their rows 4-byte aligned (paired stores), M and N below 2^31.
 */
#include <climits>
#include <cstdint>

#include <cuda.h> /* CUtensorMap (types only: maps come from cuda_device.h) */

#include "cuda_common.cuh"
#include "fused_rms_norm_qkv_paths.h"
#include "hopper.cuh"
#include "wgmma_ops.cuh"

namespace {

constexpr int kStageK = 64;               /* k per stage: one 128-byte swizzle line per row */
constexpr int kLineBytes = kStageK * 2;   /* bf16 */
constexpr int kGroupThreads = 128;        /* a warpgroup */
constexpr int kTileRows = 64;             /* rows per block: one wgmma's M */
constexpr int kConsumers = 2;             /* consumer warpgroups, taking alternate k stages */
constexpr int kThreads = kGroupThreads * (1 + kConsumers); /* and the producer's */
constexpr int kMaxStages = 16;
constexpr int kSharedAlign = 1024;        /* the 128-byte swizzle repeats every 8 lines */
constexpr int kWideRows = kConsumers * kTileRows; /* the 128-row kernel's tile rows */

struct WgmmaParams {
    int rows, hidden, cols; /* M, H, N */
    int q_cols, kv_cols;
    int stages;
    float eps;
    int copy_out; /* q/k/v are stored by the copy engine (OutMaps; the 128-row kernel) */
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
};

/* The 128-row kernel's: the ring of stages, each consumer's staging buffer for its output rows
   (64 rows x 128 columns of bf16, written through in passes; 1 KiB aligned, as the swizzle
   needs), gamma's slice of each stage, then the barriers. */
template <int BN>
struct WideTile : Stage<kWideRows, BN> {
    static constexpr int ring_stage_bytes = Stage<kWideRows, BN>::stage_bytes + kLineBytes; /* with gamma's slice */
    static constexpr int out_columns = 128; /* 256 (one pass, but three stages) measured no faster */
    static constexpr int out_bytes = kConsumers * kTileRows * out_columns * 2;
    static constexpr int tail_bytes = out_bytes + 2 * kMaxStages * 8;
};

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)

/* The dynamic shared memory from its first 1 KiB boundary (the 128-byte swizzle repeats every
   1 KiB, so swizzled tiles start on one). */
__device__ __forceinline__ unsigned char *aligned_shared_base() {
    extern __shared__ unsigned char shared_raw[];
    return reinterpret_cast<unsigned char *>((reinterpret_cast<uintptr_t>(shared_raw) + kSharedAlign - 1) &
                                             ~static_cast<uintptr_t>(kSharedAlign - 1));
}

/* The bytes of gamma's slice that travel with k stage kt: whole 16-byte chunks (H % 8 == 0). */
__device__ __forceinline__ unsigned stage_gamma_bytes(const WgmmaParams &p, int kt) {
    const int left = p.hidden - kt * kStageK;
    return static_cast<unsigned>((left < kStageK ? left : kStageK) * 2);
}

/* wgmma shared-memory descriptor of a K-major tile stored as 128-byte swizzled lines: start
   address, stride 1024 bytes between 8-line groups, 128-byte swizzle mode. The leading-byte offset
   is unused for swizzled K-major operands (set to 1, as is conventional). */
__device__ __forceinline__ uint64_t swizzled_desc(const void *p) {
    const uint64_t addr = mv_shared_address(p);
    return ((addr & 0x3FFFF) >> 4) | (1ull << 16) | (static_cast<uint64_t>(1024 >> 4) << 32) | (1ull << 62);
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int kPending>
__device__ __forceinline__ void wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
}
/* Keeps the compiler from moving accumulator reads or writes across the asynchronous wgmma. */
template <int N>
__device__ __forceinline__ void fence_accumulators(float (&d)[N]) {
#pragma unroll
    for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

/* A 32-bit shared-memory load the compiler cannot hoist above the barrier wait that guards it (and
   that it cannot mistake for a generic load). */
__device__ __forceinline__ uint32_t load_shared_u32(const void *p) {
    uint32_t v;
    asm volatile("ld.shared.b32 %0, [%1];\n" : "=r"(v) : "r"(mv_shared_address(p)));
    return v;
}

/* Pins a fragment's final values before the wgmma.fence that follows (the compiler may not sink
   their arithmetic past it, into the window where wgmmas read registers asynchronously). */
__device__ __forceinline__ void fence_fragment(uint32_t (&a)[4]) {
#pragma unroll
    for (int i = 0; i < 4; ++i) asm volatile("" : "+r"(a[i])::"memory");
}

/* The thread's A fragment of k16 step kk of a 64-row stage of x, as gamma * x in bf16, adding
   x^2 of its rows to sum_sq[0] (row warp * 16 + lane / 4) and sum_sq[1] (that row + 8).
   ldmatrix.x4 gives the four 8 x 8 blocks (rows 0-7 / 8-15 x k 0-7 / 8-15) of the warp's 16
   rows in mma.sync's A fragment order; lane l names row l % 8 (+ 8 for odd l / 8) of block l / 8.
   The 128-byte swizzle stores logical chunk c of line r at position c ^ (r % 8). gamma's slice of
   the stage lies beside it; the fragment's columns are k = 2 (lane % 4) (+1) and that + 8. Rows past
   M were zero-filled by the copy, as were k past H, whose staged gamma is stale: taken as 0.
   kSharedGamma: gamma by explicit shared loads (the 128-row kernel, where the compiler's generic
   loads sat between each wgmma wait and the next wgmma: Llama-3-8B M = 4096 376 -> 334 us), or as
   plain loads the compiler schedules freely (the 64-row kernel, where the explicit loads measured
   slower: Qwen3-0.6B M = 64 7.36 -> 7.90 us). */
template <bool kSharedGamma>
__device__ __forceinline__ void load_scaled_fragment(uint32_t (&a)[4], const __nv_bfloat16 *tile,
                                                     const __nv_bfloat16 *stage_gamma, int k_left, int warp,
                                                     int lane, int kk, float (&sum_sq)[2]) {
    const int block = lane >> 3;
    const int row = warp * 16 + (lane & 7) + 8 * (block & 1);
    const int chunk = 2 * kk + (block >> 1);
    mv_ldmatrix_x4(a, tile + row * kStageK + ((chunk ^ (row & 7)) * 8));
    const int k = kk * 16 + 2 * (lane & 3);
    uint32_t g_lo, g_hi;
    if (!kSharedGamma) {
        g_lo = k < k_left ? *reinterpret_cast<const uint32_t *>(stage_gamma + k) : 0u;
        g_hi = k + 8 < k_left ? *reinterpret_cast<const uint32_t *>(stage_gamma + k + 8) : 0u;
    } else if (k_left >= kStageK) { /* warp-uniform: every stage but a last partial one */
        g_lo = load_shared_u32(stage_gamma + k);
        g_hi = load_shared_u32(stage_gamma + k + 8);
    } else {
        g_lo = k < k_left ? load_shared_u32(stage_gamma + k) : 0u;
        g_hi = k + 8 < k_left ? load_shared_u32(stage_gamma + k + 8) : 0u;
    }
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

/* The epilogue of both kernels: this thread's accumulators of a 64-row wgmma tile (rows row0 +
   warp * 16 + lane / 4 and that + 8, columns n0 + 8 j + 2 (lane % 4) and that + 1), scaled by
   their rows' rrms, to q / k / v as bf16 pairs (q/k/v widths are even, so a pair never straddles
   two of them). The branch is mv_qkv_output's on WgmmaParams' own fields: carrying the call's
   mv_qkv_args into the kernels instead (and one producer function for both kernels) measured
   slower on an H200 (Qwen3-0.6B M = 32 7.42 -> 7.92 us;
   benchmarks/results/qkv-prefill-nvidia-h200-2026-11-22.log, run 13). */
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
__global__ void __launch_bounds__(kThreads)
    qkv_wgmma_kernel(const __grid_constant__ CUtensorMap x_map, const __grid_constant__ CUtensorMap w_map,
                     WgmmaParams p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    using Sh = Tile<BN>;
    unsigned char *base = aligned_shared_base();
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
    const int n0 = blockIdx.x * BN;
    const int m0 = blockIdx.y * kTileRows;
    const int k_tiles = (p.hidden + kStageK - 1) / kStageK;

    if (threadIdx.x == 0) {
        for (int s = 0; s < stages; ++s) {
            mv_mbarrier_init(&full[s], 1);
            /* each stage belongs to one consumer (stages is a multiple of kConsumers) */
            mv_mbarrier_init(&empty[s], 1);
        }
        mv_mbarrier_init_fence();
    }
    __syncthreads();
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
            auto gamma_bytes = [&](int kt) { return stage_gamma_bytes(p, kt); };
            for (int kt = 0; kt < first; ++kt) {
                mv_mbarrier_arrive_expect_tx(&full[kt], Sh::stage_bytes + gamma_bytes(kt));
                mv_tensor_copy_2d(b_tiles + static_cast<size_t>(kt) * BN * kStageK, &w_map, kt * kStageK, n0,
                                  &full[kt], w_policy);
            }
            mv_pdl_wait();
            for (int kt = 0; kt < first; ++kt) {
                mv_tensor_copy_2d(a_tiles + static_cast<size_t>(kt) * kTileRows * kStageK, &x_map, kt * kStageK, m0,
                                  &full[kt], x_policy);
                mv_bulk_copy(gamma_stages + kt * kStageK, p.gamma + kt * kStageK, gamma_bytes(kt), &full[kt]);
            }
            for (int kt = first; kt < k_tiles; ++kt) {
                const int s = kt % stages;
                mv_mbarrier_wait(&empty[s], static_cast<unsigned>((kt / stages - 1) & 1));
                mv_mbarrier_arrive_expect_tx(&full[s], Sh::stage_bytes + gamma_bytes(kt));
                mv_tensor_copy_2d(b_tiles + static_cast<size_t>(s) * BN * kStageK, &w_map, kt * kStageK, n0, &full[s],
                                  w_policy);
                mv_tensor_copy_2d(a_tiles + static_cast<size_t>(s) * kTileRows * kStageK, &x_map, kt * kStageK, m0, &full[s],
                                  x_policy);
                mv_bulk_copy(gamma_stages + s * kStageK, p.gamma + kt * kStageK, gamma_bytes(kt), &full[s]);
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
    for (int kt = c; kt < k_tiles; kt += kConsumers) {
        const int s = kt % stages;
        mv_mbarrier_wait(&full[s], static_cast<unsigned>((kt / stages) & 1));
        const __nv_bfloat16 *a = a_tiles + static_cast<size_t>(s) * kTileRows * kStageK;
        const __nv_bfloat16 *b = b_tiles + static_cast<size_t>(s) * BN * kStageK;
        uint32_t frag[kStageK / 16][4];
#pragma unroll
        for (int kk = 0; kk < kStageK / 16; ++kk)
            load_scaled_fragment<false>(frag[kk], a, gamma_stages + s * kStageK, p.hidden - kt * kStageK, warp, lane, kk,
                                 sum_sq);
        wgmma_fence();
        fence_accumulators(acc);
#pragma unroll
        for (int kk = 0; kk < kStageK / 16; ++kk)
            mv_wgmma_rs<__nv_bfloat16, BN>::mma(acc, frag[kk], swizzled_desc(b + kk * 16), 1);
        wgmma_commit();
        fence_accumulators(acc);
        /* The stage goes back to the producer as soon as its products are done: the ring's depth
           is what keeps W streaming (the fragments were read out of it before the wgmma). */
        wgmma_wait<0>();
        fence_accumulators(acc);
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
    const float rrms_rows[2] = {row_rrms(p, sum_sq[0]), row_rrms(p, sum_sq[1])};
    store_scaled_rows<BN>(p, acc, rrms_rows, m0, n0, warp, lane);
#endif /* __CUDA_ARCH_FEAT_SM90_ALL */
}

/* ---- the persistent 128-row kernel (long prefill) ------------------------------------------------
   At large M the 64-row kernel's split-k (each consumer half the stages, a reduction through shared
   memory at the end) and its one tile per block leave the tensor cores idle between tiles. Here a
   block of 128 x BN outputs gives each consumer warpgroup 64 rows over ALL of K (so no reduction:
   each has its rows' whole sums of x^2); blocks are persistent (one per multiprocessor, walking
   tiles gridDim.x apart, so the producer fills the next tile's stages while the consumers finish
   this one); each consumer issues one wgmma group per k16 step and keeps two in flight, loading
   and scaling the next step's fragment meanwhile; the output leaves through shared memory by the
   copy engine (store_rows_by_copy). Tiles are visited in groups of kRasterRows row blocks, row
   block fastest, so that the x rows and W columns a wave of blocks reads stay in L2.
   Measured on an H200 (bf16, Llama-3-8B M = 4096, benchmarks/probes/qkv_wgmma_probe.cu, launches
   back to back; benchmarks/results/qkv-prefill-nvidia-h200-2026-11-22.log), us: 332 with the
   accumulators stored as 4-byte pairs from registers, 317 as 16-byte stores through shared
   memory, 305-307 by the copy engine, 301 with no stores at all; with pair stores but without
   the norm's work 320 (A from registers) and 319 (A read by wgmma from shared memory); cuBLAS on
   pre-normalized x 265-300 in the same runs. Tried and dropped: clusters of two blocks sharing W
   by multicast (1.4-1.5x slower), the row sums in the producer warpgroup's idle warps (slower: they
   contend for issue slots and shared-memory bandwidth), 128 x 128 tiles (0.67x), a whole stage of
   fragments loaded ahead (ptxas then serializes every wgmma, C7513). */

/* The output tensors as the copy engine sees them: q, k, v, each [M, width] with its row stride,
   in boxes of 64 rows x 64 columns (128-byte swizzle). */
struct OutMaps {
    CUtensorMap q, k, v;
};

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
/* The 128-row kernel's epilogue where q/k/v widths are multiples of 64 (OutMaps): the consumer's 64
   rows go out by the copy engine in passes of kColumns columns through its staging buffer, so the
   consumer only writes shared memory and goes on to its next tile while the stores drain. (Its
   4-byte pair stores, straight from the accumulators, took a third of the kernel's time at
   H = 1024: the tensor cores wait for the epilogue.) The buffer holds kColumns / 64 boxes of 64
   rows x 128 bytes, swizzled as the maps say (16-byte chunk c of row r at c ^ (r % 8)), which also
   lets the accumulator pairs (8 rows x 4 lanes per warp store) hit 32 distinct banks. Before a
   pass rewrites the buffer, the thread that issued the previous stores waits until they have read
   it. */
template <int BN, int kColumns>
__device__ __forceinline__ void store_rows_by_copy(const WgmmaParams &p, const OutMaps &maps,
                                                   const float (&acc)[BN / 2], const float (&rrms_rows)[2], int row0,
                                                   int n0, int warp, int lane, int tid, unsigned char *buffer,
                                                   int barrier) {
    constexpr int kBoxBytes = kTileRows * 128;
#pragma unroll
    for (int pass = 0; pass < (BN + kColumns - 1) / kColumns; ++pass) {
        if (tid == 0) mv_bulk_wait_read();
        mv_named_barrier(barrier, kGroupThreads);
#pragma unroll
        for (int jj = 0; jj < kColumns / 8; ++jj) {
            const int j = pass * (kColumns / 8) + jj;
            if (j >= BN / 8) break; /* a last, narrower pass */
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int r = warp * 16 + lane / 4 + 8 * h;
                __nv_bfloat162 v = __floats2bfloat162_rn(acc[4 * j + 2 * h] * rrms_rows[h],
                                                         acc[4 * j + 2 * h + 1] * rrms_rows[h]);
                const uint32_t addr = mv_shared_address(buffer + (jj / 8) * kBoxBytes + r * 128 +
                                                        (((jj % 8) ^ (r & 7)) << 4) + 4 * (lane % 4));
                asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(addr), "r"(*reinterpret_cast<uint32_t *>(&v))
                             : "memory");
            }
        }
        mv_fence_proxy_async_shared();
        mv_named_barrier(barrier, kGroupThreads);
        if (tid == 0) {
#pragma unroll
            for (int box = 0; box < kColumns / 64; ++box) {
                const int col = n0 + pass * kColumns + box * 64;
                if (pass * kColumns + box * 64 >= BN || col >= p.cols) break;
                const unsigned char *src = buffer + box * kBoxBytes;
                if (col < p.q_cols)
                    mv_tensor_store_2d(&maps.q, col, row0, src);
                else if (col < p.q_cols + p.kv_cols)
                    mv_tensor_store_2d(&maps.k, col - p.q_cols, row0, src);
                else
                    mv_tensor_store_2d(&maps.v, col - p.q_cols - p.kv_cols, row0, src);
            }
            mv_bulk_commit();
        }
    }
}

/* Tile t of the grid: its row block and column block, in groups of kRasterRows row blocks
   (row block fastest within a group). */
constexpr int kRasterRows = 16;
__device__ __forceinline__ void raster_tile(int t, int m_blocks, int n_blocks, int *m_blk, int *n_blk) {
    const int group = t / (kRasterRows * n_blocks);
    const int first = group * kRasterRows;
    const int group_rows = m_blocks - first < kRasterRows ? m_blocks - first : kRasterRows;
    const int idx = t - group * kRasterRows * n_blocks;
    *m_blk = first + idx % group_rows;
    *n_blk = idx / group_rows;
}
#endif

template <int BN>
__global__ void __launch_bounds__(kThreads, 1)
    qkv_wgmma_wide_kernel(const __grid_constant__ CUtensorMap x_map, const __grid_constant__ CUtensorMap w_map,
                          const __grid_constant__ OutMaps out_maps, WgmmaParams p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    using Sh = WideTile<BN>;
    constexpr int kProducerRegisters = 40; /* setmaxnreg: 128 x 40 + 256 x 232 <= 64 K registers */
    constexpr int kConsumerRegisters = 232;
    unsigned char *base = aligned_shared_base();
    const int stages = p.stages;
    __nv_bfloat16 *a_tiles = reinterpret_cast<__nv_bfloat16 *>(base);
    __nv_bfloat16 *b_tiles = reinterpret_cast<__nv_bfloat16 *>(base + static_cast<size_t>(stages) * Sh::a_bytes);
    unsigned char *out_stage = base + static_cast<size_t>(stages) * Sh::stage_bytes; /* 1 KiB aligned: swizzled */
    __nv_bfloat16 *gamma_stages = reinterpret_cast<__nv_bfloat16 *>(out_stage + Sh::out_bytes);
    uint64_t *full = reinterpret_cast<uint64_t *>(gamma_stages + stages * kStageK);
    uint64_t *empty = full + kMaxStages;

    const int group = threadIdx.x / kGroupThreads;
    const int tid = threadIdx.x % kGroupThreads;
    const int k_tiles = (p.hidden + kStageK - 1) / kStageK;
    const int m_blocks = (p.rows + kWideRows - 1) / kWideRows;
    const int n_blocks = (p.cols + BN - 1) / BN;
    const int tiles = m_blocks * n_blocks;

    if (threadIdx.x == 0) {
        for (int s = 0; s < stages; ++s) {
            mv_mbarrier_init(&full[s], 1);
            mv_mbarrier_init(&empty[s], kConsumers); /* both consumers read every stage */
        }
        mv_mbarrier_init_fence();
    }
    __syncthreads();
    mv_pdl_trigger();

    if (group == 0) {
        /* ---- producer: stage i of this block is k tile i % k_tiles of its tile i / k_tiles ---- */
        asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kProducerRegisters));
        if (tid == 0) {
            const uint64_t x_policy = mv_evict_last_policy();
            const uint64_t w_policy = mv_evict_normal_policy(); /* W columns are reused by a group's row blocks */
            const int blocks = static_cast<int>(gridDim.x);
            const int my_tiles = (tiles - static_cast<int>(blockIdx.x) + blocks - 1) / blocks;
            const int total = my_tiles * k_tiles;
            auto origin = [&](int i, int *m0, int *n0, int *kt) {
                int m_blk, n_blk;
                raster_tile(static_cast<int>(blockIdx.x) + (i / k_tiles) * blocks, m_blocks, n_blocks, &m_blk, &n_blk);
                *m0 = m_blk * kWideRows;
                *n0 = n_blk * BN;
                *kt = i % k_tiles;
            };
            auto gamma_bytes = [&](int kt) { return stage_gamma_bytes(p, kt); };
            auto copy_w = [&](int slot, int kt, int n0) {
                mv_tensor_copy_2d(b_tiles + static_cast<size_t>(slot) * BN * kStageK, &w_map, kt * kStageK, n0,
                                  &full[slot], w_policy);
            };
            const int first = total < stages ? total : stages;
            /* W's first stages before waiting for the previous kernel (see the 64-row kernel) */
            for (int i = 0; i < first; ++i) {
                int m0, n0, kt;
                origin(i, &m0, &n0, &kt);
                mv_mbarrier_arrive_expect_tx(&full[i], Sh::stage_bytes + gamma_bytes(kt));
                copy_w(i, kt, n0);
            }
            mv_pdl_wait();
            for (int i = 0; i < first; ++i) {
                int m0, n0, kt;
                origin(i, &m0, &n0, &kt);
                mv_tensor_copy_2d(a_tiles + static_cast<size_t>(i) * kWideRows * kStageK, &x_map, kt * kStageK, m0,
                                  &full[i], x_policy);
                mv_bulk_copy(gamma_stages + i * kStageK, p.gamma + kt * kStageK, gamma_bytes(kt), &full[i]);
            }
            int s = first % stages;
            unsigned phase = 0; /* of the empty barrier being waited for: round - 1 */
            for (int i = first; i < total; ++i) {
                int m0, n0, kt;
                origin(i, &m0, &n0, &kt);
                mv_mbarrier_wait(&empty[s], phase);
                mv_mbarrier_arrive_expect_tx(&full[s], Sh::stage_bytes + gamma_bytes(kt));
                copy_w(s, kt, n0);
                mv_tensor_copy_2d(a_tiles + static_cast<size_t>(s) * kWideRows * kStageK, &x_map, kt * kStageK, m0,
                                  &full[s], x_policy);
                mv_bulk_copy(gamma_stages + s * kStageK, p.gamma + kt * kStageK, gamma_bytes(kt), &full[s]);
                if (++s == stages) {
                    s = 0;
                    phase ^= 1u;
                }
            }
        }
    } else {
        /* ---- consumers: consumer c owns rows 64 c .. 64 c + 63 of every tile ---- */
        asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kConsumerRegisters));
        const int c = group - 1;
        const int warp = tid / 32, lane = tid % 32;
        auto release = [&](int slot) {
            if (tid == 0) mv_mbarrier_arrive(&empty[slot]);
        };
        mv_pdl_wait(); /* the outputs may be read by the previous kernel */
        int s = 0;          /* the slot being read */
        unsigned phase = 0; /* and the parity of its full barrier */
        for (int t = blockIdx.x; t < tiles; t += gridDim.x) {
            int m_blk, n_blk;
            raster_tile(t, m_blocks, n_blocks, &m_blk, &n_blk);
            float acc[BN / 2];
#pragma unroll
            for (int i = 0; i < BN / 2; ++i) acc[i] = 0.0f;
            float sum_sq[2] = {0.0f, 0.0f};
            /* One wgmma group per k16 step, at most two in flight (wait_group 2), each reading its
               own fragment of four: the fragment loaded next (one step ahead, from the next stage at
               a stage's end) is never one an unfinished group reads. ptxas serializes every wgmma
               where registers a running group may read are written (C7513), which loading a whole
               stage of fragments ahead did. A slot goes back to the producer(s) once the group of
               its last step is done, two steps later. */
            uint32_t frag[kStageK / 16][4];
            auto stage_a = [&](int slot) {
                return a_tiles + static_cast<size_t>(slot) * kWideRows * kStageK + c * kTileRows * kStageK;
            };
            mv_mbarrier_wait(&full[s], phase);
            load_scaled_fragment<true>(frag[0], stage_a(s), gamma_stages + s * kStageK, p.hidden, warp, lane, 0,
                                        sum_sq);
            int held = -1; /* a slot whose last group may still run */
            for (int kt = 0; kt < k_tiles; ++kt) {
                const int k_left = p.hidden - kt * kStageK;
                const __nv_bfloat16 *b = b_tiles + static_cast<size_t>(s) * BN * kStageK;
                int next = s;
                unsigned next_phase = phase;
                if (++next == stages) {
                    next = 0;
                    next_phase ^= 1u;
                }
#pragma unroll
                for (int kk = 0; kk < kStageK / 16; ++kk) {
                    if (kk + 1 < kStageK / 16) {
                        load_scaled_fragment<true>(frag[kk + 1], stage_a(s), gamma_stages + s * kStageK, k_left,
                                                    warp, lane, kk + 1, sum_sq);
                    } else if (kt + 1 < k_tiles) {
                        mv_mbarrier_wait(&full[next], next_phase);
                        load_scaled_fragment<true>(frag[0], stage_a(next), gamma_stages + next * kStageK,
                                                    k_left - kStageK, warp, lane, 0, sum_sq);
                    }
                    fence_fragment(frag[kk]);
                    wgmma_fence();
                    fence_accumulators(acc);
                    mv_wgmma_rs<__nv_bfloat16, BN>::mma(acc, frag[kk], swizzled_desc(b + kk * 16), 1);
                    wgmma_commit();
                    wgmma_wait<2>();
                    fence_accumulators(acc);
                    /* two steps back was the previous stage's last: its slot is free */
                    if (kk == 1 && held >= 0) {
                        release(held);
                        held = -1;
                    }
                }
                held = s;
                s = next;
                phase = next_phase;
            }
            wgmma_wait<0>();
            fence_accumulators(acc);
            release(held);
#pragma unroll
            for (int i = 0; i < 2; ++i)
#pragma unroll
                for (int o = 1; o < 4; o <<= 1) sum_sq[i] += __shfl_xor_sync(0xffffffffu, sum_sq[i], o);
            const float rrms_rows[2] = {row_rrms(p, sum_sq[0]), row_rrms(p, sum_sq[1])};
            const int row0 = m_blk * kWideRows + c * kTileRows, n0 = n_blk * BN;
            if (p.copy_out)
                store_rows_by_copy<BN, Sh::out_columns>(p, out_maps, acc, rrms_rows, row0, n0, warp, lane, tid,
                                                        out_stage + c * (Sh::out_bytes / kConsumers), 2 + c);
            else
                store_scaled_rows<BN>(p, acc, rrms_rows, row0, n0, warp, lane);
        }
        if (tid == 0) mv_bulk_wait(); /* the stores complete before the grid does */
    }
#endif /* __CUDA_ARCH_FEAT_SM90_ALL */
}

/* ---- host side ---------------------------------------------------------------------------------- */


/* A row-major [rows, cols] bf16 matrix with the given row stride, in boxes of box_rows x 64
   (cuda_device.h; cached for weights). */
bool encode_rows(CUtensorMap *map, const void *data, int64_t rows, int64_t cols, int64_t stride, int box_rows,
                 bool cached) {
    const cuuint64_t dims[2] = {static_cast<cuuint64_t>(cols), static_cast<cuuint64_t>(rows)};
    const cuuint64_t strides[1] = {static_cast<cuuint64_t>(stride) * 2};
    const cuuint32_t box[2] = {static_cast<cuuint32_t>(kStageK), static_cast<cuuint32_t>(box_rows)};
    return mv_swizzled_tensor_map(map, true, 2, data, dims, strides, box, cached);
}

/* One launch of the kRows-row kernel (64: split-k blocks, one per tile; 128: persistent, one
   block per multiprocessor) with tiles BN wide, on the deepest ring that fits. */
template <int kRows, int BN>
cudaError_t launch_tile(const mv_qkv_args &a, const WgmmaParams &base, cudaStream_t stream, const mv_cuda_device &dev,
                        bool pdl) {
    constexpr bool kWide = kRows == kWideRows;
    static mv_shared_opt_in opt_in;
    const int k_tiles = static_cast<int>((a.in.hidden + kStageK - 1) / kStageK);
    const size_t fixed = kSharedAlign + (kWide ? WideTile<BN>::tail_bytes : Tile<BN>::tail_bytes);
    const size_t per_stage = kWide ? WideTile<BN>::ring_stage_bytes : Tile<BN>::stage_bytes;
    const size_t budget = static_cast<size_t>(dev.max_shared_block);
    int stages = kMaxStages;
    while (stages > 0 && fixed + static_cast<size_t>(stages) * per_stage > budget) --stages;
    if (!kWide) {
        /* up to all of K, a multiple of kConsumers: a stage, one consumer */
        stages = stages / kConsumers * kConsumers;
        const int whole_k = (k_tiles + kConsumers - 1) / kConsumers * kConsumers;
        if (stages > whole_k) stages = whole_k;
    }
    if (stages < 2) return cudaErrorNotSupported;
    const size_t smem = fixed + static_cast<size_t>(stages) * per_stage;

    CUtensorMap x_map, w_map;
    if (!encode_rows(&x_map, a.in.x, a.in.rows, a.in.hidden, a.in.x_stride, kRows, false) ||
        !encode_rows(&w_map, a.w, a.q_cols + 2 * a.kv_cols, a.in.hidden, a.w_stride_n, BN, true))
        return cudaErrorNotSupported;
    WgmmaParams p = base;
    p.stages = stages;
    const int64_t m_blocks = (p.rows + kRows - 1) / kRows, n_blocks = (p.cols + BN - 1) / BN;
    cudaError_t err;
    if constexpr (kWide) {
        auto kernel = qkv_wgmma_wide_kernel<BN>;
        OutMaps out_maps;
        if (p.copy_out &&
            !(encode_rows(&out_maps.q, a.q, a.in.rows, a.q_cols, a.q_stride, kTileRows, false) &&
              encode_rows(&out_maps.k, a.k, a.in.rows, a.kv_cols, a.k_stride, kTileRows, false) &&
              encode_rows(&out_maps.v, a.v, a.in.rows, a.kv_cols, a.v_stride, kTileRows, false)))
            p.copy_out = 0;
        err = mv_allow_shared(kernel, smem, opt_in, dev.device);
        if (err != cudaSuccess) return err;
        const int64_t tiles = m_blocks * n_blocks;
        const dim3 grid(static_cast<unsigned>(tiles < dev.sms ? tiles : dev.sms));
        err = mv_launch(kernel, grid, dim3(kThreads), smem, stream, pdl, x_map, w_map, out_maps, p);
    } else {
        auto kernel = qkv_wgmma_kernel<BN>;
        err = mv_allow_shared(kernel, smem, opt_in, dev.device);
        if (err != cudaSuccess) return err;
        const dim3 grid(static_cast<unsigned>(n_blocks), static_cast<unsigned>(m_blocks));
        err = mv_launch(kernel, grid, dim3(kThreads), smem, stream, pdl, x_map, w_map, p);
    }
    return err != cudaSuccess ? err : cudaGetLastError();
}

/* The instantiated tiles (rows x columns), and one choice per call. MINIVLLM_QKV_WGMMA_TILE=RxC
   (e.g. "64x32", "128x192") forces one of them (benchmarks of the choice). An earlier 128-row
   form that split the rows between the consumers of a one-tile block (BN 128 and 256, wait_group
   0) was slower than the 64-row tiles at every M up to 512 (H200, bf16: Qwen3-0.6B M = 512 15.6 /
   23.1 us against 11.9 for norm + cuBLASLt; benchmarks/results/qkv-wgmma-nvidia-h200-2026-11-22.log). */
constexpr mv_tile_shape kShapes[] = {{64, 16}, {64, 32}, {64, 64}, {64, 128}, {128, 128}, {128, 192}, {128, 256}};
constexpr int kWideMinRows = 512; /* the persistent 128-row kernel from here on */

mv_tile_shape forced_shape() {
    static const mv_tile_shape forced = mv_env_tile_shape("MINIVLLM_QKV_WGMMA_TILE", kShapes,
                                                          static_cast<int>(sizeof(kShapes) / sizeof(kShapes[0])));
    return forced;
}

/* Below kWideMinRows: the narrowest 64-row tile whose grid still fits one block per
   multiprocessor (each block's chain of stages is what the call waits for, so W is spread over
   as many blocks as run at once; measured best of the four at every M the dispatcher sends
   there). From kWideMinRows: the persistent 128-row kernel, at the width below. */
mv_tile_shape choose_shape(int64_t rows, int64_t cols, int sms) {
    if (forced_shape().rows != 0) return forced_shape();
    if (rows >= kWideMinRows) {
        /* the width whose waves of tiles (one tile per multiprocessor at a time) cost least, a wave
           of width w costing w / (its column rate relative to 256's: 192 0.84, 128 0.66, from
           Llama-3-8B M = 4096 on an H200, benchmarks/probes/qkv_wgmma_probe.cu) */
        const int64_t m_blocks = (rows + kWideRows - 1) / kWideRows;
        const struct {
            int width, cost_per_wave; /* width / rate, scaled */
        } options[] = {{256, 256}, {192, 229}, {128, 194}};
        mv_tile_shape best = {kWideRows, 256};
        int64_t best_cost = -1;
        for (const auto &o : options) {
            const int64_t waves = (m_blocks * ((cols + o.width - 1) / o.width) + sms - 1) / sms;
            if (best_cost < 0 || waves * o.cost_per_wave < best_cost) {
                best_cost = waves * o.cost_per_wave;
                best = mv_tile_shape{kWideRows, o.width};
            }
        }
        return best;
    }
    const int64_t row_tiles = (rows + kTileRows - 1) / kTileRows;
    for (const mv_tile_shape &t : kShapes)
        if (t.rows == kTileRows && row_tiles * ((cols + t.cols - 1) / t.cols) <= sms) return t;
    return mv_tile_shape{64, 128};
}

} // namespace

extern "C" int mv_qkv_wgmma_supported(const mv_qkv_args *a, const mv_cuda_device *dev) {
#if defined(MINIVLLM_HAVE_SM90A)
    if (dev->major != 9 || dev->minor != 0) return 0;
    if (a->in.dtype != MV_BFLOAT16 || a->in.residual != nullptr || a->w_stride_k != 1) return 0;
    const int64_t h = a->in.hidden, n = a->q_cols + 2 * a->kv_cols;
    if (h % 8 != 0 || a->in.rows >= INT_MAX || n >= INT_MAX || h >= INT_MAX) return 0;
    if (a->in.x_stride < h || !mv_aligned16(a->in.x, a->in.x_stride, 2)) return 0;
    if (a->w_stride_n < h || !mv_aligned16(a->w, a->w_stride_n, 2)) return 0;
    if (!mv_aligned16(a->in.norm_weight, 0, 2)) return 0;
    if (a->q_cols % 2 != 0 || a->kv_cols % 2 != 0) return 0;
    const void *outs[3] = {a->q, a->k, a->v};
    const int64_t strides[3] = {a->q_stride, a->k_stride, a->v_stride};
    for (int i = 0; i < 3; ++i)
        if (reinterpret_cast<uintptr_t>(outs[i]) % 4 != 0 || strides[i] % 2 != 0) return 0;
    return mv_tensor_maps_available();
#else
    (void)a;
    (void)dev;
    return 0;
#endif
}

extern "C" int mv_qkv_wgmma_cuda(const mv_qkv_args *a, void *stream, const mv_cuda_device *dev) {
    WgmmaParams p = {};
    p.rows = static_cast<int>(a->in.rows);
    p.hidden = static_cast<int>(a->in.hidden);
    p.cols = static_cast<int>(a->q_cols + 2 * a->kv_cols);
    p.q_cols = static_cast<int>(a->q_cols);
    p.kv_cols = static_cast<int>(a->kv_cols);
    p.eps = a->in.eps;
    p.gamma = static_cast<const __nv_bfloat16 *>(a->in.norm_weight);
    p.q = static_cast<__nv_bfloat16 *>(a->q);
    p.k = static_cast<__nv_bfloat16 *>(a->k);
    p.v = static_cast<__nv_bfloat16 *>(a->v);
    p.q_stride = a->q_stride;
    p.k_stride = a->k_stride;
    p.v_stride = a->v_stride;
    p.copy_out = a->q_cols % 64 == 0 && a->kv_cols % 64 == 0 && mv_aligned16(a->q, a->q_stride, 2) &&
                 mv_aligned16(a->k, a->k_stride, 2) && mv_aligned16(a->v, a->v_stride, 2);
    cudaStream_t s = static_cast<cudaStream_t>(stream);
    const bool pdl = mv_pdl_enabled(*dev);
    const mv_tile_shape t = choose_shape(a->in.rows, p.cols, dev->sms);
    cudaError_t err;
    if (t.rows == kWideRows)
        err = t.cols == 128   ? launch_tile<kWideRows, 128>(*a, p, s, *dev, pdl)
              : t.cols == 192 ? launch_tile<kWideRows, 192>(*a, p, s, *dev, pdl)
                              : launch_tile<kWideRows, 256>(*a, p, s, *dev, pdl);
    else if (t.cols == 16)
        err = launch_tile<kTileRows, 16>(*a, p, s, *dev, pdl);
    else if (t.cols == 32)
        err = launch_tile<kTileRows, 32>(*a, p, s, *dev, pdl);
    else if (t.cols == 64)
        err = launch_tile<kTileRows, 64>(*a, p, s, *dev, pdl);
    else
        err = launch_tile<kTileRows, 128>(*a, p, s, *dev, pdl);
    return static_cast<int>(err);
}
