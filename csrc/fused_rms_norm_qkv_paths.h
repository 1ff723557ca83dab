/*
 * fused_rms_norm_qkv_paths.h: the GPU paths of fused RMSNorm + QKV, between the dispatcher
 * (fused_rms_norm_qkv.cu, mv_fused_rms_norm_qkv_cuda) and the files that implement them.
 * Same conventions as minivllm_kernels.h: cudaError_t returned as int, caller's stream, no sync,
 * no allocation.
 */
#ifndef MINIVLLM_FUSED_RMS_NORM_QKV_PATHS_H
#define MINIVLLM_FUSED_RMS_NORM_QKV_PATHS_H

#include "cuda_device.h"
#include "minivllm_kernels.h"

/* MINIVLLM_QKV_PATH=stream|register|bulk|deferred|wgmma|tile|gemm|generic forces one path where it can take the
   call (tests and benchmarks of each path on one GPU; register and bulk: the stream path on its
   register kernel or on its tensor-copy kernel only, where sm_90+ would choose between them);
   read once, in fused_rms_norm_qkv.cu. */
enum class mv_qkv_path { automatic, stream, register_stream, bulk_stream, deferred, wgmma, tile, gemm, generic };
mv_qkv_path mv_qkv_forced_path();

#include <cstdint>

/* Whether p and every row start stride_elems elements apart allow 16-byte vector access. */
inline bool mv_aligned16(const void *p, int64_t stride_elems, int64_t elem_size) {
    return reinterpret_cast<uintptr_t>(p) % 16 == 0 && (stride_elems * elem_size) % 16 == 0;
}

/* C++ only (included by the .cu files): C linkage kept for the symbol names. */
extern "C" {

/* Skinny M (fused_rms_norm_qkv_stream.cu): fp16/bf16, 1 <= M <= 16, H % 8 == 0, W in nn.Linear
   layout with 16-byte aligned rows, and the staged input fits in a block's shared memory. */
int mv_qkv_stream_supported(const mv_qkv_args *a, const mv_cuda_device *dev);
/* residual_in_kernel: write residual_out from the kernel (only when it is not residual itself;
   otherwise the caller stores it afterwards). */
int mv_qkv_stream_cuda(const mv_qkv_args *a, void *stream, int residual_in_kernel, const mv_cuda_device *dev);

/* The W stream with the norm deferred to its epilogue and the input streamed beside the weights
   (fused_rms_norm_qkv_stream.cu): sm_90+, fp16/bf16, no residual, 1 <= M <= 32, H % 64 == 0, 16-byte
   aligned rows of x and W (nn.Linear layout). mv_qkv_deferred_cuda returns cudaErrorNotSupported,
   launching nothing, where N needs more than 64 features per multiprocessor (32 above 16 rows). */
int mv_qkv_deferred_supported(const mv_qkv_args *a, const mv_cuda_device *dev);
int mv_qkv_deferred_cuda(const mv_qkv_args *a, void *stream, const mv_cuda_device *dev);

/* One-kernel norm + GEMM on Hopper tensor cores (fused_rms_norm_qkv_wgmma.cu): bf16, sm_90 (9.0)
   with the file built for sm_90a, no residual, H % 8 == 0, 16-byte aligned rows of x and W
   (nn.Linear layout), even q/k/v widths with 4-byte aligned rows. Launched with PDL. */
int mv_qkv_wgmma_supported(const mv_qkv_args *a, const mv_cuda_device *dev);
int mv_qkv_wgmma_cuda(const mv_qkv_args *a, void *stream, const mv_cuda_device *dev);

/* Norm + GEMM path (fused_rms_norm_qkv_gemm.cu): the rms_norm kernel writes y into scratch
   (and residual_out, in place or not), then a GEMM: cuBLASLt (any dtype, layout and M; needs
   libcublasLt, loaded on first use; mv_qkv_gemm_available says whether it could be), or with
   own_gemm our tensor-core GEMM (fused_rms_norm_qkv_tile.cu, where mv_qkv_tile_supported).
   Allocates its scratch stream-ordered (cudaMallocAsync / cudaFreeAsync on the caller's stream). */
int mv_qkv_gemm_available(void);
int mv_qkv_gemm_cuda(const mv_qkv_args *a, void *stream, const mv_cuda_device *dev, int own_gemm);

/* Our GEMM (fused_rms_norm_qkv_tile.cu): q, k, v = y . W^T for a normalized y [M, H] (row stride
   H, 16-byte aligned); fp16/bf16, sm_80+, H % 8 == 0, W in nn.Linear layout with 16-byte aligned
   rows. Launched with PDL: streams its first W stages while the kernel before it runs. */
int mv_qkv_tile_supported(const mv_qkv_args *a, const mv_cuda_device *dev);
int mv_qkv_tile_gemm_cuda(const void *y, const mv_qkv_args *a, void *stream, const mv_cuda_device *dev);

}

#endif /* MINIVLLM_FUSED_RMS_NORM_QKV_PATHS_H */
