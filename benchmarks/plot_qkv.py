"""The QKV benchmark's figure: minivllm's speed against cuBLAS alone and against the faster
torch.compile mode, per model, over M (one panel per baseline and dtype). Needs only the JSON
and matplotlib, so a committed run can be redrawn anywhere:

  python3 benchmarks/plot_qkv.py benchmarks/results/qkv-nvidia-h200-2026-11-23.json [OUT.png]

bench_fused_rms_norm_qkv.py draws the same figure at the end of a run.
"""
import json
import sys
from pathlib import Path

# (row label, baselines whose fastest is the reference): "vs" = baseline time / minivllm time
PANELS = (("cuBLAS alone (x pre-normalized)", ("cublas",)),
          ("faster torch.compile mode", ("compile", "max_autotune")))
TARGET_M, TARGET = 256, 1.10   # the GEMM-engine issue's bar for M <= 256 against cuBLAS alone


def _ratio(record, baselines):
    """Fastest of the baselines that ran correctly, over minivllm's time; None if none ran."""
    impls, failures = record["impls"], record.get("failures", {})
    if "minivllm" not in impls or "minivllm" in failures:
        return None
    times = [impls[b]["us"] for b in baselines if b in impls and b not in failures]
    return min(times) / impls["minivllm"]["us"] if times else None


def draw(results, path, title):
    """Write the figure to path; None (after saying why) where matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (python3 -m pip install matplotlib)")
        return None
    dtypes = list(dict.fromkeys(r["dtype"] for r in results))
    models = list(dict.fromkeys(r["model"] for r in results))
    colours = plt.get_cmap("tab20")
    figure, axes = plt.subplots(len(PANELS), len(dtypes), squeeze=False, sharex=True,
                                figsize=(7.5 * len(dtypes), 4.6 * len(PANELS)))
    for i, (label, baselines) in enumerate(PANELS):
        for j, dtype_name in enumerate(dtypes):
            ax = axes[i][j]
            for k, model in enumerate(models):
                points = sorted((r["rows"], _ratio(r, baselines)) for r in results
                                if r["dtype"] == dtype_name and r["model"] == model)
                points = [(m, v) for m, v in points if v is not None]
                if points:
                    ax.plot(*zip(*points), color=colours(k % 20), marker="o", markersize=3,
                            linewidth=1.2, label=model)
            ax.axhline(1.0, color="black", linewidth=1)
            if i == 0:
                ax.plot([1, TARGET_M], [TARGET, TARGET], color="black", linestyle="--",
                        linewidth=1, label=f"target, M <= {TARGET_M}")
            ax.set_xscale("log", base=2)
            ax.set_title(f"{dtype_name}: minivllm vs {label}", fontsize=10)
            ax.set_ylabel("baseline µs / minivllm µs (> 1: minivllm faster)", fontsize=8)
            ax.grid(which="both", alpha=0.3)
            if i == len(PANELS) - 1:
                ax.set_xlabel("M (tokens per call)")
    axes[0][-1].legend(fontsize=7, loc="upper right", ncol=2)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def main(argv):
    if not 1 <= len(argv) <= 2:
        sys.exit(__doc__)
    source = Path(argv[0])
    report = json.loads(source.read_text())
    out = Path(argv[1]) if len(argv) > 1 else source.with_suffix(".png")
    gpu = report["gpu"]["name"] if isinstance(report["gpu"], dict) else report["gpu"]
    title = f"minivllm FusedRMSNormQKV on {gpu}, {report['date'][:10]}, commit {report['commit'][:7]}"
    print(draw(report["results"], out, title))


if __name__ == "__main__":
    main(sys.argv[1:])
