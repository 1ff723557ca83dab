"""Rows of single elements (odd H) in calls of many rows: why is minivllm behind Liger? (issue 32)

The library's in-place kernel for such rows (rms_norm_vec_kernel, V = 1: G threads a row, 8
elements a thread at lane + i G) has Liger's layout but 48 registers a thread against Liger's 27
(SASS, sm_90): its runtime G gives every element load its own 64-bit address, so an SM holds 10
rows where Liger's holds 16, and 4096 x 999 runs four waves to Liger's two. The staged kernel
that calls of many 16-bit rows take instead holds 47.

This times, in bench_rms_norm's graph harness (each call its own x and out, cycling past L2), PDL
off: minivllm's rms_norm (PDL off and on), Liger-Kernel's, and lean kernels of the in-place
layout launched through CuPy, one row a block of G threads, in variants:
  rt / ct:   G at run time, or compiled in (element offsets become immediates);
  early / late: the weight loaded with x, or after the row's sum (fewer live registers);
  cap:       __launch_bounds__ asking for 2048 threads an SM (32 registers; no spills in ptxas);
and checks each lean form's bits against minivllm's output (same order: a thread's squares in
index order, the warps' butterflies, their sums in order). Prints µs per call and registers.
Usage: python3 norm_odd_rows.py [--dtypes bf16 fp32] [--shapes 1000x999 ...]
"""
import argparse

import cupy
import torch

import minivllm
from norm_pdl_off import case, checked_outputs, general_group, start, timed_line

SOURCE = r"""
#ifdef IS_BF16
typedef unsigned short T;
__device__ __forceinline__ float tof(T h) { return __uint_as_float(((unsigned)h) << 16); }
__device__ __forceinline__ T fromf(float f) {
    unsigned u = __float_as_uint(f);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (T)(u >> 16);
}
#else
typedef float T;
__device__ __forceinline__ float tof(T h) { return h; }
__device__ __forceinline__ T fromf(float f) { return f; }
#endif
extern "C" __global__ void __launch_bounds__(LB_T, MINB) elems(const T *x, const T *w, T *out, int stride, int hidden,
                                                       float eps, int g_rt) {
    __shared__ float ws[16];
#if KG > 0
    constexpr int G = KG;
#else
    const int G = g_rt;
#endif
    const int lane = threadIdx.x;
    const T *xr = x + (long long)blockIdx.x * stride;
    T xv[8], wv[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        const int e = lane + i * G;
        xv[i] = e < hidden ? xr[e] : fromf(0.f);
    }
#if !LATE_W
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        const int e = lane + i * G;
        wv[i] = e < hidden ? w[e] : fromf(0.f);
    }
#endif
    float s = 0.f;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        const float f = tof(xv[i]);
        if (lane + i * G < hidden) s = __fadd_rn(s, __fmul_rn(f, f));
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    float total = s;
    if (G > 32) {
        if ((lane & 31) == 0) ws[lane >> 5] = s;
        __syncthreads();
        total = 0.f;
        for (int k = 0; k < (G >> 5); ++k) total += ws[k];
    }
#if LATE_W
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        const int e = lane + i * G;
        wv[i] = e < hidden ? w[e] : fromf(0.f);
    }
#endif
    const float rrms = rsqrtf(total / (float)hidden + eps);
    T *orow = out + (long long)blockIdx.x * stride;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        const int e = lane + i * G;
        if (e < hidden) orow[e] = fromf(tof(wv[i]) * (tof(xv[i]) * rrms));
    }
}
"""


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dtypes", nargs="+", default=["bf16", "fp32"])
    parser.add_argument("--shapes", nargs="+",
                        default=["1000x999", "4096x999", "132x999", "264x999", "1000x4095", "4096x4095",
                                 "1000x2047", "4096x2047"])
    args, rms_norm_forward, l2 = start(parser)
    modules = {}
    for dtype in args.dtypes:
        for shape in args.shapes:
            rows, hidden = (int(v) for v in shape.split("x"))
            g = general_group(hidden, 8)  # as rms_norm.cu had it for single elements then
            if g < 32 or g > 512:
                print(f"skip {shape}: G = {g}")
                continue
            tdt = torch.bfloat16 if dtype == "bf16" else torch.float32
            esize = 2 if dtype == "bf16" else 4
            calls, w, xs, outs, impls = case(rows, hidden, tdt, l2, rms_norm_forward)
            regs = {}
            # (G compiled in, weight late, registers capped at 32 by __launch_bounds__' blocks)
            for ct, late, cap in ((False, False, False), (False, False, True), (True, False, True), (True, True, True)):
                if True:
                    key = (dtype, g if ct else 0, late, cap)
                    if key not in modules:
                        bound = g if ct else 512
                        opts = ("-std=c++17", f"-DKG={key[1]}", f"-DLATE_W={int(late)}", f"-DLB_T={bound}",
                                f"-DMINB={2048 // bound if cap else 1}") + (("-DIS_BF16",) if dtype == "bf16" else ())
                        modules[key] = cupy.RawModule(code=SOURCE, options=opts).get_function("elems")
                    kernel = modules[key]
                    name = f"{'ct' if ct else 'rt'} {'late' if late else 'early'}{' cap' if cap else ''}"
                    regs[name] = kernel.num_regs

                    def call(i, kernel=kernel):
                        with cupy.cuda.ExternalStream(torch.cuda.current_stream().cuda_stream):
                            kernel((rows,), (g,), (cupy.uint64(xs[i].data_ptr()), cupy.uint64(w.data_ptr()),
                                                   cupy.uint64(outs[i].data_ptr()), cupy.int32(hidden),
                                                   cupy.int32(hidden), cupy.float32(1e-6), cupy.int32(g)))
                        return outs[i]
                    impls[name] = call
            # every form against float64, and its bits against the library's
            mine = minivllm.rms_norm(xs[0], w, 1e-6, pdl=False).clone()
            bits = torch.int16 if esize == 2 else torch.int32
            same = {name: bool(torch.equal(got.view(bits), mine.view(bits)))
                    for name, got in checked_outputs(impls, xs[0], w, outs[0], f"{shape} {dtype}").items()}
            timed_line(f"{dtype} {rows:5d} x {hidden:5d} G {g:3d}", impls, calls, args.replays, regs, same, ("liger",))


if __name__ == "__main__":
    main()
