"""minivllm's kernels in the chains a model runs, graph-timed (bench_fused_rms_norm_qkv's timer): each call of a
chain runs its kernels back to back on its own buffers, e.g. "mm+qkv" = a torch GEMM shaped like
o_proj / down_proj ([M, H] x [H, H]) then FusedRMSNormQKV.forward. bench_fused_rms_norm_qkv times a call after a
call of its own; with programmatic dependent launch (PDL) a kernel's time depends on the kernel
before it, so this probe times the chains a model meets too. Inputs are independent random
tensors (no call reads another's output), so the chains measure launch and overlap, not data
flow. bf16. Compare variants by running it under different environments, e.g. MINIVLLM_PDL=0.

--paths P ... times each forced QKV path (_path=P; "auto" for the table's choice) and cuBLAS
("lin": F.linear on a pre-normalized x) alone in a chain of its own, after "sep" (a fill of a small
buffer: a kernel that never lets its successor start early, so nothing of the call overlaps what
came before) and after "mm"; a call's cost in a model is about chain(sep+X) - chain(sep). --residual: the forced calls take a
residual; --sep-only: no "mm" chains. Shapes: a preset's name or H,HEADS,KV_HEADS,HEAD_DIM.

    python3 dev/probes/qkv_chains.py llama-3-8b:1 llama-3-8b:16 qwen3-0.6b:16
    python3 dev/probes/qkv_chains.py --paths auto engine deferred -- llama-3-8b:16 qwen3-4b:32
"""
import argparse
import math

import torch
import torch.nn.functional as F

import minivllm
from minivllm.bench import timing as bt
from minivllm import _C
from minivllm.bench.models import find_model, parse_qkv_shape, qkv_features

EPS = 1e-6


def shape(text):
    name, rows = text.rsplit(":", 1)
    return (parse_qkv_shape(name) if "," in name else find_model(name)), int(rows)


def layer_tensors(m, rows):
    """A chain's tensors for shape m at `rows` rows, each layer its own (enough layers for the
    working set to outgrow L2): (layers, xs, residuals, GEMM inputs, gammas, QKV weights [N, H],
    GEMM weights [H, H]), bf16."""
    hidden, features = m.hidden, qkv_features(m)
    l2_bytes = torch.cuda.get_device_properties(0).L2_cache_size
    layers = max(4, bt.qkv_calls_per_graph(rows, hidden, features + hidden, 2, l2_bytes))

    def rand(*size):
        return torch.randn(*size, device="cuda", dtype=torch.bfloat16)

    def weights(n):
        return [(torch.randn(n, hidden, device="cuda") / math.sqrt(hidden)).to(torch.bfloat16)
                for _ in range(layers)]

    xs, residuals, gemm_inputs = ([rand(rows, hidden) for _ in range(layers)] for _ in range(3))
    gammas = [torch.ones(hidden, device="cuda", dtype=torch.bfloat16) for _ in range(layers)]
    return layers, xs, residuals, gemm_inputs, gammas, weights(features), weights(hidden)


def forced_call(m, path, xs, gammas, qkv_weights, residuals=None):
    """call(i): FusedRMSNormQKV.forward on layer i, on `path` ("auto": the table's choice), with
    layer i's residual where residuals are given."""
    def run(i):
        kwargs = {} if path == "auto" else {"_path": path}
        if residuals is not None:
            kwargs["residual"] = residuals[i]
        return minivllm.FusedRMSNormQKV.forward(xs[i], gammas[i], qkv_weights[i].t(), m.num_heads,
                                                m.num_kv_heads, EPS, **kwargs)
    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("shapes", nargs="+", type=shape, help="MODEL:M, e.g. llama-3-8b:16")
    parser.add_argument("--paths", nargs="+", default=None, help="QKV paths to time after sep and mm")
    parser.add_argument("--residual", action="store_true", help="the forced paths' calls take a residual")
    parser.add_argument("--sep-only", action="store_true", help="with --paths: each path alone and after sep only")
    args = parser.parse_args()
    for m, rows in args.shapes:
        layers, xs, residuals, gemm_inputs, gammas, qkv_weights, gemm_weights = layer_tensors(m, rows)

        def mm(i):
            return F.linear(gemm_inputs[i], gemm_weights[i])

        def norm(i):
            return minivllm.rms_norm(xs[i], gammas[i], EPS)

        def add_norm(i):
            return minivllm.fused_add_rms_norm(xs[i], residuals[i], gammas[i], EPS)

        def qkv(i):
            return minivllm.FusedRMSNormQKV.forward(xs[i], gammas[i], qkv_weights[i].t(), m.num_heads,
                                                    m.num_kv_heads, EPS)

        chains = {"mm": [mm], "norm": [norm], "qkv": [qkv], "mm+norm": [mm, norm],
                  "mm+addnorm": [mm, add_norm], "mm+qkv": [mm, qkv], "norm+qkv": [norm, qkv],
                  "mm+addnorm+qkv": [mm, add_norm, qkv]}
        if args.paths:
            fills = [torch.empty(1024, device="cuda") for _ in range(layers)]

            def sep(i):
                return fills[i].fill_(1.0)

            def lin(i):
                return F.linear(xs[i], qkv_weights[i])

            def forced(path):
                return forced_call(m, path, xs, gammas, qkv_weights, residuals if args.residual else None)
            chains = {"sep": [sep]} if args.sep_only else {"sep": [sep], "mm": [mm]}
            for name, op in [("lin", lin)] + [(f"qkv:{p}", forced(p)) for p in args.paths]:
                chains.update({name: [op], f"sep+{name}": [sep, op]})
                if not args.sep_only:
                    chains[f"mm+{name}"] = [mm, op]
            forced("auto")(0)
            auto_path = _C.qkv_last_gpu_path()
        cells = []
        for name, steps in chains.items():
            def call(i, steps=steps):
                return [step(i) for step in steps]

            cells.append(f"{name} {bt.time_per_call(call, layers, 15)['us']:.2f}")
        took = f" (auto: {auto_path})" if args.paths else ""
        print(f"{m.name} M={rows}{took}: " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
