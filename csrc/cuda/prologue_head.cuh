/*
 * prologue_head.cuh: one (token, head) of the attention prologue's epilogue, shared by the
 * epilogue kernel (attention_prologue.cu) and the GEMM engine's fused epilogue (engine.cu):
 * which head an item is, where its q, k or v goes, and the float32 work on a head staged in
 * shared memory (+ bias, per-head RMSNorm, RoPE, the store to q, k, v or the KV cache).
 */
#ifndef MINIVLLM_CUDA_PROLOGUE_HEAD_CUH
#define MINIVLLM_CUDA_PROLOGUE_HEAD_CUH

#include <cuda_fp8.h>

#include "cuda/common.cuh"

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

/* One (token, head) of the epilogue: heads per token in the order q, k, v. */
struct Item {
    int64_t m, h;    /* token; head among all of the token's */
    int kind;        /* 0 q, 1 k, 2 v */
    int64_t head;    /* head within q, k or v */
};

/* Item (token m, head h among the token's heads in the order q, k, v). */
__device__ __forceinline__ Item item_of(const mv_prologue_args &a, int64_t m, int64_t h) {
    Item it;
    it.m = m;
    it.h = h;
    it.kind = h < a.num_heads ? 0 : h < a.num_heads + a.num_kv_heads ? 1 : 2;
    it.head = it.kind == 0 ? h : it.kind == 1 ? h - a.num_heads : h - a.num_heads - a.num_kv_heads;
    return it;
}

/* Item number `item` of tokens x heads, heads per token in the order q, k, v. */
__device__ __forceinline__ Item item_at(const mv_prologue_args &a, int64_t item, int64_t heads) {
    return item_of(a, item / heads, item % heads);
}

/* The item's row of q, k or v as the QKV kernel stored it. */
template <typename T>
__device__ __forceinline__ T *item_row(const mv_prologue_args &a, const Item &it) {
    T *base = static_cast<T *>(it.kind == 0 ? a.qkv.q : it.kind == 1 ? a.qkv.k : a.qkv.v);
    const int64_t stride = it.kind == 0 ? a.qkv.q_stride : it.kind == 1 ? a.qkv.k_stride : a.qkv.v_stride;
    return base + it.m * stride + it.head * a.head_dim;
}

/* Where the item's q, or k or v without a cache, is stored: its row, or q_out's. */
template <typename T>
__device__ __forceinline__ T *item_out(const mv_prologue_args &a, const Item &it, T *row) {
    return it.kind == 0 && a.q_out != nullptr
               ? static_cast<T *>(a.q_out) + it.m * a.q_out_stride + it.head * a.head_dim
               : row;
}

/* The per-head norm weight of the item (v has none). */
template <typename T>
__device__ __forceinline__ const T *item_gamma(const mv_prologue_args &a, const Item &it) {
    return static_cast<const T *>(it.kind == 0 ? a.q_norm_weight : it.kind == 1 ? a.k_norm_weight : nullptr);
}

/* Element offset of the item's head at a slot of its cache (k or v), and that cache's strides. */
__device__ __forceinline__ int64_t cache_at(const mv_prologue_args &a, const Item &it, int64_t slot,
                                            const int64_t **strides) {
    const int64_t *s = it.kind == 1 ? a.k_cache_strides : a.v_cache_strides;
    *strides = s;
    return (slot / a.block_size) * s[0] + (slot % a.block_size) * s[1] + it.head * s[2];
}

/* The rest of one item, by one warp, from its head_dim raw values (the product, before bias) in
   float32 at t (shared memory, this warp's alone): + bias, per-head RMSNorm (q, k with a
   weight), RoPE (q, k with positions), one rounding on the store to q (q_out), k, v or the
   cache. Lane l takes features l, l + 32, ... in each pass, so only RoPE's pairs cross lanes. */
template <typename T, bool FP8>
__device__ __forceinline__ void finish_head(const mv_prologue_args &a, const Item &it, float *t, int lane) {
    const int64_t D = a.head_dim, m = it.m, h = it.h;
    const int kind = it.kind;
    const T *gamma = item_gamma<T>(a, it);
    const T *bias = static_cast<const T *>(a.bias);
    float sum = 0.0f;
    for (int64_t d = lane; d < D; d += 32) {
        float value = t[d];
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
        T *out = item_out<T>(a, it, item_row<T>(a, it));
        for (int64_t d = lane; d < D; d += 32) out[d] = mv_from_float<T>(t[d]);
    } else {
        const int64_t slot = load_index(a.slot_dtype, a.slot_mapping, m * a.slot_stride);
        /* negative: padding; beyond the cache: never written (the CPU binding refuses it) */
        if (slot >= 0 && slot < a.num_blocks * a.block_size) {
            const int64_t *s;
            const int64_t at = cache_at(a, it, slot, &s);
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
    __syncwarp(); /* t may be the next item's */
}

/* V elements of T at p (aligned to V * sizeof(T) bytes) as float, and back: one vector access. */
template <typename T, int V>
__device__ __forceinline__ void load_vec(const T *p, float (&out)[V]) {
    const mv_vec<T, V> r = *reinterpret_cast<const mv_vec<T, V> *>(p);
#pragma unroll
    for (int j = 0; j < V; j++) out[j] = mv_to_float(r.v[j]);
}

template <typename T, int V>
__device__ __forceinline__ void store_vec(T *p, const float (&in)[V]) {
    mv_vec<T, V> r;
    mv_from_floats(r.v, in);
    *reinterpret_cast<mv_vec<T, V> *>(p) = r;
}

/* The per-head RMSNorm of the register epilogue, by the whole warp (lane l: the head's features
   [l V, l V + V)): x = g * (x * rrms), the sum of squares over the warp in mv_warp_sum's order. */
template <int V>
__device__ __forceinline__ void head_norm_regs(float (&x)[V], const float (&g)[V], float eps) {
    float sum = 0.0f;
#pragma unroll
    for (int j = 0; j < V; j++) sum += x[j] * x[j];
    sum = mv_warp_sum(sum);
    const float rrms = 1.0f / sqrtf(sum / static_cast<float>(32 * V) + eps);
#pragma unroll
    for (int j = 0; j < V; j++) x[j] = g[j] * (x[j] * rrms);
}

/* The last step of an item's register epilogue: lane l's V finished values to q (q_out), k or v,
   or to the cache at slot (negative: padding; beyond the cache: never written, and the CPU
   binding refuses it), rounded once. */
template <typename T, bool FP8, int V>
__device__ __forceinline__ void store_head_regs(const mv_prologue_args &a, const Item &it, const float (&x)[V], T *row,
                                                int lane, bool to_cache, int64_t slot) {
    if (!to_cache) {
        store_vec<T, V>(item_out<T>(a, it, row) + lane * V, x);
    } else if (slot >= 0 && slot < a.num_blocks * a.block_size) {
        const int64_t *s;
        const int64_t at = cache_at(a, it, slot, &s);
        if constexpr (FP8) {
            auto *cache = static_cast<__nv_fp8_storage_t *>(it.kind == 1 ? a.k_cache : a.v_cache) + at;
#pragma unroll
            for (int j = 0; j < V; j++)
                cache[(lane * V + j) * s[3]] = __nv_cvt_float_to_fp8(x[j] / a.kv_scale, __NV_SATFINITE, __NV_E4M3);
        } else {
            T *cache = static_cast<T *>(it.kind == 1 ? a.k_cache : a.v_cache) + at;
            if (s[3] == 1) {
                store_vec<T, V>(cache + lane * V, x);
            } else {
#pragma unroll
                for (int j = 0; j < V; j++) cache[(lane * V + j) * s[3]] = mv_from_float<T>(x[j]);
            }
        }
    }
}

/* What the register epilogue of one item reads besides its row: the token's position and slot, the
   head's bias and norm weight and its cos/sin values, as lane l of finish_head_regs uses them.
   Held across a PDL wait (finish_head_loaded) they cost registers that finish_head_regs, which
   loads the cos/sin values in its RoPE loop, does not hold. */
template <int V>
struct HeadInputs {
    int64_t pos, slot;
    float b[V], g[V], c[V], s[V];
};

/* Loads them (every load independent of the others but the cos/sin values', which follow the
   position). The epilogue kernel may call it before its PDL wait where every kernel before the QKV
   kernel has finished (the QKV kernel let it launch only after its own wait). */
template <typename T, int V>
__device__ __forceinline__ void load_head_inputs(const mv_prologue_args &a, const Item &it, int lane, HeadInputs<V> &in) {
    constexpr int D = 32 * V;
    const T *gamma = item_gamma<T>(a, it);
    const bool rotate = a.positions != nullptr && it.kind != 2;
    const bool to_cache = it.kind != 0 && a.k_cache != nullptr;
    in.pos = rotate ? load_index(a.positions_dtype, a.positions, it.m * a.positions_stride) : 0;
    in.slot = to_cache ? load_index(a.slot_dtype, a.slot_mapping, it.m * a.slot_stride) : -1;
    if (a.bias != nullptr) load_vec<T, V>(static_cast<const T *>(a.bias) + it.h * D + lane * V, in.b);
    if (gamma != nullptr) load_vec<T, V>(gamma + lane * V, in.g);
    if (!rotate || in.pos < 0 || in.pos >= a.max_position) return;
    const int64_t base = in.pos * a.cos_sin_stride;
    if (!a.rope_gptj) {
        const int f0 = (lane & 15) * V; /* this lane's first frequency */
#pragma unroll
        for (int j = 0; j < V; j++) {
            in.c[j] = load_any(a.cos_sin_dtype, a.cos_sin, base + f0 + j);
            in.s[j] = load_any(a.cos_sin_dtype, a.cos_sin, base + D / 2 + f0 + j);
        }
    } else if constexpr (V % 2 == 0) {
#pragma unroll
        for (int j = 0; j < V; j += 2) {
            const int64_t f = (lane * V + j) / 2;
            in.c[j] = load_any(a.cos_sin_dtype, a.cos_sin, base + f);
            in.s[j] = load_any(a.cos_sin_dtype, a.cos_sin, base + D / 2 + f);
        }
    }
}

/* finish_head_regs (below) with the item's inputs already loaded (load_head_inputs): the same
   arithmetic, so the same bits. */
template <typename T, bool FP8, int V>
__device__ __forceinline__ void finish_head_loaded(const mv_prologue_args &a, const Item &it, float (&x)[V], T *row,
                                                   int lane, const HeadInputs<V> &in) {
    const int kind = it.kind;
    const bool has_gamma = item_gamma<T>(a, it) != nullptr;
    const bool rotate = a.positions != nullptr && kind != 2;
    const bool to_cache = kind != 0 && a.k_cache != nullptr;
    if (a.bias != nullptr) {
#pragma unroll
        for (int j = 0; j < V; j++) x[j] += in.b[j];
    }
    if (has_gamma) head_norm_regs<V>(x, in.g, a.qk_norm_eps); /* warp-uniform */
    if (rotate) {
        if (in.pos < 0 || in.pos >= a.max_position) {
            /* never read outside the cos/sin cache: the token's q and k become NaN */
#pragma unroll
            for (int j = 0; j < V; j++) x[j] = __int_as_float(0x7fc00000);
        } else if (!a.rope_gptj) {
            const float sign = lane < 16 ? -1.0f : 1.0f;
#pragma unroll
            for (int j = 0; j < V; j++) {
                const float partner = __shfl_xor_sync(0xffffffffu, x[j], 16);
                x[j] = x[j] * in.c[j] + sign * partner * in.s[j];
            }
        } else if constexpr (V % 2 == 0) {
#pragma unroll
            for (int j = 0; j < V; j += 2) {
                const float x0 = x[j], x1 = x[j + 1];
                x[j] = x0 * in.c[j] - x1 * in.s[j];
                x[j + 1] = x1 * in.c[j] + x0 * in.s[j];
            }
        }
    }
    store_head_regs<T, FP8, V>(a, it, x, row, lane, to_cache, in.slot);
}

/* The rest of one item where its head fits the warp's registers (head_dim = 32 V,
   mv_prologue_vec_width): lane l holds the raw values (the product, before bias) of features
   [l V, l V + V) in x. A neox pair (i, i + head_dim / 2) is lane l's and lane l ^ 16's same
   register, a gptj pair two registers of one lane, so nothing goes through shared memory; every
   load but the cos/sin row's is independent of the others (one round of latency, then that row).
   row: the item's row as item_row gives it (where q, or k and v without a cache, go). */
template <typename T, bool FP8, int V>
__device__ __forceinline__ void finish_head_regs(const mv_prologue_args &a, const Item &it, float (&x)[V], T *row,
                                                 int lane) {
    constexpr int D = 32 * V;
    const int64_t m = it.m, h = it.h;
    const int kind = it.kind;
    const T *gamma = item_gamma<T>(a, it);
    const bool rotate = a.positions != nullptr && kind != 2;
    const bool to_cache = kind != 0 && a.k_cache != nullptr;
    /* every load of this round is independent of the others */
    const int64_t pos = rotate ? load_index(a.positions_dtype, a.positions, m * a.positions_stride) : 0;
    const int64_t slot = to_cache ? load_index(a.slot_dtype, a.slot_mapping, m * a.slot_stride) : -1;
    float g[V];
    if (a.bias != nullptr) {
        float b[V];
        load_vec<T, V>(static_cast<const T *>(a.bias) + h * D + lane * V, b);
#pragma unroll
        for (int j = 0; j < V; j++) x[j] += b[j];
    }
    if (gamma != nullptr) load_vec<T, V>(gamma + lane * V, g);
    if (gamma != nullptr) head_norm_regs<V>(x, g, a.qk_norm_eps); /* warp-uniform */
    if (rotate) {
        if (pos < 0 || pos >= a.max_position) {
            /* never read outside the cos/sin cache: the token's q and k become NaN */
#pragma unroll
            for (int j = 0; j < V; j++) x[j] = __int_as_float(0x7fc00000);
        } else {
            const int64_t base = pos * a.cos_sin_stride;
            if (!a.rope_gptj) {
                const int f0 = (lane & 15) * V; /* this lane's first frequency */
                const float sign = lane < 16 ? -1.0f : 1.0f;
#pragma unroll
                for (int j = 0; j < V; j++) {
                    const float c = load_any(a.cos_sin_dtype, a.cos_sin, base + f0 + j);
                    const float s = load_any(a.cos_sin_dtype, a.cos_sin, base + D / 2 + f0 + j);
                    const float partner = __shfl_xor_sync(0xffffffffu, x[j], 16);
                    x[j] = x[j] * c + sign * partner * s;
                }
            } else if constexpr (V % 2 == 0) {
#pragma unroll
                for (int j = 0; j < V; j += 2) {
                    const int64_t f = (lane * V + j) / 2;
                    const float c = load_any(a.cos_sin_dtype, a.cos_sin, base + f);
                    const float s = load_any(a.cos_sin_dtype, a.cos_sin, base + D / 2 + f);
                    const float x0 = x[j], x1 = x[j + 1];
                    x[j] = x0 * c - x1 * s;
                    x[j + 1] = x1 * c + x0 * s;
                }
            }
        }
    }
    store_head_regs<T, FP8, V>(a, it, x, row, lane, to_cache, slot);
}

/* V, where the epilogue of every head can run in registers (finish_head_regs): head_dim 32, 64,
   128 or 256, RoPE over the whole head or none (gptj pairs need two features per lane), and every
   row and weight it touches starting on a V-element boundary; else 0. */
inline int mv_prologue_vec_width(const mv_prologue_args &a, size_t element) {
    const int64_t v = a.head_dim / 32;
    if (a.head_dim % 32 != 0 || (v != 1 && v != 2 && v != 4 && v != 8)) return 0;
    if (a.positions != nullptr && (a.rotary_dim != a.head_dim || (a.rope_gptj && v < 2))) return 0;
    const auto ok_ptr = [&](const void *p) {
        return p == nullptr || reinterpret_cast<uintptr_t>(p) % (static_cast<uintptr_t>(v) * element) == 0;
    };
    bool ok = ok_ptr(a.qkv.q) && ok_ptr(a.qkv.k) && ok_ptr(a.qkv.v) && ok_ptr(a.bias) && ok_ptr(a.q_norm_weight) &&
              ok_ptr(a.k_norm_weight) && a.qkv.q_stride % v == 0 && a.qkv.k_stride % v == 0 && a.qkv.v_stride % v == 0 &&
              ok_ptr(a.q_out) && a.q_out_stride % v == 0;
    if (a.k_cache != nullptr && a.cache_dtype != MV_FLOAT8_E4M3) {
        ok = ok && ok_ptr(a.k_cache) && ok_ptr(a.v_cache);
        for (int d = 0; d < 3; d++) ok = ok && a.k_cache_strides[d] % v == 0 && a.v_cache_strides[d] % v == 0;
    }
    return ok ? static_cast<int>(v) : 0;
}

} // namespace

#endif /* MINIVLLM_CUDA_PROLOGUE_HEAD_CUH */
