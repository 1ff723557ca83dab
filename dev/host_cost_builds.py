"""Host time per eager call of the ops on the build PYTHONPATH selects, with the GPU kept busy
(the calls queue behind a long sleep kernel, so the GPU never paces them): the Python wrapper, and
the C binding called directly, for comparing two builds. Prints one JSON line.

  PYTHONPATH=/path/to/old python3 dev/host_cost_builds.py --label old
"""
import argparse
import json
import time

import torch

import minivllm
from minivllm import _C


def host_us(fn, calls=400, repeats=7):
    best = float("inf")
    for _ in range(repeats):
        torch.cuda._sleep(200_000_000)   # ~0.1 s of GPU time: launches only queue meanwhile
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - t0) / calls * 1e6)
        torch.cuda.synchronize()
    return round(best, 3)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--label", required=True)
    label = parser.parse_args().label
    new = "pdl" in minivllm.rms_norm.__code__.co_varnames
    tail = (None, None) if new else ()   # qkv: pdl, path
    # rms_norm: pdl, weight_offset, and since session 66 jit
    norm_tail = ((None, 0.0, True) if "jit" in minivllm.rms_norm.__code__.co_varnames
                 else (None, 0.0) if new else ())
    out = {"label": label, "us": {}}
    bf16 = torch.bfloat16
    for hidden, heads, kv, hd in [(896, 14, 2, 64), (4096, 32, 8, 128)]:
        n = (heads + 2 * kv) * hd
        x = torch.randn(1, hidden, device="cuda", dtype=bf16)
        g = torch.randn(hidden, device="cuda", dtype=bf16)
        w = torch.randn(n, hidden, device="cuda", dtype=bf16) / hidden ** 0.5
        q = torch.empty(1, heads, hd, device="cuda", dtype=bf16)
        k = torch.empty(1, kv, hd, device="cuda", dtype=bf16)
        v = torch.empty_like(k)
        y = torch.empty_like(x)
        fwd = minivllm.FusedRMSNormQKV.forward
        cases = {
            "forward out=": lambda: fwd(x, g, w, heads, kv, 1e-6, out=(q, k, v)),
            "forward": lambda: fwd(x, g, w, heads, kv, 1e-6),
            "_C qkv": lambda: _C.fused_rms_norm_qkv(x, g, w, heads, kv, 1e-6, None, q, k, v, None,
                                                    _C.TORCH_KIND, None, *tail),
            "rms_norm out=": lambda: minivllm.rms_norm(x, g, out=y),
            "_C rms_norm": lambda: _C.rms_norm(x, g, 1e-6, y, _C.TORCH_KIND, None, *norm_tail),
        }
        for name, fn in cases.items():
            fn()
            out["us"][f"H={hidden} {name}"] = host_us(fn)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
