"""A quick look at one QKV path before the full tests: each model shape at a few M, with and
without a residual, against the float64 reference; prints one line per call with the relative
error of q, k and v and of the new residual. Force the path with MINIVLLM_QKV_PATH.

    MINIVLLM_QKV_PATH=stream python3 scripts/qkv_smoke.py [--m 1 5 16 33 64] [--dtypes bf16 fp16]
"""
import argparse
import math
import os
import sys

import torch

import minivllm
from minivllm import _benchtools as bt

TOLERANCE = {"bf16": 1e-2, "fp16": 5e-3}
TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check(model, dtype_name, rows, with_residual, generator):
    dtype = TORCH_DTYPES[dtype_name]
    hidden, heads, kv_heads, head_dim = (model.hidden, model.num_heads, model.num_kv_heads,
                                         model.head_dim)
    features = bt.qkv_features(model)
    x = torch.randn(rows, hidden, device="cuda", generator=generator).to(dtype)
    residual = (torch.randn(rows, hidden, device="cuda", generator=generator).to(dtype)
                if with_residual else None)
    gamma = torch.empty(hidden, device="cuda").uniform_(0.5, 1.5, generator=generator).to(dtype)
    weight = (torch.randn(features, hidden, device="cuda", generator=generator)
              / math.sqrt(hidden)).to(dtype)
    out = bt.split_heads(torch.full((rows, features), math.nan, device="cuda", dtype=dtype),
                         heads, kv_heads, head_dim)
    kwargs = {"out": out}
    if with_residual:
        kwargs["residual"] = residual
        kwargs["residual_out"] = torch.full_like(residual, math.nan)
    result = minivllm.FusedRMSNormQKV.forward(x, gamma, weight.t(), heads, kv_heads, bt.EPS,
                                              **kwargs)
    torch.cuda.synchronize()
    s = x.double() + residual.double() if with_residual else x.double()
    s = s.to(dtype).double()  # the stored sum, rounded to the dtype
    y = bt.rms_norm_float64(s, gamma).to(dtype).double()  # the fast paths round y to the dtype
    want = y @ weight.double().t()
    errors = [bt.relative_error(tuple(result[:3]), want)]
    names = ["qkv"]
    if with_residual:
        errors.append(bt.relative_error(result[3], s))
        names.append("residual")
    ok = all(e <= TOLERANCE[dtype_name] for e in errors)
    detail = "  ".join(f"{n} {e:.2e}" for n, e in zip(names, errors))
    print(f"{model.name:13s} {dtype_name} M={rows:<3d} residual={int(with_residual)}  {detail}"
          f"  {'ok' if ok else 'FAIL'}", flush=True)
    return ok


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--m", nargs="+", type=int, default=[1, 5, 16, 33, 64])
    parser.add_argument("--dtypes", nargs="+", default=["bf16", "fp16"])
    args = parser.parse_args()
    print(f"MINIVLLM_QKV_PATH={os.environ.get('MINIVLLM_QKV_PATH', '')}", flush=True)
    generator = torch.Generator(device="cuda")
    generator.manual_seed(1234)
    ok = True
    for model in bt.MODELS.values():
        for dtype_name in args.dtypes:
            for rows in args.m:
                for with_residual in (False, True):
                    ok &= check(model, dtype_name, rows, with_residual, generator)
    print("smoke: all ok" if ok else "smoke: FAILURES", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
