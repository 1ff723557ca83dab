"""The one correctness self-check of the benchmarks and the CLI, and the float64 checks of timed
results: both compare against minivllm.reference (float64 NumPy), the tests' reference too.

The self-check runs every op and dtype (and the QKV op of every model given) on fresh random
inputs, on the GPU (PyTorch tensors, else CuPy arrays) or the CPU (NumPy arrays); a timed result
is checked on a sample of its rows (rows are independent, so the sample's reference is exact and
the check stays cheap at M = 16384).
"""

import math

import ml_dtypes
import numpy as np

import minivllm
from minivllm import reference

from .models import qkv_features

EPS = 1e-6
SAMPLE_ROWS = 64


class Backend:
    """Makes arrays on one device ("cuda" or "cpu") for the self-check."""

    def __init__(self, device):
        self.device = device
        self.torch = self.cupy = None
        if device == "cuda":
            try:
                import torch
                self.torch = torch
            except ImportError:
                import cupy
                self.cupy = cupy

    def dtypes(self):
        if self.cupy is not None:
            return ["float16", "float32"]  # CuPy has no bfloat16 arrays
        return ["bfloat16", "float16", "float32"]

    def array(self, values, dtype):
        """values (float64 NumPy, representable in dtype) as this backend's array of dtype."""
        if self.torch is not None:
            t = getattr(self.torch, dtype)
            return self.torch.from_numpy(np.ascontiguousarray(values)).to("cuda").to(t)
        if self.cupy is not None:
            return self.cupy.asarray(values.astype(dtype))
        return values.astype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)

    def nan(self, shape, dtype):
        return self.array(np.full(shape, np.nan), dtype)

    def to_numpy(self, a):
        return to_float64(a)


def to_float64(a):
    """Any result array (torch, CuPy, NumPy) as a float64 NumPy array on the host."""
    module = type(a).__module__ or ""
    if module.startswith("torch"):
        return a.detach().double().cpu().numpy()
    if module.startswith("cupy"):
        import cupy
        return cupy.asnumpy(a).astype(np.float64)
    return np.asarray(a).astype(np.float64)


def random_inputs(rng, dtype, shape, hidden, n_out=None):
    """x, residual, gamma and (with n_out) W [n_out, H], float64 holding dtype's values."""
    x = reference.round_to(rng.standard_normal(shape), dtype)
    r = reference.round_to(rng.standard_normal(shape), dtype)
    g = reference.round_to(rng.uniform(0.5, 1.5, hidden), dtype)
    w = (reference.round_to(rng.standard_normal((n_out, hidden)) / np.sqrt(hidden), dtype)
         if n_out else None)
    return x, r, g, w


def self_check(backend, rng, qkv_models, dtypes=None, ops=("rms_norm", "fused_add_rms_norm",
                                                           "qkv"), qkv_rows=(13, 1),
               qkv_kwargs=None, norm_kwargs=None, verbose=True):
    """Every op in `ops` and dtype against the float64 reference: the norms at 37 x 1000, the QKV
    op of each model at each of qkv_rows (the first into NaN-filled outputs, the others
    allocated by minivllm; W passed as W.t(), as an integration hands nn.Linear's weight over).
    Returns (failures, records)."""
    qkv_kwargs, norm_kwargs = qkv_kwargs or {}, norm_kwargs or {}
    if verbose:
        print(f"Self-check on {backend.device} against the float64 reference (relative error):")
    rows = []

    def run(op, dtype, shape, tol, compute):
        try:
            err = compute()
        except Exception as error:  # a raising kernel is a failed check, reported
            print(f"  {op} {dtype} {shape}: {type(error).__name__}: {error}")
            err = math.inf
        rows.append((op, dtype, shape, err, tol))

    for dtype in dtypes or backend.dtypes():
        tol = reference.TOLERANCE[dtype]
        x, r, g, _ = random_inputs(rng, dtype, (37, 1000), 1000)
        xa, ra, ga = (backend.array(a, dtype) for a in (x, r, g))
        if "rms_norm" in ops:
            run("rms_norm", dtype, "37x1000", tol, lambda: reference.relative_error(
                backend.to_numpy(minivllm.rms_norm(xa, ga, EPS, **norm_kwargs)),
                reference.rms_norm(x, g, EPS)))
        if "fused_add_rms_norm" in ops:
            def fused():
                normed, new_res = minivllm.fused_add_rms_norm(xa, ra, ga, EPS, **norm_kwargs)
                ref_n, ref_s = reference.fused_add_rms_norm(x, r, g, EPS, dtype)
                return max(reference.relative_error(backend.to_numpy(normed), ref_n),
                           reference.relative_error(backend.to_numpy(new_res), ref_s))
            run("fused_add_rms_norm", dtype, "37x1000", tol, fused)
        if "qkv" not in ops:
            continue
        for model in qkv_models:
            n_out = qkv_features(model)
            heads = (model.num_heads, model.num_kv_heads, model.num_kv_heads)
            for i, m in enumerate(qkv_rows):
                x, _, g, w = random_inputs(rng, dtype, (m, model.hidden), model.hidden, n_out)
                xa, ga, wa = (backend.array(a, dtype) for a in (x, g, w))

                def qkv(i=i, m=m, x=x, g=g, w=w, xa=xa, ga=ga, wa=wa):
                    out = None if i else tuple(backend.nan((m, h, model.head_dim), dtype)
                                               for h in heads)
                    outs = minivllm.FusedRMSNormQKV.forward(
                        xa, ga, wa.T, model.num_heads, model.num_kv_heads, EPS, out=out,
                        **qkv_kwargs)
                    refs = reference.fused_rms_norm_qkv(x, g, w, model.num_heads,
                                                        model.num_kv_heads, EPS)
                    return max(reference.relative_error(backend.to_numpy(o), ref)
                               for o, ref in zip(outs, refs))
                run(f"qkv {model.name}", dtype, f"{m}x{model.hidden}->{n_out}",
                    reference.QKV_TOLERANCE[dtype], qkv)
    failures = 0
    records = []
    for op, dtype, shape, err, tol in rows:
        ok = err <= tol   # NaN fails
        failures += not ok
        records.append({"op": op, "dtype": dtype, "shape": shape, "relative_error": err,
                        "tolerance": tol, "ok": ok})
        if verbose:
            print(f"  {op:20s} {dtype:9s} {shape:16s} {err:9.2e}  (tolerance {tol:.0e})  "
                  f"{'ok' if ok else 'FAIL'}")
    return failures, records


# ---------------------------------------------------------------------------------------------
# checks of timed results (the last call of a graph)
# ---------------------------------------------------------------------------------------------
def sample_rows(rows, limit=SAMPLE_ROWS):
    """Up to `limit` row indices spread over [0, rows), the first and the last included."""
    return np.unique(np.linspace(0, rows - 1, min(rows, limit)).round().astype(np.int64))


def _take(a, picked):
    """Rows `picked` of a (torch, CuPy or NumPy array), as float64 NumPy."""
    return to_float64(a[picked.tolist()])


def _rows_of(result, picked):
    """A result (array, or the tuple q, k, v, ...) as float64 [len(picked), features]: each
    part's rows flattened and joined, the first three parts only for a tuple."""
    parts = result[:3] if isinstance(result, (tuple, list)) else (result,)
    return np.concatenate([_take(p, picked).reshape(len(picked), -1) for p in parts],
                          axis=-1)


def checker(tolerance, want, picked):
    """check(result) -> {"relative_error", "tolerance", "ok"}: the result's rows `picked` against
    want (float64 [len(picked), features]); NaN anywhere fails."""
    def check(result):
        got = _rows_of(result, picked)
        error = reference.relative_error(got, want)
        error = error if math.isfinite(error) else math.inf
        return {"relative_error": error, "tolerance": tolerance, "ok": error <= tolerance,
                "rows_checked": int(len(picked))}
    return check


def qkv_want(x, gamma, weight, picked, eps=EPS):
    """The float64 q|k|v rows `picked` of rms_norm(x) · Wᵀ (weight: W [N, H]), [len, N]."""
    return reference.rms_norm(_take(x, picked), to_float64(gamma), eps) @ to_float64(weight).T


def rms_norm_want(x, gamma, picked, eps=EPS):
    return reference.rms_norm(_take(x, picked), to_float64(gamma), eps)


def fused_add_want(x, residual, gamma, picked, dtype, eps=EPS):
    """The normalized rows `picked` of x + residual (the sum rounded to dtype first, as stored)."""
    normed, _ = reference.fused_add_rms_norm(_take(x, picked), _take(residual, picked),
                                             to_float64(gamma), eps, dtype)
    return normed
