#!/usr/bin/env python3
"""Benchmark minivllm.FusedRMSNormQKV.forward (RMSNorm fused with the QKV projection) on one GPU.

Implementations, all timed in the same run and the same way:
  minivllm            FusedRMSNormQKV.forward(x, γ, W.t(), heads, kv_heads, out=(q, k, v)),
                      q, k, v views of one [M, N] buffer (as torch's split returns them)
  torch               F.rms_norm, F.linear, split into q, k, v (views)
  HF                  Hugging Face's RMSNorm (float32 statistics, rounded before γ), F.linear,
                      split
  cuBLAS              F.linear alone on an already normalized x: the GEMM without the norm
  compile             torch.compile of the torch version, default mode, each shape compiled for
                      itself (dynamic=False) as a model compiles its fixed sizes
                      (--compile-dynamic: one function whose sizes turn dynamic after a shape
                      change, as torch.compile(fn) alone does)
  max-autotune        torch.compile(mode="max-autotune-no-cudagraphs", dynamic=False) of it;
                      autotuning takes seconds per shape, so it covers a subset (--autotune-m,
                      --autotune-dtypes) within a time budget (--autotune-budget); the output
                      says which shapes it covered
  Triton-1            the original Triton design: one program per output feature (the norm of the
                      token row, then its dot with one W row), launched once per token from a
                      Python loop (M <= 16 only)
Timing (--after-fill: each call after a fill of a small buffer, a kernel that lets nothing overlap
as a model's GEMM before the projection does, the fill's own time taken off; by default each call
follows one of its own, which programmatic dependent launch lets overlap): N layers, each with its own W, γ, input and outputs, N
large enough for >= 256 MiB of distinct weights and a working set >= 4x L2; G calls cycling
through them are captured into one CUDA graph (G = N, or the multiple of N that makes a replay
last >= 300 µs, --min-replay-us, so its start-up is not charged to a few calls); after a
warm-up the graph is replayed between CUDA events and µs per call is the median replay / G. Device-to-device copy bandwidth and the GEMM rate are measured in the
same run; a shape's floor = max((W + γ + x + q, k, v bytes) / copy bandwidth, 2·M·N·H / GEMM
rate). Also measured: the host cost of one eager call at M = 1 with torch tensors (no graph;
host time alone, in bursts issued while a spin kernel holds the GPU, as benchmarks/host_cost.py
measures it; and back-to-back calls, which the GPU bounds where it is slower) against torch's
eager sequence.
Correctness: minivllm is checked against the float64 reference (minivllm.reference) for every
model and dtype (small M) before any timing (minivllm.bench.check.self_check), and every
implementation's last graph-replayed call is checked against it on a sample of rows at every
shape; a wrong minivllm result is reported and makes the exit status 1. An implementation that
fails at a shape is recorded as failed there; the run goes on.
The report gives each shape's floor and every baseline's time and minivllm's speedup over it.

usage: python3 benchmarks/bench_fused_rms_norm_qkv.py [--quick] [--models qwen3-0.6b ...]
           [--dtypes bf16 fp16] [--m 1 16 256] [--out DIR] [--no-compile] [--no-plot]
           [--pdl auto|on|off] [--path deferred|register|bulk|wgmma|cublaslt|tile|generic]
           [--after-fill] ...
Writes DIR/qkv-<gpu>-<date>.json and DIR/qkv-<gpu>-<date>.png (DIR: benchmarks/results).
"""

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

import plot_qkv  # benchmarks/plot_qkv.py: the figure, drawn from the results alone

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    sys.exit("bench_fused_rms_norm_qkv.py needs PyTorch with CUDA: python3 -m pip install torch")

try:
    import minivllm
    from minivllm import reference
    from minivllm.bench import check as checks
    from minivllm.bench import timing as bt
    from minivllm.bench.baselines import hf_qkv, split_heads, torch_qkv
    from minivllm.bench.models import MODELS, find_model, parse_qkv_shape, qkv_features
except ImportError as error:
    sys.exit(f"bench_fused_rms_norm_qkv.py: cannot import minivllm ({error}). Install it "
             "first, from the checkout: python3 -m pip install --no-build-isolation .")

try:
    import triton
    import triton.language as tl
except Exception:  # missing or broken: the Triton baseline is then recorded as unavailable
    triton = None

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = Path(__file__).resolve().parent / "results"
EPS = bt.EPS

FULL_MODELS = tuple(MODELS)   # the zoo: every preset of minivllm/bench/models.py
QUICK_MODELS = ("qwen3-0.6b", "llama-3-8b")
FULL_M = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 16384)
QUICK_M = (1, 16, 256, 4096)
FULL_DTYPES = ("bf16", "fp16")
QUICK_DTYPES = ("bf16",)
# max-autotune compiles and benchmarks GEMM variants for every shape (seconds each): a subset, and
# a time budget after which the remaining shapes are skipped (and listed as skipped).
FULL_AUTOTUNE_M = (1, 16, 256, 4096)
QUICK_AUTOTUNE_M = (256,)
AUTOTUNE_DTYPES = ("bf16",)
FULL_AUTOTUNE_BUDGET_S = 180
QUICK_AUTOTUNE_BUDGET_S = 60

TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
TRITON_MAX_M = 16                       # M launches per call: beyond this it is hopeless anyway
HOST_BURSTS = 60          # host time alone: bursts behind a spin kernel (timing.host_us_per_call)
HOST_LOOP_CALLS = 3000    # back-to-back calls, one sync (timing.loop_us_per_call)
HOST_CALLS = 200          # calls the GPU-time measurement queues behind its spin
HOST_SPIN_CYCLES = 100_000_000   # ~50 ms of GPU spin: longer than the host takes to queue a batch
# minivllm is held to the test suite's tolerances; the baselines round y before the GEMM (HF, the
# cuBLAS one on a stored normalized x), which costs up to one more rounding of the dtype.
BASELINE_TOLERANCE = 2e-2

IMPLS = ("minivllm", "torch", "hf", "cublas", "compile", "max_autotune", "triton_1", "engine")
BASELINES = IMPLS[1:-1]
LABELS = {
    "minivllm": "minivllm FusedRMSNormQKV",
    "torch": "torch rms_norm + linear + split",
    "hf": "HF RMSNorm + linear + split",
    "cublas": "cuBLAS GEMM alone (x pre-normalized)",
    "compile": "torch.compile (default)",
    "max_autotune": "torch.compile (max-autotune-no-cudagraphs)",
    "triton_1": "Triton, one program per output feature",
    "engine": "minivllm with the GEMM engine forced (_path='engine')",
}
SHORT = {"minivllm": "minivllm", "torch": "torch", "hf": "HF", "cublas": "cuBLAS",
         "compile": "compile", "max_autotune": "max-AT", "triton_1": "Triton-1",
         "engine": "engine"}


# ---------------------------------------------------------------------------------------------
# the implementations
# ---------------------------------------------------------------------------------------------
if triton is not None:
    @triton.jit
    def _row_norm_dot_one_feature(x_ptr, gamma_ptr, weight_ptr, out_ptr, hidden, eps,
                                  BLOCK: tl.constexpr):
        # One program per output feature n: it normalizes the whole token row itself (every
        # program repeats that work) and takes the dot with W's row n.
        feature = tl.program_id(0)
        columns = tl.arange(0, BLOCK)
        inside = columns < hidden
        x = tl.load(x_ptr + columns, mask=inside, other=0.0).to(tl.float32)
        rrms = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / hidden + eps)
        gamma = tl.load(gamma_ptr + columns, mask=inside, other=0.0).to(tl.float32)
        w = tl.load(weight_ptr + feature * hidden + columns, mask=inside, other=0.0).to(tl.float32)
        dot = tl.sum(x * rrms * gamma * w, axis=0)
        tl.store(out_ptr + feature, dot.to(out_ptr.dtype.element_ty))


def triton_one_program_per_feature(x, gamma, weight, out, num_heads, num_kv_heads, head_dim):
    """The original Triton design: for each token, one launch of N programs; out is [M, N]."""
    hidden = x.shape[-1]
    block = triton.next_power_of_2(hidden)
    for row in range(x.shape[0]):
        _row_norm_dot_one_feature[(weight.shape[0],)](x[row], gamma, weight, out[row], hidden,
                                                      EPS, BLOCK=block)
    return split_heads(out, num_heads, num_kv_heads, head_dim)


def quiet_autotuning():
    """Keep max-autotune's reports to a few lines per shape.

    By default inductor prints ten candidates and a statistics block for every GEMM it tunes, and
    a traceback for each candidate that fails to compile, which it then skips on its own (a
    compilation that fails as a whole still raises, and is recorded as a failure)."""
    import logging

    import torch._inductor.config as inductor_config

    if hasattr(inductor_config, "autotune_num_choices_displayed"):
        inductor_config.autotune_num_choices_displayed = 3
    if hasattr(inductor_config, "max_autotune_report_choices_stats"):
        inductor_config.max_autotune_report_choices_stats = False
    logging.getLogger("torch._inductor.select_algorithm").setLevel(logging.CRITICAL)


def make_compiled(args):
    """The torch.compile'd torch versions, keyed by implementation (absent: not requested), and
    the default mode's description for the report ("off" where it is not timed)."""
    if args.no_compile:
        return {}, "off"
    # dynamic=False: one compilation per (model, dtype, M); past the limit dynamo would run eager
    bt.raise_compile_limits(max(256, len(args.models) * len(args.dtypes) * len(args.m) + 16))
    compiled, mode = {}, "off"
    if "compile" in args.impls:
        options, mode = bt.compile_options(args)
        compiled["compile"] = torch.compile(torch_qkv, **options)
    if args.autotune_m:
        quiet_autotuning()
        compiled["max_autotune"] = torch.compile(torch_qkv, mode="max-autotune-no-cudagraphs",
                                                 dynamic=False)
    return compiled, mode


# ---------------------------------------------------------------------------------------------
# correctness
# ---------------------------------------------------------------------------------------------
def self_check(models, dtype_names, rng, kwargs):
    """minivllm against the float64 reference for every model and dtype, before timing (the
    shared self-check: M = 7 into NaN-filled outputs, M = 1 allocated). Returns the records and
    the failures."""
    _, records = checks.self_check(checks.Backend("cuda"), rng, models,
                                   dtypes=[bt.DTYPE_NAMES[d] for d in dtype_names], ops=("qkv",),
                                   qkv_rows=(7, 1), qkv_kwargs=kwargs)
    return records, [r for r in records if not r["ok"]]


# ---------------------------------------------------------------------------------------------
# one shape
# ---------------------------------------------------------------------------------------------
class LayerPool:
    """Random layers (W [N, H] as nn.Linear stores it, γ [H]) of one model and dtype, made once
    and reused by every M, grown as a shape needs more."""

    def __init__(self):
        self.key = None
        self.layers = []

    def get(self, model, dtype, count):
        if self.key != (model.name, dtype):
            self.key, self.layers = (model.name, dtype), []
            torch.cuda.empty_cache()
        features = qkv_features(model)
        while len(self.layers) < count:
            weight = (torch.randn(features, model.hidden, device="cuda")
                      / math.sqrt(model.hidden)).to(dtype)
            gamma = torch.empty(model.hidden, device="cuda").uniform_(0.5, 1.5).to(dtype)
            self.layers.append((weight, gamma))
        return self.layers[:count]


def settle_gemm_ceilings(results, copy_gbps, measured):
    """Each dtype's GEMM ceiling: the measured rate, raised to the fastest multiply any correct
    implementation reached in the sweep where that is faster; floors and fractions of the floor
    are recomputed with it. Returns {dtype: {"measured", "used", "raised_by"}}."""
    ceilings = {}
    for dtype_name, rate in measured.items():
        samples = [(r["flops_per_call"], t["us"], f"{SHORT[name]} at {r['model']} M={r['rows']}")
                   for r in results if r["dtype"] == dtype_name
                   for name, t in r["impls"].items() if name not in r["failures"]]
        fastest, label = bt.fastest_multiply(samples)
        ceilings[dtype_name] = {"measured": rate, "used": max(rate, fastest),
                                "raised_by": label if fastest > rate else None}
    for r in results:
        r["floor_us"] = bt.floor_us(r["bytes_per_call"], r["flops_per_call"], copy_gbps,
                                    ceilings[r["dtype"]]["used"])
        for timing in r["impls"].values():
            timing["fraction_of_floor"] = r["floor_us"] / timing["us"]
    return ceilings


def first_line(error):
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


HEAVY_M = 4096   # shapes from this M on run the GPU at its power limit ...
SETTLE_S = 1.0   # ... and the next shape waits this long before it is timed


def bench_shape(model, dtype_name, rows, run):
    """Every implementation at one (model, dtype, M): the shape's record."""
    dtype = TORCH_DTYPES[dtype_name]
    element_size = bt.ELEMENT_SIZE[dtype_name]
    hidden, heads, kv_heads, head_dim = (model.hidden, model.num_heads, model.num_kv_heads,
                                         model.head_dim)
    features = qkv_features(model)
    moved = bt.qkv_bytes(rows, hidden, features, element_size)
    flops = bt.qkv_flops(rows, hidden, features)
    floor = bt.floor_us(moved, flops, run.copy_gbps, run.gemm_tflops[dtype_name])
    calls = bt.qkv_calls_per_graph(rows, hidden, features, element_size, run.l2_bytes)

    layers = run.pool.get(model, dtype, calls)
    weights = [w for w, _ in layers]
    weights_t = [w.t() for w in weights]   # the integration form: qkv_proj.weight.t()
    gammas = [g for _, g in layers]
    xs = [torch.randn(rows, hidden, device="cuda", dtype=dtype) for _ in range(calls)]
    last = calls - 1
    picked = checks.sample_rows(rows)
    want = checks.qkv_want(xs[last], gammas[last], weights[last], picked)

    def checker(tolerance):
        return checks.checker(tolerance, want, picked)

    args = (heads, kv_heads, head_dim)
    impls, skipped = {}, {}
    # minivllm writes into NaN-filled outputs: the check then sees only what the replays wrote.
    # q, k and v are views of one [M, N] allocation, the layout torch's linear + split returns
    # (and what FusedRMSNormQKV.forward allocates itself without out=).
    outs = [split_heads(torch.full((rows, features), math.nan, device="cuda", dtype=dtype),
                               heads, kv_heads, head_dim) for _ in range(calls)]
    impls["minivllm"] = lambda i: minivllm.FusedRMSNormQKV.forward(
        xs[i], gammas[i], weights_t[i], heads, kv_heads, EPS, out=outs[i], **run.kwargs)
    engine_outs = ([split_heads(torch.full((rows, features), math.nan, device="cuda", dtype=dtype),
                                heads, kv_heads, head_dim) for _ in range(calls)]
                   if "engine" in run.impls else [])
    impls["engine"] = lambda i: minivllm.FusedRMSNormQKV.forward(
        xs[i], gammas[i], weights_t[i], heads, kv_heads, EPS, out=engine_outs[i],
        **dict(run.kwargs, _path="engine"))
    impls["torch"] = lambda i: torch_qkv(xs[i], gammas[i], weights[i], *args)
    impls["hf"] = lambda i: hf_qkv(xs[i], gammas[i], weights[i], *args)
    normalized = ([F.rms_norm(x, (hidden,), g, EPS) for x, g in zip(xs, gammas)]
                  if "cublas" in run.impls else [])
    impls["cublas"] = lambda i: F.linear(normalized[i], weights[i])
    if "compile" in run.compiled:
        compiled = run.compiled["compile"]
        impls["compile"] = lambda i: compiled(xs[i], gammas[i], weights[i], *args)
    if "max_autotune" in run.compiled:
        if dtype_name not in run.autotune_dtypes or rows not in run.autotune_m:
            skipped["max_autotune"] = "not in the max-autotune subset"
        elif run.autotune_seconds >= run.autotune_budget:
            skipped["max_autotune"] = f"max-autotune budget ({run.autotune_budget:.0f} s) spent"
        else:
            autotuned = run.compiled["max_autotune"]
            impls["max_autotune"] = lambda i: autotuned(xs[i], gammas[i], weights[i], *args)
    if triton is None:
        skipped["triton_1"] = "triton is not importable"
    elif rows > TRITON_MAX_M:
        skipped["triton_1"] = f"M > {TRITON_MAX_M}"
    else:
        triton_outs = [torch.full((rows, features), math.nan, device="cuda", dtype=dtype)
                       for _ in range(calls)]
        impls["triton_1"] = lambda i: triton_one_program_per_feature(
            xs[i], gammas[i], weights[i], triton_outs[i], *args)

    fill_us = 0.0
    if run.after_fill:
        # each call after a kernel that never lets its successor start early; its own time
        # (median of the same kind of graph) is taken off
        fills = [torch.empty(1024, device="cuda") for _ in range(calls)]
        fill_us = bt.time_per_call(lambda i: fills[i].fill_(1.0), calls, run.replays)["us"]
        impls = {name: (lambda i, f=f: (fills[i].fill_(1.0), f(i))[1]) for name, f in impls.items()}

    results, failures = {}, {}
    for name in IMPLS:
        if name not in impls or name not in run.impls:
            continue
        started = time.perf_counter()
        tolerance = (reference.QKV_TOLERANCE[bt.DTYPE_NAMES[dtype_name]]
                     if name in ("minivllm", "engine") else BASELINE_TOLERANCE)
        try:
            timing = bt.time_per_call(impls[name], calls, run.replays, checker(tolerance))
        except Exception as error:  # recorded; the other implementations and shapes go on
            failures[name] = first_line(error)
            torch.cuda.empty_cache()
            continue
        finally:
            seconds = time.perf_counter() - started
            if name == "max_autotune":
                run.autotune_seconds += seconds
        timing["seconds"] = seconds
        if run.after_fill:
            timing.update(us_with_fill=timing["us"], us=timing["us"] - fill_us,
                          us_min=timing["us_min"] - fill_us, us_max=timing["us_max"] - fill_us)
        timing["fraction_of_floor"] = floor / timing["us"]
        timing["gbps"] = moved / timing["us"] / 1e3
        timing["tflops"] = flops / timing["us"] / 1e6
        results[name] = timing
        if not timing["check"]["ok"]:
            error = timing["check"]["relative_error"]
            failures[name] = f"wrong result: relative error {error:.3e} > {tolerance:.0e}"

    # Speedups only against baselines that ran and computed the right thing.
    speedup = {}
    if "minivllm" in results and "minivllm" not in failures:
        mine = results["minivllm"]["us"]
        speedup = {b: results[b]["us"] / mine for b in BASELINES
                   if b in results and b not in failures}
    return {
        "model": model.name, "dtype": dtype_name, "rows": rows, "hidden": hidden,
        "num_heads": heads, "num_kv_heads": kv_heads, "head_dim": head_dim,
        "features": features, "bytes_per_call": moved, "flops_per_call": flops,
        "floor_us": floor, "calls_per_graph": calls, "distinct_weight_bytes":
        calls * features * hidden * element_size, "working_set_bytes": calls * moved,
        "impls": results, "failures": failures, "skipped": skipped, "speedup": speedup,
    }


# ---------------------------------------------------------------------------------------------
# host cost of one eager call
# ---------------------------------------------------------------------------------------------
def host_cost(model, dtype_name, kwargs):
    """µs per eager call at M = 1 (no graph): host time alone (bursts issued while a spin kernel
    holds the GPU, timing.host_us_per_call, as benchmarks/host_cost.py measures it), and the
    steady rate of back-to-back calls (which the GPU bounds where it is the slower side)."""
    dtype = TORCH_DTYPES[dtype_name]
    features = qkv_features(model)
    x = torch.randn(1, model.hidden, device="cuda", dtype=dtype)
    gamma = torch.rand(model.hidden, device="cuda", dtype=dtype) + 0.5
    weight = torch.randn(features, model.hidden, device="cuda", dtype=dtype)
    weight_t = weight.t()
    args = (model.num_heads, model.num_kv_heads)
    out = tuple(torch.empty(1, h, model.head_dim, device="cuda", dtype=dtype)
                for h in (model.num_heads, model.num_kv_heads, model.num_kv_heads))
    sequences = {
        "minivllm": lambda: minivllm.FusedRMSNormQKV.forward(x, gamma, weight_t, *args, **kwargs),
        "minivllm_out": lambda: minivllm.FusedRMSNormQKV.forward(x, gamma, weight_t, *args,
                                                                 out=out, **kwargs),
        "torch": lambda: torch_qkv(x, gamma, weight, *args, model.head_dim),
    }
    costs, loop_costs, gpu_costs = {}, {}, {}
    for name, fn in sequences.items():
        loop_costs[name] = bt.loop_us_per_call(fn, HOST_LOOP_CALLS, torch.cuda.synchronize)
        costs[name] = bt.host_us_per_call(torch, fn, HOST_BURSTS)[0]
        gpu_costs[name] = gpu_us_per_eager_call(fn)
    return {"model": model.name, "dtype": dtype_name, "bursts": HOST_BURSTS,
            "calls_per_burst": bt.HOST_BURST_CALLS, "loop_calls": HOST_LOOP_CALLS,
            "us": costs, "loop_us": loop_costs, "gpu_us": gpu_costs}


def gpu_us_per_eager_call(fn):
    """The GPU's own µs per call of the eager sequence fn, its calls back to back: the GPU is
    held by a spin while the host queues them, then runs them between two events."""
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    if hasattr(torch.cuda, "_sleep"):
        torch.cuda._sleep(HOST_SPIN_CYCLES)
    start.record()
    for _ in range(HOST_CALLS):
        fn()
    stop.record()
    torch.cuda.synchronize()
    return start.elapsed_time(stop) * 1e3 / HOST_CALLS


# ---------------------------------------------------------------------------------------------
# reporting
# ---------------------------------------------------------------------------------------------
def model_line(r):
    weight_mib = r["features"] * r["hidden"] * bt.ELEMENT_SIZE[r["dtype"]] / 2**20
    return (f"{r['model']} (H {r['hidden']}, {r['num_heads']}/{r['num_kv_heads']} heads, "
            f"hd {r['head_dim']}, N {r['features']}, W {weight_mib:.1f} MiB), {r['dtype']}")


def cell(r, name):
    if name in r["failures"] and name not in r["impls"]:
        return f"{'failed':>15s}"
    if name not in r["impls"]:
        return f"{'-':>15s}"
    us = r["impls"][name]["us"]
    if name in r["failures"]:
        return f"{us:8.2f} WRONG"
    return f"{us:8.2f} {r['speedup'][name]:5.2f}x" if name in r["speedup"] else f"{us:8.2f}      "


def print_table(results, shown_impls):
    baselines = [b for b in BASELINES + ("engine",) if b in shown_impls
                 and any(b in r["impls"] or b in r["failures"] for r in results)]
    print("\nµs per call (graph-timed median), each layer its own weights. floor = max(bytes / "
          "copy bandwidth, FLOPs / GEMM rate); %floor = floor / minivllm µs. For each baseline: "
          "its µs and minivllm's speedup over it (baseline µs / minivllm µs; '-': not run at "
          "this shape).")
    groups = {}
    for r in results:
        groups.setdefault((r["dtype"], r["model"]), []).append(r)
    for rows in groups.values():
        print(f"\n{model_line(rows[0])}")
        print(f"  {'M':>6s} {'calls':>5s} {'floor':>8s} {'minivllm':>9s} {'%floor':>6s}"
              + "".join(f" {SHORT[b]:>15s}" for b in baselines))
        for r in rows:
            mine = r["impls"].get("minivllm")
            if mine is None:
                mine_text = f"{'failed':>9s} {'':6s}"
            else:
                mine_text = f"{mine['us']:9.2f} {mine['fraction_of_floor']:6.1%}"
                if "minivllm" in r["failures"]:
                    mine_text = f"{mine['us']:9.2f} {'WRONG':>6s}"
            print(f"  {r['rows']:6d} {r['calls_per_graph']:5d} {r['floor_us']:8.2f} {mine_text}"
                  + "".join(f" {cell(r, b)}" for b in baselines))
    failed = [(r, name, why) for r in results for name, why in r["failures"].items()]
    if failed:
        print("\nFailures:")
        for r, name, why in failed:
            print(f"  {r['model']} {r['dtype']} M={r['rows']} {SHORT[name]}: {why}")


def print_host(host):
    if not host:
        return
    print("\nHost cost of one eager call at M = 1 (torch tensors; µs of host time per call, "
          "bursts issued while the GPU is held by a spin kernel; in brackets: back-to-back calls "
          "/ the GPU's own µs per call):")
    for h in host:
        us, loop, gpu = h["us"], h["loop_us"], h["gpu_us"]

        def fmt(name):
            return f"{us[name]:6.2f} ({loop[name]:6.2f} / {gpu[name]:6.2f})"

        print(f"  {h['model']:13s} {h['dtype']}  minivllm {fmt('minivllm')}   minivllm out= "
              f"{fmt('minivllm_out')}   torch rms_norm + linear + split {fmt('torch')}")


def minivllm_us(r):
    """minivllm's µs at a shape, or None where it failed or computed a wrong result."""
    if "minivllm" in r["failures"] or "minivllm" not in r["impls"]:
        return None
    return r["impls"]["minivllm"]["us"]


def slower_shapes(results):
    """The shapes where some correct baseline was at least as fast as minivllm (or minivllm
    failed), worst first: {model, dtype, rows, baseline (the fastest), speedup, beaten_by}."""
    slower = []
    for r in results:
        if minivllm_us(r) is None:
            slower.append({"model": r["model"], "dtype": r["dtype"], "rows": r["rows"],
                           "baseline": None, "speedup": 0.0, "beaten_by": []})
            continue
        beaten_by = sorted((b for b, x in r["speedup"].items() if x <= 1.0), key=r["speedup"].get)
        if beaten_by:
            fastest = beaten_by[0]
            slower.append({"model": r["model"], "dtype": r["dtype"], "rows": r["rows"],
                           "baseline": fastest, "speedup": r["speedup"][fastest],
                           "minivllm_us": minivllm_us(r),
                           "baseline_us": r["impls"][fastest]["us"], "beaten_by": beaten_by})
    return sorted(slower, key=lambda v: v["speedup"])


def gemm_targets(results, impl):
    """The GEMM-engine issue's targets for one implementation (minivllm's table, or the engine
    forced), each as (met, shapes checked, the failing shapes): M <= 256: >= 1.10x cuBLAS alone;
    M <= 16 with W >= 24 MiB: >= 85% of the floor; M >= 512: >= 0.98x cuBLAS and >= 1.02x the
    faster torch.compile mode; nowhere slower than torch eager or torch.compile."""
    checks = {"m<=256 vs cuBLAS >= 1.10": [], "m<=16, W>=24MiB: floor >= 0.85": [],
              "m>=512 vs cuBLAS >= 0.98": [], "m>=512 vs compile >= 1.02": [],
              "not slower than torch / compile": []}
    for r in results:
        mine = r["impls"].get(impl)
        if mine is None or impl in r["failures"]:
            continue
        us = mine["us"]
        shape = f"{r['model']} {r['dtype']} M={r['rows']}"
        ratio = lambda b: r["impls"][b]["us"] / us if b in r["impls"] and b not in r["failures"] else None
        weight_bytes = r["features"] * r["hidden"] * (2 if r["dtype"] in ("bf16", "fp16") else 4)
        cublas = ratio("cublas")
        if r["rows"] <= 256 and cublas is not None:
            checks["m<=256 vs cuBLAS >= 1.10"].append((shape, cublas, cublas >= 1.10))
        if r["rows"] <= 16 and weight_bytes >= 24 * 2**20:
            frac = r["floor_us"] / us
            checks["m<=16, W>=24MiB: floor >= 0.85"].append((shape, frac, frac >= 0.85))
        if r["rows"] >= 512 and cublas is not None:
            checks["m>=512 vs cuBLAS >= 0.98"].append((shape, cublas, cublas >= 0.98))
        compiled = [x for x in (ratio("compile"), ratio("max_autotune")) if x is not None]
        if r["rows"] >= 512 and compiled:
            checks["m>=512 vs compile >= 1.02"].append((shape, min(compiled), min(compiled) >= 1.02))
        peers = [x for x in (ratio("torch"), *compiled) if x is not None]
        if peers:
            checks["not slower than torch / compile"].append((shape, min(peers), min(peers) >= 1.0))
    return {name: {"met": all(ok for _, _, ok in rows) if rows else None, "checked": len(rows),
                   "worst": min((v for _, v, _ in rows), default=None),
                   "failing": [f"{s} {v:.2f}" for s, v, ok in sorted(rows, key=lambda t: t[1]) if not ok]}
            for name, rows in checks.items()}


def print_targets(targets):
    for impl, checks in targets.items():
        print(f"\nGEMM-engine targets, {impl}:")
        for name, c in checks.items():
            state = "n/a" if c["met"] is None else ("met" if c["met"] else "NOT met")
            worst = "" if c["worst"] is None else f", worst {c['worst']:.2f}"
            print(f"  {name:34s} {state:7s} ({c['checked']} shapes{worst}; "
                  f"{len(c['failing'])} failing)")


def print_slower(slower, shapes):
    print(f"\nminivllm is the fastest at {shapes - len(slower)} of {shapes} shapes.")
    if not slower:
        return
    print("Shapes where it is not (worst first; the fastest baseline, and every baseline at least "
          "as fast):")
    for v in slower[:30]:
        if v["baseline"] is None:
            print(f"    {v['model']:13s} {v['dtype']} M={v['rows']:<6d} minivllm failed")
            continue
        print(f"    {v['model']:13s} {v['dtype']} M={v['rows']:<6d} minivllm "
              f"{v['minivllm_us']:9.2f} µs  {SHORT[v['baseline']]:>8s} "
              f"{v['baseline_us']:9.2f} µs  ({v['speedup']:.2f}x)  beaten by "
              + ", ".join(SHORT[b] for b in v["beaten_by"]))
    if len(slower) > 30:
        print(f"    ... {len(slower) - 30} more in the JSON")


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------
def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"models {QUICK_MODELS}, M in {QUICK_M}, {QUICK_DTYPES}; "
                             f"max-autotune at M in {QUICK_AUTOTUNE_M} only")
    parser.add_argument("--models", nargs="+",
                        help=f"model presets (default {FULL_MODELS}); 'all' for every preset; or a "
                             "shape H:HEADS:KV_HEADS:HEAD_DIM")
    parser.add_argument("--dtypes", nargs="+", help=f"bf16 fp16 (default {FULL_DTYPES})")
    parser.add_argument("--m", nargs="+", help=f"M values (default {FULL_M})")
    parser.add_argument("--impls", nargs="+",
                        help=f"implementations to time (default all: {', '.join(IMPLS)}); "
                             "minivllm is always timed")
    bt.add_graph_run_args(parser, DEFAULT_OUT)
    bt.add_kernel_args(parser)
    parser.add_argument("--no-compile", action="store_true",
                        help="skip both torch.compile baselines")
    bt.add_compile_mode_arg(parser)
    parser.add_argument("--autotune-m", nargs="+",
                        help=f"M values for max-autotune (default {FULL_AUTOTUNE_M}, quick "
                             f"{QUICK_AUTOTUNE_M}); 'none' to skip it")
    parser.add_argument("--autotune-dtypes", nargs="+",
                        help=f"dtypes for max-autotune (default {AUTOTUNE_DTYPES})")
    parser.add_argument("--autotune-budget", type=float,
                        help=f"seconds of max-autotune (compile + timing) after which its "
                             f"remaining shapes are skipped (default {FULL_AUTOTUNE_BUDGET_S}, "
                             f"quick {QUICK_AUTOTUNE_BUDGET_S})")
    parser.add_argument("--no-host", action="store_true", help="skip the host-cost measurement")
    parser.add_argument("--after-fill", action="store_true",
                        help="time each call after a fill of a small buffer (a kernel that lets "
                             "nothing overlap, as the GEMM before the QKV projection in a model) "
                             "and subtract the fill's own time, instead of after a call of its own")
    parser.add_argument("--progress", choices=["auto", "on", "off"], default="auto",
                        help="progress bar on stderr (auto: when stderr is a terminal)")
    args = parser.parse_args(argv)
    try:
        models = flat_names(args.models) if args.models else list(
            QUICK_MODELS if args.quick else FULL_MODELS)
        if "all" in models:
            models = list(MODELS)
        args.models = [find_model(name) if ":" not in name else parse_qkv_shape(name)
                       for name in dict.fromkeys(models)]
        args.dtypes = list(dict.fromkeys(
            bt.flat_list(args.dtypes, bt.parse_dtype) if args.dtypes else
            (QUICK_DTYPES if args.quick else FULL_DTYPES)))
        args.m = list(dict.fromkeys(bt.flat_list(args.m, int) if args.m else
                                    (QUICK_M if args.quick else FULL_M)))
        if args.autotune_m and flat_names(args.autotune_m) == ["none"]:
            args.autotune_m = []
        else:
            args.autotune_m = (bt.flat_list(args.autotune_m, int) if args.autotune_m else
                               list(QUICK_AUTOTUNE_M if args.quick else FULL_AUTOTUNE_M))
        args.autotune_dtypes = (bt.flat_list(args.autotune_dtypes, bt.parse_dtype)
                                if args.autotune_dtypes else list(AUTOTUNE_DTYPES))
        impls = flat_names(args.impls) if args.impls else list(IMPLS)
        unknown = [name for name in impls if name not in IMPLS]
        if unknown:
            raise ValueError(f"--impls: unknown {unknown} (choose from {', '.join(IMPLS)})")
        args.impls = {"minivllm", *impls}
    except (argparse.ArgumentTypeError, ValueError) as error:
        parser.error(str(error))
    if "fp32" in args.dtypes:
        parser.error("--dtypes: bf16 and fp16 only (the models run in 16-bit)")
    if min(args.m) < 1:
        parser.error("--m takes positive integers")
    if args.autotune_budget is None:
        args.autotune_budget = QUICK_AUTOTUNE_BUDGET_S if args.quick else FULL_AUTOTUNE_BUDGET_S
    if "max_autotune" not in args.impls:
        args.autotune_m = []
    if "compile" not in args.impls and not args.autotune_m:
        args.no_compile = True
    return args


def flat_names(values):
    return [v.lower() for v in bt.flat_list(values, str)]


class Run:
    """What every shape of one run shares: ceilings, compiled functions, the layer pool."""

    def __init__(self, args, l2_bytes, copy_gbps, gemm_tflops, compiled):
        self.kwargs = bt.kernel_kwargs(args, qkv=True)   # --pdl, --path
        self.l2_bytes, self.copy_gbps, self.gemm_tflops = l2_bytes, copy_gbps, gemm_tflops
        self.compiled, self.replays, self.impls = compiled, args.replays, args.impls
        self.autotune_m, self.autotune_dtypes = set(args.autotune_m), set(args.autotune_dtypes)
        self.autotune_budget, self.autotune_seconds = args.autotune_budget, 0.0
        self.pool = LayerPool()
        self.after_fill = args.after_fill


def main(argv=None):
    args = parse_args(argv)
    bt.apply_graph_run_args(args)
    bt.require_cuda("bench_fused_rms_norm_qkv.py")
    kwargs = bt.kernel_kwargs(args, qkv=True)
    started = time.perf_counter()
    gpu = bt.gpu_metadata()
    date = bt.utc_now()
    stem = bt.results_stem("qkv", gpu["name"], date)
    versions = bt.library_versions()
    commit = bt.git_commit(REPO_ROOT)
    print(f"{gpu['name']}, L2 {gpu['l2_cache_bytes'] / 2**20:.0f} MiB, driver {gpu['driver']}, "
          f"torch {versions.get('torch')}, triton {versions.get('triton', 'missing')}, minivllm "
          f"{minivllm.__version__} from {Path(minivllm.__file__).parent}, commit {commit}",
          flush=True)
    print(f"models {', '.join(m.name for m in args.models)}; dtypes {args.dtypes}; M {args.m}; "
          f"{args.replays} replays; calls per graph: >= {bt.MIN_DISTINCT_WEIGHT_BYTES >> 20} MiB "
          f"of distinct weights and >= {bt.L2_MULTIPLE}x L2, cycled until a replay lasts >= "
          f"{bt.MIN_REPLAY_US:g} µs", flush=True)

    rng = np.random.default_rng()
    check_records, check_failures = self_check(args.models, args.dtypes, rng, kwargs)
    if check_failures:
        sys.exit(f"\n*** SELF-CHECK FAILED for {len(check_failures)} case(s): minivllm disagrees "
                 "with the float64 reference. Aborting: timings of a wrong kernel mean nothing.")

    copy_gbps, copy_methods = bt.measure_copy_gbps(args.replays)
    gemm_tflops = {d: bt.measure_gemm_tflops(TORCH_DTYPES[d], args.replays) for d in args.dtypes}
    print(f"device-to-device copy ({bt.COPY_BYTES >> 30} GiB, read + write): {copy_gbps:.0f} GB/s"
          f" (" + ", ".join(f"{k} {v:.0f}" for k, v in copy_methods.items()) + "); GEMM "
          f"{bt.GEMM_SIZE}^3: " + ", ".join(f"{d} {t:.0f} TFLOP/s" for d, t in
                                            gemm_tflops.items()), flush=True)

    compiled, compile_mode = make_compiled(args)
    run = Run(args, gpu["l2_cache_bytes"], copy_gbps, gemm_tflops, compiled)
    print("(* in the progress lines: against the GEMM rate measured at the start; the tables use "
          "the settled ceiling)", flush=True)
    autotune_note = ("off" if "max_autotune" not in compiled else
                     f"dtypes {sorted(run.autotune_dtypes)}, M {sorted(run.autotune_m)}, budget "
                     f"{run.autotune_budget:.0f} s")
    print(f"torch.compile: {compile_mode}; "
          f"max-autotune-no-cudagraphs: {autotune_note}; Triton-1: M <= {TRITON_MAX_M}",
          flush=True)

    # Before the sweep, in a fresh process state.
    if not args.no_host:
        # One pass thrown away: right after the sweep (torch.compile's workers may still be busy)
        # the first model measured here read ~50% high for every implementation, torch included.
        host_cost(args.models[0], args.dtypes[0], kwargs)
    host = [] if args.no_host else [host_cost(model, args.dtypes[0], kwargs)
                                    for model in args.models]

    shapes = [(model, d, m) for d in args.dtypes for model in args.models for m in args.m]
    enabled = {"auto": None, "on": True, "off": False}[args.progress]
    progress = bt.Progress(len(shapes), enabled=enabled)
    results = []
    for index, (model, dtype_name, rows) in enumerate(shapes, 1):
        label = f"{model.name} {dtype_name} M={rows}"
        progress.step(label)
        shape_start = time.perf_counter()
        if index > 1 and shapes[index - 2][2] >= HEAVY_M:
            # After a long GEMM the GPU sits at its power limit and its clocks need about a
            # second to recover: without this pause the next shape (a new model's M = 1, whose
            # minivllm call is timed first) read 3.12 us instead of 2.67 (Qwen2.5-0.5B bf16 after
            # Llama-3-8B M = 16384 on an H200; Qwen3-0.6B 4.12 instead of 4.03).
            time.sleep(SETTLE_S)
        r = bench_shape(model, dtype_name, rows, run)
        torch.cuda.empty_cache()  # the shape's buffers and graph pools, before the next shape's
        r["seconds"] = time.perf_counter() - shape_start
        results.append(r)
        progress.close()
        mine = r["impls"].get("minivllm")
        summary = (f"{mine['us']:9.2f} µs {mine['fraction_of_floor']:6.1%} of floor*"
                   if mine else "   failed")
        print(f"[{index:3d}/{len(shapes)}] {label:28s} x{r['calls_per_graph']:<4d} {summary} | "
              + " ".join(f"{SHORT[b]} {s:.2f}x" for b, s in r["speedup"].items())
              + (f" | failed: {', '.join(SHORT[n] for n in r['failures'])}" if r["failures"]
                 else "") + f" | {r['seconds']:.1f} s", flush=True)
        progress.done = index
    progress.close()

    copy_gbps_end, _ = bt.measure_copy_gbps(args.replays)
    print(f"device-to-device copy at the end: {copy_gbps_end:.0f} GB/s "
          f"({copy_gbps_end / copy_gbps - 1:+.1%} against the start, which the floors use)")
    gemm_ceilings = settle_gemm_ceilings(results, copy_gbps, gemm_tflops)
    for dtype_name, c in gemm_ceilings.items():
        print(f"GEMM ceiling {dtype_name}: {c['used']:.0f} TFLOP/s"
              + (f" ({c['raised_by']} multiplied faster than the {c['measured']:.0f} measured "
                 f"on {bt.GEMM_SIZE}^3)" if c["raised_by"] else " (measured)"))

    print_table(results, args.impls)
    print_host(host)
    autotuned = [f"{r['model']} {r['dtype']} M={r['rows']}" for r in results
                 if "max_autotune" in r["impls"]]
    autotune_skipped = sorted({r["skipped"]["max_autotune"] for r in results
                               if "max_autotune" in r["skipped"]})
    if "max_autotune" in compiled:
        print(f"\nmax-autotune covered {len(autotuned)} shapes ({run.autotune_seconds:.0f} s): "
              + (", ".join(autotuned) or "none")
              + (f"; skipped elsewhere: {'; '.join(autotune_skipped)}" if autotune_skipped
                 else ""))
    slower = slower_shapes(results)
    print_slower(slower, len(results))
    targets = {impl: gemm_targets(results, impl) for impl in ("minivllm", "engine")
               if any(impl in r["impls"] for r in results)}
    print_targets(targets)

    report = {
        "kind": "bench-qkv",
        "gemm_targets": targets,
        "gpu": gpu,
        "date": date.isoformat(timespec="seconds"),
        "commit": commit,
        "versions": versions,
        "argv": sys.argv[1:] if argv is None else list(argv),
        "sweep": {"models": [m._asdict() for m in args.models], "dtypes": args.dtypes,
                  "m": args.m, "quick": args.quick, "impls": sorted(args.impls),
                  "kernel_kwargs": {k: str(v) for k, v in kwargs.items()}},
        "method": {
            "timing": "CUDA graph of N calls, each with its own W, γ, x and outputs; CUDA events "
                      "around each replay; µs per call = median replay / N",
            "after_fill": ("each call after a fill of a 4 KiB buffer (nothing overlaps it), the "
                           "fill's own µs per call taken off" if args.after_fill else False),
            "settle": f"{SETTLE_S:g} s idle before a shape that follows one with M >= {HEAVY_M} "
                      "(the GPU's clocks recover from its power limit)",
            "replays": args.replays, "eps": EPS, "min_replay_us": bt.MIN_REPLAY_US,
            "min_distinct_weight_bytes": bt.MIN_DISTINCT_WEIGHT_BYTES,
            "l2_multiple": bt.L2_MULTIPLE, "memory_cap_bytes": bt.QKV_MEMORY_CAP_BYTES,
            "bytes_moved": "W [N, H] + γ [H] + x [M, H] read, q, k, v [M, N] written",
            "floor": "max(bytes / copy bandwidth, 2·M·N·H / GEMM rate)",
            "minivllm_call": "FusedRMSNormQKV.forward(x, γ, W.t(), heads, kv_heads, eps, "
                             "out=(q, k, v))",
            "labels": LABELS,
            "compile": compile_mode,
            "max_autotune": {"enabled": "max_autotune" in compiled,
                             "dtypes": sorted(run.autotune_dtypes), "m": sorted(run.autotune_m),
                             "budget_s": run.autotune_budget,
                             "seconds": run.autotune_seconds, "covered": autotuned,
                             "skipped": autotune_skipped},
            "triton_1_max_m": TRITON_MAX_M,
            "tolerance": {"minivllm": reference.QKV_TOLERANCE, "baselines": BASELINE_TOLERANCE},
            "host_cost": f"eager calls at M = 1, before the sweep. us: "
                         f"host time alone, median of {HOST_BURSTS} bursts of "
                         f"{bt.HOST_BURST_CALLS} calls issued while a spin kernel holds the GPU "
                         f"(no call waits for the GPU). loop_us: {HOST_LOOP_CALLS} back-to-back "
                         "calls, synchronized once at the end (bounded by the GPU where it is "
                         "the slower side). gpu_us: the GPU's own time per call, calls back to "
                         "back",
        },
        "ceilings": {"copy_gbps": copy_gbps, "copy_gbps_at_end": copy_gbps_end,
                     "copy_by_method": copy_methods, "copy_bytes": bt.COPY_BYTES,
                     "gemm_tflops_measured": gemm_tflops, "gemm_size": bt.GEMM_SIZE,
                     "gemm_tflops": {d: c["used"] for d, c in gemm_ceilings.items()},
                     "gemm_raised_by": {d: c["raised_by"] for d, c in gemm_ceilings.items()},
                     "floor_note": "floors use copy_gbps and gemm_tflops (the measured rate, "
                                   "or the fastest multiply seen in the run where faster)"},
        "self_check": check_records,
        "results": results,
        "host_cost": host,
        "slower_than_a_baseline": slower,
        "total_seconds": time.perf_counter() - started,
    }
    title = f"minivllm FusedRMSNormQKV on {gpu['name']}, {date:%Y-%m-%d}, commit {commit[:7]}"
    bt.write_results(args.out, stem, report, None if args.no_plot or not results else
                     lambda path: plot_qkv.draw(results, path, title))
    print(f"total {time.perf_counter() - started:.0f} s")
    wrong = [r for r in results if "minivllm" in r["failures"]]
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
