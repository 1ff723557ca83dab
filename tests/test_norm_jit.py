"""The norm ops' per-call `jit` argument and the kernels compiled at run time for the call's H
(csrc/cuda/norm_jit.cu), which take the calls the lanes kernels would. On the GPU every form gives
the bits of the library's own kernels (jit=False) and is within the dtype's tolerance of float64:
short calls (at most a row per multiprocessor) of rows of 16-byte vectors, both ops, every dtype,
gamma in float32 beside 16-bit rows, Gemma's (1 + w), PDL on and off, contiguous and strided rows,
in-place forms, H from one vector to 1024 of them; longer calls (a wave of rows and more, where
jit=False runs the lanes or the general kernels); those cases skip where no CUDA GPU is usable
(the CPU has no such kernels).
On every device jit takes True or False and anything else is refused with a TypeError naming it.
"""
import numpy as np
import pytest

import minivllm
from conftest import DEVICES, NEEDS_CUDA, get_backend, make_rows, norm_weight, randn, to64
from minivllm import reference


def _call(dev, op, x, r, w, weight_offset, pdl, jit):
    """The op's outputs as float64 numpy, with run-time compiled kernels allowed (jit) or not."""
    if op == "rms_norm":
        outs = (minivllm.rms_norm(x, w, 1e-6, weight_offset=weight_offset, pdl=pdl, jit=jit),)
    else:
        outs = minivllm.fused_add_rms_norm(x, r, w, 1e-6, weight_offset=weight_offset, pdl=pdl, jit=jit)
    dev.sync()
    return [np.asarray(to64(o)) for o in outs]


@pytest.mark.parametrize("bad", ("yes", 1, 0, None, np.bool_(True), [True]), ids=repr)
@pytest.mark.parametrize("devname", DEVICES)
def test_bad_jit_is_refused(devname, bad, rng):
    dev = get_backend(devname)
    x, r, w = (dev.array(randn(rng, shape), "float32") for shape in ((2, 16), (2, 16), (16,)))
    for op, call in (("rms_norm", lambda: minivllm.rms_norm(x, w, jit=bad)),
                     ("fused_add_rms_norm", lambda: minivllm.fused_add_rms_norm(x, r, w, jit=bad))):
        with pytest.raises(TypeError, match=r"^jit: expected True or False"):
            call()


@pytest.mark.parametrize("devname", DEVICES)
def test_jit_false_gives_the_same_bits(devname, dtype, rng):
    """Both values on every device (the CPU ignores it): bit for bit the same rows."""
    dev = get_backend(devname)
    x, r = dev.array(randn(rng, (3, 1024)), dtype), dev.array(randn(rng, (3, 1024)), dtype)
    w = dev.array(norm_weight(rng, 1024), dtype)
    for op in ("rms_norm", "fused_add_rms_norm"):
        got, want = (_call(dev, op, x, r, w, 0.0, None, jit) for jit in (True, False))
        for g, e in zip(got, want):
            np.testing.assert_array_equal(g, e, err_msg=f"{op} on {devname}: jit=True against jit=False")


@pytest.mark.parametrize("H", [8, 64, 120, 896, 1000, 1024, 2048, 3000, 4096, 8192])
@pytest.mark.parametrize("rows", [1, 5, 48])
@pytest.mark.parametrize("op", ["rms_norm", "fused_add_rms_norm"])
@pytest.mark.parametrize("form", ["plain", "float32_weight", "offset"])
@pytest.mark.parametrize("pdl", [None, False])
@NEEDS_CUDA
def test_jit_kernels_give_the_lanes_kernels_bits(dtype, H, rows, op, form, pdl, rng):
    dev = get_backend("cuda")
    if dtype == "float32" and (H % 4 or H // 4 > 1024):
        pytest.skip("float32 rows of this H are not 16-byte vectors of at most 1024 (other kernels)")
    if form == "float32_weight" and dtype == "float32":
        pytest.skip("a float32 weight beside float32 rows is the plain form")
    x64, r64 = randn(rng, (rows, H)), randn(rng, (rows, H))
    x, r = dev.array(x64, dtype), dev.array(r64, dtype)
    w = dev.array(norm_weight(rng, H), "float32" if form == "float32_weight" else dtype)
    offset = 1.0 if form == "offset" else 0.0
    got = _call(dev, op, x, r, w, offset, pdl, jit=True)
    want = _call(dev, op, x, r, w, offset, pdl, jit=False)
    for name, g, e in zip(("out", "residual_out"), got, want):
        np.testing.assert_array_equal(g, e, err_msg=f"{op} {name}: run-time compiled kernel against the lanes kernel")
    s64 = np.asarray(to64(x)) + (np.asarray(to64(r)) if op != "rms_norm" else 0.0)
    if op != "rms_norm":
        s64 = np.asarray(to64(dev.array(s64, dtype)))  # the residual sum as stored
    g64 = np.asarray(to64(w)) + offset
    ref = s64 / np.sqrt(np.mean(s64 * s64, axis=1, keepdims=True) + 1e-6) * g64
    tol = reference.TOLERANCE[dtype]
    np.testing.assert_allclose(got[0], ref, rtol=tol, atol=tol, err_msg=f"{op}: against float64")


@pytest.mark.parametrize("H", [64, 1024, 4096, 8192])
@pytest.mark.parametrize("rows", [133, 600, 2100, 4500])
@pytest.mark.parametrize("op", ["rms_norm", "fused_add_rms_norm"])
@pytest.mark.parametrize("pdl", [None, False])
@NEEDS_CUDA
def test_jit_longer_calls_give_the_same_bits(dtype, H, rows, op, pdl, rng):
    """Past a row per multiprocessor: the compiled kernel where the lanes kernels would run (a wave
    of rows; the fused add's waves without PDL), the general kernel elsewhere; bit for bit
    jit=False's rows either way, and within tolerance of float64."""
    dev = get_backend("cuda")
    if dtype == "float32" and H // 4 > 1024:
        pytest.skip("float32 rows of this H are more than 1024 16-byte vectors (other kernels)")
    x64, r64 = randn(rng, (rows, H)), randn(rng, (rows, H))
    x, r = dev.array(x64, dtype), dev.array(r64, dtype)
    w = dev.array(norm_weight(rng, H), dtype)
    got = _call(dev, op, x, r, w, 0.0, pdl, jit=True)
    want = _call(dev, op, x, r, w, 0.0, pdl, jit=False)
    for name, g, e in zip(("out", "residual_out"), got, want):
        np.testing.assert_array_equal(g, e, err_msg=f"{op} {name}: jit=True against jit=False")
    s64 = np.asarray(to64(x)) + (np.asarray(to64(r)) if op != "rms_norm" else 0.0)
    if op != "rms_norm":
        s64 = np.asarray(to64(dev.array(s64, dtype)))  # the residual sum as stored
    ref = s64 / np.sqrt(np.mean(s64 * s64, axis=1, keepdims=True) + 1e-6) * np.asarray(to64(w))
    tol = reference.TOLERANCE[dtype]
    np.testing.assert_allclose(got[0], ref, rtol=tol, atol=tol, err_msg=f"{op}: against float64")


@pytest.mark.parametrize("layout", ["colslice", "rowstep", "both"])
@pytest.mark.parametrize("op", ["rms_norm", "fused_add_rms_norm"])
@NEEDS_CUDA
def test_jit_kernels_strided_rows_and_in_place(dtype, layout, op, rng):
    """Rows in a stride other than H (the form with strides at run time), and the in-place forms:
    the same bits as the lanes kernels, nothing written outside the rows."""
    dev = get_backend("cuda")
    H, rows = 1024, 6
    x64, r64 = randn(rng, (rows, H)), randn(rng, (rows, H))
    w = dev.array(norm_weight(rng, H), dtype)
    results = {}
    for jit in (True, False):
        x, x_parent = make_rows(dev, x64, dtype, layout)
        r, r_parent = make_rows(dev, r64, dtype, layout)
        if op == "rms_norm":
            minivllm.rms_norm(x, w, 1e-6, out=x, jit=jit)
        else:
            minivllm.fused_add_rms_norm(x, r, w, 1e-6, inplace=True, jit=jit)
        dev.sync()
        results[jit] = (np.asarray(to64(x_parent)), np.asarray(to64(r_parent)))
    for name, g, e in zip(("x (out)", "residual"), results[True], results[False]):
        np.testing.assert_array_equal(g, e, err_msg=f"{op} {layout}: {name} differs from the lanes kernel's")


@pytest.mark.parametrize("H", [8, 24, 64, 72, 128, 200, 256])
@pytest.mark.parametrize("rows", [1, 131, 20011])
@pytest.mark.parametrize("op", ["rms_norm", "fused_add_rms_norm"])
@pytest.mark.parametrize("form", ["plain", "float32_weight", "offset"])
@pytest.mark.parametrize("layout", ["contig", "rowstep"])
@pytest.mark.parametrize("pdl", [None, False])
@NEEDS_CUDA
def test_jit_rows_sharing_a_block_give_the_same_bits(dtype, H, rows, op, form, layout, pdl, rng):
    """Rows of at most 32 vectors share a block in the compiled kernel (rows_per_block rows of a
    power of two of lanes, the last block part empty when the rows do not fill it), at every M:
    bit for bit jit=False's rows, within tolerance of float64, and nothing written between the
    rows of a stepped view."""
    dev = get_backend("cuda")
    if dtype == "float32" and H % 4:
        pytest.skip("float32 rows of this H are not 16-byte vectors (other kernels)")
    if form == "float32_weight" and dtype == "float32":
        pytest.skip("a float32 weight beside float32 rows is the plain form")
    x64, r64 = randn(rng, (rows, H)), randn(rng, (rows, H))
    w = dev.array(norm_weight(rng, H), "float32" if form == "float32_weight" else dtype)
    offset = 1.0 if form == "offset" else 0.0
    results = {}
    for jit in (True, False):
        x, x_parent = make_rows(dev, x64, dtype, layout)
        r, r_parent = make_rows(dev, r64, dtype, layout)
        if op == "rms_norm":
            y, y_parent = make_rows(dev, np.full((rows, H), np.nan), dtype, layout)
            minivllm.rms_norm(x, w, 1e-6, weight_offset=offset, pdl=pdl, jit=jit, out=y)
            outs = (y_parent,)
        else:
            minivllm.fused_add_rms_norm(x, r, w, 1e-6, weight_offset=offset, pdl=pdl, jit=jit, inplace=True)
            outs = (x_parent, r_parent)
        dev.sync()
        results[jit] = [np.asarray(to64(o)) for o in outs]
    for name, g, e in zip(("out", "residual_out"), results[True], results[False]):
        np.testing.assert_array_equal(g, e, err_msg=f"{op} {layout} {name}: jit=True against jit=False")
    step = 2 if layout == "rowstep" else 1
    got = results[True][0][::step][:rows]
    if step > 1:
        assert np.isnan(results[True][0][1::step]).all(), "a row between the view's rows was written"
    s64 = np.asarray(to64(dev.array(x64, dtype)))
    if op != "rms_norm":
        s64 = np.asarray(to64(dev.array(s64 + np.asarray(to64(dev.array(r64, dtype))), dtype)))
    g64 = np.asarray(to64(w)) + offset
    ref = s64 / np.sqrt(np.mean(s64 * s64, axis=1, keepdims=True) + 1e-6) * g64
    tol = reference.TOLERANCE[dtype]
    np.testing.assert_allclose(got, ref, rtol=tol, atol=tol, err_msg=f"{op} {layout}: against float64")
