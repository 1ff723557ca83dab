#!/usr/bin/env python3
"""One decode step of a whole decoder stack, with and without minivllm, on one GPU.

A Llama / Qwen-style decoder with random weights (each layer its own): per layer the attention
prologue (RMSNorm, merged QKV (+ Qwen2's bias), Qwen3's per-head q/k RMSNorm, RoPE, the write of
the new k and v into a static KV cache [batch, kv_heads, max_len, head_dim] as Hugging Face keeps
it), attention over the cache through torch's SDPA (flash or memory-efficient kernels), o_proj,
the residual add and post-attention RMSNorm, the SiLU-gated MLP, the residual add; a final
RMSNorm. One new token per sequence; every sequence has `--context` positions in its cache. The
whole step is captured in one CUDA graph and replayed; µs per step is the median replay (the
process's first graph, which ran faster than any later one, is timed once first and not counted).

Variants (the same weights, caches and inputs):
  torch           plain PyTorch (F.rms_norm, F.linear, RoPE in the dtype, index_copy_ into the
                  cache, SDPA)
  minivllm        minivllm.attention_prologue (residual add + the whole prologue + the cache
                  write, one call) and minivllm.fused_add_rms_norm for the post-attention and
                  final norms; the rest as torch
  compile         torch.compile(fullgraph=True) of torch's layer (default mode; the graph
                  captured around it)
  compile+mv      torch.compile(fullgraph=True) of the minivllm layer through minivllm.torch's
                  custom ops
Errors: each variant's final hidden state against torch's, and against a float32 run of the
torch variant (the first sequences), as relative Frobenius norms.

usage: python3 benchmarks/bench_decode.py [--models qwen3-0.6b llama-3-8b qwen2.5-1.5b] (the default;
           also qwen2.5-0.5b)
           [--batch 1 16 64] [--context 2048] [--dtype bf16] [--out DIR]
       python3 benchmarks/bench_decode.py --cpu-check     # the variants agree (CPU, no timing)
Writes DIR/decode-<gpu>-<date>.json and .png (DIR: benchmarks/results).
"""

import argparse
import math
import statistics
import sys
import time
from collections import namedtuple
from pathlib import Path

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    sys.exit("bench_decode.py needs PyTorch")

import minivllm
import minivllm.torch as mvt
from minivllm.bench import timing as bt
from minivllm.bench.baselines import rel_diff, rope_neox

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = Path(__file__).resolve().parent / "results"
EPS = 1e-6
VARIANTS = ("torch", "minivllm", "compile", "compile+mv")

Decoder = namedtuple("Decoder", "name layers hidden heads kv_heads head_dim intermediate "
                                "qk_norm bias")
# The configs' shapes; layer counts: the model's (Qwen), or 8 of Llama-3-8B's 32 (memory, time).
DECODERS = {d.name.lower(): d for d in (
    Decoder("Qwen3-0.6B", 28, 1024, 16, 8, 128, 3072, True, False),
    Decoder("Llama-3-8B", 8, 4096, 32, 8, 128, 14336, False, False),
    Decoder("Qwen2.5-1.5B", 28, 1536, 12, 2, 128, 8960, False, True),
    Decoder("Qwen2.5-0.5B", 24, 896, 14, 2, 64, 4864, False, True),
    Decoder("Qwen3-4B", 36, 2560, 32, 8, 128, 9728, True, False),
)}
# The benchmark's default models (the two and one more); on request Qwen2.5-0.5B (H <= 1024
# with a bias and no q/k norm: the register stream's prologue without clusters) and Qwen3-4B (a mid
# H, 2560, whose batches of 4-8 rows take the deferred stream with a residual on an H100).
DEFAULT_DECODERS = ("qwen3-0.6b", "llama-3-8b", "qwen2.5-1.5b")
TINY = Decoder("tiny", 2, 256, 4, 2, 64, 512, True, True)


class Model:
    """Weights and caches of one decoder, and the per-step index tensors."""

    def __init__(self, cfg, batch, context, dtype, device, seed=0):
        gen = torch.Generator(device="cpu").manual_seed(seed)
        H, D, nq, nkv, inter = cfg.hidden, cfg.head_dim, cfg.heads, cfg.kv_heads, cfg.intermediate
        N = (nq + 2 * nkv) * D

        def rand(*shape, scale=1.0, shift=0.0):
            return (torch.randn(*shape, generator=gen) * scale + shift).to(device=device,
                                                                             dtype=dtype)
        self.cfg, self.batch, self.context = cfg, batch, context
        self.layers = []
        for _ in range(cfg.layers):
            self.layers.append(dict(
                ln1=rand(H, scale=0.1, shift=1.0), Wqkv=rand(N, H, scale=H ** -0.5),
                bias=rand(N, scale=0.1) if cfg.bias else None,
                qn=rand(D, scale=0.1, shift=1.0) if cfg.qk_norm else None,
                kn=rand(D, scale=0.1, shift=1.0) if cfg.qk_norm else None,
                Wo=rand(H, nq * D, scale=(nq * D) ** -0.5), ln2=rand(H, scale=0.1, shift=1.0),
                Wgu=rand(2 * inter, H, scale=H ** -0.5), Wd=rand(H, inter, scale=inter ** -0.5),
                kc=rand(batch, nkv, context + 1, D), vc=rand(batch, nkv, context + 1, D)))
        self.lnf = rand(H, scale=0.1, shift=1.0)
        self.h = rand(batch, H)
        inv = 1e6 ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
        angles = torch.arange(context + 1, dtype=torch.float64)[:, None] * inv[None, :]
        self.table = torch.cat((angles.cos(), angles.sin()), -1).to(device=device, dtype=dtype)
        # every sequence writes its new token at position `context` and attends to context + 1
        self.positions = torch.full((batch,), context, device=device, dtype=torch.int64)
        self.cache_position = torch.tensor([context], device=device)
        self.slots = torch.arange(batch, device=device) * (context + 1) + context
        for w in self.layers:  # the prologue's view of the caches: [batch, max_len, kv, D]
            w["kc_paged"], w["vc_paged"] = w["kc"].permute(0, 2, 1, 3), w["vc"].permute(0, 2, 1, 3)

    def float32_copy(self, sequences):
        """The same model in float32 for the first `sequences` sequences (error reference)."""
        other = object.__new__(Model)
        other.__dict__.update(self.__dict__)
        other.batch = sequences
        other.layers = [{k: (None if v is None else
                             (v[:sequences] if k in ("kc", "vc", "kc_paged", "vc_paged") else v)
                             .float()) for k, v in w.items()} for w in self.layers]
        other.lnf, other.h = self.lnf.float(), self.h[:sequences].float()
        other.table = self.table.float()
        other.positions = self.positions[:sequences]
        other.slots = self.slots[:sequences]
        return other


def attend(q, kc, vc, length):
    """SDPA of q [B, heads, D] over the first `length` cache positions (GQA by enable_gqa)."""
    out = F.scaled_dot_product_attention(q.unsqueeze(2), kc[:, :, :length], vc[:, :, :length],
                                         enable_gqa=True)
    return out.reshape(q.shape[0], -1)


def mlp(x, Wgu, Wd):
    g, u = F.linear(x, Wgu).chunk(2, -1)
    return F.linear(F.silu(g) * u, Wd)


def make_torch_layer(cfg, length):
    nq, nkv, D, H = cfg.heads, cfg.kv_heads, cfg.head_dim, cfg.hidden

    def layer(h, ln1, Wqkv, bias, qn, kn, Wo, ln2, Wgu, Wd, kc, vc, positions, cache_position,
              table):
        B = h.shape[0]
        qkv = F.linear(F.rms_norm(h, (H,), ln1, EPS), Wqkv, bias)
        q, k, v = qkv.view(B, nq + 2 * nkv, D).split([nq, nkv, nkv], 1)
        if qn is not None:
            q, k = F.rms_norm(q, (D,), qn, EPS), F.rms_norm(k, (D,), kn, EPS)
        cos, sin = table[positions].unsqueeze(1).chunk(2, -1)
        q, k = rope_neox(q, cos, sin), rope_neox(k, cos, sin)
        kc.index_copy_(2, cache_position, k.unsqueeze(2))
        vc.index_copy_(2, cache_position, v.unsqueeze(2))
        h = h + F.linear(attend(q, kc, vc, length), Wo)
        return h + mlp(F.rms_norm(h, (H,), ln2, EPS), Wgu, Wd)
    return layer


def make_minivllm_layer(cfg, length, ops):
    """ops: minivllm itself (eager) or minivllm.torch (custom ops, for torch.compile)."""
    nq, nkv = cfg.heads, cfg.kv_heads

    def layer(h, residual, ln1, Wqkv, bias, qn, kn, Wo, ln2, Wgu, Wd, kc, vc, kc_paged,
              vc_paged, positions, slots, table):
        q, _, _, *rest = ops.attention_prologue(
            h, ln1, Wqkv, nq, nkv, EPS, residual=residual, qkv_bias=bias, q_norm_weight=qn,
            k_norm_weight=kn, positions=positions, cos_sin_cache=table, k_cache=kc_paged,
            v_cache=vc_paged, slot_mapping=slots)
        residual = rest[0] if residual is not None else h
        x, residual = ops.fused_add_rms_norm(F.linear(attend(q, kc, vc, length), Wo), residual,
                                             ln2, EPS)
        return mlp(x, Wgu, Wd), residual
    return layer


def make_step(model, variant, ops=None):
    """A function running one decode step of `model`; returns the final hidden state. ops, for the
    minivllm variants: the module whose attention_prologue and fused_add_rms_norm they call
    (default minivllm for "minivllm", minivllm.torch for "compile+mv"; a probe may pass others)."""
    cfg, length = model.cfg, model.context + 1
    if variant in ("torch", "compile"):
        layer = make_torch_layer(cfg, length)
        if variant == "compile":
            layer = torch.compile(layer, fullgraph=True, backend=model_backend(model))

        def step():
            h = model.h
            for w in model.layers:
                h = layer(h, w["ln1"], w["Wqkv"], w["bias"], w["qn"], w["kn"], w["Wo"], w["ln2"],
                          w["Wgu"], w["Wd"], w["kc"], w["vc"], model.positions,
                          model.cache_position, model.table)
            return F.rms_norm(h, (cfg.hidden,), model.lnf, EPS)
        return step
    if ops is None:
        ops = minivllm if variant == "minivllm" else mvt
    layer = make_minivllm_layer(cfg, length, ops)
    if variant == "compile+mv":
        layer = torch.compile(layer, fullgraph=True, backend=model_backend(model))
    return residual_step(model, layer, ops)


def residual_step(model, layer, ops):
    """A step of `layer` (make_minivllm_layer's signature: the residual carried between layers),
    then the final fused_add_rms_norm of `ops`."""
    def step():
        h, residual = model.h, None
        for w in model.layers:
            h, residual = layer(h, residual, w["ln1"], w["Wqkv"], w["bias"], w["qn"], w["kn"],
                                w["Wo"], w["ln2"], w["Wgu"], w["Wd"], w["kc"], w["vc"],
                                w["kc_paged"], w["vc_paged"], model.positions, model.slots,
                                model.table)
        return ops.fused_add_rms_norm(h, residual, model.lnf, EPS)[0]
    return step


def model_backend(model):
    return "inductor" if model.h.is_cuda else "aot_eager"


# A process's first captured step graph ran 30-40 us a step faster than every later one, on any
# path (H200, Llama-3-8B batch 2: dev/logs/residual-bound-nvidia-h200-2026-11-26.log, call 11), so
# the first step timed would gain it; one graph is timed first and not counted.
_warmed_up = False


def time_step(step, replays):
    """µs per step: one CUDA graph of the whole step (warmed up and captured by timing.capture),
    median of `replays` replays (the process's first call times one graph more, not counted)."""
    global _warmed_up
    if not _warmed_up:
        _warmed_up = True
        time_step(step, 3)
    graph, results = bt.capture(lambda i: step(), 1)
    times = bt.replay_times_us(graph, replays)
    result = results[-1].clone()
    del graph, results
    return statistics.median(times), min(times), result


def run_model(cfg, batch, args, dtype, device):
    model = Model(cfg, batch, args.context, dtype, device)
    sequences = min(batch, 2)
    with torch.no_grad():
        ref_model = model.float32_copy(sequences)
        reference = make_step(ref_model, "torch")()
        del ref_model
    row = {"model": cfg.name, "layers": cfg.layers, "batch": batch, "context": args.context,
           "variants": {}, "failures": {}}
    outputs = {}
    for variant in VARIANTS:
        if variant not in args.variants:
            continue
        try:
            with torch.no_grad():
                step = make_step(model, variant)
                if device == "cuda":
                    us, us_min, out = time_step(step, args.replays)
                else:
                    us = us_min = float("nan")
                    out = step()
        except Exception as error:  # recorded; the other variants go on
            row["failures"][variant] = f"{type(error).__name__}: {str(error)[:300]}"
            continue
        outputs[variant] = out
        row["variants"][variant] = {
            "us": us, "us_min": us_min,
            "error_vs_float32": rel_diff(out[:sequences], reference),
            "error_vs_torch": rel_diff(out, outputs["torch"]) if "torch" in outputs else None}
    v = row["variants"]
    row["speedup"] = {}
    if "torch" in v and "minivllm" in v:
        row["speedup"]["minivllm_vs_torch"] = v["torch"]["us"] / v["minivllm"]["us"]
    if "compile" in v and "compile+mv" in v:
        row["speedup"]["compile+mv_vs_compile"] = v["compile"]["us"] / v["compile+mv"]["us"]
    if "torch" in v and "compile+mv" in v:
        row["speedup"]["compile+mv_vs_torch"] = v["torch"]["us"] / v["compile+mv"]["us"]
    if "compile" in v and "minivllm" in v:
        row["speedup"]["minivllm_vs_compile"] = v["compile"]["us"] / v["minivllm"]["us"]
    del model
    return row


def targets(rows):
    out = []
    want = {("qwen3-0.6b", "minivllm_vs_torch"): 1.5, ("qwen3-0.6b", "compile+mv_vs_compile"): 1.15,
            ("llama-3-8b", "minivllm_vs_torch"): 1.10, ("llama-3-8b", "compile+mv_vs_compile"): 1.05}
    for r in rows:
        for key, value in r["speedup"].items():
            name = r["model"].lower()
            if r["batch"] == 1 and (name, key) in want:
                out.append({"model": r["model"], "batch": 1, "target": f"{key} >= "
                            f"{want[(name, key)]}", "value": value,
                            "met": value >= want[(name, key)]})
            if key == "compile+mv_vs_compile":
                out.append({"model": r["model"], "batch": r["batch"],
                            "target": "compile+mv not slower than compile (>= 1.0)",
                            "value": value, "met": value >= 1.0})
    return out


def write_plot(rows, path, title):
    plt = bt.load_pyplot()
    if plt is None:
        return None
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4), squeeze=False)
    for ax, name in zip(axes[0], models):
        rs = [r for r in rows if r["model"] == name]
        width = 0.8 / len(VARIANTS)
        for i, variant in enumerate(VARIANTS):
            xs = [j + i * width for j, r in enumerate(rs) if variant in r["variants"]]
            ys = [r["variants"][variant]["us"] for r in rs if variant in r["variants"]]
            ax.bar(xs, ys, width, label=variant)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(rs))])
        ax.set_xticklabels([f"batch {r['batch']}" for r in rs])
        ax.set_ylabel("µs per decode step")
        ax.set_title(f"{name} ({rs[0]['layers']} layers)")
    axes[0][0].legend(fontsize=8)
    return bt.save_figure(plt, fig, path, title)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_DECODERS))
    parser.add_argument("--batch", nargs="+", default=["1", "16", "64"])
    parser.add_argument("--context", type=int, default=2048)
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp16"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--replays", type=int, default=20)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--cpu-check", action="store_true",
                        help="a tiny decoder on the CPU: the variants agree (no timing)")
    args = parser.parse_args(argv)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    if args.cpu_check:
        args.context = min(args.context, 16)
        bt.raise_compile_limits(64)
        r = run_model(TINY, 3, args, dtype, "cpu")
        print(r)
        bad = [v for v, t in r["variants"].items() if not t["error_vs_float32"] < 2e-2]
        return 1 if bad or r["failures"] else 0
    bt.require_cuda("bench_decode.py")
    bt.raise_compile_limits(64)
    gpu, date, commit = bt.gpu_metadata(), bt.utc_now(), bt.git_commit(REPO_ROOT)
    print(f"{gpu['name']}, driver {gpu['driver']}, torch {torch.__version__}, commit {commit}; "
          f"{args.dtype}, context {args.context}", flush=True)
    started = time.perf_counter()
    rows = []
    for name in bt.flat_list(args.models, str):
        cfg = DECODERS[name.lower()]
        for batch in bt.flat_list(args.batch, int):
            t0 = time.perf_counter()
            torch._dynamo.reset()
            r = run_model(cfg, batch, args, dtype, "cuda")
            torch.cuda.empty_cache()
            rows.append(r)
            print(f"{cfg.name} ({cfg.layers} layers) batch {batch}: " + ", ".join(
                f"{v} {t['us']:.1f} µs (err {t['error_vs_float32']:.2e} vs fp32)"
                for v, t in r["variants"].items()) + " | " + ", ".join(
                f"{k} {s:.3f}x" for k, s in r["speedup"].items())
                + (f" | FAILED {r['failures']}" if r["failures"] else "")
                + f" | {time.perf_counter() - t0:.0f} s", flush=True)
    met = targets(rows)
    print("\nmodel-level targets:")
    for t in met:
        print(f"  {t['model']:13s} batch {t['batch']:<3d} {t['target']:45s} {t['value']:6.3f}  "
              f"{'MET' if t['met'] else 'NOT MET'}")
    report = {"kind": "bench-decode", "gpu": gpu, "date": date.isoformat(timespec="seconds"),
              "commit": commit, "versions": bt.library_versions(), "dtype": args.dtype,
              "argv": sys.argv[1:] if argv is None else list(argv),
              "method": {"timing": "one CUDA graph per decode step, median of replays (the process's first "
                                    "graph timed once before and not counted)",
                         "replays": args.replays, "context": args.context,
                         "decoders": {k: d._asdict() for k, d in DECODERS.items()}},
              "results": rows, "targets": met, "total_seconds": time.perf_counter() - started}
    stem = bt.results_stem("decode", gpu["name"], date)
    bt.write_results(args.out, stem, report, None if args.no_plot else lambda p: write_plot(
        rows, p, f"decode step on {gpu['name']} ({date:%Y-%m-%d}, {commit[:12]}), {args.dtype}, "
                 f"context {args.context}"))
    return 1 if any(r["failures"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
