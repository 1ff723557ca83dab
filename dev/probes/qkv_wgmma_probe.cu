/*
 * qkv_wgmma_probe.cu: the QKV wgmma path (csrc/cuda/fused_rms_norm_qkv/wgmma.cu) alone against cuBLAS
 * on pre-normalized input, without building the Python module: for developing its tiles on a GPU
 * machine in seconds. Not part of the library; the tests and bench_fused_rms_norm_qkv.py are the authority.
 *
 * For each shape: a float64 check of sampled rows (every row up to M = 512) of one call, outputs
 * poisoned with NaN before it and every element checked for NaN after it; then the median time
 * of 20-call batches over 4 distinct weight copies, for the wgmma path and for cublasGemmEx (bf16,
 * float32 compute) on y = rms_norm(x) precomputed, and the ratio.
 *
 *   nvcc -std=c++17 -O3 --expt-relaxed-constexpr -Icsrc -gencode=arch=compute_90a,code=sm_90a \
 *        -DMINIVLLM_HAVE_SM90A dev/probes/qkv_wgmma_probe.cu csrc/cuda/fused_rms_norm_qkv/wgmma.cu \
 *        csrc/cuda/device.cu -lcublas -o qkv_wgmma_probe
 *   MINIVLLM_QKV_WGMMA_TILE=128x256 ./qkv_wgmma_probe H,HEADS,KV_HEADS,HEAD_DIM [M ...]
 */
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "cuda/fused_rms_norm_qkv/paths.h"
#include "probe_common.cuh"

__global__ void poison(__nv_bfloat16 *p, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        p[i] = __float2bfloat16(NAN);
}

__global__ void count_nan(const __nv_bfloat16 *p, int64_t n, unsigned long long *count) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        if (isnan(__bfloat162float(p[i]))) atomicAdd(count, 1ull);
}

/* y = round(gamma * x * rrms), what an unfused rms_norm writes: cuBLAS's input. */
__global__ void normalize(const __nv_bfloat16 *x, const __nv_bfloat16 *gamma, __nv_bfloat16 *y, int h, float eps) {
    const __nv_bfloat16 *row = x + (int64_t)blockIdx.x * h;
    __shared__ float part[32];
    float s = 0.0f;
    for (int k = threadIdx.x; k < h; k += blockDim.x) {
        const float v = __bfloat162float(row[k]);
        s += v * v;
    }
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = s;
    __syncthreads();
    float total = 0.0f;
    for (int i = 0; i < (int)blockDim.x / 32; ++i) total += part[i];
    const float rrms = rsqrtf(total / h + eps);
    for (int k = threadIdx.x; k < h; k += blockDim.x)
        y[(int64_t)blockIdx.x * h + k] = __float2bfloat16(__bfloat162float(row[k]) * rrms * __bfloat162float(gamma[k]));
}

/* float64 reference of the wgmma path's numerics for one row: rrms (float64) * sum_k
   round_bf16(gamma * x) * W, one block per sampled row, one thread per output column. */
__global__ void reference_rows(const __nv_bfloat16 *x, const __nv_bfloat16 *gamma, const __nv_bfloat16 *w,
                               const int *rows, int h, int n, float eps, double *out) {
    const int row = rows[blockIdx.y];
    const __nv_bfloat16 *xr = x + (int64_t)row * h;
    double ss = 0.0;
    for (int k = 0; k < h; ++k) {
        const double v = __bfloat162float(xr[k]);
        ss += v * v;
    }
    const double rrms = 1.0 / sqrt(ss / h + eps);
    const int col = blockIdx.x * blockDim.x + threadIdx.x;
    if (col >= n) return;
    double acc = 0.0;
    for (int k = 0; k < h; ++k) {
        const float gx = __bfloat162float(__float2bfloat16(__bfloat162float(gamma[k]) * __bfloat162float(xr[k])));
        acc += (double)gx * (double)__bfloat162float(w[(int64_t)col * h + k]);
    }
    out[(int64_t)blockIdx.y * n + col] = acc * rrms;
}

static float median(std::vector<float> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

int main(int argc, char **argv) {
    ProbeShape shape;
    if (probe_shape_from_args(argc, argv, &shape) != 0) return 2;
    std::vector<int> ms;
    for (int i = 2; i < argc; ++i) ms.push_back(atoi(argv[i]));
    const char *tile = getenv("MINIVLLM_QKV_WGMMA_TILE");
    cudaDeviceProp prop;
    CHECK(cudaGetDeviceProperties(&prop, 0));
    printf("# %s, tile %s\n", prop.name, tile ? tile : "auto");
    printf("%-13s %6s %10s %10s %8s %9s %9s %10s\n", "model", "M", "wgmma_us", "cublas_us", "ratio", "wgmma_TF", "cublas_TF",
           "rel_err");
    cublasHandle_t blas;
    CHECK_BLAS(cublasCreate(&blas));
    cudaStream_t stream;
    CHECK(cudaStreamCreate(&stream));
    CHECK_BLAS(cublasSetStream(blas, stream));
    mv_cuda_device dev;
    CHECK(mv_current_device(&dev));
    int failures = 0;
    constexpr int kCopies = 4, kCalls = 20, kReps = 7;
    for (const ProbeShape &sh : {shape}) {
        const int n = sh.q + 2 * sh.kv, h = sh.h;
        for (int m : ms) {
            __nv_bfloat16 *x, *gamma, *w, *y, *out, *ref_out;
            const size_t w_elems = (size_t)n * h;
            CHECK(cudaMalloc(&x, (size_t)m * h * 2));
            CHECK(cudaMalloc(&y, (size_t)m * h * 2));
            CHECK(cudaMalloc(&gamma, (size_t)h * 2));
            CHECK(cudaMalloc(&w, w_elems * 2 * kCopies));
            CHECK(cudaMalloc(&out, (size_t)m * n * 2));
            CHECK(cudaMalloc(&ref_out, (size_t)m * n * 2));
            const uint64_t seed = 1234567ull * (m + 7) + h;
            fill<<<1024, 256, 0, stream>>>(x, (int64_t)m * h, seed, 2.0f, 0.0f);
            fill<<<64, 256, 0, stream>>>(gamma, h, seed + 1, 0.5f, 1.0f);
            fill<<<4096, 256, 0, stream>>>(w, (int64_t)w_elems * kCopies, seed + 2, 0.05f, 0.0f);
            CHECK(cudaGetLastError());
            normalize<<<m, 256, 0, stream>>>(x, gamma, y, h, 1e-6f);
            CHECK(cudaGetLastError());

            mv_qkv_args a = probe_qkv_args(MV_BFLOAT16, m, sh, x, gamma, w, out);
            if (!mv_qkv_wgmma_supported(&a, &dev)) {
                printf("%-13s %6d not supported\n", sh.name, m);
                return 1;
            }

            /* correctness */
            poison<<<1024, 256, 0, stream>>>(out, (int64_t)m * n);
            CHECK((cudaError_t)mv_qkv_wgmma_cuda(&a, stream, &dev));
            CHECK(cudaGetLastError());
            unsigned long long *nan_count;
            CHECK(cudaMalloc(&nan_count, 8));
            CHECK(cudaMemsetAsync(nan_count, 0, 8, stream));
            count_nan<<<1024, 256, 0, stream>>>(out, (int64_t)m * n, nan_count);
            std::vector<int> rows;
            if (m <= 512) {
                for (int r = 0; r < m; ++r) rows.push_back(r);
            } else {
                for (int r = 0; r < 96; ++r) rows.push_back((int)((int64_t)r * (m - 1) / 95));
                rows.push_back(127);
                rows.push_back(128);
            }
            int *d_rows;
            double *d_ref;
            CHECK(cudaMalloc(&d_rows, rows.size() * sizeof(int)));
            CHECK(cudaMalloc(&d_ref, rows.size() * (size_t)n * sizeof(double)));
            CHECK(cudaMemcpyAsync(d_rows, rows.data(), rows.size() * sizeof(int), cudaMemcpyHostToDevice, stream));
            reference_rows<<<dim3((n + 127) / 128, (unsigned)rows.size()), 128, 0, stream>>>(x, gamma, w, d_rows, h, n,
                                                                                              1e-6f, d_ref);
            CHECK(cudaGetLastError());
            std::vector<double> ref(rows.size() * (size_t)n);
            std::vector<__nv_bfloat16> got((size_t)m * n);
            unsigned long long nans = 0;
            CHECK(cudaMemcpyAsync(ref.data(), d_ref, ref.size() * sizeof(double), cudaMemcpyDeviceToHost, stream));
            CHECK(cudaMemcpyAsync(got.data(), out, got.size() * 2, cudaMemcpyDeviceToHost, stream));
            CHECK(cudaMemcpyAsync(&nans, nan_count, 8, cudaMemcpyDeviceToHost, stream));
            CHECK(cudaStreamSynchronize(stream));
            double err2 = 0.0, ref2 = 0.0;
            for (size_t i = 0; i < rows.size(); ++i)
                for (int c = 0; c < n; ++c) {
                    const double r = ref[i * n + c], g = __bfloat162float(got[(size_t)rows[i] * n + c]);
                    err2 += (g - r) * (g - r);
                    ref2 += r * r;
                }
            const double rel = std::sqrt(err2 / ref2);
            const bool ok = nans == 0 && rel < 1e-2 && std::isfinite(rel);
            if (!ok) ++failures;

            /* timing: batches of kCalls over kCopies weight copies */
            cudaEvent_t e0, e1;
            CHECK(cudaEventCreate(&e0));
            CHECK(cudaEventCreate(&e1));
            auto time_it = [&](auto &&call) {
                std::vector<float> t;
                for (int i = 0; i < kCopies; ++i) call(i); /* warm-up (and map caches) */
                for (int r = 0; r < kReps; ++r) {
                    CHECK(cudaEventRecord(e0, stream));
                    for (int i = 0; i < kCalls; ++i) call(i % kCopies);
                    CHECK(cudaEventRecord(e1, stream));
                    CHECK(cudaEventSynchronize(e1));
                    float ms_ = 0;
                    CHECK(cudaEventElapsedTime(&ms_, e0, e1));
                    t.push_back(ms_ * 1000.0f / kCalls);
                }
                return median(t);
            };
            const float t_ours = time_it([&](int i) {
                mv_qkv_args b = a;
                b.w = w + (size_t)i * w_elems;
                CHECK((cudaError_t)mv_qkv_wgmma_cuda(&b, stream, &dev));
            });
            CHECK(cudaGetLastError());
            const float alpha = 1.0f, beta = 0.0f;
            const float t_blas = time_it([&](int i) {
                CHECK_BLAS(cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, n, m, h, &alpha, w + (size_t)i * w_elems,
                                        CUDA_R_16BF, h, y, CUDA_R_16BF, h, &beta, ref_out, CUDA_R_16BF, n,
                                        CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
            });
            CHECK(cudaGetLastError());
            const double flop = 2.0 * m * (double)n * h;
            printf("%-13s %6d %10.2f %10.2f %8.3f %9.1f %9.1f %10.2e%s\n", sh.name, m, t_ours, t_blas, t_blas / t_ours,
                   flop / t_ours * 1e-6, flop / t_blas * 1e-6, rel, ok ? "" : (nans ? "  NaN!" : "  FAIL"));
            fflush(stdout);
            CHECK(cudaEventDestroy(e0));
            CHECK(cudaEventDestroy(e1));
            for (void *ptr : {(void *)x, (void *)y, (void *)gamma, (void *)w, (void *)out, (void *)ref_out,
                              (void *)nan_count, (void *)d_rows, (void *)d_ref})
                CHECK(cudaFree(ptr));
        }
    }
    CHECK_BLAS(cublasDestroy(blas));
    printf("# %d failures\n", failures);
    return failures != 0;
}
