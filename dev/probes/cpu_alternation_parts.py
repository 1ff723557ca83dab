"""Per-call timings inside the alternation of QKV M = 1 bf16 and a NumPy 256^2 matmul, at 2 and 1 minivllm\nthreads, against each alone.  usage: python dev/probes/cpu_alternation_parts.py DIR (a built package)"""
import sys, time, os, numpy as np, ml_dtypes, statistics
sys.path.insert(0, sys.argv[1]); import minivllm
rng = np.random.default_rng(0); dt = ml_dtypes.bfloat16
for model, (H, nh, nkv, hd) in {"llama": (4096, 32, 8, 128), "qwen": (1024, 16, 8, 128)}.items():
    N = (nh + 2 * nkv) * hd
    W = (rng.standard_normal((N, H)) / 64).astype(dt); x = rng.standard_normal((1, H)).astype(dt); w = np.ones(H, dt)
    A = rng.standard_normal((256, 256)).astype(np.float32)
    f = lambda: minivllm.fused_rms_norm_qkv(x, w, W, nh, nkv)
    g = lambda: A @ A
    for thr in (2, 1):
        minivllm.set_num_threads(thr)
        for _ in range(50): f()
        t0 = time.perf_counter(); [f() for _ in range(300)]; tmv = (time.perf_counter() - t0) / 300
        for _ in range(50): g()
        t0 = time.perf_counter(); [g() for _ in range(300)]; tnp = (time.perf_counter() - t0) / 300
        a, b = [], []
        for _ in range(300):
            t0 = time.perf_counter(); f(); t1 = time.perf_counter(); g(); t2 = time.perf_counter()
            a.append(t1 - t0); b.append(t2 - t1)
        ma, mb = sum(a) / len(a), sum(b) / len(b)
        print(f"{model} thr={thr} mv {tmv*1e6:7.1f} np {tnp*1e6:7.1f} | alternating: mv {ma*1e6:7.1f} (med {statistics.median(a)*1e6:7.1f}) np {mb*1e6:7.1f} (med {statistics.median(b)*1e6:7.1f}) ratio {(ma+mb)/(tmv+tnp):.2f}", flush=True)
    minivllm.set_num_threads(2)
