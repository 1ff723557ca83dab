/*
 * common.cuh: device helpers shared by the minivllm CUDA kernels.
 *
 * - conversions between the storage dtypes (float, __half, __nv_bfloat16) and float, the type all
 *   arithmetic is done in; float -> half/bf16 rounds to nearest even, as the CPU kernels do;
 * - warp and block sum reductions in float;
 * - MV_DISPATCH_DTYPE, which turns a runtime mv_dtype into a template type.
 */
#ifndef MINIVLLM_CUDA_COMMON_CUH
#define MINIVLLM_CUDA_COMMON_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "minivllm_kernels.h"

/* ---- host: from a plan's runtime choice to a template ---------------------------------------- */

/* f(std::integral_constant<int, K>()) for the K of kValues equal to v, the last of them where none
   is: the one switch from a plan's tile size to the kernel templates (wgmma.cu, engine.cu). */
template <int kFirst, int... kRest, typename F>
decltype(auto) mv_with_constant(int v, F &&f) {
    if constexpr (sizeof...(kRest) == 0) {
        (void)v;
        return f(std::integral_constant<int, kFirst>());
    } else {
        if (v == kFirst) return f(std::integral_constant<int, kFirst>());
        return mv_with_constant<kRest...>(v, f);
    }
}

/* ---- programmatic dependent launch (device.h) ------------------------------------------------ */

/* Wait until the previous kernel on the stream has finished and its writes are visible; a no-op
   when this kernel was not launched with PDL, and before sm_90. */
__device__ __forceinline__ void mv_pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

/* Let the next kernel on the stream (if launched with PDL) start; it still waits for this one
   to finish before it reads anything this one writes. */
__device__ __forceinline__ void mv_pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

/* Ask L2 for the line holding p; no data comes back to the thread, and p must be valid memory.
   Safe before mv_pdl_wait, where a load is not: L2 is where every SM's writes land, so a line
   fetched early is updated by the previous kernel's later writes rather than going stale. */
__device__ __forceinline__ void mv_prefetch_l2(const void *p) {
#if defined(__CUDA_ARCH__)
    asm volatile("prefetch.global.L2 [%0];\n" ::"l"(p));
#endif
}

/* Ask this SM's L1 for the line holding p (read-only data of the running kernel only: L1 is not
   kept coherent with other SMs' writes). */
__device__ __forceinline__ void mv_prefetch_l1(const void *p) {
#if defined(__CUDA_ARCH__)
    asm volatile("prefetch.global.L1 [%0];\n" ::"l"(p));
#endif
}

/* Ask L2 for the lines of bytes [p, p + bytes), one 128-byte line per request, spread over the
   callers: caller `index` of `count`. */
__device__ __forceinline__ void mv_prefetch_span_l2(const void *p, int64_t bytes, int index, int count) {
    const uintptr_t begin = reinterpret_cast<uintptr_t>(p), end = begin + static_cast<uintptr_t>(bytes);
    for (uintptr_t line = (begin & ~uintptr_t{127}) + static_cast<uintptr_t>(index) * 128; line < end;
         line += static_cast<uintptr_t>(count) * 128)
        mv_prefetch_l2(reinterpret_cast<const void *>(line));
}

/* Ask L2 for rows [0, rows) of a row-major matrix (row_bytes each, stride_bytes apart), one
   128-byte line per request, spread over the callers: caller `index` of `count`. */
__device__ __forceinline__ void mv_prefetch_rows_l2(const void *base, int64_t rows, int64_t row_bytes,
                                                    int64_t stride_bytes, int index, int count) {
    const int64_t lines = (row_bytes + 127) / 128;
    for (int64_t e = index; e < rows * lines; e += count)
        mv_prefetch_l2(static_cast<const char *>(base) + (e / lines) * stride_bytes + (e % lines) * 128);
}

/* ---- shared memory and tensor cores (sm_80+) -------------------------------------------------- */
/* The shared-state-space address of a pointer into this block's shared memory (for PTX operands). */
__device__ __forceinline__ uint32_t mv_shared_address(const void *p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
/* 16 bytes global -> shared (cp.async, sm_80+), bypassing L1; dst and src 16-byte aligned; src_bytes
   below 16 fills the rest with zeros (0: no read of src). */
__device__ __forceinline__ void mv_cp_async16(void *dst, const void *src, int src_bytes = 16) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(mv_shared_address(dst)), "l"(src),
                 "r"(src_bytes)
                 : "memory");
}
__device__ __forceinline__ void mv_cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
/* Wait until at most kPending of this thread's committed groups are still in flight. */
template <int kPending>
__device__ __forceinline__ void mv_cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}
/* Four 8 x 8 matrices of 16-bit elements from shared memory (ldmatrix.x4): lane l gives the address
   of row l % 8 of matrix l / 8 and receives its share of each in r[0..3], in the mma fragment
   layout. */
__device__ __forceinline__ void mv_ldmatrix_x4(uint32_t r[4], const void *p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(mv_shared_address(p)));
}
/* c += A . B on tensor cores, mma.sync m16n8k16 with fp32 accumulate; T is __half or
   __nv_bfloat16. a0..a3 and b0, b1 are the instruction's A and B fragments (PTX ISA layout). */
template <typename T>
__device__ __forceinline__ void mv_mma_16x8x16(float c[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                               uint32_t b0, uint32_t b1) {
    static_assert(std::is_same<T, __nv_bfloat16>::value || std::is_same<T, __half>::value, "16-bit types only");
    if constexpr (std::is_same<T, __nv_bfloat16>::value)
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                     "{%0,%1,%2,%3};\n"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
    else
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                     "{%0,%1,%2,%3};\n"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}
/* ---- dtype <-> float ------------------------------------------------------------------------ */

__device__ __forceinline__ float mv_to_float(float v) { return v; }
__device__ __forceinline__ float mv_to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float mv_to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T mv_from_float(float v);
template <>
__device__ __forceinline__ float mv_from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half mv_from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 mv_from_float<__nv_bfloat16>(float v) {
    return __float2bfloat16_rn(v);
}

/* dst[j] = src[j] rounded to T, two at a time for 16-bit T (one cvt.rn.{bf16x2,f16x2}.f32 per
   pair, same rounding as element by element, half the instructions and no repacking). */
template <typename T, int V>
__device__ __forceinline__ void mv_from_floats(T (&dst)[V], const float (&src)[V]) {
    if constexpr (V % 2 == 0 && (std::is_same<T, __nv_bfloat16>::value || std::is_same<T, __half>::value)) {
#pragma unroll
        for (int j = 0; j < V; j += 2) {
            if constexpr (std::is_same<T, __nv_bfloat16>::value)
                *reinterpret_cast<__nv_bfloat162 *>(&dst[j]) = __floats2bfloat162_rn(src[j], src[j + 1]);
            else
                *reinterpret_cast<__half2 *>(&dst[j]) = __floats2half2_rn(src[j], src[j + 1]);
        }
    } else {
#pragma unroll
        for (int j = 0; j < V; ++j) dst[j] = mv_from_float<T>(src[j]);
    }
}

/* V elements of T moved as one aligned access (16 B for 8 halves or 4 floats). */
template <typename T, int V>
struct alignas(sizeof(T) * V) mv_vec {
    T v[V];
};

/* s = x + residual rounded to T, as the model stores it (every kernel that adds a residual). */
template <typename T, int V>
__device__ __forceinline__ void mv_add_rounded(mv_vec<T, V> &s, const mv_vec<T, V> &residual) {
    float sums[V];
#pragma unroll
    for (int j = 0; j < V; ++j) sums[j] = mv_to_float(s.v[j]) + mv_to_float(residual.v[j]);
    mv_from_floats(s.v, sums);
}

/* Plain (coherent) loads and stores on purpose: no __ldg / __restrict__, because in-place forms
   make inputs and outputs the same memory and a kernel may re-read what it wrote. */
template <typename T>
__device__ __forceinline__ float mv_load_float(const T *p) { return mv_to_float(*p); }

template <typename T>
__device__ __forceinline__ void mv_store_float(T *p, float v) { *p = mv_from_float<T>(v); }

/* v rounded to T and back: the value a T tensor would hold. */
template <typename T>
__device__ __forceinline__ float mv_round_to(float v) { return mv_to_float(mv_from_float<T>(v)); }

/* ---- QKV outputs ------------------------------------------------------------------------------ */

/* Where column n (of q_cols + 2 * kv_cols) of token row m goes: q, then k, then v, each at its
   own row stride. Shared by every kernel that writes the QKV product. */
template <typename T>
__device__ __forceinline__ T *mv_qkv_output(const mv_qkv_args &a, int64_t m, int64_t n) {
    if (n < a.q_cols) return static_cast<T *>(a.q) + m * a.q_stride + n;
    if (n < a.q_cols + a.kv_cols) return static_cast<T *>(a.k) + m * a.k_stride + (n - a.q_cols);
    return static_cast<T *>(a.v) + m * a.v_stride + (n - a.q_cols - a.kv_cols);
}

/* ---- reductions ----------------------------------------------------------------------------- */

/* Sum over the 32 lanes of a warp; every lane gets the total. All 32 lanes must take part. */
__device__ __forceinline__ float mv_warp_sum(float v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

/* Sum over the whole block; every thread gets the total. blockDim.x must be a multiple of 32 and
   at most 1024, every thread of the block must call it, and scratch holds 32 floats of shared
   memory. Safe to call repeatedly with the same scratch: the leading barrier keeps a fast warp
   from overwriting scratch while a slow one still reads the previous call's partial sums. */
__device__ __forceinline__ float mv_block_sum(float v, float *scratch) {
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int num_warps = blockDim.x >> 5;
    v = mv_warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    /* Every warp sums the per-warp partials itself, so no broadcast round trip is needed. */
    v = lane < num_warps ? scratch[lane] : 0.0f;
    return mv_warp_sum(v);
}

/* ---- dtype dispatch ------------------------------------------------------------------------- */

/* Runs the trailing statements with TYPE bound to the C++ type of `dtype`. Meant for the extern "C"
   launchers (which return int): an unknown dtype returns cudaErrorInvalidValue from the caller.
   Usage: MV_DISPATCH_DTYPE(args->in.dtype, T, launch<T>(args, stream);) */
#define MV_DISPATCH_DTYPE(dtype, TYPE, ...)                                                        \
    switch (dtype) {                                                                               \
    case MV_FLOAT32: {                                                                             \
        using TYPE = float;                                                                        \
        __VA_ARGS__                                                                                \
    } break;                                                                                       \
    case MV_FLOAT16: {                                                                             \
        using TYPE = __half;                                                                       \
        __VA_ARGS__                                                                                \
    } break;                                                                                       \
    case MV_BFLOAT16: {                                                                            \
        using TYPE = __nv_bfloat16;                                                                \
        __VA_ARGS__                                                                                \
    } break;                                                                                       \
    default:                                                                                       \
        return (int)cudaErrorInvalidValue;                                                         \
    }

#endif /* MINIVLLM_CUDA_COMMON_CUH */
