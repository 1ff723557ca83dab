"""The fast CUDA norm kernel against the deliberately simple reference kernel (and float64).

The fast kernel picks its vector width from H and the alignment of every pointer and row stride,
packs several rows per block for small H, and falls back to the reference kernel for rows too
long for registers: the cases below walk through each of those choices.
"""
import numpy as np
import pytest

import minivllm
from reference import TOL, assert_matches, fused_add_rms_norm_ref, rms_norm_ref

torch = pytest.importorskip("torch", reason="PyTorch is not installed (GPU kernel tests use it)")
pytestmark = pytest.mark.skipif(not minivllm.cuda_available(),
                                reason="no CUDA device (minivllm.cuda_available() is False)")

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# H: odd (vector width 1), 2 (mod 4), 4 (mod 8), multiples of 8; small (many rows per block),
# model sizes (4095: single elements, 8 per thread, up to 512 threads; 201 and 1501: 32 and 256
# threads of the elems kernel, 1501 a power of two above its 188 needed), rows of more than 2048
# 16-byte vectors (8 per thread; 12289 and 24577 off the grid), and past 4096 of them (the fused
# add's long-row kernel; rms_norm's 16 vectors a thread at float32 20000 and 16-bit 40000, its
# reference fallback at float32 40000 and off the grid, 32769).
HIDDEN = [1, 3, 6, 100, 201, 896, 1000, 1024, 1501, 3584, 4095, 4096, 5119, 5120, 8191, 8192, 12000, 12289,
          20000, 24577, 32769, 40000]


def _rows(rng, shape, dtype, offset=0, row_pad=0):
    """A [M, H] tensor on the GPU whose data starts `offset` elements into its storage and whose
    rows are H + row_pad apart: offsets and padding narrow the usable vector width."""
    m, h = shape
    storage = torch.from_numpy(rng.standard_normal(offset + m * (h + row_pad) + 1)).to("cuda", DTYPES[dtype])
    return storage[offset:offset + m * (h + row_pad)].view(m, h + row_pad)[:, :h]


def _poisoned_like(t):
    return torch.full_like(t, float("nan"))


def _stream():
    return torch.cuda.current_stream().cuda_stream


def _to64(t):
    return t.double().cpu().numpy()


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("hidden", HIDDEN)
@pytest.mark.parametrize("layout", ["contiguous", "offset1", "offset2_pad2"])
@pytest.mark.parametrize("residual", [False, True])
def test_fast_matches_reference_kernel(dtype, hidden, layout, residual):
    rng = np.random.default_rng()
    offset, pad = {"contiguous": (0, 0), "offset1": (1, 0), "offset2_pad2": (2, 2)}[layout]
    rows = 1 if hidden >= 20000 else 37
    x = _rows(rng, (rows, hidden), dtype, offset, pad)
    r = _rows(rng, (rows, hidden), dtype, offset, pad)
    w = torch.from_numpy(rng.uniform(0.5, 1.5, hidden)).to("cuda", DTYPES[dtype])
    outs = {}
    for reference in (False, True):
        out = _poisoned_like(x)
        if residual:
            new_res = _poisoned_like(x)
            minivllm._C.fused_add_rms_norm(x, r, w, 1e-6, out, new_res, None, _stream(), None,
                                           0.0, True, reference)
            outs[reference] = (out, new_res)
        else:
            minivllm._C.rms_norm(x, w, 1e-6, out, None, _stream(), None, 0.0, True, reference)
            outs[reference] = (out,)
    torch.cuda.synchronize()
    tol = TOL[dtype]
    if residual:
        ref_out, ref_res = fused_add_rms_norm_ref(_to64(x), _to64(r), _to64(w), 1e-6, dtype)
        # Both kernels round the same float32 sum: the new residual is identical.
        assert torch.equal(outs[False][1], outs[True][1])
        assert_matches(_to64(outs[False][1]), ref_res, tol, "new_residual")
    else:
        ref_out = rms_norm_ref(_to64(x), _to64(w), 1e-6)
    assert_matches(_to64(outs[True][0]), ref_out, tol, "reference kernel")
    assert_matches(_to64(outs[False][0]), ref_out, tol, "fast kernel")
    # The kernels differ only in summation order: at most an occasional last-bit rounding flip.
    diff = (outs[False][0].double() - outs[True][0].double()).norm() / outs[True][0].double().norm()
    assert diff <= (1e-6 if dtype == "float32" else 2e-3), f"fast vs reference kernel: {diff:.3g}"


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("rows", [1, 2, 7, 8, 9, 255, 257, 4099])
@pytest.mark.parametrize("hidden", [64, 999, 1024, 2560, 4095, 4096, 5120, 7001])
def test_fast_kernel_row_packing(dtype, rows, hidden):
    """Row counts around the rows-per-block boundaries: every row written, none twice wrong."""
    rng = np.random.default_rng()
    x = _rows(rng, (rows, hidden), dtype)
    w = torch.from_numpy(rng.uniform(0.5, 1.5, hidden)).to("cuda", DTYPES[dtype])
    out = _poisoned_like(x)
    minivllm.rms_norm(x, w, out=out)
    torch.cuda.synchronize()
    assert_matches(_to64(out), rms_norm_ref(_to64(x), _to64(w), 1e-6), TOL[dtype])


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_fast_kernel_in_place(dtype):
    rng = np.random.default_rng()
    x = _rows(rng, (33, 4096), dtype)
    r = _rows(rng, (33, 4096), dtype)
    w = torch.from_numpy(rng.uniform(0.5, 1.5, 4096)).to("cuda", DTYPES[dtype])
    ref_out, ref_res = fused_add_rms_norm_ref(_to64(x), _to64(r), _to64(w), 1e-6, dtype)
    minivllm.fused_add_rms_norm(x, r, w, inplace=True)
    torch.cuda.synchronize()
    assert_matches(_to64(x), ref_out, TOL[dtype], "x (normed)")
    assert_matches(_to64(r), ref_res, TOL[dtype], "residual (new)")


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("rows,hidden", [(33, 5119), (1000, 4097), (1000, 5119), (1000, 5125), (600, 8191)])
def test_odd_rows_in_place(dtype, rows, hidden):
    """In place, rows of odd H above 4096 in calls of many rows per SM: rms_norm(x, out=x) and
    the fused add with inplace=True (the staged kernel in 16-bit types, the lean in-place kernel in
    float32, which stores a warp's range only after its lanes have read it)."""
    rng = np.random.default_rng()
    x = _rows(rng, (rows, hidden), dtype)
    r = _rows(rng, (rows, hidden), dtype)
    w = torch.from_numpy(rng.uniform(0.5, 1.5, hidden)).to("cuda", DTYPES[dtype])
    ref = rms_norm_ref(_to64(x), _to64(w), 1e-6)
    ref_out, ref_res = fused_add_rms_norm_ref(_to64(x), _to64(r), _to64(w), 1e-6, dtype)
    y = x.clone()
    minivllm.rms_norm(y, w, out=y)
    minivllm.fused_add_rms_norm(x, r, w, inplace=True)
    torch.cuda.synchronize()
    assert_matches(_to64(y), ref, TOL[dtype], "rms_norm in place")
    assert_matches(_to64(x), ref_out, TOL[dtype], "x (normed)")
    assert_matches(_to64(r), ref_res, TOL[dtype], "residual (new)")


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("rows,hidden", [(37, 5119), (600, 8191), (40, 4097), (37, 4095)])
@pytest.mark.parametrize("residual", [False, True])
def test_staged_rows_heads_and_weight_start(dtype, rows, hidden, residual):
    """Rows off the 16-byte grid in calls that go through shared memory: x, the residual and the
    outputs starting at one offset in their 16-byte pieces (every row read by code compiled for its
    offset) or at different ones (offsets read at run time), the weight at the start of a piece or
    one element in (staged by another path). Every combination gives the same bits, and matches
    float64."""
    rng = np.random.default_rng()
    x0 = _rows(rng, (rows, hidden), dtype)
    r0 = _rows(rng, (rows, hidden), dtype)
    w0 = torch.from_numpy(rng.uniform(0.5, 1.5, hidden)).to("cuda", DTYPES[dtype])

    def placed(t, offset):
        """t's values in a tensor whose data starts `offset` elements into its storage."""
        storage = torch.empty(offset + t.numel() + 1, dtype=t.dtype, device="cuda")
        view = storage[offset:offset + t.numel()].view(t.shape)
        view.copy_(t)
        return view

    results = []
    for layout in ("same", "mixed"):
        for w_offset in (0, 1):
            x = placed(x0, 1)
            r = placed(r0, 1 if layout == "same" else 0)
            out = placed(torch.full_like(x0, float("nan")), 1 if layout == "same" else 0)
            new_res = placed(torch.full_like(x0, float("nan")), 1 if layout == "same" else 3)
            w = placed(w0, w_offset)
            if residual:
                minivllm.fused_add_rms_norm(x, r, w, out=out, residual_out=new_res)
                results.append((layout, w_offset, out, new_res))
            else:
                minivllm.rms_norm(x, w, out=out)
                results.append((layout, w_offset, out))
    torch.cuda.synchronize()
    if residual:
        ref_out, ref_res = fused_add_rms_norm_ref(_to64(x0), _to64(r0), _to64(w0), 1e-6, dtype)
    else:
        ref_out = rms_norm_ref(_to64(x0), _to64(w0), 1e-6)
    first = results[0]
    for layout, w_offset, *outs in results:
        what = f"{layout} layout, weight {w_offset} element(s) in"
        assert_matches(_to64(outs[0]), ref_out, TOL[dtype], what)
        assert torch.equal(outs[0], first[2]), f"{what}: other bits than the first layout's"
        if residual:
            np.testing.assert_array_equal(_to64(outs[1]), ref_res, err_msg=what)


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("hidden", [64, 72, 100, 128, 20000])
@pytest.mark.parametrize("residual", [False, True])
def test_kernels_on_head_views(dtype, hidden, residual):
    """Both kernels' two-stride variants: rows = tokens x q's 4 heads of packed [T, 8, D] buffers,
    outputs the same heads of NaN-filled ones (nothing else of them written)."""
    rng = np.random.default_rng()
    tokens = 2 if hidden >= 20000 else 37

    def packed(fill=None):
        if fill is not None:
            return torch.full((tokens, 8, hidden), fill, dtype=DTYPES[dtype], device="cuda")
        return torch.from_numpy(rng.standard_normal((tokens, 8, hidden))).to("cuda", DTYPES[dtype])

    x, r = packed()[:, :4], packed()[:, :4]
    w = torch.from_numpy(rng.uniform(0.5, 1.5, hidden)).to("cuda", DTYPES[dtype])
    outs, bufs = {}, {}
    for reference in (False, True):
        bufs[reference] = (packed(float("nan")), packed(float("nan")))
        out, new_res = (b[:, :4] for b in bufs[reference])
        if residual:
            minivllm._C.fused_add_rms_norm(x, r, w, 1e-6, out, new_res, None, _stream(), None,
                                           0.0, True, reference)
        else:
            minivllm._C.rms_norm(x, w, 1e-6, out, None, _stream(), None, 0.0, True, reference)
        outs[reference] = (out, new_res)
    torch.cuda.synchronize()
    if residual:
        ref_out, ref_res = fused_add_rms_norm_ref(_to64(x), _to64(r), _to64(w), 1e-6, dtype)
        assert torch.equal(outs[False][1], outs[True][1])
        np.testing.assert_array_equal(_to64(outs[False][1]), ref_res)
    else:
        ref_out = rms_norm_ref(_to64(x), _to64(w), 1e-6)
    for reference in (False, True):
        what = "reference kernel" if reference else "fast kernel"
        assert_matches(_to64(outs[reference][0]), ref_out, TOL[dtype], what, row_axes=1)
        for i, buf in enumerate(bufs[reference][:2 if residual else 1]):
            assert torch.isnan(buf[:, 4:]).all(), f"{what} wrote outside output {i}'s heads"
