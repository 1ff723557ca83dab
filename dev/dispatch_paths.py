"""Print the GPU path FusedRMSNormQKV.forward takes for a grid of calls, one line per call.

A restructuring of the dispatcher must leave every automatic choice as it was: run this against
two builds (PYTHONPATH pointing at each) and compare the outputs with --compare. Older builds
named the W streams together ("stream") and the norm + cuBLASLt path "gemm"; the comparison maps
those names. Needs torch and a CUDA GPU.

  python3 dev/dispatch_paths.py > new.txt
  python3 dev/dispatch_paths.py --compare old.txt new.txt
"""
import argparse
import sys

# (hidden, q heads, kv heads, head_dim): a spread of real decoder shapes, MHA to MQA, head_dim
# 64-256, N that do and do not divide evenly over the multiprocessors.
SHAPES = [
    (896, 14, 2, 64), (1024, 16, 8, 128), (2048, 32, 4, 64), (2560, 32, 8, 128),
    (3072, 24, 8, 128), (4096, 32, 8, 128), (4096, 32, 32, 128), (5120, 40, 8, 128),
    (2304, 8, 4, 256), (8192, 64, 8, 128), (4544, 71, 1, 64), (1000, 10, 5, 100),
]
ROWS = [1, 2, 3, 4, 5, 8, 12, 16, 17, 24, 32, 33, 48, 64, 65, 128, 256, 257, 512, 1024, 2048]


def run():
    import torch
    import minivllm
    from minivllm import _C

    gen = torch.Generator(device="cuda").manual_seed(0)
    for hidden, heads, kv_heads, head_dim in SHAPES:
        n = (heads + 2 * kv_heads) * head_dim
        for dtype in (torch.bfloat16, torch.float16, torch.float32):
            w = torch.randn(n, hidden, device="cuda", dtype=dtype, generator=gen) / hidden ** 0.5
            gamma = torch.randn(hidden, device="cuda", dtype=dtype, generator=gen)
            for rows in ROWS:
                x = torch.randn(rows, hidden, device="cuda", dtype=dtype, generator=gen)
                for form in ("plain", "residual", "inplace", "transposed"):
                    kwargs = {}
                    weight = w
                    if form == "residual":
                        kwargs["residual"] = torch.randn_like(x)
                    elif form == "inplace":
                        r = torch.randn_like(x)
                        kwargs.update(residual=r, residual_out=r)
                    elif form == "transposed":
                        weight = w.t()
                    minivllm.FusedRMSNormQKV.forward(x, gamma, weight, heads, kv_heads, **kwargs)
                    print(f"H={hidden} N={n} D={head_dim} {str(dtype)[6:]} M={rows} {form} "
                          f"{_C.qkv_last_gpu_path()}", flush=True)
    torch.cuda.synchronize()


OLD_NAMES = {"stream": {"register", "bulk"}, "gemm": {"cublaslt"}}


def compare(old_file, new_file):
    old = dict(line.rsplit(" ", 1) for line in open(old_file).read().split("\n") if line)
    new = dict(line.rsplit(" ", 1) for line in open(new_file).read().split("\n") if line)
    differ = 0
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a is None or b is None or (b not in OLD_NAMES.get(a, {a})):
            differ += 1
            print(f"DIFFERENT {key}: {a} -> {b}")
    print(f"{len(set(old) & set(new))} calls in both; {differ} take a different path")
    return 1 if differ else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--compare", nargs=2, metavar=("OLD", "NEW"))
    args = parser.parse_args()
    if args.compare:
        sys.exit(compare(*args.compare))
    run()
