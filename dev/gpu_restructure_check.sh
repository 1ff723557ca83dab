#!/usr/bin/env bash
# GPU check of a restructuring, in one device call: the whole GPU check (scripts/gpu_check.sh) on
# this tree, then the old tree (.old/old.tar.gz: `git archive OLD csrc setup.py pyproject.toml
# minivllm README.md`, built in place) against this one: the automatic QKV path of every call in
# dev/dispatch_paths.py's grid, and dev/time_builds.py's timings, builds alternating.
# Everything lands in $OUT as restructure-check.tar.gz plus the summary files.
set -uo pipefail
out=${OUT:?set OUT}
export PYTHONUNBUFFERED=1
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
mkdir -p "$work/old" "$work/logs"
tar xzf "$root/.old/old.tar.gz" -C "$work/old"
(cd "$work/old" && MINIVLLM_CUDA_ARCHS=90 python3 setup.py -q build_ext --inplace >"$work/logs/old-build.log" 2>&1;
 echo "old build rc=$?" >>"$work/logs/old-build.log") &
oldpid=$!
bash "$root/scripts/gpu_check.sh" "$work/logs/check" >"$work/logs/gpu-check-console.log" 2>&1
echo "gpu_check rc=$?" >>"$work/logs/gpu-check-console.log"
tail -n 25 "$work/logs/gpu-check-console.log"
wait $oldpid
tail -n 1 "$work/logs/old-build.log"
cd "$work"
PYTHONPATH="$work/old" python3 "$root/dev/dispatch_paths.py" >"$work/logs/paths-old.txt" 2>"$work/logs/paths-old.err"
python3 "$root/dev/dispatch_paths.py" >"$work/logs/paths-new.txt" 2>"$work/logs/paths-new.err"
python3 "$root/dev/dispatch_paths.py" --compare "$work/logs/paths-old.txt" "$work/logs/paths-new.txt" \
    >"$out/paths-compare.txt"
tail -n 5 "$out/paths-compare.txt"
for label in old new old new; do
    pp=; [ "$label" = old ] && pp="$work/old"
    PYTHONPATH=$pp python3 "$root/dev/time_builds.py" --label "$label" >>"$out/times.jsonl" 2>>"$work/logs/times.err"
done
python3 - "$out/times.jsonl" <<'PY' | tee "$out/times-summary.txt"
import json, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
best = {}
for r in runs:
    for kind in ("graph_us", "host_us"):
        for k, v in r[kind].items():
            d = best.setdefault((kind, k), {})
            d[r["label"]] = min(v, d.get(r["label"], v))
print(f"{runs[0]['gpu']}: best of two runs per build, us (new / old)")
for (kind, k), d in best.items():
    if "old" in d and "new" in d:
        print(f"{kind:8s} {k:24s} old {d['old']:8.2f} new {d['new']:8.2f} ratio {d['new'] / d['old']:.3f}")
PY
tar czf "$out/restructure-check.tar.gz" -C "$work" logs
