"""minivllm.torch.attention_prologue: the custom op (eager, fake implementation, torch.compile with
fullgraph=True, the caches as mutated arguments, CUDA graph capture), in test_torch_ops.py's
style. Every test needs PyTorch and skips without it; CUDA cases skip where no GPU is usable.
"""
import numpy as np
import pytest

import minivllm
from conftest import norm_weight
from reference import assert_matches, prologue_ref
from minivllm.reference import PROLOGUE_TOLERANCE, write_kv_cache
from test_torch_ops import DEVICES, GRAD_MODES, _device, _mvt, _sync, _torch, _tt, grad_context

DTYPES = ("float32", "bfloat16")


def _inputs(torch, device, dtype, rng, M=5, H=64, nq=4, nkv=2, D=32, residual=False):
    N = (nq + 2 * nkv) * D
    data = {"x": rng.standard_normal((M, H)), "g": norm_weight(rng, H),
            "W": rng.standard_normal((N, H)) / np.sqrt(H), "qn": norm_weight(rng, D),
            "kn": norm_weight(rng, D)}
    if residual:
        data["r"] = rng.standard_normal((M, H))
    t = {k: _tt(torch, v, dtype, device) for k, v in data.items()}
    d64 = {k: _tt(torch, v, dtype, "cpu").to(torch.float64).numpy() for k, v in data.items()}
    inv = 10000.0 ** (-np.arange(0, D, 2) / D)
    angles = np.arange(64)[:, None] * inv[None, :]
    cs = np.concatenate([np.cos(angles), np.sin(angles)], 1)
    t["cs"] = torch.tensor(cs, dtype=torch.float32, device=device)
    d64["cs"] = t["cs"].cpu().to(torch.float64).numpy()
    pos = rng.integers(0, 64, M)
    t["pos"] = torch.tensor(pos, device=device)
    d64["pos"] = pos
    slots = rng.choice(4 * 8, M, replace=False)
    slots[1] = -1
    t["slots"] = torch.tensor(slots, device=device)
    d64["slots"] = slots
    return t, d64, (nq, nkv)


def _call(mvt, t, heads, kc, vc, residual=None):
    return mvt.attention_prologue(t["x"], t["g"], t["W"], heads[0], heads[1], 1e-6,
                                  residual=residual, q_norm_weight=t["qn"], k_norm_weight=t["kn"],
                                  positions=t["pos"], cos_sin_cache=t["cs"], k_cache=kc,
                                  v_cache=vc, slot_mapping=t["slots"])


def _check(torch, devname, dtype, d64, heads, q, kc, vc, residual=False):
    ref = prologue_ref(d64["x"], d64["g"], d64["W"], heads[0], heads[1], 1e-6, dtype, devname,
                       residual=d64.get("r") if residual else None, q_norm_weight=d64["qn"],
                       k_norm_weight=d64["kn"], positions=d64["pos"], cos_sin_cache=d64["cs"])
    tol = PROLOGUE_TOLERANCE[dtype]
    assert_matches(q.cpu().to(torch.float64).numpy(), ref[0], tol, "q")
    empty = np.full(tuple(kc.shape), np.nan)
    k_exp, v_exp = write_kv_cache(empty, empty, ref[1], ref[2], d64["slots"])
    assert_matches(kc.cpu().to(torch.float64).numpy(), k_exp, tol, "k_cache")
    assert_matches(vc.cpu().to(torch.float64).numpy(), v_exp, tol, "v_cache")
    return ref


def _caches(torch, device, dtype, nkv, D):
    tdt = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    return (torch.full((4, 8, nkv, D), float("nan"), dtype=tdt, device=device),
            torch.full((4, 8, nkv, D), float("nan"), dtype=tdt, device=device))


@pytest.mark.parametrize("mode", GRAD_MODES)
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("devname", DEVICES)
def test_eager(devname, dtype, residual, mode):
    torch = _torch()
    mvt = _mvt()
    device = _device(torch, devname)
    rng = np.random.default_rng()
    t, d64, heads = _inputs(torch, device, dtype, rng, residual=residual)
    kc, vc = _caches(torch, device, dtype, heads[1], 32)
    with grad_context(torch, mode):
        res = _call(mvt, t, heads, kc, vc, t.get("r"))
    _sync(torch, device)
    assert res[1] is None and res[2] is None
    ref = _check(torch, devname, dtype, d64, heads, res[0], kc, vc, residual)
    if residual:
        assert np.array_equal(res[3].cpu().to(torch.float64).numpy(), ref[3])


@pytest.mark.parametrize("devname", DEVICES)
def test_compile_fullgraph(devname):
    """torch.compile(fullgraph=True) takes the op, and the cache writes survive
    functionalization (the caches are declared mutated)."""
    torch = _torch()
    mvt = _mvt()
    device = _device(torch, devname)
    rng = np.random.default_rng()
    t, d64, heads = _inputs(torch, device, "float32", rng)
    kc, vc = _caches(torch, device, "float32", heads[1], 32)

    def step(x, kc, vc):
        q, _, _ = mvt.attention_prologue(x, t["g"], t["W"], heads[0], heads[1], 1e-6,
                                         q_norm_weight=t["qn"], k_norm_weight=t["kn"],
                                         positions=t["pos"], cos_sin_cache=t["cs"], k_cache=kc,
                                         v_cache=vc, slot_mapping=t["slots"])
        return q * 1.0

    backend = "aot_eager" if devname == "cpu" else "inductor"
    compiled = torch.compile(step, fullgraph=True, backend=backend)
    q = compiled(t["x"], kc, vc)
    _sync(torch, device)
    _check(torch, devname, "float32", d64, heads, q, kc, vc)


def test_opcheck():
    torch = _torch()
    _mvt()
    rng = np.random.default_rng(0)
    t, _, heads = _inputs(torch, torch.device("cpu"), "float32", rng)
    kc, vc = _caches(torch, torch.device("cpu"), "float32", heads[1], 32)
    torch.library.opcheck(torch.ops.minivllm.attention_prologue.default,
                          (t["x"], t["g"], t["W"], heads[0], heads[1], 1e-6, None, None, t["qn"],
                           t["kn"], None, t["pos"], t["cs"], "neox", kc, vc, t["slots"], None),
                          test_utils=("test_schema", "test_faketensor"))


def test_cuda_graph():
    torch = _torch()
    mvt = _mvt()
    device = _device(torch, "cuda")
    rng = np.random.default_rng()
    t, d64, heads = _inputs(torch, device, "bfloat16", rng)
    kc, vc = _caches(torch, device, "bfloat16", heads[1], 32)
    _call(mvt, t, heads, kc, vc)  # warm-up (lazy initialization outside the capture)
    torch.cuda.synchronize()
    kc.fill_(float("nan"))
    vc.fill_(float("nan"))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        q, _, _ = _call(mvt, t, heads, kc, vc)
    graph.replay()
    torch.cuda.synchronize()
    _check(torch, "cuda", "bfloat16", d64, heads, q, kc, vc)
    assert minivllm.cuda_available()
