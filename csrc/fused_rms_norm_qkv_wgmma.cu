/*
 * fused_rms_norm_qkv_wgmma.cu: qkv = rms_norm(x) . W^T in ONE kernel on Hopper tensor cores
 * (wgmma + TMA, sm_90a), for the M between the decode stream and long prefill.
 *
 * Why one kernel: the norm + GEMM path pays a dependent launch (~2-3 us on an H200) before the
 * GEMM can start; at M = 32..256 that is a third of the call. Here the norm costs nothing extra,
 * by the deferred-rrms identity
 *     y[m,k] . W[n,k] summed over k  =  rrms[m] * sum_k (gamma[k] * x[m,k]) . W[n,k]
 * since rrms[m] does not depend on k. Each block (64 rows x BN columns):
 *   - a producer thread streams x tiles [64 x 64], W tiles [BN x 64] and gamma's slice into a ring
 *     of shared stages by TMA (128-byte swizzle, zeros past the edges); W's first stages are
 *     requested before the PDL wait, so they overlap the previous kernel;
 *   - two consumer warpgroups take alternate stages: each loads its A fragments of x with ldmatrix,
 *     sums x^2 per row from them in float32, multiplies them by gamma in registers (bf16), and
 *     multiplies on the tensor cores with A from registers (wgmma, float32 accumulators), then
 *     hands the stage straight back;
 *   - consumer 1 adds its partial products and sums into consumer 0's through shared memory, and
 *     the epilogue scales each row by rrms = 1 / sqrt(sum x^2 / H + eps) and writes q, k, v.
 * Where it runs (the dispatcher's wgmma_wins): small H at M = 17..256; for large H the chain of
 * 64-k stages each block walks is slower than norm + cuBLASLt (figures in fused_rms_norm_qkv.cu).
 * An earlier form rewrote each x tile in shared memory as gamma * x (then a proxy fence and a
 * barrier per stage) and kept two stages per consumer: 1.3-3x slower.
 *
 * Numerics (documented in minivllm_kernels.h): gamma * x is rounded to bf16 before the product
 * and rrms multiplies the float32 sum, where the other fast paths round gamma * x * rrms. Same
 * error size (one bf16 rounding per operand); bf16 only, whose range is float32's, so gamma * x
 * cannot overflow where the normalized value would not (fp16 could: those calls stay on the norm
 * + GEMM path).
 *
 * Requirements (mv_qkv_wgmma_supported): an sm_90 (9.0) GPU and this file built for sm_90a, bf16,
 * no residual, H % 8 == 0, x and W rows 16-byte aligned (TMA), W in nn.Linear layout, q/k/v
 * column counts even and their rows 4-byte aligned (paired stores), M and N below 2^31.
 */
#include <climits>
#include <cstdint>
#include <cstdlib>

#include <cuda.h> /* CUtensorMap (types only: maps come from cuda_device.h) */

#include "cuda_common.cuh"
#include "fused_rms_norm_qkv_paths.h"
#include "hopper.cuh"
#include "wgmma_ops.cuh"

namespace {

constexpr int kStageK = 64;               /* k per stage: one 128-byte swizzle line per row */
constexpr int kLineBytes = kStageK * 2;   /* bf16 */
constexpr int kGroupThreads = 128;        /* a warpgroup */
constexpr int kTileRows = 64;             /* rows per block: one wgmma's M */
constexpr int kConsumers = 2;             /* consumer warpgroups, taking alternate k stages */
constexpr int kThreads = kGroupThreads * (1 + kConsumers); /* and the producer's */
constexpr int kMaxStages = 16;
constexpr int kSharedAlign = 1024;        /* the 128-byte swizzle repeats every 8 lines */

struct WgmmaParams {
    int rows, hidden, cols; /* M, H, N */
    int q_cols, kv_cols;
    int stages;
    float eps;
    const __nv_bfloat16 *gamma;
    __nv_bfloat16 *q, *k, *v;
    int64_t q_stride, k_stride, v_stride;
};

/* Shared memory of a block of BN output columns: the ring of stages (x tile, then W tile), then
   gamma's slice of each stage, the full and empty barriers, and the partial sums consumer 1
   hands to consumer 0. */
template <int BN>
struct Tile {
    static constexpr int a_bytes = kTileRows * kLineBytes;
    static constexpr int b_bytes = BN * kLineBytes;
    static constexpr int stage_bytes = a_bytes + b_bytes;
    static_assert(a_bytes % kSharedAlign == 0 && b_bytes % kSharedAlign == 0, "stages keep the swizzle alignment");
    static constexpr int reduce_stride = BN / 2 + 2; /* per thread: accumulators, then two row sums */
    static constexpr int tail_bytes = kMaxStages * kLineBytes + 2 * kMaxStages * 8 +
                                      (kConsumers - 1) * kGroupThreads * reduce_stride * 4;
};

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)

/* wgmma shared-memory descriptor of a K-major tile stored as 128-byte swizzled lines: start
   address, stride 1024 bytes between 8-line groups, 128-byte swizzle mode. The leading-byte offset
   is unused for swizzled K-major operands (set to 1, as is conventional). */
__device__ __forceinline__ uint64_t swizzled_desc(const void *p) {
    const uint64_t addr = mv_shared_address(p);
    return ((addr & 0x3FFFF) >> 4) | (1ull << 16) | (static_cast<uint64_t>(1024 >> 4) << 32) | (1ull << 62);
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int kPending>
__device__ __forceinline__ void wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
}
/* Keeps the compiler from moving accumulator reads or writes across the asynchronous wgmma. */
template <int N>
__device__ __forceinline__ void fence_accumulators(float (&d)[N]) {
#pragma unroll
    for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

/* The thread's A fragment of k16 step kk of a 64-row stage of x, as gamma * x in bf16, adding
   x^2 of its rows to sum_sq[0] (row warp * 16 + lane / 4) and sum_sq[1] (that row + 8).
   ldmatrix.x4 gives the four 8 x 8 blocks (rows 0-7 / 8-15 x k 0-7 / 8-15) of the warp's 16
   rows in mma.sync's A fragment order; lane l names row l % 8 (+ 8 for odd l / 8) of block l / 8.
   The 128-byte swizzle stores logical chunk c of line r at position c ^ (r % 8). gamma's slice of
   the stage lies beside it; the fragment's columns are k = 2 (lane % 4) (+1) and that + 8. Rows past
   M were zero-filled by the copy, as were k past H, whose staged gamma is stale: taken as 0. */
__device__ __forceinline__ void load_scaled_fragment(uint32_t (&a)[4], const __nv_bfloat16 *tile,
                                                     const __nv_bfloat16 *stage_gamma, int k_left, int warp,
                                                     int lane, int kk, float (&sum_sq)[2]) {
    const int block = lane >> 3;
    const int row = warp * 16 + (lane & 7) + 8 * (block & 1);
    const int chunk = 2 * kk + (block >> 1);
    const uint32_t addr = mv_shared_address(tile + row * kStageK + ((chunk ^ (row & 7)) * 8));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(a[0]), "=r"(a[1]), "=r"(a[2]), "=r"(a[3])
                 : "r"(addr));
    const int k = kk * 16 + 2 * (lane & 3);
    const uint32_t g_lo = k < k_left ? *reinterpret_cast<const uint32_t *>(stage_gamma + k) : 0u;
    const uint32_t g_hi = k + 8 < k_left ? *reinterpret_cast<const uint32_t *>(stage_gamma + k + 8) : 0u;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        /* bf16 -> float is a shift; the product of two bf16 is exact in float, so the bf16x2
           multiply rounds it once, as float math then a rounding would */
        const float lo = __uint_as_float(a[i] << 16), hi = __uint_as_float(a[i] & 0xffff0000u);
        sum_sq[i & 1] = fmaf(lo, lo, fmaf(hi, hi, sum_sq[i & 1]));
        const uint32_t g = i < 2 ? g_lo : g_hi;
        __nv_bfloat162 prod = __hmul2(*reinterpret_cast<const __nv_bfloat162 *>(&a[i]),
                                      *reinterpret_cast<const __nv_bfloat162 *>(&g));
        a[i] = *reinterpret_cast<uint32_t *>(&prod);
    }
}

#endif /* __CUDA_ARCH_FEAT_SM90_ALL */

template <int BN>
__global__ void __launch_bounds__(kThreads)
    qkv_wgmma_kernel(const __grid_constant__ CUtensorMap x_map, const __grid_constant__ CUtensorMap w_map,
                     WgmmaParams p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    using Sh = Tile<BN>;
    extern __shared__ unsigned char shared_raw[];
    unsigned char *base = reinterpret_cast<unsigned char *>(
        (reinterpret_cast<uintptr_t>(shared_raw) + kSharedAlign - 1) & ~static_cast<uintptr_t>(kSharedAlign - 1));
    const int stages = p.stages;
    __nv_bfloat16 *a_tiles = reinterpret_cast<__nv_bfloat16 *>(base);
    __nv_bfloat16 *b_tiles = reinterpret_cast<__nv_bfloat16 *>(base + static_cast<size_t>(stages) * Sh::a_bytes);
    unsigned char *tail = base + static_cast<size_t>(stages) * Sh::stage_bytes;
    __nv_bfloat16 *gamma_stages = reinterpret_cast<__nv_bfloat16 *>(tail);
    uint64_t *full = reinterpret_cast<uint64_t *>(tail + kMaxStages * kLineBytes);
    uint64_t *empty = full + kMaxStages;
    float *reduce = reinterpret_cast<float *>(empty + kMaxStages);

    const int group = threadIdx.x / kGroupThreads;
    const int tid = threadIdx.x % kGroupThreads;
    const int n0 = blockIdx.x * BN;
    const int m0 = blockIdx.y * kTileRows;
    const int k_tiles = (p.hidden + kStageK - 1) / kStageK;

    if (threadIdx.x == 0) {
        for (int s = 0; s < stages; ++s) {
            mv_mbarrier_init(&full[s], 1);
            /* each stage belongs to one consumer (stages is a multiple of kConsumers) */
            mv_mbarrier_init(&empty[s], 1);
        }
        mv_mbarrier_init_fence();
    }
    __syncthreads();
    /* The next kernel may launch now; it waits for this whole grid before it reads anything. */
    mv_pdl_trigger();

    if (group == 0) {
        /* ---- producer: one thread issues every copy ---- */
        if (tid == 0) {
            const uint64_t w_policy = mv_evict_first_policy();
            const uint64_t x_policy = mv_evict_last_policy();
            const int first = k_tiles < stages ? k_tiles : stages;
            /* W is a weight no kernel writes: request its first stages before waiting for the
               previous kernel (same assumption as the decode stream). x may be its output. */
            /* gamma's slice of stage kt travels with it: whole 16-byte chunks (H % 8 == 0) */
            auto gamma_bytes = [&](int kt) {
                const int left = p.hidden - kt * kStageK;
                return static_cast<unsigned>((left < kStageK ? left : kStageK) * 2);
            };
            for (int kt = 0; kt < first; ++kt) {
                mv_mbarrier_arrive_expect_tx(&full[kt], Sh::stage_bytes + gamma_bytes(kt));
                mv_tensor_copy_2d(b_tiles + static_cast<size_t>(kt) * BN * kStageK, &w_map, kt * kStageK, n0,
                                  &full[kt], w_policy);
            }
            mv_pdl_wait();
            for (int kt = 0; kt < first; ++kt) {
                mv_tensor_copy_2d(a_tiles + static_cast<size_t>(kt) * kTileRows * kStageK, &x_map, kt * kStageK, m0,
                                  &full[kt], x_policy);
                mv_bulk_copy(gamma_stages + kt * kStageK, p.gamma + kt * kStageK, gamma_bytes(kt), &full[kt]);
            }
            for (int kt = first; kt < k_tiles; ++kt) {
                const int s = kt % stages;
                mv_mbarrier_wait(&empty[s], static_cast<unsigned>((kt / stages - 1) & 1));
                mv_mbarrier_arrive_expect_tx(&full[s], Sh::stage_bytes + gamma_bytes(kt));
                mv_tensor_copy_2d(b_tiles + static_cast<size_t>(s) * BN * kStageK, &w_map, kt * kStageK, n0, &full[s],
                                  w_policy);
                mv_tensor_copy_2d(a_tiles + static_cast<size_t>(s) * kTileRows * kStageK, &x_map, kt * kStageK, m0, &full[s],
                                  x_policy);
                mv_bulk_copy(gamma_stages + s * kStageK, p.gamma + kt * kStageK, gamma_bytes(kt), &full[s]);
            }
        }
        return;
    }

    /* ---- consumers ---- */
    const int c = group - 1; /* takes k stages c, c + kConsumers, ... */
    mv_pdl_wait(); /* the outputs may be read by the previous kernel */

    float acc[BN / 2];
#pragma unroll
    for (int i = 0; i < BN / 2; ++i) acc[i] = 0.0f;
    float sum_sq[2] = {0.0f, 0.0f}; /* rows warp * 16 + lane / 4 (+ 8), this thread's columns */
    const int warp = tid / 32, lane = tid % 32;
    for (int kt = c; kt < k_tiles; kt += kConsumers) {
        const int s = kt % stages;
        mv_mbarrier_wait(&full[s], static_cast<unsigned>((kt / stages) & 1));
        const __nv_bfloat16 *a = a_tiles + static_cast<size_t>(s) * kTileRows * kStageK;
        const __nv_bfloat16 *b = b_tiles + static_cast<size_t>(s) * BN * kStageK;
        uint32_t frag[kStageK / 16][4];
#pragma unroll
        for (int kk = 0; kk < kStageK / 16; ++kk)
            load_scaled_fragment(frag[kk], a, gamma_stages + s * kStageK, p.hidden - kt * kStageK, warp, lane, kk,
                                 sum_sq);
        wgmma_fence();
        fence_accumulators(acc);
#pragma unroll
        for (int kk = 0; kk < kStageK / 16; ++kk)
            mv_wgmma_rs<__nv_bfloat16, BN>::mma(acc, frag[kk], swizzled_desc(b + kk * 16), 1);
        wgmma_commit();
        fence_accumulators(acc);
        /* The stage goes back to the producer as soon as its products are done: the ring's depth
           is what keeps W streaming (the fragments were read out of it before the wgmma). */
        wgmma_wait<0>();
        fence_accumulators(acc);
        if (tid == 0) mv_mbarrier_arrive(&empty[s]);
    }

    /* a row's four column threads are adjacent lanes */
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int o = 1; o < 4; o <<= 1) sum_sq[i] += __shfl_xor_sync(0xffffffffu, sum_sq[i], o);
    /* consumers 1.. hand their partial products and sums to consumer 0 */
    constexpr int kStride = Sh::reduce_stride;
    if (c > 0) {
        float *mine = reduce + (c - 1) * kGroupThreads * kStride;
#pragma unroll
        for (int i = 0; i < BN / 2; ++i) mine[i * kGroupThreads + tid] = acc[i];
#pragma unroll
        for (int i = 0; i < 2; ++i) mine[(BN / 2 + i) * kGroupThreads + tid] = sum_sq[i];
    }
    mv_named_barrier(1, kGroupThreads * kConsumers); /* the consumers only: the producer has left */
    if (c > 0) return;
    for (int o = 0; o < kConsumers - 1; ++o) {
        const float *theirs = reduce + o * kGroupThreads * kStride;
#pragma unroll
        for (int i = 0; i < BN / 2; ++i) acc[i] += theirs[i * kGroupThreads + tid];
#pragma unroll
        for (int i = 0; i < 2; ++i) sum_sq[i] += theirs[(BN / 2 + i) * kGroupThreads + tid];
    }
    const int tile_row = warp * 16 + lane / 4;
    const float rrms_row[2] = {rsqrtf(sum_sq[0] / static_cast<float>(p.hidden) + p.eps),
                               rsqrtf(sum_sq[1] / static_cast<float>(p.hidden) + p.eps)};

    /* ---- epilogue: accumulator (row, col) of this thread, scaled by rrms, to q / k / v ---- */
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int row = m0 + tile_row + 8 * h;
        if (row >= p.rows) continue;
        const float rrms = rrms_row[h];
#pragma unroll
        for (int j = 0; j < BN / 8; ++j) {
            const int col = n0 + 8 * j + 2 * (lane % 4);
            if (col >= p.cols) continue;
            __nv_bfloat16 *dst;
            if (col < p.q_cols) {
                dst = p.q + static_cast<int64_t>(row) * p.q_stride + col;
            } else if (col < p.q_cols + p.kv_cols) {
                dst = p.k + static_cast<int64_t>(row) * p.k_stride + (col - p.q_cols);
            } else {
                dst = p.v + static_cast<int64_t>(row) * p.v_stride + (col - p.q_cols - p.kv_cols);
            }
            *reinterpret_cast<__nv_bfloat162 *>(dst) =
                __floats2bfloat162_rn(acc[4 * j + 2 * h] * rrms, acc[4 * j + 2 * h + 1] * rrms);
        }
    }
#endif /* __CUDA_ARCH_FEAT_SM90_ALL */
}

/* ---- host side ---------------------------------------------------------------------------------- */


/* A row-major [rows, cols] bf16 matrix with the given row stride, in boxes of box_rows x 64
   (cuda_device.h; cached for weights). */
bool encode_rows(CUtensorMap *map, const void *data, int64_t rows, int64_t cols, int64_t stride, int box_rows,
                 bool cached) {
    const cuuint64_t dims[2] = {static_cast<cuuint64_t>(cols), static_cast<cuuint64_t>(rows)};
    const cuuint64_t strides[1] = {static_cast<cuuint64_t>(stride) * 2};
    const cuuint32_t box[2] = {static_cast<cuuint32_t>(kStageK), static_cast<cuuint32_t>(box_rows)};
    return mv_swizzled_tensor_map(map, true, 2, data, dims, strides, box, cached);
}

template <int BN>
cudaError_t launch_tile(const mv_qkv_args &a, const WgmmaParams &base, cudaStream_t stream, const mv_cuda_device &dev,
                        bool pdl) {
    using Sh = Tile<BN>;
    static mv_shared_opt_in opt_in;
    const int k_tiles = static_cast<int>((a.in.hidden + kStageK - 1) / kStageK);
    const size_t fixed = kSharedAlign + Sh::tail_bytes;
    const size_t budget = static_cast<size_t>(dev.max_shared_block);
    /* As deep a ring as fits (up to all of K), a multiple of kConsumers: a stage, one consumer. */
    int stages = kMaxStages;
    while (stages > 0 && fixed + static_cast<size_t>(stages) * Sh::stage_bytes > budget) --stages;
    stages = stages / kConsumers * kConsumers;
    const int whole_k = (k_tiles + kConsumers - 1) / kConsumers * kConsumers;
    if (stages > whole_k) stages = whole_k;
    if (stages == 0) return cudaErrorNotSupported;
    const size_t smem = fixed + static_cast<size_t>(stages) * Sh::stage_bytes;

    CUtensorMap x_map, w_map;
    if (!encode_rows(&x_map, a.in.x, a.in.rows, a.in.hidden, a.in.x_stride, kTileRows, false) ||
        !encode_rows(&w_map, a.w, a.q_cols + 2 * a.kv_cols, a.in.hidden, a.w_stride_n, BN, true))
        return cudaErrorNotSupported;
    WgmmaParams p = base;
    p.stages = stages;
    auto kernel = qkv_wgmma_kernel<BN>;
    cudaError_t err = mv_allow_shared(kernel, smem, opt_in, dev.device);
    if (err != cudaSuccess) return err;
    const dim3 grid(static_cast<unsigned>((p.cols + BN - 1) / BN),
                    static_cast<unsigned>((p.rows + kTileRows - 1) / kTileRows));
    err = mv_launch(kernel, grid, dim3(kThreads), smem, stream, pdl, x_map, w_map, p);
    return err != cudaSuccess ? err : cudaGetLastError();
}

/* The instantiated tile widths, and one choice per call. MINIVLLM_QKV_WGMMA_TILE=BN (e.g. "32")
   forces one of them (benchmarks of the choice). Tiles of 128 rows with the rows split between
   the consumers (BN 128 and 256) were measured and dropped: slower than these at every M up to
   512 and than norm + cuBLASLt at every M (H200, bf16: Qwen3-0.6B M = 512 15.6 / 23.1 us against
   11.9; benchmarks/results/qkv-wgmma-nvidia-h200-2026-11-22.log). */
constexpr int kWidths[] = {16, 32, 64, 128};

int forced_width() {
    static const int forced = [] {
        const char *v = getenv("MINIVLLM_QKV_WGMMA_TILE");
        const int bn = v != nullptr ? atoi(v) : 0;
        for (int w : kWidths)
            if (w == bn) return bn;
        return 0;
    }();
    return forced;
}

/* The narrowest tile whose grid still fits one block per multiprocessor: each block's chain of
   stages is what the call waits for, so spread W over as many blocks as run at once. Measured
   best of the four at every M the dispatcher sends here (H200, bf16; the log above). */
int choose_width(int64_t rows, int64_t cols, int sms) {
    if (forced_width() != 0) return forced_width();
    const int64_t row_tiles = (rows + kTileRows - 1) / kTileRows;
    for (int w : kWidths)
        if (row_tiles * ((cols + w - 1) / w) <= sms) return w;
    return kWidths[sizeof(kWidths) / sizeof(kWidths[0]) - 1];
}

} // namespace

extern "C" int mv_qkv_wgmma_supported(const mv_qkv_args *a, const mv_cuda_device *dev) {
#if defined(MINIVLLM_HAVE_SM90A)
    if (dev->major != 9 || dev->minor != 0) return 0;
    if (a->in.dtype != MV_BFLOAT16 || a->in.residual != nullptr || a->w_stride_k != 1) return 0;
    const int64_t h = a->in.hidden, n = a->q_cols + 2 * a->kv_cols;
    if (h % 8 != 0 || a->in.rows >= INT_MAX || n >= INT_MAX || h >= INT_MAX) return 0;
    if (a->in.x_stride < h || !mv_aligned16(a->in.x, a->in.x_stride, 2)) return 0;
    if (a->w_stride_n < h || !mv_aligned16(a->w, a->w_stride_n, 2)) return 0;
    if (!mv_aligned16(a->in.norm_weight, 0, 2)) return 0;
    if (a->q_cols % 2 != 0 || a->kv_cols % 2 != 0) return 0;
    const void *outs[3] = {a->q, a->k, a->v};
    const int64_t strides[3] = {a->q_stride, a->k_stride, a->v_stride};
    for (int i = 0; i < 3; ++i)
        if (reinterpret_cast<uintptr_t>(outs[i]) % 4 != 0 || strides[i] % 2 != 0) return 0;
    return mv_tensor_maps_available();
#else
    (void)a;
    (void)dev;
    return 0;
#endif
}

extern "C" int mv_qkv_wgmma_cuda(const mv_qkv_args *a, void *stream, const mv_cuda_device *dev) {
    WgmmaParams p = {};
    p.rows = static_cast<int>(a->in.rows);
    p.hidden = static_cast<int>(a->in.hidden);
    p.cols = static_cast<int>(a->q_cols + 2 * a->kv_cols);
    p.q_cols = static_cast<int>(a->q_cols);
    p.kv_cols = static_cast<int>(a->kv_cols);
    p.eps = a->in.eps;
    p.gamma = static_cast<const __nv_bfloat16 *>(a->in.norm_weight);
    p.q = static_cast<__nv_bfloat16 *>(a->q);
    p.k = static_cast<__nv_bfloat16 *>(a->k);
    p.v = static_cast<__nv_bfloat16 *>(a->v);
    p.q_stride = a->q_stride;
    p.k_stride = a->k_stride;
    p.v_stride = a->v_stride;
    cudaStream_t s = static_cast<cudaStream_t>(stream);
    const bool pdl = mv_pdl_enabled(*dev);
    switch (choose_width(a->in.rows, p.cols, dev->sms)) {
        case 16: return static_cast<int>(launch_tile<16>(*a, p, s, *dev, pdl));
        case 32: return static_cast<int>(launch_tile<32>(*a, p, s, *dev, pdl));
        case 64: return static_cast<int>(launch_tile<64>(*a, p, s, *dev, pdl));
        default: return static_cast<int>(launch_tile<128>(*a, p, s, *dev, pdl));
    }
}
