"""What the benchmarks share: the CUDA-graph timer, measured ceilings and floors, run metadata,
JSON and plot output, a progress bar and argument parsing helpers.

Used by `minivllm-bench`, benchmarks/bench_rms_norm.py and benchmarks/bench_fused_rms_norm_qkv.py,
so that all three time, bound and record their results the same way. The core minivllm modules
never import this package, and this module works without PyTorch for all but the GPU timing.

Timing method: N sets of buffers (N calls' worth, together at least
4x L2) are made, and G calls cycling through them (call i uses set i mod N; G a multiple of N) are
captured into one CUDA graph; after a warm-up the graph is replayed between CUDA events, and µs per
call is the median replay time / G. G is N, or the multiple of N that makes a replay last at
least MIN_REPLAY_US: the cycle keeps every call's inputs out of L2 (the N - 1 calls between two
uses of a set move >= 3x L2), and the longer replay spreads the fixed cost of starting one, which
a layer inside a model never pays, over enough calls to vanish. The ceilings (device-to-device copy bandwidth, GEMM rate) are measured
the same way in the same run, and a shape's floor is max(bytes that must move / copy bandwidth,
FLOPs / GEMM rate).
"""

import datetime
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

try:  # the GPU timing needs it; the CPU bench and metadata do not
    import torch
except ImportError:
    torch = None

EPS = 1e-6

DTYPE_ALIASES = {"bf16": "bf16", "bfloat16": "bf16", "fp16": "fp16", "float16": "fp16",
                 "half": "fp16", "fp32": "fp32", "float32": "fp32", "float": "fp32"}
DTYPE_NAMES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
ELEMENT_SIZE = {"bf16": 2, "fp16": 2, "fp32": 4}


def parse_dtype(value):
    """'bfloat16', 'bf16', ... -> 'bf16' (for argparse `type=` and flat_list)."""
    import argparse
    try:
        return DTYPE_ALIASES[value.lower()]
    except KeyError:
        raise argparse.ArgumentTypeError(f"unknown dtype {value!r} (bf16, fp16, fp32)") from None


def flat_list(values, convert):
    """['1024,4096', '8192'] -> [1024, 4096, 8192]: accepts spaces and commas."""
    return [convert(v) for value in values for v in value.split(",") if v]


# ---------------------------------------------------------------------------------------------
# bytes, FLOPs and floors
# ---------------------------------------------------------------------------------------------
def qkv_bytes(rows, hidden, features, element_size):
    """Bytes a fused RMSNorm + QKV call must move: W and γ read, x read, q, k, v written."""
    return (features * hidden + hidden + rows * hidden + rows * features) * element_size


def qkv_flops(rows, hidden, features):
    return 2 * rows * hidden * features


def norm_bytes(op, rows, hidden, element_size):
    """rms_norm reads x and writes y; the fused add also reads r and writes the new residual.

    The weight (H elements, read once per row from cache) is left out."""
    tensors = 2 if op == "rms_norm" else 4
    return tensors * rows * hidden * element_size


def floor_us(moved_bytes, flops, copy_gbps, gemm_tflops):
    """The fastest a call can be: max(bytes / copy bandwidth, FLOPs / GEMM rate), in µs."""
    memory_us = moved_bytes / copy_gbps / 1e3
    compute_us = flops / gemm_tflops / 1e6 if flops and gemm_tflops else 0.0
    return max(memory_us, compute_us)


# ---------------------------------------------------------------------------------------------
# CUDA-graph timing (PyTorch)
# ---------------------------------------------------------------------------------------------
L2_MULTIPLE = 4              # one replay touches >= 4x L2, so no call finds its inputs in L2
MIN_CALLS, MAX_CALLS = 2, 4000
# A replay shorter than this is made longer by cycling the buffer sets (time_per_call). With a
# few calls per graph (2-6 at the largest shapes) and a replay of tens of µs, the replay's own
# start-up -- from the start event to the first kernel and from the last kernel to the stop
# event -- was charged to the calls. --min-replay-us 0 gives the old method (G = N) back.
# Replays already longer (compute-bound shapes) are left alone, so sustained-load clocks do not
# change what they measure. 300 µs is bench_fused_rms_norm_qkv's length; bench_rms_norm asks for
# more (its NORM_MIN_REPLAY_US says why).
MIN_REPLAY_US = 300.0
MEMORY_CAP_BYTES = 4 << 30   # inputs + outputs of one graph; the 2-call floor may exceed it
SPIN_CYCLES = 10_000_000     # ~5 ms of GPU spin, during which the host queues every timed replay


# Host cost of eager calls (benchmarks/host_cost.py, bench_fused_rms_norm_qkv.py).
HOST_BURST_CALLS = 64            # calls per timed burst behind the spin kernel: with torch's longest
                                 # sequence (~10 kernels a call) well inside CUDA's launch queue
HOST_SPIN_SECONDS_PER_CALL = 300e-6  # the spin covers a burst even at 300 µs of host time per call


def host_us_per_call(torch, fn, bursts, on_cuda=True):
    """µs per call of host time alone, as (median, min, bursts left out) over `bursts` bursts of
    HOST_BURST_CALLS calls of fn. On CUDA each burst is issued while a spin kernel holds the GPU,
    so no call waits for the GPU (back-to-back calls of a kernel slower than the host would fill
    the launch queue and time the GPU instead); a burst the GPU caught up with is left out."""
    if on_cuda:
        clock_hz = 2.0e9  # an over-estimate of SM clocks spins longer, which is harmless
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        if getattr(props, "clock_rate", 0):
            clock_hz = props.clock_rate * 1e3
        spin_cycles = int(HOST_BURST_CALLS * HOST_SPIN_SECONDS_PER_CALL * clock_hz)
        stream = torch.cuda.current_stream()
    per_call, overran = [], 0
    for _ in range(bursts):
        if on_cuda:
            torch.cuda._sleep(spin_cycles)
        start = time.perf_counter()
        for _ in range(HOST_BURST_CALLS):
            fn()
        elapsed = time.perf_counter() - start
        if on_cuda and stream.query():
            overran += 1  # the GPU caught up: this burst may include waiting; leave it out
        else:
            per_call.append(elapsed / HOST_BURST_CALLS * 1e6)
        if on_cuda:
            torch.cuda.synchronize()
    if not per_call:
        raise RuntimeError("every burst outlasted its spin kernel; raise HOST_SPIN_SECONDS_PER_CALL")
    return statistics.median(per_call), min(per_call), overran


def loop_us_per_call(fn, calls, synchronize):
    """µs per call of `calls` back-to-back calls of fn, synchronized once at the end (after a
    warm-up of up to 200 calls): the steady rate of an eager stream, the larger of the host's
    cost and the GPU's time per call."""
    for _ in range(min(calls, 200)):
        fn()
    synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    synchronize()
    return (time.perf_counter() - start) / calls * 1e6


def calls_per_graph(bytes_per_call, l2_bytes, l2_multiple=L2_MULTIPLE, min_calls=MIN_CALLS,
                    max_calls=MAX_CALLS, memory_cap=MEMORY_CAP_BYTES, min_working_set=0):
    """How many calls (each on its own buffers) one graph holds: enough that a replay touches
    l2_multiple x L2 and at least min_working_set bytes, within [min_calls, max_calls] and the
    memory cap (min_calls wins over the cap)."""
    wanted = math.ceil(max(l2_multiple * l2_bytes, min_working_set) / bytes_per_call)
    return max(min_calls, min(wanted, memory_cap // bytes_per_call, max_calls))


MIN_DISTINCT_WEIGHT_BYTES = 256 << 20   # so that L2 (tens of MB) never holds the next call's W
QKV_MEMORY_CAP_BYTES = 16 << 30


def qkv_calls_per_graph(rows, hidden, features, element_size, l2_bytes,
                        memory_cap=QKV_MEMORY_CAP_BYTES):
    """Calls per graph for the QKV op: each call its own layer, >= 256 MiB of distinct weights
    and >= 4x L2 in all, within [MIN_CALLS, MAX_CALLS] and the memory cap."""
    moved = qkv_bytes(rows, hidden, features, element_size)
    weight_bytes = features * hidden * element_size
    wanted = max(math.ceil(MIN_DISTINCT_WEIGHT_BYTES / weight_bytes),
                 calls_per_graph(moved, l2_bytes, memory_cap=memory_cap))
    return max(MIN_CALLS, min(wanted, memory_cap // moved, MAX_CALLS))


def capture(call, calls, total=None):
    """A CUDA graph of call(0), ..., call(calls - 1), repeated until `total` calls (default
    `calls`; a multiple of it), and the results it must keep alive."""
    total = calls if total is None else total
    # Warm up on a side stream, as torch.cuda.graph's documentation prescribes: lazy
    # initialisation, the allocator's first blocks and torch.compile's compilation for this shape
    # all happen here, never during capture.
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            call(0)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    # Keep the last `calls` results referenced while capturing: otherwise the graph's memory pool
    # hands each call the block its predecessor's output just freed, and a baseline's outputs
    # would all land on one L2-resident buffer while minivllm writes to `calls` distinct ones. A
    # result older than that is released, so a baseline's outputs cycle too (over calls + 1
    # blocks) instead of taking `total` of them.
    results = []
    with torch.cuda.graph(graph):
        for i in range(total):
            results.append(call(i % calls))
            if len(results) > calls:
                results.pop(0)
    return graph, results


def replay_times_us(graph, replays):
    graph.replay()  # the first launch uploads the graph; not timed
    torch.cuda.synchronize()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
              for _ in range(replays)]
    # Keep the GPU busy while the host queues the replays, so that no host-side launch gap lands
    # between a start event and its replay.
    if hasattr(torch.cuda, "_sleep"):
        torch.cuda._sleep(SPIN_CYCLES)
    for start, stop in events:
        start.record()
        graph.replay()
        stop.record()
    torch.cuda.synchronize()
    return [start.elapsed_time(stop) * 1e3 for start, stop in events]


PROBE_REPLAYS = 3


def time_per_call(call, calls, replays, check_last=None, min_replay_us=None):
    """µs per call of call(i), i < calls: median, min and max over replays of a graph of G calls
    cycling through i = 0 .. calls - 1, G the least multiple of `calls` (at most MAX_CALLS, or
    `calls` if that is more) whose replay lasts min_replay_us (default MIN_REPLAY_US), judged
    from a few replays of a graph of `calls` calls.

    check_last(result), when given, sees the last call's result -- call(calls - 1) -- as the
    replays left it (before the graph and its memory pool are released); what it returns is
    stored under "check"."""
    wanted_us = MIN_REPLAY_US if min_replay_us is None else min_replay_us
    total = calls
    graph, results = capture(call, calls)
    if wanted_us > 0:
        probe_us = statistics.median(replay_times_us(graph, PROBE_REPLAYS))
        if probe_us < wanted_us:
            cycles = min(math.ceil(wanted_us / max(probe_us, 1e-3)), max(1, MAX_CALLS // calls))
            if cycles > 1:
                del graph, results
                total = calls * cycles
                graph, results = capture(call, calls, total)
    per_call = sorted(us / total for us in replay_times_us(graph, replays))
    timing = {"us": statistics.median(per_call), "us_min": per_call[0], "us_max": per_call[-1],
              "graph_calls": total}
    if check_last is not None:
        timing["check"] = check_last(results[-1])
    del graph, results
    return timing


COPY_BYTES = 2 << 30         # the copy ceiling's buffer, dozens of times any L2
COPY_CALLS = 4


def measure_copy_gbps(replays, copy_bytes=COPY_BYTES):
    """Device-to-device copy bandwidth (bytes read + written per second), graph-timed too.

    The ceiling is the faster of cudaMemcpy (copy_) and an elementwise copy kernel (mul by 1):
    on some parts one of the two leaves bandwidth on the table, and a ceiling set too low would
    flatter every fraction measured against it. Returns (ceiling, {method: GB/s})."""
    measured = _copy_rates(replays, copy_bytes)
    torch.cuda.empty_cache()
    return max(measured.values()), measured


def _copy_rates(replays, copy_bytes):
    source = torch.randn(copy_bytes // 4, device="cuda")
    target = torch.empty_like(source)
    methods = {"memcpy": lambda i: target.copy_(source),
               "elementwise": lambda i: torch.mul(source, 1.0, out=target)}
    return {name: 2 * copy_bytes / time_per_call(fn, COPY_CALLS, replays, min_replay_us=0)["us"] / 1e3
            for name, fn in methods.items()}


GEMM_SIZE = 8192


def measure_gemm_tflops(torch_dtype, replays, size=GEMM_SIZE, attempts=3):
    """Dense GEMM rate (TFLOP/s) of torch.matmul on random size x size x size operands.

    The fastest replay of a few short graphs: under sustained load the clocks fall to the power
    limit (on an H200 the median of longer graphs gave 703-715 TFLOP/s in some runs, 797 in
    another), and a ceiling set too low puts floors above what cuBLAS reaches. Callers still
    raise it to the fastest multiply seen in their run (fastest_multiply)."""
    a = torch.randn(size, size, device="cuda").to(torch_dtype)
    b = torch.randn(size, size, device="cuda").to(torch_dtype)
    out = torch.empty(size, size, device="cuda", dtype=torch_dtype)
    us = min(time_per_call(lambda i: torch.matmul(a, b, out=out), 2, replays,
                           min_replay_us=0)["us_min"]
             for _ in range(attempts))
    return 2 * size ** 3 / us / 1e6


def fastest_multiply(samples):
    """(TFLOP/s, label) of the fastest of (flops, µs, label) samples; (0.0, None) if none.

    A floor that some implementation beats is no floor: where a timed call multiplied faster
    than the measured GEMM rate, that rate is the ceiling to use."""
    best = (0.0, None)
    for flops, us, label in samples:
        if flops and us and flops / us / 1e6 > best[0]:
            best = (flops / us / 1e6, label)
    return best


def raise_compile_limits(limit):
    """Let dynamo compile up to `limit` variants per function, and fail loudly beyond.

    Past the recompile limit dynamo silently runs the eager code, and a "compiled" baseline that
    is eager would flatter whatever is compared with it."""
    import torch._dynamo  # torch imports dynamo lazily; its config must exist before compiling

    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(config, name):
            setattr(config, name, max(getattr(config, name), limit))
            break
    for name in ("accumulated_recompile_limit", "accumulated_cache_size_limit"):
        if hasattr(config, name):
            setattr(config, name, max(getattr(config, name), 4 * limit))
            break
    if hasattr(config, "fail_on_recompile_limit_hit"):
        config.fail_on_recompile_limit_hit = True


def add_compile_mode_arg(parser):
    """--compile-dynamic, read by compile_options."""
    parser.add_argument("--compile-dynamic", action="store_true",
                        help="torch.compile baselines in torch's default mode, whose sizes turn "
                             "dynamic after the first shape, instead of each shape compiled for itself")


def compile_options(args, **options):
    """(torch.compile keyword arguments, a description for the report) of a benchmark's compiled
    baselines: each shape compiled for itself (dynamic=False), as a model compiles its fixed sizes,
    unless --compile-dynamic. In the default mode one compiled function turns its sizes dynamic
    once a shape changes, and its norm kernels for later shapes ran 1.2-1.8x slower on an H200
    (dev/logs/norm-static-compile-nvidia-h200-2026-11-29.log)."""
    if not args.compile_dynamic:
        options["dynamic"] = False
    shown = ", ".join(f"{k}={v}" for k, v in options.items())
    return options, (f"torch.compile({shown})" + (
        " default mode (sizes become dynamic after a shape change)" if args.compile_dynamic
        else ", each shape its own"))


# ---------------------------------------------------------------------------------------------
# run metadata and output files
# ---------------------------------------------------------------------------------------------
def require_cuda(program):
    """Exit with a message naming what is missing unless torch and minivllm both see a GPU."""
    import minivllm
    if torch is None or not torch.cuda.is_available():
        sys.exit(f"{program}: no CUDA device visible to torch")
    if not minivllm.cuda_available():
        sys.exit(f"{program}: minivllm has no usable CUDA device (CUDA kernels built: "
                 f"{minivllm.cuda_built()}); install a CUDA build of minivllm")


def driver_version():
    try:
        return subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, check=True, timeout=30).stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "unknown"


def git_commit(where):
    """MINIVLLM_COMMIT if set (a copy of the tree without .git), else `git rev-parse HEAD`."""
    if os.environ.get("MINIVLLM_COMMIT"):
        return os.environ["MINIVLLM_COMMIT"]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True,
                                text=True, check=True, timeout=30).stdout.strip()
        return commit or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def library_versions():
    import minivllm
    versions = {"python": platform.python_version(), "minivllm": minivllm.__version__}
    if torch is not None:
        versions.update(torch=torch.__version__, torch_cuda=torch.version.cuda)
    try:
        import triton
        versions["triton"] = triton.__version__
    except Exception:  # missing or broken: whatever needs it fails loudly on its own
        pass
    return versions


def gpu_metadata():
    """Name, driver, memory, SMs and L2 of torch's current CUDA device."""
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    return {"name": props.name, "driver": driver_version(), "memory_bytes": props.total_memory,
            "sm_count": props.multi_processor_count, "l2_cache_bytes": props.L2_cache_size}


def utc_now():
    return datetime.datetime.now(datetime.timezone.utc)


def results_stem(op, device_name, date):
    """'qkv-nvidia-h200-2026-11-21': the file name (without suffix) of a results file."""
    slug = re.sub(r"[^a-z0-9]+", "-", device_name.lower()).strip("-") or "gpu"
    return f"{op}-{slug}-{date:%Y-%m-%d}"


def write_json(path, report):
    path = Path(path)
    if path.parent != Path(""):
        path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
    return path


def write_results(out_dir, stem, report, plot=None):
    """DIR/stem.json, then DIR/stem.png through plot(path) unless plot is None; prints both."""
    json_path = write_json(Path(out_dir) / f"{stem}.json", report)
    print(f"\nresults: {json_path}")
    if plot is not None:
        made = plot(Path(out_dir) / f"{stem}.png")
        if made:
            print(f"plot:    {made}")


def add_graph_run_args(parser, default_out, min_replay_us=MIN_REPLAY_US):
    """--out, --no-plot, --replays and --min-replay-us (default min_replay_us), as the
    graph-timed benchmark scripts take them."""
    parser.add_argument("--out", type=Path, default=default_out,
                        help="directory for the JSON and PNG (default benchmarks/results)")
    parser.add_argument("--no-plot", action="store_true", help="write no PNG")
    parser.add_argument("--replays", type=int_at_least(7), default=15,
                        help="timed graph replays per implementation and shape (at least 7)")
    parser.add_argument("--min-replay-us", type=float, default=min_replay_us,
                        help="cycle the buffer sets until a graph replay lasts this long (default "
                             f"{min_replay_us:g}; 0: one call per buffer set, the old method)")


def apply_graph_run_args(args):
    """Makes --min-replay-us the default of time_per_call."""
    global MIN_REPLAY_US
    MIN_REPLAY_US = args.min_replay_us


def int_at_least(minimum):
    """An argparse type: an integer no smaller than `minimum`."""
    import argparse

    def convert(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"at least {minimum}, got {value}")
        return value
    return convert


def save_figure(plt, figure, path, title, dpi=120, title_size=None):
    figure.suptitle(title, fontsize=title_size)
    figure.tight_layout()
    figure.savefig(path, dpi=dpi)
    plt.close(figure)
    return path


def load_pyplot():
    """matplotlib.pyplot with a file-only backend, or None after saying how to get it."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (python3 -m pip install matplotlib)")
        return None
    return plt


# ---------------------------------------------------------------------------------------------
# progress
# ---------------------------------------------------------------------------------------------
class Progress:
    """A one-line progress bar on stderr: `[#####-----]  5/10  12 s  <label>`.

    Drawn only where stderr is a terminal (a log file would fill with carriage returns) unless
    forced; stdout stays free for the results."""

    def __init__(self, total, enabled=None, width=30, stream=None):
        self.total = total
        self.stream = stream or sys.stderr
        self.enabled = (self.stream.isatty() if enabled is None else enabled) and total > 0
        self.width = width
        self.done = 0
        self.started = time.perf_counter()
        self._last_length = 0

    def step(self, label=""):
        """Draw the bar for the item about to run (label) after `done` items."""
        if not self.enabled:
            return
        filled = round(self.width * self.done / self.total)
        elapsed = time.perf_counter() - self.started
        count = f"{self.done:{len(str(self.total))}d}/{self.total}"
        line = f"[{'#' * filled}{'-' * (self.width - filled)}] {count}  {elapsed:4.0f} s  {label}"
        padding = " " * max(0, self._last_length - len(line))
        self.stream.write("\r" + line + padding)
        self.stream.flush()
        self._last_length = len(line)

    def advance(self, label=""):
        self.done += 1
        self.step(label)

    def close(self):
        if self.enabled and self._last_length:
            self.stream.write("\r" + " " * self._last_length + "\r")
            self.stream.flush()
            self._last_length = 0


# ---------------------------------------------------------------------------------------------
# the kernels' private switches, as command-line options
# ---------------------------------------------------------------------------------------------
# The GPU paths the QKV op's private _path= argument names (csrc/cuda/fused_rms_norm_qkv/
# dispatch.cu); the tests and scripts/sanitize_cases.py take the list from here.
QKV_PATHS = ("engine", "deferred", "register", "bulk", "wgmma", "cublaslt", "tile", "generic")
PDL_CHOICES = {"auto": None, "on": True, "off": False}


def add_kernel_args(parser, qkv_path=True):
    """--pdl (auto / on / off: the ops' pdl= argument) and, for the QKV op, --path (its private
    _path= override): what the environment variables of earlier versions switched."""
    parser.add_argument("--pdl", choices=sorted(PDL_CHOICES), default="auto",
                        help="programmatic dependent launch: auto (the library's choice), on, "
                             "off (the ops' pdl= argument)")
    if qkv_path:
        parser.add_argument("--path", choices=QKV_PATHS, default=None,
                            help="force this GPU path of the QKV op where it can take a call "
                                 "(the private _path= argument; default: the automatic table)")


def kernel_kwargs(args, qkv=False):
    """The keyword arguments that --pdl and --path ask for, for one op's calls."""
    kwargs = {}
    pdl = PDL_CHOICES[getattr(args, "pdl", "auto")]
    if pdl is not None:
        kwargs["pdl"] = pdl
    if qkv and getattr(args, "path", None):
        kwargs["_path"] = args.path
    return kwargs
