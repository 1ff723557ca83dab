"""Whole decode steps (bench_decode.py's minivllm variant, one CUDA graph a step, median of replays)
with attention_prologue on the table's path ("auto") and on forced ones, in alternating rounds in
one process, so that a path the table does not take can be judged where it counts.

usage: python3 dev/probes/decode_paths.py --models llama-3-8b qwen3-4b --batch 4 8 \
           --paths auto engine_prologue [--rounds 2] [--replays 20]
"""
import argparse
import functools
import sys
import types
from pathlib import Path

import torch

import minivllm

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import bench_decode as bd  # noqa: E402


def step_for(model, path):
    if path == "auto":
        return bd.make_step(model, "minivllm")
    ops = types.SimpleNamespace(
        attention_prologue=functools.partial(minivllm.attention_prologue, _path=path),
        fused_add_rms_norm=minivllm.fused_add_rms_norm)
    return bd.make_step(model, "minivllm", ops=ops)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["llama-3-8b"])
    p.add_argument("--batch", nargs="+", type=int, default=[4])
    p.add_argument("--paths", nargs="+", default=["auto", "engine_prologue"])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--replays", type=int, default=20)
    p.add_argument("--context", type=int, default=2048)
    args = p.parse_args()
    print(torch.cuda.get_device_name(), flush=True)
    for name in args.models:
        cfg = bd.DECODERS[name]
        for batch in args.batch:
            model = bd.Model(cfg, batch, args.context, torch.bfloat16, "cuda")
            times = {path: [] for path in args.paths}
            with torch.no_grad():
                for _ in range(args.rounds):
                    for path in args.paths:
                        times[path].append(bd.time_step(step_for(model, path), args.replays)[0])
            cells = " | ".join(f"{path} " + " ".join(f"{t:7.1f}" for t in ts) for path, ts in times.items())
            print(f"{cfg.name} ({cfg.layers} layers) batch {batch}: {cells} us a step", flush=True)
            del model
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
