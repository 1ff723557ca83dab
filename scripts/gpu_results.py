"""Collect a gpu_check.sh run into one JSON and print its summary table: GPU, driver, date,
commit, test counts (summed over the suite's pytest processes), the fuzz and leak figures,
compute-sanitizer errors per tool, the bench self-check log, and each quick benchmark's speedup
over the best baseline and the shapes where a baseline was faster.

usage: python scripts/gpu_results.py OUTDIR   (writes OUTDIR/gpu-check-<gpu>-<date>.json)
"""

import datetime
import glob
import json
import math
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET


def gpu_info():
    try:
        line = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True, text=True, check=True).stdout.strip().splitlines()[0]
        name, driver, memory = (s.strip() for s in line.split(","))
        return {"name": name, "driver": driver, "memory": memory}
    except (OSError, subprocess.CalledProcessError, IndexError, ValueError):
        return {"name": "unknown", "driver": "unknown", "memory": "unknown"}


def commit():
    if os.environ.get("MINIVLLM_COMMIT"):
        return os.environ["MINIVLLM_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def test_counts(out):
    """Passed, failed, errors, skipped and total over every pytest-*.xml in out; None if none."""
    paths = sorted(glob.glob(os.path.join(out, "pytest-*.xml")))
    if not paths:
        return None
    tests = failures = errors = skipped = 0
    for path in paths:
        suite = ET.parse(path).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        tests += int(suite.get("tests", 0))
        failures += int(suite.get("failures", 0))
        errors += int(suite.get("errors", 0))
        skipped += int(suite.get("skipped", 0))
    return {"passed": tests - failures - errors - skipped, "failed": failures, "errors": errors,
            "skipped": skipped, "total": tests}


def read(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return None


def sanitizer_results(out):
    """tool -> {"errors": N or None (no summary: the run died or never started), "cases": line}."""
    results = {}
    for path in sorted(glob.glob(os.path.join(out, "sanitizer-*.log"))):
        tool = os.path.basename(path)[len("sanitizer-"):-len(".log")]
        text = read(path) or ""
        # memcheck, initcheck and synccheck end with "ERROR SUMMARY: N errors"; racecheck with
        # "RACECHECK SUMMARY: H hazards displayed (E errors, W warnings)"
        found = (re.findall(r"ERROR SUMMARY: (\d+) error", text)
                 or re.findall(r"RACECHECK SUMMARY: \d+ hazards? displayed \((\d+) errors?", text))
        cases = re.findall(r"^sanitize_cases: .*$", text, re.M)
        note = cases[-1] if cases else None
        if "gpu_check: TIMED OUT" in text:
            note = "TIMED OUT" + (f" after {note}" if note else "")
        results[tool] = {"errors": int(found[-1]) if found else None, "cases": note}
    if os.path.exists(os.path.join(out, "sanitizer-missing.txt")):
        results["compute-sanitizer"] = {"errors": None, "cases": "not found: step not run"}
    return results


def benchmark_results(out):
    """Per quick-benchmark JSON: minivllm's speedup over the fastest other implementation of each
    shape (geometric mean, min, max) and how many shapes some baseline was faster at."""
    summaries = {}
    for path in sorted(glob.glob(os.path.join(out, "*.json"))):
        name = os.path.basename(path)
        if name.startswith("gpu-check-"):
            continue
        try:
            with open(path) as f:
                report = json.load(f)
        except (OSError, ValueError):
            continue
        if not isinstance(report, dict) or "results" not in report:
            continue
        ratios = []
        for row in report.get("results") or []:
            impls = row.get("impls") if isinstance(row, dict) else None
            if not isinstance(impls, dict) or "minivllm" not in impls:
                continue
            ours = impls["minivllm"].get("us") if isinstance(impls["minivllm"], dict) else None
            others = [v.get("us") for k, v in impls.items()
                      if k != "minivllm" and isinstance(v, dict) and v.get("us")]
            if ours and others:
                ratios.append(min(others) / ours)
        summary = {"kind": report.get("kind", name), "file": name, "shapes": len(ratios)}
        if ratios:
            summary["speedup_vs_best_baseline"] = {
                "geomean": math.exp(sum(math.log(r) for r in ratios) / len(ratios)),
                "min": min(ratios), "max": max(ratios)}
        summary["slower_than_a_baseline"] = len(report.get("slower_than_a_baseline") or [])
        summaries[name] = summary
    return summaries


def log_lines(out, prefix):
    lines = []
    for path in sorted(glob.glob(os.path.join(out, "pytest-*.log"))):
        lines += [line for line in (read(path) or "").splitlines() if line.startswith(prefix)]
    return lines


def test_processes(out):
    """The closing line of each of the suite's pytest processes (gpu_check.sh: pytest-NAME.log)."""
    runs = {}
    for path in sorted(glob.glob(os.path.join(out, "pytest-*.log"))):
        lines = (read(path) or "").strip().splitlines()
        runs[os.path.basename(path)[len("pytest-"):-len(".log")]] = lines[-1] if lines else "empty"
    return runs


def print_summary(result):
    rows = [("GPU", f"{result['gpu']['name']} (driver {result['gpu']['driver']})"),
            ("commit", result["commit"])]
    t = result["tests"]
    rows.append(("tests", "no pytest-*.xml" if t is None else
                 f"{t['passed']} passed, {t['skipped']} skipped, {t['failed']} failed, "
                 f"{t['errors']} errors"))
    for name, line in result.get("test_processes", {}).items():
        rows.append((f"  pytest {name}", line))
    for line in result["fuzz"]:
        rows.append(("fuzz", line[len("fuzz: "):]))
    for line in result["leaks"]:
        rows.append(("leaks", line[len("leaks: "):]))
    for tool, r in result["sanitizers"].items():
        errors = "NO SUMMARY (crashed, timed out or not run)" if r["errors"] is None else \
            f"{r['errors']} errors"
        rows.append((f"sanitizer {tool}", errors + (f"; {r['cases']}" if r["cases"] else "")))
    if not result["sanitizers"]:
        rows.append(("sanitizers", "not run"))
    for name, b in result["benchmarks"].items():
        s = b.get("speedup_vs_best_baseline")
        rows.append((b["kind"], f"{b['shapes']} shapes" + (
            f"; speedup over the best baseline: geomean {s['geomean']:.2f}x, "
            f"min {s['min']:.2f}x, max {s['max']:.2f}x" if s else "")
            + f"; a baseline faster at {b['slower_than_a_baseline']}"))
    if result.get("step_seconds"):
        rows.append(("step seconds", ", ".join(f"{k} {v}" for k, v in
                                              result["step_seconds"].items())))
    width = max(len(k) for k, _ in rows)
    print("\n== summary ==")
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


def main(out):
    gpu = gpu_info()
    versions = {}
    for module in ("numpy", "torch", "cupy", "jax"):
        try:
            versions[module] = __import__(module).__version__
        except Exception:  # a missing or broken optional library is simply not reported
            pass
    bench_log = open(os.path.join(out, "bench.log")).read() if os.path.exists(os.path.join(out, "bench.log")) else ""
    date = datetime.datetime.now(datetime.timezone.utc)
    result = {
        "kind": "gpu-check",
        "gpu": gpu,
        "date": date.isoformat(timespec="seconds"),
        "commit": commit(),
        "python": sys.version.split()[0],
        "versions": versions,
        "tests": test_counts(out),
        "test_processes": test_processes(out),
        "fuzz": log_lines(out, "fuzz: "),
        "leaks": log_lines(out, "leaks: "),
        "sanitizers": sanitizer_results(out),
        "benchmarks": benchmark_results(out),
        "step_seconds": dict(item.split("=", 1) for item in
                             os.environ.get("MINIVLLM_STEP_SECONDS", "").split() if "=" in item),
        "bench_log": bench_log.splitlines(),
    }
    slug = re.sub(r"[^a-z0-9]+", "-", gpu["name"].lower()).strip("-") or "gpu"
    path = os.path.join(out, f"gpu-check-{slug}-{date:%Y-%m-%d}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print_summary(result)
    print(f"results: {path}")


if __name__ == "__main__":
    main(sys.argv[1])
