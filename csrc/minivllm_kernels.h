/*
 * minivllm_kernels.h: the contract between the CPython binding (binding/) and the kernels.
 *
 * The binding validates every argument (dtypes, shapes, strides, devices, overlap) and hands the
 * kernels plain pointers, sizes and row strides. The kernels trust what they get: nothing here
 * re-checks shapes. Every matrix is row-major with the last dimension contiguous and an explicit
 * row stride in elements (rows may be strided, e.g. a slice of a wider tensor).
 *
 * Numerics (identical on the CPU and the GPU):
 *   s      = x + residual, rounded to the dtype          (only when residual != NULL)
 *   rrms   = 1 / sqrt(sum(s_i^2) / H + eps)              (sum accumulated in float32)
 *   y_i    = (weight_i + offset) * (s_i * rrms)          (float32, rounded once to the dtype;
 *                                                         offset 0, or 1 for Gemma's norm)
 *   qkv    = y . W^T                                     (products accumulated in float32)
 * We follow vLLM: the normalized value is multiplied by weight in float32, not rounded first.
 * For the QKV product, the CPU (and the generic GPU kernel) multiply the float32 y; the GPU's fast
 * paths round y to the dtype first, as an unfused rms_norm + matmul does (tensor cores and cuBLAS
 * take dtype operands). The exceptions are the one-kernel wgmma path and the deferred-norm W
 * stream (sm_90; wgmma bf16, the stream fp16/bf16), which defer rrms to after the product:
 * qkv = rrms * (round(weight_i * s_i) . W^T), the rounding of the scaled input in place of y's
 * (same size of error; the launcher reports the path taken; docs/numerics.md). In fp16 the stream rounds
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
    /* Only where an op asks for them (attention_prologue's positions, slot_mapping and an FP8
       KV cache); the activation dtype is always one of the three above. */
    MV_INT32 = 3,
    MV_INT64 = 4,
    MV_FLOAT8_E4M3 = 5, /* e4m3fn: no infinities, +-448 largest */
} mv_dtype;

/* Bytes per element: the one definition the binding and the CPU kernels share. */
static inline int64_t mv_dtype_size(mv_dtype dt)
{
    return dt == MV_FLOAT32 || dt == MV_INT32 ? 4 : dt == MV_INT64 ? 8 : dt == MV_FLOAT8_E4M3 ? 1 : 2;
}

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
    /* 0: gamma has the rows' dtype; 1: gamma is float32 beside 16-bit rows (the norm ops only).
       Zero-initialized arguments mean the common case. */
    int weight_float32;
    /* y = (gamma + weight_offset) * (s * rrms), the sum in float32: 1 for Gemma's (1 + w), else 0
       (QKV: always 0) */
    float weight_offset;
} mv_norm_input;

/* Rows in two strides (a per-head view, rows = tokens x heads): where inner_rows > 0, row r of
   an argument starts (r / inner_rows) * <its outer stride here> + (r % inner_rows) * <its row
   stride> elements in. inner_rows == 0: one stride, r * <its row stride>. */
typedef struct {
    int64_t inner_rows;
    int64_t x, residual, residual_out, out; /* outer strides, in elements */
} mv_outer_strides;

/* rms_norm and fused_add_rms_norm: out[M, H] = rms_norm(x (+ residual)). out may be the same
   memory as x (in-place form). */
typedef struct {
    mv_norm_input in;
    void *out;
    int64_t out_stride;
    mv_outer_strides outer; /* zero-initialized: rows in one stride */
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
    /* attention_prologue's QKV part (zero otherwise): the register and tensor-copy W streams let
       the next kernel launch only after their own PDL wait, so that kernel (the epilogue) may load
       what the kernels before this one wrote (positions, slots) before its wait; the QKV table
       reads it too (dispatch.cu: an epilogue follows) */
    int trigger_after_wait;
} mv_qkv_args;

/* CPU kernels (cpu/rms_norm.c, cpu/fused_rms_norm_qkv.c). Thread-safe, GIL-free. */
int mv_rms_norm_cpu(const mv_rms_norm_args *a);
int mv_fused_rms_norm_qkv_cpu(const mv_qkv_args *a);

/* The GPU kernels of fused RMSNorm + QKV, as the dispatch table (cuda/fused_rms_norm_qkv/dispatch.cu)
   names them. MV_QKV_AUTO lets the table choose; any other value asks for that path where it can
   take the call (tests and benchmarks), the table's choice otherwise. */
typedef enum {
    MV_QKV_AUTO = 0,
    MV_QKV_DEFERRED, /* deferred-norm W stream (sm_90+) */
    MV_QKV_REGISTER, /* W stream into mma registers (sm_80+) */
    MV_QKV_BULK,     /* W stream by the tensor copy engine (sm_90+) */
    MV_QKV_WGMMA,    /* one-kernel norm + wgmma GEMM (sm_90) */
    MV_QKV_CUBLASLT, /* norm kernel, then cuBLASLt */
    MV_QKV_TILE,     /* norm kernel, then our tensor-core GEMM (no libcublasLt) */
    MV_QKV_GENERIC,  /* the correctness fallback: any dtype, layout and size */
    MV_QKV_ENGINE,   /* the Hopper GEMM engine: stream-K TMA + wgmma, deferred norm (sm_90) */
    /* attention_prologue only: the engine with the prologue's epilogue in the same kernel
       (sm_90; QKV calls that ask for it get the table's choice) */
    MV_QKV_ENGINE_PROLOGUE,
    MV_QKV_PATH_COUNT
} mv_qkv_path;

/* Programmatic dependent launch, per call: the library's default (on for sm_90+ unless the process
   was started with MINIVLLM_PDL=0), off, or on wherever the GPU has it. */
enum { MV_PDL_DEFAULT = -1, MV_PDL_OFF = 0, MV_PDL_ON = 1 };

/* Per-call options of the CUDA launchers. */
typedef struct {
    int pdl;          /* MV_PDL_* */
    mv_qkv_path path; /* QKV only */
    int builtin_only; /* norms: nonzero keeps the built-in kernels (no kernel compiled at run time
                         for the call's H, cuda/norm_jit.cu); zero-initialized options allow it */
} mv_cuda_opts;

/* CUDA launchers (cuda/rms_norm.cu, cuda/fused_rms_norm_qkv/dispatch.cu); stream is a cudaStream_t.
   The caller has made the tensors' device current. Data pointers are aligned to the element
   size (the binding checks); wider vector loads must check their own alignment. */
int mv_rms_norm_cuda(const mv_rms_norm_args *a, const mv_cuda_opts *o, void *stream);
/* The deliberately simple kernel the fast one is tested against (and falls back to for rows too
   long to hold in registers). */
int mv_rms_norm_cuda_reference(const mv_rms_norm_args *a, void *stream);
/* The current device's DRAM bandwidth in GB/s, from its memory clock and bus width, as the QKV
   dispatch table reads it (0 where the platform does not report them): for the tests. */
int mv_cuda_dram_gbps(int *gbps);
/* *taken: the path that ran (MV_QKV_AUTO where nothing was launched: M = 0 or an error). */
int mv_fused_rms_norm_qkv_cuda(const mv_qkv_args *a, const mv_cuda_opts *o, void *stream, mv_qkv_path *taken);

/* ---- attention_prologue (cpu/attention_prologue.c, cuda/attention_prologue.cu) --------------
   The QKV part (qkv) as above, q into the caller's q, k and v into the caller's k and v or, with
   a KV cache, into scratch; then one epilogue pass per (token, head), in float32 on the values
   the QKV part stored (rounded to the dtype): + bias, per-head RMSNorm over head_dim (q, k),
   RoPE (q, k), one rounding to the dtype (or to e4m3 of value / kv_scale in an FP8 cache) on the
   store. The binding checks everything; the kernels still never read or write out of bounds on
   bad index values (tensor contents the binding cannot see on a GPU): a position outside
   [0, max_position) makes that token's q and k NaN, a slot outside [0, num_blocks * block_size)
   writes nothing (negative: vLLM's padding). */
typedef struct {
    mv_qkv_args qkv;
    int64_t num_heads, num_kv_heads, head_dim;
    /* q's final place where it is not qkv.q (with a cache the QKV part writes q, k and v into
       one scratch, adjacent as one GEMM stores them, and the epilogue moves q here); NULL: in
       place. Set only with a KV cache (the epilogue then visits every head). */
    void *q_out;
    int64_t q_out_stride; /* elements between tokens */
    const void *bias;          /* [q_cols + 2 * kv_cols] in the dtype, or NULL */
    const void *q_norm_weight; /* [head_dim] in the dtype, or NULL */
    const void *k_norm_weight;
    float qk_norm_eps;
    /* RoPE: positions == NULL means none. */
    const void *positions;
    mv_dtype positions_dtype; /* MV_INT32 or MV_INT64 */
    int64_t positions_stride; /* elements between tokens */
    const void *cos_sin;      /* [max_position, rotary_dim]: cos of the rotary_dim / 2 frequencies, then sin */
    mv_dtype cos_sin_dtype;   /* float32 or the activation dtype */
    int64_t cos_sin_stride;   /* elements between positions; the last dimension is contiguous */
    int64_t max_position;
    int64_t rotary_dim; /* even, <= head_dim */
    int rope_gptj;      /* 0: neox (halves), 1: gptj (adjacent pairs) */
    /* KV cache: k_cache == NULL means k and v stay in qkv.k / qkv.v. Element (block, offset,
       head, d) of a cache lies at base + block * s[0] + offset * s[1] + head * s[2] + d * s[3]
       (elements, any values). */
    void *k_cache;
    void *v_cache;
    mv_dtype cache_dtype; /* the activation dtype or MV_FLOAT8_E4M3 */
    int64_t k_cache_strides[4];
    int64_t v_cache_strides[4];
    int64_t num_blocks, block_size;
    const void *slot_mapping;
    mv_dtype slot_dtype; /* MV_INT32 or MV_INT64 */
    int64_t slot_stride;
    float kv_scale; /* FP8 cache: stored = e4m3(value / kv_scale) */
} mv_prologue_args;

int mv_attention_prologue_cpu(const mv_prologue_args *a);
/* The QKV launcher, then the epilogue kernel; *taken: the QKV path that ran. */
int mv_attention_prologue_cuda(const mv_prologue_args *a, const mv_cuda_opts *o, void *stream,
                               mv_qkv_path *taken);

#ifdef __cplusplus
}
#endif

#endif /* MINIVLLM_KERNELS_H */
