"""PyTorch integration: minivllm's ops as torch.library custom ops, and a fused norm + QKV module.

Importing this module imports torch and registers the ops under ``torch.ops.minivllm``; the core
package never imports it, so minivllm works without PyTorch. Registered ops carry fake
implementations (shapes only) and declare what they write, so ``torch.compile(...,
fullgraph=True)`` traces through them without graph breaks, and they launch on torch's current
stream, so they can be captured in CUDA graphs. They are inference ops: there is no backward.

  rms_norm(x, weight, eps, weight_offset=0.0) -> y
  fused_add_rms_norm(x, residual, weight, eps, weight_offset=0.0) -> (normed, new_residual)
  fused_add_rms_norm_(x, residual, weight, eps, weight_offset=0.0)  # normed -> x, sum -> residual
      (weight_offset is added to the weight in float32: 1.0 is Gemma's (1 + weight) norm; the
      weight may be float32 beside float16/bfloat16 x, as minivllm.rms_norm takes it)
  fused_rms_norm_qkv(x, norm_weight, qkv_weight, num_heads, num_kv_heads, eps, residual=None)
      -> (q, k, v) or (q, k, v, new_residual)            # q, k, v: [..., heads, head_dim]
  attention_prologue(x, norm_weight, qkv_weight, num_heads, num_kv_heads, eps, *, residual=None,
      qkv_bias=None, q_norm_weight=None, k_norm_weight=None, qk_norm_eps=None, positions=None,
      cos_sin_cache=None, rope_style="neox", k_cache=None, v_cache=None, slot_mapping=None,
      kv_scale=None) -> (q, k, v) or (q, k, v, new_residual)   # k, v None: in the cache
      (the caches are declared mutated)
  FusedRMSNormQKVProj: an nn.Module holding the norm weight and the merged QKV weight once,
      built with from_modules(norm, q_proj, k_proj, v_proj) or from_merged(norm, qkv_proj).

Why the QKV and prologue ops return one "packed" tensor: a custom op's outputs may not alias each
other, and q, k, v are written into one allocation. So the registered ops return it whole, shaped
[..., heads + 2 * kv_heads, head_dim] (per token: q's heads, then k's, then v's, as
nn.Linear + view would lay them out), and ``split_qkv`` views it as q, k, v without a copy.
"""


import torch

import minivllm
from minivllm import _C, _kinds

_TORCH_OP = _C.TORCH_OP
_TORCH_KIND = _C.TORCH_KIND
_TORCH_LINEAR = _C.TORCH_LINEAR
# The plain tensor types _C reads itself (empty when this torch lacks what it needs): looked up
# once here, so the ops' first call does not have to.
_kinds.prepare(torch.empty(0))
# What the ops' implementations hand to _C as they are: plain tensors, or None for an optional
# argument (empty of tensors where this torch lacks what _C needs: everything then takes the API)
_PLAIN = frozenset(_kinds.TORCH_TYPES | {type(None)}) if _kinds.TORCH_TYPES else frozenset()
_TORCH_TYPES = frozenset(_kinds.TORCH_TYPES)  # the same, without None

__all__ = [
    "FusedRMSNormQKVProj",
    "attention_prologue",
    "fused_add_rms_norm",
    "fused_add_rms_norm_",
    "fused_rms_norm_qkv",
    "rms_norm",
    "split_qkv",
]


def _qkv_geometry(x, qkv_weight, num_heads, num_kv_heads):
    """(N, head_dim) for qkv_weight in nn.Linear layout [N, H]; errors name the argument."""
    if qkv_weight.dim() != 2 or qkv_weight.shape[1] != x.shape[-1]:
        raise ValueError(f"qkv_weight: expected shape (N, {x.shape[-1]}) (the nn.Linear weight "
                         f"[N, H]), got {tuple(qkv_weight.shape)}")
    if num_heads <= 0 or num_kv_heads <= 0:
        raise ValueError(f"num_heads, num_kv_heads: must be positive, got {num_heads}, "
                         f"{num_kv_heads}")
    n_out = qkv_weight.shape[0]
    heads = num_heads + 2 * num_kv_heads
    if n_out % heads != 0:
        raise ValueError(f"qkv_weight: its {n_out} output features are not divisible by "
                         f"num_heads + 2 * num_kv_heads = {heads}")
    return n_out, n_out // heads


def split_qkv(packed, num_heads, num_kv_heads):
    """(q, k, v) views of a packed [..., num_heads + 2 * num_kv_heads, head_dim] tensor (what
    the registered QKV and prologue ops return): q [..., num_heads, head_dim], k and v
    [..., num_kv_heads, head_dim]; one torch call."""
    return packed.split_with_sizes((num_heads, num_kv_heads, num_kv_heads), -2)


def _linear_weight(qkv_weight, hidden):
    # minivllm tells [N, H] from [H, N] by shape, and by strides only when N == H: a square weight
    # whose rows are not contiguous (e.g. a layout the compiler chose) would be read as W.T.
    # The op's contract is the nn.Linear layout, so hand such a weight over contiguous.
    if qkv_weight.shape[0] == hidden and qkv_weight.stride(1) != 1:
        return qkv_weight.contiguous()
    return qkv_weight


# --------------------------------------------------------------------------------------------
# registered ops
# --------------------------------------------------------------------------------------------
# Defined with torch.library.Library rather than the @custom_op decorator: the dispatcher then
# calls the implementation directly, which costs a few µs per eager call instead of ~25 (the
# decorator's Python wrapper), and at M = 1 that host time is most of the call.
_LIB = torch.library.Library("minivllm", "DEF")


def _define(schema, impl, fake):
    name = schema.split("(", 1)[0]
    _LIB.define(schema)
    _LIB.impl(name, impl, "CompositeExplicitAutograd")
    torch.library.register_fake(f"minivllm::{name}", fake, lib=_LIB)


def _rms_norm_impl(x, weight, eps, weight_offset=0.0):
    return minivllm.rms_norm(x, weight, eps, weight_offset=weight_offset)


def _fused_add_rms_norm_impl(x, residual, weight, eps, weight_offset=0.0):
    return minivllm.fused_add_rms_norm(x, residual, weight, eps, weight_offset=weight_offset)


def _fused_add_rms_norm_inplace_impl(x, residual, weight, eps, weight_offset=0.0):
    minivllm.fused_add_rms_norm(x, residual, weight, eps, inplace=True,
                                weight_offset=weight_offset)


def _new_packed(x, qkv_weight, num_heads, num_kv_heads):
    n_out, head_dim = _qkv_geometry(x, qkv_weight, num_heads, num_kv_heads)
    return x.new_empty((*x.shape[:-1], num_heads + 2 * num_kv_heads, head_dim))


# Plain torch tensors go straight to _C with TORCH_OP: it allocates the packed result, points q, k
# and v into it and reads qkv_weight as [N, H], with no torch view made (each view, split or
# allocation from Python costs microseconds, and at M = 1 host time is most of an eager call).
# Other tensors (subclasses) take the public API with out= views of a packed result.
def _qkv_c(x, norm_weight, qkv_weight, num_heads, num_kv_heads, eps, residual):
    """The packed result (and with a residual, the new residual) straight from _C."""
    return _C.fused_rms_norm_qkv(x, norm_weight, qkv_weight, num_heads, num_kv_heads, eps,
                                 residual, None, None, None, None, _TORCH_OP, None, None, None)


def _fused_rms_norm_qkv_impl(x, norm_weight, qkv_weight, num_heads, num_kv_heads, eps):
    if _PLAIN.issuperset(map(type, (x, norm_weight, qkv_weight))):
        return _qkv_c(x, norm_weight, qkv_weight, num_heads, num_kv_heads, eps, None)
    packed = _new_packed(x, qkv_weight, num_heads, num_kv_heads)
    minivllm.FusedRMSNormQKV.forward(x, norm_weight, _linear_weight(qkv_weight, x.shape[-1]),
                                     num_heads, num_kv_heads, eps,
                                     out=split_qkv(packed, num_heads, num_kv_heads))
    return packed


def _fused_add_rms_norm_qkv_impl(x, residual, norm_weight, qkv_weight, num_heads, num_kv_heads,
                                 eps):
    if _PLAIN.issuperset(map(type, (x, residual, norm_weight, qkv_weight))):
        return _qkv_c(x, norm_weight, qkv_weight, num_heads, num_kv_heads, eps, residual)
    packed = _new_packed(x, qkv_weight, num_heads, num_kv_heads)
    *_, new_residual = minivllm.FusedRMSNormQKV.forward(
        x, norm_weight, _linear_weight(qkv_weight, x.shape[-1]), num_heads, num_kv_heads, eps,
        residual=residual, out=split_qkv(packed, num_heads, num_kv_heads))
    return packed, new_residual


def _prologue_c(x, norm_weight, qkv_weight, num_heads, num_kv_heads, eps, residual, qkv_bias,
                q_norm_weight, k_norm_weight, qk_norm_eps, positions, cos_sin_cache, rope_style,
                k_cache, v_cache, slot_mapping, kv_scale):
    # packed: [..., heads + 2 kv heads, head_dim], q's heads then k's then v's (with a cache, k
    # and v are the scratch the projection lands in); the second result is the new residual,
    # or None
    return _C.attention_prologue(
        x, norm_weight, qkv_weight, num_heads, num_kv_heads, eps, residual, qkv_bias,
        q_norm_weight, k_norm_weight, qk_norm_eps, positions, cos_sin_cache, rope_style,
        k_cache, v_cache, slot_mapping, kv_scale, None, None, None, None, _TORCH_OP, None,
        None, None)


def _attention_prologue_impl(x, norm_weight, qkv_weight, num_heads, num_kv_heads, eps, residual,
                             qkv_bias, q_norm_weight, k_norm_weight, qk_norm_eps, positions,
                             cos_sin_cache, rope_style, k_cache, v_cache, slot_mapping, kv_scale):
    # Only x's kind matters here: TORCH_OP allocates like x, and _C reads any other torch
    # tensor (a subclass through its __dlpack__); the dispatcher has already run subclasses'
    # dispatch. Checking one type instead of twelve saves ~1 us of this op's host time.
    if type(x) in _TORCH_TYPES:
        packed, new_residual = _prologue_c(
            x, norm_weight, qkv_weight, num_heads, num_kv_heads, eps, residual, qkv_bias,
            q_norm_weight, k_norm_weight, qk_norm_eps, positions, cos_sin_cache, rope_style,
            k_cache, v_cache, slot_mapping, kv_scale)
        # the schema has no optional result that torch.compile takes: an empty tensor instead
        return packed, (x.new_empty(0) if new_residual is None else new_residual)
    packed = _new_packed(x, qkv_weight, num_heads, num_kv_heads)
    results = minivllm.attention_prologue(
        x, norm_weight, _linear_weight(qkv_weight, x.shape[-1]), num_heads, num_kv_heads, eps,
        residual=residual, qkv_bias=qkv_bias, q_norm_weight=q_norm_weight,
        k_norm_weight=k_norm_weight, qk_norm_eps=qk_norm_eps, positions=positions,
        cos_sin_cache=cos_sin_cache, rope_style=rope_style, k_cache=k_cache, v_cache=v_cache,
        slot_mapping=slot_mapping, kv_scale=kv_scale,
        out=split_qkv(packed, num_heads, num_kv_heads))
    return packed, (results[3] if residual is not None else x.new_empty(0))


# weight_offset is a positional schema argument with a default (it may still be named): the
# dispatcher parses a keyword argument ~1 µs slower than a positional one, per call.
_define("rms_norm(Tensor x, Tensor weight, float eps, float weight_offset=0.0) -> Tensor",
        _rms_norm_impl,  # results are contiguous, whatever x's strides
        lambda x, weight, eps, weight_offset=0.0: x.new_empty(x.shape))
_define("fused_add_rms_norm(Tensor x, Tensor residual, Tensor weight, float eps, "
        "float weight_offset=0.0) -> (Tensor, Tensor)", _fused_add_rms_norm_impl,
        lambda x, residual, weight, eps, weight_offset=0.0:
        (x.new_empty(x.shape), x.new_empty(x.shape)))
_define("fused_add_rms_norm_(Tensor(a!) x, Tensor(b!) residual, Tensor weight, float eps, "
        "float weight_offset=0.0) -> ()", _fused_add_rms_norm_inplace_impl,
        lambda x, residual, weight, eps, weight_offset=0.0: None)
_define("fused_rms_norm_qkv(Tensor x, Tensor norm_weight, Tensor qkv_weight, int num_heads, "
        "int num_kv_heads, float eps) -> Tensor", _fused_rms_norm_qkv_impl,
        lambda x, norm_weight, qkv_weight, num_heads, num_kv_heads, eps:
        _new_packed(x, qkv_weight, num_heads, num_kv_heads))
_define("fused_add_rms_norm_qkv(Tensor x, Tensor residual, Tensor norm_weight, Tensor qkv_weight, "
        "int num_heads, int num_kv_heads, float eps) -> (Tensor, Tensor)",
        _fused_add_rms_norm_qkv_impl,
        lambda x, residual, norm_weight, qkv_weight, num_heads, num_kv_heads, eps:
        (_new_packed(x, qkv_weight, num_heads, num_kv_heads), x.new_empty(x.shape)))
_define("attention_prologue(Tensor x, Tensor norm_weight, Tensor qkv_weight, int num_heads, "
        "int num_kv_heads, float eps, Tensor? residual, Tensor? qkv_bias, Tensor? q_norm_weight, "
        "Tensor? k_norm_weight, float? qk_norm_eps, Tensor? positions, Tensor? cos_sin_cache, "
        "str rope_style, Tensor(a!)? k_cache, Tensor(b!)? v_cache, Tensor? slot_mapping, "
        "float? kv_scale) -> (Tensor, Tensor)", _attention_prologue_impl,
        lambda x, norm_weight, qkv_weight, num_heads, num_kv_heads, eps, residual, *_:
        (_new_packed(x, qkv_weight, num_heads, num_kv_heads),
         x.new_empty(x.shape) if residual is not None else x.new_empty(0)))


# --------------------------------------------------------------------------------------------
# Python entry points (what models call)
# --------------------------------------------------------------------------------------------
def _watchers():
    """The checks _direct makes, each a C call of torch's (None where this torch lacks one)."""
    c = torch._C
    key = getattr(getattr(c, "DispatchKey", None), "Python", None)
    included = getattr(c, "_dispatch_tls_is_dispatch_key_included", None)
    profiling = getattr(getattr(c, "_autograd", None), "_profiler_enabled", None)
    level = getattr(getattr(c, "_functorch", None), "maybe_current_level", None)
    function_mode = getattr(c, "_is_torch_function_mode_enabled", None)
    if None in (key, included, profiling, level, function_mode):
        return None
    return key, included, profiling, level, function_mode


_WATCHERS = _watchers()


def _direct(*tensors):
    """Whether an eager call may run the op's implementation without the dispatcher: its
    tensors are plain torch tensors (or None) and nothing that watches the dispatcher is active
    (torch.compile or export tracing, grad mode, a torch dispatch or function mode such as
    FakeTensorMode, the profiler, a functorch transform). The dispatcher boxes each schema
    argument: 6.6-8.1 µs a call for attention_prologue's 18 on an H200 host, most of an M = 1
    call (dev/logs/prologue-host-pieces-*). Whatever watches gets the registered op, and sees
    and records the call as before."""
    if torch.compiler.is_compiling() or torch.is_grad_enabled() or _WATCHERS is None:
        return False
    key, included, profiling, level, function_mode = _WATCHERS
    return (_PLAIN.issuperset(map(type, tensors)) and
            not (included(key) or function_mode() or profiling() or level() is not None))


def _wrote(*tensors):
    """Bump the version counters of tensors written in place (what the dispatcher does for a
    schema's (a!) arguments outside inference mode; inference tensors have none)."""
    if not torch.is_inference_mode_enabled():
        torch._C._increment_version(tensors)


def rms_norm(x, weight, eps=1e-6, *, weight_offset=0.0):
    """torch.ops.minivllm.rms_norm: (weight + weight_offset) * x / sqrt(mean(x**2, -1) + eps),
    a new tensor (weight_offset=1.0: Gemma's norm)."""
    if _direct(x, weight):  # plain tensors: what minivllm.rms_norm would hand to _C
        return _C.rms_norm(x, weight, eps, None, _TORCH_KIND, None, None, weight_offset, True)
    return torch.ops.minivllm.rms_norm(x, weight, float(eps), weight_offset)


def fused_add_rms_norm(x, residual, weight, eps=1e-6, *, weight_offset=0.0):
    """(rms_norm(x + residual), x + residual) as new tensors."""
    if _direct(x, residual, weight):
        return _C.fused_add_rms_norm(x, residual, weight, eps, None, None, _TORCH_KIND, None,
                                     None, weight_offset, True)
    return torch.ops.minivllm.fused_add_rms_norm(x, residual, weight, float(eps), weight_offset)


def fused_add_rms_norm_(x, residual, weight, eps=1e-6, *, weight_offset=0.0):
    """vLLM's in-place form: residual <- x + residual, x <- rms_norm(that sum); returns
    (x, residual)."""
    if _direct(x, residual, weight):
        _C.fused_add_rms_norm(x, residual, weight, eps, x, residual, _TORCH_KIND, None, None,
                              weight_offset, True)
        _wrote(x, residual)
    else:
        torch.ops.minivllm.fused_add_rms_norm_(x, residual, weight, float(eps), weight_offset)
    return x, residual


def fused_rms_norm_qkv(x, norm_weight, qkv_weight, num_heads, num_kv_heads, eps=1e-6,
                       residual=None):
    """q, k, v of rms_norm(x [+ residual]) @ qkv_weight.T, qkv_weight in nn.Linear layout [N, H].

    Returns (q, k, v) with q [..., num_heads, head_dim], k and v [..., num_kv_heads, head_dim]
    (views into one allocation), plus the new residual x + residual when residual is given.
    """
    if _direct(x, norm_weight, qkv_weight, residual):
        # _C makes the views itself (TORCH_LINEAR: the nn.Linear layout, results as the Python
        # API's), without the torch calls a split from here costs
        return _C.fused_rms_norm_qkv(x, norm_weight, qkv_weight, num_heads, num_kv_heads, eps,
                                     residual, None, None, None, None, _TORCH_LINEAR, None, None,
                                     None)
    if residual is None:
        return split_qkv(_qkv_packed(x, norm_weight, qkv_weight, num_heads, num_kv_heads, eps),
                         num_heads, num_kv_heads)
    packed, new_residual = torch.ops.minivllm.fused_add_rms_norm_qkv(
        x, residual, norm_weight, qkv_weight, num_heads, num_kv_heads, float(eps))
    return (*split_qkv(packed, num_heads, num_kv_heads), new_residual)


def _qkv_packed(x, norm_weight, qkv_weight, num_heads, num_kv_heads, eps):
    """The registered QKV op's packed result, without the dispatcher where _direct allows."""
    if _direct(x, norm_weight, qkv_weight):
        return _qkv_c(x, norm_weight, qkv_weight, num_heads, num_kv_heads, eps, None)
    return torch.ops.minivllm.fused_rms_norm_qkv(x, norm_weight, qkv_weight, num_heads,
                                                 num_kv_heads, float(eps))


def attention_prologue(x, norm_weight, qkv_weight, num_heads, num_kv_heads, eps=1e-6, *,
                       residual=None, qkv_bias=None, q_norm_weight=None, k_norm_weight=None,
                       qk_norm_eps=None, positions=None, cos_sin_cache=None, rope_style="neox",
                       k_cache=None, v_cache=None, slot_mapping=None, kv_scale=None):
    """torch.ops.minivllm.attention_prologue: minivllm.attention_prologue as a custom op
    (qkv_weight in nn.Linear layout [N, H]). Returns (q, k, v), plus the new residual when
    residual is given; k and v are None when they went to k_cache / v_cache."""
    if _direct(x, norm_weight, qkv_weight, residual, qkv_bias, q_norm_weight, k_norm_weight,
               positions, cos_sin_cache, k_cache, v_cache, slot_mapping):
        # _C returns the entry's results itself (TORCH_LINEAR: q, k, v as views, None with a
        # cache), without the torch calls a split or narrow from here costs
        results = _C.attention_prologue(
            x, norm_weight, qkv_weight, num_heads, num_kv_heads, eps, residual, qkv_bias,
            q_norm_weight, k_norm_weight, qk_norm_eps, positions, cos_sin_cache, rope_style,
            k_cache, v_cache, slot_mapping, kv_scale, None, None, None, None, _TORCH_LINEAR,
            None, None, None)
        if k_cache is not None:
            _wrote(k_cache, v_cache)
        return results
    packed, new_residual = torch.ops.minivllm.attention_prologue(
        x, norm_weight, qkv_weight, num_heads, num_kv_heads, float(eps), residual, qkv_bias,
        q_norm_weight, k_norm_weight, None if qk_norm_eps is None else float(qk_norm_eps),
        positions, cos_sin_cache, rope_style, k_cache, v_cache, slot_mapping,
        None if kv_scale is None else float(kv_scale))
    if k_cache is not None:
        q, k, v = packed.narrow(-2, 0, num_heads), None, None
    else:
        q, k, v = split_qkv(packed, num_heads, num_kv_heads)
    return (q, k, v) if residual is None else (q, k, v, new_residual)


# --------------------------------------------------------------------------------------------
# module
# --------------------------------------------------------------------------------------------
def norm_eps(norm):
    """The epsilon of an RMSNorm module: Hugging Face's `variance_epsilon`, torch's `eps`
    (None there means torch.finfo(dtype).eps, as torch.nn.RMSNorm does)."""
    for name in ("variance_epsilon", "eps", "epsilon"):
        value = getattr(norm, name, None)
        if isinstance(value, (int, float)):
            return float(value)
    if isinstance(norm, torch.nn.RMSNorm) and norm.eps is None:
        return float(torch.finfo(norm.weight.dtype).eps)
    raise ValueError(f"norm: cannot find the epsilon of {type(norm).__name__} (looked for "
                     "variance_epsilon, eps, epsilon); pass eps=")


def _norm_weight(norm):
    weight = getattr(norm, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 1:
        raise ValueError(f"norm: {type(norm).__name__} has no 1-D `weight` (an elementwise-affine "
                         "RMSNorm is needed)")
    return weight


def _as_parameter(tensor):
    # inference weights: a Parameter (so .to()/.cuda() and state_dict see it), no gradient
    if isinstance(tensor, torch.nn.Parameter):
        return tensor
    return torch.nn.Parameter(tensor, requires_grad=False)


class FusedRMSNormQKVProj(torch.nn.Module):
    """RMSNorm followed by the q, k, v projections, as one minivllm call.

    Holds `norm_weight` [H] and the merged `qkv_weight` [N, H] (nn.Linear layout, rows q then k
    then v) once, plus an optional `qkv_bias` [N] added after the fused op (the kernels have no
    bias). forward(x, residual=None) returns (q, k, v) shaped [..., heads, head_dim], and the new
    residual x + residual as a fourth result when residual is given.

    Tensors given to the constructor are held as they are (Parameters stay shared with the
    modules they came from); build one from existing layers with from_modules / from_merged.
    """

    def __init__(self, norm_weight, qkv_weight, num_heads, num_kv_heads, eps=1e-6,
                 qkv_bias=None):
        super().__init__()
        if not isinstance(norm_weight, torch.Tensor) or norm_weight.dim() != 1:
            raise ValueError("norm_weight: expected a 1-D tensor [H]")
        hidden = norm_weight.shape[0]
        if not isinstance(qkv_weight, torch.Tensor) or qkv_weight.dim() != 2 \
                or qkv_weight.shape[1] != hidden:
            got = tuple(qkv_weight.shape) if isinstance(qkv_weight, torch.Tensor) else qkv_weight
            raise ValueError(f"qkv_weight: expected shape (N, {hidden}) (nn.Linear layout), "
                             f"got {got}")
        heads = num_heads + 2 * num_kv_heads
        if num_heads <= 0 or num_kv_heads <= 0 or qkv_weight.shape[0] % heads != 0:
            raise ValueError(f"num_heads, num_kv_heads: {qkv_weight.shape[0]} output features "
                             f"do not split into {num_heads} + 2 * {num_kv_heads} heads")
        if qkv_weight.dtype != norm_weight.dtype or qkv_weight.device != norm_weight.device:
            raise ValueError(f"qkv_weight: is {qkv_weight.dtype} on {qkv_weight.device}, but "
                             f"norm_weight is {norm_weight.dtype} on {norm_weight.device}")
        if qkv_bias is not None and tuple(qkv_bias.shape) != (qkv_weight.shape[0],):
            raise ValueError(f"qkv_bias: expected shape ({qkv_weight.shape[0]},), got "
                             f"{tuple(qkv_bias.shape)}")
        self.num_heads, self.num_kv_heads = int(num_heads), int(num_kv_heads)
        self.head_dim = qkv_weight.shape[0] // heads
        self.eps = float(eps)
        self.norm_weight = _as_parameter(norm_weight)
        self.qkv_weight = _as_parameter(qkv_weight)
        self.qkv_bias = None if qkv_bias is None else _as_parameter(qkv_bias)

    @classmethod
    def from_modules(cls, norm, q_proj, k_proj, v_proj, num_heads=None, num_kv_heads=None,
                     eps=None):
        """From an RMSNorm module and three nn.Linear projections. The q/k/v weights are
        concatenated once, here (the merged copy is what forward uses; the originals can be
        dropped). Head counts default to out_features // head_dim with head_dim taken from
        num_heads when given; pass at least num_heads. Biases, if all three have one, are merged
        too and added after the fused op."""
        if num_heads is None:
            raise ValueError("num_heads: required (the projections do not record it)")
        projections = (("q_proj", q_proj), ("k_proj", k_proj), ("v_proj", v_proj))
        for name, proj in projections:
            if not isinstance(getattr(proj, "weight", None), torch.Tensor):
                raise TypeError(f"{name}: expected an nn.Linear-like module with a weight")
        if q_proj.weight.shape[0] % num_heads != 0:
            raise ValueError(f"num_heads: q_proj's {q_proj.weight.shape[0]} output features are "
                             f"not divisible by {num_heads}")
        head_dim = q_proj.weight.shape[0] // num_heads
        if num_kv_heads is None:
            num_kv_heads = k_proj.weight.shape[0] // head_dim
        for name, proj, heads in (("k_proj", k_proj, num_kv_heads),
                                  ("v_proj", v_proj, num_kv_heads)):
            if proj.weight.shape[0] != heads * head_dim:
                raise ValueError(f"{name}: expected {heads * head_dim} output features "
                                 f"({heads} heads of {head_dim}), got {proj.weight.shape[0]}")
        biases = [getattr(proj, "bias", None) for _, proj in projections]
        if any(b is not None for b in biases) and any(b is None for b in biases):
            raise ValueError("q_proj, k_proj, v_proj: either all or none must have a bias")
        with torch.no_grad():
            weight = torch.cat([proj.weight.detach() for _, proj in projections], 0)
            bias = (None if biases[0] is None
                    else torch.cat([b.detach() for b in biases], 0))
        return cls(_norm_weight(norm), weight, num_heads, num_kv_heads,
                   norm_eps(norm) if eps is None else eps, bias)

    @classmethod
    def from_merged(cls, norm, qkv_proj, num_heads, num_kv_heads, eps=None):
        """From an RMSNorm module and a merged nn.Linear qkv_proj (rows q, then k, then v); its
        weight (and bias) are shared, not copied."""
        if not isinstance(getattr(qkv_proj, "weight", None), torch.Tensor):
            raise TypeError("qkv_proj: expected an nn.Linear-like module with a weight")
        return cls(_norm_weight(norm), qkv_proj.weight, num_heads, num_kv_heads,
                   norm_eps(norm) if eps is None else eps, getattr(qkv_proj, "bias", None))

    def packed(self, x):
        """The op's packed result [..., heads + 2 * kv_heads, head_dim] (per token q's heads,
        then k's, then v's; split_qkv views it), bias not added."""
        return _qkv_packed(x, self.norm_weight, self.qkv_weight, self.num_heads,
                           self.num_kv_heads, self.eps)

    def add_bias(self, q, k, v):
        """(q, k, v) with the projections' bias added (new tensors); unchanged without one."""
        if self.qkv_bias is None:
            return q, k, v
        q_cols = self.num_heads * self.head_dim
        kv_cols = self.num_kv_heads * self.head_dim
        bias_q, bias_k, bias_v = self.qkv_bias.split((q_cols, kv_cols, kv_cols))
        return (q + bias_q.view(self.num_heads, self.head_dim),
                k + bias_k.view(self.num_kv_heads, self.head_dim),
                v + bias_v.view(self.num_kv_heads, self.head_dim))

    def forward(self, x, residual=None):
        results = fused_rms_norm_qkv(x, self.norm_weight, self.qkv_weight, self.num_heads,
                                     self.num_kv_heads, self.eps, residual)
        if residual is None:
            return self.add_bias(*results)
        q, k, v, new_residual = results
        return (*self.add_bias(q, k, v), new_residual)

    def extra_repr(self):
        return (f"hidden={self.norm_weight.shape[0]}, num_heads={self.num_heads}, "
                f"num_kv_heads={self.num_kv_heads}, head_dim={self.head_dim}, eps={self.eps}, "
                f"bias={self.qkv_bias is not None}")
