"""The table of norm_sites_ab.sh and norm_ab.sh: per (op, dtype, M, H), each build's µs with PDL on
and off (the median over its rounds; the rounds' spread in brackets), its ratio to the first build
(first / this: above 1, this build is faster) and, where a run timed peers (torch, HF, Liger), the
fastest peer's µs over this build's (above 1: ahead of the peer).

    python3 dev/probes/norm_sites_table.py RESULTS_DIR SITE_A SITE_B ...   # RESULTS_DIR/ROUND-SITE.json
"""
import json
import statistics
import sys
from pathlib import Path

IMPLS = ("minivllm", "minivllm_pdl_off")


def runs(folder, site):
    """{key: {impl: [µs per round]}} of one build; impl "peer": the fastest non-minivllm time."""
    out = {}
    for path in sorted(Path(folder).glob("*.json")):
        if path.name.split("-", 1)[-1] != f"{site}.json":
            continue
        for r in json.loads(path.read_text())["results"]:
            times = out.setdefault((r["op"], r["dtype"], r["rows"], r["hidden"]), {})
            for impl in IMPLS:
                if impl in r["impls"]:
                    times.setdefault(impl, []).append(r["impls"][impl]["us"])
            peers = [v["us"] for name, v in r["impls"].items() if not name.startswith("minivllm")]
            if peers:
                times.setdefault("peer", []).append(min(peers))
    return out


def median(times, impl):
    return statistics.median(times[impl]) if times.get(impl) else None


def main(folder, sites):
    data = [runs(folder, s) for s in sites]
    head = " ".join(f"{s[:14]:>28}" for s in sites)
    for impl, label in zip(IMPLS, ("PDL on", "PDL off")):
        print(f"# {label}: µs median of rounds [spread], first / this, fastest peer / this")
        print(f"{'op':18} {'dt':5} {'M':>6} {'H':>5} | {head}")
        for key in data[0]:
            first = median(data[0][key], impl)
            peer = next((p for p in (median(d.get(key, {}), "peer") for d in data) if p), None)
            cells = []
            for d in data:
                v = d.get(key, {}).get(impl)
                if not v:
                    cells.append(f"{'-':>28}")
                    continue
                med = statistics.median(v)
                ratio = first / med if first else float("nan")
                vs_peer = f"{peer / med:5.2f}" if peer else f"{'-':>5}"
                cells.append(f"{med:8.2f} [{max(v) - min(v):4.2f}] {ratio:5.3f} {vs_peer}")
            print(f"{key[0]:18} {key[1]:5} {key[2]:6d} {key[3]:5d} | {' '.join(cells)}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
