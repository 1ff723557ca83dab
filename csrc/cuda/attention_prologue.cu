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
 * (cpu/attention_prologue.c) computes the same in another summation order.
 *
 * Asked for by name (_path="engine_prologue", sm_90), the whole prologue runs in the GEMM
 * engine's kernel instead (fused_rms_norm_qkv/engine.cu): its epilogue runs each head through the
 * same finish_head (prologue_head.cuh) on the unrounded float32 products. Not the automatic
 * choice: it lost in whole decode steps (see below and docs/design.md).
 */
#include "cuda/device.h"
#include "cuda/fused_rms_norm_qkv/paths.h"
#include "cuda/prologue_head.cuh"

namespace {

/* T: the activation dtype; FP8: the cache holds e4m3 (else T). items = tokens * heads, heads
   per token in the order q, k, v (v left out when nothing changes it). */
template <typename T, bool FP8>
__global__ void prologue_epilogue(const mv_prologue_args a, int64_t heads, int64_t items) {
    extern __shared__ float staged[];
    const int lane = static_cast<int>(threadIdx.x % 32), warp = static_cast<int>(threadIdx.x / 32);
    const int warps = static_cast<int>(blockDim.x / 32);
    const int64_t D = a.head_dim;
    float *t = staged + warp * D;
    mv_pdl_wait(); /* q, k, v come from the QKV kernel just before */
    mv_pdl_trigger(); /* the next kernel may start (a QKV kernel streams its W); it still waits
                         for this grid to finish before it reads anything this one writes */
    for (int64_t item = static_cast<int64_t>(blockIdx.x) * warps + warp; item < items;
         item += static_cast<int64_t>(gridDim.x) * warps) {
        const Item it = item_at(a, item, heads);
        const T *row = item_row<T>(a, it);
        for (int64_t d = lane; d < D; d += 32) t[d] = mv_to_float(row[d]); /* each lane its own d */
        finish_head<T, FP8>(a, it, t, lane);
    }
}

/* Where token m's position and slot are (bytes; positions, slot_mapping non-null). */
__device__ __forceinline__ const char *position_at(const mv_prologue_args &a, int64_t m) {
    return static_cast<const char *>(a.positions) + m * a.positions_stride * (a.positions_dtype == MV_INT32 ? 4 : 8);
}
__device__ __forceinline__ const char *slot_at(const mv_prologue_args &a, int64_t m) {
    return static_cast<const char *>(a.slot_mapping) + m * a.slot_stride * (a.slot_dtype == MV_INT32 ? 4 : 8);
}

/* Before the PDL wait, one warp: asks L2 for what heads [h0, h0 + n) of token m read besides their
   rows of q, k, v: the token's position and slot, the q and k norm weights, the heads' bias and
   the token's cos/sin row, so that the loads after the wait hit L2 (the kernel's critical path is
   that wait, then one round of loads, then the cos/sin row's). Nothing here is loaded for use:
   the QKV kernel lets this one start at its own start, so the kernel before it may still be
   writing positions or slots. The cos/sin row is the one of the position read now, a guess that
   only chooses lines to prefetch (clamped to the table): a stale position costs a wasted request,
   never a wrong value, as the loads after the wait read the position again. */
template <typename T>
__device__ __forceinline__ void prefetch_item_inputs(const mv_prologue_args &a, int64_t m, int64_t h0, int64_t n,
                                                     int lane) {
    const int64_t D = a.head_dim, nq = a.num_heads, nkv = a.num_kv_heads;
    const bool has_q = h0 < nq, has_k = h0 < nq + nkv && h0 + n > nq;
    const char *pos_at = a.positions == nullptr ? nullptr : position_at(a, m);
    if (lane == 0 && pos_at != nullptr) mv_prefetch_l2(pos_at);
    if (lane == 1 && a.slot_mapping != nullptr) mv_prefetch_l2(slot_at(a, m));
    const int64_t row_bytes = D * static_cast<int64_t>(sizeof(T));
    if (has_q && a.q_norm_weight != nullptr) mv_prefetch_span_l2(a.q_norm_weight, row_bytes, lane, 32);
    if (has_k && a.k_norm_weight != nullptr) mv_prefetch_span_l2(a.k_norm_weight, row_bytes, lane, 32);
    if (a.bias != nullptr) mv_prefetch_span_l2(static_cast<const T *>(a.bias) + h0 * D, n * row_bytes, lane, 32);
    if (pos_at != nullptr && (has_q || has_k) && a.max_position > 0) {
        const int64_t guess = a.positions_dtype == MV_INT32
                                  ? static_cast<int64_t>(*reinterpret_cast<const volatile int32_t *>(pos_at))
                                  : *reinterpret_cast<const volatile int64_t *>(pos_at);
        const int64_t pos = guess < 0 ? 0 : guess >= a.max_position ? a.max_position - 1 : guess;
        const int64_t element = a.cos_sin_dtype == MV_FLOAT32 ? 4 : static_cast<int64_t>(sizeof(T));
        mv_prefetch_span_l2(static_cast<const char *>(a.cos_sin) + pos * a.cos_sin_stride * element,
                            a.rotary_dim * element, lane, 32);
    }
}

/* The same epilogue where the head fits the warp's registers (finish_head_regs), kHeads heads of
   one token a warp: their rows are loaded together, then finished in turn (the token's position,
   slot and cos/sin row, read by the first, are L1 hits for the rest). Items are tokens x groups of
   kHeads heads. One head a warp is the shortest chain where the items take about a wave of
   warps; more items want more bytes in flight per warp (launch_vec_heads). The heads' bits do not
   depend on kHeads.
   Before the wait, what the QKV kernel does not write may still be written by the kernel before
   it, unless the QKV kernel let this one launch only after its own wait (kReady, one head a warp):
   then each warp loads its first item's inputs (load_head_inputs) before the wait, and after it
   only the row. Otherwise only L2 prefetches, where a prefetched line stays coherent and a loaded
   value would not: with early (the launcher's choice) all of a warp's inputs
   (prefetch_item_inputs), else the token's position and slot. kReady is its own instance: inputs
   held across the wait cost registers (45-93, against 32-80 for the others) that the other
   instances must not carry. */
template <typename T, bool FP8, int V, int kHeads, bool kReady = false>
__global__ void prologue_epilogue_vec(const mv_prologue_args a, int64_t heads, int64_t items, bool early) {
    static_assert(!kReady || kHeads == 1, "inputs are loaded early for one head a warp only");
    const int lane = static_cast<int>(threadIdx.x % 32), warp = static_cast<int>(threadIdx.x / 32);
    const int warps = static_cast<int>(blockDim.x / 32);
    const int64_t groups = (heads + kHeads - 1) / kHeads;
    const int64_t first = static_cast<int64_t>(blockIdx.x) * warps + warp;
    HeadInputs<V> first_inputs;
    if constexpr (kReady) {
        if (first < items) load_head_inputs<T, V>(a, item_at(a, first, heads), lane, first_inputs);
    } else if (first < items && early) { /* warp-uniform */
        const int64_t h0 = (first % groups) * kHeads;
        prefetch_item_inputs<T>(a, first / groups, h0, min(static_cast<int64_t>(kHeads), heads - h0), lane);
    } else if (first < items && lane == 0) {
        const int64_t m = first / groups;
        if (a.positions != nullptr) mv_prefetch_l2(position_at(a, m));
        if (a.slot_mapping != nullptr) mv_prefetch_l2(slot_at(a, m));
    }
    mv_pdl_wait(); /* q, k, v come from the QKV kernel just before */
    mv_pdl_trigger(); /* the next kernel may start (a QKV kernel streams its W); it still waits
                         for this grid to finish before it reads anything this one writes */
    for (int64_t item = first; item < items; item += static_cast<int64_t>(gridDim.x) * warps) {
        if constexpr (kHeads == 1) { /* spelled out: the grouped form at kHeads = 1 compiled to other
                                        code, 0.15-0.24 us slower a call in one A/B (Qwen3-0.6B M = 1,
                                        16; dev/logs/prologue-heads-a-warp-nvidia-h200-2026-11-25.log) */
            const Item it = item_at(a, item, heads);
            T *row = item_row<T>(a, it);
            float x[V];
            load_vec<T, V>(row + lane * V, x);
            if (kReady && item == first)
                finish_head_loaded<T, FP8, V>(a, it, x, row, lane, first_inputs);
            else
                finish_head_regs<T, FP8, V>(a, it, x, row, lane);
            continue;
        }
        const int64_t m = item / groups, h0 = (item % groups) * kHeads;
        float x[kHeads][V];
        T *rows[kHeads];
#pragma unroll
        for (int k = 0; k < kHeads; ++k) {
            if (h0 + k >= heads) break;
            rows[k] = item_row<T>(a, item_of(a, m, h0 + k));
            load_vec<T, V>(rows[k] + lane * V, x[k]);
        }
#pragma unroll
        for (int k = 0; k < kHeads; ++k) {
            if (h0 + k >= heads) break;
            finish_head_regs<T, FP8, V>(a, item_of(a, m, h0 + k), x[k], rows[k], lane);
        }
    }
}

/* Heads a warp of the register epilogue takes (16 values a lane, at most 8 heads) where the call
   has more than one and a half waves of warps of one head: at 1.3 waves four heads a warp ran
   slower (H200 Qwen3-0.6B M = 256, 8192 items: 17.97 -> 18.45 us), from 1.9 faster (Llama-3-8B
   M = 256, 12288 items: 36.68 -> 34.18; M = 1024-4096 of three models 3-8%;
   dev/logs/prologue-heads-a-warp-nvidia-h200-2026-11-25.log) */
constexpr int heads_per_warp(int v) { return 16 / v < 8 ? 16 / v : 8; }
/* a wave: about the warps an SM holds of the one-head kernel (32-47 registers, 256 threads a block) */
constexpr int64_t kWaveWarpsPerSm = 48;

/* Whether every warp of the kReady instance (more registers) is resident at once for `groups`
   warps of work: only then does loading inputs before the wait shorten the call; the occupancy
   API's answer (cached per kernel, device.h). */
template <typename Kernel>
bool one_wave(Kernel kernel, int64_t groups, int warps_per_block, const mv_cuda_device &dev) {
    int blocks_per_sm = 0;
    if (mv_blocks_per_sm(&blocks_per_sm, kernel, warps_per_block * 32, 0, dev.device) != cudaSuccess) {
        (void)cudaGetLastError();
        return false;
    }
    return groups <= static_cast<int64_t>(blocks_per_sm) * warps_per_block * dev.sms;
}

template <typename T, bool FP8, int V>
cudaError_t launch_vec_heads(const mv_prologue_args &a, int64_t heads, int64_t items, const mv_cuda_device &dev,
                             cudaStream_t stream, bool pdl, bool qkv_triggers_early, bool qkv_after_wait) {
    constexpr int kWarps = 8;
    constexpr int kGrouped = heads_per_warp(V);
    const bool grouped = 2 * items > 3 * kWaveWarpsPerSm * dev.sms;
    const int64_t groups = grouped ? a.qkv.in.rows * ((heads + kGrouped - 1) / kGrouped) : items;
    int64_t blocks = (groups + kWarps - 1) / kWarps;
    if (blocks > (int64_t{1} << 20)) blocks = int64_t{1} << 20; /* the rest by the grid-stride loop */
    const dim3 grid(static_cast<unsigned>(blocks)), block(kWarps * 32);
    /* prefetch_item_inputs where every warp can start while the QKV kernel runs: otherwise its
       guessed position is one more load on the way (H100 Qwen3-0.6B M = 256: 18.9 -> 23.7 us) */
    const bool early = qkv_triggers_early && groups <= kWaveWarpsPerSm * dev.sms;
    if (grouped)
        return mv_launch(prologue_epilogue_vec<T, FP8, V, kGrouped>, grid, block, 0, stream, pdl, a, heads, groups, early);
    constexpr auto ready_kernel = prologue_epilogue_vec<T, FP8, V, 1, true>;
    if (early && qkv_after_wait && one_wave(ready_kernel, groups, kWarps, dev))
        return mv_launch(ready_kernel, grid, block, 0, stream, pdl, a, heads, groups, early);
    return mv_launch(prologue_epilogue_vec<T, FP8, V, 1>, grid, block, 0, stream, pdl, a, heads, groups, early);
}

template <typename T, bool FP8>
cudaError_t launch_vec(int v, const mv_prologue_args &a, int64_t heads, int64_t items, const mv_cuda_device &dev,
                       cudaStream_t stream, bool pdl, bool early, bool after_wait) {
    switch (v) {
    case 1: return launch_vec_heads<T, FP8, 1>(a, heads, items, dev, stream, pdl, early, after_wait);
    case 2: return launch_vec_heads<T, FP8, 2>(a, heads, items, dev, stream, pdl, early, after_wait);
    case 4: return launch_vec_heads<T, FP8, 4>(a, heads, items, dev, stream, pdl, early, after_wait);
    default: return launch_vec_heads<T, FP8, 8>(a, heads, items, dev, stream, pdl, early, after_wait);
    }
}

template <typename T>
int launch_epilogue(const mv_prologue_args &a, int64_t heads, int64_t items, const mv_cuda_device &dev,
                    cudaStream_t stream, bool pdl, bool early, bool after_wait) {
    const bool fp8 = a.k_cache != nullptr && a.cache_dtype == MV_FLOAT8_E4M3;
    const int v = mv_prologue_vec_width(a, sizeof(T));
    if (v != 0) {
        return static_cast<int>(fp8 ? launch_vec<T, true>(v, a, heads, items, dev, stream, pdl, early, after_wait)
                                    : launch_vec<T, false>(v, a, heads, items, dev, stream, pdl, early, after_wait));
    }
    const int warps = a.head_dim > 512 ? 1 : 8; /* head_dim <= 4096 (the binding): <= 16 KiB */
    int64_t blocks = (items + warps - 1) / warps;
    if (blocks > (int64_t{1} << 20)) blocks = int64_t{1} << 20; /* the rest by the grid-stride loop */
    const dim3 grid(static_cast<unsigned>(blocks)), block(static_cast<unsigned>(warps * 32));
    const size_t smem = static_cast<size_t>(warps) * static_cast<size_t>(a.head_dim) * sizeof(float);
    if (fp8)
        return static_cast<int>(mv_launch(prologue_epilogue<T, true>, grid, block, smem, stream, pdl, a, heads, items));
    return static_cast<int>(mv_launch(prologue_epilogue<T, false>, grid, block, smem, stream, pdl, a, heads, items));
}

}  // namespace

extern "C" int mv_attention_prologue_cuda(const mv_prologue_args *a, const mv_cuda_opts *o, void *stream,
                                          mv_qkv_path *taken) {
    *taken = MV_QKV_AUTO;
    const bool touch_v = a->bias != nullptr || a->k_cache != nullptr;
    const bool touch_qk =
        touch_v || a->positions != nullptr || a->q_norm_weight != nullptr || a->k_norm_weight != nullptr;
    if (!touch_qk || a->qkv.in.rows == 0) return mv_fused_rms_norm_qkv_cuda(&a->qkv, o, stream, taken);
    const cudaStream_t s = static_cast<cudaStream_t>(stream);
    mv_cuda_device dev;
    const cudaError_t dev_err = mv_current_device(&dev);
    if (dev_err != cudaSuccess) return static_cast<int>(dev_err);
    const bool pdl = mv_pdl_use(o->pdl, dev);
    /* One kernel (the engine with the epilogue in its own) only where asked for: in chains of
       prologues it took 0.76-1.00x the time of the two kernels below at 1-16 rows (H200), but in
       whole decode steps each fused layer took ~8 us more (Llama-3-8B batch 1, Qwen3-0.6B batch
       16), with PDL or without (dev/logs/engine-prologue-nvidia-h200-2026-11-24.log). */
    if (o->path == MV_QKV_ENGINE_PROLOGUE) {
        mv_qkv_plan plan;
        plan.pdl = pdl;
        if (mv_qkv_engine_prologue_plan(*a, dev, &plan)) {
            const cudaError_t err = mv_qkv_engine_prologue_launch(*a, plan, dev, s);
            if (err != cudaSuccess) return static_cast<int>(err);
            *taken = MV_QKV_ENGINE_PROLOGUE;
            if (a->qkv.in.residual != nullptr && !plan.writes_residual) /* in place: after the kernel */
                return static_cast<int>(mv_qkv_residual_store(a->qkv, s));
            return 0;
        }
    }
    /* the QKV table's kernel (a path asked for that is not the table's: the table's choice), then
       the epilogue kernel */
    bool early = false;      /* whether this kernel can start while the QKV kernel runs */
    bool after_wait = false; /* and only once the kernels before the QKV kernel have finished */
    mv_qkv_args qkv = a->qkv;
    qkv.trigger_after_wait = 1;
    const int err = mv_qkv_cuda(&qkv, o, stream, taken, &early, &after_wait);
    if (err != 0) return err;
    const int64_t heads = a->num_heads + a->num_kv_heads + (touch_v ? a->num_kv_heads : 0);
    const int64_t items = a->qkv.in.rows * heads;
    MV_DISPATCH_DTYPE(a->qkv.in.dtype, T, return launch_epilogue<T>(*a, heads, items, dev, s, pdl, early, after_wait);)
    return 0;
}
