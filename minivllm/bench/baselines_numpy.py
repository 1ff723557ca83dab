"""What a NumPy user runs without minivllm: the CPU baselines of minivllm-bench (no PyTorch).

The norms are float32 NumPy expressions rounded back to the rows' dtype; QKV is the same norm,
then y @ W32.T in float32 through NumPy's BLAS, W converted to float32 once (outside the timed
call, as a user would keep it), and the q/k/v split as views.
"""

import numpy as np


def rms_norm(x, weight, eps):
    s = x.astype(np.float32)
    rrms = 1.0 / np.sqrt(np.mean(s * s, axis=-1, keepdims=True) + np.float32(eps))
    return weight.astype(np.float32) * (s * rrms)


def fused_add_rms_norm(x, residual, weight, eps):
    summed = (x.astype(np.float32) + residual.astype(np.float32)).astype(x.dtype)
    return rms_norm(summed, weight, eps).astype(x.dtype), summed


def qkv(x, weight, w32, num_heads, num_kv_heads, head_dim, eps):
    out = rms_norm(x, weight, eps) @ w32.T
    q, k, v = np.split(out, [num_heads * head_dim, (num_heads + num_kv_heads) * head_dim], axis=-1)
    return (q.reshape(-1, num_heads, head_dim), k.reshape(-1, num_kv_heads, head_dim),
            v.reshape(-1, num_kv_heads, head_dim))


def call(case, a, eps):
    """The baseline of one minivllm-bench case (case.op, case.model) on the arrays a (x, gamma,
    residual, weight in the timed dtype), as a function of no arguments."""
    if case.op == "qkv":
        model = case.model
        w32 = a["weight"].astype(np.float32)
        return lambda: qkv(a["x"], a["gamma"], w32, model.num_heads, model.num_kv_heads,
                           model.head_dim, eps)
    if case.op == "rms_norm":
        return lambda: rms_norm(a["x"], a["gamma"], eps).astype(a["x"].dtype)
    return lambda: fused_add_rms_norm(a["x"], a["residual"], a["gamma"], eps)
