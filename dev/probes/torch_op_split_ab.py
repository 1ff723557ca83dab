"""Host cost of the QKV torch op's eager path, the planes split of before (flat view, slices,
views) against the as_strided one, interleaved in one process (this CPU's timings drift too
much between processes to compare runs). Both ops are registered here under probe_ab with the
library's own impl body; the wrapper splits the result as minivllm.torch.fused_rms_norm_qkv does.
usage: python3 dev/probes/torch_op_split_ab.py [--device cpu|cuda] [--rounds 7]
Runs against minivllm at 4e5544c or earlier: since b82ece0 the QKV ops return a packed
[..., heads, head_dim] tensor (minivllm.torch.split_qkv), and split_qkv_planes is gone."""
import argparse
import statistics
import timeit

import torch

import minivllm
import minivllm.torch as mvt


def old_split(planes, num_heads, num_kv_heads):
    lead = planes.shape[:-1]
    head_dim = planes.shape[-1] // (num_heads + 2 * num_kv_heads)
    rows = planes.numel() // planes.shape[-1] if planes.shape[-1] else 0
    q_size, kv_size = rows * num_heads * head_dim, rows * num_kv_heads * head_dim
    flat = planes.view(-1)
    return (flat[:q_size].view(*lead, num_heads, head_dim),
            flat[q_size:q_size + kv_size].view(*lead, num_kv_heads, head_dim),
            flat[q_size + kv_size:].view(*lead, num_kv_heads, head_dim))


def old_new_planes(x, w, nh, nkv):
    n_out, _ = mvt._qkv_geometry(x, w, nh, nkv)
    return torch.empty((*x.shape[:-1], n_out), dtype=x.dtype, device=x.device)


def make_impl(split, new_planes):
    def impl(x, g, w, nh, nkv, eps):
        planes = new_planes(x, w, nh, nkv)
        minivllm.FusedRMSNormQKV.forward(x, g, mvt._linear_weight(w, x.shape[-1]), nh, nkv, eps,
                                         out=split(planes, nh, nkv))
        return planes
    return impl


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rounds", type=int, default=7)
    a = ap.parse_args()
    lib = torch.library.Library("probe_ab", "DEF")
    schema = "(Tensor x, Tensor g, Tensor w, int nh, int nkv, float eps) -> Tensor"
    for name, split, alloc in (("old", old_split, old_new_planes),
                               ("new", mvt.split_qkv_planes, mvt._new_planes)):
        lib.define(name + schema)
        lib.impl(name, make_impl(split, alloc), "CompositeExplicitAutograd")
    # on the CPU a tiny shape, so the kernel costs little beside the host work; on a GPU the kernel
    # runs behind the host (Qwen3-0.6B at M = 1 takes ~4 us there)
    H, nh, nkv, hd = (64, 2, 1, 16) if a.device == "cpu" else (1024, 16, 8, 128)
    dev = torch.device(a.device)
    x = torch.randn(1, H, device=dev).to(torch.bfloat16)
    g = torch.ones(H, device=dev, dtype=torch.bfloat16)
    w = (torch.randn((nh + 2 * nkv) * hd, H, device=dev) * 0.02).to(torch.bfloat16)
    calls = {
        "old": lambda: old_split(torch.ops.probe_ab.old(x, g, w, nh, nkv, 1e-6), nh, nkv),
        "new": lambda: mvt.split_qkv_planes(torch.ops.probe_ab.new(x, g, w, nh, nkv, 1e-6), nh, nkv),
    }
    ref = torch.cat([t.reshape(1, -1) for t in calls["old"]()], 1)
    got = torch.cat([t.reshape(1, -1) for t in calls["new"]()], 1)
    assert torch.equal(ref, got), "the two splits disagree"
    times = {k: [] for k in calls}
    n = 2000
    for _ in range(a.rounds):
        for k, f in calls.items():
            f()
            if a.device == "cuda":
                torch.cuda.synchronize()
            times[k].append(timeit.timeit(f, number=n) / n * 1e6)
            if a.device == "cuda":
                torch.cuda.synchronize()
    print(f"QKV torch op + split at M = 1, H {H}, heads {nh}/{nkv}x{hd}, {a.device}, bf16; "
          f"us per call, {a.rounds} interleaved rounds of {n} calls")
    for k, v in times.items():
        print(f"  {k}: median {statistics.median(v):6.2f}  min {min(v):6.2f}  "
              f"all {' '.join(f'{t:.1f}' for t in v)}")


if __name__ == "__main__":
    main()
