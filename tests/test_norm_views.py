"""Per-head views: rms_norm and fused_add_rms_norm on rows whose leading dimensions need two
strides (rows = tokens x heads), such as q's or k's heads inside a packed QKV output,
qkv.view(T, heads, D)[:, :num_heads] (the input of a per-head q/k norm).

Against the float64 reference on the CPU and the GPU; bit for bit against the same rows made
contiguous (a row's bits do not depend on the layout it is read from); nothing outside a view
written (views inside larger NaN-filled buffers); three strides, two arguments split at different
places, and outputs whose rows may overlap refused with a message naming the argument.
"""
import numpy as np
import pytest

import minivllm
from conftest import get_backend, norm_weight, randn, to64
from reference import TOL, assert_matches, assert_same_values, fused_add_rms_norm_ref, \
    rms_norm_ref, round_to

NUM_HEADS, NUM_KV_HEADS = 4, 2
HEADS = NUM_HEADS + 2 * NUM_KV_HEADS  # a packed QKV output [T, HEADS, D]: q, k, v heads
HEAD_DIMS = [64, 72, 96, 100, 128, 256]
OPS = ["rms_norm", "fused_add_rms_norm"]


def heads_of(qkv, which):
    """q's heads ('q') or k's ('k') of a packed [T, HEADS, D] array: a view in two strides."""
    if which == "q":
        return qkv[:, :NUM_HEADS]
    return qkv[:, NUM_HEADS:NUM_HEADS + NUM_KV_HEADS]


def packed(dev, rng, T, D, dtype):
    """A packed QKV output [T, HEADS, D] of fresh random values and its float64 values."""
    data = round_to(randn(rng, (T, HEADS, D)), dtype)
    return dev.array(data, dtype), data


def weight(dev, rng, D, dtype):
    w64 = round_to(norm_weight(rng, D), dtype)
    return dev.array(w64, dtype), w64


def run(op, x, w, r=None, **kw):
    """The op's results as a tuple: (out,) or (out, residual_out)."""
    if op == "rms_norm":
        return (minivllm.rms_norm(x, w, **kw),)
    return minivllm.fused_add_rms_norm(x, r, w, **kw)


def expected(op, x64, w64, r64, dtype):
    if op == "rms_norm":
        return (rms_norm_ref(x64, w64, 1e-6),)
    return fused_add_rms_norm_ref(x64, r64, w64, 1e-6, dtype)


def check(op, got, want, dtype, shape):
    """out within the dtype's tolerance of the float64 reference, residual_out exact."""
    for i, (g, ref) in enumerate(zip(got, want)):
        name = ("out", "residual_out")[i]
        g64 = to64(g)
        assert g64.shape == tuple(shape), f"{op} {name}: shape {g64.shape} != {tuple(shape)}"
        if i == 1:
            assert_same_values(g64, ref, f"{op} residual_out")
        else:
            assert_matches(g64, ref, TOL[dtype], f"{op} out")


def raw_bits(a):
    """The array's bits as unsigned integers on the host (bfloat16 included)."""
    mod = type(a).__module__ or ""
    if mod.startswith("torch"):
        import torch
        t = a.detach().contiguous()
        return t.view(torch.int32 if t.element_size() == 4 else torch.int16).cpu().numpy()
    if mod.startswith("cupy"):
        import cupy
        a = cupy.asnumpy(a)
    a = np.ascontiguousarray(a)
    return a.view(np.uint32 if a.itemsize == 4 else np.uint16)


def strided(dev, base, shape, strides):
    """A view of the contiguous array base with the given shape and strides (in elements)."""
    mod = type(base).__module__ or ""
    if mod.startswith("torch"):
        return base.as_strided(shape, strides)
    size = base.dtype.itemsize
    if mod.startswith("cupy"):
        import cupy
        return cupy.lib.stride_tricks.as_strided(base, shape, [s * size for s in strides])
    return np.lib.stride_tricks.as_strided(base, shape, [s * size for s in strides])


# ------------------------------------------------------------------------------------------------
# values
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("D", HEAD_DIMS)
@pytest.mark.parametrize("which", ["q", "k"])
@pytest.mark.parametrize("op", OPS)
def test_head_views(dev, dtype, op, which, D, rng):
    """x (and residual) as q's or k's heads of packed QKV outputs; the packed buffers unchanged."""
    T = 7
    qkv, qkv64 = packed(dev, rng, T, D, dtype)
    rqkv, rqkv64 = packed(dev, rng, T, D, dtype)
    w, w64 = weight(dev, rng, D, dtype)
    x, r = heads_of(qkv, which), heads_of(rqkv, which)
    got = run(op, x, w, r)
    dev.sync()
    check(op, got, expected(op, heads_of(qkv64, which), w64, heads_of(rqkv64, which), dtype),
          dtype, dev.shape(x))
    assert_same_values(to64(qkv), qkv64, "x's packed buffer")
    assert_same_values(to64(rqkv), rqkv64, "residual's packed buffer")


@pytest.mark.parametrize("D", [72, 999, 12000, 20000])
@pytest.mark.parametrize("op", OPS)
def test_long_and_many_rows(dev, dtype, op, D, rng):
    """Many rows (grid-stride loops, several rows per block) and long rows (rms_norm's 8 vectors a
    thread at 12000 in float32 and 20000 in 16-bit types; the GPU's simple kernel beyond), all in
    two strides."""
    T = 300 if D < 1000 else 3
    qkv, qkv64 = packed(dev, rng, T, D, dtype)
    rqkv, rqkv64 = packed(dev, rng, T, D, dtype)
    w, w64 = weight(dev, rng, D, dtype)
    got = run(op, heads_of(qkv, "k"), w, heads_of(rqkv, "k"))
    dev.sync()
    check(op, got, expected(op, heads_of(qkv64, "k"), w64, heads_of(rqkv64, "k"), dtype), dtype,
          (T, NUM_KV_HEADS, D))


@pytest.mark.parametrize("D", [64, 100, 128, 999])
@pytest.mark.parametrize("which", ["q", "k"])
@pytest.mark.parametrize("op", OPS)
def test_bits_match_contiguous_rows(dev, dtype, op, which, D, rng):
    """A row's bits are the same read from a view as from a contiguous copy, in a call of many
    rows (past two per multiprocessor) and in calls of a few (batch invariance across layouts).
    The views here keep the alignment a contiguous copy has (docs/numerics.md)."""
    T = 150  # 600 q rows, 300 k rows
    qkv, qkv64 = packed(dev, rng, T, D, dtype)
    rqkv, rqkv64 = packed(dev, rng, T, D, dtype)
    w, _ = weight(dev, rng, D, dtype)
    x, r = heads_of(qkv, which), heads_of(rqkv, which)
    views = [raw_bits(a) for a in run(op, x, w, r)]
    flat = [raw_bits(a) for a in run(op, dev.contiguous(x), w, dev.contiguous(r))]
    dev.sync()
    for name, v, f in zip(("out", "residual_out"), views, flat):
        np.testing.assert_array_equal(v, f, err_msg=f"{op} {name}: view and contiguous rows differ")
    for lo, hi in [(0, 1), (37, 38), (5, 100), (T - 1, T)]:
        part = [raw_bits(a) for a in run(op, x[lo:hi], w, r[lo:hi])]
        dev.sync()
        for name, p, v in zip(("out", "residual_out"), part, views):
            np.testing.assert_array_equal(p, v[lo:hi],
                                          err_msg=f"{op} {name}: tokens {lo}:{hi} alone differ")


@pytest.mark.parametrize("op", OPS)
def test_transposed_heads(dev, dtype, op, rng):
    """[heads, T, D] storage read as [T, heads, D] (token stride D, head stride T * D): the two
    strides nest the other way round, for the inputs and a NaN-filled output alike."""
    T, H, D = 9, 3, 96
    data = round_to(randn(rng, (H, T, D)), dtype)
    rdata = round_to(randn(rng, (H, T, D)), dtype)
    x, r = dev.array(data, dtype).swapaxes(0, 1), dev.array(rdata, dtype).swapaxes(0, 1)
    w, w64 = weight(dev, rng, D, dtype)
    out = dev.full((H, T, D), dtype).swapaxes(0, 1)
    res_out = dev.full((H, T, D), dtype).swapaxes(0, 1)
    kw = {"out": out} if op == "rms_norm" else {"out": out, "residual_out": res_out}
    got = run(op, x, w, r, **kw)
    dev.sync()
    assert got[0] is out
    check(op, got, expected(op, data.swapaxes(0, 1), w64, rdata.swapaxes(0, 1), dtype), dtype,
          (T, H, D))


# ------------------------------------------------------------------------------------------------
# outputs: views written, nothing else
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("D", [72, 128])
@pytest.mark.parametrize("x_layout", ["view", "contiguous"])
@pytest.mark.parametrize("which", ["q", "k"])
@pytest.mark.parametrize("op", OPS)
def test_out_views_leave_the_rest(dev, dtype, op, which, x_layout, D, rng):
    """out= and residual_out= per-head views of NaN-filled packed buffers with a token of NaN
    before and after: the view is written, every other element of the buffer stays NaN."""
    T = 6
    qkv, qkv64 = packed(dev, rng, T, D, dtype)
    rqkv, rqkv64 = packed(dev, rng, T, D, dtype)
    w, w64 = weight(dev, rng, D, dtype)
    x, r = heads_of(qkv, which), heads_of(rqkv, which)
    if x_layout == "contiguous":
        x, r = dev.contiguous(x), dev.contiguous(r)
    bigs = [dev.full((T + 2, HEADS, D), dtype) for _ in range(2)]
    outs = [heads_of(big[1:T + 1], which) for big in bigs]
    kw = {"out": outs[0]} if op == "rms_norm" else {"out": outs[0], "residual_out": outs[1]}
    got = run(op, x, w, r, **kw)
    dev.sync()
    assert all(g is o for g, o in zip(got, outs))
    check(op, got, expected(op, heads_of(qkv64, which), w64, heads_of(rqkv64, which), dtype),
          dtype, dev.shape(x))
    inside = np.zeros((T + 2, HEADS, D), bool)
    heads_of(inside[1:T + 1], which)[...] = True
    for big, name in list(zip(bigs, ("out", "residual_out")))[:len(got)]:
        assert np.isnan(to64(big)[~inside]).all(), f"{op} wrote outside {name}'s view"


@pytest.mark.parametrize("op", OPS)
def test_in_place_head_views(dev, dtype, op, rng):
    """rms_norm(q, w, out=q) and fused_add_rms_norm(q, q_res, w, inplace=True) on q's heads:
    those heads replaced, every other head of the packed buffers bit for bit as before."""
    T, D = 5, 128
    qkv, qkv64 = packed(dev, rng, T, D, dtype)
    rqkv, rqkv64 = packed(dev, rng, T, D, dtype)
    w, w64 = weight(dev, rng, D, dtype)
    x, r = heads_of(qkv, "q"), heads_of(rqkv, "q")
    want = expected(op, heads_of(qkv64, "q"), w64, heads_of(rqkv64, "q"), dtype)
    if op == "rms_norm":
        got = (minivllm.rms_norm(x, w, out=x),)
    else:
        got = minivllm.fused_add_rms_norm(x, r, w, inplace=True)
    dev.sync()
    assert got[0] is x
    check(op, got, want, dtype, (T, NUM_HEADS, D))
    for buf, buf64, name in ((qkv, qkv64, "x"), (rqkv, rqkv64, "residual")):
        assert_same_values(to64(buf)[:, NUM_HEADS:], buf64[:, NUM_HEADS:],
                           f"{name}'s packed buffer beyond q's heads")


# ------------------------------------------------------------------------------------------------
# strides of any sign (NumPy: the GPU array libraries make no negative strides)
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("flip", ["tokens", "heads", "both"])
@pytest.mark.parametrize("op", OPS)
def test_negative_strides(dtype, op, flip, rng):
    """Views with negative token or head strides, as inputs and as outputs."""
    dev = get_backend("cpu")
    T, D = 5, 72
    qkv, qkv64 = packed(dev, rng, T, D, dtype)
    rqkv, rqkv64 = packed(dev, rng, T, D, dtype)
    w, w64 = weight(dev, rng, D, dtype)
    index = {"tokens": np.s_[::-1], "heads": np.s_[:, ::-1], "both": np.s_[::-1, ::-1]}[flip]
    x, r = heads_of(qkv, "q")[index], heads_of(rqkv, "q")[index]
    bigs = [dev.full((T, HEADS, D), dtype) for _ in range(2)]
    outs = [heads_of(big, "q")[index] for big in bigs]
    kw = {"out": outs[0]} if op == "rms_norm" else {"out": outs[0], "residual_out": outs[1]}
    got = run(op, x, w, r, **kw)
    check(op, got, expected(op, heads_of(qkv64, "q")[index], w64, heads_of(rqkv64, "q")[index],
                            dtype), dtype, x.shape)
    for big in bigs[:len(got)]:
        assert np.isnan(to64(big)[:, NUM_HEADS:]).all(), f"{op} wrote outside the view"


@pytest.mark.parametrize("op", OPS)
def test_zero_head_stride(dtype, op, rng):
    """A token's row repeated over the heads (head stride 0): a valid input; as an output its
    elements share memory, refused naming the argument, with nothing written."""
    dev = get_backend("cpu")
    T, H, D = 4, 3, 100
    x64 = round_to(randn(rng, (T, D)), dtype)
    r64 = round_to(randn(rng, (T, H, D)), dtype)
    x = np.broadcast_to(dev.array(x64, dtype)[:, None, :], (T, H, D))
    r = dev.array(r64, dtype)
    w, w64 = weight(dev, rng, D, dtype)
    got = run(op, x, w, r)
    check(op, got, expected(op, np.broadcast_to(x64[:, None, :], (T, H, D)), w64, r64, dtype),
          dtype, (T, H, D))
    base = dev.full((T, 1, D), dtype)
    shared = np.lib.stride_tricks.as_strided(base, (T, H, D), (base.strides[0], 0, base.strides[2]))
    with pytest.raises(ValueError, match=r"^out: .*overlap"):
        run(op, x, w, r, out=shared)
    assert np.isnan(to64(shared)).all(), "nothing written on a refused call"


# ------------------------------------------------------------------------------------------------
# refused: three strides, two splits, outputs whose rows may overlap
# ------------------------------------------------------------------------------------------------
def _args(op, dev, D, arrays):
    """Positional and keyword arguments of op with the given arrays (name -> array)."""
    w = dev.array(np.ones(D), "float32")
    kw = {k: arrays[k] for k in ("out", "residual_out") if k in arrays}
    return (arrays["x"], w) if op == "rms_norm" else (arrays["x"], arrays["residual"], w), kw


def _call(op, args, kw):
    if op == "rms_norm":
        return minivllm.rms_norm(*args, **kw)
    return minivllm.fused_add_rms_norm(args[0], args[1], args[2], **kw)


ARGS = {"rms_norm": ["x", "out"], "fused_add_rms_norm": ["x", "residual", "out", "residual_out"]}
CASES = [(op, name) for op, names in ARGS.items() for name in names]


@pytest.mark.parametrize("op,name", CASES)
def test_three_strides_refused(dev, op, name):
    """[2, 2, 2, D] as a view of [3, 3, 3, D]: every leading dimension its own stride."""
    D = 16
    arrays = {k: dev.array(np.ones((2, 2, 2, D)), "float32") for k in ARGS[op]}
    for k in ("out", "residual_out"):
        if k in arrays:
            arrays[k] = dev.full((2, 2, 2, D), "float32")
    parent = dev.full((3, 3, 3, D), "float32")
    arrays[name] = parent[:2, :2, :2]
    args, kw = _args(op, dev, D, arrays)
    with pytest.raises(ValueError, match=rf"^{name}: .*more than two row strides"):
        _call(op, args, kw)
    dev.sync()
    for k, a in list(kw.items()) + [(name, parent)]:
        assert np.isnan(to64(a)).all(), f"{k} written by a refused call"


@pytest.mark.parametrize("op,name", [(op, n) for op, n in CASES if n != "x"])
def test_split_at_another_place_refused(dev, op, name):
    """x split after 12 rows ([2, 3, 4] tokens: a [2, 4, 4] buffer's first 3 of 4), the argument
    after 4 ([2, 3, 5] buffer's first 4 of 5): together three strides."""
    D = 8
    arrays = {k: dev.array(np.ones((2, 3, 4, D)), "float32") for k in ARGS[op]}
    for k in ("out", "residual_out"):
        if k in arrays:
            arrays[k] = dev.full((2, 3, 4, D), "float32")
    arrays["x"] = dev.full((2, 4, 4, D), "float32", 1.0)[:, :3]
    arrays[name] = dev.full((2, 3, 5, D), "float32", 1.0)[:, :, :4]
    args, kw = _args(op, dev, D, arrays)
    with pytest.raises(ValueError, match=rf"^{name}: .*every 4 rows, but x's every 12"):
        _call(op, args, kw)


@pytest.mark.parametrize("op,name", CASES)
def test_interleaved_rows(dev, op, name):
    """Rows at token stride C + 1 and head stride 2C (C = D): row (1, 0) starts inside row (0, 1).
    Spanning more elements than it holds, only its row pattern shows the overlap: fine to read
    (an input's values checked against the reference), refused as an output."""
    D, dtype = 24, "float32"
    shape, strides = (2, 2, D), (D + 1, 2 * D, 1)
    rng = np.random.default_rng()
    arrays = {k: dev.array(randn(rng, shape), dtype) for k in ARGS[op]}
    base64 = round_to(randn(rng, 4 * D + 1), dtype)
    base = dev.array(base64, dtype)
    arrays[name] = strided(dev, base, shape, strides)
    args, kw = _args(op, dev, D, arrays)
    if name in ("out", "residual_out"):
        with pytest.raises(ValueError, match=rf"^{name}: .*may overlap"):
            _call(op, args, kw)
        dev.sync()
        assert_same_values(to64(base), base64, f"{name}'s buffer after a refused call")
        return
    got = _call(op, args, kw)
    got = got if isinstance(got, tuple) else (got,)
    dev.sync()
    x64 = to64(arrays["x"])
    r64 = to64(arrays["residual"]) if "residual" in arrays else None
    check(op, got, expected(op, x64, np.ones(D), r64, dtype), dtype, shape)
