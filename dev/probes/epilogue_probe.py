#!/usr/bin/env python3
"""What limits the attention prologue's epilogue kernel at large M (issue 30)? It runs at about 2.1
(token, head) items per ns at every model, 3-4x its bytes' DRAM time
(dev/logs/prologue-token-rope-nvidia-h200-2026-11-25.log). This times, per model and M, in CUDA
graph replay (minivllm.bench.timing.time_per_call, one layer's buffers): the prologue with PDL on and off, the
QKV op alone, and the prologue without RoPE, without the cache and without q/k norms, so that
differences place the time. With --ncu it makes one prologue call after a warm-up instead, for
Nsight Compute to read the epilogue kernel:

    python3 dev/probes/epilogue_probe.py [--models llama-3-8b qwen3-0.6b] [--m 1024 4096]
    ncu --clock-control none --kernel-name regex:prologue_epilogue --launch-skip 3 --launch-count 1 \\
        --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \\
        --section MemoryWorkloadAnalysis python3 dev/probes/epilogue_probe.py --ncu --models llama-3-8b --m 4096

Not yet run (written at the end of session 23, with the device budget spent)."""
import argparse

import torch

import minivllm
from minivllm.bench.timing import time_per_call
from prologue_kernels import prologue_inputs  # this directory: run as a script


def prologue_calls(name, M):
    """{variant: zero-argument call} for one model's Qwen3-style prologue at M rows."""
    x, g, W, nq, nkv, kw, q = prologue_inputs(name, M)
    rope = ("positions", "cos_sin_cache")
    cache = ("k_cache", "v_cache", "slot_mapping")
    norms = ("q_norm_weight", "k_norm_weight")

    def pro(pdl=None, without=()):
        opts = {k: v for k, v in kw.items() if k not in without}
        return lambda: minivllm.attention_prologue(x, g, W, nq, nkv, 1e-6, out=q, pdl=pdl, **opts)
    return {
        "prologue": pro(),
        "prologue, PDL off": pro(pdl=False),
        "no RoPE": pro(without=rope),
        "no cache": pro(without=cache),
        "no q/k norm": pro(without=norms),
        "QKV op alone": lambda: minivllm.FusedRMSNormQKV.forward(x, g, W, nq, nkv, 1e-6),
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--models", nargs="+", default=["llama-3-8b", "qwen3-0.6b"])
    p.add_argument("--m", nargs="+", type=int, default=[1024, 4096])
    p.add_argument("--ncu", action="store_true", help="one prologue call after 3 warm-up calls")
    args = p.parse_args()
    print(torch.cuda.get_device_name(), torch.__version__)
    for name in args.models:
        for M in args.m:
            calls = prologue_calls(name, M)
            if args.ncu:
                for _ in range(4):
                    calls["prologue"]()
                torch.cuda.synchronize()
                continue
            row = {label: time_per_call(lambda i, c=call: c(), 1, 9)["us"] for label, call in calls.items()}
            print(f"{name:12s} M={M:5d} " + " | ".join(f"{k} {v:8.2f}" for k, v in row.items()), flush=True)


if __name__ == "__main__":
    main()
