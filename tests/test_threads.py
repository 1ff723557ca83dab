"""Eight Python threads calling the ops at once get correct results.

The CPU kernels run without the GIL (each call may use the thread pool), so calls really
overlap. Threads share the weights (read by all) and each has its own activations and outputs;
every result of every iteration is checked against the float64 reference. On the GPU each thread
works on its own torch CUDA stream, which minivllm must launch on.
"""
import threading

import numpy as np
import pytest

import minivllm
from conftest import cuda_skip_reason, norm_weight, round_np
from reference import QKV_TOL, TOL, assert_matches, assert_same_values, fused_add_rms_norm_ref, \
    qkv_ref, rms_norm_ref

THREADS = 8
ITERATIONS = 40
H, NH, NKV, HD = 320, 4, 2, 16
N = (NH + 2 * NKV) * HD

needs_cuda = pytest.mark.skipif(cuda_skip_reason() is not None, reason=cuda_skip_reason() or "")


def run_threads(work):
    """Run work(thread_index) on THREADS threads started together; re-raise the first failure."""
    barrier = threading.Barrier(THREADS)
    errors = [None] * THREADS

    def main(i):
        try:
            barrier.wait()
            work(i)
        except BaseException as error:  # reported below, on the test's thread
            errors[i] = error

    threads = [threading.Thread(target=main, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
        assert not t.is_alive(), "a thread hung"
    for i, error in enumerate(errors):
        if error is not None:
            raise AssertionError(f"thread {i} failed: {error!r}") from error


def weights(rng, dtype):
    """The norm weight and W ([N, H]) every thread shares, as numpy arrays of dtype."""
    return round_np(norm_weight(rng, H), dtype), round_np(rng.standard_normal((N, H)) / 16, dtype)


def case(rng, dtype, thread, w, W):
    """One thread's activations (a different row count per thread) and float64 references:
    (x, residual, {"y", "normed", "summed", "qkv"})."""
    M = 1 + 5 * thread
    x = round_np(rng.standard_normal((M, H)), dtype)
    r = round_np(rng.standard_normal((M, H)), dtype)
    x64, r64, w64 = x.astype(np.float64), r.astype(np.float64), w.astype(np.float64)
    normed, summed = fused_add_rms_norm_ref(x64, r64, w64, 1e-6, dtype)
    refs = {"y": rms_norm_ref(x64, w64, 1e-6), "normed": normed, "summed": summed,
            "qkv": qkv_ref(x64, w64, W.astype(np.float64), NH, NKV, 1e-6, residual=r64,
                           dtype=dtype)}
    return x, r, refs


def check_results(dtype, refs, y, normed, summed, qkv):
    """Float64 copies of one iteration's results against the thread's references."""
    assert_matches(y, refs["y"], TOL[dtype], "y")
    assert_matches(normed, refs["normed"], TOL[dtype], "normed")
    assert_same_values(summed, refs["summed"], "new residual")
    for name, got, ref in zip("qkv", qkv[:3], refs["qkv"]):
        assert_matches(got, ref, QKV_TOL[dtype], name, row_axes=2)
    assert_same_values(qkv[3], refs["qkv"][3], "qkv new residual")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_threads_cpu(dtype, rng):
    w, W = weights(rng, dtype)
    cases = [case(rng, dtype, i, w, W) for i in range(THREADS)]

    def work(i):
        x, r, refs = cases[i]
        out = np.full(x.shape, np.nan, x.dtype)
        for _ in range(ITERATIONS):
            y = minivllm.rms_norm(x, w)
            minivllm.rms_norm(x, w, out=out)
            assert_matches(out.astype(np.float64), refs["y"], TOL[dtype], "out")
            normed, summed = minivllm.fused_add_rms_norm(x, r, w)
            qkv = minivllm.FusedRMSNormQKV.forward(x, w, W.T, NH, NKV, residual=r)
            check_results(dtype, refs, y.astype(np.float64), normed.astype(np.float64),
                          summed.astype(np.float64), [t.astype(np.float64) for t in qkv])

    run_threads(work)


@needs_cuda
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_threads_cuda_streams(dtype, rng):
    torch = pytest.importorskip("torch", reason="per-thread CUDA streams are made with torch")
    tdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]

    def gpu(a):
        return torch.from_numpy(np.asarray(a, np.float32)).to("cuda").to(tdtype)

    def to64(t):
        return t.to(torch.float64).cpu().numpy()

    w_np, W_np = weights(rng, dtype)
    w, W = gpu(w_np), gpu(W_np)
    cases = [case(rng, dtype, i, w_np, W_np) for i in range(THREADS)]
    torch.cuda.synchronize()

    def work(i):
        x_np, r_np, refs = cases[i]
        stream = torch.cuda.Stream()
        with torch.cuda.stream(stream):
            x, r = gpu(x_np), gpu(r_np)
            for _ in range(ITERATIONS):
                # results stay on this stream; nothing synchronizes until they are read back
                y = minivllm.rms_norm(x, w)
                normed, summed = minivllm.fused_add_rms_norm(x, r, w)
                qkv = minivllm.FusedRMSNormQKV.forward(x, w, W.t(), NH, NKV, residual=r)
                check_results(dtype, refs, to64(y), to64(normed), to64(summed),
                              [to64(t) for t in qkv])

    run_threads(work)
