"""Times the QKV op's norm + cuBLAS structure with the probe norm kernels of scratch_norm_probe.cu
against the op itself, torch.compile of torch's sequence (each shape compiled for itself) and the
library's own norm kernel in front of the same F.linear, as bench_fused_rms_norm_qkv times them
(chains of layers with their own weights, graph replay, median µs per call).

usage: python3 dev/probes/scratch_norm_probe.py SO [--models ...] [--m 32 256 ...] [--replays 15]
Variant names: vWpP[e][+|-]: P vectors of W elements a thread, the weight loaded early (before the
wait; else after x), launched with (+) or without (-) PDL.
"""

import argparse
import ctypes
import math

import torch
import torch.nn.functional as F

import minivllm
from minivllm import reference
from minivllm.bench import check as checks
from minivllm.bench import timing as bt
from minivllm.bench.baselines import split_heads, torch_qkv
from minivllm.bench.models import find_model, qkv_features

EPS = bt.EPS
VARIANTS = [(8, 1, 0, 1), (4, 1, 0, 1), (4, 2, 0, 1), (2, 1, 0, 1), (4, 4, 0, 1), (8, 1, 0, 0), (4, 1, 0, 0),
            (4, 2, 0, 0)]


def layer_buffers(rows, h, n, calls, dtype):
    """Each call's own W [n, h] (none where n is 0), gamma, x and NaN-filled y, as the chains use
    them; shared by norm_chain_nopdl.py, norm_tri_chain.py, nvrtc_norm_probe.py and norm_jit_ab.py."""
    ws = [(torch.randn(n, h, device="cuda") / h ** 0.5).to(dtype) for _ in range(calls)] if n else []
    gs = [torch.empty(h, device="cuda").uniform_(0.5, 1.5).to(dtype) for _ in range(calls)]
    xs = [torch.randn(rows, h, device="cuda", dtype=dtype) for _ in range(calls)]
    ys = [torch.full((rows, h), math.nan, device="cuda", dtype=dtype) for _ in range(calls)]
    return ws, gs, xs, ys


def check_and_poison(name, x, gamma, y):
    """y (bf16) against float64 rms_norm of x on sampled rows, then y poisoned with NaN for the next run;
    shared by norm_chain_nopdl.py and norm_tri_chain.py."""
    picked = checks.sample_rows(x.shape[0])
    check = checks.checker(reference.TOLERANCE["bfloat16"], checks.rms_norm_want(x, gamma, picked), picked)(y)
    if not check["ok"]:
        raise RuntimeError(f"{name}: y relative error {check['relative_error']:.3e}")
    y.fill_(math.nan)


def vname(v):
    vw, per, early, pdl = v
    return f"v{vw}p{per}{'e' if early else ''}{'+' if pdl else '-'}"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("so")
    p.add_argument("--models", nargs="+", default=["qwen3-0.6b", "llama-3-8b", "qwen2.5-0.5b", "qwen3-4b",
                                                   "gemma-3-1b", "phi-3-mini", "llama-3-70b"])
    p.add_argument("--m", nargs="+", type=int, default=[32, 64, 128, 256, 512, 1024, 2048])
    p.add_argument("--replays", type=int, default=15)
    p.add_argument("--variants", nargs="+", help="probe variants VW,P,EARLY,PDL (default: the built-in list)")
    p.add_argument("--shared", action="store_true",
                   help="also each form writing one y shared by the layers (as a graph pool reuses a freed "
                        "block), torch.compile of the norm alone + F.linear, and the library's norm without PDL")
    args = p.parse_args()
    variants = [tuple(int(v) for v in t.split(",")) for t in args.variants] if args.variants else VARIANTS
    lib = ctypes.CDLL(args.so)
    lib.scratch_norm.restype = ctypes.c_int
    lib.scratch_norm.argtypes = [ctypes.c_uint64] * 3 + [ctypes.c_int, ctypes.c_int, ctypes.c_float,
                                                         ctypes.c_uint64] + [ctypes.c_int] * 4
    dtype = torch.bfloat16
    bt.raise_compile_limits(512)
    compiled = torch.compile(torch_qkv, dynamic=False)
    compiled_norm = torch.compile(lambda x, g: F.rms_norm(x, (x.shape[-1],), g, EPS), dynamic=False)
    props = torch.cuda.get_device_properties(0)
    print(f"# {props.name}, torch {torch.__version__}, bf16; µs per call; ratio = compile / best probe")
    names = ["op", "compile", "mvnorm"] + [vname(v) for v in variants]
    if args.shared:
        names += ["cnorm", "mvnorm-", "mvnorm-s"] + [vname(v) + "s" for v in variants]
    print(f"{'model':14s} {'M':>5s} " + " ".join(f"{n:>8s}" for n in names) + "   best     c/best  c/op")
    for name in args.models:
        model = find_model(name)
        h, heads, kvh, hd = model.hidden, model.num_heads, model.num_kv_heads, model.head_dim
        n = qkv_features(model)
        for rows in args.m:
            calls = bt.qkv_calls_per_graph(rows, h, n, 2, props.L2_cache_size)
            ws, gs, xs, ys = layer_buffers(rows, h, n, calls, dtype)
            y1 = torch.full((rows, h), math.nan, device="cuda", dtype=dtype)
            outs = [split_heads(torch.empty(rows, n, device="cuda", dtype=dtype), heads, kvh, hd)
                    for _ in range(calls)]

            def probe(i, v, y=None):
                y = ys[i] if y is None else y
                err = lib.scratch_norm(xs[i].data_ptr(), gs[i].data_ptr(), y.data_ptr(), rows, h, EPS,
                                       torch.cuda.current_stream().cuda_stream, *v)
                if err:
                    raise RuntimeError(f"scratch_norm {vname(v)}: cudaError {err}")
                return F.linear(y, ws[i])

            impls = {
                "op": lambda i: minivllm.FusedRMSNormQKV.forward(xs[i], gs[i], ws[i].t(), heads, kvh, EPS,
                                                                  out=outs[i]),
                "compile": lambda i: compiled(xs[i], gs[i], ws[i], heads, kvh, hd),
                "mvnorm": lambda i: F.linear(minivllm.rms_norm(xs[i], gs[i], EPS, out=ys[i]), ws[i]),
            }
            for v in variants:
                if h % v[0] == 0 and math.ceil(h / v[0] / v[1] / 32) * 32 <= 1024 // v[1]:
                    impls[vname(v)] = lambda i, v=v: probe(i, v)
                    impls[vname(v) + "s"] = lambda i, v=v: probe(i, v, y1)
            impls["cnorm"] = lambda i: F.linear(compiled_norm(xs[i], gs[i]), ws[i])
            impls["mvnorm-"] = lambda i: F.linear(minivllm.rms_norm(xs[i], gs[i], EPS, out=ys[i], pdl=False), ws[i])
            impls["mvnorm-s"] = lambda i: F.linear(minivllm.rms_norm(xs[i], gs[i], EPS, out=y1, pdl=False), ws[i])
            cells, times = [], {}
            for key in names:
                if key not in impls:
                    cells.append(f"{'-':>8s}")
                    continue
                t = bt.time_per_call(impls[key], calls, args.replays)["us"]
                times[key] = t
                cells.append(f"{t:8.2f}")
                if key.startswith("v") and not key.endswith("s"):  # the probe's y against torch's norm
                    check_and_poison(key, xs[-1], gs[-1], ys[-1])
            probes = {k: t for k, t in times.items() if k.startswith("v") and not k.endswith("s")}
            best = min(probes, key=probes.get)
            print(f"{model.name:14s} {rows:5d} " + " ".join(cells) +
                  f"   {best:8s} {times['compile'] / probes[best]:6.3f} {times['compile'] / times['op']:6.3f}",
                  flush=True)
            del ws, gs, xs, ys, y1, outs
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
