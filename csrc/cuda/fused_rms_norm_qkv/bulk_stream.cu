/*
 * bulk_stream.cu: the W stream on Hopper (sm_90+, fp16/bf16, 1 <= M <= 16, H % 64 == 0): W streamed
 * by the tensor copy engine into a shared-memory ring. Shared layout and staging:
 * stream_common.cuh.
 *
 * The register stream keeps at most two batches per thread in flight and hands whole 16-feature
 * tiles to blocks, so its last wave runs part-empty. Here each block (one per SM) owns an equal
 * share of the output features: whole tiles round robin, then an equal contiguous range of what
 * is left, so that at any time the blocks read neighbouring rows of W (DRAM serves that faster than
 * a distant range a block: up to 3.7% on an H100 where W >= 48 MiB;
 * dev/logs/bulk-interleave-nvidia-h200-h100-2026-11-27.log). One producer warp streams it through a ring
 * of stages, each stage 16 features x stage_k brought by ONE tensor copy (the time followed the
 * number of copies, not the bytes in flight, with one copy per feature row). A block's last tile
 * usually holds fewer features: it comes in boxes of kTailFeatures, so that no block reads rows of
 * its neighbour's range again (a 16-row box read up to 15 of them: Phi-3-mini 1.06x faster without;
 * where the tail is a few rows the time follows the count of stages, and nothing changed;
 * dev/logs/bulk-tail-boxes-nvidia-h100-2026-11-25.log). Before the weights
 * the producer bulk-copies the input (x rows, residual rows, gamma) where it is 16-byte aligned,
 * so the norm's operands do not queue behind the weight stream. The 8 consumer warps stage y,
 * then wait on each stage, run the mma chunks reading W from shared memory, and release the slot.
 * With PDL the kernel lets its successor start at once; it asks for no W before its own wait for
 * the previous kernel (a first stage asked then delayed the input's copy: docs/design.md).
 * The ring takes the whole SM where that holds three stages (plan_bulk), else half of it, so that
 * two calls' blocks can share an SM (wide blocks, plan.wide_blocks, take a whole SM). Asking L2
 * for W early (bulk or per-thread prefetch) made every shape slower: the prefetches queue behind
 * the ring's copies of the same bytes (docs/design.md).
 */
#include "cuda/fused_rms_norm_qkv/stream_common.cuh"

namespace {

struct BulkGeometry {
    int64_t cols;      /* N */
    int kchunks;       /* ceil(H / stage_k) */
    int stages;        /* ring slots */
    int xs_stride;     /* elements between staged rows */
    bool input_copy;   /* the producer bulk-copies x (into xs), residual and gamma first */
    int stage_lines;   /* 64-k lines per stage: stage_k = 64 * stage_lines */
    int rounds;        /* whole 16-feature tiles a block takes round robin before its equal share of the rest */
};

/* The last tile's box: a multiple of it is at most 3 rows past the block's range, and its offsets in a
   stage (4 features x 4 (2 j + 1) lines x 128 bytes) keep the swizzle's 1 KiB alignment. */
constexpr int kTailFeatures = 4;

/* A block's features: `rounds` = N / (16 grid) whole tiles round robin (the block's tile i < rounds
   is tile i * grid + block of N), so that the blocks read neighbouring rows of W at any time, then
   an equal contiguous share [first, end) of the features after the last whole round: fewer than 16,
   one tile, usually partial. A block has N / grid features, +-1. */
struct BlockTiles {
    int64_t first, end;
    int rounds, tiles;
};

__device__ __forceinline__ BlockTiles block_tiles(const BulkGeometry &geo) {
    const int64_t grid = gridDim.x, block = blockIdx.x;
    const int64_t base = static_cast<int64_t>(geo.rounds) * grid * kTileFeatures, rest = geo.cols - base;
    BlockTiles bt;
    bt.first = base + rest * block / grid;
    bt.end = base + rest * (block + 1) / grid;
    bt.rounds = geo.rounds;
    bt.tiles = geo.rounds + static_cast<int>((bt.end - bt.first + kTileFeatures - 1) / kTileFeatures);
    return bt;
}

/* Tile `tile` of this block: its features [begin, end). */
struct TileSpan {
    int64_t begin, end;
};

__device__ __forceinline__ TileSpan tile_span(const BlockTiles &bt, int tile) {
    if (tile < bt.rounds) {
        const int64_t begin = (static_cast<int64_t>(tile) * gridDim.x + blockIdx.x) * kTileFeatures;
        return {begin, begin + kTileFeatures};
    }
    const int64_t begin = bt.first + static_cast<int64_t>(tile - bt.rounds) * kTileFeatures;
    return {begin, begin + kTileFeatures < bt.end ? begin + kTileFeatures : bt.end};
}

template <typename T, int kTokenTiles, bool kHasResidual>
__global__ void __launch_bounds__(kBulkThreads, 2) fused_rms_norm_qkv_bulk_kernel(mv_qkv_args args, BulkGeometry geo,
                                                                                mv_stream_flags flags,
                                                                                const __grid_constant__ CUtensorMap w_map,
                                                                                const __grid_constant__ CUtensorMap w_tail_map) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    extern __shared__ uint4 smem[];
    const int rows = static_cast<int>(args.in.rows);
    const int hidden = static_cast<int>(args.in.hidden);
    /* [stages][16 features][stage_lines][128 bytes, swizzled], from the first 1 KiB boundary */
    unsigned char *ring = reinterpret_cast<unsigned char *>(
        (reinterpret_cast<uintptr_t>(smem) + kSwizzleAlign - 1) / kSwizzleAlign * kSwizzleAlign);
    const int stage_bytes = kTileFeatures * geo.stage_lines * kLineBytes;
    T *xs = reinterpret_cast<T *>(ring + static_cast<size_t>(geo.stages) * stage_bytes); /* [rows][xs_stride] */
    float *partial = reinterpret_cast<float *>(xs + rows * geo.xs_stride);     /* [kWarps][kTokenTiles][4][32] */
    /* with input_copy: residual rows [rows][xs_stride] (when there is a residual) and gamma [H] */
    T *residual_copy = reinterpret_cast<T *>(partial + kWarps * kTokenTiles * 4 * 32);
    T *gamma_copy = residual_copy + (geo.input_copy && kHasResidual ? rows * geo.xs_stride : 0);
    uint64_t *full = reinterpret_cast<uint64_t *>(gamma_copy + (geo.input_copy ? (hidden + 7) / 8 * 8 : 0));
    uint64_t *empty = full + geo.stages;
    uint64_t *input_full = empty + geo.stages;

    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    /* This block's features: N / grid of them, in 16-feature tiles (tile_span; the last one usually partial). */
    const BlockTiles bt = block_tiles(geo);
    const int tiles = bt.tiles;
    const int total_stages = tiles * geo.kchunks;

    if (threadIdx.x == 0) {
        for (int i = 0; i < geo.stages; ++i) {
            mv_mbarrier_init(&full[i], 1);      /* the producer's arrive (+ the bytes it expects) */
            mv_mbarrier_init(&empty[i], kWarps); /* one arrive per consumer warp */
        }
        mv_mbarrier_init(input_full, 1);
        mv_mbarrier_init_fence();
    }
    __syncthreads();

    /* Programmatic dependent launch: the next kernel in the stream may start now. Nothing it may
       read early (its weights) is written here, and before reading anything else or writing
       anything it waits for this grid to finish (mv_pdl_wait, below in this kernel too). In the
       attention prologue each thread lets it launch after its own wait instead (see
       mv_qkv_args.trigger_after_wait). */
    if (!args.trigger_after_wait) mv_pdl_trigger();

    if (warp == kWarps) {
        /* Producer: stage i of this block is tile i / kchunks, k chunk i % kchunks, in slot
           i % stages; lane 0 issues its one tensor copy, all after the input's. */
        if (lane == 0) {
            const uint64_t policy = mv_evict_first_policy();
            auto issue = [&](int i) {
                const int slot = i % geo.stages, round = i / geo.stages;
                if (round > 0) mv_mbarrier_wait(&empty[slot], (round - 1) & 1);
                const TileSpan span = tile_span(bt, i / geo.kchunks);
                const int64_t feature0 = span.begin;
                const int line0 = (i % geo.kchunks) * geo.stage_lines;
                unsigned char *dst = ring + static_cast<size_t>(slot) * stage_bytes;
                const int64_t left = span.end - feature0;
                if (left >= kTileFeatures) {
                    mv_mbarrier_arrive_expect_tx(&full[slot], static_cast<unsigned>(stage_bytes)); /* zero fill counts */
                    mv_tensor_copy_3d(dst, &w_map, 0, line0, static_cast<int>(feature0), &full[slot], policy);
                } else { /* the last tile's rows only, in boxes of kTailFeatures; the rest of the slot is not read */
                    const int boxes = static_cast<int>((left + kTailFeatures - 1) / kTailFeatures);
                    const int box_bytes = kTailFeatures * geo.stage_lines * kLineBytes;
                    mv_mbarrier_arrive_expect_tx(&full[slot], static_cast<unsigned>(boxes * box_bytes));
                    for (int b = 0; b < boxes; ++b)
                        mv_tensor_copy_3d(dst + b * box_bytes, &w_tail_map, 0, line0,
                                          static_cast<int>(feature0) + b * kTailFeatures, &full[slot], policy);
                }
            };
            mv_pdl_wait();
            if (args.trigger_after_wait) mv_pdl_trigger();
            if (geo.input_copy) {
                const unsigned row_bytes = static_cast<unsigned>(hidden) * sizeof(T);
                mv_mbarrier_arrive_expect_tx(input_full, row_bytes * (1 + rows * (kHasResidual ? 2 : 1)));
                mv_bulk_copy(gamma_copy, args.in.norm_weight, row_bytes, input_full);
                for (int m = 0; m < rows; ++m) {
                    mv_bulk_copy(xs + m * geo.xs_stride,
                                        static_cast<const T *>(args.in.x) + m * args.in.x_stride, row_bytes,
                                        input_full);
                    if (kHasResidual)
                        mv_bulk_copy(residual_copy + m * geo.xs_stride,
                                            static_cast<const T *>(args.in.residual) + m * args.in.residual_stride,
                                            row_bytes, input_full);
                }
            }
            for (int i = 0; i < total_stages; ++i) issue(i);
        }
        return;
    }

    mv_pdl_wait(); /* x, residual and the outputs are the previous kernel's */
    if (args.trigger_after_wait) mv_pdl_trigger();
    if (geo.input_copy) {
        /* Stage from the shared copies: x in place in xs (each lane reads the vectors it then
           writes), residual and gamma beside it; residual_out still goes to global memory. */
        mv_mbarrier_wait(input_full, 0);
        mv_qkv_args local = args;
        local.in.x = xs;
        local.in.x_stride = geo.xs_stride;
        local.in.residual = residual_copy;
        local.in.residual_stride = geo.xs_stride;
        local.in.norm_weight = gamma_copy;
        mv_stream_flags local_flags = flags;
        local_flags.x_vec = local_flags.residual_vec = local_flags.gamma_vec = true;
        stage_normalized_input<T, kHasResidual, kHasResidual ? 2 : 4, kHasResidual ? 2 : 4>(local, local_flags, xs, geo.xs_stride, partial, warp, lane,
                                                   ConsumerSync());
    } else {
        stage_normalized_input<T, kHasResidual, kHasResidual ? 2 : 4, kHasResidual ? 2 : 4>(args, flags, xs, geo.xs_stride, partial, warp, lane, ConsumerSync());
    }
    ConsumerSync()();

    const int g = lane >> 2, t = lane & 3;
    const int stage_k = geo.stage_lines * kLineK;
    const int chunks_per_stage = stage_k / kChunkK;
    for (int tile = 0, i = 0; tile < tiles; ++tile) {
        /* rows of a partial last tile that no box brought hold stale bytes: such a lane reads zeros */
        const TileSpan span = tile_span(bt, tile);
        const int64_t left = span.end - span.begin;
        const int rounded = static_cast<int>((left + kTailFeatures - 1) / kTailFeatures) * kTailFeatures;
        const bool row_a_in = left >= kTileFeatures || g < rounded, row_b_in = left >= kTileFeatures || g + 8 < rounded;
        float acc[kTokenTiles][4];
#pragma unroll
        for (int tt = 0; tt < kTokenTiles; ++tt) acc[tt][0] = acc[tt][1] = acc[tt][2] = acc[tt][3] = 0.0f;
        for (int kc = 0; kc < geo.kchunks; ++kc, ++i) {
            const int slot = i % geo.stages;
            mv_mbarrier_wait(&full[slot], (i / geo.stages) & 1);
            const unsigned char *stage = ring + static_cast<size_t>(slot) * stage_bytes;
            for (int c = warp; c < chunks_per_stage; c += kWarps) {
                const int chunk_k = kc * stage_k + c * kChunkK;
                if (chunk_k >= hidden) break; /* warp-uniform; H % 64 == 0, so a chunk is all in or all out */
                const int local_k = c * kChunkK + kVec * t;
                const int line_a = g * geo.stage_lines + local_k / kLineK;
                const int line_b = line_a + 8 * geo.stage_lines;
                const int j = (local_k % kLineK) / kVec; /* 16-byte chunk within the line */
                const uint4 wa = row_a_in ? load_swizzled(stage, line_a, j) : make_uint4(0, 0, 0, 0);
                const uint4 wb = row_b_in ? load_swizzled(stage, line_b, j) : make_uint4(0, 0, 0, 0);
                mma_chunk<T, kTokenTiles>(acc, wa, wb, xs, geo.xs_stride, chunk_k + kVec * t, true, rows, g);
            }
            __syncwarp();
            if (lane == 0) mv_mbarrier_arrive(&empty[slot]);
        }
        reduce_and_store<T, kTokenTiles>(args, acc, partial, span.begin, span.end, ConsumerSync());
    }
#endif
}

constexpr int kMinSharedStageLines = 12; /* 768 k: narrower stages on half an SM cost more than they bring */

/* The ring for a shared-memory budget: the fewest stages per tile (one when H fits the widest
   choice), at least min_lines wide unless H is narrower, of which three (or all a block needs, or
   at least min_stages) fit beside the staged input. Returns the bytes the block needs, or 0 when
   no such ring fits. */
size_t plan_ring(BulkGeometry *geo, size_t budget, size_t base, size_t input_extra, bool input_copy_ok,
                 int64_t most_tiles, int lines, int min_lines, int min_stages) {
    int candidates[8], count = 0;
    const int choices = static_cast<int>(sizeof(kStageLineChoices) / sizeof(int));
    for (int c = 0; c < choices; ++c) {
        /* of the choices that cover H in one stage, only the narrowest */
        if (kStageLineChoices[c] >= lines && c + 1 < choices && kStageLineChoices[c + 1] >= lines) continue;
        candidates[count++] = kStageLineChoices[c];
    }
    for (int want = 3; want >= min_stages; --want) {
        for (int c = 0; c < count; ++c) {
            const int stage_lines = candidates[c];
            if (stage_lines < min_lines && stage_lines < lines) continue;
            const int kchunks = (lines + stage_lines - 1) / stage_lines;
            const int64_t needed = most_tiles * kchunks;
            const size_t per_stage = static_cast<size_t>(kTileFeatures) * stage_lines * kLineBytes + 2 * sizeof(uint64_t);
            const bool input_copy = input_copy_ok && base + input_extra + 2 * per_stage <= budget;
            const size_t fixed = base + (input_copy ? input_extra : 0);
            if (fixed > budget) return 0;
            int64_t fit = static_cast<int64_t>((budget - fixed) / per_stage);
            if (fit > kMaxStages) fit = kMaxStages;
            if (fit > needed) fit = needed < 2 ? 2 : needed;
            if (fit >= (needed < want ? needed : want) && fit >= 2) {
                geo->stages = static_cast<int>(fit);
                geo->stage_lines = stage_lines;
                geo->kchunks = kchunks;
                geo->input_copy = input_copy;
                return fixed + static_cast<size_t>(fit) * per_stage;
            }
        }
    }
    return 0;
}

struct BulkState {
    CUtensorMap w_map, w_tail_map;
    BulkGeometry geo;
    mv_stream_flags flags;
    size_t smem;
    unsigned grid;
};

/* The ring and grid of a call (the launcher's share of the plan); false where no ring of two
   stages fits or the driver refuses W's tensor map. The whole SM's shared memory where it holds
   three stages of 768 k or more; otherwise half a multiprocessor's where that still leaves three
   such stages, or two stages that hold a whole tile's K (two calls' blocks can then share an SM);
   else all of it. Wide blocks: at least kBulkWideFeatures features each, the whole SM's shared
   memory. The measurements: docs/design.md (tensor-copy kernel). */
bool plan_bulk(BulkState *st, const mv_qkv_args &a, const mv_cuda_device &dev, int token_tiles, bool wide_blocks) {
    const int rows = static_cast<int>(a.in.rows);
    const int hidden = static_cast<int>(a.in.hidden);
    const bool has_residual = a.in.residual != nullptr;
    const mv_stream_flags &flags = st->flags;
    BulkGeometry geo;
    geo.cols = a.q_cols + 2 * a.kv_cols;
    geo.xs_stride = static_cast<int>(row_pitch_bytes(hidden) / 2);
    const int min_features = wide_blocks ? kBulkWideFeatures : kMinFeaturesPerBlock;
    const int64_t by_features = (geo.cols + min_features - 1) / min_features;
    const unsigned grid = static_cast<unsigned>(by_features < dev.sms ? by_features : dev.sms);
    const int64_t most_tiles = ((geo.cols + grid - 1) / grid + kTileFeatures - 1) / kTileFeatures;
    geo.rounds = static_cast<int>(geo.cols / (kTileFeatures * static_cast<int64_t>(grid)));
    const size_t base = kSwizzleAlign + shared_bytes(rows, hidden, token_tiles) + sizeof(uint64_t) /* input barrier */;
    /* The input goes by bulk copy where it is 16-byte aligned and its bytes fit one mbarrier phase
       (and where its shared copies still leave two stages). */
    const size_t input_extra = (has_residual ? static_cast<size_t>(rows) * row_pitch_bytes(hidden) : 0) +
                               static_cast<size_t>(hidden + 7) / 8 * 8 * 2;
    const size_t input_bytes = static_cast<size_t>(hidden) * 2 * (1 + rows * (has_residual ? 2 : 1));
    const bool input_copy_ok =
        flags.x_vec && flags.gamma_vec && (!has_residual || flags.residual_vec) && input_bytes < (1u << 20);
    const int lines = hidden / kLineK;
    const size_t half_sm = static_cast<size_t>(dev.max_shared_sm / 2 - dev.reserved_shared);
    const size_t whole = static_cast<size_t>(dev.max_shared_block);
    const size_t first_budget = wide_blocks ? whole : (half_sm < whole ? half_sm : whole);
    /* The whole SM where it holds three stages: in a model no second call shares the SM, and its
       wider stages (half as many a block) ran decode steps 0.5-2.7% faster (H200 and H100). A ring
       of two stages there (a block's whole W at once) was slower: then half an SM. */
    size_t smem = plan_ring(&geo, whole, base, input_extra, input_copy_ok, most_tiles, lines, kMinSharedStageLines, 3);
    if (smem != 0 && geo.stages < 3 && !wide_blocks) smem = 0;
    if (smem == 0 && first_budget < whole)
        smem = plan_ring(&geo, first_budget, base, input_extra, input_copy_ok, most_tiles, lines, kMinSharedStageLines, 3);
    if (smem == 0) {
        BulkGeometry two = geo;
        const size_t two_smem =
            plan_ring(&two, first_budget, base, input_extra, input_copy_ok, most_tiles, lines, kMinSharedStageLines, 2);
        if (two_smem != 0 && two.kchunks <= 2) {
            geo = two;
            smem = two_smem;
        }
    }
    if (smem == 0) smem = plan_ring(&geo, whole, base, input_extra, input_copy_ok, most_tiles, lines, 0, 2);
    if (smem == 0) return false;
    if (!encode_weight_map(&st->w_map, a, geo.cols, geo.stage_lines) ||
        !encode_weight_map(&st->w_tail_map, a, geo.cols, geo.stage_lines, kTailFeatures))
        return false;
    st->geo = geo;
    st->smem = smem;
    st->grid = grid;
    return true;
}


/* A kernel instantiation and its shared-memory opt-in cache (device.h: one per kernel). */
struct BulkKernel {
    void (*fn)(mv_qkv_args, BulkGeometry, mv_stream_flags, const CUtensorMap, const CUtensorMap);
    mv_shared_opt_in *opt_in;
};

template <typename T, int kTokenTiles, bool kHasResidual>
BulkKernel bulk_kernel() {
    static mv_shared_opt_in opt_in;
    return {fused_rms_norm_qkv_bulk_kernel<T, kTokenTiles, kHasResidual>, &opt_in};
}

template <typename T>
BulkKernel kernel_for_type(const mv_qkv_args &a) {
    const bool residual = a.in.residual != nullptr;
    if (a.in.rows <= 8) return residual ? bulk_kernel<T, 1, true>() : bulk_kernel<T, 1, false>();
    return residual ? bulk_kernel<T, 2, true>() : bulk_kernel<T, 2, false>();
}

BulkKernel kernel_for(const mv_qkv_args &a) {
    return a.in.dtype == MV_FLOAT16 ? kernel_for_type<__half>(a) : kernel_for_type<__nv_bfloat16>(a);
}

} // namespace

bool mv_qkv_bulk_plan(const mv_qkv_args &a, const mv_cuda_device &dev, mv_qkv_plan *plan) {
    if (dev.major < 9 || a.in.dtype == MV_FLOAT32) return false;
    if (a.in.rows < 1 || a.in.rows > kMaxTokens) return false;
    if (a.in.hidden % kLineK != 0 || a.in.hidden > (1 << 20)) return false;
    if (a.w_stride_k != 1 || !mv_aligned16(a.w, a.w_stride_n, 2)) return false;
    const int token_tiles = a.in.rows <= 8 ? 1 : 2;
    if (shared_bytes(static_cast<int>(a.in.rows), static_cast<int>(a.in.hidden), token_tiles) >
        static_cast<size_t>(dev.max_shared_block))
        return false;
    const bool residual_in_kernel = a.in.residual != nullptr && a.in.residual_out != a.in.residual;
    BulkState *st = mv_plan_state<BulkState>(plan);
    st->flags = stream_flags(a, residual_in_kernel);
    plan->writes_residual = residual_in_kernel;
    return plan_bulk(st, a, dev, token_tiles, plan->wide_blocks);
}

cudaError_t mv_qkv_bulk_launch(const mv_qkv_args &a, const mv_qkv_plan &plan, const mv_cuda_device &dev,
                               cudaStream_t stream) {
    const BulkState &st = mv_plan_state<BulkState>(plan);
    const BulkKernel kernel = kernel_for(a);
    cudaError_t err = mv_allow_shared(kernel.fn, st.smem, *kernel.opt_in, dev.device);
    if (err != cudaSuccess) return err;
    return mv_launch(kernel.fn, dim3(st.grid), dim3(kBulkThreads), st.smem, stream, plan.pdl, a, st.geo, st.flags,
                     st.w_map, st.w_tail_map);
}
