"""One fused RMSNorm + QKV call per model shape, for profiling a path under Nsight Compute:
    MINIVLLM_QKV_PATH=tile ncu -k regex:tile --set full python3 benchmarks/probes/tile_profile.py 256
"""
import math
import sys

import torch

import minivllm

rows = int(sys.argv[1]) if len(sys.argv) > 1 else 256
hidden, heads, kv_heads, head_dim = 1024, 16, 8, 128  # Qwen3-0.6B
features = (heads + 2 * kv_heads) * head_dim
x = torch.randn(rows, hidden, device="cuda", dtype=torch.bfloat16)
gamma = torch.ones(hidden, device="cuda", dtype=torch.bfloat16)
w = (torch.randn(features, hidden, device="cuda") / math.sqrt(hidden)).to(torch.bfloat16)
for _ in range(3):
    minivllm.FusedRMSNormQKV.forward(x, gamma, w.t(), heads, kv_heads, 1e-6)
torch.cuda.synchronize()
