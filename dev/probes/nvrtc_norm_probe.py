"""Is a norm kernel compiled at run time for the call's H (NVRTC) a workable design for the short calls
without PDL (issue 32; dev/logs/norm-short-calls-compiled-h-nvidia-h200-2026-11-29.log: H, the stride and the
row guard at run time cost 0.12-0.13 µs a call against Inductor's kernel, which is compiled for the shape)?

The kernel here is the library's rms_norm_lanes_kernel (bf16, one 16-byte vector a thread, a row a block)
with H, G and the row stride as constants: the same arithmetic and summation order (vector_squares, the
virtual threads' sums of parts[], the butterfly over G or the warps' sums in order, total / H + eps,
rsqrtf, w * (x * rrms) rounded once), so its rows must equal the library's bit for bit. It asks:
  1. NVRTC's compile time for one H (this process's first compile, then another H), and cuModuleLoadData's;
  2. whether a module loads while torch captures a CUDA graph on the stream (global capture mode);
  3. the bits against minivllm.rms_norm, and its time in chains (graph replay, each call its own x and y,
     no PDL) beside the library's (mv-, mv+) and torch.compile's (comp).
No headers are needed (bf16 by shifts and cvt.rn.bf16x2.f32), so NVRTC needs no include path.

  4. (--qkv) the norm in front of the QKV GEMM (F.linear, each layer its own W), with and without PDL,
     beside the library's norm there, the QKV op and torch.compile of norm + linear + split.
A second form of the kernel asks L2 for its row, waits (griddepcontrol.wait) and triggers, as the
library's lanes kernel does under PDL; it is launched with the PDL attribute (jit+).

usage: python3 dev/probes/nvrtc_norm_probe.py [--hidden 896 1024 2048 4096] [--m 1 16 64]
       python3 dev/probes/nvrtc_norm_probe.py --qkv qwen3-0.6b qwen2.5-0.5b llama-3-8b --m 32 128 512
       python3 dev/probes/nvrtc_norm_probe.py --compile-only   (no GPU: NVRTC's compile time only)
"""

import argparse
import ctypes
import glob
import os
import sys
import time

ARCH = b"--gpu-architecture=sm_90a"
SOURCE = r"""
#define H_ %(H)d
#define VECS (H_ / 8)
#define THREADS ((VECS + 31) / 32 * 32)
#define G_ %(G)d
#define STRIDE H_
#define PDL_ %(PDL)d
extern "C" __global__ void __launch_bounds__(THREADS) norm_h(const uint4 *x, const uint4 *w, uint4 *y, float eps) {
    __shared__ float parts[THREADS];
    __shared__ float warp_sums[32];
    const int u = threadIdx.x;
    const bool mine = VECS == THREADS || u < VECS; /* no guard where the block is the row */
    const uint4 *xr = x + (long long)blockIdx.x * (STRIDE / 8);
#if PDL_
    /* as the library's lanes kernel under PDL: the row asked of L2, then the wait, then the trigger */
    if (mine) asm volatile("prefetch.global.L2 [%%0];" ::"l"(xr + u));
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" :::);
#endif
    uint4 s = make_uint4(0, 0, 0, 0), g = s;
    float part = 0.0f;
    if (mine) {
        s = xr[u];
        g = w[u];
        const unsigned q[4] = {s.x, s.y, s.z, s.w};
        float v = __uint_as_float(q[0] << 16);
        float p = __fmul_rn(v, v);
        v = __uint_as_float(q[0] & 0xffff0000u);
        p = __fmaf_rn(v, v, p);
#pragma unroll
        for (int k = 1; k < 4; ++k) {
            v = __uint_as_float(q[k] << 16);
            p = __fmaf_rn(v, v, p);
            v = __uint_as_float(q[k] & 0xffff0000u);
            p = __fmaf_rn(v, v, p);
        }
        part = p;
    }
    parts[u] = part;
    __syncthreads();
    float total = 0.0f;
    if (G_ <= 32) {
        const int lane = u & (G_ - 1);
#pragma unroll
        for (int i = 0; i < 4; ++i)
            if (lane + i * G_ < VECS) total = __fadd_rn(total, parts[lane + i * G_]);
#pragma unroll
        for (int o = 16; o > 0; o >>= 1)
            if (o < G_) total += __shfl_xor_sync(0xffffffffu, total, o);
    } else {
        if (u < G_) {
            float acc = 0.0f;
#pragma unroll
            for (int i = 0; i < 4; ++i)
                if (u + i * G_ < VECS) acc = __fadd_rn(acc, parts[u + i * G_]);
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
            if ((u & 31) == 0) warp_sums[u >> 5] = acc;
        }
        __syncthreads();
#pragma unroll
        for (int k = 0; k < G_ / 32; ++k) total += warp_sums[k];
    }
    if (!mine) return;
    const float rrms = rsqrtf(total / (float)H_ + eps);
    const unsigned q[4] = {s.x, s.y, s.z, s.w}, gw[4] = {g.x, g.y, g.z, g.w};
    unsigned o[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        const float a = __uint_as_float(gw[k] << 16) * (__uint_as_float(q[k] << 16) * rrms);
        const float b = __uint_as_float(gw[k] & 0xffff0000u) * (__uint_as_float(q[k] & 0xffff0000u) * rrms);
        asm("cvt.rn.bf16x2.f32 %%0, %%1, %%2;" : "=r"(o[k]) : "f"(b), "f"(a));
    }
    y[(long long)blockIdx.x * (STRIDE / 8) + u] = make_uint4(o[0], o[1], o[2], o[3]);
}
"""


class LaunchAttr(ctypes.Structure):  # CUlaunchAttribute: id, padding, a 64-byte value union
    _fields_ = [("id", ctypes.c_int), ("pad", ctypes.c_char * 4), ("value", ctypes.c_int * 16)]


class LaunchConfig(ctypes.Structure):  # CUlaunchConfig
    _fields_ = [("grid", ctypes.c_uint * 3), ("block", ctypes.c_uint * 3), ("shared", ctypes.c_uint),
                ("stream", ctypes.c_void_p), ("attrs", ctypes.POINTER(LaunchAttr)), ("num_attrs", ctypes.c_uint)]


PROGRAMMATIC_STREAM_SERIALIZATION = 6  # CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION


def group_for(hidden):
    """G of the library's layout for 16-byte vectors (group_threads_for(ceil(H / 8 / 4)))."""
    needed = (hidden // 8 + 3) // 4
    if needed <= 32:
        g = 1
        while g < needed:
            g <<= 1
        return g
    return (needed + 31) // 32 * 32


def load_nvrtc():
    names = ["libnvrtc.so.13", "libnvrtc.so"]
    for pattern in ("/usr/local/cuda*/lib*/libnvrtc.so*", os.path.join(sys.prefix, "lib/python3*/site-packages/nvidia/*/lib/libnvrtc.so*")):
        names += sorted(glob.glob(pattern))
    for name in names:
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    raise SystemExit("libnvrtc not found")


def compile_cubin(nvrtc, hidden, pdl=0):
    """(cubin bytes, milliseconds) for the kernel at this H (pdl: its griddepcontrol form)."""
    src = (SOURCE % {"H": hidden, "G": group_for(hidden), "PDL": pdl}).encode()
    start = time.perf_counter()
    prog = ctypes.c_void_p()
    err = nvrtc.nvrtcCreateProgram(ctypes.byref(prog), src, b"norm_h.cu", 0, None, None)
    if err:
        raise RuntimeError(f"nvrtcCreateProgram: {err}")
    opts = (ctypes.c_char_p * 2)(ARCH, b"--std=c++17")
    err = nvrtc.nvrtcCompileProgram(prog, 2, opts)
    if err:
        size = ctypes.c_size_t()
        nvrtc.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        nvrtc.nvrtcGetProgramLog(prog, log)
        raise RuntimeError(f"nvrtcCompileProgram: {err}\n{log.value.decode()}")
    size = ctypes.c_size_t()
    nvrtc.nvrtcGetCUBINSize(prog, ctypes.byref(size))
    cubin = ctypes.create_string_buffer(size.value)
    nvrtc.nvrtcGetCUBIN(prog, cubin)
    nvrtc.nvrtcDestroyProgram(ctypes.byref(prog))
    return cubin.raw, (time.perf_counter() - start) * 1e3


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--hidden", nargs="+", type=int, default=[896, 1024, 2048, 4096])
    p.add_argument("--m", nargs="+", type=int, default=[1, 16, 64])
    p.add_argument("--replays", type=int, default=15)
    p.add_argument("--compile-only", action="store_true")
    p.add_argument("--qkv", nargs="+", metavar="MODEL",
                   help="the norm in front of the QKV GEMM for these models instead (--m: 32 128 512 there)")
    args = p.parse_args()
    nvrtc = load_nvrtc()
    if args.qkv:
        from minivllm.bench.models import find_model
        args.hidden = sorted({find_model(name).hidden for name in args.qkv})
    cubins = {}
    for h in args.hidden:
        for pdl in (0, 1):
            cubins[(h, pdl)], ms = compile_cubin(nvrtc, h, pdl)
            print(f"# NVRTC compile H={h} pdl={pdl}: {ms:.1f} ms, cubin {len(cubins[(h, pdl)])} bytes", flush=True)
    if args.compile_only:
        return

    import math

    import torch
    import torch.nn.functional as F

    import minivllm
    from minivllm.bench import timing as bt
    from scratch_norm_probe import layer_buffers  # this directory is on sys.path

    cuda = ctypes.CDLL("libcuda.so.1")
    cuda.cuLaunchKernelEx.argtypes = [ctypes.POINTER(LaunchConfig), ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    torch.zeros(1, device="cuda")  # the primary context
    functions = {}

    def load(key):
        module, function = ctypes.c_void_p(), ctypes.c_void_p()
        start = time.perf_counter()
        err = cuda.cuModuleLoadData(ctypes.byref(module), cubins[key])
        if err:
            return err, None, 0.0
        err = cuda.cuModuleGetFunction(ctypes.byref(function), module, b"norm_h")
        return err, function, (time.perf_counter() - start) * 1e3

    for key in list(cubins)[:-1]:
        err, functions[key], ms = load(key)
        print(f"# cuModuleLoadData H={key[0]} pdl={key[1]}: CUresult {err}, {ms:.2f} ms", flush=True)
    # the last module loaded while torch captures a graph on the current stream
    last = list(cubins)[-1]
    graph = torch.cuda.CUDAGraph()
    status = "not tried"
    try:
        with torch.cuda.graph(graph):
            err, functions[last], ms = load(last)
            status = f"CUresult {err}, {ms:.2f} ms"
            torch.zeros(1, device="cuda").add_(1)
    except Exception as e:  # a capture the load invalidated shows up here
        status += f"; capture failed: {type(e).__name__}: {str(e)[:120]}"
    print(f"# cuModuleLoadData H={last[0]} pdl={last[1]} inside torch.cuda.graph capture: {status}", flush=True)
    del graph
    if functions.get(last) is None:
        functions[last] = load(last)[1]
    attr = LaunchAttr(id=PROGRAMMATIC_STREAM_SERIALIZATION)
    attr.value[0] = 1

    def jit(x, g, y, pdl):
        rows, h = x.shape
        vals = [ctypes.c_void_p(x.data_ptr()), ctypes.c_void_p(g.data_ptr()), ctypes.c_void_p(y.data_ptr()),
                ctypes.c_float(eps)]
        params = (ctypes.c_void_p * 4)(*[ctypes.cast(ctypes.pointer(v), ctypes.c_void_p) for v in vals])
        cfg = LaunchConfig(grid=(rows, 1, 1), block=((h // 8 + 31) // 32 * 32, 1, 1), shared=0,
                           stream=torch.cuda.current_stream().cuda_stream, attrs=ctypes.pointer(attr),
                           num_attrs=1 if pdl else 0)
        err = cuda.cuLaunchKernelEx(ctypes.byref(cfg), functions[(h, pdl)], params, None)
        if err:
            raise RuntimeError(f"cuLaunchKernelEx: CUresult {err}")
        return y

    dtype = torch.bfloat16
    eps = bt.EPS
    bt.raise_compile_limits(512)
    props = torch.cuda.get_device_properties(0)
    if args.qkv:
        qkv_chains(args, jit, props)
        return
    compiled = torch.compile(lambda x, g: F.rms_norm(x, (x.shape[-1],), g, eps), dynamic=False)
    names = ["jit-", "jit+", "mv-", "mv+", "comp"]
    print(f"# {props.name}, torch {torch.__version__}, bf16; µs per call, chains of the norm alone")
    print(f"{'H':>5s} {'M':>5s} " + " ".join(f"{n:>7s}" for n in names) + "  jit-/mv- jit-/comp jit+/mv+  bits")
    for h in args.hidden:
        for rows in args.m:
            calls = bt.calls_per_graph(2 * rows * h * 2, props.L2_cache_size)
            _, gs, xs, ys = layer_buffers(rows, h, 0, calls, dtype)
            impls = {"jit-": lambda i: jit(xs[i], gs[i], ys[i], 0),
                     "jit+": lambda i: jit(xs[i], gs[i], ys[i], 1),
                     "mv-": lambda i: minivllm.rms_norm(xs[i], gs[i], eps, out=ys[i], pdl=False),
                     "mv+": lambda i: minivllm.rms_norm(xs[i], gs[i], eps, out=ys[i]),
                     "comp": lambda i: compiled(xs[i], gs[i])}
            times = {k: bt.time_per_call(f, calls, args.replays)["us"] for k, f in impls.items()}
            want = minivllm.rms_norm(xs[0], gs[0], eps, pdl=False)
            same = True
            for pdl in (0, 1):
                ys[0].fill_(math.nan)
                jit(xs[0], gs[0], ys[0], pdl)
                torch.cuda.synchronize()
                same = same and torch.equal(ys[0].view(torch.int16), want.view(torch.int16))
            print(f"{h:5d} {rows:5d} " + " ".join(f"{times[k]:7.2f}" for k in names) +
                  f"  {times['jit-'] / times['mv-']:7.3f}  {times['jit-'] / times['comp']:7.3f}  "
                  f"{times['jit+'] / times['mv+']:7.3f}  {'equal' if same else 'DIFFER'}", flush=True)
            del gs, xs, ys


def qkv_chains(args, jit, props):
    """The norm in front of the QKV GEMM (F.linear), chains of layers with their own weights, as
    bench_fused_rms_norm_qkv times the op: the JIT norm with and without PDL, the library's norm with
    and without PDL, the op itself, torch.compile of rms_norm + linear + split."""
    import torch
    import torch.nn.functional as F

    import minivllm
    from minivllm.bench import timing as bt
    from minivllm.bench.baselines import split_heads, torch_qkv
    from minivllm.bench.models import find_model, qkv_features
    from scratch_norm_probe import layer_buffers

    dtype, eps = torch.bfloat16, bt.EPS
    compiled = torch.compile(torch_qkv, dynamic=False)
    names = ["jit-", "jit+", "mv-", "mv+", "op", "comp"]
    print(f"# {props.name}, torch {torch.__version__}, bf16; µs per call: norm + F.linear chains, the op, compile")
    print(f"{'model':14s} {'M':>5s} " + " ".join(f"{n:>7s}" for n in names) + "  best-jit/comp op/comp")
    for name in args.qkv:
        m = find_model(name)
        h, n = m.hidden, qkv_features(m)
        for rows in args.m:
            calls = bt.qkv_calls_per_graph(rows, h, n, 2, props.L2_cache_size)
            ws, gs, xs, ys = layer_buffers(rows, h, n, calls, dtype)
            outs = [split_heads(torch.empty(rows, n, device="cuda", dtype=dtype), m.num_heads, m.num_kv_heads,
                                m.head_dim) for _ in range(calls)]
            impls = {"jit-": lambda i: F.linear(jit(xs[i], gs[i], ys[i], 0), ws[i]),
                     "jit+": lambda i: F.linear(jit(xs[i], gs[i], ys[i], 1), ws[i]),
                     "mv-": lambda i: F.linear(minivllm.rms_norm(xs[i], gs[i], eps, out=ys[i], pdl=False), ws[i]),
                     "mv+": lambda i: F.linear(minivllm.rms_norm(xs[i], gs[i], eps, out=ys[i]), ws[i]),
                     "op": lambda i: minivllm.FusedRMSNormQKV.forward(xs[i], gs[i], ws[i].t(), m.num_heads,
                                                                      m.num_kv_heads, eps, out=outs[i]),
                     "comp": lambda i: compiled(xs[i], gs[i], ws[i], m.num_heads, m.num_kv_heads, m.head_dim)}
            times = {k: bt.time_per_call(f, calls, args.replays)["us"] for k, f in impls.items()}
            best = min(times["jit-"], times["jit+"])
            print(f"{m.name:14s} {rows:5d} " + " ".join(f"{times[k]:7.2f}" for k in names) +
                  f"  {best / times['comp']:7.3f}  {times['op'] / times['comp']:7.3f}", flush=True)
            del ws, gs, xs, ys, outs
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
