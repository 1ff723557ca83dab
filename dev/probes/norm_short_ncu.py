"""Short norm calls without PDL (issue 32's remaining gap: 0.05-0.2 us a call behind Liger-Kernel's
Triton kernels at up to 128 rows), for Nsight Compute: a few eager calls each of minivllm's norm
(pdl=False) and Liger's at the grid's worst short points, so ncu's WarpStateStats and LaunchStats
sections say where a call's cycles go in each.

    ncu --clock-control none --section LaunchStats --section WarpStateStats --section SpeedOfLight \
        --csv --page details python3 dev/probes/norm_short_ncu.py
"""
import torch

import minivllm
from liger_kernel.ops.fused_add_rms_norm import fused_add_rms_norm_forward as liger_add
from liger_kernel.ops.rms_norm import rms_norm_forward as liger_rms

CASES = (("add", torch.bfloat16, 1, 2048), ("rms", torch.bfloat16, 1, 896), ("add", torch.bfloat16, 16, 2048),
         ("rms", torch.float32, 1, 3584), ("add", torch.float32, 1, 5120))

for op, dtype, m, h in CASES:
    x = torch.randn(m, h, dtype=dtype, device="cuda")
    r = torch.randn_like(x)
    w = torch.randn(h, dtype=dtype, device="cuda")
    for _ in range(3):
        if op == "rms":
            minivllm.rms_norm(x, w, 1e-6, pdl=False)
            liger_rms(x, w, 1e-6, 0.0, "llama", None)
        else:
            minivllm.fused_add_rms_norm(x, r, w, 1e-6, pdl=False)
            liger_add(x, r, w, 1e-6, 0.0, "llama")
    torch.cuda.synchronize()
print("done")
