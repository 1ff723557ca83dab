"""CPU numerics the kernels document (csrc/cpu/norm_row.h): float32 sums of squares accurate
for any H (blocked, pairwise), rows whose squares overflow or underflow float32 redone in float64
scaled by the row's largest magnitude, at every SIMD level; and the argument checks of issue 31
(eps finite as a float32 and >= 0, counts that do not fit their C type, big-endian arrays)."""
import numpy as np
import pytest

import minivllm
from minivllm import _C

LEVELS = list(_C._simd_levels())


@pytest.fixture(params=LEVELS)
def level(request):
    previous = _C._set_simd_level(LEVELS.index(request.param))
    yield request.param
    _C._set_simd_level(previous)


def ref64(x, w, eps):
    x = x.astype(np.float64)
    return w.astype(np.float64) * x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)


def test_long_row_sum_is_accurate(level):
    """H = 2^24 of one value: a sequential float32 sum would be off by ~1e-4 relative; the
    blocked pairwise sum stays within a few float32 ulps."""
    H = 1 << 24
    x = np.full((1, H), 0.1, np.float32)
    w = np.ones(H, np.float32)
    out = minivllm.rms_norm(x, w, 0.0)
    err = np.max(np.abs(out.astype(np.float64) - 1.0))
    assert err < 1e-6, err


@pytest.mark.parametrize("scale", [1e20, 1e30, 3e38])
def test_rows_whose_squares_overflow(level, scale, rng):
    # |z| <= 4 keeps every element finite in float32 (3e38 * 4 / 4 < FLT_MAX): this test is about
    # rows whose squares overflow, not rows that hold an inf
    z = np.clip(rng.standard_normal((3, 257)), -4.0, 4.0)
    x = (z * scale / 4).astype(np.float32)
    x[0, 5] = np.float32(scale)  # at least one element that large
    w = (1 + 0.5 * rng.standard_normal(257)).astype(np.float32)
    out = minivllm.rms_norm(x, w, 1e-6)
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out, ref64(x, w, 1e-6), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scale", [1e-25, 1e-38, 1e-44])
def test_rows_whose_squares_underflow(level, scale, rng):
    x = (rng.standard_normal((2, 100)) * scale).astype(np.float32)
    w = np.ones(100, np.float32)
    out = minivllm.rms_norm(x, w, 0.0)
    np.testing.assert_allclose(out, ref64(x, w, 0.0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", ["float16"])
def test_overflow_in_fused_qkv(level, dtype, rng):
    """The QKV op normalizes with the same row code: fp16 inputs near its max square past
    float32? No (65504^2 fits), so use float32 inputs there."""
    x = (rng.standard_normal((2, 64)) * 1e25).astype(np.float32)
    w = np.ones(64, np.float32)
    W = (rng.standard_normal((32, 64)) / 8).astype(np.float32)
    q, k, v = minivllm.fused_rms_norm_qkv(x, w, W, 2, 1)
    y = ref64(x, w, 1e-6)
    ref = y @ W.astype(np.float64).T
    got = np.concatenate([q.reshape(2, -1), k.reshape(2, -1), v.reshape(2, -1)], 1)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("eps", [1e39, float("inf"), float("nan"), -1e-6])
def test_eps_must_be_finite_float32_and_not_negative(eps):
    x = np.ones((1, 8), np.float32)
    with pytest.raises(ValueError, match="eps"):
        minivllm.rms_norm(x, np.ones(8, np.float32), eps)


@pytest.mark.parametrize("arg", ["num_heads", "num_kv_heads"])
@pytest.mark.parametrize("value", [2 ** 70, -(2 ** 70), 2 ** 63])
def test_counts_that_do_not_fit_name_the_argument(arg, value):
    x = np.ones((1, 8), np.float32)
    kw = {"num_heads": 2, "num_kv_heads": 1}
    kw[arg] = value
    with pytest.raises(ValueError, match=arg):
        minivllm.fused_rms_norm_qkv(x, np.ones(8, np.float32), np.ones((16, 8), np.float32),
                                    kw["num_heads"], kw["num_kv_heads"])


def test_big_endian_says_byte_order():
    x = np.ones((1, 8), ">f4")
    with pytest.raises(TypeError, match="byte order"):
        minivllm.rms_norm(x, np.ones(8, np.float32))
