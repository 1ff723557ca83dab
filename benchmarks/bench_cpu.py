"""CPU benchmark of minivllm's kernels against what a NumPy user would write instead, with the
ceilings measured in the same run (timings on a shared VM drift: compare within one run).

  QKV:   minivllm.fused_rms_norm_qkv per dtype against NumPy + BLAS float32 `y @ W.T` (W converted
         to float32 once, the norm not even counted), M = 1 and 16-256; at M = 1 also the
         fraction of the streaming-read ceiling (W's bytes / time over the all-core read
         bandwidth measured on >= 1 GiB, beyond the last-level cache).
  norms: rms_norm and fused_add_rms_norm against the NumPy expressions and against np.copyto of
         the same bytes (copy bandwidth), M*H >= 1M; M = 1, H = 4096 per-call time.
  mixed: a minivllm call then a NumPy matmul, alternating, against the sum of each alone.
Figures compared with each other are timed in interleaved rounds (best of each); the machine's
load average is logged at the start and the end.

  usage: python benchmarks/bench_cpu.py [--out benchmarks/results/cpu-NAME-DATE] [--quick]
Writes NAME.json (every figure) and prints the log (tee it to NAME.log).
"""
import argparse
import json
import os
import platform
import threading
import time

import numpy as np

import minivllm
from minivllm import _C

try:
    import ml_dtypes
    DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}
except ImportError:  # pragma: no cover
    DTYPES = {"float32": np.float32, "float16": np.float16}

MODELS = {  # name: (H, num_heads, num_kv_heads, head_dim)
    "Llama-3-8B": (4096, 32, 8, 128),
    "Qwen3-0.6B": (1024, 16, 8, 128),
}


def timed(fn, min_time=0.2, repeats=5):
    """Best mean seconds per call over `repeats` batches of about min_time each."""
    fn()
    start = time.perf_counter()
    fn()
    one = max(time.perf_counter() - start, 1e-7)
    n = max(1, int(min_time / one))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - start) / n)
    return best


def timed_together(fns, rounds=3, **kw):
    """timed() of each function, in `rounds` interleaved rounds, keeping each one's best: on a VM
    whose speed drifts, the figures compared with each other are taken side by side."""
    best = [float("inf")] * len(fns)
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            best[i] = min(best[i], timed(fn, **kw))
    return best


def read_bandwidth(nbytes, threads):
    """All-thread streaming read of nbytes of float32 (GB/s), each thread taking the max of its
    part (a vectorized reduction far cheaper than the read; NumPy releases the GIL in it)."""
    a = np.ones(nbytes // 4, np.float32)
    parts = np.array_split(a, threads)

    def once():
        ts = [threading.Thread(target=p.max) for p in parts]
        for t in ts:
            t.start()
        for t in ts:
            t.join()

    return nbytes / timed(once, min_time=0.5) / 1e9


def log(line, lines):
    print(line, flush=True)
    lines.append(line)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=None)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    lines, results = [], {}
    rng = np.random.default_rng(0)
    threads = minivllm.get_num_threads()
    info = {"cpu": platform.processor() or platform.machine(), "simd": _C._simd_level(),
            "threads": threads, "numpy": np.__version__, "python": platform.python_version()}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    results["machine"] = info
    results["load_average_at_start"] = os.getloadavg()
    log(f"# minivllm CPU benchmark: {info}", lines)
    log("# load average at start (1, 5, 15 min): %.2f %.2f %.2f" % os.getloadavg(), lines)

    ceiling = read_bandwidth(1 << 30, threads)
    results["read_ceiling_1GiB_GBps"] = ceiling
    log(f"streaming-read ceiling (1 GiB, {threads} threads): {ceiling:.1f} GB/s", lines)

    # ---- QKV -------------------------------------------------------------------------------
    results["qkv"] = []
    ms = [1, 16, 256] if args.quick else [1, 16, 32, 64, 128, 256]
    for model, (H, nh, nkv, hd) in MODELS.items():
        N = (nh + 2 * nkv) * hd
        W64 = rng.standard_normal((N, H)) / np.sqrt(H)
        W32 = W64.astype(np.float32)
        g = (1 + 0.1 * rng.standard_normal(H))
        same_bytes_ceiling = {}
        for M in ms:
            x64 = rng.standard_normal((M, H))
            y32 = x64.astype(np.float32)
            inputs = {name: (x64.astype(dt), g.astype(dt), W64.astype(dt))
                    for name, dt in DTYPES.items()}
            fns = [lambda: y32 @ W32.T] + [
                (lambda x, w, W: lambda: minivllm.fused_rms_norm_qkv(x, w, W, nh, nkv))(*a)
                for a in inputs.values()]
            t_np, *t_mv = timed_together(fns)
            row = {"model": model, "M": M, "H": H, "N": N, "numpy_f32_s": t_np}
            parts = [f"{model:10s} M={M:3d} numpy f32 {t_np * 1e3:8.3f} ms"]
            for (name, (x, w, W)), t in zip(inputs.items(), t_mv):
                row[name + "_s"] = t
                row[name + "_vs_numpy"] = t_np / t
                parts.append(f"{name} {t * 1e3:8.3f} ms ({t_np / t:4.2f}x)")
                if M == 1:
                    gbps = W.nbytes / t / 1e9
                    if W.nbytes not in same_bytes_ceiling:
                        same_bytes_ceiling[W.nbytes] = read_bandwidth(W.nbytes, threads)
                    row[name + "_W_GBps"] = gbps
                    row[name + "_of_1GiB_ceiling"] = gbps / ceiling
                    row[name + "_of_same_bytes_ceiling"] = gbps / same_bytes_ceiling[W.nbytes]
                    parts.append(f"[W {gbps:5.1f} GB/s = {gbps / ceiling:4.0%} of 1-GiB ceiling, "
                                 f"{gbps / same_bytes_ceiling[W.nbytes]:4.0%} of same-bytes]")
            results["qkv"].append(row)
            log(" | ".join(parts), lines)

    # ---- norms -----------------------------------------------------------------------------
    results["norm"] = []
    eps = 1e-6
    for M, H in [(1, 4096), (256, 4096), (1024, 4096), (64, 16384)]:
        x64, r64 = rng.standard_normal((M, H)), rng.standard_normal((M, H))
        w64 = 1 + 0.1 * rng.standard_normal(H)
        for name, dt in DTYPES.items():
            x, r, w = x64.astype(dt), r64.astype(dt), w64.astype(dt)
            out, r_out = np.empty_like(x), np.empty_like(x)

            def np_norm():
                s = x.astype(np.float32)
                return (w.astype(np.float32) * (s / np.sqrt(np.mean(s * s, -1, keepdims=True)
                                                            + eps))).astype(dt)

            def np_add_norm():
                s = (x.astype(np.float32) + r.astype(np.float32)).astype(dt)
                s32 = s.astype(np.float32)
                return (w.astype(np.float32) * (s32 / np.sqrt(np.mean(s32 * s32, -1, keepdims=True)
                                                              + eps))).astype(dt), s

            t_mv, t_add, t_copy, t_copy2 = timed_together([
                lambda: minivllm.rms_norm(x, w, eps, out=out),
                lambda: minivllm.fused_add_rms_norm(x, r, w, eps, out=out, residual_out=r_out),
                lambda: np.copyto(out, x),
                lambda: (np.copyto(out, x), np.copyto(r_out, r))])
            t_np = timed(np_norm)
            t_np_add = timed(np_add_norm)
            row = {"M": M, "H": H, "dtype": name, "rms_norm_s": t_mv, "numpy_rms_norm_s": t_np,
                   "copy_s": t_copy, "rms_norm_of_copy_bw": t_copy / t_mv,
                   "fused_add_s": t_add, "numpy_fused_add_s": t_np_add, "copy2_s": t_copy2,
                   "fused_add_of_copy_bw": t_copy2 / t_add}
            results["norm"].append(row)
            log(f"norm M={M:4d} H={H:5d} {name:8s} rms_norm {t_mv * 1e6:9.2f} us (numpy "
                f"{t_np / t_mv:5.1f}x slower, copy bw {t_copy / t_mv:5.0%}) | fused_add "
                f"{t_add * 1e6:9.2f} us (numpy {t_np_add / t_add:5.1f}x slower, copy bw "
                f"{t_copy2 / t_add:5.0%})", lines)

    # ---- alternating with NumPy's BLAS --------------------------------------------------------
    # t_mv is minivllm's calls back to back (what the pool's polling is for), t_both the
    # alternation with NumPy's BLAS threads (what it must not starve)
    results["mixed"] = []
    dt = DTYPES.get("bfloat16", np.float16)
    for model in MODELS:
        H, nh, nkv, hd = MODELS[model]
        N = (nh + 2 * nkv) * hd
        W, x, w = ((rng.standard_normal((N, H)) / 64).astype(dt),
                   rng.standard_normal((1, H)).astype(dt), np.ones(H, dt))
        for size in (256, 1024):
            A = rng.standard_normal((size, size)).astype(np.float32)
            t_mv, t_np, t_both = timed_together([
                lambda: minivllm.fused_rms_norm_qkv(x, w, W, nh, nkv), lambda: A @ A,
                lambda: (minivllm.fused_rms_norm_qkv(x, w, W, nh, nkv), A @ A)])
            ratio = t_both / (t_mv + t_np)
            results["mixed"].append({"model": model, "numpy_matmul": size, "minivllm_s": t_mv,
                                     "numpy_s": t_np, "alternating_s": t_both,
                                     "ratio_to_sum": ratio})
            log(f"alternating QKV ({model} M=1 {np.dtype(dt).name}) {t_mv * 1e3:.3f} ms + numpy "
                f"{size}^2 matmul {t_np * 1e3:.3f} ms: together {t_both * 1e3:.3f} ms = "
                f"{ratio:.2f}x the sum", lines)
    results["load_average_at_end"] = os.getloadavg()
    log("# load average at end (1, 5, 15 min): %.2f %.2f %.2f" % os.getloadavg(), lines)

    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out + ".json", "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
