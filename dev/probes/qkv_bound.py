"""How fast could any one kernel run the QKV call, as a model runs it? Issue 29's bound, measured.

For each MODEL:M, graph-timed like qkv_start.py (each call its own buffers and weights, a cost per
call of X = chain(sep + X) - chain(sep)), after a fill (nothing overlaps the call's start) and in a
chain of X's own calls, bf16:

  lin    cuBLAS alone on pre-normalized x (F.linear): the issue's baseline
  auto   minivllm's op on the table's path
  empty  a kernel of one CTA per SM that does nothing: what a launch costs here
  read   a kernel that reads W and x once, 16-byte loads, and does nothing with them: the least
         time of any kernel that must read them (the best of a few grid shapes; no math, no
         norm, no store). The fused op can be no faster than this, so where read > lin / 1.10
         the issue's 1.10x target cannot be met by any single kernel.
  bcast  one CTA an SM, each reading all of x and a share of W: the least time of a kernel whose
         CTAs each need every token over the whole K (the W streams; swapped operands without
         split-K)
  chunk  that kernel without x: its own pattern of reads (a contiguous share of W a CTA), so that
         bcast - chunk is what handing every SM all of x costs
  tiles  W alone read as a W stream reads it (16-row tiles walked over k, one CTA an SM, 128 KiB
         in flight), the tiles an equal contiguous range a CTA (range) or round robin (rr)

First it prints each read variant's rate over a 1 GiB buffer (its steady state: how close the
reader gets to DRAM) beside the copy ceiling the benchmarks' floor uses.

    python3 dev/probes/qkv_bound.py --json out.json -- llama-3-8b:1 llama-3-8b:64 qwen3-0.6b:16
"""
import argparse
import json
import sys
from pathlib import Path

import cupy
import numpy
import torch
import torch.nn.functional as F

import minivllm
from minivllm.bench import timing as bt

sys.path.insert(0, str(Path(__file__).resolve().parent))
from qkv_chains import forced_call, layer_tensors, shape  # noqa: E402

_SRC = r"""
template <int U>
__device__ __forceinline__ unsigned read_span(const uint4 *__restrict__ p, long n, long i, long stride) {
    unsigned acc = 0;
    for (; i + (U - 1) * stride < n; i += U * stride) {
        uint4 v[U];
#pragma unroll
        for (int u = 0; u < U; ++u) v[u] = __ldcs(p + i + u * stride);
#pragma unroll
        for (int u = 0; u < U; ++u) acc ^= v[u].x ^ v[u].y ^ v[u].z ^ v[u].w;
    }
    for (; i < n; i += stride) { uint4 v = __ldcs(p + i); acc ^= v.x ^ v.y ^ v.z ^ v.w; }
    return acc;
}

extern "C" __global__ void read2(const uint4 *w, long nw, const uint4 *x, long nx, unsigned *sink, int unroll) {
    const long i = blockIdx.x * (long)blockDim.x + threadIdx.x, stride = (long)gridDim.x * blockDim.x;
    unsigned acc = unroll == 8 ? read_span<8>(w, nw, i, stride) : read_span<4>(w, nw, i, stride);
    acc ^= read_span<2>(x, nx, i, stride);
    if (acc == 0x9e3779b9u) sink[blockIdx.x] = acc;  /* keeps the loads; never true for our data */
}

/* every CTA reads all of x (as a kernel does whose CTAs each need every token over the whole K) and
   a contiguous share of W */
extern "C" __global__ void read_bcast(const uint4 *w, long nw, const uint4 *x, long nx, unsigned *sink) {
    const long w0 = nw * blockIdx.x / gridDim.x, w1 = nw * (blockIdx.x + 1) / gridDim.x;
    unsigned acc = read_span<8>(w + w0, w1 - w0, threadIdx.x, blockDim.x);
    acc ^= read_span<4>(x, nx, threadIdx.x, blockDim.x);
    if (acc == 0x9e3779b9u) sink[blockIdx.x] = acc;
}

/* W [n_rows][row_vecs] 16-byte vectors read the way a W stream reads it: 16-row tiles, each walked
   over k in boxes of 16 rows x 64 vectors (one per thread of 1024), 8 boxes in flight; the tiles
   either round robin over the CTAs (rr) or an equal contiguous range a CTA */
extern "C" __global__ void read_tiles(const uint4 *w, int n_rows, int row_vecs, int rr, unsigned *sink) {
    const int tiles = (n_rows + 15) / 16, kboxes = (row_vecs + 63) / 64;
    const int t0 = rr ? blockIdx.x : (int)((long)tiles * blockIdx.x / gridDim.x);
    const int t1 = rr ? tiles : (int)((long)tiles * (blockIdx.x + 1) / gridDim.x);
    const int step = rr ? gridDim.x : 1, my_tiles = (t1 - t0 + step - 1) / step, units = my_tiles * kboxes;
    const int r = threadIdx.x >> 6, c = threadIdx.x & 63;
    unsigned acc = 0;
    for (int j = 0; j < units; j += 8) {
        uint4 v[8];
#pragma unroll
        for (int u = 0; u < 8; ++u) {
            const int unit = j + u, row = (t0 + unit / kboxes * step) * 16 + r, kv = unit % kboxes * 64 + c;
            v[u] = unit < units && row < n_rows && kv < row_vecs ? __ldcs(w + (long)row * row_vecs + kv) : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < 8; ++u) acc ^= v[u].x ^ v[u].y ^ v[u].z ^ v[u].w;
    }
    if (acc == 0x9e3779b9u) sink[blockIdx.x] = acc;
}

extern "C" __global__ void empty(unsigned *sink) {
    if (threadIdx.x == 0 && sink[blockIdx.x] == 0x9e3779b9u) sink[blockIdx.x] = 0;
}
"""
VARIANTS = [(1, 1024, 8), (2, 512, 8), (4, 256, 8), (2, 1024, 4)]  # (CTAs an SM, threads, loads in flight)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("shapes", nargs="+", type=shape, help="MODEL:M")
    parser.add_argument("--json", help="write the points here")
    args = parser.parse_args()
    module = cupy.RawModule(code=_SRC, options=("-std=c++17",))
    read2, empty_kernel = module.get_function("read2"), module.get_function("empty")
    bcast_kernel = module.get_function("read_bcast")
    tiles_kernel = module.get_function("read_tiles")
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    sink = torch.zeros(8 * sms, device="cuda", dtype=torch.int32)

    def stream():
        return cupy.cuda.ExternalStream(torch.cuda.current_stream().cuda_stream)

    def read(variant, w, x):
        per_sm, threads, unroll = variant
        with stream():
            read2((sms * per_sm,), (threads,), (numpy.uint64(w.data_ptr()), numpy.int64(w.numel() * w.element_size() // 16),
                                                 numpy.uint64(x.data_ptr()), numpy.int64(x.numel() * x.element_size() // 16),
                                                 numpy.uint64(sink.data_ptr()), numpy.int32(unroll)))
        return sink

    def bcast(w, x):
        x_vectors = x.numel() * 2 // 16 if x is not None else 0
        x = x if x is not None else w
        with stream():
            bcast_kernel((sms,), (1024,), (numpy.uint64(w.data_ptr()), numpy.int64(w.numel() * 2 // 16),
                                           numpy.uint64(x.data_ptr()), numpy.int64(x_vectors),
                                           numpy.uint64(sink.data_ptr())))
        return sink

    def tiles(w, rr):
        with stream():
            tiles_kernel((sms,), (1024,), (numpy.uint64(w.data_ptr()), numpy.int32(w.shape[0]), numpy.int32(w.shape[1] // 8),
                                           numpy.int32(rr), numpy.uint64(sink.data_ptr())))
        return sink

    def empty(_):
        with stream():
            empty_kernel((sms,), (128,), (numpy.uint64(sink.data_ptr()),))
        return sink

    ceiling, methods = bt.measure_copy_gbps(10)
    big = [torch.empty(1 << 29, device="cuda", dtype=torch.bfloat16) for _ in range(2)]
    nothing = torch.empty(8, device="cuda", dtype=torch.bfloat16)
    steady = {}
    for v in VARIANTS:
        us = bt.time_per_call(lambda i: read(v, big[i], nothing), 2, 10)["us"]
        steady[str(v)] = (1 << 30) / us / 1e3
    print(f"copy ceiling {ceiling:.0f} GB/s {methods}; reader over 1 GiB (GB/s): "
          + ", ".join(f"{k} {g:.0f}" for k, g in steady.items()), flush=True)
    del big

    points = []
    for m, rows in args.shapes:
        layers, xs, _, _, gammas, qkv_weights, _ = layer_tensors(m, rows)
        fills = [torch.empty(1024, device="cuda") for _ in range(layers)]
        x_normed = [torch.randn_like(x) for x in xs]
        ops = {"lin": lambda i: F.linear(x_normed[i], qkv_weights[i]),
               "auto": forced_call(m, "auto", xs, gammas, qkv_weights),
               "empty": empty, "bcast": lambda i: bcast(qkv_weights[i], xs[i]),
               "chunk": lambda i: bcast(qkv_weights[i], None),
               "tiles_range": lambda i: tiles(qkv_weights[i], 0), "tiles_rr": lambda i: tiles(qkv_weights[i], 1)}
        ops.update({f"read{v}": (lambda v: lambda i: read(v, qkv_weights[i], xs[i]))(v) for v in VARIANTS})
        point = {"model": m.name, "M": rows, "H": m.hidden, "N": qkv_weights[0].shape[0],
                 "w_bytes": qkv_weights[0].numel() * 2, "x_bytes": xs[0].numel() * 2}
        for sep_name, sep in (("fill", lambda i: fills[i].fill_(1.0)), ("chain", None)):
            base = bt.time_per_call(lambda i: sep(i), layers, 15)["us"] if sep else 0.0
            cell = {}
            for name, op in ops.items():
                call = (lambda op: (lambda i: (sep(i), op(i))) if sep else op)(op)
                cell[name] = round(bt.time_per_call(call, layers, 15)["us"] - base, 3)
            cell["read"] = min(v for k, v in cell.items() if k.startswith("read("))
            cell["need"] = round(cell["lin"] / 1.10, 3)
            point[sep_name] = cell
            print(f"{m.name:14s} M={rows:<4d} W {point['w_bytes'] / 2**20:6.1f} MiB after {sep_name:5s}: "
                  f"lin {cell['lin']:6.2f} auto {cell['auto']:6.2f} empty {cell['empty']:5.2f} "
                  f"read {cell['read']:6.2f} bcast {cell['bcast']:6.2f} chunk {cell['chunk']:6.2f} tiles range {cell['tiles_range']:6.2f} rr {cell['tiles_rr']:6.2f} (lin/1.10 {cell['need']:6.2f}: "
                  f"{'reachable' if cell['read'] <= cell['need'] else 'NOT reachable'} by reads alone)", flush=True)
        points.append(point)
    if args.json:
        Path(args.json).write_text(json.dumps({
            "gpu": torch.cuda.get_device_name(0), "what": __doc__.split("\n")[0], "copy_ceiling_gbps": ceiling,
            "copy_methods": methods, "reader_steady_gbps": steady, "variants": VARIANTS, "points": points,
            "minivllm": minivllm.__version__ if hasattr(minivllm, "__version__") else None}, indent=1))


if __name__ == "__main__":
    main()
