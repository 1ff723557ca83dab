"""What the QKV op's start costs after a kernel that lets nothing overlap, by what that kernel was:
a cost per call of X = chain(sep + X) - chain(sep), graph-timed (bench_fused_rms_norm_qkv's timer),
each call its own buffers and weights, bf16, for X = cuBLAS alone on pre-normalized x ("lin") and
the op on the table's path ("auto") or a forced one, after each separator:

  fill   torch's fill_ of 4 KiB (no shared memory; what qkv_chains.py --sep-only uses)
  smem0  a CuPy kernel, 132 blocks, no shared memory (the same launch as smem, to compare with it)
  smem   that kernel asking 200 KiB of dynamic shared memory a block (each SM left in the largest
         shared-memory configuration, as after a Hopper GEMM)
  mm     a torch GEMM [M, H] x [H, H] (o_proj / down_proj's shape)
  mmx    that GEMM writing the op's x (as a model's down_proj does: the op reads x from L2)
  down   a down_proj-shaped GEMM [M, 4H] x [4H, H] writing the op's x (cuBLAS may split K and end
         in a reduce kernel that lets the op start early, as in a model's decode step)
  none   no separator: X after a call of its own (bench_fused_rms_norm_qkv's default timing)

--residual: the op's calls take a residual (the attention prologue's form). Run it under MINIVLLM_PDL=0 and 1 to see what the PDL launch attribute costs or gains where the
kernel before triggers nothing.

    python3 dev/probes/qkv_start.py --paths auto register bulk -- qwen3-0.6b:1 qwen2.5-7b:1
"""
import argparse
import sys
from pathlib import Path

import cupy
import numpy
import torch
import torch.nn.functional as F

from minivllm import _C
from minivllm.bench import timing as bt

sys.path.insert(0, str(Path(__file__).resolve().parent))
from qkv_chains import forced_call, layer_tensors, shape  # noqa: E402  (this folder's chain probe: the same tensors)

SMEM_BYTES = 200 << 10
_SRC = r"""
extern "C" __global__ void touch(float *p) {
    extern __shared__ float s[];
    if (threadIdx.x == 0) s[0] = (float)blockIdx.x;
    __syncthreads();
    if (threadIdx.x == 0) p[blockIdx.x] = s[0];
}
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("shapes", nargs="+", type=shape, help="MODEL:M")
    parser.add_argument("--paths", nargs="+", default=["auto"])
    parser.add_argument("--seps", nargs="+", default=["fill", "smem0", "smem", "mm"])
    parser.add_argument("--residual", action="store_true", help="the op's calls take a residual")
    args = parser.parse_args()
    kernel = cupy.RawKernel(_SRC, "touch")
    kernel.max_dynamic_shared_size_bytes = SMEM_BYTES
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    for m, rows in args.shapes:
        layers, xs, residuals, gemm_inputs, gammas, qkv_weights, gemm_weights = layer_tensors(m, rows)
        fills = [torch.empty(1024, device="cuda") for _ in range(layers)]
        down_k = 4 * m.hidden
        down_inputs = [torch.randn(rows, down_k, device="cuda", dtype=torch.bfloat16) for _ in range(layers)] \
            if "down" in args.seps else []
        down_weights = [torch.randn(m.hidden, down_k, device="cuda", dtype=torch.bfloat16) / down_k ** 0.5
                        for _ in range(layers)] if "down" in args.seps else []

        def touch(i, smem):
            stream = cupy.cuda.ExternalStream(torch.cuda.current_stream().cuda_stream)
            with stream:
                kernel((sms,), (128,), (numpy.uint64(fills[i].data_ptr()),), shared_mem=smem)
            return fills[i]

        seps = {"fill": lambda i: fills[i].fill_(1.0), "smem0": lambda i: touch(i, 0),
                "smem": lambda i: touch(i, SMEM_BYTES), "mm": lambda i: F.linear(gemm_inputs[i], gemm_weights[i]),
                "mmx": lambda i: torch.mm(gemm_inputs[i], gemm_weights[i].t(), out=xs[i]),
                "down": lambda i: torch.mm(down_inputs[i], down_weights[i].t(), out=xs[i])}

        def lin(i):
            return F.linear(xs[i], qkv_weights[i])

        def forced(path):
            return forced_call(m, path, xs, gammas, qkv_weights, residuals if args.residual else None)

        forced("auto")(0)
        auto_path = _C.qkv_last_gpu_path()

        def label(path):
            """The path's name, and the path that ran where its plan refused the call (the table's choice)."""
            forced(path)(0)
            taken = _C.qkv_last_gpu_path()
            return path if path in ("auto", taken) else f"{path}(ran {taken})"

        ops = [("lin", lin)] + [(label(p), forced(p)) for p in args.paths]

        def per_call(steps):
            def call(i):
                return [step(i) for step in steps]
            return bt.time_per_call(call, layers, 15)["us"]

        for sep_name in args.seps:
            sep = seps.get(sep_name)
            base = per_call([sep]) if sep else 0.0
            cells = [f"{name} {per_call([sep, op] if sep else [op]) - base:6.2f}" for name, op in ops]
            print(f"{m.name:14s} M={rows:<3d}{' res' if args.residual else ''} auto={auto_path:9s} after {sep_name:5s} ({base:5.2f}): "
                  + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
