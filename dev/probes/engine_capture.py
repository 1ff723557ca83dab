"""Where does a QKV call fail on the GPU: eager on the current stream, eager on a fresh stream, or
inside torch.cuda.graph capture (a stream whose first call is captured)? Prints one line per step.
usage: python3 dev/probes/engine_capture.py [H,HEADS,KV_HEADS,HEAD_DIM] [M ...] [--path NAME]"""
import sys

import torch

import minivllm
from minivllm import _C

args = [a for a in sys.argv[1:] if not a.startswith("--")]
path = sys.argv[sys.argv.index("--path") + 1] if "--path" in sys.argv else None
if path in args:
    args.remove(path)
shape = args[0] if args else "8192,64,8,128"
ms = [int(m) for m in args[1:]] or [16]
h, nh, nkv, hd = (int(v) for v in shape.split(","))
n = (nh + 2 * nkv) * hd
g = torch.Generator(device="cuda").manual_seed(0)
w = torch.randn(n, h, device="cuda", dtype=torch.bfloat16, generator=g) * 0.02
gamma = torch.rand(h, device="cuda", dtype=torch.bfloat16, generator=g) + 0.5
kw = {} if path is None else {"_path": path}


def ref(x):
    y = torch.nn.functional.rms_norm(x.double(), (h,), gamma.double(), 1e-6)
    return y @ w.double().t()


def check(step, fn, x):
    try:
        q, k, v = fn()
        torch.cuda.synchronize()
        got = torch.cat([t.reshape(x.shape[0], -1) for t in (q, k, v)], 1).double()
        r = ref(x)
        err = ((got - r).norm() / r.norm()).item()
        print(f"  {step:28} ok  rel err {err:.2e}  path {_C.qkv_last_gpu_path()}")
    except Exception as e:  # noqa: BLE001 - the probe reports every failure
        print(f"  {step:28} FAILED: {type(e).__name__}: {e}")
        torch.cuda.synchronize()


for m in ms:
    print(f"shape {shape} M={m} path={path or 'auto'}")
    x = torch.randn(m, h, device="cuda", dtype=torch.bfloat16, generator=g)
    call = lambda: minivllm.FusedRMSNormQKV.forward(x, gamma, w, nh, nkv, **kw)  # noqa: E731
    check("eager, current stream", call, x)
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        check("eager, fresh stream", call, x)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    out = []
    try:
        with torch.cuda.graph(graph):
            out.append(call())
        graph.replay()
        check("captured (fresh stream)", lambda: out[0], x)
    except Exception as e:  # noqa: BLE001
        print(f"  {'captured (fresh stream)':28} FAILED in capture: {type(e).__name__}: {e}")
