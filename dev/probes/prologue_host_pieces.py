"""Where the attention prologue's eager host time goes on a GPU host (issue 30's <= 20 us):
host us per call at M = 1 (GPU held busy, minivllm.bench.timing.host_us_per_call) of the
torch op, its layers (the raw op, the op's body, the binding) and the binding with fewer
options, outputs given or not. Needs torch and a GPU.
usage: python3 dev/probes/prologue_host_pieces.py [model ...]"""
import sys, torch, minivllm
import minivllm.torch as mvt
from minivllm import _C
from minivllm.bench import timing as bt
from minivllm.bench.models import find_model

T = _C.TORCH_OP
K = minivllm._TORCH_KIND  # plain torch tensors: _C finds the stream and allocator itself
dev = torch.device("cuda")
dt = torch.bfloat16
models = sys.argv[1:] or ["qwen3-0.6b", "llama-3-8b"]
print(torch.cuda.get_device_name(), torch.__version__)
for name in models:
    m = find_model(name)
    H, nh, nkv, hd = m.hidden, m.num_heads, m.num_kv_heads, m.head_dim
    N = (nh + 2 * nkv) * hd
    g = torch.Generator(device="cpu").manual_seed(0)
    rnd = lambda *s: torch.randn(*s, generator=g).to(dev, dt)
    x, r, w = rnd(1, H), rnd(1, H), rnd(H)
    W = rnd(N, H) * H ** -0.5
    qn, kn = rnd(hd), rnd(hd)
    table = rnd(64, hd)
    pos = torch.tensor([7], device=dev); slots = torch.tensor([5], device=dev)
    kc, vc = rnd(4, 16, nkv, hd), rnd(4, 16, nkv, hd)
    packed = torch.empty(1, nh + 2 * nkv, hd, device=dev, dtype=dt)
    q, k, v = packed.split_with_sizes((nh, nkv, nkv), -2)
    ro = torch.empty_like(x)
    y = torch.empty_like(x)
    a18 = (x, w, W, nh, nkv, 1e-6, r, None, qn, kn, None, pos, table, "neox", kc, vc, slots, None)
    full = dict(residual=r, q_norm_weight=qn, k_norm_weight=kn, positions=pos, cos_sin_cache=table,
                k_cache=kc, v_cache=vc, slot_mapping=slots)
    def C(res=r, qn_=qn, kn_=kn, pos_=pos, tab=table, kc_=kc, vc_=vc, sl=slots, outs=(None,) * 4,
          alloc=T, pdl=None):
        return lambda: _C.attention_prologue(x, w, W, nh, nkv, 1e-6, res, None, qn_, kn_, None, pos_,
                                             tab, "neox", kc_, vc_, sl, None, *outs, alloc, None, pdl, None)
    o4 = (q, k, v, ro)
    cases = {
        "entry mvt.attention_prologue (direct)": lambda: mvt.attention_prologue(x, w, W, nh, nkv, 1e-6, **full),
        "entry, no residual (the HF patch's form)": lambda: mvt.attention_prologue(
            x, w, W, nh, nkv, 1e-6, **{k: v for k, v in full.items() if k != "residual"}),
        "raw op .default": lambda: torch.ops.minivllm.attention_prologue.default(*a18),
        "op body (_impl)": lambda: mvt._attention_prologue_impl(*a18),
        "_C full, TORCH_OP (2 allocations)": C(),
        "_C full, TORCH_KIND (q view, residual)": C(alloc=K),
        "_C full, outputs given": C(outs=o4, alloc=K),
        "_C full, outputs given, pdl off": C(outs=o4, alloc=K, pdl=False),
        "_C no residual, outputs given": C(res=None, outs=(q, k, v, None), alloc=K),
        "_C q/k norm only, outputs given": C(res=None, pos_=None, tab=None, kc_=None, vc_=None, sl=None,
                                             outs=(q, k, v, None), alloc=K),
        "_C no options (QKV only), outputs given": C(res=None, qn_=None, kn_=None, pos_=None, tab=None,
                                                     kc_=None, vc_=None, sl=None, outs=(q, k, v, None), alloc=K),
        "QKV forward (allocating q, k, v)": lambda: minivllm.FusedRMSNormQKV.forward(x, w, W.t(), nh, nkv, 1e-6),
        "entry mvt.fused_rms_norm_qkv": lambda: mvt.fused_rms_norm_qkv(x, w, W, nh, nkv, 1e-6),
        "QKV forward out=(q,k,v)": lambda: minivllm.FusedRMSNormQKV.forward(x, w, W.t(), nh, nkv, 1e-6, out=(q, k, v)),
        "rms_norm out=": lambda: minivllm.rms_norm(x, w, 1e-6, out=y),
        "x.new_empty((1, N))": lambda: x.new_empty((1, N)),
        "x.new_empty(0)": lambda: x.new_empty(0),
        "torch.cuda.current_stream()": lambda: torch.cuda.current_stream(),
    }
    if hasattr(_C, "TORCH_LINEAR"):  # the entry points' convention since session 35
        cases["_C full, TORCH_LINEAR (q view, residual)"] = C(alloc=_C.TORCH_LINEAR)
    print(f"--- {name}: H {H}, heads {nh}/{nkv} x {hd}, M = 1, bf16; host us per call (median, min of 60 bursts)")
    with torch.inference_mode():
        for label, fn in cases.items():
            for _ in range(300):
                fn()
            torch.cuda.synchronize()
            med, mn, over = bt.host_us_per_call(torch, fn, 60, True)
            print(f"{label:46s} {med:7.2f} {mn:7.2f}" + (f"  ({over} bursts overran)" if over else ""))
