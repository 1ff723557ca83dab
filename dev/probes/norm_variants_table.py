"""Side-by-side table of bench_rms_norm JSONs of one build run under different environment switches
(or of several builds): DIR/a.json, DIR/b.json, ... Prints each variant's us per call with PDL on and
(where the JSON has it) off, the ratios to the first (a/b > 1: b faster), and the fastest Liger time
among the runs that have one.
usage: python3 norm_variants_table.py DIR a b [c ...]"""
import json
import sys

d = sys.argv[1]
vs = sys.argv[2:]
res = {v: json.load(open(f"{d}/{v}.json"))['results'] for v in vs}
for impl, label in (("minivllm", "PDL on"), ("minivllm_pdl_off", "PDL off")):
    if impl not in res[vs[0]][0]['impls']:
        continue
    print(f"== {label}")
    print("op        dt     M     H | " + " ".join(f"{v:>7s}" for v in vs) + " | " +
          " ".join(f"{v}/a" for v in vs[1:]) + " |   peer  peer/best")
    for i, r in enumerate(res[vs[0]]):
        us = [res[v][i]['impls'][impl]['us'] for v in vs]
        peers = [x['us'] for v in vs for k, x in res[v][i]['impls'].items() if 'liger' in k]
        peer = min(peers) if peers else 0.0
        print(f"{r['op'][:9]:9s} {r['dtype']:5s} {r['rows']:5d} {r['hidden']:5d} | " +
              " ".join(f"{u:7.2f}" for u in us) + " | " + " ".join(f"{us[0] / u:5.3f}" for u in us[1:]) +
              f" | {peer:6.2f}  {peer / min(us) if peer else 0:5.3f}")
