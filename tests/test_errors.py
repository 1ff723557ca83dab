"""Bad inputs raise the documented exception type, the message starting with 'argname:'."""
import re

import numpy as np
import pytest

import minivllm
from conftest import DEVICES, get_backend, cuda_skip_reason, to64

M, H = 4, 16
NH, NKV, HD = 1, 1, 8
N = (NH + 2 * NKV) * HD  # 24


def pattern(name, word=None):
    p = rf"(?is)^\s*{re.escape(name)}\s*:"
    if word:
        p += rf".*(?:{word})"
    return p


def expect(exc, name, word, fn):
    with pytest.raises(exc, match=pattern(name, word)) as info:
        fn()
    return info


# --------------------------------------------------------------------------------------------
# the three ops, described uniformly: valid base arguments (float32) and how to call
# --------------------------------------------------------------------------------------------
def _val(dev, shape, seed=0):
    return dev.array(np.random.default_rng(seed).standard_normal(shape) + 0.5, "float32")


def rms_base(dev):
    return {"x": _val(dev, (M, H)), "weight": _val(dev, (H,), 1)}


def rms_call(a):
    a = dict(a)
    return minivllm.rms_norm(a.pop("x"), a.pop("weight"), **a)


def fadd_base(dev):
    return {"x": _val(dev, (M, H)), "residual": _val(dev, (M, H), 2), "weight": _val(dev, (H,), 1)}


def fadd_call(a):
    a = dict(a)
    return minivllm.fused_add_rms_norm(a.pop("x"), a.pop("residual"), a.pop("weight"), **a)


def qkv_base(dev):
    return {"hidden_states": _val(dev, (M, H)), "norm_weight": _val(dev, (H,), 1),
            "qkv_weight": _val(dev, (N, H), 3), "num_heads": NH, "num_kv_heads": NKV}


def qkv_call(a):
    a = dict(a)
    return minivllm.FusedRMSNormQKV.forward(a.pop("hidden_states"), a.pop("norm_weight"),
                                            a.pop("qkv_weight"), a.pop("num_heads"),
                                            a.pop("num_kv_heads"), **a)


OPS = {
    "rms_norm": (rms_base, rms_call, ["x", "weight"], ["out"]),
    "fused_add_rms_norm": (fadd_base, fadd_call, ["x", "residual", "weight"],
                           ["out", "residual_out"]),
    "qkv": (qkv_base, qkv_call, ["hidden_states", "norm_weight", "qkv_weight"], ["residual"]),
}
# for qkv, "residual" is an optional *input*; for the norms the optional args are outputs
ROW_ARGS = {"x", "residual", "hidden_states", "out", "residual_out"}
VEC_ARGS = {"weight", "norm_weight"}


def _shape_of(name):
    if name in VEC_ARGS:
        return (H,)
    if name == "qkv_weight":
        return (N, H)
    return (M, H)


def _good(dev, name, dtype="float32", seed=5):
    return dev.array(np.random.default_rng(seed).standard_normal(_shape_of(name)), dtype)


def _cases():
    """(op, arg name, description, builder(dev, base) -> modified args, exc, word)."""
    out = []
    for op, (_, _, req, opt) in OPS.items():
        allargs = req + opt
        for name in allargs:
            # not an array
            bads = [("list", lambda dev, n=name: [[1.0] * H] * M), ("str", lambda dev: "abc"),
                    ("int", lambda dev: 3), ("float", lambda dev: 1.5), ("dict", lambda dev: {})]
            if name in req:
                bads.append(("None", lambda dev: None))
            for desc, mk in bads:
                out.append((op, name, f"not-array-{desc}",
                            lambda dev, base, n=name, mk=mk: {**base, n: mk(dev)},
                            TypeError, ""))
            # unsupported dtypes
            for bad in ("int32", "float64", "bool", "int8", "int64", "uint8"):
                def mk(dev, base, n=name, bad=bad):
                    a = np.random.default_rng(1).standard_normal(_shape_of(n)) * 3
                    return {**base, n: dev.from_numpy(a.astype(bad))}
                out.append((op, name, f"dtype-{bad}", mk, TypeError, "dtype"))
            # dtype mismatch (the first array sets the dtype)
            if name != allargs[0]:
                for bad in ("float16", "bfloat16"):
                    out.append((op, name, f"mismatch-{bad}",
                                lambda dev, base, n=name, bad=bad: {**base, n: _good(dev, n, bad)},
                                TypeError, "dtype|match"))
            # wrong rank
            if name in VEC_ARGS:
                ranks = [(H, H), ()]
            elif name == "qkv_weight":
                ranks = [(N * H,), (2, N // 2, H)]
            elif name == allargs[0]:
                ranks = [()]
            else:
                ranks = [(1, M, H), (M * H,)]
            for shp in ranks:
                word = "dimension" if name == allargs[0] or name in VEC_ARGS | {"qkv_weight"} \
                    else "dimension|shape"
                out.append((op, name, f"rank-{len(shp)}",
                            lambda dev, base, n=name, shp=shp: {
                                **base, n: dev.array(np.ones(shp), "float32")},
                            ValueError, word))
            # shape mismatch (arguments after the first)
            if name != allargs[0]:
                if name in VEC_ARGS:
                    shapes = [(H + 1,), (H - 1,)]
                elif name == "qkv_weight":
                    shapes = [(N, H + 1), (H + 1, N)]
                else:
                    shapes = [(M + 1, H), (M, H + 1), (M - 1, H)]
                for shp in shapes:
                    out.append((op, name, f"shape-{'x'.join(map(str, shp))}",
                                lambda dev, base, n=name, shp=shp: {
                                    **base, n: dev.array(np.ones(shp), "float32")},
                                ValueError, "shape"))
            # last dimension not contiguous
            def noncontig(dev, base, n=name):
                shp = _shape_of(n)
                big = dev.array(np.ones(shp[:-1] + (2 * shp[-1],)), "float32")
                return {**base, n: big[..., ::2]}
            out.append((op, name, "noncontig", noncontig, ValueError, "contiguous"))
            # leading dimensions that need more row strides than the op takes: one for QKV, two
            # for the norm ops (per-head views), so three there
            if name in ROW_ARGS:
                lead = (2, 2) if op == "qkv" else (2, 2, 2)

                def noncollapse(dev, base, n=name, lead=lead):
                    big = dev.array(np.ones(tuple(d + 1 for d in lead) + (H,)), "float32")
                    b = {**base}
                    for k in b:
                        if k in ROW_ARGS and k != n:  # keep shapes consistent: all lead + [H]
                            b[k] = dev.array(np.ones(lead + (H,)), "float32")
                    # [:2, :2(, :2)]: each leading dimension steps over one more than it holds
                    b[n] = big[tuple(slice(0, d) for d in lead)]
                    return b
                out.append((op, name, "noncollapsible", noncollapse, ValueError,
                            "one stride" if op == "qkv" else "more than two row strides"))
    # eps
    for op in OPS:
        for eps in (-1.0, -1e-6, float("nan"), float("inf"), float("-inf")):
            out.append((op, "eps", f"eps={eps}",
                        lambda dev, base, eps=eps: {**base, "eps": eps}, ValueError, ""))
    # heads
    for name in ("num_heads", "num_kv_heads"):
        for desc, v in (("float", 1.0), ("str", "1"), ("None", None), ("list", [1])):
            out.append(("qkv", name, f"type-{desc}",
                        lambda dev, base, n=name, v=v: {**base, n: v}, TypeError, ""))
        for v in (0, -1, -8):
            out.append(("qkv", name, f"value-{v}",
                        lambda dev, base, n=name, v=v: {**base, n: v}, ValueError, ""))
    for nh, nkv, wshape in ((1, 1, (N + 1, H)), (2, 1, (N + 6, H)), (1, 1, (H, N + 1))):
        out.append(("qkv", "qkv_weight", f"indivisible-{nh}-{nkv}-{wshape}",
                    lambda dev, base, nh=nh, nkv=nkv, wshape=wshape: {
                        **base, "num_heads": nh, "num_kv_heads": nkv,
                        "qkv_weight": dev.array(np.ones(wshape), "float32")},
                    ValueError, "divisib"))
    return out


CASES = _cases()


@pytest.mark.parametrize("devname", DEVICES)
@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-{c[1]}-{c[2]}" for c in CASES])
def test_bad_argument(devname, case):
    op, name, _, build, exc, word = case
    dev = get_backend(devname)
    base_fn, call, _, _ = OPS[op]
    args = build(dev, base_fn(dev))
    expect(exc, name, word or None, lambda: call(args))


@pytest.mark.parametrize("op", list(OPS))
def test_base_arguments_are_valid(op):
    """Guard for the table above: the unmodified base arguments work."""
    base_fn, call, _, _ = OPS[op]
    dev = get_backend("cpu")
    call(base_fn(dev))


@pytest.mark.parametrize("devname", DEVICES)
def test_qkv_residual_out_without_residual(devname):
    """Without residual= there is no new residual: a residual_out= is refused, not left stale."""
    dev = get_backend(devname)
    args = qkv_base(dev)
    target = _val(dev, (M, H), 4)
    before = to64(target)
    expect(ValueError, "residual_out", "without residual", lambda: qkv_call({**args, "residual_out": target}))
    np.testing.assert_array_equal(to64(target), before)


# --------------------------------------------------------------------------------------------
# numpy-only: read-only outputs, overlaps
# --------------------------------------------------------------------------------------------
def _ro(a):
    a = np.array(a)
    a.setflags(write=False)
    return a


def test_read_only_out():
    dev = get_backend("cpu")
    b = rms_base(dev)
    expect(ValueError, "out", "read.?only", lambda: rms_call({**b, "out": _ro(np.zeros((M, H),
                                                                                  np.float32))}))
    b = fadd_base(dev)
    z = np.zeros((M, H), np.float32)
    expect(ValueError, "out", "read.?only", lambda: fadd_call({**b, "out": _ro(z)}))
    expect(ValueError, "residual_out", "read.?only",
           lambda: fadd_call({**b, "residual_out": _ro(z)}))


def test_read_only_broadcast_out():
    dev = get_backend("cpu")
    b = rms_base(dev)
    out = np.broadcast_to(np.zeros(H, np.float32), (M, H))  # read-only view
    expect(ValueError, "out", "read.?only|overlap", lambda: rms_call({**b, "out": out}))


@pytest.mark.parametrize("which", ["x", "residual"])
def test_inplace_read_only(which):
    dev = get_backend("cpu")
    b = fadd_base(dev)
    b[which] = _ro(b[which])
    expect(ValueError, which, "read.?only", lambda: fadd_call({**b, "inplace": True}))


def test_read_only_inputs_are_fine():
    dev = get_backend("cpu")
    for base_fn, call, req, opt in OPS.values():
        b = base_fn(dev)
        for k in req:
            b[k] = _ro(b[k])
        call(b)


@pytest.mark.parametrize("devname", DEVICES)
def test_overlap(devname):
    dev = get_backend(devname)
    buf = dev.array(np.random.default_rng(0).standard_normal((M + 1, H)), "float32")
    x, shifted = buf[:M], buf[1:]
    w = _good(dev, "weight")
    r = _good(dev, "residual")
    expect(ValueError, "out", "overlap", lambda: minivllm.rms_norm(x, w, out=shifted))
    # out covering the weight's memory
    wb = dev.array(np.random.default_rng(1).standard_normal((M, H)), "float32")
    expect(ValueError, "out", "overlap", lambda: minivllm.rms_norm(_good(dev, "x"), wb[M - 1],
                                                                  out=wb))
    # fused add: each output against each input
    expect(ValueError, "out", "overlap",
           lambda: minivllm.fused_add_rms_norm(x, r, w, out=shifted))
    expect(ValueError, "residual_out", "overlap",
           lambda: minivllm.fused_add_rms_norm(x, r, w, residual_out=shifted))
    rb = dev.array(np.random.default_rng(2).standard_normal((M + 1, H)), "float32")
    r2, r2s = rb[:M], rb[1:]
    xx = _good(dev, "x", seed=9)
    expect(ValueError, "out", "overlap",
           lambda: minivllm.fused_add_rms_norm(xx, r2, w, out=r2s))
    expect(ValueError, "residual_out", "overlap",
           lambda: minivllm.fused_add_rms_norm(xx, r2, w, residual_out=r2s))
    # out = columns 1..H of the same rows as x
    buf3 = dev.array(np.random.default_rng(4).standard_normal((M, H + 1)), "float32")
    expect(ValueError, "out", "overlap",
           lambda: minivllm.rms_norm(buf3[:, :H], w, out=buf3[:, 1:]))


# --------------------------------------------------------------------------------------------
# CUDA: mixed devices
# --------------------------------------------------------------------------------------------
needs_cuda = pytest.mark.skipif(cuda_skip_reason() is not None, reason=cuda_skip_reason() or "")


@needs_cuda
@pytest.mark.parametrize("gpu_base", [True, False], ids=["cuda-base", "cpu-base"])
@pytest.mark.parametrize("op,name", [(op, n) for op, (_, _, req, opt) in OPS.items()
                                     for n in req + opt])
def test_mixed_devices(op, name, gpu_base):
    base_fn, call, req, opt = OPS[op]
    if req[0] == name:
        # the first array sets the device; exercise it by moving the base to the other device
        pytest.skip("the first array defines the device")
    cpu, gpu = get_backend("cpu"), get_backend("cuda")
    base_dev, other = (gpu, cpu) if gpu_base else (cpu, gpu)
    b = base_fn(base_dev)
    b[name] = _good(other, name)
    expect(ValueError, name, "device", lambda: call(b))


@needs_cuda
@pytest.mark.skipif(minivllm.cuda_device_count() < 2, reason="needs 2 CUDA devices")
def test_two_gpus():
    torch = pytest.importorskip("torch")
    if torch.cuda.device_count() < 2:
        pytest.skip("torch sees fewer than 2 CUDA devices")
    x = torch.randn(M, H, device="cuda:0")
    w = torch.randn(H, device="cuda:1")
    expect(ValueError, "weight", "device", lambda: minivllm.rms_norm(x, w))
    out = torch.empty(M, H, device="cuda:1")
    expect(ValueError, "out", "device",
           lambda: minivllm.rms_norm(x, torch.randn(H, device="cuda:0"), out=out))
