// Host cost of the CUDA runtime calls on a launch's path (us per call, GPU held busy by a spin
// kernel so no call waits for it): what a few-us eager call can afford.
// nvcc -O2 -arch=sm_90 dev/probes/cuda_host_calls.cu -o /tmp/cuda_host_calls && /tmp/cuda_host_calls
#include <chrono>
#include <cstdio>
#include <cuda.h>
#include <cuda_runtime.h>

__global__ void spin(long long cycles) {
    const long long start = clock64();
    while (clock64() - start < cycles) {
    }
}
__global__ void empty(int) {}
__global__ void empty_smem(int) { extern __shared__ char s[]; if (threadIdx.x == 1000) s[0] = 0; }
struct Big { char bytes[512]; };
__global__ void empty_big(Big) {}

template <typename F> double us_per(F f, int n = 256) {
    double best = 1e9;
    for (int rep = 0; rep < 9; rep++) {
        spin<<<1, 1>>>(2000000000LL / 100); // ~10 ms at ~2 GHz
        const auto t0 = std::chrono::steady_clock::now();
        for (int i = 0; i < n; i++) f();
        const auto t1 = std::chrono::steady_clock::now();
        cudaDeviceSynchronize();
        const double us = std::chrono::duration<double, std::micro>(t1 - t0).count() / n;
        if (us < best) best = us;
    }
    return best;
}

int main() {
    cudaStream_t s;
    cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
    cudaFuncSetAttribute(empty_smem, cudaFuncAttributeMaxDynamicSharedMemorySize, 100 * 1024);
    empty<<<1, 32, 0, s>>>(0);
    cudaDeviceSynchronize();
    int dev = 0, v = 0;
    cudaLaunchAttribute pdl = {};
    pdl.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    pdl.val.programmaticStreamSerializationAllowed = 1;
    auto launch = [&](auto kernel, unsigned grid, unsigned block, size_t smem, bool with_pdl, auto arg) {
        cudaLaunchConfig_t c = {};
        c.gridDim = dim3(grid); c.blockDim = dim3(block); c.dynamicSmemBytes = smem; c.stream = 0;
        c.attrs = &pdl; c.numAttrs = with_pdl ? 1 : 0;
        cudaLaunchKernelEx(&c, kernel, arg);
    };
    printf("(min of 9 bursts of 256 calls, us per call)\n");
    printf("cudaGetDevice                         %6.3f\n", us_per([&] { cudaGetDevice(&dev); }));
    printf("cudaSetDevice (same)                  %6.3f\n", us_per([&] { cudaSetDevice(0); }));
    printf("cudaGetLastError                      %6.3f\n", us_per([&] { (void)cudaGetLastError(); }));
    printf("cudaDeviceGetAttribute (SM count)     %6.3f\n", us_per([&] { cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, 0); }));
    cudaStreamCaptureStatus st;
    printf("cudaStreamIsCapturing                 %6.3f\n", us_per([&] { cudaStreamIsCapturing(0, &st); }));
    printf("cudaFuncSetAttribute (smem, same)     %6.3f\n", us_per([&] { cudaFuncSetAttribute(empty_smem, cudaFuncAttributeMaxDynamicSharedMemorySize, 100 * 1024); }));
    printf("cudaOccupancyMaxActiveBlocksPerSM     %6.3f\n", us_per([&] { cudaOccupancyMaxActiveBlocksPerMultiprocessor(&v, empty_smem, 256, 100 * 1024); }));
    printf("launch <<<>>> empty                   %6.3f\n", us_per([&] { empty<<<1, 32>>>(0); }));
    printf("cudaLaunchKernelEx empty              %6.3f\n", us_per([&] { launch(empty, 1, 32, 0, false, 0); }));
    printf("cudaLaunchKernelEx empty + PDL        %6.3f\n", us_per([&] { launch(empty, 1, 32, 0, true, 0); }));
    printf("cudaLaunchKernelEx 132x256, 100KB+PDL %6.3f\n", us_per([&] { launch(empty_smem, 132, 256, 100 * 1024, true, 0); }));
    Big b = {};
    printf("cudaLaunchKernelEx 512-byte param+PDL %6.3f\n", us_per([&] { launch(empty_big, 132, 256, 0, true, b); }));
    printf("2 launches + PDL (empty)              %6.3f\n", us_per([&] { launch(empty, 1, 32, 0, true, 0); launch(empty, 1, 32, 0, true, 0); }));
    // the same launch through the driver (cuLaunchKernelEx from the runtime's entry-point table,
    // the kernel's CUfunction looked up once): what the runtime's own launch path adds
    typedef CUresult (*launch_ex_fn)(const CUlaunchConfig *, CUfunction, void **, void **);
    launch_ex_fn cu_launch = nullptr;
    cudaDriverEntryPointQueryResult found;
    cudaGetDriverEntryPointByVersion("cuLaunchKernelEx", (void **)&cu_launch, 12000,
                                     cudaEnableDefault, &found);
    cudaFunction_t fn = nullptr;
    cudaGetFuncBySymbol(&fn, (const void *)empty);
    CUlaunchAttribute cu_pdl = {};
    cu_pdl.id = CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
    cu_pdl.value.programmaticStreamSerializationAllowed = 1;
    auto cu = [&](CUstream stream, bool with_pdl) {
        int arg = 0;
        void *params[] = {&arg};
        CUlaunchConfig c = {};
        c.gridDimX = c.gridDimY = c.gridDimZ = 1;
        c.blockDimX = 32; c.blockDimY = c.blockDimZ = 1;
        c.hStream = stream; c.attrs = &cu_pdl; c.numAttrs = with_pdl ? 1 : 0;
        cu_launch(&c, (CUfunction)fn, params, nullptr);
    };
    if (cu_launch && fn) {
        printf("cuLaunchKernelEx empty + PDL          %6.3f\n", us_per([&] { cu(0, true); }));
        printf("cuLaunchKernelEx empty + PDL, stream  %6.3f\n", us_per([&] { cu((CUstream)s, true); }));
        cudaFunction_t again = nullptr;
        printf("cudaGetFuncBySymbol                   %6.3f\n", us_per([&] { cudaGetFuncBySymbol(&again, (const void *)empty); }));
    } else {
        printf("cuLaunchKernelEx: not found\n");
    }
    auto on_stream = [&](bool with_pdl) {
        cudaLaunchConfig_t c = {};
        c.gridDim = dim3(1); c.blockDim = dim3(32); c.stream = s;
        c.attrs = &pdl; c.numAttrs = with_pdl ? 1 : 0;
        cudaLaunchKernelEx(&c, empty, 0);
    };
    printf("cudaLaunchKernelEx empty + PDL, stream%6.3f\n", us_per([&] { on_stream(true); }));
    printf("last error: %s\n", cudaGetErrorString(cudaGetLastError()));
    return 0;
}
