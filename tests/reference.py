"""float64 NumPy references for the minivllm ops, and the comparison helpers.

All references take float64 arrays holding the exact values of the (already rounded) inputs.
"""
import ml_dtypes
import numpy as np

TOL = {"float32": 1e-5, "float16": 1e-2, "bfloat16": 1e-2}
QKV_TOL = {"float32": 1e-5, "float16": 5e-3, "bfloat16": 1e-2}

_NP = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}


def round_to(a64, dtype):
    """Round float64 values to dtype (nearest even) and return them as float64."""
    return np.asarray(a64, np.float64).astype(_NP[dtype]).astype(np.float64)


def rms_norm_ref(x, w, eps):
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        ms = np.mean(x * x, axis=-1, keepdims=True)
        rrms = 1.0 / np.sqrt(ms + eps)
        return w * (x * rrms)


def fused_add_rms_norm_ref(x, residual, w, eps, dtype):
    """(normed, new_residual): new_residual = x + residual rounded to dtype, then normalized."""
    with np.errstate(invalid="ignore", over="ignore"):
        s = round_to(np.asarray(x, np.float64) + np.asarray(residual, np.float64), dtype)
    return rms_norm_ref(s, w, eps), s


def qkv_ref(x, w, W, num_heads, num_kv_heads, eps, residual=None, dtype=None):
    """(q, k, v) or (q, k, v, new_residual); W is the nn.Linear weight [N, H] in float64."""
    x = np.asarray(x, np.float64)
    W = np.asarray(W, np.float64)
    s = None
    if residual is not None:
        y, s = fused_add_rms_norm_ref(x, residual, w, eps, dtype)
    else:
        y = rms_norm_ref(x, w, eps)
    N = W.shape[0]
    hd = N // (num_heads + 2 * num_kv_heads)
    lead = x.shape[:-1]
    with np.errstate(invalid="ignore", over="ignore"):
        out = (y.reshape(-1, x.shape[-1]) @ W.T).reshape(lead + (N,))
        # BLAS may not propagate NaN through every path; enforce IEEE semantics row-wise
        bad = ~np.isfinite(y).all(axis=-1)
        out[bad] = np.nan
    qc, kc = num_heads * hd, num_kv_heads * hd
    q = out[..., :qc].reshape(lead + (num_heads, hd))
    k = out[..., qc:qc + kc].reshape(lead + (num_kv_heads, hd))
    v = out[..., qc + kc:].reshape(lead + (num_kv_heads, hd))
    return (q, k, v) if s is None else (q, k, v, s)


def rel_err(out, ref):
    """||out - ref|| / ||ref|| over the entries where both are finite (NaN/Inf checked apart)."""
    out = np.asarray(out, np.float64)
    ref = np.asarray(ref, np.float64)
    m = np.isfinite(out) & np.isfinite(ref)
    d = np.linalg.norm((out - ref)[m])
    n = np.linalg.norm(ref[m])
    return float(d / n) if n > 0 else float(d)


def assert_matches(out, ref, tol, what="output", row_axes=1):
    """out (float64 copy of a result) equals ref within tol.

    * identical shape;
    * NaN exactly where ref is NaN (poisoned / unwritten outputs fail here), +-Inf likewise;
    * rel_err over all finite entries <= tol;
    * every row (the last row_axes axes: 1, or 2 for [..., heads, head_dim]) within 4*tol of
      its own norm (floor: 10% of the RMS row norm), so one wrong row among thousands cannot
      hide in the global norm.
    """
    out = np.asarray(out, np.float64)
    ref = np.asarray(ref, np.float64)
    assert out.shape == ref.shape, f"{what}: shape {out.shape} != expected {ref.shape}"
    if out.size == 0:
        return
    nan_o, nan_r = np.isnan(out), np.isnan(ref)
    if not np.array_equal(nan_o, nan_r):
        extra = np.argwhere(nan_o & ~nan_r)
        missing = np.argwhere(nan_r & ~nan_o)
        raise AssertionError(
            f"{what}: NaN pattern differs: {len(extra)} unexpected NaN (first at "
            f"{extra[:3].tolist()}), {len(missing)} missing NaN (first at {missing[:3].tolist()})")
    inf_o, inf_r = np.isinf(out), np.isinf(ref)
    if not np.array_equal(inf_o, inf_r) or not np.array_equal(out[inf_o], ref[inf_r]):
        raise AssertionError(f"{what}: Inf pattern differs "
                             f"({int(inf_o.sum())} Inf in output, {int(inf_r.sum())} expected)")
    e = rel_err(out, ref)
    assert e <= tol, f"{what}: rel_err {e:.3g} > tol {tol:.3g}"
    # row-wise check
    cols = int(np.prod(ref.shape[ref.ndim - row_axes:]))
    o2 = np.where(np.isfinite(out), out, 0.0).reshape(-1, cols)
    r2 = np.where(np.isfinite(ref), ref, 0.0).reshape(-1, cols)
    rn = np.linalg.norm(r2, axis=1)
    floor = 0.1 * np.sqrt(np.mean(rn ** 2))
    err = np.linalg.norm(o2 - r2, axis=1)
    bound = 4 * tol * np.maximum(rn, floor)
    bad = np.nonzero(err > bound)[0]
    if bad.size:
        i = bad[0]
        raise AssertionError(f"{what}: {bad.size} row(s) off, first row {i}: "
                             f"|err| {err[i]:.3g} vs |ref| {rn[i]:.3g} (bound {bound[i]:.3g})")


def assert_same_values(a, b, what="input"):
    """Bitwise-equal values (NaN == NaN) of two float64 arrays: e.g. an input is unchanged."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    assert a.shape == b.shape, f"{what}: shape {a.shape} != {b.shape}"
    assert np.array_equal(a, b, equal_nan=True), f"{what}: values changed"
