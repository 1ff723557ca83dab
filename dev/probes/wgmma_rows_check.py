"""Calls of the forced wgmma path, one per shape: does each finish, and does it match a float64
reference? For the tile forms of dev/wgmma_rows128_staged.patch and dev/wgmma_share_x.patch, each
chosen by its dev-only environment variables: run each form in its own process, with a timeout.
usage: [MINIVLLM_DEV_WGMMA=... | MINIVLLM_DEV_WGMMA_SHARE=... ...] python3 wgmma_rows_check.py M,H[,HEADS,KV,HEAD_DIM] ..."""
import sys

import torch

import minivllm
from minivllm import _C

for shape in sys.argv[1:]:
    vals = [int(v) for v in shape.split(",")]
    m, h = vals[:2]
    nq, nkv, d = vals[2:5] if len(vals) == 5 else (16, 8, 128)
    n = (nq + 2 * nkv) * d
    g = torch.Generator(device="cuda").manual_seed(m * 7919 + h)
    x = torch.randn(m, h, device="cuda", dtype=torch.bfloat16, generator=g)
    gamma = (1 + 0.1 * torch.randn(h, device="cuda", dtype=torch.float32, generator=g)).to(torch.bfloat16)
    w = (torch.randn(n, h, device="cuda", dtype=torch.float32, generator=g) / h ** 0.5).to(torch.bfloat16)
    q, k, v = minivllm.FusedRMSNormQKV.forward(x, gamma, w, nq, nkv, 1e-6, _path="wgmma")
    torch.cuda.synchronize()
    path = _C.qkv_last_gpu_path()
    xd, gd, wd = x.double(), gamma.double(), w.double()
    ref = (xd * torch.rsqrt(xd.pow(2).mean(-1, keepdim=True) + 1e-6) * gd) @ wd.t()
    got = torch.cat([q.reshape(m, -1), k.reshape(m, -1), v.reshape(m, -1)], dim=1).double()
    err = ((got - ref).abs().max() / ref.abs().max()).item()
    print(f"M={m} H={h} N={n} path={path} max rel err {err:.3g}", "OK" if err < 2e-2 else "WRONG", flush=True)
