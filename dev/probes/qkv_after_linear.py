"""The QKV op after a torch GEMM, as a model runs it (the previous layer's down_proj, F.linear),
with and without PDL, against torch.compile and torch there; and in chains of its own calls (the
benchmark's default). Each layer its own weights, graph replay, median µs per call (the GEMM's own
time included: compare columns of one row).

usage: python3 dev/probes/qkv_after_linear.py [--models ...] [--shapes H,HEADS,KV,HD ...] [--m 32 128 ...]
           [--replays 15] [--cols ...] [--paths engine cublaslt ...]
--paths adds, for each path forced (the op's _path=), the columns "P" (chain of its own calls) and
"lin>P" (after the GEMM).
"""

import argparse

import torch
import torch.nn.functional as F

import minivllm
from minivllm import reference
from minivllm.bench import check as checks
from minivllm.bench import timing as bt
from minivllm.bench.baselines import split_heads, torch_qkv
from minivllm.bench.models import find_model, parse_qkv_shape, qkv_features

EPS = bt.EPS


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--models", nargs="+", default=["qwen3-0.6b", "llama-3-8b", "qwen2.5-0.5b", "qwen3-4b",
                                                   "gemma-3-1b", "phi-3-mini"])
    p.add_argument("--m", nargs="+", type=int, default=[1, 8, 32, 128, 512])
    p.add_argument("--replays", type=int, default=15)
    p.add_argument("--shapes", nargs="+", default=[], help="more shapes, H,HEADS,KV_HEADS,HEAD_DIM")
    p.add_argument("--cols", nargs="+", help="only these columns (default all)")
    p.add_argument("--paths", nargs="+", default=[], help="paths forced, two columns each")
    args = p.parse_args()
    dtype = torch.bfloat16
    bt.raise_compile_limits(512)
    compiled = torch.compile(torch_qkv, dynamic=False)
    props = torch.cuda.get_device_properties(0)
    names = ["op+", "op-", "lin", "lin>op+", "lin>op-", "lin>comp", "lin>torch"]
    names = [k for k in names if not args.cols or k in args.cols]
    for path in args.paths:
        names += [path, f"lin>{path}"]
    print(f"# {props.name}, torch {torch.__version__}, bf16; µs per call (lin: the GEMM alone)")
    both = "lin>comp" in names and "lin>op+" in names and "lin>op-" in names
    print(f"{'model':14s} {'M':>5s} " + " ".join(f"{n:>9s}" for n in names) + ("  comp/op+ comp/op-" if both else ""))
    models = [find_model(m) for m in args.models] + [parse_qkv_shape(t) for t in args.shapes]
    for model in models:
        h, heads, kvh, hd = model.hidden, model.num_heads, model.num_kv_heads, model.head_dim
        n = qkv_features(model)
        for rows in args.m:
            calls = bt.qkv_calls_per_graph(rows, h, n + h, 2, props.L2_cache_size)
            ws = [(torch.randn(n, h, device="cuda") / h ** 0.5).to(dtype) for _ in range(calls)]
            wd = [(torch.randn(h, h, device="cuda") / h ** 0.5).to(dtype) for _ in range(calls)]
            gs = [torch.empty(h, device="cuda").uniform_(0.5, 1.5).to(dtype) for _ in range(calls)]
            hs = [torch.randn(rows, h, device="cuda", dtype=dtype) for _ in range(calls)]
            xs = [torch.randn(rows, h, device="cuda", dtype=dtype) for _ in range(calls)]
            bases = [torch.full((rows, n), float("nan"), device="cuda", dtype=dtype) for _ in range(calls)]
            outs = [split_heads(b, heads, kvh, hd) for b in bases]

            def op(i, pdl, path=None):
                extra = {"_path": path} if path else {}
                return minivllm.FusedRMSNormQKV.forward(xs[i], gs[i], ws[i].t(), heads, kvh, EPS, out=outs[i],
                                                        pdl=pdl, **extra)

            def lin(i):
                return torch.matmul(hs[i], wd[i].t(), out=xs[i])

            impls = {
                "op+": lambda i: op(i, None),
                "op-": lambda i: op(i, False),
                "lin": lin,
                "lin>op+": lambda i: (lin(i), op(i, None))[1],
                "lin>op-": lambda i: (lin(i), op(i, False))[1],
                "lin>comp": lambda i: (lin(i), compiled(xs[i], gs[i], ws[i], heads, kvh, hd))[1],
                "lin>torch": lambda i: (lin(i), torch_qkv(xs[i], gs[i], ws[i], heads, kvh, hd))[1],
            }
            for path in args.paths:
                impls[path] = lambda i, path=path: op(i, None, path)
                impls[f"lin>{path}"] = lambda i, path=path: (lin(i), op(i, None, path))[1]
            t = {k: bt.time_per_call(impls[k], calls, args.replays)["us"] for k in names}
            if set(names) - {"lin", "lin>comp", "lin>torch"}:  # the op's last layer against float64
                picked = checks.sample_rows(rows)
                check = checks.checker(reference.QKV_TOLERANCE["bfloat16"],
                                       checks.qkv_want(xs[-1], gs[-1], ws[-1], picked), picked)(bases[-1])
                if not check["ok"]:
                    raise RuntimeError(f"{model.name} M={rows}: op relative error {check['relative_error']:.3e}")
            ratios = f"  {t['lin>comp'] / t['lin>op+']:7.3f} {t['lin>comp'] / t['lin>op-']:7.3f}" if both else ""
            print(f"{model.name[:14]:14s} {rows:5d} " + " ".join(f"{t[k]:9.2f}" for k in names) + ratios, flush=True)
            del ws, wd, gs, hs, xs, outs, bases
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
