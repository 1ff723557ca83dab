/*
 * paths.h: the GPU paths of fused RMSNorm + QKV, between the dispatch table (dispatch.cu) and the
 * files that implement them.
 *
 * Each path has a plan function and a launch function. The plan function decides whether the path
 * takes the call and, where it does, fills an mv_qkv_plan with everything the launch needs
 * (geometry, shared memory, tensor maps): its yes is final, so the launch that follows fails only on
 * a CUDA error. Launches use the caller's stream, never synchronize and allocate nothing, except
 * the norm + GEMM paths' stream-ordered scratch (norm_cublaslt.cu).
 */
#ifndef MINIVLLM_FUSED_RMS_NORM_QKV_PATHS_H
#define MINIVLLM_FUSED_RMS_NORM_QKV_PATHS_H

#include <climits>
#include <cstdint>

#include "cuda/device.h"
#include "minivllm_kernels.h"

/* One call's plan. The dispatcher sets pdl (and, where its table says so, wide_blocks) before
   asking a path; the path sets writes_residual (whether its launch stores
   residual_out itself; otherwise the dispatcher's store kernel follows it) and keeps its own state
   in storage. */
struct mv_qkv_plan {
    bool pdl = false;
    bool wide_blocks = false;  /* the tensor-copy stream's wide blocks (bulk_stream.cu) */
    bool writes_residual = false;
    alignas(128) unsigned char storage[1024]; /* 128: CUtensorMap's alignment */
};

/* The path's own state inside a plan. */
template <typename P>
P *mv_plan_state(mv_qkv_plan *plan) {
    static_assert(sizeof(P) <= sizeof(plan->storage) && alignof(P) <= 128, "a path's state fits a plan");
    return reinterpret_cast<P *>(plan->storage);
}
template <typename P>
const P &mv_plan_state(const mv_qkv_plan &plan) {
    return *reinterpret_cast<const P *>(plan.storage);
}

/* Whether p and every row start stride_elems elements apart allow 16-byte vector access. */
inline bool mv_aligned16(const void *p, int64_t stride_elems, int64_t elem_size) {
    return reinterpret_cast<uintptr_t>(p) % 16 == 0 && (stride_elems * elem_size) % 16 == 0;
}

/* What the sm_90a wgmma kernels (wgmma.cu, engine.cu) need of a call besides its dtype and
   residual: a 9.0 device, W in nn.Linear layout, H % 8 == 0, sizes that fit an int, 16-byte aligned
   rows of x and W and a 16-byte aligned gamma, even q/k/v widths with 4-byte aligned rows, and a
   driver that encodes tensor maps. */
inline bool mv_qkv_wgmma_operands_ok(const mv_qkv_args &a, const mv_cuda_device &dev) {
    if (dev.major != 9 || dev.minor != 0) return false;
    if (a.w_stride_k != 1) return false;
    const int64_t h = a.in.hidden, n = a.q_cols + 2 * a.kv_cols;
    if (h % 8 != 0 || a.in.rows < 1 || a.in.rows >= INT_MAX || n >= INT_MAX || h >= INT_MAX) return false;
    if (a.in.x_stride < h || !mv_aligned16(a.in.x, a.in.x_stride, 2)) return false;
    if (a.w_stride_n < h || !mv_aligned16(a.w, a.w_stride_n, 2)) return false;
    if (!mv_aligned16(a.in.norm_weight, 0, 2)) return false;
    if (a.q_cols % 2 != 0 || a.kv_cols % 2 != 0) return false;
    const void *outs[3] = {a.q, a.k, a.v};
    const int64_t strides[3] = {a.q_stride, a.k_stride, a.v_stride};
    for (int i = 0; i < 3; ++i)
        if (reinterpret_cast<uintptr_t>(outs[i]) % 4 != 0 || strides[i] % 2 != 0) return false;
    return mv_tensor_maps_available();
}

/* The tensor map of a row-major [rows, cols] 16-bit matrix with the given row stride (elements),
   in boxes of box_rows rows x 64 columns with the 128-byte swizzle (device.h; cached for
   weights). */
inline bool mv_qkv_encode_rows(CUtensorMap *map, bool bf16, const void *data, int64_t rows, int64_t cols,
                               int64_t stride, int box_rows, bool cached) {
    const cuuint64_t dims[2] = {static_cast<cuuint64_t>(cols), static_cast<cuuint64_t>(rows)};
    const cuuint64_t strides[1] = {static_cast<cuuint64_t>(stride) * 2};
    const cuuint32_t box[2] = {64, static_cast<cuuint32_t>(box_rows)};
    return mv_swizzled_tensor_map(map, bf16, 2, data, dims, strides, box, cached);
}

/* The most rows the register and tensor-copy W streams take (two mma token tiles of 8): their
   plans' limit, and the dispatch table's. */
constexpr int mv_qkv_stream_max_rows = 16;

/* Deferred-norm W stream (deferred_stream.cu): sm_90+, fp16/bf16, 1 <= M <= 32 (a residual too),
   H % 64 == 0, 16-byte aligned rows of x and W (nn.Linear layout), N within its tiles per block. */
bool mv_qkv_deferred_plan(const mv_qkv_args &a, const mv_cuda_device &dev, mv_qkv_plan *plan);
cudaError_t mv_qkv_deferred_launch(const mv_qkv_args &a, const mv_qkv_plan &plan, const mv_cuda_device &dev,
                                   cudaStream_t stream);

/* W stream into mma registers (register_stream.cu): sm_80+, fp16/bf16, 1 <= M <= 16, H % 8 == 0,
   W in nn.Linear layout with 16-byte aligned rows, the staged input within a block's shared
   memory. With whole_weight_first, only where every block requests all of its W before the PDL
   wait (one batch of loads covers H, every 16-feature tile's block resident at once). */
bool mv_qkv_register_plan(const mv_qkv_args &a, const mv_cuda_device &dev, bool whole_weight_first, mv_qkv_plan *plan);
cudaError_t mv_qkv_register_launch(const mv_qkv_args &a, const mv_qkv_plan &plan, const mv_cuda_device &dev,
                                   cudaStream_t stream);

/* W stream by the tensor copy engine (bulk_stream.cu): as the register stream, sm_90+, H % 64 == 0,
   where a ring of at least two stages fits beside the staged input. With plan->wide_blocks, blocks
   of at least kBulkWideFeatures features (fewer blocks than SMs), each with a whole SM's ring: four
   whole 16-feature tiles a block, as cuBLAS's one-row kernel takes 64 features a block. */
constexpr int kBulkWideFeatures = 64;
bool mv_qkv_bulk_plan(const mv_qkv_args &a, const mv_cuda_device &dev, mv_qkv_plan *plan);
cudaError_t mv_qkv_bulk_launch(const mv_qkv_args &a, const mv_qkv_plan &plan, const mv_cuda_device &dev,
                               cudaStream_t stream);

/* One-kernel norm + GEMM on wgmma (wgmma.cu): sm_90 (9.0) with that file built for sm_90a, bf16, no
   residual, H % 8 == 0, 16-byte aligned rows of x and W (nn.Linear layout), even q/k/v widths with
   4-byte aligned rows. */
bool mv_qkv_wgmma_plan(const mv_qkv_args &a, const mv_cuda_device &dev, mv_qkv_plan *plan);
cudaError_t mv_qkv_wgmma_launch(const mv_qkv_args &a, const mv_qkv_plan &plan, const mv_cuda_device &dev,
                                cudaStream_t stream);

/* The Hopper GEMM engine (engine.cu): sm_90 (9.0) with that file built for sm_90a, fp16/bf16, no
   residual, H % 8 == 0, 16-byte aligned rows of x and W (nn.Linear layout), even q/k/v widths with
   4-byte aligned rows. Its stream-K launches may allocate the stream's workspace on the stream's
   first call. Its tiles are mv_qkv_engine_tile_features features wide. */
constexpr int mv_qkv_engine_tile_features = 128;
bool mv_qkv_engine_plan(const mv_qkv_args &a, const mv_cuda_device &dev, mv_qkv_plan *plan);
cudaError_t mv_qkv_engine_launch(const mv_qkv_args &a, const mv_qkv_plan &plan, const mv_cuda_device &dev,
                                 cudaStream_t stream);
/* The engine with the attention prologue's epilogue in its own (one kernel for the whole
   prologue): as the engine, where head_dim divides its 128-feature tiles, and with a residual
   where it and residual_out have 16-byte aligned rows (residual_out written in the kernel except
   in the in-place form, where the caller's store kernel must follow: plan->writes_residual). */
bool mv_qkv_engine_prologue_plan(const mv_prologue_args &a, const mv_cuda_device &dev, mv_qkv_plan *plan);
cudaError_t mv_qkv_engine_prologue_launch(const mv_prologue_args &a, const mv_qkv_plan &plan,
                                          const mv_cuda_device &dev, cudaStream_t stream);

/* The rms_norm kernel into scratch, then a GEMM (norm_cublaslt.cu): cuBLASLt (any dtype and
   layout, where libcublasLt loads), or our tensor-core GEMM (tile_gemm.cu). The norm kernel writes
   residual_out. */
bool mv_qkv_cublaslt_plan(const mv_qkv_args &a, const mv_cuda_device &dev, mv_qkv_plan *plan);
bool mv_qkv_tile_plan(const mv_qkv_args &a, const mv_cuda_device &dev, mv_qkv_plan *plan);
cudaError_t mv_qkv_norm_gemm_launch(const mv_qkv_args &a, const mv_qkv_plan &plan, const mv_cuda_device &dev,
                                    cudaStream_t stream);

/* Our GEMM (tile_gemm.cu): q, k, v = y . W^T for a normalized y [M, H] (row stride H, 16-byte
   aligned); fp16/bf16, sm_80+, H % 8 == 0, W in nn.Linear layout with 16-byte aligned rows. */
bool mv_qkv_tile_gemm_supported(const mv_qkv_args &a, const mv_cuda_device &dev);
cudaError_t mv_qkv_tile_gemm_launch(const void *y, const mv_qkv_args &a, bool pdl, const mv_cuda_device &dev,
                                    cudaStream_t stream);

/* The generic kernel (generic.cu): any dtype, layout, alignment and size. */
bool mv_qkv_generic_plan(const mv_qkv_args &a, const mv_cuda_device &dev, mv_qkv_plan *plan);
cudaError_t mv_qkv_generic_launch(const mv_qkv_args &a, const mv_qkv_plan &plan, const mv_cuda_device &dev,
                                  cudaStream_t stream);

/* mv_fused_rms_norm_qkv_cuda (dispatch.cu), also saying whether a kernel launched next with PDL
   starts early: the last kernel launched triggers at its own start and PDL is on (not so after
   cuBLASLt's GEMM or the residual-store kernel). *next_after_wait (optional): besides, the kernel
   did so only after its own PDL wait (a->trigger_after_wait on a path that honours it), so what
   the kernels before it wrote may be read by the next kernel before its wait. */
int mv_qkv_cuda(const mv_qkv_args *a, const mv_cuda_opts *o, void *stream, mv_qkv_path *taken, bool *next_starts_early,
                bool *next_after_wait = nullptr);

/* residual_out = round(x + residual), after a kernel that read residual but did not write it
   (generic.cu). */
cudaError_t mv_qkv_residual_store(const mv_qkv_args &a, cudaStream_t stream);

#endif /* MINIVLLM_FUSED_RMS_NORM_QKV_PATHS_H */
