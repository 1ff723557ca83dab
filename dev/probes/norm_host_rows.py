"""Host time of eager rms_norm calls (torch, out= given) at row counts that take different kernels:
M <= SMs (short calls), a few rows per SM (the lanes kernels, whose rule asks the occupancy API at
each call), and past one wave (the general kernel). Bursts of calls issued while a spin kernel holds
the GPU (minivllm.bench.timing.host_us_per_call), so no call waits for it; median and least µs per call.

    PYTHONPATH=SITE python3 dev/probes/norm_host_rows.py
"""
import torch

import minivllm
from minivllm.bench import timing as bt


def main():
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    print(f"# {torch.cuda.get_device_name(0)}, {sms} SMs; bf16, H = 1024, out= given")
    for rows in (sms, 2 * sms, 8 * sms, 32 * sms):
        x = torch.randn(rows, 1024, dtype=torch.bfloat16, device="cuda")
        w = torch.randn(1024, dtype=torch.bfloat16, device="cuda")
        out = torch.empty_like(x)
        for pdl in (True, False):
            median, least, _ = bt.host_us_per_call(torch, lambda: minivllm.rms_norm(x, w, 1e-6, out=out, pdl=pdl),
                                                   60)
            print(f"M = {rows:6d} pdl={pdl!s:5}: {median:.2f} us per call (min {least:.2f})", flush=True)


if __name__ == "__main__":
    main()
