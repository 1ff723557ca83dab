"""Hugging Face transformers drop-in: one minivllm call for a decoder layer's whole attention
prologue (Llama, Mistral, Mixtral, Qwen2, Qwen2-MoE, Qwen3, Qwen3-MoE, Granite, Phi-3, SmolLM3):
input RMSNorm, the q, k, v projections (+ biases), per-head q/k norms, RoPE (partial where the
model rotates part of each head; none on SmolLM3's NoPE layers), and the KV-cache write when the
model uses a static cache; and minivllm's RMSNorm for the norms of Gemma, Gemma2 and Gemma3
(text) decoders.

    import minivllm.hf
    minivllm.hf.patch_model(model)         # every supported decoder layer; returns how many

What changes in a patched layer of those families: `input_layernorm` becomes nn.Identity
(the layer still takes its residual from the un-normalized input, as before), and `self_attn`
becomes a PrologueAttention that holds the norm weight, the merged q|k|v weight (and bias; Phi-3's
qkv_proj is that weight already) and the q/k norm weights, calls
minivllm.torch.attention_prologue, and hands q, k, v to the model's own attention function and
o_proj (the original attention module is kept inside it for those, with the arguments the
family's own forward passes it: its sliding window where it passes one).
RoPE uses the (cos, sin) the model passes to every layer. With a StaticCache (what generate's
cache_implementation="static" and torch.compile use), k and v are written straight into the
cache's tensors; with any other cache they go through its update() as before. The patch is for
inference (the ops have no backward); it changes these modules' parameter names (state_dict), so
save checkpoints from an unpatched model.

Gemma, Gemma2, Gemma3 (GemmaDecoderLayer, Gemma2DecoderLayer, Gemma3DecoderLayer): their RMSNorm
(transformers' GemmaRMSNorm, Gemma2RMSNorm, Gemma3RMSNorm) is x * rrms * (1 + weight) in
float32, rounded once to x's dtype. Every such norm of the layer (input_layernorm,
post_attention_layernorm, Gemma2/3's pre_ and post_feedforward_layernorm, Gemma3's per-head
self_attn.q_norm / k_norm) and the final `norm` of the model holding the layers becomes an
OffsetRMSNorm: minivllm.torch.rms_norm with weight_offset=1.0 on the same weight Parameter, kept
in its checkpoint dtype (often float32 beside bfloat16 activations), so the state_dict is
unchanged. The attention prologue op is not used for them (its input norm has no (1 + weight)
form): q, k, v, RoPE and the cache stay the model's own. The residual adds stay in the layer's
forward too (fusing them with fused_add_rms_norm would mean replacing that forward with a copy
of transformers' code). Other Gemma models (Gemma3n, Gemma4, Gemma3's vision side and
multimodal projector) are left alone.
"""

import sys

import torch
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .torch import attention_prologue, norm_eps, rms_norm

__all__ = ["GEMMA_LAYERS", "GEMMA_NORMS", "PROLOGUE_LAYERS", "SUPPORTED_LAYERS", "WINDOW_FROM_CONFIG",
           "OffsetRMSNorm", "PrologueAttention", "patch_decoder_layer", "patch_model"]

# Decoder layers whose forward feeds input_layernorm's output only to self_attn, whose attention
# reads q/k/v through q_proj/k_proj/v_proj (or one qkv_proj, q|k|v), normalizes each head of q
# and k with q_norm/k_norm if it has them, and rotates the first cos.shape[-1] features of each
# head with the (cos, sin) it is given (neox style; SmolLM3's NoPE layers not at all), and
# whose RMSNorm is weight * x * rrms: their prologue is fused. Each was read in transformers'
# code and is compared with the stock model in tests/test_hf_patch.py.
PROLOGUE_LAYERS = ("LlamaDecoderLayer", "MistralDecoderLayer", "MixtralDecoderLayer",
                   "Qwen2DecoderLayer", "Qwen2MoeDecoderLayer", "Qwen3DecoderLayer",
                   "Qwen3MoeDecoderLayer", "GraniteDecoderLayer", "Phi3DecoderLayer",
                   "SmolLM3DecoderLayer")
# Attention modules that pass their config's sliding window to the attention function (the
# others pass their own `sliding_window` attribute where they have one, or nothing)
WINDOW_FROM_CONFIG = ("MistralAttention", "MixtralAttention", "Phi3Attention")
# Decoder layers whose RMSNorm modules (GEMMA_NORMS: (1 + weight) * x * rrms in float32) are
# replaced one by one; the prologue op has no (1 + weight) form, so their attention is kept.
GEMMA_LAYERS = ("GemmaDecoderLayer", "Gemma2DecoderLayer", "Gemma3DecoderLayer")
GEMMA_NORMS = ("GemmaRMSNorm", "Gemma2RMSNorm", "Gemma3RMSNorm")
SUPPORTED_LAYERS = PROLOGUE_LAYERS + GEMMA_LAYERS


def _static_layer_class():
    try:
        from transformers.cache_utils import StaticLayer
    except ImportError:  # older transformers: no per-layer cache objects, update() is used
        return None
    return StaticLayer


_STATIC_LAYER = _static_layer_class()

# Eager calls of the layers of one forward share one (cos, sin): the table built from it is kept
# for the next layer (keyed by the tensors themselves and, outside inference mode, their version
# counters; inference tensors cannot be changed in place outside inference mode).
_rope_memo = {}


def _versions(*tensors):
    return tuple(None if t.is_inference() else t._version for t in tensors)


def _rope_table(cos, sin, batch):
    """(cos_sin_cache [B' * S, rotary_dim], positions [batch * S]) from Hugging Face's position
    embeddings (cos, sin) [B', S, rotary_dim] (B' is batch, or 1 when the sequences share their
    positions), whose halves repeat the same frequencies."""
    compiling = torch.compiler.is_compiling()
    if not compiling:
        hit = _rope_memo.get("last")
        if (hit is not None and hit[0] is cos and hit[1] is sin and hit[2] == batch
                and hit[3] == _versions(cos, sin)):
            return hit[4], hit[5]
    half = cos.shape[-1] // 2
    table = torch.cat((cos[..., :half], sin[..., :half]), -1).reshape(-1, cos.shape[-1])
    positions = torch.arange(table.shape[0], device=cos.device, dtype=torch.int32)
    if cos.shape[0] != batch:  # shared by the batch: every sequence reads the same rows
        positions = positions.repeat(batch)
    if not compiling:
        _rope_memo["last"] = (cos, sin, batch, _versions(cos, sin), table, positions)
    return table, positions


def _static_cache_slots(cache, layer_idx, batch, seq, like):
    """The static cache layer's (keys, values, slot_mapping) for the new tokens, advancing its
    length as StaticLayer.update does; None where the cache is not a plain, ready StaticLayer
    matching this call (update() is used then)."""
    if _STATIC_LAYER is None or cache is None or getattr(cache, "offloading", False):
        return None
    layers = getattr(cache, "layers", None)
    if layers is None or layer_idx >= len(layers):
        return None
    layer = layers[layer_idx]
    if type(layer) is not _STATIC_LAYER or not layer.is_initialized:
        return None
    keys, values = layer.keys, layer.values
    if keys.dtype != like.dtype or keys.device != like.device or keys.shape[0] != batch:
        return None
    max_len = keys.shape[2]
    position = layer.cumulative_length + torch.arange(seq, device=keys.device)
    layer.cumulative_length.add_(seq)
    rows = torch.arange(batch, device=keys.device)[:, None] * max_len
    # a position past the cache's end would land in the next sequence's rows: skipped instead
    # (HF's index_copy_ raises there)
    slots = torch.where(position < max_len, rows + position, -1).reshape(-1)
    return keys, values, slots


class PrologueAttention(torch.nn.Module):
    """Stands in for a decoder layer's self_attn, with its input_layernorm folded in: the
    attention prologue as one minivllm op, then the model's attention function and o_proj.

    Holds `norm_weight`, the merged `qkv_weight` [N, H] (rows q, then k, then v), `qkv_bias`
    (Qwen2) and `q_norm_weight` / `k_norm_weight` (Qwen3); `attn` is the original attention
    module without its q/k/v projections and q/k norms (its o_proj, config and attributes serve
    the attention function)."""

    def __init__(self, attn, norm):
        super().__init__()
        config = getattr(attn, "config", None)
        num_heads = getattr(config, "num_attention_heads", None)
        if not isinstance(num_heads, int):
            raise ValueError("layer: its self_attn has no config.num_attention_heads")
        num_kv_heads = getattr(config, "num_key_value_heads", None) or num_heads
        fused = hasattr(attn, "qkv_proj")  # Phi-3: one projection, q then k then v
        names = ("qkv_proj",) if fused else ("q_proj", "k_proj", "v_proj")
        projections = tuple(getattr(attn, name) for name in names)
        for name, proj in zip(names, projections):
            if not isinstance(proj, torch.nn.Linear):
                raise TypeError(f"layer.self_attn.{name}: expected nn.Linear, got "
                                f"{type(proj).__name__}")
        if fused:
            head_dim = getattr(attn, "head_dim", None)
            if not isinstance(head_dim, int) or head_dim <= 0:
                raise ValueError("layer: its self_attn has a qkv_proj but no head_dim")
            sizes = (attn.qkv_proj.out_features,)
            wanted = ((num_heads + 2 * num_kv_heads) * head_dim,)
        else:
            head_dim = attn.q_proj.out_features // num_heads
            sizes = tuple(proj.out_features for proj in projections)
            wanted = (num_heads * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim)
        if head_dim <= 0 or sizes != wanted:
            raise ValueError(f"layer: {'/'.join(names)} of {'/'.join(map(str, sizes))} features "
                             f"are not {num_heads}/{num_kv_heads}/{num_kv_heads} heads of "
                             f"{head_dim}")
        biases = [proj.bias for proj in projections]
        if any(b is None for b in biases) and any(b is not None for b in biases):
            raise ValueError("layer: q_proj, k_proj, v_proj: either all or none have a bias")
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.eps = norm_eps(norm)
        with torch.no_grad():
            merged = torch.cat([proj.weight.detach() for proj in projections], 0)
            bias = None if biases[0] is None else torch.cat([b.detach() for b in biases], 0)
        self.norm_weight = norm.weight
        self.qkv_weight = torch.nn.Parameter(merged, requires_grad=False)
        self.qkv_bias = None if bias is None else torch.nn.Parameter(bias, requires_grad=False)
        q_norm, k_norm = getattr(attn, "q_norm", None), getattr(attn, "k_norm", None)
        self.q_norm_weight = None if q_norm is None else q_norm.weight
        self.k_norm_weight = None if k_norm is None else k_norm.weight
        self.qk_norm_eps = None
        if q_norm is not None or k_norm is not None:
            eps = {norm_eps(n) for n in (q_norm, k_norm) if n is not None}
            if len(eps) != 1:
                raise ValueError(f"layer: q_norm and k_norm have different epsilons {eps}")
            self.qk_norm_eps = eps.pop()
        # SmolLM3: use_rope is 0 on its NoPE layers (no rotation there)
        self.rope = bool(getattr(attn, "use_rope", True))
        for name in ("q_proj", "k_proj", "v_proj", "qkv_proj", "q_norm", "k_norm"):
            if hasattr(attn, name):
                delattr(attn, name)
        self.attn = attn
        self.layer_idx = attn.layer_idx
        # the model's own eager attention, the fallback of its attention-function registry
        # (looked up per call, as the model does: the implementation may be switched later)
        self._eager = sys.modules[type(attn).__module__].eager_attention_forward
        # the attention function's kwargs beyond Llama's, as the family's forward passes them
        self._extra = {}
        if type(attn).__name__ in WINDOW_FROM_CONFIG:
            self._extra = {"sliding_window": getattr(attn.config, "sliding_window", None)}
        elif hasattr(attn, "sliding_window"):
            self._extra = {"sliding_window": attn.sliding_window}

    def forward(self, hidden_states, position_embeddings=None, attention_mask=None,
                past_key_values=None, cache=None, **kwargs):
        # the layers pass the KV cache as `cache` from transformers 5.2x on (past_key_values is
        # deprecated there), as past_key_values before, and as past_key_value in 4.x
        past_key_values = next((c for c in (cache, past_key_values,
                                            kwargs.pop("past_key_value", None))
                                if c is not None), None)
        batch, seq = hidden_states.shape[:2]
        table = positions = None
        if self.rope:
            cos, sin = position_embeddings
            table, positions = _rope_table(cos, sin, batch)
        static = _static_cache_slots(past_key_values, self.layer_idx, batch, seq, hidden_states)
        k_cache = v_cache = slots = None
        if static is not None:
            keys, values, slots = static
            k_cache, v_cache = keys.permute(0, 2, 1, 3), values.permute(0, 2, 1, 3)
        q, k, v = attention_prologue(
            hidden_states, self.norm_weight, self.qkv_weight, self.num_heads,
            self.num_kv_heads, self.eps, qkv_bias=self.qkv_bias,
            q_norm_weight=self.q_norm_weight, k_norm_weight=self.k_norm_weight,
            qk_norm_eps=self.qk_norm_eps, positions=positions, cos_sin_cache=table,
            k_cache=k_cache, v_cache=v_cache, slot_mapping=slots)
        q = q.transpose(1, 2)
        if static is not None:
            k, v = keys, values
        else:
            k, v = k.transpose(1, 2), v.transpose(1, 2)
            if past_key_values is not None:
                k, v = past_key_values.update(k, v, self.layer_idx)
        attn = self.attn
        interface = ALL_ATTENTION_FUNCTIONS.get_interface(attn.config._attn_implementation,
                                                          self._eager)
        out, weights = interface(attn, q, k, v, attention_mask,
                                 dropout=0.0 if not attn.training else attn.attention_dropout,
                                 scaling=attn.scaling, **self._extra, **kwargs)
        out = out.reshape(batch, seq, -1).contiguous()
        return attn.o_proj(out), weights

    def extra_repr(self):
        return (f"heads={self.num_heads}, kv_heads={self.num_kv_heads}, "
                f"head_dim={self.head_dim}, bias={self.qkv_bias is not None}, "
                f"qk_norm={self.q_norm_weight is not None}, rope={self.rope}")


class OffsetRMSNorm(torch.nn.Module):
    """Stands in for a Gemma RMSNorm: y = x * rrms * (weight + weight_offset) in float32, rounded
    once to x's dtype (Gemma's order), through minivllm.torch.rms_norm.

    `weight` is the original module's Parameter, shared and in its own dtype: x's dtype or
    float32 is read as it is; any other (e.g. float16 beside bfloat16 x) is widened to float32
    per call, as Gemma does. x may be any view whose last dimension is contiguous: Gemma3's q/k
    norms get [batch, heads, seq, head_dim] views of [batch, seq, heads, head_dim] (three row
    strides), which are handed over with the rows in memory order. The result has x's layout."""

    def __init__(self, norm, weight_offset=1.0):
        super().__init__()
        weight = getattr(norm, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.dim() != 1:
            raise ValueError(f"norm: {type(norm).__name__} has no 1-D `weight`")
        self.weight = weight
        self.eps = norm_eps(norm)
        self.weight_offset = float(weight_offset)

    def forward(self, x):
        weight = self.weight
        if weight.dtype != x.dtype and weight.dtype != torch.float32:
            weight = weight.float()
        if x.dim() < 4 or x.is_contiguous():
            return rms_norm(x, weight, self.eps, weight_offset=self.weight_offset)
        # the leading dimensions from the largest stride down: rows in memory order, which the
        # kernels read in one or two strides where the given order needs three
        order = sorted(range(x.dim() - 1), key=lambda d: -x.stride(d)) + [x.dim() - 1]
        y = rms_norm(x.permute(order), weight, self.eps, weight_offset=self.weight_offset)
        return y.permute(sorted(range(x.dim()), key=order.__getitem__))

    def extra_repr(self):
        return (f"{tuple(self.weight.shape)}, eps={self.eps}, weight_offset={self.weight_offset}, "
                f"weight_dtype={self.weight.dtype}")


def _patch_gemma_norms(module, names):
    """Replace the Gemma RMSNorm children `names` of module (those it has) by OffsetRMSNorms."""
    for name in names:
        norm = getattr(module, name, None)
        if type(norm).__name__ in GEMMA_NORMS:
            setattr(module, name, OffsetRMSNorm(norm, weight_offset=1.0))


def patch_decoder_layer(layer):
    """Patch one decoder layer in place. PROLOGUE_LAYERS (Llama, Qwen, Mistral, ...): the
    attention prologue is fused (the merged q|k|v weight is built once, here; the norm weights
    are shared). Gemma / Gemma2 / Gemma3: each Gemma RMSNorm of the layer becomes an
    OffsetRMSNorm on the same weight."""
    kind = type(layer).__name__
    if kind not in SUPPORTED_LAYERS:
        raise TypeError(f"layer: {kind} is not one of {', '.join(SUPPORTED_LAYERS)}")
    if kind in GEMMA_LAYERS:
        if isinstance(layer.input_layernorm, OffsetRMSNorm):
            raise ValueError(f"layer: this {kind} is already patched")
        _patch_gemma_norms(layer, ("input_layernorm", "post_attention_layernorm",
                                   "pre_feedforward_layernorm", "post_feedforward_layernorm"))
        _patch_gemma_norms(layer.self_attn, ("q_norm", "k_norm"))
        return layer
    if isinstance(layer.self_attn, PrologueAttention):
        raise ValueError(f"layer: this {kind} is already patched")
    layer.self_attn = PrologueAttention(layer.self_attn, layer.input_layernorm)
    layer.input_layernorm = torch.nn.Identity()
    return layer


def patch_model(model):
    """Patch every supported decoder layer in `model` (any module tree), and the final norm of
    the module holding Gemma layers; returns the count of layers. A TypeError if there is none."""
    layers = [m for m in model.modules() if type(m).__name__ in SUPPORTED_LAYERS]
    if not layers:
        raise TypeError(f"model: no {', '.join(SUPPORTED_LAYERS)} inside "
                        f"{type(model).__name__}")
    # the text model: `layers` holding the Gemma decoder layers, then its final `norm`
    gemma_homes = [m for m in model.modules()
                   if isinstance(getattr(m, "layers", None), torch.nn.ModuleList)
                   and any(type(child).__name__ in GEMMA_LAYERS for child in m.layers)]
    for layer in layers:
        patch_decoder_layer(layer)
    for home in gemma_homes:
        _patch_gemma_norms(home, ("norm",))
    return len(layers)
