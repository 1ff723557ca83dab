"""Why does Inductor's norm kernel run 0.1-0.2 µs shorter than any CUDA kernel of ours in warm chains
(H <= 1024, no PDL; norm_chain_nopdl.py), while ncu, caches flushed, times them level? Chains of
the norm alone at H = 1024 (graph replay, each call its own x and y), bf16:

  comp     torch.compile of F.rms_norm for M = 64 (Inductor's triton_per kernel, xnumel 64 baked in)
  tcubin   that kernel's own cubin (from the Triton cache of this process) launched by cuLaunchKernel
           from here: the same code, our launch path
  tri      scratch_norm_probe.cu's norm_tri1024: that kernel written in CUDA (nvcc), <<<>>> launch
  tri-ex   the same through cudaLaunchKernelEx
  vN       norm_var<N>: norm_tri1024 taken toward the generic kernels a step at a time (flags: 1 16-byte
           vectors, 2 H at run time, 4 rsqrtf, 8 64-bit row offsets, 16 the lanes kernels' order; with 2: 32 1/H
           passed in, 64 the stride compiled in, 128 no guard, 256 division by H, 512 it hoisted; see the .cu)
  v4p1     norm_rows<4, 1> (the probe's generic form, Inductor's layout), mv-: minivllm.rms_norm(pdl=False)
Rows M <= 64 (the compiled kernel's xnumel). Every y is checked against float64 on sampled rows.

usage: python3 dev/probes/norm_tri_chain.py SO [--m 1 4 16 64]   (Triton's cache: a fresh temporary directory)
"""

import argparse
import ctypes
import glob
import math
import os
import tempfile

# fresh caches before torch loads Triton, so that this process compiles the kernel and its cubin is found
os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="norm_tri_chain_")
os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="norm_tri_chain_inductor_")
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import minivllm  # noqa: E402
from minivllm.bench import timing as bt  # noqa: E402
from scratch_norm_probe import check_and_poison  # noqa: E402  (this directory is on sys.path)

EPS = 1e-6
H = 1024
KERNEL = b"triton_per_fused__fused_rms_norm_0"
VARIANTS = [0, 2, 34, 66, 130, 194, 226, 258, 514, 3, 259, 515, 17]


def load_cubin(cache_dir):
    paths = glob.glob(os.path.join(cache_dir, "*", KERNEL.decode() + ".cubin"))
    if len(paths) != 1:
        raise RuntimeError(f"expected one {KERNEL.decode()}.cubin under {cache_dir}, found {paths}")
    image = open(paths[0], "rb").read()
    cuda = ctypes.CDLL("libcuda.so.1")
    module, function = ctypes.c_void_p(), ctypes.c_void_p()
    for call, args in (("cuModuleLoadData", (ctypes.byref(module), image)),
                       ("cuModuleGetFunction", (ctypes.byref(function), module, KERNEL))):
        err = getattr(cuda, call)(*args)
        if err:
            raise RuntimeError(f"{call}: CUresult {err}")
    cuda.cuLaunchKernel.argtypes = [ctypes.c_void_p] + [ctypes.c_uint] * 7 + [ctypes.c_void_p] * 3
    return cuda, function


def main():
    p = argparse.ArgumentParser()
    p.add_argument("so")
    p.add_argument("--m", nargs="+", type=int, default=[1, 4, 16, 64])
    p.add_argument("--replays", type=int, default=15)
    args = p.parse_args()
    cache_dir = os.environ["TRITON_CACHE_DIR"]
    lib = ctypes.CDLL(args.so)
    lib.scratch_norm.argtypes = [ctypes.c_uint64] * 3 + [ctypes.c_int, ctypes.c_int, ctypes.c_float,
                                                         ctypes.c_uint64] + [ctypes.c_int] * 4
    lib.scratch_norm_tri1024.argtypes = [ctypes.c_uint64] * 3 + [ctypes.c_int, ctypes.c_uint64, ctypes.c_int]
    lib.scratch_norm_var.argtypes = [ctypes.c_uint64] * 3 + [ctypes.c_int, ctypes.c_int, ctypes.c_float,
                                                             ctypes.c_uint64, ctypes.c_int]
    dtype = torch.bfloat16
    compiled = torch.compile(lambda x, g: F.rms_norm(x, (x.shape[-1],), g, EPS), dynamic=False)
    compiled(torch.randn(64, H, device="cuda", dtype=dtype), torch.ones(H, device="cuda", dtype=dtype))
    torch.cuda.synchronize()
    cuda, function = load_cubin(cache_dir)
    props = torch.cuda.get_device_properties(0)
    names = ["comp", "tcubin", "tri", "tri-ex"] + [f"v{f}" for f in VARIANTS] + ["v4p1", "mv-"]
    print(f"# {props.name}, torch {torch.__version__}, bf16, H = {H}; µs per call, chains of the norm alone")
    print(f"{'M':>5s} " + " ".join(f"{n:>7s}" for n in names))
    for rows in args.m:
        calls = bt.calls_per_graph(2 * rows * H * 2, props.L2_cache_size)
        gs = [torch.empty(H, device="cuda").uniform_(0.5, 1.5).to(dtype) for _ in range(calls)]
        xs = [torch.randn(rows, H, device="cuda", dtype=dtype) for _ in range(calls)]
        ys = [torch.full((rows, H), math.nan, device="cuda", dtype=dtype) for _ in range(calls)]
        scratch = torch.zeros(64, device="cuda", dtype=torch.uint8)

        def tcubin(i):
            vals = [ctypes.c_void_p(xs[i].data_ptr()), ctypes.c_void_p(gs[i].data_ptr()),
                    ctypes.c_void_p(ys[i].data_ptr()), ctypes.c_int(64), ctypes.c_int(H),
                    ctypes.c_void_p(scratch.data_ptr()), ctypes.c_void_p(scratch.data_ptr())]
            params = (ctypes.c_void_p * len(vals))(*[ctypes.cast(ctypes.pointer(v), ctypes.c_void_p) for v in vals])
            err = cuda.cuLaunchKernel(function, rows, 1, 1, 256, 1, 1, 32,
                                      torch.cuda.current_stream().cuda_stream, params, None)
            if err:
                raise RuntimeError(f"cuLaunchKernel: CUresult {err}")
            return ys[i]

        def tri(i, ex):
            err = lib.scratch_norm_tri1024(xs[i].data_ptr(), gs[i].data_ptr(), ys[i].data_ptr(), rows,
                                           torch.cuda.current_stream().cuda_stream, ex)
            if err:
                raise RuntimeError(f"norm_tri1024: cudaError {err}")
            return ys[i]

        def v4p1(i):
            err = lib.scratch_norm(xs[i].data_ptr(), gs[i].data_ptr(), ys[i].data_ptr(), rows, H, EPS,
                                   torch.cuda.current_stream().cuda_stream, 4, 1, 0, 0)
            if err:
                raise RuntimeError(f"scratch_norm: cudaError {err}")
            return ys[i]

        def var(i, flags):
            err = lib.scratch_norm_var(xs[i].data_ptr(), gs[i].data_ptr(), ys[i].data_ptr(), rows, H, EPS,
                                       torch.cuda.current_stream().cuda_stream, flags)
            if err:
                raise RuntimeError(f"norm_var<{flags}>: cudaError {err}")
            return ys[i]

        impls = {"comp": lambda i: compiled(xs[i], gs[i]), "tcubin": tcubin, "tri": lambda i: tri(i, 0),
                 "tri-ex": lambda i: tri(i, 1), "v4p1": v4p1,
                 "mv-": lambda i: minivllm.rms_norm(xs[i], gs[i], EPS, out=ys[i], pdl=False)}
        impls.update({f"v{f}": (lambda i, f=f: var(i, f)) for f in VARIANTS})
        cells = []
        for key in names:
            cells.append(f"{bt.time_per_call(impls[key], calls, args.replays)['us']:7.2f}")
            if key != "comp":
                check_and_poison(key, xs[-1], gs[-1], ys[-1])
        print(f"{rows:5d} " + " ".join(cells), flush=True)
        del gs, xs, ys


if __name__ == "__main__":
    main()
