/*
 * weight_stream.cu: how fast can one CTA per SM stream a weight matrix W [N][H] (bf16) into
 * shared memory, by box shape? A probe for the QKV decode kernels' design, not part of the
 * library. Each CTA owns a contiguous range of rows (features) and walks all of H; a producer
 * thread fills a ring of shared-memory slots, the consumer warps wait for each slot, read one
 * word of it and hand it back. Eight distinct copies of W (8 x 48 MiB, one buffer) are read in
 * turn, so L2 never holds the next launch's data; a launch streams one copy (span 1: the gap
 * between back-to-back launches counts) or four (span 4: it is amortized). Prints GB/s per
 * variant (bytes of W read / time, events around 20 launches after 3 warm-ups).
 *
 *   nvcc -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a -Icsrc \
 *        dev/probes/weight_stream.cu -o weight_stream -lcuda && ./weight_stream
 *   ./weight_stream ring 64 96 128 192   a 32 KiB stage of 16 features through rings of these KiB
 *
 * Variants (tensor copies, 128-byte swizzle):
 *   tma F x L      the 3-D view [N][H / 64][64]: one box = F features x L lines of 64 k
 *                  (F * L * 128 bytes, each feature's L lines contiguous), per ring slot
 *   ... permuted   the view [H / 64][N][64] (strides not increasing): the same bytes land as L
 *                  slabs of F rows x 128 bytes, the layout wgmma reads
 *   ldg U          no copy engine: 256 threads each with U 16-byte loads in flight
 */
#include <cuda.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>

#include "../../csrc/cuda/hopper.cuh"
#include "probe_common.cuh"


constexpr int kN = 6144, kH = 4096, kCopies = 8;
constexpr int kConsumers = 256;

struct Params {
    int box_features, box_lines, slots, permuted; /* permuted: the view [H / 64][N][64] */
    int row0, rows;                               /* the rows this launch streams */
};

__global__ void __launch_bounds__(kConsumers + 32, 1) tma_stream(Params p, const __grid_constant__ CUtensorMap map,
                                                                 int *sink) {
#if defined(__CUDA_ARCH__)
    extern __shared__ unsigned char raw[];
    unsigned char *ring = reinterpret_cast<unsigned char *>((reinterpret_cast<uintptr_t>(raw) + 1023) / 1024 * 1024);
    const int slot_bytes = p.box_features * p.box_lines * 128;
    uint64_t *full = reinterpret_cast<uint64_t *>(ring + p.slots * slot_bytes);
    uint64_t *empty = full + p.slots;
    const int f0 = p.row0 + static_cast<int>(static_cast<long>(p.rows) * blockIdx.x / gridDim.x);
    const int f1 = p.row0 + static_cast<int>(static_cast<long>(p.rows) * (blockIdx.x + 1) / gridDim.x);
    const int feature_boxes = (f1 - f0 + p.box_features - 1) / p.box_features;
    const int line_boxes = (kH / 64) / p.box_lines;
    const int total = feature_boxes * line_boxes;
    if (threadIdx.x == 0) {
        for (int i = 0; i < p.slots; ++i) {
            mv_mbarrier_init(&full[i], 1);
            mv_mbarrier_init(&empty[i], kConsumers / 32);
        }
        mv_mbarrier_init_fence();
    }
    __syncthreads();
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (warp == kConsumers / 32) {
        if (lane == 0) {
            const uint64_t policy = mv_evict_first_policy();
            for (int i = 0; i < total; ++i) {
                const int slot = i % p.slots, round = i / p.slots;
                if (round > 0) mv_mbarrier_wait(&empty[slot], (round - 1) & 1);
                mv_mbarrier_arrive_expect_tx(&full[slot], slot_bytes);
                /* feature-box outer, line-box inner: each CTA walks its rows k-first */
                const int line0 = (i % line_boxes) * p.box_lines, feature0 = f0 + (i / line_boxes) * p.box_features;
                if (p.permuted)
                    mv_tensor_copy_3d(ring + slot * slot_bytes, &map, 0, feature0, line0, &full[slot], policy);
                else
                    mv_tensor_copy_3d(ring + slot * slot_bytes, &map, 0, line0, feature0, &full[slot], policy);
            }
        }
        return;
    }
    int acc = 0;
    for (int i = 0; i < total; ++i) {
        const int slot = i % p.slots;
        mv_mbarrier_wait(&full[slot], (i / p.slots) & 1);
        acc += reinterpret_cast<const int *>(ring + slot * slot_bytes)[threadIdx.x];
        __syncwarp();
        if (lane == 0) mv_mbarrier_arrive(&empty[slot]);
    }
    if (acc == 0x12345678) sink[0] = acc; /* keep the reads */
#endif
}

template <int U>
__global__ void __launch_bounds__(kConsumers, 1) ldg_stream(const uint4 *w, long rows, int *sink) {
    const long f0 = rows * blockIdx.x / gridDim.x;
    const long f1 = rows * (blockIdx.x + 1) / gridDim.x;
    const uint4 *begin = w + f0 * (kH / 8), *end = w + f1 * (kH / 8);
    unsigned acc = 0;
    for (const uint4 *p = begin + threadIdx.x; p < end; p += kConsumers * U) {
        uint4 v[U];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const uint4 *q = p + kConsumers * u;
            if (q < end)
                asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];\n"
                             : "=r"(v[u].x), "=r"(v[u].y), "=r"(v[u].z), "=r"(v[u].w)
                             : "l"(q));
            else
                v[u] = make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < U; ++u) acc ^= v[u].x ^ v[u].w;
    }
    if (acc == 0x12345678u) sink[0] = static_cast<int>(acc);
}

typedef CUresult (*EncodeFn)(CUtensorMap *, CUtensorMapDataType, cuuint32_t, void *, const cuuint64_t *,
                             const cuuint64_t *, const cuuint32_t *, const cuuint32_t *, CUtensorMapInterleave,
                             CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

CUtensorMap make_map(void *w, int box_features, int box_lines, bool permuted) {
    CUtensorMap map;
    cuuint64_t dims[3] = {64, kH / 64, static_cast<cuuint64_t>(kN) * kCopies};
    cuuint64_t strides[2] = {128, static_cast<cuuint64_t>(kH) * 2};
    cuuint32_t box[3] = {64, static_cast<cuuint32_t>(box_lines), static_cast<cuuint32_t>(box_features)};
    if (permuted) { /* [H / 64][N][64]: a box lands as box_lines slabs of box_features rows x 128 bytes */
        dims[1] = static_cast<cuuint64_t>(kN) * kCopies;
        dims[2] = kH / 64;
        strides[0] = static_cast<cuuint64_t>(kH) * 2;
        strides[1] = 128;
        box[1] = static_cast<cuuint32_t>(box_features);
        box[2] = static_cast<cuuint32_t>(box_lines);
    }
    const cuuint32_t unit[3] = {1, 1, 1};
    const CUresult r = cuTensorMapEncodeTiled(&map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 3, w, dims, strides, box, unit,
                                              CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                                              CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    if (r != CUDA_SUCCESS) {
        fprintf(stderr, "encode %d x %d (permuted %d) failed: %d\n", box_features, box_lines, (int)permuted,
                static_cast<int>(r));
        exit(1);
    }
    return map;
}

/* GB/s of W read by launch(first_copy) over 20 launches after 3 warm-ups, each launch
   streaming `span` consecutive copies (the copies rotate so L2 never holds the next one). */
template <typename Launch>
double time_gbps(int span, Launch launch) {
    cudaEvent_t a, b;
    CHECK(cudaEventCreate(&a));
    CHECK(cudaEventCreate(&b));
    const int starts = kCopies / span;
    for (int i = 0; i < 3; ++i) launch((i % starts) * span);
    CHECK(cudaEventRecord(a));
    const int reps = 20;
    for (int i = 0; i < reps; ++i) launch((i % starts) * span);
    CHECK(cudaEventRecord(b));
    CHECK(cudaEventSynchronize(b));
    CHECK(cudaGetLastError());
    float ms = 0;
    CHECK(cudaEventElapsedTime(&ms, a, b));
    return static_cast<double>(kN) * kH * 2 * span * reps / (ms * 1e-3) / 1e9;
}

int main(int argc, char **argv) {
    int sms = 0;
    CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    const size_t bytes = static_cast<size_t>(kN) * kH * 2;
    char *w = nullptr;
    CHECK(cudaMalloc(&w, bytes * kCopies));
    CHECK(cudaMemset(w, 1, bytes * kCopies));
    int *sink;
    CHECK(cudaMalloc(&sink, 4));
    printf("W %d x %d bf16 (%.1f MiB), %d copies, %d SMs; span = copies streamed per launch\n", kN, kH,
           bytes / 1048576.0, kCopies, sms);

    if (argc > 2 && argv[1][0] == 'r') {
        /* "ring KIB ...": a stage like the tensor-copy QKV stream's (16 features; 16 lines, 32 KiB, where the
           stream takes 12 at half an SM: 12 does not divide this H's 64 lines, and this kernel reads whole
           boxes only) through rings of these sizes, 1 and 2 CTAs an SM: the rate by bytes in flight */
        for (int span : {1, 4})
            for (int a = 2; a < argc; ++a)
                for (int grid_per_sm = 1; grid_per_sm <= 2; ++grid_per_sm) {
                    const int kib = atoi(argv[a]), slot_bytes = 16 * 16 * 128, slots = kib * 1024 / slot_bytes;
                    const size_t smem = slots * slot_bytes + 1024 + slots * 16;
                    if (slots < 2 || smem * grid_per_sm > 227u * 1024) continue;
                    CHECK(cudaFuncSetAttribute(tma_stream, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
                    const CUtensorMap map = make_map(w, 16, 16, false);
                    const double gbps = time_gbps(span, [&](int first) {
                        Params prm{16, 16, slots, 0, first * kN, span * kN};
                        tma_stream<<<sms * grid_per_sm, kConsumers + 32, smem>>>(prm, map, sink);
                    });
                    printf("span %d: tma 16 features x 16 lines, ring %3d KiB (%2d slots), %d CTA/SM (%3d KiB in flight "
                           "an SM): %7.0f GB/s\n",
                           span, slots * slot_bytes / 1024, slots, grid_per_sm, slots * slot_bytes * grid_per_sm / 1024,
                           gbps);
                }
        return 0;
    }
    struct Shape { int features, lines, permuted; };
    const Shape shapes[] = {{64, 1, 0}, {64, 2, 0}, {16, 12, 0}, {64, 4, 1}, {16, 4, 0}, {16, 12, 1}};
    for (int span : {1, 4}) {
        for (int grid_per_sm = 1; grid_per_sm <= 2; ++grid_per_sm) {
            for (const Shape &s : shapes) {
                const int kib = 96;
                const int slot_bytes = s.features * s.lines * 128;
                const int slots = kib * 1024 / slot_bytes;
                const size_t smem = slots * slot_bytes + 1024 + slots * 16;
                CHECK(cudaFuncSetAttribute(tma_stream, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
                const CUtensorMap map = make_map(w, s.features, s.lines, s.permuted != 0);
                const int grid = sms * grid_per_sm;
                const double gbps = time_gbps(span, [&](int first) {
                    Params prm{s.features, s.lines, slots, s.permuted, first * kN, span * kN};
                    tma_stream<<<grid, kConsumers + 32, smem>>>(prm, map, sink);
                });
                printf("span %d: tma %3d features x %2d lines%s (%5d B/box), ring %3d KiB (%2d slots), %d CTA/SM: "
                       "%7.0f GB/s\n",
                       span, s.features, s.lines, s.permuted ? " permuted" : "         ", slot_bytes, kib, slots,
                       grid_per_sm, gbps);
            }
        }
        for (int grid_per_sm = 1; grid_per_sm <= 4; grid_per_sm *= 2) {
            const int grid = sms * grid_per_sm;
            printf("span %d: ldg U=8, %d CTA/SM: %7.0f GB/s\n", span, grid_per_sm, time_gbps(span, [&](int first) {
                       ldg_stream<8><<<grid, kConsumers>>>(reinterpret_cast<const uint4 *>(w + first * bytes),
                                                          static_cast<long>(span) * kN, sink);
                   }));
        }
    }
    return 0;
}
