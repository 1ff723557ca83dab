"""Host cost of the torch entry points and their pieces with CPU tensors at a tiny shape (the kernels
cost little): where minivllm.torch's eager time goes beyond the binding's
(dev/logs/host-views-amd-epyc-2c-2026-11-25.log). Needs torch.
usage: python3 dev/probes/torch_entry_pieces.py"""
import time, statistics, torch, minivllm
import minivllm.torch as mvt
from minivllm import _C
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
full = dict(residual=r, q_norm_weight=qn, k_norm_weight=kn, positions=pos, cos_sin_cache=table,
            k_cache=kc, v_cache=vc, slot_mapping=slots)
packed = torch.empty(1, nh+2*nkv, hd, dtype=dt)
args = (x, w, W, nh, nkv, 1e-6, r, None, qn, kn, None, pos, table, "neox", kc, vc, slots, None)
cases = {
 "entry mvt.attention_prologue": lambda: mvt.attention_prologue(x, w, W, nh, nkv, 1e-6, **full),
 "_prologue_c": lambda: mvt._prologue_c(*args),
 "_C.attention_prologue direct": lambda: _C.attention_prologue(*args, None, None, None, None, _C.TORCH_OP, None, None, None),
 "_direct(12)": lambda: mvt._direct(x, w, W, r, None, qn, kn, pos, table, kc, vc, slots),
 "is_compiling": lambda: torch.compiler.is_compiling(),
 "packed.narrow": lambda: packed.narrow(-2, 0, nh),
 "split_qkv": lambda: mvt.split_qkv(packed, nh, nkv),
 "_wrote": lambda: mvt._wrote(kc, vc),
 "raw op": lambda: torch.ops.minivllm.attention_prologue.default(*args),
 "_impl": lambda: mvt._attention_prologue_impl(*args),
 "x.new_empty(0)": lambda: x.new_empty(0),
 "qkv _C TORCH_KIND (3 views)": lambda: _C.fused_rms_norm_qkv(x, w, W, nh, nkv, 1e-6, None, None, None, None, None, minivllm._TORCH_KIND, None, None, None),
 "qkv _C TORCH_OP (packed)": lambda: _C.fused_rms_norm_qkv(x, w, W, nh, nkv, 1e-6, None, None, None, None, None, _C.TORCH_OP, None, None, None),
 "mvt.fused_rms_norm_qkv": lambda: mvt.fused_rms_norm_qkv(x, w, W, nh, nkv, 1e-6),
 "FusedRMSNormQKV.forward (allocating)": lambda: minivllm.FusedRMSNormQKV.forward(x, w, W.t(), nh, nkv, 1e-6),
}
def run():
  for _ in range(2):
    for f in cases.values():
        for _ in range(2000): f()
  res = {n: [] for n in cases}
  for rnd in range(7):
    for n, f in cases.items():
        t = time.perf_counter()
        for _ in range(2000): f()
        res[n].append((time.perf_counter() - t) / 2000 * 1e6)
  for n, v in res.items():
    print(f"{n:40s} {statistics.median(v):7.2f} {min(v):7.2f}")
with torch.inference_mode():
  print("inference_mode"); run()
with torch.no_grad():
  print("no_grad"); run()
