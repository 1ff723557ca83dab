"""Per-CTA phase times of one GEMM-engine launch of the QKV op, timed as a model runs it: each
call after a fill (nothing overlaps its start), graph replay, each call its own weights, bf16.
Needs a build with dev/engine_cluster_push.patch and dev/engine_trace_stamps.patch applied (never
committed applied; `probes/site_build.sh` builds it with the patched file swapped in): each CTA of
the traced launch (the engine's MV_ENGINE_TRACE-th plan in the process, counted on the host)
stamps %globaltimer at entry, after setup, when the producer has armed its first W stage and when
its PDL wait returns, at the helpers' first full stage, the consumers' PDL wait and first ready
stage, the end of the main loop, after the cluster barrier that puts every part in place, and at
the end.

usage: python3 dev/probes/engine_split_trace.py qwen3-0.6b:16 qwen2.5-0.5b:64 ...
"""
import ctypes
import os
import sys
from pathlib import Path

import numpy as np
import torch

from minivllm import _C
from minivllm.bench import timing as bt

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from qkv_chains import forced_call, layer_tensors, shape  # noqa: E402
from engine_trace import report  # noqa: E402  (dev/engine_trace.py: the same dump, printed per phase)

PHASES = [(1, "setup"), (8, "armed W0"), (2, "prod wait"), (9, "cons wait"), (3, "full0"),
          (4, "ready0"), (5, "loop end"), (6, "parts in"), (7, "end")]


PLANS = [0]  # the engine's plans so far in this process


def trace(m, rows):
    layers, xs, _, _, gammas, ws, _ = layer_tensors(m, rows)
    fills = [torch.empty(1024, device="cuda") for _ in range(layers)]
    op = forced_call(m, "engine", xs, gammas, ws)

    def step(i):
        fills[i].fill_(1.0)
        return op(i)

    # 3 warm-up calls, then the captured ones: trace the middle one
    os.environ["MV_ENGINE_TRACE"] = str(PLANS[0] + 3 + layers // 2 + 1)
    graph, _ = bt.capture(step, layers)
    PLANS[0] += 3 + layers
    for _ in range(4):
        graph.replay()
    torch.cuda.synchronize()
    assert _C.qkv_last_gpu_path() == "engine", _C.qkv_last_gpu_path()
    buf = np.zeros((1024, 10), dtype=np.uint64)
    rc = ctypes.CDLL(_C.__file__).mv_engine_trace_dump(ctypes.c_void_p(buf.ctypes.data))
    assert rc == 0, rc
    os.environ.pop("MV_ENGINE_TRACE")
    report(buf, f"{m.name} M={rows}", PHASES)


if __name__ == "__main__":
    for text in sys.argv[1:]:
        trace(*shape(text))
