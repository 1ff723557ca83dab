/*
 * rms_norm.cu: rms_norm and fused add + rms_norm on the GPU (see minivllm_kernels.h for numerics).
 *
 * Two kernels:
 * - rms_norm_vec_kernel, the fast one: each row is read once into registers with the widest
 *   vector loads the sizes and alignments allow (V = gcd(16 / sizeof(T), H), narrowed further
 *   until every pointer and row stride is V-aligned), summed with warp shuffles, scaled with one
 *   rsqrt, and written back with vector stores. A row is handled by a group of G threads (a
 *   power of two up to a warp for small H, whole warps beyond, at most 512 threads: H up to
 *   16384 in 16-bit types), each holding up to 4 vectors (8 single elements); small rows pack many groups,
 *   i.e. many rows, into one block. Rows of up to 4096 16-byte vectors (H up to 32768 in 16-bit
 *   types, 16384 in float32) take 8 vectors a thread (kWide; the fused add in wide_fused_row).
 *   With PDL, the first few MiB of rows are prefetched into L2 before the wait for the previous
 *   kernel (kPrefetchBytes). The fused add's rows too long to stay in registers take
 *   fused_add_long_kernel (8 vectors a thread at a time, s read back from residual_out);
 *   rms_norm's rows of up to 8192 16-byte vectors take rms_norm_wider_kernel (16 a thread), and
 *   longer ones, or such rows off the 16-byte grid, fall back to:
 * - rms_norm_reference_kernel, deliberately simple (one block per row, scalar loads, two passes),
 *   kept for those rows and for the tests to compare the fast kernels against.
 * Short calls (at most a row per multiprocessor) of rows in 16-byte vectors take
 * rms_norm_short_kernel: the fast kernel's layout and summation order, without its long-call
 * bookkeeping; rows of up to 1024 16-byte vectors take one or two vectors a thread instead
 * (rms_norm_lanes_kernel, rms_norm_lanes_pair_kernel: the same sum, through shared memory), and
 * so do such rows of 16-byte vectors in longer calls while a block a row fits one wave, and short
 * calls of rows of up to 128 single elements (rms_norm_lanes_kernel).
 * Rows of single elements (odd H of 129-4096, views aligned to no wider vector) in one stride
 * take rms_norm_elems_kernel (a float32 fused add only in short calls): the general kernel's
 * layout for V = 1 and its order, with G (a power of two for single elements) compiled in, so
 * every element's address is an immediate away and a full SM of threads fits in the registers.
 * Rows of odd H above 4096, and views whose alignment allows only narrower vectors where those
 * would need more than 512 threads, take 16-byte "virtual vectors" from each row's first element
 * (rms_norm_vec_kernel<kOdd>, load_vec). Rows off the 16-byte grid (odd H, misaligned views) in
 * calls of many rows go through shared memory instead (rms_norm_staged_kernel), summed in the
 * in-place kernel's exact order, so the choice by M leaves every row's bits as they are; 16-bit
 * rows there are read through code compiled for each row's offset in its 16-byte pieces, as the
 * kernel is issue-bound (rms_norm in rms_norm_staged_heads_kernel; the fused add where its
 * registers cost the call no blocks per SM).
 *
 * Reference kernel: one block normalizes one row at a time (grid-stride over rows). Pass 1 forms s (x, or
 * x + residual rounded to the dtype and stored to residual_out) and sums s^2 in float; a block
 * reduction gives rrms; pass 2 writes out = (weight + weight_offset) * (s * rrms), rounded once.
 *
 * Rows in two strides (a per-head view, rows = tokens x heads: mv_rms_norm_args' inner_rows) are a
 * compile-time variant of both kernels (kTwoStrides): only it divides the row index, and the
 * one-stride kernels keep their code. The row layout (V, threads per row) does not change with
 * it, so a row has the same bits in a view as made contiguous, given the same alignment.
 *
 * In-place safety: out may be x, residual_out may be residual. Both passes walk a row with the same
 * index -> thread mapping, so every element is read and then written by the same thread; pass 2
 * re-reads s from residual_out (or x), which that same thread wrote/read in pass 1. Rows never
 * share output memory (the binding guarantees it), so blocks do not interfere.
 */
#include "cuda/common.cuh"
#include "cuda/device.h"
#include "cuda/norm_jit.h"

namespace {

/* Enough row blocks to fill any current GPU many times over; larger M is covered by the
   grid-stride loop, so M beyond the 2^31-1 grid limit works too. */
constexpr int64_t kMaxRowBlocks = 65536;
constexpr int kMaxThreads = 1024;
constexpr int kMaxVecThreads = 512; /* a cap that leaves 128 registers per thread */

/* The kernels' parameter: the call's arguments, with the outer strides only where the rows take
   two strides. Kernel parameters live in constant memory, and growing the one-stride kernels'
   parameter by those 40 bytes alone changed nvcc's schedule in 218 of their 248 builds: they keep
   the parameter they were tuned with. */
template <bool kTwoStrides>
struct NormParams {
    mv_norm_input in;
    void *out;
    int64_t out_stride;
};
template <>
struct NormParams<true> : NormParams<false> {
    mv_outer_strides outer;
};

template <bool kTwoStrides>
NormParams<kTwoStrides> params_of(const mv_rms_norm_args &a) {
    NormParams<kTwoStrides> p;
    p.in = a.in;
    p.out = a.out;
    p.out_stride = a.out_stride;
    if constexpr (kTwoStrides) p.outer = a.outer;
    return p;
}

/* The outer strides: none with one stride (zeros that RowIndex<false> never reads). */
__device__ __forceinline__ mv_outer_strides outer_of(const NormParams<true> &p) { return p.outer; }
__device__ __forceinline__ mv_outer_strides outer_of(const NormParams<false> &) { return mv_outer_strides{}; }

/* Where a row starts in each row argument, in elements (mv_outer_strides' formula): row * stride
   with one stride; with two, the division by inner_rows done once per row for all arguments. */
template <bool kTwoStrides>
struct RowIndex {
    int64_t outer, inner;
    __device__ __forceinline__ RowIndex(int64_t row, int64_t inner_rows) {
        if constexpr (kTwoStrides) {
            outer = row / inner_rows;
            inner = row - outer * inner_rows;
        } else {
            outer = 0;
            inner = row;
        }
    }
    __device__ __forceinline__ int64_t at(int64_t stride, int64_t outer_stride) const {
        if constexpr (kTwoStrides) return outer * outer_stride + inner * stride;
        else return inner * stride;
    }
};

constexpr int kRefBatch = 8; /* elements a thread loads at once in the reference kernel */

/* v[k] = row[base + k * step] as float, for the k that fall inside the row */
template <typename U>
__device__ __forceinline__ void load_batch(float (&v)[kRefBatch], const U *row, int64_t base, int64_t step,
                                           int64_t hidden) {
#pragma unroll
    for (int k = 0; k < kRefBatch; ++k) {
        const int64_t i = base + k * step;
        if (i < hidden) v[k] = mv_load_float(row + i);
    }
}

template <typename T, typename TW, bool kHasResidual, bool kTwoStrides>
__global__ void __launch_bounds__(kMaxThreads) rms_norm_reference_kernel(NormParams<kTwoStrides> args) {
    __shared__ float reduce_scratch[32];
    const mv_outer_strides outer = outer_of(args);

    const mv_norm_input &in = args.in;
    const int64_t rows = in.rows;
    const int64_t hidden = in.hidden;
    const T *x = static_cast<const T *>(in.x);
    const T *residual = static_cast<const T *>(in.residual);
    T *residual_out = static_cast<T *>(in.residual_out);
    const TW *weight = static_cast<const TW *>(in.norm_weight); /* T, or float with 16-bit T */
    T *out = static_cast<T *>(args.out);

    for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
        /* int64 row offsets: strides may be 0, negative, or make row * stride exceed 2^31. */
        const RowIndex<kTwoStrides> pos(row, outer.inner_rows);
        const T *x_row = x + pos.at(in.x_stride, outer.x);
        const T *residual_row = kHasResidual ? residual + pos.at(in.residual_stride, outer.residual) : nullptr;
        T *residual_out_row =
            kHasResidual ? residual_out + pos.at(in.residual_out_stride, outer.residual_out) : nullptr;
        T *out_row = out + pos.at(args.out_stride, outer.out);

        /* A thread's elements i = threadIdx.x + j * blockDim.x, summed in j order, taken kRefBatch
           at a time with every load of a batch issued before its first store: a store may alias a
           later load (in-place forms), so one element at a time ran a DRAM round trip per element
           (H100 float32 1 x 12345: 9.12 -> 6.10 us, 1 x 16384 11.04 -> 6.56; Liger 4.87 and 3.54;
           dev/logs/norm-reference-batched-loads-nvidia-h100-80gb-hbm3-2026-11-24.log). Same order,
           same bits. */
        const int64_t step = blockDim.x;
        float sum_sq = 0.0f;
        for (int64_t base = threadIdx.x; base < hidden; base += kRefBatch * step) {
            float xs[kRefBatch], rs[kRefBatch];
            load_batch(xs, x_row, base, step, hidden);
            if (kHasResidual) load_batch(rs, residual_row, base, step, hidden);
#pragma unroll
            for (int k = 0; k < kRefBatch; ++k) {
                const int64_t i = base + k * step;
                if (i >= hidden) break;
                float s = xs[k];
                if (kHasResidual) {
                    const T s_rounded = mv_from_float<T>(s + rs[k]);
                    residual_out_row[i] = s_rounded;
                    s = mv_to_float(s_rounded);
                }
                sum_sq += s * s;
            }
        }
        sum_sq = mv_block_sum(sum_sq, reduce_scratch);
        const float rrms = rsqrtf(sum_sq / static_cast<float>(hidden) + in.eps);

        /* Re-read rather than keep s in registers: simple for any H; the data is in L1/L2. */
        const T *s_row = kHasResidual ? residual_out_row : x_row;
        for (int64_t base = threadIdx.x; base < hidden; base += kRefBatch * step) {
            float ss[kRefBatch], ws[kRefBatch];
            load_batch(ss, s_row, base, step, hidden);
            load_batch(ws, weight, base, step, hidden);
#pragma unroll
            for (int k = 0; k < kRefBatch; ++k) {
                const int64_t i = base + k * step;
                if (i >= hidden) break;
                mv_store_float(out_row + i, (ws[k] + in.weight_offset) * (ss[k] * rrms));
            }
        }
        /* No barrier needed before the next row: mv_block_sum starts with one. */
    }
}


/* No PDL: the reference kernel reads its input at its start, without a grid-dependency wait. */
template <typename T, typename TW, bool kTwoStrides>
cudaError_t launch_reference_rows(const mv_rms_norm_args &a, unsigned blocks, int threads, cudaStream_t stream) {
    return mv_launch(a.in.residual != nullptr ? rms_norm_reference_kernel<T, TW, true, kTwoStrides>
                                              : rms_norm_reference_kernel<T, TW, false, kTwoStrides>,
                     dim3(blocks), dim3(static_cast<unsigned>(threads)), 0, stream, false, params_of<kTwoStrides>(a));
}

template <typename T, typename TW>
cudaError_t launch_reference(const mv_rms_norm_args &a, unsigned blocks, int threads, cudaStream_t stream) {
    if (a.outer.inner_rows > 0) return launch_reference_rows<T, TW, true>(a, blocks, threads, stream);
    return launch_reference_rows<T, TW, false>(a, blocks, threads, stream);
}

} // namespace

extern "C" int mv_rms_norm_cuda_reference(const mv_rms_norm_args *a, void *stream) {
    const int64_t rows = a->in.rows;
    if (rows == 0) return (int)cudaSuccess;
    cudaStream_t cuda_stream = static_cast<cudaStream_t>(stream);

    /* One thread per element up to 1024 (rounded up to whole warps, as mv_block_sum needs): short
       rows do not waste idle warps, long rows get the most threads a block allows, and each thread
       handles ceil(H / threads) elements. */
    const int64_t hidden_warps_rounded = (a->in.hidden + 31) / 32 * 32;
    const int threads = static_cast<int>(hidden_warps_rounded < kMaxThreads ? hidden_warps_rounded : kMaxThreads);
    const unsigned blocks = static_cast<unsigned>(rows < kMaxRowBlocks ? rows : kMaxRowBlocks);

    const bool float_weight = a->in.weight_float32 && a->in.dtype != MV_FLOAT32;
    MV_DISPATCH_DTYPE(a->in.dtype, T, {
        return (int)(float_weight ? launch_reference<T, float>(*a, blocks, threads, cuda_stream)
                                  : launch_reference<T, T>(*a, blocks, threads, cuda_stream));
    })
    return (int)cudaErrorInvalidValue;
}

namespace {

/* ---- the fast kernel ------------------------------------------------------------------------- */

constexpr int kMaxVecsPerThread = 4; /* 4 x 16 B in flight per thread, 32 floats of registers */
constexpr int kVecBlockThreads = 256;
/* A row that only single elements fit (H odd, or a misaligned view) takes 8 of them per thread,
   as Liger's and torch.compile's kernels do: 4 per thread took twice the threads per row (a
   cross-warp sum where fewer warps would do) and sent rows of H > 2048 to the one-block-per-row
   reference kernel (bf16 H = 4095: 18 us against Liger's 9; dev/logs/norm-odd-h-*.log). 16 per
   thread used all 128 registers with the weight held early. Wider vectors keep 4 per thread. */
__host__ __device__ constexpr int vecs_per_thread(int v) { return v == 1 ? 8 : kMaxVecsPerThread; }

/* Threads per row for `needed` threads' worth of vectors: a power of two up to a warp (shuffle
   reduction), beyond that whole warps, so a row of 640 vectors (H = 5120, bf16) takes 160
   threads with 4 vectors each rather than 256 of which 96 idle (that ran 4096 x 5120 at 71% of
   copy bandwidth). power_of_two: a power of two beyond a warp too, for rows of single elements
   (V = 1), so that the few layouts rms_norm_elems_kernel compiles in cover every such H up to
   4096 (H = 1501: 256 threads, not 192); every kernel takes G from here, so a row's order stays
   one per H. */
inline int group_threads_for(int64_t needed, bool power_of_two = false) {
    int group_threads = 1;
    if (needed <= 32 || power_of_two) {
        while (group_threads < needed) group_threads <<= 1;
    } else {
        group_threads = static_cast<int>((needed + 31) / 32 * 32);
    }
    return group_threads;
}

/* Sum over a group of G threads (G a power of two up to 32, else a multiple of 32; groups aligned
   within the block); every
   thread of the group gets the total. All threads of the block must call it (it may use
   barriers). warp_sums: 32 floats of shared memory. kBatch > 1: the warps' sums are read kBatch
   at a time (same order), for kernels whose G is compiled in: nvcc otherwise loads all of them
   at once, and 16 more live registers beside a row spilled (fp16 fused add, H 2049-4096). */
template <int kBatch = 1>
__device__ __forceinline__ float group_sum(float v, int group_threads, float *warp_sums) {
    if (group_threads <= 32) {
        for (int offset = group_threads >> 1; offset > 0; offset >>= 1)
            v += __shfl_xor_sync(0xffffffffu, v, offset);
        return v;
    }
    const int warp = threadIdx.x >> 5;
    v = mv_warp_sum(v);
    if ((threadIdx.x & 31) == 0) warp_sums[warp] = v;
    __syncthreads();
    const int warps_per_group = group_threads >> 5;
    const int first = warp / warps_per_group * warps_per_group;
    float total = 0.0f;
    if (kBatch > 1 && warps_per_group % kBatch == 0) {
#pragma unroll 1
        for (int w = 0; w < warps_per_group; w += kBatch) {
#pragma unroll
            for (int k = 0; k < kBatch; ++k) total += warp_sums[first + w + k];
        }
    } else {
        for (int w = 0; w < warps_per_group; ++w) total += warp_sums[first + w];
    }
    __syncthreads(); /* everyone has read warp_sums before the next row reuses it */
    return total;
}

/* Makes the compiler treat v as rewritten here, so it cannot hoist work on v (e.g. unpacking 16-bit
   values to float) above this point. Used after the row reduction: otherwise nvcc unpacks the
   row to floats before the reduction and keeps both copies alive. At bf16, V = 8 that cost 61
   instead of 40 registers (rms_norm) and 100 instead of 75 (fused add: 2 blocks of 256 per SM
   instead of 3, and 85% of copy bandwidth at 32768 x 4096 instead of 98%). */
template <typename VecT>
__device__ __forceinline__ void keep_packed(VecT &v) {
    if constexpr (sizeof(VecT) % 4 == 0) {
        uint32_t *w = reinterpret_cast<uint32_t *>(&v);
#pragma unroll
        for (int k = 0; k < (int)(sizeof(VecT) / 4); ++k) asm volatile("" : "+r"(w[k]));
    } else {
        unsigned short *h = reinterpret_cast<unsigned short *>(&v);
        asm volatile("" : "+h"(h[0]));
    }
}

/* The per-vector arithmetic every kernel here shares, element by element in order (the order
   fixes a row's bits); s = x + residual is common.cuh's mv_add_rounded. */
/* A vector's sum of squares, its elements in turn, and acc plus it: every row sum is these
   per-vector sums added in the layout's order, so a kernel holding one vector a thread can rebuild
   the order of one holding several (rms_norm_lanes_kernel). The roundings are spelled out so that
   nvcc cannot contract acc + v * v into one fma in one kernel and not in another. */
template <typename T, int V>
__device__ __forceinline__ float vector_squares(const mv_vec<T, V> &s) {
    const float v0 = mv_to_float(s.v[0]);
    float p = __fmul_rn(v0, v0);
#pragma unroll
    for (int j = 1; j < V; ++j) {
        const float v = mv_to_float(s.v[j]);
        p = __fmaf_rn(v, v, p);
    }
    return p;
}
template <typename T, int V>
__device__ __forceinline__ float add_squares(float acc, const mv_vec<T, V> &s) {
    return __fadd_rn(acc, vector_squares(s));
}
/* out = (w + offset) * (s * rrms), rounded once (kOffset: a compile-time switch, as the add in
   the chain cost short calls 0.1 us on the H200): */
template <bool kOffset, typename T, typename TW, int V>
__device__ __forceinline__ mv_vec<T, V> normalized(const mv_vec<T, V> &s, const mv_vec<TW, V> &w, float rrms,
                                                   float weight_offset) {
    float normed[V];
#pragma unroll
    for (int j = 0; j < V; ++j) {
        const float g = kOffset ? mv_to_float(w.v[j]) + weight_offset : mv_to_float(w.v[j]);
        normed[j] = g * (mv_to_float(s.v[j]) * rrms);
    }
    mv_vec<T, V> result;
    mv_from_floats(result.v, normed);
    return result;
}

/* ---- rows off the 16-byte grid (odd H) ------------------------------------------------------- */

/* 16 bytes at p, in the widest accesses p's alignment allows (p even): one 16-byte access, two
   of 8, four of 4, or, at 2 (mod 4), 2 + 4 + 4 + 4 + 2 bytes put together by funnel shifts. The
   narrower accesses of a warp fall on the same sectors, which L1 keeps. */
__device__ __forceinline__ uint4 load16_at(const char *p) {
    const unsigned a = static_cast<unsigned>(reinterpret_cast<uintptr_t>(p) & 15);
    if (a == 0) return *reinterpret_cast<const uint4 *>(p);
    if ((a & 7) == 0) {
        const uint2 lo = reinterpret_cast<const uint2 *>(p)[0], hi = reinterpret_cast<const uint2 *>(p)[1];
        return make_uint4(lo.x, lo.y, hi.x, hi.y);
    }
    const uint32_t *w = reinterpret_cast<const uint32_t *>(p);
    if ((a & 3) == 0) return make_uint4(w[0], w[1], w[2], w[3]);
    const uint32_t *m = reinterpret_cast<const uint32_t *>(p + 2);
    const uint32_t h0 = *reinterpret_cast<const uint16_t *>(p), h4 = *reinterpret_cast<const uint16_t *>(p + 14);
    const uint32_t w1 = m[0], w2 = m[1], w3 = m[2];
    return make_uint4(h0 | (w1 << 16), __funnelshift_r(w1, w2, 16), __funnelshift_r(w2, w3, 16), (w3 >> 16) | (h4 << 16));
}
__device__ __forceinline__ void store16_at(char *p, uint4 v) {
    const unsigned a = static_cast<unsigned>(reinterpret_cast<uintptr_t>(p) & 15);
    if (a == 0) {
        *reinterpret_cast<uint4 *>(p) = v;
    } else if ((a & 7) == 0) {
        reinterpret_cast<uint2 *>(p)[0] = make_uint2(v.x, v.y);
        reinterpret_cast<uint2 *>(p)[1] = make_uint2(v.z, v.w);
    } else if ((a & 3) == 0) {
        uint32_t *w = reinterpret_cast<uint32_t *>(p);
        w[0] = v.x;
        w[1] = v.y;
        w[2] = v.z;
        w[3] = v.w;
    } else {
        uint32_t *m = reinterpret_cast<uint32_t *>(p + 2);
        *reinterpret_cast<uint16_t *>(p) = static_cast<uint16_t>(v.x);
        m[0] = __funnelshift_r(v.x, v.y, 16);
        m[1] = __funnelshift_r(v.y, v.z, 16);
        m[2] = __funnelshift_r(v.z, v.w, 16);
        *reinterpret_cast<uint16_t *>(p + 14) = static_cast<uint16_t>(v.w >> 16);
    }
}

/* The first `valid` (< V) elements of a vector at p, the rest zero; and their store (load_vec and
   store_vec keep their own copy of these loops: calling these changed 52 kernels' code). */
template <typename U, int V>
__device__ __forceinline__ mv_vec<U, V> tail_load(const U *p, int valid) {
    mv_vec<U, V> v;
#pragma unroll
    for (int j = 0; j < V; ++j) v.v[j] = j < valid ? p[j] : mv_from_float<U>(0.0f);
    return v;
}
template <typename U, int V>
__device__ __forceinline__ void tail_store(U *p, int valid, const mv_vec<U, V> &v) {
#pragma unroll
    for (int j = 0; j < V; ++j)
        if (j < valid) p[j] = v.v[j];
}

/* Vector idx of a row of `hidden` U from its first element. kOdd: the row may start anywhere
   (element-aligned) and the last vector is cut at hidden (elements past it read as zero, never
   touched in memory); else the row is V-aligned and V divides hidden. */
template <typename U, int V, bool kOdd>
__device__ __forceinline__ mv_vec<U, V> load_vec(const U *row, int idx, int hidden) {
    if constexpr (!kOdd) {
        return reinterpret_cast<const mv_vec<U, V> *>(row)[idx];
    } else {
        static_assert(sizeof(U) * V % 16 == 0, "whole 16-byte parts");
        const U *p = row + idx * V;
        const int valid = hidden - idx * V;
        mv_vec<U, V> v;
        if (valid >= V) {
#pragma unroll
            for (int c = 0; c < static_cast<int>(sizeof(U) * V / 16); ++c)
                reinterpret_cast<uint4 *>(&v)[c] = load16_at(reinterpret_cast<const char *>(p) + 16 * c);
        } else {
#pragma unroll
            for (int j = 0; j < V; ++j) v.v[j] = j < valid ? p[j] : mv_from_float<U>(0.0f);
        }
        return v;
    }
}
template <typename U, int V, bool kOdd>
__device__ __forceinline__ void store_vec(U *row, int idx, int hidden, const mv_vec<U, V> &v) {
    if constexpr (!kOdd) {
        reinterpret_cast<mv_vec<U, V> *>(row)[idx] = v;
    } else {
        U *p = row + idx * V;
        const int valid = hidden - idx * V;
        if (valid >= V) {
#pragma unroll
            for (int c = 0; c < static_cast<int>(sizeof(U) * V / 16); ++c)
                store16_at(reinterpret_cast<char *>(p) + 16 * c, reinterpret_cast<const uint4 *>(&v)[c]);
        } else {
#pragma unroll
            for (int j = 0; j < V; ++j)
                if (j < valid) p[j] = v.v[j];
        }
    }
}

/* v[i] = vector first + i * step of a row, i < N; past the row's last vector, that vector again
   (every register then holds a value on every path, which keeps nvcc from carrying other
   vectors alive beside these: see wide_fused_row). */
template <typename U, int V, bool kOdd, int N>
__device__ __forceinline__ void load_clamped(mv_vec<U, V> (&v)[N], const U *row, int first, int step, int last,
                                             int hidden) {
#pragma unroll
    for (int i = 0; i < N; ++i) v[i] = load_vec<U, V, kOdd>(row, min(first + i * step, last), hidden);
}

/* out's vectors first + i * step (i < N) up to the row's last: (w + offset) * (s * rrms). */
template <bool kOffset, typename T, typename TW, int V, bool kOdd, int N>
__device__ __forceinline__ void store_normalized(T *out_row, const mv_vec<T, V> (&s)[N], const mv_vec<TW, V> (&w)[N],
                                                 int first, int step, int last, int hidden, float rrms,
                                                 float weight_offset) {
#pragma unroll
    for (int i = 0; i < N; ++i) {
        const int idx = first + i * step;
        if (idx > last) break;
        store_vec<T, V, kOdd>(out_row, idx, hidden, normalized<kOffset>(s[i], w[i], rrms, weight_offset));
    }
}

/* One row of the fused add on 8 vectors a thread (kWide): x and the residual loaded, s summed and
   stored to residual_out, the weight loaded after the reduction. Past the row's end a thread
   loads its last vector again rather than nothing (load_clamped), so every register holds a
   value on every path: with the general kernel's conditional loads nvcc kept pass 1's vectors
   and the weight's alive together and spilled in 16-bit types (bf16 148-360 bytes), and so did
   a form that read s back from residual_out for pass 2
   (dev/logs/norm-wide-fused-registers-2026-11-24.log).
   Measured and not taken: a block per multiprocessor asking L2 for its next row while it works on
   this one. H200 rms_norm float32 4096 x 16384 174 -> 147 us, but H100 196 -> 208 and the fused
   add 360 -> 482 (dev/logs/norm-wide-fused-*-2026-11-24.log). */
template <typename T, typename TW, int V, bool kOffset, bool kOdd, bool kTwoStrides>
__device__ __forceinline__ void wide_fused_row(const NormParams<kTwoStrides> &args, const RowIndex<kTwoStrides> &pos,
                                               const mv_outer_strides &outer, bool active, int lane,
                                               int group_threads, int vecs_per_row, float *warp_sums) {
    constexpr int kVecs = 2 * kMaxVecsPerThread;
    using VecT = mv_vec<T, V>;
    const mv_norm_input &in = args.in;
    const int hidden = static_cast<int>(in.hidden);
    const int last = vecs_per_row - 1;
    T *const s_row = static_cast<T *>(in.residual_out) + pos.at(in.residual_out_stride, outer.residual_out);
    float sum_sq = 0.0f;
    VecT s[kVecs];
    if (active) {
        const T *x_row = static_cast<const T *>(in.x) + pos.at(in.x_stride, outer.x);
        const T *r_row = static_cast<const T *>(in.residual) + pos.at(in.residual_stride, outer.residual);
        VecT r[kVecs];
        load_clamped<T, V, kOdd>(s, x_row, lane, group_threads, last, hidden);
        load_clamped<T, V, kOdd>(r, r_row, lane, group_threads, last, hidden);
#pragma unroll
        for (int i = 0; i < kVecs; ++i) {
            const int idx = lane + i * group_threads;
            if (idx > last) break;
            mv_add_rounded(s[i], r[i]);
            sum_sq = add_squares(sum_sq, s[i]);
            store_vec<T, V, kOdd>(s_row, idx, hidden, s[i]);
        }
    }
    sum_sq = group_sum(sum_sq, group_threads, warp_sums);
    if (!active) return;
    const float rrms = rsqrtf(sum_sq / static_cast<float>(in.hidden) + in.eps);
    mv_vec<TW, V> w[kVecs];
    /* every weight load before the first store (out is not __restrict__) */
#pragma unroll
    for (int i = 0; i < kVecs; ++i)
        w[i] = load_vec<TW, V, kOdd>(static_cast<const TW *>(in.norm_weight), min(lane + i * group_threads, last),
                                     hidden);
    T *const out_row = static_cast<T *>(args.out) + pos.at(args.out_stride, outer.out);
    store_normalized<kOffset, T, TW, V, kOdd>(out_row, s, w, lane, group_threads, last, hidden, rrms, in.weight_offset);
}

/* Where the weight is read:
   - kEarlyWeight: with the row, so its latency hides behind the row's. The weight is then kept
     packed through the reduction (keep_packed) when there is no residual; with one, that costs
     more than it saves in short calls.
   - otherwise (the fused add in calls of over 4 blocks an SM): all of a thread's weight vectors
     in one batch after the reduction, from L1/L2.
   launch_vec_kernel picks (measurements there and in docs/design.md).
   kOdd: rows of odd H (load_vec), V = 16 bytes: vectors from each row's first element, the last
   one cut at H. */
template <typename T, typename TW, int V, bool kHasResidual, bool kEarlyWeight, bool kOffset, bool kTwoStrides,
          bool kOdd = false, bool kWide = false>
__global__ void __launch_bounds__(kMaxVecThreads) rms_norm_vec_kernel(NormParams<kTwoStrides> args, int group_threads, int64_t prefetch_rows) {
    __shared__ float warp_sums[32];
    constexpr int kVecs = vecs_per_thread(V) * (kWide ? 2 : 1);
    const mv_outer_strides outer = outer_of(args);
    using VecT = mv_vec<T, V>;
    using WVecT = mv_vec<TW, V>; /* the weight: T, or float with 16-bit T */
    const mv_norm_input &in = args.in;
    /* int: the launcher sends only rows of at most kMaxVecThreads * kVecs vectors. */
    const int hidden = static_cast<int>(in.hidden);
    const int vecs_per_row = kOdd ? (hidden + V - 1) / V : static_cast<int>(in.hidden / V);
    const int rows_per_block = blockDim.x / group_threads;
    const int group = threadIdx.x / group_threads;
    const int lane = threadIdx.x % group_threads;
    const WVecT *weight = static_cast<const WVecT *>(in.norm_weight);
    /* Launched with PDL on sm_90+ (device.h): wait for the previous kernel before loading
       anything, then let the next one start (it too waits before it loads what this one writes),
       so its launch overlaps this kernel instead of following it. Before the wait, the first
       prefetch_rows rows are asked of L2, to stream in while that kernel ends (kPrefetchBytes).
       Each group asks for its own first row, a request per vector (so up to 8 per 128-byte line
       in 16-bit types): one request per line through mv_prefetch_rows_l2, the grid's threads
       sharing the lines, measured slower (M = 1 H = 4096 1.44 -> 1.53 us;
       dev/logs/norm-prefetch-per-line-nvidia-h200-2026-11-22.log). */
    const int64_t group_row = (int64_t)blockIdx.x * rows_per_block + group; /* this group's first row */
    if (group_row < (prefetch_rows < in.rows ? prefetch_rows : in.rows)) {
        const RowIndex<kTwoStrides> pos(group_row, outer.inner_rows);
        const T *x_row = static_cast<const T *>(in.x) + pos.at(in.x_stride, outer.x);
        const T *r_row = kHasResidual ? static_cast<const T *>(in.residual) + pos.at(in.residual_stride, outer.residual)
                                      : nullptr;
#pragma unroll
        for (int i = 0; i < kVecs; ++i) {
            const int idx = lane + i * group_threads;
            if (idx < vecs_per_row) {
                mv_prefetch_l2(reinterpret_cast<const VecT *>(x_row) + idx); /* an address only */
                if (kHasResidual) mv_prefetch_l2(reinterpret_cast<const VecT *>(r_row) + idx);
            }
        }
    }
    mv_pdl_wait();
    mv_pdl_trigger();

    /* The loop bound is the same for the whole block, so every thread reaches group_sum's
       barriers; groups past the last row just carry zeros. */
    for (int64_t first_row = (int64_t)blockIdx.x * rows_per_block; first_row < in.rows;
         first_row += (int64_t)gridDim.x * rows_per_block) {
        const int64_t row = first_row + group;
        const bool active = row < in.rows;
        const RowIndex<kTwoStrides> pos(row, outer.inner_rows);
        if constexpr (kWide && kHasResidual) {
            wide_fused_row<T, TW, V, kOffset, kOdd>(args, pos, outer, active, lane, group_threads, vecs_per_row,
                                                    warp_sums);
            continue;
        }
        /* The row stays in registers in its storage type (s is exactly representable in T:
           x itself, or the rounded sum), which halves the registers of 16-bit rows. */
        VecT row_vecs[kVecs];
        WVecT weight_vecs[kVecs];
        float sum_sq = 0.0f;
        if (active) {
            const T *x_row = static_cast<const T *>(in.x) + pos.at(in.x_stride, outer.x);
            VecT added[kVecs];
            /* All loads first, so each thread has every one of them in flight at once. */
#pragma unroll
            for (int i = 0; i < kVecs; ++i) {
                const int idx = lane + i * group_threads;
                if (idx < vecs_per_row) row_vecs[i] = load_vec<T, V, kOdd>(x_row, idx, hidden);
            }
            if (kEarlyWeight) {
#pragma unroll
                for (int i = 0; i < kVecs; ++i) {
                    const int idx = lane + i * group_threads;
                    if (idx < vecs_per_row) weight_vecs[i] = load_vec<TW, V, kOdd>(reinterpret_cast<const TW *>(weight), idx, hidden);
                }
            }
            if (kHasResidual) {
                const T *r_row = static_cast<const T *>(in.residual) + pos.at(in.residual_stride, outer.residual);
#pragma unroll
                for (int i = 0; i < kVecs; ++i) {
                    const int idx = lane + i * group_threads;
                    if (idx < vecs_per_row) added[i] = load_vec<T, V, kOdd>(r_row, idx, hidden);
                }
            }
#pragma unroll
            for (int i = 0; i < kVecs; ++i) {
                const int idx = lane + i * group_threads;
                if (idx >= vecs_per_row) continue;
                if (kHasResidual) mv_add_rounded(row_vecs[i], added[i]);
                /* kOdd: the last vector's elements past H were read as zero; with a residual
                   their sum is zero too */
                sum_sq = add_squares(sum_sq, row_vecs[i]);
                if (kHasResidual)
                    store_vec<T, V, kOdd>(static_cast<T *>(in.residual_out) +
                                              pos.at(in.residual_out_stride, outer.residual_out),
                                          idx, hidden, row_vecs[i]);
            }
        }
        sum_sq = group_sum(sum_sq, group_threads, warp_sums);
        if (!active) continue;
#pragma unroll
        for (int i = 0; i < kVecs; ++i) {
            keep_packed(row_vecs[i]);
            if (kEarlyWeight && !kHasResidual) keep_packed(weight_vecs[i]);
        }
        const float rrms = rsqrtf(sum_sq / static_cast<float>(in.hidden) + in.eps);
        VecT *out_row = reinterpret_cast<VecT *>(static_cast<T *>(args.out) + pos.at(args.out_stride, outer.out));
        if (!kEarlyWeight) {
            /* Every weight load before the first store: out is not __restrict__, so a load
               placed after a store could not be hoisted above it, and the four L2 round trips
               would run one after another. */
#pragma unroll
            for (int i = 0; i < kVecs; ++i) {
                const int idx = lane + i * group_threads;
                if (idx < vecs_per_row) weight_vecs[i] = load_vec<TW, V, kOdd>(reinterpret_cast<const TW *>(weight), idx, hidden);
            }
        }
#pragma unroll
        for (int i = 0; i < kVecs; ++i) {
            const int idx = lane + i * group_threads;
            if (idx >= vecs_per_row) continue;
            store_vec<T, V, kOdd>(reinterpret_cast<T *>(out_row), idx, hidden,
                                  normalized<kOffset>(row_vecs[i], weight_vecs[i], rrms, in.weight_offset));
        }
    }
}

/* ---- the fused add's rows over 4096 16-byte vectors ----------------------------------------- */

/* The fused add's rows too long for registers (over 4096 16-byte vectors: float32 H > 16384,
   16-bit H > 32768; virtual vectors from each row's first element off the 16-byte grid, kOdd): a
   block of 512 threads a row, each taking 8 vectors at a time. Pass 1 forms s chunk by chunk,
   stores it to residual_out and sums its squares; pass 2 reads s back (from L2, where it just
   went) with the weight and stores out. Loads past a row's end repeat its last vector, as in
   wide_fused_row. In place, each vector is read and written by one thread, pass 2 reading what
   that thread wrote in pass 1. The order of the sum depends on H alone. rms_norm's such rows
   stay on the reference kernel: this form, reading x twice, was no faster there (H200 float32
   1 x 32768 10.36 us against 10.33, 1024 x 20000 74.75 against 70.24;
   dev/logs/norm-long-rows-nvidia-h200-2026-11-24.log). */
template <typename T, typename TW, int V, bool kOffset, bool kTwoStrides, bool kOdd>
__global__ void __launch_bounds__(kMaxVecThreads) fused_add_long_kernel(NormParams<kTwoStrides> args) {
    __shared__ float warp_sums[32];
    constexpr int kChunk = 2 * kMaxVecsPerThread;
    using VecT = mv_vec<T, V>;
    const mv_outer_strides outer = outer_of(args);
    const mv_norm_input &in = args.in;
    const int hidden = static_cast<int>(in.hidden); /* the launcher sends rows of at most 2^30 */
    const int last = (kOdd ? (hidden + V - 1) / V : hidden / V) - 1;
    const int threads = static_cast<int>(blockDim.x), lane = static_cast<int>(threadIdx.x);
    const int step = kChunk * threads;
    const TW *weight = static_cast<const TW *>(in.norm_weight);
    mv_pdl_wait();
    mv_pdl_trigger();
    /* The loop bounds are the same for the whole block, so every thread reaches group_sum. */
    for (int64_t row = blockIdx.x; row < in.rows; row += gridDim.x) {
        const RowIndex<kTwoStrides> pos(row, outer.inner_rows);
        const T *x_row = static_cast<const T *>(in.x) + pos.at(in.x_stride, outer.x);
        const T *s_row = x_row; /* residual_out once pass 1 has run: where pass 2 finds s */
        float sum_sq = 0.0f;
        for (int first = lane; first - lane <= last; first += step) {
            VecT s[kChunk];
            load_clamped<T, V, kOdd>(s, x_row, first, threads, last, hidden);
            const T *r_row = static_cast<const T *>(in.residual) + pos.at(in.residual_stride, outer.residual);
            T *ro_row = static_cast<T *>(in.residual_out) + pos.at(in.residual_out_stride, outer.residual_out);
            s_row = ro_row;
            VecT r[kChunk];
            load_clamped<T, V, kOdd>(r, r_row, first, threads, last, hidden);
#pragma unroll
            for (int i = 0; i < kChunk; ++i) {
                const int idx = first + i * threads;
                if (idx > last) break;
                mv_add_rounded(s[i], r[i]);
                store_vec<T, V, kOdd>(ro_row, idx, hidden, s[i]);
                sum_sq = add_squares(sum_sq, s[i]);
            }
        }
        sum_sq = group_sum(sum_sq, threads, warp_sums);
        const float rrms = rsqrtf(sum_sq / static_cast<float>(in.hidden) + in.eps);
        T *out_row = static_cast<T *>(args.out) + pos.at(args.out_stride, outer.out);
        for (int first = lane; first - lane <= last; first += step) {
            VecT s[kChunk];
            mv_vec<TW, V> w[kChunk];
            /* every load of the chunk before its first store (out is not __restrict__) */
            load_clamped<T, V, kOdd>(s, s_row, first, threads, last, hidden);
            load_clamped<TW, V, kOdd>(w, weight, first, threads, last, hidden);
            store_normalized<kOffset, T, TW, V, kOdd>(out_row, s, w, first, threads, last, hidden, rrms,
                                                      in.weight_offset);
        }
    }
}

/* rms_norm's rows of 4097-8192 16-byte vectors (float32 H 16385-32768, 16-bit H 32769-65536) on
   the 16-byte grid: a block a row of up to 512 threads, 16 vectors a
   thread held in registers (the whole row read from DRAM once, every load in flight together),
   the weight read after the reduction kBatch vectors at a time. The reference kernel took these
   rows in batches of loads, one DRAM round trip per batch, and ran at 0.56-0.67x Liger's time
   (H200 float32 1 x 32768 10.34 us against 5.80; dev/logs/norm-long-rows-nvidia-h200-2026-11-24.log);
   on this kernel 5.25 against 5.85, 1024 x 20000 45.8 against 50.3, H100 alike
   (dev/logs/norm-wider-rows-2026-11-25.log). A thread sums its vectors in index order, then the block (group_sum): the order depends on H.
   Rows off the grid stay on the reference kernel: virtual vectors (load16_at) spilled 8-316 bytes
   here at 128 registers. */
template <typename T, typename TW, int V, bool kOffset, bool kTwoStrides>
__global__ void __launch_bounds__(kMaxVecThreads) rms_norm_wider_kernel(NormParams<kTwoStrides> args) {
    __shared__ float warp_sums[32];
    constexpr int kVecs = 4 * kMaxVecsPerThread;
    /* 8 weight vectors at a time, 4 of a float32 weight beside 16-bit rows (32-byte vectors) */
    constexpr int kBatch = sizeof(TW) > sizeof(T) ? kMaxVecsPerThread : 2 * kMaxVecsPerThread;
    using VecT = mv_vec<T, V>;
    const mv_outer_strides outer = outer_of(args);
    const mv_norm_input &in = args.in;
    const int hidden = static_cast<int>(in.hidden); /* the launcher sends rows of at most 2^16 elements */
    const int last = hidden / V - 1;
    const int threads = static_cast<int>(blockDim.x), lane = static_cast<int>(threadIdx.x);
    const TW *weight = static_cast<const TW *>(in.norm_weight);
    mv_pdl_wait();
    mv_pdl_trigger();
    /* The loop bounds are the same for the whole block, so every thread reaches group_sum. */
    for (int64_t row = blockIdx.x; row < in.rows; row += gridDim.x) {
        const RowIndex<kTwoStrides> pos(row, outer.inner_rows);
        const T *x_row = static_cast<const T *>(in.x) + pos.at(in.x_stride, outer.x);
        VecT s[kVecs];
        load_clamped<T, V, false>(s, x_row, lane, threads, last, hidden);
        float sum_sq = 0.0f;
#pragma unroll
        for (int i = 0; i < kVecs; ++i) {
            if (lane + i * threads > last) break;
            sum_sq = add_squares(sum_sq, s[i]);
        }
        sum_sq = group_sum(sum_sq, threads, warp_sums);
#pragma unroll
        for (int i = 0; i < kVecs; ++i) keep_packed(s[i]);
        const float rrms = rsqrtf(sum_sq / static_cast<float>(in.hidden) + in.eps);
        T *out_row = static_cast<T *>(args.out) + pos.at(args.out_stride, outer.out);
#pragma unroll
        for (int b = 0; b < kVecs; b += kBatch) {
            const int first = lane + b * threads;
            VecT part[kBatch];
            mv_vec<TW, V> w[kBatch];
#pragma unroll
            for (int i = 0; i < kBatch; ++i) part[i] = s[b + i];
            /* the batch's weight loads before its first store (out is not __restrict__) */
            load_clamped<TW, V, false>(w, weight, first, threads, last, hidden);
            store_normalized<kOffset, T, TW, V, false>(out_row, part, w, first, threads, last, hidden, rrms,
                                                      in.weight_offset);
        }
    }
}

/* Rows that rms_norm_wider_kernel takes: at most this many 16-byte vectors */
constexpr int64_t kWiderMaxVecs = int64_t{kMaxVecThreads} * 4 * kMaxVecsPerThread;

template <typename T, typename TW, int V>
cudaError_t launch_wider(const mv_rms_norm_args &a, int group_threads, cudaStream_t stream, bool pdl) {
    const bool offset = a.in.weight_offset != 0.0f;
    const dim3 grid(static_cast<unsigned>(a.in.rows < kMaxRowBlocks ? a.in.rows : kMaxRowBlocks)), block(group_threads);
    const cudaError_t err =
        a.outer.inner_rows > 0
            ? mv_launch(offset ? rms_norm_wider_kernel<T, TW, V, true, true>
                               : rms_norm_wider_kernel<T, TW, V, false, true>,
                        grid, block, 0, stream, pdl, params_of<true>(a))
            : mv_launch(offset ? rms_norm_wider_kernel<T, TW, V, true, false>
                               : rms_norm_wider_kernel<T, TW, V, false, false>,
                        grid, block, 0, stream, pdl, params_of<false>(a));
    return err;
}

/* fused_add_long_kernel's int indices: rows of at most 2^30 elements (longer ones, the
   reference kernel's int64 loop) */
constexpr int64_t kLongMaxHidden = int64_t{1} << 30;

template <typename T, typename TW, int V, bool kOdd>
cudaError_t launch_fused_long(const mv_rms_norm_args &a, cudaStream_t stream, bool pdl) {
    const bool offset = a.in.weight_offset != 0.0f;
    const dim3 grid(static_cast<unsigned>(a.in.rows < kMaxRowBlocks ? a.in.rows : kMaxRowBlocks)), block(kMaxVecThreads);
    const cudaError_t err =
        a.outer.inner_rows > 0
            ? mv_launch(offset ? fused_add_long_kernel<T, TW, V, true, true, kOdd>
                               : fused_add_long_kernel<T, TW, V, false, true, kOdd>,
                        grid, block, 0, stream, pdl, params_of<true>(a))
            : mv_launch(offset ? fused_add_long_kernel<T, TW, V, true, false, kOdd>
                               : fused_add_long_kernel<T, TW, V, false, false, kOdd>,
                        grid, block, 0, stream, pdl, params_of<false>(a));
    return err;
}

/* ---- short calls ----------------------------------------------------------------------------- */

/* A call of at most one row per multiprocessor takes one row's latency: a chain of loads, a sum,
   shuffles and stores, mostly on one warp, where the general kernel's bookkeeping adds to the
   time. rms_norm_short_kernel is rms_norm_vec_kernel's layout and summation order (kEarlyWeight
   form), so a row has the same bits on either (batch invariance), without what long calls need:
   its grid covers the rows once (no grid-stride loop), a block splits into groups by a shift,
   and its parameter is small, with what the start of the kernel reads in its first 48 bytes
   (each launch fetches its parameter's constant-cache lines anew). Rows of 16-byte vectors or
   single elements, in one stride of at most 2^31 - 1 elements. H100, bf16 M = 1 H = 1024, PDL
   off: 1.90 -> 1.66 us (bench_rms_norm); in a probe's graph chain 1.47 us a call, against 1.58
   for a first form (a 96-byte parameter, a branch on the group split) and 1.33 for a minimal
   kernel of the same layout; dev/logs/norm-short-kernel-nvidia-h100-80gb-hbm3-2026-11-24.log. */
struct ShortParams {
    const void *x;
    void *out;
    const void *weight;
    int x_stride, out_stride;
    int hidden;
    float eps;
    union {
        unsigned short rows;  /* rms_norm_short_kernel */
        unsigned short group; /* rms_norm_lanes_kernel: G of the general layout, whose order it keeps */
    };
    unsigned char group_shift; /* log2 G where G <= 32; 10 where a block holds one row of G > 32 */
    unsigned char prefetch;    /* ask L2 for the row before waiting for the previous kernel (PDL) */
    float weight_offset;
    const void *residual;
    void *residual_out;
    int residual_stride, residual_out_stride;
};

template <typename T, typename TW, int V, bool kHasResidual, bool kOffset, bool kTail>
__global__ void __launch_bounds__(kMaxVecThreads) rms_norm_short_kernel(ShortParams p) {
    __shared__ float warp_sums[32];
    constexpr int kVecs = vecs_per_thread(V);
    using VecT = mv_vec<T, V>;
    using WVecT = mv_vec<TW, V>;
    /* G = 2^shift threads a group up to a warp, a warp's worth of groups a block; beyond, a block
       of G threads and one row (shift 10: every thread is lane, the block one group). */
    const int shift = p.group_shift;
    const int group_threads = min(1 << shift, static_cast<int>(blockDim.x));
    const int lane = threadIdx.x & ((1 << shift) - 1);
    const int rows_per_block = max(static_cast<int>(blockDim.x) >> shift, 1);
    const int row = static_cast<int>(blockIdx.x) * rows_per_block + static_cast<int>(threadIdx.x >> shift);
    const bool active = row < p.rows;
    const int hidden = p.hidden;
    const int full = hidden / V; /* whole vectors; kTail: one more, cut at H */
    const int vecs_per_row = kTail ? (hidden + V - 1) / V : full;
    const T *x_row = static_cast<const T *>(p.x) + static_cast<int64_t>(row) * p.x_stride;
    const T *r_row = kHasResidual ? static_cast<const T *>(p.residual) + static_cast<int64_t>(row) * p.residual_stride
                                  : nullptr;
    if (p.prefetch && active) { /* as rms_norm_vec_kernel: a request per vector */
#pragma unroll
        for (int i = 0; i < kVecs; ++i) {
            const int idx = lane + i * group_threads;
            if (idx < vecs_per_row) {
                mv_prefetch_l2(x_row + idx * V);
                if (kHasResidual) mv_prefetch_l2(r_row + idx * V);
            }
        }
    }
    mv_pdl_wait();
    mv_pdl_trigger();

    const WVecT *weight = static_cast<const WVecT *>(p.weight);
    VecT row_vecs[kVecs];
    WVecT weight_vecs[kVecs];
    float sum_sq = 0.0f;
    if (active) {
        VecT added[kVecs];
#pragma unroll
        for (int i = 0; i < kVecs; ++i) {
            const int idx = lane + i * group_threads;
            if (idx < full) row_vecs[i] = reinterpret_cast<const VecT *>(x_row)[idx];
        }
#pragma unroll
        for (int i = 0; i < kVecs; ++i) {
            const int idx = lane + i * group_threads;
            if (idx < full) weight_vecs[i] = weight[idx];
        }
        if (kHasResidual) {
#pragma unroll
            for (int i = 0; i < kVecs; ++i) {
                const int idx = lane + i * group_threads;
                if (idx < full) added[i] = reinterpret_cast<const VecT *>(r_row)[idx];
            }
        }
        if (kTail) { /* after the whole vectors' loads, so those are all in flight first */
#pragma unroll
            for (int i = 0; i < kVecs; ++i) {
                if (lane + i * group_threads != full) continue;
                row_vecs[i] = tail_load<T, V>(x_row + full * V, hidden - full * V);
                weight_vecs[i] = tail_load<TW, V>(static_cast<const TW *>(p.weight) + full * V, hidden - full * V);
                if (kHasResidual) added[i] = tail_load<T, V>(r_row + full * V, hidden - full * V);
            }
        }
        VecT *ro_row = kHasResidual ? reinterpret_cast<VecT *>(static_cast<T *>(p.residual_out) +
                                                              static_cast<int64_t>(row) * p.residual_out_stride)
                                    : nullptr;
#pragma unroll
        for (int i = 0; i < kVecs; ++i) {
            const int idx = lane + i * group_threads;
            if (idx >= vecs_per_row) continue;
            if (kHasResidual) mv_add_rounded(row_vecs[i], added[i]);
            sum_sq = add_squares(sum_sq, row_vecs[i]); /* kTail: zeros past H, as rms_norm_vec_kernel<kOdd> */
            if (kHasResidual) {
                if (!kTail || idx < full) ro_row[idx] = row_vecs[i];
                else tail_store<T, V>(reinterpret_cast<T *>(ro_row) + full * V, hidden - full * V, row_vecs[i]);
            }
        }
    }
    /* group_sum's order: a butterfly over G <= 32 (offsets G / 2 down to 1); beyond, the warps'
       butterflies, then their sums in order */
    if (group_threads <= 32) {
#pragma unroll
        for (int offset = 16; offset > 0; offset >>= 1)
            if (offset < group_threads) sum_sq += __shfl_xor_sync(0xffffffffu, sum_sq, offset);
    } else {
        sum_sq = mv_warp_sum(sum_sq);
        if ((threadIdx.x & 31) == 0) warp_sums[threadIdx.x >> 5] = sum_sq;
        __syncthreads();
        float total = 0.0f;
        for (int w = 0; w < (group_threads >> 5); ++w) total += warp_sums[w];
        sum_sq = total;
    }
    if (!active) return;
#pragma unroll
    for (int i = 0; i < kVecs; ++i) {
        keep_packed(row_vecs[i]);
        if (!kHasResidual) keep_packed(weight_vecs[i]);
    }
    const float rrms = rsqrtf(sum_sq / static_cast<float>(hidden) + p.eps);
    VecT *out_row = reinterpret_cast<VecT *>(static_cast<T *>(p.out) + static_cast<int64_t>(row) * p.out_stride);
#pragma unroll
    for (int i = 0; i < kVecs; ++i) {
        const int idx = lane + i * group_threads;
        if (idx >= vecs_per_row) continue;
        const VecT result = normalized<kOffset>(row_vecs[i], weight_vecs[i], rrms, p.weight_offset);
        if (!kTail || idx < full) out_row[idx] = result;
        else tail_store<T, V>(reinterpret_cast<T *>(out_row) + full * V, hidden - full * V, result);
    }
}

/* ---- short calls, one vector a thread --------------------------------------------------------- */

/* The short kernel's rows with one vector (or element) a thread and one row a block: a thread's
   chain is then one load, one vector's arithmetic and one store, where G threads of 4-8 vectors
   each (the general layout) put four to eight of them on one warp's critical path. The sum keeps
   that layout's order, so the bits are those of the other kernels (batch invariance): each thread
   puts its vector's sum of squares in shared memory, the layout's G "virtual" threads add theirs
   (vectors t, t + G, ...) in turn, then reduce as group_sum does. Which calls take it, and its
   figures: lanes_wanted. Its parameter is the short kernel's (group for rows, no group_shift):
   G worked out in the kernel instead cost 0.06-0.13 us a call on an H100 (bf16 fused add 1 x 121
   1.30 us with PDL, 1.17 with G passed in, two calls of one day;
   dev/logs/norm-lanes-kernel-nvidia-h100-80gb-hbm3-2026-11-24.log). */

/* The lanes kernels' row sum, from parts[i] = vector i's sum of squares (every thread's parts
   written before the call; all threads call it, whole warps): virtual thread u of G adds its
   vectors' sums in turn (vectors u, u + G, ...), then group_sum's tree: a butterfly over G <= 32
   (offsets G / 2 down to 1), else each warp's butterfly and the warps' sums in order.
   Where G <= 32 every warp works the tree out itself (lane l as virtual thread l), so one barrier
   does: handing warp 0's total to the others through shared memory took a second one (H200 bf16
   1 x 1024: 1.52 -> 1.40 us without PDL, 1.01 -> 0.84 with;
   dev/logs/norm-lanes-one-barrier-nvidia-h200-2026-11-25.log). Above 32 the virtual threads span
   warps, and each warp doing all of them ran slower (bf16 1 x 4096 2.10 -> 2.34 us without PDL:
   2-4 butterflies in a row on every warp), so those warps' sums go through warp_sums. */
template <int kVecs>
__device__ __forceinline__ float lanes_row_sum(const float *parts, float *warp_sums, int group, int vecs) {
    const int u = threadIdx.x;
    __syncthreads();
    if (group <= 32) {
        /* Every aligned block of G lanes works the row out (lane l as virtual thread l mod G; G is
           a power of two here), so the butterfly, whose offsets stay inside such a block, leaves
           the total on every lane: a + b == b + a, so partners hold equal sums after each step.
           Offsets unrolled, no broadcast from lane 0 after them. */
        const int lane = u & (group - 1);
        float acc = 0.0f;
#pragma unroll
        for (int i = 0; i < kVecs; ++i) {
            const int idx = lane + i * group;
            if (idx < vecs) acc = __fadd_rn(acc, parts[idx]);
        }
#pragma unroll
        for (int offset = 16; offset > 0; offset >>= 1)
            if (offset < group) acc += __shfl_xor_sync(0xffffffffu, acc, offset);
        return acc;
    }
    if (u < group) {
        float acc = 0.0f;
#pragma unroll
        for (int i = 0; i < kVecs; ++i) {
            const int idx = u + i * group;
            if (idx < vecs) acc = __fadd_rn(acc, parts[idx]);
        }
        acc = mv_warp_sum(acc);
        if ((u & 31) == 0) warp_sums[u >> 5] = acc;
    }
    __syncthreads();
    /* the warps' sums in order, the first 8 loaded at once (no lanes kernel's row has more) */
    const int warps = group >> 5;
    float total = 0.0f;
#pragma unroll
    for (int k = 0; k < 8; ++k)
        if (k < warps) total += warp_sums[k];
    for (int k = 8; k < warps; ++k) total += warp_sums[k];
    return total;
}

template <typename T, typename TW, int V, bool kHasResidual, bool kOffset>
__global__ void __launch_bounds__(kMaxThreads) rms_norm_lanes_kernel(ShortParams p) {
    __shared__ float parts[kMaxThreads];
    __shared__ float warp_sums[32];
    constexpr int kVecs = vecs_per_thread(V);
    using VecT = mv_vec<T, V>;
    using WVecT = mv_vec<TW, V>;
    const int u = threadIdx.x;
    const int vecs = p.hidden / V;
    const bool mine = u < vecs;
    const int64_t row = blockIdx.x;
    const VecT *x_row = reinterpret_cast<const VecT *>(static_cast<const T *>(p.x) + row * p.x_stride);
    const VecT *r_row = kHasResidual
                            ? reinterpret_cast<const VecT *>(static_cast<const T *>(p.residual) + row * p.residual_stride)
                            : nullptr;
    if (p.prefetch && mine) {
        mv_prefetch_l2(x_row + u);
        if (kHasResidual) mv_prefetch_l2(r_row + u);
    }
    mv_pdl_wait();
    mv_pdl_trigger();

    VecT s;
    WVecT w;
    float part = 0.0f;
    if (mine) {
        s = x_row[u];
        w = static_cast<const WVecT *>(p.weight)[u];
        if (kHasResidual) {
            mv_add_rounded(s, r_row[u]);
            reinterpret_cast<VecT *>(static_cast<T *>(p.residual_out) + row * p.residual_out_stride)[u] = s;
        }
        part = vector_squares(s);
    }
    parts[u] = part;
    const float total = lanes_row_sum<kVecs>(parts, warp_sums, p.group, vecs);
    if (!mine) return;
    const float rrms = rsqrtf(total / static_cast<float>(p.hidden) + p.eps);
    reinterpret_cast<VecT *>(static_cast<T *>(p.out) + row * p.out_stride)[u] =
        normalized<kOffset>(s, w, rrms, p.weight_offset);
}

/* Rows of 129-1024 16-byte vectors (lanes_wanted says which): two vectors a thread (u and
   u + blockDim.x), blocks of up to 512 threads, the same sum. A kernel of its own: the one-vector
   kernel templated on vectors a thread got other code for one vector, and its fused adds ran
   4-12% slower (dev/logs/norm-lanes-pair-first-form-nvidia-h200-2026-11-24.log).
   rms_norm's form is bounded at its real 512 threads: at 1024 ptxas fit fp16 into 32 registers by
   loading the row sum's shared-memory parts one at a time on the row's critical path (H200 fp16
   1 x 4096 2.10 -> 1.96 us without PDL). The fused add's code under that bound (fp16 44 -> 40
   registers, float32 46 -> 40) ran 0.4-1.4% slower, so it keeps 1024. At 40 registers fewer
   fp16 rows fit a wave, so 1024 x 3584-4096 take the general kernel: 1.05-1.07x slower without
   PDL, 0.91-0.93x with; dev/logs/norm-lanes-pair-bounds-nvidia-h200-h100-2026-11-27.log. */
template <typename T, typename TW, int V, bool kHasResidual, bool kOffset>
__global__ void __launch_bounds__(kHasResidual ? kMaxThreads : kMaxVecThreads) rms_norm_lanes_pair_kernel(ShortParams p) {
    constexpr int kPer = 2;
    __shared__ float parts[kMaxThreads];
    __shared__ float warp_sums[32];
    constexpr int kVecs = vecs_per_thread(V);
    using VecT = mv_vec<T, V>;
    using WVecT = mv_vec<TW, V>;
    const int u = threadIdx.x;
    const int threads = blockDim.x;
    const int vecs = p.hidden / V;
    const int64_t row = blockIdx.x;
    const VecT *x_row = reinterpret_cast<const VecT *>(static_cast<const T *>(p.x) + row * p.x_stride);
    const VecT *r_row = kHasResidual
                            ? reinterpret_cast<const VecT *>(static_cast<const T *>(p.residual) + row * p.residual_stride)
                            : nullptr;
    if (p.prefetch) {
#pragma unroll
        for (int j = 0; j < kPer; ++j) {
            if (u + j * threads >= vecs) continue;
            mv_prefetch_l2(x_row + u + j * threads);
            if (kHasResidual) mv_prefetch_l2(r_row + u + j * threads);
        }
    }
    mv_pdl_wait();
    mv_pdl_trigger();

    VecT s[kPer];
    WVecT w[kPer];
    VecT added[kPer];
#pragma unroll
    for (int j = 0; j < kPer; ++j)
        if (u + j * threads < vecs) s[j] = x_row[u + j * threads];
#pragma unroll
    for (int j = 0; j < kPer; ++j)
        if (u + j * threads < vecs) w[j] = static_cast<const WVecT *>(p.weight)[u + j * threads];
    if (kHasResidual) {
#pragma unroll
        for (int j = 0; j < kPer; ++j)
            if (u + j * threads < vecs) added[j] = r_row[u + j * threads];
    }
#pragma unroll
    for (int j = 0; j < kPer; ++j) {
        const int idx = u + j * threads;
        float part = 0.0f;
        if (idx < vecs) {
            if (kHasResidual) {
                mv_add_rounded(s[j], added[j]);
                reinterpret_cast<VecT *>(static_cast<T *>(p.residual_out) + row * p.residual_out_stride)[idx] = s[j];
            }
            part = vector_squares(s[j]);
        }
        parts[idx] = part;
    }
    const float total = lanes_row_sum<kVecs>(parts, warp_sums, p.group, vecs);
    if (u >= vecs) return;
    const float rrms = rsqrtf(total / static_cast<float>(p.hidden) + p.eps);
    VecT *out_row = reinterpret_cast<VecT *>(static_cast<T *>(p.out) + row * p.out_stride);
#pragma unroll
    for (int j = 0; j < kPer; ++j)
        if (u + j * threads < vecs) out_row[u + j * threads] = normalized<kOffset>(s[j], w[j], rrms, p.weight_offset);
}

/* ---- rows of single elements, G compiled in ------------------------------------------------- */

/* Rows that only single elements fit (odd H, misaligned views) of G threads (a power of two up to
   512; below 32, 32 / G rows a warp), in one stride: the general kernel's layout and order for
   V = 1 (8 elements a thread at lane + i G, a thread's squares in index order, then group_sum),
   so a row has the same bits on any kernel.
   G compiled in makes each element's address this thread's first plus an immediate, and the
   launch bounds ask for a full SM of threads (32 registers). The general kernel held 48 at
   run-time G (a 64-bit address a load), 10 rows an SM where Liger's 27-register kernel holds
   16. H100 bf16 4096 x 999: 11.95 -> 7.05 us with PDL, 14.08 -> 8.26 without (Liger 9.13);
   float32 17.88 -> 12.38 (dev/logs/norm-odd-rows-nvidia-h100-2026-11-25.log, call 3). A block holds
   128 / G rows where a row has fewer than 4 warps (blocks of one warp would cap an SM at 32
   of them). The weight offset is a select, not a compile-time switch (its kernels would
   double): g = w where the offset is 0, as the other kernels' kOffset = false. */
constexpr int elems_block_threads(int g) { return g >= 128 ? g : 128; }

template <typename T, typename TW, bool kHasResidual, int kG>
__global__ void __launch_bounds__(elems_block_threads(kG), 2048 / elems_block_threads(kG))
    rms_norm_elems_kernel(NormParams<false> args, int prefetch_rows) {
    constexpr int G = kG;
    constexpr int kRows = elems_block_threads(kG) / G;
    constexpr int kPer = vecs_per_thread(1);
    __shared__ float warp_sums[32];
    const mv_norm_input &in = args.in;
    const int lane = static_cast<int>(threadIdx.x) % G;
    const int left = static_cast<int>(in.hidden) - lane; /* element i of this thread is in the row if i G < left */
    /* The grid covers the rows once (launch_elems: int rows and strides). A group past the last
       row reads the last row and stores nothing, so it carries values through group_sum's
       barriers. Each pointer is this thread's first element: the others are immediates away. */
    const int row = static_cast<int>(blockIdx.x) * kRows + static_cast<int>(threadIdx.x) / G;
    const int rows = static_cast<int>(in.rows);
    const bool active = row < rows;
    const int64_t read_row = active ? row : rows - 1;
    const T *xp = static_cast<const T *>(in.x) + read_row * static_cast<int>(in.x_stride) + lane;
    const T *rp = kHasResidual ? static_cast<const T *>(in.residual) + read_row * static_cast<int>(in.residual_stride) + lane
                               : nullptr;
    if (active && row < prefetch_rows) { /* before the wait: L2 for the row's lines, a line a thread */
        const int64_t bytes = in.hidden * static_cast<int64_t>(sizeof(T));
        mv_prefetch_span_l2(xp - lane, bytes, lane, G);
        if (kHasResidual) mv_prefetch_span_l2(rp - lane, bytes, lane, G);
    }
    mv_pdl_wait();
    mv_pdl_trigger();
    const T zero = mv_from_float<T>(0.0f);
    const TW *wp = static_cast<const TW *>(in.norm_weight) + lane;
    T s[kPer];
    TW w[kPer];
#pragma unroll
    for (int i = 0; i < kPer; ++i) s[i] = i * G < left ? xp[i * G] : zero;
    if (kHasResidual) {
        /* the weight after the sum here: x, the residual and the weight together held more
           registers than the bound allows */
        T *rop = static_cast<T *>(in.residual_out) + static_cast<int64_t>(row) * static_cast<int>(in.residual_out_stride) + lane;
        T r[kPer];
#pragma unroll
        for (int i = 0; i < kPer; ++i) r[i] = i * G < left ? rp[i * G] : zero;
#pragma unroll
        for (int i = 0; i < kPer; ++i) {
            mv_vec<T, 1> v{{s[i]}};
            mv_add_rounded(v, mv_vec<T, 1>{{r[i]}});
            s[i] = v.v[0];
            if (active && i * G < left) rop[i * G] = s[i];
        }
    } else {
#pragma unroll
        for (int i = 0; i < kPer; ++i) w[i] = i * G < left ? wp[i * G] : mv_from_float<TW>(0.0f);
    }
    float sum_sq = 0.0f;
#pragma unroll
    for (int i = 0; i < kPer; ++i)
        if (i * G < left) sum_sq = add_squares(sum_sq, mv_vec<T, 1>{{s[i]}});
    sum_sq = group_sum<4>(sum_sq, G, warp_sums);
    if (!active) return;
    if (kHasResidual) {
#pragma unroll
        for (int i = 0; i < kPer; ++i) w[i] = i * G < left ? wp[i * G] : mv_from_float<TW>(0.0f);
    }
    const float rrms = rsqrtf(sum_sq / static_cast<float>(in.hidden) + in.eps);
    const bool offset = in.weight_offset != 0.0f;
    T *op = static_cast<T *>(args.out) + static_cast<int64_t>(row) * static_cast<int>(args.out_stride) + lane;
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
        if (i * G >= left) continue;
        const mv_vec<T, 1> sv{{s[i]}};
        const mv_vec<TW, 1> wv{{w[i]}};
        op[i * G] = (offset ? normalized<true>(sv, wv, rrms, in.weight_offset) : normalized<false>(sv, wv, rrms, 0.0f)).v[0];
    }
}

/* ---- float32 rows off the 16-byte grid above 4096 elements, in place ------------------------ */

/* dst[base + l + 32 k] = src[l + 32 k], k < 4, below hidden: a warp's 128 elements from shared
   memory, lane by lane, so each 4-byte store of the warp fills whole lines. Each lane storing its
   own 4 elements put a warp's stores over 16 sectors 4 times, and rms_norm ran at 0.6-0.7x the
   staged kernel (H200 float32 4096 x 8191: 145 us against 91; this form 75;
   dev/logs/norm-virtual-rows-nvidia-h200-2026-11-26.log). */
__device__ __forceinline__ void store_lines(float *dst, const float *src, int base, int hidden, int l) {
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        const int e = base + l + 32 * k;
        if (e < hidden) dst[e] = src[l + 32 * k];
    }
}

/* Stores a warp's 32 vectors of 4 (128 consecutive elements from base, lane l's at 4 l) through
   buf, 128 floats of shared memory (store_lines). */
__device__ __forceinline__ void store_warp_lines(float *dst, const mv_vec<float, 4> &v, int base, int hidden, float *buf,
                                                 int l) {
    reinterpret_cast<float4 *>(buf)[l] = make_float4(v.v[0], v.v[1], v.v[2], v.v[3]);
    __syncwarp();
    store_lines(dst, buf, base, hidden, l);
    __syncwarp(); /* every lane has read buf before its next use */
}

/* Elements e0 .. e0 + 3 of a float32 row as a vector, zero from hidden on (nothing read there). */
__device__ __forceinline__ mv_vec<float, 4> row_elements(const float *row, int e0, int hidden) {
    mv_vec<float, 4> v;
#pragma unroll
    for (int j = 0; j < 4; ++j) v.v[j] = e0 + j < hidden ? row[e0 + j] : 0.0f;
    return v;
}

/* Float32 rows off the 16-byte grid (odd H, or misaligned views) above 4096 elements, one stride:
   the general kernel's layout and order for them (16-byte virtual vectors from each row's first
   element, the last cut at H, G threads of 4 vectors, vector lane + i G, then group_sum), so a
   row has the same bits on every kernel. One row a block of G threads; each element loaded on
   its own (a row starts 4-byte aligned only; L1 serves a warp's four loads of the same lines),
   none of the general kernel's alignment cases or row loop, stores by whole lines
   (store_warp_lines). rms_norm holds the row in registers: 62-64 of them, so an SM holds 2 rows
   of G = 512 (the general kernel held 97-103, one) and 3 of G <= 320; kMinBlocks = 3 holds the
   same code for G <= 384 to 56 registers, 3 rows there (virtual_kernel). The fused add holds the
   row in registers up to G = 320 (64 of them, 3 rows an SM); from G = 352 (kRowShared) it holds
   s = x + residual in shared memory (the row's 4 G vectors, 32 KiB at most, as they are in
   registers: held as float4 and converted, ptxas spilled 8 bytes and the calls ran 2-5% slower)
   and in registers only while it loads: 40 of them, 3-4 rows an SM, where in registers 2 fitted
   and the general kernel (one row an SM) ran it instead. Capped at 32 registers for 4 rows of
   G > 384 it spilled 12 bytes and ran 4-8% slower (dev/logs/norm-shared-row-vec-nvidia-h200-2026-11-28.log).
   Which calls take it: virtual_wanted. In place (out = x,
   residual_out = residual): a warp stores a range of the row only after every lane of it has
   read that range (the values it stores depend on those reads), and no other warp reads it. */
constexpr int kVirtual3Threads = 384;
constexpr int kVirtual2FormMaxThreadsAt3 = 320; /* 3 x 320 threads x 64 registers: the register file */
template <bool kHasResidual, bool kOffset, int kMinBlocks, bool kRowShared = false>
__global__ void __launch_bounds__(kMinBlocks == 3 && !kRowShared ? kVirtual3Threads : kMaxVecThreads, kMinBlocks)
    rms_norm_virtual_kernel(NormParams<false> args, int prefetch_rows) {
    constexpr int V = 4;
    constexpr int kVecs = vecs_per_thread(V);
    using VecT = mv_vec<float, V>;
    __shared__ float warp_sums[32];
    /* a warp's 128 elements at a time for store_warp_lines; kRowShared: the row */
    __shared__ __align__(16) float lines[kMaxVecThreads * V * (kRowShared ? kVecs : 1)];
    const mv_norm_input &in = args.in;
    const int G = static_cast<int>(blockDim.x);
    const int u = static_cast<int>(threadIdx.x);
    const int l = u & 31, warp_first = (u & ~31) * V; /* the warp's first element of each vector range */
    const int hidden = static_cast<int>(in.hidden);
    const int64_t row = blockIdx.x;
    const float *x_row = static_cast<const float *>(in.x) + row * in.x_stride;
    const float *r_row = kHasResidual ? static_cast<const float *>(in.residual) + row * in.residual_stride : nullptr;
    if (row < prefetch_rows) { /* before the wait: L2 for the row's lines, a line a thread */
        mv_prefetch_span_l2(x_row, in.hidden * 4, u, G);
        if (kHasResidual) mv_prefetch_span_l2(r_row, in.hidden * 4, u, G);
    }
    mv_pdl_wait();
    mv_pdl_trigger();
    /* element j of vector i: first + i * step + j, in the row below hidden */
    const int first = u * V, step = G * V;
    const float *weight = static_cast<const float *>(in.norm_weight);
    float *out_row = static_cast<float *>(args.out) + row * args.out_stride;
    float sum_sq = 0.0f;
    if constexpr (kRowShared) {
        static_assert(kHasResidual, "the row in shared memory: the fused add's form");
        /* lines[e] holds element e of the row (s, then the output): vector i of thread u at 4 (u + i G) */
        VecT *held = reinterpret_cast<VecT *>(lines);
#pragma unroll
        for (int i = 0; i < kVecs; ++i) {
            VecT s = row_elements(x_row, first + i * step, hidden);
            mv_add_rounded(s, row_elements(r_row, first + i * step, hidden));
            if (first + i * step < hidden) sum_sq = add_squares(sum_sq, s);
            held[u + i * G] = s;
        }
        __syncwarp();
        float *s_row = static_cast<float *>(in.residual_out) + row * in.residual_out_stride;
#pragma unroll
        for (int i = 0; i < kVecs; ++i)
            store_lines(s_row, lines + warp_first + i * step, warp_first + i * step, hidden, l);
        __syncwarp(); /* the warp's reads of lines above before its lanes overwrite them below */
        sum_sq = group_sum(sum_sq, G, warp_sums);
        const float rrms = rsqrtf(sum_sq / static_cast<float>(in.hidden) + in.eps);
#pragma unroll
        for (int i = 0; i < kVecs; ++i)
            held[u + i * G] =
                normalized<kOffset>(held[u + i * G], row_elements(weight, first + i * step, hidden), rrms, in.weight_offset);
        __syncwarp();
#pragma unroll
        for (int i = 0; i < kVecs; ++i)
            store_lines(out_row, lines + warp_first + i * step, warp_first + i * step, hidden, l);
    } else {
        float *buf = lines + warp_first;
        VecT s[kVecs], w[kVecs];
#pragma unroll
        for (int i = 0; i < kVecs; ++i) s[i] = row_elements(x_row, first + i * step, hidden);
        if (kHasResidual) {
            float *s_row = static_cast<float *>(in.residual_out) + row * in.residual_out_stride;
#pragma unroll
            for (int i = 0; i < kVecs; ++i) {
                mv_add_rounded(s[i], row_elements(r_row, first + i * step, hidden));
                store_warp_lines(s_row, s[i], warp_first + i * step, hidden, buf, l);
            }
        } else {
#pragma unroll
            for (int i = 0; i < kVecs; ++i) w[i] = row_elements(weight, first + i * step, hidden);
        }
#pragma unroll
        for (int i = 0; i < kVecs; ++i)
            if (first + i * step < hidden) sum_sq = add_squares(sum_sq, s[i]);
        sum_sq = group_sum(sum_sq, G, warp_sums);
        if (kHasResidual) { /* the weight after the sum: beside x and the residual it spilled */
#pragma unroll
            for (int i = 0; i < kVecs; ++i) w[i] = row_elements(weight, first + i * step, hidden);
        }
        const float rrms = rsqrtf(sum_sq / static_cast<float>(in.hidden) + in.eps);
#pragma unroll
        for (int i = 0; i < kVecs; ++i)
            store_warp_lines(out_row, normalized<kOffset>(s[i], w[i], rrms, in.weight_offset), warp_first + i * step,
                             hidden, buf, l);
    }
}

/* ---- rows off the 16-byte grid, staged through shared memory --------------------------------- */

/* Rows off the 16-byte grid (odd H: every other row at least) fit no vector load. In place, the
   kernel above takes them with narrow accesses, one row per 128-512 threads: few rows, and so few
   bytes, in flight per multiprocessor (bf16 4096 x 4095: 65 us against Liger's 29 on an H100,
   2 rows of 512 threads per SM). Here a group of R threads copies each row into shared memory in
   aligned 16-byte pieces (cp.async, the whole row in flight at once; the pieces it shares with
   its neighbours element by element) and writes the results back in 16-byte pieces.
   The sum of squares is formed in the in-place kernel's exact order for the same H, so a row has
   the same bits on either kernel and the launcher may choose by M (batch invariance): that
   kernel's G threads per row ("virtual threads"; V elements per vector, kVecs vectors each,
   vector lane + i G, elements in order, the last vector cut at H) are emulated by R real ones,
   each taking G / R of them or one fewer (staged_row_threads), then reduced as group_sum does: a shuffle butterfly per warp of
   virtual lanes (the same tree, whatever warp runs it), then the warps' sums in order.
   Shared memory: the weight, staged once per block (float32 rows may read it from memory instead:
   kWeightMem); per group 16 floats for the virtual warps'
   sums, then the row of x (and of the residual). A buffer holds a row as it sits in 16-byte
   pieces: byte j of the buffer is byte j of the row's first piece. */
struct StagedLayout {
    int bytes;        /* of one row buffer: a multiple of 16 */
    int weight_bytes; /* of the weight's buffer: a multiple of 16; 0 where it is not staged */
    int group_bytes;  /* of one group's sums and buffers */
};

constexpr int kStagedSumBytes = 16 * sizeof(float); /* a group's virtual warps (G <= 512) */

/* The 16-byte pieces of a row of `hidden` T at `row`: [0, pieces), piece p at base + 16 p; head
   is where the row starts in piece 0, end where it ends (bytes from base). */
template <typename T>
struct RowPieces {
    static constexpr int kPerPiece = 16 / static_cast<int>(sizeof(T));
    static constexpr int kEdgeSlots = 2 * kPerPiece; /* piece 0's slots, then the last piece's */
    char *base;
    int head, end, pieces;
    __device__ __forceinline__ RowPieces(const T *row, int hidden) {
        head = static_cast<int>(reinterpret_cast<uintptr_t>(row) & 15);
        base = reinterpret_cast<char *>(const_cast<T *>(row)) - head;
        end = head + hidden * static_cast<int>(sizeof(T));
        pieces = (end + 15) >> 4;
    }
    __device__ __forceinline__ bool whole(int p) const { return p * 16 >= head && p * 16 + 16 <= end; }
    /* The row's element in edge slot j, or -1. */
    __device__ __forceinline__ int edge_element(int j) const {
        int p;
        if (j < kPerPiece) {
            p = 0;
        } else {
            p = pieces - 1;
            j -= kPerPiece;
            if (p == 0) return -1; /* a row within one piece: all of it is piece 0's */
        }
        if (whole(p)) return -1;
        const int byte = p * 16 + j * static_cast<int>(sizeof(T));
        return byte >= head && byte < end ? (byte - head) / static_cast<int>(sizeof(T)) : -1;
    }
};

/* A row copied into buf by the `threads` threads of a group (this one is `lane`; at least
   kEdgeSlots of them: staged_fits): load() issues the whole pieces to cp.async (the caller
   commits and waits) and reads this thread's edge element, if any, into a register; finish()
   stores it, after other work has hidden the load. */
template <typename T>
struct RowCopy {
    T edge;
    int e;
    __device__ __forceinline__ void load(char *buf, const T *row, int hidden, int lane, int threads) {
        const RowPieces<T> r(row, hidden);
        e = lane < RowPieces<T>::kEdgeSlots ? r.edge_element(lane) : -1;
        if (e >= 0) edge = row[e];
        for (int p = lane; p < r.pieces; p += threads)
            if (r.whole(p)) mv_cp_async16(buf + p * 16, r.base + p * 16);
    }
    __device__ __forceinline__ void finish(char *buf, const T *row) const {
        if (e >= 0) reinterpret_cast<T *>(buf + (reinterpret_cast<uintptr_t>(row) & 15))[e] = edge;
    }
};

/* Bytes [a, a + 16) of the 32 bytes lo, hi (a even, 0 <= a < 16). */
__device__ __forceinline__ uint4 window16(uint4 lo, uint4 hi, int a) {
    const uint32_t w[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
    const int q = a >> 2, r = (a & 3) * 8;
    uint32_t o[5];
#pragma unroll
    for (int j = 0; j < 5; ++j) o[j] = q == 0 ? w[j] : q == 1 ? w[j + 1] : q == 2 ? w[j + 2] : w[j + 3];
    return make_uint4(__funnelshift_r(o[0], o[1], r), __funnelshift_r(o[1], o[2], r), __funnelshift_r(o[2], o[3], r),
                      __funnelshift_r(o[3], o[4], r));
}

/* 16 bytes of shared memory at byte offset off (even) of buf, from the aligned 16-byte pieces
   they straddle: two conflict-free vector loads (32-bit loads at a 16-byte stride across the
   warp were 4-way bank conflicts: 843K at bf16 1000 x 4095). The buffer's slack covers the
   piece past the last. */
__device__ __forceinline__ uint4 load16_even(const char *buf, int off) {
    const int a = off & 15;
    const uint4 lo = *reinterpret_cast<const uint4 *>(buf + off - a);
    if (a == 0) return lo;
    return window16(lo, *reinterpret_cast<const uint4 *>(buf + off - a + 16), a);
}

/* load16_even where off & 15 == kA is known at compile time (kA < 0: not known): the window's
   word selects fold into register names, which left the issue-bound 16-bit kernel a third of
   its instructions per piece. */
template <int kA>
__device__ __forceinline__ uint4 load16_shift(const char *buf, int off) {
    if constexpr (kA < 0) {
        return load16_even(buf, off);
    } else {
        const uint4 lo = *reinterpret_cast<const uint4 *>(buf + off - kA);
        if constexpr (kA == 0) return lo;
        else return window16(lo, *reinterpret_cast<const uint4 *>(buf + off - kA + 16), kA);
    }
}

/* A row head (byte offset of a row in its first 16-byte piece) as a type, -1 for one read at
   run time; with_head calls f with the constant for h (a multiple of kStep in [0, 16)), or with
   -1 for any other h or where kOn is false (code compiled once). */
template <int kH>
struct head_c {
    static constexpr int value = kH;
};
template <bool kOn, int kStep, int kA = 0, typename F>
__device__ __forceinline__ auto with_head(int h, F &&f) {
    if constexpr (!kOn || kA >= 16) {
        return f(head_c<-1>{});
    } else {
        if (h == kA) return f(head_c<kA>{});
        return with_head<kOn, kStep, kA + kStep>(h, f);
    }
}

/* N elements of U from element e of a row staged in buf with its head (N * sizeof(U) a multiple
   of 16, or N = 1); kA: (head + e * sizeof(U)) & 15 where the caller knows it, else -1. */
template <typename U, int N, int kA = -1>
__device__ __forceinline__ mv_vec<U, N> load_staged(const char *buf, int head, int e) {
    mv_vec<U, N> v;
    const int off = head + e * static_cast<int>(sizeof(U));
    if constexpr (N == 1) { /* single elements: a warp reads consecutive ones, conflict-free */
        v.v[0] = *reinterpret_cast<const U *>(buf + off);
    } else {
        static_assert(sizeof(U) * N % 16 == 0, "whole 16-byte chunks");
#pragma unroll
        for (int c = 0; c < static_cast<int>(sizeof(U) * N / 16); ++c)
            reinterpret_cast<uint4 *>(&v)[c] = load16_shift<kA>(buf, off + 16 * c);
    }
    return v;
}

__device__ __forceinline__ int head_of(const void *row) { return static_cast<int>(reinterpret_cast<uintptr_t>(row) & 15); }

/* s: x, or x + residual rounded to T, for N elements from e; kA as load_staged's (the residual
   staged with x's head where kA >= 0). */
template <typename T, int N, bool kHasResidual, int kA = -1>
__device__ __forceinline__ mv_vec<T, N> staged_s(const char *x_buf, int x_head, const char *r_buf, int r_head, int e) {
    mv_vec<T, N> s = load_staged<T, N, kA>(x_buf, x_head, e);
    if constexpr (kHasResidual) {
        mv_add_rounded(s, load_staged<T, N, kA>(r_buf, r_head, e));
    }
    return s;
}

/* Virtual thread t's part of a row's sum of squares, in the in-place kernel's order, read at
   offsets known at run time (kernels without head-compiled reads: kHeads false). */
template <typename T, int V, int kVecs, bool kHasResidual>
__device__ __forceinline__ float virtual_sum(const char *x_buf, int x_head, const char *r_buf, int r_head, int t,
                                             int group_threads, int hidden, int vecs_per_row) {
    float sum_sq = 0.0f;
#pragma unroll
    for (int i = 0; i < kVecs; ++i) {
        const int k = t + i * group_threads;
        if (k >= vecs_per_row) continue;
        /* the last vector: the in-place kernel reads elements past H as zero (their sum too) */
        const int valid = hidden - k * V;
        mv_vec<T, V> sv;
        if (valid >= V) {
            sv = staged_s<T, V, kHasResidual>(x_buf, x_head, r_buf, r_head, k * V);
        } else {
#pragma unroll
            for (int j = 0; j < V; ++j)
                sv.v[j] = j < valid ? staged_s<T, 1, kHasResidual>(x_buf, x_head, r_buf, r_head, k * V + j).v[0]
                                    : mv_from_float<T>(0.0f);
        }
        sum_sq = add_squares(sum_sq, sv);
    }
    return sum_sq;
}

/* Virtual thread t's part of a row's sum of squares, in the in-place kernel's order: its whole
   vectors (kH: the head of x's row and the residual's, or -1 where read at run time), then the
   row's last vector where H cuts it (always the last of its thread: the largest k), whose
   elements past H the in-place kernel reads as zero. Only the whole vectors' loop is compiled
   per head: one copy of all of it per head ran the fused add 1.2-1.3x slower (8 heads' code
   live on each SM, 274 KB; dev/logs/norm-staged-heads-nvidia-h200-h100-2026-11-27.log). */
template <typename T, int V, int kVecs, bool kHasResidual, int kH = -1>
__device__ __forceinline__ float virtual_sum_whole(const char *x_buf, int x_head, const char *r_buf, int r_head, int t,
                                                   int group_threads, int whole_vecs) {
    float sum_sq = 0.0f;
#pragma unroll 2
    for (int i = 0; i < kVecs; ++i) {
        const int k = t + i * group_threads;
        if (k >= whole_vecs) break;
        /* a whole vector starts kH bytes into a piece, as the row does (V * sizeof(T) is 16 or V is 1) */
        sum_sq = add_squares(sum_sq, staged_s<T, V, kHasResidual, (V == 1 ? -1 : kH)>(x_buf, x_head, r_buf, r_head, k * V));
    }
    return sum_sq;
}
template <typename T, int V, bool kHasResidual>
__device__ __forceinline__ float virtual_sum_cut(float sum_sq, const char *x_buf, int x_head, const char *r_buf,
                                                 int r_head, int t, int cut_t, int hidden, int whole_vecs) {
    if (whole_vecs * V == hidden || t != cut_t) return sum_sq;
    const int valid = hidden - whole_vecs * V;
    mv_vec<T, V> sv;
#pragma unroll
    for (int j = 0; j < V; ++j)
        sv.v[j] = j < valid ? staged_s<T, 1, kHasResidual>(x_buf, x_head, r_buf, r_head, whole_vecs * V + j).v[0]
                            : mv_from_float<T>(0.0f);
    return add_squares(sum_sq, sv);
}

/* out (kOut) or residual_out (s alone) for the elements of 16-byte piece p of its row, from the
   staged rows: a whole piece in one 16-byte store, an edge piece element by element. kAlsoS: s
   also to residual_out's row, whose pieces start at s_base with the same head: s formed once
   for both (H100 bf16 fused add 1.03-1.13x faster, 16 x 5119 5.73 -> 5.14 us;
   dev/logs/norm-staged-one-s-nvidia-h100-80gb-hbm3-2026-11-24.log). */
/* N weights from element e: from the block's staged copy, or (kWeightMem) from memory at w_mem
   (L1 and L2 keep the one weight every row reads). A compile-time choice: a run-time one cost the
   16-bit staged kernel, which is issue-bound, 3-10%. */
template <typename TW, int N, bool kWeightMem, int kA = -1>
__device__ __forceinline__ mv_vec<TW, N> weight_at(const char *w_buf, int w_head, const TW *w_mem, int e) {
    if constexpr (!kWeightMem) return load_staged<TW, N, kA>(w_buf, w_head, e);
    mv_vec<TW, N> v;
    if constexpr (N == 1) {
        v.v[0] = w_mem[e];
    } else {
#pragma unroll
        for (int c = 0; c < static_cast<int>(sizeof(TW) * N / 16); ++c)
            reinterpret_cast<uint4 *>(&v)[c] = load16_at(reinterpret_cast<const char *>(w_mem + e) + 16 * c);
    }
    return v;
}

template <typename T, typename TW, bool kHasResidual, bool kOffset, bool kOut, bool kWeightMem, bool kAlsoS = false,
          int kH = -1>
__device__ __forceinline__ void staged_store_piece(const RowPieces<T> &o, int p, const char *x_buf, int x_head,
                                                   const char *r_buf, int r_head, const char *w_buf, int w_head,
                                                   const TW *w_mem, float rrms, float weight_offset, int hidden,
                                                   char *s_base = nullptr) {
    constexpr int N = RowPieces<T>::kPerPiece;
    /* kH >= 0: x, the residual and the output rows all have head kH, the weight head 0; a whole
       piece is then read from x's pieces as they are, and from the weight's kWA bytes in */
    constexpr int kXA = kH < 0 ? -1 : 0;
    constexpr int kWA = kH < 0 ? -1 : (16 - kH * static_cast<int>(sizeof(TW) / sizeof(T))) & 15;
    const int e0 = (p * 16 - o.head) / static_cast<int>(sizeof(T)); /* negative in an edge piece 0 */
    if (o.whole(p)) {
        const mv_vec<T, N> sv = staged_s<T, N, kHasResidual, kXA>(x_buf, x_head, r_buf, r_head, e0);
        if (kAlsoS) *reinterpret_cast<mv_vec<T, N> *>(s_base + p * 16) = sv;
        *reinterpret_cast<mv_vec<T, N> *>(o.base + p * 16) =
            kOut ? normalized<kOffset>(sv, weight_at<TW, N, kWeightMem, kWA>(w_buf, w_head, w_mem, e0), rrms,
                                       weight_offset)
                 : sv;
        return;
    }
    if constexpr (kH < 0) { /* edge pieces: code compiled once (the caller's edges loop) */
        T *row = reinterpret_cast<T *>(o.base + o.head);
#pragma unroll
        for (int j = 0; j < N; ++j) {
            const int e = e0 + j;
            if (e < 0 || e >= hidden) continue;
            const T sv = staged_s<T, 1, kHasResidual>(x_buf, x_head, r_buf, r_head, e).v[0];
            if (kAlsoS) reinterpret_cast<T *>(s_base + o.head)[e] = sv;
            if constexpr (kOut) {
                const float wv = mv_to_float(weight_at<TW, 1, kWeightMem>(w_buf, w_head, w_mem, e).v[0]);
                const float g = kOffset ? wv + weight_offset : wv;
                row[e] = mv_from_float<T>(g * (mv_to_float(sv) * rrms));
            } else {
                row[e] = sv;
            }
        }
    }
}

/* The weight into buf from byte 0 (its 16-byte pieces whatever its address; the last padded
   with zeros), by `threads` threads of which this is `t`. */
template <typename TW>
__device__ __forceinline__ void stage_weight(char *buf, const TW *w, int hidden, int t, int threads) {
    constexpr int n = 16 / static_cast<int>(sizeof(TW));
    for (int p = t; p * n < hidden; p += threads) {
        mv_vec<TW, n> v;
        if ((p + 1) * n <= hidden) {
            *reinterpret_cast<uint4 *>(&v) = load16_at(reinterpret_cast<const char *>(w + p * n));
        } else {
#pragma unroll
            for (int j = 0; j < n; ++j) v.v[j] = p * n + j < hidden ? w[p * n + j] : mv_from_float<TW>(0.0f);
        }
        *reinterpret_cast<mv_vec<TW, n> *>(buf + 16 * p) = v;
    }
}

/* Whether 16-bit rows in one stride, which are issue-bound, may read a row through code compiled for
   its head (kHeads); float32 rows (few instructions per byte) and two strides (registers) do not. */
template <typename T, bool kTwoStrides>
constexpr bool staged_heads() {
    return sizeof(T) == 2 && !kTwoStrides;
}

template <typename T, typename TW, int V, bool kHasResidual, bool kOffset, bool kTwoStrides, bool kWeightMem,
          bool kHeads>
__device__ __forceinline__ void staged_rows(const NormParams<kTwoStrides> &args, StagedLayout layout, int group_threads,
                                            int row_threads, int64_t prefetch_rows) {
    constexpr int kVecs = vecs_per_thread(V);
    static_assert(!kHeads || staged_heads<T, kTwoStrides>(), "head-compiled reads: 16-bit rows in one stride");
    extern __shared__ __align__(16) char staged_smem[];
    char *const weight_buf = staged_smem;
    const mv_outer_strides outer = outer_of(args);
    const mv_norm_input &in = args.in;
    const int hidden = static_cast<int>(in.hidden); /* the launcher sends rows of at most 512 x kVecs vectors */
    const int rows_per_block = blockDim.x / row_threads;
    const int group = threadIdx.x / row_threads;
    const int lane = threadIdx.x % row_threads;
    char *const group_base = weight_buf + layout.weight_bytes + group * layout.group_bytes;
    float *const virtual_warp_sums = reinterpret_cast<float *>(group_base);
    char *const x_buf = group_base + kStagedSumBytes;
    char *const r_buf = x_buf + layout.bytes;

    /* Before the wait for the previous kernel (PDL), the first rows are asked of L2
       (kPrefetchBytes), one request per 128-byte line. */
    const int64_t group_row = static_cast<int64_t>(blockIdx.x) * rows_per_block + group;
    if (group_row < (prefetch_rows < in.rows ? prefetch_rows : in.rows)) {
        const RowIndex<kTwoStrides> pos(group_row, outer.inner_rows);
        const char *x_row = reinterpret_cast<const char *>(static_cast<const T *>(in.x) + pos.at(in.x_stride, outer.x));
        const char *r_row = kHasResidual ? reinterpret_cast<const char *>(static_cast<const T *>(in.residual) +
                                                                        pos.at(in.residual_stride, outer.residual))
                                         : nullptr;
        for (int b = lane * 128; b < hidden * static_cast<int>(sizeof(T)); b += row_threads * 128) {
            mv_prefetch_l2(x_row + b);
            if (kHasResidual) mv_prefetch_l2(r_row + b);
        }
    }
    mv_pdl_wait();
    mv_pdl_trigger();

    /* The weight, once per block, by all its threads, unless it is read from memory (kWeightMem): by
       cp.async, committed with the first row's pieces. For head-compiled reads (kHeads) from byte 0
       of its buffer whatever its address (so a row's pieces and the weight's keep one offset apart,
       known once the row's head is): where it does not start a piece, realigned through registers
       (loads the block waits for: 600 x 8191 rows 3-7% slower, H100); otherwise as it sits. */
    const TW *weight = static_cast<const TW *>(in.norm_weight);
    const TW *const w_mem = kWeightMem ? weight : nullptr; /* not staged */
    const int w_head = kHeads ? 0 : head_of(weight);
    const bool w_aligned = !kHeads || head_of(weight) == 0;
    RowCopy<TW> w_copy;
    if (!kWeightMem && w_aligned) w_copy.load(weight_buf, weight, hidden, threadIdx.x, blockDim.x);

    const int vecs_per_row = (hidden + V - 1) / V;
    const int whole_vecs = hidden / V;
    const int cut_t = whole_vecs % group_threads; /* the virtual thread of the vector H cuts, if any */
    /* The loop bound is the same for the whole block, so every thread reaches the barriers. */
    bool first = true;
    for (int64_t first_row = static_cast<int64_t>(blockIdx.x) * rows_per_block; first_row < in.rows;
         first_row += static_cast<int64_t>(gridDim.x) * rows_per_block) {
        const int64_t row = first_row + group;
        const bool active = row < in.rows;
        const RowIndex<kTwoStrides> pos(active ? row : 0, outer.inner_rows);
        const T *x_row = static_cast<const T *>(in.x) + pos.at(in.x_stride, outer.x);
        const T *r_row = kHasResidual ? static_cast<const T *>(in.residual) + pos.at(in.residual_stride, outer.residual)
                                      : nullptr;
        RowCopy<T> x_copy, r_copy;
        if (active) {
            x_copy.load(x_buf, x_row, hidden, lane, row_threads);
            if (kHasResidual) r_copy.load(r_buf, r_row, hidden, lane, row_threads);
        }
        mv_cp_async_commit();
        if (first && !kWeightMem) {
            if (w_aligned) w_copy.finish(weight_buf, weight);
            else stage_weight(weight_buf, weight, hidden, threadIdx.x, blockDim.x);
        }
        first = false;
        if (active) {
            x_copy.finish(x_buf, x_row);
            if (kHasResidual) r_copy.finish(r_buf, r_row);
        }
        mv_cp_async_wait<0>();
        __syncthreads();

        const int x_head = head_of(x_row);
        const int r_head = kHasResidual ? head_of(r_row) : 0;
        /* Where x, out (and the residuals) of a row start at one offset in their pieces (the usual
           case: one layout for all), the pieces are read through code compiled for that offset
           (with_head) in the 16-bit one-stride kernels, which are issue-bound; other rows and
           kernels read at offsets known at run time. Only the heads are formed before the sum, the
           output rows' pieces after it. */
        const bool same_heads =
            head_of(static_cast<T *>(args.out) + pos.at(args.out_stride, outer.out)) == x_head &&
            (!kHasResidual ||
             (r_head == x_head &&
              head_of(static_cast<T *>(in.residual_out) + pos.at(in.residual_out_stride, outer.residual_out)) == x_head));
        const int head = same_heads ? x_head : -1;
        const auto sum_of = [&](int t) {
            if constexpr (!kHeads)
                return virtual_sum<T, V, kVecs, kHasResidual>(x_buf, x_head, r_buf, r_head, t, group_threads, hidden,
                                                              vecs_per_row);
            const float whole = with_head<V != 1, sizeof(T)>(head, [&](auto h) {
                return virtual_sum_whole<T, V, kVecs, kHasResidual, decltype(h)::value>(x_buf, x_head, r_buf, r_head, t,
                                                                                         group_threads, whole_vecs);
            });
            return virtual_sum_cut<T, V, kHasResidual>(whole, x_buf, x_head, r_buf, r_head, t, cut_t, hidden, whole_vecs);
        };
        float total;
        if (group_threads <= 32) { /* R = G: group_sum's shuffles as they are */
            total = active ? sum_of(lane) : 0.0f;
            for (int offset = group_threads >> 1; offset > 0; offset >>= 1)
                total += __shfl_xor_sync(0xffffffffu, total, offset);
        } else {
            /* Real warp w takes virtual warps w, w + R / 32, ...; lane l is virtual lane l. */
            const int real_warps = row_threads >> 5, virtual_warps = group_threads >> 5;
            for (int vw = lane >> 5; vw < virtual_warps; vw += real_warps) {
                float part = active ? sum_of(vw * 32 + (lane & 31)) : 0.0f;
                part = mv_warp_sum(part);
                if ((lane & 31) == 0) virtual_warp_sums[vw] = part;
            }
            __syncthreads();
            total = 0.0f;
            for (int w = 0; w < virtual_warps; ++w) total += virtual_warp_sums[w];
        }
        if (active) {
            const float rrms = rsqrtf(total / static_cast<float>(in.hidden) + in.eps);
            const RowPieces<T> o(static_cast<T *>(args.out) + pos.at(args.out_stride, outer.out), hidden);
            const RowPieces<T> ro(kHasResidual ? static_cast<T *>(in.residual_out) +
                                                     pos.at(in.residual_out_stride, outer.residual_out)
                                               : static_cast<T *>(args.out),
                                  hidden);
            if (!kHasResidual || (!kTwoStrides && ro.head == o.head)) {
                /* residual_out in the same pieces as out (the usual case): s formed once for both
                   (not in the two-stride build, where it spilled 32-40 bytes) */
                if constexpr (kHeads) { /* whole pieces through code compiled for the head, edges apart */
                    bool edge_first = false;
                    int edge_last = -1;
                    with_head<true, sizeof(T)>(head, [&](auto h) {
#pragma unroll 1
                        for (int p = lane; p < o.pieces; p += row_threads) {
                            if (o.whole(p))
                                staged_store_piece<T, TW, kHasResidual, kOffset, true, kWeightMem, kHasResidual,
                                                   decltype(h)::value>(o, p, x_buf, x_head, r_buf, r_head, weight_buf,
                                                                       w_head, w_mem, rrms, in.weight_offset, hidden, ro.base);
                            else if (p == 0)
                                edge_first = true;
                            else
                                edge_last = p;
                        }
                    });
                    if (edge_first)
                        staged_store_piece<T, TW, kHasResidual, kOffset, true, kWeightMem, kHasResidual>(
                            o, 0, x_buf, x_head, r_buf, r_head, weight_buf, w_head, w_mem, rrms, in.weight_offset, hidden,
                            ro.base);
                    if (edge_last >= 0)
                        staged_store_piece<T, TW, kHasResidual, kOffset, true, kWeightMem, kHasResidual>(
                            o, edge_last, x_buf, x_head, r_buf, r_head, weight_buf, w_head, w_mem, rrms, in.weight_offset,
                            hidden, ro.base);
                } else {
                    for (int p = lane; p < o.pieces; p += row_threads)
                        staged_store_piece<T, TW, kHasResidual, kOffset, true, kWeightMem, kHasResidual>(
                            o, p, x_buf, x_head, r_buf, r_head, weight_buf, w_head, w_mem, rrms, in.weight_offset, hidden,
                            ro.base);
                }
            } else {
                for (int p = lane; p < o.pieces; p += row_threads)
                    staged_store_piece<T, TW, kHasResidual, kOffset, true, kWeightMem>(o, p, x_buf, x_head, r_buf, r_head,
                                                                          weight_buf, w_head, w_mem, rrms, in.weight_offset,
                                                                          hidden);
                if (kHasResidual)
                    for (int p = lane; p < ro.pieces; p += row_threads)
                        staged_store_piece<T, TW, kHasResidual, kOffset, false, kWeightMem>(ro, p, x_buf, x_head, r_buf, r_head,
                                                                               weight_buf, w_head, w_mem, rrms, 0.0f, hidden);
            }
        }
        __syncthreads(); /* every buffer read before the next row is staged over it */
    }
}

template <typename T, typename TW, int V, bool kHasResidual, bool kOffset, bool kTwoStrides, bool kWeightMem,
          bool kHeads = false>
__global__ void __launch_bounds__(kMaxVecThreads)
    rms_norm_staged_kernel(NormParams<kTwoStrides> args, StagedLayout layout, int group_threads, int row_threads,
                           int64_t prefetch_rows) {
    staged_rows<T, TW, V, kHasResidual, kOffset, kTwoStrides, kWeightMem, kHeads>(args, layout, group_threads,
                                                                                 row_threads, prefetch_rows);
}
/* rms_norm's head-compiled form (staged_heads) at 56 registers, the run-time form's count: at 64 an SM held a
   row fewer where a row takes 160-192 threads (8192 x 4097 2-3% slower than the run-time form); capped,
   5-11% faster on the H200, 1-13% on the H100
   (dev/logs/norm-staged-heads-rms-norm-nvidia-h200-h100-2026-11-27.log). Its blocks are of at most
   kVecBlockThreads threads (__maxnreg__ excludes __launch_bounds__). */
template <typename T, typename TW, int V, bool kHasResidual, bool kOffset, bool kTwoStrides, bool kWeightMem>
__global__ void __maxnreg__(56)
    rms_norm_staged_heads_kernel(NormParams<kTwoStrides> args, StagedLayout layout, int group_threads, int row_threads,
                                 int64_t prefetch_rows) {
    staged_rows<T, TW, V, kHasResidual, kOffset, kTwoStrides, kWeightMem, true>(args, layout, group_threads,
                                                                               row_threads, prefetch_rows);
}

/* Whether the weight is float32 beside 16-bit rows. */
bool float_weight(const mv_rms_norm_args *a) {
    return a->in.weight_float32 && a->in.dtype != MV_FLOAT32;
}

/* The widest V (elements per access) that divides H, fits 16 bytes, and keeps every row start
   aligned: each pointer aligned to V elements of its type and each row stride a multiple of V. */
int vector_width(const mv_rms_norm_args *a) {
    const int64_t elem = a->in.dtype == MV_FLOAT32 ? 4 : 2;
    const int64_t weight_elem = float_weight(a) ? 4 : elem;
    int v = static_cast<int>(16 / elem);
    const mv_norm_input &in = a->in;
    for (; v > 1; v >>= 1) {
        const uint64_t bytes = static_cast<uint64_t>(v * elem);
        bool ok = in.hidden % v == 0 && reinterpret_cast<uintptr_t>(in.x) % bytes == 0 &&
                  reinterpret_cast<uintptr_t>(in.norm_weight) % static_cast<uint64_t>(v * weight_elem) == 0 &&
                  reinterpret_cast<uintptr_t>(a->out) % bytes == 0 && in.x_stride % v == 0 &&
                  a->out_stride % v == 0;
        if (in.residual != nullptr)
            ok = ok && reinterpret_cast<uintptr_t>(in.residual) % bytes == 0 &&
                 reinterpret_cast<uintptr_t>(in.residual_out) % bytes == 0 &&
                 in.residual_stride % v == 0 && in.residual_out_stride % v == 0;
        if (a->outer.inner_rows > 0) /* rows in two strides: the outer steps too */
            ok = ok && a->outer.x % v == 0 && a->outer.out % v == 0 &&
                 (in.residual == nullptr || (a->outer.residual % v == 0 && a->outer.residual_out % v == 0));
        if (ok) break;
    }
    return v;
}

/* Input bytes (x, and residual) that the first rows' blocks ask of L2 before waiting for the
   previous kernel. A block of this kernel can start while the previous one's last blocks still
   run (PDL); until that kernel has finished, DRAM has spare time, and a prefetch into L2 is safe
   then, as a load into registers would not be: L2 is where every SM's writes land, so a line
   fetched early is updated by the previous kernel's writes instead of going stale. The budget is
   about what DRAM moves in that gap; beyond it the prefetches only come late and cost requests
   (4096 x 1024 bf16 5.69 -> 4.81 us from none to 4 MiB, slower above;
   dev/logs/norm-prefetch-nvidia-h200-2026-11-22.log). */
constexpr int64_t kPrefetchBytes = 4 << 20;

/* Bytes of one staged row buffer: the row from anywhere in its first piece, and the piece past
   the last that load16_even may read. */
int64_t staged_row_bytes(int64_t hidden, int64_t elem) { return (hidden * elem + 15) / 16 * 16 + 32; }

/* Shared memory of a block of `rows` groups. */
size_t staged_smem_bytes(int64_t hidden, int64_t elem, int64_t weight_elem, int64_t buffers_per_group, int64_t rows) {
    return static_cast<size_t>(staged_row_bytes(hidden, weight_elem) +
                               rows * (kStagedSumBytes + buffers_per_group * staged_row_bytes(hidden, elem)));
}

/* The most rows a block can stage in the device's shared memory (staged_smem_bytes inverted). */
int64_t staged_rows_fitting(int64_t hidden, int64_t elem, int64_t weight_elem, int64_t buffers_per_group,
                            const mv_cuda_device &dev) {
    return (static_cast<int64_t>(dev.max_shared_block) - staged_row_bytes(hidden, weight_elem)) /
           (kStagedSumBytes + buffers_per_group * staged_row_bytes(hidden, elem));
}

/* Real threads per row for the in-place layout's G (rms_norm_staged_kernel): G itself up to 256,
   else whole warps of at most 128 threads, the fewest that give no warp more virtual warps than
   4 real ones must (shares may differ by one). The row is in flight by cp.async whatever R is, so
   fewer threads a row put more rows, and so more bytes, in flight per multiprocessor; each
   emulated share adds to a row's latency (bf16 4096 x 4095 on an H100: 29.0 us at R = 128 against
   65 in place, where 512 threads a row leave 2 rows per SM;
   dev/logs/norm-staged-emulated-nvidia-h100-h200-2026-11-24.log). Equal shares once left a row of
   11 or 13 virtual warps to one real warp (float32 4096 x 5125: 79.8 us against Liger's 59.9;
   dev/logs/norm-odd-rows-peers-nvidia-h200-2026-11-26.log). */
constexpr int kStagedRowThreads = 128;
int staged_row_threads(int group_threads) {
    if (group_threads <= 2 * kStagedRowThreads) return group_threads;
    const int warps = group_threads / 32, most_real = kStagedRowThreads / 32;
    const int share = (warps + most_real - 1) / most_real;
    return 32 * ((warps + share - 1) / share);
}

/* Whether rows off the 16-byte grid go through shared memory (rms_norm_staged_kernel) rather
   than in place, for a layout of G threads a row (16-byte vectors, or single elements).
   - From 4 rows per multiprocessor: where G > 128, i.e. where the in-place kernel keeps fewer
     than 16 rows per SM in flight, but for the float32 fused add; and 16-bit rms_norm at any G
     (its 2-byte accesses in place).
   - From 2 rows, 16-bit types, where each row keeps its G threads (no emulation, so no added
     latency): rows of 16-byte vectors, whose in-place accesses at 2 (mod 4) take five pieces
     and partial sectors; rms_norm in single elements where G <= 128.
   Measured slower staged: float32 fused add 4096 x 4095 (98.4 against 93.6 us), bf16 fused add
   4096 x 999 (20.6 against 17.7), float32 rms_norm 1000 x 999 (H200 4.10 against 3.87), any call
   of one row (bf16 1 x 5119 3.15 against 2.47) or emulated rows below 4 per SM (bf16 16 x 4095
   3.36 against 2.74); dev/logs/norm-staged-emulated-*-2026-11-24.log. */
bool staged_wanted(const mv_rms_norm_args *a, int group_threads, bool vectors, const mv_cuda_device &dev) {
    const int64_t sms = dev.sms > 0 ? dev.sms : 1;
    const bool wide = a->in.dtype == MV_FLOAT32;
    if (a->in.rows >= 4 * sms) {
        if (a->in.residual != nullptr) return !wide && group_threads > 128;
        return group_threads > 128 || !wide;
    }
    if (a->in.rows < 2 || wide || staged_row_threads(group_threads) != group_threads) return false;
    return vectors || (a->in.residual == nullptr && group_threads <= 128);
}

/* Whether the staged kernel can take rows of H in groups of group_threads on this device: the
   real threads copy a row's edge elements one each, and a block of one row with a residual fits
   in shared memory (so the answer depends on H, the dtypes and the device alone). */
bool staged_fits(const mv_rms_norm_args *a, int group_threads, const mv_cuda_device &dev) {
    const int64_t elem = a->in.dtype == MV_FLOAT32 ? 4 : 2;
    const int64_t weight_elem = float_weight(a) ? 4 : elem;
    return staged_row_threads(group_threads) >= 2 * 16 / elem && group_threads <= kMaxVecThreads &&
           staged_rows_fitting(a->in.hidden, elem, weight_elem, 2, dev) >= 1;
}

/* As many whole groups as fit in kVecBlockThreads (at least one), but no more than the rows per
   multiprocessor: then a call of few rows spreads over the GPU instead of queueing them in a few
   blocks, and no block carries idle groups (M = 16 H = 4096 2.05 -> 1.89 us against fixed
   256-thread blocks). Whole warps, as group_sum's shuffles need. max_rows: the most rows a block
   may hold (the staged kernel's shared memory). */
struct RowBlocks {
    unsigned blocks;
    int threads;
};
RowBlocks row_blocks(int64_t rows, int group_threads, int sms, int64_t max_rows = kVecBlockThreads,
                     int block_threads = kVecBlockThreads) {
    int64_t fitting_rows = group_threads >= block_threads ? 1 : block_threads / group_threads;
    if (fitting_rows > max_rows) fitting_rows = max_rows;
    int64_t block_rows = rows < fitting_rows ? rows : fitting_rows;
    const int64_t sm_count = sms > 0 ? sms : 1;
    const int64_t rows_per_sm = (rows + sm_count - 1) / sm_count;
    if (rows_per_sm < block_rows) block_rows = rows_per_sm;
    RowBlocks shape;
    shape.threads = static_cast<int>((group_threads * block_rows + 31) / 32 * 32);
    const int64_t rows_per_block = shape.threads / group_threads;
    const int64_t wanted = (rows + rows_per_block - 1) / rows_per_block;
    shape.blocks = static_cast<unsigned>(wanted < kMaxRowBlocks * 16 ? wanted : kMaxRowBlocks * 16);
    return shape;
}

/* A staged kernel with the one opt-in cache its shared memory needs (mv_opt_in_of). */
template <typename Kernel>
struct StagedForm {
    Kernel kernel;
    mv_shared_opt_in *opt_in;
};
template <auto K>
StagedForm<decltype(K)> staged_form() {
    return {K, &mv_opt_in_of<K>()};
}

template <typename T, typename TW, int V, bool kHasResidual, bool kOffset, bool kTwoStrides>
cudaError_t launch_staged_kernel(const mv_rms_norm_args &a, int group_threads, const mv_cuda_device &dev,
                                 cudaStream_t stream, bool pdl) {
    const int64_t elem = sizeof(T);
    const int buffers = kHasResidual ? 2 : 1;
    const int row_threads = staged_row_threads(group_threads);
    using Kernel = void (*)(NormParams<kTwoStrides>, StagedLayout, int, int, int64_t);
    StagedForm<Kernel> form{};
    if constexpr (staged_heads<T, kTwoStrides>() && !kHasResidual)
        form = staged_form<rms_norm_staged_heads_kernel<T, TW, V, kHasResidual, kOffset, kTwoStrides, false>>();
    else
        form = staged_form<rms_norm_staged_kernel<T, TW, V, kHasResidual, kOffset, kTwoStrides, false>>();
    /* Where R is one warp (G of 11 or 13 warps, before the shares of staged_row_threads), up to
       8 rows a block asked for up to 395 KiB of shared memory and the launch failed ("invalid
       argument"). staged_fits: one row fits. */
    auto shape_of = [&](int64_t weight_elem, int block_threads) {
        return row_blocks(a.in.rows, row_threads, dev.sms,
                          staged_rows_fitting(a.in.hidden, elem, weight_elem, buffers, dev), block_threads);
    };
    /* float32 rows: the weight staged once a block, in blocks of up to 512 threads (twice a 16-bit
       row's weight buffer, shared over twice the rows: H200 rms_norm 4096 x 5119 55.4 -> 50.1 us,
       1000 x 4097 17.1 -> 15.0; 16-bit rows ran 4-15% slower so, their barriers holding more rows
       in step); where that leaves an SM fewer than 8 rows (H >= 6001 or so), the weight read from
       memory instead, L2 keeping it, in blocks of up to 256 threads (4096 x 6001 76.6 -> 63.8 us,
       600 x 8191 22.4 -> 19.0; with 8 rows or more it was 4-14% slower);
       dev/logs/norm-odd-rows-peers-nvidia-h200-2026-11-26.log */
    int64_t weight_elem = sizeof(TW);
    RowBlocks shape = shape_of(weight_elem, elem == 4 ? kMaxVecThreads : kVecBlockThreads);
    size_t smem = staged_smem_bytes(a.in.hidden, elem, weight_elem, buffers, shape.threads / row_threads);
    cudaError_t err = mv_allow_shared(form.kernel, smem, *form.opt_in, dev.device);
    if (err != cudaSuccess) return err;
    if constexpr (staged_heads<T, kTwoStrides>() && kHasResidual) {
        /* The fused add's head-compiled form holds 64 registers against the run-time form's 50-56:
           taken where it still fits as many blocks per SM as the call needs or as the run-time form
           fits (H200: 600 x 5119 3-15% faster, 600 x 8191 4-7%, 4096 x 8191 1.5-4%; taken always,
           8192 x 4097 ran 5-9% slower; dev/logs/norm-staged-heads-rms-norm-nvidia-h200-h100-2026-11-27.log) */
        const StagedForm<Kernel> heads =
            staged_form<rms_norm_staged_kernel<T, TW, V, kHasResidual, kOffset, kTwoStrides, false, true>>();
        const int64_t sms = dev.sms > 0 ? dev.sms : 1;
        const int64_t needed = (static_cast<int64_t>(shape.blocks) + sms - 1) / sms;
        int per_sm = 0, heads_per_sm = 0;
        if (mv_allow_shared(heads.kernel, smem, *heads.opt_in, dev.device) == cudaSuccess &&
            mv_blocks_per_sm(&per_sm, form.kernel, shape.threads, smem, dev.device) == cudaSuccess &&
            mv_blocks_per_sm(&heads_per_sm, heads.kernel, shape.threads, smem, dev.device) == cudaSuccess) {
            if (heads_per_sm >= (needed < per_sm ? needed : per_sm)) form = heads;
        } else {
            (void)cudaGetLastError(); /* no answer: the run-time form */
        }
    }
    if constexpr (sizeof(T) == 4) {
        int per_sm = 0;
        if (mv_blocks_per_sm(&per_sm, form.kernel, shape.threads, smem, dev.device) != cudaSuccess) {
            (void)cudaGetLastError(); /* no answer: the first shape stands */
        } else if (static_cast<int64_t>(per_sm) * (shape.threads / row_threads) < 8) {
            weight_elem = 0; /* no weight buffer (the size helpers count 32 bytes of slack for it) */
            form = staged_form<rms_norm_staged_kernel<T, TW, V, kHasResidual, kOffset, kTwoStrides, true>>();
            shape = shape_of(weight_elem, kVecBlockThreads);
            smem = staged_smem_bytes(a.in.hidden, elem, weight_elem, buffers, shape.threads / row_threads);
            err = mv_allow_shared(form.kernel, smem, *form.opt_in, dev.device);
            if (err != cudaSuccess) return err;
        }
    }
    StagedLayout layout;
    layout.bytes = static_cast<int>(staged_row_bytes(a.in.hidden, elem));
    layout.weight_bytes = weight_elem == 0 ? 0 : static_cast<int>(staged_row_bytes(a.in.hidden, weight_elem));
    layout.group_bytes = kStagedSumBytes + buffers * layout.bytes;
    const int64_t input_row_bytes = a.in.hidden * elem * (kHasResidual ? 2 : 1);
    const int64_t prefetch_rows = pdl ? kPrefetchBytes / input_row_bytes : 0;
    return mv_launch(form.kernel, dim3(shape.blocks), dim3(shape.threads), smem, stream, pdl,
                     params_of<kTwoStrides>(a), layout, group_threads, row_threads, prefetch_rows);
}

template <typename T, typename TW, int V, bool kHasResidual, bool kOffset>
cudaError_t launch_staged_strides(const mv_rms_norm_args &a, int group_threads, const mv_cuda_device &dev,
                                  cudaStream_t stream, bool pdl) {
    return a.outer.inner_rows > 0
               ? launch_staged_kernel<T, TW, V, kHasResidual, kOffset, true>(a, group_threads, dev, stream, pdl)
               : launch_staged_kernel<T, TW, V, kHasResidual, kOffset, false>(a, group_threads, dev, stream, pdl);
}

template <typename T, typename TW, int V>
cudaError_t launch_staged(const mv_rms_norm_args &a, int group_threads, const mv_cuda_device &dev, cudaStream_t stream,
                          bool pdl) {
    const bool offset = a.in.weight_offset != 0.0f;
    if (a.in.residual != nullptr)
        return offset ? launch_staged_strides<T, TW, V, true, true>(a, group_threads, dev, stream, pdl)
                      : launch_staged_strides<T, TW, V, true, false>(a, group_threads, dev, stream, pdl);
    return offset ? launch_staged_strides<T, TW, V, false, true>(a, group_threads, dev, stream, pdl)
                  : launch_staged_strides<T, TW, V, false, false>(a, group_threads, dev, stream, pdl);
}

template <typename T, typename TW, int V, bool kHasResidual, bool kOffset, bool kTwoStrides, bool kOdd, bool kWide>
cudaError_t launch_vec_kernel(const mv_rms_norm_args &a, int group_threads, unsigned blocks, int threads,
                              cudaStream_t stream, bool pdl, int sms) {
    /* kWide: a float32 weight of 16-bit rows read early took 8 more vectors of registers than
       the 128 there are (spilled); it is read after the reduction instead, as the fused add's. */
    void (*kernel)(NormParams<kTwoStrides>, int, int64_t) = nullptr;
    if constexpr (kWide)
        kernel = rms_norm_vec_kernel<T, TW, V, kHasResidual, !kHasResidual && sizeof(TW) == sizeof(T), kOffset,
                                     kTwoStrides, kOdd, true>;
    else /* The fused add reads its weight after the sum in calls of over 4 blocks an SM: where a
            call's blocks come in a few rounds its rows' chains of latency decide, the weight early
            helps (H200 with PDL: fp32 1024 x 2048 9.51 -> 8.96 us, bf16 4096 x 1024 9.37 -> 9.20);
            in longer calls bandwidth decides and early it cost fp16 1.5-2% (4096 x 4096 33.45 ->
            34.17; 32768 rows of 16-bit types 0.5-1.5%). It costs no registers either way (bf16 118
            against 119, fp16 80 against 88); the cut was 264 blocks before 2026-11-26;
            dev/logs/norm-fused-mid-rows-nvidia-h200-2026-11-26.log. */
        kernel = !kHasResidual || blocks <= 4 * static_cast<int64_t>(sms > 0 ? sms : 1)
                     ? rms_norm_vec_kernel<T, TW, V, kHasResidual, true, kOffset, kTwoStrides, kOdd>
                     : rms_norm_vec_kernel<T, TW, V, true, false, kOffset, kTwoStrides, kOdd>;
    const int64_t input_row_bytes = a.in.hidden * static_cast<int64_t>(sizeof(T)) * (kHasResidual ? 2 : 1);
    const int64_t prefetch_rows = pdl ? kPrefetchBytes / input_row_bytes : 0;
    return mv_launch(kernel, dim3(blocks), dim3(threads), 0, stream, pdl, params_of<kTwoStrides>(a), group_threads,
                     prefetch_rows);
}

template <typename T, typename TW, int V, bool kHasResidual, bool kOffset, bool kOdd, bool kWide>
cudaError_t launch_vec_strides(const mv_rms_norm_args &a, int group_threads, unsigned blocks, int threads,
                               cudaStream_t stream, bool pdl, int sms) {
    return a.outer.inner_rows > 0 ? launch_vec_kernel<T, TW, V, kHasResidual, kOffset, true, kOdd, kWide>(
                                        a, group_threads, blocks, threads, stream, pdl, sms)
                                  : launch_vec_kernel<T, TW, V, kHasResidual, kOffset, false, kOdd, kWide>(
                                        a, group_threads, blocks, threads, stream, pdl, sms);
}

/* One stride, and strides that fit the short-call kernels' int fields. */
bool int_strides(const mv_rms_norm_args &a) {
    const int64_t limit = INT32_MAX;
    bool ok = a.outer.inner_rows == 0 && a.in.x_stride >= -limit && a.in.x_stride <= limit &&
              a.out_stride >= -limit && a.out_stride <= limit;
    if (a.in.residual != nullptr)
        ok = ok && a.in.residual_stride >= -limit && a.in.residual_stride <= limit &&
             a.in.residual_out_stride >= -limit && a.in.residual_out_stride <= limit;
    return ok;
}
/* Whether a call can take the short kernel: at most a row per multiprocessor (so one pass of the
   grid, a block of one group or a warp of groups), and int_strides. */
bool short_call(const mv_rms_norm_args &a, int sms) {
    return a.in.rows <= (sms > 0 ? sms : 1) && a.in.rows <= UINT16_MAX && int_strides(a);
}

/* Whether every row argument's first row starts on a whole vector (the weight on one of its
   own width). */
template <typename T, typename TW, int V>
bool starts_aligned(const mv_rms_norm_args &a) {
    const auto on = [](const void *p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; };
    bool ok = on(a.in.x, sizeof(T) * V) && on(a.out, sizeof(T) * V) && on(a.in.norm_weight, sizeof(TW) * V);
    if (a.in.residual != nullptr) ok = ok && on(a.in.residual, sizeof(T) * V) && on(a.in.residual_out, sizeof(T) * V);
    return ok;
}

/* A short call's parameter but for the short kernel's row split (short_call checked that the
   strides fit). */
ShortParams short_params(const mv_rms_norm_args &a, bool pdl) {
    ShortParams p = {};
    p.x = a.in.x;
    p.out = a.out;
    p.weight = a.in.norm_weight;
    p.x_stride = static_cast<int>(a.in.x_stride);
    p.out_stride = static_cast<int>(a.out_stride);
    p.hidden = static_cast<int>(a.in.hidden);
    p.eps = a.in.eps;
    p.prefetch = pdl ? 1 : 0;
    p.weight_offset = a.in.weight_offset;
    p.residual = a.in.residual;
    p.residual_out = a.in.residual_out;
    p.residual_stride = static_cast<int>(a.in.residual_stride);
    p.residual_out_stride = static_cast<int>(a.in.residual_out_stride);
    return p;
}

template <typename T, typename TW, int V, bool kTail = false>
cudaError_t launch_short(const mv_rms_norm_args &a, int group_threads, const RowBlocks &shape, cudaStream_t stream,
                         bool pdl) {
    ShortParams p = short_params(a, pdl);
    p.rows = static_cast<unsigned short>(a.in.rows);
    /* group_threads_for gives a power of two up to a warp */
    p.group_shift = static_cast<unsigned char>(group_threads <= 32 ? __builtin_ctz(group_threads) : 10);
    const bool offset = a.in.weight_offset != 0.0f;
    void (*kernel)(ShortParams) =
        a.in.residual != nullptr
            ? (offset ? rms_norm_short_kernel<T, TW, V, true, true, kTail>
                      : rms_norm_short_kernel<T, TW, V, true, false, kTail>)
            : (offset ? rms_norm_short_kernel<T, TW, V, false, true, kTail>
                      : rms_norm_short_kernel<T, TW, V, false, false, kTail>);
    return mv_launch(kernel, dim3(shape.blocks), dim3(shape.threads), 0, stream, pdl, p);
}

/* Whether a short call's rows take rms_norm_lanes_kernel (one vector a thread, a row a block;
   longer calls: lanes_for_rows):
   rows of up to 128 16-byte vectors (up to 1024: the pair kernel, below), or 1024 single elements
   (since rms_norm_elems_kernel, which takes them from 129, up to 128), whose general layout chains
   4 or 8 of them on a thread. Against the short kernel: H200 bf16 1 x 121 1.26 -> 0.91 us with PDL,
   1.86 -> 1.45 without; H100 float32 fused add 1 x 1024 2.27 -> 2.07 without. Wider rows were
   slower in blocks of 512-1024 threads (H100 float32 fused add 1 x 4096 1.63 -> 1.97 us, bf16
   1 x 8192 2.47 -> 2.62 without PDL); dev/logs/norm-lanes-kernel-*-2026-11-24.log.
   Rows of 257-512 16-byte vectors take rms_norm_lanes_pair_kernel (two a thread, up to 256
   threads): H200 bf16 1 x 4096 2.25 -> 2.09 us without PDL, 1.35 -> 1.31 with, fused add 2.54 ->
   2.38, 1 x 2560 fused 2.46 -> 2.26; dev/logs/norm-lanes-pair-*-2026-11-24.log. float32 rms_norm
   too since its form's 512-thread bound (it had run slower at 1024: 1 x 2048 1.98 -> 2.03 us):
   without PDL 1-14% faster (H200 600 x 2048 4.92 -> 4.23, Liger 4.21; 1 x 3584 2.24 -> 2.10),
   with PDL up to 13% faster but 3-7% slower at 128 rows on the H100 (128 x 3584 2.32 -> 2.49);
   dev/logs/norm-lanes-pair-bounds-nvidia-h200-h100-2026-11-27.log. Rows of 513-1024 vectors
   too (up to 512 threads), where G threads of 4 vectors put 4 on each thread's chain: H100 fp16
   fused add 1 x 5120 1.76 -> 1.56 us (2.74 -> 2.47 without PDL), bf16 264 x 5120 4.56 -> 4.09
   without, float32 fused add 16 x 3584 2.95 -> 2.86; H = 8192 level (0.97-1.04x);
   dev/logs/norm-lanes-pair-wide-nvidia-h100-80gb-hbm3-2026-11-25.log.
   Short calls of rows of 129-256 vectors too since 2026-11-27 (the lanes kernel's second barrier,
   G > 32, over blocks of 129-256 threads): H200 without PDL 1.00-1.06x (bf16 1 x 2048 1.76 -> 1.66 us, Liger
   1.61; float32 1 x 1024 1.66 -> 1.58), H100 1.00-1.05x; with PDL 0.95-1.06x, the losses past a
   row per SM, where the one-vector kernel stays (lanes_kernel); from 65 vectors the fused add
   lost (bf16 1 x 896 1.66 -> 1.73 without PDL);
   dev/logs/norm-lanes-pair-bounds-nvidia-h200-h100-2026-11-27.log (calls 8, 11).
   The short kernel's one warp of 4 vectors a thread (the layout of Inductor's one-warp
   persistent kernel) ran these rows 0.77-0.96x (H200 bf16 1 x 1024 1.39 -> 1.63 us without PDL;
   dev/logs/norm-static-compile-nvidia-h200-2026-11-29.log, call 2). */
constexpr int kLanesOneMaxVectors = 128; /* rms_norm_lanes_kernel up to here, the pair kernel beyond */
constexpr int kLanesOneMaxVectorsLong = 256; /* the same in calls past a row per SM (lanes_kernel) */
constexpr int kLanesPairMaxVectors = 1024;
static_assert(kLanesPairMaxVectors / 2 <= kMaxVecThreads, "rms_norm_lanes_pair_kernel's launch bounds");
bool lanes_rows(const mv_rms_norm_args &a, int v) {
    if (a.in.hidden % v != 0) return false;
    const int64_t vecs = a.in.hidden / v;
    return vecs <= (v == 1 ? kMaxThreads : kLanesPairMaxVectors);
}
bool lanes_wanted(const mv_rms_norm_args &a, int v, int sms) { return short_call(a, sms) && lanes_rows(a, v); }

/* A lanes kernel for a call's rows, and its block. */
struct LanesKernel {
    void (*kernel)(ShortParams);
    int threads;
};

template <typename T, typename TW, int V, int kPer>
LanesKernel lanes_kernel_per(const mv_rms_norm_args &a) {
    const bool offset = a.in.weight_offset != 0.0f;
    void (*kernel)(ShortParams) = nullptr;
    if constexpr (kPer == 1)
        kernel = a.in.residual != nullptr
                     ? (offset ? rms_norm_lanes_kernel<T, TW, V, true, true> : rms_norm_lanes_kernel<T, TW, V, true, false>)
                     : (offset ? rms_norm_lanes_kernel<T, TW, V, false, true> : rms_norm_lanes_kernel<T, TW, V, false, false>);
    else
        kernel = a.in.residual != nullptr ? (offset ? rms_norm_lanes_pair_kernel<T, TW, V, true, true>
                                                    : rms_norm_lanes_pair_kernel<T, TW, V, true, false>)
                                          : (offset ? rms_norm_lanes_pair_kernel<T, TW, V, false, true>
                                                    : rms_norm_lanes_pair_kernel<T, TW, V, false, false>);
    const int64_t per_thread = (a.in.hidden / V + kPer - 1) / kPer;
    return LanesKernel{kernel, static_cast<int>((per_thread + 31) / 32 * 32)};
}

/* Calls past a row per SM keep the one-vector kernel for rows of 129-256 vectors: with PDL the
   pair kernel ran them 0.95-0.98x at 264-1024 rows on both GPUs (1.00-1.05x without, where the
   fused add also takes these kernels past one wave, not measured on the pair kernel);
   dev/logs/norm-lanes-pair-bounds-nvidia-h200-h100-2026-11-27.log, calls 8 and 11. */
template <typename T, typename TW, int V>
LanesKernel lanes_kernel(const mv_rms_norm_args &a, bool short_rows) {
    if constexpr (V > 1) {
        if (a.in.hidden / V > (short_rows ? kLanesOneMaxVectors : kLanesOneMaxVectorsLong))
            return lanes_kernel_per<T, TW, V, 2>(a);
    }
    return lanes_kernel_per<T, TW, V, 1>(a);
}

template <typename T, typename TW, int V>
cudaError_t launch_lanes(const mv_rms_norm_args &a, const LanesKernel &k, int group_threads, cudaStream_t stream,
                         bool pdl) {
    ShortParams p = short_params(a, pdl);
    p.group = static_cast<unsigned short>(group_threads);
    return mv_launch(k.kernel, dim3(static_cast<unsigned>(a.in.rows)), dim3(k.threads), 0, stream, pdl, p);
}

/* Rows of at most 32 vectors (H <= 256 in 16-bit types, 128 in float32: per-head norms) share a
   block of 128 threads in the compiled kernel, a power of two of lanes a row: a row a block left
   one warp with 8-32 lanes busy, and the general kernel's G of 2-8 threads a row chains up to 4
   vectors each. H200, chains of calls of 16-262144 rows of H 64-256 (bf16; float32 H 32-128),
   against jit=False: without PDL 0.78-0.98x the time at all 54 points (bf16 fused add
   65536 x 64 13.12 -> 10.30 µs). With PDL 0.71-0.97x where the blocks fill at most half a wave
   (8 blocks of 128 threads an SM, half an sm_90 SM's threads; bf16 1024 x 128 1.69 -> 1.22) and
   past the short calls at rows of at most 8 vectors (G = 2; 65536 x 64 7.21 -> 5.67), but
   1.08-1.22x past half a wave at wider rows (65536 x 128 9.40 -> 10.63, fused add 8192 x 256
   4.68 -> 5.34; why is not established) and 1.01-1.13x in short calls of rows of 8 vectors (16 x 64
   0.81 -> 0.91), where the forms before it stay (the general kernel; a row a block in the
   calls the lanes kernels take). dev/logs/norm-jit-packed-rows-nvidia-h200-2026-11-29.log */
constexpr int kJitPackedMaxVectors = 32;
constexpr int kJitPackedThreads = 128;
constexpr int kJitPackedHalfWaveBlocks = 8; /* a multiprocessor's, with PDL */
constexpr int kJitPackedAnyWaveVectors = 8;
int jit_row_lanes(int64_t vecs) { /* a power of two, vecs <= it <= 32 */
    int lanes = 1;
    while (lanes < vecs) lanes *= 2;
    return lanes;
}
bool jit_packed_rows(const mv_rms_norm_args &a, int v, bool pdl, int sms) {
    const int64_t vecs = a.in.hidden / v; /* v divides H (vector_width) */
    if (vecs > kJitPackedMaxVectors || !int_strides(a)) return false;
    if (!pdl) return true;
    if (vecs <= kJitPackedAnyWaveVectors) return !short_call(a, sms);
    const int64_t rows_per_block = kJitPackedThreads / jit_row_lanes(vecs);
    return (a.in.rows + rows_per_block - 1) / rows_per_block <= int64_t{kJitPackedHalfWaveBlocks} * (sms > 0 ? sms : 1);
}

/* Calls the lanes kernels take (launch_vec: short calls, one wave of rows, the fused add's waves
   without PDL), in 16-byte vectors (v of them a row, so at most 1024, int strides, rows within the
   grid), first ask for the kernel compiled at run time for their H (norm_jit.cu): the lanes kernels' arithmetic and
   order, so the same bits, with H, G and contiguous strides as constants, one vector a thread.
   H200 bf16, chains of 1-64 rows of H 896-4096: 0.76-0.96x the lanes kernels' time without PDL,
   0.84-0.92x with (dev/logs/norm-jit-nvidia-h200-2026-11-29.log, call 10); past a row per SM
   0.81-0.95x at H <= 2048 (one wave, and the fused add's waves without PDL), 0.97-1.02x beyond
   (dev/logs/norm-jit-rows-nvidia-h200-2026-11-29.log). packed: the calls jit_packed_rows takes
   instead, their rows sharing blocks. False where there is no such kernel (no NVRTC, a failed
   compilation) or its grid would pass 2^31 - 1 blocks: the library's kernels take the call. */
bool launch_lanes_jit(const mv_rms_norm_args &a, int v, int group_threads, cudaStream_t stream, bool pdl,
                      const mv_cuda_device &dev, bool packed, cudaError_t *err) {
    const int64_t h = a.in.hidden, vecs = h / v;
    const bool residual = a.in.residual != nullptr;
    mv_norm_jit_form form = {};
    form.dtype = a.in.dtype;
    form.weight_float32 = a.in.weight_float32 && a.in.dtype != MV_FLOAT32 ? 1 : 0;
    form.residual = residual ? 1 : 0;
    form.offset = a.in.weight_offset != 0.0f ? 1 : 0;
    form.pdl = pdl ? 1 : 0;
    form.contiguous = a.in.x_stride == h && a.out_stride == h &&
                      (!residual || (a.in.residual_stride == h && a.in.residual_out_stride == h));
    form.hidden = static_cast<int>(h);
    form.group = group_threads;
    int64_t blocks = a.in.rows;
    unsigned threads = static_cast<unsigned>((vecs + 31) / 32 * 32);
    if (packed) {
        form.row_lanes = jit_row_lanes(vecs);
        form.rows_per_block = kJitPackedThreads / form.row_lanes;
        blocks = (a.in.rows + form.rows_per_block - 1) / form.rows_per_block;
        threads = kJitPackedThreads;
    }
    if (blocks > INT32_MAX) return false;
    const CUfunction function = mv_norm_jit_function(form, dev);
    if (function == nullptr) return false;
    const void *x = a.in.x, *weight = a.in.norm_weight, *res = a.in.residual;
    void *out = a.out, *res_out = a.in.residual_out;
    float eps = a.in.eps, offset = a.in.weight_offset;
    int x_stride = static_cast<int>(a.in.x_stride), out_stride = static_cast<int>(a.out_stride);
    int res_stride = residual ? static_cast<int>(a.in.residual_stride) : 0;
    int res_out_stride = residual ? static_cast<int>(a.in.residual_out_stride) : 0;
    long long rows = a.in.rows;
    void *params[] = {&x, &out, &weight, &res, &res_out, &eps, &offset, &x_stride, &out_stride, &res_stride,
                      &res_out_stride, &rows};
    *err = mv_launch_function(function, dim3(static_cast<unsigned>(blocks)), dim3(threads), 0, stream, pdl, 1u,
                              params);
    return true;
}

/* Calls of more rows than multiprocessors, in 16-byte vectors, take the lanes kernels too while
   every row's block fits in one wave (the kernel's resident blocks on every SM), and the fused
   add's without PDL at any number of waves (below): the general
   kernel's G threads of up to 4 vectors put few warps on each SM there, each with a long chain
   of loads and arithmetic. With PDL off (a norm after a GEMM, as in a model), H200: bf16
   1024 x 1024 3.45 -> 3.09 us, 264 x 4096 3.78 -> 3.28, fused add 528 x 1024 3.52 -> 3.13, float32
   1024 x 1024 4.48 -> 3.95 (1.03-1.19x at 264-2048 rows); a second wave lost (bf16 4096 x 1024
   6.18 -> 6.37), and so did single elements (odd H: bf16 1000 x 999 4.78 -> 7.80 against the
   staged kernel). In a chain of norms with PDL the general kernel can be faster (bf16 fused add
   2048 x 1024 4.65 -> 5.33 us; why is not established), but such chains are rare in a model;
   dev/logs/norm-lanes-mid-rows-nvidia-h200-2026-11-25.log.
   The fused add without PDL past one wave: 1.02-1.13x at 4096 x 896 to 32768 x 1024 and
   1024 x 3584 to 4096 x 8192 in all three dtypes (H200 bf16 1024 x 4096 11.53 -> 10.25 us, Liger
   10.90), 0.98-0.99x at 16-bit 32768 x 4096; with PDL it lost up to 5% (bf16 4096 x 896 8.21 ->
   8.64) and rms_norm lost either way (0.92-0.97x); dev/logs/norm-fused-mid-rows-nvidia-h200-2026-11-26.log. */
template <typename T, typename TW, int V>
bool lanes_for_rows(const mv_rms_norm_args &a, const LanesKernel &k, const mv_cuda_device &dev, bool pdl) {
    if (!int_strides(a) || !lanes_rows(a, V) || a.in.rows > INT32_MAX) return false;
    /* Not rows of one warp's block (at most 32 vectors): 32 resident blocks an SM hold half its
       threads at most there; 8192-262144 rows of H 64-256 ran 1.2-3.7x slower than the general
       kernel (H200 bf16 65536 x 128 40.94 against 19.42 µs; the compiled kernel's blocks share rows
       instead: jit_packed_rows). dev/logs/norm-jit-packed-rows-nvidia-h200-2026-11-29.log */
    if (a.in.residual != nullptr && !pdl) return k.threads > 32;
    int blocks = 0;
    if (mv_blocks_per_sm(&blocks, k.kernel, k.threads, 0, dev.device) != cudaSuccess) {
        (void)cudaGetLastError(); /* no answer: the general kernel takes the call */
        return false;
    }
    return a.in.rows <= static_cast<int64_t>(blocks) * (dev.sms > 0 ? dev.sms : 1);
}

/* Which calls of such rows (G >= 32, so H 129-4096; G of 2-16, H 9-128, past the short calls)
   take rms_norm_elems_kernel: one stride in
   int strides, and every call but a float32 fused add of more rows than multiprocessors where
   G >= 32. There it lost to the general and staged kernels (H100 1000 x 999 6.36 -> 7.99 us,
   4096 x 4095 93.6 -> 100.2; the 16-bit fused add ran 1.00-1.44x as fast as before, rms_norm
   1.03-1.69x in both dtypes; dev/logs/norm-odd-rows-nvidia-h100-2026-11-25.log), and at G = 32
   (H 129-256) with PDL at one of three shapes (H200 4096 x 201 4.92 -> 5.53 us). At G <= 16
   (H <= 128) it ran 1.13-1.54x faster with PDL and without (H200 65536 x 121 39.60 -> 35.15 us,
   65536 x 33 16.19 -> 12.28; dev/logs/norm-elems-fused-float32-nvidia-h200-2026-11-29.log).
   The rule moves no row's bits: every kernel sums in the order G fixes. */
constexpr int64_t kElemsFusedFloat32MaxHidden = 128; /* G <= 16 at 8 elements a thread */
bool elems_wanted(const mv_rms_norm_args &a, const mv_cuda_device &dev) {
    /* the kernel's int row index reaches rows + 2 in the last block */
    if (!int_strides(a) || a.in.rows > INT32_MAX - 4) return false;
    return !(a.in.dtype == MV_FLOAT32 && a.in.residual != nullptr && a.in.rows > (dev.sms > 0 ? dev.sms : 1) &&
             a.in.hidden > kElemsFusedFloat32MaxHidden);
}

template <typename T, typename TW, bool kHasResidual>
cudaError_t launch_elems(const mv_rms_norm_args &a, int group_threads, cudaStream_t stream, bool pdl) {
    const int threads = elems_block_threads(group_threads);
    const int64_t rows_per_block = threads / group_threads;
    const int64_t wanted = (a.in.rows + rows_per_block - 1) / rows_per_block;
    const unsigned blocks = static_cast<unsigned>(wanted);
    const int64_t row_bytes = a.in.hidden * static_cast<int64_t>(sizeof(T)) * (kHasResidual ? 2 : 1);
    const int prefetch_rows = pdl ? static_cast<int>(kPrefetchBytes / row_bytes) : 0;
    void (*kernel)(NormParams<false>, int) = nullptr;
    switch (group_threads) {
    case 2: kernel = rms_norm_elems_kernel<T, TW, kHasResidual, 2>; break;
    case 4: kernel = rms_norm_elems_kernel<T, TW, kHasResidual, 4>; break;
    case 8: kernel = rms_norm_elems_kernel<T, TW, kHasResidual, 8>; break;
    case 16: kernel = rms_norm_elems_kernel<T, TW, kHasResidual, 16>; break;
    case 32: kernel = rms_norm_elems_kernel<T, TW, kHasResidual, 32>; break;
    case 64: kernel = rms_norm_elems_kernel<T, TW, kHasResidual, 64>; break;
    case 128: kernel = rms_norm_elems_kernel<T, TW, kHasResidual, 128>; break;
    case 256: kernel = rms_norm_elems_kernel<T, TW, kHasResidual, 256>; break;
    case 512: kernel = rms_norm_elems_kernel<T, TW, kHasResidual, 512>; break;
    default: return cudaErrorInvalidValue;
    }
    return mv_launch(kernel, dim3(blocks), dim3(threads), 0, stream, pdl, params_of<false>(a), prefetch_rows);
}

/* Whether float32 rows off the 16-byte grid of G threads (G <= 512: H of 4097-8192) take
   rms_norm_virtual_kernel. H200 float32 with PDL, against the kernels before it
   (dev/logs/norm-virtual-rows-nvidia-h200-2026-11-26.log; the H100 there alike):
   - rms_norm from 2 rows: 1.01-1.74x (16 x 8191 3.34 -> 2.98 us, 600 x 8191 18.81 -> 13.86,
     4096 x 8191 91.95 -> 74.28, 600 x 5119 14.28 -> 8.22), 0.97x at 4096 x 5125 (G = 352, 2 rows
     an SM; 3 since, virtual_kernel); one row keeps the short kernel (1 x 8191 1.86 against 2.74 us);
   - the fused add where an SM holds 3 of its rows (the occupancy API) in calls of 4 rows an SM
     and more: G <= 320 in registers 1.12-1.25x (4096 x 5119 113.40 -> 95.01 us); G >= 352 with
     the row in shared memory (kRowShared; in registers 2 rows an SM, 0.98-1.03x) 1.02-1.22x
     (4096 x 5125 112.26 -> 92.73 us, Liger 119.28; 32768 x 6001 937.4 -> 832.0), 0.98x at
     600 x 8191 (1.03x without PDL; dev/logs/norm-virtual-shared-row-nvidia-h200-2026-11-28.log);
     its row held as vectors without conversions 1.02-1.05x more (4096 x 8191 147.76 -> 142.16 us,
     600 x 8191 25.85 -> 25.33; dev/logs/norm-shared-row-vec-nvidia-h200-2026-11-28.log).
     The shared form at G <= 320 ran 0.92-1.07x (600 x 5119 16.69 -> 18.18 us): registers there.
     In shorter calls the general kernel (132 x 8191: 0.77x in registers).
   One stride only (the two-stride views keep the general and staged kernels), and the grid's
   2^31 - 1 rows. */
using VirtualKernel = void (*)(NormParams<false>, int);
VirtualKernel virtual_kernel(const mv_rms_norm_args &a, int group_threads) {
    const bool offset = a.in.weight_offset != 0.0f;
    if (a.in.residual != nullptr) {
        if (group_threads <= kVirtual2FormMaxThreadsAt3)
            return offset ? rms_norm_virtual_kernel<true, true, 2> : rms_norm_virtual_kernel<true, false, 2>;
        return offset ? rms_norm_virtual_kernel<true, true, 3, true> : rms_norm_virtual_kernel<true, false, 3, true>;
    }
    /* rms_norm's G of 352-384: 2 rows an SM at 62 registers, 3 at 56 (smaller G hold 3 already):
       H100 float32 1.01-1.11x at 600-4096 rows of H 5125-6143. The fused add at 56 spilled 24
       bytes and ran 0.87-0.99x there: it holds the row in shared memory instead (above)
       (dev/logs/norm-virtual-three-rows-nvidia-h100-2026-11-28.log) */
    if (group_threads > kVirtual2FormMaxThreadsAt3 && group_threads <= kVirtual3Threads)
        return offset ? rms_norm_virtual_kernel<false, true, 3> : rms_norm_virtual_kernel<false, false, 3>;
    return offset ? rms_norm_virtual_kernel<false, true, 2> : rms_norm_virtual_kernel<false, false, 2>;
}

bool virtual_wanted(const mv_rms_norm_args &a, int group_threads, const mv_cuda_device &dev) {
    if (a.in.dtype != MV_FLOAT32 || a.outer.inner_rows != 0 || a.in.rows < 2 || a.in.rows > INT32_MAX)
        return false;
    if (a.in.residual == nullptr) return true;
    if (a.in.rows < 4 * static_cast<int64_t>(dev.sms > 0 ? dev.sms : 1)) return false;
    int blocks = 0;
    if (mv_blocks_per_sm(&blocks, virtual_kernel(a, group_threads), group_threads, 0, dev.device) != cudaSuccess) {
        (void)cudaGetLastError(); /* no answer: the general kernel takes the call */
        return false;
    }
    return blocks >= 3;
}

cudaError_t launch_virtual(const mv_rms_norm_args &a, int group_threads, cudaStream_t stream, bool pdl) {
    const int64_t row_bytes = a.in.hidden * 4 * (a.in.residual != nullptr ? 2 : 1);
    const int prefetch_rows = pdl ? static_cast<int>(kPrefetchBytes / row_bytes) : 0;
    return mv_launch(virtual_kernel(a, group_threads), dim3(static_cast<unsigned>(a.in.rows)), dim3(group_threads), 0,
                     stream, pdl, params_of<false>(a), prefetch_rows);
}

/* kWide: rows of 2049-4096 16-byte vectors, 8 a thread in the general kernel at every M (none of
   the short-call kernels), so each such H has one layout and order. jit: the calls the lanes
   kernels take in 16-byte vectors may run the kernel compiled at run time instead (the call's
   jit=True; launch_lanes_jit), and so may rows of at most 32 vectors in longer calls
   (jit_packed_rows); kOdd and kWide rows are never such calls. */
template <typename T, typename TW, int V, bool kOdd = false, bool kWide = false>
cudaError_t launch_vec(const mv_rms_norm_args &a, int group_threads, cudaStream_t stream, bool pdl,
                       const mv_cuda_device &dev, bool jit) {
    const int sms = dev.sms;
    /* vector_width never asks for more than 16 bytes (no float x 8), so build no such kernel */
    if constexpr (sizeof(T) * V > 16) {
        return cudaErrorInvalidValue;
    } else {
        const RowBlocks shape = row_blocks(a.in.rows, group_threads, sms);
        /* Rows of 16-byte vectors in short calls: the short kernel (single elements: the lanes
           kernel up to 128 of them, rms_norm_elems_kernel beyond). So is a
           call of one row off the grid (kOdd) that starts on it, whole vectors then a tail cut
           at H (kTail): its first form read every row in place, aligned or not, with a branch
           on each vector that held its loads back (bf16 1 x 5119 2.57 -> 3.33 us). The
           narrower vectors of other H or misaligned views keep the general kernel. */
        if constexpr (!kWide && !kOdd && (V == 1 || sizeof(T) * V == 16)) {
            cudaError_t err = cudaSuccess;
            const bool jit_vectors = V > 1 && jit; /* the compiled kernel reads 16-byte vectors */
            if (jit_vectors && jit_packed_rows(a, V, pdl, sms) &&
                launch_lanes_jit(a, V, group_threads, stream, pdl, dev, true, &err))
                return err;
            if (lanes_wanted(a, V, sms)) {
                if (jit_vectors && launch_lanes_jit(a, V, group_threads, stream, pdl, dev, false, &err)) return err;
                return launch_lanes<T, TW, V>(a, lanes_kernel<T, TW, V>(a, true), group_threads, stream, pdl);
            }
            if constexpr (V > 1) { /* single elements in short calls are lanes' or elems' rows */
                if (short_call(a, sms)) return launch_short<T, TW, V>(a, group_threads, shape, stream, pdl);
                const LanesKernel k = lanes_kernel<T, TW, V>(a, false);
                if (lanes_for_rows<T, TW, V>(a, k, dev, pdl)) {
                    if (jit && launch_lanes_jit(a, V, group_threads, stream, pdl, dev, false, &err)) return err;
                    return launch_lanes<T, TW, V>(a, k, group_threads, stream, pdl);
                }
            }
        }
        if constexpr (kOdd && !kWide) {
            if (a.in.rows == 1 && short_call(a, sms) && starts_aligned<T, TW, V>(a))
                return launch_short<T, TW, V, true>(a, group_threads, shape, stream, pdl);
        }
        const unsigned blocks = shape.blocks;
        const int threads = shape.threads;
        const bool offset = a.in.weight_offset != 0.0f;
        if (a.in.residual != nullptr)
            return offset ? launch_vec_strides<T, TW, V, true, true, kOdd, kWide>(a, group_threads, blocks, threads, stream, pdl, sms)
                          : launch_vec_strides<T, TW, V, true, false, kOdd, kWide>(a, group_threads, blocks, threads, stream, pdl, sms);
        return offset ? launch_vec_strides<T, TW, V, false, true, kOdd, kWide>(a, group_threads, blocks, threads, stream, pdl, sms)
                      : launch_vec_strides<T, TW, V, false, false, kOdd, kWide>(a, group_threads, blocks, threads, stream, pdl, sms);
    }
}

template <typename T, typename TW>
cudaError_t launch_width(const mv_rms_norm_args &a, int v, int group_threads, cudaStream_t stream, bool pdl,
                         const mv_cuda_device &dev, bool jit) {
    switch (v) {
    case 8: return launch_vec<T, TW, 8>(a, group_threads, stream, pdl, dev, jit);
    case 4: return launch_vec<T, TW, 4>(a, group_threads, stream, pdl, dev, jit);
    case 2: return launch_vec<T, TW, 2>(a, group_threads, stream, pdl, dev, jit);
    default: return launch_vec<T, TW, 1>(a, group_threads, stream, pdl, dev, jit);
    }
}

} // namespace

extern "C" int mv_rms_norm_cuda(const mv_rms_norm_args *a, const mv_cuda_opts *o, void *stream) {
    if (a->in.rows == 0) return (int)cudaSuccess;
    cudaStream_t cuda_stream = static_cast<cudaStream_t>(stream);
    mv_cuda_device dev;
    cudaError_t err = mv_current_device(&dev);
    if (err != cudaSuccess) return (int)err;
    const bool pdl = mv_pdl_use(o->pdl, dev);
    /* The row layout (vector width, threads per row) depends on H and alignment only, never on M:
       it fixes each row's summation order, so a row's bits do not depend on how many rows share
       the call (batch invariance). Short calls once took 2 vectors per thread instead of 4 (fused
       add M = 1 H = 896 1.47 against 1.57 us), which made rows of calls with up to one row per
       multiprocessor round differently from the same rows in longer calls. */
    const int64_t elem = a->in.dtype == MV_FLOAT32 ? 4 : 2;
    const int v = vector_width(a);
    const int64_t vecs_per_row = a->in.hidden / v;
    const int per_thread = vecs_per_thread(v);
    const int64_t needed = (vecs_per_row + per_thread - 1) / per_thread;
    if (needed > kMaxVecThreads) {
        /* Rows too long for their own vector width in 512 threads:
           - off the 16-byte grid (odd H above 4096, where single elements end; a view whose
             start or strides allow only narrower vectors): 16-byte "virtual" vectors from each
             row's first element, the last cut at H, 4 a thread (H200 bf16 4096 x 5119 77.6 ->
             38.5 us, float32 1 x 8191 6.5 -> 2.2 against the reference kernel;
             dev/logs/norm-odd-h-virtual-vectors-nvidia-h200-2026-11-24.log). Calls of many rows
             of odd H go through shared memory (staged_wanted), in the same summation order;
             float32 rows in one stride take a lean in-place kernel instead (virtual_wanted).
           - then rows of up to 4096 vectors (float32 H <= 16384, 16-bit H <= 32768), 8 a
             thread (kWide): the reference kernel's one-block-per-row scalar loads ran these
             rows at 0.37-0.80x Liger's (H200 bf16 1 x 32768 12.59 us against 4.60;
             dev/logs/norm-session17-nvidia-h200-2026-11-24.log); the fused add's at 0.33-0.61x
             (bf16 1 x 32768 17.55 us against 5.78, H200;
             dev/logs/norm-wide-fused-nvidia-h200-2026-11-24.log).
           - the fused add's longer rows: fused_add_long_kernel, 8 vectors a thread at a time,
             s read back from residual_out (H200 float32 1 x 32768 13.63 -> 8.10 us, Liger 9.42).
           - rms_norm's rows of up to 8192 vectors on the grid: rms_norm_wider_kernel, 16 a thread.
           Past that (rms_norm's longer rows, rows over 2^30 elements), the reference kernel. */
        const int64_t per_vec = 16 / elem;
        const bool on_grid = v == per_vec;
        const int64_t vecs = (a->in.hidden + per_vec - 1) / per_vec;
        const int64_t needed4 = (vecs + kMaxVecsPerThread - 1) / kMaxVecsPerThread;
        const int64_t needed8 = (vecs + 2 * kMaxVecsPerThread - 1) / (2 * kMaxVecsPerThread);
        if (!on_grid && needed4 <= kMaxVecThreads) {
            const int group_threads = group_threads_for(needed4);
            if (virtual_wanted(*a, group_threads, dev)) return (int)launch_virtual(*a, group_threads, cuda_stream, pdl);
            const bool staged = a->in.hidden % 2 == 1 && staged_wanted(a, group_threads, true, dev) &&
                                staged_fits(a, group_threads, dev);
            err = cudaErrorInvalidValue;
            MV_DISPATCH_DTYPE(a->in.dtype, T, {
                constexpr int V = 16 / sizeof(T);
                if (float_weight(a))
                    err = staged ? launch_staged<T, float, V>(*a, group_threads, dev, cuda_stream, pdl)
                                 : launch_vec<T, float, V, true>(*a, group_threads, cuda_stream, pdl, dev, false);
                else
                    err = staged ? launch_staged<T, T, V>(*a, group_threads, dev, cuda_stream, pdl)
                                 : launch_vec<T, T, V, true>(*a, group_threads, cuda_stream, pdl, dev, false);
            })
            return (int)err;
        }
        if (needed8 > kMaxVecThreads && a->in.residual == nullptr && on_grid && vecs <= kWiderMaxVecs) {
            const int group_threads = group_threads_for((vecs + 4 * kMaxVecsPerThread - 1) / (4 * kMaxVecsPerThread));
            err = cudaErrorInvalidValue;
            MV_DISPATCH_DTYPE(a->in.dtype, T, {
                constexpr int V = 16 / sizeof(T);
                err = float_weight(a) ? launch_wider<T, float, V>(*a, group_threads, cuda_stream, pdl)
                                      : launch_wider<T, T, V>(*a, group_threads, cuda_stream, pdl);
            })
            return (int)err;
        }
        if (needed8 > kMaxVecThreads) {
            if (a->in.residual == nullptr || a->in.hidden > kLongMaxHidden) return mv_rms_norm_cuda_reference(a, stream);
            err = cudaErrorInvalidValue;
            MV_DISPATCH_DTYPE(a->in.dtype, T, {
                constexpr int V = 16 / sizeof(T);
                if (float_weight(a))
                    err = on_grid ? launch_fused_long<T, float, V, false>(*a, cuda_stream, pdl)
                                  : launch_fused_long<T, float, V, true>(*a, cuda_stream, pdl);
                else
                    err = on_grid ? launch_fused_long<T, T, V, false>(*a, cuda_stream, pdl)
                                  : launch_fused_long<T, T, V, true>(*a, cuda_stream, pdl);
            })
            return (int)err;
        }
        const int group_threads = group_threads_for(needed8);
        err = cudaErrorInvalidValue;
        MV_DISPATCH_DTYPE(a->in.dtype, T, {
            constexpr int V = 16 / sizeof(T);
            if (float_weight(a))
                err = on_grid ? launch_vec<T, float, V, false, true>(*a, group_threads, cuda_stream, pdl, dev, false)
                              : launch_vec<T, float, V, true, true>(*a, group_threads, cuda_stream, pdl, dev, false);
            else
                err = on_grid ? launch_vec<T, T, V, false, true>(*a, group_threads, cuda_stream, pdl, dev, false)
                              : launch_vec<T, T, V, true, true>(*a, group_threads, cuda_stream, pdl, dev, false);
        })
        return (int)err;
    }
    const int group_threads = group_threads_for(needed, v == 1);
    /* rows of one thread (H <= 8) stay on the general kernel: G = 1 spilled here (fp16 fused add
       with a float32 weight) */
    if (v == 1 && (group_threads >= 32 || (group_threads >= 2 && !lanes_wanted(*a, v, dev.sms))) &&
        elems_wanted(*a, dev)) {
        err = cudaErrorInvalidValue;
        MV_DISPATCH_DTYPE(a->in.dtype, T, {
            if (float_weight(a))
                err = a->in.residual != nullptr ? launch_elems<T, float, true>(*a, group_threads, cuda_stream, pdl)
                                                : launch_elems<T, float, false>(*a, group_threads, cuda_stream, pdl);
            else
                err = a->in.residual != nullptr ? launch_elems<T, T, true>(*a, group_threads, cuda_stream, pdl)
                                                : launch_elems<T, T, false>(*a, group_threads, cuda_stream, pdl);
        })
        return (int)err;
    }
    /* A short call that the lanes kernel takes stays in place: H200 bf16 16 x 999 through shared
       memory 1.89 us with PDL and 3.00 without, on the lanes kernel 1.37 and 2.40 */
    const bool staged = v == 1 && !lanes_wanted(*a, v, dev.sms) && staged_wanted(a, group_threads, false, dev) &&
                        staged_fits(a, group_threads, dev);
    const bool jit = !o->builtin_only;
    err = cudaErrorInvalidValue;
    MV_DISPATCH_DTYPE(a->in.dtype, T, {
        if (float_weight(a))
            err = staged ? launch_staged<T, float, 1>(*a, group_threads, dev, cuda_stream, pdl)
                         : launch_width<T, float>(*a, v, group_threads, cuda_stream, pdl, dev, jit);
        else
            err = staged ? launch_staged<T, T, 1>(*a, group_threads, dev, cuda_stream, pdl)
                         : launch_width<T, T>(*a, v, group_threads, cuda_stream, pdl, dev, jit);
    })
    return (int)err;
}
