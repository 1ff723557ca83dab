"""Does torch.compile with the hidden size fixed (as in a model, where H never changes) beat
minivllm's norms without PDL? (issue 32)

bench_rms_norm's "compiled" baselines use torch.compile's default, which turns sizes dynamic once a
shape changes: in its grids only the first H (896) ran a kernel compiled for that H, and there
torch.compile beat minivllm's PDL-off calls by 0.13-0.34 us (bf16 1 x 896 1.229 against 1.392 us),
while at every later H it ran slower than both minivllm and Liger. This probe times, in
bench_rms_norm's graph harness (minivllm.bench.timing.time_per_call, each call its own buffers),
minivllm's rms_norm and fused add with PDL off and on against torch.compile(dynamic=False) of
bench_rms_norm's own baselines, compiled afresh for each shape (H and M fixed, as a model's decode
step is), and with --dynamic-m against one compiled with M dynamic and H fixed (a model's
prefill). Run with TRITON_CACHE_DIR and TORCH_LOGS=output_code set to keep Inductor's kernels.

  python3 norm_static_compile.py [--dtypes bf16 fp16] [--hidden 896 1024 ...] [--rows 1 16 ...]
"""
import argparse

import torch

import minivllm
from minivllm.bench import baselines as bl
from minivllm.bench import timing as bt

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dtypes", nargs="+", default=["bf16"])
    parser.add_argument("--hidden", nargs="+", type=int, default=[896, 1024, 2048, 4096])
    parser.add_argument("--rows", nargs="+", type=int, default=[1, 16, 128, 1024])
    parser.add_argument("--replays", type=int, default=9)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--dynamic-m", action="store_true")
    args = parser.parse_args()
    bt.raise_compile_limits(1024)
    props = torch.cuda.get_device_properties(0)
    l2 = props.L2_cache_size
    print(f"# {props.name}, torch {torch.__version__}", flush=True)
    for dname in args.dtypes:
        dtype = DTYPES[dname]
        for hidden in args.hidden:
            for rows in args.rows:
                calls = bt.calls_per_graph(4 * rows * hidden * dtype.itemsize, l2)
                w = torch.randn(hidden, dtype=dtype, device="cuda")
                xs = [torch.randn(rows, hidden, dtype=dtype, device="cuda") for _ in range(calls)]
                rs = [torch.randn(rows, hidden, dtype=dtype, device="cuda") for _ in range(calls)]
                outs = [torch.empty_like(x) for x in xs]
                routs = [torch.empty_like(x) for x in xs]
                options = {} if args.dynamic_m else {"dynamic": False}
                if args.dynamic_m:
                    for t in xs + rs:
                        torch._dynamo.mark_dynamic(t, 0)
                norm_c = torch.compile(bl.hf_rms_norm, **options)
                add_c = torch.compile(bl.torch_add_rms_norm, **options)
                ref = (xs[0].double() * torch.rsqrt(xs[0].double().pow(2).mean(-1, keepdim=True) + 1e-6)
                       * w.double())
                got = norm_c(xs[0], w)
                err = ((got.double() - ref).abs().max() / ref.abs().max()).item()
                if not err < 2e-2:
                    raise SystemExit(f"compiled {dname} {rows}x{hidden}: error {err}")
                impls = {
                    "norm off": lambda i: minivllm.rms_norm(xs[i], w, 1e-6, out=outs[i], pdl=False),
                    "norm on": lambda i: minivllm.rms_norm(xs[i], w, 1e-6, out=outs[i], pdl=True),
                    "norm compiled": lambda i: norm_c(xs[i], w),
                    "add off": lambda i: minivllm.fused_add_rms_norm(xs[i], rs[i], w, 1e-6, out=outs[i], residual_out=routs[i], pdl=False),
                    "add on": lambda i: minivllm.fused_add_rms_norm(xs[i], rs[i], w, 1e-6, out=outs[i], residual_out=routs[i], pdl=True),
                    "add compiled": lambda i: add_c(xs[i], rs[i], w),
                }
                for name, fn in impls.items():  # compile / warm outside the graph
                    fn(0)
                torch.cuda.synchronize()
                for rnd in range(args.rounds):
                    line = [f"{dname} {rows:5d} x {hidden:5d} r{rnd}"]
                    for name, fn in impls.items():
                        t = bt.time_per_call(fn, calls, args.replays, min_replay_us=2000)
                        line.append(f"{name} {t['us']:.3f}")
                    print(" | ".join(line), flush=True)
                del xs, rs, outs, routs


if __name__ == "__main__":
    main()
