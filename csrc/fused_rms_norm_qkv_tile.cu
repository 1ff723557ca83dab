/*
 * fused_rms_norm_qkv_tile.cu: the middle-M path of qkv = rms_norm(x (+ residual)) . W^T (batched
 * decode and short prefill; fp16/bf16, nn.Linear layout): the rms_norm kernel writes y into
 * stream-ordered scratch, then our own tensor-core GEMM multiplies it by W^T straight into q, k, v.
 *
 * Why not cuBLASLt here: at these M the GEMM is a short stream over W, and the two dependent
 * kernels (norm, then GEMM) each pay launch-to-launch latency. This GEMM is launched with
 * programmatic dependent launch: its blocks start while the norm runs and request their first
 * stages of W (a model constant) before waiting for it; only the reads of y wait.
 *
 * Why not the norm folded into the GEMM (operand s * gamma, rows scaled by rrms in the epilogue):
 * measured (H200, bf16): every column block then re-does the elementwise work on its x tiles, N /
 * BN times over, and that work outweighed the mma instructions about 20 to 1 (Qwen3-0.6B M = 256:
 * 29 us against 9.3 for norm + cuBLASLt).
 *
 * - Block: 4 warps (2 x 2), tile BM tokens x BN features, K in steps of 64 (one 128-byte line per
 *   row); a ring of shared-memory stages filled by cp.async (16-byte pieces, zeros past M, N and
 *   H); piece j of line r stored at piece j ^ (r % 8), so cp.async writes and ldmatrix reads are
 *   free of bank conflicts. mma.sync m16n8k16, fp32 accumulate: sm_80 and later.
 * - Numerics: those of the norm + cuBLASLt path (y rounded to the dtype, fp32 accumulation).
 */
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "cuda_common.cuh"
#include "fused_rms_norm_qkv_paths.h"

namespace {

constexpr int kThreads = 128; /* 4 warps, 2 x 2 over the block tile */
constexpr int kBK = 64;       /* k per stage: one 128-byte line per row */
constexpr int kPieces = 8;    /* 16-byte pieces per line */
constexpr int kLineBytes = 128;

__device__ __forceinline__ uint32_t shared_address(const void *p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

/* 16 bytes global -> shared, bypassing L1; src_bytes 0 fills the 16 bytes with zeros. */
__device__ __forceinline__ void cp_async16(void *dst, const void *src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(shared_address(dst)), "l"(src),
                 "r"(src_bytes)
                 : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const void *p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(shared_address(p)));
}

template <typename T>
__device__ __forceinline__ void mma16816(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    if constexpr (std::is_same<T, __nv_bfloat16>::value)
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                     "{%0,%1,%2,%3};\n"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    else
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                     "{%0,%1,%2,%3};\n"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/* Byte offset of 16-byte piece j of line `row` in a stage (the XOR swizzle above). */
__device__ __forceinline__ int swizzled(int row, int piece) {
    return row * kLineBytes + ((piece ^ (row & 7)) << 4);
}

template <int BM, int BN>
constexpr int kStageBytes = (BM + BN) * kLineBytes; /* y rows, then W rows */

/* D[m0 .. m0 + BM, n0 .. n0 + BN] = y . W^T, stored to q, k, v. */
template <typename T, int BM, int BN, int kStages>
__global__ void __launch_bounds__(kThreads) qkv_tile_gemm_kernel(const T *__restrict__ y, mv_qkv_args args) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    constexpr int kMT = BM / 32, kNT = BN / 16; /* per warp: 16-row and 8-column mma tiles */
    constexpr int kRowsPerPass = kThreads / kPieces; /* 16 */
    extern __shared__ __align__(128) unsigned char ring[];

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int warp_m = warp >> 1, warp_n = warp & 1;
    const int piece = tid % kPieces, row_in_pass = tid / kPieces;
    const int64_t m0 = static_cast<int64_t>(blockIdx.x) * BM, n0 = static_cast<int64_t>(blockIdx.y) * BN;
    const int64_t rows = args.in.rows, hidden = args.in.hidden, cols = args.q_cols + 2 * args.kv_cols;
    const int k_steps = static_cast<int>((hidden + kBK - 1) / kBK);
    const T *w = static_cast<const T *>(args.w);

    mv_pdl_trigger(); /* the next kernel may start streaming its weights; it waits for us before reading ours */

    auto load_w = [&](int step) {
        unsigned char *stage = ring + (step % kStages) * kStageBytes<BM, BN> + BM * kLineBytes;
        const int64_t k = static_cast<int64_t>(step) * kBK + piece * 8;
#pragma unroll
        for (int p = 0; p < BN / kRowsPerPass; ++p) {
            const int r = row_in_pass + p * kRowsPerPass;
            const int64_t n = n0 + r;
            const bool ok = n < cols && k < hidden;
            cp_async16(stage + swizzled(r, piece), ok ? w + n * args.w_stride_n + k : w, ok ? 16 : 0);
        }
    };
    auto load_y = [&](int step) {
        unsigned char *stage = ring + (step % kStages) * kStageBytes<BM, BN>;
        const int64_t k = static_cast<int64_t>(step) * kBK + piece * 8;
#pragma unroll
        for (int p = 0; p < BM / kRowsPerPass; ++p) {
            const int r = row_in_pass + p * kRowsPerPass;
            const int64_t m = m0 + r;
            const bool ok = m < rows && k < hidden;
            cp_async16(stage + swizzled(r, piece), ok ? y + m * hidden + k : y, ok ? 16 : 0);
        }
    };

    /* Prologue: W of the first kStages - 1 steps in one group, requested before waiting for the
       norm kernel (W is a model constant), then y of each of those steps in its own group; so at
       step i the groups still allowed in flight are those of steps i + 1 ... i + kStages - 2. */
    for (int s = 0; s < kStages - 1; ++s)
        if (s < k_steps) load_w(s);
    cp_async_commit();
    mv_pdl_wait();
    for (int s = 0; s < kStages - 1; ++s) {
        if (s < k_steps) load_y(s);
        cp_async_commit();
    }

    float acc[kMT][kNT][4];
#pragma unroll
    for (int i = 0; i < kMT; ++i)
#pragma unroll
        for (int j = 0; j < kNT; ++j) acc[i][j][0] = acc[i][j][1] = acc[i][j][2] = acc[i][j][3] = 0.0f;

    for (int step = 0; step < k_steps; ++step) {
        cp_async_wait<kStages - 2>();
        __syncthreads(); /* step's stage is complete for every thread; all are done with step - 1's slot */
        {
            const int next = step + kStages - 1;
            if (next < k_steps) {
                load_w(next);
                load_y(next);
            }
            cp_async_commit();
        }
        const unsigned char *ys = ring + (step % kStages) * kStageBytes<BM, BN>;
        const unsigned char *ws = ys + BM * kLineBytes;
#pragma unroll
        for (int ks = 0; ks < kBK / 16; ++ks) {
            uint32_t a[kMT][4];
#pragma unroll
            for (int i = 0; i < kMT; ++i) {
                const int r = warp_m * (BM / 2) + i * 16 + (lane & 15);
                ldmatrix_x4(a[i], ys + swizzled(r, ks * 2 + (lane >> 4)));
            }
#pragma unroll
            for (int jp = 0; jp < kNT / 2; ++jp) {
                uint32_t b[4];
                const int r = warp_n * (BN / 2) + jp * 16 + (lane & 7) + ((lane >> 4) << 3);
                ldmatrix_x4(b, ws + swizzled(r, ks * 2 + ((lane >> 3) & 1)));
#pragma unroll
                for (int i = 0; i < kMT; ++i) {
                    mma16816<T>(acc[i][2 * jp], a[i], b[0], b[1]);
                    mma16816<T>(acc[i][2 * jp + 1], a[i], b[2], b[3]);
                }
            }
        }
    }
    cp_async_wait<0>();

    /* Epilogue: accumulator c of mma tile (i, j) is row 16 i + g + 8 (c / 2), column 8 j + 2 t + c % 2;
       adjacent column pairs go out as one 4-byte store where q, k and v allow it. */
    const bool pairs = args.q_cols % 2 == 0 && args.kv_cols % 2 == 0 &&
                       ((reinterpret_cast<uintptr_t>(args.q) | reinterpret_cast<uintptr_t>(args.k) |
                         reinterpret_cast<uintptr_t>(args.v)) & 3) == 0 &&
                       ((args.q_stride | args.k_stride | args.v_stride) & 1) == 0;
    const int g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int i = 0; i < kMT; ++i)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int64_t m = m0 + warp_m * (BM / 2) + i * 16 + g + 8 * h;
            if (m >= rows) continue;
#pragma unroll
            for (int j = 0; j < kNT; ++j) {
                const int64_t n = n0 + warp_n * (BN / 2) + j * 8 + 2 * t;
                const float v0 = acc[i][j][2 * h], v1 = acc[i][j][2 * h + 1];
                if (pairs && n + 1 < cols) {
                    T pair[2] = {mv_from_float<T>(v0), mv_from_float<T>(v1)};
                    *reinterpret_cast<uint32_t *>(mv_qkv_output<T>(args, m, n)) = *reinterpret_cast<uint32_t *>(pair);
                } else {
                    if (n < cols) mv_store_float(mv_qkv_output<T>(args, m, n), v0);
                    if (n + 1 < cols) mv_store_float(mv_qkv_output<T>(args, m, n + 1), v1);
                }
            }
        }
#endif
}

struct TileShape {
    int bm, bn;
};

/* The tile shapes, largest first. The launcher takes the first that still gives every SM a block
   (or the smallest); MINIVLLM_QKV_TILE=BMxBN forces one (benchmarks). Small tiles get more
   stages, so a block still keeps tens of KiB of W in flight. */
constexpr TileShape kShapes[] = {{128, 128}, {64, 128}, {64, 64}, {32, 64}, {32, 32}};
constexpr int stages_for(int bm, int bn) { return bm * bn >= 128 * 128 ? 3 : bm * bn >= 64 * 64 ? 4 : bm * bn >= 32 * 64 ? 6 : 8; }

TileShape forced_shape() {
    static const TileShape shape = [] {
        TileShape s = {0, 0};
        const char *v = getenv("MINIVLLM_QKV_TILE");
        if (v == nullptr) return s;
        int bm = 0, bn = 0;
        if (sscanf(v, "%dx%d", &bm, &bn) != 2) return s;
        for (const TileShape &c : kShapes)
            if (c.bm == bm && c.bn == bn) s = c;
        return s;
    }();
    return shape;
}

template <typename T, int BM, int BN>
cudaError_t launch_shape(const T *y, const mv_qkv_args &a, cudaStream_t stream, const mv_cuda_device &dev) {
    constexpr int kStages = stages_for(BM, BN);
    constexpr size_t smem = static_cast<size_t>(kStages) * kStageBytes<BM, BN>;
    if (smem > static_cast<size_t>(dev.max_shared_block)) return cudaErrorNotSupported;
    void (*kernel)(const T *, mv_qkv_args) = qkv_tile_gemm_kernel<T, BM, BN, kStages>;
    /* Above 48 KiB a kernel must opt in, once per device (a driver call: not on every launch). */
    static std::atomic<bool> opted[mv_max_cached_devices];
    if (smem > 48 * 1024 && (dev.device >= mv_max_cached_devices || !opted[dev.device].load())) {
        const cudaError_t err =
            cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
        if (err != cudaSuccess) return err;
        if (dev.device < mv_max_cached_devices) opted[dev.device].store(true);
    }
    const int64_t cols = a.q_cols + 2 * a.kv_cols;
    const dim3 grid(static_cast<unsigned>((a.in.rows + BM - 1) / BM), static_cast<unsigned>((cols + BN - 1) / BN));
    const cudaError_t err = mv_launch(kernel, grid, dim3(kThreads), smem, stream, mv_pdl_enabled(dev), y, a);
    return err != cudaSuccess ? err : cudaGetLastError();
}

template <typename T>
cudaError_t launch_typed(const void *y, const mv_qkv_args &a, TileShape shape, cudaStream_t stream,
                         const mv_cuda_device &dev) {
    const T *yt = static_cast<const T *>(y);
    if (shape.bm == 128) return launch_shape<T, 128, 128>(yt, a, stream, dev);
    if (shape.bm == 64 && shape.bn == 128) return launch_shape<T, 64, 128>(yt, a, stream, dev);
    if (shape.bm == 64) return launch_shape<T, 64, 64>(yt, a, stream, dev);
    if (shape.bn == 64) return launch_shape<T, 32, 64>(yt, a, stream, dev);
    return launch_shape<T, 32, 32>(yt, a, stream, dev);
}

TileShape choose_shape(int64_t rows, int64_t cols, int sms) {
    const TileShape forced = forced_shape();
    if (forced.bm != 0) return forced;
    for (const TileShape &s : kShapes) {
        const int64_t blocks = (rows + s.bm - 1) / s.bm * ((cols + s.bn - 1) / s.bn);
        if (blocks >= sms) return s;
    }
    return kShapes[sizeof(kShapes) / sizeof(kShapes[0]) - 1];
}

} // namespace

extern "C" int mv_qkv_tile_supported(const mv_qkv_args *a) {
    if (a->in.dtype != MV_BFLOAT16 && a->in.dtype != MV_FLOAT16) return 0;
    if (a->in.rows < 1 || a->in.hidden % 8 != 0) return 0;
    if (a->w_stride_k != 1 || !mv_aligned16(a->w, a->w_stride_n, 2)) return 0;
    const int64_t cols = a->q_cols + 2 * a->kv_cols;
    return (cols + 31) / 32 <= 65535;
}

extern "C" int mv_qkv_tile_cuda(const mv_qkv_args *a, void *stream, const mv_cuda_device *dev) {
    cudaStream_t s = static_cast<cudaStream_t>(stream);
    const size_t y_bytes = static_cast<size_t>(a->in.rows * a->in.hidden) * 2;
    void *y = nullptr;
    cudaError_t err = static_cast<cudaError_t>(mv_qkv_scratch_alloc(&y, y_bytes, stream, dev->device));
    if (err != cudaSuccess) return static_cast<int>(err);

    mv_rms_norm_args norm;
    norm.in = a->in; /* also writes residual_out when there is a residual (in place allowed) */
    norm.out = y;
    norm.out_stride = a->in.hidden;
    err = static_cast<cudaError_t>(mv_rms_norm_cuda(&norm, stream));
    if (err == cudaSuccess) {
        const TileShape shape = choose_shape(a->in.rows, a->q_cols + 2 * a->kv_cols, dev->sms);
        err = a->in.dtype == MV_BFLOAT16 ? launch_typed<__nv_bfloat16>(y, *a, shape, s, *dev)
                                         : launch_typed<__half>(y, *a, shape, s, *dev);
    }
    const cudaError_t free_err = cudaFreeAsync(y, s);
    return static_cast<int>(err != cudaSuccess ? err : free_err);
}
