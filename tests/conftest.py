"""Shared fixtures and array helpers for the minivllm test suite.

Devices: "cpu" (NumPy arrays) always; "cuda" (PyTorch tensors, or CuPy arrays when PyTorch is not
installed) only when minivllm.cuda_available() is True and a GPU array library imports.

Every test that uses ``rng`` gets fresh random inputs; a failing test prints its seed, and
MINIVLLM_TEST_SEED=<seed> replays it.
"""
import os

import ml_dtypes
import numpy as np
import pytest

import minivllm

DTYPES = ("float32", "float16", "bfloat16")
NP_DTYPES = {"float32": np.dtype(np.float32), "float16": np.dtype(np.float16),
             "bfloat16": np.dtype(ml_dtypes.bfloat16)}
NP_NAMES = {v: k for k, v in NP_DTYPES.items()}


# --------------------------------------------------------------------------------------------
# optional GPU array libraries
# --------------------------------------------------------------------------------------------
def _try_import(name):
    try:
        return __import__(name)
    except Exception:  # ImportError, or a broken install (missing CUDA libraries, ...)
        return None


_NO_CUDA = "no CUDA device (minivllm.cuda_available() is False)"
_NO_LIB = "no GPU array library"


def _cuda_state():
    """(backend class or None, skip reason or None)."""
    if not minivllm.cuda_available():
        return None, _NO_CUDA
    torch = _try_import("torch")
    if torch is not None and torch.cuda.is_available():
        return TorchCudaBackend, None
    cupy = _try_import("cupy")
    if cupy is not None:
        try:
            if cupy.cuda.runtime.getDeviceCount() > 0:
                return CupyBackend, None
        except Exception:
            pass
    return None, _NO_LIB


# --------------------------------------------------------------------------------------------
# conversion helpers (any array kind -> float64 numpy)
# --------------------------------------------------------------------------------------------
def to64(a):
    """Copy any supported array (numpy, torch, cupy, jax, minivllm.Buffer) to a float64 ndarray."""
    if isinstance(a, np.ndarray):
        return a.astype(np.float64)
    mod = type(a).__module__ or ""
    if mod.startswith("torch"):
        import torch
        return a.detach().to(device="cpu", dtype=torch.float64).numpy()
    if mod.startswith("cupy"):
        import cupy
        return cupy.asnumpy(a).astype(np.float64)
    if mod.startswith("jax") or mod.startswith("jaxlib"):
        return np.asarray(a).astype(np.float64)
    # minivllm.Buffer or any other DLPack producer on the CPU
    return np.from_dlpack(a).astype(np.float64)


def np_dtype(name):
    return NP_DTYPES[name]


def round_np(data64, dtype):
    """float64 data -> numpy array of the given dtype name (round to nearest even)."""
    return np.asarray(data64, dtype=np.float64).astype(NP_DTYPES[dtype])


# --------------------------------------------------------------------------------------------
# backends
# --------------------------------------------------------------------------------------------
class CpuBackend:
    name = "cpu"
    lib = "numpy"

    def array(self, data64, dtype):
        """Contiguous array of dtype (name) from float64 data."""
        return round_np(data64, dtype)

    def from_numpy(self, arr):
        """Same dtype/values as the numpy array arr, on this device (any dtype)."""
        return np.array(arr, copy=True)

    def full(self, shape, dtype, value=np.nan):
        return np.full(shape, value, dtype=NP_DTYPES[dtype])

    def copy(self, a):
        return a.copy()

    def t(self, a):
        return a.T

    def contiguous(self, a):
        return np.ascontiguousarray(a)

    def assign(self, dst, src):
        dst[...] = src

    def sync(self):
        pass

    def is_native(self, r):
        return type(r) is np.ndarray

    def dtype_name(self, r):
        return NP_NAMES.get(r.dtype)

    def shape(self, r):
        return tuple(r.shape)


class TorchCudaBackend:
    name = "cuda"
    lib = "torch"

    def __init__(self):
        import torch
        self.torch = torch
        self.device = torch.device("cuda", torch.cuda.current_device())
        self.dtypes = {"float32": torch.float32, "float16": torch.float16,
                       "bfloat16": torch.bfloat16}

    def _from_np_exact(self, arr):
        torch = self.torch
        arr = np.array(arr, order="C", copy=True)  # keeps 0-d arrays 0-d
        if arr.dtype == NP_DTYPES["bfloat16"]:
            t = torch.from_numpy(arr.view(np.int16)).view(torch.bfloat16)
        else:
            t = torch.from_numpy(arr)
        # a fresh torch allocation: torch's own strides (numpy gives empty arrays (0, 0))
        return torch.empty(tuple(arr.shape), dtype=t.dtype, device=self.device).copy_(t)

    def array(self, data64, dtype):
        return self._from_np_exact(round_np(data64, dtype))

    def from_numpy(self, arr):
        return self._from_np_exact(np.asarray(arr))

    def full(self, shape, dtype, value=np.nan):
        return self.torch.full(tuple(shape), float(value), dtype=self.dtypes[dtype],
                               device=self.device)

    def copy(self, a):
        return a.clone()

    def t(self, a):
        return a.t()

    def contiguous(self, a):
        return a.contiguous()

    def assign(self, dst, src):
        dst.copy_(src)

    def sync(self):
        self.torch.cuda.synchronize()

    def is_native(self, r):
        return isinstance(r, self.torch.Tensor) and r.device == self.device

    def dtype_name(self, r):
        return {v: k for k, v in self.dtypes.items()}.get(r.dtype)

    def shape(self, r):
        return tuple(r.shape)


class CupyBackend:
    name = "cuda"
    lib = "cupy"

    def __init__(self):
        import cupy
        self.cp = cupy

    def array(self, data64, dtype):
        if dtype == "bfloat16":
            pytest.skip("CuPy has no bfloat16 arrays")
        return self.cp.asarray(round_np(data64, dtype))

    def from_numpy(self, arr):
        if np.asarray(arr).dtype == NP_DTYPES["bfloat16"]:
            pytest.skip("CuPy has no bfloat16 arrays")
        return self.cp.asarray(arr)

    def full(self, shape, dtype, value=np.nan):
        if dtype == "bfloat16":
            pytest.skip("CuPy has no bfloat16 arrays")
        return self.cp.full(tuple(shape), value, dtype=NP_DTYPES[dtype])

    def copy(self, a):
        return a.copy()

    def t(self, a):
        return a.T

    def contiguous(self, a):
        return self.cp.ascontiguousarray(a)

    def assign(self, dst, src):
        dst[...] = src

    def sync(self):
        self.cp.cuda.Device().synchronize()

    def is_native(self, r):
        return isinstance(r, self.cp.ndarray)

    def dtype_name(self, r):
        return NP_NAMES.get(r.dtype)

    def shape(self, r):
        return tuple(r.shape)


_CUDA_BACKEND, _CUDA_REASON = _cuda_state()

# Marks a test (or a parameter) as one that needs the CUDA backend: skipped with the reason.
NEEDS_CUDA = pytest.mark.skipif(_CUDA_BACKEND is None, reason=_CUDA_REASON or "")
DEVICES = ["cpu", pytest.param("cuda", marks=NEEDS_CUDA)]


def cuda_skip_reason():
    return _CUDA_REASON


def cuda_capability():
    """(major, minor) of the current CUDA device, through the GPU array library in use."""
    if _CUDA_BACKEND is TorchCudaBackend:
        import torch
        return tuple(torch.cuda.get_device_capability())
    import cupy
    cc = int(cupy.cuda.Device().compute_capability)
    return cc // 10, cc % 10


def cuda_sm_count():
    """Multiprocessors of the current CUDA device, through the GPU array library in use (rules
    that count blocks an SM expect different paths on other counts)."""
    if _CUDA_BACKEND is TorchCudaBackend:
        import torch
        return torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count
    import cupy
    return int(cupy.cuda.Device().attributes["MultiProcessorCount"])


_BACKENDS = {}


def get_backend(name):
    if name not in _BACKENDS:
        _BACKENDS[name] = CpuBackend() if name == "cpu" else _CUDA_BACKEND()
    return _BACKENDS[name]


@pytest.fixture(params=DEVICES)
def dev(request):
    """The array backend of one device: 'cpu' (numpy) or 'cuda' (torch, else cupy)."""
    return get_backend(request.param)


@pytest.fixture(params=DTYPES)
def dtype(request):
    return request.param


# --------------------------------------------------------------------------------------------
# rng with a reported seed
# --------------------------------------------------------------------------------------------
@pytest.fixture
def rng(request):
    env = os.environ.get("MINIVLLM_TEST_SEED")
    seed = int(env) if env else int(np.random.SeedSequence().entropy)
    request.node._minivllm_seed = seed
    return np.random.default_rng(seed)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    seed = getattr(item, "_minivllm_seed", None)
    if seed is not None and rep.failed:
        rep.sections.append(("rng seed", f"reproduce with MINIVLLM_TEST_SEED={seed}"))


def pytest_report_header(config):
    return (f"minivllm: cuda_built={minivllm.cuda_built()} "
            f"cuda_available={minivllm.cuda_available()} "
            f"cuda_device_count={minivllm.cuda_device_count()}; "
            f"cuda tests: {_CUDA_BACKEND.lib if _CUDA_BACKEND else 'skipped: ' + _CUDA_REASON}")


# --------------------------------------------------------------------------------------------
# layouts of row-strided inputs / outputs
# --------------------------------------------------------------------------------------------
# "contig": plain; "colslice": big[:, 1:H+1] of a NaN-padded wider array (misaligned start);
# "rowstep": big[::2] with NaN in the skipped rows; "both": both at once;
# numpy only: "neg" (x[::-1], negative row stride), "bcast" (row stride 0).
LAYOUTS = ("contig", "colslice", "rowstep", "both")
NP_ONLY_LAYOUTS = ("neg", "bcast")


def make_rows(dev, data64, dtype, layout):
    """Place 2-D float64 data [M, H] into an array of the given layout.

    Returns (view, parent): parent is the whole allocation (NaN outside the view), or the view
    itself for "contig". The values of view are round_np(data64, dtype)."""
    M, H = data64.shape
    if layout == "contig" or (layout == "bcast" and M == 0):
        a = dev.array(data64, dtype)
        return a, a
    if layout in NP_ONLY_LAYOUTS:
        if dev.name != "cpu":
            pytest.skip(f"layout {layout} is only built with numpy")
        if layout == "neg":
            a = round_np(data64[::-1], dtype)
            return a[::-1], a
        row = round_np(np.ascontiguousarray(data64[0]), dtype)  # all rows equal to row 0
        v = np.broadcast_to(row, (M, H))
        return v, v
    step = 2 if layout in ("rowstep", "both") else 1
    pad = 5 if layout in ("colslice", "both") else 0
    off = 1 if pad else 0
    big = dev.full((max(M * step, 1), H + pad), dtype)
    view = big[::step, off:off + H] if step > 1 else big[:, off:off + H]
    view = view[:M]
    if M:
        dev.assign(view, dev.array(data64, dtype))
    return view, big


def bcast_ref_data(data64):
    """What make_rows(..., 'bcast') actually holds (all rows equal to row 0)."""
    return np.broadcast_to(data64[:1], data64.shape).copy()


def assert_native(dev, r, dtype, shape, what="result"):
    """r is the caller's kind of array on dev, of dtype (name) and shape."""
    assert dev.is_native(r), f"{what}: got {type(r).__module__}.{type(r).__name__}, " \
                             f"expected a {dev.lib} array on {dev.name}"
    assert dev.dtype_name(r) == dtype, f"{what}: dtype {getattr(r, 'dtype', None)} != {dtype}"
    assert dev.shape(r) == tuple(shape), f"{what}: shape {dev.shape(r)} != {tuple(shape)}"


def randn(rng, shape, scale=1.0):
    return rng.standard_normal(shape) * scale


def norm_weight(rng, H):
    """A gamma around 1 with a spread, some negative entries included."""
    return 1.0 + 0.5 * rng.standard_normal(H)
