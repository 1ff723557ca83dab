"""The CPU kernels at every SIMD level this machine runs (portable C included), forced with the
private _C._set_simd_level cap, against the float64 references: every dtype, the residual form,
odd sizes (vector tails), the direct (decode) and blocked-GEMM QKV paths and the transposed
W layout."""
import ml_dtypes
import numpy as np
import pytest

import minivllm
from minivllm import _C
from conftest import norm_weight, round_np
from reference import QKV_TOL, TOL, assert_matches, assert_same_values, fused_add_rms_norm_ref, \
    qkv_ref, rms_norm_ref

LEVELS = list(_C._simd_levels())


@pytest.fixture(params=LEVELS)
def level(request):
    previous = _C._set_simd_level(LEVELS.index(request.param))
    assert _C._simd_level() == request.param
    yield request.param
    _C._set_simd_level(previous)


@pytest.fixture(params=[1, 2])
def threads(request):
    previous = minivllm.set_num_threads(request.param)
    yield request.param
    minivllm.set_num_threads(previous)


def test_levels_listed():
    assert LEVELS[0] == "portable"
    assert _C._simd_level() == LEVELS[-1]  # the default is the best the CPU has


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("M,H", [(1, 1), (3, 7), (5, 33), (2, 1000), (70, 1024), (1, 4099)])
def test_norms(level, threads, dtype, M, H, rng):
    x64 = rng.standard_normal((M, H)) * 3
    r64 = rng.standard_normal((M, H))
    w64 = norm_weight(rng, H)
    x, r, w = round_np(x64, dtype), round_np(r64, dtype), round_np(w64, dtype)
    out = minivllm.rms_norm(x, w, 1e-6)
    assert_matches(out.astype(np.float64), rms_norm_ref(x.astype(np.float64), w.astype(np.float64),
                                                         1e-6), TOL[dtype], "rms_norm")
    normed, summed = minivllm.fused_add_rms_norm(x, r, w, 1e-6)
    ref_normed, ref_summed = fused_add_rms_norm_ref(x.astype(np.float64), r.astype(np.float64),
                                                    w.astype(np.float64), 1e-6, dtype)
    assert_same_values(summed.astype(np.float64), ref_summed, "residual_out")
    assert_matches(normed.astype(np.float64), ref_normed, TOL[dtype], "fused_add_rms_norm")


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("M", [1, 3, 16, 17, 40])
@pytest.mark.parametrize("H,NH,NKV,HD", [(64, 2, 1, 8), (100, 3, 1, 9), (1030, 4, 2, 8)])
@pytest.mark.parametrize("transposed", [False, True])
def test_qkv(level, threads, dtype, M, H, NH, NKV, HD, transposed, rng):
    N = (NH + 2 * NKV) * HD
    x64, r64 = rng.standard_normal((M, H)), rng.standard_normal((M, H))
    w64, W64 = norm_weight(rng, H), rng.standard_normal((N, H)) / np.sqrt(H)
    x, r, w, W = (round_np(a, dtype) for a in (x64, r64, w64, W64))
    Warg = np.ascontiguousarray(W.T) if transposed else W  # [H, N] row-major: w_stride_n == 1
    got = minivllm.fused_rms_norm_qkv(x, w, Warg, NH, NKV, 1e-6, residual=r)
    ref = qkv_ref(x.astype(np.float64), w.astype(np.float64), W.astype(np.float64), NH, NKV, 1e-6,
                  residual=r.astype(np.float64), dtype=dtype)
    for name, g, e in zip("qkv", got[:3], ref[:3]):
        assert_matches(np.asarray(g, np.float64), e, QKV_TOL[dtype], name, row_axes=2)
    assert_same_values(np.asarray(got[3], np.float64), ref[3], "residual_out")


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("M", [17, 19, 50, 300])
def test_qkv_blocked_gemm(level, threads, dtype, M, rng):
    """The blocked GEMM (M > 16): row panels with 1 to all of their vectors real (17, 19, 50 on
    each level's panel width), column tiles cut short (N = 252), more columns than one claim, two
    row chunks (300 > 256), H past one depth block with a tail; outputs poisoned with NaN."""
    H, NH, NKV, HD = 300, 20, 4, 9
    N = (NH + 2 * NKV) * HD
    x, w = round_np(rng.standard_normal((M, H)), dtype), round_np(norm_weight(rng, H), dtype)
    W = round_np(rng.standard_normal((N, H)) / np.sqrt(H), dtype)
    out = tuple(np.full((M, h, HD), np.nan, dtype=x.dtype) for h in (NH, NKV, NKV))
    got = minivllm.fused_rms_norm_qkv(x, w, W, NH, NKV, 1e-6, out=out)
    ref = qkv_ref(x.astype(np.float64), w.astype(np.float64), W.astype(np.float64), NH, NKV, 1e-6,
                  dtype=dtype)
    for name, g, o, e in zip("qkv", got, out, ref):
        assert g is o
        assert_matches(np.asarray(g, np.float64), e, QKV_TOL[dtype], name, row_axes=2)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_levels_agree(dtype, rng):
    """Every level computes the same numbers up to float32 summation order."""
    H, M = 515, 9
    x = round_np(rng.standard_normal((M, H)), dtype)
    w = round_np(norm_weight(rng, H), dtype)
    W = round_np(rng.standard_normal((48, H)) / 20, dtype)
    results = []
    previous = _C._set_simd_level(0)
    try:
        for i in range(len(LEVELS)):
            _C._set_simd_level(i)
            results.append((minivllm.rms_norm(x, w).astype(np.float64),
                            np.concatenate([a.reshape(M, -1) for a in
                                            minivllm.fused_rms_norm_qkv(x, w, W, 4, 1)], 1)
                            .astype(np.float64)))
    finally:
        _C._set_simd_level(previous)
    for norm, qkv in results[1:]:
        assert_matches(norm, results[0][0], TOL[dtype], "rms_norm across levels")
        assert_matches(qkv, results[0][1], QKV_TOL[dtype], "qkv across levels")


def _bf16(bits):
    return np.asarray(bits, np.uint16).view(ml_dtypes.bfloat16)


def test_bf16_stores_bitwise_across_levels(rng):
    """The bf16 stores (the avx512bf16 level's vcvtneps2bf16 with its denormal lanes fixed up,
    the other levels' integer rounding) give the portable path's bits: rms_norm of rows whose sum
    of squares is exact in any order (small integers, so every level has the same rrms) with
    weights that send the float32 products through bf16 denormals, the smallest normals, ties,
    overflow to inf, NaN and signed zeros; and fused add's residual_out, x + r rounded once, at
    ties and at float32 denormal sums (2^-126 - 2^-133: a bf16 denormal, which the instruction
    alone flushes to zero). Outputs poisoned with NaN."""
    M, H = 6, 67  # whole vectors and a tail on every level
    x = rng.integers(-3, 4, (M, H)).astype(ml_dtypes.bfloat16)
    x[:, 0] = 1  # no all-zero row (that row would take the float64 path)
    special = [0x0001, 0x8001, 0x007f, 0x0040, 0x0080, 0x8080, 0x00ff, 0x0100, 0x7f7f, 0xff7f,
               0x7f80, 0x7fc1, 0xffa0, 0x0000, 0x8000, 0x3f80]
    w_bits = rng.integers(0, 0x10000, H, dtype=np.uint32)
    w_bits[: H // 2] &= 0x81ff  # denormals and the lowest normals
    w_bits[H // 2: H // 2 + len(special)] = special
    w = _bf16(w_bits)
    # x + r: ties (1 + 2^-8 between 1 and 1 + 2^-7), denormal sums, the smallest normals, random
    xr = _bf16(rng.integers(0, 0x10000, (M, H), dtype=np.uint32) & 0xbfff)
    rr = _bf16(rng.integers(0, 0x10000, (M, H), dtype=np.uint32) & 0xbfff)
    xr[0], rr[0] = _bf16(0x3f80), _bf16(0x3b80)  # 1 + 2^-8: ties to 1
    xr[1], rr[1] = _bf16(0x3f81), _bf16(0x3b80)  # ties up to 0x3f82
    xr[2], rr[2] = _bf16(0x0080), _bf16(0x8001)  # 2^-126 - 2^-133 = bf16 0x007f
    xr[3], rr[3] = _bf16(0x0081), _bf16(0x8080)  # 2^-133
    xr[4, ::2], rr[4, ::2] = _bf16(0x8100), _bf16(0x0081)  # -(2^-125 - 2^-126 - 2^-133)
    results = []
    previous = _C._set_simd_level(0)
    try:
        for i in range(len(LEVELS)):
            _C._set_simd_level(i)
            out = np.full((M, H), np.nan, ml_dtypes.bfloat16)
            minivllm.rms_norm(x, w, 0.0, out=out)
            normed = np.full((M, H), np.nan, ml_dtypes.bfloat16)
            residual_out = np.full((M, H), np.nan, ml_dtypes.bfloat16)
            minivllm.fused_add_rms_norm(xr, rr, w, 1e-6, out=normed, residual_out=residual_out)
            results.append((out.view(np.uint16), residual_out.view(np.uint16)))
    finally:
        _C._set_simd_level(previous)
    assert tuple(results[0][1][2:5, 0]) == (0x007f, 0x0001, 0x807f)  # exact, not flushed
    for level, (out, summed) in zip(LEVELS[1:], results[1:]):
        np.testing.assert_array_equal(out, results[0][0], err_msg=f"rms_norm bits, {level}")
        np.testing.assert_array_equal(summed, results[0][1], err_msg=f"residual_out bits, {level}")
