"""The per-call `pdl` argument of the three ops: None (the library's default), True or False.

pdl only changes how a GPU kernel is launched (programmatic dependent launch), never what it
computes, so on the GPU the three values give bitwise-identical results; on the CPU it is
accepted and ignored. Anything else is refused before the device is looked at: TypeError naming
"pdl", on the CPU too.
"""
import numpy as np
import pytest

import minivllm
from conftest import DEVICES, get_backend, norm_weight, randn, to64
from minivllm import _C
from minivllm.bench.timing import QKV_PATHS
from reference import QKV_TOL, TOL, assert_matches, qkv_ref, qkv_y_dtype, rms_norm_ref, round_to

PDL_VALUES = (None, True, False)
BAD_PDL = ("yes", "on", 1, 0, 2, 1.5, np.bool_(True), [True])
QKV_PATHS = (None,) + QKV_PATHS   # None: the automatic choice


def _inputs(dev, rng, dtype, M, H, N=None):
    x64, r64 = round_to(randn(rng, (M, H)), dtype), round_to(randn(rng, (M, H)), dtype)
    g64 = round_to(norm_weight(rng, H), dtype)
    W64 = round_to(randn(rng, (N, H), H ** -0.5), dtype) if N else None
    arrays = [dev.array(a, dtype) if a is not None else None for a in (x64, r64, g64, W64)]
    return (x64, r64, g64, W64), arrays


def _same(results):
    first = [to64(a) for a in results[0]]
    for other in results[1:]:
        for a, b in zip(first, (to64(t) for t in other)):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("M", [1, 8, 300])
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("devname", DEVICES)
def test_norms_same_result_for_every_pdl(devname, dtype, M, rng):
    dev = get_backend(devname)
    H = 1024
    (x64, r64, g64, _), (x, r, g, _) = _inputs(dev, rng, dtype, M, H)
    norms, fused = [], []
    for pdl in PDL_VALUES:
        norms.append((minivllm.rms_norm(x, g, pdl=pdl),))
        fused.append(minivllm.fused_add_rms_norm(x, r, g, pdl=pdl))
    dev.sync()
    _same(norms)
    _same(fused)
    assert_matches(to64(norms[0][0]), rms_norm_ref(x64, g64), TOL[dtype], "rms_norm")


@pytest.mark.parametrize("path", QKV_PATHS, ids=[p or "auto" for p in QKV_PATHS])
@pytest.mark.parametrize("M", [1, 4, 64, 256])
@pytest.mark.parametrize("devname", DEVICES)
def test_qkv_same_result_for_every_pdl(devname, M, path, rng):
    """Per path and M: the three pdl values give the same bits where they ran the same path (pdl
    may steer the automatic choice), and each is right against the reference."""
    if devname == "cpu" and path is not None:
        pytest.skip("_path is ignored on the CPU: the automatic case covers it")
    dev = get_backend(devname)
    dtype, H, nh, nkv, hd = "bfloat16", 1024, 16, 8, 128
    N = (nh + 2 * nkv) * hd
    (x64, _, g64, W64), (x, _, g, W) = _inputs(dev, rng, dtype, M, H, N)
    by_path = {}
    for pdl in PDL_VALUES:
        res = minivllm.FusedRMSNormQKV.forward(x, g, W, nh, nkv, pdl=pdl, _path=path)
        dev.sync()
        ran = _C.qkv_last_gpu_path() if devname == "cuda" else "cpu"
        refs = qkv_ref(x64, g64, W64, nh, nkv, 1e-6, y_dtype=qkv_y_dtype(devname, dtype))
        for name, out, ref in zip("qkv", res, refs):
            assert_matches(to64(out), ref, QKV_TOL[dtype], f"pdl={pdl} ({ran}) {name}",
                           row_axes=2)
        by_path.setdefault(ran, []).append(res)
    for results in by_path.values():
        _same(results)


@pytest.mark.parametrize("bad", BAD_PDL, ids=repr)
@pytest.mark.parametrize("devname", DEVICES)
def test_bad_pdl_is_refused(devname, bad, rng):
    dev = get_backend(devname)
    (_, _, _, _), (x, r, g, W) = _inputs(dev, rng, "float32", 2, 16, 12)
    calls = {
        "rms_norm": lambda: minivllm.rms_norm(x, g, pdl=bad),
        "fused_add_rms_norm": lambda: minivllm.fused_add_rms_norm(x, r, g, pdl=bad),
        "fused_rms_norm_qkv": lambda: minivllm.FusedRMSNormQKV.forward(x, g, W, 1, 1, pdl=bad),
    }
    for op, call in calls.items():
        with pytest.raises((TypeError, ValueError), match="pdl") as info:
            call()
        assert "pdl" in str(info.value), f"{op}: {info.value}"
