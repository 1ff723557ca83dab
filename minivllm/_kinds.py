"""The caller's kind of array: how to allocate results like it, and which CUDA stream it uses.

For each input type we find, once, a `prepare(x)` returning `(alloc, stream, wrap, arg)`:
  alloc(shape) -> a new array of x's kind, dtype and device, or None: minivllm allocates a
                  minivllm.Buffer and `wrap` turns it into the caller's kind without a copy;
  stream       -> the CUDA stream (an int) the caller's library is working on, or None;
  wrap(result) -> the result as the caller's kind;
  arg(a)       -> a tensor argument made exportable (torch refuses DLPack for tensors that
                  require grad, such as nn.Parameter weights: minivllm has no autograd, so it
                  reads them detached).
Frameworks are looked up in sys.modules: minivllm never imports torch, cupy or jax itself.

Plain torch tensors (exactly torch.Tensor or nn.Parameter) skip all of that: alloc is
_C.TORCH_KIND, and _C reads torch's current stream, allocates with x.new_empty and reads tensors
through torch._C, in C. Going through torch's Python (Tensor.__dlpack__, current_stream,
torch.empty) cost tens of microseconds per call, more than the kernels at decode sizes.
"""

import functools
import sys

import numpy as np

from . import _C

# The plain torch tensor types _C handles itself; empty until the first torch tensor is seen and
# _C.torch_fast_path() has found what it needs in torch._C. The API's cheap branches test
# `type(a) in TORCH_TYPES`, so this set is filled in place, never rebound.
TORCH_TYPES = set()


def _identity(result):
    return result


# NumPy's (alloc, stream, wrap, arg) per dtype, made once: building them per call cost about as
# much as a decode-size CPU kernel. Bounded: a few dtypes are all a process uses.
_NUMPY_BY_DTYPE = {}


def numpy_prepared(dtype):
    """(alloc, stream, wrap, arg) for NumPy arrays of dtype."""
    found = _NUMPY_BY_DTYPE.get(dtype)
    if found is None:
        found = (functools.partial(np.empty, dtype=dtype), None, _identity, _identity)
        if len(_NUMPY_BY_DTYPE) < 64:
            _NUMPY_BY_DTYPE[dtype] = found
    return found


def _numpy(x):
    return numpy_prepared(x.dtype)


def _detached(a):
    return a.detach() if getattr(a, "requires_grad", False) else a


_TORCH_NATIVE = (_C.TORCH_KIND, None, _identity, _detached)


def _torch_native(x):
    # arg still detaches: a torch subclass passed with plain x takes torch's __dlpack__, which
    # refuses tensors that require grad.
    return _TORCH_NATIVE


def _torch(x):
    # Torch subclasses (their __torch_function__ may redefine export), or a torch._C without
    # the entry points _C needs.
    torch = sys.modules["torch"]
    device, dtype = x.device, x.dtype
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else None
    return (lambda shape: torch.empty(shape, dtype=dtype, device=device)), stream, _identity, _detached


def _cupy(x):
    cupy = sys.modules["cupy"]
    device, dtype = x.device, x.dtype
    with device:
        stream = cupy.cuda.get_current_stream().ptr

    def alloc(shape):
        with device:
            return cupy.empty(shape, dtype)

    return alloc, stream, _identity, _identity


def _jax(x):
    # JAX arrays are immutable: results land in a minivllm.Buffer that JAX adopts via DLPack.
    return None, None, sys.modules["jax"].dlpack.from_dlpack, _identity


def _other(x):
    # Raw capsules and unknown DLPack producers get a minivllm.Buffer back; torch tensors mixed
    # into such a call still need detaching.
    return None, None, _identity, _detached


_PREPARE_BY_TYPE = {np.ndarray: _numpy}


def _find(cls):
    if issubclass(cls, np.ndarray):
        return _numpy
    torch = sys.modules.get("torch")
    if torch is not None and issubclass(cls, torch.Tensor):
        if cls in (torch.Tensor, torch.nn.Parameter) and _C.torch_fast_path():
            TORCH_TYPES.update((torch.Tensor, torch.nn.Parameter))
            return _torch_native
        return _torch
    cupy = sys.modules.get("cupy")
    if cupy is not None and issubclass(cls, cupy.ndarray):
        return _cupy
    jax = sys.modules.get("jax")
    if jax is not None and issubclass(cls, jax.Array):
        return _jax
    return None


def prepare(x):
    """(alloc, stream, wrap, arg) for arrays like x."""
    cls = type(x)
    found = _PREPARE_BY_TYPE.get(cls)
    if found is None:
        found = _find(cls)
        if found is None:
            return _other(x)
        _PREPARE_BY_TYPE[cls] = found
    return found(x)


def is_immutable(x):
    """JAX arrays cannot be written in place."""
    cls = type(x)
    return (_PREPARE_BY_TYPE.get(cls) or _find(cls)) is _jax
