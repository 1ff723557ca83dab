"""The CPU norms at each SIMD level this machine has (minivllm._C._set_simd_level), against
np.copyto of the same bytes (read + write), in interleaved rounds: the fraction of the copy rate
each (level, dtype, op, shape) reaches. Session 67: are the AVX2 kernels (CI's AVX2 machine read
fp16 at 42-63% of it on 2026-11-23) at memory bandwidth?

usage: python3 dev/probes/cpu_norm_levels.py [--shapes 4096x4096 16384x1024 1024x8192] [--levels portable]
"""
import argparse
import sys
from pathlib import Path

import numpy as np

import minivllm
from minivllm import _C

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from bench_cpu import DTYPES, timed_together  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--shapes", nargs="+", default=["4096x4096", "16384x1024", "1024x8192", "256x4096"])
    p.add_argument("--dtypes", nargs="+", default=list(DTYPES))
    p.add_argument("--levels", nargs="+", help="levels to time (default: every level the CPU has)")
    args = p.parse_args()
    levels = list(_C._simd_levels())
    detected = _C._simd_level()
    usable = args.levels or levels[:levels.index(detected) + 1]
    rng = np.random.default_rng(0)
    print(f"# levels {usable}; µs per call (best of interleaved rounds), % of np.copyto of the same bytes")
    print(f"{'level':>10s} {'dtype':>9s} {'op':>8s} {'shape':>11s} {'us':>9s} {'copy us':>9s} {'%copy':>6s}")
    for shape in args.shapes:
        m, h = (int(v) for v in shape.split("x"))
        for dname in args.dtypes:
            dt = DTYPES[dname]
            x = rng.standard_normal((m, h)).astype(np.float32).astype(dt)
            r = rng.standard_normal((m, h)).astype(np.float32).astype(dt)
            w = rng.uniform(0.5, 1.5, h).astype(np.float32).astype(dt)
            y, s = np.empty_like(x), np.empty_like(x)
            src1, dst1 = np.empty_like(x), np.empty_like(x)
            src2 = np.concatenate([x, r]); dst2 = np.empty_like(src2)
            for level in usable:
                _C._set_simd_level(levels.index(level))
                t_norm, t_add, c1, c2 = timed_together([
                    lambda: minivllm.rms_norm(x, w, 1e-6, out=y),
                    lambda: minivllm.fused_add_rms_norm(x, r, w, 1e-6, out=y, residual_out=s),
                    lambda: np.copyto(dst1, src1),
                    lambda: np.copyto(dst2, src2)], min_time=0.1)
                for op, t, c in (("rms_norm", t_norm, c1), ("fused", t_add, c2)):
                    print(f"{level:>10s} {dname:>9s} {op:>8s} {shape:>11s} {t * 1e6:9.1f} {c * 1e6:9.1f} "
                          f"{100 * c / t:5.0f}%", flush=True)
    _C._set_simd_level(len(levels) - 1)


if __name__ == "__main__":
    main()
