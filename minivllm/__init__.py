"""minivllm: C/CUDA kernels for the prologue of LLM attention layers.

Ops (CPU and CUDA, float32 / float16 / bfloat16, any array with DLPack):
  rms_norm(x, weight, eps=1e-6, *, out=None, weight_offset=0.0, pdl=None, jit=True)
  fused_add_rms_norm(x, residual, weight, eps=1e-6, *, out=None, residual_out=None, inplace=False,
                     weight_offset=0.0, pdl=None, jit=True)
  FusedRMSNormQKV.forward(hidden_states, norm_weight, qkv_weight, num_heads, num_kv_heads,
                          eps=1e-6, *, residual=None, out=None, residual_out=None, pdl=None)
  attention_prologue(hidden_states, norm_weight, qkv_weight, num_heads, num_kv_heads, eps=1e-6,
                     *, residual=None, qkv_bias=None, q_norm_weight=None, k_norm_weight=None,
                     qk_norm_eps=None, positions=None, cos_sin_cache=None, rope_style="neox",
                     k_cache=None, v_cache=None, slot_mapping=None, kv_scale=None, out=None,
                     residual_out=None, pdl=None)

pdl (GPU): programmatic dependent launch for this call. None: on for the kernels that support it
on sm_90 and later, unless the process was started with MINIVLLM_PDL=0; True: on wherever the GPU
has it; False: off. The CPU ignores it.

jit (GPU, the norm ops): True lets a call of rows of 16-byte vectors, of up to about a wave of
rows (rows of up to 32 vectors, such as per-head norms, at any number of rows), run a kernel
compiled at run time for its H, dtype and form (NVRTC; the first call of a form compiles it,
13-80 ms); False keeps the built-in kernels. The bits are the same either way. The CPU ignores it.

Numerics: rrms = 1/sqrt(mean(x^2) + eps) with float32 accumulation; y = weight * (x * rrms) in
float32, rounded once to the input dtype (vLLM's order; Hugging Face rounds x * rrms first, which
is within the same tolerance of a float64 reference). The QKV projection accumulates in float32;
which operand is rounded to the dtype depends on the kernel (docs/numerics.md).
"""

try:
    from . import _C
except ImportError as error:  # the usual cause: importing the source tree, which has no build
    raise ImportError(
        f"minivllm: the compiled module minivllm._C is missing or broken ({error}). If you are "
        f"running from the source checkout ({__path__[0]}), Python imports it instead of the "
        "installed package: run from another directory, or build in place with "
        "`python setup.py build_ext --inplace`.") from error
import os as _os

from numpy import ndarray as _ndarray

from ._kinds import TORCH_TYPES as _TORCH_TYPES
from ._kinds import is_immutable as _is_immutable
from ._kinds import numpy_prepared as _numpy_prepared
from ._kinds import prepare as _prepare

_TORCH_KIND = _C.TORCH_KIND
_NDARRAY_TYPES = frozenset((_ndarray,))

__version__ = "0.1.0"
__all__ = [
    "Buffer",
    "FusedRMSNormQKV",
    "attention_prologue",
    "cuda_available",
    "cuda_built",
    "cuda_device_count",
    "fused_add_rms_norm",
    "fused_rms_norm_qkv",
    "get_num_threads",
    "rms_norm",
    "set_num_threads",
]

Buffer = _C.Buffer


def cuda_built():
    """True when this build of minivllm contains the CUDA kernels."""
    return bool(_C.cuda_built)


def cuda_device_count():
    """Number of CUDA devices usable by minivllm (0 without CUDA kernels, driver or GPU)."""
    return _C.cuda_device_count()


def cuda_available():
    """True when the CUDA kernels are built in and at least one GPU is usable."""
    return cuda_built() and cuda_device_count() > 0


def get_num_threads():
    """Threads the CPU kernels use: set_num_threads's value; by default OMP_NUM_THREADS as it was
    when minivllm was imported (its first entry, e.g. 4 of "4,2"; capped at 256), else the CPUs
    this process may run on."""
    return _C.get_num_threads()


def set_num_threads(n):
    """Use n threads (1 to 256) in the CPU kernels from now on; returns the previous count."""
    return _C.set_num_threads(n)


def _threads_from_environment():
    """OMP_NUM_THREADS's first entry ("4" or "4,2"), where it is a positive integer, as the CPU
    kernels' default thread count (issue 31: the count users already set for NumPy's BLAS)."""
    text = _os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if text.isdigit() and int(text) > 0:
        _C.set_num_threads(min(int(text), 256))


_threads_from_environment()


def _check_writable_kind(name, array):
    if array is not None and _is_immutable(array):
        raise TypeError(f"{name}: JAX arrays are immutable and cannot receive results; "
                        "leave it out and use the returned arrays")


def rms_norm(x, weight, eps=1e-6, *, out=None, weight_offset=0.0, pdl=None, jit=True):
    """RMSNorm over the last dimension: weight * x / sqrt(mean(x**2, -1) + eps).

    x: [..., H] (last dimension contiguous; leading dimensions strided as rows of one stride or
        two, e.g. a per-head view qkv.view(T, heads, D)[:, :num_heads]: rows = tokens x heads);
    weight: [H] on x's device, of x's dtype (float32, float16 or bfloat16), or float32 beside
        float16/bfloat16 x (checkpoints that keep norm weights in float32).
    weight_offset: added to the weight in float32: 1.0 gives Gemma's (1 + weight) norm.
    out: optional preallocated result shaped like x (may be x itself: in place); its rows too
        may take two strides, nested so that no two rows overlap. Arrays with two strides split
        their rows at the same dimension.
    pdl: programmatic dependent launch on the GPU (None: the library's default; see the module).
    jit: a kernel compiled for the call's H where one applies on the GPU (True), or the built-in
        kernels only (False); the same bits either way (see the module).
    Returns the result as x's kind of array (NumPy, torch, CuPy, JAX), on x's device.
    """
    if (type(x) in _TORCH_TYPES and type(weight) in _TORCH_TYPES
            and (out is None or type(out) in _TORCH_TYPES)):
        # Plain torch tensors: _C finds torch's stream and allocator itself (see _kinds).
        return _C.rms_norm(x, weight, eps, out, _TORCH_KIND, None, pdl, weight_offset, jit)
    if type(x) is _ndarray and type(weight) is _ndarray and (out is None or type(out) is _ndarray):
        # Plain NumPy arrays: nothing to detach, wrap or check for immutability.
        return _C.rms_norm(x, weight, eps, out, _numpy_prepared(x.dtype)[0], None, pdl, weight_offset, jit)
    _check_writable_kind("out", out)
    alloc, stream, wrap, arg = _prepare(x)
    result = _C.rms_norm(arg(x), arg(weight), eps, out, alloc, stream, pdl, weight_offset, jit)
    return result if out is not None else wrap(result)


def fused_add_rms_norm(x, residual, weight, eps=1e-6, *, out=None, residual_out=None,
                       inplace=False, weight_offset=0.0, pdl=None, jit=True):
    """Residual add then RMSNorm, in one pass: returns (normed, new_residual).

    new_residual = x + residual, rounded to the dtype (what the model stores);
    normed = rms_norm(new_residual, weight, eps).
    inplace=True is vLLM's form: normed is written into x and new_residual into residual, and
    (x, residual) is returned. out= / residual_out= take preallocated results instead.
    x, residual, weight, weight_offset, out, residual_out: as in rms_norm (rows in one stride or
    two, split at the same dimension in every array that takes two).
    pdl, jit: as in rms_norm.
    """
    if inplace:
        if out is not None or residual_out is not None:
            raise ValueError("inplace: inplace=True writes into x and residual; "
                             "do not also pass out= or residual_out=")
        out, residual_out = x, residual
    if (type(x) in _TORCH_TYPES and type(residual) in _TORCH_TYPES and type(weight) in _TORCH_TYPES
            and (out is None or type(out) in _TORCH_TYPES)
            and (residual_out is None or type(residual_out) in _TORCH_TYPES)):
        return _C.fused_add_rms_norm(x, residual, weight, eps, out, residual_out, _TORCH_KIND, None,
                                     pdl, weight_offset, jit)
    if (type(x) is _ndarray and type(residual) is _ndarray and type(weight) is _ndarray
            and (out is None or type(out) is _ndarray)
            and (residual_out is None or type(residual_out) is _ndarray)):
        return _C.fused_add_rms_norm(x, residual, weight, eps, out, residual_out,
                                     _numpy_prepared(x.dtype)[0], None, pdl, weight_offset, jit)
    _check_writable_kind("out" if not inplace else "x", out)
    _check_writable_kind("residual_out" if not inplace else "residual", residual_out)
    alloc, stream, wrap, arg = _prepare(x)
    normed, new_residual = _C.fused_add_rms_norm(arg(x), arg(residual), arg(weight), eps, out,
                                                 residual_out, alloc, stream, pdl, weight_offset, jit)
    return (normed if out is not None else wrap(normed),
            new_residual if residual_out is not None else wrap(new_residual))


class FusedRMSNormQKV:
    """RMSNorm fused with the QKV projection of an attention layer."""

    @staticmethod
    def forward(hidden_states, norm_weight, qkv_weight, num_heads, num_kv_heads, eps=1e-6, *,
                residual=None, out=None, residual_out=None, pdl=None, _path=None):
        """q, k, v = split(rms_norm(hidden_states) @ W.T), shaped per head.

        hidden_states: [..., H]; norm_weight: [H];
        qkv_weight: W as nn.Linear stores it, [N, H], or its .t() view [H, N] (the layouts are
            told apart by shape, and by strides when N == H); N = (num_heads + 2 * num_kv_heads)
            * head_dim, and must divide evenly.
        residual: optional [..., H]; when given, hidden_states + residual (rounded to the
            dtype) is normalized and also returned as the new residual.
        out: optional preallocated (q, k, v); residual_out: optional preallocated new residual
            (may be residual itself: in place).
        pdl: programmatic dependent launch on the GPU (None: the library's default; see the
            module).
        _path: private, for tests and benchmarks: the name of a GPU kernel path to run where it
            can take the call ("engine", "deferred", "register", "bulk", "wgmma", "cublaslt", "tile",
            "generic"); _C.qkv_last_gpu_path() names the one that ran.
        Returns (q, k, v), or (q, k, v, new_residual) when residual is given, with
            q: [..., num_heads, head_dim], k and v: [..., num_kv_heads, head_dim],
        as hidden_states' kind of array on its device.
        """
        # Plain torch tensors (_C finds torch's stream and allocator itself, see _kinds) and plain
        # NumPy arrays (nothing to detach, wrap or check for immutability) go straight to _C.
        plain = _TORCH_TYPES if type(hidden_states) in _TORCH_TYPES else _NDARRAY_TYPES
        if (type(hidden_states) in plain and type(norm_weight) in plain
                and type(qkv_weight) in plain and (residual is None or type(residual) in plain)
                and (residual_out is None or type(residual_out) in plain)
                and (out is None or (type(out) is tuple and len(out) == 3 and type(out[0]) in plain
                                     and type(out[1]) in plain and type(out[2]) in plain))):
            kind = (_TORCH_KIND if plain is _TORCH_TYPES
                    else _numpy_prepared(hidden_states.dtype)[0])
            q, k, v = (None, None, None) if out is None else out
            return _C.fused_rms_norm_qkv(hidden_states, norm_weight, qkv_weight, num_heads,
                                         num_kv_heads, eps, residual, q, k, v, residual_out, kind,
                                         None, pdl, _path)
        q = k = v = None
        if out is not None:
            try:
                q, k, v = out
            except (TypeError, ValueError):
                raise TypeError("out: expected a (q, k, v) tuple of arrays") from None
            for name, array in (("q", q), ("k", k), ("v", v)):
                _check_writable_kind(name, array)
        _check_writable_kind("residual_out", residual_out)
        alloc, stream, wrap, arg = _prepare(hidden_states)
        results = _C.fused_rms_norm_qkv(arg(hidden_states), arg(norm_weight), arg(qkv_weight),
                                        num_heads, num_kv_heads, eps,
                                        None if residual is None else arg(residual), q, k, v,
                                        residual_out, alloc, stream, pdl, _path)
        if out is not None and (residual is None or residual_out is not None):
            return results
        given = (q, k, v, residual_out)
        return tuple(r if g is not None else wrap(r) for r, g in zip(results, given))


fused_rms_norm_qkv = FusedRMSNormQKV.forward


_PROLOGUE_TORCH_ARGS = ("residual", "qkv_bias", "q_norm_weight", "k_norm_weight", "positions",
                        "cos_sin_cache", "k_cache", "v_cache", "slot_mapping", "residual_out")


def attention_prologue(hidden_states, norm_weight, qkv_weight, num_heads, num_kv_heads, eps=1e-6,
                       *, residual=None, qkv_bias=None, q_norm_weight=None, k_norm_weight=None,
                       qk_norm_eps=None, positions=None, cos_sin_cache=None, rope_style="neox",
                       k_cache=None, v_cache=None, slot_mapping=None, kv_scale=None, out=None,
                       residual_out=None, pdl=None, _path=None):
    """The attention layer's prologue in one call, per token (Llama / Qwen2 / Qwen3 order):

    s = hidden_states + residual (if given, rounded to the dtype; returned as the new residual);
    q, k, v = split(rms_norm(s) @ qkv_weight.T + qkv_bias);
    q, k = rms_norm over head_dim with q_norm_weight / k_norm_weight (qk_norm_eps, default eps);
    q, k = RoPE at positions from cos_sin_cache ([max_position, rotary_dim]: cos then sin, vLLM's
           layout; rotary_dim <= head_dim, the rest passes through; rope_style "neox" rotates the
           halves, "gptj" adjacent pairs);
    k_cache[slot], v_cache[slot] = k, v (slot = slot_mapping[t] = block * block_size + offset;
           negative: skipped). Caches are [num_blocks, block_size, num_kv_heads, head_dim] with
           any strides (a Hugging Face static cache [batch, heads, max_len, head_dim] as its
           .permute(0, 2, 1, 3) view); dtype the activations' or float8_e4m3fn, which stores
           value / kv_scale (kv_scale: a float, default 1.0).

    qkv_weight: [N, H] (nn.Linear) or its .t() view, as FusedRMSNormQKV.forward takes it.
    out: q, or (q, k, v), preallocated; with a cache, out's k and v (if given) are the scratch
        the projection lands in before the cache write. residual_out: the new residual's place
        (may be residual itself: in place).
    pdl, _path: as FusedRMSNormQKV.forward's, for the QKV part; _path="engine_prologue" (sm_90,
        fp16/bf16, head_dim dividing 128) runs the whole prologue in the GEMM engine's kernel
        instead (never the automatic choice: docs/design.md).
    Returns (q, k, v), plus the new residual when residual is given; q is [..., num_heads,
    head_dim], k and v [..., num_kv_heads, head_dim], or None when they went to the cache.
    Numerics: docs/numerics.md ("attention_prologue"); what runs where: docs/design.md.
    """
    q = k = v = None
    if out is not None:
        if type(out) is tuple:
            try:
                q, k, v = out
            except ValueError:
                raise TypeError("out: expected q or a (q, k, v) tuple of arrays") from None
        else:
            q = out
    if type(hidden_states) in _TORCH_TYPES:
        if (type(norm_weight) in _TORCH_TYPES and type(qkv_weight) in _TORCH_TYPES
                and all(a is None or type(a) in _TORCH_TYPES
                        for a in (residual, qkv_bias, q_norm_weight, k_norm_weight, positions,
                                  cos_sin_cache, k_cache, v_cache, slot_mapping, residual_out,
                                  q, k, v))):
            # Plain torch tensors: _C finds torch's stream and allocator itself (see _kinds).
            return _C.attention_prologue(
                hidden_states, norm_weight, qkv_weight, num_heads, num_kv_heads, eps, residual,
                qkv_bias, q_norm_weight, k_norm_weight, qk_norm_eps, positions, cos_sin_cache,
                rope_style, k_cache, v_cache, slot_mapping, kv_scale, q, k, v, residual_out,
                _TORCH_KIND, None, pdl, _path)
    for name, array in (("q", q), ("k", k), ("v", v), ("residual_out", residual_out),
                        ("k_cache", k_cache), ("v_cache", v_cache)):
        _check_writable_kind(name, array)
    alloc, stream, wrap, arg = _prepare(hidden_states)

    def opt(a):
        return None if a is None else arg(a)

    results = _C.attention_prologue(
        arg(hidden_states), arg(norm_weight), arg(qkv_weight), num_heads, num_kv_heads, eps,
        opt(residual), opt(qkv_bias), opt(q_norm_weight), opt(k_norm_weight), qk_norm_eps,
        opt(positions), opt(cos_sin_cache), rope_style, k_cache, v_cache, opt(slot_mapping),
        kv_scale, q, k, v, residual_out, alloc, stream, pdl, _path)
    given = (q, k, v, residual_out)
    return tuple(r if g is not None or r is None else wrap(r) for r, g in zip(results, given))
