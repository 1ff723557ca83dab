"""The norm ops' weight forms: a float32 weight beside float16/bfloat16 rows (checkpoints such as
Gemma's keep norm weights in float32), and weight_offset, added to the weight in float32 (1.0 is
Gemma's (1 + w) norm). Against the float64 reference, on the CPU and the GPU, both kernels of the
GPU (the fast one, and the simple one that takes rows too long for registers)."""
import numpy as np
import pytest

import minivllm
from conftest import norm_weight, randn, to64
from reference import TOL, assert_matches, fused_add_rms_norm_ref, rms_norm_ref, round_to

HALF = ["float16", "bfloat16"]


@pytest.mark.parametrize("H", [1, 100, 896, 4096, 20000, 24577, 40000])
@pytest.mark.parametrize("dtype", HALF)
def test_float32_weight_beside_16_bit_rows(dev, dtype, H, rng):
    M = 5
    x64 = round_to(randn(rng, (M, H)), dtype)
    r64 = round_to(randn(rng, (M, H)), dtype)
    w64 = round_to(norm_weight(rng, H) + 1e-3 * randn(rng, (H,)), "float32")  # not 16-bit exact
    x, r, w = dev.array(x64, dtype), dev.array(r64, dtype), dev.array(w64, "float32")
    y = minivllm.rms_norm(x, w)
    normed, new_res = minivllm.fused_add_rms_norm(x, r, w)
    dev.sync()
    assert_matches(to64(y), rms_norm_ref(x64, w64), TOL[dtype], "rms_norm")
    ref_normed, ref_res = fused_add_rms_norm_ref(x64, r64, w64, 1e-6, dtype)
    assert_matches(to64(normed), ref_normed, TOL[dtype], "fused_add_rms_norm")
    np.testing.assert_array_equal(to64(new_res), ref_res)


@pytest.mark.parametrize("H", [1, 999, 4096, 20000, 24577, 32769])
@pytest.mark.parametrize("offset", [1.0, -0.5])
def test_weight_offset(dev, dtype, H, offset, rng):
    M = 4
    x64 = round_to(randn(rng, (M, H)), dtype)
    r64 = round_to(randn(rng, (M, H)), dtype)
    w64 = round_to(0.1 * randn(rng, (H,)), dtype)  # Gemma stores w around 0: the scale is 1 + w
    x, r, w = dev.array(x64, dtype), dev.array(r64, dtype), dev.array(w64, dtype)
    y = minivllm.rms_norm(x, w, weight_offset=offset)
    normed, _ = minivllm.fused_add_rms_norm(x, r, w, weight_offset=offset)
    dev.sync()
    assert_matches(to64(y), rms_norm_ref(x64, w64, 1e-6, offset), TOL[dtype], "rms_norm")
    ref_normed, _ = fused_add_rms_norm_ref(x64, r64, w64, 1e-6, dtype, offset)
    assert_matches(to64(normed), ref_normed, TOL[dtype], "fused_add_rms_norm")


@pytest.mark.parametrize("bad,error", [(float("nan"), ValueError), (float("inf"), ValueError),
                                       (1e39, ValueError), ("1", TypeError), (None, TypeError)])
def test_bad_weight_offset_is_refused(dev, bad, error, rng):
    x = dev.array(randn(rng, (2, 8)), "float32")
    w = dev.array(norm_weight(rng, 8), "float32")
    for call in (lambda: minivllm.rms_norm(x, w, weight_offset=bad),
                 lambda: minivllm.fused_add_rms_norm(x, x, w, weight_offset=bad)):
        with pytest.raises(error, match="^weight_offset: "):
            call()


def test_weight_of_another_16_bit_dtype_is_refused(dev, rng):
    x = dev.array(randn(rng, (2, 8)), "bfloat16")
    w = dev.array(norm_weight(rng, 8), "float16")
    with pytest.raises((TypeError, ValueError), match="^weight: "):
        minivllm.rms_norm(x, w)


def test_qkv_norm_weight_must_match(dev, rng):
    """The fused QKV op keeps its norm weight in the rows' dtype (its kernels read it so)."""
    x = dev.array(randn(rng, (2, 64)), "bfloat16")
    g = dev.array(norm_weight(rng, 64), "float32")
    W = dev.array(randn(rng, (3 * 16, 64), 0.1), "bfloat16")
    with pytest.raises((TypeError, ValueError), match="^norm_weight: "):
        minivllm.FusedRMSNormQKV.forward(x, g, W, 1, 1)


@pytest.mark.parametrize("H", [5119, 5125, 8191])
def test_weight_offset_in_calls_of_many_rows(dev, dtype, H, rng):
    """Rows of odd H above 4096 in calls of many rows a multiprocessor, where the GPU takes the
    staged kernel (16-bit) or the in-place virtual kernel (float32; the fused add holds the row in
    registers at 5119 and in shared memory from 5125): the (1 + w) form there too."""
    M = 1200
    x64 = round_to(randn(rng, (M, H)), dtype)
    r64 = round_to(randn(rng, (M, H)), dtype)
    w64 = round_to(0.1 * randn(rng, (H,)), dtype)
    x, r, w = dev.array(x64, dtype), dev.array(r64, dtype), dev.array(w64, dtype)
    y = minivllm.rms_norm(x, w, weight_offset=1.0)
    normed, new_res = minivllm.fused_add_rms_norm(x, r, w, weight_offset=1.0)
    dev.sync()
    assert_matches(to64(y), rms_norm_ref(x64, w64, 1e-6, 1.0), TOL[dtype], "rms_norm")
    ref_normed, ref_res = fused_add_rms_norm_ref(x64, r64, w64, 1e-6, dtype, 1.0)
    assert_matches(to64(normed), ref_normed, TOL[dtype], "fused_add_rms_norm")
    np.testing.assert_array_equal(to64(new_res), ref_res)
