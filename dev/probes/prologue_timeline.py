"""Where an attention_prologue call's time goes, kernel by kernel, as a model runs it: a chain of
(torch GEMM [M, H] x [H, H], then the call), each call its own layer, captured in one CUDA graph and
replayed under torch.profiler. Prints, per kernel of one call's sequence, its mean duration and the
gap from the end of the kernel before it to its start (negative: it overlapped), over the middle
calls of several replays; then the same for the QKV op alone (FusedRMSNormQKV.forward).
usage: python3 dev/probes/prologue_timeline.py [models ...] [--m 1 16] [--no-residual] [--path P]
       [--drop rope qknorm cache] (the prologue without those parts; --only-prologue skips the op alone)"""
import argparse
import json
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import bench_attention_prologue as bp  # noqa: E402
from prologue_layers import each_shape, vary  # noqa: E402
from minivllm import _C  # noqa: E402
from minivllm.bench import timing as bt  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("models", nargs="*", default=["qwen3-0.6b", "llama-3-8b"])
ap.add_argument("--m", nargs="+", type=int, default=[1, 16])
ap.add_argument("--calls", type=int, default=8)
ap.add_argument("--no-residual", action="store_true")
ap.add_argument("--path", default=None, help="_path= for the prologue's QKV call")
ap.add_argument("--drop", nargs="*", default=[], choices=["rope", "qknorm", "cache"])
ap.add_argument("--only-prologue", action="store_true")
ap.add_argument("--shared-step-inputs", action="store_true",
                help="every layer's call takes layer 0's positions and slot_mapping, as a model's layers "
                     "share one decode step's")
args = ap.parse_args()
dtype = torch.bfloat16


def short(name):
    for key in ("nvjet", "gemm", "Kernel", "cutlass", "sm90"):
        if key in name and "minivllm" not in name and "mv_" not in name:
            return "cublas:" + name.split("<")[0][:34]
    return name.split("(")[0].split("<")[0].replace("void ", "")[:48]


def timeline(step, calls):
    graph, keep = bt.capture(step, calls)
    graph.replay()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(4):
            graph.replay()
        torch.cuda.synchronize()
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        prof.export_chrome_trace(f.name)
        trace = json.load(open(f.name))
    kernels = sorted((e["ts"], e["dur"], e["name"]) for e in trace["traceEvents"]
                     if e.get("cat") == "kernel")
    del graph, keep
    per_call = len(kernels) // (4 * calls)
    rows = defaultdict(lambda: ([], []))
    total = []
    for r in range(4):
        for c in range(1, calls - 1):
            base = (r * calls + c) * per_call
            seq = kernels[base:base + per_call]
            prev_end = kernels[base - 1][0] + kernels[base - 1][1]
            total.append(seq[-1][0] + seq[-1][1] - prev_end)
            for i, (ts, dur, name) in enumerate(seq):
                rows[(i, short(name))][0].append(dur)
                rows[(i, short(name))][1].append(ts - prev_end)
                prev_end = ts + dur
    out = []
    for (i, name), (durs, gaps) in sorted(rows.items()):
        out.append(f"    {i}. {name:50s} dur {statistics.median(durs):6.2f}  gap {statistics.median(gaps):6.2f}")
    out.append(f"    step (end of previous step's last kernel -> end of this one): {statistics.median(total):6.2f} us")
    return "\n".join(out)


print(torch.cuda.get_device_name(), flush=True)
for model, rows, new_layers in each_shape(bp, args.models, args.m, dtype):
    layers = new_layers(args.calls)
    vary(layers, args.no_residual, args.shared_step_inputs, args.drop)
    mm_x = [torch.randn(rows, model.hidden, device="cuda", dtype=dtype) for _ in range(args.calls)]
    mm_w = [torch.randn(model.hidden, model.hidden, device="cuda", dtype=dtype) for _ in range(args.calls)]
    kw = {} if args.path is None else {"_path": args.path}
    layers[0].minivllm(**kw)
    ran = _C.qkv_last_gpu_path()
    print(f"{model.name} M={rows} residual={not args.no_residual} path={ran} drop={args.drop}", flush=True)
    print("  mm + attention_prologue", flush=True)
    print(timeline(lambda i: (torch.nn.functional.linear(mm_x[i], mm_w[i]), layers[i].minivllm(**kw)),
                   args.calls), flush=True)
    if args.only_prologue:
        continue
    print("  mm + QKV op", flush=True)
    print(timeline(lambda i: (torch.nn.functional.linear(mm_x[i], mm_w[i]), layers[i].qkv_op()),
                   args.calls), flush=True)
