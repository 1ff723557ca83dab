"""Collect a gpu_check.sh run into one JSON: GPU, driver, date, commit, test counts, bench log.

usage: python scripts/gpu_results.py OUTDIR   (writes OUTDIR/gpu-check-<gpu>-<date>.json)
"""

import datetime
import json
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


def test_counts(path):
    if not os.path.exists(path):
        return None
    suite = ET.parse(path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    tests, failures, errors, skipped = (int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped"))
    return {"passed": tests - failures - errors - skipped, "failed": failures, "errors": errors,
            "skipped": skipped, "total": tests}


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
        "tests": test_counts(os.path.join(out, "pytest.xml")),
        "bench_log": bench_log.splitlines(),
    }
    slug = re.sub(r"[^a-z0-9]+", "-", gpu["name"].lower()).strip("-") or "gpu"
    path = os.path.join(out, f"gpu-check-{slug}-{date:%Y-%m-%d}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(f"results: {path}")
    print(json.dumps(result["tests"]))


if __name__ == "__main__":
    main(sys.argv[1])
