"""Side-by-side table of bench_rms_norm JSONs of one build run under different environment switches
(or of several builds): DIR/a.json, DIR/b.json, ... Prints each variant's us per call (PDL on), the
ratios to the first (a/b > 1: b faster) and Liger's time from the first.
usage: python3 norm_variants_table.py DIR a b [c ...]"""
import json
import sys

d=sys.argv[1]; vs=sys.argv[2:]
res={v:json.load(open(f"{d}/{v}.json"))['results'] for v in vs}
print("op        dt     M     H | "+" ".join(f"{v:>7s}" for v in vs)+" | "+" ".join(f"{v}/a" for v in vs[1:])+" | peer")
for i,r in enumerate(res[vs[0]]):
    us=[res[v][i]['impls']['minivllm']['us'] for v in vs]
    peer=[x['us'] for k,x in r['impls'].items() if 'liger' in k]
    print(f"{r['op'][:9]:9s} {r['dtype']:5s} {r['rows']:5d} {r['hidden']:5d} | "+" ".join(f"{u:7.2f}" for u in us)+" | "+" ".join(f"{us[0]/u:5.3f}" for u in us[1:])+f" | {peer[0] if peer else 0:7.2f} copy%a {r['impls']['minivllm']['fraction_of_copy']*100:.0f}")
