"""CPU builds side by side in one process (this VM's speed drifts up to 2x between runs): each DIR
holds a built minivllm/ package (copy it there after `setup.py build_ext --inplace`), loaded as
mv0, mv1, ...; every spec is timed in ROUNDS interleaved rounds (env, default 7), medians printed.
Specs: qwen:M, llama:M (QKV against NumPy float32 y @ W.T), norm:M:H, add:M:H (rms_norm, fused
add, against np.copyto of the input), pro:MODEL:M with MODEL qwen, qwen05 or llama (the attention
prologue with a residual, q/k norms, RoPE and a paged cache, against the first build's QKV op with
the residual). Run with OPENBLAS_THREAD_TIMEOUT=4: OpenBLAS's threads
otherwise spin after each NumPy matmul and slow whichever build runs next.
  usage: OPENBLAS_THREAD_TIMEOUT=4 python dev/probes/cpu_ab.py DIR_A DIR_B -- qwen:8 norm:256:4096"""
import sys, os, shutil, time, importlib, statistics, numpy as np, ml_dtypes
sep = sys.argv.index("--"); dirs = sys.argv[1:sep]; specs = sys.argv[sep + 1:]
mods = []
for i, d in enumerate(dirs):
    dst = f"/tmp/abpkg/mv{i}"
    shutil.rmtree(dst, ignore_errors=True); shutil.copytree(os.path.join(d, "minivllm"), dst)
sys.path.insert(0, "/tmp/abpkg")
for i in range(len(dirs)):
    mods.append(importlib.import_module(f"mv{i}"))
def timed(fn, min_time=0.1):
    fn(); t = time.perf_counter(); fn(); one = max(time.perf_counter() - t, 1e-7)
    n = max(1, int(min_time / one)); t = time.perf_counter()
    for _ in range(n): fn()
    return (time.perf_counter() - t) / n
DT = {"f32": np.float32, "f16": np.float16, "bf16": ml_dtypes.bfloat16}
rng = np.random.default_rng(0)
ROUNDS = int(os.environ.get("ROUNDS", "7"))
for spec in specs:
    parts = spec.split(":")
    for name, dt in DT.items():
        fns = []
        if parts[0] == "norm" or parts[0] == "add":
            M, H = int(parts[1]), int(parts[2])
            x = rng.standard_normal((M, H)).astype(dt); r = rng.standard_normal((M, H)).astype(dt)
            w = (1 + 0.1 * rng.standard_normal(H)).astype(dt); o = np.empty_like(x); ro = np.empty_like(x)
            fns.append(lambda: np.copyto(o, x))
            for m in mods:
                if parts[0] == "norm":
                    fns.append((lambda m: lambda: m.rms_norm(x, w, 1e-6, out=o))(m))
                else:
                    fns.append((lambda m: lambda: m.fused_add_rms_norm(x, r, w, 1e-6, out=o, residual_out=ro))(m))
        elif parts[0] == "pro":
            H, nh, nkv, hd = {"llama": (4096, 32, 8, 128), "qwen": (1024, 16, 8, 128),
                              "qwen05": (896, 14, 2, 64)}[parts[1]]
            M = int(parts[2]); N = (nh + 2 * nkv) * hd
            W = (rng.standard_normal((N, H)) / np.sqrt(H)).astype(dt); g = np.ones(H, dt)
            x = rng.standard_normal((M, H)).astype(dt); r = rng.standard_normal((M, H)).astype(dt)
            qn, kn = np.ones(hd, dt), np.ones(hd, dt)
            angles = np.arange(4096)[:, None] * 10000.0 ** (-np.arange(0, hd, 2) / hd)[None, :]
            cs = np.concatenate([np.cos(angles), np.sin(angles)], 1).astype(dt)
            pos = np.arange(M, dtype=np.int64) + 100; slots = np.arange(M, dtype=np.int64)
            kc = np.zeros((max(2, M // 16 + 1), 16, nkv, hd), dt); vc = np.zeros_like(kc)
            fns.append((lambda m: lambda: m.fused_rms_norm_qkv(x, g, W, nh, nkv, residual=r))(mods[0]))
            for m in mods:
                fns.append((lambda m: lambda: m.attention_prologue(
                    x, g, W, nh, nkv, residual=r, q_norm_weight=qn, k_norm_weight=kn, positions=pos,
                    cos_sin_cache=cs, k_cache=kc, v_cache=vc, slot_mapping=slots))(m))
        else:
            H, nh, nkv, hd = {"llama": (4096, 32, 8, 128), "qwen": (1024, 16, 8, 128)}[parts[0]]
            M = int(parts[1]); N = (nh + 2 * nkv) * hd
            W64 = rng.standard_normal((N, H)) / np.sqrt(H); x64 = rng.standard_normal((M, H))
            W32 = W64.astype(np.float32); y32 = x64.astype(np.float32)
            W, x, g = W64.astype(dt), x64.astype(dt), (1 + 0.1 * rng.standard_normal(H)).astype(dt)
            fns.append(lambda: y32 @ W32.T)
            for m in mods:
                fns.append((lambda m: lambda: m.fused_rms_norm_qkv(x, g, W, nh, nkv))(m))
        ts = [[] for _ in fns]
        for _ in range(ROUNDS):
            for i, f in enumerate(fns):
                ts[i].append(timed(f))
        med = [statistics.median(t) for t in ts]
        ref = "copy" if parts[0] in ("norm", "add") else "qkv" if parts[0] == "pro" else "numpy"
        line = f"{spec:14s} {name:5s} {ref} {med[0]*1e6:9.1f}us"
        for i, t in enumerate(med[1:]):
            line += f" | {i}: {t*1e6:9.1f}us ({med[0]/t:5.2f}x)"
        if len(med) == 3:
            line += f" | B/A {med[1]/med[2]:5.3f}"
        print(line, flush=True)
