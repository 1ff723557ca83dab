"""What torch's dispatcher charges a Python-implemented custom op per schema argument (issue 30: the
registered prologue op boxes 18): three probe ops with trivial bodies, 18 arguments as the prologue's, the
same with its six optional tensors and two optional floats as lists (12 arguments), and 6 arguments.
(dev/logs/dispatcher-args-amd-epyc-2c-2026-11-25.log) Needs torch; CPU only."""
import time, statistics, torch
lib = torch.library.Library("dispprobe", "DEF")
def impl18(x, a, b, c, d, e, f, g, h, i, j, k, l, m, n, o, p, q): return x, x
def impl6(x, a, b, c, d, e): return x, x
def impl_list(x, ts, fs, s): return x, x
lib.define("op18(Tensor x, Tensor a, Tensor b, int c, int d, float e, Tensor? f, Tensor? g, Tensor? h, Tensor? i, float? j, Tensor? k, Tensor? l, str m, Tensor(a!)? n, Tensor(b!)? o, Tensor? p, float? q) -> (Tensor, Tensor)")
lib.impl("op18", impl18, "CompositeExplicitAutograd")
lib.define("op6(Tensor x, Tensor a, Tensor b, int c, int d, float e) -> (Tensor, Tensor)")
lib.impl("op6", impl6, "CompositeExplicitAutograd")
x = torch.ones(1, 8); t = torch.ones(8)
a18 = (x, t, t, 1, 1, 1e-6, t, None, t, t, None, t, t, "neox", t, t, t, None)
ops = torch.ops.dispprobe
lib.define("op12(Tensor x, Tensor a, Tensor b, int c, int d, float e, Tensor? f, Tensor?[] g, float[] h, str m, Tensor(a!)? n, Tensor(b!)? o) -> (Tensor, Tensor)")
def impl12(x, a, b, c, d, e, f, g, h, m, n, o): return x, x
lib.impl("op12", impl12, "CompositeExplicitAutograd")
cases = {"op18 .default": lambda: ops.op18.default(*a18),
         "op12 (list of 6 optional tensors, 2 floats)": lambda: ops.op12.default(x, t, t, 1, 1, 1e-6, t, [None, t, t, t, t, t], [float("nan"), float("nan")], "neox", t, t),
         "op6 .default": lambda: ops.op6.default(x, t, t, 1, 1, 1e-6),
         "impl18 direct": lambda: impl18(*a18)}
with torch.inference_mode():
    for f in cases.values():
        for _ in range(3000): f()
    res = {n: [] for n in cases}
    for rnd in range(9):
        for n, f in cases.items():
            t0 = time.perf_counter()
            for _ in range(5000): f()
            res[n].append((time.perf_counter() - t0) / 5000 * 1e6)
for n, v in res.items(): print(f"{n:45s} {statistics.median(v):6.2f} {min(v):6.2f}")
