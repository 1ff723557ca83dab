"""Float64 NumPy references for the minivllm ops (used by the tests and the bench self-check).

Inputs are float64 arrays holding values already representable in the op's dtype; `dtype` names
the op's dtype ("float32", "float16", "bfloat16") where an intermediate is rounded to it.
"""

import numpy as np

# Relative-error tolerances by dtype; the QKV projection is held tighter in float16.
TOLERANCE = {"float32": 1e-5, "float16": 1e-2, "bfloat16": 1e-2}
QKV_TOLERANCE = {"float32": 1e-5, "float16": 5e-3, "bfloat16": 1e-2}
# attention_prologue: q and k after the per-head norm and RoPE, one more rounding than the QKV
# outputs (and the per-head norm can enlarge a head's relative error); an FP8 (e4m3) cache holds
# 3 mantissa bits: relative rounding error up to 2^-4.
PROLOGUE_TOLERANCE = {"float32": 2e-5, "float16": 1e-2, "bfloat16": 2e-2}
FP8_TOLERANCE = 6.25e-2
FP8_MAX = 448.0


def round_to(a, dtype):
    """Round float values to `dtype` (nearest even) and return them as float64.

    bfloat16 goes through float32 first, exactly as the kernels round a float32 sum."""
    a = np.asarray(a, dtype=np.float64)
    if dtype == "float32":
        return a.astype(np.float32).astype(np.float64)
    if dtype == "float16":
        return a.astype(np.float16).astype(np.float64)
    if dtype == "bfloat16":
        bits = a.astype(np.float32).view(np.uint32).astype(np.uint64)
        rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
        out = rounded.astype(np.uint32).view(np.float32).astype(np.float64)
        nan = np.isnan(a)
        out[nan] = np.nan
        return out
    raise ValueError(f"dtype: unknown {dtype!r}")


def rms_norm(x, weight, eps=1e-6, weight_offset=0.0):
    """(weight + weight_offset) * x / sqrt(mean(x^2) + eps); weight_offset 1 is Gemma's (1 + w)."""
    x = np.asarray(x, np.float64)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        rrms = 1.0 / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)
        return (np.asarray(weight, np.float64) + weight_offset) * (x * rrms)


def fused_add_rms_norm(x, residual, weight, eps, dtype, weight_offset=0.0):
    """(normed, new_residual); the new residual is rounded to dtype before it is normalized."""
    with np.errstate(invalid="ignore", over="ignore"):
        s = round_to(np.asarray(x, np.float64) + np.asarray(residual, np.float64), dtype)
    return rms_norm(s, weight, eps, weight_offset), s


def fp16_operand_scale(norm_weight):
    """The deferred-norm W stream's fp16 operand scale 2^-e: 2^e the least power of two above
    max |gamma| where that lies in (1, 65504], else 1 (so |gamma * x * 2^-e| <= |x|)."""
    g = np.abs(np.asarray(norm_weight, np.float64))
    g = g[~np.isnan(g)]
    most = float(g.max()) if g.size else 0.0
    if not 1.0 < most <= 65504.0:
        return 1.0
    return float(np.ldexp(1.0, -int(np.frexp(most)[1])))


def fused_rms_norm_qkv(x, norm_weight, w, num_heads, num_kv_heads, eps=1e-6, residual=None,
                       dtype=None, y_dtype=None, rrms_after=False):
    """(q, k, v), or (q, k, v, new_residual) with residual; w is the nn.Linear weight [N, H].

    y_dtype: round the normalized y to this dtype before the product (the GPU tensor-core paths
    do, as an unfused rms_norm + matmul does); None keeps y exact (the CPU kernels' float32 y).
    rrms_after (with y_dtype): round weight * s instead and scale the product by rrms, as the
    one-kernel wgmma path and the deferred-norm W stream do (in fp16 the latter rounds
    weight * s * fp16_operand_scale(weight) and divides the scale out again)."""
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    if residual is not None:
        y, s = fused_add_rms_norm(x, residual, norm_weight, eps, dtype)
        normed = s
    else:
        y, s = rms_norm(x, norm_weight, eps), None
        normed = x
    rrms = None
    if y_dtype is not None and rrms_after:
        gamma = np.asarray(norm_weight, np.float64)
        scale = fp16_operand_scale(gamma) if y_dtype == "float16" else 1.0
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            rrms = 1.0 / np.sqrt(np.mean(normed * normed, axis=-1, keepdims=True) + eps)
            y = round_to(gamma * normed * scale, y_dtype) / scale
    elif y_dtype is not None:
        y = round_to(y, y_dtype)
    n_out, hidden = w.shape
    head_dim = n_out // (num_heads + 2 * num_kv_heads)
    lead = x.shape[:-1]
    with np.errstate(invalid="ignore", over="ignore"):
        qkv = y.reshape(-1, hidden) @ w.T
        if rrms is not None:
            qkv = qkv * rrms.reshape(-1, 1)
        qkv = qkv.reshape(lead + (n_out,))
        # BLAS need not propagate NaN through every path: a non-finite row gives NaN, as in IEEE.
        qkv[~np.isfinite(y).all(axis=-1)] = np.nan
    q_cols, kv_cols = num_heads * head_dim, num_kv_heads * head_dim
    q = qkv[..., :q_cols].reshape(lead + (num_heads, head_dim))
    k = qkv[..., q_cols:q_cols + kv_cols].reshape(lead + (num_kv_heads, head_dim))
    v = qkv[..., q_cols + kv_cols:].reshape(lead + (num_kv_heads, head_dim))
    return (q, k, v) if s is None else (q, k, v, s)


def rope(x, positions, cos_sin_cache, style="neox"):
    """RoPE of x [..., heads, head_dim] at positions [...] (x's leading shape) with vLLM's
    cos_sin_cache [max_position, rotary_dim] (cos of the rotary_dim / 2 frequencies, then sin);
    features rotary_dim ... head_dim - 1 pass through. style "neox" rotates (x[i], x[i + r/2]),
    "gptj" (x[2i], x[2i + 1])."""
    x = np.array(x, np.float64)
    cs = np.asarray(cos_sin_cache, np.float64)[np.asarray(positions, np.int64)]  # [..., r]
    r = cs.shape[-1]
    cos, sin = cs[..., None, :r // 2], cs[..., None, r // 2:]  # broadcast over heads
    if style == "neox":
        i0, i1 = np.arange(r // 2), np.arange(r // 2) + r // 2
    else:
        i0, i1 = np.arange(0, r, 2), np.arange(1, r, 2)
    a, b = x[..., i0].copy(), x[..., i1].copy()
    x[..., i0] = a * cos - b * sin
    x[..., i1] = b * cos + a * sin
    return x


def attention_prologue(x, norm_weight, w, num_heads, num_kv_heads, eps=1e-6, residual=None,
                       qkv_bias=None, q_norm_weight=None, k_norm_weight=None, qk_norm_eps=None,
                       positions=None, cos_sin_cache=None, rope_style="neox", dtype=None,
                       y_dtype=None, rrms_after=False, qkv_dtype=None):
    """(q, k, v), or (q, k, v, new_residual) with residual, as the model computes them (before
    any cache write): the QKV part as fused_rms_norm_qkv (dtype, y_dtype, rrms_after there), then
    + qkv_bias, per-head rms_norm of q and k over head_dim, RoPE of q and k.

    qkv_dtype: round the QKV product to this dtype before the rest, as the separate-kernel paths
    do (the CPU twin and today's GPU path store q, k, v in the dtype, and the epilogue reads
    them back); None keeps it exact."""
    out = fused_rms_norm_qkv(x, norm_weight, w, num_heads, num_kv_heads, eps, residual, dtype,
                             y_dtype, rrms_after)
    q, k, v = (np.asarray(t, np.float64) for t in out[:3])
    if qkv_dtype is not None:
        q, k, v = (round_to(t, qkv_dtype) for t in (q, k, v))
    head_dim = q.shape[-1]
    if qkv_bias is not None:
        b = np.asarray(qkv_bias, np.float64)
        qc, kc = num_heads * head_dim, num_kv_heads * head_dim
        q = q + b[:qc].reshape(num_heads, head_dim)
        k = k + b[qc:qc + kc].reshape(num_kv_heads, head_dim)
        v = v + b[qc + kc:].reshape(num_kv_heads, head_dim)
    qk_eps = eps if qk_norm_eps is None else qk_norm_eps
    if q_norm_weight is not None:
        q = rms_norm(q, q_norm_weight, qk_eps)
    if k_norm_weight is not None:
        k = rms_norm(k, k_norm_weight, qk_eps)
    if positions is not None:
        with np.errstate(invalid="ignore", over="ignore"):
            q = rope(q, positions, cos_sin_cache, rope_style)
            k = rope(k, positions, cos_sin_cache, rope_style)
    return (q, k, v) + tuple(out[3:])


def to_fp8(a, kv_scale=1.0):
    """a / kv_scale as an FP8 (e4m3fn) cache stores it (float64 values): nearest even,
    saturated to +-448 as vLLM's cache writes are; NaN stays NaN."""
    import ml_dtypes
    scaled = np.clip(np.asarray(a, np.float64) / kv_scale, -FP8_MAX, FP8_MAX)
    return scaled.astype(np.float32).astype(ml_dtypes.float8_e4m3fn).astype(np.float64)


def write_kv_cache(k_cache, v_cache, k, v, slot_mapping):
    """The cache write on float64 copies of the caches [num_blocks, block_size, heads, head_dim]:
    token t's k and v go to slot_mapping[t] = block * block_size + offset, unless negative.
    Returns the new (k_cache, v_cache)."""
    k_cache, v_cache = np.array(k_cache, np.float64), np.array(v_cache, np.float64)
    block_size = k_cache.shape[1]
    slots = np.asarray(slot_mapping, np.int64).reshape(-1)
    k2 = np.asarray(k, np.float64).reshape((-1,) + k_cache.shape[2:])
    v2 = np.asarray(v, np.float64).reshape((-1,) + v_cache.shape[2:])
    for t, slot in enumerate(slots):
        if slot >= 0:
            k_cache[slot // block_size, slot % block_size] = k2[t]
            v_cache[slot // block_size, slot % block_size] = v2[t]
    return k_cache, v_cache


def relative_error(out, ref):
    """||out - ref|| / ||ref|| over the finite reference entries; inf when NaN-ness differs."""
    out = np.asarray(out, np.float64)
    ref = np.asarray(ref, np.float64)
    if out.shape != ref.shape:
        raise ValueError(f"shape mismatch: {out.shape} vs {ref.shape}")
    if not np.array_equal(np.isnan(out), np.isnan(ref)):
        return float("inf")
    finite = np.isfinite(ref)
    if not np.array_equal(out[~finite], ref[~finite], equal_nan=True):
        return float("inf")
    diff = np.linalg.norm((out - ref)[finite])
    norm = np.linalg.norm(ref[finite])
    return float(diff / norm) if norm > 0 else float(diff)
