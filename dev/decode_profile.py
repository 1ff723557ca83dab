#!/usr/bin/env python3
"""Where a decode step's GPU time goes, per variant of benchmarks/bench_decode.py: the kernels of
one graph-free step under torch.profiler, grouped by name, with their total µs per step.

usage: python3 dev/decode_profile.py [--model llama-3-8b] [--batch 1] [--variants compile compile+mv]
"""
import argparse
import sys
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import bench_decode as bd  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="llama-3-8b")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--context", type=int, default=2048)
    p.add_argument("--variants", nargs="+", default=["compile", "compile+mv"])
    p.add_argument("--top", type=int, default=18)
    args = p.parse_args()
    bd.bt.raise_compile_limits(64)
    model = bd.Model(bd.DECODERS[args.model], args.batch, args.context, torch.bfloat16, "cuda")
    for variant in args.variants:
        with torch.no_grad():
            step = bd.make_step(model, variant)
            for _ in range(3):
                step()
            torch.cuda.synchronize()
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                for _ in range(5):
                    step()
                torch.cuda.synchronize()
        totals, counts = defaultdict(float), defaultdict(int)
        for e in prof.events():
            if e.device_type == torch.autograd.DeviceType.CUDA:
                totals[e.name] += e.device_time / 5
                counts[e.name] += 1
        total = sum(totals.values())
        print(f"\n{args.model} batch {args.batch} {variant}: {total:.1f} µs of kernels per step, "
              f"{sum(counts.values()) / 5:.0f} kernels")
        for name, us in sorted(totals.items(), key=lambda kv: -kv[1])[:args.top]:
            print(f"  {us:8.1f} µs  x{counts[name] / 5:4.0f}  {name[:110]}")


if __name__ == "__main__":
    main()
