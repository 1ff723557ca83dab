/*
 * deferred_stream.cu: the deferred-norm W stream (sm_90+, fp16/bf16, 1 <= M <= 32, H % 64 == 0).
 * Shared layout: stream_common.cuh. The x rows (and residual rows) travel beside W through the
 * same ring and rrms is applied in the epilogue, so no block stages the whole input before its
 * first product.
 */
#include "cuda/fused_rms_norm_qkv/stream_common.cuh"

namespace {

/* ---- The deferred-norm tensor-copy kernel (sm_90+, fp16/bf16, M <= 32) -----------------------

   The two kernels above stage the whole normalized input in every block before the first product:
   at M = 16 and H = 4096 that is 128 KiB that each of 132 blocks reads at once (17 MiB out of L2
   in a burst) and passes over twice, while its W stream waits. Here the input travels with the
   weights instead: ring stage i holds W[this block's features][k range i] and x[all rows][k range
   i], both brought by the copy engine, and the norm is deferred (the identity of the wgmma path):
   the products accumulate (gamma * x) . W^T, with gamma * x rounded to the dtype, and each token's sums
   are multiplied by its rrms in the epilogue. The lane that loads an x fragment for the tensor
   cores scales it by gamma in registers (gamma sits in shared memory, copied once) and adds its
   x^2 to the row sums, so the norm costs no pass, no barrier and no global load per stage.
   - fp16: gamma * x can overflow fp16 where gamma * x * rrms cannot (|x| up to 65504). So in fp16
     the operand is gamma * x * 2^-e, with 2^e the least power of two above max |gamma| (e = 0
     where max |gamma| <= 1), which bounds it by |x|: no overflow for any finite input. The scale is
     exact (a power of two), so the operand equals round(gamma * x) except where it falls below
     fp16's normal range (|gamma * x| < 2^(e - 14)); the epilogue multiplies by rrms * 2^e. Each
     block takes max |gamma| from its copy of gamma before its first product (one pass over H
     elements, while W streams). bf16 has float32's range and needs no scale.
   - Blocks own equal ranges of output features (as the tensor-copy kernel) and walk K once: every
     stage feeds all of the block's 16-feature tiles (at most kDeferredMaxTiles), so x is read
     once per block, not once per tile. The W box covers 16 * tiles features from the block's
     first feature (a few of them the next block's, computed and not stored).
   - With a residual, its box follows x's in each slot and the lane that loads an x fragment
     forms s = x + residual, rounded to the dtype (as every path), before the norm sees it. Each
     stage's s goes to residual_out from one block (stage i from block i mod grid: every block
     walks every stage); in place (residual_out is residual) the dispatcher's store kernel writes
     it after this kernel, since other blocks may still be copying the residual.
   - The boxes are laid out as [row][stage_lines][128 bytes] with the 128-byte swizzle; with
     stage_lines = 4 mod 8, the two rows (features or tokens) a quarter-warp reads sit in opposite
     halves of the swizzle: no bank conflicts (see the tensor-copy kernel). */
constexpr int kDeferredMaxTokens = 32;
/* row sums, max |gamma| (padded to 16 bytes), then each consumer warp's partial row sums, which one
   thread per row adds in warp order: a fixed order, so a call's bits do not depend on which warp
   finished first. */
constexpr int kDeferredScalars = kDeferredMaxTokens + 4 + kWarps * kDeferredMaxTokens;
/* features per block <= 64 (32 above 16 tokens): registers; three tiles above 16 tokens spill
   (dev/logs/qkv-decode-timeline-nvidia-h200-2026-11-22.log, run T6). */
constexpr int kDeferredMaxTiles = 4;
constexpr int kDeferredLineChoices[] = {4, 12, 20, 28}; /* each 4 mod 8, narrowest first */
constexpr int kDeferredMaxStages = 16;

struct DeferredGeometry {
    int64_t cols;     /* N */
    int tiles;        /* 16-feature tiles per block */
    int stage_lines;  /* 64-k lines per stage */
    int kstages;      /* ceil(H / (64 * stage_lines)): stages per block */
    int stages;       /* ring slots */
    int w_bytes;      /* W box: 16 * tiles * stage_lines lines of 128 bytes */
    int x_bytes;      /* x box: rows * stage_lines lines */
    int r_offset;     /* the residual's box in a slot: after x's, from a 1 KiB boundary */
    int slot_bytes;   /* W, x (and residual) boxes rounded up to the swizzle's 1 KiB */
    int early_stages; /* W boxes requested before waiting for the previous kernel */
    int store_residual; /* with a residual: this kernel stores s to residual_out (not in place) */
};

template <typename T, int kTokenTiles, int kMaxTiles, bool kResidual>
__global__ void __launch_bounds__(kBulkThreads, 2)
    fused_rms_norm_qkv_deferred_kernel(mv_qkv_args args, DeferredGeometry geo, const __grid_constant__ CUtensorMap w_map,
                                       const __grid_constant__ CUtensorMap x_map,
                                       const __grid_constant__ CUtensorMap r_map) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    constexpr bool kScaled = std::is_same<T, __half>::value; /* fp16: the operand scale (see above) */
    extern __shared__ uint4 smem[];
    const int rows = static_cast<int>(args.in.rows);
    const int hidden = static_cast<int>(args.in.hidden);
    unsigned char *ring = reinterpret_cast<unsigned char *>(
        (reinterpret_cast<uintptr_t>(smem) + kSwizzleAlign - 1) / kSwizzleAlign * kSwizzleAlign);
    float *row_sum = reinterpret_cast<float *>(ring + static_cast<size_t>(geo.stages) * geo.slot_bytes); /* [kDeferredScalars] */
    float *gamma_max = row_sum + kDeferredMaxTokens;
    float *warp_sum = gamma_max + 4; /* [kWarps][kDeferredMaxTokens] */
    T *gamma_s = reinterpret_cast<T *>(row_sum + kDeferredScalars); /* [H], H % 64 == 0 */
    uint64_t *full = reinterpret_cast<uint64_t *>(gamma_s + hidden);
    uint64_t *empty = full + geo.stages;
    uint64_t *gamma_full = empty + geo.stages;
    float *partial = reinterpret_cast<float *>(ring); /* the epilogue's, once the ring is drained */

    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int64_t feature_begin = geo.cols * blockIdx.x / gridDim.x;
    const int64_t feature_end = geo.cols * (blockIdx.x + 1) / gridDim.x;
    const int sl = geo.stage_lines;

    if (threadIdx.x == 0) {
        for (int i = 0; i < geo.stages; ++i) {
            mv_mbarrier_init(&full[i], 1);
            mv_mbarrier_init(&empty[i], kWarps);
        }
        mv_mbarrier_init(gamma_full, 1);
        mv_mbarrier_init_fence();
    }
    if (threadIdx.x < kDeferredMaxTokens + 4) row_sum[threadIdx.x] = 0.0f; /* and gamma_max */
    __syncthreads();
    mv_pdl_trigger(); /* as in the tensor-copy kernel */

    if (warp == kWarps) {
        /* Producer: stage i is k lines [i * sl, (i + 1) * sl) in slot i % stages; one W box and
           one x box, both counted on full[slot]. W boxes of the first early_stages stages go out
           before the wait for the previous kernel (weights are constants of the model); every x
           box after it. Boxes past H or N are zero-filled and counted in full. */
        if (lane == 0) {
            const uint64_t w_policy = mv_evict_first_policy(), x_policy = mv_evict_last_policy();
            const unsigned bytes = static_cast<unsigned>(geo.w_bytes + (kResidual ? 2 : 1) * geo.x_bytes);
            auto slot_of = [&](int i) { return ring + static_cast<size_t>(i % geo.stages) * geo.slot_bytes; };
            auto arm = [&](int i) {
                const int slot = i % geo.stages, round = i / geo.stages;
                if (round > 0) mv_mbarrier_wait(&empty[slot], (round - 1) & 1);
                mv_mbarrier_arrive_expect_tx(&full[slot], bytes);
            };
            auto copy_w = [&](int i) {
                mv_tensor_copy_3d(slot_of(i), &w_map, 0, i * sl, static_cast<int>(feature_begin),
                                  &full[i % geo.stages], w_policy);
            };
            auto copy_x = [&](int i) { /* and the residual's box after it */
                mv_tensor_copy_3d(slot_of(i) + geo.w_bytes, &x_map, 0, i * sl, 0, &full[i % geo.stages], x_policy);
                if (kResidual)
                    mv_tensor_copy_3d(slot_of(i) + geo.r_offset, &r_map, 0, i * sl, 0,
                                      &full[i % geo.stages], x_policy);
            };
            /* gamma (a weight, like W) first: every stage's rescaling reads it from shared memory */
            mv_mbarrier_arrive_expect_tx(gamma_full, static_cast<unsigned>(hidden) * 2);
            mv_bulk_copy(gamma_s, args.in.norm_weight, static_cast<unsigned>(hidden) * 2, gamma_full);
            const int early = geo.kstages < geo.early_stages ? geo.kstages : geo.early_stages;
            for (int i = 0; i < early; ++i) {
                arm(i);
                copy_w(i);
            }
            mv_pdl_wait();
            for (int i = 0; i < early; ++i) copy_x(i);
            for (int i = early; i < geo.kstages; ++i) {
                arm(i);
                copy_x(i);
                copy_w(i);
            }
        }
        return;
    }

    const int g = lane >> 2, t = lane & 3;
    if constexpr (!kScaled) mv_pdl_wait(); /* the outputs may still be read by the previous kernel */
    mv_mbarrier_wait(gamma_full, 0);
    float operand_scale = 1.0f, result_scale = 1.0f; /* 2^-e and 2^e (fp16) */
    if constexpr (kScaled) { /* gamma is a weight: read before the wait, while the previous kernel ends */
        float most = 0.0f; /* fmaxf drops NaN; an infinite gamma keeps the scale at 1 */
        for (int k = threadIdx.x * kVec; k < hidden; k += kThreads * kVec) {
            const uint4 gv = *reinterpret_cast<const uint4 *>(gamma_s + k);
            const T *ge = reinterpret_cast<const T *>(&gv);
#pragma unroll
            for (int e = 0; e < kVec; ++e) most = fmaxf(most, fabsf(mv_to_float(ge[e])));
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) most = fmaxf(most, __shfl_xor_sync(0xffffffffu, most, o));
        if (lane == 0) atomicMax(reinterpret_cast<int *>(gamma_max), __float_as_int(most)); /* >= 0: ordered as ints */
        ConsumerSync()();
        most = *gamma_max;
        if (most > 1.0f && most <= 65504.0f) {
            int e;
            frexpf(most, &e); /* most < 2^e */
            operand_scale = ldexpf(1.0f, -e);
            result_scale = ldexpf(1.0f, e);
        }
        mv_pdl_wait();
    }
    float sum_sq[kTokenTiles]; /* of the x this lane loads: tokens 8 * tt + g */
    float acc[kMaxTiles][kTokenTiles][4];
#pragma unroll
    for (int tt = 0; tt < kTokenTiles; ++tt) {
        sum_sq[tt] = 0.0f;
#pragma unroll
        for (int f = 0; f < kMaxTiles; ++f) acc[f][tt][0] = acc[f][tt][1] = acc[f][tt][2] = acc[f][tt][3] = 0.0f;
    }

    for (int i = 0; i < geo.kstages; ++i) {
        const int slot = i % geo.stages;
        mv_mbarrier_wait(&full[slot], (i / geo.stages) & 1);
        const unsigned char *ws = ring + static_cast<size_t>(slot) * geo.slot_bytes;
        const unsigned char *xs = ws + geo.w_bytes;
        const unsigned char *rs = ws + geo.r_offset; /* kResidual */
        /* kResidual: stage i's s goes to residual_out from one block (blocks take stages in turn) */
        const bool store_s = kResidual && geo.store_residual && i % static_cast<int>(gridDim.x) == static_cast<int>(blockIdx.x);
        /* Warp w takes chunks w, w + 8, ... of the stage. H % 64 == 0, so a chunk is all inside H
           or all past it. Each (token, k) of the stage is loaded by exactly one lane: it adds x^2
           to its sum and scales x by gamma in registers, and the scaled fragment serves every
           tile. */
        for (int c = warp; c < 2 * sl; c += kWarps) {
            const int local_k = c * kChunkK + kVec * t;
            const int line = local_k / kLineK, j = (local_k % kLineK) / kVec;
            const int k = (i * sl + line) * kLineK + j * kVec;
            if (k - j * kVec >= hidden) break; /* warp-uniform: the line starts past H */
            const uint4 gv = *reinterpret_cast<const uint4 *>(gamma_s + k);
            const T *ge = reinterpret_cast<const T *>(&gv);
            float gf[kVec]; /* gamma * 2^-e: exact in float32 (bf16: the scale is 1) */
#pragma unroll
            for (int e = 0; e < kVec; ++e) gf[e] = mv_to_float(ge[e]) * operand_scale;
            uint4 yv[kTokenTiles];
#pragma unroll
            for (int tt = 0; tt < kTokenTiles; ++tt) {
                const int token = tt * 8 + g;
                uint4 xv = token < rows ? load_swizzled(xs, token * sl + line, j) : make_uint4(0, 0, 0, 0);
                if constexpr (kResidual) { /* s = x + residual, rounded to the dtype as every path does */
                    const uint4 rv = token < rows ? load_swizzled(rs, token * sl + line, j) : make_uint4(0, 0, 0, 0);
                    mv_add_rounded(*reinterpret_cast<mv_vec<T, kVec> *>(&xv),
                                   *reinterpret_cast<const mv_vec<T, kVec> *>(&rv));
                    if (store_s && token < rows)
                        *reinterpret_cast<uint4 *>(static_cast<T *>(args.in.residual_out) +
                                                   static_cast<int64_t>(token) * args.in.residual_out_stride + k) = xv;
                }
                const T *xe = reinterpret_cast<const T *>(&xv);
                float scaled[kVec];
#pragma unroll
                for (int e = 0; e < kVec; ++e) {
                    const float xf = mv_to_float(xe[e]);
                    sum_sq[tt] += xf * xf;
                    scaled[e] = gf[e] * xf;
                }
                T(&ye)[kVec] = *reinterpret_cast<T(*)[kVec]>(&yv[tt]);
                mv_from_floats(ye, scaled);
            }
#pragma unroll
            for (int f = 0; f < kMaxTiles; ++f) {
                if (f >= geo.tiles) break;
                const int la = (f * kTileFeatures + g) * sl + line, lb = la + 8 * sl;
                const uint4 wa = load_swizzled(ws, la, j);
                const uint4 wb = load_swizzled(ws, lb, j);
#pragma unroll
                for (int tt = 0; tt < kTokenTiles; ++tt) mma_k32<T>(acc[f][tt], wa, wb, yv[tt]);
            }
        }
        __syncwarp();
        if (lane == 0) mv_mbarrier_arrive(&empty[slot]);
    }

    /* Row sums: the four lanes of a token (t = 0..3) first, then each warp's partial into its own
       slot, summed in warp order after the barrier. */
#pragma unroll
    for (int tt = 0; tt < kTokenTiles; ++tt) {
        float v = sum_sq[tt];
        v += __shfl_xor_sync(0xffffffffu, v, 1);
        v += __shfl_xor_sync(0xffffffffu, v, 2);
        if (t == 0 && tt * 8 + g < rows) warp_sum[warp * kDeferredMaxTokens + tt * 8 + g] = v;
    }
    ConsumerSync()(); /* every warp's partials are in, and every warp is done with the ring */
    if (threadIdx.x < rows) {
        float total = 0.0f;
#pragma unroll
        for (int w = 0; w < kWarps; ++w) total += warp_sum[w * kDeferredMaxTokens + threadIdx.x];
        row_sum[threadIdx.x] = rsqrtf(total / static_cast<float>(hidden) + args.in.eps) * result_scale;
    }
    /* reduce_and_store's first barrier orders these rrms before their use. */
#pragma unroll
    for (int f = 0; f < kMaxTiles; ++f) {
        if (f >= geo.tiles) break;
        reduce_and_store<T, kTokenTiles>(args, acc[f], partial, feature_begin + static_cast<int64_t>(f) * kTileFeatures,
                                         feature_end, ConsumerSync(), row_sum);
    }
#endif
}

/* The deferred-norm kernel's plan: tiles per block, and a ring of 4-line (256-k) stages in a
   shared-memory budget of half a multiprocessor, so that two calls' blocks share one (with PDL the
   next call then streams its first W stages while this one finishes; a whole SM, or 12-line
   stages, measured slower: docs/design.md). Returns the block's shared-memory bytes, or 0 where no
   plan fits (more than max_tiles feature tiles per block, or no two slots in the budget). */
size_t deferred_geometry(DeferredGeometry *geo, const mv_qkv_args &a, const mv_cuda_device &dev, unsigned grid,
                         int token_tiles, int max_tiles) {
    const int rows = static_cast<int>(a.in.rows);
    const int lines = static_cast<int>(a.in.hidden / kLineK);
    const int64_t most_features = (geo->cols + grid - 1) / grid;
    geo->tiles = static_cast<int>((most_features + kTileFeatures - 1) / kTileFeatures);
    if (geo->tiles > max_tiles) return 0;
    const size_t half_sm = static_cast<size_t>(dev.max_shared_sm / 2 - dev.reserved_shared);
    size_t budget = static_cast<size_t>(dev.max_shared_block);
    if (half_sm < budget) budget = half_sm;
    /* row sums, gamma, its barrier */
    const size_t fixed = kSwizzleAlign + kDeferredScalars * sizeof(float) + static_cast<size_t>(a.in.hidden) * 2 +
                         sizeof(uint64_t);
    const size_t partial_bytes = static_cast<size_t>(kWarps) * token_tiles * 4 * 32 * sizeof(float);
    if (budget <= fixed) return 0;
    for (int c = 0; c < static_cast<int>(sizeof(kDeferredLineChoices) / sizeof(int)); ++c) {
        const int sl = kDeferredLineChoices[c];
        const int kstages = (lines + sl - 1) / sl;
        const int w_bytes = kTileFeatures * geo->tiles * sl * kLineBytes, x_bytes = rows * sl * kLineBytes;
        const int r_offset = w_bytes + (x_bytes + kSwizzleAlign - 1) / kSwizzleAlign * kSwizzleAlign;
        const int used = a.in.residual != nullptr ? r_offset + x_bytes : w_bytes + x_bytes;
        const int slot_bytes = (used + kSwizzleAlign - 1) / kSwizzleAlign * kSwizzleAlign;
        const size_t per_slot = static_cast<size_t>(slot_bytes) + 2 * sizeof(uint64_t);
        int fit = static_cast<int>((budget - fixed) / per_slot);
        if (fit > kDeferredMaxStages) fit = kDeferredMaxStages;
        if (fit > kstages) fit = kstages < 2 ? 2 : kstages;
        /* two slots at least; the epilogue's partial tiles reuse the ring */
        if (fit < 2 || static_cast<size_t>(fit) * slot_bytes < partial_bytes) continue;
        geo->stage_lines = sl;
        geo->kstages = kstages;
        geo->stages = fit;
        geo->w_bytes = w_bytes;
        geo->x_bytes = x_bytes;
        geo->r_offset = r_offset;
        geo->slot_bytes = slot_bytes;
        return fixed + static_cast<size_t>(fit) * per_slot;
    }
    return 0;
}

/* W boxes before the PDL wait: all of the ring where it holds at least half of a block's k
   stages, else two (the input's boxes, requested after the wait, queue behind every W box already
   asked for; docs/design.md). */
constexpr int kEarlyStagesCycling = 2; /* deferred_geometry gives every ring at least two slots */
int deferred_early_stages(const DeferredGeometry &geo) {
    return 2 * geo.stages >= geo.kstages ? geo.stages : kEarlyStagesCycling;
}

struct DeferredState {
    CUtensorMap w_map;
    CUtensorMap x_map;
    CUtensorMap r_map; /* the residual's, as x's (unused without one) */
    DeferredGeometry geo;
    size_t smem;
    unsigned grid;
};

/* A kernel instantiation and its shared-memory opt-in cache (device.h: one per kernel). */
struct DeferredKernel {
    void (*fn)(mv_qkv_args, DeferredGeometry, const CUtensorMap, const CUtensorMap, const CUtensorMap);
    mv_shared_opt_in *opt_in;
};

template <typename T, int kTokenTiles, int kMaxTiles, bool kResidual>
DeferredKernel deferred_kernel() {
    static mv_shared_opt_in opt_in;
    return {fused_rms_norm_qkv_deferred_kernel<T, kTokenTiles, kMaxTiles, kResidual>, &opt_in};
}

/* The instantiation a call takes: token tiles by M, and fewer feature tiles above 16 rows. */
template <typename T, bool kResidual>
DeferredKernel kernel_for_rows(int64_t rows) {
    if (rows <= 8) return deferred_kernel<T, 1, kDeferredMaxTiles, kResidual>();
    if (rows <= 16) return deferred_kernel<T, 2, kDeferredMaxTiles, kResidual>();
    return deferred_kernel<T, 4, kDeferredMaxTiles / 2, kResidual>();
}

template <typename T>
DeferredKernel kernel_for_type(const mv_qkv_args &a) {
    return a.in.residual != nullptr ? kernel_for_rows<T, true>(a.in.rows) : kernel_for_rows<T, false>(a.in.rows);
}

DeferredKernel kernel_for(const mv_qkv_args &a) {
    return a.in.dtype == MV_FLOAT16 ? kernel_for_type<__half>(a) : kernel_for_type<__nv_bfloat16>(a);
}

} // namespace

bool mv_qkv_deferred_plan(const mv_qkv_args &a, const mv_cuda_device &dev, mv_qkv_plan *plan) {
    if (dev.major < 9 || (a.in.dtype != MV_BFLOAT16 && a.in.dtype != MV_FLOAT16)) return false;
    if (a.in.rows < 1 || a.in.rows > kDeferredMaxTokens) return false;
    const int64_t h = a.in.hidden, n = a.q_cols + 2 * a.kv_cols;
    if (h % kLineK != 0 || h * 2 >= (1 << 20) || n >= (1ll << 31)) return false; /* gamma: one mbarrier phase */
    if (a.w_stride_k != 1 || a.w_stride_n < h || !mv_aligned16(a.w, a.w_stride_n, 2)) return false;
    if (!mv_aligned16(a.in.x, a.in.rows > 1 ? a.in.x_stride : 0, 2) || (a.in.rows > 1 && a.in.x_stride < h))
        return false;
    if (!mv_aligned16(a.in.norm_weight, 0, 2) || !mv_tensor_maps_available()) return false;
    const bool residual = a.in.residual != nullptr;
    /* in place (residual_out is residual) other blocks may still be copying the residual's rows,
       so the store kernel writes s after this one (the binding allows no other overlap) */
    const bool store_residual = residual && a.in.residual_out != a.in.residual;
    if (residual && (!mv_aligned16(a.in.residual, a.in.rows > 1 ? a.in.residual_stride : 0, 2) ||
                     (a.in.rows > 1 && a.in.residual_stride < a.in.hidden)))
        return false;
    if (store_residual && !mv_aligned16(a.in.residual_out, a.in.rows > 1 ? a.in.residual_out_stride : 0, 2))
        return false;

    const int rows = static_cast<int>(a.in.rows);
    const int hidden = static_cast<int>(a.in.hidden);
    DeferredState *st = mv_plan_state<DeferredState>(plan);
    DeferredGeometry &geo = st->geo;
    geo.cols = n;
    const int64_t by_features = (geo.cols + kMinFeaturesPerBlock - 1) / kMinFeaturesPerBlock;
    st->grid = static_cast<unsigned>(by_features < dev.sms ? by_features : dev.sms);
    const int token_tiles = rows <= 8 ? 1 : rows <= 16 ? 2 : 4;
    const int max_tiles = rows <= 16 ? kDeferredMaxTiles : kDeferredMaxTiles / 2;
    st->smem = deferred_geometry(&geo, a, dev, st->grid, token_tiles, max_tiles);
    if (st->smem == 0) return false;
    geo.early_stages = plan->pdl ? deferred_early_stages(geo) : 0;
    geo.store_residual = store_residual ? 1 : 0;
    if (!encode_weight_map(&st->w_map, a, geo.cols, geo.stage_lines, kTileFeatures * geo.tiles)) return false;
    /* x as [M][H / 64][64], boxes of all rows x stage_lines lines (one row: any valid stride) */
    const cuuint64_t x_dims[3] = {static_cast<cuuint64_t>(kLineK), static_cast<cuuint64_t>(hidden / kLineK),
                                  static_cast<cuuint64_t>(rows)};
    const int64_t x_stride = rows > 1 ? a.in.x_stride : hidden;
    const cuuint64_t x_strides[2] = {static_cast<cuuint64_t>(kLineBytes), static_cast<cuuint64_t>(x_stride) * 2};
    const cuuint32_t x_box[3] = {static_cast<cuuint32_t>(kLineK), static_cast<cuuint32_t>(geo.stage_lines),
                                 static_cast<cuuint32_t>(rows)};
    if (!mv_swizzled_tensor_map(&st->x_map, a.in.dtype == MV_BFLOAT16, 3, a.in.x, x_dims, x_strides, x_box, false))
        return false;
    if (residual) {
        const cuuint64_t r_strides[2] = {static_cast<cuuint64_t>(kLineBytes),
                                         static_cast<cuuint64_t>(rows > 1 ? a.in.residual_stride : hidden) * 2};
        if (!mv_swizzled_tensor_map(&st->r_map, a.in.dtype == MV_BFLOAT16, 3, a.in.residual, x_dims, r_strides, x_box,
                                    false))
            return false;
    } else {
        st->r_map = st->x_map; /* not read */
    }
    plan->writes_residual = store_residual;
    return true;
}

cudaError_t mv_qkv_deferred_launch(const mv_qkv_args &a, const mv_qkv_plan &plan, const mv_cuda_device &dev,
                                   cudaStream_t stream) {
    const DeferredState &st = mv_plan_state<DeferredState>(plan);
    const DeferredKernel kernel = kernel_for(a);
    cudaError_t err = mv_allow_shared(kernel.fn, st.smem, *kernel.opt_in, dev.device);
    if (err != cudaSuccess) return err;
    return mv_launch(kernel.fn, dim3(st.grid), dim3(kBulkThreads), st.smem, stream, plan.pdl, a, st.geo, st.w_map,
                     st.x_map, st.r_map);
}
