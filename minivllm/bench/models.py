"""The model table: attention-layer shapes of the models that the benchmarks, the bench CLI, the
tests and the probes (given as H,HEADS,KV_HEADS,HEAD_DIM on their command lines) use.

Every other place takes its shapes from here; the values are those of the models' configs.
"""

from collections import namedtuple

Model = namedtuple("Model", "name hidden num_heads num_kv_heads head_dim")

# Keyed by lower-case name; the order is the benchmarks' default order.
MODELS = {m.name.lower(): m for m in (
    Model("Qwen3-0.6B", 1024, 16, 8, 128),
    Model("Llama-3-8B", 4096, 32, 8, 128),
    Model("Qwen2.5-0.5B", 896, 14, 2, 64),
    Model("Qwen3-4B", 2560, 32, 8, 128),
    # the GEMM engine's zoo (benchmarks/bench_fused_rms_norm_qkv.py --models zoo): H 896-8192,
    # head_dim 64-256, MHA, GQA and MQA, N that do not divide evenly over 132 SMs
    Model("Llama-3.2-1B", 2048, 32, 8, 64),
    Model("Qwen2.5-1.5B", 1536, 12, 2, 128),
    Model("Gemma-3-1B", 1152, 4, 1, 256),
    Model("Gemma-2-2B", 2304, 8, 4, 256),
    Model("Phi-3-mini", 3072, 32, 32, 96),
    Model("Qwen2.5-7B", 3584, 28, 4, 128),
    Model("Falcon-7B", 4544, 71, 1, 64),
    Model("Llama-2-7B", 4096, 32, 32, 128),
    Model("Llama-3-70B", 8192, 64, 8, 128),
)}

# Not a model: small enough that a CPU kernel costs little next to the call, for profiling the
# host path on a machine without a GPU (benchmarks/host_cost.py --models tiny).
TINY = Model("tiny", 64, 2, 1, 16)


def qkv_features(model):
    """N, the output features of the fused QKV projection: (heads + 2 kv heads) * head_dim."""
    return (model.num_heads + 2 * model.num_kv_heads) * model.head_dim


def find_model(name, extra=()):
    """The preset named `name` (case-insensitive), or one of `extra`; ValueError listing the
    presets otherwise."""
    known = dict(MODELS, **{m.name.lower(): m for m in extra})
    try:
        return known[name.lower()]
    except KeyError:
        raise ValueError(f"unknown model {name!r} (presets: {', '.join(known)})") from None


def parse_qkv_shape(text):
    """'2048,16,4,128' (H, heads, kv heads, head_dim) -> a Model named after it; ValueError
    otherwise."""
    try:
        hidden, heads, kv_heads, head_dim = (int(v) for v in text.replace(":", ",").split(","))
    except ValueError:
        raise ValueError(f"expected H,HEADS,KV_HEADS,HEAD_DIM (e.g. 2048,16,4,128), "
                         f"got {text!r}") from None
    if min(hidden, heads, kv_heads, head_dim) < 1:
        raise ValueError(f"every number must be positive, got {text!r}")
    return Model(f"H{hidden}-{heads}/{kv_heads}x{head_dim}", hidden, heads, kv_heads, head_dim)


def shape_arg(model):
    """The H,HEADS,KV_HEADS,HEAD_DIM text of a model (what parse_qkv_shape and the probes take)."""
    return f"{model.hidden},{model.num_heads},{model.num_kv_heads},{model.head_dim}"
