"""Whole decode steps of two (or more) prebuilt sites, each timed in several processes, the sides
alternating: bench_decode.py once a process, its JSON read back; per decoder, batch and variant the
median, min and max over a side's processes and the ratio of medians. Step times moved 30-40 us
(3%) with the allocation state of one process (dev/logs/residual-bound-nvidia-h200-2026-11-26.log,
calls 11-13), so a rule worth 1-2% a step needs several processes a side and sides whose spreads
do not overlap.

usage (device): python3 dev/probes/decode_sites_ab.py /tmp/site_new /tmp/site_old --models llama-3-8b \
           --batch 1 2 --variants minivllm compile+mv [--processes 3] [--replays 20]
A side is SITE[,VAR=VALUE...]: the site with those environment variables (one experiment build,
switched at run time, can then be both sides).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_decode.py"


def one_process(side, args, out):
    site, *assignments = side.split(",")
    env = dict(os.environ, PYTHONPATH=site, **dict(a.split("=", 1) for a in assignments))
    cmd = [sys.executable, str(BENCH), "--models", *args.models, "--batch", *map(str, args.batch),
           "--variants", *args.variants, "--replays", str(args.replays), "--no-plot", "--out", out]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    files = sorted(Path(out).glob("decode-*.json"))
    if not files:
        raise SystemExit(f"{side}: bench_decode.py wrote no JSON (exit {done.returncode}):\n{done.stderr[-2000:]}")
    report = json.loads(files[-1].read_text())
    return {(r["model"], r["batch"], v): t["us"] for r in report["results"] for v, t in r["variants"].items()}


def label(side):
    """A side as printed: its site's folder name and any environment variables."""
    site, *assignments = side.split(",")
    return ",".join([Path(site).name, *assignments])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("sites", nargs="+", help="SITE[,VAR=VALUE...]: a folder to put on PYTHONPATH (and "
                   "environment variables), one a side")
    p.add_argument("--models", nargs="+", default=["llama-3-8b"])
    p.add_argument("--batch", nargs="+", type=int, default=[1])
    p.add_argument("--variants", nargs="+", default=["minivllm"])
    p.add_argument("--processes", type=int, default=3)
    p.add_argument("--replays", type=int, default=20)
    p.add_argument("--timeout", type=int, default=300)
    args = p.parse_args()
    times = {site: {} for site in args.sites}
    with tempfile.TemporaryDirectory() as tmp:
        for n in range(args.processes):
            for i, site in enumerate(args.sites):
                got = one_process(site, args, f"{tmp}/{n}-{i}")
                for key, us in got.items():
                    times[site].setdefault(key, []).append(us)
                print(f"process {n + 1}, {label(site)}: " + ", ".join(
                    f"{k[0]} b{k[1]} {k[2]} {us:.1f}" for k, us in got.items()), flush=True)
    base = args.sites[-1]
    print(f"\nmedian [min, max] us a step over {args.processes} processes a side; ratio: median / {label(base)}'s")
    for key in times[base]:
        cells = []
        for site in args.sites:
            ts = times[site].get(key, [])
            if not ts:
                cells.append(f"{label(site)}: -")
                continue
            med = statistics.median(ts)
            cells.append(f"{label(site)} {med:7.1f} [{min(ts):.1f}, {max(ts):.1f}] "
                         f"{med / statistics.median(times[base][key]):.4f}")
        print(f"{key[0]} batch {key[1]} {key[2]}: " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
