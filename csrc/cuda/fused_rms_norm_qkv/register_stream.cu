/*
 * register_stream.cu: the W stream with W loaded straight into mma operand registers (sm_80+,
 * fp16/bf16, 1 <= M <= 16). Shared layout and staging: stream_common.cuh.
 *
 * - Each block stages the whole (tiny) normalized input in shared memory, then loops over
 *   16-feature tiles (persistent: the grid is what fits at once, so x is staged once per block).
 *   Below 8 rows several warps share a row (one round trip for a decode token's x).
 * - W loads for the next batch are issued before the mma work of the current one (double
 *   buffered in registers), and the first batch is in flight before the input is staged.
 * - On sm_90 with PDL the dispatcher takes it where every block requests ALL of its W before
 *   waiting for the previous kernel (H <= 1024): its latency is then x -> norm -> mma -> store
 *   alone, shorter than the tensor-copy kernel's producer/consumer chain.
 * Residual: s = x + residual is rounded to the dtype. Every block stages all of s, so unless
 * residual_out is residual itself the blocks share the residual_out writes (each 8-element piece
 * written by one block); in the in-place form no block may write before all have read, so the
 * dispatcher's store kernel follows instead.
 */
#include "cuda/fused_rms_norm_qkv/stream_common.cuh"

namespace {

template <typename T, int kTokenTiles, bool kHasResidual>
__global__ void __launch_bounds__(kThreads) fused_rms_norm_qkv_stream_kernel(mv_qkv_args args, StreamGeometry geo,
                                                                           mv_stream_flags flags) {
    extern __shared__ uint4 smem[];
    const mv_norm_input &in = args.in;
    const int rows = static_cast<int>(in.rows);
    const int hidden = static_cast<int>(in.hidden);
    T *xs = reinterpret_cast<T *>(smem);                                   /* [rows][xs_stride] */
    float *partial = reinterpret_cast<float *>(xs + rows * geo.xs_stride); /* [kWarps][kTokenTiles][4][32] */

    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, t = lane & 3;

    /* Start streaming W before anything else: the first batch flies while x is staged. */
    int64_t tile = blockIdx.x;
    uint4 cur_a[kBatch], cur_b[kBatch];
    if (tile < geo.tiles) load_weight_batch<T>(args, geo, tile, 0, cur_a, cur_b);
    /* Programmatic dependent launch, as in the tensor-copy kernel below: the weights are
       constants of the model, so the first batch is requested before waiting for the previous
       kernel; x, residual and every write come after the wait. Before it, the blocks together
       ask L2 for the input (each a share), which is safe since L2 is where the previous kernel's
       writes land, and shortens the staging that follows the wait (Qwen2.5-0.5B M = 1 2.68 ->
       2.57 us on an H200; it gained nothing in the other QKV kernels: docs/design.md). In the
       attention prologue the next kernel may launch only after the wait (trigger_after_wait). */
    if (!args.trigger_after_wait) mv_pdl_trigger();
    prefetch_input_l2<T>(in);
    mv_pdl_wait();
    if (args.trigger_after_wait) mv_pdl_trigger();

    if constexpr (kTokenTiles == 2) /* more than kWarps rows: two a warp at once */
        stage_normalized_row_pairs<T, kHasResidual, kHasResidual ? 2 : 4>(args, flags, xs, geo.xs_stride, warp, lane);
    else
        stage_normalized_input<T, kHasResidual, kHasResidual ? 2 : 4, 1>(args, flags, xs, geo.xs_stride, partial, warp,
                                                                        lane, BlockSync());
    __syncthreads();

    for (; tile < geo.tiles; tile += gridDim.x) {
        float acc[kTokenTiles][4];
#pragma unroll
        for (int tt = 0; tt < kTokenTiles; ++tt) acc[tt][0] = acc[tt][1] = acc[tt][2] = acc[tt][3] = 0.0f;

        for (int batch = 0; batch < geo.batches; ++batch) {
            /* Prefetch the next batch (of this tile, or the first of this block's next tile). */
            uint4 next_a[kBatch], next_b[kBatch];
            int64_t next_tile = tile;
            int next_batch = batch + 1;
            if (next_batch == geo.batches) {
                next_tile += gridDim.x;
                next_batch = 0;
            }
            if (next_tile < geo.tiles) load_weight_batch<T>(args, geo, next_tile, next_batch, next_a, next_b);

#pragma unroll
            for (int b = 0; b < kBatch; ++b) {
                const int chunk = warp + kWarps * (batch * kBatch + b);
                if (chunk >= geo.chunks) break; /* warp-uniform */
                const int k = chunk * kChunkK + kVec * t;
                mma_chunk<T, kTokenTiles>(acc, cur_a[b], cur_b[b], xs, geo.xs_stride, k, k < hidden, rows, g);
            }
#pragma unroll
            for (int b = 0; b < kBatch; ++b) {
                cur_a[b] = next_a[b];
                cur_b[b] = next_b[b];
            }
        }

        reduce_and_store<T, kTokenTiles>(args, acc, partial, tile * kTileFeatures, geo.cols, BlockSync());
    }
}

struct RegisterState {
    StreamGeometry geo;
    mv_stream_flags flags;
    size_t smem;
    unsigned grid;
};

/* A kernel instantiation and its shared-memory opt-in cache (device.h: one per kernel). */
struct RegisterKernel {
    void (*fn)(mv_qkv_args, StreamGeometry, mv_stream_flags);
    mv_shared_opt_in *opt_in;
};

template <typename T, int kTokenTiles, bool kHasResidual>
RegisterKernel register_kernel() {
    static mv_shared_opt_in opt_in;
    return {fused_rms_norm_qkv_stream_kernel<T, kTokenTiles, kHasResidual>, &opt_in};
}

/* The instantiation a call takes: dtype, token tiles (8 tokens per mma), residual. */
template <typename T>
RegisterKernel kernel_for_type(const mv_qkv_args &a) {
    const bool residual = a.in.residual != nullptr;
    if (a.in.rows <= 8) return residual ? register_kernel<T, 1, true>() : register_kernel<T, 1, false>();
    return residual ? register_kernel<T, 2, true>() : register_kernel<T, 2, false>();
}

RegisterKernel kernel_for(const mv_qkv_args &a) {
    return a.in.dtype == MV_FLOAT16 ? kernel_for_type<__half>(a) : kernel_for_type<__nv_bfloat16>(a);
}

} // namespace

bool mv_qkv_register_plan(const mv_qkv_args &a, const mv_cuda_device &dev, bool whole_weight_first, mv_qkv_plan *plan) {
    if (dev.major < 8 || a.in.dtype == MV_FLOAT32) return false;
    if (a.in.rows < 1 || a.in.rows > kMaxTokens) return false;
    if (a.in.hidden % kVec != 0 || a.in.hidden > (1 << 20)) return false;
    if (a.w_stride_k != 1 || !mv_aligned16(a.w, a.w_stride_n, 2)) return false;
    const int rows = static_cast<int>(a.in.rows);
    const int hidden = static_cast<int>(a.in.hidden);
    const int token_tiles = rows <= 8 ? 1 : 2;
    RegisterState *st = mv_plan_state<RegisterState>(plan);
    st->smem = shared_bytes(rows, hidden, token_tiles);
    if (st->smem > static_cast<size_t>(dev.max_shared_block)) return false;
    StreamGeometry &geo = st->geo;
    geo.cols = a.q_cols + 2 * a.kv_cols;
    geo.tiles = (geo.cols + kTileFeatures - 1) / kTileFeatures;
    geo.chunks = (hidden + kChunkK - 1) / kChunkK;
    const int chunks_per_warp = (geo.chunks + kWarps - 1) / kWarps;
    geo.batches = (chunks_per_warp + kBatch - 1) / kBatch;
    geo.xs_stride = static_cast<int>(row_pitch_bytes(hidden) / 2);
    if (whole_weight_first && (!plan->pdl || geo.batches > 1)) return false;

    /* blocks write residual_out themselves unless it is residual itself (see the file comment) */
    const bool residual_in_kernel = a.in.residual != nullptr && a.in.residual_out != a.in.residual;
    st->flags = stream_flags(a, residual_in_kernel);
    plan->writes_residual = residual_in_kernel;

    /* a persistent grid of what fits at once */
    const RegisterKernel kernel = kernel_for(a);
    int blocks_per_sm = 0;
    if (mv_allow_shared(kernel.fn, st->smem, *kernel.opt_in, dev.device) != cudaSuccess ||
        mv_blocks_per_sm(&blocks_per_sm, kernel.fn, kThreads, st->smem, dev.device) != cudaSuccess) {
        (void)cudaGetLastError();
        return false;
    }
    if (blocks_per_sm < 1) return false;
    const int64_t resident = static_cast<int64_t>(blocks_per_sm) * dev.sms;
    if (whole_weight_first && geo.tiles > resident) return false;
    st->grid = static_cast<unsigned>(geo.tiles < resident ? geo.tiles : resident);
    return true;
}

cudaError_t mv_qkv_register_launch(const mv_qkv_args &a, const mv_qkv_plan &plan, const mv_cuda_device &,
                                   cudaStream_t stream) {
    const RegisterState &st = mv_plan_state<RegisterState>(plan);
    return mv_launch(kernel_for(a).fn, dim3(st.grid), dim3(kThreads), st.smem, stream, plan.pdl, a, st.geo, st.flags);
}
