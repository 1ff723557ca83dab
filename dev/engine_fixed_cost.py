"""Where the GEMM engine's per-call time goes: the forced engine path timed (CUDA-graph replay, each
call its own layer, >= 256 MiB of weights) under dev-only switches that the product does not have:
apply them first with `git apply dev/engine_experiments.patch` (MV_ENGINE_EXPERIMENT,
MV_ENGINE_MIN_ITERS), build, run, and never commit the patched engine.cu.
  VARIANTS (default "0 1 2 3 4"): 0 the product; 1 no stream-K fix-up (split tiles store
  nothing); 2 no compute (helpers and wgmma skipped: the ring only streams); 3 both; 4 an empty
  kernel of the same launch shape. Only 0 computes the right result; none is checked.
  SPLITS (default "1 2 4"): "split P" is v0 with each CTA taking 1/P of one tile's k stages
  (tile-aligned split-K), nan where tiles x P exceed the multiprocessors.
usage: python3 dev/engine_fixed_cost.py [models...]  (M from MS, default "1 16 64 256")
Log: dev/logs/engine-fixed-cost-nvidia-h200-2026-11-23.log
"""
import math
import os
import sys

import torch

import minivllm
from minivllm.bench import timing as bt
from minivllm.bench.models import find_model, qkv_features

models = sys.argv[1:] or ["gemma-3-1b", "qwen3-0.6b", "llama-3-8b", "llama-3-70b"]
ms = [int(m) for m in os.environ.get("MS", "1 16 64 256").split()]
variants = [int(v) for v in os.environ.get("VARIANTS", "0 1 2 3 4").split()]
splits = [int(v) for v in os.environ.get("SPLITS", "1 2 4").split()]
dtype = torch.bfloat16
STAGE_K = 128  # k per stage: engine.cu kLines x 64
sms = torch.cuda.get_device_properties(0).multi_processor_count
l2 = torch.cuda.get_device_properties(0).L2_cache_size
print(f"# {torch.cuda.get_device_name(0)}; us per call, median of 9 replays")
print(f"{'model':14} {'M':>5} " + " ".join(f"{'v' + str(v):>8}" for v in variants) + "".join(f" {'split ' + str(p):>8}" for p in splits))
for name in models:
    model = find_model(name)
    n, h = qkv_features(model), model.hidden
    for m in ms:
        calls = bt.qkv_calls_per_graph(m, h, n, 2, l2)
        layers = [((torch.randn(n, h, device="cuda") / math.sqrt(h)).to(dtype),
                   torch.empty(h, device="cuda").uniform_(0.5, 1.5).to(dtype)) for _ in range(calls)]
        xs = [torch.randn(m, h, device="cuda").to(dtype) for _ in range(calls)]
        q = [torch.empty(m, model.num_heads, model.head_dim, device="cuda", dtype=dtype) for _ in range(calls)]
        kv = (m, model.num_kv_heads, model.head_dim)
        k = [torch.empty(kv, device="cuda", dtype=dtype) for _ in range(calls)]
        v = [torch.empty(kv, device="cuda", dtype=dtype) for _ in range(calls)]

        def call(i):
            return minivllm.FusedRMSNormQKV.forward(xs[i], layers[i][1], layers[i][0].t(), model.num_heads,
                                                    model.num_kv_heads, out=(q[i], k[i], v[i]),
                                                    _path="engine")
        row = []
        for var in variants:
            os.environ["MV_ENGINE_EXPERIMENT"] = str(var)
            row.append(bt.time_per_call(call, calls, 9)["us"])
        os.environ["MV_ENGINE_EXPERIMENT"] = "0"
        kiters = -(-h // STAGE_K)
        tiles = -(-n // 128) * -(-m // min(t for t in (8, 16, 32, 64, 128, 10**9) if t >= min(m, 128)))
        for parts in splits:
            least = -(-kiters // parts)
            os.environ["MV_ENGINE_MIN_ITERS"] = str(least)
            row.append(bt.time_per_call(call, calls, 9)["us"] if -(-tiles * kiters // least) <= sms
                       else float("nan"))
        os.environ["MV_ENGINE_MIN_ITERS"] = "1"
        print(f"{model.name:14} {m:5d} " + " ".join(f"{t:8.2f}" for t in row), flush=True)
        del layers, xs, q, k, v
        torch.cuda.empty_cache()
