"""The torch fast path: plain torch tensors are read through torch._C, allocated with
x.new_empty and run on torch's current stream, all from C, never through Tensor.__dlpack__.
Checked here: that route is the one taken, gives the same results as the float64 references,
keeps torch's rules on outputs, names arguments in errors, leaks nothing, and that torch
subclasses and mixed kinds still take the generic route. (Speed: benchmarks/host_cost.py.)"""
import gc
import sys
import weakref

import numpy as np
import pytest

import minivllm
from conftest import norm_weight, round_np, to64
from reference import (QKV_TOL, TOL, assert_matches, assert_same_values,
                       fused_add_rms_norm_ref, qkv_ref, rms_norm_ref)

torch = pytest.importorskip("torch", reason="PyTorch is not installed")

DTYPES = ("float32", "float16", "bfloat16")
NO_CUDA = "no CUDA device (minivllm.cuda_available() is False, or torch has no CUDA)"


def _devices():
    cuda = minivllm.cuda_available() and torch.cuda.is_available()
    return ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not cuda, reason=NO_CUDA))]


DEVICES = _devices()


def _tensor(data64, dtype, device):
    """Exact torch copy of round_np(data64, dtype) on device."""
    a = np.array(round_np(data64, dtype), order="C", copy=True)
    t = torch.from_numpy(a.view(np.int16)).view(torch.bfloat16) if dtype == "bfloat16" \
        else torch.from_numpy(a)
    return t.to(device)


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


@pytest.fixture(autouse=True, params=["exchange", "torch._C"])
def torch_route(request):
    """Every test twice: tensors, streams and new outputs through torch's DLPack exchange table
    (C entry points, torch >= 2.10), and through torch._C's Python entry points (older torch)."""
    use_table = request.param == "exchange"
    if minivllm._C._torch_exchange(use_table) != use_table:
        minivllm._C._torch_exchange(True)
        pytest.skip("this torch has no DLPack exchange table (torch.Tensor."
                    "__dlpack_c_exchange_api__, torch >= 2.10)")
    yield request.param
    minivllm._C._torch_exchange(True)


@pytest.fixture
def no_torch_dlpack(monkeypatch):
    """Tensor.__dlpack__ raises: a call that still works never went through it."""
    def refuse(self, *args, **kwargs):
        raise AssertionError("Tensor.__dlpack__ was called on the torch fast path")
    monkeypatch.setattr(torch.Tensor, "__dlpack__", refuse)


def _problem(rng, dtype, device, M=3, H=384, nh=4, nkv=2, hd=32):
    """Inputs of all three ops; N = 256 != H, so qkv_weight's layout is told by shape."""
    N = (nh + 2 * nkv) * hd
    x = _tensor(rng.standard_normal((M, H)), dtype, device)
    r = _tensor(rng.standard_normal((M, H)), dtype, device)
    w = _tensor(norm_weight(rng, H), dtype, device)
    W = _tensor(rng.standard_normal((N, H)) / np.sqrt(H), dtype, device)
    return x, r, w, W, (nh, nkv, hd)


def test_plain_tensors_are_registered_for_the_fast_path(rng):
    minivllm.rms_norm(torch.ones(2, 8), torch.ones(8))
    assert minivllm._C.torch_fast_path() is True
    from minivllm import _kinds
    assert torch.Tensor in _kinds.TORCH_TYPES and torch.nn.Parameter in _kinds.TORCH_TYPES


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_all_ops_without_tensor_dlpack(no_torch_dlpack, dtype, device, rng):
    minivllm.rms_norm(torch.ones(2, 8), torch.ones(8))  # the first sight of torch registers it
    x, r, w, W, (nh, nkv, hd) = _problem(rng, dtype, device)
    x0, r0, w0, W0 = to64(x), to64(r), to64(w), to64(W)
    td, dev = x.dtype, x.device

    y = minivllm.rms_norm(x, w)
    n, s = minivllm.fused_add_rms_norm(x, r, w)
    q, k, v = minivllm.FusedRMSNormQKV.forward(x, w, W.t(), nh, nkv)
    q2, k2, v2, s2 = minivllm.FusedRMSNormQKV.forward(x, w, W, nh, nkv, 1e-6, residual=r)
    out = torch.full_like(x, float("nan"))
    assert minivllm.rms_norm(x, w, out=out) is out
    _sync(device)

    for a, shape in ((y, x.shape), (n, x.shape), (s, x.shape), (q, (3, nh, hd)),
                     (k, (3, nkv, hd)), (v, (3, nkv, hd)), (s2, x.shape)):
        assert type(a) is torch.Tensor and a.dtype == td and a.device == dev
        assert tuple(a.shape) == tuple(shape)
        assert not a.requires_grad
    assert_matches(to64(y), rms_norm_ref(x0, w0, 1e-6), TOL[dtype], "rms_norm")
    assert_matches(to64(out), rms_norm_ref(x0, w0, 1e-6), TOL[dtype], "rms_norm out=")
    ref_n, ref_s = fused_add_rms_norm_ref(x0, r0, w0, 1e-6, dtype)
    assert_matches(to64(n), ref_n, TOL[dtype], "normed")
    assert_same_values(to64(s), ref_s, "new_residual")
    refs = qkv_ref(x0, w0, W0, nh, nkv, 1e-6)
    for name, a, a2, ref in zip("qkv", (q, k, v), (q2, k2, v2), refs):
        assert_matches(to64(a), ref, QKV_TOL[dtype], name, row_axes=2)
    refs = qkv_ref(x0, w0, W0, nh, nkv, 1e-6, residual=r0, dtype=dtype)
    for name, a, ref in zip("qkv", (q2, k2, v2), refs[:3]):
        assert_matches(to64(a), ref, QKV_TOL[dtype], name + " (with residual)", row_axes=2)
    assert_same_values(to64(s2), refs[3], "new_residual (qkv)")
    assert_same_values(to64(x), x0, "x")
    assert_same_values(to64(r), r0, "residual")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("lead", [(0,), (1,), (5,), (2, 3)])
def test_qkv_results_are_views_of_one_allocation(no_torch_dlpack, lead, device, rng):
    """q, k, v come back as vLLM's qkv.split(...) gives them: views of one [..., heads, hd]
    tensor (one allocation), rows N elements apart; correct for any leading dimensions."""
    H, nh, nkv, hd = 384, 4, 2, 32
    N = (nh + 2 * nkv) * hd
    x = _tensor(rng.standard_normal(lead + (H,)), "float16", device)
    w = _tensor(norm_weight(rng, H), "float16", device)
    W = _tensor(rng.standard_normal((N, H)) / np.sqrt(H), "float16", device)
    q, k, v = minivllm.FusedRMSNormQKV.forward(x, w, W.t(), nh, nkv)
    y = minivllm.rms_norm(x, w)
    _sync(device)
    assert y.is_contiguous()
    row_strides = tuple(np.cumprod((1,) + lead[::-1][:-1])[::-1] * N) if lead else ()
    element = q.element_size()
    for a, heads, first_head in ((q, nh, 0), (k, nkv, nh), (v, nkv, nh + nkv)):
        assert tuple(a.shape) == lead + (heads, hd)
        if x.numel():
            assert a.data_ptr() == q.data_ptr() + first_head * hd * element
            assert a.stride() == row_strides + (hd, 1)
    refs = qkv_ref(to64(x), to64(w), to64(W), nh, nkv, 1e-6)
    for name, a, ref in zip("qkv", (q, k, v), refs):
        assert_matches(to64(a), ref, QKV_TOL["float16"], name, row_axes=2)


@pytest.mark.parametrize("device", DEVICES)
def test_qkv_views_outlive_each_other(no_torch_dlpack, device, rng):
    """q, k and v share one block: it lives until the last of them goes, whichever that is (a
    block freed with the first would be handed to the next allocation of its size here)."""
    x, r, w, W, (nh, nkv, hd) = _problem(rng, "float16", device)
    refs = qkv_ref(to64(x), to64(w), to64(W), nh, nkv, 1e-6)
    for keep in range(3):
        results = list(minivllm.FusedRMSNormQKV.forward(x, w, W, nh, nkv))
        kept = results[keep]
        del results
        gc.collect()
        junk = [torch.full((x.shape[0], nh + 2 * nkv, hd), float("nan"), dtype=x.dtype,
                           device=x.device) for _ in range(8)]
        _sync(device)
        assert_matches(to64(kept), refs[keep], QKV_TOL["float16"], "qkv"[keep], row_axes=2)
        del junk, kept


@pytest.mark.parametrize("device", DEVICES)
def test_in_place_forms_on_the_fast_path(no_torch_dlpack, device, rng):
    x, r, w, W, (nh, nkv, hd) = _problem(rng, "bfloat16", device)
    x2 = _tensor(rng.standard_normal(x.shape), "bfloat16", device)
    x0, r0, w0, x20 = to64(x), to64(r), to64(w), to64(x2)
    normed, new_residual = minivllm.fused_add_rms_norm(x, r, w, inplace=True)
    assert normed is x and new_residual is r
    assert minivllm.rms_norm(x2, w, out=x2) is x2
    _sync(device)
    ref_n, ref_s = fused_add_rms_norm_ref(x0, r0, w0, 1e-6, "bfloat16")
    assert_same_values(to64(r), ref_s, "residual (in place)")
    assert_matches(to64(x), ref_n, TOL["bfloat16"], "x (in place)")
    assert_matches(to64(x2), rms_norm_ref(x20, w0, 1e-6), TOL["bfloat16"], "rms_norm out=x")


@pytest.mark.parametrize("device", DEVICES)
def test_weights_that_require_grad_are_read_as_data(no_torch_dlpack, device, rng):
    """nn.Parameter weights (requires_grad=True) need no .detach() on the fast path, and the
    results are plain tensors outside autograd."""
    x, r, w, W, (nh, nkv, hd) = _problem(rng, "float32", device)
    gamma = torch.nn.Parameter(w.clone())
    weight = torch.nn.Parameter(W.clone())
    assert gamma.requires_grad and weight.requires_grad
    q, k, v = minivllm.FusedRMSNormQKV.forward(x, gamma, weight.t(), nh, nkv)
    y = minivllm.rms_norm(x, gamma)
    _sync(device)
    assert not q.requires_grad and not y.requires_grad and q.grad_fn is None
    refs = qkv_ref(to64(x), to64(w), to64(W), nh, nkv, 1e-6)
    for name, a, ref in zip("qkv", (q, k, v), refs):
        assert_matches(to64(a), ref, QKV_TOL["float32"], name, row_axes=2)
    assert_matches(to64(y), rms_norm_ref(to64(x), to64(w), 1e-6), TOL["float32"], "rms_norm")


@pytest.mark.parametrize("device", DEVICES)
def test_outputs_that_require_grad_are_refused(device, rng):
    """Writing into a tensor autograd tracks would corrupt its gradients, as __dlpack__ says."""
    x, r, w, W, (nh, nkv, hd) = _problem(rng, "float32", device)
    out = torch.zeros_like(x, requires_grad=True)
    with pytest.raises(ValueError, match=r"^out: requires grad"):
        minivllm.rms_norm(x, w, out=out)
    leaf = x.clone().requires_grad_(True)
    with pytest.raises(ValueError, match=r"^x: requires grad"):
        minivllm.fused_add_rms_norm(leaf, r, w, inplace=True)
    assert torch.all(out == 0)


@pytest.mark.parametrize("device", DEVICES)
def test_errors_name_the_argument(device, rng):
    x, r, w, W, (nh, nkv, hd) = _problem(rng, "bfloat16", device)
    with pytest.raises(TypeError, match=r"^weight: dtype float16 does not match x's dtype"):
        minivllm.rms_norm(x, w.half())
    with pytest.raises(ValueError, match=r"^residual: expected shape \(3, 384\)"):
        minivllm.fused_add_rms_norm(x, r[:2], w)
    with pytest.raises(ValueError, match=r"^qkv_weight: expected shape \(N, 384\)"):
        minivllm.FusedRMSNormQKV.forward(x, w, W[:, :128], nh, nkv)
    with pytest.raises(TypeError, match=r"^weight: unsupported dtype int32"):
        minivllm.rms_norm(x, torch.ones(384, dtype=torch.int32, device=device))
    with pytest.raises(TypeError, match=r"^num_heads: expected an int"):
        minivllm.FusedRMSNormQKV.forward(x, w, W, 4.0, nkv)
    sparse = torch.ones(384, device=device).to_sparse()
    with pytest.raises(TypeError, match=r"^weight: "):
        minivllm.rms_norm(x.float(), sparse)


def test_tensors_torch_cannot_export_name_the_argument():
    x = torch.empty(2, 64, device="meta")
    with pytest.raises(TypeError, match=r"^x: "):
        minivllm.rms_norm(x, torch.empty(64, device="meta"))


def test_route_switch_is_restored(torch_route):
    """_torch_exchange(None) reads the route without changing it, and benchmarks/host_cost.py's
    torch._C-route context leaves it as it found it (it once left the table off, so the rest of
    a run timed the slower route under the fast path's name)."""
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "host_cost.py"
    spec = importlib.util.spec_from_file_location("_host_cost_under_test", path)
    host_cost = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(host_cost)
    before = minivllm._C._torch_exchange(None)
    assert before is (torch_route == "exchange")
    assert minivllm._C._torch_exchange(None) is before  # reading changed nothing
    with host_cost.torch_c_route(minivllm):
        assert minivllm._C._torch_exchange(None) is False
    assert minivllm._C._torch_exchange(None) is before


@pytest.mark.parametrize("device", DEVICES)
def test_nothing_is_leaked(device, rng):
    """Every capsule's deleter runs: inputs are freed after the call, refcounts come back, and
    the results own their memory alone."""
    x, r, w, W, (nh, nkv, hd) = _problem(rng, "float16", device)
    for _ in range(3):  # warm-up: first-call caches
        minivllm.FusedRMSNormQKV.forward(x, w, W, nh, nkv, residual=r)
    before = [sys.getrefcount(a) for a in (x, r, w, W)]
    for _ in range(50):
        minivllm.FusedRMSNormQKV.forward(x, w, W, nh, nkv, residual=r)
        minivllm.fused_add_rms_norm(x, r, w)
        minivllm.rms_norm(x, w)
    assert [sys.getrefcount(a) for a in (x, r, w, W)] == before
    probe = x.clone()
    alive = weakref.ref(probe)
    results = minivllm.FusedRMSNormQKV.forward(probe, w, W, nh, nkv)
    del probe
    gc.collect()
    assert alive() is None, "the input outlived the call: a DLPack deleter did not run"
    # `results` holds the only reference to each, as to tensors made here
    held_once = [torch.empty(1) for _ in results]
    assert [sys.getrefcount(a) for a in results] == [sys.getrefcount(b) for b in held_once]


class _Tagged(torch.Tensor):
    """A torch subclass: its __torch_function__ could change export, so it takes __dlpack__."""


@pytest.mark.parametrize("device", DEVICES)
def test_subclasses_and_other_kinds_take_the_generic_route(device, rng):
    x, r, w, W, (nh, nkv, hd) = _problem(rng, "float32", device)
    ref = rms_norm_ref(to64(x), to64(w), 1e-6)
    tagged_x = x.as_subclass(_Tagged)
    y = minivllm.rms_norm(tagged_x, w)  # subclass x: the generic route throughout
    _sync(device)
    assert isinstance(y, torch.Tensor)
    assert_matches(to64(y), ref, TOL["float32"], "subclass x")
    tagged_w = torch.nn.Parameter(w.clone()).as_subclass(_Tagged).requires_grad_(True)
    y = minivllm.rms_norm(x, tagged_w)  # plain x, subclass weight that requires grad
    _sync(device)
    assert type(y) is torch.Tensor
    assert_matches(to64(y), ref, TOL["float32"], "subclass weight")
    if device == "cpu":  # a NumPy weight with a torch x: the weight through NumPy's DLPack
        y = minivllm.rms_norm(x, w.numpy())
        assert type(y) is torch.Tensor
        assert_matches(to64(y), ref, TOL["float32"], "numpy weight")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_torch_op_convention(device, dtype, rng, no_torch_dlpack):
    """alloc=_C.TORCH_OP (what minivllm.torch's registered ops pass): q, k, v come back as one new
    packed [..., heads, head_dim] tensor (per token q's heads, then k's, then v's), with the new
    residual beside it, and qkv_weight is read as nn.Linear's [N, H] even when it is square and
    its rows are not contiguous (the other convention would take that for W.t());
    alloc=_C.TORCH_LINEAR (minivllm.torch's entry points) reads it the same way and returns
    q, k, v as the Python API does."""
    op = minivllm._C.TORCH_OP
    M, H, nh, nkv, hd = 5, 64, 2, 1, 16  # N = 64 = H: square
    x = _tensor(rng.standard_normal((M, H)), dtype, device)
    r = _tensor(rng.standard_normal((M, H)), dtype, device)
    w = _tensor(norm_weight(rng, H), dtype, device)
    W = _tensor(rng.standard_normal((H, H)) / np.sqrt(H), dtype, device)
    for name, weight in (("contiguous", W), ("rows not contiguous", W.t().contiguous().t())):
        assert torch.equal(weight, W)
        packed = minivllm._C.fused_rms_norm_qkv(x, w, weight, nh, nkv, 1e-6, None, None, None,
                                                None, None, op, None, None, None)
        packed2, new_residual = minivllm._C.fused_rms_norm_qkv(
            x, w, weight, nh, nkv, 1e-6, r, None, None, None, None, op, None, None, None)
        _sync(device)
        for t in (packed, packed2):
            assert type(t) is torch.Tensor and t.shape == (M, nh + 2 * nkv, hd)
            assert t.is_contiguous() and t.dtype == x.dtype and t.device == x.device
        refs = qkv_ref(to64(x), to64(w), to64(W), nh, nkv, 1e-6)
        refs2 = qkv_ref(to64(x), to64(w), to64(W), nh, nkv, 1e-6, residual=to64(r), dtype=dtype)
        for got, want, what in ((packed, refs, ""), (packed2, refs2[:3], " (residual)")):
            parts = got.split_with_sizes((nh, nkv, nkv), -2)
            for part, ref, label in zip(parts, want, "qkv"):
                assert_matches(to64(part), ref, QKV_TOL[dtype], f"{label}{what}, {name}",
                               row_axes=2)
        assert_same_values(to64(new_residual), refs2[3], f"new residual, {name}")
    linear = minivllm._C.TORCH_LINEAR  # the same layout rule, results as TORCH_KIND's
    for name, weight in (("contiguous", W), ("rows not contiguous", W.t().contiguous().t())):
        q, k, v = minivllm._C.fused_rms_norm_qkv(x, w, weight, nh, nkv, 1e-6, None, None, None,
                                                 None, None, linear, None, None, None)
        *qkv2, new_residual = minivllm._C.fused_rms_norm_qkv(
            x, w, weight, nh, nkv, 1e-6, r, None, None, None, None, linear, None, None, None)
        _sync(device)
        refs = qkv_ref(to64(x), to64(w), to64(W), nh, nkv, 1e-6)
        refs2 = qkv_ref(to64(x), to64(w), to64(W), nh, nkv, 1e-6, residual=to64(r), dtype=dtype)
        for got, want, what in (((q, k, v), refs, ""), (qkv2, refs2[:3], " (residual)")):
            for part, ref, label in zip(got, want, "qkv"):
                assert type(part) is torch.Tensor and part.dtype == x.dtype
                assert_matches(to64(part), ref, QKV_TOL[dtype], f"{label}{what}, {name}, linear",
                               row_axes=2)
        assert_same_values(to64(new_residual), refs2[3], f"new residual, {name}, linear")
    with pytest.raises(ValueError, match=r"^qkv_weight: expected shape \(N, 64\) \(the nn.Linear"):
        minivllm._C.fused_rms_norm_qkv(x, w, torch.cat([W, W], 1), nh, nkv, 1e-6, None, None,
                                       None, None, None, linear, None, None, None)
    with pytest.raises(ValueError, match=r"^q: TORCH_OP"):
        minivllm._C.fused_rms_norm_qkv(x, w, W, nh, nkv, 1e-6, None, torch.empty_like(x), None,
                                       None, None, op, None, None, None)
    with pytest.raises(ValueError, match=r"^qkv_weight: expected shape \(N, 64\) \(the nn.Linear"):
        # [H, N]: what the other convention reads as W.t()
        minivllm._C.fused_rms_norm_qkv(x, w, torch.cat([W, W], 1), nh, nkv, 1e-6, None, None,
                                       None, None, None, op, None, None, None)


def test_torch_kind_is_only_for_plain_torch_x():
    x = np.ones((2, 8), np.float32)
    with pytest.raises(TypeError, match=r"^alloc: TORCH_KIND needs"):
        minivllm._C.rms_norm(x, np.ones(8, np.float32), 1e-6, None, minivllm._C.TORCH_KIND, None,
                             None, 0.0, True)


@pytest.mark.skipif(not (minivllm.cuda_available() and torch.cuda.is_available()),
                    reason=NO_CUDA)
def test_cuda_results_follow_the_current_stream(rng):
    """Inputs written on a side stream behind a long kernel, then the call on that stream: the
    fast path must launch there (torch's current stream), so the results see the writes."""
    x, r, w, W, (nh, nkv, hd) = _problem(rng, "bfloat16", "cuda", M=17, H=1024)
    x0, r0, w0, W0 = to64(x), to64(r), to64(w), to64(W)
    xs, rs = torch.full_like(x, float("nan")), torch.full_like(r, float("nan"))
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        torch.cuda._sleep(50_000_000)
        xs.copy_(x)
        rs.copy_(r)
        q, k, v, s = minivllm.FusedRMSNormQKV.forward(xs, w, W.t(), nh, nkv, residual=rs)
        n, s2 = minivllm.fused_add_rms_norm(xs, rs, w)
    side.synchronize()
    refs = qkv_ref(x0, w0, W0, nh, nkv, 1e-6, residual=r0, dtype="bfloat16")
    for name, a, ref in zip("qkv", (q, k, v), refs[:3]):
        assert_matches(to64(a), ref, QKV_TOL["bfloat16"], name, row_axes=2)
    assert_same_values(to64(s), refs[3], "new_residual")
    ref_n, ref_s = fused_add_rms_norm_ref(x0, r0, w0, 1e-6, "bfloat16")
    assert_matches(to64(n), ref_n, TOL["bfloat16"], "normed")
    assert_same_values(to64(s2), ref_s, "new_residual (fused add)")
