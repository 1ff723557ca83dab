"""minivllm-bench (python -m minivllm.bench): a correctness self-check, then a one-screen timing
summary.

The self-check compares every op and dtype (and the QKV op of every model being timed) against the
float64 reference on fresh random inputs; the process exits non-zero if any check fails. It runs
on the GPU when minivllm's CUDA kernels and a GPU are usable (PyTorch tensors, else CuPy arrays),
otherwise on the CPU with NumPy arrays.

The summary gives, for each shape, minivllm's µs per call, a baseline's for the same op, the
speedup, and the floor: max(bytes that must move / copy bandwidth, FLOPs / GEMM rate), both
ceilings measured in the same run. On the GPU the baseline is PyTorch (the eager sequence a model
would run: F.rms_norm; x + r then F.rms_norm; F.rms_norm, F.linear and the q/k/v split); on the
CPU it is NumPy (baselines_numpy.py: the norms as NumPy expressions in float32, QKV as that norm
and a float32 BLAS matmul with W converted to float32 once, outside the timing), and PyTorch's
CPU time is added where PyTorch imports. On the GPU (PyTorch needed) the calls are timed
as benchmarks/bench_rms_norm.py and benchmarks/bench_fused_rms_norm_qkv.py time them: CUDA-graph replays of many
calls that each have their own buffers (and, for QKV, their own weights), median of replays.
On the CPU: wall-clock medians of repeated eager calls, against NumPy's copy and float32 matmul.

examples:
  python -m minivllm.bench                                  # self-check, the default shapes
  python -m minivllm.bench --model qwen3-0.6b llama-3-8b --m 1 16 256 4096 --json r.json
  python -m minivllm.bench --qkv 2048,16,4,128 --m 1,64 --plot qkv.png   # H,heads,kv,head_dim
  python -m minivllm.bench --hidden 4096 8192 --m 1 4096    # the two norms at these shapes
  python -m minivllm.bench --model llama-3-8b --path wgmma --pdl off   # one QKV path, no PDL
"""

import argparse
import math
import statistics
import sys
import time
from collections import namedtuple

import ml_dtypes
import numpy as np

import minivllm
from minivllm import reference

from . import baselines_numpy
from . import check as checks
from . import timing as bt
from .models import MODELS, find_model, parse_qkv_shape, qkv_features

# What is timed: op is "rms_norm", "fused_add_rms_norm" or "qkv"; model is a Model for qkv
# (a preset, or an explicit --qkv shape), None for the norms.
Case = namedtuple("Case", "op rows hidden model")
OPS = ("rms_norm", "fused_add_rms_norm", "qkv")
DEFAULT_NORM_HIDDEN = (4096,)
DEFAULT_QKV_MODELS = ("qwen3-0.6b", "llama-3-8b")
DEFAULT_NORM_M = {"cuda": (1, 128, 4096), "cpu": (1, 128, 1024)}
DEFAULT_QKV_M = {"cuda": (1, 256, 4096), "cpu": (1, 256)}
SELF_CHECK_MODEL = "qwen2.5-0.5b"   # the smallest preset, checked in every run
BASELINE_TEXT = {
    "torch": {"rms_norm": "F.rms_norm", "fused_add_rms_norm": "x + r, F.rms_norm",
              "qkv": "F.rms_norm, F.linear, split"},
    "numpy": {"rms_norm": "float32 expressions", "fused_add_rms_norm": "x + r, then the same",
              "qkv": "the same norm, y @ W32.T (float32 BLAS, W converted once), split"},
}


# ---------------------------------------------------------------------------------------------
# shapes
# ---------------------------------------------------------------------------------------------
def qkv_shape_arg(text):
    """argparse type of --qkv: models.parse_qkv_shape, its ValueError as a usage error."""
    try:
        return parse_qkv_shape(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def build_cases(args, device):
    models = [find_model(name) for name in args.model] + args.qkv
    hidden = list(args.hidden)
    if not models and not hidden:  # nothing named: the default shapes
        models = [MODELS[name] for name in DEFAULT_QKV_MODELS]
        hidden = list(DEFAULT_NORM_HIDDEN)
    ops = args.ops or OPS
    cases = []
    for op in ("rms_norm", "fused_add_rms_norm"):
        if op in ops:
            cases += [Case(op, m, h, None) for h in hidden
                      for m in (args.m or DEFAULT_NORM_M[device])]
    if "qkv" in ops:
        cases += [Case("qkv", m, model.hidden, model) for model in models
                  for m in (args.m or DEFAULT_QKV_M[device])]
    return cases, models


def case_sizes(case, element_size):
    """(bytes that must move, FLOPs) of one call."""
    if case.op == "qkv":
        features = qkv_features(case.model)
        return (bt.qkv_bytes(case.rows, case.hidden, features, element_size),
                bt.qkv_flops(case.rows, case.hidden, features))
    return bt.norm_bytes(case.op, case.rows, case.hidden, element_size), 0


def case_name(case):
    if case.op == "qkv":
        features = qkv_features(case.model)
        return f"qkv {case.model.name}", f"M={case.rows} {case.hidden}->{features}"
    return case.op, f"M={case.rows} H={case.hidden}"


# ---------------------------------------------------------------------------------------------
# GPU timing: CUDA-graph replays (PyTorch)
# ---------------------------------------------------------------------------------------------
class GpuTimer:
    def __init__(self, dtype_name, replays, kwargs):
        torch = bt.torch
        self.kwargs = kwargs   # {"norm": ..., "qkv": ...}: the --pdl / --path keyword arguments
        self.dtype_name = dtype_name
        self.dtype = getattr(torch, bt.DTYPE_NAMES[dtype_name])
        self.replays = replays
        self.l2_bytes = torch.cuda.get_device_properties(torch.cuda.current_device()).L2_cache_size
        self.copy_gbps, self.copy_methods = bt.measure_copy_gbps(replays)
        self.gemm_tflops = bt.measure_gemm_tflops(self.dtype, replays)
        self.method = ("CUDA-graph replays of calls cycling through buffer sets (and weights) "
                       f"that span >= {bt.L2_MULTIPLE}x L2, each replay >= {bt.MIN_REPLAY_US:g} "
                       "µs; µs per call = median replay / calls in the graph")
        self.ceilings = {"copy_gbps": self.copy_gbps, "copy_by_method": self.copy_methods,
                         "gemm_tflops": self.gemm_tflops,
                         "how": "device-to-device copy of 2 GiB (read + write); "
                                f"{bt.GEMM_SIZE}^3 torch.matmul in {dtype_name}"}

    def time_case(self, case):
        """{"minivllm": timing, "torch": timing}: µs per call and the check of the last call."""
        from . import baselines
        torch, F = bt.torch, bt.torch.nn.functional
        element_size = bt.ELEMENT_SIZE[self.dtype_name]
        moved, _ = case_sizes(case, element_size)
        rows, hidden, dtype = case.rows, case.hidden, self.dtype

        def randn(*shape):
            return torch.randn(*shape, device="cuda", dtype=dtype)

        def nan_like(t):
            return torch.full_like(t, math.nan)

        if case.op == "qkv":
            model = case.model
            features = qkv_features(model)
            heads = (model.num_heads, model.num_kv_heads, model.head_dim)
            calls = bt.qkv_calls_per_graph(rows, hidden, features, element_size, self.l2_bytes)
            weights = [randn(features, hidden) / math.sqrt(hidden) for _ in range(calls)]
            weights_t = [w.t() for w in weights]
            gammas = [randn(hidden).abs() + 0.5 for _ in range(calls)]
            xs = [randn(rows, hidden) for _ in range(calls)]
            outs = [tuple(torch.full((rows, h, model.head_dim), math.nan, device="cuda",
                                     dtype=dtype)
                          for h in (model.num_heads, model.num_kv_heads, model.num_kv_heads))
                    for _ in range(calls)]
            picked = checks.sample_rows(rows)
            want = checks.qkv_want(xs[-1], gammas[-1], weights[-1], picked)
            tolerance = reference.QKV_TOLERANCE[bt.DTYPE_NAMES[self.dtype_name]]
            impls = {
                "minivllm": lambda i: minivllm.FusedRMSNormQKV.forward(
                    xs[i], gammas[i], weights_t[i], model.num_heads, model.num_kv_heads,
                    bt.EPS, out=outs[i], **self.kwargs["qkv"]),
                "torch": lambda i: baselines.torch_qkv(xs[i], gammas[i], weights[i], *heads),
            }
        else:
            calls = bt.calls_per_graph(moved, self.l2_bytes)
            gamma = randn(hidden).abs() + 0.5
            xs = [randn(rows, hidden) for _ in range(calls)]
            outs = [nan_like(x) for x in xs]
            tolerance = reference.TOLERANCE[bt.DTYPE_NAMES[self.dtype_name]]
            picked = checks.sample_rows(rows)
            if case.op == "rms_norm":
                want = checks.rms_norm_want(xs[-1], gamma, picked)
                impls = {
                    "minivllm": lambda i: minivllm.rms_norm(xs[i], gamma, bt.EPS, out=outs[i],
                                                          **self.kwargs["norm"]),
                    "torch": lambda i: F.rms_norm(xs[i], (hidden,), gamma, bt.EPS),
                }
            else:
                rs = [randn(rows, hidden) for _ in range(calls)]
                residual_outs = [nan_like(x) for x in xs]
                # minivllm normalizes the sum as stored, rounded to the dtype; compared: normed.
                want = checks.fused_add_want(xs[-1], rs[-1], gamma, picked,
                                             bt.DTYPE_NAMES[self.dtype_name])
                # Both return (normed, new_residual), and the graph keeps both alive, so that
                # torch's residuals do not all land in one recycled, L2-resident block.
                impls = {
                    "minivllm": lambda i: minivllm.fused_add_rms_norm(
                        xs[i], rs[i], gamma, bt.EPS, out=outs[i], residual_out=residual_outs[i],
                        **self.kwargs["norm"]),
                    "torch": lambda i: baselines.torch_add_rms_norm(xs[i], rs[i], gamma),
                }

        check_rows = checks.checker(tolerance, want, picked)

        def check(result):
            if case.op == "fused_add_rms_norm":
                result = result[0]   # normed; the sum is checked by the self-check
            return check_rows(result)

        timings = {}
        for name, call in impls.items():
            try:
                timings[name] = bt.time_per_call(call, calls, self.replays, check)
            except Exception as error:  # a failing baseline is reported; minivllm's is fatal below
                timings[name] = {"error": f"{type(error).__name__}: {error}"[:300]}
            timings[name]["calls_per_graph"] = calls
        return timings

    def close(self):
        bt.torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------
# CPU timing: wall clock (NumPy arrays)
# ---------------------------------------------------------------------------------------------
class CpuTimer:
    BATCH = 3

    def __init__(self, dtype_name, repeats, kwargs):
        self.dtype_name = dtype_name
        self.repeats = repeats
        self.kwargs = kwargs
        self.rng = np.random.default_rng()
        self.copy_gbps, self.gemm_tflops = self._ceilings()
        self.method = "wall-clock median of repeated eager calls (NumPy arrays)"
        self.ceilings = {"copy_gbps": self.copy_gbps, "gemm_tflops": self.gemm_tflops,
                         "how": "NumPy copy of 256 MiB (read + write); float32 NumPy matmul "
                                "1024^3"}

    def _median_us(self, fn):
        fn()  # warm-up
        samples = []
        for _ in range(self.repeats):
            started = time.perf_counter()
            for _ in range(self.BATCH):
                fn()
            samples.append((time.perf_counter() - started) * 1e6 / self.BATCH)
        return statistics.median(samples)

    def _ceilings(self):
        source = np.ones(64 << 20, np.float32)
        target = np.empty_like(source)
        copy_gbps = 2 * source.nbytes / self._median_us(lambda: np.copyto(target, source)) / 1e3
        a = self.rng.standard_normal((1024, 1024)).astype(np.float32)
        gemm_tflops = 2 * 1024 ** 3 / self._median_us(lambda: a @ a) / 1e6
        return copy_gbps, gemm_tflops

    def _array(self, values):
        dtype = ml_dtypes.bfloat16 if self.dtype_name == "bf16" else bt.DTYPE_NAMES[self.dtype_name]
        return values.astype(dtype)

    def time_case(self, case):
        """{"minivllm": {"us": ...}, "numpy": {"us": ...}}, plus "torch" where PyTorch imports."""
        rows, hidden = case.rows, case.hidden
        values = {"x": self.rng.standard_normal((rows, hidden)),
                  "gamma": self.rng.uniform(0.5, 1.5, hidden),
                  "residual": self.rng.standard_normal((rows, hidden))}
        if case.op == "qkv":
            values["weight"] = (self.rng.standard_normal((qkv_features(case.model), hidden))
                                / math.sqrt(hidden))
        a = {name: self._array(v) for name, v in values.items()}
        calls = {}
        if case.op == "qkv":
            model = case.model
            calls["minivllm"] = lambda: minivllm.FusedRMSNormQKV.forward(
                a["x"], a["gamma"], a["weight"].T, model.num_heads, model.num_kv_heads,
                **self.kwargs["qkv"])
        elif case.op == "rms_norm":
            calls["minivllm"] = lambda: minivllm.rms_norm(a["x"], a["gamma"], **self.kwargs["norm"])
        else:
            calls["minivllm"] = lambda: minivllm.fused_add_rms_norm(
                a["x"], a["residual"], a["gamma"], **self.kwargs["norm"])
        calls["numpy"] = baselines_numpy.call(case, a, bt.EPS)
        if bt.torch is not None:
            from . import baselines
            torch_dtype = getattr(bt.torch, bt.DTYPE_NAMES[self.dtype_name])
            t = {name: bt.torch.from_numpy(v.astype(np.float32)).to(torch_dtype)
                 for name, v in values.items()}
            if case.op == "qkv":
                heads = (case.model.num_heads, case.model.num_kv_heads, case.model.head_dim)
                calls["torch"] = lambda: baselines.torch_qkv(t["x"], t["gamma"], t["weight"], *heads)
            elif case.op == "rms_norm":
                calls["torch"] = lambda: bt.torch.nn.functional.rms_norm(t["x"], (hidden,), t["gamma"], bt.EPS)
            else:
                calls["torch"] = lambda: baselines.torch_add_rms_norm(t["x"], t["residual"],
                                                                      t["gamma"])
        timings = {}
        for name, call in calls.items():
            try:
                timings[name] = {"us": self._median_us(call)}
            except Exception as error:  # e.g. an op torch lacks for this dtype on the CPU
                timings[name] = {"error": f"{type(error).__name__}: {error}"[:300]}
        return timings

    def close(self):
        pass


# ---------------------------------------------------------------------------------------------
# summary, JSON, plot
# ---------------------------------------------------------------------------------------------
def settle_gemm_ceiling(cases, timings, timer, dtype_name):
    """Raise the timer's GEMM rate to the fastest multiply timed here where that is faster (a
    floor that some implementation beats is no floor); the measured rate stays in the JSON."""
    element_size = bt.ELEMENT_SIZE[dtype_name]
    samples = [(case_sizes(case, element_size)[1], t["us"], f"{name}, {' '.join(case_name(case))}")
               for case, case_timings in zip(cases, timings)
               for name, t in case_timings.items()
               if "us" in t and t.get("check", {}).get("ok", True)]
    fastest, label = bt.fastest_multiply(samples)
    timer.ceilings["gemm_tflops_measured"] = timer.gemm_tflops
    if fastest > timer.gemm_tflops:
        timer.gemm_tflops = fastest
        timer.ceilings.update(gemm_tflops=fastest, gemm_raised_by=label)


def make_record(case, dtype_name, timings, timer):
    moved, flops = case_sizes(case, bt.ELEMENT_SIZE[dtype_name])
    floor = bt.floor_us(moved, flops, timer.copy_gbps, timer.gemm_tflops)
    record = {"op": case.op, "rows": case.rows, "hidden": case.hidden, "dtype": dtype_name,
              "bytes_per_call": moved, "flops_per_call": flops, "floor_us": floor,
              "timings": timings}
    if case.model is not None:
        record["model"] = case.model._asdict()
        record["features"] = qkv_features(case.model)
    mine = timings.get("minivllm", {})
    if "us" in mine:
        record["fraction_of_floor"] = floor / mine["us"]
        record["gbps"] = moved / mine["us"] / 1e3
        for name in BASELINE_TEXT:
            theirs = timings.get(name, {})
            if "us" in theirs and theirs.get("check", {}).get("ok", True):
                record[f"speedup_over_{name}"] = theirs["us"] / mine["us"]
    record["wrong"] = ("error" in mine) or not mine.get("check", {}).get("ok", True)
    return record


def print_summary(records, cases, timer, dtype_name):
    print(f"\nTimings on {DEVICE_TEXT[type(timer)]}, {dtype_name}: {timer.method}.")
    raised_by = timer.ceilings.get("gemm_raised_by")
    print(f"floor = max(bytes / copy bandwidth {timer.copy_gbps:.0f} GB/s, FLOPs / GEMM rate "
          f"{timer.gemm_tflops:.3g} TFLOP/s), both measured now"
          + (f" (the GEMM rate is the fastest multiply timed: {raised_by})" if raised_by else "")
          + "; %floor = floor / minivllm µs.")
    base = BASELINE[type(timer)]
    print(f"  {'op':22s} {'shape':22s} {'minivllm µs':>11s} {base + ' µs':>9s} {'speedup':>8s} "
          f"{'floor µs':>9s} {'%floor':>7s}")
    for case, r in zip(cases, records):
        op, shape = case_name(case)
        mine, theirs = r["timings"].get("minivllm", {}), r["timings"].get(base, {})
        mine_text = f"{mine['us']:11.2f}" if "us" in mine else f"{'failed':>11s}"
        if r["wrong"] and "us" in mine:
            mine_text = f"{'WRONG':>11s}"
        theirs_text = f"{theirs['us']:9.2f}" if "us" in theirs else f"{'-':>9s}"
        speedup = r.get(f"speedup_over_{base}")
        speedup_text = f"{speedup:7.2f}x" if speedup else f"{'-':>8s}"
        fraction = r.get("fraction_of_floor")
        fraction_text = f"{fraction:7.1%}" if fraction and not r["wrong"] else f"{'-':>7s}"
        print(f"  {op:22s} {shape:22s} {mine_text} {theirs_text} {speedup_text} "
              f"{r['floor_us']:9.2f} {fraction_text}")
    ops = sorted({c.op for c in cases}, key=OPS.index)
    for name in BASELINE_TEXT:
        if any(name in r["timings"] for r in records):
            extra = "" if name == base else f" (timed too, in the JSON; speedup_over_{name})"
            print(f"  {name} = " + "; ".join(f"{op}: {BASELINE_TEXT[name][op]}" for op in ops)
                  + extra)
    for case, r in zip(cases, records):
        for name, t in r["timings"].items():
            if "error" in t:
                print(f"  {case_name(case)[0]} {case_name(case)[1]}: {name} failed: {t['error']}")
            elif not t.get("check", {}).get("ok", True):
                print(f"  {case_name(case)[0]} {case_name(case)[1]}: {name} WRONG: relative "
                      f"error {t['check']['relative_error']:.2e} > {t['check']['tolerance']:.0e}")


DEVICE_TEXT = {GpuTimer: "the GPU", CpuTimer: "the CPU"}
BASELINE = {GpuTimer: "torch", CpuTimer: "numpy"}   # the summary's baseline column


def write_plot(records, cases, path, title):
    plt = bt.load_pyplot()
    if plt is None:
        return None
    groups = {}
    for case, r in zip(cases, records):
        key = f"qkv {case.model.name}" if case.op == "qkv" else f"{case.op} H={case.hidden}"
        groups.setdefault(key, []).append(r)
    columns = min(3, len(groups))
    lines = math.ceil(len(groups) / columns)
    figure, axes = plt.subplots(lines, columns, squeeze=False,
                                figsize=(5.2 * columns, 4.2 * lines))
    for ax in axes.flat[len(groups):]:
        ax.set_visible(False)
    for ax, (key, rows) in zip(axes.flat, groups.items()):
        rows = sorted(rows, key=lambda r: r["rows"])
        for colour, impl in enumerate(("minivllm", "torch", "numpy")):
            points = [(r["rows"], r["timings"][impl]["us"]) for r in rows
                      if "us" in r["timings"].get(impl, {})]
            if points:
                ax.plot(*zip(*points), marker="o", color=f"C{colour}", label=impl,
                        linewidth=2 if impl == "minivllm" else 1)
        ax.plot([r["rows"] for r in rows], [r["floor_us"] for r in rows], "k--", label="floor")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("M (rows / tokens)")
        ax.set_ylabel("µs per call")
        ax.set_title(key, fontsize=9)
        ax.grid(which="both", alpha=0.3)
        ax.legend(fontsize=7)
    return bt.save_figure(plt, figure, path, title, dpi=110, title_size=10)


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------
def parse_args(argv):
    parser = argparse.ArgumentParser(prog="minivllm-bench",
                                     description=__doc__.split("\n")[0],
                                     epilog=__doc__[__doc__.index("examples:"):],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--check-only", action="store_true", help="run only the self-check")
    parser.add_argument("--model", nargs="+", default=[], metavar="NAME",
                        help="time the QKV op of these presets: "
                             + ", ".join(MODELS) + ", or all")
    parser.add_argument("--qkv", nargs="+", default=[], type=qkv_shape_arg,
                        metavar="H,HEADS,KV_HEADS,HEAD_DIM", help="time the QKV op at this shape")
    parser.add_argument("--hidden", nargs="+", default=[], metavar="H",
                        help="time rms_norm and fused_add_rms_norm at these hidden sizes")
    parser.add_argument("--m", nargs="+", metavar="M",
                        help="rows (tokens) per call, for every op (default: norms "
                             f"{DEFAULT_NORM_M['cuda']}, QKV {DEFAULT_QKV_M['cuda']}; on the "
                             f"CPU {DEFAULT_NORM_M['cpu']} and {DEFAULT_QKV_M['cpu']})")
    parser.add_argument("--ops", nargs="+", metavar="OP",
                        help=f"only these ops ({', '.join(OPS)})")
    parser.add_argument("--dtype", type=bt.parse_dtype,
                        help="dtype of the timings (default bf16, or fp16 where bf16 arrays "
                             "are unavailable: CuPy without PyTorch)")
    parser.add_argument("--repeats", type=int, default=10,
                        help="timed graph replays (GPU) or batches (CPU) per measurement")
    bt.add_kernel_args(parser)
    parser.add_argument("--json", metavar="PATH", help="write every figure to this JSON file")
    parser.add_argument("--plot", metavar="PATH",
                        help="plot µs against M per op and shape into this PNG (matplotlib)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar (drawn on stderr when it is a terminal)")
    args = parser.parse_args(argv)
    try:
        args.model = [n.lower() for n in bt.flat_list(args.model, str)]
        if "all" in args.model:
            args.model = list(MODELS)
        for name in args.model:
            find_model(name)
        args.hidden = bt.flat_list(args.hidden, int)
        args.m = bt.flat_list(args.m, int) if args.m else None
        args.ops = bt.flat_list(args.ops, str) if args.ops else None
    except ValueError as error:
        parser.error(str(error))
    if args.ops and any(op not in OPS for op in args.ops):
        parser.error(f"--ops: choose from {', '.join(OPS)}")
    if min(args.hidden + (args.m or [1])) < 1:
        parser.error("--hidden and --m take positive integers")
    if args.repeats < 3:
        parser.error("--repeats: at least 3")
    return parser, args


def main(argv=None):
    parser, args = parse_args(argv)
    device = args.device
    if device == "auto":
        device = "cuda" if minivllm.cuda_available() else "cpu"
    if device == "cuda" and not minivllm.cuda_available():
        parser.error("--device cuda: minivllm has no usable CUDA device "
                     f"(CUDA kernels built: {minivllm.cuda_built()})")
    print(f"minivllm {minivllm.__version__}: CUDA kernels built: {minivllm.cuda_built()}, "
          f"CUDA devices: {minivllm.cuda_device_count()}; running on {device}")
    started = time.perf_counter()
    cases, qkv_models = build_cases(args, device)
    checked_models = [MODELS[SELF_CHECK_MODEL]]
    checked_models += [m for m in qkv_models if m not in checked_models]
    backend = checks.Backend(device)
    rng = np.random.default_rng()
    kwargs = {"norm": bt.kernel_kwargs(args), "qkv": bt.kernel_kwargs(args, qkv=True)}
    failures, check_records = checks.self_check(backend, rng, checked_models,
                                                qkv_kwargs=kwargs["qkv"],
                                                norm_kwargs=kwargs["norm"])

    report = {"kind": "minivllm-bench", "device": device, "date":
              bt.utc_now().isoformat(timespec="seconds"), "commit": bt.git_commit("."),
              "versions": bt.library_versions(), "argv": sys.argv[1:] if argv is None else argv,
              "kernel_kwargs": {op: {k: str(v) for k, v in kw.items()}
                                for op, kw in kwargs.items()},
              "self_check": check_records}
    records = []
    timer = None
    if not args.check_only and cases:
        dtype_name = args.dtype or ("bf16" if "bfloat16" in backend.dtypes() else "fp16")
        if device == "cuda" and bt.torch is None:
            print("\nTiming on the GPU needs PyTorch (python3 -m pip install torch): skipped.")
        else:
            timer = (GpuTimer if device == "cuda" else CpuTimer)(dtype_name, args.repeats, kwargs)
            progress = bt.Progress(len(cases), enabled=False if args.no_progress else None)
            timings = []
            for case in cases:
                progress.step(" ".join(case_name(case)))
                timings.append(timer.time_case(case))
                progress.advance()
            progress.close()
            timer.close()
            settle_gemm_ceiling(cases, timings, timer, dtype_name)
            records = [make_record(case, dtype_name, timing, timer)
                       for case, timing in zip(cases, timings)]
            print_summary(records, cases, timer, dtype_name)
            failures += sum(r["wrong"] for r in records)
            report.update(dtype=dtype_name, method=timer.method, ceilings=timer.ceilings,
                          results=records)
            if device == "cuda":
                report["gpu"] = bt.gpu_metadata()
    report["total_seconds"] = time.perf_counter() - started
    if args.json:
        print(f"\nresults: {bt.write_json(args.json, report)}")
    if args.plot:
        if not records:
            print("--plot: nothing was timed, no plot")
        else:
            plot = write_plot(records, cases, args.plot,
                              f"minivllm on {report.get('gpu', {}).get('name', device)}, "
                              f"{report['dtype']}, {report['commit'][:12]}")
            if plot:
                print(f"plot: {plot}")
    if failures:
        print(f"\n{failures} check(s) FAILED", file=sys.stderr)
        return 1
    checked = records and device == "cuda"
    print("\nself-check passed" + (" (and every timed result checked)" if checked else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
