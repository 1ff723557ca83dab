"""Norm calls of a few rows per multiprocessor (M ~ 2-32 x SMs), PDL on and off: the general kernel
(G threads of up to 4 vectors, several rows a block) against the lanes kernel (a row a block, one
vector a thread, the same summation order through shared memory), Liger-Kernel beside (issue 32;
the norm + cuBLASLt QKV path runs the same kernel after a GEMM, where PDL cannot overlap it).

A build with the experiment's switch (dev/norm_lanes_rows_switch.patch, against 38ab701):
MV_EXP_LANES_ROWS_PER_SM=R sends calls of up to R rows per SM to the lanes kernels (1: the rule
before). The switch is read at each call, so both forms are captured in one process; each point
is timed old, new, old, new (bench harness: graph replay, each call its own x and out) and the
medians kept. Before timing, the two forms' outputs are
compared bit for bit (the lanes kernel keeps the general kernel's order).

    PYTHONPATH=SITE python3 dev/probes/norm_mid_rows.py [--json OUT.json] [--rows ...] [--hidden ...]
"""
import argparse
import json
import os
import statistics
import sys

import torch

import minivllm
from minivllm.bench import timing as bt

EXP = "MV_EXP_LANES_ROWS_PER_SM"  # --var picks another switch (old = 1 unless --old says)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", nargs="+", type=int, default=[264, 528, 1024, 2048, 4096])
    parser.add_argument("--hidden", nargs="+", type=int, default=[896, 1024, 2048, 4096])
    parser.add_argument("--odd", nargs="+", default=["1000x999", "2048x999", "4096x999", "1000x1001"])
    parser.add_argument("--dtypes", nargs="+", default=["bf16", "fp32"])
    parser.add_argument("--new", type=int, default=64, help="the switch's value for the new form")
    parser.add_argument("--old", type=int, default=1, help="the switch's value for the old form")
    parser.add_argument("--var", default=EXP, help="the switch (an environment variable read at each call)")
    parser.add_argument("--replays", type=int, default=9)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    try:
        from liger_kernel.ops.fused_add_rms_norm import fused_add_rms_norm_forward as liger_add
        from liger_kernel.ops.rms_norm import rms_norm_forward as liger_rms
    except ImportError:
        liger_rms = liger_add = None
        print("no liger_kernel", file=sys.stderr)
    props = torch.cuda.get_device_properties(0)
    l2 = props.L2_cache_size
    print(f"# {props.name}, {props.multi_processor_count} SMs; old = {args.var}={args.old}, new = {args.var}={args.new}")
    shapes = [(m, h) for h in args.hidden for m in args.rows]
    shapes += [tuple(int(v) for v in s.split("x")) for s in args.odd]
    dtypes = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}
    records = []
    print(f"{'op':6} {'dt':4} {'M':>5} {'H':>5} | {'old on':>7} {'new on':>7} {'old off':>7} {'new off':>7} "
          f"{'liger':>7} | new/old on, off | liger/new off, liger/old off")
    for dname in args.dtypes:
        dtype = dtypes[dname]
        for rows, hidden in shapes:
            for op in ("rms", "add"):
                element = torch.finfo(dtype).bits // 8
                per_call = rows * hidden * element * (2 if op == "rms" else 4)
                calls = bt.calls_per_graph(per_call, l2)
                w = torch.randn(hidden, dtype=dtype, device="cuda")
                xs = [torch.randn(rows, hidden, dtype=dtype, device="cuda") for _ in range(calls)]
                outs = [torch.empty_like(x) for x in xs]
                rs = [torch.randn_like(x) for x in xs] if op == "add" else None
                ros = [torch.empty_like(x) for x in xs] if op == "add" else None

                def mv(pdl):
                    if op == "rms":
                        return lambda i: minivllm.rms_norm(xs[i], w, 1e-6, out=outs[i], pdl=pdl)
                    return lambda i: minivllm.fused_add_rms_norm(xs[i], rs[i], w, 1e-6, out=outs[i],
                                                                 residual_out=ros[i], pdl=pdl)

                # bits: the two forms on the same inputs
                got = {}
                for form, r in (("old", args.old), ("new", args.new)):
                    os.environ[args.var] = str(r)
                    outs[0].fill_(float("nan"))
                    mv(False)(0)
                    torch.cuda.synchronize()
                    got[form] = outs[0].clone()
                if not torch.equal(got["old"].view(torch.int16 if element == 2 else torch.int32),
                                   got["new"].view(torch.int16 if element == 2 else torch.int32)):
                    raise SystemExit(f"{op} {dname} {rows}x{hidden}: the forms' bits differ")
                times = {k: [] for k in ("old_on", "new_on", "old_off", "new_off")}
                for _ in range(2):
                    for form, r in (("old", args.old), ("new", args.new)):
                        os.environ[args.var] = str(r)
                        for pdl in (True, False):
                            t = bt.time_per_call(mv(pdl), calls, args.replays, min_replay_us=2000)["us"]
                            times[f"{form}_{'on' if pdl else 'off'}"].append(t)
                res = {k: statistics.median(v) for k, v in times.items()}
                res["liger"] = float("nan")
                if liger_rms is not None:
                    fn = ((lambda i: liger_rms(xs[i], w, 1e-6, 0.0, "llama", None)[0]) if op == "rms" else
                          (lambda i: liger_add(xs[i], rs[i], w, 1e-6, 0.0, "llama")[:2]))
                    res["liger"] = bt.time_per_call(fn, calls, args.replays, min_replay_us=2000)["us"]
                records.append({"op": op, "dtype": dname, "rows": rows, "hidden": hidden, **res})
                print(f"{op:6} {dname:4} {rows:5d} {hidden:5d} | {res['old_on']:7.2f} {res['new_on']:7.2f} "
                      f"{res['old_off']:7.2f} {res['new_off']:7.2f} {res['liger']:7.2f} | "
                      f"{res['old_on'] / res['new_on']:5.2f} {res['old_off'] / res['new_off']:5.2f} | "
                      f"{res['liger'] / res['new_off']:5.2f} {res['liger'] / res['old_off']:5.2f}", flush=True)
                del xs, outs, rs, ros
    os.environ.pop(args.var, None)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"gpu": props.name, "date": str(bt.utc_now()), "commit": os.environ.get("MINIVLLM_COMMIT", ""),
                       "switch": args.var, "old": args.old, "new": args.new, "records": records}, f, indent=1)


if __name__ == "__main__":
    main()
