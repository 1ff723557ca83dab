"""The CPU kernels' own thread pool (csrc/cpu/pool.h): a forked child's calls return (GNU OpenMP
hung there), the thread count comes from OMP_NUM_THREADS or minivllm.set_num_threads, results
do not depend on it, and NumPy bf16 arrays take the fast import path with the same results."""
import multiprocessing
import os
import subprocess
import tempfile
import sys

import numpy as np
import pytest

import minivllm

ml_dtypes = pytest.importorskip("ml_dtypes")

H, NH, NKV, HD = 512, 4, 2, 64
N = (NH + 2 * NKV) * HD


def big_call():
    """Large enough to run on every thread of the pool."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, H)).astype(np.float32)
    W = rng.standard_normal((N, H)).astype(np.float32)
    return minivllm.fused_rms_norm_qkv(x, np.ones(H, np.float32), W, NH, NKV)[0]


def _child(queue):
    queue.put(float(np.sum(big_call())))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_calls_return():
    minivllm.set_num_threads(2)
    expected = float(np.sum(big_call()))  # the parent's pool is started
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child, args=(queue,))
    child.start()
    child.join(timeout=120)
    if child.is_alive():
        child.kill()
        pytest.fail("the forked child hung in its first minivllm call")
    assert child.exitcode == 0
    assert queue.get(timeout=10) == expected
    assert float(np.sum(big_call())) == expected  # and the parent still works


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_with_os_fork():
    big_call()
    pid = os.fork()
    if pid == 0:  # child: exit code 0 when the call returns
        try:
            big_call()
            os._exit(0)
        except BaseException:
            os._exit(1)
    for _ in range(1200):
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        import time
        time.sleep(0.1)
    os.kill(pid, 9)
    pytest.fail("os.fork child hung")


def test_set_num_threads_and_results_independent_of_it():
    previous = minivllm.get_num_threads()
    try:
        results = []
        for n in (1, 2, 3, 5):
            assert minivllm.set_num_threads(n) >= 1
            assert minivllm.get_num_threads() == n
            results.append(big_call())
        for r in results[1:]:
            np.testing.assert_array_equal(r, results[0])
    finally:
        minivllm.set_num_threads(previous)


@pytest.mark.parametrize("bad", [0, -1, 257, 2 ** 70])
def test_set_num_threads_rejects(bad):
    with pytest.raises(ValueError, match="n"):
        minivllm.set_num_threads(bad)


def test_omp_num_threads_sets_the_default():
    code = "import minivllm; print(minivllm.get_num_threads())"
    # the child imports the minivllm this process runs (installed or built in place), from a
    # directory where no source tree shadows it
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(minivllm.__file__)))
    env = dict(os.environ, OMP_NUM_THREADS="3", PYTHONPATH=package_parent)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True, cwd=tempfile.gettempdir())
    assert out.stdout.strip() == "3"


def test_bf16_fast_import_matches_general_path():
    """The second bf16 call goes through __array_struct__; strided, read-only and sliced arrays
    give the same results as float32 inputs holding the same values."""
    rng = np.random.default_rng(1)
    base = rng.standard_normal((6, 2 * H)).astype(ml_dtypes.bfloat16)
    w = np.ones(H, ml_dtypes.bfloat16)
    for _ in range(2):
        for x in (base[:, :H], base[::2, H:], base[1:4, 3:3 + H]):
            ro = x.copy()
            ro.flags.writeable = False
            for arr in (x, ro):
                got = minivllm.rms_norm(arr, w).astype(np.float32)
                ref = minivllm.rms_norm(arr.astype(np.float32), w.astype(np.float32))
                ref = ref.astype(ml_dtypes.bfloat16).astype(np.float32)
                np.testing.assert_array_equal(got, ref)
    # writing into a read-only bf16 array is refused on the fast path too
    out = np.empty((1, H), ml_dtypes.bfloat16)
    out.flags.writeable = False
    with pytest.raises(ValueError):
        minivllm.rms_norm(base[:1, :H], w, out=out)


_STARVED_CHILD = r"""
import os, sys
os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # before any thread is made
import numpy as np, minivllm
rng = np.random.default_rng(0)
H, NH, NKV, HD = 512, 4, 2, 64
W = rng.standard_normal(((NH + 2 * NKV) * HD, H)).astype(np.float32)
g = np.ones(H, np.float32)
cos_sin = rng.standard_normal((64, HD)).astype(np.float32)
xs = [rng.standard_normal((m, H)).astype(np.float32) for m in (4, 40, 256)]
norm_x = rng.standard_normal((256, 1024)).astype(np.float32)
norm_r = rng.standard_normal((256, 1024)).astype(np.float32)
def calls():
    out = []
    for x in xs:
        out += list(minivllm.fused_rms_norm_qkv(x, g, W, NH, NKV))
        pos = np.arange(len(x), dtype=np.int64) % 64
        out += list(minivllm.attention_prologue(x, g, W, NH, NKV, positions=pos, cos_sin_cache=cos_sin))
    out.append(minivllm.rms_norm(norm_x, np.ones(1024, np.float32)))
    out += list(minivllm.fused_add_rms_norm(norm_x, norm_r, np.ones(1024, np.float32)))
    return [np.asarray(a) for a in out]
minivllm.set_num_threads(1)
expected = calls()
minivllm.set_num_threads(4)
calls()  # starts the pool's workers
if sys.argv[1] == "idle":  # they then run only while the caller's thread waits
    import threading
    for tid in os.listdir("/proc/self/task"):
        if int(tid) != threading.get_native_id():
            os.sched_setscheduler(int(tid), os.SCHED_IDLE, os.sched_param(0))
for _ in range(100):
    for a, b in zip(calls(), expected):
        if not np.array_equal(a, b):
            sys.exit("results differ")
print("ok")
"""


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or not hasattr(os, "SCHED_IDLE"),
                    reason="needs sched_setaffinity and SCHED_IDLE")
@pytest.mark.parametrize("workers", ["normal", "idle"])
def test_workers_left_out_on_a_busy_cpu_give_the_same_results(workers):
    """Four threads on one CPU, the workers at normal priority or SCHED_IDLE: a worker the OS has
    not run by the time the caller's part is done is left out of the job (pool.h), so calls run
    on fewer threads than they asked for (with SCHED_IDLE workers, on the caller's alone); every
    op's results are those of one thread, bit for bit."""
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(minivllm.__file__)))
    env = dict(os.environ, PYTHONPATH=package_parent)
    out = subprocess.run([sys.executable, "-c", _STARVED_CHILD, workers], env=env,
                         capture_output=True, text=True, cwd=tempfile.gettempdir(), timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
