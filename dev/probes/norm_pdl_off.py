"""Where do short rms_norm calls lose to Liger-Kernel with PDL off? (issue 32)

One harness (minivllm.bench.timing.time_per_call: a CUDA graph of calls, each on its own x and
out, as bench_rms_norm times them) for: minivllm's rms_norm with PDL off and on, Liger-Kernel's
Triton kernel, and minimal CUDA kernels of our own launched through CuPy (cuLaunchKernel), so
that a kernel's body and its launch path can be told apart:
  mini_warp:  one 16-byte vector a thread, the vector's squares summed in the thread, a warp
              butterfly, warp sums through shared memory, one barrier (Triton's tl.sum shape);
  mini_lanes: the same loads, the sum in the library's lanes order (per-vector sums in shared
              memory, G virtual threads, butterfly, warp sums): two barriers;
  mini_lanes1: mini_lanes with one barrier (each warp works the whole tree out itself; the
              first runs, 2026-11-25, had it as a kernel of its own, and mini_lanes's total for
              G <= 32 read red[0] alone: the same sum).
Prints µs per call. With --ncu: a few eager calls of each kernel, for
  ncu --clock-control none --metrics gpu__time_duration.sum,launch__registers_per_thread,\
      launch__shared_mem_per_block_static,smsp__inst_executed.sum python3 norm_pdl_off.py --ncu
With --sass DIR: the SASS of Liger's kernel of each H into DIR/liger.sass.
"""
import argparse
import sys
import warnings

import cupy
import torch

import minivllm
from minivllm.bench import timing as bt

SHAPES = ((1, 121), (1, 1024), (1, 2048), (1, 4096), (16, 1024), (16, 4096), (128, 4096))

# bf16 bits to float and back, rounding to nearest even (NaN aside), for the CuPy kernels of these probes
BF16_HELPERS = r"""
__device__ __forceinline__ float bf(unsigned short h) { return __uint_as_float(((unsigned)h) << 16); }
__device__ __forceinline__ unsigned short to_bf(float f) {
    unsigned u = __float_as_uint(f);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
}
/* out = w * (v * rrms), 8 bf16 at a time, as the library's normalized() */
__device__ __forceinline__ uint4 vec_norm(uint4 v, uint4 w, float rrms) {
    const unsigned short *h = reinterpret_cast<const unsigned short *>(&v);
    const unsigned short *g = reinterpret_cast<const unsigned short *>(&w);
    uint4 r;
    unsigned short *o = reinterpret_cast<unsigned short *>(&r);
#pragma unroll
    for (int j = 0; j < 8; ++j) o[j] = to_bf(bf(g[j]) * (bf(h[j]) * rrms));
    return r;
}
"""

SOURCE = BF16_HELPERS + r"""
__device__ __forceinline__ float vec_squares(uint4 v) {
    const unsigned short *h = reinterpret_cast<const unsigned short *>(&v);
    float s = 0.f;
#pragma unroll
    for (int j = 0; j < 8; ++j) { const float f = bf(h[j]); s = fmaf(f, f, s); }
    return s;
}
/* one row a block, one 16-byte vector a thread (hidden % 8 == 0): thread t's vectors of x and w */
__device__ __forceinline__ void load_row(const unsigned short *x, const unsigned short *w, int hidden, uint4 &v,
                                         uint4 &wv) {
    const int t = threadIdx.x;
    v = make_uint4(0, 0, 0, 0);
    wv = v;
    if (t < hidden / 8) {
        v = reinterpret_cast<const uint4 *>(x + (long long)blockIdx.x * hidden)[t];
        wv = reinterpret_cast<const uint4 *>(w)[t];
    }
}
__device__ __forceinline__ void store_row(unsigned short *out, int hidden, uint4 v, uint4 wv, float total, float eps) {
    const float rrms = rsqrtf(total / (float)hidden + eps);
    if ((int)threadIdx.x < hidden / 8) reinterpret_cast<uint4 *>(out + (long long)blockIdx.x * hidden)[threadIdx.x] = vec_norm(v, wv, rrms);
}
extern "C" __global__ void mini_warp(const unsigned short *x, const unsigned short *w, unsigned short *out,
                                     int hidden, float eps) {
    __shared__ float red[32];
    const int t = threadIdx.x;
    uint4 v, wv;
    load_row(x, w, hidden, v, wv);
    float s = vec_squares(v);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if ((t & 31) == 0) red[t >> 5] = s;
    __syncthreads();
    float total = 0.f;
    for (int k = 0; k < (int)(blockDim.x >> 5); ++k) total += red[k];
    store_row(out, hidden, v, wv, total, eps);
}
/* the same, the sum in the lanes kernel's order: G virtual threads of `per` vectors each; with
   two barriers (warp 0's tree handed over in shared memory), or with one (every warp works the
   whole tree out itself) */
extern "C" __global__ void mini_lanes(const unsigned short *x, const unsigned short *w, unsigned short *out,
                                      int hidden, float eps, int group, int per, int one_barrier) {
    __shared__ float parts[1024];
    __shared__ float red[32];
    const int t = threadIdx.x, vecs = hidden / 8, lane = t & 31;
    uint4 v, wv;
    load_row(x, w, hidden, v, wv);
    parts[t] = vec_squares(v);
    __syncthreads();
    float total = 0.f;
    if (one_barrier) {
        /* virtual threads base + lane, a butterfly over G lanes (G <= 32) or each 32 of them */
        const int step = group < 32 ? group : 32;
        for (int base = 0; base < group; base += 32) {
            float acc = 0.f;
            for (int i = 0; i < per; ++i)
                if (lane < group && base + lane + i * group < vecs) acc = __fadd_rn(acc, parts[base + lane + i * group]);
            for (int o = step >> 1; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
            total += __shfl_sync(0xffffffffu, acc, 0);
        }
    } else {
        if (t < group) {
            float acc = 0.f;
            for (int i = 0; i < per; ++i) if (t + i * group < vecs) acc = __fadd_rn(acc, parts[t + i * group]);
            const int step = group < 32 ? group : 32;
            const unsigned lanes = step == 32 ? 0xffffffffu : (1u << step) - 1;
            for (int o = step >> 1; o > 0; o >>= 1) acc += __shfl_xor_sync(lanes, acc, o);
            if ((t & 31) == 0) red[t >> 5] = acc;
        }
        __syncthreads();
        for (int k = 0; k < (group + 31) / 32; ++k) total += red[k];
    }
    store_row(out, hidden, v, wv, total, eps);
}
"""


def general_group(units, per_thread):
    """group_threads_for in rms_norm.cu: ceil(units / per_thread) threads, a power of two up to
    32, else whole warps (units: a row's vectors or single elements)."""
    needed = -(-units // per_thread)
    if needed > 32:
        return -(-needed // 32) * 32
    g = 1
    while g < needed:
        g *= 2
    return g


def lanes_group(hidden):
    """The general kernel's G for a bf16 row on the 16-byte grid (4 vectors a thread), and the
    vectors a thread: the lanes kernel keeps that order."""
    return general_group(hidden // 8, 4), 4


def liger_forward():
    """Liger-Kernel's rms_norm_forward, or None where it does not import (said on stderr); also
    silences CuPy's ExternalStream deprecation warning, which every launch here would print."""
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    try:
        from liger_kernel.ops.rms_norm import rms_norm_forward
    except ImportError:
        print("no liger_kernel", file=sys.stderr)
        return None
    return rms_norm_forward


def checked_outputs(impls, x, w, out, label):
    """Each form's call 0 (out poisoned with NaN first) against a float64 rms_norm of x; exits on
    an error above 1e-2. Returns {name: a copy of its output}."""
    ref = x.double() * torch.rsqrt(x.double().pow(2).mean(-1, keepdim=True) + 1e-6) * w.double()
    got = {}
    for name, fn in impls.items():
        out.fill_(float("nan"))
        result = fn(0)
        torch.cuda.synchronize()
        err = ((result.double() - ref).abs().max() / ref.abs().max()).item()
        if not err < 1e-2:
            raise SystemExit(f"{name} {label}: error {err}")
        got[name] = result.clone()
    return got


def start(parser):
    """The lean-kernel probes' common start: --replays added and the arguments parsed, Liger's
    forward looked up, the GPU printed. Returns (args, Liger's forward or None, L2 bytes)."""
    parser.add_argument("--replays", type=int, default=9)
    args = parser.parse_args()
    forward = liger_forward()
    props = torch.cuda.get_device_properties(0)
    print(f"# {props.name}, {props.multi_processor_count} SMs, L2 {props.L2_cache_size >> 20} MiB, "
          f"torch {torch.__version__}")
    return args, forward, props.L2_cache_size


def case(rows, hidden, dtype, l2, forward):
    """Buffers for one shape (enough calls' worth to cycle past L2) and the forms every lean-kernel
    probe times: minivllm with PDL off and on, Liger's where it imports. Returns (calls, w, xs,
    outs, impls)."""
    calls = bt.calls_per_graph(2 * rows * hidden * dtype.itemsize, l2)
    w = torch.randn(hidden, dtype=dtype, device="cuda")
    xs = [torch.randn(rows, hidden, dtype=dtype, device="cuda") for _ in range(calls)]
    outs = [torch.empty_like(x) for x in xs]
    impls = {
        "mv off": lambda i: minivllm.rms_norm(xs[i], w, 1e-6, out=outs[i], pdl=False),
        "mv on": lambda i: minivllm.rms_norm(xs[i], w, 1e-6, out=outs[i], pdl=True),
    }
    if forward is not None:
        impls["liger"] = lambda i: forward(xs[i], w, 1e-6, 0.0, "llama", None)[0]
    return calls, w, xs, outs, impls


def timed_line(label, impls, calls, replays, regs, same, peers):
    """One printed line: µs per call of each form; lean forms tagged with their registers, and
    any form whose bits differ from minivllm's (peers excepted) with 'bits!'."""
    line = [label]
    for name, fn in impls.items():
        t = bt.time_per_call(fn, calls, replays, min_replay_us=2000)
        tag = f"[{regs[name]}r{'' if same[name] else ' bits!'}]" if name in regs else (
            "" if same[name] or name in peers else "[bits!]")
        line.append(f"{name} {t['us']:.2f}{tag}")
    print(" | ".join(line), flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--ncu", action="store_true")
    parser.add_argument("--sass", default=None)
    parser.add_argument("--replays", type=int, default=9)
    args = parser.parse_args()
    rms_norm_forward = liger_forward()
    module = cupy.RawModule(code=SOURCE, options=("-std=c++17",))
    k_warp, k_lanes = module.get_function("mini_warp"), module.get_function("mini_lanes")
    props = torch.cuda.get_device_properties(0)
    l2 = props.L2_cache_size
    print(f"# {props.name}, {props.multi_processor_count} SMs, L2 {l2 >> 20} MiB")
    for rows, hidden in SHAPES:
        if hidden % 8:
            mini_ok = False
        else:
            mini_ok = True
        threads = max(32, -(-(hidden // 8) // 32) * 32) if mini_ok else 0
        calls = 20 if args.ncu else bt.calls_per_graph(2 * rows * hidden * 2, l2)
        w = torch.randn(hidden, dtype=torch.bfloat16, device="cuda")
        xs = [torch.randn(rows, hidden, dtype=torch.bfloat16, device="cuda") for _ in range(calls)]
        outs = [torch.empty_like(x) for x in xs]

        def launch(kernel, extra):
            def call(i):
                # torch's current stream (the capture stream inside a graph capture)
                with cupy.cuda.ExternalStream(torch.cuda.current_stream().cuda_stream):
                    kernel((rows,), (threads,), (cupy.uint64(xs[i].data_ptr()), cupy.uint64(w.data_ptr()),
                                                 cupy.uint64(outs[i].data_ptr()), cupy.int32(hidden),
                                                 cupy.float32(1e-6)) + extra)
                return outs[i]
            return call

        impls = {
            "minivllm pdl off": lambda i: minivllm.rms_norm(xs[i], w, 1e-6, out=outs[i], pdl=False),
            "minivllm pdl on": lambda i: minivllm.rms_norm(xs[i], w, 1e-6, out=outs[i], pdl=True),
        }
        if rms_norm_forward is not None:
            impls["liger"] = lambda i: rms_norm_forward(xs[i], w, 1e-6, 0.0, "llama", None)[0]
        if mini_ok:
            g, per = lanes_group(hidden)
            impls["mini_warp (cupy)"] = launch(k_warp, ())
            impls["mini_lanes (cupy)"] = launch(k_lanes, (cupy.int32(g), cupy.int32(per), cupy.int32(0)))
            impls["mini_lanes1 (cupy)"] = launch(k_lanes, (cupy.int32(g), cupy.int32(per), cupy.int32(1)))
        checked_outputs(impls, xs[0], w, outs[0], f"{rows}x{hidden}")
        if args.ncu:
            for name, fn in impls.items():
                torch.cuda.nvtx.range_push(f"{name} {rows}x{hidden}")
                for i in range(3):
                    fn(i)
                torch.cuda.nvtx.range_pop()
            torch.cuda.synchronize()
            continue
        line = [f"{rows:4d} x {hidden:5d} x{calls:5d}"]
        for rep in range(2):
            for name, fn in impls.items():
                t = bt.time_per_call(fn, calls, args.replays, min_replay_us=2000)
                line.append(f"{name} {t['us']:.3f}")
            print(" | ".join(line), flush=True)
            line = [" " * 20]
        if args.sass and rms_norm_forward is not None and rows == 1:
            dump_liger(args.sass, hidden)


def dump_liger(folder, hidden):
    """The SASS of Liger's forward kernel compiled last (this H's; Triton's cache of the jit
    function), appended to folder/liger.sass."""
    from liger_kernel.ops import rms_norm as lr
    fn = lr._rms_norm_forward_kernel
    caches = getattr(fn, "device_caches", None) or getattr(fn, "cache", None) or {}
    for entry in caches.values():
        kernels = entry[0] if isinstance(entry, tuple) else entry
        for compiled in list(kernels.values())[-1:]:
            try:
                text = compiled.asm["sass"]
            except Exception as exc:  # noqa: BLE001 -- a probe: report and go on
                text = f"unavailable: {exc}"
            with open(f"{folder}/liger.sass", "a") as f:
                f.write(f"\n\n######## H = {hidden}\n{text}")
        return


if __name__ == "__main__":
    main()
