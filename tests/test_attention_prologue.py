"""minivllm.attention_prologue: residual add, RMSNorm, QKV (+ bias), per-head QK norm, RoPE and the
KV-cache write, against the float64 reference of the whole chain (minivllm.reference).

Every call gets fresh random inputs; outputs and caches start as NaN, so an element a kernel
fails to write (or writes where it should not) shows in the NaN pattern. On a GPU the expected
numerics of the QKV part follow the path that ran (reference.prologue_ref).
"""
import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import minivllm
from conftest import (NEEDS_CUDA, assert_native, cuda_capability, cuda_sm_count, get_backend, norm_weight,
                      randn, round_np, to64)
from minivllm.reference import FP8_TOLERANCE, PROLOGUE_TOLERANCE, to_fp8, write_kv_cache
from reference import (assert_matches, assert_same_values, last_gpu_path, prologue_ref, rms_norm_ref,
                       round_to)

FP8 = "float8_e4m3fn"


# --------------------------------------------------------------------------------------------
# arrays beyond the float ones: indices, FP8 caches, permuted views
# --------------------------------------------------------------------------------------------
def index_array(dev, values, dtype=np.int64):
    values = np.asarray(values, dtype)
    if dev.name == "cpu":
        return values.copy()
    return dev.from_numpy(values)


def cache_array(dev, shape, dtype):
    """A NaN-filled cache of dtype (a float name or FP8) on dev."""
    if dtype != FP8:
        return dev.full(shape, dtype)
    if dev.name == "cpu":
        return np.full(shape, np.nan, ml_dtypes.float8_e4m3fn)
    if dev.lib != "torch" or not hasattr(dev.torch, "float8_e4m3fn"):
        pytest.skip("no float8_e4m3fn arrays in this GPU array library")
    t = dev.torch
    return t.full(tuple(shape), float("nan"), dtype=t.float32, device=dev.device).to(t.float8_e4m3fn)


def permute(dev, a, order):
    return a.permute(*order) if dev.lib == "torch" else a.transpose(order)


def cache64(a):
    mod = type(a).__module__ or ""
    if mod.startswith("torch"):
        import torch
        return a.detach().to(device="cpu", dtype=torch.float32).numpy().astype(np.float64)
    if isinstance(a, np.ndarray):
        return a.astype(np.float64)
    return to64(a)


def make_caches(dev, layout, nkv, D, num_blocks, block_size, dtype):
    """(k_cache, v_cache, k_parent, v_parent) in one of the accepted layouts:
    "paged": vLLM's [num_blocks, block_size, nkv, D];
    "hf": Hugging Face's static cache [batch, nkv, max_len, D] seen through .permute(0, 2, 1, 3);
    "dstride": a paged view whose head_dim is strided (every other element of a wider array)."""
    def one():
        if layout == "paged":
            a = cache_array(dev, (num_blocks, block_size, nkv, D), dtype)
            return a, a
        if layout == "hf":
            a = cache_array(dev, (num_blocks, nkv, block_size, D), dtype)
            return permute(dev, a, (0, 2, 1, 3)), a
        a = cache_array(dev, (num_blocks, block_size, nkv, 2 * D), dtype)
        return a[..., ::2], a
    (k, kp), (v, vp) = one(), one()
    return k, v, kp, vp


def slot_values(rng, pattern, M, num_blocks, block_size):
    total = num_blocks * block_size
    if pattern == "random":
        return rng.choice(total, M, replace=False)
    if pattern == "blocks":  # each token in its own block, at a random offset
        blocks = rng.choice(num_blocks, M, replace=False)
        return blocks * block_size + rng.integers(0, block_size, M)
    slots = rng.choice(total, M, replace=False)  # "padding": vLLM's -1 for padded tokens
    slots[rng.random(M) < 0.4] = -1
    slots[0] = -1
    return slots


def cos_sin(max_position, rotary_dim, base=10000.0):
    inv = base ** (-np.arange(0, rotary_dim, 2) / rotary_dim)
    angles = np.arange(max_position)[:, None] * inv[None, :]
    return np.concatenate([np.cos(angles), np.sin(angles)], 1)


# --------------------------------------------------------------------------------------------
# one call and its check
# --------------------------------------------------------------------------------------------
class Case:
    def __init__(self, dev, rng, dtype, M, H=128, nq=4, nkv=2, D=64, *, lead=None,
                 residual=False, bias=False, qk_norm=False, rotary_dim=None, rope=True,
                 style="neox", cs_dtype="float32", cache=None, cache_dtype=None, slots="random",
                 kv_scale=None, max_position=300, block_size=16):
        self.dev, self.dtype, self.nq, self.nkv, self.D = dev, dtype, nq, nkv, D
        lead = (M,) if lead is None else lead
        self.lead = lead
        M = int(np.prod(lead))
        N = (nq + 2 * nkv) * D
        self.x64 = round_to(randn(rng, lead + (H,)), dtype)
        self.g64 = round_to(norm_weight(rng, H), dtype)
        self.W64 = round_to(rng.standard_normal((N, H)) / np.sqrt(H), dtype)
        self.kw64, self.kw = {}, {}
        if residual:
            self.add("residual", round_to(randn(rng, lead + (H,)), dtype))
        if bias:
            self.add("qkv_bias", round_to(rng.standard_normal(N), dtype))
        if qk_norm:
            self.add("q_norm_weight", round_to(norm_weight(rng, D), dtype))
            self.add("k_norm_weight", round_to(norm_weight(rng, D), dtype))
        if rope:
            r = D if rotary_dim is None else rotary_dim
            cs = round_to(cos_sin(max_position, r), cs_dtype)
            self.kw64["cos_sin_cache"] = cs
            self.kw["cos_sin_cache"] = dev.array(cs, cs_dtype)
            pos = rng.integers(0, max_position, lead)
            self.kw64["positions"] = pos
            self.kw["positions"] = index_array(dev, pos)
            self.kw["rope_style"] = self.kw64["rope_style"] = style
        self.cache = cache
        if cache is not None:
            self.cache_dtype = dtype if cache_dtype is None else cache_dtype
            num_blocks = max(2, -(-2 * M // block_size), M if slots == "blocks" else 0)
            k, v, self.kp, self.vp = make_caches(dev, cache, nkv, D, num_blocks, block_size,
                                                 self.cache_dtype)
            self.slots = slot_values(rng, slots, M, num_blocks, block_size).reshape(lead)
            self.kw.update(k_cache=k, v_cache=v, slot_mapping=index_array(dev, self.slots))
            if kv_scale is not None:
                self.kw["kv_scale"] = kv_scale
        self.kv_scale = 1.0 if kv_scale is None else kv_scale
        self.x = dev.array(self.x64, dtype)
        self.g = dev.array(self.g64, dtype)
        self.W = dev.array(self.W64, dtype)

    def add(self, name, data64):
        self.kw64[name] = data64
        self.kw[name] = self.dev.array(data64, self.dtype)

    def call(self, **extra):
        return minivllm.attention_prologue(self.x, self.g, self.W, self.nq, self.nkv, 1e-6,
                                           **{**self.kw, **extra})

    def expected(self):
        kw = {k: v for k, v in self.kw64.items()}
        return prologue_ref(self.x64, self.g64, self.W64, self.nq, self.nkv, 1e-6, self.dtype,
                            self.dev.name, **kw)

    def check(self, res):
        dev, dtype, lead = self.dev, self.dtype, self.lead
        dev.sync()
        ref = self.expected()
        has_res = "residual" in self.kw
        assert isinstance(res, tuple) and len(res) == (4 if has_res else 3)
        tol = PROLOGUE_TOLERANCE[dtype]
        assert_native(dev, res[0], dtype, lead + (self.nq, self.D), "q")
        assert_matches(to64(res[0]), ref[0], tol, "q", row_axes=1)
        if self.cache is None:
            for name, out, r in (("k", res[1], ref[1]), ("v", res[2], ref[2])):
                assert_native(dev, out, dtype, lead + (self.nkv, self.D), name)
                assert_matches(to64(out), r, tol, name, row_axes=1)
        else:
            assert res[1] is None and res[2] is None
            fp8 = self.cache_dtype == FP8
            k_ref, v_ref = ref[1], ref[2]
            if fp8:
                k_ref, v_ref = to_fp8(k_ref, self.kv_scale), to_fp8(v_ref, self.kv_scale)
            shape = cache64(self.kw["k_cache"]).shape
            empty = np.full(shape, np.nan)
            k_exp, v_exp = write_kv_cache(empty, empty, k_ref, v_ref, self.slots)
            ctol = FP8_TOLERANCE if fp8 else tol
            assert_matches(cache64(self.kw["k_cache"]), k_exp, ctol, "k_cache", row_axes=1)
            assert_matches(cache64(self.kw["v_cache"]), v_exp, ctol, "v_cache", row_axes=1)
            if self.cache == "dstride":  # the other half of the wider arrays stays untouched
                assert np.isnan(cache64(self.kp)[..., 1::2]).all()
                assert np.isnan(cache64(self.vp)[..., 1::2]).all()
        if has_res:
            assert_same_values(to64(res[3]), ref[3], "new_residual")

    def run(self, **extra):
        before = {k: to64(v) for k, v in self.kw.items()
                  if k not in ("k_cache", "v_cache", "rope_style", "positions", "slot_mapping",
                               "kv_scale", "qk_norm_eps")}
        x0 = to64(self.x)
        res = self.call(**extra)
        self.check(res)
        assert_same_values(to64(self.x), x0, "hidden_states")
        for k, v in before.items():
            assert_same_values(to64(self.kw[k]), v, k)
        return res

    def run_residual_form(self, residual, **extra):
        """run(), or with residual == "inplace" the call that writes the new residual into the
        residual it was given (checked against x + the old residual)."""
        if residual != "inplace":
            return self.run(**extra)
        res = self.call(residual_out=self.kw["residual"], **extra)
        self.check(res)
        assert res[3] is self.kw["residual"]
        return res


# --------------------------------------------------------------------------------------------
# numerics
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ratio", [1, 2, 4, 8])
@pytest.mark.parametrize("D", [32, 64, 96, 128, 256])
def test_gqa_head_dims(dev, dtype, D, ratio, rng):
    """Qwen3's prologue (QK norm, full RoPE, paged cache) over GQA ratios and head sizes (on a
    GPU: 32-256 take the register epilogue, 96 the shared-memory one)."""
    M = int(rng.integers(0, 8)) * 2 + 1
    Case(dev, rng, dtype, M, 128, 2 * ratio, 2, D, qk_norm=True, cache="paged").run()


@pytest.mark.parametrize("rows", [1, 3])
def test_inputs_written_just_before(dev, dtype, rows, rng):
    """A cos/sin cache rewritten by a norm kernel right before each call (on sm_90 that kernel lets
    the next one launch early) is read as rewritten, every call: where the QKV kernel lets the
    epilogue launch only after its own wait, the epilogue reads its per-token inputs before its
    wait, which is right only once every kernel before the QKV kernel has finished."""
    D, max_position = 64, 40
    c = Case(dev, rng, dtype, rows, 128, 4, 2, D, qk_norm=True, bias=True, cache="paged",
             max_position=max_position)
    ones = dev.array(np.ones(D), "float32")
    for _ in range(6):
        src = rng.standard_normal((max_position, D))
        minivllm.rms_norm(dev.array(src, "float32"), ones, 1e-6, out=c.kw["cos_sin_cache"])
        c.kw64["cos_sin_cache"] = round_to(rms_norm_ref(src, np.ones(D), 1e-6), "float32")
        c.run()


@pytest.mark.parametrize("cs_dtype", ["float32", "same"])
@pytest.mark.parametrize("rotary", ["full", "half", "quarter", "two"])
@pytest.mark.parametrize("style", ["neox", "gptj"])
def test_rope(dev, dtype, style, rotary, cs_dtype, rng):
    D = 128
    r = {"full": D, "half": D // 2, "quarter": D // 4, "two": 2}[rotary]
    Case(dev, rng, dtype, 5, 96, 4, 2, D, rotary_dim=r, style=style,
         cs_dtype=dtype if cs_dtype == "same" else cs_dtype).run()


@pytest.mark.parametrize("residual", [False, True, "inplace"])
@pytest.mark.parametrize("bias", [False, True])
def test_bias_and_residual(dev, dtype, bias, residual, rng):
    """Qwen2 (bias, no QK norm), with the residual added first (new residual returned, or
    written back in place)."""
    c = Case(dev, rng, dtype, 7, 160, 6, 2, 64, residual=bool(residual), bias=bias)
    c.run_residual_form(residual)


@pytest.mark.parametrize("kv_scale", [None, 0.05, 3.0])
@pytest.mark.parametrize("slots", ["random", "blocks", "padding"])
@pytest.mark.parametrize("layout", ["paged", "hf", "dstride"])
@pytest.mark.parametrize("cache_dtype", ["same", FP8])
def test_cache_write(dev, dtype, cache_dtype, layout, slots, kv_scale, rng):
    if kv_scale is not None and cache_dtype != FP8:
        pytest.skip("kv_scale scales an FP8 cache only (test_bad_arguments)")
    Case(dev, rng, dtype, 9, 128, 4, 2, 64, qk_norm=True, cache=layout, slots=slots,
         cache_dtype=None if cache_dtype == "same" else cache_dtype, kv_scale=kv_scale,
         block_size=8).run()


SIMD_LEVELS = list(minivllm._C._simd_levels())


@pytest.mark.parametrize("cache", [None, "paged", "dstride", FP8])
@pytest.mark.parametrize("style", ["neox", "gptj"])
@pytest.mark.parametrize("D,rotary", [(36, 36), (40, 20), (64, 64), (100, 24)])
@pytest.mark.parametrize("level", SIMD_LEVELS)
def test_cpu_simd_levels(level, dtype, D, rotary, style, cache, rng):
    """The CPU twin at every SIMD level this machine runs (portable C included), forced as
    tests/test_cpu_simd.py does: heads and rotary halves that leave a tail past the last whole
    vector (16, 8 or 1 floats), a cache whose head_dim is strided, an FP8 cache."""
    previous = minivllm._C._set_simd_level(SIMD_LEVELS.index(level))
    try:
        assert minivllm._C._simd_level() == level
        Case(get_backend("cpu"), rng, dtype, 5, 96, 4, 2, D, bias=True, qk_norm=True, residual=True,
             rotary_dim=rotary, style=style, cache=None if cache is None else "paged" if cache == FP8 else cache,
             cache_dtype=FP8 if cache == FP8 else None, kv_scale=0.5 if cache == FP8 else None,
             slots="padding").run()
    finally:
        minivllm._C._set_simd_level(previous)


@pytest.mark.parametrize("M", [0, 1, 3, 33, 101])
def test_rows(dev, dtype, M, rng):
    Case(dev, rng, dtype, M, 128, 8, 2, 64, bias=True, qk_norm=True, residual=True,
         cache="paged", slots="padding" if M else "random").run()


@pytest.mark.parametrize("cache", [None, "paged"])
@pytest.mark.parametrize("D", [64, 128, 256])
def test_many_heads_a_warp(dev, dtype, D, cache, rng):
    """More (token, head) items than one and a half waves of warps on any current GPU (800 x 16
    > 1.5 x 48 warps x 148 SMs): the register epilogue takes several heads of a token per warp
    (8, 4 and 2 at D = 64, 128, 256); with a cache, 18 heads leave the last group of each token
    short."""
    Case(dev, rng, dtype, 800, 128, 14, 2, D, qk_norm=True, cache=cache,
         slots="padding" if cache else "random").run()


# The QKV paths the epilogue kernel follows, each forced (the automatic table picks one per shape,
# so without forcing, the prologue would meet only a few): a head's features come from many
# blocks and tiles of each, and the epilogue must see all of them.
EPILOGUE_PATHS = {  # rows, the compute capability it needs (exact: sm_90a code)
    "register": ((1, 7, 16), (8, 0), False),
    "bulk": ((1, 9, 16), (9, 0), False),
    "deferred": ((1, 5, 32), (9, 0), False),
    "engine": ((16, 32), (9, 0), True),
    "cublaslt": ((2,), (8, 0), False),
}


@NEEDS_CUDA
@pytest.mark.parametrize("cache", [None, "paged", FP8])
@pytest.mark.parametrize("D", [64, 128, 256])
@pytest.mark.parametrize("dt", ["bfloat16", "float16"])
@pytest.mark.parametrize("path", list(EPILOGUE_PATHS))
def test_epilogue_on_each_path(path, dt, D, cache, rng):
    """Each path that can take a 16-bit prologue, forced, twice on fresh inputs (nothing of one
    call may leak into the next), with PDL on and off (off: the register stream's other form)."""
    rows, need, exact = EPILOGUE_PATHS[path]
    cap = cuda_capability()
    if cap != need if exact else cap < need:
        pytest.skip(f"the {path} path needs sm_{need[0]}{need[1]}; this GPU is sm_{cap[0]}{cap[1]}")
    dev = get_backend("cuda")
    for M in rows:
        for i in range(2):
            c = Case(dev, rng, dt, M, 256, 6, 2, D, bias=True, qk_norm=True,
                     cache=None if cache is None else "paged",
                     cache_dtype=FP8 if cache == FP8 else None, slots="padding" if M > 1 else "random",
                     kv_scale=0.5 if cache == FP8 else None)
            c.run(_path=path, pdl=i == 0)
            assert last_gpu_path() == path, f"_path={path!r} at M={M}: ran {last_gpu_path()!r}"


@NEEDS_CUDA
@pytest.mark.parametrize("residual", [True, "inplace"])
@pytest.mark.parametrize("dt", ["bfloat16", "float16"])
def test_deferred_stream_with_a_residual(dt, residual, rng):
    """The prologue on the deferred stream with a residual, forced (the H100's table takes it at
    4-8 rows): s formed beside x in its ring and stored by one block a stage, or in place by the
    store kernel before the epilogue; bias, q/k norms, RoPE and the paged cache after it. Twice
    per M on fresh inputs, with PDL on and off."""
    cap = cuda_capability()
    if cap < (9, 0):
        pytest.skip(f"the deferred stream needs sm_90; this GPU is sm_{cap[0]}{cap[1]}")
    dev = get_backend("cuda")
    for M in (1, 5, 8, 17, 32):
        for i in range(2):
            c = Case(dev, rng, dt, M, 256, 6, 2, 128, residual=True, bias=True, qk_norm=True,
                     cache="paged", slots="padding" if M > 1 else "random")
            c.run_residual_form(residual, _path="deferred", pdl=i == 0)
            assert last_gpu_path() == "deferred", f"M={M}: ran {last_gpu_path()!r}"


# head_dim -> (heads, kv heads): q, k and v widths of 1.75, 7.5 and 12 of the engine's 128-feature
# tiles (a last tile only partly filled, and whole ones)
ENGINE_HEADS = {32: (5, 1), 64: (9, 3), 128: (8, 2)}


@NEEDS_CUDA
@pytest.mark.parametrize("residual", [False, True, "inplace"])
@pytest.mark.parametrize("rope", ["neox", "gptj", "partial", None])
@pytest.mark.parametrize("D", sorted(ENGINE_HEADS))
@pytest.mark.parametrize("dt", ["bfloat16", "float16"])
def test_engine_prologue(dt, D, rope, residual, rng):
    """The whole prologue in the GEMM engine's kernel (_path="engine_prologue", sm_90): rows over
    its token tiles (8 ... 128) and layouts (a cluster per tile, stream-K), every residual form
    (in place: the store kernel follows, since other CTAs still read the residual), each RoPE
    form, and caches and k, v outputs in turn; twice per shape on fresh inputs."""
    cap = cuda_capability()
    if cap != (9, 0):
        pytest.skip(f"the engine needs sm_90 exactly; this GPU is sm_{cap[0]}{cap[1]}")
    dev = get_backend("cuda")
    nq, nkv = ENGINE_HEADS[D]
    for M in (1, 5, 16, 40, 130):
        for i in range(2):
            c = Case(dev, rng, dt, M, 256, nq, nkv, D, residual=bool(residual), bias=True,
                     qk_norm=True, rope=rope is not None, style="gptj" if rope == "gptj" else "neox",
                     rotary_dim=D // 2 if rope == "partial" else None,
                     cache=(None, "paged", "hf")[(M + i) % 3], slots="padding" if M > 1 else "random",
                     cache_dtype=FP8 if (M + i) % 3 == 2 and i == 1 else None,
                     kv_scale=0.5 if (M + i) % 3 == 2 and i == 1 else None)
            c.run_residual_form(residual, _path="engine_prologue", pdl=i == 0)
            assert last_gpu_path() == "engine_prologue", f"M={M}: ran {last_gpu_path()!r}"


@NEEDS_CUDA
@pytest.mark.parametrize("cache", [None, "paged"])
@pytest.mark.parametrize("M", [16, 200])
def test_engine_prologue_many_tiles(M, cache, rng):
    """More feature tiles than a cluster split takes (80 of 128 features): at 16 rows one CTA per
    whole tile, at 200 rows stream-K, where a tile's epilogue runs in the CTA holding its head
    after the other parts arrive through the workspace."""
    cap = cuda_capability()
    if cap != (9, 0):
        pytest.skip(f"the engine needs sm_90 exactly; this GPU is sm_{cap[0]}{cap[1]}")
    dev = get_backend("cuda")
    Case(dev, rng, "bfloat16", M, 256, 64, 8, 128, residual=True, bias=True, qk_norm=True,
         cache=cache, slots="padding").run(_path="engine_prologue")
    assert last_gpu_path() == "engine_prologue", f"M={M}: ran {last_gpu_path()!r}"


@NEEDS_CUDA
@pytest.mark.parametrize("D", [96, 256])
def test_engine_prologue_refuses_straddling_heads(D, rng):
    """A head that does not fit the engine's 128-feature tiles whole goes to the QKV table's kernel
    and the epilogue kernel, and is still right."""
    dev = get_backend("cuda")
    Case(dev, rng, "bfloat16", 3, 256, 4, 2, D, residual=True, qk_norm=True, cache="paged").run(
        _path="engine_prologue")
    assert last_gpu_path() not in ("engine_prologue", "none"), last_gpu_path()


@NEEDS_CUDA
def test_qkv_rules_in_the_prologue(rng):
    """The QKV table's choice for the prologue's own call (its epilogue kernel follows): on GPUs
    under 4 TB/s of DRAM bandwidth (an H100), timed after a torch GEMM, it keeps the deferred stream
    from 16 rows where the op alone takes norm + cuBLASLt, takes norm + cuBLASLt over the engine as
    the op alone does, keeps wgmma only where N <= 2048, and with a residual keeps the W streams up
    to M * H = 8192 (the op alone: 7168) and past that takes the deferred stream at 4-8 rows where W
    is under 32 MiB (else, and from 9 rows, norm + cuBLASLt). Faster GPUs (an H200), timed after a
    down_proj GEMM: one kernel at 16 rows, from 17 rows norm + cuBLASLt up to 80 MiB, wgmma only
    where N <= 2048. On both, at 9-16 rows (two token tiles): the register stream without a residual
    where W is under 16 MiB, and with one where M * H <= 18432 and blocks per SM x H <= 2048; else
    norm + cuBLASLt with a residual, never the tensor-copy stream. Each call is checked against the
    float64 reference."""
    cap = cuda_capability()
    if cap != (9, 0):
        pytest.skip(f"the rules checked are sm_90's; this GPU is sm_{cap[0]}{cap[1]}")
    from minivllm import _C
    slow = _C._cuda_dram_gbps() < 4000
    dev = get_backend("cuda")
    cases = [  # (M, H, heads, kv heads, head_dim, residual, expected on slow DRAM, on fast DRAM)
        (16, 1024, 16, 8, 128, False, "register", "register"),  # W 8 MiB, two token tiles
        (16, 2048, 32, 8, 64, False, "register", "register"),   # W 12 MiB
        (12, 2048, 16, 8, 128, False, "bulk", "bulk"),          # W 16 MiB: not the register stream
        (16, 4096, 24, 8, 128, False, "deferred", "engine"),    # W 40 MiB
        (24, 4096, 24, 8, 128, False, "cublaslt", "cublaslt"),  # W 40 MiB, over 32 features an SM
        (64, 1024, 16, 8, 128, False, "cublaslt", "cublaslt"),  # N = 4096
        (128, 896, 14, 2, 64, False, "wgmma", "wgmma"),         # N = 1152
        (8, 1024, 16, 8, 128, True, "register", None),          # M * H = 8192 (the op alone: cublaslt)
        (8, 1536, 12, 2, 128, True, "deferred", None),          # M * H = 12288, one token tile
        (4, 2560, 32, 8, 128, True, "deferred", None),          # M * H = 10240, W 30 MiB
        (4, 4096, 32, 8, 128, True, "cublaslt", None),          # W 48 MiB
        (16, 1536, 12, 2, 128, True, "cublaslt", "cublaslt"),   # two token tiles, M * H = 24576
    ]
    if cuda_sm_count() == 132:  # an H100 SXM or an H200: blocks an SM of 16-feature tiles
        cases += [(12, 1536, 12, 2, 128, True, "register", "register"),  # M * H = 18432, 128 tiles: one an SM
                  (9, 1152, 8, 2, 128, True, "register", "register"),    # M * H = 10368, 96 tiles
                  (9, 1536, 24, 8, 64, True, "cublaslt", "cublaslt")]    # 160 tiles: two an SM, 2 x 1536 > 2048
    for M, H, nq, nkv, D, residual, on_slow, on_fast in cases:
        Case(dev, rng, "bfloat16", M, H, nq, nkv, D, residual=residual, qk_norm=True, cache="paged").run()
        expected = on_slow if slow else on_fast
        if expected is not None:
            assert last_gpu_path() == expected, f"M={M} H={H}: ran {last_gpu_path()!r}, expected {expected!r}"


@pytest.mark.parametrize("lead", [(2, 3), (1, 1), (3, 1, 2)])
def test_leading_dims(dev, dtype, lead, rng):
    """hidden_states [batch, seq, H] with positions and slot_mapping [batch, seq]."""
    Case(dev, rng, dtype, None, 64, 4, 1, 64, lead=lead, qk_norm=True, cache="hf").run()


def test_flat_index_arrays(dev, rng):
    """positions and slot_mapping may also be flat [M] for hidden_states [batch, seq, H]."""
    c = Case(dev, rng, "float32", None, 64, 2, 1, 64, lead=(2, 3), cache="paged")
    c.kw["positions"] = index_array(dev, c.kw64["positions"].reshape(-1))
    c.kw["slot_mapping"] = index_array(dev, c.slots.reshape(-1))
    c.run()


def test_int32_indices_and_strided_positions(dev, rng):
    c = Case(dev, rng, "bfloat16", 6, 64, 2, 1, 64, cache="paged")
    c.kw["slot_mapping"] = index_array(dev, c.slots, np.int32)
    wide = np.stack([c.kw64["positions"], np.full(6, 10**9)], 1)  # every other element
    c.kw["positions"] = index_array(dev, wide)[:, 0]
    c.run()


def test_no_epilogue_equals_qkv(dev, dtype, rng):
    """Without bias, QK norm, RoPE or cache the op is fused_rms_norm_qkv."""
    c = Case(dev, rng, dtype, 5, 128, 4, 2, 32, rope=False)
    q, k, v = c.call()
    q2, k2, v2 = minivllm.fused_rms_norm_qkv(c.x, c.g, c.W, 4, 2, 1e-6)
    for a, b in ((q, q2), (k, k2), (v, v2)):
        assert_same_values(to64(a), to64(b), "q/k/v")


@pytest.mark.parametrize("cache", [None, "paged"])
def test_out_given(dev, dtype, cache, rng):
    """out= (q, k, v), NaN-poisoned; with a cache out's k and v are the scratch."""
    c = Case(dev, rng, dtype, 7, 128, 4, 2, 64, bias=True, qk_norm=True, cache=cache)
    q = dev.full((7, 4, 64), dtype)
    k, v = dev.full((7, 2, 64), dtype), dev.full((7, 2, 64), dtype)
    res = c.run(out=(q, k, v))
    assert res[0] is q
    if cache is None:
        assert res[1] is k and res[2] is v
    q2 = dev.full((7, 4, 64), dtype)
    assert c.run(out=q2)[0] is q2
    # q alone given with a cache: the QKV part writes q, k and v into one scratch and the
    # epilogue stores q into q3, here a view whose rows step over 6 heads
    q3 = dev.full((7, 6, 64), dtype)[:, 1:5]
    assert c.run(out=q3)[0] is q3


def test_weight_transposed_view(dev, rng):
    c = Case(dev, rng, "float16", 5, 96, 4, 2, 64, qk_norm=True, cache="paged")
    c.W = dev.t(dev.contiguous(dev.t(c.W)))  # the .t() view of a contiguous [H, N]
    c.run()


@pytest.mark.parametrize("qk_norm_eps", [0.0, 1e-2])
def test_qk_norm_eps(dev, qk_norm_eps, rng):
    c = Case(dev, rng, "float32", 5, 64, 2, 1, 64, qk_norm=True, rope=False)
    c.kw["qk_norm_eps"] = c.kw64["qk_norm_eps"] = qk_norm_eps
    c.run()


def test_nan_row_stays_in_its_token(dev, rng):
    """A NaN in one token's input makes that token's q, k, v (and cache rows) NaN, no other."""
    c = Case(dev, rng, "float32", 4, 64, 2, 1, 64, qk_norm=True, cache="paged")
    c.x64[2, 5] = np.nan
    c.x = dev.array(c.x64, "float32")
    c.run()


# --------------------------------------------------------------------------------------------
# GPU: index values the binding cannot read stay inside the arrays
# --------------------------------------------------------------------------------------------
@NEEDS_CUDA
def test_gpu_bad_index_values_stay_in_bounds(rng):
    """On a GPU the binding cannot read positions or slot_mapping without synchronizing: a
    position beyond cos_sin_cache makes that token's q and k NaN, a slot beyond the cache
    writes nothing; nothing is read or written out of bounds."""
    from conftest import get_backend
    dev = get_backend("cuda")
    c = Case(dev, rng, "float32", 4, 64, 2, 1, 64, cache="paged", max_position=50)
    c.kw64["positions"][1] = 50
    c.kw["positions"] = index_array(dev, c.kw64["positions"])
    c.slots[2] = 10**12
    c.kw["slot_mapping"] = index_array(dev, c.slots)
    q, _, _ = c.call()
    dev.sync()
    q64 = to64(q)
    assert np.isnan(q64[1]).all() and np.isfinite(q64[[0, 2, 3]]).all()
    k64, v64 = cache64(c.kw["k_cache"]), cache64(c.kw["v_cache"])
    # k: tokens 0 and 3 finite, token 1 written as NaN (its position), token 2 not written;
    # v (not rotated): tokens 0, 1 and 3; every other slot still NaN
    assert np.isfinite(k64).all(axis=(2, 3)).sum() == 2
    assert np.isfinite(v64).all(axis=(2, 3)).sum() == 3
    for token in (0, 1, 3):
        slot = c.slots[token]
        assert np.isfinite(v64[slot // 16, slot % 16]).all()


# --------------------------------------------------------------------------------------------
# bad arguments: each check names its argument
# --------------------------------------------------------------------------------------------
def _base(dev, rng, cache_dtype=None):
    return Case(dev, rng, "float32", 3, 64, 2, 1, 64, qk_norm=True, cache="paged",
                cache_dtype=cache_dtype, max_position=40)


def _fp8_cache(dev, shape):
    return cache_array(dev, shape, FP8)


BAD = [
    # (id, change(kw, dev) -> kw, exception, message start)
    ("positions-beyond", lambda kw, d: {**kw, "positions": index_array(d, [0, 40, 1])},
     ValueError, "positions: value 40 at token 1"),
    ("positions-negative", lambda kw, d: {**kw, "positions": index_array(d, [0, -1, 1])},
     ValueError, "positions: value -1"),
    ("slot-beyond", lambda kw, d: {**kw, "slot_mapping": index_array(d, [0, 10**6, 1])},
     ValueError, "slot_mapping: value 1000000"),
    ("positions-float", lambda kw, d: {**kw, "positions": d.array(np.zeros(3), "float32")},
     TypeError, "positions: expected int32 or int64"),
    ("slots-short", lambda kw, d: {**kw, "slot_mapping": index_array(d, [0, 1])},
     ValueError, "slot_mapping: expected one value per token"),
    ("positions-without-cos-sin", lambda kw, d: {k: v for k, v in kw.items() if k != "cos_sin_cache"},
     ValueError, "positions: given without cos_sin_cache"),
    ("cos-sin-without-positions", lambda kw, d: {k: v for k, v in kw.items() if k != "positions"},
     ValueError, "cos_sin_cache: given without positions"),
    ("rotary-odd", lambda kw, d: {**kw, "cos_sin_cache": d.array(np.zeros((40, 7)), "float32")},
     ValueError, "cos_sin_cache: its last dimension is rotary_dim = 7"),
    ("rotary-beyond-head", lambda kw, d: {**kw, "cos_sin_cache": d.array(np.zeros((40, 66)), "float32")},
     ValueError, "cos_sin_cache: its last dimension is rotary_dim = 66"),
    ("cos-sin-1d", lambda kw, d: {**kw, "cos_sin_cache": d.array(np.zeros(40), "float32")},
     ValueError, "cos_sin_cache: expected 2 dimensions"),
    ("cos-sin-dtype", lambda kw, d: {**kw, "cos_sin_cache": d.array(np.zeros((40, 64)), "float16")},
     TypeError, "cos_sin_cache: dtype float16"),
    ("cos-sin-strided", lambda kw, d: {**kw, "cos_sin_cache": d.array(np.zeros((40, 128)), "float32")[:, ::2]},
     ValueError, "cos_sin_cache: its last dimension must be contiguous"),
    ("rope-style", lambda kw, d: {**kw, "rope_style": "llama"}, ValueError, "rope_style:"),
    ("rope-style-type", lambda kw, d: {**kw, "rope_style": 1}, TypeError, "rope_style:"),
    ("q-norm-shape", lambda kw, d: {**kw, "q_norm_weight": d.array(np.ones(32), "float32")},
     ValueError, "q_norm_weight: expected shape (64,)"),
    ("k-norm-dtype", lambda kw, d: {**kw, "k_norm_weight": d.array(np.ones(64), "float16")},
     TypeError, "k_norm_weight: dtype float16"),
    ("qk-eps-negative", lambda kw, d: {**kw, "qk_norm_eps": -1.0}, ValueError, "qk_norm_eps:"),
    ("qk-eps-alone", lambda kw, d: {**{k: v for k, v in kw.items() if "norm_weight" not in k},
                                    "qk_norm_eps": 1e-5},
     ValueError, "qk_norm_eps: given without"),
    ("bias-shape", lambda kw, d: {**kw, "qkv_bias": d.array(np.ones(64), "float32")},
     ValueError, "qkv_bias: expected shape (256,)"),
    ("k-cache-alone", lambda kw, d: {k: v for k, v in kw.items() if k != "v_cache"},
     ValueError, "k_cache: given without v_cache"),
    ("cache-without-slots", lambda kw, d: {k: v for k, v in kw.items() if k != "slot_mapping"},
     ValueError, "k_cache: given without slot_mapping"),
    ("slots-without-cache", lambda kw, d: {k: v for k, v in kw.items() if k not in ("k_cache", "v_cache")},
     ValueError, "slot_mapping: given without k_cache"),
    ("cache-heads", lambda kw, d: {**kw, "k_cache": d.full((4, 16, 2, 64), "float32")},
     ValueError, "k_cache: expected 4 dimensions [num_blocks, block_size, num_kv_heads=1"),
    ("cache-head-dim", lambda kw, d: {**kw, "v_cache": d.full((4, 16, 1, 32), "float32")},
     ValueError, "v_cache: expected 4 dimensions"),
    ("cache-3d", lambda kw, d: {**kw, "k_cache": d.full((64, 1, 64), "float32")},
     ValueError, "k_cache: expected 4 dimensions"),
    ("cache-dtype", lambda kw, d: {**kw, "k_cache": d.full((4, 16, 1, 64), "float16")},
     TypeError, "k_cache: dtype float16"),
    ("cache-mismatch", lambda kw, d: {**kw, "v_cache": d.full((5, 16, 1, 64), "float32")},
     ValueError, "v_cache: float32 of shape (5, 16, 1, 64) does not match"),
    ("cache-fp8-mixed", lambda kw, d: {**kw, "v_cache": _fp8_cache(d, (4, 16, 1, 64))},
     ValueError, "v_cache: float8_e4m3fn"),
    ("kv-scale-not-fp8", lambda kw, d: {**kw, "kv_scale": 2.0}, ValueError, "kv_scale: given for a float32"),
    ("kv-scale-without-cache", lambda kw, d: {**{k: v for k, v in kw.items()
                                                 if k not in ("k_cache", "v_cache", "slot_mapping")},
                                              "kv_scale": 2.0},
     ValueError, "kv_scale: given without"),
    ("cache-overlaps", lambda kw, d: {**kw, "v_cache": kw["k_cache"]}, ValueError, "v_cache: overlaps k_cache"),
    ("cache-broadcast", lambda kw, d: {**kw, "k_cache": d.full((1, 16, 1, 64), "float32")[[0, 0, 0, 0]]
                                       if d.name != "cpu" else
                                       np.broadcast_to(np.full((1, 16, 1, 64), np.nan, np.float32), (4, 16, 1, 64))},
     ValueError, "k_cache:"),
    ("residual-out-alone", lambda kw, d: {**kw, "residual_out": d.full((3, 64), "float32")},
     ValueError, "residual_out: given without residual"),
    ("out-tuple", lambda kw, d: {**kw, "out": (None, None)}, TypeError, "out:"),
]


@pytest.mark.parametrize("case", BAD, ids=[b[0] for b in BAD])
def test_bad_arguments(dev, case, rng):
    name, change, exc, message = case
    if dev.name != "cpu" and name in ("positions-beyond", "positions-negative", "slot-beyond"):
        pytest.skip("index values are checked where the binding can read them: on the CPU")
    if name == "cache-broadcast" and dev.name != "cpu":
        pytest.skip("a broadcast view is a NumPy construction here")
    c = _base(dev, rng)
    kw = change(dict(c.kw), dev)
    k0 = cache64(c.kw["k_cache"])
    with pytest.raises(exc) as info:
        minivllm.attention_prologue(c.x, c.g, c.W, 2, 1, 1e-6, **kw)
    assert str(info.value).startswith(message), str(info.value)
    dev.sync()
    assert_same_values(cache64(c.kw["k_cache"]), k0, "k_cache")


def test_base_arguments_are_valid(dev, rng):
    c = _base(dev, rng)
    c.run()


def test_head_dim_limit():
    x = np.zeros((1, 8), np.float32)
    with pytest.raises(ValueError, match="qkv_weight: gives head_dim 8192"):
        minivllm.attention_prologue(x, np.ones(8, np.float32), np.zeros((3 * 8192, 8), np.float32), 1, 1)


def test_read_only_cache():
    rng = np.random.default_rng(0)
    c = _base(minivllm_cpu(), rng)
    c.kw["k_cache"].flags.writeable = False
    with pytest.raises(ValueError, match="^k_cache: is read-only"):
        c.call()


def minivllm_cpu():
    from conftest import get_backend
    return get_backend("cpu")


# --------------------------------------------------------------------------------------------
# fuzzed bad arguments: never a crash, never a write outside the cache's view
# --------------------------------------------------------------------------------------------
_INDEX_VALUES = st.one_of(st.integers(-3, 80), st.sampled_from([2**31 - 1, -2**31, 2**62, -2**63]))


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_fuzz_bad_arguments(data):
    dev = minivllm_cpu()
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    M = data.draw(st.integers(0, 4))
    nq, nkv = data.draw(st.sampled_from([(2, 1), (4, 2), (1, 1)]))
    D = data.draw(st.sampled_from([2, 4, 8]))
    H = 8
    index_dtype = data.draw(st.sampled_from([np.int64, np.int32]))
    positions = np.array([data.draw(_INDEX_VALUES) for _ in range(M)], np.int64)
    slots = np.array([data.draw(_INDEX_VALUES) for _ in range(M)], np.int64)
    if index_dtype is np.int32:
        positions = positions.astype(np.int64).clip(-2**31, 2**31 - 1)
        slots = slots.clip(-2**31, 2**31 - 1)
    max_position = data.draw(st.integers(0, 40))
    rotary = data.draw(st.sampled_from([D, D - 1, D + 2, 2, 0, 1]))
    num_blocks, block_size = data.draw(st.integers(0, 5)), data.draw(st.integers(1, 8))
    cache_heads = data.draw(st.sampled_from([nkv, nkv + 1]))
    cache_dim = data.draw(st.sampled_from([D, D + 1]))
    cache_dtype = data.draw(st.sampled_from([np.float32, np.float16, ml_dtypes.float8_e4m3fn]))
    # a guard region around the cache's view: it must stay NaN whatever happens
    big_k = np.full((num_blocks + 2, block_size, cache_heads, cache_dim), np.nan, cache_dtype)
    big_v = np.full_like(big_k, np.nan)
    kw = dict(positions=positions.astype(index_dtype),
              cos_sin_cache=rng.standard_normal((max_position, max(rotary, 0))).astype(np.float32),
              rope_style=data.draw(st.sampled_from(["neox", "gptj", "x"])),
              k_cache=big_k[1:-1], v_cache=big_v[1:-1], slot_mapping=slots.astype(index_dtype),
              q_norm_weight=np.ones(data.draw(st.sampled_from([D, D + 1])), np.float32))
    for name in list(kw):
        if data.draw(st.integers(0, 5)) == 0:
            del kw[name]
    if data.draw(st.booleans()):
        kw["kv_scale"] = data.draw(st.sampled_from([1.0, 0.0, -1.0, float("nan"), 1e-30, "x"]))
    x = rng.standard_normal((M, H)).astype(np.float32)
    W = rng.standard_normal(((nq + 2 * nkv) * D, H)).astype(np.float32)
    try:
        minivllm.attention_prologue(x, np.ones(H, np.float32), W, nq, nkv, **kw)
    except (TypeError, ValueError):
        pass
    for big in (big_k, big_v):
        assert np.isnan(big[0].astype(np.float32)).all() and np.isnan(big[-1].astype(np.float32)).all()
