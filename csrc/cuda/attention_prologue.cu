/*
 * attention_prologue.cu: the GPU path of attention_prologue (minivllm_kernels.h), made of our own
 * kernels: the QKV launcher (fused_rms_norm_qkv/dispatch.cu) writes q into the caller's q and k, v
 * into the caller's k, v or the binding's scratch; then one epilogue kernel does the rest for
 * every (token, head): + bias, per-head RMSNorm over head_dim, RoPE (neox or gptj, partial
 * rotary), and the store to q, k, v or the KV cache (slot mapping, any strides, FP8 e4m3).
 *
 * One warp per (token, head): the head's values go through shared memory in float32 (RoPE pairs
 * features from different lanes), the norm's sum is a warp sum. The epilogue reads q, k, v as
 * the QKV kernel stored them (rounded to the dtype) and rounds once on its store; the CPU twin
 * (cpu/attention_prologue.c) computes the same in another summation order. The fused path on
 * the GEMM engine's epilogue will work on the float32 accumulators instead (docs/design.md).
 */
#include <cuda_fp8.h>

#include "cuda/common.cuh"
#include "cuda/device.h"

namespace {

/* A float32 or activation-dtype element (cos_sin_cache takes either). */
__device__ __forceinline__ float load_any(mv_dtype dt, const void *p, int64_t i) {
    switch (dt) {
    case MV_FLOAT32: return static_cast<const float *>(p)[i];
    case MV_FLOAT16: return __half2float(static_cast<const __half *>(p)[i]);
    default: return __bfloat162float(static_cast<const __nv_bfloat16 *>(p)[i]);
    }
}

__device__ __forceinline__ int64_t load_index(mv_dtype dt, const void *p, int64_t i) {
    return dt == MV_INT32 ? static_cast<int64_t>(static_cast<const int32_t *>(p)[i]) : static_cast<const int64_t *>(p)[i];
}

/* T: the activation dtype; FP8: the cache holds e4m3 (else T). items = tokens * heads, heads
   per token in the order q, k, v (v left out when nothing changes it). */
template <typename T, bool FP8>
__global__ void prologue_epilogue(const mv_prologue_args a, int64_t heads, int64_t items) {
    extern __shared__ float staged[];
    const int lane = static_cast<int>(threadIdx.x % 32), warp = static_cast<int>(threadIdx.x / 32);
    const int warps = static_cast<int>(blockDim.x / 32);
    const int64_t D = a.head_dim, nq = a.num_heads, nkv = a.num_kv_heads;
    float *t = staged + warp * D;
    mv_pdl_wait(); /* q, k, v come from the QKV kernel just before */
    for (int64_t item = static_cast<int64_t>(blockIdx.x) * warps + warp; item < items;
         item += static_cast<int64_t>(gridDim.x) * warps) {
        const int64_t m = item / heads, h = item % heads;
        const int kind = h < nq ? 0 : h < nq + nkv ? 1 : 2; /* q, k, v */
        const int64_t head = kind == 0 ? h : kind == 1 ? h - nq : h - nq - nkv;
        T *row = kind == 0   ? static_cast<T *>(a.qkv.q) + m * a.qkv.q_stride + head * D
                 : kind == 1 ? static_cast<T *>(a.qkv.k) + m * a.qkv.k_stride + head * D
                             : static_cast<T *>(a.qkv.v) + m * a.qkv.v_stride + head * D;
        const T *gamma = static_cast<const T *>(kind == 0 ? a.q_norm_weight : kind == 1 ? a.k_norm_weight : nullptr);
        const T *bias = static_cast<const T *>(a.bias);
        float sum = 0.0f;
        for (int64_t d = lane; d < D; d += 32) {
            float value = mv_to_float(row[d]);
            if (bias != nullptr) value += mv_to_float(bias[h * D + d]);
            t[d] = value;
            sum += value * value;
        }
        if (gamma != nullptr) { /* warp-uniform */
            sum = mv_warp_sum(sum);
            const float rrms = 1.0f / sqrtf(sum / static_cast<float>(D) + a.qk_norm_eps);
            for (int64_t d = lane; d < D; d += 32) t[d] = mv_to_float(gamma[d]) * (t[d] * rrms);
        }
        __syncwarp();
        if (a.positions != nullptr && kind != 2) {
            const int64_t pos = load_index(a.positions_dtype, a.positions, m * a.positions_stride);
            const int64_t half = a.rotary_dim / 2;
            if (pos < 0 || pos >= a.max_position) {
                /* never read outside the cos/sin cache: the token's q and k become NaN */
                for (int64_t d = lane; d < D; d += 32) t[d] = __int_as_float(0x7fc00000);
            } else {
                const int64_t base = pos * a.cos_sin_stride;
                for (int64_t i = lane; i < half; i += 32) {
                    const float c = load_any(a.cos_sin_dtype, a.cos_sin, base + i);
                    const float s = load_any(a.cos_sin_dtype, a.cos_sin, base + half + i);
                    const int64_t i0 = a.rope_gptj ? 2 * i : i, i1 = a.rope_gptj ? 2 * i + 1 : i + half;
                    const float x0 = t[i0], x1 = t[i1];
                    t[i0] = x0 * c - x1 * s;
                    t[i1] = x1 * c + x0 * s;
                }
            }
            __syncwarp();
        }
        if (kind == 0 || a.k_cache == nullptr) {
            for (int64_t d = lane; d < D; d += 32) row[d] = mv_from_float<T>(t[d]);
        } else {
            const int64_t slot = load_index(a.slot_dtype, a.slot_mapping, m * a.slot_stride);
            /* negative: padding; beyond the cache: never written (the CPU binding refuses it) */
            if (slot >= 0 && slot < a.num_blocks * a.block_size) {
                const int64_t *s = kind == 1 ? a.k_cache_strides : a.v_cache_strides;
                const int64_t at = (slot / a.block_size) * s[0] + (slot % a.block_size) * s[1] + head * s[2];
                if constexpr (FP8) {
                    auto *cache = static_cast<__nv_fp8_storage_t *>(kind == 1 ? a.k_cache : a.v_cache) + at;
                    for (int64_t d = lane; d < D; d += 32)
                        cache[d * s[3]] = __nv_cvt_float_to_fp8(t[d] / a.kv_scale, __NV_SATFINITE, __NV_E4M3);
                } else {
                    T *cache = static_cast<T *>(kind == 1 ? a.k_cache : a.v_cache) + at;
                    for (int64_t d = lane; d < D; d += 32) cache[d * s[3]] = mv_from_float<T>(t[d]);
                }
            }
        }
        __syncwarp(); /* t is the next item's */
    }
    mv_pdl_trigger();
}

template <typename T>
int launch_epilogue(const mv_prologue_args &a, int64_t heads, int64_t items, cudaStream_t stream, bool pdl) {
    const int warps = a.head_dim <= 512 ? 8 : 1; /* head_dim <= 4096 (the binding): <= 16 KiB */
    const size_t smem = static_cast<size_t>(warps) * static_cast<size_t>(a.head_dim) * sizeof(float);
    int64_t blocks = (items + warps - 1) / warps;
    if (blocks > (int64_t{1} << 20)) blocks = int64_t{1} << 20; /* the rest by the grid-stride loop */
    const dim3 grid(static_cast<unsigned>(blocks)), block(static_cast<unsigned>(warps * 32));
    if (a.k_cache != nullptr && a.cache_dtype == MV_FLOAT8_E4M3)
        return static_cast<int>(mv_launch(prologue_epilogue<T, true>, grid, block, smem, stream, pdl, a, heads, items));
    return static_cast<int>(mv_launch(prologue_epilogue<T, false>, grid, block, smem, stream, pdl, a, heads, items));
}

}  // namespace

extern "C" int mv_attention_prologue_cuda(const mv_prologue_args *a, const mv_cuda_opts *o, void *stream,
                                          mv_qkv_path *taken) {
    const int err = mv_fused_rms_norm_qkv_cuda(&a->qkv, o, stream, taken);
    if (err != 0) return err;
    const bool touch_v = a->bias != nullptr || a->k_cache != nullptr;
    const bool touch_qk =
        touch_v || a->positions != nullptr || a->q_norm_weight != nullptr || a->k_norm_weight != nullptr;
    if (!touch_qk || a->qkv.in.rows == 0) return 0;
    const int64_t heads = a->num_heads + a->num_kv_heads + (touch_v ? a->num_kv_heads : 0);
    const int64_t items = a->qkv.in.rows * heads;
    mv_cuda_device dev;
    const cudaError_t dev_err = mv_current_device(&dev);
    if (dev_err != cudaSuccess) return static_cast<int>(dev_err);
    const bool pdl = mv_pdl_use(o->pdl, dev);
    const cudaStream_t s = static_cast<cudaStream_t>(stream);
    MV_DISPATCH_DTYPE(a->qkv.in.dtype, T, return launch_epilogue<T>(*a, heads, items, s, pdl);)
    return 0;
}
