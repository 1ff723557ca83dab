#!/usr/bin/env python3
"""Per-CTA phase times of one launch of the GEMM engine's one-kernel prologue, inside a model's
decode step (graph replay of benchmarks/bench_decode.py's minivllm variant with
_path="engine_prologue") or in a chain of prologue calls (bench_attention_prologue's layers, as
its "fused" column times them). Needs dev/engine_experiments.patch applied (never commit the
patched engine.cu): each CTA of the traced launch stamps %globaltimer at entry, after setup, when
the producer has armed its early W stages and when its PDL wait returns, when the consumers' wait
returns, at the helpers' first full stage and the consumers' first ready one, at the end of the
main loop, the start of the store and the end. MV_ENGINE_KNOBS and MV_ENGINE_EARLY pass the
patch's switches through.

usage: python3 dev/engine_trace.py model qwen3-0.6b 16     (one process per context: the launch
       python3 dev/engine_trace.py chain qwen3-0.6b 16      is found by counting CTAs)
"""
import ctypes
import os
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

import minivllm
from minivllm import _C

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
PHASES = ["setup", "pdlwait", "full0", "ready0", "loopend", "store", "end", "armed", "c_wait"]


def set_target(launch):
    """Trace launch number `launch`; MV_ENGINE_KNOBS (the low bits of MV_ENGINE_EXPERIMENT) ride along."""
    os.environ["MV_ENGINE_EXPERIMENT"] = str(launch << 8 | int(os.environ.get("MV_ENGINE_KNOBS", "0")))


def dump():
    lib = ctypes.CDLL(_C.__file__)
    buf = np.zeros((1024, 10), dtype=np.uint64)
    torch.cuda.synchronize()
    rc = lib.mv_engine_trace_dump(ctypes.c_void_p(buf.ctypes.data))
    assert rc == 0, rc
    return buf


def report(buf, label, phases=tuple(enumerate(PHASES, start=1))):
    """Per-phase times of a dump: phases are (column, name) pairs of the stamps after the entry's."""
    rows = buf[buf[:, 0] != 0].astype(np.int64)
    if len(rows) == 0:
        print(f"{label}: no CTA traced")
        return
    t0 = rows[:, 0].min()
    entry = (rows[:, 0] - t0) / 1e3
    print(f"{label}: {len(rows)} CTAs; kernel span (first entry to last end) "
          f"{(rows[:, 7].max() - t0) / 1e3:.2f} us; entries spread {entry.min():.2f}-{entry.max():.2f} us "
          f"(median {statistics.median(entry):.2f})")
    print(f"  {'phase':8} {'median':>8} {'min':>8} {'max':>8}   (us after the CTA's own entry; 0 = not stamped)")
    for j, name in phases:
        d = rows[:, j]
        live = d != 0
        rel = (d[live] - rows[live, 0]) / 1e3
        if len(rel):
            print(f"  {name:8} {statistics.median(rel):8.2f} {rel.min():8.2f} {rel.max():8.2f}   ({live.sum()} CTAs)")


def model_context(name, batch):
    import functools
    import types
    import bench_decode as bd
    cfg = bd.DECODERS[name]
    layers = cfg.layers
    set_target(3 * layers + 2 * layers + layers // 2)  # warm-ups, 2 replays, then a middle layer
    model = bd.Model(cfg, batch, 2048, torch.bfloat16, "cuda")
    ops = types.SimpleNamespace(
        attention_prologue=functools.partial(minivllm.attention_prologue, _path="engine_prologue"),
        fused_add_rms_norm=minivllm.fused_add_rms_norm)
    with torch.no_grad():
        step = bd.make_step(model, "minivllm", ops=ops)
        graph, _ = bd.bt.capture(lambda i: step(), 1)
        for _ in range(4):
            graph.replay()
    report(dump(), f"{cfg.name} batch {batch}, in the decode step")


def chain_context(name, rows):
    import bench_attention_prologue as bp
    from minivllm.bench.models import find_model
    model = find_model(name)
    bias, qk_norm = bp.features_of(model)
    table = bp.cos_sin_table(model.head_dim, torch.bfloat16, "cuda")
    calls = 16
    layers = [bp.Layer(model, rows, torch.bfloat16, "cuda", bias, qk_norm, table) for _ in range(calls)]
    set_target(3 + 2 * calls + calls // 2)
    with torch.no_grad():
        graph, _ = bp.bt.capture(lambda i: layers[i].minivllm(_path="engine_prologue"), calls)
        for _ in range(4):
            graph.replay()
    report(dump(), f"{model.name} M={rows}, in a chain of prologue calls")


if __name__ == "__main__":
    ctx, name, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
    (model_context if ctx == "model" else chain_context)(name, size)
