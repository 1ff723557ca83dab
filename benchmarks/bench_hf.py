#!/usr/bin/env python3
"""Hugging Face generate with a static cache and torch.compile, stock against minivllm-patched:
GPU time per decode step (issue 30, benchmark 3).

For each model a transformers model is built from a hand-written config with the real model's
dimensions and random weights (seeded; nothing is downloaded; norms and Qwen2's q/k/v biases are
randomized too, so that they count), in bf16 on the GPU, eval mode. A deepcopy of it is patched
with minivllm.hf.patch_model: every decoder layer's self_attn becomes a PrologueAttention (one
minivllm attention_prologue per layer: input norm, QKV (+ bias), q/k norms, RoPE and the write
into the StaticCache). Both copies hold the same weights.

Compilation (exactly one of the two is in effect; the JSON says which, under "method"):
  --compile-via generate (default)  transformers' own compilation of the decode steps, as
      transformers 5.x documents it: generation_config.cache_implementation = "static" and
      compile_config = CompileConfig(fullgraph=True, mode="reduce-overhead"); generate then runs
      the prefill eagerly and every decode step through torch.compile(model.__call__, ...).
      generation_config.max_cache_len is set to prompt + 2N so that the N- and 2N-token runs
      share one cache size (no recompilation between them). The run fails if generate did not
      compile (its auto-compile criteria not met).
  --compile-via forward   the older recipe: model.forward = torch.compile(model.forward,
      mode="reduce-overhead", fullgraph=True), with generate's auto-compile switched off
      (generation_config.disable_compile = True; otherwise generate would compile the compiled
      forward once more). The prefill is compiled too, so the StaticCache must exist before it
      (transformers 5.x allocates it lazily, in the first update(), which inside a compiled
      prefill would put the cache in the CUDA-graph pool): one StaticCache of prompt + 2N
      positions per model, allocated up front (early_initialization) and reset() before each
      generate, is passed as past_key_values.

Timing: greedy generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False) on a random
prompt (default 128 tokens, batch 1). Per variant: --warmup generates of 2N new tokens
(compilation, CUDA-graph recording), then --repeats pairs of profiled generates of N and of 2N
new tokens (torch.profiler, activities CPU + CUDA; one generate per profiler session, the GPU
idle at its start and synchronized at its end). A generate's GPU time is the time the GPU was
busy: the union of the intervals of every kernel, memcpy and memset the profiler saw (a union,
not a sum, because with programmatic dependent launch a kernel starts before its predecessor
ends; the plain sum is recorded too). Decode GPU µs per step = (GPU time(2N) - GPU time(N)) / N:
the prefill, the first token and each run's fixed costs cancel; what remains is N decode steps,
each one forward of one token per sequence plus generate's per-step bookkeeping kernels (argmax,
concatenation, stopping checks; the same for both variants). The median over the repeats is
reported (min and max too). "prefill_gpu_us_est" = GPU time(N) - (N - 1) x decode step: the
prefill forward and generate's fixed work. Wall-clock ms per generate (unprofiled, median of
--repeats) is reported for information only: it is dominated by host work and varies run to run.
The kernels that make up a decode step (µs per step by name, from the same profiles) are listed
for each variant.

Correctness (not a pass/fail criterion except where said): the tokens the patched model
generates against stock's (greedy; random-weight models can tie and diverge: the agreement
fraction and the first diverging position are reported), and the first decode step's logits
(an eager, uncompiled prefill + one decode step through a StaticCache, both models fed the same
token): relative difference patched vs stock, max |diff|, top-1 agreement. patched_layers (how
many attention modules were replaced) must be > 0, and every variant must run: otherwise the
exit status is 1.

Target (issue 30): "HF compiled: patched GPU time per decode step <= 0.9x stock for Qwen3-0.6B at
batch 1".

usage: python3 benchmarks/bench_hf.py [--models qwen3-0.6b llama-3-8b qwen2.5-1.5b] [--batch 1]
           [--prompt 128] [--new-tokens 32] [--layers L] [--warmup 2] [--repeats 3]
           [--compile-via generate|forward] [--dtype bf16] [--out DIR]
       python3 benchmarks/bench_hf.py --cpu-check   # tiny model on the CPU, float32: the patch
                                                    # is in, generate runs (no profiler timing)
Writes DIR/hf-compiled-<gpu>-<date>.json (DIR: benchmarks/results). Llama-3-8B runs 8 of its 32
layers unless --layers says otherwise (memory and compile time); the Qwen models run all 28.
"""

import argparse
import copy
import statistics
import sys
import time
from collections import defaultdict, namedtuple
from pathlib import Path

try:
    import torch
    import transformers
except ImportError:
    sys.exit("bench_hf.py needs PyTorch and transformers")

import minivllm
import minivllm.hf
from minivllm.bench import timing as bt
from minivllm.bench.baselines import randomize_norms_and_biases, rel_diff

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = Path(__file__).resolve().parent / "results"
TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
TARGET = ("qwen3-0.6b", 1, 0.9)   # model, batch, largest patched/stock ratio of decode GPU time
TOP_KERNELS = 12

Spec = namedtuple("Spec", "name family layers full_layers hidden intermediate heads kv_heads head_dim "
                          "vocab rope_theta eps tie")
# The real models' dimensions (their config.json); layers: the default count run here, of full_layers.
SPECS = {s.name.lower(): s for s in (
    Spec("Qwen3-0.6B", "qwen3", 28, 28, 1024, 3072, 16, 8, 128, 151936, 1e6, 1e-6, True),
    Spec("Llama-3-8B", "llama", 8, 32, 4096, 14336, 32, 8, 128, 128256, 5e5, 1e-5, False),
    Spec("Qwen2.5-1.5B", "qwen2", 28, 28, 1536, 8960, 12, 2, 128, 151936, 1e6, 1e-6, True),
)}
TINY = Spec("tiny", "qwen3", 2, 2, 64, 128, 4, 2, 16, 256, 1e6, 1e-6, True)
CONFIGS = {"qwen3": transformers.Qwen3Config, "llama": transformers.LlamaConfig,
           "qwen2": transformers.Qwen2Config}


# ---------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------
def build_model(spec, layers, max_positions, device, dtype, seed, init_range=0.02):
    """A random-weight causal LM of `spec`'s dimensions with `layers` decoder layers (Qwen2's
    q/k/v biases come with its architecture); init_range: the weights' std (HF's 0.02)."""
    config = CONFIGS[spec.family](
        vocab_size=spec.vocab, hidden_size=spec.hidden, intermediate_size=spec.intermediate,
        num_hidden_layers=layers, num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads, head_dim=spec.head_dim, rms_norm_eps=spec.eps,
        rope_parameters={"rope_type": "default", "rope_theta": spec.rope_theta},
        max_position_embeddings=max(4096, max_positions), tie_word_embeddings=spec.tie,
        initializer_range=init_range)
    torch.manual_seed(seed)
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.eval()
    randomize_norms_and_biases(model)
    return model


def stock_and_patched(spec, layers, max_positions, device, dtype, seed, init_range=0.02):
    """(stock, patched, patched_layers): two models with the same weights, the second patched.
    Exits (status 1) if nothing was patched."""
    stock = build_model(spec, layers, max_positions, device, dtype, seed, init_range)
    patched = copy.deepcopy(stock)
    try:
        count = minivllm.hf.patch_model(patched)
    except TypeError as error:  # no supported decoder layer at all
        sys.exit(f"bench_hf.py: FAILED: minivllm.hf.patch_model patched nothing: {error}")
    replaced = sum(isinstance(m, minivllm.hf.PrologueAttention) for m in patched.modules())
    if count == 0 or replaced != count:
        sys.exit(f"bench_hf.py: FAILED: patch_model reported {count} layers, the model holds "
                 f"{replaced} PrologueAttention modules")
    return stock, patched, replaced


def first_decode_logits(model, ids, token=None):
    """Eager (uncompiled): prefill of ids through a fresh StaticCache, then one decode step of
    `token` (default: the prefill's greedy token). Returns (prefill's last logits, token, the
    decode step's logits), float32, [B, V]."""
    cache = transformers.StaticCache(config=model.config, max_cache_len=ids.shape[1] + 1)
    with torch.no_grad():
        out = model(ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        prefill = out.logits[:, -1].float()
        if token is None:
            token = prefill.argmax(-1, keepdim=True)
        step = model(token, past_key_values=cache, use_cache=True, logits_to_keep=1)
    return prefill, token, step.logits[:, -1].float()


def logits_check(stock, patched, ids):
    s_prefill, token, s_step = first_decode_logits(stock, ids)
    p_prefill, _, p_step = first_decode_logits(patched, ids, token)
    return {"prefill_last_rel": rel_diff(p_prefill, s_prefill),
            "decode_rel": rel_diff(p_step, s_step),
            "decode_max_abs": float((p_step - s_step).abs().max()),
            "decode_max_abs_stock_logit": float(s_step.abs().max()),
            "decode_top1_agreement": float((p_step.argmax(-1) == s_step.argmax(-1))
                                           .float().mean())}


def token_agreement(stock_tokens, patched_tokens):
    """Fraction of generated positions where the two agree, and the first position (over the
    batch) where they differ (None: never)."""
    same = stock_tokens == patched_tokens
    differ = (~same).any(0).nonzero()
    return {"agreement": float(same.float().mean()),
            "first_divergence": int(differ[0]) if differ.numel() else None,
            "positions": int(same.shape[1])}


# ---------------------------------------------------------------------------------------------
# compilation and generate
# ---------------------------------------------------------------------------------------------
class Runner:
    """One model set up for static-cache compiled generate in one of the two ways (see the
    module docstring); generate(ids, n) returns the n new tokens [B, n]."""

    def __init__(self, model, via, batch, max_cache_len, backend, mode, fullgraph=True,
                 all_devices=False):
        self.model, self.via, self.cache = model, via, None
        gc = model.generation_config
        gc.pad_token_id = 0 if gc.pad_token_id is None else gc.pad_token_id
        if via == "generate":
            gc.cache_implementation = "static"
            gc.max_cache_len = max_cache_len
            gc.disable_compile = False
            cc = transformers.CompileConfig(fullgraph=fullgraph, mode=mode, backend=backend)
            if all_devices:
                cc._compile_all_devices = True  # the CPU check: compile there too
            gc.compile_config = cc
        elif via == "forward":
            gc.cache_implementation = None
            gc.disable_compile = True
            config = model.config
            self.cache = transformers.StaticCache(config=config, max_cache_len=max_cache_len)
            self.cache.early_initialization(
                batch_size=batch, num_heads=config.num_key_value_heads,
                head_dim=getattr(config, "head_dim", None)
                or config.hidden_size // config.num_attention_heads,
                dtype=model.dtype, device=model.device)
            model.forward = torch.compile(model.forward, mode=mode, fullgraph=fullgraph,
                                          backend=backend)
        elif via == "none":  # eager, static cache (the CPU check's baseline)
            gc.cache_implementation = "static"
            gc.max_cache_len = max_cache_len
            gc.disable_compile = True
        else:
            raise ValueError(f"compile via {via!r}")

    def generate(self, ids, new_tokens):
        kwargs = {}
        if self.cache is not None:
            self.cache.reset()
            kwargs["past_key_values"] = self.cache
        with torch.no_grad():
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids),
                                      max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                      do_sample=False, **kwargs)
        return out[:, ids.shape[1]:]

    def compiled_by_generate(self):
        return hasattr(self.model, "_compiled_call")


def compile_counters():
    from torch._dynamo.utils import counters
    return {"unique_graphs": counters["stats"]["unique_graphs"],
            "cudagraph_skips": counters["inductor"]["cudagraph_skips"]}


# ---------------------------------------------------------------------------------------------
# profiling
# ---------------------------------------------------------------------------------------------
SYNC_EVENTS = ("Event Sync", "Stream Sync", "Context Sync", "Stream Wait Event", "Device Sync")


def device_activity(prof):
    """What one profiler session saw on the GPU: busy time (union of intervals, µs), summed
    durations (µs), counts of kernels / memcpy / memset, and µs by kernel name."""
    DeviceType = torch.autograd.DeviceType
    spans, by_name = [], defaultdict(float)
    counts = {"kernel": 0, "memcpy": 0, "memset": 0}
    results = getattr(prof.profiler, "kineto_results", None)
    if results is not None:
        raw = [(e.name(), e.device_type(), e.is_user_annotation(), e.start_ns() / 1e3,
                e.end_ns() / 1e3) for e in results.events()]
    else:  # an older profiler: the parsed events
        raw = [(e.name, e.device_type, getattr(e, "is_user_annotation", False),
                e.time_range.start, e.time_range.end) for e in prof.events()]
    for name, device, annotation, start, end in raw:
        if device != DeviceType.CUDA or annotation or name in SYNC_EVENTS:
            continue
        kind = ("memcpy" if name.startswith("Memcpy") else
                "memset" if name.startswith("Memset") else "kernel")
        counts[kind] += 1
        spans.append((start, end))
        by_name[name] += end - start
    busy, reach = 0.0, float("-inf")
    for start, end in sorted(spans):
        if end > reach:
            busy += end - max(start, reach)
            reach = end
    return {"busy_us": busy, "sum_us": sum(e - s for s, e in spans), **counts,
            "by_name": dict(by_name)}


def profiled_generate(runner, ids, new_tokens):
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=activities) as prof:
        tokens = runner.generate(ids, new_tokens)
        torch.cuda.synchronize()
    return tokens, device_activity(prof)


def wall_ms(runner, ids, new_tokens, repeats):
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        runner.generate(ids, new_tokens)
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def bench_variant(runner, ids, args):
    """Warm-up, profiled N / 2N pairs, wall clock; the variant's row."""
    n, n2 = args.new_tokens, 2 * args.new_tokens
    before = compile_counters()
    started = time.perf_counter()
    for _ in range(args.warmup):
        runner.generate(ids, n2)
    torch.cuda.synchronize()
    warmup_s = time.perf_counter() - started
    if runner.via == "generate" and not runner.compiled_by_generate():
        raise RuntimeError("generate did not compile the decode steps (its auto-compile "
                           "criteria were not met): the run would time eager decoding")
    if runner.via == "forward" and runner.compiled_by_generate():
        raise RuntimeError("generate compiled on top of the compiled forward")
    steps, per_name, tokens, pairs = [], defaultdict(float), None, []
    for _ in range(args.repeats):
        _, short = profiled_generate(runner, ids, n)
        tokens, long = profiled_generate(runner, ids, n2)
        step = (long["busy_us"] - short["busy_us"]) / n
        steps.append(step)
        pairs.append({
            "busy_us": [short["busy_us"], long["busy_us"]],
            "sum_us": [short["sum_us"], long["sum_us"]],
            "kernels": [short["kernel"], long["kernel"]],
            "memcpy": [short["memcpy"], long["memcpy"]],
            "memset": [short["memset"], long["memset"]],
            "decode_gpu_us_per_step": step,
            "decode_sum_us_per_step": (long["sum_us"] - short["sum_us"]) / n,
            "kernels_per_step": (long["kernel"] - short["kernel"]) / n,
            "prefill_gpu_us_est": short["busy_us"] - (n - 1) * step})
        for name in set(short["by_name"]) | set(long["by_name"]):
            per_name[name] += (long["by_name"].get(name, 0.0)
                               - short["by_name"].get(name, 0.0)) / (n * args.repeats)
    if not min(steps) > 0 or not min(p["kernels_per_step"] for p in pairs) >= 1:
        raise RuntimeError(f"the profiler saw no GPU work for the decode steps (µs per step "
                           f"{steps}, kernels per step {[p['kernels_per_step'] for p in pairs]}):"
                           f" are kernels inside CUDA graphs traced?")
    after = compile_counters()
    top = sorted(per_name.items(), key=lambda kv: -kv[1])[:TOP_KERNELS]
    wall_n, wall_n2 = wall_ms(runner, ids, n, args.repeats), wall_ms(runner, ids, n2, args.repeats)
    return {
        "decode_gpu_us_per_step": statistics.median(steps),
        "decode_gpu_us_per_step_min": min(steps), "decode_gpu_us_per_step_max": max(steps),
        "decode_sum_us_per_step": statistics.median(p["decode_sum_us_per_step"] for p in pairs),
        "kernels_per_step": statistics.median(p["kernels_per_step"] for p in pairs),
        "prefill_gpu_us_est": statistics.median(p["prefill_gpu_us_est"] for p in pairs),
        "profiles": pairs,
        "top_kernels_us_per_step": [[name[:160], us] for name, us in top],
        "wall_ms_per_generate": {str(n): wall_n, str(n2): wall_n2},
        "wall_us_per_decode_step": (wall_n2 - wall_n) * 1e3 / n,
        "warmup_seconds": warmup_s,
        "compiled_graphs": after["unique_graphs"] - before["unique_graphs"],
        "cudagraph_skips": after["cudagraph_skips"] - before["cudagraph_skips"],
        "tokens": tokens,
    }


# ---------------------------------------------------------------------------------------------
# one model, one batch size
# ---------------------------------------------------------------------------------------------
def run_model(key, batch, args, dtype, log, device="cuda", backend="inductor"):
    spec = SPECS[key]
    layers = args.layers or spec.layers
    n2 = 2 * args.new_tokens
    max_cache_len = args.prompt + n2
    torch._dynamo.reset()
    stock, patched, replaced = stock_and_patched(spec, layers, max_cache_len, device, dtype,
                                                 args.seed)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    ids = torch.randint(0, spec.vocab, (batch, args.prompt), device=device, generator=gen)
    row = {"model": spec.name, "layers": layers, "full_layers": spec.full_layers,
           "batch": batch, "prompt": args.prompt, "new_tokens": [args.new_tokens, n2],
           "config": spec._asdict(), "model_class": type(stock).__name__,
           "attn_implementation": stock.config._attn_implementation,
           "patched_layers": replaced, "variants": {}, "failures": {}}
    log(f"\n{spec.name} ({row['model_class']}, {layers} of {spec.full_layers} layers, "
        f"{replaced} attention modules patched, attention {row['attn_implementation']}), "
        f"batch {batch}, prompt {args.prompt}, N = {args.new_tokens}")
    row["logits"] = lg = logits_check(stock, patched, ids)
    log(f"  first decode step logits (eager): rel diff patched vs stock {lg['decode_rel']:.3e}, "
        f"max |diff| {lg['decode_max_abs']:.3e} (max |logit| "
        f"{lg['decode_max_abs_stock_logit']:.3g}), top-1 agreement "
        f"{100 * lg['decode_top1_agreement']:.1f}%; prefill last-token rel diff "
        f"{lg['prefill_last_rel']:.3e}")
    for name, model in (("stock", stock), ("patched", patched)):
        t0 = time.perf_counter()
        try:
            runner = Runner(model, args.compile_via, batch, max_cache_len, backend,
                            args.torch_compile_mode)
            v = bench_variant(runner, ids, args)
        except Exception as error:  # recorded, and the run's exit status is 1
            row["failures"][name] = f"{type(error).__name__}: {str(error)[:500]}"
            log(f"  {name:8s} FAILED: {row['failures'][name]}")
            continue
        row["variants"][name] = v
        log(f"  {name:8s} decode GPU {v['decode_gpu_us_per_step']:9.1f} µs/step "
            f"(min {v['decode_gpu_us_per_step_min']:.1f}, max {v['decode_gpu_us_per_step_max']:.1f}"
            f"; kernel sum {v['decode_sum_us_per_step']:.1f}; {v['kernels_per_step']:.1f} "
            f"kernels/step) | prefill+fixed GPU {v['prefill_gpu_us_est'] / 1e3:.2f} ms | wall "
            f"{v['wall_ms_per_generate'][str(n2)]:.1f} ms per {n2}-token generate (info) | "
            f"warm-up {v['warmup_seconds']:.0f} s, {v['compiled_graphs']} graphs, "
            f"{v['cudagraph_skips']} cudagraph skips | {time.perf_counter() - t0:.0f} s")
        for kernel, us in v["top_kernels_us_per_step"][:6]:
            log(f"           {us:8.1f} µs/step  {kernel[:100]}")
    if len(row["variants"]) == 2:
        s, p = row["variants"]["stock"], row["variants"]["patched"]
        row["ratio_patched_over_stock"] = (p["decode_gpu_us_per_step"]
                                           / s["decode_gpu_us_per_step"])
        row["tokens"] = token_agreement(s.pop("tokens"), p.pop("tokens"))
        log(f"  patched / stock decode GPU time: {row['ratio_patched_over_stock']:.3f} "
            f"(speedup {1 / row['ratio_patched_over_stock']:.3f}x) | generated tokens agree "
            f"{100 * row['tokens']['agreement']:.1f}% (first divergence: "
            f"{row['tokens']['first_divergence']})")
    for v in row["variants"].values():
        v.pop("tokens", None)
    del stock, patched
    if device == "cuda":
        torch.cuda.empty_cache()
    return row


def targets(rows):
    key, batch, limit = TARGET
    name = SPECS[key].name
    label = f"{name} batch {batch} ratio <= {limit}"
    for r in rows:
        if r["model"] == name and r["batch"] == batch and "ratio_patched_over_stock" in r:
            value = r["ratio_patched_over_stock"]
            return [{"target": label, "value": value, "met": value <= limit,
                     "line": f"{label}: {'MET' if value <= limit else 'NOT MET'} ({value:.3f})"}]
    return [{"target": label, "value": None, "met": None, "line": f"{label}: NOT RUN"}]


# ---------------------------------------------------------------------------------------------
# the CPU check
# ---------------------------------------------------------------------------------------------
def cpu_check(args):
    """A tiny Qwen3 on the CPU in float32: the patch is in, generate runs stock and patched
    (eager, then compiled through both routes with the aot_eager backend, fullgraph), the
    tokens come out, the logits agree. No profiler timing."""
    torch.set_num_threads(min(4, torch.get_num_threads()))
    new, prompt, batch = 6, 12, 2
    max_cache_len = prompt + 2 * new
    # weights of std 0.3: at HF's 0.02 a model this small repeats one token, which any two
    # runs agree on
    stock, patched, replaced = stock_and_patched(TINY, TINY.layers, max_cache_len, "cpu",
                                                 torch.float32, args.seed, init_range=0.3)
    print(f"tiny {type(stock).__name__} (H {TINY.hidden}, heads {TINY.heads}/{TINY.kv_heads} x "
          f"{TINY.head_dim}, {TINY.layers} layers, vocab {TINY.vocab}), float32 on the CPU; "
          f"minivllm {minivllm.__version__}, torch {torch.__version__}, transformers "
          f"{transformers.__version__}")
    print(f"patched_layers: {replaced}")
    ids = torch.randint(0, TINY.vocab, (batch, prompt),
                        generator=torch.Generator().manual_seed(args.seed))
    lg = logits_check(stock, patched, ids)
    print(f"first decode step logits: rel diff patched vs stock {lg['decode_rel']:.2e}, max |diff| "
          f"{lg['decode_max_abs']:.2e}, top-1 agreement {100 * lg['decode_top1_agreement']:.0f}%")
    failures = []
    if not lg["decode_rel"] <= 1e-4 or not lg["prefill_last_rel"] <= 1e-4:
        failures.append(f"logits differ in float32: {lg}")
    runs = {}
    for via in ("none", "generate", "forward"):
        torch._dynamo.reset()  # each route compiles from scratch
        for name, model in (("stock", stock), ("patched", patched)):
            label = f"{name}/{'eager' if via == 'none' else 'compiled via ' + via}"
            try:
                m = copy.deepcopy(model)  # each route its own copy (forward is replaced in place)
                runner = Runner(m, via, batch, max_cache_len, "aot_eager", None,
                                all_devices=True)
                t0, before = time.perf_counter(), compile_counters()
                tokens = runner.generate(ids, new)
                again = runner.generate(ids, 2 * new)  # a second call: the compiled code reused
                seconds = time.perf_counter() - t0
                graphs = compile_counters()["unique_graphs"] - before["unique_graphs"]
            except Exception as error:
                failures.append(f"{label}: {type(error).__name__}: {str(error)[:300]}")
                print(f"  {label:30s} FAILED: {failures[-1]}")
                continue
            if via == "generate" and not runner.compiled_by_generate():
                failures.append(f"{label}: generate did not compile")
            if (via == "none") != (graphs == 0):
                failures.append(f"{label}: {graphs} graphs compiled")
            if tuple(tokens.shape) != (batch, new) or tuple(again.shape) != (batch, 2 * new):
                failures.append(f"{label}: tokens of shape {tuple(tokens.shape)}, "
                                f"{tuple(again.shape)}")
            runs[label] = again
            print(f"  {label:30s} tokens {tuple(tokens.shape)} and {tuple(again.shape)}, "
                  f"first row {again[0].tolist()} ({graphs} graphs compiled, {seconds:.1f} s)")
    reference = runs.get("stock/eager")
    for label, tokens in runs.items():
        if reference is not None and label != "stock/eager":
            agree = token_agreement(reference, tokens)
            print(f"  {label:30s} vs stock/eager: tokens agree {100 * agree['agreement']:.0f}%")
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures))
        return 1
    print(f"cpu check: OK (patched_layers {replaced} > 0, tokens produced)")
    return 0


# ---------------------------------------------------------------------------------------------
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(SPECS),
                        help=f"any of {', '.join(SPECS)} (default: all)")
    parser.add_argument("--batch", nargs="+", default=["1"], help="batch sizes (default 1)")
    parser.add_argument("--prompt", type=bt.int_at_least(1), default=128,
                        help="prompt tokens per sequence (default 128)")
    parser.add_argument("--new-tokens", type=bt.int_at_least(2), default=32,
                        help="N: generates of N and 2N new tokens are profiled (default 32)")
    parser.add_argument("--layers", type=bt.int_at_least(1), default=None,
                        help="decoder layers of every model (default: Qwen all 28, Llama-3-8B 8)")
    parser.add_argument("--warmup", type=bt.int_at_least(2), default=2,
                        help="warm-up generates per variant (at least 2; default 2)")
    parser.add_argument("--repeats", type=bt.int_at_least(1), default=3,
                        help="profiled N/2N pairs per variant; median reported (default 3)")
    parser.add_argument("--compile-via", choices=("generate", "forward"), default="generate",
                        help="generate: transformers' auto-compile of the decode steps "
                             "(CompileConfig); forward: model.forward = torch.compile(...) "
                             "with generate's own compile off (default generate)")
    parser.add_argument("--torch-compile-mode", default="reduce-overhead",
                        help="torch.compile mode (default reduce-overhead)")
    parser.add_argument("--dtype", choices=sorted(TORCH_DTYPES), default="bf16")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="directory for the JSON (default benchmarks/results)")
    parser.add_argument("--cpu-check", action="store_true",
                        help="a tiny model on the CPU, float32: patch in, generate runs (no "
                             "timing)")
    args = parser.parse_args(argv)
    models = [m.lower() for m in bt.flat_list(args.models, str)]
    unknown = [m for m in models if m not in SPECS]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)} (known: {', '.join(SPECS)})")
    batches = bt.flat_list(args.batch, int)
    if args.cpu_check:
        bt.raise_compile_limits(64)
        return cpu_check(args)

    bt.require_cuda("bench_hf.py")
    bt.raise_compile_limits(64)
    dtype = TORCH_DTYPES[args.dtype]
    gpu, date, commit = bt.gpu_metadata(), bt.utc_now(), bt.git_commit(REPO_ROOT)
    versions = dict(bt.library_versions(), transformers=transformers.__version__)
    compiled = (f"generate auto-compile: CompileConfig(fullgraph=True, mode="
                f"{args.torch_compile_mode!r}), cache_implementation='static'"
                if args.compile_via == "generate" else
                f"model.forward = torch.compile(model.forward, mode={args.torch_compile_mode!r}, "
                f"fullgraph=True), generation_config.disable_compile=True, a preallocated "
                f"StaticCache passed to generate")
    lines = []

    def log(text):
        print(text, flush=True)
        lines.append(text)

    log(f"{gpu['name']}, driver {gpu['driver']}, torch {torch.__version__}, transformers "
        f"{transformers.__version__}, minivllm {minivllm.__version__}, commit {commit}; "
        f"{args.dtype}; compile: {compiled}")
    started = time.perf_counter()
    rows = []
    for key in models:
        for batch in batches:
            rows.append(run_model(key, batch, args, dtype, log))
    met = targets(rows)
    log("\ntargets:")
    for t in met:
        log(f"  HF compiled: {t['line']}")
    failed = [f"{r['model']} batch {r['batch']} {v}: {why}" for r in rows
              for v, why in r["failures"].items()]
    report = {
        "kind": "bench-hf-compiled", "gpu": gpu, "date": date.isoformat(timespec="seconds"),
        "commit": commit, "versions": versions, "dtype": args.dtype,
        "argv": sys.argv[1:] if argv is None else list(argv),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "method": {
            "compile": compiled, "compile_via": args.compile_via,
            "decode_gpu_us_per_step": "(GPU busy time of a generate of 2N new tokens - that of "
                                      "N) / N; GPU busy time = union of the intervals of all "
                                      "kernels, memcpys and memsets in one torch.profiler "
                                      "session (CPU + CUDA activities) around one generate; "
                                      "median over the repeats",
            "decode_sum_us_per_step": "the same difference of summed kernel durations",
            "prefill_gpu_us_est": "GPU busy time(N) - (N - 1) x decode step",
            "wall_clock": "unprofiled generate, information only",
            "weights": "random (seeded), norms 1 + 0.2 randn, biases 0.1 randn"},
        "results": rows, "targets": met, "failures": failed, "log": lines,
        "total_seconds": time.perf_counter() - started}
    stem = bt.results_stem("hf-compiled", gpu["name"], date)
    bt.write_results(args.out, stem, report)
    if failed:
        print("FAILED:\n  " + "\n  ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
