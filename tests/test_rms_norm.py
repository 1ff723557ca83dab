"""minivllm.rms_norm: values, dtypes, devices, layouts, out=, special values."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st, HealthCheck

import minivllm
from conftest import (DTYPES, LAYOUTS, NP_ONLY_LAYOUTS, assert_native, bcast_ref_data,
                      make_rows, norm_weight, randn, round_np, to64)
from reference import TOL, assert_matches, assert_same_values, rms_norm_ref, round_to

HS = [1, 3, 100, 256, 512, 896, 1000, 1024, 2048, 2560, 3584, 4096, 5120, 8192]


def _inputs(dev, rng, M, H, dtype, scale=1.0):
    x = dev.array(randn(rng, (M, H), scale), dtype)
    w = dev.array(norm_weight(rng, H), dtype)
    return x, w


def _check_call(dev, x, w, dtype, eps=1e-6, **kw):
    """Call rms_norm, check kind/dtype/shape/values and that the inputs are unchanged."""
    x0, w0 = to64(x), to64(w)
    r = minivllm.rms_norm(x, w, eps, **kw) if eps is not None else minivllm.rms_norm(x, w, **kw)
    dev.sync()
    assert_native(dev, r, dtype, dev.shape(x))
    assert_matches(to64(r), rms_norm_ref(x0, w0, 1e-6 if eps is None else eps), TOL[dtype])
    assert_same_values(to64(x), x0, "x")
    assert_same_values(to64(w), w0, "weight")
    return r


@pytest.mark.parametrize("H", HS)
def test_hidden_sizes(dev, dtype, H, rng):
    M = 7 if H <= 4096 else 3
    x, w = _inputs(dev, rng, M, H, dtype)
    _check_call(dev, x, w, dtype)


@pytest.mark.parametrize("M", [0, 1, 7, 33, 1000, 4099])
def test_rows(dev, dtype, M, rng):
    x, w = _inputs(dev, rng, M, 1000, dtype)
    _check_call(dev, x, w, dtype)


def test_many_rows_wide(dev, dtype, rng):
    x, w = _inputs(dev, rng, 3000, 4096, dtype, scale=3.0)
    _check_call(dev, x, w, dtype)


def test_default_eps(dev, dtype, rng):
    x, w = _inputs(dev, rng, 5, 256, dtype, scale=1e-3)  # eps visible at this scale
    _check_call(dev, x, w, dtype, eps=None)


def test_keyword_arguments(dev, dtype, rng):
    x, w = _inputs(dev, rng, 5, 128, dtype)
    out = dev.full((5, 128), dtype)
    r = minivllm.rms_norm(x=x, weight=w, eps=1e-5, out=out)
    dev.sync()
    assert r is out
    assert_matches(to64(out), rms_norm_ref(to64(x), to64(w), 1e-5), TOL[dtype])


@pytest.mark.parametrize("odd_M", [3, 17, 129, 299])
def test_odd_rows(dev, dtype, odd_M, rng):
    x, w = _inputs(dev, rng, odd_M, 896, dtype)
    _check_call(dev, x, w, dtype)


def test_random_odd_rows(dev, dtype, rng):
    M = int(rng.integers(0, 150)) * 2 + 1
    H = int(rng.choice(HS[:8]))
    x, w = _inputs(dev, rng, M, H, dtype)
    _check_call(dev, x, w, dtype)


@pytest.mark.parametrize("shape", [(2, 3, 256), (1, 1, 1000), (4, 5, 3), (2, 0, 64), (2, 2, 2, 100)])
def test_nd_inputs(dev, dtype, shape, rng):
    x = dev.array(randn(rng, shape), dtype)
    w = dev.array(norm_weight(rng, shape[-1]), dtype)
    _check_call(dev, x, w, dtype)
    out = dev.full(shape, dtype)
    r = minivllm.rms_norm(x, w, 1e-6, out=out)
    dev.sync()
    assert r is out
    assert_matches(to64(out), rms_norm_ref(to64(x), to64(w), 1e-6), TOL[dtype])


def test_1d_input(dev, dtype, rng):
    """x: [..., H] with no leading dimension is a single row."""
    x, w = dev.array(randn(rng, 300), dtype), dev.array(norm_weight(rng, 300), dtype)
    _check_call(dev, x, w, dtype)


@pytest.mark.parametrize("H", [1, 3, 100, 1000, 4096])
def test_out_poisoned(dev, dtype, H, rng):
    M = 33
    x, w = _inputs(dev, rng, M, H, dtype)
    out = dev.full((M, H), dtype)  # NaN: anything left unwritten fails the check
    r = _check_call(dev, x, w, dtype, out=out)
    assert r is out


@pytest.mark.parametrize("H", [1, 121, 1024, 4095, 12345, 20000])
def test_out_is_x(dev, dtype, H, rng):
    """out=x, in place: every kernel reads an element before it writes it, the reference kernel's
    long rows (float32 H = 12345, every dtype at 20000) included, whose threads load a batch of
    elements before storing any."""
    x, w = _inputs(dev, rng, 5, H, dtype)
    x0, w0 = to64(x), to64(w)
    r = minivllm.rms_norm(x, w, 1e-6, out=x)
    dev.sync()
    assert r is x
    assert_matches(to64(x), rms_norm_ref(x0, w0, 1e-6), TOL[dtype])
    assert_same_values(to64(w), w0, "weight")


@pytest.mark.parametrize("layout", LAYOUTS + NP_ONLY_LAYOUTS)
@pytest.mark.parametrize("H", [3, 100, 999, 1024, 3584])
def test_strided_input(dev, dtype, layout, H, rng):
    M = 21
    data = randn(rng, (M, H))
    x, parent = make_rows(dev, data, dtype, layout)
    w = dev.array(norm_weight(rng, H), dtype)
    p0 = to64(parent)
    ref_x = bcast_ref_data(data) if layout == "bcast" else data
    assert_same_values(to64(x), round_to(ref_x, dtype), "test setup")
    r = minivllm.rms_norm(x, w, 1e-6)
    dev.sync()
    assert_native(dev, r, dtype, (M, H))
    assert_matches(to64(r), rms_norm_ref(to64(x), to64(w), 1e-6), TOL[dtype])
    assert_same_values(to64(parent), p0, "x (whole allocation)")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("H", [3, 100, 999, 1024])
def test_strided_out(dev, dtype, layout, H, rng):
    """out= a strided view of a NaN-filled allocation: view written, the rest untouched."""
    M = 13
    x, _ = make_rows(dev, randn(rng, (M, H)), dtype, "both")
    w = dev.array(norm_weight(rng, H), dtype)
    out, parent = make_rows(dev, np.full((M, H), np.nan), dtype, layout)
    r = minivllm.rms_norm(x, w, 1e-6, out=out)
    dev.sync()
    assert r is out
    assert_matches(to64(out), rms_norm_ref(to64(x), to64(w), 1e-6), TOL[dtype])
    p = to64(parent)
    if layout != "contig":
        # everything outside the view is still NaN
        sel = np.zeros(p.shape, bool)
        step = 2 if layout in ("rowstep", "both") else 1
        off = 1 if layout in ("colslice", "both") else 0
        sel[::step, off:off + H][:M] = True
        assert np.isnan(p[~sel]).all(), "rms_norm wrote outside out"


def test_strided_3d(dev, dtype, rng):
    """[B, T, H] view with strided (but collapsible) leading dimensions and offset columns."""
    B, T, H = 3, 4, 200
    big = dev.full((B, 2 * T, H + 3), dtype)
    x = big[:, ::2, 2:2 + H]  # strides (2T(H+3), 2(H+3), 1): collapsible into one row stride
    dev.assign(x, dev.array(randn(rng, (B, T, H)), dtype))
    w = dev.array(norm_weight(rng, H), dtype)
    _check_call(dev, x, w, dtype)


def test_read_only_inputs_numpy(dtype, rng):
    x = round_np(randn(rng, (9, 64)), dtype)
    w = round_np(norm_weight(rng, 64), dtype)
    x.setflags(write=False)
    w.setflags(write=False)
    r = minivllm.rms_norm(x, w)
    assert type(r) is np.ndarray and r.dtype == x.dtype
    assert_matches(to64(r), rms_norm_ref(to64(x), to64(w), 1e-6), TOL[dtype])


def test_weight_view_with_offset(dev, dtype, rng):
    H = 257
    x, _ = _inputs(dev, rng, 6, H, dtype)
    wbig = dev.full((H + 1,), dtype)
    w = wbig[1:]
    dev.assign(w, dev.array(norm_weight(rng, H), dtype))
    _check_call(dev, x, w, dtype)


def test_eps_is_honoured(dev, dtype, rng):
    x, w = _inputs(dev, rng, 8, 256, dtype, scale=0.3)
    a = to64(minivllm.rms_norm(x, w, 1e-6))
    b = to64(minivllm.rms_norm(x, w, 1.0))
    c = to64(minivllm.rms_norm(x, w, eps=0.0))
    x0, w0 = to64(x), to64(w)
    assert_matches(a, rms_norm_ref(x0, w0, 1e-6), TOL[dtype], "eps=1e-6")
    assert_matches(b, rms_norm_ref(x0, w0, 1.0), TOL[dtype], "eps=1.0")
    assert_matches(c, rms_norm_ref(x0, w0, 0.0), TOL[dtype], "eps=0")
    assert np.abs(a - b).max() > 0.1 * np.abs(a).max()


def test_nan_inf_propagate(dev, dtype, rng):
    M, H = 6, 300
    data = randn(rng, (M, H))
    data[1, 17] = np.nan
    data[2, 0] = np.inf
    data[3, 299] = -np.inf
    data[4, 5] = np.inf
    data[4, 6] = np.nan
    x = dev.array(data, dtype)
    w = dev.array(norm_weight(rng, H), dtype)
    out = dev.full((M, H), dtype, 7.0)
    minivllm.rms_norm(x, w, 1e-6, out=out)
    dev.sync()
    o = to64(out)
    ref = rms_norm_ref(to64(x), to64(w), 1e-6)
    assert np.isnan(o[1]).all(), "a NaN in a row makes the whole row NaN"
    assert np.isnan(o[2, 0]) and (o[2, 1:] == 0).all(), "an Inf gives NaN there and 0 elsewhere"
    assert np.isnan(o[3, 299]) and (o[3, :299] == 0).all()
    assert np.isnan(o[4]).all()
    assert_matches(o, ref, TOL[dtype])


def test_zero_rows(dev, dtype, rng):
    data = randn(rng, (4, 128))
    data[2] = 0.0
    x = dev.array(data, dtype)
    w = dev.array(norm_weight(rng, 128), dtype)
    r = to64(minivllm.rms_norm(x, w, 1e-6))
    assert (r[2] == 0).all()
    assert_matches(r, rms_norm_ref(to64(x), to64(w), 1e-6), TOL[dtype])


@pytest.mark.parametrize("H", [64, 1000, 4096])
def test_fp16_sum_of_squares_overflows(dev, H, rng):
    """|x| in [300, 60000]: x*x and the row sum overflow fp16; float32 accumulation must not."""
    M = 9
    mag = rng.uniform(300, 60000, (M, H))
    data = mag * rng.choice([-1.0, 1.0], (M, H))
    x = dev.array(data, "float16")
    w = dev.array(norm_weight(rng, H), "float16")
    out = dev.full((M, H), "float16")
    minivllm.rms_norm(x, w, 1e-6, out=out)
    dev.sync()
    o = to64(out)
    assert np.isfinite(o).all()
    assert_matches(o, rms_norm_ref(to64(x), to64(w), 1e-6), TOL["float16"])


def test_rounded_once(dev, rng):
    """y = weight*(x*rrms) in float32, rounded once: near-exact vs the float64 reference."""
    M, H = 64, 512
    x, w = _inputs(dev, rng, M, H, "bfloat16")
    r = to64(minivllm.rms_norm(x, w, 1e-6))
    ref = rms_norm_ref(to64(x), to64(w), 1e-6)
    # one rounding to bf16 => at most ~half an ulp (2^-8 relative), float32 noise aside
    rel = np.abs(r - ref) / np.maximum(np.abs(ref), 1e-30)
    assert rel.max() <= 2.0 ** -8 * 1.05, f"max elementwise rel error {rel.max():.3g}"
    exact = (r == round_to(ref, "bfloat16")).mean()
    assert exact > 0.99, f"only {exact:.3f} of the outputs are the correctly rounded value"


def test_zero_size(dev, dtype):
    x = dev.array(np.zeros((0, 64)), dtype)
    w = dev.array(np.ones(64), dtype)
    r = minivllm.rms_norm(x, w)
    assert_native(dev, r, dtype, (0, 64))
    out = dev.full((0, 64), dtype)
    assert minivllm.rms_norm(x, w, out=out) is out


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(M=st.integers(0, 40), H=st.integers(1, 300), dtype=st.sampled_from(DTYPES),
       layout=st.sampled_from(LAYOUTS + NP_ONLY_LAYOUTS), use_out=st.booleans(),
       seed=st.integers(0, 2 ** 32 - 1), eps=st.sampled_from([1e-6, 1e-5, 0.1]))
def test_property_cpu(M, H, dtype, layout, use_out, seed, eps):
    from conftest import get_backend
    dev = get_backend("cpu")
    rng = np.random.default_rng(seed)
    data = randn(rng, (M, H), 2.0)
    x, _ = make_rows(dev, data, dtype, layout)
    w = round_np(norm_weight(rng, H), dtype)
    kw = {}
    if use_out:
        kw["out"] = np.full((M, H), np.nan, dtype=x.dtype)
    r = minivllm.rms_norm(x, w, eps, **kw)
    if use_out:
        assert r is kw["out"]
    assert_matches(to64(r), rms_norm_ref(to64(x), to64(w), eps), TOL[dtype])
