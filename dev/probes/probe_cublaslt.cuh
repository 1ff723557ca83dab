/*
 * probe_cublaslt.cuh: the QKV GEMM as the norm + cuBLASLt path (csrc/fused_rms_norm_qkv_gemm.cu)
 * puts it to cuBLASLt, for the probes that time it (cublaslt_algos.cu, cublaslt_pdl.cu): bf16
 * D [N x M] column-major (= the row-major [M, N] output) = op_T(W, column-major [H x N]) . y [H x M],
 * float32 accumulation, and the path's preferences. Not part of the library.
 */
#ifndef MINIVLLM_PROBE_CUBLASLT_CUH
#define MINIVLLM_PROBE_CUBLASLT_CUH

#include <cublasLt.h>

#include <vector>

#include "probe_common.cuh"

constexpr size_t kPathWorkspaceBytes = 32u << 20; /* the path's cuBLASLt workspace */

struct QkvGemmDesc {
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t la, lb, ld;
};

inline QkvGemmDesc qkv_gemm_desc(int m, int n, int h) {
    QkvGemmDesc g;
    CHECK_BLAS(cublasLtMatmulDescCreate(&g.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t op_t = CUBLAS_OP_T, op_n = CUBLAS_OP_N;
    CHECK_BLAS(cublasLtMatmulDescSetAttribute(g.desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_t, sizeof(op_t)));
    CHECK_BLAS(cublasLtMatmulDescSetAttribute(g.desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_n, sizeof(op_n)));
    CHECK_BLAS(cublasLtMatrixLayoutCreate(&g.la, CUDA_R_16BF, h, n, h));
    CHECK_BLAS(cublasLtMatrixLayoutCreate(&g.lb, CUDA_R_16BF, h, m, h));
    CHECK_BLAS(cublasLtMatrixLayoutCreate(&g.ld, CUDA_R_16BF, n, m, n));
    return g;
}

inline void destroy_qkv_gemm_desc(const QkvGemmDesc &g) {
    CHECK_BLAS(cublasLtMatrixLayoutDestroy(g.la));
    CHECK_BLAS(cublasLtMatrixLayoutDestroy(g.lb));
    CHECK_BLAS(cublasLtMatrixLayoutDestroy(g.ld));
    CHECK_BLAS(cublasLtMatmulDescDestroy(g.desc));
}

/* The heuristic's first `most` answers (at most 16) under the path's preferences: 32 MiB of
   workspace, 256-byte alignment of A, B and D (what the path computes for cudaMalloc'd buffers),
   and, where `restricted`, split-K partial sums in float32 only (the path's setting). */
inline std::vector<cublasLtMatmulHeuristicResult_t> path_heuristic(cublasLtHandle_t lt, const QkvGemmDesc &g,
                                                                  int most, bool restricted) {
    cublasLtMatmulPreference_t pref;
    CHECK_BLAS(cublasLtMatmulPreferenceCreate(&pref));
    const uint64_t ws = kPathWorkspaceBytes;
    CHECK_BLAS(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
    const uint32_t align = 256;
    for (auto attr : {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES})
        CHECK_BLAS(cublasLtMatmulPreferenceSetAttribute(pref, attr, &align, sizeof(align)));
    if (restricted) {
        const uint32_t reductions = CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE;
        CHECK_BLAS(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, &reductions,
                                                        sizeof(reductions)));
    }
    std::vector<cublasLtMatmulHeuristicResult_t> res(most < 1 ? 1 : most > 16 ? 16 : most);
    int count = 0;
    CHECK_BLAS(cublasLtMatmulAlgoGetHeuristic(lt, g.desc, g.la, g.lb, g.ld, g.ld, pref, static_cast<int>(res.size()),
                                              res.data(), &count));
    CHECK_BLAS(cublasLtMatmulPreferenceDestroy(pref));
    res.resize(count);
    return res;
}

#endif /* MINIVLLM_PROBE_CUBLASLT_CUH */
