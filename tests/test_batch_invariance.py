"""Batch invariance of the norm ops: a row's bits do not depend on how many rows share the call or
where in the call the row sits (docs/numerics.md), on the CPU and the GPU. Serving stacks that
batch requests together, and speculative decoding that re-runs a prefix, rely on it.

Each case normalizes a batch of more rows than any GPU has multiprocessors, then the same rows in
slices of 104 rows, in single rows, and at other positions (a slice starting mid-batch), and
compares the results bit for bit. On the GPU the slices and single rows are short calls (at most a
row per multiprocessor: the short-call kernels, one vector a thread for rows of up to 128 16-byte
vectors or 128 elements, two for 129-1024 vectors, else several) and the whole batch is a longer
call (the general kernel, or for rows of 16-byte vectors whose blocks fit one wave the lanes
kernels as well, one vector a thread up to 256 vectors; single elements, odd H of 9-4096, the elems
kernel past the short calls but float32 fused adds of many rows: H = 201 and 301 put 4 and 2 rows
in its block, 1501 a row of 256 threads, 121 two rows a warp); H = 64 puts several rows in a warp
of the general layout, H = 2048 in bf16 takes two vectors a thread in short calls and one in
longer ones, 8192 is the last row on two; float32 12345 and 16384 and 16-bit 20000 take rms_norm's 8 vectors a thread,
float32 20000 and 16-bit 40000 its 16 (rms_norm_wider_kernel). Past one wave the general kernel
again, but for the fused add without PDL: test_one_wave_calls_match_longer_ones.
"""
import numpy as np
import pytest

import minivllm
from conftest import norm_weight, randn, to64

BIG_M = 640  # > 4 x 148: past four rows per multiprocessor on any current GPU (kernel choices by M)
SLICE = 104


def _bits(a):
    return np.asarray(to64(a))


def _check_slices(dev, dtype, op, H, rng, rows, slices, pdl_whole=None, pdl_slices=None):
    """rows rows in one call, then each (lo, hi) slice alone: the same bits. pdl_*: the calls'
    pdl argument (on the GPU the kernel a call takes may depend on it)."""
    x64 = randn(rng, (rows, H))
    r64 = randn(rng, (rows, H))
    w = dev.array(norm_weight(rng, H), dtype)

    def run(lo, hi, pdl):
        x = dev.array(x64[lo:hi], dtype)
        if op == "rms_norm":
            out = (minivllm.rms_norm(x, w, pdl=pdl),)
        else:
            out = minivllm.fused_add_rms_norm(x, dev.array(r64[lo:hi], dtype), w, pdl=pdl)
        dev.sync()
        return [_bits(o) for o in out]

    whole = run(0, rows, pdl_whole)
    for lo, hi in slices:
        for name, got, ref in zip(("out", "residual_out"), run(lo, hi, pdl_slices), whole):
            np.testing.assert_array_equal(
                got, ref[lo:hi], err_msg=f"{op} {name}: rows {lo}:{hi} alone (pdl={pdl_slices}) differ "
                                         f"from {rows} rows (pdl={pdl_whole})")


@pytest.mark.parametrize("H", [64, 121, 201, 301, 896, 999, 1000, 1501, 2048, 3000, 4095, 4096, 5119, 5120, 8192, 12345, 13001, 16384, 20000, 24577, 32769, 40000])
@pytest.mark.parametrize("op", ["rms_norm", "fused_add_rms_norm"])
def test_rows_do_not_depend_on_the_batch(dev, dtype, op, H, rng):
    pieces = [(lo, min(lo + SLICE, BIG_M)) for lo in range(0, BIG_M, SLICE)]
    pieces += [(0, 1), (BIG_M // 2, BIG_M // 2 + 1), (BIG_M - 1, BIG_M), (7, 140)]
    _check_slices(dev, dtype, op, H, rng, BIG_M, pieces)


# Past one wave of the lanes kernels' blocks (at most 16 a multiprocessor) on any GPU of up to
# 256 multiprocessors: the whole call takes the general kernel, its slices of a few rows per
# multiprocessor the lanes kernels (a row a block), single rows and short slices the short calls'.
# On the GPU the fused add without PDL takes the lanes kernels at any number of waves: the whole
# call without PDL against slices with it, and the reverse.
LONG_M = 4096


@pytest.mark.parametrize("H", [896, 1000, 2048, 4096, 5120])
@pytest.mark.parametrize("op", ["rms_norm", "fused_add_rms_norm"])
def test_one_wave_calls_match_longer_ones(dev, dtype, op, H, rng):
    slices = ((0, 640), (640, 1700), (3000, 3133), (100, 300), (2049, 2050), (LONG_M - 1, LONG_M))
    _check_slices(dev, dtype, op, H, rng, LONG_M, slices)
    if dev.name != "cpu":
        _check_slices(dev, dtype, op, H, rng, LONG_M, slices, pdl_whole=False, pdl_slices=None)
        _check_slices(dev, dtype, op, H, rng, LONG_M, slices, pdl_whole=None, pdl_slices=False)


# Rows off the 16-byte grid in calls of many waves of blocks: H = 121 in single elements (the elems
# kernel, 8 rows a warp; a float32 fused add on the general kernel), 5119 and 8191 in 16-byte
# virtual vectors: in 16-bit types through shared memory (the staged kernel, R = 128 real threads
# for G = 320 and 512), in float32 in place on rms_norm_virtual_kernel (rms_norm, and the fused add
# of 5119, whose 3 rows fit an SM in registers; rms_norm of 5125 and 6001 in its 56-register form;
# the fused add of 5125, 6001 and 8191 with the row in shared memory), single rows on the short kernel.
@pytest.mark.parametrize("M,H", [(36000, 121), (2000, 5119), (2000, 5125), (2000, 6001), (1200, 8191)])
@pytest.mark.parametrize("op", ["rms_norm", "fused_add_rms_norm"])
def test_calls_of_many_waves(dev, dtype, op, M, H, rng):
    _check_slices(dev, dtype, op, H, rng, M, ((0, 1), (1, 600), (M // 2, M // 2 + 200), (M - 130, M)))


@pytest.mark.parametrize("M,H", [(24, 1000), (BIG_M, 121), (BIG_M, 999), (BIG_M, 5119), (BIG_M, 8191), (2000, 4097)])
@pytest.mark.parametrize("form", ["offset", "float32_weight"])
def test_weight_forms_do_not_depend_on_the_batch(dev, dtype, form, M, H, rng):
    """The weight forms too: on the CPU a 16-bit call of many rows converts gamma (+ offset) to
    float32 once per thread instead of in every row; on the GPU calls of many rows of odd H go
    through shared memory, the weight with them. The bits must be those of a row alone."""
    x = dev.array(randn(rng, (M, H)), dtype)
    if form == "offset":
        w, kw = dev.array(0.1 * randn(rng, (H,)), dtype), {"weight_offset": 1.0}
    else:
        w, kw = dev.array(norm_weight(rng, H), "float32"), {}
    if form == "float32_weight" and dtype == "float32":
        pytest.skip("a float32 weight beside float32 rows is the plain form")
    whole = _bits(minivllm.rms_norm(x, w, **kw))
    for lo in (0, 5, M // 2 + 1, M - 1):
        got = _bits(minivllm.rms_norm(x[lo:lo + 1], w, **kw))
        np.testing.assert_array_equal(got, whole[lo:lo + 1], err_msg=f"{form}: row {lo} alone")
