"""Calls for ncu to read (qkv_start.py's question, kernel by kernel): for each shape, a fill of 4 KiB
then cuBLAS alone on pre-normalized x, a fill then the QKV op on the table's path, each 3 times
on cold weights, so `ncu --metrics launch__shared_mem_config_size,gpu__time_duration.sum,...` gives
each kernel's shared-memory configuration, its duration and its DRAM bytes beside the fill's.

    ncu --clock-control none --csv --metrics ... python3 dev/probes/qkv_start_ncu.py qwen3-0.6b:1
"""
import math
import sys

import torch
import torch.nn.functional as F

import minivllm
from minivllm.bench.models import find_model, parse_qkv_shape, qkv_features

for text in sys.argv[1:]:
    name, rows = text.rsplit(":", 1)
    m, rows = (parse_qkv_shape(name) if "," in name else find_model(name)), int(rows)
    hidden, features = m.hidden, qkv_features(m)
    w = (torch.randn(features, hidden, device="cuda") / math.sqrt(hidden)).to(torch.bfloat16)
    x = torch.randn(rows, hidden, device="cuda", dtype=torch.bfloat16)
    g = torch.ones(hidden, device="cuda", dtype=torch.bfloat16)
    fill = torch.empty(1024, device="cuda")
    torch.cuda.synchronize()
    for _ in range(3):
        fill.fill_(1.0)
        F.linear(x, w)
        fill.fill_(2.0)
        minivllm.FusedRMSNormQKV.forward(x, g, w.t(), m.num_heads, m.num_kv_heads, 1e-6)
    torch.cuda.synchronize()
