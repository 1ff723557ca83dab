"""minivllm.torch: torch.library custom ops, torch.compile, CUDA graphs, FusedRMSNormQKVProj.

Every test needs PyTorch and skips (saying so) without it; CUDA cases skip where no GPU is usable.
On the CPU, torch.compile runs with the "aot_eager" backend (it traces, functionalizes and checks
the fake implementations, without needing a C++ toolchain); on CUDA with inductor.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

import minivllm
from conftest import norm_weight, round_np, to64
from reference import (QKV_TOL, TOL, assert_matches, assert_same_values,
                       fused_add_rms_norm_ref, qkv_ref, rms_norm_ref)

DTYPES = ("float32", "float16", "bfloat16")
NO_CUDA = "no CUDA device (minivllm.cuda_available() is False)"


def _torch():
    return pytest.importorskip("torch", reason="PyTorch is not installed")


def _mvt():
    _torch()
    import minivllm.torch as mvt
    return mvt


def _device(torch, name):
    if name == "cuda":
        if not minivllm.cuda_available():
            pytest.skip(NO_CUDA)
        if not torch.cuda.is_available():
            pytest.skip("torch.cuda.is_available() is False")
    return torch.device(name)


def _tt(torch, data64, dtype, device):
    """Exact torch copy of round_np(data64, dtype) on device."""
    a = np.array(round_np(data64, dtype), order="C", copy=True)
    t = (torch.from_numpy(a.view(np.int16)).view(torch.bfloat16) if dtype == "bfloat16"
         else torch.from_numpy(a))
    return t.to(device)


def _tdtype(torch, dtype):
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]


def _sync(torch, device):
    if device.type == "cuda":
        torch.cuda.synchronize()


DEVICES = ("cpu", "cuda")


def test_import_minivllm_does_not_import_torch():
    """The core package never needs PyTorch: importing it leaves torch unloaded."""
    code = "import sys, minivllm; sys.exit(3 if 'torch' in sys.modules else 0)"
    # the minivllm these tests import (installed, or an in-place build), not the source tree
    # that `python -c` would find first from the checkout's root
    home = os.path.dirname(os.path.dirname(os.path.abspath(minivllm.__file__)))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=home, env={**os.environ, "PYTHONPATH": home})
    assert done.returncode == 0, f"import minivllm imported torch ({done.stderr[-500:]})"


# --------------------------------------------------------------------------------------------
# the ops, eager
# --------------------------------------------------------------------------------------------
def grad_context(torch, mode):
    """"grad": grad mode on, the entry points call the registered ops through the dispatcher;
    "no_grad" and "inference": they call the implementations directly (minivllm.torch._direct)."""
    return {"grad": torch.enable_grad, "no_grad": torch.no_grad,
            "inference": torch.inference_mode}[mode]()


GRAD_MODES = ("grad", "no_grad", "inference")


@pytest.mark.parametrize("mode", GRAD_MODES)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_ops_match_reference(device, dtype, mode, rng):
    torch = _torch()
    mvt = _mvt()
    dev = _device(torch, device)
    with grad_context(torch, mode):
        _ops_match_reference(torch, mvt, dev, dtype, rng)


def _ops_match_reference(torch, mvt, dev, dtype, rng):
    M, H, nh, nkv, hd = 6, 256, 4, 2, 32
    N = (nh + 2 * nkv) * hd
    x = _tt(torch, rng.standard_normal((2, M // 2, H)), dtype, dev)
    r = _tt(torch, rng.standard_normal((2, M // 2, H)), dtype, dev)
    w = _tt(torch, norm_weight(rng, H), dtype, dev)
    W = _tt(torch, rng.standard_normal((N, H)) / np.sqrt(H), dtype, dev)
    x0, r0, w0, W0 = to64(x), to64(r), to64(w), to64(W)
    eps = 1e-5

    y = mvt.rms_norm(x, w, eps)
    n, s = mvt.fused_add_rms_norm(x, r, w, eps)
    q, k, v = mvt.fused_rms_norm_qkv(x, w, W, nh, nkv, eps)
    q2, k2, v2, s2 = mvt.fused_rms_norm_qkv(x, w, W, nh, nkv, eps, residual=r)
    _sync(torch, dev)
    for t in (y, n, s, q, k, v, q2, k2, v2, s2):
        assert isinstance(t, torch.Tensor) and t.device.type == dev.type
        assert t.dtype == _tdtype(torch, dtype)
    for t in (y, n, s, s2):
        assert t.is_contiguous()
    # q, k, v: views of one packed [..., heads, head_dim] result, as F.linear + split give them
    for t in (q, k, v, q2, k2, v2):
        assert t.stride()[-2:] == (hd, 1) and t.stride()[-3] == N
    assert_matches(to64(y), rms_norm_ref(x0, w0, eps), TOL[dtype], "rms_norm")
    ref_n, ref_s = fused_add_rms_norm_ref(x0, r0, w0, eps, dtype)
    assert_matches(to64(n), ref_n, TOL[dtype], "normed")
    assert_same_values(to64(s), ref_s, "new_residual")
    for name, a, ref in zip("qkv", (q, k, v), qkv_ref(x0, w0, W0, nh, nkv, eps)):
        assert_matches(to64(a), ref, QKV_TOL[dtype], name, row_axes=2)
    refs = qkv_ref(x0, w0, W0, nh, nkv, eps, residual=r0, dtype=dtype)
    for name, a, ref in zip("qkv", (q2, k2, v2), refs[:3]):
        assert_matches(to64(a), ref, QKV_TOL[dtype], name + " (residual)", row_axes=2)
    assert_same_values(to64(s2), refs[3], "new_residual (qkv)")
    # the functional ops leave their inputs alone
    assert_same_values(to64(x), x0, "x")
    assert_same_values(to64(r), r0, "residual")

    # in place: residual <- x + residual, x <- rms_norm of it
    xi, ri = x.clone(), r.clone()
    got = mvt.fused_add_rms_norm_(xi, ri, w, eps)
    _sync(torch, dev)
    assert got[0] is xi and got[1] is ri
    assert_same_values(to64(ri), ref_s, "residual (in place)")
    assert_matches(to64(xi), ref_n, TOL[dtype], "x (in place)")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype,weight_dtype", [("float32", "float32"), ("bfloat16", "bfloat16"),
                                                ("bfloat16", "float32"), ("float16", "float32")])
@pytest.mark.parametrize("offset", [1.0, -0.5])
def test_weight_offset_matches_reference(device, dtype, weight_dtype, offset, rng):
    """weight_offset through the registered norm ops (functional and in place), against the
    float64 reference; a float32 weight beside 16-bit x is read as float32 (Gemma's checkpoints)."""
    torch = _torch()
    mvt = _mvt()
    dev = _device(torch, device)
    H, eps = 320, 1e-5
    x = _tt(torch, rng.standard_normal((2, 3, H)), dtype, dev)
    r = _tt(torch, rng.standard_normal((2, 3, H)), dtype, dev)
    # Gemma's weights sit around 0 (the scale is 1 + w); the extra 1e-3 * noise is not 16-bit exact
    w = _tt(torch, 0.3 * rng.standard_normal(H) + 1e-3 * rng.standard_normal(H), weight_dtype, dev)
    x0, r0, w0 = to64(x), to64(r), to64(w)

    y = mvt.rms_norm(x, w, eps, weight_offset=offset)
    n, s = mvt.fused_add_rms_norm(x, r, w, eps, weight_offset=offset)
    xi, ri = x.clone(), r.clone()
    mvt.fused_add_rms_norm_(xi, ri, w, eps, weight_offset=offset)
    _sync(torch, dev)
    assert y.dtype == n.dtype == _tdtype(torch, dtype)
    assert_matches(to64(y), rms_norm_ref(x0, w0, eps, offset), TOL[dtype], "rms_norm")
    ref_n, ref_s = fused_add_rms_norm_ref(x0, r0, w0, eps, dtype, offset)
    assert_matches(to64(n), ref_n, TOL[dtype], "normed")
    assert_same_values(to64(s), ref_s, "new_residual")
    assert_matches(to64(xi), ref_n, TOL[dtype], "x (in place)")
    assert_same_values(to64(ri), ref_s, "residual (in place)")
    # the offset is applied, not ignored: without it the result is far off
    assert not np.allclose(to64(mvt.rms_norm(x, w, eps)), to64(y), rtol=0.1, atol=0.1)
    # the default is no offset, the op's schema default included
    assert_same_values(to64(torch.ops.minivllm.rms_norm(x, w, eps)), to64(mvt.rms_norm(x, w, eps)),
                       "rms_norm default")


def test_weight_offset_errors_name_the_argument():
    torch = _torch()
    mvt = _mvt()
    x, w = torch.randn(2, 64), torch.zeros(64)
    with pytest.raises(ValueError, match="^weight_offset: "):
        mvt.rms_norm(x, w, weight_offset=float("nan"))
    with pytest.raises(ValueError, match="^weight_offset: "):
        mvt.fused_add_rms_norm(x, x, w, weight_offset=float("inf"))
    # the dispatcher checks the schema's type first; its message names the argument
    with pytest.raises(Exception, match="weight_offset"):
        mvt.fused_add_rms_norm_(x.clone(), x.clone(), w, weight_offset="1")


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device, rng):
    """torch.library.opcheck: schema (declared mutations), fake implementations against the
    real ones, dispatch through make_fx / AOT."""
    torch = _torch()
    _mvt()
    dev = _device(torch, device)
    M, H, nh, nkv, hd = 5, 128, 4, 2, 16
    N = (nh + 2 * nkv) * hd
    dt = torch.bfloat16

    def t(*shape):
        return _tt(torch, rng.standard_normal(shape), "bfloat16", dev)

    x, r, w, W = t(M, H), t(M, H), t(H), t(N, H) / 8
    ops = torch.ops.minivllm
    cases = [
        (ops.rms_norm, (x, w, 1e-6)),
        (ops.rms_norm, (t(3, 2, H)[:, 1], w, 1e-6)),  # strided leading dims
        (ops.rms_norm, (t(M, nh + 2 * nkv, hd)[:, :nh], t(hd), 1e-6)),  # q's heads: two strides
        (ops.fused_add_rms_norm, (x, r, w, 1e-6)),
        (ops.fused_add_rms_norm, (t(M, 8, hd)[:, :nh], t(M, 8, hd)[:, nh:], t(hd), 1e-6)),
        (ops.fused_add_rms_norm_, (x.clone(), r.clone(), w, 1e-6)),
        (ops.fused_add_rms_norm_, (t(M, 8, hd)[:, :nh], t(M, 8, hd)[:, nh:], t(hd), 1e-6)),
        (ops.fused_rms_norm_qkv, (x, w, W, nh, nkv, 1e-6)),
        (ops.fused_rms_norm_qkv, (t(2, 3, H), w, W, nh, nkv, 1e-6)),
        (ops.fused_add_rms_norm_qkv, (x, r, w, W, nh, nkv, 1e-6)),
    ]
    for op, args in cases:
        assert all(a.dtype == dt for a in args if isinstance(a, torch.Tensor))
        torch.library.opcheck(op, args)
    # weight_offset, named and positional, with a float32 weight beside bfloat16 x
    w32 = w.float()
    torch.library.opcheck(ops.rms_norm, (x, w32, 1e-6), {"weight_offset": 1.0})
    torch.library.opcheck(ops.fused_add_rms_norm, (x, r, w32, 1e-6, 1.0))
    torch.library.opcheck(ops.fused_add_rms_norm_, (x.clone(), r.clone(), w32, 1e-6),
                          {"weight_offset": -0.5})


@pytest.mark.parametrize("device", DEVICES)
def test_op_errors_name_the_argument(device):
    torch = _torch()
    mvt = _mvt()
    dev = _device(torch, device)
    x = torch.randn(4, 64, device=dev)
    w = torch.ones(64, device=dev)
    with pytest.raises(ValueError, match="^qkv_weight: "):
        mvt.fused_rms_norm_qkv(x, w, torch.randn(96, 32, device=dev), 2, 1)
    with pytest.raises(ValueError, match="^qkv_weight: .*not divisible"):
        mvt.fused_rms_norm_qkv(x, w, torch.randn(102, 64, device=dev), 2, 1)
    with pytest.raises(ValueError, match="^weight: "):
        mvt.rms_norm(x, torch.ones(63, device=dev))
    with pytest.raises(TypeError, match="^residual: "):
        mvt.fused_add_rms_norm(x, x.half(), w)
    # the same check runs while tracing (the fake implementation), before anything executes
    import torch._dynamo
    torch._dynamo.reset()
    traced = torch.compile(lambda a, b, c: mvt.fused_rms_norm_qkv(a, b, c, 2, 1),
                           backend="aot_eager", fullgraph=True)
    with pytest.raises(Exception, match="qkv_weight: .*not divisible"):
        traced(x, w, torch.randn(102, 64, device=dev))


# --------------------------------------------------------------------------------------------
# the module built from existing layers
# --------------------------------------------------------------------------------------------
def _norm_module(torch, weight, eps):
    """Stand-in for a Hugging Face RMSNorm: a `weight` and a `variance_epsilon`."""
    norm = torch.nn.Module()
    norm.weight = torch.nn.Parameter(weight)
    norm.variance_epsilon = eps
    return norm


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bias", [False, True])
def test_fused_proj_from_modules(device, bias, rng):
    torch = _torch()
    mvt = _mvt()
    dev = _device(torch, device)
    dtype = "bfloat16"
    td = torch.bfloat16
    H, nh, nkv, hd, eps = 384, 6, 2, 64, 1e-5
    norm = _norm_module(torch, _tt(torch, norm_weight(rng, H), dtype, dev), eps)
    projs = []
    for heads in (nh, nkv, nkv):
        lin = torch.nn.Linear(H, heads * hd, bias=bias, device=dev, dtype=td)
        with torch.no_grad():
            lin.weight.copy_(_tt(torch, rng.standard_normal((heads * hd, H)) / 20, dtype, dev))
            if bias:
                lin.bias.copy_(_tt(torch, rng.standard_normal(heads * hd), dtype, dev))
        projs.append(lin)
    fused = mvt.FusedRMSNormQKVProj.from_modules(norm, *projs, num_heads=nh)
    assert (fused.num_heads, fused.num_kv_heads, fused.head_dim, fused.eps) == (nh, nkv, hd, eps)
    assert fused.norm_weight is norm.weight  # shared, not copied
    merged = torch.cat([p.weight for p in projs])
    assert torch.equal(fused.qkv_weight, merged)
    assert (fused.qkv_bias is not None) == bias
    names = {name for name, _ in fused.named_parameters()}
    assert {"norm_weight", "qkv_weight"} <= names
    weight_ptr = fused.qkv_weight.data_ptr()

    x = _tt(torch, rng.standard_normal((3, 5, H)), dtype, dev)
    with torch.inference_mode():
        q, k, v = fused(x)
        resid = _tt(torch, rng.standard_normal((3, 5, H)), dtype, dev)
        q2, k2, v2, new_res = fused(x, residual=resid)
    _sync(torch, dev)
    assert fused.qkv_weight.data_ptr() == weight_ptr  # merged once, at construction
    W0 = to64(merged)
    b0 = to64(torch.cat([p.bias for p in projs])) if bias else np.zeros(W0.shape[0])
    splits = np.cumsum([nh * hd, nkv * hd])
    biases = [b.reshape(-1, hd) for b in np.split(b0, splits)]
    refs = qkv_ref(to64(x), to64(norm.weight), W0, nh, nkv, eps)

    class Passing(torch.overrides.TorchFunctionMode):  # an active mode: the registered op runs
        def __torch_function__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    with torch.inference_mode():
        packed = fused.packed(x)  # nothing watches: the implementation, no dispatcher
        with Passing():
            packed_op = fused.packed(x)
    _sync(torch, dev)
    for got, how in ((packed, "direct"), (packed_op, "registered op")):
        assert tuple(got.shape) == (3, 5, nh + 2 * nkv, hd)
        for name, part, ref in zip("qkv", mvt.split_qkv(got, nh, nkv), refs):
            assert_matches(to64(part), ref, QKV_TOL[dtype], f"packed {name}, {how}", row_axes=2)
    # the bias is added in the dtype: one more rounding than the reference
    tol = 2 * QKV_TOL[dtype]
    for name, a, ref, b, heads in zip("qkv", (q, k, v), refs, biases, (nh, nkv, nkv)):
        assert tuple(a.shape) == (3, 5, heads, hd)
        assert_matches(to64(a), ref + b, tol, name, row_axes=2)
    refs = qkv_ref(to64(x), to64(norm.weight), W0, nh, nkv, eps, residual=to64(resid),
                   dtype=dtype)
    for name, a, ref, b in zip("qkv", (q2, k2, v2), refs, biases):
        assert_matches(to64(a), ref + b, tol, name + " (residual)", row_axes=2)
    assert_same_values(to64(new_res), refs[3], "new_residual")


@pytest.mark.parametrize("device", DEVICES)
def test_fused_proj_from_merged_shares_weight(device, rng):
    torch = _torch()
    mvt = _mvt()
    dev = _device(torch, device)
    H, nh, nkv, hd = 256, 4, 4, 32
    N = (nh + 2 * nkv) * hd
    norm = torch.nn.RMSNorm(H, eps=None, device=dev)
    with torch.no_grad():
        norm.weight.copy_(torch.from_numpy(norm_weight(rng, H)))
    qkv_proj = torch.nn.Linear(H, N, bias=False, device=dev)
    fused = mvt.FusedRMSNormQKVProj.from_merged(norm, qkv_proj, nh, nkv)
    assert fused.qkv_weight is qkv_proj.weight and fused.norm_weight is norm.weight
    assert fused.eps == torch.finfo(torch.float32).eps  # torch.nn.RMSNorm's eps=None rule
    x = torch.from_numpy(rng.standard_normal((7, H)).astype(np.float32)).to(dev)
    with torch.no_grad():
        q, k, v = fused(x)
        # the module equals the unfused torch computation it replaces
        qkv = qkv_proj(norm(x))
    _sync(torch, dev)
    got = torch.cat([q.flatten(1), k.flatten(1), v.flatten(1)], 1)
    assert_matches(to64(got), to64(qkv), 1e-5, "q|k|v vs torch RMSNorm + Linear")


def test_fused_proj_errors():
    torch = _torch()
    mvt = _mvt()
    norm = _norm_module(torch, torch.ones(64), 1e-6)
    lin = torch.nn.Linear
    with pytest.raises(ValueError, match="^num_heads: "):
        mvt.FusedRMSNormQKVProj.from_modules(norm, lin(64, 64), lin(64, 32), lin(64, 32))
    with pytest.raises(ValueError, match="^v_proj: "):
        mvt.FusedRMSNormQKVProj.from_modules(norm, lin(64, 64), lin(64, 32), lin(64, 16),
                                             num_heads=4, num_kv_heads=2)
    with pytest.raises(ValueError, match="^q_proj, k_proj, v_proj: "):
        mvt.FusedRMSNormQKVProj.from_modules(norm, lin(64, 64), lin(64, 32, bias=False),
                                             lin(64, 32), num_heads=4)
    with pytest.raises(ValueError, match="^qkv_weight: "):
        mvt.FusedRMSNormQKVProj.from_merged(norm, lin(32, 128), 4, 2)
    with pytest.raises(ValueError, match="^norm: "):
        mvt.FusedRMSNormQKVProj.from_merged(torch.nn.Identity(), lin(64, 128), 4, 2)
    with pytest.raises(ValueError, match="^qkv_weight: .* but norm_weight is"):
        mvt.FusedRMSNormQKVProj(torch.ones(64), torch.ones(128, 64, dtype=torch.float16), 4, 2)


# --------------------------------------------------------------------------------------------
# torch.compile
# --------------------------------------------------------------------------------------------
def _tiny_block(torch, mvt, H, nh, nkv, hd, dev, td, rng):
    """A decoder-layer-shaped block that calls every op: fused norm+QKV (with the residual, and a
    bias), attention, output projection, in-place add+norm, plain norm."""

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            N = (nh + 2 * nkv) * hd
            W = torch.from_numpy(rng.standard_normal((N, H)) / np.sqrt(H)).to(dev, td)
            self.qkv = mvt.FusedRMSNormQKVProj(
                torch.from_numpy(norm_weight(rng, H)).to(dev, td), W, nh, nkv, 1e-6,
                qkv_bias=torch.from_numpy(rng.standard_normal(N) / 10).to(dev, td))
            self.o_proj = torch.nn.Linear(nh * hd, H, bias=False, device=dev, dtype=td)
            self.post_norm = torch.nn.Parameter(
                torch.from_numpy(norm_weight(rng, H)).to(dev, td), requires_grad=False)

        def forward(self, x, residual):
            q, k, v, residual = self.qkv(x, residual=residual)
            attn = torch.nn.functional.scaled_dot_product_attention(
                q.transpose(-3, -2), k.transpose(-3, -2), v.transpose(-3, -2),
                is_causal=True, enable_gqa=True)
            out = self.o_proj(attn.transpose(-3, -2).flatten(-2))
            out, residual = mvt.fused_add_rms_norm_(out, residual, self.post_norm)
            return mvt.rms_norm(out * 2, self.post_norm), residual

    return Block()


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph(device, rng):
    """fullgraph=True compiles a block calling the ops without a graph break, and gives the
    eager results (inputs of two lengths: the graph is reused or recompiled, never broken)."""
    torch = _torch()
    mvt = _mvt()
    dev = _device(torch, device)
    import torch._dynamo
    torch._dynamo.reset()
    td = torch.bfloat16 if dev.type == "cuda" else torch.float32
    H, nh, nkv, hd = 256, 4, 2, 64
    block = _tiny_block(torch, mvt, H, nh, nkv, hd, dev, td, rng).eval()
    backend = "inductor" if dev.type == "cuda" else "aot_eager"
    compiled = torch.compile(block, backend=backend, fullgraph=True)
    for T in (9, 33):
        x = torch.from_numpy(rng.standard_normal((2, T, H))).to(dev, td)
        r = torch.from_numpy(rng.standard_normal((2, T, H))).to(dev, td)
        with torch.inference_mode():
            want = block(x, r)
            got = compiled(x, r)
        _sync(torch, dev)
        dtype = "bfloat16" if td == torch.bfloat16 else "float32"
        for name, a, b in zip(("out", "residual"), got, want):
            assert torch.isfinite(b).all()
            # same kernels on the same inputs; inductor may fuse the torch ops around them
            assert_matches(to64(a), to64(b), 2 * TOL[dtype], f"compiled {name} (T={T})")


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_inplace_mutates_caller_tensors(device, rng):
    """The declared mutation survives functionalization: a compiled function's in-place op
    writes the caller's x and residual, as eager does."""
    torch = _torch()
    mvt = _mvt()
    dev = _device(torch, device)
    import torch._dynamo
    torch._dynamo.reset()
    backend = "inductor" if dev.type == "cuda" else "aot_eager"

    def step(x, residual, weight):
        mvt.fused_add_rms_norm_(x, residual, weight)
        return x.sum()

    compiled = torch.compile(step, backend=backend, fullgraph=True)
    H = 512
    x = _tt(torch, rng.standard_normal((4, H)), "float32", dev)
    r = _tt(torch, rng.standard_normal((4, H)), "float32", dev)
    w = _tt(torch, norm_weight(rng, H), "float32", dev)
    x0, r0 = to64(x), to64(r)
    total = compiled(x, r, w)
    _sync(torch, dev)
    ref_n, ref_s = fused_add_rms_norm_ref(x0, r0, to64(w), 1e-6, "float32")
    assert_same_values(to64(r), ref_s, "residual")
    assert_matches(to64(x), ref_n, TOL["float32"], "x")
    assert abs(float(total) - ref_n.sum()) <= 1e-3 * np.abs(ref_n).sum()


# --------------------------------------------------------------------------------------------
# CUDA graphs
# --------------------------------------------------------------------------------------------
def test_cuda_graph_capture_of_a_layer(rng):
    """A block using the ops, captured with torch.cuda.graph: replays with new inputs give
    fresh, correct results (the ops launch on the capture stream and allocate from its pool)."""
    torch = _torch()
    mvt = _mvt()
    dev = _device(torch, "cuda")
    td, dtype = torch.bfloat16, "bfloat16"
    H, nh, nkv, hd, T = 512, 8, 2, 64, 16
    N = (nh + 2 * nkv) * hd
    fused = mvt.FusedRMSNormQKVProj(_tt(torch, norm_weight(rng, H), dtype, dev),
                                    _tt(torch, rng.standard_normal((N, H)) / 20, dtype, dev),
                                    nh, nkv)
    post = _tt(torch, norm_weight(rng, H), dtype, dev)
    x = torch.zeros(T, H, device=dev, dtype=td)
    r = torch.zeros(T, H, device=dev, dtype=td)

    def layer():
        q, k, v, new_res = fused(x, residual=r)
        normed = mvt.rms_norm(new_res, post)
        y = x.clone()
        res = r.clone()
        mvt.fused_add_rms_norm_(y, res, post)
        return q, k, v, new_res, normed, y, res

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    # no_grad, not inference_mode: the test refills the captured outputs between replays, and
    # inference tensors cannot be written outside inference mode
    with torch.cuda.stream(side), torch.no_grad():
        for _ in range(2):
            layer()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph):
        outs = layer()
    for _ in range(3):
        x.copy_(_tt(torch, rng.standard_normal((T, H)), dtype, dev))
        r.copy_(_tt(torch, rng.standard_normal((T, H)), dtype, dev))
        for o in outs:
            o.fill_(float("nan"))
        torch.cuda.synchronize()
        x0, r0 = to64(x), to64(r)
        graph.replay()
        torch.cuda.synchronize()
        q, k, v, new_res, normed, y, res = outs
        refs = qkv_ref(x0, to64(fused.norm_weight), to64(fused.qkv_weight), nh, nkv, 1e-6,
                       residual=r0, dtype=dtype)
        for name, a, ref in zip("qkv", (q, k, v), refs[:3]):
            assert_matches(to64(a), ref, QKV_TOL[dtype], name, row_axes=2)
        assert_same_values(to64(new_res), refs[3], "new_residual")
        assert_matches(to64(normed), rms_norm_ref(refs[3], to64(post), 1e-6), TOL[dtype],
                       "rms_norm")
        ref_n, ref_s = fused_add_rms_norm_ref(x0, r0, to64(post), 1e-6, dtype)
        assert_same_values(to64(res), ref_s, "residual (in place)")
        assert_matches(to64(y), ref_n, TOL[dtype], "x (in place)")


def test_torch_compile_reduce_overhead(rng):
    """torch.compile(mode="reduce-overhead") — inductor plus CUDA-graph trees — of the block:
    repeated calls (graph replays) match eager."""
    torch = _torch()
    mvt = _mvt()
    dev = _device(torch, "cuda")
    import torch._dynamo
    torch._dynamo.reset()
    H, nh, nkv, hd = 256, 4, 2, 64
    block = _tiny_block(torch, mvt, H, nh, nkv, hd, dev, torch.bfloat16, rng).eval()
    compiled = torch.compile(block, mode="reduce-overhead", fullgraph=True)
    for _ in range(4):
        x = torch.from_numpy(rng.standard_normal((1, 8, H))).to(dev, torch.bfloat16)
        r = torch.from_numpy(rng.standard_normal((1, 8, H))).to(dev, torch.bfloat16)
        with torch.inference_mode():
            want = [t.clone() for t in block(x, r)]
            got = [t.clone() for t in compiled(x, r)]
        torch.cuda.synchronize()
        for name, a, b in zip(("out", "residual"), got, want):
            assert_matches(to64(a), to64(b), 2 * TOL["bfloat16"], f"reduce-overhead {name}")


@pytest.mark.parametrize("lead", [(), (0,), (1,), (3,), (2, 3), (0, 3), (2, 1, 3)])
def test_split_qkv_views(lead):
    """split_qkv: q, k, v are the heads of the packed [..., heads, head_dim] buffer, in that
    order, views of its storage (no copy), whatever the leading dimensions."""
    torch = _torch()
    mvt = _mvt()
    nh, nkv, hd = 4, 2, 8
    heads = nh + 2 * nkv
    rows = int(np.prod(lead)) if lead else 1
    base = torch.arange(5 + rows * heads * hd, dtype=torch.float32)
    packed = base[5:].view(*lead, heads, hd)  # a storage offset, as a view of a larger buffer has
    q, k, v = mvt.split_qkv(packed, nh, nkv)
    for t, count, first in ((q, nh, 0), (k, nkv, nh), (v, nkv, nh + nkv)):
        assert t.shape == (*lead, count, hd)
        assert torch.equal(t, packed[..., first:first + count, :])
        t.add_(0)  # a view of packed's storage, not a copy
        assert t.untyped_storage().data_ptr() == packed.untyped_storage().data_ptr()


@pytest.mark.parametrize("device", DEVICES)
def test_qkv_ops_take_tensor_subclasses(device, rng):
    """A torch subclass (which minivllm reads through __dlpack__, not the plain-tensor route)
    through the registered QKV and prologue ops: same values as plain tensors."""
    torch = _torch()
    mvt = _mvt()
    dev = _device(torch, device)

    class Tagged(torch.Tensor):
        pass

    M, H, nh, nkv, hd = 3, 128, 4, 2, 16
    N = (nh + 2 * nkv) * hd
    x = _tt(torch, rng.standard_normal((M, H)), "float32", dev)
    r = _tt(torch, rng.standard_normal((M, H)), "float32", dev)
    w = _tt(torch, norm_weight(rng, H), "float32", dev)
    W = _tt(torch, rng.standard_normal((N, H)) / np.sqrt(H), "float32", dev)
    tagged = x.as_subclass(Tagged)
    plain = mvt.fused_rms_norm_qkv(x, w, W, nh, nkv, residual=r)
    got = mvt.fused_rms_norm_qkv(tagged, w, W, nh, nkv, residual=r)
    plain_p = mvt.attention_prologue(x, w, W, nh, nkv, residual=r)
    got_p = mvt.attention_prologue(tagged, w, W, nh, nkv, residual=r)
    # plain x, the other tensors subclasses: the registered op reads them through __dlpack__
    got_o = mvt.attention_prologue(x, w.as_subclass(Tagged), W.as_subclass(Tagged), nh, nkv,
                                   residual=r.as_subclass(Tagged))
    _sync(torch, dev)
    for a, b, name in zip((*got, *got_p, *got_o), (*plain, *plain_p, *plain_p),
                          ("q", "k", "v", "residual") * 3):
        assert a.shape == b.shape, name
        assert_same_values(to64(a.as_subclass(torch.Tensor)), to64(b), f"{name} (subclass)")


# --------------------------------------------------------------------------------------------
# eager calls without the dispatcher
# --------------------------------------------------------------------------------------------
def test_direct_only_when_nothing_watches():
    """The entry points skip the dispatcher only for plain tensors with grad mode off and no
    torch.compile tracing, dispatch or function mode, profiler or functorch transform."""
    torch = _torch()
    mvt = _mvt()
    from torch.utils._python_dispatch import TorchDispatchMode
    x = torch.ones(2, 8)

    class Tagged(torch.Tensor):
        pass

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    class Functions(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    assert torch.is_grad_enabled() and not mvt._direct(x)
    with torch.no_grad():
        assert mvt._direct(x, None, x)
        assert not mvt._direct(x, x.as_subclass(Tagged))
        with Watch():
            assert not mvt._direct(x)
        with Functions():
            assert not mvt._direct(x)
        with torch.profiler.profile():
            assert not mvt._direct(x)
        seen = []
        torch.func.vmap(lambda t: seen.append(mvt._direct(t)) or t)(x)
        assert seen == [False]
    with torch.inference_mode():
        assert mvt._direct(x)


@pytest.mark.parametrize("device", DEVICES)
def test_watchers_see_the_op(device, rng):
    """A dispatch mode and the profiler see the registered op when they are active (grad mode
    off, where the entry points otherwise call the implementation directly), and the results
    are those of the direct call."""
    torch = _torch()
    mvt = _mvt()
    dev = _device(torch, device)
    from torch.utils._python_dispatch import TorchDispatchMode

    class Record(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(str(func))
            return func(*args, **(kwargs or {}))

    M, H, nh, nkv, hd = 3, 64, 2, 1, 16
    N = (nh + 2 * nkv) * hd
    x = _tt(torch, rng.standard_normal((M, H)), "float32", dev)
    w = _tt(torch, norm_weight(rng, H), "float32", dev)
    W = _tt(torch, rng.standard_normal((N, H)) / np.sqrt(H), "float32", dev)
    with torch.no_grad():
        direct = (mvt.rms_norm(x, w), *mvt.attention_prologue(x, w, W, nh, nkv, residual=x))
        record = Record()
        with record:
            watched = (mvt.rms_norm(x, w), *mvt.attention_prologue(x, w, W, nh, nkv, residual=x))
        with torch.profiler.profile() as prof:
            mvt.attention_prologue(x, w, W, nh, nkv)
    _sync(torch, dev)
    assert "minivllm.rms_norm.default" in record.ops
    assert "minivllm.attention_prologue.default" in record.ops
    assert any(e.key == "minivllm::attention_prologue" for e in prof.key_averages())
    for a, b in zip(direct, watched):
        assert torch.equal(a, b)


@pytest.mark.parametrize("device", DEVICES)
def test_direct_calls_bump_versions_of_written_tensors(device, rng):
    """Under no_grad the direct call bumps the version counters of the tensors it writes in
    place (the caches, fused_add_rms_norm_'s x and residual), as the dispatcher does for the
    schema's (a!) arguments; inference tensors in inference mode take it without one."""
    torch = _torch()
    mvt = _mvt()
    dev = _device(torch, device)
    M, H, nh, nkv, hd = 2, 64, 2, 1, 16
    N = (nh + 2 * nkv) * hd
    x = _tt(torch, rng.standard_normal((M, H)), "float32", dev)
    w = _tt(torch, norm_weight(rng, H), "float32", dev)
    W = _tt(torch, rng.standard_normal((N, H)) / np.sqrt(H), "float32", dev)
    kc = torch.zeros(2, 4, nkv, hd, device=dev)
    vc = torch.zeros(2, 4, nkv, hd, device=dev)
    slots = torch.tensor([0, 5], device=dev)
    xi, ri = x.clone(), x.clone()
    before = [t._version for t in (kc, vc, xi, ri)]
    with torch.no_grad():
        assert mvt._direct(x)
        mvt.attention_prologue(x, w, W, nh, nkv, k_cache=kc, v_cache=vc, slot_mapping=slots)
        mvt.fused_add_rms_norm_(xi, ri, w)
    assert all(t._version > b for t, b in zip((kc, vc, xi, ri), before))
    with torch.inference_mode():
        kci, vci = torch.zeros_like(kc), torch.zeros_like(vc)
        mvt.attention_prologue(x, w, W, nh, nkv, k_cache=kci, v_cache=vci, slot_mapping=slots)
    _sync(torch, dev)
    assert torch.equal(kci, kc) and torch.equal(vci, vc)
