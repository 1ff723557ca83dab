"""Time FusedRMSNormQKV.forward with a residual on each GPU path (bf16, graph replay, each call
its own layer), beside the automatic choice and the same call without a residual.

The question it answers: where the table wants a path that takes no residual (the engine, the
deferred stream, wgmma), is adding the residual first (a small store kernel, then the path on
residual_out) faster than the next rule that takes the residual itself? A forced path that takes
no residual runs that way; "auto" is the table's choice. Needs torch and a CUDA GPU.

  python3 dev/residual_paths.py [--m 1 2 4 16] [--shapes 4096,32,8,128 ...] > log
"""
import argparse
import math

import torch

import minivllm
from minivllm import _C
from minivllm.bench import timing

# (hidden, q heads, kv heads, head_dim): MHA to MQA, head_dim 64-256, 3-160 MiB of weights.
SHAPES = [(896, 14, 2, 64), (1536, 12, 2, 128), (2048, 16, 8, 128), (2560, 32, 8, 128),
          (3584, 28, 4, 128), (4096, 32, 8, 128), (5120, 40, 8, 128), (2304, 8, 4, 256),
          (8192, 64, 8, 128), (4544, 71, 1, 64)]
ROWS = [1, 2, 3, 4, 8, 12, 16, 24, 32, 48, 64]
PATHS = ("engine", "deferred", "wgmma", "register", "bulk", "cublaslt")


def shape_arg(text):
    h, nq, nkv, d = (int(v) for v in text.split(","))
    return h, nq, nkv, d


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--m", nargs="+", type=int, default=ROWS)
    p.add_argument("--shapes", nargs="+", type=shape_arg, default=SHAPES)
    p.add_argument("--replays", type=int, default=10)
    args = p.parse_args()
    dtype = torch.bfloat16
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    print(f"# {torch.cuda.get_device_name(0)}; bf16; us per call (graph replay median); "
          f"path that ran in brackets; 'plain' = the same call without a residual")
    for H, nq, nkv, D in args.shapes:
        N = (nq + 2 * nkv) * D
        for M in args.m:
            calls = timing.qkv_calls_per_graph(M, H, N, 2, l2)
            layers = []
            for _ in range(calls):
                x = torch.randn(M, H, device="cuda", dtype=dtype)
                r = torch.randn(M, H, device="cuda", dtype=dtype)
                g = (torch.rand(H, device="cuda") + 0.5).to(dtype)
                W = (torch.randn(N, H, device="cuda") / math.sqrt(H)).to(dtype)
                out = torch.empty(M, N, device="cuda", dtype=dtype)
                q, k, v = out.split([nq * D, nkv * D, nkv * D], -1)
                qkv = (q.unflatten(-1, (nq, D)), k.unflatten(-1, (nkv, D)), v.unflatten(-1, (nkv, D)))
                layers.append((x, r, g, W, qkv, torch.empty_like(x)))

            def run(i, path, residual=True):
                x, r, g, W, o, ro = layers[i]
                kw = dict(residual=r, residual_out=ro) if residual else {}
                minivllm.FusedRMSNormQKV.forward(x, g, W, nq, nkv, 1e-6, out=o, _path=path, **kw)
                return o[0]

            line = [f"H={H} N={N} D={D} M={M:<3}"]
            variants = [("auto", None, True), ("plain", None, False)] + [(n, n, True) for n in PATHS]
            best = None
            for name, path, residual in variants:
                run(0, path, residual)
                ran = _C.qkv_last_gpu_path()
                if path is not None and ran != path:
                    continue
                t = timing.time_per_call(lambda i: run(i, path, residual), calls, args.replays)["us"]
                line.append(f"{name} {t:.2f}[{ran}]")
                if path is not None and (best is None or t < best[1]):
                    best = (name, t)
            line.append(f"best-forced {best[0]}")
            print("  ".join(line), flush=True)
            del layers
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
