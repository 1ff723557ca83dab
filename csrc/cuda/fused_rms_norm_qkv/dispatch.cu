/*
 * dispatch.cu: the one place that decides which GPU kernel computes
 * qkv = rms_norm(x (+ residual)) . W^T, split into q, k, v (mv_fused_rms_norm_qkv_cuda).
 *
 * The decision is the table below, read top to bottom: the first rule whose preference holds and
 * whose path's plan function takes the call (paths.h: that yes is final) runs. Each preference
 * line says why; the measurements behind each threshold are in docs/design.md with their logs.
 * A call may ask for a path (mv_cuda_opts.path: tests and benchmarks); that path's rules are then
 * tried first, preferences aside, and the table decides where none takes the call.
 */
#include "cuda/common.cuh"
#include "cuda/fused_rms_norm_qkv/paths.h"

namespace {

/* What the preferences look at. */
struct Call {
    int64_t rows, hidden, cols;
    bool residual;
    bool epilogue_next; /* the attention prologue's epilogue kernel follows (trigger_after_wait) */
    const mv_cuda_device *dev;
};

/* The W streams take M <= mv_qkv_stream_max_rows (paths.h) while the staged input is at most
   48 KiB of 16-bit elements; beyond that norm + cuBLASLt was faster. A residual call reads two
   inputs per staged element, and there norm + cuBLASLt (its norm kernel adds the residual) won
   from half as many: H 896-5120 at 2-16 rows, e.g. H = 1536 at 16 rows 8.0 against 12.4 us
   (dev/logs/residual-paths-nvidia-h200-2026-11-23.log). */
constexpr int64_t kStreamMaxStagedElements = 24576;
bool stream_fits(const Call &c) {
    const int64_t inputs = c.residual ? 2 : 1;
    return c.rows <= mv_qkv_stream_max_rows && inputs * c.rows * c.hidden <= kStreamMaxStagedElements;
}

/* GPUs below this DRAM bandwidth (GB/s; an H100 3352, an H200 4810): the rules marked "slow DRAM"
   below were measured on an H100 timed as a model runs the op, after a kernel that lets nothing
   overlap (dev/probes/qkv_chains.py --sep-only, dev/logs/qkv-after-sep-rules-nvidia-h100-2026-11-26.log);
   the H200's were measured the same way where they differ (below 16 rows the deferred stream, one
   row, the op's residual bound, 9-15 rows; from 16 rows; wgmma), or in whole decode steps (the
   prologue's residual bound of M * H = 12288, where 8192 lost at 2 of 3 decoders:
   dev/logs/residual-bound-nvidia-h200-2026-11-26.log); the wide blocks and the prologue's deferred
   stream with a residual are slow DRAM's only.
   sm_80 GPUs (under 4 TB/s too) take them unmeasured; only the register stream's rules apply there. */
constexpr int kSlowDramGbps = 4000;
bool slow_dram(const Call &c) { return c.dev->dram_gbps > 0 && c.dev->dram_gbps < kSlowDramGbps; }

/* A residual call of 4 or more rows: the W streams only while M * H <= 7168; beyond, norm +
   cuBLASLt was faster. Slow DRAM: 0.7-3.1 us (H 1152-1536 at 8 rows, H 2048-2560 at 4, H 896-1024
   at 12; level at H 1024 at 8), below it the streams 0.7-1.7 us faster (H 1152-1536 at 4 rows, H
   896 at 8); at 3 rows the streams stayed 0.5-1.5 us faster (H 2304-4096). Fast DRAM, the op
   alone after a down_proj GEMM, two rounds: faster at 11 of 14 points past 7168 (1.8-5.5 us, H
   1024-3072; H 2048 at 6 rows 15.1 against 9.6 us), slower at 3 (H 3072 N 9216 at 4 rows 1.1 us,
   H 1024 at 8 0.6, H 2560 at 4 0.4) (dev/logs/qkv-after-gemm-rules-nvidia-h200-2026-11-27.log). */
constexpr int64_t kResidualStreamMaxElements = 7168;
/* In the attention prologue, whose epilogue starts early after a W stream but only once cuBLASLt's
   GEMM has ended, the bound is higher: after a torch GEMM (positions and slots shared by the layers
   as in a model) norm + cuBLASLt made the prologue faster at all 6 points past M.H = 8192 (0.1-4.7
   us: Qwen2.5-1.5B 6-8 rows 1.3, Llama-3.2-1B 6 rows 4.7) and slower at 8 of 10 up to it (1.1-3.1
   us; 0.3 and 2.2 faster at the other two; dev/logs/prologue-mid-rows-after-gemm-nvidia-h100-2026-11-26.log). */
constexpr int64_t kSlowPrologueResidualStreamMaxElements = 8192;

/* Slow DRAM, the rules measured on the op alone after a torch GEMM at 9-15 rows and in wide
   blocks: the attention prologue's QKV call (epilogue_next) keeps the table as before them, since
   its epilogue starts early after the W streams but only once cuBLASLt's GEMM has ended (from 16
   rows: norm_first_many_rows). */
bool slow_dram_op_alone(const Call &c) { return slow_dram(c) && !c.epilogue_next; }

bool stream_unbalanced(const Call &c);

/* 16 rows or more (the W streams' and the engine's second token tile from 17): one kernel (a W
   stream, the deferred stream or the engine) only where W is large; elsewhere norm + cuBLASLt.
   Timed after a torch GEMM, the one-kernel paths lost their lead in chains of their own calls.
   Slow DRAM: at 16 rows the deferred stream or the engine won from 24 MiB (0.2-2.2 us at 30-60
   MiB, 0.8-6 from 96 MiB; lost 0.7-0.8 at 40 and 70 MiB) and norm + cuBLASLt from 18 MiB down
   (0.4-1.7 us at 7 of 8 shapes, level at one); at 17-32 rows the engine won only from 96 MiB
   (0.5-8 us at 96-160 MiB; at 96 MiB and 24 rows 0.6 behind) and norm + cuBLASLt by 0.9-3.4 us up
   to 70 MiB (23 points, 10-70 MiB) (dev/logs/qkv-mid-rows-after-gemm-nvidia-h100-2026-11-26.log).
   Fast DRAM, after a fill and after a down_proj GEMM, two rounds, 17 shapes: at 20-32 rows norm +
   cuBLASLt 0.6-6.4 us faster than the engine and the deferred stream at all 45 points under 80 MiB
   after the GEMM, at 44 of 45 after the fill (N = 4672 at 20 rows 0.7 behind); from 96 MiB the
   engine level or ahead (up to 0.4 behind after the GEMM, 0.3-4.5 ahead after the fill). At 16
   rows the engine 1.0-2.7 us faster at 96-160 MiB and at N = 4672, whose tiles spread unevenly
   (N = 4608 0.5-0.8 behind); elsewhere norm + cuBLASLt up to 1.6 faster or at most 0.34 behind
   (13 shapes, 6-75 MiB) (dev/logs/qkv-many-rows-after-gemm-nvidia-h200-2026-11-27.log).
   Fast DRAM, W of 80 MiB or more (9 more shapes of 84-384 MiB, H 4096-8192, at 9-32 rows, after
   a down_proj GEMM and after a fill, two rounds): the engine beat norm + cuBLASLt at all 30 points
   where H >= 7168 and N is at most one 128-feature tile per SM (H 7168-8192, N 9216-10240: 0.1-4.7
   us), where cuBLAS's kernels stream W at 77-83% of the copy rate; elsewhere norm + cuBLASLt won 48
   of 60 (up to 5.0 us at H 5120 N 10240; 2.1-7.0 at H 8192 N 24576, where cuBLAS reaches 97%), the
   engine only at H 4096 N 12288 by up to 1.5 (9-16 rows). At all these sizes the engine runs
   stream-K (engine.cu's choose_split), so the tile bound is the measured edge, not a layout
   change. The H100 keeps the engine from 80 MiB: there it won 76 of the 90
   (dev/logs/qkv-large-w-nvidia-h200-h100-2026-11-27.log). */
constexpr int64_t kSlowSixteenRowsMinWeights = 12 << 20; /* elements: 24 MiB of 16-bit weights */
constexpr int64_t kManyRowsMinWeights = 40 << 20;        /* elements: 80 MiB */
constexpr int64_t kLongRowsMinHidden = 7168;
bool long_rows_few_tiles(const Call &c) {
    const int64_t tiles = (c.cols + mv_qkv_engine_tile_features - 1) / mv_qkv_engine_tile_features;
    return c.hidden >= kLongRowsMinHidden && tiles <= c.dev->sms;
}
bool many_rows_one_kernel(const Call &c) {
    const int64_t weights = c.cols * c.hidden;
    if (slow_dram(c)) return weights >= (c.rows > 16 ? kManyRowsMinWeights : kSlowSixteenRowsMinWeights);
    const bool large = weights >= kManyRowsMinWeights && long_rows_few_tiles(c);
    return c.rows > 16 ? large : large || stream_unbalanced(c);
}

/* From 16 rows, where that rule gives norm + cuBLASLt. The attention prologue's QKV call
   (epilogue_next) keeps one kernel at 16 rows, and on slow DRAM from 17 rows too: its epilogue
   starts early after those kernels but only once cuBLASLt's GEMM has ended. Slow DRAM, after a
   torch GEMM, without a residual: 0.9-1.6 us less on the deferred stream than on norm + cuBLASLt
   at 16-32 rows (Qwen3-0.6B; dev/logs/prologue-mid-rows-after-gemm-nvidia-h100-2026-11-26.log).
   Fast DRAM, after a down_proj GEMM, without a residual (8 shapes, 6-54 MiB): at 16 rows the
   table's one kernel level or 0.3-1.7 us faster at 6 (0.8-1.4 slower at 31.5 and 54 MiB); at 24-32
   rows norm + cuBLASLt 0.7-5.9 us faster at all 16 points (same log as above). */
bool norm_first_many_rows(const Call &c) {
    if (c.rows < 16 || (c.epilogue_next && (c.rows == 16 || slow_dram(c)))) return false;
    return !many_rows_one_kernel(c);
}

/* 9-15 rows without a residual, the op alone (the W streams' mma takes 8 tokens, so a second token
   tile from 9 rows): norm + cuBLASLt where W is mid-sized. Slow DRAM, W of 4-24 MiB: after a torch
   GEMM it was 0.15-1.8 us faster than the table's W stream at all 18 points there (6 shapes of 6-18
   MiB, 9, 12 and 15 rows); at 2-8 rows the streams were faster or level (up to 0.8 behind at 8
   rows); at 2 MiB the register stream was 0.7-0.9 us faster, and from 24 MiB the streams were level
   or faster (dev/logs/qkv-few-rows-after-gemm-nvidia-h100-2026-11-26.log). Fast DRAM, W of 10 MiB
   or more where many_rows_one_kernel leaves it (tiles spread evenly; from 80 MiB unless
   long_rows_few_tiles), as from 16 rows: after a fill and a down_proj GEMM (17 shapes, 9, 10, 12,
   14, 15 rows, two rounds) norm + cuBLASLt was faster than the table at every point of 9 of the 11
   such shapes (0.06-2.1 us, H 2048-5120, 10-75 MiB), at H 2048 N 4096 after the fill only (0.4
   behind after the GEMM at 9-12 rows), and 2.1-3.2 us slower at H 5120 N 7168 (70 MiB, the engine);
   of the uneven tiles the engine won at N = 4672 (2.1-2.7) and lost at N = 4608 (0.9-1.8); below 10
   MiB the W streams were level or 0.4-1.2 faster after the GEMM
   (dev/logs/qkv-many-rows-after-gemm-nvidia-h200-2026-11-27.log). Since the register stream stages
   two rows a warp at once, it takes W under 10 MiB first on both (two_tiles_register_wanted). */
constexpr int64_t kTwoTilesMinRows = 9;
constexpr int64_t kSlowTwoTilesMinWeights = 2 << 20; /* elements: 4 MiB of 16-bit weights */
constexpr int64_t kTwoTilesMinWeights = 5 << 20;     /* elements: 10 MiB */
bool two_tiles_norm_first(const Call &c) {
    if (c.epilogue_next || c.residual || c.rows < kTwoTilesMinRows || c.rows >= 16) return false;
    const int64_t weights = c.cols * c.hidden;
    if (slow_dram(c)) return weights >= kSlowTwoTilesMinWeights && weights < kSlowSixteenRowsMinWeights;
    return weights >= kTwoTilesMinWeights && !many_rows_one_kernel(c);
}

/* Two token tiles (9-16 rows; at 16 the W streams' last): the register stream, whose warps stage
   their two rows at once.
   - The op alone, no residual, W under 10 MiB, where the busiest SM stages at most 64 KiB of input
     (each of its blocks stages all M rows): rather than norm + cuBLASLt (16 rows; and 9-15 rows of
     4-10 MiB on slow DRAM) or the tensor-copy stream (9-15 rows, H > 1024). After a fill and after
     a down_proj GEMM, two rounds, H 896-1536, W 2-8 MiB, 12 and 16 rows: faster than norm +
     cuBLASLt at all 34 points it takes (H200 0.12-2.6 us, H100 0.04-2.5), and than the tensor-copy
     stream at 17 of 18 of H 1152-1536 (0.02-0.9 us; 0.07 slower at one); at H 1536 N 2560, 16 rows
     (160 tiles: two blocks and 96 KiB staged on the busiest SMs) 0.07-1.0 us slower than norm +
     cuBLASLt at all 4, hence the bound (dev/logs/stream-staging-nvidia-h200-h100-2026-11-28.log).
     With a residual (H200) it lost to norm + cuBLASLt at 31 of 34 points (0.14-8.4 us, H 896-2560;
     0.5-0.8 faster only at H 896 after the GEMM; same log as the prologue's below).
   - The attention prologue's QKV call (epilogue_next), whose epilogue kernel starts early after the
     register stream but only once cuBLASLt's GEMM has ended; after a down_proj GEMM (two rounds)
     and after a fill, 9, 12, 14 and 16 rows, against the fastest other path timed (the table's
     tensor-copy stream, deferred stream, engine or norm + cuBLASLt):
     - without a residual, W under 16 MiB: faster at all 80 points after the GEMM (9 shapes of 2-12
       MiB on the H200, 11 on the H100: 0.29-4.6 us) and at 78 of 80 after the fill (0.12 slower at
       two); at 16-30 MiB slower at all 20 points after the fill (4 shapes: 0.65-7.7 us);
     - with a residual, where each block stages at most 36 KiB of input (M * H <= 18432) and the
       busiest SM streams at most 64 KiB of W (blocks per SM x H <= 2048): faster at 55 of 61
       points after the GEMM (up to 3.0 us; level at two, H 1536 at 9-12 rows 0.04-0.4 slower on
       the H200) and at 49 of 59 after the fill (up to 0.21 slower at the rest); past either bound
       slower at 43 of 46 after the GEMM (up to 4.4 us). In whole decode steps (batch 12 and 16,
       both GPUs) 1.8-5.8% faster at H 896-1152 where the rule changes the path and 0.7-1.4% at H
       1536 batch 12; past the bounds H 1536 at batch 16 0.2% faster to 0.5% slower, H 2048 (two
       blocks an SM) 1.0-2.1% slower
     (dev/logs/prologue-two-tiles-nvidia-h200-h100-2026-11-28.log). */
constexpr int64_t kTwoTilesMaxStagedPerSm = 32768;     /* elements: 64 KiB of 16-bit input */
constexpr int64_t kTwoTilesPrologueMaxWeights = 8 << 20; /* elements: 16 MiB of 16-bit weights */
constexpr int64_t kTwoTilesResidualMaxStaged = 18432;  /* elements: 36 KiB of 16-bit input a block */
constexpr int64_t kTwoTilesResidualMaxSmWeightK = 2048; /* blocks per SM x H: 64 KiB of 16-feature W rows */
bool two_tiles_register_wanted(const Call &c) {
    if (c.rows < kTwoTilesMinRows || c.rows > mv_qkv_stream_max_rows) return false;
    const int64_t tiles = (c.cols + 15) / 16, blocks_per_sm = (tiles + c.dev->sms - 1) / c.dev->sms;
    if (c.residual)
        return c.epilogue_next && c.rows * c.hidden <= kTwoTilesResidualMaxStaged &&
               blocks_per_sm * c.hidden <= kTwoTilesResidualMaxSmWeightK;
    if (c.epilogue_next) return c.cols * c.hidden < kTwoTilesPrologueMaxWeights;
    return stream_fits(c) && c.cols * c.hidden < kTwoTilesMinWeights &&
           blocks_per_sm * c.rows * c.hidden <= kTwoTilesMaxStagedPerSm;
}

bool stream_wanted(const Call &c) {
    if (!stream_fits(c)) return false;
    if (norm_first_many_rows(c)) return false;
    if (!c.residual || c.rows < 4) return true;
    /* fast DRAM, in the attention prologue: up to what fits (M * H = 12288) in one token tile,
       measured in decode steps; from 9 rows only two_tiles_register_wanted's register stream (the
       tensor-copy stream, staging a row a warp at a time, was 0.5-8.2 us slower than norm + cuBLASLt
       at all 48 points of 9-16 rows, H200, after a GEMM and after a fill:
       dev/logs/prologue-two-tiles-nvidia-h200-h100-2026-11-28.log) */
    if (c.epilogue_next && !slow_dram(c)) return c.rows < kTwoTilesMinRows;
    return c.rows * c.hidden <= (c.epilogue_next ? kSlowPrologueResidualStreamMaxElements : kResidualStreamMaxElements);
}

/* Slow DRAM, 1-4 rows without a residual where W's 16-feature tiles spread unevenly over the SMs
   (stream_unbalanced) and wide blocks fill at least half of them: the tensor-copy stream in wide
   blocks (plan.wide_blocks: kBulkWideFeatures a block, whole-SM rings) rather than the deferred
   stream. After a torch GEMM 0.3-1.4 us faster at 72-73 blocks (N = 4608, 4672; 12 of 12 points),
   1.2-1.7 us slower at 40 (N = 2560), and at 8 rows 0.4-1.7 slower
   (dev/logs/qkv-start-after-gemm-nvidia-h100-2026-11-26.log, calls 18-20). */
constexpr int64_t kBulkWideMaxRows = 4;
bool bulk_wide_wanted(const Call &c) {
    const bool half_the_sms = 2 * c.cols >= static_cast<int64_t>(kBulkWideFeatures) * c.dev->sms;
    return slow_dram_op_alone(c) && !c.residual && c.rows <= kBulkWideMaxRows && half_the_sms && stream_wanted(c) &&
           stream_unbalanced(c);
}

/* With a residual, slow DRAM, in the attention prologue: at 4-8 rows that the W streams do not take
   (past M.H = 8192), where W is under 32 MiB, the deferred stream (the residual's rows beside x's in its
   ring) rather than norm + cuBLASLt, whose GEMM the epilogue kernel must wait out. After a torch
   GEMM it was level or faster at all 17 such points (7 shapes, two runs; H 2560 N 6144 at 4 and 8
   rows 2.0-2.7 us, H 2304 N 4096 0.7 at 8 rows, level at 6-12 MiB); in whole decode steps 1.2-1.5%
   faster at H 2560 (batch 4 and 8) and 0.5-0.8% at H 1536 (batch 8), but 0.3-0.5% slower at H 4096
   N 6144 (48 MiB, batch 8), where cuBLAS streams the larger W faster and the chain's gain was
   0.1-1.2 us. At 9-16 rows (a second token tile) it lost 0.5-2.7 us at 8 of 10 points
   (dev/logs/deferred-residual-nvidia-h100-2026-11-26.log). */
constexpr int64_t kDeferredResidualMaxRows = 8;
constexpr int64_t kDeferredResidualMaxWeights = 16 << 20; /* elements: 32 MiB of 16-bit weights */
bool deferred_residual_wanted(const Call &c) {
    return c.epilogue_next && slow_dram(c) && c.rows >= 4 && c.rows <= kDeferredResidualMaxRows && !stream_wanted(c) &&
           c.cols * c.hidden < kDeferredResidualMaxWeights;
}

/* The deferred-norm stream streams x beside W where the others stage it first: in chains of the
   op's own calls it won from 16 rows, and from 3 rows (2 where H >= 4096) where W is large (N >=
   2048). Timed as a model runs the op (after a kernel that lets nothing overlap), below 16 rows it
   loses where the other streams take the call, except where they cannot share W evenly
   (stream_unbalanced). Slow DRAM: N = 4608 and 4672 at 1-8 rows 0.4-1.3 us faster than the
   tensor-copy stream and up to 1.3 than the engine; elsewhere it lost 0.3-1.8 us to the register
   or tensor-copy stream (N 2048-8192, W 5-56 MiB, 1-8 rows; 0.6-0.9 us ahead at one shape, H 5120
   N 7168 at 2-4 rows). Fast DRAM (the engine takes the unbalanced W first), 2-12 rows of 17
   shapes (N 2048-12288, W 6-160 MiB), two rounds: the register or tensor-copy stream faster at 48
   of 50 points after a down_proj GEMM (0.1-2.0 us; 0.3-0.4 slower at two), 41 of 50 after a fill
   (up to 1.7 us; up to 1.1 slower at 9). Where no stream fits, fast DRAM: the engine from 50 MiB
   (0.6-3.8 us faster at 15 of 16 points, W 56-75 MiB, 6-12 rows), the deferred stream below
   (18-48 MiB: 0.3-1.5 us faster than the engine after a down_proj GEMM at 5 of 5, 0.04-0.6
   slower after a fill) (dev/logs/qkv-after-gemm-rules-nvidia-h200-2026-11-27.log). */
constexpr int64_t kDeferredNoStreamMaxWeights = 25 << 20; /* elements: 50 MiB of 16-bit weights */
bool deferred_wanted(const Call &c) {
    if (c.residual) return deferred_residual_wanted(c);
    if (c.rows >= 16) return !norm_first_many_rows(c);
    if (stream_fits(c)) return stream_unbalanced(c) && !bulk_wide_wanted(c);
    if (c.cols < 2048) return false;
    if (!slow_dram(c)) return c.rows >= 2 && c.cols * c.hidden < kDeferredNoStreamMaxWeights;
    return c.rows >= 2 || c.hidden <= 1024;
}

/* The register stream's whole-W-first form is Hopper's choice where it fits (its plan checks
   that one batch of loads covers H and every tile's block is resident): its latency is the
   shortest chain. */
bool register_first_wanted(const Call &c) { return c.dev->major >= 9 && stream_wanted(c); }

/* One row, W of at most 16 MiB: the register stream rather than the tensor-copy one, whose start
   costs more than its deeper queue gains on a small W. Slow DRAM: 0.8-1.7 us faster at W 3.4-12
   MiB (H 1152-2048, with or without a residual); from 18 MiB the tensor-copy stream was faster.
   Fast DRAM, after a down_proj GEMM or a fill: 1.3-2.5 us faster at W 6-16 MiB (H 1536-2048, 4
   shapes, with or without a residual; Qwen2.5-1.5B decode steps at batch 1 5% faster;
   dev/logs/qkv-after-gemm-rules-nvidia-h200-2026-11-27.log).
   Fast DRAM, H <= 2048 at any W: 0.43-1.57 us faster at 18 of 18 points of W 17-64 MiB (gate_up
   shapes read as heads, N = 9728-17920), after a down_proj GEMM
   or a fill, with or without a residual, two rounds; from H 2304 (W 18-259 MiB, 9 shapes) slower
   at 48 of 54 points, level at 4, 0.2-0.4 faster at 2 (H 2560 N 19456 after the GEMM)
   (dev/logs/one-row-register-nvidia-h200-2026-11-29.log). */
constexpr int64_t kRegisterOneRowMaxWeights = 8 << 20; /* elements: 16 MiB of 16-bit weights */
constexpr int64_t kRegisterOneRowFastMaxHidden = 2048;
bool register_one_row_wanted(const Call &c) {
    if (c.rows != 1 || !stream_fits(c)) return false;
    return c.cols * c.hidden <= kRegisterOneRowMaxWeights || (!slow_dram(c) && c.hidden <= kRegisterOneRowFastMaxHidden);
}

/* 2-8 rows of the op alone, fast DRAM, H <= 1024, where the streams take the call and the
   whole-W-first form (register_first_wanted) does not fit (W of 8-17 MiB): the register stream
   rather than the tensor-copy one. After a down_proj GEMM, two rounds, with and without a
   residual: 0.09-1.58 us faster at 96 of 96 points (H 768-1024, N 4864-9728, 2-8 rows); at H
   1152-1280 slower at 38 of 40 (up to 2.2 us; 0.14-0.27 faster at H 1152, 2 rows, with a
   residual), so the bound. The prologue's QKV call keeps the tensor-copy stream there (not
   measured) (dev/logs/one-row-register-nvidia-h200-2026-11-29.log, calls 8-9). */
constexpr int64_t kRegisterFewRowsMaxRows = 8;
constexpr int64_t kRegisterFewRowsMaxHidden = 1024;
bool register_few_rows_wanted(const Call &c) {
    return !slow_dram(c) && !c.epilogue_next && c.rows >= 2 && c.rows <= kRegisterFewRowsMaxRows &&
           c.hidden <= kRegisterFewRowsMaxHidden && stream_wanted(c);
}

/* The one-kernel wgmma GEMM beat norm + cuBLASLt in chains of its own calls for small H up to 64
   rows (256 for N <= 2048); up to 64 rows its tiles are split over clusters (W up to 12 MiB). Timed
   after a kernel that lets nothing overlap, it lost for the op alone: slow DRAM, after a torch GEMM,
   1.3-3.9 us at all 9 points (H 896-2048, 64-256 rows;
   dev/logs/qkv-mid-rows-after-gemm-nvidia-h100-2026-11-26.log); fast DRAM 0.8-3.4 us after a fill
   or a down_proj GEMM at 40-64 rows (7 shapes, H 896-2048) and 1.3-2.2 at 96-256 rows of H = 896,
   0.2-0.7 ahead only at H = 896 after the GEMM at 40-128 rows
   (dev/logs/qkv-many-rows-after-gemm-nvidia-h200-2026-11-27.log). It stays in the attention
   prologue, whose epilogue starts early after wgmma but not after cuBLASLt, where N <= 2048: after
   a torch GEMM (slow DRAM) level or 0.9 us faster there (H 896-1152, 64-128 rows) and 2.4 us slower
   at N = 4096 (dev/logs/prologue-mid-rows-after-gemm-nvidia-h100-2026-11-26.log). */
constexpr int64_t kWgmmaSplitMaxWeights = 6 << 20; /* elements: 12 MiB of 16-bit weights */
constexpr int64_t kWgmmaPrologueMaxCols = 2048;
bool wgmma_wanted(const Call &c) {
    if (!c.epilogue_next || c.cols > kWgmmaPrologueMaxCols) return false;
    if (c.hidden > 1024) return c.rows <= 64 && c.cols * c.hidden <= kWgmmaSplitMaxWeights;
    return c.rows <= 256;
}

/* The GEMM engine beat the deferred stream at 16-32 rows where W has at least 10 MiB: on an H200
   geometric mean 1.06x (0.89-1.20x) over 13 shapes of 10-160 MiB; on an H100 1.08x at 32 rows
   (0.99-1.13x) but 1.02x at 16 (0.88x at worst), so there from 17 rows. Qwen3-0.6B's 8 MiB lost
   (0.65-0.85x): below that, the engine's fixed cost per call outweighs its better balance. Timed
   as a model runs the op, both keep from 16 rows only the calls norm_first_many_rows leaves them. */
constexpr int64_t kEngineMinWeights = 5 << 20; /* elements: 10 MiB of 16-bit weights */
/* Below 16 rows the W streams win, except where they cannot share a large W evenly: they give
   each SM a run of N / SMs features in 16-feature tiles, so the busiest SM streams that run rounded
   up to 16. Where that is a third or more above the mean and W has at least 16 MiB, the engine
   (stream-K: every SM the same share) beat them at 1-8 rows: N = 4672 and 4608 (31-41 MiB), H200
   1.08-1.17x, H100 1.15-1.18x at one row and 1.04-1.05x at 2-8. With 10-12 MiB its fixed cost ate
   the gain (H100: 2-12% slower); at a quarter above the mean (N = 5120) the streams won
   (dev/logs/engine-owner-waits-nvidia-h200-h100-2026-11-24.log). Both rules were measured in chains
   of the op's own calls; timed after a kernel that lets nothing overlap (as in a model), the engine
   ties the deferred stream at 16 rows and beats the table's stream by 1.4-2.5 us at Falcon-7B's
   1-2 rows (dev/logs/engine-start-nvidia-h200-2026-11-24.log). The tensor-copy stream's last tile
   reads only its own rows (4-feature boxes), but its time follows its count of stages more than
   its bytes: the engine still won there on an H100 (N = 4608 and 4672, 1-2 rows, 1.03-1.07x;
   dev/logs/bulk-tail-boxes-nvidia-h100-2026-11-25.log), so the rule counts 16-feature tiles. */
constexpr double kStreamMaxImbalance = 1.3;
constexpr int64_t kUnbalancedMinWeights = 8 << 20; /* elements: 16 MiB of 16-bit weights */
bool stream_unbalanced(const Call &c) {
    if (c.cols * c.hidden < kUnbalancedMinWeights) return false;
    const int64_t run = (c.cols + c.dev->sms - 1) / c.dev->sms;
    const int64_t busiest = (run + 15) / 16 * 16;
    return static_cast<double>(busiest) * c.dev->sms >= kStreamMaxImbalance * static_cast<double>(c.cols);
}
bool engine_wanted(const Call &c) {
    if (c.cols * c.hidden < kEngineMinWeights || c.rows > 32) return false;
    /* slow DRAM: the deferred stream takes unbalanced W below 16 rows (deferred_wanted); from 17
       rows only a large W (many_rows_one_kernel), in the attention prologue too */
    if (slow_dram(c)) return c.rows >= 17 && many_rows_one_kernel(c);
    if (c.rows >= 16) return c.rows >= (c.dev->dram_gbps > 0 ? 16 : 17) && !norm_first_many_rows(c);
    return stream_unbalanced(c);
}

/* Below 16 rows, where no W stream took the call (none fits: the staged input too large for the
   register and tensor-copy streams, and N over 64 features a multiprocessor for the deferred one),
   the engine rather than norm + cuBLASLt on a W of at least 10 MiB, on fast DRAM: H200 1.005-1.11x
   at 23 of 26 points (M = 3-15, N 9216-14336, 54-336 MiB), 0.98-0.995x at Llama-2-7B's M = 8-15;
   on an H100 0.93-0.95x at N = 9216 with H 3072 or 7168, 1.01-1.11x on the others
   (dev/logs/engine-few-rows-no-stream-2026-11-25.log), both in chains of the op's own calls.
   Slow DRAM, timed after a torch GEMM: the engine 0.8-6 us faster than norm + cuBLASLt at all 8
   points (N 9216-15360, 54-160 MiB, 12 and 16 rows), so there up to 16 rows where W is large
   (dev/logs/qkv-mid-rows-after-gemm-nvidia-h100-2026-11-26.log). */
bool engine_after_streams_wanted(const Call &c) {
    if (c.cols * c.hidden < kEngineMinWeights || c.dev->dram_gbps <= 0) return false;
    if (slow_dram(c))
        return !c.epilogue_next && (c.rows < 16 || (c.rows == 16 && many_rows_one_kernel(c)));
    return c.rows < 16;
}

bool always(const Call &) { return true; }

bool register_first_plan(const mv_qkv_args &a, const mv_cuda_device &dev, mv_qkv_plan *plan) {
    return mv_qkv_register_plan(a, dev, true, plan);
}
bool register_plan(const mv_qkv_args &a, const mv_cuda_device &dev, mv_qkv_plan *plan) {
    return mv_qkv_register_plan(a, dev, false, plan);
}

struct Rule {
    mv_qkv_path path;
    bool (*wanted)(const Call &);
    bool (*plan)(const mv_qkv_args &, const mv_cuda_device &, mv_qkv_plan *);
    cudaError_t (*launch)(const mv_qkv_args &, const mv_qkv_plan &, const mv_cuda_device &, cudaStream_t);
};

/* The table. Plans add the hard requirements (architecture, dtype, alignment, what fits). */
constexpr Rule kRules[] = {
    /* 9-16 rows of a small W: the register stream (two token tiles) */
    {MV_QKV_REGISTER, two_tiles_register_wanted, register_plan, mv_qkv_register_launch},
    /* sm_90 fp16/bf16, no residual: the GEMM engine */
    {MV_QKV_ENGINE, engine_wanted, mv_qkv_engine_plan, mv_qkv_engine_launch},
    /* 9-15 rows of a mid-sized W, no residual: the norm first (two token tiles) */
    {MV_QKV_CUBLASLT, two_tiles_norm_first, mv_qkv_cublaslt_plan, mv_qkv_norm_gemm_launch},
    /* few rows, sm_90+, fp16/bf16, M <= 32 (a residual only in the prologue on slow DRAM) */
    {MV_QKV_DEFERRED, deferred_wanted, mv_qkv_deferred_plan, mv_qkv_deferred_launch},
    /* decode on sm_90+ with PDL, H <= 1024: all of W requested before the wait */
    {MV_QKV_REGISTER, register_first_wanted, register_first_plan, mv_qkv_register_launch},
    /* one row of a small W, or on fast DRAM of a small H */
    {MV_QKV_REGISTER, register_one_row_wanted, register_plan, mv_qkv_register_launch},
    /* 2-8 rows of a W too large for the whole-W-first form, small H, fast DRAM */
    {MV_QKV_REGISTER, register_few_rows_wanted, register_plan, mv_qkv_register_launch},
    /* decode on sm_90+, H % 64 == 0: W through the copy engine, more bytes in flight per SM */
    {MV_QKV_BULK, stream_wanted, mv_qkv_bulk_plan, mv_qkv_bulk_launch},
    /* decode on any sm_80+ GPU */
    {MV_QKV_REGISTER, stream_wanted, register_plan, mv_qkv_register_launch},
    /* sm_90 fp16/bf16, no residual, below 16 rows where no W stream took the call */
    {MV_QKV_ENGINE, engine_after_streams_wanted, mv_qkv_engine_plan, mv_qkv_engine_launch},
    /* sm_90 bf16, small H, up to a few hundred rows */
    {MV_QKV_WGMMA, wgmma_wanted, mv_qkv_wgmma_plan, mv_qkv_wgmma_launch},
    /* everything else, where libcublasLt loads */
    {MV_QKV_CUBLASLT, always, mv_qkv_cublaslt_plan, mv_qkv_norm_gemm_launch},
    /* fp16/bf16 on sm_80+ where it does not */
    {MV_QKV_TILE, always, mv_qkv_tile_plan, mv_qkv_norm_gemm_launch},
    /* the rest: any dtype, layout and size */
    {MV_QKV_GENERIC, always, mv_qkv_generic_plan, mv_qkv_generic_launch},
};

/* The first rule that takes the call: among the asked-for path's rules (preferences aside) where
   one is asked for, else in table order. The generic rule always takes it. */
const Rule &choose(const mv_qkv_args &a, const Call &c, mv_qkv_path asked, mv_qkv_plan *plan) {
    if (asked != MV_QKV_AUTO)
        for (const Rule &r : kRules)
            if (r.path == asked && r.plan(a, *c.dev, plan)) return r;
    for (const Rule &r : kRules)
        if (r.wanted(c) && r.plan(a, *c.dev, plan)) return r;
    return kRules[sizeof(kRules) / sizeof(kRules[0]) - 1]; /* not reached: generic takes every call */
}

/* The paths whose kernel lets the next kernel launch at its own start (mv_pdl_trigger before its
   main work); cuBLASLt's GEMM does not, nor do the split and residual-store kernels. */
bool triggers_at_start(mv_qkv_path p) {
    return p == MV_QKV_ENGINE || p == MV_QKV_DEFERRED || p == MV_QKV_REGISTER || p == MV_QKV_BULK ||
           p == MV_QKV_WGMMA;
}

/* The paths whose kernel honours mv_qkv_args.trigger_after_wait (the others trigger at their start
   whatever it says). */
bool triggers_after_wait(mv_qkv_path p) { return p == MV_QKV_REGISTER || p == MV_QKV_BULK; }

} // namespace

int mv_qkv_cuda(const mv_qkv_args *a, const mv_cuda_opts *o, void *stream, mv_qkv_path *taken, bool *next_starts_early,
                bool *next_after_wait) {
    *taken = MV_QKV_AUTO;
    *next_starts_early = false;
    if (next_after_wait != nullptr) *next_after_wait = false;
    if (a->in.rows == 0) return (int)cudaSuccess;
    mv_cuda_device dev;
    cudaError_t err = mv_current_device(&dev);
    if (err != cudaSuccess) return (int)err;
    const Call c = {a->in.rows, a->in.hidden, a->q_cols + 2 * a->kv_cols, a->in.residual != nullptr,
                    a->trigger_after_wait != 0, &dev};
    mv_qkv_plan plan;
    plan.pdl = mv_pdl_use(o->pdl, dev);
    plan.wide_blocks = bulk_wide_wanted(c);
    const Rule &rule = choose(*a, c, o->path, &plan);
    cudaStream_t s = static_cast<cudaStream_t>(stream);
    err = rule.launch(*a, plan, dev, s);
    if (err != cudaSuccess) return (int)err;
    *taken = rule.path;
    if (c.residual && !plan.writes_residual) return (int)mv_qkv_residual_store(*a, s);
    *next_starts_early = plan.pdl && triggers_at_start(rule.path);
    if (next_after_wait != nullptr)
        *next_after_wait = *next_starts_early && a->trigger_after_wait && triggers_after_wait(rule.path);
    return (int)cudaSuccess;
}

extern "C" int mv_fused_rms_norm_qkv_cuda(const mv_qkv_args *a, const mv_cuda_opts *o, void *stream,
                                          mv_qkv_path *taken) {
    bool early;
    return mv_qkv_cuda(a, o, stream, taken, &early);
}
