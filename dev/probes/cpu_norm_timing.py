"""CPU norm timings of the installed minivllm beside np.copyto of the same bytes (median of 9
batches; the bench_cpu norm shapes). Run it alternately against two builds in two virtual
environments to compare them: this VM's timings drift by tens of percent between runs.
usage: python3 dev/probes/cpu_norm_timing.py"""
import sys, time, statistics, numpy as np, ml_dtypes, minivllm
rng = np.random.default_rng(0)
rows = []
for M, H in [(1, 4096), (256, 4096), (1024, 4096), (64, 16384)]:
    for name, dt in (("float32", np.float32), ("float16", np.float16), ("bfloat16", ml_dtypes.bfloat16)):
        x = rng.standard_normal((M, H)).astype(dt); r = rng.standard_normal((M, H)).astype(dt)
        w = (1 + 0.1 * rng.standard_normal(H)).astype(dt); out = np.empty_like(x); ro = np.empty_like(x)
        n = max(3, int(2e6 // (M * H)))
        def tm(f):
            ts = []
            for _ in range(9):
                t0 = time.perf_counter()
                for _ in range(n): f()
                ts.append((time.perf_counter() - t0) / n)
            return statistics.median(ts)
        a = tm(lambda: minivllm.rms_norm(x, w, 1e-6, out=out))
        b = tm(lambda: minivllm.fused_add_rms_norm(x, r, w, 1e-6, out=out, residual_out=ro))
        c = tm(lambda: np.copyto(out, x))
        print(f"{M:5d} x {H:5d} {name:9s} rms_norm {a*1e6:9.2f} us ({c/a:5.0%} of copy)  fused_add {b*1e6:9.2f} us")
