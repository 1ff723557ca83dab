/*
 * register_window_probe.cu: can a W stream whose loads never wait on its consumers (W loaded
 * straight into mma registers through a rolling window of D chunks a warp, each slot reloaded as
 * soon as its mma has read it) reach a bare read's rate at decode rows? Issue 29's open question
 * after the tensor-copy ring's refill latency (dev/logs/bulk-ring-consumers-nvidia-h200-2026-11-28.log).
 * Not part of the library.
 *
 * The "window" kernel: one CTA an SM; each CTA an equal contiguous range of the (16-feature tile,
 * 32-k chunk) units (stream-K: a tile shared by CTAs is summed by its last contributor through a
 * workspace and a counter a tile); a CTA's part of a tile split over its warps in chunks (the register stream's k-permuted A
 * fragment, stream_common.cuh's mma_k32); each warp's chunks of all its tiles form one sequence
 * walked with D chunks in flight (the first D requested, and x asked of L2, before the PDL wait).
 * The norm is deferred (FlashNorm): x * gamma staged in shared memory (each row by several warps
 * at once), the row's 1/rms applied to the tile's sum, which the warps reduce through shared
 * memory at each tile's end (one barrier a tile).
 *
 * Timed beside it, in one process, each call its own layer's weights (>= 256 MiB), a CUDA graph:
 *   read      a bare read of W (one CTA an SM, 1024 threads, 8 16-byte loads in flight each)
 *   cublas    cuBLASLt on pre-normalized x (the heuristic's first algorithm), issue 29's baseline
 *   register  the product's register stream (register_stream.cu), PDL
 *   bulk      the product's tensor-copy stream (bulk_stream.cu), PDL
 *   wWxDk/t   the window kernel with W warps a CTA, D chunks in flight a warp, one CTA an SM, PDL;
 *             t: equal ranges of whole tiles, k: stream-K ranges, f: equal ranges of features;
 *             with PROBE_DIAG set, w16x6k, and w16x6f without PDL and without x's staging (wrong results: FAIL);
 *             ...w: each warp stages only the x it reads, no barrier before its first mma
 * in a chain of the op's own calls (chain), after a 64 MiB fill before each call (fill: L2 left
 * full of dirty lines), after a 64 MiB read (L2 clean) and, with PROBE_DOWN=I, after cuBLASLt's
 * down_proj GEMM ([M, I] x [H, I]^T, as a model's MLP ends), each separator's own time taken off. Every path's output is checked
 * against a float64 reference first (NaN-poisoned before). bf16.
 *
 *   nvcc -std=c++17 -O3 --expt-relaxed-constexpr -Icsrc -gencode=arch=compute_90a,code=sm_90a \
 *        -DMINIVLLM_HAVE_SM90A dev/probes/register_window_probe.cu \
 *        csrc/cuda/fused_rms_norm_qkv/{register,bulk}_stream.cu csrc/cuda/device.cu -lcublasLt -lcuda \
 *        -o register_window_probe
 *   ./register_window_probe 4096,32,8,128 1 4 8
 */
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <functional>
#include <string>

#include "cuda/fused_rms_norm_qkv/paths.h"
#include "cuda/fused_rms_norm_qkv/stream_common.cuh"
#include "probe_common.cuh"
#include "probe_cublaslt.cuh"

namespace {

struct WindowArgs {
    const __nv_bfloat16 *x, *gamma, *w;
    __nv_bfloat16 *out; /* [m][n] */
    int m, h, n;
    float eps;
    float *ws;          /* stream-K partials: [tiles][kMaxParts][128] */
    unsigned *counters; /* [tiles], zero between calls (the last contributor resets its tile's) */
};

constexpr int kXPad = 32; /* elements: 64 bytes a staged row, so a quarter-warp's 8 rows x 16 bytes miss each other's banks */
constexpr int kMaxParts = 8;

/* The CTA (of g, over total units) whose range holds unit u: ranges are [total*b/g, total*(b+1)/g). */
__device__ __forceinline__ int owner_of(int u, int total, int g) { return static_cast<int>(((u + 1) * static_cast<int64_t>(g) - 1) / total); }

/* A CTA's share of one tile: chunks [cb, ce) of it, walked by its warps in steps of kW chunks. */
struct TileSpan {
    int tile, cb, ce, steps;
};
template <int kW>
__device__ __forceinline__ TileSpan span_of(int tile, int u0, int u1, int chunks) {
    const int first = tile * chunks;
    TileSpan s;
    s.tile = tile;
    s.cb = (u0 > first ? u0 : first) - first;
    s.ce = (u1 < first + chunks ? u1 : first + chunks) - first;
    s.steps = (s.ce - s.cb + kW - 1) / kW;
    return s;
}

/* x * gamma of 8 elements as bf16 (what the mma reads), their squares added to sum */
__device__ __forceinline__ uint4 scaled8(const uint4 &xv, const uint4 &gv, float &sum) {
    const __nv_bfloat16 *xe = reinterpret_cast<const __nv_bfloat16 *>(&xv);
    const __nv_bfloat16 *ge = reinterpret_cast<const __nv_bfloat16 *>(&gv);
    uint4 sv;
    __nv_bfloat16 *se = reinterpret_cast<__nv_bfloat16 *>(&sv);
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        const float f = __bfloat162float(xe[i]);
        sum += f * f;
        se[i] = __float2bfloat16(f * __bfloat162float(ge[i]));
    }
    return sv;
}

template <int kW, int kD, int kMode, int kDiag = 0>
__global__ void __launch_bounds__(kW * 32, 1) window_kernel(WindowArgs a) {
    extern __shared__ uint4 smem[];
    const int xs_stride = a.h + kXPad;
    __nv_bfloat16 *xs = reinterpret_cast<__nv_bfloat16 *>(smem);      /* [m][xs_stride] */
    float *red = reinterpret_cast<float *>(xs + a.m * xs_stride);     /* [2][kW][128] */
    float *ss = red + 2 * kW * 128;                                    /* [kW][8] partial sums of squares */
    float *rrms = ss + 8 * kW;                                         /* [8] */
    int *last = reinterpret_cast<int *>(rrms + 8);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const int tiles = (a.n + 15) / 16, chunks = (a.h + 31) / 32;
    const int total = tiles * chunks; /* the host checks it fits an int with room for owner_of */
    /* kMode 0: equal ranges of whole tiles; 1 (stream-K): equal ranges of units; 2: equal ranges of
       features, walked in 16-feature tiles from the range's first (its last tile partial) */
    int u0, u1, base = 0, rend = a.n;
    if (kMode == 2) {
        base = static_cast<int>(static_cast<int64_t>(a.n) * blockIdx.x / gridDim.x);
        rend = static_cast<int>(static_cast<int64_t>(a.n) * (blockIdx.x + 1) / gridDim.x);
        u0 = 0;
        u1 = (rend - base + 15) / 16 * chunks;
    } else {
        const int64_t span_units = kMode == 1 ? total : tiles;
        const int scale = kMode == 1 ? 1 : chunks;
        u0 = static_cast<int>(span_units * blockIdx.x / gridDim.x) * scale;
        u1 = static_cast<int>(span_units * (blockIdx.x + 1) / gridDim.x) * scale;
    }
    const int tile_first = u0 / chunks, tile_end = u1 > u0 ? (u1 - 1) / chunks + 1 : tile_first;
    int steps = 0;
    for (int tt = tile_first; tt < tile_end; ++tt) steps += span_of<kW>(tt, u0, u1, chunks).steps;

    /* x and gamma asked of L2 before the wait and before any W, so that after a
       kernel that leaves L2 full they are not queued behind the first window (safe: see common.cuh's mv_prefetch_l2) */
    mv_prefetch_rows_l2(a.x, a.m, a.h * 2, a.h * 2, blockIdx.x * blockDim.x + threadIdx.x, gridDim.x * blockDim.x);
    mv_prefetch_rows_l2(a.gamma, 1, a.h * 2, 0, blockIdx.x * blockDim.x + threadIdx.x, gridDim.x * blockDim.x);
    /* the loader's position */
    TileSpan lspan = span_of<kW>(tile_first, u0, u1, chunks);
    int ls = 0;
    auto load = [&](uint4 &wa, uint4 &wb) {
        const int chunk = lspan.cb + warp + kW * ls;
        const int k = chunk * 32 + 8 * t, row = base + lspan.tile * 16 + g;
        wa = wb = make_uint4(0, 0, 0, 0);
        if (chunk < lspan.ce && k < a.h) {
            const __nv_bfloat16 *p = a.w + static_cast<int64_t>(row) * a.h + k;
            if (row < rend) wa = __ldcs(reinterpret_cast<const uint4 *>(p));
            if (row + 8 < rend) wb = __ldcs(reinterpret_cast<const uint4 *>(p + 8 * static_cast<int64_t>(a.h)));
        }
        if (++ls == lspan.steps) {
            ls = 0;
            if (lspan.tile + 1 < tile_end) lspan = span_of<kW>(lspan.tile + 1, u0, u1, chunks);
        }
    };
    uint4 wa[kD], wb[kD];
#pragma unroll
    for (int d = 0; d < kD; ++d)
        if (d < steps) load(wa[d], wb[d]);

    mv_pdl_trigger();
    mv_pdl_wait();
    if (kDiag == 3) {
        /* each warp stages only what it reads (its chunks' k of every row; the mma reads from the
           lane that wrote): no barrier, so a warp's first mma waits on its own x alone; each warp's
           sums of squares in ss[warp][row], summed where the epilogue needs 1/rms */
        float sum = 0.0f;
        const int cpw = (chunks + kW - 1) / kW;
        for (int s0 = 0; s0 < cpw; s0 += 4) {
            uint4 xv[4], gv[4];
#pragma unroll
            for (int u = 0; u < 4; ++u) {
                const int k = (warp + kW * (s0 + u)) * 32 + 8 * t;
                if (s0 + u < cpw && k < a.h && g < a.m) {
                    xv[u] = *reinterpret_cast<const uint4 *>(a.x + static_cast<int64_t>(g) * a.h + k);
                    gv[u] = *reinterpret_cast<const uint4 *>(a.gamma + k);
                }
            }
#pragma unroll
            for (int u = 0; u < 4; ++u) {
                const int k = (warp + kW * (s0 + u)) * 32 + 8 * t;
                if (!(s0 + u < cpw && k < a.h && g < a.m)) continue;
                *reinterpret_cast<uint4 *>(xs + g * xs_stride + k) = scaled8(xv[u], gv[u], sum);
            }
        }
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        sum += __shfl_xor_sync(0xffffffffu, sum, 2);
        if (t == 0) ss[warp * 8 + g] = sum;
    } else
    /* x * gamma staged: each row by kW / m warps at once, its sum of squares in ss by warp */
    {
        const int parts = kW / a.m, vecs = a.h / 8;
        float sum = 0.0f;
        if (kDiag != 1 && warp < parts * a.m) { /* kDiag 1: no staging (a diagnostic; wrong results) */
            const int r = warp / parts, part = warp % parts;
            const __nv_bfloat16 *xr = a.x + static_cast<int64_t>(r) * a.h;
            for (int v0 = part * 32 + lane; v0 < vecs; v0 += 4 * parts * 32) {
                uint4 xv[4], gv[4];
#pragma unroll
                for (int u = 0; u < 4; ++u) {
                    const int v = v0 + u * parts * 32;
                    if (v < vecs) {
                        xv[u] = *reinterpret_cast<const uint4 *>(xr + 8 * v);
                        gv[u] = *reinterpret_cast<const uint4 *>(a.gamma + 8 * v);
                    }
                }
#pragma unroll
                for (int u = 0; u < 4; ++u) {
                    const int v = v0 + u * parts * 32;
                    if (v >= vecs) break;
                    *reinterpret_cast<uint4 *>(xs + r * xs_stride + 8 * v) = scaled8(xv[u], gv[u], sum);
                }
            }
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
        if (lane == 0) ss[warp] = sum;
        __syncthreads();
        if (threadIdx.x < a.m) {
            float s2 = 0.0f;
            for (int p = 0; p < parts; ++p) s2 += ss[threadIdx.x * parts + p];
            rrms[threadIdx.x] = rsqrtf(s2 / a.h + a.eps);
        }
    }

    /* 1/rms of a token's row (after a barrier that follows every warp's staging) */
    auto row_scale = [&](int token) {
        if (kDiag != 3) return rrms[token];
        float s2 = 0.0f;
#pragma unroll
        for (int w = 0; w < kW; ++w) s2 += ss[w * 8 + token];
        return rsqrtf(s2 / a.h + a.eps);
    };
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    int shared0 = -1, shared1 = -1; /* at most two: a range's first and last tiles */
    TileSpan cspan = span_of<kW>(tile_first, u0, u1, chunks);
    int cs = 0, done_tiles = 0;
    for (int j0 = 0; j0 < steps; j0 += kD) {
#pragma unroll
        for (int d = 0; d < kD; ++d) {
            if (j0 + d >= steps) break; /* uniform over the CTA */
            const int chunk = cspan.cb + warp + kW * cs, k = chunk * 32 + 8 * t;
            const bool k_ok = chunk < cspan.ce && k < a.h;
            uint4 yv = make_uint4(0, 0, 0, 0);
            if (kDiag != 1 && k_ok && g < a.m) yv = *reinterpret_cast<const uint4 *>(xs + g * xs_stride + k);
            mma_k32<__nv_bfloat16>(acc, wa[d], wb[d], yv);
            if (j0 + d + kD < steps) load(wa[d], wb[d]);
            if (++cs == cspan.steps) {
                float *r = red + (done_tiles & 1) * kW * 128;
#pragma unroll
                for (int c = 0; c < 4; ++c) r[warp * 128 + lane * 4 + c] = acc[c];
                acc[0] = acc[1] = acc[2] = acc[3] = 0.0f;
                __syncthreads();
                const int i = threadIdx.x, l = i >> 2, c = i & 3;
                const int feature = base + cspan.tile * 16 + (l >> 2) + 8 * (c >> 1), token = 2 * (l & 3) + (c & 1);
                float s = 0.0f;
                if (i < 128) {
#pragma unroll 8
                    for (int w = 0; w < kW; ++w) s += r[w * 128 + i];
                }
                if (cspan.cb == 0 && cspan.ce == chunks) {
                    if (i < 128 && token < a.m && feature < rend)
                        a.out[static_cast<int64_t>(token) * a.n + feature] = __float2bfloat16(s * row_scale(token));
                } else { /* uniform over the CTA: a shared tile (only a range's first and last can be),
                            its partial stored now and summed after the loop, where a fence waits on no
                            loads in flight */
                    const int first = cspan.tile * chunks;
                    float *slot = a.ws + (static_cast<int64_t>(cspan.tile) * kMaxParts + (blockIdx.x - owner_of(first, total, gridDim.x))) * 128;
                    if (i < 128) __stcg(slot + i, s);
                    if (shared0 < 0) shared0 = cspan.tile; else shared1 = cspan.tile;
                }
                cs = 0;
                ++done_tiles;
                if (cspan.tile + 1 < tile_end) cspan = span_of<kW>(cspan.tile + 1, u0, u1, chunks);
            }
        }
    }
    /* the shared tiles: the last contributor of each sums the partials */
    for (int q = 0; q < 2; ++q) {
        const int tile = q == 0 ? shared0 : shared1, first = tile * chunks;
        if (tile < 0) break;
        const int b0 = owner_of(first, total, gridDim.x), parts = owner_of(first + chunks - 1, total, gridDim.x) - b0 + 1;
        __threadfence();
        __syncthreads();
        if (threadIdx.x == 0) {
            const unsigned old = atomicAdd(a.counters + tile, 1u);
            *last = old == static_cast<unsigned>(parts - 1);
            if (*last) a.counters[tile] = 0;
        }
        __syncthreads();
        const int i = threadIdx.x, l = i >> 2, c = i & 3;
        if (*last && i < 128) {
            __threadfence();
            const int feature = tile * 16 + (l >> 2) + 8 * (c >> 1), token = 2 * (l & 3) + (c & 1);
            float sum = 0.0f;
            for (int p = 0; p < parts; ++p) sum += __ldcg(a.ws + (static_cast<int64_t>(tile) * kMaxParts + p) * 128 + i);
            if (token < a.m && feature < a.n)
                a.out[static_cast<int64_t>(token) * a.n + feature] = __float2bfloat16(sum * rrms[token]);
        }
    }
}

size_t window_smem(int kw, int m, int h) { return (size_t)m * (h + kXPad) * 2 + 2 * kw * 128 * 4 + kw * 8 * 4 + 8 * 4 + 16; }

template <int kW, int kD, int kMode, int kDiag = 0>
cudaError_t window_launch(const WindowArgs &a, int sms, cudaStream_t stream) {
    const size_t smem = window_smem(kW, a.m, a.h);
    cudaError_t e = cudaFuncSetAttribute(window_kernel<kW, kD, kMode, kDiag>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (e != cudaSuccess) return e;
    return mv_launch(window_kernel<kW, kD, kMode, kDiag>, dim3(sms), dim3(kW * 32), smem, stream, kDiag != 2, a);
}

__global__ void __launch_bounds__(1024) bare_read(const uint4 *w, int64_t n, unsigned *sink) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    unsigned acc = 0;
    int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    for (; i + 7 * stride < n; i += 8 * stride) {
        uint4 v[8];
#pragma unroll
        for (int u = 0; u < 8; ++u) v[u] = __ldcs(w + i + u * stride);
#pragma unroll
        for (int u = 0; u < 8; ++u) acc ^= v[u].x ^ v[u].y ^ v[u].z ^ v[u].w;
    }
    for (; i < n; i += stride) {
        const uint4 v = __ldcs(w + i);
        acc ^= v.x ^ v.y ^ v.z ^ v.w;
    }
    if (acc == 0x9e3779b9u) sink[blockIdx.x] = acc;
}

__global__ void sep_fill(uint4 *p, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        p[i] = make_uint4((unsigned)i, 0, 0, 0);
}

/* the pre-normalized x cuBLAS takes (rounded to bf16); the float64 reference is probe_common.cuh's */
__global__ void normalize(const __nv_bfloat16 *x, const __nv_bfloat16 *gamma, int h, float eps, __nv_bfloat16 *y) {
    const __nv_bfloat16 *xr = x + (int64_t)blockIdx.x * h;
    __shared__ float total;
    if (threadIdx.x == 0) total = 0.0f;
    __syncthreads();
    float s = 0.0f;
    for (int k = threadIdx.x; k < h; k += blockDim.x) s += as_float(xr[k]) * as_float(xr[k]);
    atomicAdd(&total, s);
    __syncthreads();
    const float r = rsqrtf(total / h + eps);
    for (int k = threadIdx.x; k < h; k += blockDim.x)
        y[(int64_t)blockIdx.x * h + k] = __float2bfloat16(as_float(xr[k]) * r * as_float(gamma[k]));
}

struct Variant {
    std::string name;
    std::function<void(int layer, cudaStream_t)> call; /* one call on layer's buffers; exits on error */
};

int run(const ProbeShape &sh, const std::vector<int> &ms) {
    const ProbeDevice probe = probe_device(); /* named references: lambdas below capture them */
    const cudaDeviceProp &prop = probe.prop;
    const mv_cuda_device &dev = probe.dev;
    cudaStream_t stream = probe.stream;
    const int n = sh.q + 2 * sh.kv, h = sh.h, sms = prop.multiProcessorCount;
    const size_t w_bytes = (size_t)n * h * 2;
    const int layers = probe_layers(w_bytes);
    const int64_t sep_vecs = (64ll << 20) / 16;
    printf("# %s, %s (N %d), bf16, %d layers of %.1f MiB\n", prop.name, sh.name, n, layers, w_bytes / 1048576.0);
    __nv_bfloat16 *w, *gamma;
    uint4 *sep;
    unsigned *sink;
    CHECK(cudaMalloc(&w, w_bytes * layers));
    CHECK(cudaMalloc(&gamma, (size_t)h * 2));
    CHECK(cudaMalloc(&sep, sep_vecs * 16));
    CHECK(cudaMalloc(&sink, 4096 * 4));
    fill<<<4096, 256, 0, stream>>>(w, (int64_t)(w_bytes / 2) * layers, 99, 0.05f, 0.0f);
    fill<<<64, 256, 0, stream>>>(gamma, h, 98, 0.5f, 1.0f);
    CHECK(cudaGetLastError());
    cublasLtHandle_t lt;
    CHECK_BLAS(cublasLtCreate(&lt));
    void *ws;
    CHECK(cudaMalloc(&ws, kPathWorkspaceBytes));
    int failures = 0;
    for (const int m : ms) {
        __nv_bfloat16 *x, *y, *out;
        double *ref, *got;
        CHECK(cudaMalloc(&x, (size_t)layers * m * h * 2));
        CHECK(cudaMalloc(&y, (size_t)layers * m * h * 2));
        CHECK(cudaMalloc(&out, (size_t)layers * m * n * 2));
        CHECK(cudaMalloc(&ref, (size_t)m * n * 8));
        CHECK(cudaMalloc(&got, (size_t)m * n * 8));
        fill<<<1024, 256, 0, stream>>>(x, (int64_t)layers * m * h, 1000 + m, 2.0f, 0.0f);
        normalize<<<layers * m, 256, 0, stream>>>(x, gamma, h, 1e-6f, y);
        CHECK(cudaGetLastError());
        const int tiles = (n + 15) / 16;
        if ((sms + tiles - 1) / tiles + 1 > kMaxParts || (int64_t)tiles * ((h + 31) / 32) * sms >= (1ll << 31)) {
            fprintf(stderr, "N %d: too few tiles for kMaxParts\n", n);
            return 1;
        }
        float *stream_k_ws;
        unsigned *counters;
        CHECK(cudaMalloc(&stream_k_ws, (size_t)tiles * kMaxParts * 128 * 4));
        CHECK(cudaMalloc(&counters, (size_t)tiles * 4));
        CHECK(cudaMemsetAsync(counters, 0, (size_t)tiles * 4, stream));
        const QkvGemmDesc gd = qkv_gemm_desc(m, n, h);
        const auto heur = path_heuristic(lt, gd, 1, true);
        /* a down_proj before each call (PROBE_DOWN=I, its input width; 0: none): cuBLASLt's
           [m, I] x [h, I]^T, as a model's MLP ends, its weights its own */
        const int inter = probe_env_int("PROBE_DOWN", 0);
        const QkvGemmDesc dd = qkv_gemm_desc(m, h, inter > 0 ? inter : 8);
        const auto dheur = path_heuristic(lt, dd, 1, true);
        __nv_bfloat16 *dw = nullptr, *dact = nullptr, *dout = nullptr;
        if (inter > 0) {
            CHECK(cudaMalloc(&dw, (size_t)h * inter * 2));
            CHECK(cudaMalloc(&dact, (size_t)m * inter * 2));
            CHECK(cudaMalloc(&dout, (size_t)m * h * 2));
            fill<<<4096, 256, 0, stream>>>(dw, (int64_t)h * inter, 77, 0.05f, 0.0f);
            fill<<<64, 256, 0, stream>>>(dact, (int64_t)m * inter, 78, 1.0f, 0.0f);
            CHECK(cudaGetLastError());
        }
        auto down = [&](cudaStream_t s) {
            const float one = 1.0f, zero = 0.0f;
            CHECK_BLAS(cublasLtMatmul(lt, dd.desc, &one, dw, dd.la, dact, dd.lb, &zero, dout, dd.ld, dout, dd.ld,
                                      &dheur[0].algo, ws, kPathWorkspaceBytes, s));
        };
        if (heur.empty()) {
            fprintf(stderr, "no cuBLASLt algorithm\n");
            return 1;
        }
        auto qargs = [&](int l) {
            return probe_qkv_args(MV_BFLOAT16, m, sh, x + (size_t)l * m * h, gamma, w + (size_t)l * (w_bytes / 2),
                                  out + (size_t)l * m * n);
        };
        auto wargs = [&](int l) {
            WindowArgs a;
            a.x = x + (size_t)l * m * h;
            a.gamma = gamma;
            a.w = w + (size_t)l * (w_bytes / 2);
            a.out = out + (size_t)l * m * n;
            a.m = m;
            a.h = h;
            a.n = n;
            a.eps = 1e-6f;
            a.ws = stream_k_ws;
            a.counters = counters;
            return a;
        };
        std::vector<Variant> vs;
        vs.push_back({"read", [&](int l, cudaStream_t s) {
                          bare_read<<<sms, 1024, 0, s>>>(reinterpret_cast<const uint4 *>(w + (size_t)l * (w_bytes / 2)),
                                                         (int64_t)(w_bytes / 16), sink);
                          CHECK(cudaGetLastError());
                      }});
        vs.push_back({"cublas", [&](int l, cudaStream_t s) {
                          const float one = 1.0f, zero = 0.0f;
                          CHECK_BLAS(cublasLtMatmul(lt, gd.desc, &one, w + (size_t)l * (w_bytes / 2), gd.la,
                                                    y + (size_t)l * m * h, gd.lb, &zero, out + (size_t)l * m * n, gd.ld,
                                                    out + (size_t)l * m * n, gd.ld, &heur[0].algo, ws,
                                                    kPathWorkspaceBytes, s));
                      }});
        for (const char *pname : {"register", "bulk"}) {
            const bool reg = pname[0] == 'r';
            vs.push_back({pname, [&, reg](int l, cudaStream_t s) {
                              const mv_qkv_args a = qargs(l);
                              mv_qkv_plan plan;
                              plan.pdl = true;
                              const bool ok = reg ? mv_qkv_register_plan(a, dev, false, &plan) : mv_qkv_bulk_plan(a, dev, &plan);
                              if (!ok) {
                                  fprintf(stderr, "%s: no plan\n", reg ? "register" : "bulk");
                                  exit(1);
                              }
                              CHECK(reg ? mv_qkv_register_launch(a, plan, dev, s) : mv_qkv_bulk_launch(a, plan, dev, s));
                          }});
        }
#define WINDOW(W, D, K, NAME)                                                                                             \
    vs.push_back({"w" #W "x" #D NAME, [&](int l, cudaStream_t s) { CHECK((window_launch<W, D, K>(wargs(l), sms, s))); }})
        WINDOW(16, 6, 0, "t");
        WINDOW(16, 8, 0, "t");
        WINDOW(16, 6, 2, "f");
        WINDOW(16, 8, 2, "f");
        if (getenv("PROBE_DIAG")) { /* diagnostics: stream-K ranges (calls 2-4 of the log), without PDL (2),
                                       without x's staging (1: wrong results) */
            WINDOW(16, 6, 1, "k");
            vs.push_back({"w16x6f-nopdl", [&](int l, cudaStream_t s) { CHECK((window_launch<16, 6, 2, 2>(wargs(l), sms, s))); }});
            vs.push_back({"w16x6f-nostage", [&](int l, cudaStream_t s) { CHECK((window_launch<16, 6, 2, 1>(wargs(l), sms, s))); }});
        }
        /* x staged by each warp for itself (no barrier before the first mma) */
        vs.push_back({"w16x6fw", [&](int l, cudaStream_t s) { CHECK((window_launch<16, 6, 2, 3>(wargs(l), sms, s))); }});
        vs.push_back({"w16x8fw", [&](int l, cudaStream_t s) { CHECK((window_launch<16, 8, 2, 3>(wargs(l), sms, s))); }});
        vs.push_back({"w16x8tw", [&](int l, cudaStream_t s) { CHECK((window_launch<16, 8, 0, 3>(wargs(l), sms, s))); }});
#undef WINDOW
        reference<<<dim3((n + 127) / 128, m), 128, 0, stream>>>(x, gamma, w, h, n, 1e-6, ref);
        CHECK(cudaGetLastError());
        std::vector<double> r((size_t)m * n), gv((size_t)m * n);
        CHECK(cudaMemcpyAsync(r.data(), ref, r.size() * 8, cudaMemcpyDeviceToHost, stream));
        printf("M=%-3d", m);
        for (auto &v : vs) {
            std::string err = "";
            if (v.name != "read") {
                CHECK(cudaMemsetAsync(out, 0xff, (size_t)m * n * 2, stream));
                v.call(0, stream);
                to_double<<<256, 256, 0, stream>>>(out, (int64_t)m * n, got);
                CHECK(cudaGetLastError());
                CHECK(cudaMemcpyAsync(gv.data(), got, gv.size() * 8, cudaMemcpyDeviceToHost, stream));
                CHECK(cudaStreamSynchronize(stream));
                bool nan = false;
                const double rel = probe_rel_error(r, gv, &nan);
                if (nan || !(rel < 1e-2)) {
                    err = nan ? " NaN!" : " FAIL";
                    ++failures;
                }
            }
            const int cycles = 4, calls = layers * cycles;
            const double chain = graph_us_per_call(stream, calls, [&](cudaStream_t s) {
                for (int c = 0; c < cycles; ++c)
                    for (int l = 0; l < layers; ++l) v.call(l, s);
            });
            const double fill_alone = graph_us_per_call(stream, calls, [&](cudaStream_t s) {
                for (int c = 0; c < calls; ++c) sep_fill<<<sms * 4, 512, 0, s>>>(sep, sep_vecs);
            });
            const double filled = graph_us_per_call(stream, calls, [&](cudaStream_t s) {
                for (int c = 0; c < cycles; ++c)
                    for (int l = 0; l < layers; ++l) {
                        sep_fill<<<sms * 4, 512, 0, s>>>(sep, sep_vecs);
                        v.call(l, s);
                    }
            });
            /* a 64 MiB read before each call: nothing overlaps the call's start, L2 left clean */
            const double read_alone = graph_us_per_call(stream, calls, [&](cudaStream_t s) {
                for (int c = 0; c < calls; ++c) bare_read<<<sms, 1024, 0, s>>>(sep, sep_vecs, sink);
            });
            const double after_read = graph_us_per_call(stream, calls, [&](cudaStream_t s) {
                for (int c = 0; c < cycles; ++c)
                    for (int l = 0; l < layers; ++l) {
                        bare_read<<<sms, 1024, 0, s>>>(sep, sep_vecs, sink);
                        v.call(l, s);
                    }
            });
            std::string after_down = "";
            if (inter > 0) {
                const double down_alone = graph_us_per_call(stream, calls, [&](cudaStream_t s) {
                    for (int c = 0; c < calls; ++c) down(s);
                });
                const double downed = graph_us_per_call(stream, calls, [&](cudaStream_t s) {
                    for (int c = 0; c < cycles; ++c)
                        for (int l = 0; l < layers; ++l) {
                            down(s);
                            v.call(l, s);
                        }
                });
                char b[32];
                snprintf(b, sizeof b, "/%.2f", downed - down_alone);
                after_down = b;
            }
            printf(" | %s %.2f/%.2f/%.2f%s%s", v.name.c_str(), chain, filled - fill_alone, after_read - read_alone,
                   after_down.c_str(), err.c_str());
            fflush(stdout);
        }
        printf("   (chain/after fill/after read%s, us; W at 4.8 TB/s %.2f)\n", inter > 0 ? "/after down_proj" : "",
               w_bytes / 4.8e3);
        destroy_qkv_gemm_desc(gd);
        destroy_qkv_gemm_desc(dd);
        for (void *p : {(void *)dw, (void *)dact, (void *)dout})
            if (p != nullptr) CHECK(cudaFree(p));
        for (void *p : {(void *)x, (void *)y, (void *)out, (void *)ref, (void *)got, (void *)stream_k_ws, (void *)counters}) CHECK(cudaFree(p));
    }
    printf("# %d failures\n", failures);
    return failures;
}

} // namespace

int main(int argc, char **argv) {
    ProbeShape shape;
    if (probe_shape_from_args(argc, argv, &shape) != 0) return 2;
    std::vector<int> ms;
    for (int i = 2; i < argc; ++i) ms.push_back(atoi(argv[i]));
    return run(shape, ms) != 0;
}
