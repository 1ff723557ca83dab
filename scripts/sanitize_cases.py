#!/usr/bin/env python3
"""Every op through the public API on a CUDA device, for compute-sanitizer to watch.

Runs rms_norm, fused_add_rms_norm and FusedRMSNormQKV.forward on torch CUDA tensors over every
dtype, with and without residual, both QKV weight layouts (the nn.Linear weight [N, H] and its
.t() view), odd and aligned hidden sizes, contiguous and padded (strided, misaligned-start) rows,
per-head views for the norms (rows in two strides), allocated and given outputs, and M in
{1, 2, 3, 8, 16, 17, 33, 64, 100, 256, 300, 1024}, so every kernel path the ops select by shape
gets launched. Each result is checked against the float64 reference; a wrong result exits 1,
after all cases ran.

Inputs are made on the host and copied over, and results copied back before any arithmetic, so
almost every kernel the sanitizer sees is minivllm's. Run it with PYTORCH_NO_CUDA_MEMORY_CACHING=1
so each tensor is its own allocation and memcheck sees reads past its end.

usage: python3 scripts/sanitize_cases.py [--ms 1 17 ...] [--dtypes float32 ...] [--ops ...]
           [--qkv-max-m 32] [--qkv-shapes 1024:8:2:64 ...] [--path wgmma]
       compute-sanitizer --tool memcheck python3 scripts/sanitize_cases.py
"""
import argparse
import sys
import time

import numpy as np

try:
    import torch
except ImportError:
    sys.exit("sanitize_cases.py needs PyTorch with CUDA")

import minivllm
from minivllm.bench.models import parse_qkv_shape
from minivllm.bench.timing import QKV_PATHS
from minivllm.reference import (QKV_TOLERANCE, TOLERANCE, fused_add_rms_norm, fused_rms_norm_qkv,
                                relative_error, rms_norm, round_to)

MS = [1, 2, 3, 8, 16, 17, 33, 64, 100, 256, 300, 1024]
DTYPES = ["float32", "float16", "bfloat16"]
OPS = ["rms_norm", "fused_add_rms_norm", "qkv"]
# (H, num_heads, num_kv_heads, head_dim): odd H (scalar paths), a GQA model-like shape, and a
# small square-ish one where N == H (layouts told apart by strides)
QKV_SHAPES = [(257, 4, 2, 16), (1024, 8, 2, 64), (96, 2, 1, 24)]
NORM_HIDDEN = [1001, 4096, 64, 8191]


def to_device(a64, dtype):
    """float64 values (already representable in dtype) -> a CUDA tensor, by a host copy."""
    if dtype == "float32":
        host = torch.from_numpy(np.ascontiguousarray(a64, np.float32))
    elif dtype == "float16":
        host = torch.from_numpy(np.ascontiguousarray(a64, np.float16))
    else:  # bfloat16: the top half of the float32 bits (exact: values are already bf16)
        bits = (np.ascontiguousarray(a64, np.float32).view(np.uint32) >> 16).astype(np.uint16)
        host = torch.from_numpy(bits.view(np.int16)).view(torch.bfloat16)
    return host.cuda()


def to64(t):
    """A CUDA tensor -> float64 numpy, converting on the host (no torch kernel on the device)."""
    if t.dtype == torch.float32:
        return t.cpu().numpy().astype(np.float64)
    bits = t.view(torch.int16).cpu().numpy()
    if t.dtype == torch.float16:
        return bits.view(np.float16).astype(np.float64)
    return (bits.view(np.uint16).astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def padded(a64, dtype):
    """Rows of a wider NaN-filled allocation starting one element in: [M, H] with row stride H+3."""
    M, H = a64.shape
    big = np.full((M, H + 3), np.nan)
    big[:, 1:H + 1] = a64
    return to_device(big, dtype)[:, 1:H + 1]


def heads(a64, dtype):
    """[M, 2, D] as the last two heads of a NaN-filled packed [M, 3, D] allocation: rows in two
    strides, the view ending where the allocation does (a read past its last row leaves it)."""
    M, n, D = a64.shape
    big = np.full((M, n + 1, D), np.nan)
    big[:, 1:] = a64
    return to_device(big, dtype)[:, 1:]


def norm_rows(a64, dtype, layout):
    return {"padded": padded, "heads": heads}.get(layout, to_device)(a64, dtype)


def data(rng, shape, dtype, scale=1.0):
    return round_to(rng.standard_normal(shape) * scale, dtype)


class Checker:
    def __init__(self):
        self.cases = self.failures = 0

    def check(self, label, got, ref, tol, exact=False):
        err = relative_error(to64(got), ref)
        bad = (err != 0.0) if exact else not (err <= tol)
        if bad:
            self.failures += 1
            print(f"MISMATCH {label}: relative error {err:.3g} (tolerance {0 if exact else tol})",
                  flush=True)
        return not bad


def run(args):
    rng = np.random.default_rng(args.seed)
    checker = Checker()
    i = 0
    for M in args.ms:
        # progress, so a run stopped by a time limit shows how far it got
        print(f"M={M}: {checker.cases} calls checked so far", flush=True)
        for dtype in args.dtypes:
            i += 1
            layout = "padded" if i % 2 else "contig"
            tol = TOLERANCE[dtype]
            if "rms_norm" in args.ops or "fused_add_rms_norm" in args.ops:
                H = NORM_HIDDEN[i % len(NORM_HIDDEN)]
                rows_layout = ("contig", "padded", "heads")[i % 3]
                shape = (M, 2, H) if rows_layout == "heads" else (M, H)
                x64, r64 = data(rng, shape, dtype), data(rng, shape, dtype)
                w64 = data(rng, (H,), dtype) + 1.0
                w64 = round_to(w64, dtype)
                x = norm_rows(x64, dtype, rows_layout)
                r, w = to_device(r64, dtype), to_device(w64, dtype)
                if "rms_norm" in args.ops:
                    label = f"rms_norm {dtype} M={M} H={H} {rows_layout}"
                    y = minivllm.rms_norm(x, w)
                    checker.check(label, y, rms_norm(x64, w64), tol)
                    out = torch.empty_like(r)
                    minivllm.rms_norm(x, w, out=out)
                    checker.check(label + " out=", out, rms_norm(x64, w64), tol)
                    checker.cases += 2
                if "fused_add_rms_norm" in args.ops:
                    label = f"fused_add_rms_norm {dtype} M={M} H={H} {rows_layout}"
                    ref_n, ref_s = fused_add_rms_norm(x64, r64, w64, 1e-6, dtype)
                    n, s = minivllm.fused_add_rms_norm(x, r, w)
                    checker.check(label, n, ref_n, tol)
                    checker.check(label + " residual", s, ref_s, 0, exact=True)
                    in_place = heads if rows_layout == "heads" else to_device
                    xi, ri = in_place(x64, dtype), in_place(r64, dtype)
                    minivllm.fused_add_rms_norm(xi, ri, w, inplace=True)
                    checker.check(label + " inplace", xi, ref_n, tol)
                    checker.check(label + " inplace residual", ri, ref_s, 0, exact=True)
                    checker.cases += 2
            if "qkv" in args.ops and M <= args.qkv_max_m:
                H, nh, nkv, hd = args.qkv_shapes[i % len(args.qkv_shapes)]
                N = (nh + 2 * nkv) * hd
                x64 = data(rng, (M, H), dtype)
                g64 = round_to(data(rng, (H,), dtype) * 0.5 + 1.0, dtype)
                W64 = data(rng, (N, H), dtype, 1 / np.sqrt(H))
                r64 = data(rng, (M, H), dtype)
                x = padded(x64, dtype) if layout == "padded" else to_device(x64, dtype)
                g, W = to_device(g64, dtype), to_device(W64, dtype)
                qtol = QKV_TOLERANCE[dtype]
                # the nn.Linear weight [N, H], and its .t() view [H, N] (strides (1, H)) as the
                # integration passes it
                for wlayout in ("W", "W.t()"):
                    Warg = W if wlayout == "W" else W.t()
                    for with_residual in (False, True):
                        label = (f"qkv {dtype} M={M} H={H} heads={nh}/{nkv}x{hd} {wlayout} "
                                 f"{layout}{' residual' if with_residual else ''}")
                        if with_residual:
                            r = to_device(r64, dtype)
                            q, k, v, s = minivllm.FusedRMSNormQKV.forward(
                                x, g, Warg, nh, nkv, residual=r, _path=args.path)
                            refs = fused_rms_norm_qkv(x64, g64, W64, nh, nkv, 1e-6, r64, dtype)
                            checker.check(label + " residual", s, refs[3], 0, exact=True)
                        else:
                            q, k, v = minivllm.FusedRMSNormQKV.forward(x, g, Warg, nh, nkv,
                                                                       _path=args.path)
                            refs = fused_rms_norm_qkv(x64, g64, W64, nh, nkv, 1e-6)
                        for name, got, ref in zip("qkv", (q, k, v), refs):
                            checker.check(f"{label} {name}", got, ref, qtol)
                        checker.cases += 1
    torch.cuda.synchronize()
    return checker


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ms", nargs="+", type=int, default=MS)
    parser.add_argument("--dtypes", nargs="+", choices=DTYPES, default=DTYPES)
    parser.add_argument("--ops", nargs="+", choices=OPS, default=OPS)
    parser.add_argument("--seed", type=int, default=0)
    # initcheck cannot see the q/k/v that cuBLASLt's Hopper kernels store (bulk tensor copies from
    # shared memory), so reading them back is reported as uninitialized although every value was
    # checked; gpu_check.sh limits initcheck's QKV cases to the M our W-stream kernels write
    # (16) and runs them all once more on the generic kernel (--path generic).
    parser.add_argument("--qkv-max-m", type=int, default=sys.maxsize,
                        help="run QKV cases only up to this M (default: all)")
    # racecheck reports hazards inside cuBLASLt's own Hopper kernels (nvjet); a forced path's run
    # keeps to the shapes that path takes, so that what it reports is minivllm's
    parser.add_argument("--qkv-shapes", nargs="+", type=lambda text: tuple(parse_qkv_shape(text)[1:]),
                        default=QKV_SHAPES,
                        metavar="H:HEADS:KV_HEADS:HEAD_DIM",
                        help="QKV shapes, taken in turn (default: %(default)s)")
    parser.add_argument("--path", choices=list(QKV_PATHS), default=None,
                        help="force this GPU path of the QKV op where it can take a call (the "
                             "private _path= argument; default: the automatic choice)")
    args = parser.parse_args(argv)
    if not minivllm.cuda_available():
        sys.exit("sanitize_cases.py: no usable CUDA device (minivllm.cuda_available() is False)")
    start = time.time()
    checker = run(args)
    print(f"sanitize_cases: {checker.cases} calls checked, {checker.failures} mismatches, "
          f"{time.time() - start:.1f} s", flush=True)
    return 1 if checker.failures else 0


if __name__ == "__main__":
    sys.exit(main())
