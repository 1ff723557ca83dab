"""Host cost of the attention prologue call with and without its four allocations, and through
torch.ops, the torch entry points and their pieces (CPU tensors, tiny shape: the kernel costs little):
where the prologue op's eager host time goes (dev/logs/prologue-host-cost-amd-epyc-2c-2026-11-23.log,
dev/logs/host-views-amd-epyc-2c-2026-11-25.log). Needs torch."""
import time, statistics, torch, minivllm
import minivllm.torch as mvt
torch.manual_seed(0)
H, nh, nkv, hd = 64, 2, 1, 16
N = (nh + 2*nkv)*hd
dt = torch.bfloat16
x = torch.randn(1, H, dtype=dt); r = torch.randn(1, H, dtype=dt); w = torch.randn(H, dtype=dt)
W = torch.randn(N, H, dtype=dt)
qn = torch.randn(hd, dtype=dt); kn = torch.randn(hd, dtype=dt)
table = torch.randn(64, hd, dtype=dt)
pos = torch.tensor([7]); slots = torch.tensor([5])
kc = torch.randn(4, 16, nkv, hd, dtype=dt); vc = torch.randn(4, 16, nkv, hd, dtype=dt)
q = torch.empty(1, nh, hd, dtype=dt); k = torch.empty(1, nkv, hd, dtype=dt); v = torch.empty(1, nkv, hd, dtype=dt)
ro = torch.empty(1, H, dtype=dt)
full = dict(residual=r, q_norm_weight=qn, k_norm_weight=kn, positions=pos, cos_sin_cache=table,
            k_cache=kc, v_cache=vc, slot_mapping=slots)
cases = {
 "qkv only (allocating)": lambda: minivllm.FusedRMSNormQKV.forward(x, w, W, nh, nkv, 1e-6),
 "prologue, no options (allocating q,k,v)": lambda: minivllm.attention_prologue(x, w, W, nh, nkv, 1e-6),
 "prologue, full (allocating q,k,v scratch,residual_out)": lambda: minivllm.attention_prologue(x, w, W, nh, nkv, 1e-6, **full),
 "prologue, full, out=(q,k,v), residual_out given": lambda: minivllm.attention_prologue(x, w, W, nh, nkv, 1e-6, out=(q, k, v), residual_out=ro, **full),
 "prologue, full, torch.ops": lambda: mvt.attention_prologue(x, w, W, nh, nkv, 1e-6, **full),
 "prologue, full, torch.ops.minivllm.attention_prologue (raw op)": lambda: torch.ops.minivllm.attention_prologue(
     x, w, W, nh, nkv, 1e-6, r, None, qn, kn, None, pos, table, "neox", kc, vc, slots, None),
 "prologue, full, the op's Python body alone": lambda: mvt._attention_prologue_impl(
     x, w, W, nh, nkv, 1e-6, r, None, qn, kn, None, pos, table, "neox", kc, vc, slots, None),
 "torch.empty((1,2,16)) alone": lambda: torch.empty((1, nh, hd), dtype=dt),
 # the entry points' pieces (session 35)
 "_direct(12 tensors)": lambda: mvt._direct(x, w, W, r, None, qn, kn, pos, table, kc, vc, slots),
 "qkv _C TORCH_KIND (q, k, v views)": lambda: minivllm._C.fused_rms_norm_qkv(
     x, w, W, nh, nkv, 1e-6, None, None, None, None, None, minivllm._TORCH_KIND, None, None, None),
 "qkv _C TORCH_OP (packed)": lambda: minivllm._C.fused_rms_norm_qkv(
     x, w, W, nh, nkv, 1e-6, None, None, None, None, None, minivllm._C.TORCH_OP, None, None, None),
 "mvt.fused_rms_norm_qkv": lambda: mvt.fused_rms_norm_qkv(x, w, W, nh, nkv, 1e-6),
}
packed = torch.empty(1, nh + 2 * nkv, hd, dtype=dt)
cases["packed.narrow"] = lambda: packed.narrow(-2, 0, nh)
cases["split_qkv"] = lambda: mvt.split_qkv(packed, nh, nkv)


def timed():
    for _ in range(3):
        for f in cases.values():
            for _ in range(2000): f()
    res = {n: [] for n in cases}
    for rnd in range(9):
        for n, f in cases.items():
            t = time.perf_counter()
            for _ in range(2000): f()
            res[n].append((time.perf_counter() - t) / 2000 * 1e6)
    for n, v in res.items():
        print(f"{n:58s} median {statistics.median(v):6.2f} us  min {min(v):6.2f}")


# grad mode on (the 2026-11-23 log: the torch entry points then take the dispatcher), then under
# inference_mode, as models run and where the entry points skip the dispatcher
print("-- grad mode on"); timed()
with torch.inference_mode():
    print("-- torch.inference_mode()"); timed()
