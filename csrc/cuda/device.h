/*
 * device.h: what the launchers need to know of the current device, and how they launch
 * with programmatic dependent launch (PDL). Host side, C++ (the .cu files); device.cu.
 */
#ifndef MINIVLLM_CUDA_DEVICE_H
#define MINIVLLM_CUDA_DEVICE_H

#include <cuda_runtime.h>
#include <dlfcn.h>

#include <cuda.h> /* CUtensorMap and its enums (types only: libcuda is not linked) */

#include <atomic>
#include <cstdint>

/* The current device's properties, read once per device (they cannot change in a process). */
struct mv_cuda_device {
    int device;           /* ordinal */
    int sms;              /* multiprocessors */
    int major;            /* compute capability major */
    int minor;            /* and minor (sm_90a code runs only on 9.0) */
    int max_shared_block; /* opt-in shared memory per block, bytes */
    int max_shared_sm;    /* shared memory per multiprocessor, bytes */
    int reserved_shared;  /* shared memory the system reserves per block, bytes */
    int dram_gbps;        /* peak DRAM bandwidth, GB/s, from the memory clock and bus width (0: not
                             reported); the dispatcher tells an H100 (3352) from an H200 (4810) by it */
};

/* Per-device caches (these properties, and the launchers' own) hold this many devices; a device
   with a higher ordinal still works, uncached. */
constexpr int mv_max_cached_devices = 64;

cudaError_t mv_current_device(mv_cuda_device *out);

/* Whether a kernel that supports programmatic dependent launch (PDL) is launched with it:
   requested is the call's MV_PDL_* option; the default is on unless the process was started with
   MINIVLLM_PDL=0 (read once: the documented process-wide switch). Only sm_90 and later have it. Such
   a kernel may start before the previous kernel on the stream ends; it calls mv_pdl_wait()
   (common.cuh) before it reads what that kernel may write, and mv_pdl_trigger() to let its own
   successor start. */
bool mv_pdl_use(int requested, const mv_cuda_device &dev);

/* A tensor map of a 16-bit (bf16 or fp16) tensor of rank 2 or 3 for the copy engine: dims
   innermost first, strides (bytes) of dims 1.., box in elements; 128-byte swizzle, 256-byte L2
   promotion, zeros outside the tensor. With cached, from a small per-thread cache keyed by every
   input of the encode (so an entry is never stale, even for a new tensor at a freed one's
   address): for weights, whose maps a model asks for once per layer; activations change address
   from call to call and are encoded afresh. False where the driver lacks the encoder or rejects
   the map. */
bool mv_swizzled_tensor_map(CUtensorMap *map, bool bf16, int rank, const void *data, const cuuint64_t *dims,
                            const cuuint64_t *strides, const cuuint32_t *box, bool cached);
/* Whether the driver can encode tensor maps at all. */
bool mv_tensor_maps_available();

/* How many blocks of kernel (threads each, smem bytes of dynamic shared memory) one multiprocessor
   of `device` holds at once: cudaOccupancyMaxActiveBlocksPerMultiprocessor's answer, kept in a
   small per-thread cache keyed by all four (the query cost 0.1-0.3 us of host time on every eager
   call that asked it). A kernel above 48 KiB must have opted in (mv_allow_shared) first. */
cudaError_t mv_blocks_per_sm_of(int *blocks, const void *kernel, int threads, size_t smem, int device);
template <typename Kernel>
cudaError_t mv_blocks_per_sm(int *blocks, Kernel kernel, int threads, size_t smem, int device) {
    return mv_blocks_per_sm_of(blocks, reinterpret_cast<const void *>(kernel), threads, smem, device);
}

/* A GEMM tile, rows x columns. */
struct mv_tile_shape {
    int rows, cols;
};

/* Launches kernel (a __global__ function's address) with params (the address of each argument,
   as the kernel's parameter types), with the PDL attribute when pdl is true and in thread-block
   clusters of `cluster` CTAs along x when cluster > 1: through the driver's cuLaunchKernelEx,
   0.2-0.7 us of host time a launch less than the runtime's cudaLaunchKernelEx
   (dev/logs/launch-host-cost-*). Returns the launch's error, else the runtime's last error, so
   no launch site checks it again. */
cudaError_t mv_launch_params(const void *kernel, dim3 grid, dim3 block, size_t smem, cudaStream_t stream, bool pdl,
                             unsigned cluster, void **params);
/* The same for a function of a module loaded at run time (norm_jit.cu). */
cudaError_t mv_launch_function(CUfunction function, dim3 grid, dim3 block, size_t smem, cudaStream_t stream, bool pdl,
                               unsigned cluster, void **params);

/* A driver entry point, found through the runtime (minivllm does not link libcuda); null where the
   driver lacks it. */
void *mv_driver_entry(const char *name);

/* A CUDA library dlopen-ed by soname (a PyTorch or CuPy process has its own loaded, which the soname
   finds), then from the library folder of the toolkit the module was built with (a build option,
   MINIVLLM_CUDA_LIB_DIR, set by setup.py) and /usr/local/cuda; never unloaded. Null where none
   loads. No environment variable is read. */
void *mv_open_cuda_library(const char *soname);
/* fn = lib's symbol `name` (a function pointer of its type); false where lib lacks it. */
template <typename Fn>
bool mv_bind(void *lib, const char *name, Fn &fn) {
    fn = reinterpret_cast<Fn>(dlsym(lib, name));
    return fn != nullptr;
}

/* kernel<<<grid, block, smem, stream>>>(args...), with the PDL attribute when pdl is true and in
   thread-block clusters of `cluster` CTAs along x when cluster > 1. Each argument is converted
   to its parameter's type first, as the runtime's launch template does. */
template <typename... Params, typename... Args>
cudaError_t mv_launch_clusters(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                               bool pdl, unsigned cluster, Args &&...args) {
    static_assert(sizeof...(Params) == sizeof...(Args), "one argument per kernel parameter");
    return [&](Params... converted) {
        void *params[] = {const_cast<void *>(static_cast<const void *>(&converted))..., nullptr};
        return mv_launch_params(reinterpret_cast<const void *>(kernel), grid, block, smem, stream, pdl, cluster,
                                params);
    }(static_cast<Args &&>(args)...);
}

/* kernel<<<grid, block, smem, stream>>>(args...), with the PDL attribute when pdl is true. */
template <typename... Params, typename... Args>
cudaError_t mv_launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream, bool pdl,
                      Args &&...args) {
    return mv_launch_clusters(kernel, grid, block, smem, stream, pdl, 1u, static_cast<Args &&>(args)...);
}

/* Kernels whose dynamic shared memory exceeds the 48 KiB default must opt in first. The default
   covers static and dynamic shared memory together, and smem here is the dynamic part only: every
   kernel launched through this declares no static shared memory (one that did would need the
   opt-in from 48 KiB minus its static bytes; an experiment's 512 static bytes beside 48 KiB of
   dynamic were refused at launch with cudaErrorInvalidValue). The opt-in is
   a driver call on the host path of a launch, so each kernel keeps (in a static
   mv_shared_opt_in of its launcher) the most it has opted into per device and calls again only to
   raise it. Racing threads at worst both make the call; the cache only ever grows. */
struct mv_shared_opt_in {
    std::atomic<int> opted[mv_max_cached_devices];
};

/* The one opt-in cache of kernel K. Every caller that raises K's limit must share it: the call
   sets the limit, so with two caches one caller could lower it under the other, whose next larger
   launch then failed ("invalid argument": the engine's stream-K after a cluster-split query). */
template <auto K>
mv_shared_opt_in &mv_opt_in_of() {
    static mv_shared_opt_in cache;
    return cache;
}

template <typename Kernel>
cudaError_t mv_allow_shared(Kernel kernel, size_t smem, mv_shared_opt_in &cache, int device) {
    if (smem <= 48 * 1024) return cudaSuccess;
    const int bytes = static_cast<int>(smem);
    const bool cached = device >= 0 && device < mv_max_cached_devices;
    if (cached && cache.opted[device].load(std::memory_order_relaxed) >= bytes) return cudaSuccess;
    const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
    if (err == cudaSuccess && cached) {
        int seen = cache.opted[device].load(std::memory_order_relaxed);
        while (seen < bytes && !cache.opted[device].compare_exchange_weak(seen, bytes)) {
        }
    }
    return err;
}

/* Whether `clusters` clusters of `cluster` CTAs of kernel (`threads` each, smem bytes of dynamic
   shared memory) are resident at once: the device's answer, kept per device and cluster size in
   `cache` (a kernel asks with one smem per cluster size). False where the query fails. */
constexpr int mv_max_cluster = 8; /* the portable cluster size */
struct mv_cluster_occupancy {
    std::atomic<int> known[mv_max_cached_devices][mv_max_cluster + 1]; /* most clusters + 1; 0: unasked */
};

template <typename Kernel>
bool mv_clusters_fit(Kernel kernel, unsigned threads, size_t smem, int cluster, int64_t clusters,
                     mv_shared_opt_in &opt_in, mv_cluster_occupancy &cache, int device) {
    if (cluster < 1 || cluster > mv_max_cluster) return false;
    const bool cached = device >= 0 && device < mv_max_cached_devices;
    int most = cached ? cache.known[device][cluster].load(std::memory_order_relaxed) - 1 : -1;
    if (most < 0) {
        if (mv_allow_shared(kernel, smem, opt_in, device) != cudaSuccess) return false;
        cudaLaunchConfig_t config = {};
        config.gridDim = dim3(static_cast<unsigned>(cluster));
        config.blockDim = dim3(threads);
        config.dynamicSmemBytes = smem;
        cudaLaunchAttribute attribute = {};
        attribute.id = cudaLaunchAttributeClusterDimension;
        attribute.val.clusterDim.x = static_cast<unsigned>(cluster);
        attribute.val.clusterDim.y = attribute.val.clusterDim.z = 1;
        config.attrs = &attribute;
        config.numAttrs = 1;
        if (cudaOccupancyMaxActiveClusters(&most, kernel, &config) != cudaSuccess) {
            (void)cudaGetLastError();
            return false;
        }
        if (cached) cache.known[device][cluster].store(most + 1, std::memory_order_relaxed);
    }
    return clusters <= most;
}

#endif /* MINIVLLM_CUDA_DEVICE_H */
