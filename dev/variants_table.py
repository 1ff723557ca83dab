"""One table from the bench logs that dev/qkv_variants.sh leaves in OUTDIR: a row per model,
dtype and M, a column per variant (minivllm µs), and cuBLAS alone (µs, from the first variant).

    python3 dev/variants_table.py OUTDIR VARIANT_NAME...
"""
import re
import sys

LINE = re.compile(r"\] (\S+) (\S+) M=(\d+) .*?([\d.]+) µs .*?cuBLAS ([\d.]+)x")


def read(path):
    rows = {}
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                m = LINE.search(line)
                if m:
                    model, dtype, rows_m, us, ratio = m.groups()
                    rows[(model, dtype, int(rows_m))] = (float(us), float(us) * float(ratio))
    except OSError:
        pass
    return rows


def main():
    out, names = sys.argv[1], sys.argv[2:]
    tables = [read(f"{out}/bench-{n}.log") for n in names]
    keys = sorted({k for t in tables for k in t}, key=lambda k: (k[0], k[1], k[2]))
    print(f"{'model':<14}{'dtype':<6}{'M':>6}" + "".join(f"{n[:10]:>11}" for n in names) + f"{'cuBLAS':>9}")
    for k in keys:
        cells = "".join(f"{t[k][0]:>11.2f}" if k in t else f"{'-':>11}" for t in tables)
        cublas = next((t[k][1] for t in tables if k in t), float("nan"))
        print(f"{k[0]:<14}{k[1]:<6}{k[2]:>6}{cells}{cublas:>9.2f}")


if __name__ == "__main__":
    main()
