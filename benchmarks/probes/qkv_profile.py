"""Fused RMSNorm + QKV calls at one shape (bf16), for Nsight Compute or a quick timing:
    MINIVLLM_QKV_PATH=tile ncu -k regex:tile --set full python3 benchmarks/probes/qkv_profile.py 256
    MINIVLLM_QKV_PATH=bulk ncu -k regex:bulk -s 2 -c 1 python3 benchmarks/probes/qkv_profile.py 1 --models Llama-3-8B
    python3 benchmarks/probes/qkv_profile.py --time 1 8 16 --models Llama-3-8B Qwen3-0.6B
--time: µs per call by CUDA-graph replay over layers of distinct weights (>= 256 MiB in all), as
bench_qkv times it but without its float64 check, so variants that compute wrong results on
purpose (to time a part of a kernel) can be timed too. Not a substitute for bench_qkv.
"""
import argparse
import math
import statistics

import torch

import minivllm
from minivllm import _benchtools as bt


def layer_inputs(model, rows, layers):
    hidden = model.hidden
    features = bt.qkv_features(model)
    xs = [torch.randn(rows, hidden, device="cuda", dtype=torch.bfloat16) for _ in range(layers)]
    gammas = [torch.ones(hidden, device="cuda", dtype=torch.bfloat16) for _ in range(layers)]
    ws = [(torch.randn(features, hidden, device="cuda") / math.sqrt(hidden)).to(torch.bfloat16)
          for _ in range(layers)]
    return xs, gammas, ws


def time_shape(model, rows, replays=20):
    features = bt.qkv_features(model)
    layers = max(2, math.ceil((256 << 20) / (features * model.hidden * 2)) + 1)
    xs, gammas, ws = layer_inputs(model, rows, layers)
    outs = [bt.split_heads(torch.empty(rows, features, device="cuda", dtype=torch.bfloat16),
                           model.num_heads, model.num_kv_heads, model.head_dim) for _ in range(layers)]

    def calls():
        for i in range(layers):
            minivllm.FusedRMSNormQKV.forward(xs[i], gammas[i], ws[i].t(), model.num_heads,
                                             model.num_kv_heads, 1e-6, out=outs[i])

    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        calls()
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            calls()
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / layers)
    return statistics.median(times), layers


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("rows", nargs="*", type=int, default=[256])
    parser.add_argument("--time", action="store_true")
    parser.add_argument("--models", nargs="+", default=["Qwen3-0.6B"])
    args = parser.parse_args()
    models = [bt.MODELS[m.lower()] for m in args.models]
    for model in models:
        for rows in args.rows:
            if args.time:
                us, layers = time_shape(model, rows)
                print(f"{model.name:13s} M={rows:<5d} {us:8.2f} us/call ({layers} layers)", flush=True)
            else:
                xs, gammas, ws = layer_inputs(model, rows, 1)
                for _ in range(3):
                    minivllm.FusedRMSNormQKV.forward(xs[0], gammas[0], ws[0].t(), model.num_heads,
                                                     model.num_kv_heads, 1e-6)
                torch.cuda.synchronize()


if __name__ == "__main__":
    main()
