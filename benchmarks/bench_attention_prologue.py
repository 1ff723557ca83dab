#!/usr/bin/env python3
"""Benchmark minivllm.attention_prologue (residual add, RMSNorm, QKV (+bias), per-head q/k norm,
RoPE, paged KV-cache write) on one GPU against the same chain in torch.

Implementations, timed in the same run and the same way (CUDA graph replay, each call its own
layer: W, γ, bias, q/k norm weights, input, residual and outputs; one paged cache per call):
  minivllm      minivllm.attention_prologue(x, γ, W, ..., residual=r, qkv_bias, q/k norm
                weights, positions, cos_sin_cache, k_cache, v_cache, slot_mapping, out=q)
  fused         minivllm with the whole prologue in the GEMM engine's kernel forced
                (_path="engine_prologue", sm_90; where that path cannot take the shape, the table's;
                M <= 256 only)
  qkv_op        minivllm.FusedRMSNormQKV.forward(x, γ, W.t(), ..., residual=r, out=(q, k, v)):
                the QKV op alone, no bias, norm, RoPE or cache (the target's yardstick)
  torch         x + r, F.rms_norm, F.linear (+ bias), split, F.rms_norm of q and k, RoPE (neox,
                in the dtype), index_copy_ of k and v into the cache
  compile       torch.compile(fullgraph=True, dynamic=False) of that chain: each shape compiled
                for itself, as a model compiles its fixed sizes (--compile-dynamic: the default
                mode, whose sizes turn dynamic after the first shape: slower kernels)
  qkv+torch     minivllm's QKV op (+ bias in torch), then the torch chain from the split on
Models: each shape with the prologue its family uses (Qwen3: q/k norm; Qwen2.5: bias; Llama:
neither); the cos/sin cache holds 8192 positions; positions and slots are random (distinct
slots). Correctness: every implementation's last replayed call is checked against the float64
reference (minivllm.reference.attention_prologue + write_kv_cache) on a sample of rows: q and
the cache rows written.

usage: python3 benchmarks/bench_attention_prologue.py [--models qwen3-0.6b ...] [--dtypes bf16]
           [--m 1 16 256] [--out DIR] [--no-compile] [--compile-dynamic] [--no-plot]
Writes DIR/prologue-<gpu>-<date>.json and .png (DIR: benchmarks/results).
"""

import argparse
import math
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

try:
    import torch
except ImportError:
    sys.exit("bench_attention_prologue.py needs PyTorch with CUDA")

import minivllm
from minivllm import reference
from minivllm.bench import check as checks
from minivllm.bench import timing as bt
from minivllm.bench.baselines import prologue_after_qkv, torch_prologue
from minivllm.bench.models import find_model, qkv_features

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = Path(__file__).resolve().parent / "results"
EPS = bt.EPS
MODELS = ("qwen3-0.6b", "llama-3-8b", "qwen2.5-1.5b", "qwen3-4b")
FULL_M = (1, 2, 4, 8, 16, 32, 64, 256, 1024, 4096)
IMPLS = ("minivllm", "fused", "qkv_op", "torch", "compile", "qkv+torch")
TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
MAX_POSITION = 8192
BLOCK_SIZE = 16
FUSED_MAX_ROWS = 256  # the engine's one-kernel prologue forced up to here (the table: <= 16 rows)
BASELINE_TOLERANCE = 3e-2  # torch rounds to the dtype after every step of the chain


def features_of(model):
    """(bias, qk_norm) of a model family's attention prologue."""
    name = model.name.lower()
    return name.startswith("qwen2"), name.startswith("qwen3")


def cos_sin_table(head_dim, dtype, device):
    inv = 1e6 ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.arange(MAX_POSITION, dtype=torch.float64)[:, None] * inv[None, :]
    return torch.cat((angles.cos(), angles.sin()), -1).to(device=device, dtype=dtype)


class Layer:
    """One call's tensors (its own weights, input, residual, cache and outputs)."""

    def __init__(self, model, rows, dtype, device, bias, qk_norm, table):
        H, D = model.hidden, model.head_dim
        nq, nkv = model.num_heads, model.num_kv_heads
        N = qkv_features(model)

        def rand(*shape, scale=1.0):
            return (torch.randn(*shape, device=device) * scale).to(dtype)

        self.x, self.r = rand(rows, H), rand(rows, H)
        self.g = (torch.rand(H, device=device) + 0.5).to(dtype)
        self.W = rand(N, H, scale=1 / math.sqrt(H))
        self.Wt = self.W.t()
        self.bias = rand(N, scale=0.2) if bias else None
        self.qn = (torch.rand(D, device=device) + 0.5).to(dtype) if qk_norm else None
        self.kn = (torch.rand(D, device=device) + 0.5).to(dtype) if qk_norm else None
        blocks = (rows + BLOCK_SIZE - 1) // BLOCK_SIZE + 1
        self.k_cache = torch.full((blocks, BLOCK_SIZE, nkv, D), math.nan, device=device,
                                  dtype=dtype)
        self.v_cache = torch.full_like(self.k_cache, math.nan)
        self.slots = torch.randperm(blocks * BLOCK_SIZE, device=device)[:rows]
        self.positions = torch.randint(0, MAX_POSITION, (rows,), device=device)
        self.table = table
        self.q = torch.full((rows, nq, D), math.nan, device=device, dtype=dtype)
        self.qkv = torch.full((rows, N), math.nan, device=device, dtype=dtype)
        self.res_out = torch.full_like(self.x, math.nan)
        self.heads = (nq, nkv, D)

    def minivllm(self, **path):
        return minivllm.attention_prologue(
            self.x, self.g, self.W, self.heads[0], self.heads[1], EPS, residual=self.r,
            qkv_bias=self.bias, q_norm_weight=self.qn, k_norm_weight=self.kn,
            positions=self.positions, cos_sin_cache=self.table, k_cache=self.k_cache,
            v_cache=self.v_cache, slot_mapping=self.slots, out=self.q,
            residual_out=self.res_out, **path)[0]

    def qkv_op(self):
        nq, nkv, D = self.heads
        q, k, v = self.qkv.split([nq * D, nkv * D, nkv * D], -1)
        out = (q.unflatten(-1, (nq, D)), k.unflatten(-1, (nkv, D)), v.unflatten(-1, (nkv, D)))
        minivllm.FusedRMSNormQKV.forward(self.x, self.g, self.Wt, nq, nkv, EPS, residual=self.r,
                                         out=out, residual_out=self.res_out)
        return out[0]

    def torch_args(self):
        return (self.x, self.r, self.g, self.W, self.bias, *self.heads, self.qn, self.kn,
                self.positions, self.table, self.k_cache, self.v_cache, self.slots)

    def qkv_then_torch(self):
        nq, nkv, D = self.heads
        self.qkv_op()
        qkv = self.qkv if self.bias is None else self.qkv + self.bias
        return prologue_after_qkv(qkv, nq, nkv, D, self.qn, self.kn, self.positions, self.table,
                                  self.k_cache, self.v_cache, self.slots)


def to64(t):
    return t.detach().cpu().to(torch.float64).numpy()


def check(layer, q, picked, dtype_name, tolerance, with_cache=True):
    """q (rows `picked`) and, with_cache, the cache rows at their slots against float64."""
    nq, nkv, D = layer.heads
    ref = reference.attention_prologue(
        to64(layer.x)[picked], to64(layer.g), to64(layer.W), nq, nkv, EPS,
        residual=to64(layer.r)[picked], qkv_bias=None if layer.bias is None else to64(layer.bias),
        q_norm_weight=None if layer.qn is None else to64(layer.qn),
        k_norm_weight=None if layer.kn is None else to64(layer.kn),
        positions=to64(layer.positions)[picked].astype(np.int64),
        cos_sin_cache=to64(layer.table), dtype=bt.DTYPE_NAMES[dtype_name])
    errors = {"q": reference.relative_error(to64(q)[picked], ref[0])}
    if with_cache:
        slots = layer.slots.cpu().numpy()[picked]
        flat_k = to64(layer.k_cache).reshape(-1, nkv, D)
        flat_v = to64(layer.v_cache).reshape(-1, nkv, D)
        errors["k_cache"] = reference.relative_error(flat_k[slots], ref[1])
        errors["v_cache"] = reference.relative_error(flat_v[slots], ref[2])
    worst = max(errors.values())
    return {"ok": bool(worst <= tolerance), "relative_error": worst, "errors": errors}


def bench_shape(model, dtype_name, rows, run):
    dtype = TORCH_DTYPES[dtype_name]
    bias, qk_norm = features_of(model)
    element = bt.ELEMENT_SIZE[dtype_name]
    N = qkv_features(model)
    moved = bt.qkv_bytes(rows, model.hidden, N, element) + 2 * rows * model.hidden * element
    flops = bt.qkv_flops(rows, model.hidden, N)
    floor = bt.floor_us(moved, flops, run.copy_gbps, run.gemm_tflops[dtype_name])
    calls = bt.qkv_calls_per_graph(rows, model.hidden, N, element, run.l2_bytes)
    table = cos_sin_table(model.head_dim, dtype, "cuda")
    layers = [Layer(model, rows, dtype, "cuda", bias, qk_norm, table) for _ in range(calls)]
    picked = checks.sample_rows(rows)
    impls = {
        "minivllm": lambda i: layers[i].minivllm(),
        "qkv_op": lambda i: layers[i].qkv_op(),
        "torch": lambda i: torch_prologue(*layers[i].torch_args())[0],
        "qkv+torch": lambda i: layers[i].qkv_then_torch(),
    }
    if rows <= FUSED_MAX_ROWS:
        impls["fused"] = lambda i: layers[i].minivllm(_path="engine_prologue")
    if run.compiled is not None:
        impls["compile"] = lambda i: run.compiled(*layers[i].torch_args())[0]
    results, failures = {}, {}
    for name in IMPLS:
        if name not in impls:
            continue
        last = layers[-1]
        for t in (last.k_cache, last.v_cache, last.q, last.qkv):
            t.fill_(math.nan)
        tolerance = (reference.PROLOGUE_TOLERANCE[bt.DTYPE_NAMES[dtype_name]]
                     if name in ("minivllm", "fused") else BASELINE_TOLERANCE)

        def checker(q, name=name, tolerance=tolerance):
            if name == "qkv_op":  # not the prologue: only that it ran
                return {"ok": bool(torch.isfinite(q).all().item()), "relative_error": 0.0}
            return check(last, q, picked, dtype_name, tolerance)
        try:
            timing = bt.time_per_call(impls[name], calls, run.replays, checker)
        except Exception as error:
            failures[name] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
            torch.cuda.empty_cache()
            continue
        timing["fraction_of_floor"] = floor / timing["us"]
        results[name] = timing
        if not timing["check"]["ok"]:
            failures[name] = f"wrong result: {timing['check']}"
    ratios = {}
    if "minivllm" in results and "minivllm" not in failures:
        mine = results["minivllm"]["us"]
        ratios = {b: results[b]["us"] / mine for b in results if b != "minivllm"
                  and b not in failures}
    return {"model": model.name, "dtype": dtype_name, "rows": rows, "hidden": model.hidden,
            "num_heads": model.num_heads, "num_kv_heads": model.num_kv_heads,
            "head_dim": model.head_dim, "bias": bias, "qk_norm": qk_norm,
            "bytes_per_call": moved, "flops_per_call": flops, "floor_us": floor,
            "calls_per_graph": calls, "impls": results, "failures": failures,
            "speedup": ratios}


def print_table(results):
    print("\nµs per call (graph-timed median; each call its own layer); in brackets: "
          "that time / minivllm's (> 1: minivllm faster)")
    print(f"{'model':14s} {'dtype':5s} {'M':>5s} {'floor':>7s} " +
          " ".join(f"{n:>17s}" for n in IMPLS) + "   prologue/qkv_op")
    for r in results:
        cells = []
        for n in IMPLS:
            t = r["impls"].get(n)
            if t is None:
                cells.append(f"{'failed' if n in r['failures'] else '-':>17s}")
            elif n in r["failures"]:
                cells.append(f"{t['us']:9.2f} WRONG  ")
            elif n in r["speedup"]:
                cells.append(f"{t['us']:9.2f} ({r['speedup'][n]:4.2f}x)")
            else:
                cells.append(f"{t['us']:9.2f}        ")
        over = (r["impls"]["minivllm"]["us"] / r["impls"]["qkv_op"]["us"]
                if "minivllm" in r["impls"] and "qkv_op" in r["impls"] else float("nan"))
        print(f"{r['model']:14s} {r['dtype']:5s} {r['rows']:5d} {r['floor_us']:7.2f} "
              + " ".join(cells) + f"   {over:5.2f}")


def targets(results):
    """The issue's op-level targets, per shape where they apply."""
    lines = []
    for r in results:
        s, t = r["speedup"], r["impls"]
        if "minivllm" not in t or "minivllm" in r["failures"]:
            continue
        if r["rows"] <= 16 and "qkv_op" in t:
            over = t["minivllm"]["us"] / t["qkv_op"]["us"]
            lines.append((r["model"], r["dtype"], r["rows"], "prologue / QKV op <= 1.15",
                          over, over <= 1.15))
        if r["rows"] == 1:
            for name, want in (("torch", 3.0), ("compile", 1.5)):
                if name in s:
                    lines.append((r["model"], r["dtype"], 1, f"speedup vs {name} >= {want}",
                                  s[name], s[name] >= want))
    return [{"model": m, "dtype": d, "rows": M, "target": what, "value": v, "met": ok}
            for m, d, M, what, v, ok in lines]


def write_plot(results, path, title):
    plt = bt.load_pyplot()
    if plt is None:
        return None
    models = list(dict.fromkeys((r["model"], r["dtype"]) for r in results))
    fig, axes = plt.subplots(1, len(models), figsize=(4.5 * len(models), 4), squeeze=False)
    for ax, (model, dtype) in zip(axes[0], models):
        rs = [r for r in results if r["model"] == model and r["dtype"] == dtype]
        for name in IMPLS:
            pts = [(r["rows"], r["impls"][name]["us"]) for r in rs if name in r["impls"]]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=name)
        ax.plot([r["rows"] for r in rs], [r["floor_us"] for r in rs], "k--", label="floor")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"{model} {dtype}")
        ax.set_xlabel("M (tokens)")
        ax.set_ylabel("µs per call")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    return bt.save_figure(plt, fig, path, title)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--dtypes", nargs="+", default=["bf16"])
    parser.add_argument("--m", nargs="+", default=[str(m) for m in FULL_M])
    parser.add_argument("--no-compile", action="store_true")
    bt.add_compile_mode_arg(parser)
    bt.add_graph_run_args(parser, DEFAULT_OUT)
    args = parser.parse_args(argv)
    bt.apply_graph_run_args(args)
    bt.require_cuda("bench_attention_prologue.py")
    models = [find_model(n) for n in bt.flat_list(args.models, str)]
    dtypes = bt.flat_list(args.dtypes, bt.parse_dtype)
    ms = bt.flat_list(args.m, int)
    started = time.perf_counter()
    gpu, date, commit = bt.gpu_metadata(), bt.utc_now(), bt.git_commit(REPO_ROOT)
    print(f"{gpu['name']}, driver {gpu['driver']}, torch {torch.__version__}, commit {commit}",
          flush=True)
    copy_gbps, _ = bt.measure_copy_gbps(args.replays)
    gemm = {d: bt.measure_gemm_tflops(TORCH_DTYPES[d], args.replays) for d in dtypes}
    print(f"copy {copy_gbps:.0f} GB/s; GEMM " + ", ".join(f"{d} {v:.0f} TFLOP/s"
                                                         for d, v in gemm.items()), flush=True)

    compile_kwargs, compile_mode = bt.compile_options(args, fullgraph=True)
    if not args.no_compile:
        bt.raise_compile_limits(256)  # dynamic=False: one compilation per (model, dtype, M)
    run = SimpleNamespace(copy_gbps=copy_gbps, gemm_tflops=gemm, l2_bytes=gpu["l2_cache_bytes"],
                          replays=args.replays, compiled=None if args.no_compile else
                          torch.compile(torch_prologue, **compile_kwargs))
    results = []
    for d in dtypes:
        for model in models:
            for rows in ms:
                t0 = time.perf_counter()
                r = bench_shape(model, d, rows, run)
                torch.cuda.empty_cache()
                results.append(r)
                print(f"{model.name:14s} {d} M={rows:5d}: " + ", ".join(
                    f"{n} {t['us']:.2f}" for n, t in r["impls"].items())
                    + (f" | FAILED {r['failures']}" if r["failures"] else "")
                    + f" | {time.perf_counter() - t0:.1f} s", flush=True)
    print_table(results)
    met = targets(results)
    print("\nop-level targets:")
    for t in met:
        print(f"  {t['model']:14s} {t['dtype']} M={t['rows']:<3d} {t['target']:28s} "
              f"{t['value']:6.2f}  {'MET' if t['met'] else 'NOT MET'}")
    report = {"kind": "bench-prologue", "gpu": gpu, "date": date.isoformat(timespec="seconds"),
              "commit": commit, "versions": bt.library_versions(),
              "argv": sys.argv[1:] if argv is None else list(argv),
              "compile": "off" if args.no_compile else compile_mode,
              "ceilings": {"copy_gbps": copy_gbps, "gemm_tflops": gemm},
              "method": {"timing": "CUDA graph of N calls, each its own layer; median replay / N",
                         "bytes_moved": "W + γ + x + residual read, q, k, v and the new residual "
                                        "written", "tolerance_baselines": BASELINE_TOLERANCE},
              "results": results, "targets": met,
              "total_seconds": time.perf_counter() - started}
    stem = bt.results_stem("prologue", gpu["name"], date)
    bt.write_results(args.out, stem, report, None if args.no_plot else lambda p: write_plot(
        results, p, f"attention prologue on {gpu['name']} ({date:%Y-%m-%d}, {commit[:12]})"))
    return 1 if any("minivllm" in r["failures"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
