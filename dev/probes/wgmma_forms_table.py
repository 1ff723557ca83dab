"""The table of a wgmma tile-form experiment (wgmma_rows.sh, wgmma_share.sh): per model and M,
cuBLAS alone and the table ("auto" run), then each form's forced-wgmma time, and cuBLAS / the
best form and auto / the best form.
usage: python3 wgmma_forms_table.py OUT FORM_DIR [FORM_DIR ...]   (directories under OUT)"""
import glob
import json
import sys

out, forms = sys.argv[1], sys.argv[2:]


def load(name):
    f = glob.glob(f"{out}/{name}/qkv-*.json")
    return {(r["model"], r["rows"]): r for r in json.load(open(f[0]))["results"]} if f else {}


def us(r, impl):
    return r["impls"][impl]["us"] if r and impl in r.get("impls", {}) else float("nan")


auto = load("auto")
runs = {f: load(f) for f in forms}
print(f"{'model':14} {'M':>5} {'cuBLAS':>7} {'auto':>7} " + " ".join(f"{f:>8}" for f in forms) + "  cuB/best auto/best")
for key, ra in auto.items():
    cu, au = us(ra, "cublas"), us(ra, "minivllm")
    ws = [us(runs[f].get(key), "minivllm") for f in forms]
    ok = [w for w in ws if w == w]
    best = min(ok) if ok else float("nan")
    print(f"{key[0]:14} {key[1]:5d} {cu:7.2f} {au:7.2f} " + " ".join(f"{w:8.2f}" for w in ws)
          + f"  {cu / best:6.2f} {au / best:6.2f}")
