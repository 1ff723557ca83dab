"""Whole decode steps (bench_decode.py's minivllm variant, one CUDA graph a step, median of replays)
with attention_prologue on the table's path ("auto") and on forced ones, in alternating rounds in
one process, so that a path the table does not take can be judged where it counts.

usage: python3 dev/probes/decode_paths.py --models llama-3-8b qwen3-4b --batch 4 8 \
           --paths auto engine_prologue [--rounds 2] [--replays 20] [--each]
(models: bench_decode's decoders and EXTRA below)
"""
import argparse
import time
import sys
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import bench_decode as bd  # noqa: E402
import decode_profile  # noqa: E402  (dev/: its step with the prologue on a named path)


# Decoders beside bench_decode's (8 layers each, as its Llama-3-8B): other large-W shapes of real models.
EXTRA = {d.name.lower(): d for d in (
    bd.Decoder("Llama-2-7B", 8, 4096, 32, 32, 128, 11008, False, False),
    bd.Decoder("Qwen2.5-7B", 8, 3584, 28, 4, 128, 18944, False, True),
    bd.Decoder("Mistral-Nemo", 8, 5120, 32, 8, 128, 14336, False, False),
    bd.Decoder("Gemma-3-1B", 26, 1152, 4, 1, 256, 6912, True, False),
    bd.Decoder("Llama-3.2-1B", 16, 2048, 32, 8, 64, 8192, False, False),
)}


def step_for(model, path):
    return decode_profile.step_for(model, "minivllm", None if path == "auto" else path)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["llama-3-8b"])
    p.add_argument("--batch", nargs="+", type=int, default=[4])
    p.add_argument("--paths", nargs="+", default=["auto", "engine_prologue"])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--replays", type=int, default=20)
    p.add_argument("--context", type=int, default=2048)
    p.add_argument("--each", action="store_true", help="print each measurement with the time of day "
                   "(to set beside nvidia-smi's clock log)")
    args = p.parse_args()
    print(torch.cuda.get_device_name(), flush=True)
    for name in args.models:
        cfg = bd.DECODERS.get(name) or EXTRA[name]
        for batch in args.batch:
            model = bd.Model(cfg, batch, args.context, torch.bfloat16, "cuda")
            times = {path: [] for path in args.paths}
            with torch.no_grad():
                for _ in range(args.rounds):
                    for path in args.paths:
                        times[path].append(bd.time_step(step_for(model, path), args.replays)[0])
                        if args.each:
                            print(f"  {time.strftime('%H:%M:%S')} {cfg.name} batch {batch} {path}: "
                                  f"{times[path][-1]:.1f} us", flush=True)
            cells = " | ".join(f"{path} " + " ".join(f"{t:7.1f}" for t in ts) for path, ts in times.items())
            print(f"{cfg.name} ({cfg.layers} layers) batch {batch}: {cells} us a step", flush=True)
            del model
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
