/*
 * minivllm_kernels.h: the contract between the CPython binding (module.c) and the kernels.
 *
 * The binding validates every argument (dtypes, shapes, strides, devices, overlap) and hands the
 * kernels plain pointers, sizes and row strides. The kernels trust what they get: nothing here
 * re-checks shapes. Every matrix is row-major with the last dimension contiguous and an explicit
 * row stride in elements (rows may be strided, e.g. a slice of a wider tensor).
 *
 * Numerics (identical on the CPU and the GPU):
 *   s      = x + residual, rounded to the dtype          (only when residual != NULL)
 *   rrms   = 1 / sqrt(sum(s_i^2) / H + eps)              (sum accumulated in float32)
 *   y_i    = weight_i * (s_i * rrms)                     (float32, rounded once to the dtype)
 *   qkv    = y . W^T                                     (products accumulated in float32)
 * We follow vLLM: the normalized value is multiplied by weight in float32, not rounded first.
 * For the QKV product, the CPU (and the generic GPU kernel) multiply the float32 y; the GPU's fast
 * paths round y to the dtype first, as an unfused rms_norm + matmul does (tensor cores and cuBLAS
 * take dtype operands). The exceptions are the one-kernel wgmma path and the deferred-norm W
 * stream (sm_90; wgmma bf16, the stream fp16/bf16), which defer rrms to after the product:
 * qkv = rrms * (round(weight_i * s_i) . W^T), the rounding of the scaled input in place of y's
 * (same size of error; mv_qkv_last_gpu_path names the path taken). In fp16 the stream rounds
 * weight_i * s_i * 2^-e instead and multiplies the sums by rrms * 2^e, 2^e the least power of two
 * above max |weight| (1 where that is <= 1), so that the operand cannot overflow fp16.
 *
 * CPU functions return 0 on success or an MV_ERR_* code. CUDA launchers return a cudaError_t
 * (as int, so this header needs no CUDA headers), launch on the given stream, never synchronize
 * and never allocate, with one exception: the QKV launcher's cuBLASLt path takes its scratch
 * (y and the cuBLASLt workspace) stream-ordered from cudaMallocAsync and frees it the same way.
 */
#ifndef MINIVLLM_KERNELS_H
#define MINIVLLM_KERNELS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    MV_FLOAT32 = 0,
    MV_FLOAT16 = 1,
    MV_BFLOAT16 = 2,
} mv_dtype;

/* Bytes per element: the one definition the binding and the CPU kernels share. */
static inline int64_t mv_dtype_size(mv_dtype dt) { return dt == MV_FLOAT32 ? 4 : 2; }

enum {
    MV_OK = 0,
    MV_ERR_NOMEM = 1, /* a CPU scratch allocation failed */
};

/* The rows to normalize: x (+ residual) and the RMSNorm weight. Shared by every op. */
typedef struct {
    mv_dtype dtype;
    int64_t rows;   /* M >= 0 */
    int64_t hidden; /* H >= 1 */
    float eps;
    const void *x;
    int64_t x_stride; /* elements between rows (any value, even 0 or negative) */
    /* Optional fused residual add: s = x + residual is written to residual_out and normalized.
       residual == NULL means no add (then residual_out is ignored). residual_out may be the same
       memory as residual (in-place form); it never partially overlaps anything. */
    const void *residual;
    int64_t residual_stride;
    void *residual_out;
    int64_t residual_out_stride;
    const void *norm_weight; /* gamma, contiguous, length H */
} mv_norm_input;

/* rms_norm and fused_add_rms_norm: out[M, H] = rms_norm(x (+ residual)). out may be the same
   memory as x (in-place form). */
typedef struct {
    mv_norm_input in;
    void *out;
    int64_t out_stride;
} mv_rms_norm_args;

/* Fused RMSNorm + QKV projection. W[n, k] (n < N, k < H) lives at
   w + n * w_stride_n + k * w_stride_k; exactly one of the two strides is 1 (nn.Linear layout:
   w_stride_k == 1; its .t() view handed over as [H, N] reads the same memory). Output column n
   goes to q (n < q_cols), k (q_cols <= n < q_cols + kv_cols) or v (the rest), each a row-major
   [M, cols] matrix with its own row stride. */
typedef struct {
    mv_norm_input in;
    const void *w;
    int64_t w_stride_n;
    int64_t w_stride_k;
    int64_t q_cols;  /* num_heads * head_dim */
    int64_t kv_cols; /* num_kv_heads * head_dim; N = q_cols + 2 * kv_cols */
    void *q;
    int64_t q_stride;
    void *k;
    int64_t k_stride;
    void *v;
    int64_t v_stride;
} mv_qkv_args;

/* CPU kernels (csrc/rms_norm_cpu.c, csrc/fused_rms_norm_qkv_cpu.c). Thread-safe, GIL-free. */
int mv_rms_norm_cpu(const mv_rms_norm_args *a);
int mv_fused_rms_norm_qkv_cpu(const mv_qkv_args *a);

/* CUDA launchers (csrc/rms_norm.cu, csrc/fused_rms_norm_qkv.cu); stream is a cudaStream_t.
   The caller has made the tensors' device current. Data pointers are aligned to the element
   size (the binding checks); wider vector loads must check their own alignment. */
int mv_rms_norm_cuda(const mv_rms_norm_args *a, void *stream);
/* The deliberately simple kernel the fast one is tested against (and falls back to for rows too
   long to hold in registers). */
int mv_rms_norm_cuda_reference(const mv_rms_norm_args *a, void *stream);
int mv_fused_rms_norm_qkv_cuda(const mv_qkv_args *a, void *stream);
/* The path the last mv_fused_rms_norm_qkv_cuda call of this thread took ("deferred", "stream", "wgmma",
   "gemm", "tile", "generic"; "none" before any call). */
const char *mv_qkv_last_gpu_path(void);

#ifdef __cplusplus
}
#endif

#endif /* MINIVLLM_KERNELS_H */
