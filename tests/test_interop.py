"""PyTorch / CuPy / JAX in, the same kind out; streams and CUDA graphs (torch)."""
import time

import numpy as np
import pytest

import minivllm
from conftest import norm_weight, round_np, to64
from reference import (QKV_TOL, TOL, assert_matches, assert_same_values,
                       fused_add_rms_norm_ref, qkv_ref, rms_norm_ref)

NO_CUDA = "no CUDA device (minivllm.cuda_available() is False)"
DTYPES = ("float32", "float16", "bfloat16")


def _torch():
    return pytest.importorskip("torch", reason="PyTorch is not installed")


def _torch_cuda():
    torch = _torch()
    if not minivllm.cuda_available():
        pytest.skip(NO_CUDA)
    if not torch.cuda.is_available():
        pytest.skip("torch.cuda.is_available() is False")
    return torch


def _tt(torch, data64, dtype, device):
    """Exact torch copy of round_np(data64, dtype) on device."""
    a = np.array(round_np(data64, dtype), order="C", copy=True)
    if dtype == "bfloat16":
        t = torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    else:
        t = torch.from_numpy(a)
    return t.to(device)


def _tdtype(torch, dtype):
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]


def _check_torch(torch, r, dtype, device, shape):
    assert isinstance(r, torch.Tensor), type(r)
    assert r.device == torch.device(device), r.device
    assert r.dtype == _tdtype(torch, dtype)
    assert tuple(r.shape) == tuple(shape)


def _all_ops_torch(torch, device, dtype, rng):
    M, H, nh, nkv, hd = 7, 896, 14, 2, 64
    N = (nh + 2 * nkv) * hd
    x = _tt(torch, rng.standard_normal((M, H)), dtype, device)
    r = _tt(torch, rng.standard_normal((M, H)), dtype, device)
    w = _tt(torch, norm_weight(rng, H), dtype, device)
    W = _tt(torch, rng.standard_normal((N, H)) / np.sqrt(H), dtype, device)
    x0, r0, w0, W0 = to64(x), to64(r), to64(w), to64(W)

    y = minivllm.rms_norm(x, w)
    _check_torch(torch, y, dtype, device, (M, H))
    assert_matches(to64(y), rms_norm_ref(x0, w0, 1e-6), TOL[dtype])

    out = torch.full((M, H), float("nan"), dtype=_tdtype(torch, dtype), device=device)
    assert minivllm.rms_norm(x, w, 1e-6, out=out) is out
    assert_matches(to64(out), rms_norm_ref(x0, w0, 1e-6), TOL[dtype])

    n, s = minivllm.fused_add_rms_norm(x, r, w)
    _check_torch(torch, n, dtype, device, (M, H))
    _check_torch(torch, s, dtype, device, (M, H))
    ref_n, ref_s = fused_add_rms_norm_ref(x0, r0, w0, 1e-6, dtype)
    assert_same_values(to64(s), ref_s, "new_residual")
    assert_matches(to64(n), ref_n, TOL[dtype])

    for Warg in (W, W.t(), W.t().contiguous()):
        q, k, v = minivllm.FusedRMSNormQKV.forward(x, w, Warg, nh, nkv)
        for name, a, ref, heads in zip("qkv", (q, k, v), qkv_ref(x0, w0, W0, nh, nkv, 1e-6),
                                       (nh, nkv, nkv)):
            _check_torch(torch, a, dtype, device, (M, heads, hd))
            assert_matches(to64(a), ref, QKV_TOL[dtype], name, row_axes=2)

    xi, ri = x.clone(), r.clone()
    res = minivllm.fused_add_rms_norm(xi, ri, w, inplace=True)
    assert res[0] is xi and res[1] is ri
    assert_same_values(to64(ri), ref_s, "residual (inplace)")
    assert_matches(to64(xi), ref_n, TOL[dtype])
    # inputs untouched by the non-inplace calls
    assert_same_values(to64(x), x0, "x")
    assert_same_values(to64(r), r0, "residual")


# --------------------------------------------------------------------------------------------
# PyTorch
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_torch_cpu(dtype, rng):
    torch = _torch()
    _all_ops_torch(torch, "cpu", dtype, rng)


@pytest.mark.parametrize("dtype", DTYPES)
def test_torch_cuda(dtype, rng):
    torch = _torch_cuda()
    _all_ops_torch(torch, f"cuda:{torch.cuda.current_device()}", dtype, rng)
    torch.cuda.synchronize()


def test_torch_cuda_other_device_index(rng):
    torch = _torch_cuda()
    if torch.cuda.device_count() < 2 or minivllm.cuda_device_count() < 2:
        pytest.skip("needs 2 CUDA devices")
    with torch.cuda.device(0):  # current device 0, tensors on device 1
        _all_ops_torch(torch, "cuda:1", "bfloat16", rng)
    torch.cuda.synchronize(1)


def test_cuda_device_queries():
    assert isinstance(minivllm.cuda_built(), bool)
    assert isinstance(minivllm.cuda_available(), bool)
    n = minivllm.cuda_device_count()
    assert isinstance(n, int) and n >= 0
    if minivllm.cuda_available():
        assert minivllm.cuda_built() and n >= 1
    if not minivllm.cuda_built():
        assert not minivllm.cuda_available() and n == 0
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    if minivllm.cuda_built() and torch.cuda.is_available():
        assert n == torch.cuda.device_count()
        assert minivllm.cuda_available()


def _sleep(torch, seconds):
    """Keep the current stream busy for about `seconds`."""
    if hasattr(torch.cuda, "_sleep"):
        rate = torch.cuda.get_device_properties(torch.cuda.current_device())
        cycles = int(seconds * getattr(rate, "clock_rate", 1_500_000) * 1000) \
            if hasattr(rate, "clock_rate") else int(seconds * 1.5e9)
        torch.cuda._sleep(cycles)
    else:
        a = torch.randn(4096, 4096, device="cuda")
        for _ in range(int(seconds * 200)):
            a = a @ a
            a = a / a.norm()


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_torch_current_stream(dtype, rng):
    """Work is ordered on torch.cuda.current_stream(): inputs written on a side stream right
    before the call (behind a long kernel) must be seen; outputs are ready after s.synchronize()."""
    torch = _torch_cuda()
    dev = torch.device("cuda", torch.cuda.current_device())
    M, H, nh, nkv, hd = 33, 1024, 16, 8, 128
    N = (nh + 2 * nkv) * hd
    td = _tdtype(torch, dtype)
    src_x = _tt(torch, rng.standard_normal((M, H)), dtype, dev)
    src_r = _tt(torch, rng.standard_normal((M, H)), dtype, dev)
    w = _tt(torch, norm_weight(rng, H), dtype, dev)
    W = _tt(torch, rng.standard_normal((N, H)) / np.sqrt(H), dtype, dev)
    x = torch.full((M, H), float("nan"), dtype=td, device=dev)
    r = torch.full((M, H), float("nan"), dtype=td, device=dev)
    out = torch.full((M, H), float("nan"), dtype=td, device=dev)
    torch.cuda.synchronize()
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        _sleep(torch, 0.2)
        x.copy_(src_x)
        r.copy_(src_r)
        y_out = minivllm.rms_norm(x, w, out=out)
        y = minivllm.rms_norm(x, w)
        n, ns = minivllm.fused_add_rms_norm(x, r, w)
        q, k, v = minivllm.FusedRMSNormQKV.forward(x, w, W.t(), nh, nkv)
        assert torch.cuda.current_stream() == s
    s.synchronize()
    x0, r0, w0, W0 = to64(src_x), to64(src_r), to64(w), to64(W)
    assert y_out is out
    assert_matches(to64(out), rms_norm_ref(x0, w0, 1e-6), TOL[dtype], "out")
    assert_matches(to64(y), rms_norm_ref(x0, w0, 1e-6), TOL[dtype], "rms_norm")
    ref_n, ref_s = fused_add_rms_norm_ref(x0, r0, w0, 1e-6, dtype)
    assert_matches(to64(n), ref_n, TOL[dtype], "normed")
    assert_same_values(to64(ns), ref_s, "new_residual")
    for name, a, ref in zip("qkv", (q, k, v), qkv_ref(x0, w0, W0, nh, nkv, 1e-6)):
        assert_matches(to64(a), ref, QKV_TOL[dtype], name, row_axes=2)


def test_torch_call_does_not_synchronize(rng):
    """With the stream busy for ~1 s, the call returns long before (launch only, no sync)."""
    torch = _torch_cuda()
    M, H = 8, 512
    x = torch.randn(M, H, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(H, device="cuda", dtype=torch.bfloat16)
    out = torch.empty_like(x)
    minivllm.rms_norm(x, w, out=out)  # warm-up
    torch.cuda.synchronize()
    _sleep(torch, 1.0)
    t0 = time.perf_counter()
    minivllm.rms_norm(x, w, out=out)
    dt = time.perf_counter() - t0
    torch.cuda.synchronize()
    assert dt < 0.4, f"the call took {dt:.2f} s while the stream was busy: it synchronized"


@pytest.mark.parametrize("dtype", DTYPES)
def test_torch_integration_form(dtype, rng):
    """FusedRMSNormQKV.forward(h, layer_norm.weight, qkv_proj.weight.t(), n_heads, n_kv_heads)."""
    torch = _torch_cuda()
    H, nh, nkv, hd = 896, 14, 2, 64
    N = (nh + 2 * nkv) * hd
    td = _tdtype(torch, dtype)
    with torch.inference_mode():
        qkv_proj = torch.nn.Linear(H, N, bias=False, device="cuda", dtype=td)
        qkv_proj.requires_grad_(False)
        ln_weight = torch.nn.Parameter(
            _tt(torch, norm_weight(rng, H), dtype, "cuda"), requires_grad=False)
        for M in (1, 7, 300):
            h = _tt(torch, rng.standard_normal((M, H)), dtype, "cuda")
            res = minivllm.FusedRMSNormQKV.forward(h, ln_weight, qkv_proj.weight.t(), nh, nkv)
            torch.cuda.synchronize()
            refs = qkv_ref(to64(h), to64(ln_weight), to64(qkv_proj.weight), nh, nkv, 1e-6)
            for name, a, ref, heads in zip("qkv", res, refs, (nh, nkv, nkv)):
                _check_torch(torch, a, dtype, h.device, (M, heads, hd))
                assert_matches(to64(a), ref, QKV_TOL[dtype], name, row_axes=2)
            # with the residual, as in a decoder layer
            resid = _tt(torch, rng.standard_normal((M, H)), dtype, "cuda")
            q, k, v, new_res = minivllm.FusedRMSNormQKV.forward(
                h, ln_weight, qkv_proj.weight.t(), nh, nkv, 1e-6, residual=resid)
            torch.cuda.synchronize()
            refs = qkv_ref(to64(h), to64(ln_weight), to64(qkv_proj.weight), nh, nkv, 1e-6,
                           residual=to64(resid), dtype=dtype)
            for name, a, ref in zip("qkv", (q, k, v), refs[:3]):
                assert_matches(to64(a), ref, QKV_TOL[dtype], name, row_axes=2)
            assert_same_values(to64(new_res), refs[3], "new_residual")
            # q, k, v feed attention: usable with torch ops directly
            assert torch.isfinite(q.float() @ k.float().transpose(-1, -2)).all()


def _capture(torch, body, warmups=2):
    """(graph, what body() returned while captured): body run `warmups` times on a side stream
    first, as torch asks before a capture, then captured in a CUDA graph."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmups):
            body()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        result = body()
    torch.cuda.synchronize()
    return g, result


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_torch_cuda_graph_norms(dtype, rng):
    """Capture rms_norm / fused_add_rms_norm (out= preallocated, and the in-place form) in a
    CUDA graph; replays with new inputs give fresh correct results."""
    torch = _torch_cuda()
    M, H = 16, 1024
    td = _tdtype(torch, dtype)
    x = torch.zeros(M, H, dtype=td, device="cuda")
    r = torch.zeros(M, H, dtype=td, device="cuda")
    xi = torch.zeros(M, H, dtype=td, device="cuda")
    ri = torch.zeros(M, H, dtype=td, device="cuda")
    w = _tt(torch, norm_weight(rng, H), dtype, "cuda")
    out = torch.empty(M, H, dtype=td, device="cuda")
    out2 = torch.empty(M, H, dtype=td, device="cuda")
    rout = torch.empty(M, H, dtype=td, device="cuda")

    def body():
        minivllm.rms_norm(x, w, out=out)
        minivllm.fused_add_rms_norm(x, r, w, out=out2, residual_out=rout)
        minivllm.fused_add_rms_norm(xi, ri, w, inplace=True)

    g, _ = _capture(torch, body)

    w0 = to64(w)
    for _ in range(3):
        for t in (x, r, xi, ri):
            t.copy_(_tt(torch, rng.standard_normal((M, H)), dtype, "cuda"))
        for t in (out, out2, rout):
            t.fill_(float("nan"))
        torch.cuda.synchronize()
        x0, r0, xi0, ri0 = to64(x), to64(r), to64(xi), to64(ri)
        g.replay()
        torch.cuda.synchronize()
        assert_matches(to64(out), rms_norm_ref(x0, w0, 1e-6), TOL[dtype], "out")
        ref_n, ref_s = fused_add_rms_norm_ref(x0, r0, w0, 1e-6, dtype)
        assert_matches(to64(out2), ref_n, TOL[dtype], "out2")
        assert_same_values(to64(rout), ref_s, "residual_out")
        ref_n, ref_s = fused_add_rms_norm_ref(xi0, ri0, w0, 1e-6, dtype)
        assert_matches(to64(xi), ref_n, TOL[dtype], "x (inplace)")
        assert_same_values(to64(ri), ref_s, "residual (inplace)")


def test_torch_cuda_graph_qkv(rng):
    """QKV (which allocates its outputs) captured in a CUDA graph, as vLLM does for decode."""
    torch = _torch_cuda()
    M, H, nh, nkv, hd = 8, 1024, 16, 8, 128
    N = (nh + 2 * nkv) * hd
    td = torch.bfloat16
    h = torch.zeros(M, H, dtype=td, device="cuda")
    resid = torch.zeros(M, H, dtype=td, device="cuda")
    w = _tt(torch, norm_weight(rng, H), "bfloat16", "cuda")
    W = _tt(torch, rng.standard_normal((N, H)) / np.sqrt(H), "bfloat16", "cuda")
    g, (q, k, v, new_res) = _capture(
        torch, lambda: minivllm.FusedRMSNormQKV.forward(h, w, W.t(), nh, nkv, residual=resid))
    for _ in range(2):
        h.copy_(_tt(torch, rng.standard_normal((M, H)), "bfloat16", "cuda"))
        resid.copy_(_tt(torch, rng.standard_normal((M, H)), "bfloat16", "cuda"))
        torch.cuda.synchronize()
        h0, r0 = to64(h), to64(resid)
        g.replay()
        torch.cuda.synchronize()
        refs = qkv_ref(h0, to64(w), to64(W), nh, nkv, 1e-6, residual=r0, dtype="bfloat16")
        for name, a, ref in zip("qkv", (q, k, v), refs[:3]):
            assert_matches(to64(a), ref, QKV_TOL["bfloat16"], name, row_axes=2)
        assert_same_values(to64(new_res), refs[3], "new_residual")


@pytest.mark.parametrize("rows, form", [(r, f) for r in (32, 256, 512) for f in ("packed", "residual", "separate")]
                         + [(2304, "separate")])
def test_torch_cuda_graph_norm_gemm_layers(rows, form, rng):
    """The norm + cuBLASLt path captured as a model's layers, in one CUDA graph whose memory the
    layers' scratch (the normalized rows) reuses: every layer's q, k, v (and new residual) from
    the replayed graph equal the same calls run eagerly, bit for bit, so no kernel of one layer
    reads another layer's rows. Forms: q, k, v as views of one allocated [M, N] product (one GEMM
    straight into it), with a residual, and q, k, v in three outputs of their own (one GEMM into
    scratch and a split copy while the product is at most 16 MiB; a GEMM each beyond, at 2304 rows)."""
    torch = _torch_cuda()
    from minivllm import _C
    layers, H, nh, nkv, hd = 6, 1024, 16, 8, 128
    N = (nh + 2 * nkv) * hd
    xs = [_tt(torch, rng.standard_normal((rows, H)), "bfloat16", "cuda") for _ in range(layers)]
    rs = [_tt(torch, rng.standard_normal((rows, H)), "bfloat16", "cuda") for _ in range(layers)]
    gs = [_tt(torch, norm_weight(rng, H), "bfloat16", "cuda") for _ in range(layers)]
    Ws = [_tt(torch, rng.standard_normal((N, H)) / np.sqrt(H), "bfloat16", "cuda") for _ in range(layers)]
    outs = [tuple(torch.empty(rows, heads, hd, dtype=torch.bfloat16, device="cuda") for heads in (nh, nkv, nkv))
            for _ in range(layers)] if form == "separate" else [None] * layers

    def layer(i):
        return minivllm.FusedRMSNormQKV.forward(xs[i], gs[i], Ws[i].t(), nh, nkv,
                                                residual=rs[i] if form == "residual" else None,
                                                out=outs[i], _path="cublaslt")

    eager = [tuple(t.clone() for t in layer(i)) for i in range(layers)]
    assert _C.qkv_last_gpu_path() == "cublaslt"
    refs = qkv_ref(to64(xs[0]), to64(gs[0]), to64(Ws[0]), nh, nkv, 1e-6,
                   residual=to64(rs[0]) if form == "residual" else None, dtype="bfloat16")
    for name, a, ref in zip("qkv", eager[0][:3], refs[:3]):
        assert_matches(to64(a), ref, QKV_TOL["bfloat16"], name, row_axes=2)

    g, got = _capture(torch, lambda: [layer(i) for i in range(layers)], warmups=1)
    for _ in range(2):
        for results in got:
            for t in results:
                t.fill_(float("nan"))
        g.replay()
        torch.cuda.synchronize()
        for i in range(layers):
            for name, a, b in zip(("q", "k", "v", "new_residual"), got[i], eager[i]):
                assert torch.equal(a, b), f"layer {i} {name}: the graph's result differs from the eager call's"


# --------------------------------------------------------------------------------------------
# CuPy
# --------------------------------------------------------------------------------------------
def _cupy():
    cupy = pytest.importorskip("cupy", reason="CuPy is not installed")
    if not minivllm.cuda_available():
        pytest.skip(NO_CUDA)
    return cupy


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_cupy(dtype, rng):
    cupy = _cupy()
    M, H, nh, nkv, hd = 9, 256, 4, 2, 32
    N = (nh + 2 * nkv) * hd
    npdt = np.dtype(dtype)
    xs = round_np(rng.standard_normal((M, H)), dtype)
    rs = round_np(rng.standard_normal((M, H)), dtype)
    ws = round_np(norm_weight(rng, H), dtype)
    Ws = round_np(rng.standard_normal((N, H)) / 16, dtype)
    x0, r0, w0, W0 = (a.astype(np.float64) for a in (xs, rs, ws, Ws))
    s = cupy.cuda.Stream(non_blocking=True)
    with s:
        x, r, w, W = (cupy.asarray(a) for a in (xs, rs, ws, Ws))
        y = minivllm.rms_norm(x, w)
        out = cupy.full((M, H), np.nan, dtype=npdt)
        y2 = minivllm.rms_norm(x, w, out=out)
        n, ns = minivllm.fused_add_rms_norm(x, r, w)
        qkv = minivllm.FusedRMSNormQKV.forward(x, w, W.T, nh, nkv)
        qkv2 = minivllm.fused_rms_norm_qkv(x, w, W, nh, nkv)
    s.synchronize()
    for a in (y, n, ns) + tuple(qkv) + tuple(qkv2):
        assert isinstance(a, cupy.ndarray) and a.dtype == npdt
    assert y2 is out
    assert_matches(to64(y), rms_norm_ref(x0, w0, 1e-6), TOL[dtype])
    assert_matches(to64(out), rms_norm_ref(x0, w0, 1e-6), TOL[dtype])
    ref_n, ref_s = fused_add_rms_norm_ref(x0, r0, w0, 1e-6, dtype)
    assert_matches(to64(n), ref_n, TOL[dtype])
    assert_same_values(to64(ns), ref_s, "new_residual")
    for res in (qkv, qkv2):
        for name, a, ref in zip("qkv", res, qkv_ref(x0, w0, W0, nh, nkv, 1e-6)):
            assert_matches(to64(a), ref, QKV_TOL[dtype], name, row_axes=2)


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_cupy_outputs_ordered_on_current_stream(dtype, rng):
    """Preallocated CuPy outputs (every op's out=) filled on CuPy's current non-blocking stream,
    in order: the inputs are written on that stream behind ~0.3 s of queued work, so a launch on
    any other stream would read the NaN they held before; and the calls do not wait for it."""
    cupy = _cupy()
    M, H, nh, nkv, hd = 33, 512, 8, 2, 64
    N = (nh + 2 * nkv) * hd
    npdt = np.dtype(dtype)
    xs, rs = (round_np(rng.standard_normal((M, H)), dtype) for _ in range(2))
    ws = round_np(norm_weight(rng, H), dtype)
    Ws = round_np(rng.standard_normal((N, H)) / np.sqrt(H), dtype)
    s = cupy.cuda.Stream(non_blocking=True)
    with s:
        busy = cupy.ones((4096, 4096), cupy.float32)
        x, r = cupy.full((M, H), np.nan, npdt), cupy.full((M, H), np.nan, npdt)
        w, W = cupy.asarray(ws), cupy.asarray(Ws)
        x_src, r_src = cupy.asarray(xs), cupy.asarray(rs)
        outs = {name: cupy.full(shape, np.nan, npdt) for name, shape in (
            ("y", (M, H)), ("n", (M, H)), ("ns", (M, H)), ("q", (M, nh, hd)),
            ("k", (M, nkv, hd)), ("v", (M, nkv, hd)), ("rq", (M, H)))}
        # One untimed call of each op first: the first call in a process may load code (the
        # CUDA runtime's lazy module loading, cuBLASLt's kernels), and loading can wait for the
        # device. What is checked below is that calls, once loaded, do not.
        minivllm.rms_norm(x_src, w, out=outs["y"])
        minivllm.fused_add_rms_norm(x_src, r_src, w, out=outs["n"], residual_out=outs["ns"])
        minivllm.FusedRMSNormQKV.forward(x_src, w, W, nh, nkv, residual=r_src,
                                         out=(outs["q"], outs["k"], outs["v"]),
                                         residual_out=outs["rq"])
        for out in outs.values():
            out.fill(np.nan)
        busy = busy @ busy * (1.0 / 4096)  # CuPy's first matmul loads cuBLAS: not in the window
        s.synchronize()
        t0 = time.perf_counter()
        for _ in range(120):  # queue ~0.3 s of work on s (not waited for)
            busy = busy @ busy * (1.0 / 4096)
        x[...] = x_src  # device copies on s (a host copy could wait for the queued work)
        r[...] = r_src
        minivllm.rms_norm(x, w, out=outs["y"])
        minivllm.fused_add_rms_norm(x, r, w, out=outs["n"], residual_out=outs["ns"])
        res = minivllm.FusedRMSNormQKV.forward(x, w, W, nh, nkv, residual=r,
                                               out=(outs["q"], outs["k"], outs["v"]),
                                               residual_out=outs["rq"])
        queued = time.perf_counter() - t0
    s.synchronize()
    busy_s = time.perf_counter() - t0
    assert res[0] is outs["q"] and res[3] is outs["rq"]
    x0, r0, w0, W0 = (a.astype(np.float64) for a in (xs, rs, ws, Ws))
    assert_matches(to64(outs["y"]), rms_norm_ref(x0, w0, 1e-6), TOL[dtype], "y")
    ref_n, ref_s = fused_add_rms_norm_ref(x0, r0, w0, 1e-6, dtype)
    assert_matches(to64(outs["n"]), ref_n, TOL[dtype], "normed")
    assert_same_values(to64(outs["ns"]), ref_s, "new_residual")
    refs = qkv_ref(x0, w0, W0, nh, nkv, 1e-6, residual=r0, dtype=dtype)
    for name, ref in zip("qkv", refs[:3]):
        assert_matches(to64(outs[name]), ref, QKV_TOL[dtype], name, row_axes=2)
    assert_same_values(to64(outs["rq"]), refs[3], "residual_out")
    if busy_s > 0.1:  # the queued work was long enough to tell a wait from a launch
        assert queued < 0.5 * busy_s, f"the calls took {queued:.3f} s of {busy_s:.3f} s: they waited"


# --------------------------------------------------------------------------------------------
# JAX
# --------------------------------------------------------------------------------------------
def _jax_devices():
    try:
        import jax
    except Exception:
        return []
    return [d for d in jax.devices()] + ([d for d in jax.devices("cpu")]
                                         if jax.default_backend() != "cpu" else [])


@pytest.mark.parametrize("dtype", DTYPES)
def test_jax(dtype, rng):
    jax = pytest.importorskip("jax", reason="JAX is not installed")
    import jax.numpy as jnp
    devices = _jax_devices()
    ran = 0
    for d in devices:
        if d.platform == "gpu" and not minivllm.cuda_available():
            continue
        if d.platform not in ("cpu", "gpu"):
            continue
        M, H, nh, nkv, hd = 5, 128, 4, 2, 24
        N = (nh + 2 * nkv) * hd  # != H: a square qkv_weight would be read as W
        xs = round_np(rng.standard_normal((M, H)), dtype)
        rs = round_np(rng.standard_normal((M, H)), dtype)
        ws = round_np(norm_weight(rng, H), dtype)
        Ws = round_np(rng.standard_normal((N, H)) / 12, dtype)
        x, r, w, W = (jax.device_put(jnp.asarray(a), d) for a in (xs, rs, ws, Ws))
        x0, r0, w0, W0 = (a.astype(np.float64) for a in (xs, rs, ws, Ws))
        y = minivllm.rms_norm(x, w)
        n, ns = minivllm.fused_add_rms_norm(x, r, w)
        q, k, v = minivllm.FusedRMSNormQKV.forward(x, w, W.T, nh, nkv)
        for a in (y, n, ns, q, k, v):
            assert isinstance(a, jax.Array), type(a)
            assert a.dtype == xs.dtype
            assert set(a.devices()) == {d}
        assert_matches(to64(y), rms_norm_ref(x0, w0, 1e-6), TOL[dtype])
        ref_n, ref_s = fused_add_rms_norm_ref(x0, r0, w0, 1e-6, dtype)
        assert_matches(to64(n), ref_n, TOL[dtype])
        assert_same_values(to64(ns), ref_s, "new_residual")
        for name, a, ref in zip("qkv", (q, k, v), qkv_ref(x0, w0, W0, nh, nkv, 1e-6)):
            assert_matches(to64(a), ref, QKV_TOL[dtype], name, row_axes=2)
        # inputs unchanged (JAX arrays are immutable; the memory must be too)
        assert_same_values(to64(x), x0, "x")
        ran += 1
    if not ran:
        pytest.skip("no usable JAX device (GPU JAX needs minivllm.cuda_available())")


class _SubArray(np.ndarray):
    """An ndarray subclass: not type(x) is np.ndarray, so it takes the general kind path."""


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_qkv_numpy_fast_path_matches_general_path(dtype):
    """Plain ndarrays skip the kind machinery (minivllm/__init__.py); an ndarray subclass takes
    it: the same results, with and without out and residual."""
    rng = np.random.default_rng(3)
    H, nh, nkv, hd, M = 64, 2, 1, 16, 3
    x = rng.standard_normal((M, H)).astype(dtype)
    r = rng.standard_normal((M, H)).astype(dtype)
    g = (1 + 0.1 * rng.standard_normal(H)).astype(dtype)
    W = rng.standard_normal(((nh + 2 * nkv) * hd, H)).astype(dtype)
    sub = [a.view(_SubArray) for a in (x, g, W, r)]
    fast = minivllm.fused_rms_norm_qkv(x, g, W, nh, nkv, residual=r)
    general = minivllm.fused_rms_norm_qkv(sub[0], sub[1], sub[2], nh, nkv, residual=sub[3])
    assert all(type(a) is np.ndarray for a in fast)
    for a, b in zip(fast, general):
        np.testing.assert_array_equal(a, np.asarray(b))
    out = tuple(np.full_like(a, np.nan) for a in fast[:3])  # poisoned: every element must be written
    res = minivllm.fused_rms_norm_qkv(x, g, W, nh, nkv, out=out)
    assert all(a is b for a, b in zip(res, out))
    for a, b in zip(out, minivllm.fused_rms_norm_qkv(sub[0], sub[1], sub[2], nh, nkv)):
        np.testing.assert_array_equal(a, np.asarray(b))
