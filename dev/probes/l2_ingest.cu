/*
 * l2_ingest.cu: how many bytes a clock can one SM take in from L2 by tensor copies, with the data
 * already in L2? A probe for issue 29 (the wgmma path takes in about 26 B a clock a CTA at 64 x 192
 * tiles, dev/logs/wgmma-stage-bound-*): is that the hardware's rate or the kernel's? Not part of
 * the library.
 *
 * A 16 MiB buffer of bf16 rows of 64 (128 bytes, the kernels' 128-byte-swizzled lines) stays in L2.
 * One CTA per SM (or two) streams 8 MiB in boxes of R rows x 128 bytes of it through a ring of shared-memory
 * slots: a producer thread issues each slot's copy once a consumer warp has handed the slot back;
 * the consumer warp waits for it, reads one word and hands it back. Patterns: "distinct" (CTA c
 * reads its own run of rows) and "shared" (every CTA reads the same rows in the same order, as the
 * 32-96 CTAs of a wgmma call read one x stage). Prints, per box, ring and pattern, the bytes all
 * CTAs took in per second and per SM clock (the clock measured by clock64 over the same launch).
 *
 *   nvcc -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a -Icsrc dev/probes/l2_ingest.cu \
 *        -o l2_ingest -lcuda && ./l2_ingest
 */
#include <cuda.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>

#include "../../csrc/cuda/hopper.cuh"
#include "probe_common.cuh"

constexpr int kRows = 16 * 1024 * 1024 / 128; /* 16 MiB of 128-byte rows */
constexpr int kCtaBytes = 8 << 20;            /* bytes a CTA streams per launch */

struct Params {
    int box_rows, slots, shared_rows, boxes; /* shared_rows: every CTA reads the same rows */
};

__global__ void __launch_bounds__(64, 1) ingest(Params p, const __grid_constant__ CUtensorMap map, long long *cycles,
                                               int *sink) {
#if defined(__CUDA_ARCH__)
    extern __shared__ unsigned char raw[];
    unsigned char *ring = reinterpret_cast<unsigned char *>((reinterpret_cast<uintptr_t>(raw) + 1023) / 1024 * 1024);
    const int slot_bytes = p.box_rows * 128;
    uint64_t *full = reinterpret_cast<uint64_t *>(ring + p.slots * slot_bytes);
    uint64_t *empty = full + p.slots;
    if (threadIdx.x == 0) {
        for (int i = 0; i < p.slots; ++i) {
            mv_mbarrier_init(&full[i], 1);
            mv_mbarrier_init(&empty[i], 1);
        }
        mv_mbarrier_init_fence();
    }
    __syncthreads();
    const long long t0 = clock64();
    const int boxes_in_buffer = kRows / p.box_rows;
    const int first = p.shared_rows ? 0 : static_cast<int>(blockIdx.x) * 37;
    if (threadIdx.x == 32) {
        const uint64_t policy = mv_evict_last_policy();
        for (int i = 0; i < p.boxes; ++i) {
            const int slot = i % p.slots, round = i / p.slots;
            if (round > 0) mv_mbarrier_wait(&empty[slot], (round - 1) & 1);
            mv_mbarrier_arrive_expect_tx(&full[slot], slot_bytes);
            const int row0 = ((first + i) % boxes_in_buffer) * p.box_rows;
            mv_tensor_copy_2d(ring + slot * slot_bytes, &map, 0, row0, &full[slot], policy);
        }
    } else if (threadIdx.x < 32) {
        int acc = 0;
        for (int i = 0; i < p.boxes; ++i) {
            const int slot = i % p.slots;
            mv_mbarrier_wait(&full[slot], (i / p.slots) & 1);
            acc += reinterpret_cast<const int *>(ring + slot * slot_bytes)[threadIdx.x];
            __syncwarp();
            if (threadIdx.x == 0) mv_mbarrier_arrive(&empty[slot]);
        }
        if (acc == 0x12345678) sink[0] = acc; /* keep the reads */
        if (threadIdx.x == 0) cycles[blockIdx.x] = clock64() - t0;
    }
#endif
}

CUtensorMap make_map(void *buf, int box_rows) {
    CUtensorMap map;
    const cuuint64_t dims[2] = {64, static_cast<cuuint64_t>(kRows)};
    const cuuint64_t strides[1] = {128};
    const cuuint32_t box[2] = {64, static_cast<cuuint32_t>(box_rows)};
    const cuuint32_t unit[2] = {1, 1};
    const CUresult r = cuTensorMapEncodeTiled(&map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, buf, dims, strides, box, unit,
                                              CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                                              CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    if (r != CUDA_SUCCESS) {
        fprintf(stderr, "encode %d rows failed: %d\n", box_rows, static_cast<int>(r));
        exit(1);
    }
    return map;
}

int main() {
    int sms = 0;
    CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    void *buf = nullptr;
    CHECK(cudaMalloc(&buf, static_cast<size_t>(kRows) * 128));
    CHECK(cudaMemset(buf, 1, static_cast<size_t>(kRows) * 128));
    int *sink;
    long long *cycles;
    CHECK(cudaMalloc(&sink, 4));
    CHECK(cudaMalloc(&cycles, sizeof(long long) * 2 * sms));
    long long *host_cycles = static_cast<long long *>(malloc(sizeof(long long) * 2 * sms));
    cudaDeviceProp prop;
    CHECK(cudaGetDeviceProperties(&prop, 0));
    printf("%s, %d SMs; 16 MiB in L2, %d MiB a CTA a launch; bytes taken in by all CTAs\n", prop.name, sms,
           kCtaBytes >> 20);
    cudaEvent_t a, b;
    CHECK(cudaEventCreate(&a));
    CHECK(cudaEventCreate(&b));
    for (int shared_rows = 0; shared_rows <= 1; ++shared_rows)
        for (int per_sm = 1; per_sm <= 2; ++per_sm)
            for (const int box_rows : {64, 128, 192, 256})
                for (const int kib : {32, 64, 128, 192}) {
                    if (per_sm == 2 && kib > 96) continue;
                    const int slot_bytes = box_rows * 128, slots = kib * 1024 / slot_bytes;
                    if (slots < 2) continue;
                    const size_t smem = static_cast<size_t>(slots) * slot_bytes + 1024 + slots * 16;
                    CHECK(cudaFuncSetAttribute(ingest, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
                    const CUtensorMap map = make_map(buf, box_rows);
                    const Params prm{box_rows, slots, shared_rows, kCtaBytes / slot_bytes};
                    const int grid = sms * per_sm;
                    for (int i = 0; i < 3; ++i) ingest<<<grid, 64, smem>>>(prm, map, cycles, sink);
                    const int reps = 10;
                    CHECK(cudaEventRecord(a));
                    for (int i = 0; i < reps; ++i) ingest<<<grid, 64, smem>>>(prm, map, cycles, sink);
                    CHECK(cudaEventRecord(b));
                    CHECK(cudaEventSynchronize(b));
                    CHECK(cudaGetLastError());
                    float ms = 0;
                    CHECK(cudaEventElapsedTime(&ms, a, b));
                    CHECK(cudaMemcpy(host_cycles, cycles, sizeof(long long) * grid, cudaMemcpyDeviceToHost));
                    long long most = 0;
                    for (int c = 0; c < grid; ++c) most = host_cycles[c] > most ? host_cycles[c] : most;
                    const double bytes = static_cast<double>(grid) * prm.boxes * slot_bytes;
                    const double per_launch_s = ms * 1e-3 / reps;
                    const double ghz = most / per_launch_s / 1e9; /* the slowest CTA's clocks over the launch time */
                    printf("%-8s %d CTA/SM  box %3d rows (%5d B)  ring %3d KiB (%2d slots): %6.0f GB/s, %5.1f B a clock "
                           "an SM (SM clock ~%.2f GHz from clock64)\n",
                           shared_rows ? "shared" : "distinct", per_sm, box_rows, slot_bytes, kib, slots,
                           bytes / per_launch_s / 1e9, bytes / sms / static_cast<double>(most), ghz);
                }
    return 0;
}
