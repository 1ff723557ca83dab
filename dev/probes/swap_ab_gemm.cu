/*
 * swap_ab_gemm.cu: does a tile of 128 features x 256 tokens with swapped operands reach cuBLAS at
 * 128-256 rows? A probe for issue 29, not part of the library: no norm, no epilogue beyond the
 * split-K sum, so it times only the main loop the engine would need
 * (dev/logs/wgmma-stage-bound-nvidia-h200-h100-2026-11-25.log: L2 gives an SM 28-35 B a clock of
 * lines no other SM reads, up to 92 B of lines every SM reads in step; with all of a call's tokens
 * in one tile only W's lines are distinct, 16384 multiply-adds per W line).
 *
 * y[M][N] = x[M][H] . W[N][H]^T, bf16 in, float32 products. A CTA owns 128 features (wgmma's M: two
 * consumer warpgroups of 64) and all M <= 256 tokens (wgmma's N = 256, rows past M zero-filled by
 * the copy), and a range of its (tile, k stage) iterations: 1/S of a tile's k stages (split-K) or
 * an equal share of all of them (stream-K, one CTA an SM; a range meets at most two tiles). Each
 * range's segments go to a float workspace and a second kernel sums them in CTA order. A stage is 64 k: W's 128 x 128 bytes and x's 256 x 128 bytes (48 KiB, 128-byte swizzle);
 * one producer thread fills a ring of 4; both consumers take every stage, keep one stage's
 * products in flight (wgmma wait 1) and release the stage before it. Timed in a loop over layers of
 * distinct weights (>= 256 MiB), beside cuBLAS (cublasGemmEx) on the same layers, after a check
 * against cuBLAS's result.
 *
 *   nvcc -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a -Icsrc dev/probes/swap_ab_gemm.cu \
 *        -o swap_ab_gemm -lcuda -lcublas && ./swap_ab_gemm [N H M S] ...
 *   (default: Llama-3-8B 6144 4096, Qwen3-4B 6144 2560, Qwen3-0.6B 4096 1024 at M = 128 and 256:
 *    T = 256 tokens a tile split-K (the largest S with one wave) and stream-K, T = 128 (the engine's
 *    largest today) stream-K; arguments: T = 256; S > 0 splits S ways, 0 picks, -1 stream-K)
 */
#include <cublas_v2.h>
#include <cuda.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "../../csrc/cuda/hopper.cuh"
#include "../../csrc/cuda/wgmma_ops.cuh"
#include "probe_common.cuh"

namespace {

constexpr int kF = 128, kK = 64, kStages = 4;
constexpr int kWBytes = kF * 128;
constexpr int kThreads = 384;
template <int kT>
__host__ __device__ constexpr int slot_bytes() { return kWBytes + kT * 128; }
template <int kT>
constexpr size_t smem_bytes() { return 1024 + static_cast<size_t>(kStages) * slot_bytes<kT>() + 2 * kStages * 8; }

#define CUBLAS_CHECK(call)                                                                           \
    do {                                                                                             \
        cublasStatus_t s_ = (call);                                                                  \
        if (s_ != CUBLAS_STATUS_SUCCESS) {                                                           \
            fprintf(stderr, "%s:%d %s: cublas status %d\n", __FILE__, __LINE__, #call, (int)s_);     \
            exit(1);                                                                                 \
        }                                                                                            \
    } while (0)

struct Params {
    int m, n, h, tiles, k_all;
    int split; /* S > 0: tile c / S, its k stages split S ways; 0: stream-K, equal ranges of (tile, k) */
    int ctas;  /* CTAs per token tile (gridDim.x) */
    float *parts; /* [token tile][CTA][2 segments][kT][kF]: a CTA's range meets at most 2 tiles */
};

/* The first (tile, k stage) iteration of CTA c's range (tile * k_all + k). */
__host__ __device__ inline int64_t range_begin(const Params &p, int c) {
    if (p.split > 0) return static_cast<int64_t>(c / p.split) * p.k_all + static_cast<int64_t>(c % p.split) * p.k_all / p.split;
    return static_cast<int64_t>(p.tiles) * p.k_all * c / p.ctas;
}

template <int kT>
__global__ void __launch_bounds__(kThreads, 1)
    swap_ab_kernel(const __grid_constant__ CUtensorMap w_map, const __grid_constant__ CUtensorMap x_map, Params p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    constexpr int kSlot = slot_bytes<kT>();
    unsigned char *ring = mv_swizzle_aligned_shared();
    uint64_t *full = reinterpret_cast<uint64_t *>(ring + kStages * kSlot);
    uint64_t *empty = full + kStages;
    /* blockIdx.x: the CTA's range of (feature tile, k stage) iterations; blockIdx.y: the token tile */
    const int cta = static_cast<int>(blockIdx.x), t0 = static_cast<int>(blockIdx.y) * kT;
    const int64_t it_begin = range_begin(p, cta), it_end = range_begin(p, cta + 1);
    const int iters = static_cast<int>(it_end - it_begin);
    if (threadIdx.x == 0) {
        for (int s = 0; s < kStages; ++s) {
            mv_mbarrier_init(&full[s], 1);
            mv_mbarrier_init(&empty[s], 2); /* one arrive per consumer warpgroup */
        }
        mv_mbarrier_init_fence();
    }
    __syncthreads();
    const int group = threadIdx.x / 128, tid = threadIdx.x % 128;
    if (group == 0) {
        if (tid == 0) {
            const uint64_t w_policy = mv_evict_first_policy(), x_policy = mv_evict_last_policy();
            for (int i = 0; i < iters; ++i) {
                const int s = i % kStages;
                if (i >= kStages) mv_mbarrier_wait(&empty[s], static_cast<unsigned>((i / kStages - 1) & 1));
                mv_mbarrier_arrive_expect_tx(&full[s], kSlot);
                const int64_t it = it_begin + i;
                const int k = static_cast<int>(it % p.k_all) * kK, f0 = static_cast<int>(it / p.k_all) * kF;
                mv_tensor_copy_2d(ring + s * kSlot, &w_map, k, f0, &full[s], w_policy);
                mv_tensor_copy_2d(ring + s * kSlot + kWBytes, &x_map, k, t0, &full[s], x_policy);
            }
        }
        return;
    }
    const int c = group - 1; /* features 64 c .. + 63 of each tile */
    const int warp = tid / 32, lane = tid % 32;
    float acc[kT / 2];
#pragma unroll
    for (int i = 0; i < kT / 2; ++i) acc[i] = 0.0f;
    int pending = -1, segment = 0; /* the stage whose release waits on its products; the range's segment */
    for (int i = 0; i < iters; ++i) {
        const int s = i % kStages;
        const int64_t it = it_begin + i;
        mv_mbarrier_wait(&full[s], static_cast<unsigned>((i / kStages) & 1));
        const unsigned char *wa = ring + s * kSlot + c * 64 * 128, *xb = ring + s * kSlot + kWBytes;
        mv_wgmma_fence();
        mv_wgmma_fence_accumulators(acc);
#pragma unroll
        for (int kk = 0; kk < kK / 16; ++kk)
            mv_wgmma_ss<__nv_bfloat16, kT>::mma(acc, mv_wgmma_desc_sw128(wa + kk * 32), mv_wgmma_desc_sw128(xb + kk * 32),
                                                1);
        mv_wgmma_commit();
        mv_wgmma_fence_accumulators(acc);
        /* the stage before is done once at most this stage's products are pending */
        mv_wgmma_wait<1>();
        mv_wgmma_fence_accumulators(acc);
        if (pending >= 0 && tid == 0) mv_mbarrier_arrive(&empty[pending]);
        pending = s;
        if (it % p.k_all == p.k_all - 1 || i == iters - 1) { /* the segment's last stage: store its products */
            mv_wgmma_wait<0>();
            mv_wgmma_fence_accumulators(acc);
            if (tid == 0) mv_mbarrier_arrive(&empty[s]);
            pending = -1;
            /* products: feature 64 c + 16 warp + lane / 4 (+ 8) of the tile, token 8 j + 2 (lane % 4) (+ 1) */
            float *out = p.parts + ((static_cast<size_t>(blockIdx.y) * p.ctas + cta) * 2 + segment) * kT * kF;
#pragma unroll
            for (int j = 0; j < kT / 8; ++j)
#pragma unroll
                for (int hh = 0; hh < 2; ++hh)
#pragma unroll
                    for (int u = 0; u < 2; ++u) {
                        out[(8 * j + 2 * (lane % 4) + u) * kF + 64 * c + 16 * warp + lane / 4 + 8 * hh] = acc[4 * j + 2 * hh + u];
                        acc[4 * j + 2 * hh + u] = 0.0f;
                    }
            ++segment;
        }
    }
#endif
}

/* y[t][f]: the sum of the segments of every CTA whose range meets f's tile, in CTA order. */
template <int kT>
__global__ void sum_parts(Params p, __nv_bfloat16 *y) {
    const int64_t count = static_cast<int64_t>(p.m) * p.n;
    for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < count;
         i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
        const int t = static_cast<int>(i / p.n), f = static_cast<int>(i % p.n), tile = f / kF;
        const int64_t lo = static_cast<int64_t>(tile) * p.k_all, hi = lo + p.k_all;
        int c = p.split > 0 ? tile * p.split : static_cast<int>(lo * p.ctas / (static_cast<int64_t>(p.tiles) * p.k_all));
        while (c > 0 && range_begin(p, c) > lo) --c;
        float v = 0.0f;
        for (; c < p.ctas && range_begin(p, c) < hi; ++c) {
            if (range_begin(p, c + 1) <= lo) continue;
            const int segment = range_begin(p, c) < lo ? 1 : 0; /* a range's first segment is the tile it starts in */
            v += p.parts[((static_cast<size_t>(t / kT) * p.ctas + c) * 2 + segment) * kT * kF + (t % kT) * kF + f % kF];
        }
        y[i] = __float2bfloat16(v);
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

__global__ void fill(__nv_bfloat16 *p, int64_t n, uint32_t seed, float scale) {
    for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
         i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
        uint32_t v = static_cast<uint32_t>(i) * 2654435761u ^ seed;
        v ^= v >> 15;
        v *= 2246822519u;
        v ^= v >> 13;
        p[i] = __float2bfloat16((static_cast<float>(v & 0xffffff) / 16777216.0f - 0.5f) * scale);
    }
}

template <int kT>
void run_shape(cublasHandle_t handle, int n, int h, int m, int split, int sms) {
    /* split > 0: S ways; 0: the most with every CTA in one wave; -1: stream-K over the SMs */
    const int tiles = (n + kF - 1) / kF, t_tiles = (m + kT - 1) / kT, k_all = (h + kK - 1) / kK;
    if (split == 0) split = sms / (tiles * t_tiles) > 0 ? sms / (tiles * t_tiles) : 1;
    const int ctas = split > 0 ? tiles * split : sms / t_tiles;
    if (split < 0 && (static_cast<int64_t>(tiles) * k_all + ctas - 1) / ctas > k_all) {
        printf("T %3d N %5d H %5d M %3d: stream-K ranges longer than a tile, skipped\n", kT, n, h, m);
        return;
    }
    const size_t w_bytes = static_cast<size_t>(n) * h * 2;
    const int layers = static_cast<int>((256u << 20) / w_bytes) + 1;
    __nv_bfloat16 *w, *x, *y, *y_ref;
    float *parts;
    CHECK(cudaMalloc(&w, w_bytes * layers));
    CHECK(cudaMalloc(&x, static_cast<size_t>(m) * h * 2));
    CHECK(cudaMalloc(&y, static_cast<size_t>(m) * n * 2));
    CHECK(cudaMalloc(&y_ref, static_cast<size_t>(m) * n * 2));
    CHECK(cudaMalloc(&parts, static_cast<size_t>(t_tiles) * ctas * 2 * kT * kF * 4));
    fill<<<1024, 256>>>(w, static_cast<int64_t>(n) * h * layers, 17u, 2.0f / sqrtf(static_cast<float>(h)));
    fill<<<1024, 256>>>(x, static_cast<int64_t>(m) * h, 29u, 2.0f);
    CHECK(cudaGetLastError());
    std::vector<CUtensorMap> w_maps(layers);
    for (int l = 0; l < layers; ++l) w_maps[l] = make_map(w + static_cast<size_t>(l) * n * h, n, h, kF);
    const CUtensorMap x_map = make_map(x, m, h, kT);
    constexpr size_t kSmem = smem_bytes<kT>();
    CHECK(cudaFuncSetAttribute(swap_ab_kernel<kT>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(kSmem)));
    const Params prm{m, n, h, tiles, k_all, split > 0 ? split : 0, ctas, parts};
    const int64_t count = static_cast<int64_t>(m) * n;
    auto ours = [&](int l, bool sum) {
        swap_ab_kernel<kT><<<dim3(ctas, t_tiles), kThreads, kSmem>>>(w_maps[l], x_map, prm);
        if (sum) sum_parts<kT><<<2 * sms, 256>>>(prm, y);
    };
    const float one = 1.0f, zero = 0.0f;
    auto theirs = [&](int l) {
        CUBLAS_CHECK(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, n, m, h, &one, w + static_cast<size_t>(l) * n * h,
                                  CUDA_R_16BF, h, x, CUDA_R_16BF, h, &zero, y_ref, CUDA_R_16BF, n, CUBLAS_COMPUTE_32F,
                                  CUBLAS_GEMM_DEFAULT));
    };
    /* check: layer 0, y poisoned first */
    CHECK(cudaMemset(y, 0xff, static_cast<size_t>(m) * n * 2));
    ours(0, true);
    theirs(0);
    CHECK(cudaDeviceSynchronize());
    std::vector<__nv_bfloat16> a(count), b(count);
    CHECK(cudaMemcpy(a.data(), y, count * 2, cudaMemcpyDeviceToHost));
    CHECK(cudaMemcpy(b.data(), y_ref, count * 2, cudaMemcpyDeviceToHost));
    double worst = 0.0, scale = 0.0;
    for (int64_t i = 0; i < count; ++i) scale = fmax(scale, fabs(static_cast<double>(__bfloat162float(b[i]))));
    for (int64_t i = 0; i < count; ++i) {
        const double d = fabs(static_cast<double>(__bfloat162float(a[i])) - __bfloat162float(b[i]));
        worst = std::isnan(d) ? INFINITY : fmax(worst, d);
    }
    cudaEvent_t e0, e1;
    CHECK(cudaEventCreate(&e0));
    CHECK(cudaEventCreate(&e1));
    auto time_us = [&](auto call) {
        const int reps = 20 * layers;
        for (int i = 0; i < layers; ++i) call(i);
        CHECK(cudaEventRecord(e0));
        for (int i = 0; i < reps; ++i) call(i % layers);
        CHECK(cudaEventRecord(e1));
        CHECK(cudaEventSynchronize(e1));
        CHECK(cudaGetLastError());
        float ms = 0;
        CHECK(cudaEventElapsedTime(&ms, e0, e1));
        return ms * 1e3 / reps;
    };
    const double t_main = time_us([&](int l) { ours(l, false); });
    const double t_ours = time_us([&](int l) { ours(l, true); });
    const double t_cublas = time_us([&](int l) { theirs(l); });
    const double tflops = 2.0 * m * n * h / (t_main * 1e-6) / 1e12;
    printf("T %3d N %5d H %5d M %3d: %2d x %d tiles, %-9s %3d CTAs | main loop %7.2f us (%4.0f TFLOP/s), + sum %7.2f | "
           "cuBLAS %7.2f | cuBLAS / ours %.2f (main loop alone %.2f) | max |diff| %.3g of max |y| %.3g %s\n",
           kT, n, h, m, tiles, t_tiles, split > 0 ? (split == 1 ? "unsplit," : split == 2 ? "split 2," : split == 3 ? "split 3," : "split 4+,") : "stream-K,",
           ctas * t_tiles, t_main, tflops, t_ours, t_cublas, t_cublas / t_ours, t_cublas / t_main,
           worst, scale, worst <= 2e-2 * scale ? "OK" : "WRONG");
    CHECK(cudaFree(w));
    CHECK(cudaFree(x));
    CHECK(cudaFree(y));
    CHECK(cudaFree(y_ref));
    CHECK(cudaFree(parts));
}

} // namespace

int main(int argc, char **argv) {
    int sms = 0;
    CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    cudaDeviceProp prop;
    CHECK(cudaGetDeviceProperties(&prop, 0));
    printf("%s, %d SMs; tiles of %d features x T tokens, %d-k stages, ring of %d\n", prop.name, sms, kF, kK, kStages);
    cublasHandle_t handle;
    CUBLAS_CHECK(cublasCreate(&handle));
    if (argc > 1) {
        for (int a = 1; a + 3 < argc; a += 4)
            run_shape<256>(handle, atoi(argv[a]), atoi(argv[a + 1]), atoi(argv[a + 2]), atoi(argv[a + 3]), sms);
        return 0;
    }
    const int shapes[][2] = {{6144, 4096}, {6144, 2560}, {4096, 1024}};
    for (const auto &s : shapes)
        for (const int m : {128, 256}) {
            run_shape<256>(handle, s[0], s[1], m, 0, sms);
            run_shape<256>(handle, s[0], s[1], m, -1, sms);
            run_shape<128>(handle, s[0], s[1], m, -1, sms);
        }
    return 0;
}
