"""Where the QKV op's time goes against torch.compile, torch and cuBLAS alone: per-kernel device
time (torch.profiler over CUDA-graph replays of the benchmark's chains) and each graph's time per
call, at the M where the op runs its norm kernel then cuBLASLt.

usage: python3 dev/probes/qkv_kernel_profile.py [--models qwen3-0.6b llama-3-8b] [--m 32 256]
           [--dtype bf16] [--replays 20]
Prints, per (model, M, implementation): µs per call (graph replay), and each kernel's name (cut),
launches per call and µs per call; "gap" = replay time - kernel time (launch edges, bubbles).
"""

import argparse
import statistics

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

import minivllm
from minivllm.bench import timing as bt
from minivllm.bench.baselines import split_heads, torch_qkv
from minivllm.bench.models import find_model, qkv_features

EPS = bt.EPS


def kernels_per_call(graph, calls_in_graph, replays=3):
    graph.replay()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(replays):
            graph.replay()
        torch.cuda.synchronize()
    per = {}
    for ev in prof.key_averages():
        t = getattr(ev, "device_time_total", None)
        if t is None:
            t = ev.cuda_time_total
        if not t or ev.key.startswith(("cudaGraph", "Memcpy", "Memset")):
            continue
        launches = ev.count / (replays * calls_in_graph)
        if launches < 0.5:
            continue
        per[ev.key] = (launches, t / (replays * calls_in_graph))
    return per


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--models", nargs="+", default=["qwen3-0.6b", "llama-3-8b", "qwen2.5-0.5b", "qwen3-4b"])
    p.add_argument("--m", nargs="+", type=int, default=[32, 128, 256, 1024, 4096])
    p.add_argument("--dtype", default="bf16")
    p.add_argument("--replays", type=int, default=20)
    args = p.parse_args()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    bt.raise_compile_limits(256)
    compiled = torch.compile(torch_qkv, dynamic=False)
    props = torch.cuda.get_device_properties(0)
    l2 = props.L2_cache_size
    print(f"# {props.name}, torch {torch.__version__}, {args.dtype}")
    for name in args.models:
        model = find_model(name)
        h, heads, kvh, hd = model.hidden, model.num_heads, model.num_kv_heads, model.head_dim
        n = qkv_features(model)
        for rows in args.m:
            calls = bt.qkv_calls_per_graph(rows, h, n, 2, l2)
            ws = [(torch.randn(n, h, device="cuda") / h ** 0.5).to(dtype) for _ in range(calls)]
            gs = [torch.empty(h, device="cuda").uniform_(0.5, 1.5).to(dtype) for _ in range(calls)]
            xs = [torch.randn(rows, h, device="cuda", dtype=dtype) for _ in range(calls)]
            outs = [split_heads(torch.empty(rows, n, device="cuda", dtype=dtype), heads, kvh, hd)
                    for _ in range(calls)]
            normed = [F.rms_norm(x, (h,), g, EPS) for x, g in zip(xs, gs)]
            impls = {
                "minivllm": lambda i: minivllm.FusedRMSNormQKV.forward(xs[i], gs[i], ws[i].t(), heads, kvh, EPS,
                                                                        out=outs[i]),
                "compile": lambda i: compiled(xs[i], gs[i], ws[i], heads, kvh, hd),
                "torch": lambda i: torch_qkv(xs[i], gs[i], ws[i], heads, kvh, hd),
                "cublas": lambda i: F.linear(normed[i], ws[i]),
            }
            print(f"\n## {model.name} H={h} N={n} M={rows} ({calls} layers a graph)")
            for impl, fn in impls.items():
                graph, results = bt.capture(fn, calls)
                us = statistics.median(bt.replay_times_us(graph, args.replays)) / calls
                per = kernels_per_call(graph, calls)
                busy = sum(t for _, t in per.values())
                print(f"  {impl:9s} {us:8.2f} us/call  kernels {busy:8.2f}  gap {us - busy:6.2f}")
                for key, (launches, t) in sorted(per.items(), key=lambda kv: -kv[1][1]):
                    print(f"      {t:8.2f} us  x{launches:.0f}  {key[:110]}")
                del graph, results
            del ws, gs, xs, outs, normed
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
