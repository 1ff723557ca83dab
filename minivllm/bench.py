"""python -m minivllm.bench: a correctness self-check, then a timing table of the three ops.

Runs on the GPU when minivllm's CUDA kernels and a GPU are usable (arrays from PyTorch, else
CuPy), otherwise on the CPU with NumPy. The self-check compares every op and dtype against the
float64 reference on fresh random inputs; the process exits non-zero if any check fails.
Timings are medians of repeated calls (CUDA events on the GPU); on the GPU, PyTorch's eager
equivalents are timed in the same run for comparison when PyTorch is present.
"""

import argparse
import statistics
import sys
import time

import numpy as np

import minivllm
from minivllm import reference

MODELS = {  # name: (hidden, num_heads, num_kv_heads, head_dim)
    "qwen2.5-0.5b": (896, 14, 2, 64),
    "qwen3-0.6b": (1024, 16, 8, 128),
    "llama-3-8b": (4096, 32, 8, 128),
}


class Backend:
    """Makes arrays on one device and times calls there."""

    def __init__(self, device):
        self.device = device
        self.torch = self.cupy = None
        self.bf16 = None
        if device == "cuda":
            try:
                import torch
                self.torch = torch
            except ImportError:
                import cupy
                self.cupy = cupy
        else:
            try:
                import ml_dtypes
                self.bf16 = ml_dtypes.bfloat16
            except ImportError:
                pass

    def dtypes(self):
        if self.torch is not None or self.bf16 is not None:
            return ["bfloat16", "float16", "float32"]
        return ["float16", "float32"]

    def array(self, values, dtype):
        """values (float64 NumPy) as this backend's array of `dtype`."""
        if self.torch is not None:
            t = getattr(self.torch, dtype)
            return self.torch.from_numpy(np.ascontiguousarray(values)).to("cuda").to(t)
        if self.cupy is not None:
            return self.cupy.asarray(values.astype(dtype))
        return values.astype(self.bf16 if dtype == "bfloat16" else dtype)

    def to_numpy(self, a):
        if self.torch is not None:
            return a.double().cpu().numpy()
        if self.cupy is not None:
            return self.cupy.asnumpy(a).astype(np.float64)
        return np.asarray(a).astype(np.float64)

    def time_us(self, fn, repeats):
        """Median µs per call of fn over `repeats` timed batches."""
        fn()  # warm-up (allocations, first launch)
        batch = 20 if self.device == "cuda" else 3
        samples = []
        if self.torch is not None:
            torch = self.torch
            for _ in range(repeats):
                start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(batch):
                    fn()
                stop.record()
                stop.synchronize()
                samples.append(start.elapsed_time(stop) * 1e3 / batch)
        elif self.cupy is not None:
            cupy = self.cupy
            for _ in range(repeats):
                start, stop = cupy.cuda.Event(), cupy.cuda.Event()
                start.record()
                for _ in range(batch):
                    fn()
                stop.record()
                stop.synchronize()
                samples.append(cupy.cuda.get_elapsed_time(start, stop) * 1e3 / batch)
        else:
            for _ in range(repeats):
                t0 = time.perf_counter()
                for _ in range(batch):
                    fn()
                samples.append((time.perf_counter() - t0) * 1e6 / batch)
        return statistics.median(samples)


def random_inputs(rng, backend, dtype, shape, hidden, n_out=None):
    x = rng.standard_normal(shape)
    r = rng.standard_normal(shape)
    g = rng.uniform(0.5, 1.5, hidden)
    w = rng.standard_normal((n_out, hidden)) / np.sqrt(hidden) if n_out else None
    # Round through the dtype so the float64 reference sees exactly what the kernel reads.
    x, r, g = (reference.round_to(a, dtype) for a in (x, r, g))
    w = reference.round_to(w, dtype) if w is not None else None
    arrays = [backend.array(a, dtype) if a is not None else None for a in (x, r, g, w)]
    return (x, r, g, w), arrays


def self_check(backend, rng):
    print(f"Self-check on {backend.device} against the float64 reference (relative error):")
    failures = 0
    rows = []
    for dtype in backend.dtypes():
        tol = reference.TOLERANCE[dtype]
        (x, r, g, _), (xa, ra, ga, _) = random_inputs(rng, backend, dtype, (37, 1000), 1000)
        err = reference.relative_error(backend.to_numpy(minivllm.rms_norm(xa, ga)),
                                       reference.rms_norm(x, g))
        rows.append(("rms_norm", dtype, "37x1000", err, tol))
        normed, new_res = minivllm.fused_add_rms_norm(xa, ra, ga)
        ref_n, ref_s = reference.fused_add_rms_norm(x, r, g, 1e-6, dtype)
        err = max(reference.relative_error(backend.to_numpy(normed), ref_n),
                  reference.relative_error(backend.to_numpy(new_res), ref_s))
        rows.append(("fused_add_rms_norm", dtype, "37x1000", err, tol))
        hidden, nh, nkv, hd = MODELS["qwen2.5-0.5b"]
        n_out = (nh + 2 * nkv) * hd
        (x, r, g, w), (xa, ra, ga, wa) = random_inputs(rng, backend, dtype, (13, hidden), hidden, n_out)
        # W.T: the transposed-view layout, as `layer.qkv_proj.weight.t()` hands it over.
        outs = minivllm.FusedRMSNormQKV.forward(xa, ga, wa.T, nh, nkv)
        refs = reference.fused_rms_norm_qkv(x, g, w, nh, nkv)
        err = max(reference.relative_error(backend.to_numpy(o), ref) for o, ref in zip(outs, refs))
        rows.append(("fused_rms_norm_qkv", dtype, f"13x{hidden}->{n_out}", err,
                     reference.QKV_TOLERANCE[dtype]))
    for op, dtype, shape, err, tol in rows:
        ok = err <= tol
        failures += not ok
        print(f"  {op:20s} {dtype:9s} {shape:16s} {err:9.2e}  (tolerance {tol:.0e})  {'ok' if ok else 'FAIL'}")
    return failures


def timing_table(backend, rng, repeats):
    dtype = "bfloat16" if "bfloat16" in backend.dtypes() else "float16"
    elem = 2
    torch = backend.torch
    print(f"\nTimings on {backend.device}, {dtype}, median of {repeats} batches "
          "(eager calls from Python, so small shapes measure host overhead too):")
    header = f"  {'op':20s} {'shape':28s} {'µs':>10s} {'GB/s':>8s}"
    if torch is not None:
        header += f" {'torch µs':>10s} {'speedup':>8s}"
    print(header)
    norm_shapes = [(1, 4096), (128, 4096), (4096, 4096)] if backend.device == "cuda" else [(1, 4096), (128, 4096), (1024, 4096)]
    for rows, hidden in norm_shapes:
        (_, _, _, _), (xa, ra, ga, _) = random_inputs(rng, backend, dtype, (rows, hidden), hidden)
        bytes_norm = 2 * rows * hidden * elem
        us = backend.time_us(lambda: minivllm.rms_norm(xa, ga), repeats)
        base = backend.time_us(lambda: torch.nn.functional.rms_norm(xa, (hidden,), ga, 1e-6), repeats) if torch is not None else None
        print_row(f"rms_norm", f"{rows}x{hidden}", us, bytes_norm, base)
        us = backend.time_us(lambda: minivllm.fused_add_rms_norm(xa, ra, ga), repeats)
        base = backend.time_us(lambda: torch.nn.functional.rms_norm(xa + ra, (hidden,), ga, 1e-6), repeats) if torch is not None else None
        print_row("fused_add_rms_norm", f"{rows}x{hidden}", us, 4 * rows * hidden * elem, base)
    qkv_cases = [("qwen3-0.6b", 1), ("qwen3-0.6b", 256), ("llama-3-8b", 1), ("llama-3-8b", 256)]
    if backend.device == "cuda":
        qkv_cases += [("qwen3-0.6b", 4096), ("llama-3-8b", 4096)]
    for model, rows in qkv_cases:
        hidden, nh, nkv, hd = MODELS[model]
        n_out = (nh + 2 * nkv) * hd
        (_, _, _, _), (xa, _, ga, wa) = random_inputs(rng, backend, dtype, (rows, hidden), hidden, n_out)
        moved = (rows * hidden + n_out * hidden + rows * n_out) * elem
        us = backend.time_us(lambda: minivllm.FusedRMSNormQKV.forward(xa, ga, wa, nh, nkv), repeats)
        base = None
        if torch is not None:
            def torch_qkv():
                y = torch.nn.functional.rms_norm(xa, (hidden,), ga, 1e-6)
                return torch.nn.functional.linear(y, wa).split([nh * hd, nkv * hd, nkv * hd], -1)
            base = backend.time_us(torch_qkv, repeats)
        print_row(f"qkv {model}", f"M={rows} {hidden}->{n_out}", us, moved, base)


def print_row(op, shape, us, moved_bytes, base_us):
    line = f"  {op:20s} {shape:28s} {us:10.1f} {moved_bytes / us / 1e3:8.1f}"
    if base_us is not None:
        line += f" {base_us:10.1f} {base_us / us:7.2f}x"
    print(line)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m minivllm.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--check-only", action="store_true", help="run only the self-check")
    args = parser.parse_args(argv)
    device = args.device
    if device == "auto":
        device = "cuda" if minivllm.cuda_available() else "cpu"
    if device == "cuda" and not minivllm.cuda_available():
        parser.error("--device cuda: minivllm has no usable CUDA device "
                     f"(CUDA kernels built: {minivllm.cuda_built()})")
    print(f"minivllm {minivllm.__version__}: CUDA kernels built: {minivllm.cuda_built()}, "
          f"CUDA devices: {minivllm.cuda_device_count()}; running on {device}")
    backend = Backend(device)
    rng = np.random.default_rng()
    failures = self_check(backend, rng)
    if not args.check_only:
        timing_table(backend, rng, args.repeats)
    if failures:
        print(f"\n{failures} self-check(s) FAILED", file=sys.stderr)
        return 1
    print("\nself-check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
