#!/usr/bin/env bash
# On the GPU machine: bench_fused_rms_norm_qkv of several carried builds (dev/probes/site_build.sh,
# packed into build/carry, unpacked by carry_unpack.sh) over the zoo, in alternating rounds, then a
# table of minivllm's µs per (model, M): each build's median over its rounds and its ratio to the
# first build (first / this: above 1, this build is faster), with cuBLAS alone beside.
#   SITES="site_a site_b" ROUNDS=2 QKV_M="32 64 256" QKV_ARGS="--after-fill" OUT=... bash dev/probes/qkv_sites_ab.sh
set -u
out=${OUT:?set OUT to a results folder}
for round in $(seq 1 "${ROUNDS:-2}"); do
    for s in ${SITES:?}; do
        t0=$(date +%s)
        # shellcheck disable=SC2086
        PYTHONPATH=/tmp/$s timeout 200 python3 benchmarks/bench_fused_rms_norm_qkv.py --dtypes bf16 --m ${QKV_M:-32 64 256} \
            --impls cublas --no-compile --no-host --no-plot --progress off ${QKV_ARGS:-} --out "/tmp/qab_$round-$s" \
            > "$out/$round-$s.log" 2>&1
        echo "round $round $s rc $? $(( $(date +%s) - t0 )) s"; cp /tmp/qab_"$round-$s"/qkv-*.json "$out/$round-$s.json"
    done
done
python3 - "$out" ${SITES} <<'PY'
import json, statistics, sys
from pathlib import Path
folder, sites = Path(sys.argv[1]), sys.argv[2:]
t = {}
for s in sites:
    for p in sorted(folder.glob(f"*-{s}.json")):
        for r in json.loads(p.read_text())["results"]:
            e = t.setdefault((r["model"], r["rows"]), {})
            e.setdefault(s, []).append(r["impls"]["minivllm"]["us"])
            e.setdefault("cublas", []).append(r["impls"]["cublas"]["us"])
print(f"{'model':14s} {'M':>5s} {'cuBLAS':>8s} | " + " | ".join(f"{s:>22s}" for s in sites))
ratios = {s: [] for s in sites[1:]}
for (model, m), e in t.items():
    base = statistics.median(e[sites[0]])
    cells = []
    for s in sites:
        v = statistics.median(e[s])
        cells.append(f"{v:8.2f} [{max(e[s]) - min(e[s]):4.2f}] {base / v:6.3f}")
        if s != sites[0]:
            ratios[s].append(base / v)
    print(f"{model:14s} {m:5d} {statistics.median(e['cublas']):8.2f} | " + " | ".join(cells))
for s, r in ratios.items():
    print(f"{s}: geometric mean {statistics.geometric_mean(r):.4f}, min {min(r):.3f}, max {max(r):.3f}, faster at {sum(x > 1 for x in r)} of {len(r)}")
PY
