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

template <int VW, int P, bool kWEarly, bool kGdc = true>
cudaError_t launch(const void *x, const void *w, void *y, int rows, int hidden, float eps, cudaStream_t s, int pdl) {
    const int vecs = hidden / VW;
    int threads = (vecs + P - 1) / P;
    threads = (threads + 31) / 32 * 32;
    if (threads > 1024 / P || hidden % VW) return cudaErrorInvalidValue;
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3(rows);
    cfg.blockDim = dim3(threads);
    cfg.stream = s;
    cudaLaunchAttribute attr;
    attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr.val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = &attr;
    cfg.numAttrs = pdl ? 1 : 0;
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
