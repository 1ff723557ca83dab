/*
 * scratch_norm_probe.cu: norm kernels for the QKV op's internal scratch (the norm + cuBLASLt path
 * at M = 32-2048), where no batch-invariance rule fixes the summation order. Profiled on an H200
 * (dev/probes/qkv_kernel_profile.py), the op's norm kernel (rms_norm_lanes_kernel / _pair) ran
 * 0.1-0.3 us longer than Inductor's per-row Triton kernel in front of the same cuBLAS GEMM.
 *
 * One row a block, P vectors of VW elements a thread (threads = H / VW / P rounded up to a warp), bf16:
 * each thread sums its own squares, a warp butterfly, the warps' sums through shared memory after
 * one barrier, every thread adding them all; rsqrtf; y = w * (x * rrms) rounded once.
 * kWEarly: the weight row loaded before griddepcontrol.wait (the op treats weights as constants).
 *
 *   nvcc -std=c++17 -O3 -shared -Xcompiler -fPIC -gencode=arch=compute_90a,code=sm_90a \
 *        dev/probes/scratch_norm_probe.cu -o /tmp/scratch_norm_probe.so
 * Driven by dev/probes/scratch_norm_probe.py. Not part of the library.
 * Session 66 added, for dev/probes/norm_chain_nopdl.py and norm_tri_chain.py: norm_rows_canon (the lanes
 * kernels' summation order), norm_tri1024 (Inductor's H = 1024 kernel written in CUDA) and norm_var
 * (that kernel taken toward the generic kernels a step at a time).
 */
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace {

/* VW bf16 elements a vector (8: 16 bytes, 4: 8 bytes, 2: 4 bytes) */
template <int VW>
struct alignas(2 * VW) Vec {
    __nv_bfloat162 h[VW / 2];
};

__device__ __forceinline__ void pdl_wait() { asm volatile("griddepcontrol.wait;\n" ::: "memory"); }
__device__ __forceinline__ void pdl_trigger() { asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory"); }

template <int VW, int P, bool kWEarly, bool kGdc = true>
__global__ void __launch_bounds__(1024 / P) norm_rows(const Vec<VW> *__restrict__ x, const Vec<VW> *__restrict__ w,
                                                      Vec<VW> *__restrict__ y, int vecs, float inv_h, float eps) {
    __shared__ float warp_sums[32];
    const int u = threadIdx.x, threads = blockDim.x;
    const int64_t row = blockIdx.x;
    Vec<VW> xs[P], ws[P];
    if (kWEarly) {
#pragma unroll
        for (int j = 0; j < P; ++j)
            if (u + j * threads < vecs) ws[j] = w[u + j * threads];
    }
    if (kGdc) {
        pdl_wait();
        pdl_trigger();
    }
    const Vec<VW> *xr = x + row * vecs;
#pragma unroll
    for (int j = 0; j < P; ++j)
        if (u + j * threads < vecs) xs[j] = xr[u + j * threads];
    if (!kWEarly) {
#pragma unroll
        for (int j = 0; j < P; ++j)
            if (u + j * threads < vecs) ws[j] = w[u + j * threads];
    }
    float acc = 0.0f;
#pragma unroll
    for (int j = 0; j < P; ++j) {
        if (u + j * threads >= vecs) continue;
#pragma unroll
        for (int k = 0; k < VW / 2; ++k) {
            const float2 f = __bfloat1622float2(xs[j].h[k]);
            acc = fmaf(f.x, f.x, acc);
            acc = fmaf(f.y, f.y, acc);
        }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    const int warps = (threads + 31) >> 5;
    if (warps > 1) {
        if ((u & 31) == 0) warp_sums[u >> 5] = acc;
        __syncthreads();
        acc = 0.0f;
        for (int k = 0; k < warps; ++k) acc += warp_sums[k];
    }
    const float rrms = rsqrtf(acc * inv_h + eps);
    Vec<VW> *yr = y + row * vecs;
#pragma unroll
    for (int j = 0; j < P; ++j) {
        if (u + j * threads >= vecs) continue;
        Vec<VW> o;
#pragma unroll
        for (int k = 0; k < VW / 2; ++k) {
            const float2 f = __bfloat1622float2(xs[j].h[k]), g = __bfloat1622float2(ws[j].h[k]);
            o.h[k] = __floats2bfloat162_rn(g.x * (f.x * rrms), g.y * (f.y * rrms));
        }
        yr[u + j * threads] = o;
    }
}

/* A launch of rows blocks, PDL allowed where pdl (attr must outlive the launch). */
cudaLaunchConfig_t row_launch(int rows, int threads, size_t smem, cudaStream_t s, int pdl, cudaLaunchAttribute *attr) {
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3(rows);
    cfg.blockDim = dim3(threads);
    cfg.dynamicSmemBytes = smem;
    cfg.stream = s;
    attr->id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr->val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr;
    cfg.numAttrs = pdl ? 1 : 0;
    return cfg;
}

/* G of the library's 16-byte layout for a row of H (group_threads_for(ceil(H / 8 / 4))). */
int lanes_group(int hidden) {
    const int needed = (hidden / 8 + 3) / 4;
    int group = 1;
    if (needed <= 32) {
        while (group < needed) group <<= 1;
    } else {
        group = (needed + 31) / 32 * 32;
    }
    return group;
}

template <int VW, int P, bool kWEarly, bool kGdc = true>
cudaError_t launch(const void *x, const void *w, void *y, int rows, int hidden, float eps, cudaStream_t s, int pdl) {
    const int vecs = hidden / VW;
    int threads = (vecs + P - 1) / P;
    threads = (threads + 31) / 32 * 32;
    if (threads > 1024 / P || hidden % VW) return cudaErrorInvalidValue;
    cudaLaunchAttribute attr;
    const cudaLaunchConfig_t cfg = row_launch(rows, threads, 0, s, pdl, &attr);
    return cudaLaunchKernelEx(&cfg, norm_rows<VW, P, kWEarly, kGdc>, static_cast<const Vec<VW> *>(x),
                              static_cast<const Vec<VW> *>(w), static_cast<Vec<VW> *>(y), vecs, 1.0f / hidden, eps);
}

template <int VW>
cudaError_t launch_per(const void *x, const void *w, void *y, int rows, int hidden, float eps, cudaStream_t s,
                       int per, int w_early, int pdl) {
    if (per == 1 && w_early == 2) return launch<VW, 1, false, false>(x, w, y, rows, hidden, eps, s, 0);
    if (per == 2 && w_early == 2) return launch<VW, 2, false, false>(x, w, y, rows, hidden, eps, s, 0);
    if (per == 1) return w_early ? launch<VW, 1, true>(x, w, y, rows, hidden, eps, s, pdl) : launch<VW, 1, false>(x, w, y, rows, hidden, eps, s, pdl);
    if (per == 2) return w_early ? launch<VW, 2, true>(x, w, y, rows, hidden, eps, s, pdl) : launch<VW, 2, false>(x, w, y, rows, hidden, eps, s, pdl);
    if (per == 4) return w_early ? launch<VW, 4, true>(x, w, y, rows, hidden, eps, s, pdl) : launch<VW, 4, false>(x, w, y, rows, hidden, eps, s, pdl);
    return cudaErrorInvalidValue;
}

/* The lanes kernels' order from each thread's part (vector u's sum of squares): parts[] written, one
   barrier, virtual thread l of G adding parts l, l + G, ... (at most 4), then the butterfly over G
   (G <= 32: every warp works it out) or the warps' butterflies and their sums in order (a second barrier). */
__device__ __forceinline__ float lanes_order_sum(float *parts, float *sums, float part, int u, int group, int vecs) {
    parts[u] = part;
    __syncthreads();
    float total = 0.0f;
    if (group <= 32) {
        const int lane = u & (group - 1);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int idx = lane + i * group;
            if (idx < vecs) total = __fadd_rn(total, parts[idx]);
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1)
            if (o < group) total += __shfl_xor_sync(0xffffffffu, total, o);
    } else {
        if (u < group) {
            float acc = 0.0f;
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int idx = u + i * group;
                if (idx < vecs) acc = __fadd_rn(acc, parts[idx]);
            }
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
            if ((u & 31) == 0) sums[u >> 5] = acc;
        }
        __syncthreads();
        for (int k = 0; k < (group >> 5); ++k) total += sums[k];
    }
    return total;
}

/* The lanes kernels' summation order in the probe's body (session 66): one 16-byte vector a thread,
   each thread's sum of squares into parts[] (sized to the block), one barrier, virtual thread l of G
   (G = group_threads_for(ceil(vecs / 4))) adding parts l, l + G, ... in turn, then the butterfly over G
   (G <= 32: every warp works it out; else the warps' sums through warp_sums after a second barrier).
   kGdc: griddepcontrol instructions; kPrefetch: the row's line asked of L2 before the wait, as the
   library's lanes kernel does under PDL. */
template <bool kGdc, bool kPrefetch>
__global__ void __launch_bounds__(1024) norm_rows_canon(const Vec<8> *__restrict__ x, const Vec<8> *__restrict__ w,
                                                       Vec<8> *__restrict__ y, int vecs, int group, float inv_h,
                                                       float eps) {
    extern __shared__ float parts[];
    __shared__ float warp_sums[32];
    const int u = threadIdx.x;
    const bool mine = u < vecs;
    const int64_t row = blockIdx.x;
    const Vec<8> *xr = x + row * vecs;
    if (kPrefetch && mine) asm volatile("prefetch.global.L2 [%0];" ::"l"(xr + u));
    if (kGdc) {
        pdl_wait();
        pdl_trigger();
    }
    Vec<8> xs, ws;
    float part = 0.0f;
    if (mine) {
        xs = xr[u];
        ws = w[u];
        const float2 f0 = __bfloat1622float2(xs.h[0]);
        part = __fmul_rn(f0.x, f0.x);
        part = __fmaf_rn(f0.y, f0.y, part);
#pragma unroll
        for (int k = 1; k < 4; ++k) {
            const float2 f = __bfloat1622float2(xs.h[k]);
            part = __fmaf_rn(f.x, f.x, part);
            part = __fmaf_rn(f.y, f.y, part);
        }
    }
    const float total = lanes_order_sum(parts, warp_sums, part, u, group, vecs);
    if (!mine) return;
    const float rrms = rsqrtf(total * inv_h + eps);
    Vec<8> o;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        const float2 f = __bfloat1622float2(xs.h[k]), g = __bfloat1622float2(ws.h[k]);
        o.h[k] = __floats2bfloat162_rn(g.x * (f.x * rrms), g.y * (f.y * rrms));
    }
    y[row * vecs + u] = o;
}

template <bool kGdc, bool kPrefetch>
cudaError_t launch_canon(const void *x, const void *w, void *y, int rows, int hidden, float eps, cudaStream_t s,
                         int pdl) {
    const int vecs = hidden / 8;
    const int threads = (vecs + 31) / 32 * 32;
    if (threads > 1024 || hidden % 8) return cudaErrorInvalidValue;
    const int group = lanes_group(hidden);
    cudaLaunchAttribute attr;
    const cudaLaunchConfig_t cfg = row_launch(rows, threads, static_cast<size_t>(threads) * sizeof(float), s, pdl, &attr);
    return cudaLaunchKernelEx(&cfg, norm_rows_canon<kGdc, kPrefetch>, static_cast<const Vec<8> *>(x),
                              static_cast<const Vec<8> *>(w), static_cast<Vec<8> *>(y), vecs, group, 1.0f / hidden,
                              eps);
}

/* Inductor's kernel for H = 1024 (triton_per_fused__fused_rms_norm_0, Triton 3.6, its SASS read in
   session 66) written in CUDA: 256 threads of 4 elements (8 bytes) a thread, x by a plain load, the
   weight with an evict-last hint, a warp butterfly, the 8 warps' sums through shared memory, a butterfly
   over them, every thread reading the total after a second barrier, rsqrt.approx.ftz, H fixed at
   compile time, exactly 256 threads (reqntid as __launch_bounds__(256, 1) with the block fixed). */
__global__ void __launch_bounds__(256) norm_tri1024(const uint2 *x, const uint2 *w, uint2 *y, int rows) {
    __shared__ float sums[8];
    const int u = threadIdx.x;
    const int row = blockIdx.x;
    if (row >= rows) return;
    uint2 wv, xv;
    /* one asm statement: ptxas otherwise issued the weight's load after x's first use */
    asm volatile("ld.global.v2.u32 {%0, %1}, [%4];\n\tld.global.L1::evict_last.v2.u32 {%2, %3}, [%5];"
                 : "=r"(xv.x), "=r"(xv.y), "=r"(wv.x), "=r"(wv.y)
                 : "l"(x + row * 256 + u), "l"(w + u));
    const float x0 = __uint_as_float(xv.x << 16), x1 = __uint_as_float(xv.x & 0xffff0000u);
    const float x2 = __uint_as_float(xv.y << 16), x3 = __uint_as_float(xv.y & 0xffff0000u);
    float acc = x1 * x1;
    acc = fmaf(x0, x0, acc);
    acc = fmaf(x2, x2, acc);
    acc = fmaf(x3, x3, acc);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    if ((u & 31) == 0) sums[u >> 5] = acc;
    __syncthreads();
    float t = sums[u & 7];
#pragma unroll
    for (int o = 4; o > 0; o >>= 1) t += __shfl_xor_sync(0xffffffffu, t, o);
    __syncthreads();
    if (u == 0) sums[0] = t;
    __syncthreads();
    float r;
    asm("rsqrt.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(fmaf(sums[0], 1.0f / 1024.0f, 1e-6f)));
    const float w0 = __uint_as_float(wv.x << 16), w1 = __uint_as_float(wv.x & 0xffff0000u);
    const float w2 = __uint_as_float(wv.y << 16), w3 = __uint_as_float(wv.y & 0xffff0000u);
    __nv_bfloat162 a = __floats2bfloat162_rn((x0 * r) * w0, (x1 * r) * w1);
    __nv_bfloat162 b = __floats2bfloat162_rn((x2 * r) * w2, (x3 * r) * w3);
    y[row * 256 + u] = make_uint2(*reinterpret_cast<unsigned *>(&a), *reinterpret_cast<unsigned *>(&b));
}

/* norm_tri1024 taken one step at a time toward the generic kernels (session 66 bisect), kFlags:
   1 16-byte vectors (else 8), 2 H and the row stride at run time with an "is this vector mine" guard
   (else H = 1024 compiled in), 4 rsqrtf (else rsqrt.approx.ftz), 8 the row offset in 64 bits,
   16 the lanes kernels' summation order (parts[] in shared memory, virtual threads of G, their butterfly)
   instead of the warp butterfly first; with 2: 32 1/H passed in (else worked out in the kernel), 64 the row
   stride compiled in, 128 no guard, 256 sum / H by division (the library's), 512 that division with its
   reciprocal part before the loads (the compiler's fast-path sequence, its division outside 2^-64..2^64).
   Threads: H / V rounded up to a warp. */
template <int kFlags>
__global__ void __launch_bounds__(1024) norm_var(const unsigned *x, const unsigned *w, unsigned *y, int rows, int vecs_rt,
                                                 int stride_rt, int group, float eps, float inv_h) {
    constexpr bool kV8 = kFlags & 1, kRt = kFlags & 2, kFull = kFlags & 4, kI64 = kFlags & 8, kCanon = kFlags & 16;
    constexpr bool kInvParam = kFlags & 32, kFixStride = kFlags & 64, kNoGuard = kFlags & 128, kDiv = kFlags & 256,
                   kDivHoist = kFlags & 512;
    constexpr int W = kV8 ? 4 : 2; /* 32-bit words a vector */
    extern __shared__ float parts[];
    __shared__ float sums[32];
    const int u = threadIdx.x;
    const int row = blockIdx.x;
    if (row >= rows) return;
    const int vecs = kRt ? vecs_rt : 1024 / (2 * W);
    const int stride = kRt && !kFixStride ? stride_rt : 1024;
    const bool mine = !kRt || kNoGuard || u < vecs;
    const float hf = static_cast<float>(vecs * 2 * W);
    float rcp = 0.0f;
    if constexpr (kDivHoist) { /* the compiler's division, its reciprocal part before the loads */
        asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(rcp) : "f"(hf));
        rcp = fmaf(rcp, fmaf(-hf, rcp, 1.0f), rcp);
    }
    const unsigned *xr = kI64 ? x + static_cast<int64_t>(row) * stride / 2 : x + row * stride / 2;
    unsigned xv[W], wv[W];
    if (mine) {
        if constexpr (kV8)
            asm volatile("ld.global.v4.u32 {%0, %1, %2, %3}, [%8];\n\tld.global.L1::evict_last.v4.u32 {%4, %5, %6, %7}, [%9];"
                         : "=r"(xv[0]), "=r"(xv[1]), "=r"(xv[2]), "=r"(xv[3]), "=r"(wv[0]), "=r"(wv[1]), "=r"(wv[2]), "=r"(wv[3])
                         : "l"(xr + u * W), "l"(w + u * W));
        else
            asm volatile("ld.global.v2.u32 {%0, %1}, [%4];\n\tld.global.L1::evict_last.v2.u32 {%2, %3}, [%5];"
                         : "=r"(xv[0]), "=r"(xv[1]), "=r"(wv[0]), "=r"(wv[1])
                         : "l"(xr + u * W), "l"(w + u * W));
    } else {
#pragma unroll
        for (int k = 0; k < W; ++k) xv[k] = wv[k] = 0u;
    }
    float f[2 * W];
#pragma unroll
    for (int k = 0; k < W; ++k) {
        f[2 * k] = __uint_as_float(xv[k] << 16);
        f[2 * k + 1] = __uint_as_float(xv[k] & 0xffff0000u);
    }
    /* 512: rcp * 0 ties the reciprocal to x's first use, so ptxas works it out during the loads (it
       sank it past the barriers otherwise) */
    float acc = kDivHoist ? fmaf(f[0], f[0], rcp * 0.0f) : f[0] * f[0];
#pragma unroll
    for (int k = 1; k < 2 * W; ++k) acc = fmaf(f[k], f[k], acc);
    float total;
    if (kCanon) {
        total = lanes_order_sum(parts, sums, acc, u, group, vecs);
    } else {
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
        const int warps = (blockDim.x + 31) >> 5;
        if ((u & 31) == 0) sums[u >> 5] = acc;
        __syncthreads();
        float t = (u & 31) < warps ? sums[u & 31] : 0.0f;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1)
            if (o < warps) t += __shfl_xor_sync(0xffffffffu, t, o);
        __syncthreads();
        if (u == 0) sums[0] = t;
        __syncthreads();
        total = sums[0];
    }
    if (!mine) return;
    float ms;
    if constexpr (kDivHoist) {
        float q;
        if (total >= 0x1p-64f && total <= 0x1p64f) {
            q = total * rcp;
            q = fmaf(rcp, fmaf(-hf, q, total), q);
        } else {
            q = total / hf;
        }
        ms = q + eps;
    } else if constexpr (kDiv) {
        ms = total / hf + eps;
    } else {
        ms = fmaf(total, kInvParam ? inv_h : (kRt ? 1.0f / hf : 1.0f / 1024.0f), eps);
    }
    float r;
    if (kFull) r = rsqrtf(ms);
    else asm("rsqrt.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(ms));
    unsigned out[W];
#pragma unroll
    for (int k = 0; k < W; ++k) {
        const float w0 = __uint_as_float(wv[k] << 16), w1 = __uint_as_float(wv[k] & 0xffff0000u);
        __nv_bfloat162 b = __floats2bfloat162_rn((f[2 * k] * r) * w0, (f[2 * k + 1] * r) * w1);
        out[k] = *reinterpret_cast<unsigned *>(&b);
    }
    unsigned *yr = kI64 ? y + static_cast<int64_t>(row) * stride / 2 : y + row * stride / 2;
    if constexpr (kV8) *reinterpret_cast<uint4 *>(yr + u * W) = make_uint4(out[0], out[1], out[2], out[3]);
    else *reinterpret_cast<uint2 *>(yr + u * W) = make_uint2(out[0], out[1]);
}

template <int kFlags>
cudaError_t launch_var(const void *x, const void *w, void *y, int rows, int hidden, float eps, cudaStream_t s) {
    constexpr int V = (kFlags & 1) ? 8 : 4;
    if (!(kFlags & 2) && hidden != 1024) return cudaErrorInvalidValue;
    const int vecs = hidden / V, threads = (vecs + 31) / 32 * 32;
    const int group = lanes_group(hidden);
    if (hidden % V || threads > 1024 || ((kFlags & 16) && !(kFlags & 1))) return cudaErrorInvalidValue;
    norm_var<kFlags><<<rows, threads, (kFlags & 16) ? threads * sizeof(float) : 0, s>>>(
        static_cast<const unsigned *>(x), static_cast<const unsigned *>(w), static_cast<unsigned *>(y), rows, vecs,
        hidden, group, eps, 1.0f / static_cast<float>(hidden));
    return cudaSuccess;
}

} // namespace

/* vw: elements a vector (8, 4, 2); per: vectors a thread (1, 2, 4); w_early, pdl: 0/1 (w_early 2: no
   griddepcontrol instructions at all, weight late, no PDL). Returns the launch's cudaError_t. */
extern "C" int scratch_norm(uintptr_t x, uintptr_t w, uintptr_t y, int rows, int hidden, float eps, uintptr_t stream,
                            int vw, int per, int w_early, int pdl) {
    const void *xp = reinterpret_cast<const void *>(x), *wp = reinterpret_cast<const void *>(w);
    void *yp = reinterpret_cast<void *>(y);
    cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
    cudaError_t e = vw == 8   ? launch_per<8>(xp, wp, yp, rows, hidden, eps, s, per, w_early, pdl)
                    : vw == 4 ? launch_per<4>(xp, wp, yp, rows, hidden, eps, s, per, w_early, pdl)
                    : vw == 2 ? launch_per<2>(xp, wp, yp, rows, hidden, eps, s, per, w_early, pdl)
                              : cudaErrorInvalidValue;
    if (e == cudaSuccess) e = cudaGetLastError();
    return static_cast<int>(e);
}

/* The lanes order (norm_rows_canon): gdc 0/1 (griddepcontrol instructions), prefetch 0/1, pdl 0/1. */
extern "C" int scratch_norm_canon(uintptr_t x, uintptr_t w, uintptr_t y, int rows, int hidden, float eps,
                                  uintptr_t stream, int gdc, int prefetch, int pdl) {
    const void *xp = reinterpret_cast<const void *>(x), *wp = reinterpret_cast<const void *>(w);
    void *yp = reinterpret_cast<void *>(y);
    cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
    cudaError_t e = gdc ? (prefetch ? launch_canon<true, true>(xp, wp, yp, rows, hidden, eps, s, pdl)
                                    : launch_canon<true, false>(xp, wp, yp, rows, hidden, eps, s, pdl))
                        : launch_canon<false, false>(xp, wp, yp, rows, hidden, eps, s, pdl);
    if (e == cudaSuccess) e = cudaGetLastError();
    return static_cast<int>(e);
}

/* norm_tri1024 (H must be 1024; eps 1e-6 fixed): launched with <<<>>> (ex 0) or cudaLaunchKernelEx (ex 1). */
extern "C" int scratch_norm_tri1024(uintptr_t x, uintptr_t w, uintptr_t y, int rows, uintptr_t stream, int ex) {
    cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
    const uint2 *xp = reinterpret_cast<const uint2 *>(x), *wp = reinterpret_cast<const uint2 *>(w);
    uint2 *yp = reinterpret_cast<uint2 *>(y);
    if (ex) {
        cudaLaunchConfig_t cfg = {};
        cfg.gridDim = dim3(rows);
        cfg.blockDim = dim3(256);
        cfg.stream = s;
        const cudaError_t e = cudaLaunchKernelEx(&cfg, norm_tri1024, xp, wp, yp, rows);
        if (e != cudaSuccess) return static_cast<int>(e);
    } else {
        norm_tri1024<<<rows, 256, 0, s>>>(xp, wp, yp, rows);
    }
    return static_cast<int>(cudaGetLastError());
}

/* norm_var<flags> (see there); flags a value of the list below, else cudaErrorInvalidValue. */
extern "C" int scratch_norm_var(uintptr_t x, uintptr_t w, uintptr_t y, int rows, int hidden, float eps,
                                uintptr_t stream, int flags) {
    const void *xp = reinterpret_cast<const void *>(x), *wp = reinterpret_cast<const void *>(w);
    void *yp = reinterpret_cast<void *>(y);
    cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
    cudaError_t e;
    switch (flags) {
    case 0: e = launch_var<0>(xp, wp, yp, rows, hidden, eps, s); break;
    case 1: e = launch_var<1>(xp, wp, yp, rows, hidden, eps, s); break;
    case 2: e = launch_var<2>(xp, wp, yp, rows, hidden, eps, s); break;
    case 3: e = launch_var<3>(xp, wp, yp, rows, hidden, eps, s); break;
    case 4: e = launch_var<4>(xp, wp, yp, rows, hidden, eps, s); break;
    case 8: e = launch_var<8>(xp, wp, yp, rows, hidden, eps, s); break;
    case 14: e = launch_var<14>(xp, wp, yp, rows, hidden, eps, s); break;
    case 15: e = launch_var<15>(xp, wp, yp, rows, hidden, eps, s); break;
    case 17: e = launch_var<17>(xp, wp, yp, rows, hidden, eps, s); break;
    case 31: e = launch_var<31>(xp, wp, yp, rows, hidden, eps, s); break;
    case 34: e = launch_var<34>(xp, wp, yp, rows, hidden, eps, s); break;
    case 66: e = launch_var<66>(xp, wp, yp, rows, hidden, eps, s); break;
    case 130: e = launch_var<130>(xp, wp, yp, rows, hidden, eps, s); break;
    case 194: e = launch_var<194>(xp, wp, yp, rows, hidden, eps, s); break;
    case 226: e = launch_var<226>(xp, wp, yp, rows, hidden, eps, s); break;
    case 258: e = launch_var<258>(xp, wp, yp, rows, hidden, eps, s); break;
    case 514: e = launch_var<514>(xp, wp, yp, rows, hidden, eps, s); break;
    case 259: e = launch_var<259>(xp, wp, yp, rows, hidden, eps, s); break;
    case 515: e = launch_var<515>(xp, wp, yp, rows, hidden, eps, s); break;
    default: e = cudaErrorInvalidValue;
    }
    if (e == cudaSuccess) e = cudaGetLastError();
    return static_cast<int>(e);
}
