/*
 * probe_common.cuh: what the standalone probes in this folder share: a CUDA error check that exits
 * (a probe has no caller to return an error to), a counter-based uniform fill of 16-bit inputs on
 * the device, a QKV shape parsed from the command line and the arguments of one QKV call into a fused
 * q/k/v buffer. Not part of the library.
 */
#ifndef MINIVLLM_PROBE_COMMON_CUH
#define MINIVLLM_PROBE_COMMON_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "cuda/device.h"       /* mv_cuda_device, mv_current_device */
#include "minivllm_kernels.h" /* mv_qkv_args (the probes build with -Icsrc) */

#define CHECK(call)                                                                                  \
    do {                                                                                             \
        cudaError_t e_ = (call);                                                                     \
        if (e_ != cudaSuccess) {                                                                     \
            fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_));    \
            exit(1);                                                                                 \
        }                                                                                            \
    } while (0)

/* For probes that include cublas_v2.h or cublasLt.h (cublasStatus_t comes from there). */
#define CHECK_BLAS(call)                                                                             \
    do {                                                                                             \
        cublasStatus_t s_ = (call);                                                                  \
        if (s_ != CUBLAS_STATUS_SUCCESS) {                                                           \
            fprintf(stderr, "%s:%d %s: status %d\n", __FILE__, __LINE__, #call, (int)s_);            \
            exit(1);                                                                                 \
        }                                                                                            \
    } while (0)

/* An integer or real setting of a probe from the environment (PROBE_CYCLES, ...), or fallback. */
inline int probe_env_int(const char *name, int fallback) {
    const char *v = getenv(name);
    return v != nullptr && *v != '\0' ? atoi(v) : fallback;
}
inline double probe_env_double(const char *name, double fallback) {
    const char *v = getenv(name);
    return v != nullptr && *v != '\0' ? atof(v) : fallback;
}

/* What a QKV probe's run starts from: device 0's properties, the library's view of the current
   device (for its plans and launches) and a non-blocking stream of the probe's own. */
struct ProbeDevice {
    cudaDeviceProp prop;
    mv_cuda_device dev;
    cudaStream_t stream;
};
inline ProbeDevice probe_device() {
    ProbeDevice d;
    CHECK(cudaGetDeviceProperties(&d.prop, 0));
    CHECK(mv_current_device(&d.dev));
    CHECK(cudaStreamCreateWithFlags(&d.stream, cudaStreamNonBlocking));
    return d;
}

/* Layers (each its own W of w_bytes) for at least 256 MiB of distinct weights, 8 at least, as
   bench_fused_rms_norm_qkv cycles through them, so W comes from DRAM in every call. */
inline int probe_layers(size_t w_bytes) { return std::max(8, (int)((256ull << 20) / w_bytes + 1)); }

/* bench_fused_rms_norm_qkv's timing: record(stream) issues `calls` calls, captured once into a CUDA graph; the graph
   is replayed 25 times with events around each replay, the first 3 dropped; the median replay over
   `calls` is returned, in us per call. */
template <typename Record>
double graph_us_per_call(cudaStream_t stream, int calls, Record record) {
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    record(stream);
    CHECK(cudaStreamEndCapture(stream, &graph));
    CHECK(cudaGraphInstantiate(&exec, graph, 0));
    cudaEvent_t e0, e1;
    CHECK(cudaEventCreate(&e0));
    CHECK(cudaEventCreate(&e1));
    std::vector<double> per_call;
    for (int rep = 0; rep < 25; ++rep) {
        CHECK(cudaEventRecord(e0, stream));
        CHECK(cudaGraphLaunch(exec, stream));
        CHECK(cudaEventRecord(e1, stream));
        CHECK(cudaEventSynchronize(e1));
        float ms = 0;
        CHECK(cudaEventElapsedTime(&ms, e0, e1));
        if (rep >= 3) per_call.push_back(ms * 1000.0 / calls);
    }
    std::sort(per_call.begin(), per_call.end());
    CHECK(cudaGraphExecDestroy(exec));
    CHECK(cudaGraphDestroy(graph));
    CHECK(cudaEventDestroy(e0));
    CHECK(cudaEventDestroy(e1));
    return per_call[per_call.size() / 2];
}

/* A uniform value in [-1, 1) from element index i and a seed (splitmix64 finalizer). */
__device__ inline float hash_uniform(uint64_t i, uint64_t seed) {
    uint64_t z = i * 0x9E3779B97F4A7C15ull + seed;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return static_cast<float>(z >> 40) / static_cast<float>(1ull << 24) * 2.0f - 1.0f;
}

__device__ inline float as_float(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ inline float as_float(__half v) { return __half2float(v); }
template <typename T> __device__ T from_float(float v);
template <> __device__ inline __nv_bfloat16 from_float(float v) { return __float2bfloat16(v); }
template <> __device__ inline __half from_float(float v) { return __float2half(v); }

/* p[i] = offset + scale * (a uniform value in [-1, 1)), rounded to T. */
template <typename T>
__global__ void fill(T *p, int64_t n, uint64_t seed, float scale, float offset) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        p[i] = from_float<T>(offset + scale * hash_uniform(i, seed));
}

/* float64 rms_norm(x) . W^T for every row of one layer, one thread per (row, column). */
template <typename T>
__global__ void reference(const T *x, const T *gamma, const T *w, int h, int n, double eps, double *out) {
    const int col = blockIdx.x * blockDim.x + threadIdx.x, row = blockIdx.y;
    if (col >= n) return;
    const T *xr = x + (int64_t)row * h;
    double ss = 0.0, acc = 0.0;
    for (int k = 0; k < h; ++k) {
        const double v = as_float(xr[k]);
        ss += v * v;
        acc += v * (double)as_float(gamma[k]) * (double)as_float(w[(int64_t)col * h + k]);
    }
    out[(int64_t)row * n + col] = acc / sqrt(ss / h + eps);
}

/* out[i] = p[i] as float64 (an output beside the reference). */
template <typename T>
__global__ void to_double(const T *p, int64_t n, double *out) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        out[i] = as_float(p[i]);
}

/* The relative L2 error of got against ref; *nan set where got holds a NaN. */
inline double probe_rel_error(const std::vector<double> &ref, const std::vector<double> &got, bool *nan) {
    double e2 = 0.0, r2 = 0.0;
    *nan = false;
    for (size_t i = 0; i < ref.size(); ++i) {
        *nan |= std::isnan(got[i]);
        e2 += (got[i] - ref[i]) * (got[i] - ref[i]);
        r2 += ref[i] * ref[i];
    }
    return std::sqrt(e2 / r2);
}

/* One QKV shape: hidden size, q and k/v widths (heads x head_dim). */
struct ProbeShape {
    char name[64];
    int h, q, kv;
};

/* Parses "H,HEADS,KV_HEADS,HEAD_DIM" (the format of `minivllm-bench --qkv`; the models' values
   are in minivllm/bench/models.py, e.g. Llama-3-8B is 4096,32,8,128) into *s; 0 on success. */
inline int probe_parse_shape(const char *text, ProbeShape *s) {
    int h = 0, heads = 0, kv_heads = 0, head_dim = 0;
    if (sscanf(text, "%d,%d,%d,%d", &h, &heads, &kv_heads, &head_dim) != 4 || h < 1 || heads < 1 ||
        kv_heads < 1 || head_dim < 1)
        return 1;
    snprintf(s->name, sizeof s->name, "%s", text);
    s->h = h;
    s->q = heads * head_dim;
    s->kv = kv_heads * head_dim;
    return 0;
}

/* The shape given as argv[1] of a probe invoked as PROGRAM H,HEADS,KV_HEADS,HEAD_DIM M [M ...];
   prints the usage and returns 1 otherwise. */
inline int probe_shape_from_args(int argc, char **argv, ProbeShape *s) {
    if (argc < 3 || probe_parse_shape(argv[1], s) != 0) {
        fprintf(stderr, "usage: %s H,HEADS,KV_HEADS,HEAD_DIM M [M ...]   (e.g. 4096,32,8,128)\n",
                argv[0]);
        return 1;
    }
    return 0;
}

/* One call's arguments: x [m, h] and W [q + 2 kv, h] contiguous (nn.Linear layout), q, k, v as
   column ranges of one [m, q + 2 kv] buffer (row stride N), as a fused qkv tensor. */
inline mv_qkv_args probe_qkv_args(mv_dtype dtype, int m, const ProbeShape &sh, const void *x, const void *gamma,
                                  const void *w, void *out) {
    const int n = sh.q + 2 * sh.kv;
    unsigned char *o = static_cast<unsigned char *>(out);
    mv_qkv_args a = {};
    a.in.dtype = dtype;
    a.in.rows = m;
    a.in.hidden = sh.h;
    a.in.eps = 1e-6f;
    a.in.x = x;
    a.in.x_stride = sh.h;
    a.in.norm_weight = gamma;
    a.w = w;
    a.w_stride_n = sh.h;
    a.w_stride_k = 1;
    a.q_cols = sh.q;
    a.kv_cols = sh.kv;
    a.q = o;
    a.q_stride = n;
    a.k = o + sh.q * mv_dtype_size(dtype);
    a.k_stride = n;
    a.v = o + (sh.q + sh.kv) * mv_dtype_size(dtype);
    a.v_stride = n;
    return a;
}

#endif /* MINIVLLM_PROBE_COMMON_CUH */
