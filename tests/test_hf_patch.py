"""minivllm.hf: patched Hugging Face Llama / Mistral / Mixtral / Qwen2 / Qwen2-MoE / Qwen3 /
Qwen3-MoE / Granite / Phi-3 (partial RoPE) / SmolLM3 (NoPE layers) models give the stock logits,
with the dynamic cache (k, v through its update()) and the static cache (written by the op, or
through update() for sliding-window layers); patched
Gemma / Gemma2 / Gemma3 (text) models, whose norms become minivllm's (1 + weight) rms_norm, too.

Models are built from small configs with random weights (no downloads). Skips, saying so, where
PyTorch or transformers is not installed, or transformers has no such model; CUDA cases skip
where no GPU is usable. On the CPU the model runs in float32 and must match the stock model to
float32 rounding; on CUDA it runs in bfloat16 and must be as close to a float32 run of the stock
model as the stock bfloat16 run is. Gemma models run in float32 and in bfloat16 (with bfloat16 or
float32 norm weights) on either device.
"""
import copy

import pytest

import minivllm

torch = pytest.importorskip("torch", reason="PyTorch is not installed")
transformers = pytest.importorskip("transformers", reason="transformers is not installed")
import minivllm.hf as mhf  # noqa: E402  (needs torch)
from minivllm.bench.baselines import randomize_norms_and_biases  # noqa: E402  (needs torch)

ARCHS = ("llama", "qwen2", "qwen3", "mistral", "mixtral", "qwen2_moe", "qwen3_moe", "granite",
         "phi3", "smollm3")
GEMMA_ARCHS = ("gemma", "gemma2", "gemma3")
CONFIGS = {"llama": "LlamaConfig", "qwen2": "Qwen2Config", "qwen3": "Qwen3Config",
           "mistral": "MistralConfig", "mixtral": "MixtralConfig", "qwen2_moe": "Qwen2MoeConfig",
           "qwen3_moe": "Qwen3MoeConfig", "granite": "GraniteConfig", "phi3": "Phi3Config",
           "smollm3": "SmolLM3Config",
           "gemma": "GemmaConfig", "gemma2": "Gemma2Config", "gemma3": "Gemma3TextConfig"}
# what each family's small config needs beyond the shared sizes: a sliding window that the
# 19-token prompt exceeds where the family passes one to its attention; few experts, every one
# taken by every token (a top-k choice of fewer is discrete: in bfloat16 a rounding difference
# may route a token to another expert, and its logits then differ by far more than rounding);
# Qwen2's biases on, Granite's multipliers off one, Phi-3 rotating 3/4 of each head, a NoPE
# layer in SmolLM3 (its layer 1)
ARCH_EXTRA = {
    "mistral": {"sliding_window": 8},
    "mixtral": {"sliding_window": 8, "num_local_experts": 4, "num_experts_per_tok": 4},
    "qwen2_moe": {"num_experts": 4, "num_experts_per_tok": 4, "moe_intermediate_size": 128,
                  "shared_expert_intermediate_size": 256, "qkv_bias": True},
    "qwen3_moe": {"num_experts": 4, "num_experts_per_tok": 4, "moe_intermediate_size": 128},
    "granite": {"attention_multiplier": 0.1, "residual_multiplier": 0.5,
                "embedding_multiplier": 2.0, "logits_scaling": 4.0},
    "phi3": {"partial_rotary_factor": 0.75, "pad_token_id": 0, "bos_token_id": 1,
             "eos_token_id": 2},
    "smollm3": {"no_rope_layers": [1, 0], "pad_token_id": 0, "bos_token_id": 1,
                "eos_token_id": 2},
}
NO_CUDA = "no CUDA device (minivllm.cuda_available() is False)"


def _device(name):
    if name == "cuda" and not (minivllm.cuda_available() and torch.cuda.is_available()):
        pytest.skip(NO_CUDA)
    return torch.device(name)


def _model(arch, device, dtype, seed, layers=2):
    """A small random model of `arch`; norms and biases randomized too (HF initializes norms to
    ones, Gemma's to zeros, and biases to zeros, which would hide a dropped weight or bias)."""
    config_class = getattr(transformers, CONFIGS[arch], None)
    if config_class is None:
        pytest.skip(f"transformers {transformers.__version__} has no {CONFIGS[arch]}")
    extra = dict(ARCH_EXTRA.get(arch, {}))
    if arch in ("gemma2", "gemma3"):  # a sliding-window layer and a global one
        extra = {"sliding_window": 8,
                 "layer_types": ["sliding_attention", "full_attention"] * (layers // 2)
                 + ["sliding_attention"] * (layers % 2)}
    config = config_class(hidden_size=256, intermediate_size=512, num_hidden_layers=layers,
                          num_attention_heads=8, num_key_value_heads=2, head_dim=32,
                          vocab_size=1000, max_position_embeddings=512, rms_norm_eps=1e-5,
                          tie_word_embeddings=False, **extra)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    randomize_norms_and_biases(model, norm_std=0.3, bias_std=0.2)
    return model.to(device=device, dtype=dtype), config


def _float32_norms(model):
    """Norm weights in float32 beside 16-bit activations, as Gemma checkpoints keep them."""
    for name, p in model.named_parameters():
        if "norm" in name:
            p.data = p.data.float()
    return model


def _logits(model, config, ids, decode_steps, static=False):
    """Prefill logits [B, T, V], then `decode_steps` greedy steps through the KV cache
    (the decode inputs are [B, 1]): returns (prefill logits, stacked decode logits). static: a
    transformers StaticCache of T + decode_steps + 3 positions instead of the dynamic cache."""
    kwargs = {}
    if static:
        kwargs["past_key_values"] = transformers.StaticCache(
            config=config, max_cache_len=ids.shape[1] + decode_steps + 3)
    with torch.inference_mode():
        out = model(ids, use_cache=True, **kwargs)
        prefill = out.logits.float()
        steps = []
        token = ids[:, -1:] * 0 + 7  # a fixed token: both runs decode the same inputs
        for _ in range(decode_steps):
            out = model(token, past_key_values=out.past_key_values, use_cache=True)
            steps.append(out.logits[:, -1].float())
            token = (token * 31 + 11) % config.vocab_size
    return prefill, torch.stack(steps)


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def _assert_logits_match(patched, stock, reference, seed):
    """(prefill, decode) logits of the patched model against the stock model's: in float32 only
    rounding differs; in bfloat16 (reference: the stock model's float32 logits) the patched run
    must be about as close to float32 as the stock bfloat16 run is."""
    for what, got, want, ref in zip(("prefill", "decode"), patched, stock,
                                    reference or (None, None)):
        assert torch.isfinite(got).all(), f"{what}: non-finite logits (seed {seed})"
        if ref is None:  # float32: only rounding differs
            assert _rel(got, want) <= 2e-5, f"{what}: rel {_rel(got, want):.3g} (seed {seed})"
        else:
            stock_err, patched_err = _rel(want, ref), _rel(got, ref)
            assert patched_err <= 1.5 * stock_err + 1e-3, (
                f"{what}: patched bf16 is {patched_err:.3g} from float32, stock bf16 "
                f"{stock_err:.3g} (seed {seed})")
            assert _rel(got, want) <= 5e-2, f"{what}: rel {_rel(got, want):.3g} (seed {seed})"


@pytest.mark.parametrize("static", [False, True], ids=["dynamic-cache", "static-cache"])
@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("arch", ARCHS)
def test_patched_model_matches_stock(arch, device, static, monkeypatch):
    dev = _device(device)
    dtype = torch.float32 if dev.type == "cpu" else torch.bfloat16
    seed = int(torch.randint(0, 2**31 - 1, ()).item())
    model, config = _model(arch, dev, dtype, seed)
    ids = torch.randint(0, config.vocab_size, (2, 19), device=dev)
    stock = _logits(model, config, ids, 3, static)
    reference = None
    if dtype != torch.float32:
        reference = _logits(copy.deepcopy(model).float(), config, ids, 3, static)

    assert mhf.patch_model(model) == config.num_hidden_layers
    calls = []
    real = minivllm._C.attention_prologue  # what the registered op's implementation calls

    def counted(*args):
        calls.append((args[0].shape, args[14] is not None))  # hidden_states, k_cache
        return real(*args)

    monkeypatch.setattr(minivllm._C, "attention_prologue", counted)
    patched = _logits(model, config, ids, 3, static)
    # one prologue call per layer per forward (prefill + 3 decode steps): the patch is in use
    assert len(calls) == 4 * config.num_hidden_layers, len(calls)
    assert calls[0][0] == (2, 19, config.hidden_size)
    assert calls[-1][0] == (2, 1, config.hidden_size)
    # the static cache is written by the op once it exists (after the prefill's first update);
    # sliding-window layers of a static cache (Mistral's, Mixtral's) are rings that the op does
    # not write: they take the cache's update()
    plain = static and mhf._STATIC_LAYER is not None and all(
        type(layer) is mhf._STATIC_LAYER for layer in getattr(
            transformers.StaticCache(config=config, max_cache_len=ids.shape[1] + 6), "layers", ()))
    assert calls[-1][1] == plain and not calls[0][1]
    _assert_logits_match(patched, stock, reference, seed)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("arch", ["qwen3", "gemma3"])
def test_patched_model_compiles_fullgraph(arch, device):
    """torch.compile(fullgraph=True) of a patched Qwen3 (per-head q/k norms on the views) and of
    a patched Gemma3 in bfloat16 with float32 norm weights (its q/k norms on [batch, heads, seq,
    head_dim] views): no graph break, the eager logits."""
    dev = _device(device)
    import torch._dynamo
    torch._dynamo.reset()
    dtype = torch.float32 if dev.type == "cpu" and arch == "qwen3" else torch.bfloat16
    model, config = _model(arch, dev, dtype, seed=1)
    if arch == "gemma3":
        _float32_norms(model)
    assert mhf.patch_model(model) == config.num_hidden_layers
    ids = torch.randint(0, config.vocab_size, (2, 24), device=dev)
    backend = "aot_eager" if dev.type == "cpu" else "inductor"
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    with torch.inference_mode():
        want = model(ids).logits.float()
        got = compiled(ids).logits.float()
    assert torch.isfinite(want).all()
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    assert _rel(got, want) <= tol, _rel(got, want)


@pytest.mark.parametrize("name", ["cache", "past_key_values", "past_key_value"])
def test_the_cache_under_each_of_its_names(name):
    """The patched attention takes the KV cache under each name transformers has passed it by
    (`cache` from 5.2x, `past_key_values` before, `past_key_value` in 4.x) and updates it; a
    cache it did not see would leave decoding to attend to nothing before the new token."""
    model, config = _model("llama", torch.device("cpu"), torch.float32, seed=3, layers=1)
    assert mhf.patch_model(model) == 1
    attn = model.model.layers[0].self_attn
    hidden = torch.randn(2, 5, config.hidden_size)
    position_ids = torch.arange(5)[None].expand(2, 5)
    embeddings = model.model.rotary_emb(hidden, position_ids)
    cache = transformers.DynamicCache()
    with torch.inference_mode():
        attn(hidden, position_embeddings=embeddings, attention_mask=None, **{name: cache})
    assert cache.get_seq_length(0) == 5


def test_patch_shares_weights_and_refuses_twice():
    model, config = _model("qwen2", torch.device("cpu"), torch.float32, seed=2, layers=1)
    layer = model.model.layers[0]
    norm_weight = layer.input_layernorm.weight
    q, k, v = (getattr(layer.self_attn, n) for n in ("q_proj", "k_proj", "v_proj"))
    mhf.patch_decoder_layer(layer)
    fused = layer.self_attn
    assert isinstance(fused, mhf.PrologueAttention)
    assert isinstance(layer.input_layernorm, torch.nn.Identity)
    assert fused.norm_weight is norm_weight
    assert torch.equal(fused.qkv_weight, torch.cat([q.weight, k.weight, v.weight]))
    assert torch.equal(fused.qkv_bias, torch.cat([q.bias, k.bias, v.bias]))  # Qwen2's biases
    assert not hasattr(fused.attn, "q_proj")  # the separate projections are gone
    with pytest.raises(ValueError, match="^layer: .*already patched"):
        mhf.patch_decoder_layer(layer)
    with pytest.raises(TypeError, match="^layer: "):
        mhf.patch_decoder_layer(layer.mlp)
    with pytest.raises(TypeError, match="^model: "):
        mhf.patch_model(torch.nn.Linear(4, 4))


def test_qwen3_per_head_norms_go_into_the_op():
    model, _ = _model("qwen3", torch.device("cpu"), torch.float32, seed=3, layers=1)
    attn = model.model.layers[0].self_attn
    q_norm, k_norm = attn.q_norm, attn.k_norm
    mhf.patch_model(model)
    fused = model.model.layers[0].self_attn
    assert fused.q_norm_weight is q_norm.weight and fused.k_norm_weight is k_norm.weight
    assert fused.qk_norm_eps == q_norm.variance_epsilon


def test_static_cache_positions_past_the_end_are_not_written():
    """A decode step past a StaticCache's end writes nothing (no wrap into the next sequence's
    rows), where HF's own index_copy_ would raise."""
    model, config = _model("llama", torch.device("cpu"), torch.float32, seed=4, layers=1)
    mhf.patch_model(model)
    ids = torch.randint(0, config.vocab_size, (2, 5))
    cache = transformers.StaticCache(config=config, max_cache_len=5)
    with torch.inference_mode():
        model(ids, past_key_values=cache, use_cache=True)
        layer = cache.layers[0]
        before = layer.keys.clone(), layer.values.clone()
        model(ids[:, :1], past_key_values=cache, use_cache=True)
    assert torch.equal(layer.keys, before[0]) and torch.equal(layer.values, before[1])


# --------------------------------------------------------------------------------------------
# Gemma family: every (1 + weight) RMSNorm becomes an OffsetRMSNorm
# --------------------------------------------------------------------------------------------
# Gemma RMSNorm modules per decoder layer (Gemma3's q_norm and k_norm included); the model's
# final norm is one more
GEMMA_LAYER_NORMS = {"gemma": 2, "gemma2": 4, "gemma3": 6}


@pytest.mark.parametrize("variant", ["float32", "bfloat16", "bfloat16-float32-norms"])
@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("arch", GEMMA_ARCHS)
def test_patched_gemma_matches_stock(arch, device, variant, monkeypatch):
    dev = _device(device)
    dtype = torch.float32 if variant == "float32" else torch.bfloat16
    seed = int(torch.randint(0, 2**31 - 1, ()).item())
    model, config = _model(arch, dev, dtype, seed)
    if variant.endswith("float32-norms"):
        _float32_norms(model)
    ids = torch.randint(0, config.vocab_size, (2, 19), device=dev)
    stock = _logits(model, config, ids, 3)
    reference = None
    if dtype != torch.float32:
        reference = _logits(copy.deepcopy(model).float(), config, ids, 3)

    weights = {name: p for name, p in model.named_parameters() if "norm" in name}
    assert mhf.patch_model(model) == config.num_hidden_layers
    norms = {name: m for name, m in model.named_modules() if isinstance(m, mhf.OffsetRMSNorm)}
    per_forward = GEMMA_LAYER_NORMS[arch] * config.num_hidden_layers + 1
    assert len(norms) == per_forward, sorted(norms)
    assert not [m for m in model.modules() if type(m).__name__ in mhf.GEMMA_NORMS]
    # the same Parameters, in their own dtype: the state_dict keys and values are unchanged
    for name, norm in norms.items():
        assert norm.weight is weights[f"{name}.weight"], name
    assert {k for k in model.state_dict()} >= set(weights)

    calls = []
    # where every rms_norm call ends, the entry point's direct call and the registered op's alike
    real = minivllm._C.rms_norm

    def counted(x, weight, eps, out, alloc, stream, pdl, weight_offset, jit):
        calls.append((weight.dtype, weight_offset))
        return real(x, weight, eps, out, alloc, stream, pdl, weight_offset, jit)

    def refused(*args, **kwargs):
        raise AssertionError("Gemma layers must not go through the attention prologue")

    monkeypatch.setattr(minivllm._C, "rms_norm", counted)
    monkeypatch.setattr(minivllm._C, "attention_prologue", refused)
    patched = _logits(model, config, ids, 3)
    # every norm of every forward (prefill + 3 decode steps) ran through minivllm, with the offset
    assert len(calls) == 4 * per_forward, len(calls)
    norm_dtype = torch.float32 if variant != "bfloat16" else torch.bfloat16
    assert set(calls) == {(norm_dtype, 1.0)}, set(calls)
    _assert_logits_match(patched, stock, reference, seed)


def test_offset_rms_norm_takes_per_head_views():
    """Gemma3's q/k norm input: [batch, heads, seq, head_dim] transposed from [batch, seq, heads,
    head_dim] (three row strides): the (1 + weight) norm of a float64 reference, x's layout."""
    norm = torch.nn.Module()
    norm.weight = torch.nn.Parameter(0.3 * torch.randn(32), requires_grad=False)
    norm.eps = 1e-6
    offset_norm = mhf.OffsetRMSNorm(norm)
    x = torch.randn(2, 7, 4, 32).transpose(1, 2)
    y = offset_norm(x)
    x64 = x.double()
    want = x64 * torch.rsqrt(x64.pow(2).mean(-1, keepdim=True) + 1e-6) * (1 + norm.weight.double())
    assert y.shape == x.shape and y.stride() == x.stride()
    assert _rel(y.double(), want) <= 1e-6, _rel(y.double(), want)
    # a float16 weight beside bfloat16 x (no kernel takes that pair) is widened to float32
    norm.weight = torch.nn.Parameter(norm.weight.half(), requires_grad=False)
    got = mhf.OffsetRMSNorm(norm)(x.bfloat16())
    assert got.dtype == torch.bfloat16 and _rel(got.double(), want) <= 1e-2


def test_gemma_patch_refuses_twice_and_leaves_others_alone():
    model, config = _model("gemma2", torch.device("cpu"), torch.float32, seed=6, layers=1)
    layer = model.model.layers[0]
    attn, mlp = layer.self_attn, layer.mlp
    mhf.patch_decoder_layer(layer)
    # the attention, its projections and the MLP are the model's own
    assert layer.self_attn is attn and layer.mlp is mlp and hasattr(attn, "q_proj")
    assert isinstance(layer.pre_feedforward_layernorm, mhf.OffsetRMSNorm)
    assert layer.input_layernorm.eps == config.rms_norm_eps
    with pytest.raises(ValueError, match="^layer: .*already patched"):
        mhf.patch_decoder_layer(layer)
    assert type(model.model.norm).__name__ == "Gemma2RMSNorm"  # patch_model's, not the layer's
