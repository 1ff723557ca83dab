"""Is the library's short-call norm kernel (rms_norm_lanes_kernel) slower without PDL than a plain
kernel of the same layout, and which of its pieces costs it? Issue 32: with PDL off, 1-128 rows,
the best peer (Liger, Inductor) leads at 100 of 132 points by a median 3% (bf16 1 x 1024: 1.27 µs
against 1.39-1.49). Norms alone in chains (graph replay, each call its own x and y, as
bench_rms_norm times them), bf16:

  mv+ / mv-     minivllm.rms_norm with / without PDL
  comp          torch.compile of F.rms_norm, compiled for the shape (Inductor's per-row kernel)
  v8p1 ...      scratch_norm_probe.cu's norm_rows (16-byte vector a thread, butterfly first),
                g0: no griddepcontrol instructions, g1: with them; none launched with PDL
  v4p1, v4p2    8-byte vectors, one or two a thread (Inductor's width), g1, no PDL
  can-g0/-g1    norm_rows_canon: the lanes kernels' summation order (parts[] in shared memory, one
                barrier, the virtual threads' sums, their butterfly) in the probe's body, no PDL
  can+          the same with the L2 prefetch before griddepcontrol.wait, launched with PDL
                (the library's lanes kernel under PDL)
Every probe's y is checked against float64 on sampled rows.

usage: python3 dev/probes/norm_chain_nopdl.py SO [--hidden 896 1024 ...] [--m 1 16 ...]
       python3 dev/probes/norm_chain_nopdl.py SO --ncu [...]  (eager calls for ncu, each kernel once
       per shape, three rounds; ncu --kernel-name regex:'lanes|norm_rows|triton')
       python3 dev/probes/norm_chain_nopdl.py SO --profile [...]  (per implementation: the graph's µs
       per call, its kernels' device µs per call from torch.profiler, and the gap between them)
"""

import argparse
import ctypes
import math
import statistics

import torch
import torch.nn.functional as F

import minivllm
from minivllm.bench import timing as bt
# this directory is on sys.path when run as a script
from qkv_kernel_profile import kernels_per_call
from scratch_norm_probe import check_and_poison

EPS = bt.EPS
PROBES = {"v8p1-g0": (8, 1, 2, 0), "v8p1-g1": (8, 1, 0, 0), "v4p1-g1": (4, 1, 0, 0), "v4p2-g1": (4, 2, 0, 0)}
CANON = {"can-g0": (0, 0, 0), "can-g1": (1, 0, 0), "can+": (1, 1, 1)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("so")
    p.add_argument("--hidden", nargs="+", type=int, default=[896, 1024, 2048, 3584, 4096])
    p.add_argument("--m", nargs="+", type=int, default=[1, 4, 16, 64, 128])
    p.add_argument("--replays", type=int, default=15)
    p.add_argument("--ncu", action="store_true", help="eager calls only, for ncu")
    p.add_argument("--profile", action="store_true", help="kernel time and gap per call (torch.profiler)")
    args = p.parse_args()
    lib = ctypes.CDLL(args.so)
    lib.scratch_norm.restype = lib.scratch_norm_canon.restype = ctypes.c_int
    lib.scratch_norm.argtypes = [ctypes.c_uint64] * 3 + [ctypes.c_int, ctypes.c_int, ctypes.c_float,
                                                         ctypes.c_uint64] + [ctypes.c_int] * 4
    lib.scratch_norm_canon.argtypes = [ctypes.c_uint64] * 3 + [ctypes.c_int, ctypes.c_int, ctypes.c_float,
                                                               ctypes.c_uint64] + [ctypes.c_int] * 3
    dtype = torch.bfloat16
    bt.raise_compile_limits(512)
    compiled = torch.compile(lambda x, g: F.rms_norm(x, (x.shape[-1],), g, EPS), dynamic=False)
    props = torch.cuda.get_device_properties(0)
    names = ["mv+", "mv-", "comp"] + list(PROBES) + list(CANON)
    if not args.ncu:
        print(f"# {props.name}, torch {torch.__version__}, bf16; µs per call, chains of the norm alone")
        print(f"{'H':>5s} {'M':>5s} " + " ".join(f"{n:>8s}" for n in names) + "   mv-/comp  can-g1/v8p1-g1")
    for h in args.hidden:
        for rows in args.m:
            calls = 1 if args.ncu else bt.calls_per_graph(2 * rows * h * 2, props.L2_cache_size)
            gs = [torch.empty(h, device="cuda").uniform_(0.5, 1.5).to(dtype) for _ in range(calls)]
            xs = [torch.randn(rows, h, device="cuda", dtype=dtype) for _ in range(calls)]
            ys = [torch.full((rows, h), math.nan, device="cuda", dtype=dtype) for _ in range(calls)]

            def probe(i, v):
                stream = torch.cuda.current_stream().cuda_stream
                if len(v) == 4:
                    err = lib.scratch_norm(xs[i].data_ptr(), gs[i].data_ptr(), ys[i].data_ptr(), rows, h, EPS,
                                           stream, *v)
                else:
                    err = lib.scratch_norm_canon(xs[i].data_ptr(), gs[i].data_ptr(), ys[i].data_ptr(), rows, h,
                                                 EPS, stream, *v)
                if err:
                    raise RuntimeError(f"probe {v}: cudaError {err}")
                return ys[i]

            impls = {
                "mv+": lambda i: minivllm.rms_norm(xs[i], gs[i], EPS, out=ys[i]),
                "mv-": lambda i: minivllm.rms_norm(xs[i], gs[i], EPS, out=ys[i], pdl=False),
                "comp": lambda i: compiled(xs[i], gs[i]),
            }
            for key, v in PROBES.items():
                if h % v[0] == 0 and math.ceil(h / v[0] / v[1] / 32) * 32 <= 1024 // v[1]:
                    impls[key] = lambda i, v=v: probe(i, v)
            if h % 8 == 0 and h // 8 <= 1024:
                for key, v in CANON.items():
                    impls[key] = lambda i, v=v: probe(i, v)
            if args.ncu:
                for _ in range(3):
                    for key in names:
                        if key in impls:
                            impls[key](0)
                torch.cuda.synchronize()
                continue
            if args.profile:
                for key in names:
                    if key not in impls:
                        continue
                    graph, results = bt.capture(impls[key], calls)
                    replay = statistics.median(bt.replay_times_us(graph, args.replays)) / calls
                    kernels = kernels_per_call(graph, calls)
                    kernel = sum(t for _, t in kernels.values())
                    names_cut = ", ".join(f"{k[:40]} x{n:.1f}" for k, (n, _) in kernels.items())
                    print(f"{h:5d} {rows:5d} {key:8s} replay {replay:6.2f} kernels {kernel:6.2f} "
                          f"gap {replay - kernel:6.2f}  [{names_cut}]", flush=True)
                    del graph, results
                continue
            cells, times = [], {}
            for key in names:
                if key not in impls:
                    cells.append(f"{'-':>8s}")
                    continue
                times[key] = bt.time_per_call(impls[key], calls, args.replays)["us"]
                cells.append(f"{times[key]:8.2f}")
                if key in PROBES or key in CANON or key.startswith("mv"):
                    check_and_poison(key, xs[-1], gs[-1], ys[-1])
            ratio = times["mv-"] / times["comp"]
            canon = times["can-g1"] / times["v8p1-g1"] if "can-g1" in times and "v8p1-g1" in times else math.nan
            print(f"{h:5d} {rows:5d} " + " ".join(cells) + f"   {ratio:8.3f} {canon:8.3f}", flush=True)
            del gs, xs, ys
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
