"""Raw DLPack capsules (legacy "dltensor" and "dltensor_versioned") built here with ctypes,
ownership rules (deleter exactly once, renaming), and misbehaving producers."""
import ctypes
import gc
from ctypes import (CFUNCTYPE, POINTER, Structure, c_char_p, c_int, c_int32, c_int64, c_uint8,
                    c_uint16, c_uint32, c_uint64, c_void_p, py_object)

import ml_dtypes
import numpy as np
import pytest

import minivllm
from conftest import norm_weight, to64
from reference import QKV_TOL, TOL, assert_matches, fused_add_rms_norm_ref, qkv_ref, \
    rms_norm_ref


# --------------------------------------------------------------------------------------------
# DLPack structures (dlpack.h, v1.x)
# --------------------------------------------------------------------------------------------
class DLDevice(Structure):
    _fields_ = [("device_type", c_int32), ("device_id", c_int32)]


class DLDataType(Structure):
    _fields_ = [("code", c_uint8), ("bits", c_uint8), ("lanes", c_uint16)]


class DLTensor(Structure):
    _fields_ = [("data", c_void_p), ("device", DLDevice), ("ndim", c_int32),
                ("dtype", DLDataType), ("shape", POINTER(c_int64)),
                ("strides", POINTER(c_int64)), ("byte_offset", c_uint64)]


DELETER = CFUNCTYPE(None, c_void_p)


class DLManagedTensor(Structure):
    _fields_ = [("dl_tensor", DLTensor), ("manager_ctx", c_void_p), ("deleter", DELETER)]


class DLPackVersion(Structure):
    _fields_ = [("major", c_uint32), ("minor", c_uint32)]


class DLManagedTensorVersioned(Structure):
    _fields_ = [("version", DLPackVersion), ("manager_ctx", c_void_p), ("deleter", DELETER),
                ("flags", c_uint64), ("dl_tensor", DLTensor)]


kDLCPU, kDLCUDA = 1, 2
kDLInt, kDLUInt, kDLFloat, kDLBfloat = 0, 1, 2, 4
FLAG_READ_ONLY = 1

NAME_LEGACY = b"dltensor"
NAME_VERSIONED = b"dltensor_versioned"
NAME_USED_LEGACY = b"used_dltensor"
NAME_USED_VERSIONED = b"used_dltensor_versioned"

_api = ctypes.pythonapi
_PyCapsule_Destructor = CFUNCTYPE(None, c_void_p)
_PyCapsule_New = ctypes.PYFUNCTYPE(py_object, c_void_p, c_char_p, _PyCapsule_Destructor)(
    ("PyCapsule_New", _api))
_PyCapsule_New_plain = ctypes.PYFUNCTYPE(py_object, c_void_p, c_char_p, c_void_p)(
    ("PyCapsule_New", _api))
_PyCapsule_GetName = ctypes.PYFUNCTYPE(c_char_p, py_object)(("PyCapsule_GetName", _api))
_PyCapsule_GetPointer = ctypes.PYFUNCTYPE(c_void_p, py_object, c_char_p)(
    ("PyCapsule_GetPointer", _api))
_PyCapsule_SetName = ctypes.PYFUNCTYPE(c_int, py_object, c_char_p)(("PyCapsule_SetName", _api))
_raw_IsValid = ctypes.PYFUNCTYPE(c_int, c_void_p, c_char_p)(("PyCapsule_IsValid", _api))
_raw_GetPointer = ctypes.PYFUNCTYPE(c_void_p, c_void_p, c_char_p)(("PyCapsule_GetPointer", _api))

# managed-tensor address -> number of deleter calls; and what keeps each one alive
DELETE_COUNT = {}
_KEEP = {}


@DELETER
def _deleter(addr):
    DELETE_COUNT[addr] = DELETE_COUNT.get(addr, 0) + 1


@_PyCapsule_Destructor
def _capsule_destructor(cap, _kinds=((NAME_LEGACY, DLManagedTensor),
                                     (NAME_VERSIONED, DLManagedTensorVersioned)),
                        _valid=_raw_IsValid, _ptr=_raw_GetPointer):
    # the producer's side of the protocol: an unconsumed capsule deletes its tensor
    for name, cls in _kinds:
        if _valid(cap, name):
            addr = _ptr(cap, name)
            cls.from_address(addr).deleter(addr)
            return


class Producer:
    """A capsule over a numpy array's memory; counts its deleter calls."""

    def __init__(self, arr, *, versioned, strides="explicit", byte_offset=0, data=None,
                 shape=None, read_only=False, dtype=None, lanes=1, version=(1, 0),
                 device=(kDLCPU, 0), ndim=None):
        self.arr = arr
        shape = tuple(arr.shape) if shape is None else tuple(shape)
        ndim = len(shape) if ndim is None else ndim
        self._shape = (c_int64 * max(len(shape), 1))(*shape)
        if strides == "explicit":
            st = tuple(s // arr.itemsize for s in arr.strides)
        else:
            st = strides
        self._strides = None if st is None else (c_int64 * max(len(st), 1))(*st)
        if dtype is None:
            code = kDLBfloat if arr.dtype == ml_dtypes.bfloat16 else {
                "f": kDLFloat, "i": kDLInt, "u": kDLUInt, "b": kDLUInt}[arr.dtype.kind]
            dtype = (code, arr.dtype.itemsize * 8)
        t = DLTensor()
        t.data = arr.ctypes.data if data is None else data
        t.device = DLDevice(*device)
        t.ndim = ndim
        t.dtype = DLDataType(dtype[0], dtype[1], lanes)
        t.shape = ctypes.cast(self._shape, POINTER(c_int64))
        t.strides = None if self._strides is None else ctypes.cast(self._strides, POINTER(c_int64))
        t.byte_offset = byte_offset
        if versioned:
            m = DLManagedTensorVersioned()
            m.version = DLPackVersion(*version)
            m.flags = FLAG_READ_ONLY if read_only else 0
            name = NAME_VERSIONED
        else:
            m = DLManagedTensor()
            name = NAME_LEGACY
        m.dl_tensor = t
        m.manager_ctx = None
        m.deleter = _deleter
        self.m = m
        self.addr = ctypes.addressof(m)
        DELETE_COUNT[self.addr] = 0
        # the managed tensor (and what it points at) outlives any capsule that points at it
        _KEEP[self.addr] = (m, t, self._shape, self._strides, arr)
        self.capsule = _PyCapsule_New(self.addr, name, _capsule_destructor)

    @property
    def deletes(self):
        return DELETE_COUNT[self.addr]


def capsule_name(cap):
    return _PyCapsule_GetName(cap)


def consume_capsule(cap):
    """A minimal consumer (for dtypes numpy cannot import): copy out, delete, rename."""
    name = capsule_name(cap)
    assert name in (NAME_LEGACY, NAME_VERSIONED), name
    addr = _PyCapsule_GetPointer(cap, name)
    cls = DLManagedTensor if name == NAME_LEGACY else DLManagedTensorVersioned
    m = cls.from_address(addr)
    t = m.dl_tensor
    assert t.device.device_type == kDLCPU
    code, bits, lanes = t.dtype.code, t.dtype.bits, t.dtype.lanes
    assert lanes == 1
    dt = {(kDLFloat, 32): np.float32, (kDLFloat, 16): np.float16,
          (kDLBfloat, 16): ml_dtypes.bfloat16}[(code, bits)]
    dt = np.dtype(dt)
    shape = tuple(t.shape[i] for i in range(t.ndim))
    if t.strides:
        strides = tuple(t.strides[i] for i in range(t.ndim))
    else:
        strides, acc = [], 1
        for s in reversed(shape):
            strides.insert(0, acc)
            acc *= s
        strides = tuple(strides)
    n = int(np.prod(shape))
    if n == 0:
        out = np.empty(shape, dt)
    else:
        assert all(s >= 0 for s in strides)
        extent = 1 + sum((d - 1) * s for d, s in zip(shape, strides))
        base = t.data + t.byte_offset
        raw = np.frombuffer((ctypes.c_char * (extent * dt.itemsize)).from_address(base), dt)
        out = np.lib.stride_tricks.as_strided(raw, shape, [s * dt.itemsize for s in strides]).copy()
    used = NAME_USED_LEGACY if name == NAME_LEGACY else NAME_USED_VERSIONED
    assert _PyCapsule_SetName(cap, used) == 0
    if m.deleter:
        m.deleter(addr)
    return out


def buffer_to64(buf):
    """float64 copy of a minivllm.Buffer result (CPU)."""
    assert hasattr(buf, "__dlpack__") and hasattr(buf, "__dlpack_device__")
    dev = tuple(buf.__dlpack_device__())
    assert dev[0] == kDLCPU, dev
    return consume_capsule(buf.__dlpack__()).astype(np.float64)


DT = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}


def _arr(rng, shape, dtype):
    return rng.standard_normal(shape).astype(DT[dtype])


# --------------------------------------------------------------------------------------------
# capsules as inputs
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("versioned", [False, True], ids=["legacy", "versioned"])
@pytest.mark.parametrize("dtype", list(DT))
def test_rms_norm_capsules(versioned, dtype, rng):
    M, H = 5, 96
    x, w = _arr(rng, (M, H), dtype), norm_weight(rng, H).astype(DT[dtype])
    px, pw = Producer(x, versioned=versioned), Producer(w, versioned=versioned)
    res = minivllm.rms_norm(px.capsule, pw.capsule)
    assert type(res) is minivllm.Buffer
    used = NAME_USED_VERSIONED if versioned else NAME_USED_LEGACY
    assert capsule_name(px.capsule) == used and capsule_name(pw.capsule) == used
    assert px.deletes == 1 and pw.deletes == 1, "an input capsule's deleter runs once, by the end"
    assert_matches(buffer_to64(res), rms_norm_ref(to64(x), to64(w), 1e-6), TOL[dtype])
    if dtype != "bfloat16":
        got = np.from_dlpack(res)
        assert got.dtype == x.dtype and got.shape == (M, H)
    del res, px.capsule, pw.capsule
    gc.collect()
    assert px.deletes == 1 and pw.deletes == 1


@pytest.mark.parametrize("versioned", [False, True], ids=["legacy", "versioned"])
@pytest.mark.parametrize("dtype", list(DT))
def test_fused_add_capsules(versioned, dtype, rng):
    M, H = 3, 64
    x, r = _arr(rng, (M, H), dtype), _arr(rng, (M, H), dtype)
    w = norm_weight(rng, H).astype(DT[dtype])
    ps = [Producer(a, versioned=versioned) for a in (x, r, w)]
    n, s = minivllm.fused_add_rms_norm(*[p.capsule for p in ps], 1e-6)
    assert type(n) is minivllm.Buffer and type(s) is minivllm.Buffer
    ref_n, ref_s = fused_add_rms_norm_ref(to64(x), to64(r), to64(w), 1e-6, dtype)
    assert np.array_equal(buffer_to64(s), ref_s)
    assert_matches(buffer_to64(n), ref_n, TOL[dtype])
    assert [p.deletes for p in ps] == [1, 1, 1]


@pytest.mark.parametrize("versioned", [False, True], ids=["legacy", "versioned"])
@pytest.mark.parametrize("wlayout", ["W", "WT_view"])
@pytest.mark.parametrize("dtype", list(DT))
def test_qkv_capsules(versioned, wlayout, dtype, rng):
    M, H, nh, nkv, hd = 4, 64, 4, 2, 8
    N = (nh + 2 * nkv) * hd
    h = _arr(rng, (M, H), dtype)
    nw = norm_weight(rng, H).astype(DT[dtype])
    W = (rng.standard_normal((N, H)) / 8).astype(DT[dtype])
    Warg = W if wlayout == "W" else W.T
    ps = [Producer(a, versioned=versioned) for a in (h, nw, Warg)]
    q, k, v = minivllm.FusedRMSNormQKV.forward(*[p.capsule for p in ps], nh, nkv)
    refs = qkv_ref(to64(h), to64(nw), to64(W), nh, nkv, 1e-6)
    for name, got, ref in zip("qkv", (q, k, v), refs):
        assert type(got) is minivllm.Buffer
        assert_matches(buffer_to64(got), ref, QKV_TOL[dtype], name, row_axes=2)
    assert [p.deletes for p in ps] == [1, 1, 1]


@pytest.mark.parametrize("versioned", [False, True], ids=["legacy", "versioned"])
def test_null_strides(versioned, rng):
    x, w = _arr(rng, (6, 40), "float32"), norm_weight(rng, 40).astype(np.float32)
    px = Producer(x, versioned=versioned, strides=None)
    pw = Producer(w, versioned=versioned, strides=None)
    res = minivllm.rms_norm(px.capsule, pw.capsule)
    assert_matches(buffer_to64(res), rms_norm_ref(to64(x), to64(w), 1e-6), TOL["float32"])


@pytest.mark.parametrize("versioned", [False, True], ids=["legacy", "versioned"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_byte_offset_and_row_stride(versioned, dtype, rng):
    """data points at the start of a wider allocation; byte_offset selects the region."""
    M, H, pad = 5, 48, 7
    big = np.full((M + 2, H + pad), np.nan, dtype=DT[dtype])
    big[1:M + 1, 3:3 + H] = _arr(rng, (M, H), dtype)
    view = big[1:M + 1, 3:3 + H]
    isz = big.itemsize
    px = Producer(view, versioned=versioned, data=big.ctypes.data,
                  byte_offset=((H + pad) + 3) * isz, strides=(H + pad, 1))
    wbig = np.full(H + 5, np.nan, dtype=DT[dtype])
    wbig[5:] = norm_weight(rng, H)
    pw = Producer(wbig[5:], versioned=versioned, data=wbig.ctypes.data, byte_offset=5 * isz,
                  strides=None)
    res = minivllm.rms_norm(px.capsule, pw.capsule)
    assert_matches(buffer_to64(res), rms_norm_ref(to64(view), to64(wbig[5:]), 1e-6), TOL[dtype])


@pytest.mark.parametrize("versioned", [False, True], ids=["legacy", "versioned"])
def test_capsule_as_out(versioned, rng):
    M, H = 4, 32
    x, w = _arr(rng, (M, H), "float16"), norm_weight(rng, H).astype(np.float16)
    out = np.full((M, H), np.nan, np.float16)
    po = Producer(out, versioned=versioned)
    res = minivllm.rms_norm(Producer(x, versioned=versioned).capsule,
                            Producer(w, versioned=versioned).capsule, out=po.capsule)
    ref = rms_norm_ref(to64(x), to64(w), 1e-6)
    assert_matches(to64(out), ref, TOL["float16"])  # written through the capsule
    assert res is po.capsule, "out= returns the same object"
    del res, po.capsule
    gc.collect()
    assert po.deletes == 1


def test_mixed_capsule_and_numpy(rng):
    x, w = _arr(rng, (3, 16), "float32"), norm_weight(rng, 16).astype(np.float32)
    res = minivllm.rms_norm(Producer(x, versioned=True).capsule, w)
    assert_matches(to64(np.from_dlpack(res)), rms_norm_ref(to64(x), to64(w), 1e-6), 1e-5)
    res = minivllm.rms_norm(x, Producer(w, versioned=False).capsule)
    assert_matches(to64(np.from_dlpack(res)), rms_norm_ref(to64(x), to64(w), 1e-6), 1e-5)


@pytest.mark.parametrize("versioned", [False, True], ids=["legacy", "versioned"])
def test_zero_size_capsule(versioned):
    x = np.zeros((0, 16), np.float32)
    w = np.ones(16, np.float32)
    res = minivllm.rms_norm(Producer(x, versioned=versioned).capsule,
                            Producer(w, versioned=versioned).capsule)
    assert np.from_dlpack(res).shape == (0, 16)


def test_buffer_protocol():
    """The Buffer result can be consumed by numpy through both capsule kinds."""
    x = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    w = np.ones(8, np.float32)
    res = minivllm.rms_norm(Producer(x, versioned=False).capsule,
                            Producer(w, versioned=False).capsule)
    assert tuple(res.__dlpack_device__()) == (kDLCPU, 0)
    ref = rms_norm_ref(to64(x), to64(w), 1e-6)
    a = np.from_dlpack(res)
    assert_matches(to64(a), ref, 1e-5)
    cap = res.__dlpack__(max_version=(1, 0))
    assert capsule_name(cap) in (NAME_LEGACY, NAME_VERSIONED)
    assert_matches(consume_capsule(cap).astype(np.float64), ref, 1e-5)
    cap = res.__dlpack__()
    assert capsule_name(cap) == NAME_LEGACY
    assert_matches(consume_capsule(cap).astype(np.float64), ref, 1e-5)
    # an unconsumed capsule from the Buffer is freed without a crash
    cap = res.__dlpack__()
    del cap, res, a
    gc.collect()


# --------------------------------------------------------------------------------------------
# ownership: deleter exactly once, even on errors; consumed capsules rejected
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("versioned", [False, True], ids=["legacy", "versioned"])
def test_consumed_capsule_rejected(versioned, rng):
    x, w = _arr(rng, (2, 8), "float32"), np.ones(8, np.float32)
    px, pw = Producer(x, versioned=versioned), Producer(w, versioned=versioned)
    minivllm.rms_norm(px.capsule, pw.capsule)
    assert px.deletes == 1
    with pytest.raises(ValueError, match="(?i)capsule"):
        minivllm.rms_norm(px.capsule, np.ones(8, np.float32))
    with pytest.raises(ValueError, match="(?i)capsule"):
        minivllm.rms_norm(x, pw.capsule)
    assert px.deletes == 1 and pw.deletes == 1


@pytest.mark.parametrize("versioned", [False, True], ids=["legacy", "versioned"])
@pytest.mark.parametrize("error", ["dtype_mismatch", "shape_mismatch", "bad_eps", "bad_dtype",
                                   "lanes", "noncontig"])
def test_deleter_once_on_error(versioned, error, rng):
    M, H = 3, 16
    x = _arr(rng, (M, H), "float32")
    w = np.ones(H, np.float32)
    kw = {}
    exc = ValueError
    px = Producer(x, versioned=versioned)
    if error == "dtype_mismatch":
        pw = Producer(w.astype(np.float16), versioned=versioned)
        exc = TypeError
    elif error == "shape_mismatch":
        pw = Producer(np.ones(H + 1, np.float32), versioned=versioned)
    elif error == "bad_eps":
        pw = Producer(w, versioned=versioned)
        kw["eps"] = -1.0
    elif error == "bad_dtype":
        pw = Producer(w.view(np.int32), versioned=versioned)
        exc = TypeError
    elif error == "lanes":
        pw = Producer(w, versioned=versioned, lanes=2, shape=(H // 2,), strides=(1,))
        exc = TypeError
    else:
        wide = np.ones(2 * H, np.float32)
        pw = Producer(wide, versioned=versioned, shape=(H,), strides=(2,))
    with pytest.raises(exc):
        minivllm.rms_norm(px.capsule, pw.capsule, **kw)
    del px.capsule, pw.capsule
    gc.collect()
    assert px.deletes == 1, f"x deleter ran {px.deletes} times"
    assert pw.deletes == 1, f"weight deleter ran {pw.deletes} times"


def test_deleter_once_on_error_qkv(rng):
    h = _arr(rng, (2, 16), "float32")
    ps = [Producer(h, versioned=True), Producer(np.ones(16, np.float32), versioned=False),
          Producer(np.ones((25, 16), np.float32), versioned=True)]
    with pytest.raises(ValueError, match="(?i)^qkv_weight.*divisib"):
        minivllm.FusedRMSNormQKV.forward(*[p.capsule for p in ps], 1, 1)
    for p in ps:
        p.capsule = None
    gc.collect()
    assert [p.deletes for p in ps] == [1, 1, 1]


def test_unconsumed_capsule_cleanup():
    """Sanity check of the producer itself: an unused capsule deletes its tensor once."""
    p = Producer(np.ones(4, np.float32), versioned=True)
    p.capsule = None
    gc.collect()
    assert p.deletes == 1


def test_read_only_versioned_out():
    x = np.ones((2, 8), np.float32)
    w = np.ones(8, np.float32)
    out = np.zeros((2, 8), np.float32)
    po = Producer(out, versioned=True, read_only=True)
    with pytest.raises(ValueError, match="(?i)^out.*read.?only"):
        minivllm.rms_norm(x, w, out=po.capsule)
    assert (out == 0).all()
    po.capsule = None
    gc.collect()
    assert po.deletes == 1


def test_read_only_versioned_input_is_fine(rng):
    x, w = _arr(rng, (2, 8), "float32"), np.ones(8, np.float32)
    res = minivllm.rms_norm(Producer(x, versioned=True, read_only=True).capsule,
                            Producer(w, versioned=True, read_only=True).capsule)
    assert_matches(to64(np.from_dlpack(res)), rms_norm_ref(to64(x), to64(w), 1e-6), 1e-5)


def test_unsupported_major_version():
    x = np.ones((2, 8), np.float32)
    px = Producer(x, versioned=True, version=(99, 0))
    with pytest.raises((ValueError, TypeError, BufferError), match="(?i)^x"):
        minivllm.rms_norm(px.capsule, np.ones(8, np.float32))
    px.capsule = None
    gc.collect()
    assert px.deletes == 1


# --------------------------------------------------------------------------------------------
# misbehaving producers: an exception, never a crash
# --------------------------------------------------------------------------------------------
_static = ctypes.c_double(1.0)
_BAD_NAME = b"not_a_dltensor"


class _Obj:
    def __init__(self, dl=None, dev=(kDLCPU, 0)):
        self._dl, self._dev = dl, dev

    def __dlpack_device__(self):
        if isinstance(self._dev, Exception):
            raise self._dev
        return self._dev

    def __dlpack__(self, *args, **kwargs):
        if isinstance(self._dl, Exception):
            raise self._dl
        return self._dl() if callable(self._dl) else self._dl


BAD_PRODUCERS = {
    "dlpack_raises_buffererror": lambda: _Obj(BufferError("nope")),
    "dlpack_raises_valueerror": lambda: _Obj(ValueError("nope")),
    "dlpack_returns_int": lambda: _Obj(42),
    "dlpack_returns_none": lambda: _Obj(None),
    "dlpack_returns_ndarray": lambda: _Obj(np.ones((2, 8), np.float32)),
    "dlpack_returns_wrong_capsule": lambda: _Obj(
        lambda: _PyCapsule_New_plain(ctypes.addressof(_static), _BAD_NAME, None)),
    "device_raises": lambda: _Obj(lambda: np.ones((2, 8), np.float32).__dlpack__(),
                                  dev=BufferError("nope")),
    "device_returns_str": lambda: _Obj(lambda: np.ones((2, 8), np.float32).__dlpack__(),
                                       dev="cpu"),
}


@pytest.mark.parametrize("kind", list(BAD_PRODUCERS))
def test_bad_producer(kind):
    bad = BAD_PRODUCERS[kind]()
    with pytest.raises((TypeError, ValueError, BufferError)):
        minivllm.rms_norm(bad, np.ones(8, np.float32))
    with pytest.raises((TypeError, ValueError, BufferError)):
        minivllm.rms_norm(np.ones((2, 8), np.float32), np.ones(8, np.float32),
                          out=BAD_PRODUCERS[kind]())


class _Legacy:
    """A producer from before DLPack 1.0: __dlpack__(stream=None) takes no max_version."""

    def __init__(self, a):
        self.a = a

    def __dlpack__(self, stream=None):
        assert stream is None
        return self.a.__dlpack__()

    def __dlpack_device__(self):
        return self.a.__dlpack_device__()


def test_legacy_producer_object(rng):
    x, w = _arr(rng, (3, 24), "float32"), norm_weight(rng, 24).astype(np.float32)
    res = minivllm.rms_norm(_Legacy(x), _Legacy(w))
    assert_matches(to64(np.from_dlpack(res)), rms_norm_ref(to64(x), to64(w), 1e-6), 1e-5)


def test_bad_capsule_fields():
    """Garbage in a well-named capsule: negative ndim, unknown device."""
    w = np.ones(8, np.float32)
    p = Producer(np.ones((2, 8), np.float32), versioned=True, ndim=-1)
    with pytest.raises((ValueError, TypeError, BufferError), match="(?i)^x"):
        minivllm.rms_norm(p.capsule, w)
    p = Producer(np.ones((2, 8), np.float32), versioned=False, device=(77, 0))
    with pytest.raises((ValueError, TypeError, BufferError), match="(?i)^x"):
        minivllm.rms_norm(p.capsule, w)
