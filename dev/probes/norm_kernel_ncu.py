"""Eager calls for ncu: the QKV op (its norm kernel), torch.compile's Inductor norm kernel and the
scratch_norm_probe.cu variants at a few shapes, each kernel then timed alone by ncu.

usage: ncu --clock-control none --kernel-name regex:'norm' --metrics gpu__time_duration.sum --csv
           python3 dev/probes/norm_kernel_ncu.py SO [MODEL:M ...] > ncu.csv
Variants (scratch_norm_probe.cu's tuples): (VW, P, w_early, pdl); w_early 2: no griddepcontrol.
"""
import ctypes
import sys

import torch

import minivllm
from minivllm.bench.baselines import torch_qkv
from minivllm.bench.models import find_model, qkv_features

lib = ctypes.CDLL(sys.argv[1])
lib.scratch_norm.argtypes = [ctypes.c_uint64] * 3 + [ctypes.c_int, ctypes.c_int, ctypes.c_float,
                                                     ctypes.c_uint64] + [ctypes.c_int] * 4
compiled = torch.compile(torch_qkv, dynamic=False)
SHAPES = [(t.split(":")[0], int(t.split(":")[1])) for t in sys.argv[2:]] or [
    ("qwen2.5-0.5b", 256), ("qwen3-0.6b", 128), ("llama-3-8b", 128)]
for name, rows in SHAPES:
    m = find_model(name)
    h, n = m.hidden, qkv_features(m)
    w = (torch.randn(n, h, device="cuda") / h ** 0.5).bfloat16()
    g = torch.rand(h, device="cuda").bfloat16() + 0.5
    x = torch.randn(rows, h, device="cuda", dtype=torch.bfloat16)
    y = torch.empty_like(x)
    for _ in range(3):
        compiled(x, g, w, m.num_heads, m.num_kv_heads, m.head_dim)
        minivllm.FusedRMSNormQKV.forward(x, g, w.t(), m.num_heads, m.num_kv_heads, 1e-6)
        for v in ((8, 1, 0, 0), (4, 1, 0, 0), (4, 2, 0, 0), (4, 1, 2, 0), (8, 1, 2, 0)):
            lib.scratch_norm(x.data_ptr(), g.data_ptr(), y.data_ptr(), rows, h, 1e-6,
                             torch.cuda.current_stream().cuda_stream, *v)
    torch.cuda.synchronize()
    print(name, rows, flush=True)
