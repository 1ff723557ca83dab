"""Rows of 16-byte vectors: would the general layout with G compiled in beat today's kernels without
PDL, as it did for single elements (norm_odd_rows.py)? (issues 32 and 29)

Without PDL (a norm after a GEMM, as in a model) minivllm's norms of bf16 rows in 16-byte vectors
run 0.92-0.96x torch.compile's and Liger's at 1-4096 rows. Its kernels there (the general kernel,
the short and lanes kernels) take G at run time; torch.compile's kernel is a warp a row with 2.75x
fewer instructions. This times, in bench_rms_norm's graph harness, PDL off: minivllm (PDL off and
on), Liger-Kernel, torch.compile of a Hugging Face-style RMSNorm, and lean CuPy kernels of the
library's layout and order (G threads a row, 4 vectors a thread at lane + i G, a vector's squares
summed alone, then the vectors in index order, then group_sum's tree), G and the rows a block
compiled in, in forms: the weight early or late, registers capped by launch bounds or not.
Checks each lean form's bits against minivllm's; prints µs per call and registers.
Usage: python3 norm_vec_rows.py [--hidden 1024 2048 4096] [--rows 1 16 132 ...] [--no-compile]
"""
import argparse

import cupy
import torch

import minivllm
from norm_pdl_off import BF16_HELPERS, case, checked_outputs, general_group, start, timed_line

SOURCE = BF16_HELPERS + r"""
/* the library's vector_squares: the first square rounded, the rest fused in order */
__device__ __forceinline__ float squares(uint4 v) {
    const unsigned short *h = reinterpret_cast<const unsigned short *>(&v);
    float p = __fmul_rn(bf(h[0]), bf(h[0]));
#pragma unroll
    for (int j = 1; j < 8; ++j) p = __fmaf_rn(bf(h[j]), bf(h[j]), p);
    return p;
}
extern "C" __global__ void __launch_bounds__(BLOCK, MINB) vec_rows(const uint4 *x, const uint4 *w, uint4 *out,
                                                                   int rows, int vecs, float eps, int hidden) {
    constexpr int G = KG, ROWS = BLOCK / KG;
    __shared__ float ws[32];
    const int lane = threadIdx.x % G;
    const int row = blockIdx.x * ROWS + threadIdx.x / G;
    const bool active = row < rows;
    const int left = vecs - lane;
    const uint4 *xp = x + (long long)(active ? row : rows - 1) * vecs + lane;
    const uint4 zero = make_uint4(0, 0, 0, 0);
    uint4 v[4], wv[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) v[i] = i * G < left ? xp[i * G] : zero;
#if !LATE_W
#pragma unroll
    for (int i = 0; i < 4; ++i) wv[i] = i * G < left ? w[lane + i * G] : zero;
#endif
    float s = 0.f;
#pragma unroll
    for (int i = 0; i < 4; ++i)
        if (i * G < left) s = __fadd_rn(s, squares(v[i]));
    if (G <= 32) {
#pragma unroll
        for (int o = G / 2; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    } else {
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
        if ((threadIdx.x & 31) == 0) ws[threadIdx.x >> 5] = s;
        __syncthreads();
        const int first = (threadIdx.x >> 5) / (G / 32) * (G / 32);
        s = 0.f;
        for (int k = 0; k < G / 32; ++k) s += ws[first + k];
    }
    if (!active) return;
    /* as the library's keep_packed: the row stays packed through the sum (no float copies) */
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        asm volatile("" : "+r"(v[i].x), "+r"(v[i].y), "+r"(v[i].z), "+r"(v[i].w));
#if !LATE_W
        asm volatile("" : "+r"(wv[i].x), "+r"(wv[i].y), "+r"(wv[i].z), "+r"(wv[i].w));
#endif
    }
#if LATE_W
#pragma unroll
    for (int i = 0; i < 4; ++i) wv[i] = i * G < left ? w[lane + i * G] : zero;
#endif
    const float rrms = rsqrtf(s / (float)hidden + eps);
    uint4 *op = out + (long long)row * vecs + lane;
#pragma unroll
    for (int i = 0; i < 4; ++i)
        if (i * G < left) op[i * G] = vec_norm(v[i], wv[i], rrms);
}
"""


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--hidden", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 16, 132, 264, 1024, 4096])
    parser.add_argument("--no-compile", action="store_true")
    args, rms_norm_forward, l2 = start(parser)
    modules = {}

    def hf_norm(x, w):
        v = x.float()
        v = v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + 1e-6)
        return w * v.to(x.dtype)
    # one graph a shape: past dynamo's recompile limit (8) it would run hf_norm eagerly, as the
    # first run of this probe found from its ninth shape on
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 64)
    compiled = None if args.no_compile else torch.compile(hf_norm, dynamic=False)
    for hidden in args.hidden:
        g = general_group(hidden // 8, 4)
        if g < 32:
            print(f"skip H {hidden}: G = {g}")
            continue
        block = max(g, 128)
        for rows in args.rows:
            calls, w, xs, outs, impls = case(rows, hidden, torch.bfloat16, l2, rms_norm_forward)
            if compiled is not None:
                impls["compile"] = lambda i: compiled(xs[i], w)
            regs = {}
            # (weight late, most registers a thread: 0 = no cap)
            for late, cap in ((False, 0), (False, 40), (False, 32), (True, 0)):
                key = (g, block, late, cap)
                if key not in modules:
                    minb = 65536 // (cap * block) if cap else 1
                    opts = ("-std=c++17", f"-DKG={g}", f"-DBLOCK={block}", f"-DLATE_W={int(late)}",
                            f"-DMINB={max(minb, 1)}")
                    modules[key] = cupy.RawModule(code=SOURCE, options=opts).get_function("vec_rows")
                kernel = modules[key]
                name = f"{'late' if late else 'early'}{f' cap{cap}' if cap else ''}"
                regs[name] = kernel.num_regs
                per_block = block // g

                def call(i, kernel=kernel, per_block=per_block):
                    with cupy.cuda.ExternalStream(torch.cuda.current_stream().cuda_stream):
                        kernel((-(-rows // per_block),), (block,),
                               (cupy.uint64(xs[i].data_ptr()), cupy.uint64(w.data_ptr()),
                                cupy.uint64(outs[i].data_ptr()), cupy.int32(rows), cupy.int32(hidden // 8),
                                cupy.float32(1e-6), cupy.int32(hidden)))
                    return outs[i]
                impls[name] = call
            mine = minivllm.rms_norm(xs[0], w, 1e-6, pdl=False).clone()
            same = {name: bool(torch.equal(got.view(torch.int16), mine.view(torch.int16)))
                    for name, got in checked_outputs(impls, xs[0], w, outs[0], f"{rows}x{hidden}").items()}
            timed_line(f"bf16 {rows:5d} x {hidden:5d} G {g:3d}", impls, calls, args.replays, regs, same, ("liger", "compile"))


if __name__ == "__main__":
    main()
