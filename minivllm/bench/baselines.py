"""What a model runs without minivllm: the PyTorch sequences the benchmarks time against."""

import torch
import torch.nn.functional as F

EPS = 1e-6


def hf_rms_norm(x, weight, eps=EPS):
    """Hugging Face's LlamaRMSNorm.forward: float32 statistics, rounded before the weight."""
    xf = x.float()
    variance = xf.pow(2).mean(-1, keepdim=True)
    xf = xf * torch.rsqrt(variance + eps)
    return weight * xf.to(x.dtype)


def torch_add_rms_norm(x, residual, weight, eps=EPS):
    """What a model without a fused kernel does: the sum, stored, then its RMSNorm."""
    new_residual = x + residual
    normed = F.rms_norm(new_residual, (new_residual.shape[-1],), weight, eps)
    return normed, new_residual


def split_heads(qkv, num_heads, num_kv_heads, head_dim):
    """[..., N] -> q [..., heads, hd], k and v [..., kv_heads, hd]: views, no copy."""
    q, k, v = qkv.split([num_heads * head_dim, num_kv_heads * head_dim,
                         num_kv_heads * head_dim], dim=-1)
    return (q.unflatten(-1, (num_heads, head_dim)), k.unflatten(-1, (num_kv_heads, head_dim)),
            v.unflatten(-1, (num_kv_heads, head_dim)))


def torch_qkv(x, gamma, weight, num_heads, num_kv_heads, head_dim, eps=EPS):
    """What a model without a fused kernel runs: F.rms_norm, F.linear (W [N, H]), the split."""
    y = F.rms_norm(x, (x.shape[-1],), gamma, eps)
    return split_heads(F.linear(y, weight), num_heads, num_kv_heads, head_dim)


def hf_qkv(x, gamma, weight, num_heads, num_kv_heads, head_dim, eps=EPS):
    """Hugging Face's RMSNorm, then the same projection and split."""
    return split_heads(F.linear(hf_rms_norm(x, gamma, eps), weight), num_heads, num_kv_heads,
                       head_dim)


def rope_neox(x, cos, sin):
    """RoPE of x [..., heads, head_dim] (neox: the halves of the first rotary_dim features
    rotate together) with cos, sin [..., 1, rotary_dim / 2], in x's dtype as vLLM's torch
    version computes it."""
    rotary = 2 * cos.shape[-1]
    x1, x2, rest = x[..., :rotary // 2], x[..., rotary // 2:rotary], x[..., rotary:]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest), -1)


def prologue_after_qkv(qkv, num_heads, num_kv_heads, head_dim, q_norm_weight, k_norm_weight,
                       positions, cos_sin_cache, k_cache, v_cache, slot_mapping, eps=EPS):
    """The attention prologue after the projection, as a model without a fused kernel runs it:
    the split, per-head RMSNorm of q and k (when weights are given), RoPE from the cos/sin
    cache at positions, the paged cache write (index_copy_ at slot_mapping, every slot valid).
    Returns q [M, heads, head_dim]."""
    rows = qkv.shape[0]
    q, k, v = qkv.view(rows, num_heads + 2 * num_kv_heads, head_dim).split(
        [num_heads, num_kv_heads, num_kv_heads], 1)
    if q_norm_weight is not None:
        q = F.rms_norm(q, (head_dim,), q_norm_weight, eps)
        k = F.rms_norm(k, (head_dim,), k_norm_weight, eps)
    cos, sin = cos_sin_cache[positions].to(q.dtype).unsqueeze(1).chunk(2, -1)
    q, k = rope_neox(q, cos, sin), rope_neox(k, cos, sin)
    k_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, slot_mapping, k)
    v_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, slot_mapping, v)
    return q


def torch_prologue(x, residual, gamma, weight, bias, num_heads, num_kv_heads, head_dim,
                   q_norm_weight, k_norm_weight, positions, cos_sin_cache, k_cache, v_cache,
                   slot_mapping, eps=EPS):
    """The whole attention prologue in plain torch: s = x + residual, F.rms_norm, F.linear (+
    bias), then prologue_after_qkv. Returns (q, s)."""
    s = x + residual
    qkv = F.linear(F.rms_norm(s, (s.shape[-1],), gamma, eps), weight, bias)
    return prologue_after_qkv(qkv, num_heads, num_kv_heads, head_dim, q_norm_weight,
                              k_norm_weight, positions, cos_sin_cache, k_cache, v_cache,
                              slot_mapping, eps), s


def randomize_norms_and_biases(model, norm_std=0.2, bias_std=0.1):
    """A freshly built Hugging Face model starts its norm weights at 1 and its biases at 0: give
    them random values (around 1 and 0), so that a patched model that dropped one would differ."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + norm_std * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(bias_std * torch.randn_like(p))


def rel_diff(a, b):
    """||a - b|| / ||b|| of two tensors, in float32 on their device (a model's outputs against
    another's)."""
    a, b = a.float(), b.float()
    return float((a - b).norm() / b.norm())

