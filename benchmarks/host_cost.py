#!/usr/bin/env python3
"""Host cost of one eager call at M = 1: minivllm's three ops against torch's eager sequences.

What is timed, per sequence (one "call" = one API call of ours, or torch's whole sequence):
  * host: the CPU time to issue one call. On CUDA the GPU is first held busy by a spin kernel
    (torch.cuda._sleep) long enough to cover a burst of calls, so no call waits on the GPU and
    the launch queue never fills; µs per call = median over bursts of (burst time / calls).
  * loop: N calls back to back after a warm-up, synchronized once at the end: µs per call of a
    steady eager stream, which is the larger of host cost and GPU time (at M = 1 the QKV
    product streams the whole weight, so for large models the GPU time shows here).
Sequences: minivllm through its torch fast path (plain torch tensors), the same without torch's
DLPack exchange table (the fast path on torch < 2.10), the same call forced
through the generic DLPack route (what every torch call took before the fast path, and what
torch subclasses still take), and torch's eager equivalents: F.rms_norm; x + r then F.rms_norm;
F.rms_norm, F.linear, split and per-head views (and the same with Hugging Face's RMSNorm).
Outputs are allocated by every call (no out=), as a model's eager forward does.

usage: python3 benchmarks/host_cost.py [--device cuda|cpu] [--dtype bf16] [--models ...]
           [--calls 10000] [--out FILE.json]
Importable: measure_host_cost(...) returns the results as a dict.
"""

import argparse
import contextlib
import datetime
import gc
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

EPS = 1e-6


def model_shape(name):
    """{hidden, num_heads, num_kv_heads, head_dim} of a preset of minivllm/bench/models.py, or
    of its `tiny` profiling shape."""
    from minivllm.bench.models import TINY, find_model
    model = find_model(name, extra=(TINY,))
    return {"hidden": model.hidden, "num_heads": model.num_heads,
            "num_kv_heads": model.num_kv_heads, "head_dim": model.head_dim}


def model_names():
    from minivllm.bench.models import MODELS, TINY
    return sorted(list(MODELS) + [TINY.name])

DTYPE_NAMES = {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp16": "float16",
               "float16": "float16", "fp32": "float32", "float32": "float32"}


# ---------------------------------------------------------------------------------------------
# the sequences
# ---------------------------------------------------------------------------------------------
def _hf_rms_norm(torch, x, weight, eps):
    """Hugging Face's LlamaRMSNorm.forward, as eager PyTorch runs it."""
    input_dtype = x.dtype
    h = x.to(torch.float32)
    variance = h.pow(2).mean(-1, keepdim=True)
    h = h * torch.rsqrt(variance + eps)
    return weight * h.to(input_dtype)


def build_sequences(torch, minivllm, model, device, dtype):
    """{name: zero-argument callable} for one model's shapes at M = 1."""
    F = torch.nn.functional
    shape = model_shape(model)
    H, nh, nkv, hd = shape["hidden"], shape["num_heads"], shape["num_kv_heads"], shape["head_dim"]
    N = (nh + 2 * nkv) * hd
    gen = torch.Generator(device="cpu").manual_seed(0)

    def randn(*size, scale=1.0):
        return (torch.randn(*size, generator=gen) * scale).to(device=device, dtype=dtype)

    x, r = randn(1, H), randn(1, H)
    w = randn(H, scale=0.1) + 1
    W = randn(N, H, scale=H ** -0.5)  # as nn.Linear stores it; minivllm takes W.t(), as vLLM would
    Wt = W.t()
    fused = minivllm.FusedRMSNormQKV.forward
    q_cols, kv_cols = nh * hd, nkv * hd

    def torch_qkv(normalize):
        def run():
            qkv = F.linear(normalize(), W)
            q, k, v = qkv.split([q_cols, kv_cols, kv_cols], dim=-1)
            return q.view(1, nh, hd), k.view(1, nkv, hd), v.view(1, nkv, hd)
        return run

    def torch_add_rms_norm():
        s = x + r
        return F.rms_norm(s, (H,), w, EPS), s

    import minivllm.torch as mvt
    qn, kn = randn(hd, scale=0.1) + 1, randn(hd, scale=0.1) + 1
    table = randn(64, hd)
    positions = torch.tensor([7], device=device)
    slots = torch.tensor([5], device=device)
    k_cache, v_cache = randn(4, 16, nkv, hd), randn(4, 16, nkv, hd)
    prologue = dict(residual=r, q_norm_weight=qn, k_norm_weight=kn, positions=positions,
                    cos_sin_cache=table, k_cache=k_cache, v_cache=v_cache, slot_mapping=slots)

    ops = torch.ops.minivllm
    # "minivllm.torch": the entry points models call (in eager inference they run the op's
    # implementation without the dispatcher); "torch.ops.minivllm": the registered op itself,
    # through the dispatcher, as traced code and the entry points under a mode or grad call it
    return {
        "rms_norm": {
            "minivllm": lambda: minivllm.rms_norm(x, w, EPS),
            "minivllm.torch": lambda: mvt.rms_norm(x, w, EPS),
            "torch.ops.minivllm": lambda: ops.rms_norm.default(x, w, EPS),
            "torch F.rms_norm": lambda: F.rms_norm(x, (H,), w, EPS),
        },
        "fused_add_rms_norm": {
            "minivllm": lambda: minivllm.fused_add_rms_norm(x, r, w, EPS),
            "minivllm.torch": lambda: mvt.fused_add_rms_norm(x, r, w, EPS),
            "torch.ops.minivllm": lambda: ops.fused_add_rms_norm.default(x, r, w, EPS),
            "torch x + r, F.rms_norm": torch_add_rms_norm,
        },
        "fused_rms_norm_qkv": {
            "minivllm": lambda: fused(x, w, Wt, nh, nkv, EPS),
            "minivllm.torch": lambda: mvt.fused_rms_norm_qkv(x, w, W, nh, nkv, EPS),
            "torch.ops.minivllm": lambda: ops.fused_rms_norm_qkv.default(x, w, W, nh, nkv, EPS),
            "torch F.rms_norm, linear, split": torch_qkv(lambda: F.rms_norm(x, (H,), w, EPS)),
            "torch HF RMSNorm, linear, split": torch_qkv(lambda: _hf_rms_norm(torch, x, w, EPS)),
        },
        # residual, norm, QKV, q/k norms, RoPE, cache write (Qwen3's prologue)
        "attention_prologue": {
            "minivllm": lambda: minivllm.attention_prologue(x, w, W, nh, nkv, EPS, **prologue),
            "minivllm.torch": lambda: mvt.attention_prologue(x, w, W, nh, nkv, EPS, **prologue),
            "torch.ops.minivllm": lambda: ops.attention_prologue.default(
                x, w, W, nh, nkv, EPS, r, None, qn, kn, None, positions, table, "neox", k_cache,
                v_cache, slots, None),
        },  # (torch's chain is ~15 kernels a call: a burst of it fills CUDA's launch queue)
    }


@contextlib.contextmanager
def generic_dlpack_route(torch):
    """Send plain torch tensors down minivllm's generic route for the duration: Python-side
    stream lookup and torch.empty, Tensor.__dlpack__ for every tensor. This is how every torch
    call ran before the torch fast path (and how torch subclasses still run)."""
    from minivllm import _kinds
    plain = (torch.Tensor, torch.nn.Parameter)
    saved_types = set(_kinds.TORCH_TYPES)
    saved = {cls: _kinds._PREPARE_BY_TYPE.get(cls) for cls in plain}
    _kinds.TORCH_TYPES.clear()
    for cls in plain:
        _kinds._PREPARE_BY_TYPE[cls] = _kinds._torch
    try:
        yield
    finally:
        _kinds.TORCH_TYPES.update(saved_types)
        for cls, found in saved.items():
            if found is None:
                _kinds._PREPARE_BY_TYPE.pop(cls, None)
            else:
                _kinds._PREPARE_BY_TYPE[cls] = found


@contextlib.contextmanager
def torch_c_route(minivllm):
    """The fast path without torch's DLPack exchange table (torch < 2.10 has none): tensors,
    the stream and new outputs through torch._C's Python entry points. Until 2026-11-26 this
    restored what _torch_exchange(False) returned (the state it had set, "off"), so every "fast"
    row after a run's first such route timed this route instead."""
    used = minivllm._C._torch_exchange(None)
    minivllm._C._torch_exchange(False)
    try:
        yield
    finally:
        minivllm._C._torch_exchange(used)


# ---------------------------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _gc_paused():
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def measure_host_cost(models=("llama-3-8b", "qwen3-0.6b"), device="cuda", dtype="bfloat16",
                      calls=10000, bursts=60, include_generic=True):
    """Host cost per eager call at M = 1 for minivllm's ops and torch's eager sequences.

    Returns {"device", "dtype", "calls", "bursts", "burst_calls", "results": [row, ...]} with one
    row per (model, op, implementation): host_us (median over bursts), host_us_min, loop_us
    (steady back-to-back calls, one sync at the end) and, for minivllm's rows, the same through
    the fast path without torch's exchange table and the generic DLPack route ("route": "fast",
    "torch._C" or "generic"; torch.ops rows: "fast" or "torch._C").
    """
    import torch

    import minivllm
    from minivllm.bench import timing as bt

    dtype = DTYPE_NAMES.get(dtype, dtype)
    torch_dtype = getattr(torch, dtype)
    device = torch.device(device)
    on_cuda = device.type == "cuda"
    if on_cuda:
        device = torch.device("cuda", torch.cuda.current_device() if device.index is None
                              else device.index)
        torch.cuda.set_device(device)
    synchronize = torch.cuda.synchronize if on_cuda else (lambda: None)
    rows = []
    # A garbage-collector pass landing in one burst would be charged to whichever sequence ran
    # then; none of these calls makes reference cycles, so it stays off while timing.
    with torch.inference_mode(), _gc_paused():
        for model in models:
            sequences = build_sequences(torch, minivllm, model, device, torch_dtype)
            for op, impls in sequences.items():
                for impl, fn in impls.items():
                    routes = [None]  # torch's own sequences
                    if impl == "minivllm":
                        routes = ["fast", "torch._C"] + (["generic"] if include_generic else [])
                    elif impl in ("minivllm.torch", "torch.ops.minivllm"):
                        routes = ["fast", "torch._C"]
                    for route in routes:
                        context = generic_dlpack_route(torch) if route == "generic" \
                            else torch_c_route(minivllm) if route == "torch._C" \
                            else contextlib.nullcontext()
                        with context:
                            loop_us = bt.loop_us_per_call(fn, calls, synchronize)
                            host = bt.host_us_per_call(torch, fn, bursts, on_cuda)
                        row = {"model": model, "op": op, "impl": impl,
                               "host_us": round(host[0], 3), "host_us_min": round(host[1], 3),
                               "bursts_overran": host[2], "loop_us": round(loop_us, 3),
                               **model_shape(model)}
                        if route is not None:
                            row["route"] = route
                        rows.append(row)
    return {"device": str(device), "dtype": dtype, "calls": calls, "bursts": bursts,
            "burst_calls": bt.HOST_BURST_CALLS, "results": rows}


def measure_breakdown(model="qwen3-0.6b", device="cuda", dtype="bfloat16", bursts=60):
    """µs per call of the torch primitives the fast path is made of, and of minivllm calls with
    preallocated outputs (no allocation): where a call's host time goes. {name: µs}."""
    import torch

    import minivllm
    from minivllm.bench import timing as bt

    dtype = getattr(torch, DTYPE_NAMES.get(dtype, dtype))
    device = torch.device(device)
    on_cuda = device.type == "cuda"
    shape = model_shape(model)
    H, nh, nkv, hd = shape["hidden"], shape["num_heads"], shape["num_kv_heads"], shape["head_dim"]
    N = (nh + 2 * nkv) * hd
    x = torch.randn(1, H, device=device).to(dtype)
    w = torch.ones(H, device=device, dtype=dtype)
    Wt = (torch.randn(N, H, device=device) * H ** -0.5).to(dtype).t()
    q, k, v = (x.new_empty((1, heads, hd)) for heads in (nh, nkv, nkv))
    out = torch.empty_like(x)
    export = getattr(torch._C, "_to_dlpack_versioned", torch._C._to_dlpack)
    index = device.index if device.index is not None else torch.cuda.current_device() \
        if on_cuda else 0
    parts = {
        "x.data_ptr()": lambda: x.data_ptr(),
        "torch._C DLPack export of x (capsule made, deleted)": lambda: export(x),
        "x.new_empty((1, N))": lambda: x.new_empty((1, N)),
        "3 x x.new_empty(q, k, v shapes)": lambda: (x.new_empty((1, nh, hd)),
                                                    x.new_empty((1, nkv, hd)),
                                                    x.new_empty((1, nkv, hd))),
        "x.new_empty((1, heads, hd)).split_with_sizes(...)":
            lambda: x.new_empty((1, nh + 2 * nkv, hd)).split_with_sizes([nh, nkv, nkv], -2),
        "minivllm.rms_norm(out=) (no allocation)": lambda: minivllm.rms_norm(x, w, out=out),
        "minivllm QKV out=(q, k, v) (no allocation)":
            lambda: minivllm.FusedRMSNormQKV.forward(x, w, Wt, nh, nkv, out=(q, k, v)),
        "minivllm QKV (allocating)": lambda: minivllm.FusedRMSNormQKV.forward(x, w, Wt, nh, nkv),
    }
    if on_cuda:
        parts["torch._C._cuda_getCurrentRawStream(i)"] = \
            lambda: torch._C._cuda_getCurrentRawStream(index)
    result = {}
    with torch.inference_mode(), _gc_paused():
        for name, fn in parts.items():
            for _ in range(200):
                fn()
            host = bt.host_us_per_call(torch, fn, bursts, on_cuda)
            result[name] = round(host[0], 3)
    return result


# ---------------------------------------------------------------------------------------------
# run metadata and the command line
# ---------------------------------------------------------------------------------------------
def _command_output(args, cwd=None):
    try:
        out = subprocess.run(args, cwd=cwd, capture_output=True, text=True, check=True,
                             timeout=30).stdout.strip()
        return out.splitlines()[0] if out else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _metadata(torch, device):
    meta = {"date": datetime.date.today().isoformat(), "python": platform.python_version(),
            "torch": torch.__version__, "host_cpu": platform.processor() or platform.machine(),
            "commit": os.environ.get("MINIVLLM_COMMIT")
            or _command_output(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT)}
    if device.startswith("cuda"):
        meta["gpu"] = torch.cuda.get_device_name()
        meta["driver"] = _command_output(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
    return meta


def _label(row):
    route = row.get("route")
    if route == "generic":
        return "minivllm (generic DLPack route)"
    if route == "torch._C":
        return f"{row['impl']} (no exchange table)"
    return row["impl"]


def print_table(result):
    spinning = " issued while the GPU spins" if result["device"].startswith("cuda") else ""
    print(f"host cost per eager call at M = 1, {result['dtype']} on {result['device']} "
          f"(host: median of {result['bursts']} bursts of {result['burst_calls']} calls"
          f"{spinning}; loop: {result['calls']} back-to-back calls, one sync)")
    print(f"{'model':<12} {'op':<20} {'implementation':<42} {'host µs':>9} {'min':>8} "
          f"{'loop µs':>9}")
    for row in result["results"]:
        print(f"{row['model']:<12} {row['op']:<20} {_label(row):<42} {row['host_us']:>9.2f} "
              f"{row['host_us_min']:>8.2f} {row['loop_us']:>9.2f}"
              + (f"  ({row['bursts_overran']} bursts overran)" if row["bursts_overran"] else ""))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--dtype", default="bf16", choices=sorted(DTYPE_NAMES))
    parser.add_argument("--models", nargs="+", default=["llama-3-8b", "qwen3-0.6b"],
                        choices=model_names())
    parser.add_argument("--calls", type=int, default=10000, help="calls in the steady loop")
    parser.add_argument("--bursts", type=int, default=60, help="timed bursts for host cost")
    parser.add_argument("--no-generic", action="store_true",
                        help="skip minivllm's generic DLPack route (the before figure)")
    parser.add_argument("--breakdown", action="store_true",
                        help="also time the torch primitives a fast-path call is made of")
    parser.add_argument("--out", help="write the results as JSON to this file")
    args = parser.parse_args(argv)
    try:
        import torch
    except ImportError:
        sys.exit("host_cost.py needs PyTorch: python3 -m pip install torch")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("host_cost.py: no CUDA device; use --device cpu (with --models tiny)")
    result = measure_host_cost(args.models, args.device, args.dtype, args.calls, args.bursts,
                               include_generic=not args.no_generic)
    result["meta"] = _metadata(torch, args.device)
    print_table(result)
    if args.breakdown:
        model = "tiny" if args.models == ["tiny"] else "qwen3-0.6b"
        result["breakdown"] = {"model": model, "host_us": measure_breakdown(
            model, args.device, args.dtype, args.bursts)}
        print(f"where the host time goes ({model}, µs per call):")
        for name, us in result["breakdown"]["host_us"].items():
            print(f"  {name:<52} {us:8.2f}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
