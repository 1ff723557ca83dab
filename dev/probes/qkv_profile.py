"""Fused RMSNorm + QKV calls at one shape (bf16, or --dtype float16), for Nsight Compute or a quick timing:
    ncu -k regex:tile --set full python3 dev/probes/qkv_profile.py 256 --path tile
    ncu -k regex:bulk -s 2 -c 1 python3 dev/probes/qkv_profile.py 1 --models Llama-3-8B --path bulk
    python3 dev/probes/qkv_profile.py --time 1 8 16 --models Llama-3-8B Qwen3-0.6B
--time: µs per call as bench_fused_rms_norm_qkv times it (minivllm.bench.timing.time_per_call: CUDA-graph replay over layers
of distinct weights, >= 256 MiB in all) but without its float64 check, so variants that compute
wrong results on purpose (to time a part of a kernel) can be timed too. Not a substitute for
bench_fused_rms_norm_qkv.
"""
import argparse
import math

import torch

import minivllm
from minivllm.bench import timing as bt
from minivllm.bench.models import MODELS, qkv_features


def layer_inputs(model, rows, layers, dtype):
    hidden = model.hidden
    features = qkv_features(model)
    xs = [torch.randn(rows, hidden, device="cuda", dtype=dtype) for _ in range(layers)]
    gammas = [torch.ones(hidden, device="cuda", dtype=dtype) for _ in range(layers)]
    ws = [(torch.randn(features, hidden, device="cuda") / math.sqrt(hidden)).to(dtype)
          for _ in range(layers)]
    return xs, gammas, ws


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("rows", nargs="*", type=int, default=[256])
    parser.add_argument("--time", action="store_true")
    parser.add_argument("--models", nargs="+", default=["Qwen3-0.6B"])
    parser.add_argument("--dtype", choices=["bfloat16", "float16"], default="bfloat16")
    bt.add_kernel_args(parser)   # --pdl, --path: the calls' pdl= and _path=
    args = parser.parse_args()
    kwargs = bt.kernel_kwargs(args, qkv=True)
    dtype = getattr(torch, args.dtype)
    l2_bytes = torch.cuda.get_device_properties(0).L2_cache_size
    for model in (MODELS[m.lower()] for m in args.models):
        features = qkv_features(model)
        for rows in args.rows:
            layers = bt.qkv_calls_per_graph(rows, model.hidden, features, 2, l2_bytes) if args.time else 1
            xs, gammas, ws = layer_inputs(model, rows, layers, dtype)

            def call(i):
                return minivllm.FusedRMSNormQKV.forward(xs[i], gammas[i], ws[i].t(), model.num_heads,
                                                        model.num_kv_heads, 1e-6, **kwargs)

            if args.time:
                us = bt.time_per_call(call, layers, 15)["us"]
                print(f"{model.name:13s} {args.dtype:8s} M={rows:<5d} {us:8.2f} us/call ({layers} layers)",
                      flush=True)
            else:
                for _ in range(3):
                    call(0)
                torch.cuda.synchronize()


if __name__ == "__main__":
    main()
