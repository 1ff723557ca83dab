"""Whole decode steps (bench_decode.py's step, one CUDA graph a step, median of replays): does PDL on
minivllm's post-attention fused_add_rms_norm, which follows the o_proj GEMM (a cuBLAS kernel that
never lets its successor start early), cost the step time? In chains of norm -> F.linear the
norm launched with PDL ran 0.2-0.4 us slower than without (dev/logs/qkv-scratch-norm-nvidia-h200-2026-11-29.log).

Variants (the minivllm ops eager under the step's graph, no torch.compile), alternating in rounds:
  minivllm          bench_decode's (pdl=None everywhere: on for the kernels that take it)
  norm-pdl-off      the same with fused_add_rms_norm(pdl=False)
  all-pdl-off       attention_prologue and fused_add_rms_norm with pdl=False
  torch             bench_decode's torch variant (the reference for the final state's error)

usage: python3 dev/probes/decode_norm_pdl.py [--models qwen3-0.6b llama-3-8b] [--batch 1 16 64]
           [--rounds 2] [--replays 20] [--context 2048]
"""
import argparse
import functools
import statistics
import sys
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import bench_decode as bd  # noqa: E402
import minivllm  # noqa: E402
from minivllm.bench.baselines import rel_diff  # noqa: E402


def ops_with(prologue_pdl, norm_pdl):
    return types.SimpleNamespace(
        attention_prologue=functools.partial(minivllm.attention_prologue, pdl=prologue_pdl),
        fused_add_rms_norm=functools.partial(minivllm.fused_add_rms_norm, pdl=norm_pdl))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--models", nargs="+", default=list(bd.DEFAULT_DECODERS))
    p.add_argument("--batch", nargs="+", type=int, default=[1, 16, 64])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--replays", type=int, default=20)
    p.add_argument("--context", type=int, default=2048)
    args = p.parse_args()
    variants = {"minivllm": None, "norm-pdl-off": ops_with(None, False), "all-pdl-off": ops_with(False, False)}
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, bf16, context {args.context}; "
          f"µs per step (median of rounds' medians); ratio = minivllm / variant (> 1: the variant faster)")
    print(f"{'model':14s} {'batch':>5s} {'torch':>9s} " + " ".join(f"{v:>13s}" for v in variants) +
          "  ratios  max rel err vs torch")
    with torch.no_grad():
        for name in args.models:
            cfg = bd.DECODERS[name.lower()]
            for batch in args.batch:
                model = bd.Model(cfg, batch, args.context, torch.bfloat16, "cuda")
                steps = {"torch": bd.make_step(model, "torch")}
                for v, ops in variants.items():
                    steps[v] = bd.make_step(model, "minivllm", ops=ops)
                times = {k: [] for k in steps}
                finals = {}
                for _ in range(args.rounds):
                    for k, step in steps.items():
                        us, _, final = bd.time_step(step, args.replays)
                        times[k].append(us)
                        finals[k] = final
                med = {k: statistics.median(t) for k, t in times.items()}
                err = max(rel_diff(finals[k], finals["torch"]) for k in variants)
                print(f"{cfg.name:14s} {batch:5d} {med['torch']:9.1f} " +
                      " ".join(f"{med[v]:13.1f}" for v in variants) + "  " +
                      " ".join(f"{med['minivllm'] / med[v]:.4f}" for v in list(variants)[1:]) +
                      f"  {err:.2e}", flush=True)
                del model, steps, finals
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
