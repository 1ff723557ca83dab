"""Variants of a dev build side by side in one process (issue 31): fused_rms_norm_qkv per dtype for
each value of the MVX environment variable (read per call by dev/cpu_gemv_m1_variants.patch), in
shuffled rounds, NumPy float32 y @ W.T first in each round and then 0.2 s of sleep (OpenBLAS polls
after a matmul); min and median over rounds.
  usage: PYTHONPATH=BUILD ROUNDS=10 python dev/cpu_variant_probe.py qwen|llama M v1,v2,... [f32,f16,bf16]
"""
import sys, os, time, numpy as np, ml_dtypes, minivllm
def timed(fn, n):
    t=time.perf_counter()
    for _ in range(n): fn()
    return (time.perf_counter()-t)/n
DT={"f32":np.float32,"f16":np.float16,"bf16":ml_dtypes.bfloat16}
rng=np.random.default_rng(0)
model=sys.argv[1]; M=int(sys.argv[2]); variants=sys.argv[3].split(','); dts=sys.argv[4].split(',') if len(sys.argv)>4 else list(DT)
rounds=int(os.environ.get("ROUNDS","10"))
H,nh,nkv,hd={"llama":(4096,32,8,128),"qwen":(1024,16,8,128)}[model]
N=(nh+2*nkv)*hd
W64=rng.standard_normal((N,H))/np.sqrt(H); x64=rng.standard_normal((M,H)); g=1+0.1*rng.standard_normal(H)
W32=W64.astype(np.float32); y32=x64.astype(np.float32)
cases={"numpy":("",lambda: y32@W32.T)}
for d in dts:
    W,x,w=W64.astype(DT[d]),x64.astype(DT[d]),g.astype(DT[d])
    for v in variants:
        cases[f"{d} v{v}"]=(v,(lambda x,w,W: lambda: minivllm.fused_rms_norm_qkv(x,w,W,nh,nkv))(x,w,W))
res={k:[] for k in cases}
n=max(1,int(0.05/ (1e-4 if model=="qwen" else 1e-3)))
import random
keys=list(cases)
for r in range(rounds):
    res["numpy"].append(timed(cases["numpy"][1],n)); time.sleep(0.2)
    ks=keys[1:]; random.shuffle(ks)
    for k in ks:
        v,f=cases[k]
        os.environ["MVX"]=v or "0"; f()
        res[k].append(timed(f,n))
tn=min(res["numpy"])
print(f"load {os.getloadavg()[0]:.2f} {model} M={M}: numpy min {tn*1e6:.1f} med {np.median(res['numpy'])*1e6:.1f}")
for k,v in res.items():
    if k=="numpy": continue
    print(f"  {k:10s} min {min(v)*1e6:8.1f}us ({tn/min(v):4.2f}x)  median {np.median(v)*1e6:8.1f}us")
