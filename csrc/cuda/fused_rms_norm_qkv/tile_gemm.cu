/*
 * tile_gemm.cu: minivllm's own tensor-core GEMM for the norm + GEMM path of
 * qkv = rms_norm(x (+ residual)) . W^T (norm_cublaslt.cu runs the norm into scratch, then this or
 * cuBLASLt): y . W^T straight into q, k, v; fp16/bf16, nn.Linear layout. It is the GEMM where
 * libcublasLt cannot be loaded: 10-22x faster than the generic kernel, 1.3-3x slower than cuBLASLt
 * (dev/logs/qkv-tile-nvidia-h200-2026-11-22.log).
 *
 * Launched with programmatic dependent launch: its blocks start while the norm runs and request
 * their first stages of W (a model constant) before waiting for it; only the reads of y wait.
 *
 * Why not the norm folded into the GEMM: every column block would re-do the elementwise work on its
 * x tiles, N / BN times over; measured bound by instruction issue (docs/design.md).
 *
 * - Block: 4 warps (2 x 2), tile BM tokens x BN features, K in steps of 64 (one 128-byte line per
 *   row); a ring of shared-memory stages filled by cp.async (16-byte pieces, zeros past M, N and
 *   H); piece j of line r stored at piece j ^ (r % 8), so cp.async writes and ldmatrix reads are
 *   free of bank conflicts. mma.sync m16n8k16, fp32 accumulate: sm_80 and later.
 * - Numerics: those of the norm + cuBLASLt path (y rounded to the dtype, fp32 accumulation).
 */
#include <cstdint>

#include "cuda/common.cuh"
#include "cuda/fused_rms_norm_qkv/paths.h"

namespace {

constexpr int kThreads = 128; /* 4 warps, 2 x 2 over the block tile */
constexpr int kBK = 64;       /* k per stage: one 128-byte line per row */
constexpr int kPieces = 8;    /* 16-byte pieces per line */
constexpr int kLineBytes = 128;

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

    /* Rows [first, first + kRows) of a row-major source (zeros from row `limit` on, and past H)
       into the stage's lines starting at byte `offset`: this thread's piece of every 16th row. */
    auto load_rows = [&](auto rows_tag, int step, int offset, const T *src, int64_t stride, int64_t first,
                         int64_t limit) {
        constexpr int kRows = decltype(rows_tag)::value;
        unsigned char *lines = ring + (step % kStages) * kStageBytes<BM, BN> + offset;
        const int64_t k = static_cast<int64_t>(step) * kBK + piece * 8;
#pragma unroll
        for (int p = 0; p < kRows / kRowsPerPass; ++p) {
            const int r = row_in_pass + p * kRowsPerPass;
            const bool ok = first + r < limit && k < hidden;
            mv_cp_async16(lines + swizzled(r, piece), ok ? src + (first + r) * stride + k : src, ok ? 16 : 0);
        }
    };
    auto load_w = [&](int step) {
        load_rows(std::integral_constant<int, BN>(), step, BM * kLineBytes, w, args.w_stride_n, n0, cols);
    };
    auto load_y = [&](int step) { load_rows(std::integral_constant<int, BM>(), step, 0, y, hidden, m0, rows); };

    /* Prologue: W of the first kStages - 1 steps in one group, requested before waiting for the
       norm kernel (W is a model constant), then y of each of those steps in its own group; so at
       step i the groups still allowed in flight are those of steps i + 1 ... i + kStages - 2. */
    for (int s = 0; s < kStages - 1; ++s)
        if (s < k_steps) load_w(s);
    mv_cp_async_commit();
    mv_pdl_wait();
    for (int s = 0; s < kStages - 1; ++s) {
        if (s < k_steps) load_y(s);
        mv_cp_async_commit();
    }

    float acc[kMT][kNT][4];
#pragma unroll
    for (int i = 0; i < kMT; ++i)
#pragma unroll
        for (int j = 0; j < kNT; ++j) acc[i][j][0] = acc[i][j][1] = acc[i][j][2] = acc[i][j][3] = 0.0f;

    for (int step = 0; step < k_steps; ++step) {
        mv_cp_async_wait<kStages - 2>();
        __syncthreads(); /* step's stage is complete for every thread; all are done with step - 1's slot */
        {
            const int next = step + kStages - 1;
            if (next < k_steps) {
                load_w(next);
                load_y(next);
            }
            mv_cp_async_commit();
        }
        const unsigned char *ys = ring + (step % kStages) * kStageBytes<BM, BN>;
        const unsigned char *ws = ys + BM * kLineBytes;
#pragma unroll
        for (int ks = 0; ks < kBK / 16; ++ks) {
            uint32_t a[kMT][4];
#pragma unroll
            for (int i = 0; i < kMT; ++i) {
                const int r = warp_m * (BM / 2) + i * 16 + (lane & 15);
                mv_ldmatrix_x4(a[i], ys + swizzled(r, ks * 2 + (lane >> 4)));
            }
#pragma unroll
            for (int jp = 0; jp < kNT / 2; ++jp) {
                uint32_t b[4];
                const int r = warp_n * (BN / 2) + jp * 16 + (lane & 7) + ((lane >> 4) << 3);
                mv_ldmatrix_x4(b, ws + swizzled(r, ks * 2 + ((lane >> 3) & 1)));
#pragma unroll
                for (int i = 0; i < kMT; ++i) {
                    mv_mma_16x8x16<T>(acc[i][2 * jp], a[i][0], a[i][1], a[i][2], a[i][3], b[0], b[1]);
                    mv_mma_16x8x16<T>(acc[i][2 * jp + 1], a[i][0], a[i][1], a[i][2], a[i][3], b[2], b[3]);
                }
            }
        }
    }
    mv_cp_async_wait<0>();

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

/* The tile shapes, largest first. The launcher takes the first that still gives every SM a block
   (or the smallest). Small tiles get more stages, so a block still keeps tens of KiB of W in
   flight. */
constexpr mv_tile_shape kShapes[] = {{128, 128}, {64, 128}, {64, 64}, {32, 64}, {32, 32}};
constexpr int stages_for(int bm, int bn) { return bm * bn >= 128 * 128 ? 3 : bm * bn >= 64 * 64 ? 4 : bm * bn >= 32 * 64 ? 6 : 8; }

template <typename T, int BM, int BN>
cudaError_t launch_shape(const T *y, const mv_qkv_args &a, cudaStream_t stream, const mv_cuda_device &dev, bool pdl) {
    constexpr int kStages = stages_for(BM, BN);
    constexpr size_t smem = static_cast<size_t>(kStages) * kStageBytes<BM, BN>;
    if (smem > static_cast<size_t>(dev.max_shared_block)) return cudaErrorNotSupported;
    void (*kernel)(const T *, mv_qkv_args) = qkv_tile_gemm_kernel<T, BM, BN, kStages>;
    static mv_shared_opt_in opt_in;
    cudaError_t err = mv_allow_shared(kernel, smem, opt_in, dev.device);
    if (err != cudaSuccess) return err;
    const int64_t cols = a.q_cols + 2 * a.kv_cols;
    const dim3 grid(static_cast<unsigned>((a.in.rows + BM - 1) / BM), static_cast<unsigned>((cols + BN - 1) / BN));
    return mv_launch(kernel, grid, dim3(kThreads), smem, stream, pdl, y, a);
}

template <typename T>
cudaError_t launch_typed(const void *y, const mv_qkv_args &a, mv_tile_shape shape, cudaStream_t stream,
                         const mv_cuda_device &dev, bool pdl) {
    const T *yt = static_cast<const T *>(y);
    if (shape.rows == 128) return launch_shape<T, 128, 128>(yt, a, stream, dev, pdl);
    if (shape.rows == 64 && shape.cols == 128) return launch_shape<T, 64, 128>(yt, a, stream, dev, pdl);
    if (shape.rows == 64) return launch_shape<T, 64, 64>(yt, a, stream, dev, pdl);
    if (shape.cols == 64) return launch_shape<T, 32, 64>(yt, a, stream, dev, pdl);
    return launch_shape<T, 32, 32>(yt, a, stream, dev, pdl);
}

mv_tile_shape choose_shape(int64_t rows, int64_t cols, int sms) {
    for (const mv_tile_shape &s : kShapes) {
        const int64_t blocks = (rows + s.rows - 1) / s.rows * ((cols + s.cols - 1) / s.cols);
        if (blocks >= sms) return s;
    }
    return kShapes[sizeof(kShapes) / sizeof(kShapes[0]) - 1];
}

} // namespace

bool mv_qkv_tile_gemm_supported(const mv_qkv_args &a, const mv_cuda_device &dev) {
    if (dev.major < 8) return false; /* cp.async, ldmatrix */
    if (a.in.dtype != MV_BFLOAT16 && a.in.dtype != MV_FLOAT16) return false;
    if (a.in.rows < 1 || a.in.hidden % 8 != 0) return false;
    if (a.w_stride_k != 1 || !mv_aligned16(a.w, a.w_stride_n, 2)) return false;
    const int64_t cols = a.q_cols + 2 * a.kv_cols;
    return (cols + 31) / 32 <= 65535;
}

cudaError_t mv_qkv_tile_gemm_launch(const void *y, const mv_qkv_args &a, bool pdl, const mv_cuda_device &dev,
                                    cudaStream_t stream) {
    const mv_tile_shape shape = choose_shape(a.in.rows, a.q_cols + 2 * a.kv_cols, dev.sms);
    return a.in.dtype == MV_BFLOAT16 ? launch_typed<__nv_bfloat16>(y, a, shape, stream, dev, pdl)
                                     : launch_typed<__half>(y, a, shape, stream, dev, pdl);
}
