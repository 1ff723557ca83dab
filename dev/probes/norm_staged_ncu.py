"""Calls of the norm ops for Nsight Compute: is the staged kernel (rows off the 16-byte grid through
shared memory) held by DRAM or by its own instructions? A few eager calls of each shape, after a
warm-up call. usage (on the device, a build on PYTHONPATH):
  ncu --clock-control none --metrics gpu__time_duration.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed,\
smsp__issue_active.avg.pct_of_peak_sustained_active,smsp__inst_executed.sum,sm__warps_active.avg.pct_of_peak_sustained_active \
      python3 norm_staged_ncu.py 4096x5119 4096x5120"""
import sys

import torch

import minivllm

for shape in sys.argv[1:]:
    m, h = (int(v) for v in shape.split("x"))
    for dtype in (torch.bfloat16, torch.float32):
        x = torch.randn(m, h, device="cuda", dtype=dtype)
        r = torch.randn_like(x)
        w = torch.rand(h, device="cuda", dtype=dtype) + 0.5
        for _ in range(2):
            minivllm.rms_norm(x, w)
            minivllm.fused_add_rms_norm(x, r.clone(), w)
torch.cuda.synchronize()
