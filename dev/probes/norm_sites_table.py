"""The table of norm_sites_ab.sh: per (op, dtype, M, H), each build's µs with PDL on and off (the
median over its rounds; the rounds' spread in brackets), and each build's ratio to the first
(above 1: faster than the first).

    python3 dev/probes/norm_sites_table.py RESULTS_DIR SITE_A SITE_B ...   # RESULTS_DIR/ROUND-SITE.json
"""
import json
import statistics
import sys
from pathlib import Path


def runs(folder, site):
    """{key: {impl: [µs per round]}} of one build."""
    out = {}
    for path in sorted(Path(folder).glob(f"*-{site}.json")):
        for r in json.loads(path.read_text())["results"]:
            key = (r["op"], r["dtype"], r["rows"], r["hidden"])
            for impl in ("minivllm", "minivllm_pdl_off"):
                if impl in r["impls"]:
                    out.setdefault(key, {}).setdefault(impl, []).append(r["impls"][impl]["us"])
    return out


def main(folder, sites):
    data = [runs(folder, s) for s in sites]
    head = " ".join(f"{s[:14]:>22}" for s in sites)
    for impl, label in (("minivllm", "PDL on"), ("minivllm_pdl_off", "PDL off")):
        print(f"# {label}: µs median of rounds [spread]; ratio = first / this")
        print(f"{'op':18} {'dt':5} {'M':>6} {'H':>5} | {head}")
        for key in data[0]:
            cells = []
            first = statistics.median(data[0][key][impl]) if impl in data[0].get(key, {}) else None
            for d in data:
                v = d.get(key, {}).get(impl)
                if not v:
                    cells.append(f"{'-':>22}")
                    continue
                med = statistics.median(v)
                ratio = first / med if first else float("nan")
                cells.append(f"{med:8.2f} [{max(v) - min(v):4.2f}] {ratio:5.3f}")
            print(f"{key[0]:18} {key[1]:5} {key[2]:6d} {key[3]:5d} | {' '.join(cells)}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
