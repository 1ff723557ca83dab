"""bench_cpu.py's alternation figure (QKV M = 1 bf16, then a NumPy 256^2 matmul) for CPU builds side by
side in one process, as dev/probes/cpu_ab.py loads them; per build and model, t_mv, t_np, t_both by the
bench's timed_together, ROUNDS (env, default 3) times interleaved, medians and each round's ratio.
  usage: PYTHONPATH=DIR_A python dev/probes/cpu_alternation_ab.py DIR_A DIR_B"""
import sys, os, shutil, importlib, statistics, numpy as np, ml_dtypes
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "benchmarks"))
from bench_cpu import timed_together
dirs = sys.argv[1:]; mods = []
for i, d in enumerate(dirs):
    dst = f"/tmp/abpkg/mv{i}"; shutil.rmtree(dst, ignore_errors=True); shutil.copytree(os.path.join(d, "minivllm"), dst)
sys.path.insert(0, "/tmp/abpkg")
mods = [importlib.import_module(f"mv{i}") for i in range(len(dirs))]
rng = np.random.default_rng(0); dt = ml_dtypes.bfloat16
MODELS = {"Llama-3-8B": (4096, 32, 8, 128), "Qwen3-0.6B": (1024, 16, 8, 128)}
ROUNDS = int(os.environ.get("ROUNDS", "3"))
for model, (H, nh, nkv, hd) in MODELS.items():
    N = (nh + 2 * nkv) * hd
    W, x, w = (rng.standard_normal((N, H)) / 64).astype(dt), rng.standard_normal((1, H)).astype(dt), np.ones(H, dt)
    A = rng.standard_normal((256, 256)).astype(np.float32)
    res = {i: [] for i in range(len(mods))}
    for _ in range(ROUNDS):
        for i, m in enumerate(mods):
            f = (lambda m: lambda: m.fused_rms_norm_qkv(x, w, W, nh, nkv))(m)
            t_mv, t_np, t_both = timed_together([f, lambda: A @ A, lambda: (f(), A @ A)])
            res[i].append((t_mv, t_np, t_both, t_both / (t_mv + t_np)))
    for i in res:
        med = [statistics.median(r[j] for r in res[i]) for j in range(4)]
        print(f"{model} build {i} ({dirs[i]}): mv {med[0]*1e3:.3f} np {med[1]*1e3:.3f} both {med[2]*1e3:.3f} ms ratio {med[3]:.2f}  all ratios {[round(r[3],2) for r in res[i]]}", flush=True)
