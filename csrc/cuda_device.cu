/*
 * cuda_device.cu: the device properties, the PDL switch and the tensor-map encoder of cuda_device.h.
 */
#include "cuda_device.h"

#include <atomic>
#include <cstdlib>
#include <cstring>

cudaError_t mv_current_device(mv_cuda_device *out) {
    static mv_cuda_device cache[mv_max_cached_devices];
    static std::atomic<bool> ready[mv_max_cached_devices];
    int device = 0;
    cudaError_t err = cudaGetDevice(&device);
    if (err != cudaSuccess) return err;
    if (device >= 0 && device < mv_max_cached_devices && ready[device].load(std::memory_order_acquire)) {
        *out = cache[device];
        return cudaSuccess;
    }
    mv_cuda_device d;
    d.device = device;
    err = cudaDeviceGetAttribute(&d.sms, cudaDevAttrMultiProcessorCount, device);
    if (err == cudaSuccess) err = cudaDeviceGetAttribute(&d.major, cudaDevAttrComputeCapabilityMajor, device);
    if (err == cudaSuccess) err = cudaDeviceGetAttribute(&d.minor, cudaDevAttrComputeCapabilityMinor, device);
    if (err == cudaSuccess)
        err = cudaDeviceGetAttribute(&d.max_shared_block, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
    if (err == cudaSuccess)
        err = cudaDeviceGetAttribute(&d.max_shared_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device);
    if (err == cudaSuccess)
        err = cudaDeviceGetAttribute(&d.reserved_shared, cudaDevAttrReservedSharedMemoryPerBlock, device);
    if (err != cudaSuccess) return err;
    if (device >= 0 && device < mv_max_cached_devices) { /* racing threads store the same values */
        cache[device] = d;
        ready[device].store(true, std::memory_order_release);
    }
    *out = d;
    return cudaSuccess;
}

bool mv_pdl_enabled(const mv_cuda_device &dev) {
    static const bool allowed = [] {
        const char *v = getenv("MINIVLLM_PDL");
        return v == nullptr || strcmp(v, "0") != 0;
    }();
    return allowed && dev.major >= 9;
}

mv_encode_tiled_fn mv_tensor_map_encoder() {
    static const mv_encode_tiled_fn fn = [] {
        void *p = nullptr;
        cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
        if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &found) !=
                cudaSuccess ||
            found != cudaDriverEntryPointSuccess)
            p = nullptr;
        (void)cudaGetLastError();
        return reinterpret_cast<mv_encode_tiled_fn>(p);
    }();
    return fn;
}
