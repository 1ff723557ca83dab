"""Hugging Face transformers drop-in: one minivllm call for a decoder layer's input RMSNorm and
its attention's q, k, v projections (Llama, Qwen2, Qwen3).

    import minivllm.hf
    minivllm.hf.patch_model(model)         # every supported decoder layer; returns how many

How it stays out of the attention code's way: the layer's `input_layernorm` is replaced by a
module returning the fused op's planes tensor (shaped like the hidden states but with N = all
q, k and v features in the last dimension), and the attention's `q_proj`, `k_proj`, `v_proj` by
modules that view their part of it (and add the bias, for Qwen2). The attention forward itself
is untouched: it reads only the leading shape of what it is given and calls the three
projections, so Qwen3's per-head q_norm / k_norm, RoPE, the KV cache and the attention kernel run
as before. The patch is for inference (the fused op has no backward); it changes the modules'
parameter names (state_dict), so save checkpoints from an unpatched model.
"""

import torch

from .torch import FusedRMSNormQKVProj, norm_eps

__all__ = ["SUPPORTED_LAYERS", "FusedInputNormQKV", "QKVPart", "patch_decoder_layer",
           "patch_model"]

# Decoder layers whose forward feeds input_layernorm's output only to self_attn, whose attention
# reads q/k/v through q_proj/k_proj/v_proj, and whose RMSNorm is weight * x * rrms (Gemma's
# (1 + weight) norm is not, so it is not listed).
SUPPORTED_LAYERS = ("LlamaDecoderLayer", "Qwen2DecoderLayer", "Qwen3DecoderLayer")


class FusedInputNormQKV(torch.nn.Module):
    """Stands in for a decoder layer's input_layernorm: returns the fused op's planes tensor
    [..., N] (all rows of q, then of k, then of v) for the QKVPart modules to view."""

    def __init__(self, fused):
        super().__init__()
        self.fused = fused

    def forward(self, hidden_states):
        return self.fused.planes(hidden_states)


class QKVPart(torch.nn.Module):
    """Stands in for q_proj, k_proj or v_proj: the columns [start, start + width) of the fused
    projection, as a view [..., width] of its plane, plus the projection's bias if it had one."""

    def __init__(self, start, width, total, bias=None):
        super().__init__()
        self.start, self.width, self.total = int(start), int(width), int(total)
        self.bias = bias

    def forward(self, planes):
        if planes.shape[-1] != self.total:
            raise ValueError(f"planes: expected {self.total} features in the last dimension, got "
                             f"{planes.shape[-1]} (is input_layernorm still the fused module?)")
        rows = planes.numel() // self.total
        part = planes.view(-1)[rows * self.start:rows * (self.start + self.width)]
        part = part.view(*planes.shape[:-1], self.width)
        return part if self.bias is None else part + self.bias

    def extra_repr(self):
        return (f"columns [{self.start}, {self.start + self.width}) of {self.total}, "
                f"bias={self.bias is not None}")


def _head_counts(attn):
    config = getattr(attn, "config", None)
    num_heads = getattr(config, "num_attention_heads", None)
    num_kv_heads = getattr(config, "num_key_value_heads", None) or num_heads
    if not isinstance(num_heads, int):
        raise ValueError("layer: its self_attn has no config.num_attention_heads")
    return num_heads, num_kv_heads


def patch_decoder_layer(layer):
    """Fuse one Llama / Qwen2 / Qwen3 decoder layer's input RMSNorm and q/k/v projections, in
    place. The merged q|k|v weight is built once, here; the norm weight is shared."""
    kind = type(layer).__name__
    if kind not in SUPPORTED_LAYERS:
        raise TypeError(f"layer: {kind} is not one of {', '.join(SUPPORTED_LAYERS)}")
    if isinstance(layer.input_layernorm, FusedInputNormQKV):
        raise ValueError(f"layer: this {kind} is already patched")
    attn = layer.self_attn
    norm = layer.input_layernorm
    num_heads, num_kv_heads = _head_counts(attn)
    projections = (attn.q_proj, attn.k_proj, attn.v_proj)
    for name, proj in zip(("q_proj", "k_proj", "v_proj"), projections):
        if not isinstance(proj, torch.nn.Linear):
            raise TypeError(f"layer.self_attn.{name}: expected nn.Linear, got "
                            f"{type(proj).__name__}")
    # Built without the bias: QKVPart adds each projection's own bias Parameter after the view.
    with torch.no_grad():
        merged = torch.cat([proj.weight.detach() for proj in projections], 0)
    fused = FusedRMSNormQKVProj(norm.weight, merged, num_heads, num_kv_heads, norm_eps(norm))
    if fused.head_dim * num_heads != attn.q_proj.out_features:
        raise ValueError(f"layer: q_proj has {attn.q_proj.out_features} features, not "
                         f"{num_heads} heads of {fused.head_dim}")
    q_cols, kv_cols = num_heads * fused.head_dim, num_kv_heads * fused.head_dim
    total = q_cols + 2 * kv_cols
    layer.input_layernorm = FusedInputNormQKV(fused)
    attn.q_proj = QKVPart(0, q_cols, total, attn.q_proj.bias)
    attn.k_proj = QKVPart(q_cols, kv_cols, total, attn.k_proj.bias)
    attn.v_proj = QKVPart(q_cols + kv_cols, kv_cols, total, attn.v_proj.bias)
    return layer


def patch_model(model):
    """Patch every supported decoder layer in `model` (any module tree); returns the count.
    A TypeError if there is none."""
    layers = [m for m in model.modules() if type(m).__name__ in SUPPORTED_LAYERS]
    if not layers:
        raise TypeError(f"model: no {', '.join(SUPPORTED_LAYERS)} inside "
                        f"{type(model).__name__}")
    for layer in layers:
        patch_decoder_layer(layer)
    return len(layers)
