#!/usr/bin/env python3
"""Where a decode step's GPU time goes, per variant of benchmarks/bench_decode.py: the kernels of
one step under torch.profiler, grouped by name, with their total µs per step.

--graph profiles replays of the step's CUDA graph (as bench_decode times it) instead of eager
steps; --timeline prints one middle layer's kernels in launch order with each one's start, length
and the gap after the kernel before it (what an eager profile or a per-name total cannot show:
whether a kernel is slow or starts late). --prologue-path P runs the "minivllm" variant with
attention_prologue(..., _path=P) (e.g. engine_prologue), labelled "minivllm[P]".

usage: python3 dev/decode_profile.py [--model llama-3-8b] [--batch 1] [--variants compile compile+mv]
           [--graph] [--timeline] [--prologue-path engine_prologue]
"""
import argparse
import functools
import sys
import types
from collections import defaultdict
from pathlib import Path

import torch

import minivllm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import bench_decode as bd  # noqa: E402

STEPS = 5


def step_for(model, variant, prologue_path):
    if variant == "minivllm" and prologue_path:
        ops = types.SimpleNamespace(
            attention_prologue=functools.partial(minivllm.attention_prologue, _path=prologue_path),
            fused_add_rms_norm=minivllm.fused_add_rms_norm)
        return bd.make_step(model, variant, ops=ops)
    return bd.make_step(model, variant)


def kernels_of(prof):
    return sorted((e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA),
                  key=lambda e: e.time_range.start)


def print_timeline(kernels, layers, label):
    """One middle layer of the second profiled step, plus the kernel before and after it."""
    per_step = len(kernels) // STEPS
    per_layer = per_step // layers
    first = per_step + (layers // 2) * per_layer - 1
    window = kernels[first:first + per_layer + 2]
    t0 = window[0].time_range.start
    print(f"  timeline ({label}: {per_layer} kernels a layer, one layer and its neighbours)")
    print(f"  {'start':>8} {'us':>7} {'gap':>6}  kernel")
    prev_end = None
    for e in window:
        start, end = e.time_range.start, e.time_range.end
        gap = "" if prev_end is None else f"{start - prev_end:6.2f}"
        print(f"  {start - t0:8.2f} {end - start:7.2f} {gap:>6}  {e.name[:100]}")
        prev_end = end


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="llama-3-8b")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--context", type=int, default=2048)
    p.add_argument("--variants", nargs="+", default=["compile", "compile+mv"])
    p.add_argument("--top", type=int, default=18)
    p.add_argument("--graph", action="store_true", help="profile replays of the step's CUDA graph")
    p.add_argument("--timeline", action="store_true", help="one middle layer's kernels in order")
    p.add_argument("--prologue-path", default=None, help="_path for the minivllm variant")
    args = p.parse_args()
    bd.bt.raise_compile_limits(64)
    cfg = bd.DECODERS[args.model]
    model = bd.Model(cfg, args.batch, args.context, torch.bfloat16, "cuda")
    for variant in args.variants:
        label = f"{variant}[{args.prologue_path}]" if variant == "minivllm" and args.prologue_path else variant
        with torch.no_grad():
            step = step_for(model, variant, args.prologue_path)
            if args.graph:
                graph, _ = bd.bt.capture(lambda i: step(), 1)
                run = graph.replay
            else:
                run = step
            for _ in range(3):
                run()
            torch.cuda.synchronize()
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                for _ in range(STEPS):
                    run()
                torch.cuda.synchronize()
        kernels = kernels_of(prof)
        totals, counts = defaultdict(float), defaultdict(int)
        for e in kernels:
            totals[e.name] += e.device_time / STEPS
            counts[e.name] += 1
        total = sum(totals.values())
        span = (kernels[-1].time_range.end - kernels[0].time_range.start) / STEPS if kernels else 0.0
        print(f"\n{args.model} batch {args.batch} {label} ({'graph' if args.graph else 'eager'}): "
              f"{total:.1f} µs of kernels per step, {span:.1f} µs from first start to last end, "
              f"{len(kernels) / STEPS:.0f} kernels")
        for name, us in sorted(totals.items(), key=lambda kv: -kv[1])[:args.top]:
            print(f"  {us:8.1f} µs  x{counts[name] / STEPS:4.0f}  {name[:110]}")
        if args.timeline and kernels:
            print_timeline(kernels, cfg.layers, label)
        if args.graph:
            del graph


if __name__ == "__main__":
    main()
