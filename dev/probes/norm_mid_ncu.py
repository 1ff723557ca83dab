"""A few eager calls each of minivllm's norms (PDL off), torch.compile's (the benchmark's HF RMSNorm
and x + r then F.rms_norm) and Liger-Kernel's, at shapes of a few rows per SM, for Nsight Compute:
where the lanes kernels lose to torch.compile's Triton kernel without PDL (issue 32).

    ncu --clock-control none --metrics gpu__time_duration.sum,launch__registers_per_thread,\
launch__block_size,launch__grid_size,smsp__inst_executed.sum,dram__bytes.sum \
        python3 dev/probes/norm_mid_ncu.py
"""
import torch

import minivllm
from minivllm.bench.baselines import hf_rms_norm, torch_add_rms_norm

SHAPES = ((264, 1024), (1024, 1024), (2048, 1024))


def main():
    try:
        from liger_kernel.ops.fused_add_rms_norm import fused_add_rms_norm_forward as liger_add
        from liger_kernel.ops.rms_norm import rms_norm_forward as liger_rms
    except ImportError:
        liger_rms = liger_add = None
    hf_c = torch.compile(hf_rms_norm, dynamic=False)
    add_c = torch.compile(torch_add_rms_norm, dynamic=False)
    for m, h in SHAPES:
        x = torch.randn(m, h, dtype=torch.bfloat16, device="cuda")
        r = torch.randn_like(x)
        w = torch.randn(h, dtype=torch.bfloat16, device="cuda")
        for _ in range(2):  # the compiled functions compile on the first pass
            torch.cuda.nvtx.range_push(f"M={m} H={h}")
            minivllm.rms_norm(x, w, 1e-6, pdl=False)
            hf_c(x, w)
            minivllm.fused_add_rms_norm(x, r, w, 1e-6, pdl=False)
            add_c(x, r, w)
            if liger_rms is not None:
                liger_rms(x, w, 1e-6, 0.0, "llama", None)
                liger_add(x, r, w, 1e-6, 0.0, "llama")
            torch.cuda.nvtx.range_pop()
        torch.cuda.synchronize()
    print("done")


if __name__ == "__main__":
    main()
