/*
 * qkv_stream_probe.cu: the W-stream kernels (csrc/cuda/fused_rms_norm_qkv/{register,bulk,deferred}_stream.cu), or the one-kernel
 * wgmma path (csrc/cuda/fused_rms_norm_qkv/wgmma.cu, PROBE_PATH=wgmma, bf16), alone, timed as
 * bench_fused_rms_norm_qkv times them, without building the Python module: a CUDA graph of PROBE_CYCLES (default
 * 4) passes over one call per layer (distinct weights, >= 256 MiB in all), replayed 25 times;
 * prints the median us per call next to what W's bytes take at PROBE_STREAM_GBPS (default 4100,
 * the rate dev/probes/weight_stream.cu measured). One call's output is checked against a
 * float64 reference first (NaN-poisoned before). The GPU is kept busy for PROBE_WARMUP_S seconds
 * (default 2) before anything is measured. bf16; PROBE_DTYPE=float16 for fp16. Its figures match
 * qkv_profile.py --time within ~0.2 us (H200, 2026-11-22). Not part of the library.
 *
 *   nvcc -std=c++17 -O3 --expt-relaxed-constexpr -Icsrc -gencode=arch=compute_90a,code=sm_90a \
 *        -DMINIVLLM_HAVE_SM90A dev/probes/qkv_stream_probe.cu csrc/cuda/fused_rms_norm_qkv/{register,bulk,deferred}_stream.cu \
 *        csrc/cuda/fused_rms_norm_qkv/wgmma.cu csrc/cuda/device.cu -lcuda -o qkv_stream_probe
 *   PROBE_PATH=deferred|stream|bulk|wgmma ./qkv_stream_probe 4096,32,8,128 1 8 16
 */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "cuda/fused_rms_norm_qkv/paths.h"
#include "probe_common.cuh"

/* The dispatcher's (fused_rms_norm_qkv.cu, not linked here): PROBE_PATH=bulk keeps the stream path
   on its tensor-copy kernel, as _path='bulk' does. */
mv_qkv_path mv_qkv_forced_path() {
    const char *p = getenv("PROBE_PATH");
    return p != nullptr && strcmp(p, "bulk") == 0 ? mv_qkv_path::bulk_stream : mv_qkv_path::automatic;
}



template <typename T>
int run(const ProbeShape &sh, const std::vector<int> &ms, mv_dtype dtype) {
    const char *path = getenv("PROBE_PATH") ? getenv("PROBE_PATH") : "deferred";
    const double stream_gbps = probe_env_double("PROBE_STREAM_GBPS", 4100.0);
    const int cycles = probe_env_int("PROBE_CYCLES", 4);
    const bool deferred = strcmp(path, "deferred") == 0;
    const bool wgmma = strcmp(path, "wgmma") == 0;
    const ProbeDevice probe = probe_device(); /* named references: lambdas below capture them */
    const cudaDeviceProp &prop = probe.prop;
    const mv_cuda_device &dev = probe.dev;
    cudaStream_t stream = probe.stream;
    const int n = sh.q + 2 * sh.kv, h = sh.h;
    const size_t w_bytes = (size_t)n * h * 2;
    const int layers = probe_layers(w_bytes);
    printf("# %s, %s, %s, path %s, %d layers of %.1f MiB x %d passes per graph, PDL %s\n", prop.name, sh.name,
           dtype == MV_FLOAT16 ? "fp16" : "bf16", path, layers, w_bytes / 1048576.0, cycles,
           mv_pdl_enabled(dev) ? "on" : "off");
    printf("%4s %9s %9s %10s\n", "M", "us/call", "W at rate", "rel_err");
    int failures = 0;
    T *w, *gamma;
    CHECK(cudaMalloc(&w, w_bytes * layers));
    CHECK(cudaMalloc(&gamma, (size_t)h * 2));
    fill<<<4096, 256, 0, stream>>>(w, (int64_t)(w_bytes / 2) * layers, 99, 0.05f, 0.0f);
    fill<<<64, 256, 0, stream>>>(gamma, h, 98, 0.5f, 1.0f);
    CHECK(cudaGetLastError());
    {
        /* A GPU that has been idle runs its first second or so slower: keep it busy first. */
        const double warm_s = probe_env_double("PROBE_WARMUP_S", 2.0);
        cudaEvent_t a, b;
        CHECK(cudaEventCreate(&a));
        CHECK(cudaEventCreate(&b));
        CHECK(cudaEventRecord(a, stream));
        for (float ms = 0.0f; ms < warm_s * 1000.0;) {
            for (int i = 0; i < 20; ++i) fill<<<4096, 256, 0, stream>>>(w, (int64_t)(w_bytes / 2) * layers, 99, 0.05f, 0.0f);
            CHECK(cudaEventRecord(b, stream));
            CHECK(cudaEventSynchronize(b));
            CHECK(cudaEventElapsedTime(&ms, a, b));
        }
        CHECK(cudaEventDestroy(a));
        CHECK(cudaEventDestroy(b));
    }
    for (const int m : ms) {
        T *x, *out;
        double *ref, *got64;
        CHECK(cudaMalloc(&x, (size_t)layers * m * h * 2));
        CHECK(cudaMalloc(&out, (size_t)layers * m * n * 2));
        CHECK(cudaMalloc(&ref, (size_t)m * n * sizeof(double)));
        CHECK(cudaMalloc(&got64, (size_t)m * n * sizeof(double)));
        fill<<<1024, 256, 0, stream>>>(x, (int64_t)layers * m * h, 1000 + m, 2.0f, 0.0f);
        CHECK(cudaGetLastError());
        auto args_of = [&](int layer) {
            return probe_qkv_args(dtype, m, sh, x + (size_t)layer * m * h, gamma, w + (size_t)layer * (w_bytes / 2),
                                  out + (size_t)layer * m * n);
        };
        auto call = [&](int layer) {
            const mv_qkv_args a = args_of(layer);
            return deferred ? mv_qkv_deferred_cuda(&a, stream, &dev)
                   : wgmma  ? mv_qkv_wgmma_cuda(&a, stream, &dev)
                            : mv_qkv_stream_cuda(&a, stream, 0, &dev);
        };
        const mv_qkv_args a0 = args_of(0);
        if (!(deferred ? mv_qkv_deferred_supported(&a0, &dev)
              : wgmma  ? mv_qkv_wgmma_supported(&a0, &dev)
                       : mv_qkv_stream_supported(&a0, &dev))) {
            printf("%4d not supported on %s\n", m, path);
            continue;
        }
        /* correctness of layer 0 */
        CHECK(cudaMemsetAsync(out, 0xff, (size_t)m * n * 2, stream)); /* 0xffff: NaN in fp16 and bf16 */
        const int rc = call(0);
        if (rc != 0) {
            printf("%4d launch: %s\n", m, cudaGetErrorString((cudaError_t)rc));
            ++failures;
            continue;
        }
        CHECK(cudaGetLastError());
        reference<<<dim3((n + 127) / 128, m), 128, 0, stream>>>(x, gamma, w, h, n, 1e-6, ref);
        to_double<<<256, 256, 0, stream>>>(out, (int64_t)m * n, got64);
        CHECK(cudaGetLastError());
        std::vector<double> r((size_t)m * n), g((size_t)m * n);
        CHECK(cudaMemcpyAsync(r.data(), ref, r.size() * sizeof(double), cudaMemcpyDeviceToHost, stream));
        CHECK(cudaMemcpyAsync(g.data(), got64, g.size() * sizeof(double), cudaMemcpyDeviceToHost, stream));
        CHECK(cudaStreamSynchronize(stream));
        bool nan = false;
        const double rel = probe_rel_error(r, g, &nan);
        const bool ok = !nan && rel < 1e-2;
        failures += !ok;

        const double us = graph_us_per_call(stream, layers * cycles, [&](cudaStream_t) {
            for (int c = 0; c < cycles; ++c)
                for (int l = 0; l < layers; ++l) CHECK((cudaError_t)call(l));
        });
        printf("%4d %9.2f %9.2f %10.2e%s\n", m, us, w_bytes / stream_gbps * 1e-3, rel,
               ok ? "" : (nan ? " NaN!" : " FAIL"));
        fflush(stdout);
        for (void *p : {(void *)x, (void *)out, (void *)ref, (void *)got64}) CHECK(cudaFree(p));
    }
    CHECK(cudaFree(w));
    CHECK(cudaFree(gamma));
    CHECK(cudaStreamDestroy(stream));
    printf("# %d failures\n", failures);
    return failures;
}

int main(int argc, char **argv) {
    ProbeShape shape;
    if (probe_shape_from_args(argc, argv, &shape) != 0) return 2;
    const ProbeShape *sh = &shape;
    std::vector<int> ms;
    for (int i = 2; i < argc; ++i) ms.push_back(atoi(argv[i]));
    const char *dt = getenv("PROBE_DTYPE");
    const bool fp16 = dt != nullptr && strcmp(dt, "float16") == 0;
    return (fp16 ? run<__half>(*sh, ms, MV_FLOAT16) : run<__nv_bfloat16>(*sh, ms, MV_BFLOAT16)) != 0;
}
