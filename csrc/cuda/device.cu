/*
 * device.cu: the device properties, the PDL switch and the tensor maps of device.h.
 */
#include "cuda/device.h"
#include "minivllm_kernels.h" /* MV_PDL_* */

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>

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
    /* Not every platform reports the memory clock (the attribute may read 0, or fail): then 0. */
    int memory_khz = 0, bus_bits = 0;
    if (cudaDeviceGetAttribute(&memory_khz, cudaDevAttrMemoryClockRate, device) != cudaSuccess ||
        cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, device) != cudaSuccess) {
        (void)cudaGetLastError();
        memory_khz = bus_bits = 0;
    }
    /* two transfers per clock, bus_bits / 8 bytes each */
    d.dram_gbps = static_cast<int>(2.0 * memory_khz * 1e3 * (bus_bits / 8.0) / 1e9);
    if (device >= 0 && device < mv_max_cached_devices) { /* racing threads store the same values */
        cache[device] = d;
        ready[device].store(true, std::memory_order_release);
    }
    *out = d;
    return cudaSuccess;
}

extern "C" int mv_cuda_dram_gbps(int *gbps) {
    mv_cuda_device d;
    const cudaError_t err = mv_current_device(&d);
    *gbps = err == cudaSuccess ? d.dram_gbps : 0;
    return static_cast<int>(err);
}

bool mv_pdl_use(int requested, const mv_cuda_device &dev) {
    static const bool process_default = [] {
        const char *v = getenv("MINIVLLM_PDL");
        return v == nullptr || strcmp(v, "0") != 0;
    }();
    if (dev.major < 9 || requested == MV_PDL_OFF) return false;
    return requested == MV_PDL_ON || process_default;
}

void *mv_driver_entry(const char *name) {
    void *p = nullptr;
    cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
    if (cudaGetDriverEntryPointByVersion(name, &p, 12000, cudaEnableDefault, &found) != cudaSuccess ||
        found != cudaDriverEntryPointSuccess)
        p = nullptr;
    (void)cudaGetLastError();
    return p;
}

namespace {

/* cuTensorMapEncodeTiled, found once. */
typedef CUresult (*EncodeTiledFn)(CUtensorMap *, CUtensorMapDataType, cuuint32_t, void *, const cuuint64_t *,
                                  const cuuint64_t *, const cuuint32_t *, const cuuint32_t *, CUtensorMapInterleave,
                                  CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);
EncodeTiledFn encode_tiled() {
    static const EncodeTiledFn fn = reinterpret_cast<EncodeTiledFn>(mv_driver_entry("cuTensorMapEncodeTiled"));
    return fn;
}

/* cuLaunchKernelEx, found once. */
using LaunchExFn = CUresult (*)(const CUlaunchConfig *, CUfunction, void **, void **);
LaunchExFn driver_launch() {
    static const LaunchExFn fn = reinterpret_cast<LaunchExFn>(mv_driver_entry("cuLaunchKernelEx"));
    return fn;
}

constexpr int kMaxRank = 3;

struct TensorMapKey {
    const void *data;
    int rank, bf16;
    cuuint64_t dims[kMaxRank], strides[kMaxRank - 1];
    cuuint32_t box[kMaxRank];
};

struct TensorMapEntry {
    TensorMapKey key;
    bool valid;
    CUtensorMap map; /* 64-byte aligned by its own declaration */
};
constexpr int kTensorMapCacheSize = 64; /* direct-mapped; a power of two */

bool same_key(const TensorMapKey &a, const TensorMapKey &b) {
    if (a.data != b.data || a.rank != b.rank || a.bf16 != b.bf16) return false;
    for (int i = 0; i < a.rank; ++i)
        if (a.dims[i] != b.dims[i] || a.box[i] != b.box[i] || (i > 0 && a.strides[i - 1] != b.strides[i - 1]))
            return false;
    return true;
}

} // namespace

namespace {
struct OccupancyEntry {
    const void *kernel; /* null: empty */
    int threads, device, blocks;
    size_t smem;
};
constexpr int kOccupancyCacheSize = 32; /* direct-mapped; a power of two */
} // namespace

cudaError_t mv_blocks_per_sm_of(int *blocks, const void *kernel, int threads, size_t smem, int device) {
    static thread_local OccupancyEntry cache[kOccupancyCacheSize];
    const uintptr_t h = reinterpret_cast<uintptr_t>(kernel);
    OccupancyEntry &e =
        cache[((h >> 4) ^ (h >> 12) ^ static_cast<uintptr_t>(threads >> 5) ^ static_cast<uintptr_t>(device) ^
               static_cast<uintptr_t>(smem >> 10)) &
              (kOccupancyCacheSize - 1)];
    if (e.kernel == kernel && e.threads == threads && e.smem == smem && e.device == device) {
        *blocks = e.blocks;
        return cudaSuccess;
    }
    const cudaError_t err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(blocks, kernel, threads, smem);
    if (err == cudaSuccess) e = OccupancyEntry{kernel, threads, device, *blocks, smem};
    return err;
}

bool mv_tensor_maps_available() { return encode_tiled() != nullptr; }

bool mv_swizzled_tensor_map(CUtensorMap *map, bool bf16, int rank, const void *data, const cuuint64_t *dims,
                            const cuuint64_t *strides, const cuuint32_t *box, bool cached) {
    const EncodeTiledFn encode = encode_tiled();
    if (encode == nullptr || rank < 2 || rank > kMaxRank) return false;
    TensorMapKey key = {};
    key.data = data;
    key.rank = rank;
    key.bf16 = bf16 ? 1 : 0;
    for (int i = 0; i < rank; ++i) {
        key.dims[i] = dims[i];
        key.box[i] = box[i];
        if (i > 0) key.strides[i - 1] = strides[i - 1];
    }
    static thread_local TensorMapEntry cache[kTensorMapCacheSize];
    const uintptr_t h = reinterpret_cast<uintptr_t>(data);
    /* the outermost box size too: a launcher may keep two maps of one tensor (bulk_stream.cu's tail) */
    TensorMapEntry &e = cache[((h >> 8) ^ (h >> 20) ^ box[1] ^ (box[rank - 1] * 3u)) & (kTensorMapCacheSize - 1)];
    if (cached && e.valid && same_key(e.key, key)) {
        *map = e.map;
        return true;
    }
    const cuuint32_t unit[kMaxRank] = {1, 1, 1};
    const bool ok = encode(map, bf16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
                           static_cast<cuuint32_t>(rank), const_cast<void *>(data), dims, strides, box, unit,
                           CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                           CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
    if (ok && cached) {
        e.key = key;
        e.valid = true;
        e.map = *map;
    }
    return ok;
}

#ifndef MINIVLLM_CUDA_LIB_DIR
#define MINIVLLM_CUDA_LIB_DIR "/usr/local/cuda/lib64/" /* setup.py passes the building toolkit's */
#endif

void *mv_open_cuda_library(const char *soname) {
    void *lib = dlopen(soname, RTLD_NOW | RTLD_LOCAL);
    if (lib) return lib;
    for (const char *dir : {MINIVLLM_CUDA_LIB_DIR, "/usr/local/cuda/lib64/", "/usr/local/cuda/lib/"}) {
        lib = dlopen((std::string(dir) + soname).c_str(), RTLD_NOW | RTLD_LOCAL);
        if (lib) return lib;
    }
    return nullptr;
}

cudaError_t mv_launch_params(const void *kernel, dim3 grid, dim3 block, size_t smem, cudaStream_t stream, bool pdl,
                             unsigned cluster, void **params) {
    /* the kernel's handle in the current device's context, looked up each launch (~0.1 us): a
       cached one would go stale with that context */
    cudaFunction_t function = nullptr;
    const cudaError_t found = cudaGetFuncBySymbol(&function, kernel);
    if (found != cudaSuccess) return found;
    return mv_launch_function(reinterpret_cast<CUfunction>(function), grid, block, smem, stream, pdl, cluster, params);
}

cudaError_t mv_launch_function(CUfunction function, dim3 grid, dim3 block, size_t smem, cudaStream_t stream, bool pdl,
                               unsigned cluster, void **params) {
    /* every driver that runs this runtime (CUDA 13 needs r580) has cuLaunchKernelEx (12.0) */
    const LaunchExFn launch = driver_launch();
    if (launch == nullptr) return cudaErrorCallRequiresNewerDriver;
    CUlaunchAttribute attributes[2] = {};
    unsigned count = 0;
    if (pdl) {
        attributes[count].id = CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
        attributes[count++].value.programmaticStreamSerializationAllowed = 1;
    }
    if (cluster > 1) {
        attributes[count].id = CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION;
        attributes[count].value.clusterDim.x = cluster;
        attributes[count].value.clusterDim.y = 1;
        attributes[count++].value.clusterDim.z = 1;
    }
    CUlaunchConfig config = {};
    config.gridDimX = grid.x;
    config.gridDimY = grid.y;
    config.gridDimZ = grid.z;
    config.blockDimX = block.x;
    config.blockDimY = block.y;
    config.blockDimZ = block.z;
    config.sharedMemBytes = static_cast<unsigned>(smem);
    config.hStream = reinterpret_cast<CUstream>(stream);
    config.attrs = attributes;
    config.numAttrs = count;
    /* CUresult and cudaError_t share the codes a launch returns (invalid value, out of resources,
       invalid handle, the stream-capture errors) */
    const cudaError_t err = static_cast<cudaError_t>(launch(&config, function, params, nullptr));
    /* then the runtime's last error, once here for every launch (an earlier asynchronous failure) */
    return err != cudaSuccess ? err : cudaGetLastError();
}
