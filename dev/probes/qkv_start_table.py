"""Reads qkv_start.py's lines (one or more rounds of the same points) and prints, per (shape, M,
separator), the means over the rounds: the table's path and time (auto), cuBLAS alone (lin), the
fastest forced path, what the table loses to it, norm + cuBLASLt minus auto, and the spread of auto
between rounds. With --ab NEW... -- OLD...: the points whose path changed between two builds, each
side's mean, and whether the rounds of the two sides overlap.

  python3 dev/probes/qkv_start_table.py sweep-r1.txt sweep-r2.txt
  python3 dev/probes/qkv_start_table.py --ab new-r1.txt new-r2.txt -- old-r1.txt old-r2.txt
"""
import collections
import re
import sys

LINE = re.compile(r"(\S+)\s+M=(\d+)\s+(res )?\s*auto=(\S+)\s+after (\S+)\s+\(\s*([\d.]+)\):\s*(.*)")


def parse(path):
    """{(shape, M, sep): [ {"auto": path, "ops": {cell: us}} per round ]}; a forced path's cell
    that ran another path is named "path(ranX)"."""
    points = collections.defaultdict(list)
    for line in open(path):
        m = LINE.match(line)
        if not m:
            continue
        name, rows, _, auto, sep, _, rest = m.groups()
        ops = {}
        for cell in rest.split("|"):
            parts = cell.split()
            ops["".join(parts[:-1])] = float(parts[-1])
        points[(name, int(rows), sep)].append({"auto": auto, "ops": ops})
    return points


def load(paths):
    points = collections.defaultdict(list)
    for p in paths:
        for k, v in parse(p).items():
            points[k] += v
    return points


def mean(rounds, key):
    return sum(r["ops"][key] for r in rounds) / len(rounds)


def table(points):
    for (name, rows, sep), rs in points.items():
        ops = {k: mean(rs, k) for k in rs[0]["ops"]}
        auto = ops["auto"]
        forced = {k: v for k, v in ops.items() if k not in ("lin", "auto") and "(" not in k}
        best = min(forced, key=forced.get) if forced else "auto"
        cl = f"{ops['cublaslt'] - auto:+5.2f}" if "cublaslt" in ops else "  -  "
        spread = max(r["ops"]["auto"] for r in rs) - min(r["ops"]["auto"] for r in rs)
        print(f"{name:16s} M={rows:3d} {sep:4s} auto={rs[0]['auto']:9s} {auto:6.2f} lin {ops['lin']:6.2f} "
              f"x{ops['lin'] / auto:.2f} best={best:9s}{forced.get(best, auto):6.2f} "
              f"loss={auto - forced.get(best, auto):5.2f} cl-auto={cl} sp{spread:.2f} "
              + " ".join(f"{k[:5]}={v:.1f}" for k, v in forced.items()))


def ab(new, old):
    for sep in sorted({k[2] for k in new}):
        changed, same = [], 0
        for k, n in new.items():
            if k[2] != sep or k not in old:
                continue
            o = old[k]
            if n[0]["auto"] == o[0]["auto"]:
                same += 1
                continue
            tn = [r["ops"]["auto"] for r in n]
            to = [r["ops"]["auto"] for r in o]
            apart = min(to) > max(tn) or max(to) < min(tn)
            changed.append((sum(to) / len(to) - sum(tn) / len(tn), k, o[0]["auto"], n[0]["auto"], apart))
        changed.sort()
        if not changed:
            print(f"after {sep}: no point changed path ({same} same)")
            continue
        print(f"after {sep}: changed {len(changed)}, same {same}; faster {sum(c[0] > 0 for c in changed)} "
              f"(apart {sum(c[0] > 0 and c[4] for c in changed)}), slower {sum(c[0] < 0 for c in changed)}; "
              f"gain {changed[0][0]:+.2f}..{changed[-1][0]:+.2f} us")
        for gain, (name, rows, _), was, now, apart in changed:
            print(f"   {name:16s} M={rows:3d} {was} -> {now} {gain:+.2f} us{'' if apart else ' (rounds overlap)'}")


if __name__ == "__main__":
    args = sys.argv[1:]
    if args and args[0] == "--ab":
        cut = args.index("--")
        ab(load(args[1:cut]), load(args[cut + 1:]))
    else:
        table(load(args))
