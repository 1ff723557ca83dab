"""Which kernel path each attention_prologue call takes, and its time forced on each candidate:
the table's choice (auto), the one-kernel register prologue, the register stream + epilogue kernel,
and the QKV op alone (issue 30). Uses bench_attention_prologue's layers and timing (graph replay,
each call its own layer, the residual form, paged cache).
usage: python3 dev/probes/prologue_paths.py [models ...] [--m 1 4 8] [--paths auto register_prologue register]
[--after-sep | --after-mm] [--no-residual]"""
import argparse, sys
from pathlib import Path
import torch
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import bench_attention_prologue as bp  # noqa: E402
from prologue_layers import each_shape, vary  # noqa: E402
from minivllm import _C  # noqa: E402
from minivllm.bench import timing as bt  # noqa: E402
from minivllm.bench.models import qkv_features  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("models", nargs="*", default=["qwen3-0.6b", "qwen2.5-0.5b"])
ap.add_argument("--m", nargs="+", type=int, default=[1, 4, 8])
ap.add_argument("--paths", nargs="+", default=["auto", "register_prologue", "register"])
ap.add_argument("--replays", type=int, default=9)
ap.add_argument("--after-sep", action="store_true",
                help="each call after a fill of a small buffer (a kernel that lets nothing overlap, as a model's "
                     "GEMM before the prologue); the fill alone is printed as sep")
ap.add_argument("--after-mm", action="store_true",
                help="each call after a torch GEMM [M, H] x [H, H] (o_proj or down_proj's shape, its own weights "
                     "a call); the GEMM alone is printed as sep")
ap.add_argument("--mm-into-x", action="store_true",
                help="with --after-mm: the GEMM writes the call's hidden_states (as a model's down_proj "
                     "does, so the call reads x from L2)")
ap.add_argument("--after-down-proj", type=float, default=0, metavar="RATIO",
                help="each call after a down_proj-shaped GEMM [M, RATIO*H] x [RATIO*H, H] writing the call's "
                     "hidden_states, as in a model (cuBLAS may split K and end in a reduce kernel that lets "
                     "the next kernel start early); the GEMM alone is printed as sep")
ap.add_argument("--no-residual", action="store_true", help="calls without a residual (the Hugging Face patch's form)")
ap.add_argument("--shared-step-inputs", action="store_true",
                help="every layer's call takes layer 0's positions and slot_mapping, as a model's layers "
                     "share one decode step's")
args = ap.parse_args()
dtype = torch.bfloat16
print(torch.cuda.get_device_name(), flush=True)
for model, rows, new_layers in each_shape(bp, args.models, args.m, dtype):
    calls = bt.qkv_calls_per_graph(rows, model.hidden, qkv_features(model), 2, 50 << 20)
    layers = new_layers(calls)
    vary(layers, args.no_residual, args.shared_step_inputs)
    cells = []
    fills = [torch.empty(1024, device="cuda") for _ in range(calls)]
    pre = (lambda i: fills[i].fill_(1.0)) if args.after_sep else (lambda i: None)
    if args.after_mm:
        mm_x = [torch.randn(rows, model.hidden, device="cuda", dtype=dtype) for _ in range(calls)]
        mm_w = [torch.randn(model.hidden, model.hidden, device="cuda", dtype=dtype) for _ in range(calls)]
        mm_w = [w / model.hidden ** 0.5 for w in mm_w]
        if args.mm_into_x:
            pre = lambda i: torch.mm(mm_x[i], mm_w[i].t(), out=layers[i].x)  # noqa: E731
        else:
            pre = lambda i: torch.nn.functional.linear(mm_x[i], mm_w[i])  # noqa: E731
    if args.after_down_proj:
        k = int(args.after_down_proj * model.hidden) // 64 * 64
        dp_x = [torch.randn(rows, k, device="cuda", dtype=dtype) for _ in range(calls)]
        dp_w = [torch.randn(model.hidden, k, device="cuda", dtype=dtype) / k ** 0.5 for _ in range(calls)]
        pre = lambda i: torch.mm(dp_x[i], dp_w[i].t(), out=layers[i].x)  # noqa: E731
    if args.after_sep or args.after_mm or args.after_down_proj:
        cells.append(f"sep {bt.time_per_call(pre, calls, args.replays)['us']:6.2f}")
    for p in args.paths:
        kw = {} if p == "auto" else {"_path": p}
        layers[0].minivllm(**kw)
        ran = _C.qkv_last_gpu_path()
        us = bt.time_per_call(lambda i: (pre(i), layers[i].minivllm(**kw)), calls, args.replays)["us"]
        cells.append(f"{p} {us:6.2f} ({ran})")
    us = bt.time_per_call(lambda i: (pre(i), layers[i].qkv_op()), calls, args.replays)["us"]
    print(f"{model.name:13s} M={rows:3d} | " + " | ".join(cells) + f" | qkv_op {us:6.2f}", flush=True)
