#!/usr/bin/env python3
"""What limits the attention prologue's epilogue kernel at large M (issue 30)? It runs at about 2.1
(token, head) items per ns at every model, 3-4x its bytes' DRAM time
(dev/logs/prologue-token-rope-nvidia-h200-2026-11-25.log). This times, per model and M, in CUDA
graph replay (each replay 20 calls on one layer's buffers): the prologue with PDL on and off, the
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
from minivllm.bench.models import find_model


def prologue_call(name, M, dev="cuda", dt=torch.bfloat16):
    """{variant: zero-argument call} for one model's Qwen3-style prologue at M rows."""
    m = find_model(name)
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
    q = torch.empty(M, nq, D, device=dev, dtype=dt)
    rope = dict(positions=pos, cos_sin_cache=cs)
    cache = dict(k_cache=kc, v_cache=vc, slot_mapping=slots)
    norms = dict(q_norm_weight=qn, k_norm_weight=qn)

    def pro(pdl=None, **kw):
        return lambda: minivllm.attention_prologue(x, g, W, nq, nkv, 1e-6, out=q, pdl=pdl, **kw)
    return {
        "prologue": pro(**rope, **cache, **norms),
        "prologue, PDL off": pro(pdl=False, **rope, **cache, **norms),
        "no RoPE": pro(**cache, **norms),
        "no cache": pro(**rope, **norms),
        "no q/k norm": pro(**rope, **cache),
        "QKV op alone": lambda: minivllm.FusedRMSNormQKV.forward(x, g, W, nq, nkv, 1e-6),
    }


def graph_us(call, reps=20, replays=10):
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            call()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(reps):
            call()
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / reps)
    return sorted(times)[len(times) // 2]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--models", nargs="+", default=["llama-3-8b", "qwen3-0.6b"])
    p.add_argument("--m", nargs="+", type=int, default=[1024, 4096])
    p.add_argument("--ncu", action="store_true", help="one prologue call after 3 warm-up calls")
    args = p.parse_args()
    print(torch.cuda.get_device_name(), torch.__version__)
    for name in args.models:
        for M in args.m:
            calls = prologue_call(name, M)
            if args.ncu:
                for _ in range(4):
                    calls["prologue"]()
                torch.cuda.synchronize()
                continue
            row = {label: graph_us(call) for label, call in calls.items()}
            print(f"{name:12s} M={M:5d} " + " | ".join(f"{k} {v:8.2f}" for k, v in row.items()), flush=True)


if __name__ == "__main__":
    main()
