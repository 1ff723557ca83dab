/*
 * swap_ab_gemm.cu: does a tile of 128 features x all of a call's tokens (64-256) with swapped
 * operands reach cuBLAS at 64-256 rows, and does it still once it carries the norm? A probe for
 * issue 29, not part of the library: the engine's main loop alone, timed beside cuBLAS alone on a
 * pre-normalized x (dev/logs/wgmma-stage-bound-nvidia-h200-h100-2026-11-25.log: L2 gives an SM
 * 28-35 B a clock of lines no other SM reads, up to 92 B of lines every SM reads in step; with all
 * of a call's tokens in one tile only W's lines are distinct, 16384 multiply-adds per W line at
 * 256 tokens).
 *
 * y[M][N] = f(x)[M][H] . W[N][H]^T, bf16 in, float32 products. A CTA owns 128 features (wgmma's M:
 * two consumer warpgroups of 64) by T tokens (wgmma's N; rows past M zero-filled by the copy), and
 * a range of its (feature tile, k stage) iterations: 1/S of one tile's k stages (split-K: CTAs of
 * one split index read the same x lines at the same time) or an equal share of all of them
 * (stream-K, one CTA an SM; a range meets at most two tiles). A stage is 64 k: W's 128 x 128 bytes
 * and x's T x 128 bytes (128-byte swizzle); one producer thread fills a ring of 4-8. The norm and
 * the fix-up, four ways (template kNorm):
 *   0  none: f(x) = x, both operands from shared memory (wgmma "ss");
 *   1  gamma on W: f(x) = gamma * x through x . (gamma * W)^T, the consumers' W fragments loaded by
 *      ldmatrix, multiplied by gamma in registers and fed as A (wgmma "rs"), the next stage's
 *      fragments loaded while this stage's products run;
 *   2  the whole norm: 1, plus three helper warps summing x^2 per token from the staged x tiles
 *      (read only), stored per range segment; the sum kernel scales each output by rrms
 *      (f(x) = rms_norm(x) * gamma, as the engine would compute it);
 *   3  the whole op in the kernel: 2, with the engine's fix-up instead of the sum kernel (a tile's
 *      later parts, each the first segment of a later CTA's range, go to the workspace and are
 *      counted in; the CTA holding the tile's k from 0 waits for the count, adds them in CTA order
 *      and stores y = rrms * sum, two features a 4-byte store).
 * For 0-2 each range's segments go to a float workspace and a second kernel sums them in CTA order.
 * Checked against cuBLAS on f(x) made by a reference kernel, timed in CUDA-graph replay over layers
 * of distinct weights (>= 256 MiB) beside cuBLAS on the same layers (probe_common.cuh's timing).
 *
 *   nvcc -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a -Icsrc -Xptxas -v \
 *        dev/probes/swap_ab_gemm.cu -o swap_ab_gemm -lcuda -lcublas 2>&1 | grep -c C75  # must be 0
 *   ./swap_ab_gemm                      the default table (dev/probes/README.md)
 *   ./swap_ab_gemm N H M T S NORM ...   one line per group of six: T in {16, 64, 128, 256} tokens a tile;
 *                                       S > 0 splits S ways, 0 picks, -1 stream-K; NORM 0-3
 */
#include <cublas_v2.h>
#include <cuda.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "../../csrc/cuda/common.cuh"
#include "../../csrc/cuda/hopper.cuh"
#include "../../csrc/cuda/wgmma_ops.cuh"
#include "probe_common.cuh"

namespace {

constexpr int kF = 128, kK = 64;
constexpr int kWBytes = kF * 128;
constexpr int kThreads = 384;
constexpr int kHelpers = 96; /* warps 1-3; warp 0's first lane copies */
template <int kT>
__host__ __device__ constexpr int slot_bytes() { return kWBytes + kT * 128; }
/* as many stages as fit 200 KiB, at most 12: 4 at 256 tokens, 6 at 128, 8 at 64, 11 at 16 */
template <int kT>
__host__ __device__ constexpr int ring_stages() { return 200 * 1024 / slot_bytes<kT>() < 12 ? 200 * 1024 / slot_bytes<kT>() : 12; }
template <int kT>
constexpr size_t smem_bytes() {
    return 1024 + static_cast<size_t>(ring_stages<kT>()) * (slot_bytes<kT>() + kK * 2) + 2 * ring_stages<kT>() * 8 +
           4 * 8 + 3 * kT * 4;
}
/* kNorm 3's workspace slot of a CTA: its range's first segment, where that is a later part of a tile */
template <int kT>
__host__ __device__ constexpr size_t part_floats() { return static_cast<size_t>(kT) * kF + kT; }

struct Params {
    int m, n, h, tiles, k_all;
    int split; /* S > 0: tile c / S, its k stages split S ways; 0: stream-K, equal ranges of (tile, k) */
    int ctas;  /* CTAs per token tile (gridDim.x) */
    float eps;
    float *parts; /* [token tile][CTA][2 segments][kT][kF]: a CTA's range meets at most 2 tiles */
    float *sq;    /* [token tile][CTA][2 segments][kT]: x^2 summed over the segment's k (kNorm 2) */
    int *counters;    /* kNorm 3: [token tile][tile], zero between calls */
    __nv_bfloat16 *y; /* kNorm 3: [m][n] */
};

/* The first (tile, k stage) iteration of CTA c's range (tile * k_all + k). */
__host__ __device__ inline int64_t range_begin(const Params &p, int c) {
    if (p.split > 0) return static_cast<int64_t>(c / p.split) * p.k_all + static_cast<int64_t>(c % p.split) * p.k_all / p.split;
    return static_cast<int64_t>(p.tiles) * p.k_all * c / p.ctas;
}

/* The CTA whose range holds iteration it: the last c with range_begin(c) <= it. */
__device__ inline int range_owner(const Params &p, int64_t it) {
    int lo = 0, hi = p.ctas - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (range_begin(p, mid) <= it) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

__device__ __forceinline__ uint32_t mul_bf16x2(uint32_t a, uint32_t b) {
    __nv_bfloat162 r = __hmul2(*reinterpret_cast<const __nv_bfloat162 *>(&a), *reinterpret_cast<const __nv_bfloat162 *>(&b));
    return *reinterpret_cast<uint32_t *>(&r);
}

template <int kT, int kNorm>
__global__ void __launch_bounds__(kThreads, 1)
    swap_ab_kernel(const __grid_constant__ CUtensorMap w_map, const __grid_constant__ CUtensorMap x_map,
                   const __nv_bfloat16 *gamma, Params p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    constexpr int kSlot = slot_bytes<kT>(), kStages = ring_stages<kT>();
    unsigned char *ring = mv_swizzle_aligned_shared();
    __nv_bfloat16 *gamma_s = reinterpret_cast<__nv_bfloat16 *>(ring + kStages * kSlot); /* [kStages][kK] */
    uint64_t *full = reinterpret_cast<uint64_t *>(gamma_s + kStages * kK);
    uint64_t *empty = full + kStages;
    uint64_t *sums_full = empty + kStages, *sums_empty = sums_full + 2; /* kNorm 3: [2] each */
    float *row_sq = reinterpret_cast<float *>(sums_empty + 2);          /* kNorm 3: [2][kT] */
    float *tot_sq = row_sq + 2 * kT;                                    /* kNorm 3: [kT] */
    /* blockIdx.x: the CTA's range of (feature tile, k stage) iterations; blockIdx.y: the token tile */
    const int cta = static_cast<int>(blockIdx.x), t0 = static_cast<int>(blockIdx.y) * kT;
    const int64_t it_begin = range_begin(p, cta), it_end = range_begin(p, cta + 1);
    const int iters = static_cast<int>(it_end - it_begin);
    if (threadIdx.x == 0) {
        for (int s = 0; s < kStages; ++s) {
            mv_mbarrier_init(&full[s], 1);
            mv_mbarrier_init(&empty[s], 2 + (kNorm >= 2 ? kHelpers : 0)); /* each consumer warpgroup, each helper */
        }
        for (int b = 0; b < 2; ++b) {
            mv_mbarrier_init(&sums_full[b], kHelpers);
            mv_mbarrier_init(&sums_empty[b], 256);
        }
        mv_mbarrier_init_fence();
    }
    __syncthreads();
    const int group = threadIdx.x / 128, tid = threadIdx.x % 128;
    const size_t out_base = (static_cast<size_t>(blockIdx.y) * p.ctas + cta) * 2; /* segment 0's index */
    /* 256 tokens: 128 accumulators a consumer thread and, with A from registers, two stages'
       fragments do not fit 168 registers; the copy and helper warpgroup gives some of its own (each
       role's setmaxnreg inside its own branch: on a path both roles share, ptxas ignores it) */
    if (group == 0) {
        if constexpr (kT == 256) asm volatile("setmaxnreg.dec.sync.aligned.u32 56;\n" ::: "memory");
        if (tid == 0) {
            const uint64_t w_policy = mv_evict_first_policy(), x_policy = mv_evict_last_policy();
            for (int i = 0; i < iters; ++i) {
                const int s = i % kStages;
                if (i >= kStages) mv_mbarrier_wait(&empty[s], static_cast<unsigned>((i / kStages - 1) & 1));
                mv_mbarrier_arrive_expect_tx(&full[s], kSlot + (kNorm > 0 ? kK * 2 : 0));
                const int64_t it = it_begin + i;
                const int k = static_cast<int>(it % p.k_all) * kK, f0 = static_cast<int>(it / p.k_all) * kF;
                mv_tensor_copy_2d(ring + s * kSlot, &w_map, k, f0, &full[s], w_policy);
                mv_tensor_copy_2d(ring + s * kSlot + kWBytes, &x_map, k, t0, &full[s], x_policy);
                if (kNorm > 0) mv_bulk_copy(gamma_s + s * kK, gamma + k, kK * 2, &full[s]);
            }
        } else if (kNorm >= 2 && tid >= 32) {
            /* helpers: tokens h, h + 96, h + 192 of every stage, a whole 128-byte line each (a
               quarter-warp's eight lines cover every bank, as the swizzle spreads rows over them) */
            constexpr int kPer = (kT + kHelpers - 1) / kHelpers;
            const int h = tid - 32;
            int64_t i = 0;
            for (int segment = 0; i < iters; ++segment) {
                const int64_t first = it_begin + i;
                const int64_t seg_end =
                    (first / p.k_all + 1) * p.k_all < it_end ? (first / p.k_all + 1) * p.k_all : it_end;
                float sq[kPer];
#pragma unroll
                for (int j = 0; j < kPer; ++j) sq[j] = 0.0f;
                for (int64_t it = first; it < seg_end; ++it, ++i) {
                    const int s = static_cast<int>(i % kStages);
                    mv_mbarrier_wait(&full[s], static_cast<unsigned>((i / kStages) & 1));
                    const unsigned char *xs = ring + s * kSlot + kWBytes;
#pragma unroll
                    for (int j = 0; j < kPer; ++j) {
                        const int r = h + kHelpers * j;
                        if (r >= kT) break;
                        uint4 v[8];
#pragma unroll
                        for (int q = 0; q < 8; ++q) v[q] = *reinterpret_cast<const uint4 *>(xs + r * 128 + ((q ^ (r & 7)) * 16));
#pragma unroll
                        for (int q = 0; q < 8; ++q) {
                            const __nv_bfloat162 *e = reinterpret_cast<const __nv_bfloat162 *>(&v[q]);
#pragma unroll
                            for (int u = 0; u < 4; ++u) {
                                const float2 f = __bfloat1622float2(e[u]);
                                sq[j] = fmaf(f.x, f.x, fmaf(f.y, f.y, sq[j]));
                            }
                        }
                    }
                    mv_mbarrier_arrive(&empty[s]);
                }
                if constexpr (kNorm == 3) { /* to the consumers' epilogue, double-buffered */
                    const int buf = segment & 1, use = segment >> 1;
                    if (use > 0) mv_mbarrier_wait(&sums_empty[buf], static_cast<unsigned>((use - 1) & 1));
#pragma unroll
                    for (int j = 0; j < kPer; ++j)
                        if (h + kHelpers * j < kT) row_sq[buf * kT + h + kHelpers * j] = sq[j];
                    mv_mbarrier_arrive(&sums_full[buf]);
                } else {
#pragma unroll
                    for (int j = 0; j < kPer; ++j)
                        if (h + kHelpers * j < kT) p.sq[(out_base + segment) * kT + h + kHelpers * j] = sq[j];
                }
            }
        }
        return;
    }
    if constexpr (kT == 256) asm volatile("setmaxnreg.inc.sync.aligned.u32 224;\n" ::: "memory");
    const int c = group - 1; /* features 64 c .. + 63 of each tile */
    const int warp = tid / 32, lane = tid % 32;
    float acc[kT / 2];
    /* kNorm > 0: the warp's A fragments of one stage (4 k16 steps), gamma applied. ldmatrix.x4 gives
       the four 8 x 8 blocks (features 0-7 / 8-15 x k 0-7 / 8-15); lane l names feature l % 8 (+ 8 for
       odd l / 8) of block l / 8; the swizzle stores 16-byte chunk q of row r at q ^ (r % 8). */
    uint32_t frag[4][4], next[4][4];
    auto load_fragments = [&](uint32_t (&a)[4][4], int s) {
        const int block = lane >> 3, row = c * 64 + warp * 16 + (lane & 7) + 8 * (block & 1);
        const unsigned char *ws = ring + s * kSlot;
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) {
            const int chunk = 2 * kk + (block >> 1);
            mv_ldmatrix_x4(a[kk], ws + row * 128 + ((chunk ^ (row & 7)) * 16));
            const int k = kk * 16 + 2 * (lane & 3);
            const uint32_t g_lo = *reinterpret_cast<const uint32_t *>(gamma_s + s * kK + k);
            const uint32_t g_hi = *reinterpret_cast<const uint32_t *>(gamma_s + s * kK + k + 8);
            a[kk][0] = mul_bf16x2(a[kk][0], g_lo);
            a[kk][1] = mul_bf16x2(a[kk][1], g_lo);
            a[kk][2] = mul_bf16x2(a[kk][2], g_hi);
            a[kk][3] = mul_bf16x2(a[kk][3], g_hi);
        }
    };
    /* One segment (a tile's part of the range) at a time, its k loop apart from its store: a wgmma
       wait or an accumulator access inside a data-dependent branch of the k loop makes ptxas
       serialize every wgmma of the kernel (info C7518), which an earlier form of this probe did. */
    int64_t i = 0;
    for (int segment = 0; i < iters; ++segment) {
        const int64_t first = it_begin + i;
        const int64_t seg_end = (first / p.k_all + 1) * p.k_all < it_end ? (first / p.k_all + 1) * p.k_all : it_end;
#pragma unroll
        for (int a = 0; a < kT / 2; ++a) acc[a] = 0.0f;
        if constexpr (kNorm == 0) {
            int pending = -1; /* the stage whose release waits on its products */
            for (int64_t it = first; it < seg_end; ++it, ++i) {
                const int s = static_cast<int>(i % kStages);
                mv_mbarrier_wait(&full[s], static_cast<unsigned>((i / kStages) & 1));
                const unsigned char *wa = ring + s * kSlot + c * 64 * 128, *xb = ring + s * kSlot + kWBytes;
                mv_wgmma_fence();
                mv_wgmma_fence_accumulators(acc);
#pragma unroll
                for (int kk = 0; kk < kK / 16; ++kk)
                    mv_wgmma_ss<__nv_bfloat16, kT>::mma(acc, mv_wgmma_desc_sw128(wa + kk * 32),
                                                        mv_wgmma_desc_sw128(xb + kk * 32), 1);
                mv_wgmma_commit();
                mv_wgmma_fence_accumulators(acc);
                /* the stage before is done once at most this stage's products are pending */
                mv_wgmma_wait<1>();
                mv_wgmma_fence_accumulators(acc);
                if (pending >= 0 && tid == 0) mv_mbarrier_arrive(&empty[pending]);
                pending = s;
            }
            mv_wgmma_wait<0>();
            mv_wgmma_fence_accumulators(acc);
            if (pending >= 0 && tid == 0) mv_mbarrier_arrive(&empty[pending]);
        } else {
            /* A from registers: this stage's products read frag until they finish, so the next
               stage's fragments go to `next` meanwhile and are moved over after the wait */
            {
                const int s = static_cast<int>(i % kStages);
                mv_mbarrier_wait(&full[s], static_cast<unsigned>((i / kStages) & 1));
                load_fragments(frag, s);
            }
            for (int64_t it = first; it < seg_end; ++it, ++i) {
                const int s = static_cast<int>(i % kStages);
                const unsigned char *xb = ring + s * kSlot + kWBytes;
                mv_wgmma_fence();
                mv_wgmma_fence_accumulators(acc);
#pragma unroll
                for (int kk = 0; kk < kK / 16; ++kk)
                    mv_wgmma_rs<__nv_bfloat16, kT>::mma(acc, frag[kk], mv_wgmma_desc_sw128(xb + kk * 32), 1);
                mv_wgmma_commit();
                mv_wgmma_fence_accumulators(acc);
                const bool more = it + 1 < seg_end;
                const int s1 = static_cast<int>((i + 1) % kStages);
                if (more) {
                    mv_mbarrier_wait(&full[s1], static_cast<unsigned>(((i + 1) / kStages) & 1));
                    load_fragments(next, s1);
                }
                mv_wgmma_wait<0>();
                mv_wgmma_fence_accumulators(acc);
                if (tid == 0) mv_mbarrier_arrive(&empty[s]);
#pragma unroll
                for (int kk = 0; kk < 4; ++kk)
#pragma unroll
                    for (int u = 0; u < 4; ++u) frag[kk][u] = next[kk][u];
            }
        }
        /* products: feature 64 c + 16 warp + lane / 4 (+ 8) of the tile, token 8 j + 2 (lane % 4) (+ 1) */
        if constexpr (kNorm == 3) {
            const int tile = static_cast<int>(first / p.k_all), k0 = static_cast<int>(first % p.k_all);
            const int k1 = k0 + static_cast<int>(seg_end - first);
            const int buf = segment & 1;
            mv_mbarrier_wait(&sums_full[buf], static_cast<unsigned>((segment >> 1) & 1));
            const float *sums = row_sq + buf * kT;
            int *counter = p.counters + static_cast<size_t>(blockIdx.y) * p.tiles + tile;
            if (k0 > 0) {
                /* a later part of the tile (this range's first segment): to the CTA's workspace slot
                   as float4s [a / 4][thread] (coalesced), then counted in: after the barrier, one
                   thread's fence orders every consumer's stores before the count */
                float *part = p.parts + (static_cast<size_t>(blockIdx.y) * p.ctas + cta) * part_floats<kT>();
#pragma unroll
                for (int a = 0; a < kT / 2; a += 4)
                    __stcg(reinterpret_cast<float4 *>(part) + (a / 4) * 256 + (tid + 128 * c),
                           make_float4(acc[a], acc[a + 1], acc[a + 2], acc[a + 3]));
                if (tid + 128 * c < kT) __stcg(part + kT * kF + tid + 128 * c, sums[tid + 128 * c]);
                mv_named_barrier(1, 256);
                if (tid == 0 && c == 0) {
                    __threadfence();
                    atomicAdd(counter, 1);
                }
            } else {
                /* the tile's head (k from 0) or the whole tile: wait for the later parts' count
                   (acquire), reset it for the next call, add the parts in CTA order, store */
                float sq = tid + 128 * c < kT ? sums[tid + 128 * c] : 0.0f;
                if (k1 < p.k_all) {
                    const int last = range_owner(p, static_cast<int64_t>(tile) * p.k_all + p.k_all - 1);
                    if (tid == 0 && c == 0) {
                        while (mv_load_acquire(counter) < last - cta) __nanosleep(32);
                        *counter = 0;
                    }
                    mv_named_barrier(1, 256);
                    for (int o = cta + 1; o <= last; ++o) {
                        const float *theirs = p.parts + (static_cast<size_t>(blockIdx.y) * p.ctas + o) * part_floats<kT>();
#pragma unroll
                        for (int a = 0; a < kT / 2; a += 4) {
                            const float4 v = __ldcg(reinterpret_cast<const float4 *>(theirs) + (a / 4) * 256 + (tid + 128 * c));
                            acc[a] += v.x;
                            acc[a + 1] += v.y;
                            acc[a + 2] += v.z;
                            acc[a + 3] += v.w;
                        }
                        if (tid + 128 * c < kT) sq += __ldcg(theirs + kT * kF + tid + 128 * c);
                    }
                }
                if (tid + 128 * c < kT) tot_sq[tid + 128 * c] = sq;
                mv_named_barrier(1, 256);
                /* lanes l and l ^ 4 hold features f and f + 1 of tokens t and t + 1: trade one value
                   so that each stores two neighbouring features of one token */
                const int f_base = tile * kF + c * 64 + warp * 16 + (lane >> 2);
                const bool odd = ((lane >> 2) & 1) != 0;
#pragma unroll
                for (int j = 0; j < kT / 8; ++j)
#pragma unroll
                    for (int hh = 0; hh < 2; ++hh) {
                        const float v0 = acc[4 * j + 2 * hh], v1 = acc[4 * j + 2 * hh + 1];
                        const float other = __shfl_xor_sync(0xffffffffu, odd ? v0 : v1, 4);
                        const int t_local = 8 * j + 2 * (lane & 3) + (odd ? 1 : 0);
                        const int feat = f_base + 8 * hh - (odd ? 1 : 0);
                        if (t0 + t_local >= p.m || feat >= p.n) continue;
                        const float rr = rsqrtf(tot_sq[t_local] / static_cast<float>(p.h) + p.eps);
                        const float a = odd ? other : v0, b = odd ? v1 : other;
                        *reinterpret_cast<__nv_bfloat162 *>(p.y + static_cast<int64_t>(t0 + t_local) * p.n + feat) =
                            __floats2bfloat162_rn(a * rr, b * rr);
                    }
                mv_named_barrier(1, 256); /* tot_sq is the next segment's */
            }
            mv_mbarrier_arrive(&sums_empty[buf]);
        } else {
            float *out = p.parts + (out_base + segment) * kT * kF;
#pragma unroll
            for (int j = 0; j < kT / 8; ++j)
#pragma unroll
                for (int hh = 0; hh < 2; ++hh)
#pragma unroll
                    for (int u = 0; u < 2; ++u)
                        out[(8 * j + 2 * (lane % 4) + u) * kF + 64 * c + 16 * warp + lane / 4 + 8 * hh] = acc[4 * j + 2 * hh + u];
        }
    }
#endif
}

/* y[t][f]: the sum of the segments of every CTA whose range meets f's tile, in CTA order; with
   kNorm 2 scaled by rrms from the same segments' sums of squares. */
template <int kT, int kNorm>
__global__ void sum_parts(Params p, __nv_bfloat16 *y) {
    const int64_t count = static_cast<int64_t>(p.m) * p.n;
    for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < count;
         i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
        const int t = static_cast<int>(i / p.n), f = static_cast<int>(i % p.n), tile = f / kF;
        const int64_t lo = static_cast<int64_t>(tile) * p.k_all, hi = lo + p.k_all;
        int c = p.split > 0 ? tile * p.split : static_cast<int>(lo * p.ctas / (static_cast<int64_t>(p.tiles) * p.k_all));
        while (c > 0 && range_begin(p, c) > lo) --c;
        float v = 0.0f, sq = 0.0f;
        for (; c < p.ctas && range_begin(p, c) < hi; ++c) {
            if (range_begin(p, c + 1) <= lo) continue;
            const int segment = range_begin(p, c) < lo ? 1 : 0; /* a range's first segment is the tile it starts in */
            const size_t base = (static_cast<size_t>(t / kT) * p.ctas + c) * 2 + segment;
            v += p.parts[base * kT * kF + (t % kT) * kF + f % kF];
            if (kNorm == 2) sq += p.sq[base * kT + t % kT];
        }
        if (kNorm == 2) v *= rsqrtf(sq / static_cast<float>(p.h) + p.eps);
        y[i] = __float2bfloat16(v);
    }
}

/* The reference's input: x (kNorm 0), gamma * x (1), rms_norm(x) * gamma (2, 3), rounded to bf16. */
__global__ void reference_input(const __nv_bfloat16 *x, const __nv_bfloat16 *gamma, int h, float eps, int norm,
                                __nv_bfloat16 *out) {
    __shared__ float part[32];
    const __nv_bfloat16 *row = x + static_cast<int64_t>(blockIdx.x) * h;
    float s = 0.0f;
    for (int k = threadIdx.x; k < h; k += blockDim.x) s += __bfloat162float(row[k]) * __bfloat162float(row[k]);
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = s;
    __syncthreads();
    s = 0.0f;
    for (int w = 0; w < static_cast<int>(blockDim.x / 32); ++w) s += part[w];
    const float rr = norm >= 2 ? rsqrtf(s / static_cast<float>(h) + eps) : 1.0f;
    for (int k = threadIdx.x; k < h; k += blockDim.x) {
        const float g = norm > 0 ? __bfloat162float(gamma[k]) : 1.0f;
        out[static_cast<int64_t>(blockIdx.x) * h + k] = __float2bfloat16(__bfloat162float(row[k]) * rr * g);
    }
}

CUtensorMap make_map(const void *base, int rows, int h, int box_rows) {
    CUtensorMap map;
    const cuuint64_t dims[2] = {static_cast<cuuint64_t>(h), static_cast<cuuint64_t>(rows)};
    const cuuint64_t strides[1] = {static_cast<cuuint64_t>(h) * 2};
    const cuuint32_t box[2] = {64, static_cast<cuuint32_t>(box_rows)};
    const cuuint32_t unit[2] = {1, 1};
    const CUresult res = cuTensorMapEncodeTiled(&map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, const_cast<void *>(base), dims,
                                                strides, box, unit, CU_TENSOR_MAP_INTERLEAVE_NONE,
                                                CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                                                CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    if (res != CUDA_SUCCESS) {
        fprintf(stderr, "encode %d x %d failed: %d\n", rows, h, static_cast<int>(res));
        exit(1);
    }
    return map;
}

double g_copy_gbps = 0.0; /* the faster device-to-device copy (read + write), for the DRAM floor */

/* 16-byte loads and stores over the grid: bench_fused_rms_norm_qkv's "elementwise" copy, faster than cudaMemcpy on
 * sm_90, so that "% of floor" here reads as the benchmark's */
__global__ void copy16(const int4 *__restrict__ a, int4 *__restrict__ b, size_t n) {
    for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
         i += static_cast<size_t>(gridDim.x) * blockDim.x)
        b[i] = a[i];
}
/* reads alone: what W's stream could reach with nothing written (the floor counts reads and writes alike) */
__global__ void read16(const int4 *__restrict__ a, size_t n, int *sink) {
    int acc = 0;
    for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
         i += static_cast<size_t>(gridDim.x) * blockDim.x) {
        const int4 v = __ldcs(a + i);
        acc ^= v.x ^ v.y ^ v.z ^ v.w;
    }
    if (acc == 0x7fffffff) *sink = acc; /* keeps the loads */
}

template <int kT, int kNorm>
void run_shape(cublasHandle_t handle, cudaStream_t stream, int n, int h, int m, int split, int sms) {
    /* split > 0: S ways; 0: the most with every CTA in one wave; -1: stream-K over the SMs */
    const int tiles = (n + kF - 1) / kF, t_tiles = (m + kT - 1) / kT, k_all = h / kK;
    if (h % kK != 0) {
        printf("N %5d H %5d: H must be a multiple of %d here, skipped\n", n, h, kK);
        return;
    }
    if (split == 0) split = sms / (tiles * t_tiles) > 0 ? sms / (tiles * t_tiles) : 1;
    if (split > k_all) split = k_all; /* no empty ranges */
    const int ctas = split > 0 ? tiles * split : sms / t_tiles;
    if (split < 0 && ((static_cast<int64_t>(tiles) * k_all + ctas - 1) / ctas > k_all ||
                      static_cast<int64_t>(tiles) * k_all < ctas)) { /* no range empty, none over two tiles */
        printf("T %3d N %5d H %5d M %3d: stream-K ranges empty or longer than a tile, skipped\n", kT, n, h, m);
        return;
    }
    const size_t w_bytes = static_cast<size_t>(n) * h * 2;
    const int layers = static_cast<int>((256u << 20) / w_bytes) + 1;
    __nv_bfloat16 *w, *x, *xr, *gamma, *y, *y_ref;
    float *parts, *sq;
    int *counters;
    CHECK(cudaMalloc(&w, w_bytes * layers));
    CHECK(cudaMalloc(&x, static_cast<size_t>(m) * h * 2));
    CHECK(cudaMalloc(&xr, static_cast<size_t>(m) * h * 2));
    CHECK(cudaMalloc(&gamma, static_cast<size_t>(h) * 2));
    CHECK(cudaMalloc(&y, static_cast<size_t>(m) * n * 2));
    CHECK(cudaMalloc(&y_ref, static_cast<size_t>(m) * n * 2));
    CHECK(cudaMalloc(&parts, static_cast<size_t>(t_tiles) * ctas * 2 * kT * kF * 4));
    CHECK(cudaMalloc(&sq, static_cast<size_t>(t_tiles) * ctas * 2 * kT * 4));
    CHECK(cudaMalloc(&counters, static_cast<size_t>(t_tiles) * tiles * 4));
    CHECK(cudaMemset(counters, 0, static_cast<size_t>(t_tiles) * tiles * 4));
    fill<<<1024, 256, 0, stream>>>(w, static_cast<int64_t>(n) * h * layers, 17u, 1.0f / sqrtf(static_cast<float>(h)), 0.0f);
    fill<<<1024, 256, 0, stream>>>(x, static_cast<int64_t>(m) * h, 29u, 3.0f, 0.0f);
    fill<<<64, 256, 0, stream>>>(gamma, h, 31u, 0.5f, 1.0f);
    reference_input<<<m, 256, 0, stream>>>(x, gamma, h, 1e-6f, kNorm, xr);
    CHECK(cudaGetLastError());
    std::vector<CUtensorMap> w_maps(layers);
    for (int l = 0; l < layers; ++l) w_maps[l] = make_map(w + static_cast<size_t>(l) * n * h, n, h, kF);
    const CUtensorMap x_map = make_map(x, m, h, kT);
    constexpr size_t kSmem = smem_bytes<kT>();
    CHECK(cudaFuncSetAttribute(swap_ab_kernel<kT, kNorm>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               static_cast<int>(kSmem)));
    const Params prm{m, n, h, tiles, k_all, split > 0 ? split : 0, ctas, 1e-6f, parts, sq, counters, y};
    const int64_t count = static_cast<int64_t>(m) * n;
    auto ours = [&](cudaStream_t st, int l, bool sum) {
        swap_ab_kernel<kT, kNorm><<<dim3(ctas, t_tiles), kThreads, kSmem, st>>>(w_maps[l], x_map, gamma, prm);
        if constexpr (kNorm < 3) /* kNorm 3 adds the parts and stores y itself */
            if (sum) sum_parts<kT, kNorm><<<2 * sms, 256, 0, st>>>(prm, y);
    };
    const float one = 1.0f, zero = 0.0f;
    /* cuBLAS alone on an x already in its final form (the issue's baseline) */
    auto theirs = [&](int l) {
        CHECK_BLAS(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, n, m, h, &one, w + static_cast<size_t>(l) * n * h,
                                CUDA_R_16BF, h, xr, CUDA_R_16BF, h, &zero, y_ref, CUDA_R_16BF, n, CUBLAS_COMPUTE_32F,
                                CUBLAS_GEMM_DEFAULT));
    };
    /* check: layer 0, y poisoned first */
    CHECK(cudaMemsetAsync(y, 0xff, static_cast<size_t>(m) * n * 2, stream));
    ours(stream, 0, true);
    CHECK(cudaGetLastError());
    theirs(0);
    CHECK(cudaStreamSynchronize(stream));
    std::vector<__nv_bfloat16> a(count), b(count);
    CHECK(cudaMemcpy(a.data(), y, count * 2, cudaMemcpyDeviceToHost));
    CHECK(cudaMemcpy(b.data(), y_ref, count * 2, cudaMemcpyDeviceToHost));
    double worst = 0.0, scale = 0.0;
    for (int64_t i = 0; i < count; ++i) scale = fmax(scale, fabs(static_cast<double>(__bfloat162float(b[i]))));
    for (int64_t i = 0; i < count; ++i) {
        const double d = fabs(static_cast<double>(__bfloat162float(a[i])) - __bfloat162float(b[i]));
        worst = std::isnan(d) ? INFINITY : fmax(worst, d);
    }
    const double t_main = graph_us_per_call(stream, layers, [&](cudaStream_t st) {
        for (int l = 0; l < layers; ++l) ours(st, l, false);
    });
    const double t_ours = graph_us_per_call(stream, layers, [&](cudaStream_t st) {
        for (int l = 0; l < layers; ++l) ours(st, l, true);
    });
    const double t_cublas = graph_us_per_call(stream, layers, [&](cudaStream_t) {
        for (int l = 0; l < layers; ++l) theirs(l);
    });
    const double tflops = 2.0 * m * n * h / (t_main * 1e-6) / 1e12;
    /* the bytes that must move (W, x, gamma read, y written) at the measured copy rate */
    const double floor_us = (static_cast<double>(n) * h + static_cast<double>(m) * h + h + static_cast<double>(m) * n) *
                            2.0 / (g_copy_gbps * 1e3);
    char plan[32];
    if (split > 0)
        snprintf(plan, sizeof plan, "split %d", split);
    else
        snprintf(plan, sizeof plan, "stream-K");
    printf("N %5d H %5d M %3d | T %3d norm %d %-8s %3d CTAs | main %7.2f us %4.0f TFLOP/s %3.0f%% of floor | +sum %7.2f | "
           "cuBLAS %7.2f | cuB/main %.2f cuB/all %.2f | max|diff| %.3g of %.3g %s\n",
           n, h, m, kT, kNorm, plan, ctas * t_tiles, t_main, tflops, 100.0 * floor_us / t_main, t_ours, t_cublas,
           t_cublas / t_main, t_cublas / t_ours, worst, scale, worst <= 2e-2 * scale ? "OK" : "WRONG");
    fflush(stdout);
    CHECK(cudaFree(w));
    CHECK(cudaFree(x));
    CHECK(cudaFree(xr));
    CHECK(cudaFree(gamma));
    CHECK(cudaFree(y));
    CHECK(cudaFree(y_ref));
    CHECK(cudaFree(parts));
    CHECK(cudaFree(sq));
    CHECK(cudaFree(counters));
}

template <int kT>
void run_norm(cublasHandle_t handle, cudaStream_t stream, int n, int h, int m, int split, int norm, int sms) {
    if (norm == 0) run_shape<kT, 0>(handle, stream, n, h, m, split, sms);
    if (norm == 1) run_shape<kT, 1>(handle, stream, n, h, m, split, sms);
    if (norm == 2) run_shape<kT, 2>(handle, stream, n, h, m, split, sms);
    if (norm == 3) run_shape<kT, 3>(handle, stream, n, h, m, split, sms);
}

void run(cublasHandle_t handle, cudaStream_t stream, int n, int h, int m, int t, int split, int norm, int sms) {
    if (t == 16) run_norm<16>(handle, stream, n, h, m, split, norm, sms);
    else if (t == 64) run_norm<64>(handle, stream, n, h, m, split, norm, sms);
    else if (t == 128) run_norm<128>(handle, stream, n, h, m, split, norm, sms);
    else if (t == 256) run_norm<256>(handle, stream, n, h, m, split, norm, sms);
    else printf("T %d: not 16, 64, 128 or 256, skipped\n", t);
}

} // namespace

int main(int argc, char **argv) {
    int sms = 0;
    CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    cudaDeviceProp prop;
    CHECK(cudaGetDeviceProperties(&prop, 0));
    printf("%s, %d SMs; tiles of %d features x T tokens, %d-k stages; cuBLAS alone on x in its final form\n", prop.name,
           sms, kF, kK);
    cublasHandle_t handle;
    CHECK_BLAS(cublasCreate(&handle));
    cudaStream_t stream;
    CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    CHECK_BLAS(cublasSetStream(handle, stream));
    void *blas_ws = nullptr; /* a workspace of its own, so that cuBLAS allocates nothing while captured */
    CHECK(cudaMalloc(&blas_ws, 32u << 20));
    CHECK_BLAS(cublasSetWorkspace(handle, blas_ws, 32u << 20));
    { /* the copy rate device to device (512 MiB copied: 1 GiB moved), in graph replay as the rest */
        const size_t bytes = 512u << 20;
        void *a = nullptr, *b = nullptr;
        CHECK(cudaMalloc(&a, bytes));
        CHECK(cudaMalloc(&b, bytes));
        CHECK(cudaMemsetAsync(a, 1, bytes, stream));
        const double us = graph_us_per_call(stream, 4, [&](cudaStream_t st) {
            for (int i = 0; i < 4; ++i) CHECK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, st));
        });
        const double us16 = graph_us_per_call(stream, 4, [&](cudaStream_t st) {
            for (int i = 0; i < 4; ++i) {
                copy16<<<sms * 8, 256, 0, st>>>(static_cast<const int4 *>(a), static_cast<int4 *>(b), bytes / 16);
                CHECK(cudaGetLastError());
            }
        });
        const double usr = graph_us_per_call(stream, 4, [&](cudaStream_t st) {
            for (int i = 0; i < 4; ++i) {
                read16<<<sms * 8, 256, 0, st>>>(static_cast<const int4 *>(a), bytes / 16, static_cast<int *>(b));
                CHECK(cudaGetLastError());
            }
        });
        printf("reads alone (512 MiB, 16-byte loads) %.0f GB/s\n", bytes / (usr * 1e3));
        printf("copy (read + write): cudaMemcpy %.0f GB/s, 16-byte elementwise %.0f GB/s\n", 2.0 * bytes / (us * 1e3),
               2.0 * bytes / (us16 * 1e3));
        g_copy_gbps = 2.0 * bytes / ((us < us16 ? us : us16) * 1e3);
        CHECK(cudaFree(a));
        CHECK(cudaFree(b));
        printf("the floor of each line is its bytes at the faster, %.0f GB/s\n", g_copy_gbps);
    }
    if (argc > 1) {
        for (int a = 1; a + 5 < argc; a += 6)
            run(handle, stream, atoi(argv[a]), atoi(argv[a + 1]), atoi(argv[a + 2]), atoi(argv[a + 3]), atoi(argv[a + 4]),
                atoi(argv[a + 5]), sms);
        return 0;
    }
    /* Llama-3-8B, Qwen3-4B, Qwen3-0.6B, and Qwen2.5-7B (N = 36 tiles: no split fills the SMs) */
    const int shapes[][2] = {{6144, 4096}, {6144, 2560}, {4096, 1024}, {4608, 3584}};
    for (const auto &s : shapes)
        for (const int m : {1, 16}) { /* decode: each form stream-K (what each part of the norm costs), the whole op split-K */
            for (const int norm : {0, 1, 2, 3}) run(handle, stream, s[0], s[1], m, 16, -1, norm, sms);
            run(handle, stream, s[0], s[1], m, 16, 0, 3, sms);
        }
    for (const auto &s : shapes)
        for (const int m : {64, 128, 256}) {
            const int t = m; /* all of the call's tokens in one tile */
            for (const int norm : {0, 1, 2, 3}) run(handle, stream, s[0], s[1], m, t, 0, norm, sms);
            run(handle, stream, s[0], s[1], m, t, -1, 0, sms);
            run(handle, stream, s[0], s[1], m, t, -1, 3, sms);
            if (m == 256) run(handle, stream, s[0], s[1], m, 128, -1, 0, sms); /* the engine's largest tile today */
        }
    return 0;
}
