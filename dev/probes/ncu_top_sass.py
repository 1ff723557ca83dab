"""The SASS lines of an Nsight Compute source page (CSV, `ncu --import R --page source --print-source sass --csv`)
that drew the most warp-state samples, with their top stall reasons: where a kernel's warps wait.
usage: python3 ncu_top_sass.py page.csv [N]"""
import csv
import sys

rows = list(csv.reader(open(sys.argv[1], newline="")))
top = int(sys.argv[2]) if len(sys.argv) > 2 else 20
head = next((i for i, r in enumerate(rows) if "Source" in r), None)
if head is None:
    print("no source page in", sys.argv[1], rows[:3])
    sys.exit(0)
cols = rows[head]
body = [r for r in rows[head + 1:] if len(r) == len(cols)]
num = lambda v: float(v.replace(",", "")) if v.replace(",", "").replace(".", "", 1).isdigit() else 0.0
samp = next((c for c in cols if c.startswith("Warp Stall Sampling (All")), None)
stalls = [c for c in cols if c.startswith("stall_") or (c.startswith("Warp Stall Sampling") is False and "Stall" in c)]
if samp is None:
    print("columns:", cols)
    sys.exit(0)
si, ci = cols.index(samp), cols.index("Source")
total = sum(num(r[si]) for r in body) or 1.0
print(f"{len(body)} SASS lines, {total:.0f} samples; top {top}:")
for r in sorted(body, key=lambda r: -num(r[si]))[:top]:
    reasons = sorted(((num(r[cols.index(c)]), c) for c in stalls), reverse=True)[:3]
    why = ", ".join(f"{c} {v:.0f}" for v, c in reasons if v > 0)
    print(f"{100 * num(r[si]) / total:5.1f}%  {r[ci][:70]:70s} {why}")
