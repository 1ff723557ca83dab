"""Patch a Hugging Face Llama / Qwen2 / Qwen3 model (or Mistral, Mixtral, Qwen-MoE, Granite, Phi-3,
SmolLM3) with minivllm's fused RMSNorm + QKV op.

Builds small models from configs with random weights (nothing is downloaded), runs each stock and
then patched (minivllm.hf.patch_model), checks the logits match within bfloat16 tolerance, and
reports prefill and decode time per step for both, eager, batch 1:

    python examples/hf_patch_llama.py                  # llama, qwen2, qwen3 on the GPU if any
    python examples/hf_patch_llama.py --arch qwen3 --layers 8 --out benchmarks/results

The logit check: the patched model's distance to a float32 run of the stock model must be within
1.5x (+1e-3) of the stock bfloat16 model's own distance (the fused op rounds less, never more),
and patched vs stock within 5e-2 relative. In float32 they must agree to 2e-5. Exit status 1
when a check fails.
"""

import argparse
import copy
import datetime
import json
import os
import platform
import re
import subprocess
import sys

import torch
import transformers

import minivllm
import minivllm.hf
from minivllm.bench.baselines import randomize_norms_and_biases, rel_diff

# Per-layer shapes of real models (the layer count is an option: timings are per step of the
# whole small model, embedding and LM head included).
SHAPES = {
    # Llama-3-8B's attention and MLP widths
    "llama": dict(config=transformers.LlamaConfig, hidden_size=4096, intermediate_size=14336,
                  num_attention_heads=32, num_key_value_heads=8, head_dim=128),
    # Qwen2.5-0.5B (q/k/v projections with bias)
    "qwen2": dict(config=transformers.Qwen2Config, hidden_size=896, intermediate_size=4864,
                  num_attention_heads=14, num_key_value_heads=2, head_dim=64),
    # Qwen3-0.6B (per-head q/k norms)
    "qwen3": dict(config=transformers.Qwen3Config, hidden_size=1024, intermediate_size=3072,
                  num_attention_heads=16, num_key_value_heads=8, head_dim=128),
}


def build(arch, layers, vocab, device, dtype, seed):
    shape = dict(SHAPES[arch])
    config = shape.pop("config")(num_hidden_layers=layers, vocab_size=vocab,
                                 max_position_embeddings=4096, tie_word_embeddings=False, **shape)
    torch.manual_seed(seed)
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(config).to(dtype).eval()
    randomize_norms_and_biases(model)
    return model, config


class Timer:
    """Wall time of a step on the device: CUDA events on a GPU, perf_counter on the CPU."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"

    def __call__(self, fn):
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            result = fn()
            end.record()
            end.synchronize()
            return result, start.elapsed_time(end) * 1e3
        import time
        t0 = time.perf_counter()
        result = fn()
        return result, (time.perf_counter() - t0) * 1e6


def median(values):
    values = sorted(values)
    return values[len(values) // 2]


def time_model(model, ids, decode_steps, repeats, device):
    """(prefill µs per step, decode µs per step): medians; decode steps run through the cache
    after a prefill of ids, one token per sequence per step."""
    timer = Timer(device)
    prefill = []
    with torch.inference_mode():
        for i in range(repeats + 2):  # two warm-ups
            _, us = timer(lambda: model(ids, use_cache=False))
            if i >= 2:
                prefill.append(us)
        decode = []
        for i in range(2):  # the first pass warms up the decode path
            out = model(ids, use_cache=True)
            token = ids[:, -1:]
            for _ in range(decode_steps):
                out, us = timer(lambda: model(token, past_key_values=out.past_key_values,
                                              use_cache=True))
                token = out.logits[:, -1:].argmax(-1)
                if i == 1:
                    decode.append(us)
    return median(prefill), median(decode)


def logits_of(model, ids):
    with torch.inference_mode():
        return model(ids, use_cache=False).logits.float()


def run_arch(arch, args, device, dtype, log):
    model, config = build(arch, args.layers, args.vocab, device, dtype, args.seed)
    ids = torch.randint(0, config.vocab_size, (args.batch, args.prefill), device=device,
                        generator=torch.Generator(device).manual_seed(args.seed))
    check_ids = ids[:, :args.check_tokens]
    stock_logits = logits_of(model, check_ids)
    reference = None
    if dtype != torch.float32:
        reference = logits_of(copy.deepcopy(model).float(), check_ids)
    stock_times = time_model(model, ids, args.decode_steps, args.repeats, device)

    patched_layers = minivllm.hf.patch_model(model)
    patched_logits = logits_of(model, check_ids)
    patched_times = time_model(model, ids, args.decode_steps, args.repeats, device)

    result = {
        "arch": arch,
        "model_class": type(model).__name__,
        "config": {k: getattr(config, k) for k in (
            "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
            "head_dim", "num_hidden_layers", "vocab_size")},
        "patched_layers": patched_layers,
        "logits": {
            "tokens_checked": int(check_ids.numel()),
            "rel_patched_vs_stock": rel_diff(patched_logits, stock_logits),
            "max_abs_patched_vs_stock": float((patched_logits - stock_logits).abs().max()),
            "max_abs_stock_logit": float(stock_logits.abs().max()),
            "top1_agreement": float((patched_logits.argmax(-1) == stock_logits.argmax(-1))
                                    .float().mean()),
        },
        "prefill_us_per_step": {"stock": stock_times[0], "patched": patched_times[0]},
        "decode_us_per_step": {"stock": stock_times[1], "patched": patched_times[1]},
    }
    lg = result["logits"]
    if reference is not None:
        lg["rel_stock_vs_float32"] = rel_diff(stock_logits, reference)
        lg["rel_patched_vs_float32"] = rel_diff(patched_logits, reference)
        ok = (lg["rel_patched_vs_float32"] <= 1.5 * lg["rel_stock_vs_float32"] + 1e-3
              and lg["rel_patched_vs_stock"] <= 5e-2)
    else:
        ok = lg["rel_patched_vs_stock"] <= 2e-5
    result["logits_match"] = bool(ok)

    log(f"\n{arch} ({result['model_class']}, {patched_layers} layers patched; H="
        f"{config.hidden_size}, heads {config.num_attention_heads}/{config.num_key_value_heads}"
        f" x {config.head_dim})")
    log(f"  logits over {lg['tokens_checked']} tokens: rel diff patched vs stock "
        f"{lg['rel_patched_vs_stock']:.3e}, max |diff| {lg['max_abs_patched_vs_stock']:.3e} "
        f"(max |logit| {lg['max_abs_stock_logit']:.3g}), top-1 agreement "
        f"{100 * lg['top1_agreement']:.1f}%")
    if reference is not None:
        log(f"  vs a float32 run: stock {lg['rel_stock_vs_float32']:.3e}, patched "
            f"{lg['rel_patched_vs_float32']:.3e}")
    log(f"  logits match: {'YES' if ok else 'NO'}")
    for what, key in (("prefill", "prefill_us_per_step"), ("decode", "decode_us_per_step")):
        t = result[key]
        log(f"  {what:8s} µs/step: stock {t['stock']:9.1f}  patched {t['patched']:9.1f}  "
            f"(speedup {t['stock'] / t['patched']:.3f}x)")
    return result


def git_commit():
    if os.environ.get("MINIVLLM_COMMIT"):
        return os.environ["MINIVLLM_COMMIT"]
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=os.path.dirname(os.path.abspath(__file__)), timeout=10)
        return done.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", nargs="+", choices=sorted(SHAPES), default=sorted(SHAPES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default=None,
                        help="default: bfloat16 on CUDA, float32 on the CPU")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--prefill", type=int, default=512, help="prompt tokens per sequence")
    parser.add_argument("--check-tokens", type=int, default=128,
                        help="prompt tokens whose logits are compared")
    parser.add_argument("--decode-steps", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="directory for hf-<gpu>-<date>.json and .log")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    lines = []

    def log(text):
        print(text, flush=True)
        lines.append(text)

    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu")
    log(f"minivllm {minivllm.__version__} (cuda_built={minivllm.cuda_built()}), torch "
        f"{torch.__version__}, transformers {transformers.__version__}; {gpu}; {dtype}; batch "
        f"{args.batch}, prefill {args.prefill} tokens, {args.decode_steps} decode steps, eager")
    results = [run_arch(arch, args, device, dtype, log) for arch in args.arch]
    ok = all(r["logits_match"] for r in results)
    log(f"\nall logits match: {'YES' if ok else 'NO'}")

    if args.out:
        os.makedirs(args.out, exist_ok=True)
        date = datetime.date.today()
        slug = re.sub(r"[^a-z0-9]+", "-", (gpu or device.type).lower()).strip("-") or "device"
        stem = os.path.join(args.out, f"hf-{slug}-{date:%Y-%m-%d}")
        report = {"device": gpu, "dtype": str(dtype).replace("torch.", ""),
                  "torch": torch.__version__, "transformers": transformers.__version__,
                  "python": platform.python_version(), "commit": git_commit(),
                  "date": f"{date:%Y-%m-%d}", "args": vars(args), "results": results,
                  "all_logits_match": ok}
        with open(stem + ".json", "w") as f:
            json.dump(report, f, indent=2)
        with open(stem + ".log", "w") as f:
            f.write("\n".join(lines) + "\n")
        print(f"wrote {stem}.json and {stem}.log")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
