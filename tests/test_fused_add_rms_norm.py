"""minivllm.fused_add_rms_norm: (normed, new_residual), out=/residual_out=, inplace=True."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st, HealthCheck

import minivllm
from conftest import (DTYPES, LAYOUTS, NP_ONLY_LAYOUTS, assert_native, make_rows, norm_weight,
                      randn, round_np, to64)
from reference import (TOL, assert_matches, assert_same_values, fused_add_rms_norm_ref, rms_norm_ref,
                       round_to)

HS = [1, 3, 100, 256, 512, 896, 1000, 1024, 2048, 2560, 3584, 4096, 5120, 8192]


def _inputs(dev, rng, shape, dtype, scale=1.0):
    x = dev.array(randn(rng, shape, scale), dtype)
    r = dev.array(randn(rng, shape, scale), dtype)
    w = dev.array(norm_weight(rng, shape[-1]), dtype)
    return x, r, w


def _check(dev, dtype, normed, new_res, x0, r0, w0, eps, shape):
    ref_n, ref_s = fused_add_rms_norm_ref(x0, r0, w0, eps, dtype)
    assert_native(dev, normed, dtype, shape, "normed")
    assert_native(dev, new_res, dtype, shape, "new_residual")
    # new_residual is x + residual rounded once to the dtype: exact
    assert_same_values(to64(new_res), ref_s, "new_residual")
    assert_matches(to64(normed), ref_n, TOL[dtype], "normed")


def _call_and_check(dev, x, r, w, dtype, eps=1e-6, **kw):
    x0, r0, w0 = to64(x), to64(r), to64(w)
    res = minivllm.fused_add_rms_norm(x, r, w, eps, **kw)
    dev.sync()
    assert isinstance(res, tuple) and len(res) == 2
    _check(dev, dtype, res[0], res[1], x0, r0, w0, eps, dev.shape(x))
    assert_same_values(to64(x), x0, "x")
    assert_same_values(to64(r), r0, "residual")
    assert_same_values(to64(w), w0, "weight")
    return res


@pytest.mark.parametrize("H", HS)
def test_hidden_sizes(dev, dtype, H, rng):
    M = 7 if H <= 4096 else 3
    x, r, w = _inputs(dev, rng, (M, H), dtype)
    _call_and_check(dev, x, r, w, dtype)


@pytest.mark.parametrize("M", [0, 1, 7, 33, 1000, 3001])
def test_rows(dev, dtype, M, rng):
    x, r, w = _inputs(dev, rng, (M, 1024), dtype)
    _call_and_check(dev, x, r, w, dtype)


def test_many_rows_wide(dev, dtype, rng):
    x, r, w = _inputs(dev, rng, (2048, 3584), dtype)
    _call_and_check(dev, x, r, w, dtype)


@pytest.mark.parametrize("odd_M", [5, 63, 257])
def test_odd_rows(dev, dtype, odd_M, rng):
    x, r, w = _inputs(dev, rng, (odd_M, 896), dtype)
    _call_and_check(dev, x, r, w, dtype)


@pytest.mark.parametrize("shape", [(2, 3, 256), (3, 7, 100), (1, 0, 64), (2, 2, 2, 33), (500,)])
def test_nd_inputs(dev, dtype, shape, rng):
    x, r, w = _inputs(dev, rng, shape, dtype)
    _call_and_check(dev, x, r, w, dtype)


def test_default_eps_and_keywords(dev, dtype, rng):
    x, r, w = _inputs(dev, rng, (4, 256), dtype, scale=1e-3)
    x0, r0, w0 = to64(x), to64(r), to64(w)
    n, s = minivllm.fused_add_rms_norm(x, r, w)
    dev.sync()
    _check(dev, dtype, n, s, x0, r0, w0, 1e-6, (4, 256))
    n, s = minivllm.fused_add_rms_norm(x=x, residual=r, weight=w, eps=1e-5)
    dev.sync()
    _check(dev, dtype, n, s, x0, r0, w0, 1e-5, (4, 256))


@pytest.mark.parametrize("which", ["both", "out", "residual_out"])
@pytest.mark.parametrize("H", [3, 1000, 4096])
def test_out_poisoned(dev, dtype, which, H, rng):
    M = 17
    x, r, w = _inputs(dev, rng, (M, H), dtype)
    kw = {}
    if which in ("both", "out"):
        kw["out"] = dev.full((M, H), dtype)
    if which in ("both", "residual_out"):
        kw["residual_out"] = dev.full((M, H), dtype)
    n, s = _call_and_check(dev, x, r, w, dtype, **kw)
    if "out" in kw:
        assert n is kw["out"]
    if "residual_out" in kw:
        assert s is kw["residual_out"]


@pytest.mark.parametrize("layout", LAYOUTS + NP_ONLY_LAYOUTS)
@pytest.mark.parametrize("H", [3, 100, 999, 2048])
def test_strided(dev, dtype, layout, H, rng):
    """x, residual and both outputs as strided views; nothing outside the output views written."""
    M = 11
    x, xp = make_rows(dev, randn(rng, (M, H)), dtype, layout)
    r, rp = make_rows(dev, randn(rng, (M, H)), dtype, "both" if layout != "both" else "rowstep")
    w = dev.array(norm_weight(rng, H), dtype)
    out_layout = layout if layout in LAYOUTS else "colslice"
    out, op = make_rows(dev, np.full((M, H), np.nan), dtype, out_layout)
    rout, rop = make_rows(dev, np.full((M, H), np.nan), dtype, "rowstep")
    xp0, rp0 = to64(xp), to64(rp)
    n, s = _call_and_check(dev, x, r, w, dtype, out=out, residual_out=rout)
    assert n is out and s is rout
    assert_same_values(to64(xp), xp0, "x allocation")
    assert_same_values(to64(rp), rp0, "residual allocation")
    # outside the views the allocations are still NaN
    for view, parent, name in ((out, op, "out"), (rout, rop, "residual_out")):
        p = to64(parent)
        n_nan_expected = p.size - M * H
        assert np.isnan(p).sum() == n_nan_expected, f"wrote outside {name}"


@pytest.mark.parametrize("layout", ["contig", "colslice", "rowstep"])
@pytest.mark.parametrize("H", [1, 100, 999, 1024, 4095, 4096, 12345, 16384, 20000, 24577, 40000])
def test_inplace(dev, dtype, layout, H, rng):
    """inplace=True: normed -> x, new_residual -> residual; returns (x, residual)."""
    M = 9
    x, xp = make_rows(dev, randn(rng, (M, H)), dtype, layout)
    r, rp = make_rows(dev, randn(rng, (M, H)), dtype, layout)
    w = dev.array(norm_weight(rng, H), dtype)
    x0, r0, w0 = to64(x), to64(r), to64(w)
    xp0 = to64(xp)
    res = minivllm.fused_add_rms_norm(x, r, w, 1e-6, inplace=True)
    dev.sync()
    assert isinstance(res, tuple) and len(res) == 2
    assert res[0] is x and res[1] is r
    _check(dev, dtype, x, r, x0, r0, w0, 1e-6, (M, H))
    assert_same_values(to64(w), w0, "weight")
    if layout != "contig":
        p = to64(xp)
        keep = np.isnan(xp0)
        assert np.isnan(p[keep]).all(), "wrote outside x"


def test_inplace_3d(dev, dtype, rng):
    x, r, w = _inputs(dev, rng, (2, 5, 896), dtype)
    x0, r0, w0 = to64(x), to64(r), to64(w)
    res = minivllm.fused_add_rms_norm(x, r, w, inplace=True)
    dev.sync()
    assert res[0] is x and res[1] is r
    _check(dev, dtype, x, r, x0, r0, w0, 1e-6, (2, 5, 896))


def test_inplace_repeated_like_a_model(dev, dtype, rng):
    """Three decoder layers' worth of in-place calls against the reference chain."""
    M, H = 8, 512
    x, r, _ = _inputs(dev, rng, (M, H), dtype)
    xs, rs = to64(x), to64(r)
    for _ in range(3):
        w = dev.array(norm_weight(rng, H), dtype)
        ref_n, ref_s = fused_add_rms_norm_ref(xs, rs, to64(w), 1e-6, dtype)
        minivllm.fused_add_rms_norm(x, r, w, 1e-6, inplace=True)
        dev.sync()
        assert_same_values(to64(r), ref_s, "residual")
        assert_matches(to64(x), ref_n, TOL[dtype], "x")
        # next layer: the "attention output" is a fresh tensor written into x
        dev.assign(x, dev.array(randn(rng, (M, H)), dtype))
        xs, rs = to64(x), to64(r)


def test_eps_is_honoured(dev, dtype, rng):
    x, r, w = _inputs(dev, rng, (8, 256), dtype, scale=0.2)
    x0, r0, w0 = to64(x), to64(r), to64(w)
    a, _ = minivllm.fused_add_rms_norm(x, r, w, 1e-6)
    b, _ = minivllm.fused_add_rms_norm(x, r, w, 1.0)
    a, b = to64(a), to64(b)
    assert_matches(a, fused_add_rms_norm_ref(x0, r0, w0, 1e-6, dtype)[0], TOL[dtype], "eps=1e-6")
    assert_matches(b, fused_add_rms_norm_ref(x0, r0, w0, 1.0, dtype)[0], TOL[dtype], "eps=1.0")
    assert np.abs(a - b).max() > 0.1 * np.abs(a).max()


def test_nan_inf_propagate(dev, dtype, rng):
    M, H = 6, 200
    xd, rd = randn(rng, (M, H)), randn(rng, (M, H))
    xd[1, 3] = np.nan
    rd[2, 7] = np.nan
    xd[3, 0] = np.inf
    rd[4, 199] = -np.inf
    xd[5, 9], rd[5, 9] = np.inf, -np.inf  # inf + -inf = NaN in new_residual
    x, r = dev.array(xd, dtype), dev.array(rd, dtype)
    w = dev.array(norm_weight(rng, H), dtype)
    x0, r0, w0 = to64(x), to64(r), to64(w)
    n, s = minivllm.fused_add_rms_norm(x, r, w, 1e-6, out=dev.full((M, H), dtype, 3.0),
                                       residual_out=dev.full((M, H), dtype, 3.0))
    dev.sync()
    n, s = to64(n), to64(s)
    ref_n, ref_s = fused_add_rms_norm_ref(x0, r0, w0, 1e-6, dtype)
    assert np.isnan(n[1]).all() and np.isnan(n[2]).all() and np.isnan(n[5]).all()
    assert np.isnan(n[3, 0]) and (n[3, 1:] == 0).all()
    assert np.isnan(n[4, 199]) and (n[4, :199] == 0).all()
    assert np.isinf(s[3, 0]) and np.isnan(s[5, 9])
    assert_same_values(s, ref_s, "new_residual")
    assert_matches(n, ref_n, TOL[dtype], "normed")
    assert np.isfinite(n[0]).all()


@pytest.mark.parametrize("H", [64, 4096])
def test_fp16_sum_of_squares_overflows(dev, H, rng):
    M = 7
    sign = lambda: rng.choice([-1.0, 1.0], (M, H))  # noqa: E731
    x = dev.array(rng.uniform(300, 30000, (M, H)) * sign(), "float16")
    r = dev.array(rng.uniform(300, 30000, (M, H)) * sign(), "float16")
    w = dev.array(norm_weight(rng, H), "float16")
    n, s = _call_and_check(dev, x, r, w, "float16")
    assert np.isfinite(to64(n)).all()


def test_rounding_of_sum_matters_fp16(dev, rng):
    """normed is the norm of the *rounded* sum: big + tiny rounds to big in fp16."""
    M, H = 4, 256
    sign = rng.choice([-1.0, 1.0], (M, H))
    xd = sign * 1024.0
    rd = sign * rng.uniform(0.01, 0.4, (M, H))  # below half an ulp of 1024 in fp16 (0.5)
    x, r = dev.array(xd, "float16"), dev.array(rd, "float16")
    w = dev.array(np.ones(H), "float16")
    n, s = minivllm.fused_add_rms_norm(x, r, w, 1e-6)
    dev.sync()
    assert_same_values(to64(s), to64(x), "new_residual == x (the small residual rounds away)")
    assert_same_values(to64(n), np.sign(xd), "normed of +-1024 rows is +-1")


def test_zero_size(dev, dtype):
    x = dev.array(np.zeros((0, 32)), dtype)
    r = dev.array(np.zeros((0, 32)), dtype)
    w = dev.array(np.ones(32), dtype)
    n, s = minivllm.fused_add_rms_norm(x, r, w)
    assert_native(dev, n, dtype, (0, 32))
    assert_native(dev, s, dtype, (0, 32))
    res = minivllm.fused_add_rms_norm(x, r, w, inplace=True)
    assert res[0] is x and res[1] is r


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(M=st.integers(0, 30), H=st.integers(1, 300), dtype=st.sampled_from(DTYPES),
       layout=st.sampled_from(LAYOUTS + ("neg",)), inplace=st.booleans(),
       seed=st.integers(0, 2 ** 32 - 1))
def test_property_cpu(M, H, dtype, layout, inplace, seed):
    from conftest import get_backend
    dev = get_backend("cpu")
    rng = np.random.default_rng(seed)
    x, _ = make_rows(dev, randn(rng, (M, H)), dtype, layout if not inplace or layout != "neg"
                     else "contig")
    r, _ = make_rows(dev, randn(rng, (M, H)), dtype, layout)
    w = round_np(norm_weight(rng, H), dtype)
    x0, r0, w0 = to64(x), to64(r), to64(w)
    n, s = minivllm.fused_add_rms_norm(x, r, w, 1e-6, inplace=inplace)
    if inplace:
        assert n is x and s is r
    ref_n, ref_s = fused_add_rms_norm_ref(x0, r0, w0, 1e-6, dtype)
    assert_same_values(to64(s), ref_s, "new_residual")
    assert_matches(to64(n), ref_n, TOL[dtype], "normed")


@pytest.mark.parametrize("M, H", [(1, 4096), (7, 1024), (300, 896)])
def test_chained_calls_read_the_previous_output(dev, dtype, M, H, rng):
    """rms_norm and fused_add_rms_norm queued back to back with no sync, each call's input the
    previous call's output (all outputs NaN first). On the GPU a call may start before the
    previous one ends (programmatic dependent launch): each must still read what the previous
    call wrote, checked call by call against the inputs it got."""
    nan = lambda: dev.array(np.full((M, H), np.nan), dtype)  # noqa: E731
    ws64 = [round_to(norm_weight(rng, H), dtype) for _ in range(6)]
    ws = [dev.array(w, dtype) for w in ws64]
    x = [dev.array(round_to(rng.standard_normal((M, H)), dtype), dtype)]
    r = [dev.array(round_to(rng.standard_normal((M, H)), dtype), dtype)]
    for i in range(6):
        out = nan()
        if i % 2:
            minivllm.rms_norm(x[i], ws[i], out=out)
            r.append(r[i])
        else:
            r_next = nan()
            minivllm.fused_add_rms_norm(x[i], r[i], ws[i], out=out, residual_out=r_next)
            r.append(r_next)
        x.append(out)
    dev.sync()
    for i in range(6):
        if i % 2:
            assert_matches(to64(x[i + 1]), rms_norm_ref(to64(x[i]), ws64[i], 1e-6), TOL[dtype])
        else:
            ref_n, ref_s = fused_add_rms_norm_ref(to64(x[i]), to64(r[i]), ws64[i], 1e-6, dtype)
            assert_matches(to64(x[i + 1]), ref_n, TOL[dtype])
            assert_same_values(to64(r[i + 1]), ref_s, f"call {i} residual_out")
