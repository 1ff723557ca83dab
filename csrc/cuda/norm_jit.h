/*
 * norm_jit.h: the lanes kernels' norm compiled at run time for the call's H (NVRTC), the lanes
 * kernels' arithmetic and summation order with H, G and (for contiguous rows) the row stride as
 * constants. Host side, C++ (the .cu files); norm_jit.cu.
 */
#ifndef MINIVLLM_CUDA_NORM_JIT_H
#define MINIVLLM_CUDA_NORM_JIT_H

#include <cuda.h>

#include "cuda/device.h"

/* What a compiled kernel is specialized for (its cache key besides the context). */
struct mv_norm_jit_form {
    int dtype;          /* the rows' mv_dtype: MV_FLOAT32, MV_FLOAT16 or MV_BFLOAT16 */
    int weight_float32; /* gamma in float32 beside 16-bit rows */
    int residual;       /* the fused add */
    int offset;         /* y = (gamma + weight_offset) * ... */
    int pdl;            /* the form that asks L2 for its rows, waits and triggers */
    int contiguous;     /* every row stride equals H (compiled in) */
    int hidden;         /* H, a multiple of the 16-byte vector's elements, at most 1024 vectors */
    int group;          /* G of the general layout for H (the summation order) */
    int rows_per_block; /* rows of at most 32 vectors: that many a block (0: a row a block) */
    int row_lanes;      /* then each row's lanes, a power of two from its vector count to 32 */
};

/* The kernel
     norm_jit(const void *x, void *out, const void *weight, const void *residual, void *residual_out,
              float eps, float weight_offset, int x_stride, int out_stride, int residual_stride,
              int residual_out_stride, long long rows)
   for this form in the current context: one 16-byte vector a thread; a row a block of
   ceil(H / vector, 32) threads, or rows_per_block rows of row_lanes threads (rows: the call's row
   count, which the last block checks). Compiled and loaded on the first call of a form, then found
   in a cache; null where NVRTC cannot be loaded, the form's compilation failed once, or the cache
   is full: the caller's own kernels take the call then, with the same bits (as they do where the
   call asks for them: the norm ops' jit=False, mv_cuda_opts.builtin_only). */
CUfunction mv_norm_jit_function(const mv_norm_jit_form &form, const mv_cuda_device &dev);

#endif
