"""Bit-for-bit: the library's norms with an experiment build's switch (an environment variable read
per call) unset and set, in one process, on fresh random rows (float32 by default): rms_norm and
fused_add_rms_norm, with and without a weight offset, at several M and H, and every output
poisoned with NaN first. Also each switched result against a float64 reference. Prints one line
per case and exits non-zero on any difference.

  python3 norm_switch_bits.py MV_EXP_VIRTUAL=1 --hidden 4097 5119 5125 6001 8191 --rows 1 3 133 600 4096
"""
import argparse
import os
import sys

import torch

import minivllm

p = argparse.ArgumentParser()
p.add_argument("switch", help="VAR=VALUE")
p.add_argument("--hidden", type=int, nargs="+", default=[4097, 5119, 5125, 6001, 8191])
p.add_argument("--rows", type=int, nargs="+", default=[1, 3, 133, 600, 4096])
p.add_argument("--dtype", default="float32")
args = p.parse_args()
var, value = args.switch.split("=", 1)
dtype = getattr(torch, args.dtype)
bad = 0
for H in args.hidden:
    for M in args.rows:
        g = torch.Generator(device="cuda").manual_seed(H * 7919 + M)
        x = torch.randn(M, H, device="cuda", dtype=dtype, generator=g)
        r = torch.randn(M, H, device="cuda", dtype=dtype, generator=g)
        w = torch.randn(H, device="cuda", dtype=dtype, generator=g) * 0.5 + 1
        for offset in (0.0, 1.0):
            res = {}
            for on in (False, True):
                if on:
                    os.environ[var] = value
                else:
                    os.environ.pop(var, None)
                out = torch.full_like(x, float("nan"))
                minivllm.rms_norm(x, w, 1e-6, out=out, weight_offset=offset)
                y2 = torch.full_like(x, float("nan"))
                s2 = torch.full_like(x, float("nan"))
                minivllm.fused_add_rms_norm(x, r, w, 1e-6, out=y2, residual_out=s2, weight_offset=offset)
                torch.cuda.synchronize()
                res[on] = (out, y2, s2)
            os.environ.pop(var, None)
            xd, sd = x.double(), (x + r).double()
            ref = [xd * torch.rsqrt(xd.pow(2).mean(-1, keepdim=True) + 1e-6) * (w.double() + offset),
                   sd * torch.rsqrt(sd.pow(2).mean(-1, keepdim=True) + 1e-6) * (w.double() + offset), sd]
            same = all(torch.equal(a, b) for a, b in zip(res[False], res[True]))
            err = max(float(((a.double() - e).abs().max() / e.abs().max())) for a, e in zip(res[True], ref))
            ok = same and err < (1e-5 if dtype == torch.float32 else 2e-2)
            bad += not ok
            print(f"{'ok ' if ok else 'BAD'} {args.dtype} M={M:5d} H={H:5d} offset={offset}: bits "
                  f"{'equal' if same else 'DIFFER'}, rel err {err:.2e}")
print(f"{bad} bad")
sys.exit(1 if bad else 0)
