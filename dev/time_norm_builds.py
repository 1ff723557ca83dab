"""Time rms_norm and fused_add_rms_norm on the build PYTHONPATH selects (bf16, CUDA-graph replay of
calls over distinct buffers, >= 256 MiB touched or 64 calls), for comparing two builds in one
device session: run it once per build, alternating. Prints one JSON line (us per call, and the
fraction of a device-to-device copy's bandwidth measured in the same run for the large shapes).

  PYTHONPATH=/path/to/old python3 dev/time_norm_builds.py --label old
"""
import argparse
import json

import torch

import minivllm
from time_builds import time_graph  # dev/ is on sys.path when run as a script

SHAPES = [(1, 896), (1, 4096), (16, 4096), (128, 4096), (1000, 999), (4096, 1024), (8192, 896),
          (4096, 4096), (32768, 4096)]


def graph_us(fn, calls):
    """us per call of fn(0) ... fn(calls - 1), captured in one graph (time_builds' timer)."""
    return round(time_graph(lambda: [fn(i) for i in range(calls)]) / calls, 3)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--label", required=True)
    label = parser.parse_args().label
    out = {"label": label, "us": {}, "copy_frac": {}}
    bf16 = torch.bfloat16
    for m, h in SHAPES:
        nbytes = m * h * 2
        calls = max(4, min(64, (256 << 20) // (4 * nbytes)))
        xs = [torch.randn(m, h, device="cuda", dtype=bf16) for _ in range(calls)]
        rs = [torch.randn(m, h, device="cuda", dtype=bf16) for _ in range(calls)]
        ys = [torch.empty_like(x) for x in xs]
        w = torch.randn(h, device="cuda", dtype=bf16)
        t_norm = graph_us(lambda i: minivllm.rms_norm(xs[i], w, out=ys[i]), calls)
        t_add = graph_us(lambda i: minivllm.fused_add_rms_norm(xs[i], rs[i], w, out=ys[i],
                                                              residual_out=rs[i]), calls)
        t_copy = graph_us(lambda i: ys[i].copy_(xs[i]), calls)
        key = f"{m}x{h}"
        out["us"][f"rms_norm {key}"] = t_norm
        out["us"][f"fused_add {key}"] = t_add
        if m * h >= 4096 * 1024:
            # copy moves 2 * nbytes; rms_norm 2 * nbytes, fused add 4 * nbytes
            out["copy_frac"][f"rms_norm {key}"] = round(t_copy / t_norm, 3)
            out["copy_frac"][f"fused_add {key}"] = round(2 * t_copy / t_add, 3)
        del xs, rs, ys
        torch.cuda.empty_cache()
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
