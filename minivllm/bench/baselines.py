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
