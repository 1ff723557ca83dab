"""A norm's cost where a model runs it, after a GEMM (o_proj / down_proj: [M, H] x [H, H], a kernel
that lets nothing overlap): chain(mm + norm) - chain(mm), graph-timed (the benchmarks' timer), each
call its own buffers; minivllm with PDL as the default has it and off, Liger-Kernel, bf16. Beside it
the norm in a chain of its own calls (bench_rms_norm's timing).

    python3 dev/probes/norm_after_mm.py 1x2048 16x4096
"""
import sys

import torch
import torch.nn.functional as F

import minivllm
from minivllm.bench import timing as bt
from liger_kernel.ops.fused_add_rms_norm import fused_add_rms_norm_forward as liger_add
from liger_kernel.ops.rms_norm import rms_norm_forward as liger_rms

EPS = 1e-6
CALLS = 64

for text in sys.argv[1:]:
    m, h = (int(v) for v in text.split("x"))
    xs, rs, gin = ([torch.randn(m, h, dtype=torch.bfloat16, device="cuda") for _ in range(CALLS)] for _ in range(3))
    gw = [torch.randn(h, h, dtype=torch.bfloat16, device="cuda") / h ** 0.5 for _ in range(CALLS // 8)]
    w = torch.randn(h, dtype=torch.bfloat16, device="cuda")
    outs, routs = ([torch.empty_like(x) for x in xs] for _ in range(2))

    def mm(i):
        return F.linear(gin[i], gw[i % len(gw)])

    impls = {
        "rms mv": lambda i: minivllm.rms_norm(xs[i], w, EPS, out=outs[i]),
        "rms mv-pdl-off": lambda i: minivllm.rms_norm(xs[i], w, EPS, out=outs[i], pdl=False),
        "rms liger": lambda i: liger_rms(xs[i], w, EPS, 0.0, "llama", None),
        "add mv": lambda i: minivllm.fused_add_rms_norm(xs[i], rs[i], w, EPS, out=outs[i], residual_out=routs[i]),
        "add mv-pdl-off": lambda i: minivllm.fused_add_rms_norm(xs[i], rs[i], w, EPS, out=outs[i],
                                                                 residual_out=routs[i], pdl=False),
        "add liger": lambda i: liger_add(xs[i], rs[i], w, EPS, 0.0, "llama")[:2],
    }

    def per_call(steps):
        def call(i):
            return [s(i) for s in steps]
        return bt.time_per_call(call, CALLS, 15)["us"]

    base = per_call([mm])
    cells = [f"{name} {per_call([mm, f]) - base:5.2f}/{per_call([f]):5.2f}" for name, f in impls.items()]
    print(f"{m}x{h} (mm {base:5.2f}; after mm / own chain): " + " | ".join(cells), flush=True)
