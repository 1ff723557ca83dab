// Host cost of the CUDA runtime calls on a launch's path (us per call, GPU held busy by a spin
// kernel so no call waits for it): what a few-us eager call can afford.
// nvcc -O2 -arch=sm_90 dev/probes/cuda_host_calls.cu -o /tmp/cuda_host_calls && /tmp/cuda_host_calls
#include <chrono>
#include <cstdio>
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
    printf("last error: %s\n", cudaGetErrorString(cudaGetLastError()));
    return 0;
}
