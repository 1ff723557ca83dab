"""Runs minivllm's norms (PDL off) and Liger-Kernel's on a few shapes, a few calls each, for ncu.

usage: ncu --clock-control none --section SpeedOfLight --section LaunchStats --section Occupancy \
           python3 dev/probes/norm_peer_kernels.py
"""
import torch

import minivllm
from liger_kernel.ops.fused_add_rms_norm import fused_add_rms_norm_forward
from liger_kernel.ops.rms_norm import rms_norm_forward

SHAPES = ((1, 4096), (16, 4096), (1000, 999), (1000, 4095), (4096, 1024))
for m, h in SHAPES:
    x = torch.randn(m, h, dtype=torch.bfloat16, device="cuda")
    r = torch.randn_like(x)
    w = torch.randn(h, dtype=torch.bfloat16, device="cuda")
    for _ in range(2):
        torch.cuda.nvtx.range_push(f"M={m} H={h}")
        minivllm.rms_norm(x, w, 1e-6, pdl=False)
        rms_norm_forward(x, w, 1e-6, 0.0, "llama", None)
        minivllm.fused_add_rms_norm(x, r, w, 1e-6, pdl=False)
        fused_add_rms_norm_forward(x, r, w, 1e-6, 0.0, "llama")
        torch.cuda.nvtx.range_pop()
    torch.cuda.synchronize()
print("done")
