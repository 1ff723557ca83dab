#!/usr/bin/env python3
"""Which kernels one attention_prologue call launches (torch.profiler), per model shape and M, and
each kernel's time (µs, the last of 5 profiled calls): one kernel where the QKV kernel runs the
epilogue itself, two (or more) where the epilogue kernel follows; the QKV op alone beside it.
usage: python3 dev/probes/prologue_kernels.py [--m 1 4 16]"""
import argparse

import torch

import minivllm
from minivllm.bench.models import MODELS


def prologue_inputs(name, M, dev="cuda", dt=torch.bfloat16):
    """One model's Qwen3-style prologue at M rows (q/k norms, RoPE, a paged cache sized to M):
    (x, norm weight, W, num_heads, num_kv_heads, the options as keyword arguments, q's buffer)."""
    m = MODELS[name]
    H, nq, nkv, D = m.hidden, m.num_heads, m.num_kv_heads, m.head_dim
    N = (nq + 2 * nkv) * D
    x = torch.randn(M, H, device=dev, dtype=dt)
    g = torch.rand(H, device=dev, dtype=dt) + 0.5
    W = torch.randn(N, H, device=dev, dtype=dt) / H ** 0.5
    qn = torch.rand(D, device=dev, dtype=dt) + 0.5
    cs = torch.randn(4096, D, device=dev, dtype=torch.float32)
    pos = torch.randint(0, 4096, (M,), device=dev)
    blocks = max(64, (M + 15) // 16)
    kc = torch.zeros(blocks, 16, nkv, D, device=dev, dtype=dt)
    vc = torch.zeros_like(kc)
    slots = torch.randperm(blocks * 16, device=dev)[:M]
    kw = dict(q_norm_weight=qn, k_norm_weight=qn, positions=pos, cos_sin_cache=cs,
              k_cache=kc, v_cache=vc, slot_mapping=slots)
    return x, g, W, nq, nkv, kw, torch.empty(M, nq, D, device=dev, dtype=dt)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--m", nargs="+", type=int, default=[1, 4, 16])
    args = p.parse_args()
    for name in ("qwen3-0.6b", "llama-3-8b", "qwen2.5-1.5b", "qwen3-4b"):
        if name not in MODELS:
            continue
        for M in args.m:
            x, g, W, nq, nkv, kw, q_out = prologue_inputs(name, M)
            calls = {"prologue": lambda: minivllm.attention_prologue(x, g, W, nq, nkv, 1e-6, out=q_out, **kw),
                     "qkv_op": lambda: minivllm.FusedRMSNormQKV.forward(x, g, W, nq, nkv, 1e-6)}
            for label, call in calls.items():
                for _ in range(3):
                    call()
                torch.cuda.synchronize()
                with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                    for _ in range(5):
                        call()
                    torch.cuda.synchronize()
                events = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
                per_call = len(events) // 5
                last = events[-per_call:] if per_call else []
                short = [f"{e.name.removeprefix('void ').split('<')[0].split('(')[0].replace('(anonymous namespace)::', '')[-40:]}"
                         f" {e.time_range.elapsed_us():.1f}" for e in last]
                print(f"{name:14s} M={M:5d} {label:8s} path={minivllm._C.qkv_last_gpu_path():9s} "
                      f"kernels={per_call}: {short}", flush=True)


if __name__ == "__main__":
    main()
