"""The table of norm_ab.sh: per (op, dtype, M, H), minivllm's µs with PDL on and off from the old
and new runs' JSON, the fastest peer of the new run, and the ratios (above 1: the first faster).

    python3 dev/probes/norm_ab_table.py RESULTS_DIR      # reads RESULTS_DIR/old.json, new.json
"""
import json
import math
import sys
from pathlib import Path


def load(path):
    if not path.exists():
        return {}
    return {(r["op"], r["dtype"], r["rows"], r["hidden"]): r for r in json.loads(path.read_text())["results"]}


def us(record, impl):
    return record["impls"][impl]["us"] if record and impl in record["impls"] else math.nan


def main(folder):
    old, new = load(Path(folder) / "old.json"), load(Path(folder) / "new.json")
    print(f"{'op':18} {'dt':5} {'M':>5} {'H':>5} | {'old':>6} {'new':>6} {'oldOff':>6} {'newOff':>6} | "
          f"{'peer':>6} | new/old off/off | peer/new peer/newOff peer/old peer/oldOff")
    for key, r in new.items():
        o = old.get(key)
        peer = min((v["us"] for name, v in r["impls"].items() if not name.startswith("minivllm")),
                   default=math.nan)
        on, off = us(r, "minivllm"), us(r, "minivllm_pdl_off")
        o_on, o_off = us(o, "minivllm"), us(o, "minivllm_pdl_off")
        print(f"{key[0]:18} {key[1]:5} {key[2]:5d} {key[3]:5d} | {o_on:6.2f} {on:6.2f} {o_off:6.2f} {off:6.2f} | "
              f"{peer:6.2f} | {o_on / on:6.2f} {o_off / off:6.2f} | {peer / on:6.2f} {peer / off:6.2f} "
              f"{peer / o_on:6.2f} {peer / o_off:6.2f}")


if __name__ == "__main__":
    main(sys.argv[1])
