/*
 * hopper.cuh: the sm_90 PTX the kernels share (the QKV decode stream, the QKV wgmma GEMM and the
 * weight-stream probe): mbarriers, copies into shared memory by the tensor / bulk copy engine,
 * and the fences and barriers around them.
 *
 * Every helper is defined only where the target has the instruction (__CUDA_ARCH__ >= 900);
 * kernels guard their bodies the same way, so the sm_80 build of a file compiles to empty
 * kernels that the host never launches.
 */
#ifndef MINIVLLM_HOPPER_CUH
#define MINIVLLM_HOPPER_CUH

#include <cstdint>

#include <cuda.h> /* CUtensorMap */

#include "cuda/common.cuh" /* mv_shared_address */

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900

/* ---- mbarriers in this CTA -------------------------------------------------------------------- */

__device__ __forceinline__ void mv_mbarrier_init(uint64_t *bar, unsigned count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(mv_shared_address(bar)), "r"(count) : "memory");
}
/* Makes initialized barriers visible to the copy engine and to the other CTAs of the cluster. */
__device__ __forceinline__ void mv_mbarrier_init_fence() {
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}
__device__ __forceinline__ void mv_mbarrier_arrive_expect_tx(uint64_t *bar, unsigned bytes) {
    asm volatile("mbarrier.arrive.expect_tx.release.cta.shared::cta.b64 _, [%0], %1;\n" ::"r"(mv_shared_address(bar)),
                 "r"(bytes)
                 : "memory");
}
__device__ __forceinline__ void mv_mbarrier_arrive(uint64_t *bar) {
    asm volatile("mbarrier.arrive.release.cta.shared::cta.b64 _, [%0];\n" ::"r"(mv_shared_address(bar)) : "memory");
}
/* Spin until the phase with this parity has completed; acquire at CTA scope. */
__device__ __forceinline__ void mv_mbarrier_wait(uint64_t *bar, unsigned parity) {
    const uint32_t addr = mv_shared_address(bar);
    uint32_t done = 0;
    while (!done)
        asm volatile("{\n .reg .pred p;\n mbarrier.try_wait.parity.acquire.cta.shared::cta.b64 p, [%1], %2;\n"
                     " selp.u32 %0, 1, 0, p;\n}\n"
                     : "=r"(done)
                     : "r"(addr), "r"(parity)
                     : "memory");
}

/* ---- the copy engine -------------------------------------------------------------------------- */

/* Data read once per call (weights): ask L2 to evict it first, keeping activations and outputs. */
__device__ __forceinline__ uint64_t mv_evict_first_policy() {
    uint64_t policy;
    asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(policy));
    return policy;
}
/* Data read by many blocks (the input rows of a GEMM): keep it in L2 ahead of streamed weights. */
__device__ __forceinline__ uint64_t mv_evict_last_policy() {
    uint64_t policy;
    asm volatile("createpolicy.fractional.L2::evict_last.b64 %0, 1.0;\n" : "=l"(policy));
    return policy;
}
/* Data reused by several blocks of a wave but too large to pin (a GEMM's weight columns). */
__device__ __forceinline__ uint64_t mv_evict_normal_policy() {
    uint64_t policy;
    asm volatile("createpolicy.fractional.L2::evict_normal.b64 %0, 1.0;\n" : "=l"(policy));
    return policy;
}
/* One box of a 2-D tensor map (coordinates innermost first) into this CTA's shared memory,
   completing the box's bytes on bar. */
__device__ __forceinline__ void mv_tensor_copy_2d(void *dst, const CUtensorMap *map, int c0, int c1, uint64_t *bar,
                                                  uint64_t policy) {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint"
        " [%0], [%1, {%2, %3}], [%4], %5;\n" ::"r"(mv_shared_address(dst)),
        "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(mv_shared_address(bar)), "l"(policy)
        : "memory");
}
/* One box of a 3-D tensor map (coordinates innermost first) into this CTA's shared memory,
   completing the box's bytes on bar. */
__device__ __forceinline__ void mv_tensor_copy_3d(void *dst, const CUtensorMap *map, int c0, int c1, int c2,
                                                  uint64_t *bar, uint64_t policy) {
    asm volatile(
        "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint"
        " [%0], [%1, {%2, %3, %4}], [%5], %6;\n" ::"r"(mv_shared_address(dst)),
        "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(mv_shared_address(bar)), "l"(policy)
        : "memory");
}
/* A contiguous, 16-byte aligned run of bytes (a multiple of 16) into shared memory. */
__device__ __forceinline__ void mv_bulk_copy(void *dst, const void *src, unsigned bytes, uint64_t *bar) {
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(
                     mv_shared_address(dst)),
                 "l"(src), "r"(bytes), "r"(mv_shared_address(bar))
                 : "memory");
}
/* ---- stores by the copy engine ----------------------------------------------------------------- */

/* One box of this CTA's shared memory (laid out as the map's swizzle says) to a 2-D tensor map at
   coordinates (c0, c1), innermost first; parts outside the tensor are not written. The thread's
   shared memory writes must be ordered before it (mv_fence_proxy_async_shared, then a barrier). */
__device__ __forceinline__ void mv_tensor_store_2d(const CUtensorMap *map, int c0, int c1, const void *src) {
    asm volatile("cp.async.bulk.tensor.2d.global.shared::cta.bulk_group [%0, {%1, %2}], [%3];\n" ::"l"(
                     reinterpret_cast<uint64_t>(map)),
                 "r"(c0), "r"(c1), "r"(mv_shared_address(src))
                 : "memory");
}
/* Closes this thread's group of stores issued since the last commit. */
__device__ __forceinline__ void mv_bulk_commit() { asm volatile("cp.async.bulk.commit_group;\n" ::: "memory"); }
/* Until this thread's committed stores have read their shared memory (it may be rewritten). */
__device__ __forceinline__ void mv_bulk_wait_read() { asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory"); }
/* Until this thread's committed stores are complete. */
__device__ __forceinline__ void mv_bulk_wait() { asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory"); }

/* ---- fences and barriers --------------------------------------------------------------------- */

/* Orders this thread's ordinary shared-memory writes before later reads by the async proxy
   (wgmma operands, bulk copies out of shared memory). */
__device__ __forceinline__ void mv_fence_proxy_async_shared() {
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
/* Barrier among `threads` threads (whole warps) of this CTA on hardware barrier `id` (1..15; 0 is
   __syncthreads'). */
__device__ __forceinline__ void mv_named_barrier(int id, int threads) {
    asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

/* ---- thread-block clusters ------------------------------------------------------------------- */

/* A load with acquire semantics at GPU scope: what the releasing thread wrote before its release
   (fence + atomic) is visible after it. */
__device__ __forceinline__ int mv_load_acquire(const int *p) {
    int v;
    asm volatile("ld.acquire.gpu.global.b32 %0, [%1];\n" : "=r"(v) : "l"(p) : "memory");
    return v;
}
/* This CTA's rank in its cluster. */
__device__ __forceinline__ unsigned mv_cluster_rank() {
    unsigned r;
    asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(r));
    return r;
}
/* Every thread of the cluster that has not exited waits here for the others: what each wrote to
   shared memory before (its own CTA's or another's), barriers initialized included, is visible to
   all after. Whole warps only (.aligned). */
__device__ __forceinline__ void mv_cluster_sync() {
    asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;\n" ::: "memory");
}
/* The shared::cluster address of the variable at p in CTA `rank` of this cluster. */
__device__ __forceinline__ uint32_t mv_cluster_address(const void *p, unsigned rank) {
    uint32_t out;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(out) : "r"(mv_shared_address(p)), "r"(rank));
    return out;
}
__device__ __forceinline__ void mv_cluster_store(uint32_t addr, float4 v) {
    asm volatile("st.shared::cluster.v4.f32 [%0], {%1, %2, %3, %4};\n" ::"r"(addr), "f"(v.x), "f"(v.y), "f"(v.z),
                 "f"(v.w)
                 : "memory");
}
__device__ __forceinline__ void mv_cluster_store(uint32_t addr, float v) {
    asm volatile("st.shared::cluster.f32 [%0], %1;\n" ::"r"(addr), "f"(v) : "memory");
}
#endif /* __CUDA_ARCH__ >= 900 */

#endif /* MINIVLLM_HOPPER_CUH */
