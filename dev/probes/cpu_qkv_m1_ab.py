"""bench_cpu.py's M = 1 QKV figure (timed_together of NumPy float32 y @ W.T and each build's call), builds side by side in one
process; env DTS (f32,f16,bf16), REPS, MODEL, WOFF (W copied to that many bytes past a 64-byte line; default: as NumPy allocates).
  usage: PYTHONPATH=DIR_A python dev/probes/cpu_qkv_m1_ab.py DIR_A DIR_B"""
import sys, os, shutil, importlib, numpy as np, ml_dtypes
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "benchmarks"))
from bench_cpu import timed_together
dirs = sys.argv[1:]
for i, d in enumerate(dirs):
    dst = f"/tmp/abpkg/mv{i}"; shutil.rmtree(dst, ignore_errors=True); shutil.copytree(os.path.join(d, "minivllm"), dst)
sys.path.insert(0, "/tmp/abpkg")
mods = [importlib.import_module(f"mv{i}") for i in range(len(dirs))]
rng = np.random.default_rng(0)
DT = os.environ.get("DTS", "f32").split(",")
DTM = {"f32": np.float32, "f16": np.float16, "bf16": ml_dtypes.bfloat16}
for rep in range(int(os.environ.get("REPS", "3"))):
  for model, (H, nh, nkv, hd) in {"Qwen3-0.6B": (1024, 16, 8, 128), "Llama-3-8B": (4096, 32, 8, 128)}.items():
    if os.environ.get("MODEL") and os.environ["MODEL"] != model: continue
    N = (nh + 2 * nkv) * hd
    W64 = rng.standard_normal((N, H)) / np.sqrt(H); W32 = W64.astype(np.float32); g = 1 + 0.1 * rng.standard_normal(H)
    x64 = rng.standard_normal((1, H)); y32 = x64.astype(np.float32)
    fns = [lambda: y32 @ W32.T]; names = ["numpy"]
    for d in DT:
        x, w, W = x64.astype(DTM[d]), g.astype(DTM[d]), W64.astype(DTM[d])
        if os.environ.get("WOFF"):
            buf = np.empty(W.size + 64, W.dtype); st = (((-buf.ctypes.data) % 64) + int(os.environ["WOFF"])) // W.itemsize
            W2 = buf[st:st + W.size].reshape(W.shape); W2[...] = W; W = W2
        for i, m in enumerate(mods):
            fns.append((lambda m, x, w, W: lambda: m.fused_rms_norm_qkv(x, w, W, nh, nkv))(m, x, w, W)); names.append(f"{d}/mv{i}")
    ts = timed_together(fns)
    print(model, f"W%64={W.ctypes.data % 64}", " | ".join(f"{n} {t*1e6:7.1f}us ({ts[0]/t:4.2f}x)" for n, t in zip(names, ts)), flush=True)
