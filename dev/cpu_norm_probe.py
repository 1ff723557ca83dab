"""The norm ops per variant of a dev build, side by side in one process (issue 31): rms_norm and
fused_add_rms_norm for each value of the MVX environment variable (read per call by
dev/cpu_norm_variants.patch) against np.copyto of the same bytes, in shuffled rounds; min over
rounds. THREADS=1 for one thread.
  usage: PYTHONPATH=BUILD ROUNDS=8 THREADS=2 python dev/cpu_norm_probe.py M H v1,v2,... [f32,f16,bf16]
"""
import sys, os, time, random, numpy as np, ml_dtypes, minivllm
def timed(fn, n):
    t=time.perf_counter()
    for _ in range(n): fn()
    return (time.perf_counter()-t)/n
DT={"f32":np.float32,"f16":np.float16,"bf16":ml_dtypes.bfloat16}
M,H=int(sys.argv[1]),int(sys.argv[2]); variants=sys.argv[3].split(','); dts=sys.argv[4].split(',') if len(sys.argv)>4 else list(DT)
rounds=int(os.environ.get("ROUNDS","8"))
rng=np.random.default_rng(0)
minivllm.set_num_threads(int(os.environ.get("THREADS","2")))
cases={}
for d in dts:
    dt=DT[d]
    x=rng.standard_normal((M,H)).astype(dt); r=rng.standard_normal((M,H)).astype(dt); w=(1+0.1*rng.standard_normal(H)).astype(dt)
    out=np.empty_like(x); ro=np.empty_like(x)
    cases[f"{d} copy"]=("0",(lambda x,out: lambda: np.copyto(out,x))(x,out))
    cases[f"{d} copy2"]=("0",(lambda x,r,out,ro: lambda: (np.copyto(out,x),np.copyto(ro,r)))(x,r,out,ro))
    for v in variants:
        cases[f"{d} norm v{v}"]=(v,(lambda x,w,out: lambda: minivllm.rms_norm(x,w,1e-6,out=out))(x,w,out))
        cases[f"{d} add v{v}"]=(v,(lambda x,r,w,out,ro: lambda: minivllm.fused_add_rms_norm(x,r,w,1e-6,out=out,residual_out=ro))(x,r,w,out,ro))
res={k:[] for k in cases}
f0=cases[list(cases)[0]][1]; t=time.perf_counter(); f0(); one=max(time.perf_counter()-t,1e-6)
n=max(3,int(0.03/one))
for _ in range(rounds):
    ks=list(cases); random.shuffle(ks)
    for k in ks:
        v,f=cases[k]; os.environ["MVX"]=v; f(); res[k].append(timed(f,n))
print(f"load {os.getloadavg()[0]:.2f} M={M} H={H}")
for d in dts:
    c=min(res[f"{d} copy"]); c2=min(res[f"{d} copy2"])
    for v in variants:
        a=min(res[f"{d} norm v{v}"]); b=min(res[f"{d} add v{v}"])
        print(f"  {d:5s} v{v:3s} norm {a*1e6:8.2f}us ({c/a:4.0%} of copy {c*1e6:.2f}) | add {b*1e6:8.2f}us ({c2/b:4.0%} of copy2 {c2*1e6:.2f})")
