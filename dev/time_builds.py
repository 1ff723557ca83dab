"""Time FusedRMSNormQKV.forward on the build that PYTHONPATH selects, for comparing two builds
(e.g. before and after a refactor) in one device session: run it once per build, alternating.

Per shape and M: µs per call in a CUDA-graph replay over layers of distinct weights (>= 256 MiB
in all, so W comes from DRAM), and, at M = 1, host µs per eager call (back to back, no graph).
Uses only the call's positional arguments, which every build accepts. Prints one JSON line.

  PYTHONPATH=/path/to/old python3 dev/time_builds.py --label old > old.json
"""
import argparse
import json
import time

import torch

import minivllm

# (hidden, q heads, kv heads, head_dim)
SHAPES = [(896, 14, 2, 64), (1024, 16, 8, 128), (2560, 32, 8, 128), (4096, 32, 8, 128)]
ROWS = [1, 2, 3, 4, 8, 16, 24, 32, 64, 256]


def time_graph(fn, replays=20):
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    for _ in range(3):
        graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3)
    times.sort()
    return times[len(times) // 2]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--label", required=True)
    args = parser.parse_args()
    out = {"label": args.label, "gpu": torch.cuda.get_device_name(), "graph_us": {}, "host_us": {}}
    dtype = torch.bfloat16
    for hidden, heads, kv_heads, head_dim in SHAPES:
        n = (heads + 2 * kv_heads) * head_dim
        layers = max(2, (256 << 20) // (n * hidden * 2))
        ws = [torch.randn(n, hidden, device="cuda", dtype=dtype) / hidden ** 0.5
              for _ in range(layers)]
        gamma = torch.randn(hidden, device="cuda", dtype=dtype)
        for rows in ROWS:
            x = torch.randn(rows, hidden, device="cuda", dtype=dtype)
            q = torch.empty(rows, heads, head_dim, device="cuda", dtype=dtype)
            k = torch.empty(rows, kv_heads, head_dim, device="cuda", dtype=dtype)
            v = torch.empty_like(k)

            def chain():
                for w in ws:
                    minivllm.FusedRMSNormQKV.forward(x, gamma, w, heads, kv_heads, 1e-6,
                                                     out=(q, k, v))
            key = f"H={hidden} N={n} M={rows}"
            out["graph_us"][key] = round(time_graph(chain) / layers, 3)
            if rows == 1:
                w = ws[0]
                for _ in range(200):
                    minivllm.FusedRMSNormQKV.forward(x, gamma, w, heads, kv_heads, 1e-6, out=(q, k, v))
                torch.cuda.synchronize()
                best = float("inf")
                for _ in range(5):
                    t0 = time.perf_counter()
                    for _ in range(500):
                        minivllm.FusedRMSNormQKV.forward(x, gamma, w, heads, kv_heads, 1e-6,
                                                         out=(q, k, v))
                    best = min(best, (time.perf_counter() - t0) / 500 * 1e6)
                    torch.cuda.synchronize()
                out["host_us"][key] = round(best, 2)
        del ws
        torch.cuda.empty_cache()
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
