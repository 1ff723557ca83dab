#!/usr/bin/env python3
"""Benchmark minivllm.rms_norm and minivllm.fused_add_rms_norm against PyTorch on one GPU.

Every implementation is timed the same way:
  * N sets of input and output buffers are made, N chosen so that together they span at least 4x
    the L2 cache, so every call streams its data from HBM as it does inside a model (N is clamped
    to [2, 4000] and the buffers to about 4 GiB; the N used is printed and recorded, with a '*'
    where even 4000 calls fit in L2). G calls cycling through the N sets are captured into one
    CUDA graph; G is N or, where N calls take under --min-replay-us (2000 µs), the multiple of N
    that takes that long, so the replay's own start-up is not charged to a few calls.
  * After a warm-up, the graph is replayed; µs per call = median replay time / G, from CUDA
    events. No Python or launch overhead sits between calls, so M=1 shows the kernel's latency.
  * A device-to-device copy of 2 GiB, timed the same way in the same run, is the bandwidth
    ceiling; bandwidth is reported as a fraction of it.
Baselines: torch.nn.functional.rms_norm; Hugging Face's RMSNorm, eager and torch.compile'd; for
the fused op, x + r then F.rms_norm, eager and torch.compile'd; Liger-Kernel's Triton kernels for
both ops where liger_kernel imports; torch.compile compiles each shape and dtype for itself
(minivllm.bench.timing.compile_options; --compile-dynamic: its default mode). minivllm is timed
twice: as --pdl asks, and with PDL off (pdl=False; a norm in a model follows a GEMM, whose tail
PDL cannot overlap as it does a chain of norms), and each is compared with the best baseline. minivllm's output is checked
against the float64 reference (minivllm.reference, on a sample of rows) for every shape, before
timing (an eager call) and after (the graph's last call); a wrong result aborts the run.
The report gives each shape's fraction of the copy bandwidth (the floor of a memory-bound op) and
every baseline's time and minivllm's speedup over it.

usage: python3 benchmarks/bench_rms_norm.py [--quick] [--dtypes bf16 fp16 fp32] [--hidden 1024]
           [--rows 1 4096] [--shapes 1000x999 ...] [--out DIR] [--no-compile] [--compile-dynamic] [--no-plot]
           [--pdl auto|on|off]
Writes DIR/norm-<gpu>-<date>.json and DIR/norm-<gpu>-<date>.png (DIR: benchmarks/results).
"""

import argparse
import math
import sys
import time
from pathlib import Path

try:
    import torch
except ImportError:
    sys.exit("bench_rms_norm.py needs PyTorch with CUDA: python3 -m pip install torch")

try:
    import minivllm
    from minivllm import reference
    from minivllm.bench import check as checks
    from minivllm.bench import timing as bt
    from minivllm.bench.baselines import hf_rms_norm, torch_add_rms_norm
    from minivllm.bench.timing import flat_list, parse_dtype, time_per_call
except ImportError as error:
    sys.exit(f"bench_rms_norm.py: cannot import minivllm ({error}). Install it first, from the "
             "checkout: python3 -m pip install --no-build-isolation .")

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = Path(__file__).resolve().parent / "results"
# Replays of at least 2 ms, not bench_fused_rms_norm_qkv's 300 µs: a replay's start-up (~1 µs) is still a few
# tenths of a percent of 300 µs, which at the memory-bound shapes reads as a lower fraction of
# copy bandwidth, while the copy ceiling is one 2 GiB copy with no such cost. H200, bf16, six runs
# alternating 300 / 2000 / 5000 µs: 4096 x 4096 rms_norm 17.35-17.42 / 17.28 / 17.27 µs, fused add
# 4096 x 1024 9.24-9.25 / 9.06-9.07 / 9.05-9.06, M = 1 unchanged; the baselines move less
# (dev/logs/norm-replay-length-nvidia-h200-2026-11-22.log). Memory-bound kernels do not run into
# the power limit over 2 ms; bench_fused_rms_norm_qkv's GEMM shapes do (Llama-3-8B M = 4096 278 ->
# 288-292 µs with 2000), so it keeps 300.
NORM_MIN_REPLAY_US = 2000.0

EPS = bt.EPS
FULL_HIDDEN = (896, 1024, 2048, 3584, 4096, 5120, 8192)
FULL_ROWS = (1, 16, 128, 1024, 4096, 32768)
QUICK_HIDDEN = (1024, 4096, 8192)
QUICK_ROWS = (1, 4096, 32768)
# (M, H) beside the grid: hidden sizes no vector width divides (rows start at every alignment),
# from rows of a few elements to rows over 4096 (2 to 16 virtual warps a row through shared memory).
ODD_SHAPES = ((1000, 999), (1000, 4095), (16, 4095), (4096, 5119), (65536, 121), (4096, 5125), (4096, 8191),
              (600, 8191))
# Rows of a head (per-head q/k norms: tokens x heads rows of head_dim): decode, a batch, a prefill.
HEAD_SHAPES = ((128, 128), (8192, 64), (65536, 128), (262144, 256))
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# Relative error allowed against the float64 reference: the test suite's tolerances.
TOLERANCE = {d: reference.TOLERANCE[bt.DTYPE_NAMES[d]] for d in DTYPES}

# Timing constants shared with the other benchmarks (minivllm/bench/timing.py).
L2_MULTIPLE, MIN_CALLS, MAX_CALLS = bt.L2_MULTIPLE, bt.MIN_CALLS, bt.MAX_CALLS
MEMORY_CAP_BYTES, COPY_BYTES = bt.MEMORY_CAP_BYTES, bt.COPY_BYTES

OPS = ("rms_norm", "fused_add_rms_norm")
BASELINES = {
    "rms_norm": ("torch_rms_norm", "hf_eager", "hf_compiled", "liger_rms_norm"),
    "fused_add_rms_norm": ("torch_add_rms_norm", "torch_add_rms_norm_compiled",
                           "liger_add_rms_norm"),
}
PDL_OFF = "minivllm_pdl_off"
COMPILED = ("hf_compiled", "torch_add_rms_norm_compiled")
LABELS = {
    "minivllm": "minivllm",
    PDL_OFF: "minivllm, PDL off",
    "liger_rms_norm": "Liger-Kernel rms_norm (Triton)",
    "liger_add_rms_norm": "Liger-Kernel fused_add_rms_norm (Triton)",
    "torch_rms_norm": "torch F.rms_norm",
    "hf_eager": "HF RMSNorm (eager)",
    "hf_compiled": "HF RMSNorm (torch.compile)",
    "torch_add_rms_norm": "torch x + r, F.rms_norm",
    "torch_add_rms_norm_compiled": "torch x + r, F.rms_norm (torch.compile)",
}
SHORT = {"torch_rms_norm": "F.rms_norm", "hf_eager": "HF", "hf_compiled": "HF compiled",
         "torch_add_rms_norm": "add+rms_norm", "torch_add_rms_norm_compiled": "compiled",
         "liger_rms_norm": "Liger", "liger_add_rms_norm": "Liger"}


def load_liger():
    """Liger-Kernel's forward functions (called directly: no autograd), or the reason it is out."""
    try:
        from importlib.metadata import version as dist_version

        from liger_kernel.ops.fused_add_rms_norm import fused_add_rms_norm_forward
        from liger_kernel.ops.rms_norm import rms_norm_forward
        version = dist_version("liger-kernel")
    except Exception as error:  # noqa: BLE001 - any import failure only drops the baseline
        return None, f"not importable ({type(error).__name__}: {error})"
    return {"rms_norm": rms_norm_forward, "fused_add_rms_norm": fused_add_rms_norm_forward,
            "version": version}, f"liger-kernel {version}"


# ---------------------------------------------------------------------------------------------
# the baselines
# ---------------------------------------------------------------------------------------------
def compile_baselines(options):
    """torch.compile'd baselines (bt.compile_options's keyword arguments), keyed by baseline name.

    With dynamic=False each shape and dtype is a compilation of its own; the default mode
    recompiles with dynamic sizes once a shape changes, and again for M=1 and for each dtype. Past
    the recompile limit dynamo silently runs the eager code: raise the limit, and make hitting it
    an error where torch can, so the "compiled" baseline is always compiled.
    """
    bt.raise_compile_limits(1024 if options.get("dynamic") is False else 64)
    return {"hf_compiled": torch.compile(hf_rms_norm, **options),
            "torch_add_rms_norm_compiled": torch.compile(torch_add_rms_norm, **options)}


# ---------------------------------------------------------------------------------------------
# correctness guard
# ---------------------------------------------------------------------------------------------
def require_close(what, got, want, picked, dtype_name, where):
    """got's rows `picked` against want (float64); exits the run where they disagree."""
    check = checks.checker(TOLERANCE[dtype_name], want, picked)(got)
    if not check["ok"]:
        sys.stdout.flush()
        sys.exit(f"\n*** CORRECTNESS FAILURE: minivllm {what} ({where}): relative error "
                 f"{check['relative_error']:.3e} against the float64 reference, tolerance "
                 f"{TOLERANCE[dtype_name]:.0e}. Aborting: timings of a wrong kernel mean nothing.")
    return check["relative_error"]


def check_rms_norm(x, weight, out, dtype_name, where):
    picked = checks.sample_rows(x.shape[0])
    return require_close("rms_norm", out, checks.rms_norm_want(x, weight, picked, EPS), picked,
                         dtype_name, where)


def check_fused(x, residual, weight, normed, new_residual, dtype_name, where):
    picked = checks.sample_rows(x.shape[0])
    x64, r64 = checks.to_float64(x[picked.tolist()]), checks.to_float64(residual[picked.tolist()])
    ref_normed, ref_sum = reference.fused_add_rms_norm(x64, r64, checks.to_float64(weight), EPS,
                                                       bt.DTYPE_NAMES[dtype_name])
    error_residual = require_close("fused_add_rms_norm new_residual", new_residual, ref_sum,
                                   picked, dtype_name, where)
    error_normed = require_close("fused_add_rms_norm normed", normed, ref_normed, picked,
                                 dtype_name, where)
    return max(error_residual, error_normed)


# ---------------------------------------------------------------------------------------------
# one shape
# ---------------------------------------------------------------------------------------------
def random_rows(count, rows, hidden, dtype):
    return [torch.randn(rows, hidden, dtype=dtype, device="cuda") for _ in range(count)]


def record(op, dtype_name, hidden, rows, moved, calls, l2_bytes, timings, errors, copy_gbps):
    impls = {}
    for name, timing in timings.items():
        gbps = moved / timing["us"] / 1e3
        impls[name] = {**timing, "gbps": gbps, "fraction_of_copy": gbps / copy_gbps}
    mine = impls["minivllm"]["us"]
    speedup = {name: impls[name]["us"] / mine for name in BASELINES[op] if name in impls}
    speedup_pdl_off = ({name: impls[name]["us"] / impls[PDL_OFF]["us"] for name in speedup}
                       if PDL_OFF in impls else {})
    return {
        "op": op, "dtype": dtype_name, "hidden": hidden, "rows": rows, "elements": rows * hidden,
        "bytes_per_call": moved, "calls_per_graph": calls,
        "working_set_bytes": calls * moved, "working_set_over_l2": calls * moved / l2_bytes,
        "check_relative_error": errors, "impls": impls, "speedup": speedup,
        "fastest_baseline": min(speedup, key=speedup.get) if speedup else None,
        "speedup_pdl_off": speedup_pdl_off,
    }


def bench_rms_norm(xs, weight, calls, dtype_name, compiled, liger, replays, kwargs):
    hidden = weight.shape[0]
    outs = [torch.full_like(x, math.nan) for x in xs[:calls]]
    eager = minivllm.rms_norm(xs[0], weight, EPS, out=outs[0], **kwargs)
    errors = {"eager": check_rms_norm(xs[0], weight, eager, dtype_name, "eager call")}
    impls = {
        "minivllm": lambda i: minivllm.rms_norm(xs[i], weight, EPS, out=outs[i], **kwargs),
        "torch_rms_norm": lambda i: torch.nn.functional.rms_norm(xs[i], (hidden,), weight, EPS),
        "hf_eager": lambda i: hf_rms_norm(xs[i], weight),
    }
    if kwargs.get("pdl", True) is not False:
        impls[PDL_OFF] = lambda i: minivllm.rms_norm(xs[i], weight, EPS, out=outs[i],
                                                     **{**kwargs, "pdl": False})
    if liger:
        liger_rms = liger["rms_norm"]
        impls["liger_rms_norm"] = lambda i: liger_rms(xs[i], weight, EPS, 0.0, "llama", None)[0]
    if compiled:
        hf_compiled = compiled["hf_compiled"]
        impls["hf_compiled"] = lambda i: hf_compiled(xs[i], weight)
    timings = {name: time_per_call(call, calls, replays) for name, call in impls.items()}
    # The last call's output was written by graph replays only (it started as NaN).
    errors["graph"] = check_rms_norm(xs[calls - 1], weight, outs[calls - 1], dtype_name,
                                     "CUDA graph replay, last call")
    return timings, errors


def bench_fused(xs, rs, weight, calls, dtype_name, compiled, liger, replays, kwargs):
    outs = [torch.full_like(x, math.nan) for x in xs[:calls]]
    residual_outs = [torch.full_like(x, math.nan) for x in xs[:calls]]
    normed, new_residual = minivllm.fused_add_rms_norm(
        xs[0], rs[0], weight, EPS, out=outs[0], residual_out=residual_outs[0], **kwargs)
    errors = {"eager": check_fused(xs[0], rs[0], weight, normed, new_residual, dtype_name,
                                   "eager call")}
    impls = {
        "minivllm": lambda i: minivllm.fused_add_rms_norm(
            xs[i], rs[i], weight, EPS, out=outs[i], residual_out=residual_outs[i], **kwargs),
        "torch_add_rms_norm": lambda i: torch_add_rms_norm(xs[i], rs[i], weight),
    }
    if kwargs.get("pdl", True) is not False:
        impls[PDL_OFF] = lambda i: minivllm.fused_add_rms_norm(
            xs[i], rs[i], weight, EPS, out=outs[i], residual_out=residual_outs[i],
            **{**kwargs, "pdl": False})
    if liger:
        liger_add = liger["fused_add_rms_norm"]
        impls["liger_add_rms_norm"] = lambda i: liger_add(xs[i], rs[i], weight, EPS, 0.0,
                                                          "llama")[:2]
    if compiled:
        add_compiled = compiled["torch_add_rms_norm_compiled"]
        impls["torch_add_rms_norm_compiled"] = lambda i: add_compiled(xs[i], rs[i], weight)
    timings = {name: time_per_call(call, calls, replays) for name, call in impls.items()}
    last = calls - 1
    errors["graph"] = check_fused(xs[last], rs[last], weight, outs[last], residual_outs[last],
                                  dtype_name, "CUDA graph replay, last call")
    return timings, errors


def bench_shape(dtype_name, hidden, rows, l2_bytes, copy_gbps, compiled, liger, replays, kwargs):
    """Both ops at one (dtype, H, M): their two records."""
    dtype = DTYPES[dtype_name]
    element_size = torch.empty((), dtype=dtype).element_size()
    moved = {op: bt.norm_bytes(op, rows, hidden, element_size) for op in OPS}
    calls = {op: bt.calls_per_graph(moved[op], l2_bytes) for op in OPS}
    weight = torch.randn(hidden, dtype=dtype, device="cuda")
    # rms_norm needs the most calls (half the bytes per call); the fused op uses the first ones.
    xs = random_rows(calls["rms_norm"], rows, hidden, dtype)
    records = []

    timings, errors = bench_rms_norm(xs, weight, calls["rms_norm"], dtype_name, compiled, liger,
                                     replays, kwargs)
    records.append(record("rms_norm", dtype_name, hidden, rows, moved["rms_norm"],
                          calls["rms_norm"], l2_bytes, timings, errors, copy_gbps))
    torch.cuda.empty_cache()

    calls_fused = calls["fused_add_rms_norm"]
    rs = random_rows(calls_fused, rows, hidden, dtype)
    timings, errors = bench_fused(xs, rs, weight, calls_fused, dtype_name, compiled, liger,
                                  replays, kwargs)
    records.append(record("fused_add_rms_norm", dtype_name, hidden, rows,
                          moved["fused_add_rms_norm"], calls_fused, l2_bytes, timings, errors,
                          copy_gbps))
    del xs, rs, weight
    torch.cuda.empty_cache()
    return records


# ---------------------------------------------------------------------------------------------
# reporting
# ---------------------------------------------------------------------------------------------
def fits_in_l2_mark(r):
    return "*" if r["working_set_over_l2"] < 1 else " "


def progress_part(r):
    mine = r["impls"]["minivllm"]
    speedups = " ".join(f"{SHORT[name]} {s:.2f}x" for name, s in r["speedup"].items())
    name = "rms" if r["op"] == "rms_norm" else "fused"
    off = (f" (PDL off {r['impls'][PDL_OFF]['us']:.2f} µs)" if PDL_OFF in r["impls"] else "")
    return (f"{name} x{r['calls_per_graph']}{fits_in_l2_mark(r).strip()}: {mine['us']:.2f} µs"
            f"{off} {mine['fraction_of_copy']:.0%} of copy, vs {speedups}")


def best_ratio(speedups):
    """minivllm's speedup over the fastest baseline (below 1: a baseline wins), or None."""
    return min(speedups.values()) if speedups else None


def print_table(results):
    print("\nµs per call (graph-timed, median); GB/s and %copy of minivllm; for each baseline its "
          "µs and minivllm's speedup (baseline µs / minivllm µs). calls* : the graph's working "
          "set fits in L2 even at the call limit. 'off': minivllm with PDL off, and its speedup "
          "over the fastest baseline.")
    for op in OPS:
        rows = [r for r in results if r["op"] == op]
        if not rows:
            continue
        baselines = [b for b in BASELINES[op] if any(b in r["impls"] for r in rows)]
        with_off = any(PDL_OFF in r["impls"] for r in rows)
        print(f"\n{op}")
        print(f"  {'dtype':5s} {'H':>5s} {'M':>6s} {'calls':>6s} {'µs':>9s} {'GB/s':>7s} "
              f"{'%copy':>6s}" + (f" {'off µs':>9s} {'vs best':>7s}" if with_off else "")
              + "".join(f" {SHORT[b]:>17s}" for b in baselines))
        for r in rows:
            mine = r["impls"]["minivllm"]
            line = (f"  {r['dtype']:5s} {r['hidden']:5d} {r['rows']:6d} "
                    f"{r['calls_per_graph']:5d}{fits_in_l2_mark(r)} {mine['us']:9.2f} "
                    f"{mine['gbps']:7.0f} {mine['fraction_of_copy']:6.1%}")
            if with_off:
                off = best_ratio(r["speedup_pdl_off"])
                line += (f" {r['impls'][PDL_OFF]['us']:9.2f} {off:6.2f}x" if off is not None
                         else f" {'-':>17s}")
            for b in baselines:
                if b in r["impls"]:
                    line += f" {r['impls'][b]['us']:9.2f} {r['speedup'][b]:6.2f}x"
                else:
                    line += f" {'-':>17s}"
            print(line)


def slower_shapes(results):
    """The (op, dtype, shape, PDL)s where the fastest baseline beat minivllm, worst first."""
    slower = []
    for r in results:
        for variant, impl, speedups in (("pdl as asked", "minivllm", r["speedup"]),
                                        ("pdl off", PDL_OFF, r["speedup_pdl_off"])):
            if not speedups:
                continue
            best = min(speedups, key=speedups.get)
            if speedups[best] < 1:
                slower.append({"op": r["op"], "dtype": r["dtype"], "hidden": r["hidden"],
                               "rows": r["rows"], "variant": variant,
                               "minivllm_us": r["impls"][impl]["us"], "baseline": best,
                               "baseline_us": r["impls"][best]["us"],
                               "speedup": speedups[best]})
    return sorted(slower, key=lambda v: v["speedup"])


def print_slower(slower, results):
    compared = sum(1 for r in results if r["speedup"])
    for variant, key in (("PDL as asked", "pdl as asked"), ("PDL off", "pdl off")):
        lost = [v for v in slower if v["variant"] == key]
        counted = compared if key == "pdl as asked" else sum(
            1 for r in results if r["speedup_pdl_off"])
        if counted == 0:
            continue
        print(f"\n{variant}: minivllm is at least as fast as every baseline at "
              f"{counted - len(lost)} of {counted} (op, dtype, shape)s.")
        for v in lost:
            print(f"    {v['op']:18s} {v['dtype']} M={v['rows']:<6d} H={v['hidden']:<5d} "
                  f"minivllm {v['minivllm_us']:9.2f} µs  {SHORT[v['baseline']]:>12s} "
                  f"{v['baseline_us']:9.2f} µs  ({v['speedup']:.3f}x)")


def write_plot(results, copy_gbps, path, title):
    plt = bt.load_pyplot()
    if plt is None:
        return None
    dtypes = [d for d in DTYPES if any(r["dtype"] == d for r in results)]
    ops = [op for op in OPS if any(r["op"] == op for r in results)]
    figure, axes = plt.subplots(len(dtypes), len(ops), figsize=(9 * len(ops), 4.2 * len(dtypes)),
                                squeeze=False)
    for i, dtype_name in enumerate(dtypes):
        for j, op in enumerate(ops):
            ax = axes[i][j]
            shapes = sorted((r for r in results if r["op"] == op and r["dtype"] == dtype_name),
                            key=lambda r: (r["hidden"], r["rows"]))
            positions = list(range(len(shapes)))
            # One line per H group (M rising along it), so no line joins M=32768 to the next M=1.
            groups = {}
            for position, r in zip(positions, shapes):
                groups.setdefault(r["hidden"], []).append((position, r))
            for colour, impl in enumerate(("minivllm", PDL_OFF) + BASELINES[op]):
                mine = impl in ("minivllm", PDL_OFF)
                label = LABELS[impl]
                for members in groups.values():
                    points = [(p, r["impls"][impl]["gbps"]) for p, r in members
                              if impl in r["impls"]]
                    if not points:
                        continue
                    ax.plot(*zip(*points), color=f"C{colour}", marker="o",
                            markersize=4 if mine else 3, linewidth=2 if mine else 1,
                            label=label, zorder=3 if mine else 2)
                    label = None  # one legend entry per implementation
            ax.axhline(copy_gbps, color="black", linestyle="--", linewidth=1,
                       label=f"measured copy ({copy_gbps:.0f} GB/s)")
            for k in range(1, len(shapes)):  # separate the H groups
                if shapes[k]["hidden"] != shapes[k - 1]["hidden"]:
                    ax.axvline(k - 0.5, color="0.8", linewidth=0.8)
            ax.set_xticks(positions)
            ax.set_xticklabels([f"H={r['hidden']} M={r['rows']}" for r in shapes], rotation=90,
                               fontsize=6)
            ax.set_yscale("log")
            ax.set_ylim(top=copy_gbps * 30)  # room above the ceiling for the legend
            ax.set_ylabel("achieved GB/s")
            ax.set_title(f"{op}, {dtype_name}")
            ax.grid(axis="y", which="both", alpha=0.3)
            ax.legend(fontsize=7, loc="upper left", ncol=3)
    return bt.save_figure(plt, figure, path, title)


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------
def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"H in {QUICK_HIDDEN}, M in {QUICK_ROWS} (every dtype)")
    parser.add_argument("--dtypes", nargs="+", default=["bf16,fp16,fp32"],
                        help="bf16 fp16 fp32 (default: all)")
    parser.add_argument("--hidden", nargs="+", help=f"H values (default {FULL_HIDDEN})")
    parser.add_argument("--rows", nargs="+", help=f"M values (default {FULL_ROWS})")
    parser.add_argument("--shapes", nargs="+",
                        help="MxH shapes beside the grid (default: "
                             + " ".join(f"{m}x{h}" for m, h in ODD_SHAPES + HEAD_SHAPES) + "; 'none': none)")
    parser.add_argument("--no-liger", action="store_true", help="skip the Liger-Kernel baselines")
    bt.add_graph_run_args(parser, DEFAULT_OUT, NORM_MIN_REPLAY_US)
    bt.add_kernel_args(parser, qkv_path=False)
    parser.add_argument("--no-compile", action="store_true",
                        help="skip the torch.compile baselines")
    bt.add_compile_mode_arg(parser)
    args = parser.parse_args(argv)
    try:
        args.dtypes = list(dict.fromkeys(flat_list(args.dtypes, parse_dtype)))
        args.hidden = flat_list(args.hidden, int) if args.hidden else list(
            QUICK_HIDDEN if args.quick else FULL_HIDDEN)
        args.rows = flat_list(args.rows, int) if args.rows else list(
            QUICK_ROWS if args.quick else FULL_ROWS)
        if args.shapes is None:
            args.shapes = list(ODD_SHAPES + HEAD_SHAPES)
        elif flat_list(args.shapes, str) == ["none"]:
            args.shapes = []
        else:
            args.shapes = [tuple(int(v) for v in shape.lower().split("x"))
                           for shape in flat_list(args.shapes, str)]
            if any(len(shape) != 2 for shape in args.shapes):
                raise ValueError("--shapes takes MxH, e.g. 1000x999")
    except (argparse.ArgumentTypeError, ValueError) as error:
        parser.error(str(error))
    if min(args.hidden + args.rows + [v for shape in args.shapes for v in shape]) < 1:
        parser.error("--hidden and --rows take positive integers")
    return args


def main(argv=None):
    args = parse_args(argv)
    bt.apply_graph_run_args(args)
    bt.require_cuda("bench_rms_norm.py")
    kwargs = bt.kernel_kwargs(args)
    started = time.perf_counter()
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    l2_bytes = props.L2_cache_size
    date = bt.utc_now()
    stem = bt.results_stem("norm", props.name, date)
    versions = bt.library_versions()
    compile_kwargs, compile_mode = bt.compile_options(args)
    compile_mode = "off" if args.no_compile else compile_mode
    driver = bt.driver_version()
    print(f"{props.name}, L2 {l2_bytes / 2**20:.0f} MiB, driver {driver}, torch "
          f"{versions['torch']}, minivllm {minivllm.__version__} from "
          f"{Path(minivllm.__file__).parent}", flush=True)
    print(f"calls per graph: enough for {L2_MULTIPLE}x L2 ({L2_MULTIPLE * l2_bytes / 2**20:.0f} "
          f"MiB), in [{MIN_CALLS}, {MAX_CALLS}], buffers <= {MEMORY_CAP_BYTES >> 30} GiB, "
          f"cycled until a replay lasts >= {bt.MIN_REPLAY_US:g} µs; "
          f"{args.replays} replays; compile baselines: {compile_mode}", flush=True)

    copy_gbps, copy_methods = bt.measure_copy_gbps(args.replays)
    print(f"device-to-device copy ({COPY_BYTES >> 30} GiB, read + write): {copy_gbps:.0f} GB/s ("
          + ", ".join(f"{k} {v:.0f}" for k, v in copy_methods.items()) + ")", flush=True)
    compiled = None if args.no_compile else compile_baselines(compile_kwargs)
    liger, liger_note = (None, "skipped (--no-liger)") if args.no_liger else load_liger()
    print(f"Liger-Kernel baseline: {liger_note}", flush=True)

    shapes = [(d, h, m) for d in args.dtypes for h in args.hidden for m in args.rows]
    shapes += [(d, h, m) for d in args.dtypes for m, h in args.shapes if (d, h, m) not in shapes]
    results = []
    shape_seconds = {}
    for index, (dtype, hidden, rows) in enumerate(shapes, 1):
        shape_start = time.perf_counter()
        records = bench_shape(dtype, hidden, rows, l2_bytes, copy_gbps, compiled, liger,
                              args.replays, kwargs)
        seconds = time.perf_counter() - shape_start
        shape_seconds[f"{dtype} H={hidden} M={rows}"] = seconds
        results.extend(records)
        print(f"[{index:3d}/{len(shapes)}] {dtype} H={hidden:<5d} M={rows:<6d} "
              + " | ".join(progress_part(r) for r in records) + f" | {seconds:.1f} s", flush=True)

    # Measured again at the end: a drifting ceiling (clocks, temperature) shows here.
    copy_gbps_end, _ = bt.measure_copy_gbps(args.replays)
    print(f"device-to-device copy at the end: {copy_gbps_end:.0f} GB/s "
          f"({copy_gbps_end / copy_gbps - 1:+.1%} against the start, which the fractions use)")

    print_table(results)
    slower = slower_shapes(results)
    print_slower(slower, results)

    args.out.mkdir(parents=True, exist_ok=True)
    report = {
        "kind": "bench-norm",
        "gpu": {"name": props.name, "driver": driver,
                "memory_bytes": props.total_memory, "sm_count": props.multi_processor_count,
                "l2_cache_bytes": l2_bytes},
        "date": date.isoformat(timespec="seconds"),
        "commit": bt.git_commit(REPO_ROOT),
        "versions": versions,
        "argv": sys.argv[1:],
        "sweep": {"dtypes": args.dtypes, "hidden": args.hidden, "rows": args.rows,
                  "extra_shapes_m_h": args.shapes, "liger": liger_note,
                  "quick": args.quick, "kernel_kwargs": {k: str(v) for k, v in kwargs.items()}},
        "method": {
            "timing": "CUDA graph of N calls, each on its own inputs and outputs; CUDA events "
                      "around each replay; µs per call = median replay / N",
            "replays": args.replays, "eps": EPS, "l2_multiple": L2_MULTIPLE,
            "min_replay_us": bt.MIN_REPLAY_US,
            "calls_bounds": [MIN_CALLS, MAX_CALLS], "memory_cap_bytes": MEMORY_CAP_BYTES,
            "bytes_moved": "rms_norm: x read + out written; fused_add_rms_norm: x, r read + "
                           "out, new residual written; weight ignored",
            "compile": compile_mode, "tolerance": TOLERANCE,
        },
        "copy_bandwidth": {"bytes_copied": COPY_BYTES, "gbps": copy_gbps,
                           "gbps_at_end": copy_gbps_end, "by_method": copy_methods,
                           "note": "bytes read + written per second; fractions use gbps"},
        "calls_per_graph": {f"{r['op']} {r['dtype']} H={r['hidden']} M={r['rows']}":
                            r["calls_per_graph"] for r in results},
        "results": results,
        "slower_than_a_baseline": slower,
        "shape_seconds": shape_seconds,
        "total_seconds": time.perf_counter() - started,
    }
    title = (f"minivllm norms on {props.name} ({date:%Y-%m-%d}, {report['commit'][:12]}): "
             "achieved bandwidth per call")
    bt.write_results(args.out, stem, report, None if args.no_plot else
                     lambda path: write_plot(results, copy_gbps, path, title))
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
