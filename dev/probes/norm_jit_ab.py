"""The library's norms in short calls with the run-time compiled kernels (norm_jit.cu) allowed and
not (jit=True / jit=False; session 66's run used the environment switch this argument replaced),
with and without PDL, beside torch.compile: chains of calls
(graph replay, each call its own x and y, as bench_rms_norm times them), bf16, µs per call; every
graph's last output checked against the other setting's bit for bit.

usage: python3 dev/probes/norm_jit_ab.py [--hidden 896 1024 2048 4096] [--m 1 16 64] [--op rms_norm]
           [--dtype bf16|fp16|fp32] [--no-compile]
Session 67: longer calls too (the compiled kernel takes every call the lanes kernels take).
"""
import argparse
import math

import torch
import torch.nn.functional as F

import minivllm
from minivllm.bench import timing as bt
from scratch_norm_probe import layer_buffers  # this directory is on sys.path when run as a script


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--hidden", nargs="+", type=int, default=[896, 1024, 2048, 4096])
    p.add_argument("--m", nargs="+", type=int, default=[1, 16, 64])
    p.add_argument("--op", choices=["rms_norm", "fused_add_rms_norm"], default="rms_norm")
    p.add_argument("--replays", type=int, default=15)
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16")
    p.add_argument("--no-compile", action="store_true", help="no torch.compile column")
    args = p.parse_args()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    eps = bt.EPS
    bt.raise_compile_limits(512)
    if args.op == "rms_norm":
        compiled = torch.compile(lambda x, r, g: F.rms_norm(x, (x.shape[-1],), g, eps), dynamic=False)
    else:
        def add_norm(x, r, g):
            s = x + r
            return F.rms_norm(s, (s.shape[-1],), g, eps), s
        compiled = torch.compile(add_norm, dynamic=False)
    props = torch.cuda.get_device_properties(0)
    names = ["jit-", "lanes-", "jit+", "lanes+"] + ([] if args.no_compile else ["comp"])
    print(f"# {props.name}, torch {torch.__version__}, {args.dtype} {args.op}; µs per call, chains of the op alone")
    print(f"{'H':>5s} {'M':>5s} " + " ".join(f"{n:>7s}" for n in names) + "  jit-/lanes- jit+/lanes+ jit-/comp")
    for h in args.hidden:
        for rows in args.m:
            calls = bt.calls_per_graph(3 * rows * h * dtype.itemsize, props.L2_cache_size)
            _, gs, xs, ys = layer_buffers(rows, h, 0, calls, dtype)
            rs = [torch.randn(rows, h, device="cuda", dtype=dtype) for _ in range(calls)]
            ros = [torch.full((rows, h), math.nan, device="cuda", dtype=dtype) for _ in range(calls)]

            def mine(i, pdl, jit):
                if args.op == "rms_norm":
                    return minivllm.rms_norm(xs[i], gs[i], eps, out=ys[i], pdl=pdl, jit=jit)
                return minivllm.fused_add_rms_norm(xs[i], rs[i], gs[i], eps, out=ys[i], residual_out=ros[i],
                                                   pdl=pdl, jit=jit)[0]

            times, last = {}, {}
            for key in names:
                if key == "comp":
                    times[key] = bt.time_per_call(lambda i: compiled(xs[i], rs[i], gs[i]), calls, args.replays)["us"]
                    continue
                pdl, jit = None if key.endswith("+") else False, key.startswith("jit")
                t = bt.time_per_call(lambda i: mine(i, pdl, jit), calls, args.replays,
                                     check_last=lambda y: y.clone())
                times[key], last[key] = t["us"], t["check"]
            bits = torch.int32 if dtype == torch.float32 else torch.int16
            same = all(torch.equal(last[a].view(bits), last[b].view(bits))
                       for a, b in (("jit-", "lanes-"), ("jit+", "lanes+"), ("jit-", "jit+")))
            comp = f" {times['jit-'] / times['comp']:9.3f}" if "comp" in times else " " * 10
            print(f"{h:5d} {rows:5d} " + " ".join(f"{times[k]:7.2f}" for k in names) +
                  f"  {times['jit-'] / times['lanes-']:9.3f} {times['jit+'] / times['lanes+']:9.3f}"
                  f"{comp}  {'equal' if same else 'DIFFER'}", flush=True)
            del gs, xs, rs, ys, ros


if __name__ == "__main__":
    main()
