/*
 * probe_common.cuh: what the standalone probes in this folder share: a CUDA error check that exits
 * (a probe has no caller to return an error to) and a counter-based uniform hash for filling inputs
 * on the device. Not part of the library.
 */
#ifndef MINIVLLM_PROBE_COMMON_CUH
#define MINIVLLM_PROBE_COMMON_CUH

#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>

#define CHECK(call)                                                                                  \
    do {                                                                                             \
        cudaError_t e_ = (call);                                                                     \
        if (e_ != cudaSuccess) {                                                                     \
            fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_));    \
            exit(1);                                                                                 \
        }                                                                                            \
    } while (0)

/* A uniform value in [-1, 1) from element index i and a seed (splitmix64 finalizer). */
__device__ inline float hash_uniform(uint64_t i, uint64_t seed) {
    uint64_t z = i * 0x9E3779B97F4A7C15ull + seed;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return static_cast<float>(z >> 40) / static_cast<float>(1ull << 24) * 2.0f - 1.0f;
}

#endif /* MINIVLLM_PROBE_COMMON_CUH */
