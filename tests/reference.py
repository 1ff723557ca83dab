"""Comparison helpers for the tests; the float64 references themselves live in
minivllm.reference (shared with the bench self-check)."""
import numpy as np

from minivllm.reference import QKV_TOLERANCE as QKV_TOL  # noqa: F401  (re-exported)
from minivllm.reference import TOLERANCE as TOL  # noqa: F401
from minivllm.reference import fused_add_rms_norm as fused_add_rms_norm_ref  # noqa: F401
from minivllm.reference import fused_rms_norm_qkv as _qkv
from minivllm.reference import rms_norm as rms_norm_ref  # noqa: F401
from minivllm.reference import round_to  # noqa: F401
from minivllm.reference import attention_prologue as _prologue


# The GPU paths that round gamma * x (not the normalized y) before the product and apply rrms after.
RRMS_AFTER = ("wgmma", "deferred", "engine", "engine_prologue")


def qkv_ref(x, w, W, num_heads, num_kv_heads, eps, residual=None, dtype=None, y_dtype=None):
    """(q, k, v) or (q, k, v, new_residual); W is the nn.Linear weight [N, H] in float64.

    With y_dtype (a GPU call's rounding, qkv_y_dtype), rounds as the path that call took: the
    one-kernel wgmma path and the deferred-norm W stream round weight * s and apply rrms after
    the product."""
    rrms_after = y_dtype is not None and last_gpu_path() in RRMS_AFTER
    return _qkv(x, w, W, num_heads, num_kv_heads, eps, residual, dtype, y_dtype, rrms_after)


def prologue_ref(x, w, W, num_heads, num_kv_heads, eps, dtype, devname, **kw):
    """minivllm.reference.attention_prologue for the call just made on devname: the QKV part
    rounded as qkv_ref rounds it for the path that ran, then q, k, v rounded to the dtype before
    the epilogue, as the separate-kernel paths (the CPU twin, the GPU's QKV kernel + epilogue
    kernel) store them; the engine's fused epilogue works on the unrounded products."""
    y_dtype = qkv_y_dtype(devname, dtype)
    rrms_after = y_dtype is not None and last_gpu_path() in RRMS_AFTER
    fused = devname == "cuda" and last_gpu_path() == "engine_prologue"
    return _prologue(x, w, W, num_heads, num_kv_heads, eps, dtype=dtype, y_dtype=y_dtype,
                     rrms_after=rrms_after, qkv_dtype=None if fused else dtype, **kw)


def last_gpu_path():
    """The kernel path of this thread's last GPU fused_rms_norm_qkv call (minivllm._C)."""
    from minivllm import _C
    return _C.qkv_last_gpu_path()


def qkv_y_dtype(devname, dtype):
    """The dtype the QKV kernels round the normalized y to before the product, for qkv_ref's
    y_dtype (the documented numerics), for the call just made: on the GPU the tensor-core paths
    take y in the dtype, as an unfused norm + matmul does; the CPU kernels and the GPU's generic
    kernel multiply the float32 y (None: no rounding). Call it after the GPU call it describes:
    a forced path (_path=) that cannot take a call leaves it to the table, so the path that ran
    (last_gpu_path) decides. A reference with the exact y instead leaves the rounding of y in the
    error budget, which a small output row (few heads of head_dim 1, cancelling products) can
    exceed: at test_head_dims[cuda-bfloat16-1], about one run in twenty in a simulation of the
    GPU's numerics."""
    if devname != "cuda" or last_gpu_path() == "generic":
        return None
    return dtype


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
