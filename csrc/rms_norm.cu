/*
 * rms_norm.cu: rms_norm and fused add + rms_norm on the GPU (see minivllm_kernels.h for numerics).
 *
 * One block normalizes one row at a time (grid-stride over rows). Pass 1 forms s (x, or
 * x + residual rounded to the dtype and stored to residual_out) and sums s^2 in float; a block
 * reduction gives rrms; pass 2 writes out = weight * (s * rrms), rounded once.
 *
 * In-place safety: out may be x, residual_out may be residual. Both passes walk a row with the same
 * index -> thread mapping, so every element is read and then written by the same thread; pass 2
 * re-reads s from residual_out (or x), which that same thread wrote/read in pass 1. Rows never
 * share output memory (the binding guarantees it), so blocks do not interfere.
 */
#include "cuda_common.cuh"

namespace {

/* Enough row blocks to fill any current GPU many times over; larger M is covered by the
   grid-stride loop, so M beyond the 2^31-1 grid limit works too. */
constexpr int64_t kMaxRowBlocks = 65536;
constexpr int kMaxThreads = 1024;

template <typename T, bool kHasResidual>
__global__ void rms_norm_kernel(mv_rms_norm_args args) {
    __shared__ float reduce_scratch[32];

    const mv_norm_input &in = args.in;
    const int64_t rows = in.rows;
    const int64_t hidden = in.hidden;
    const T *x = static_cast<const T *>(in.x);
    const T *residual = static_cast<const T *>(in.residual);
    T *residual_out = static_cast<T *>(in.residual_out);
    const T *weight = static_cast<const T *>(in.norm_weight);
    T *out = static_cast<T *>(args.out);

    for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
        /* int64 row offsets: strides may be 0, negative, or make row * stride exceed 2^31. */
        const T *x_row = x + row * in.x_stride;
        const T *residual_row = kHasResidual ? residual + row * in.residual_stride : nullptr;
        T *residual_out_row = kHasResidual ? residual_out + row * in.residual_out_stride : nullptr;
        T *out_row = out + row * args.out_stride;

        float sum_sq = 0.0f;
        for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) {
            float s = mv_load_float(x_row + i);
            if (kHasResidual) {
                const T s_rounded = mv_from_float<T>(s + mv_load_float(residual_row + i));
                residual_out_row[i] = s_rounded;
                s = mv_to_float(s_rounded);
            }
            sum_sq += s * s;
        }
        sum_sq = mv_block_sum(sum_sq, reduce_scratch);
        const float rrms = rsqrtf(sum_sq / static_cast<float>(hidden) + in.eps);

        for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) {
            /* Re-read rather than keep s in registers: simple for any H; the data is in L1/L2. */
            const float s = kHasResidual ? mv_load_float(residual_out_row + i) : mv_load_float(x_row + i);
            mv_store_float(out_row + i, mv_load_float(weight + i) * (s * rrms));
        }
        /* No barrier needed before the next row: mv_block_sum starts with one. */
    }
}

} // namespace

extern "C" int mv_rms_norm_cuda(const mv_rms_norm_args *a, void *stream) {
    const int64_t rows = a->in.rows;
    if (rows == 0) return (int)cudaSuccess;
    cudaStream_t cuda_stream = static_cast<cudaStream_t>(stream);

    /* One thread per element up to 1024 (rounded up to whole warps, as mv_block_sum needs): short
       rows do not waste idle warps, long rows get the most threads a block allows, and each thread
       handles ceil(H / threads) elements. */
    const int64_t hidden_warps_rounded = (a->in.hidden + 31) / 32 * 32;
    const int threads = static_cast<int>(hidden_warps_rounded < kMaxThreads ? hidden_warps_rounded : kMaxThreads);
    const unsigned blocks = static_cast<unsigned>(rows < kMaxRowBlocks ? rows : kMaxRowBlocks);

    MV_DISPATCH_DTYPE(a->in.dtype, T, {
        if (a->in.residual != nullptr)
            rms_norm_kernel<T, true><<<blocks, threads, 0, cuda_stream>>>(*a);
        else
            rms_norm_kernel<T, false><<<blocks, threads, 0, cuda_stream>>>(*a);
    })
    return (int)cudaGetLastError();
}
