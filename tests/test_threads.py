"""Eight Python threads calling the ops at once get correct results.

The CPU kernels run without the GIL (each call may start its own OpenMP team), so calls really
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


def case(rng, dtype, thread):
    """Per-thread activations (a different row count per thread) and float64 references."""
    M = 1 + 5 * thread
    x = round_np(rng.standard_normal((M, H)), dtype)
    r = round_np(rng.standard_normal((M, H)), dtype)
    return M, x, r


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_threads_cpu(dtype, rng):
    w = round_np(norm_weight(rng, H), dtype)
    W = round_np(rng.standard_normal((N, H)) / 16, dtype)
    cases = [case(rng, dtype, i) for i in range(THREADS)]
    w64, W64 = w.astype(np.float64), W.astype(np.float64)

    def work(i):
        M, x, r = cases[i]
        x64, r64 = x.astype(np.float64), r.astype(np.float64)
        ref_y = rms_norm_ref(x64, w64, 1e-6)
        ref_n, ref_s = fused_add_rms_norm_ref(x64, r64, w64, 1e-6, dtype)
        ref_q = qkv_ref(x64, w64, W64, NH, NKV, 1e-6, residual=r64, dtype=dtype)
        out = np.full((M, H), np.nan, x.dtype)
        for _ in range(ITERATIONS):
            assert_matches(minivllm.rms_norm(x, w).astype(np.float64), ref_y, TOL[dtype], "y")
            minivllm.rms_norm(x, w, out=out)
            assert_matches(out.astype(np.float64), ref_y, TOL[dtype], "out")
            n, s = minivllm.fused_add_rms_norm(x, r, w)
            assert_same_values(s.astype(np.float64), ref_s, "new residual")
            assert_matches(n.astype(np.float64), ref_n, TOL[dtype], "normed")
            q, k, v, s = minivllm.FusedRMSNormQKV.forward(x, w, W.T, NH, NKV, residual=r)
            for name, got, ref in zip("qkv", (q, k, v), ref_q):
                assert_matches(got.astype(np.float64), ref, QKV_TOL[dtype], name, row_axes=2)
            assert_same_values(s.astype(np.float64), ref_q[3], "qkv new residual")

    run_threads(work)


@needs_cuda
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_threads_cuda_streams(dtype, rng):
    torch = pytest.importorskip("torch", reason="per-thread CUDA streams are made with torch")
    tdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]

    def gpu(a):
        host = torch.from_numpy(np.asarray(a, np.float32))
        return host.to("cuda").to(tdtype)

    w_np = round_np(norm_weight(rng, H), dtype)
    W_np = round_np(rng.standard_normal((N, H)) / 16, dtype)
    w, W = gpu(w_np), gpu(W_np)
    w64, W64 = w_np.astype(np.float64), W_np.astype(np.float64)
    cases = [case(rng, dtype, i) for i in range(THREADS)]
    torch.cuda.synchronize()

    def to64(t):
        return t.to(torch.float64).cpu().numpy()

    def work(i):
        M, x_np, r_np = cases[i]
        x64, r64 = x_np.astype(np.float64), r_np.astype(np.float64)
        ref_y = rms_norm_ref(x64, w64, 1e-6)
        ref_n, ref_s = fused_add_rms_norm_ref(x64, r64, w64, 1e-6, dtype)
        ref_q = qkv_ref(x64, w64, W64, NH, NKV, 1e-6, residual=r64, dtype=dtype)
        stream = torch.cuda.Stream()
        with torch.cuda.stream(stream):
            x, r = gpu(x_np), gpu(r_np)
            for _ in range(ITERATIONS):
                # results stay on this stream; nothing synchronizes until they are read
                y = minivllm.rms_norm(x, w)
                n, s = minivllm.fused_add_rms_norm(x, r, w)
                q, k, v, s2 = minivllm.FusedRMSNormQKV.forward(x, w, W.t(), NH, NKV, residual=r)
                got = [to64(t) for t in (y, n, s, q, k, v, s2)]  # reads on this stream
                assert_matches(got[0], ref_y, TOL[dtype], "y")
                assert_matches(got[1], ref_n, TOL[dtype], "normed")
                assert_same_values(got[2], ref_s, "new residual")
                for name, g, ref in zip("qkv", got[3:6], ref_q):
                    assert_matches(g, ref, QKV_TOL[dtype], name, row_axes=2)
                assert_same_values(got[6], ref_q[3], "qkv new residual")

    run_threads(work)
