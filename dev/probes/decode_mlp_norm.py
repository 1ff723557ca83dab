"""Whole decode steps (bench_decode.py's step, one CUDA graph a step, median of replays) with the MLP's
residual add + RMSNorm + gate_up projection in one minivllm call, against bench_decode's variants
(which run that norm as minivllm.fused_add_rms_norm and gate_up as F.linear): does the library's
norm + projection pay off on the MLP as well as in the attention prologue?

The MLP call is the registered QKV op with a residual (torch.ops.minivllm.fused_add_rms_norm_qkv),
gate_up's 2I features read as heads of head_dim D (2I / D - 2 "q" heads, one "k" and one "v"), so
its packed result is gate_up's [B, 2I] row as F.linear returns it.
Variants, alternating in rounds in one process, each step captured once per round:
  compile, compile+mv        bench_decode's
  compile+mv+mlp             compile+mv with the MLP's add + norm + gate_up in the one call
  minivllm, minivllm+mlp     the same two, eager (the minivllm ops under the graph, no compile)
  mlp:PATH                   minivllm+mlp with the MLP call on the QKV op's named GPU path (_path=PATH:
                             bulk, deferred, register, engine, cublaslt, ...; where it cannot take the
                             call, the table's), its gate_up written through out= views of one buffer
Each variant's final hidden state is compared with torch's (relative Frobenius norm).

usage: python3 dev/probes/decode_mlp_norm.py --models llama-3-8b qwen3-0.6b --batch 1 16 64 [--rounds 2]
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import bench_decode as bd  # noqa: E402
import minivllm  # noqa: E402
import minivllm.torch  # noqa: E402,F401  (registers torch.ops.minivllm)
from minivllm.bench.baselines import rel_diff  # noqa: E402

EXTRA = {d.name.lower(): d for d in (
    bd.Decoder("Qwen2.5-7B", 8, 3584, 28, 4, 128, 18944, False, True),
    bd.Decoder("Llama-3.2-1B", 16, 2048, 32, 8, 64, 8192, False, False),
)}


def mlp_heads(cfg):
    """gate_up's 2I features as (q heads, kv heads, head_dim) for the QKV op."""
    n = 2 * cfg.intermediate
    d = cfg.head_dim
    assert n % d == 0 and n // d >= 3, (cfg.name, n, d)
    return n // d - 2, 1


def mlp_call(mq, mkv, path):
    """The MLP's add + norm + gate_up: (gate_up [B, 2I], new residual)."""
    if path is None:
        def call(a, residual, ln2, Wgu):
            packed, residual = torch.ops.minivllm.fused_add_rms_norm_qkv(a, residual, ln2, Wgu, mq,
                                                                         mkv, bd.EPS)
            return packed.flatten(-2), residual
        return call

    def call(a, residual, ln2, Wgu):
        gu = a.new_empty(a.shape[0], Wgu.shape[0])
        d = Wgu.shape[0] // (mq + 2 * mkv)
        out = (gu[:, :mq * d].view(-1, mq, d), gu[:, mq * d:(mq + mkv) * d].view(-1, mkv, d),
               gu[:, (mq + mkv) * d:].view(-1, mkv, d))
        *_, residual = minivllm.FusedRMSNormQKV.forward(a, ln2, Wgu, mq, mkv, bd.EPS,
                                                        residual=residual, out=out, _path=path)
        return gu, residual
    return call


def make_mlp_step(model, ops, compiled, path=None):
    cfg, length = model.cfg, model.context + 1
    nq, nkv = cfg.heads, cfg.kv_heads
    mlp = mlp_call(*mlp_heads(cfg), path)

    def layer(h, residual, ln1, Wqkv, bias, qn, kn, Wo, ln2, Wgu, Wd, kc, vc, kc_paged,
              vc_paged, positions, slots, table):
        q, _, _, *rest = ops.attention_prologue(
            h, ln1, Wqkv, nq, nkv, bd.EPS, residual=residual, qkv_bias=bias, q_norm_weight=qn,
            k_norm_weight=kn, positions=positions, cos_sin_cache=table, k_cache=kc_paged,
            v_cache=vc_paged, slot_mapping=slots)
        residual = rest[0] if residual is not None else h
        a = F.linear(bd.attend(q, kc, vc, length), Wo)
        gu, residual = mlp(a, residual, ln2, Wgu)
        g, u = gu.chunk(2, -1)
        return F.linear(F.silu(g) * u, Wd), residual

    if compiled:
        layer = torch.compile(layer, fullgraph=True, backend=bd.model_backend(model))
    return bd.residual_step(model, layer, ops)


def steps_for(model, variants):
    out = {}
    for v in variants:
        if v in ("compile", "compile+mv", "minivllm", "torch"):
            out[v] = bd.make_step(model, v)
        elif v == "compile+mv+mlp":
            out[v] = make_mlp_step(model, minivllm.torch, True)
        elif v == "minivllm+mlp":
            out[v] = make_mlp_step(model, minivllm, False)
        elif v.startswith("mlp:"):
            out[v] = make_mlp_step(model, minivllm, False, v[4:])
        else:
            raise SystemExit(f"unknown variant {v}")
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["llama-3-8b"])
    p.add_argument("--batch", nargs="+", type=int, default=[1])
    p.add_argument("--variants", nargs="+",
                   default=["torch", "compile", "compile+mv", "compile+mv+mlp", "minivllm", "minivllm+mlp"])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--replays", type=int, default=20)
    p.add_argument("--context", type=int, default=2048)
    args = p.parse_args()
    print(torch.cuda.get_device_name(), minivllm.__file__, flush=True)
    for name in args.models:
        cfg = bd.DECODERS.get(name) or EXTRA[name]
        for batch in args.batch:
            torch._dynamo.reset()  # each model and batch compiles afresh (dynamo's recompile limit)
            t0 = time.time()
            model = bd.Model(cfg, batch, args.context, torch.bfloat16, "cuda")
            times = {v: [] for v in args.variants}
            errors, paths = {}, {}
            with torch.no_grad():
                steps = steps_for(model, args.variants)
                ref = None
                for r in range(args.rounds):
                    for v in args.variants:
                        us, _, out = bd.time_step(steps[v], args.replays)
                        times[v].append(us)
                        if r == 0:
                            if ref is None:
                                ref = out
                            errors[v] = rel_diff(out, ref)
                            if v.startswith("mlp:") or v == "minivllm+mlp":
                                steps[v]()  # eagerly, so that the last QKV call's path is named
                                torch.cuda.synchronize()
                                paths[v] = minivllm._C.qkv_last_gpu_path()
            med = {v: statistics.median(t) for v, t in times.items()}
            line = " | ".join(f"{v} {med[v]:8.1f} ({' '.join(f'{x:.1f}' for x in times[v])})"
                              for v in args.variants)
            print(f"{cfg.name:13} b{batch:<3} {line}", flush=True)
            ratios = []
            for a, b in (("compile", "compile+mv"), ("compile", "compile+mv+mlp"),
                         ("compile+mv", "compile+mv+mlp"), ("minivllm", "minivllm+mlp"),
                         ("torch", "minivllm+mlp")):
                if a in med and b in med:
                    ratios.append(f"{a}/{b} {med[a] / med[b]:.3f}")
            print(f"{'':13}      " + "  ".join(ratios) + f"  errors vs {args.variants[0]}: "
                  + " ".join(f"{v} {e:.4f}" for v, e in errors.items())
                  + f"  paths: {paths}  [{time.time() - t0:.0f} s]", flush=True)
            del model, steps
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
