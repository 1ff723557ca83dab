"""Quick QKV timings against NumPy float32 y @ W.T, 1 and 2 threads at M = 1 (dev tool, issue 31).
  usage: PYTHONPATH=. python dev/cpu_qkv_probe.py qwen:1 llama:64 ...   (model:M; models tiny, qwen, llama)
"""
import sys, time, numpy as np, ml_dtypes, minivllm
def timed(fn, min_time=0.2, repeats=5):
    fn(); t=time.perf_counter(); fn(); one=max(time.perf_counter()-t,1e-7)
    n=max(1,int(min_time/one)); best=1e9
    for _ in range(repeats):
        t=time.perf_counter()
        for _ in range(n): fn()
        best=min(best,(time.perf_counter()-t)/n)
    return best
DT={"f32":np.float32,"f16":np.float16,"bf16":ml_dtypes.bfloat16}
rng=np.random.default_rng(0)
def qkv(model, M, threads=(2,)):
    H,nh,nkv,hd={"llama":(4096,32,8,128),"qwen":(1024,16,8,128),"tiny":(64,2,1,8)}[model]
    N=(nh+2*nkv)*hd
    W64=rng.standard_normal((N,H))/np.sqrt(H); x64=rng.standard_normal((M,H)); g=1+0.1*rng.standard_normal(H)
    W32=W64.astype(np.float32); y32=x64.astype(np.float32)
    tn=timed(lambda: y32@W32.T)
    out=[f"{model} M={M} numpy {tn*1e6:9.1f}us"]
    for th in threads:
        minivllm.set_num_threads(th)
        for n,dt in DT.items():
            W,x,w=W64.astype(dt),x64.astype(dt),g.astype(dt)
            t=timed(lambda: minivllm.fused_rms_norm_qkv(x,w,W,nh,nkv))
            out.append(f"t{th} {n} {t*1e6:9.1f}us ({tn/t:4.2f}x)")
    minivllm.set_num_threads(2)
    print(" | ".join(out), flush=True)
if __name__=="__main__":
    for spec in sys.argv[1:]:
        m, M = spec.split(":")
        qkv(m, int(M), threads=(1,2) if int(M)==1 else (2,))
