"""Threads and repetition (docs/threads.md).

- 8 Python threads calling every registered (op, algorithm, backend) at once get the
  reference's answers, and for the algorithms that are bitwise stable, the very bits a
  single caller gets.
- 10,000 calls leave the process's resident memory flat (weight caches and workspaces
  are bounded, nothing leaks per call).
- The same call made twice gives bitwise equal results, for every kernel.
- The algorithms docs/threads.md names as bitwise stable across thread counts give the
  same bits on 1 thread and on all of them.
"""
import ctypes
import gc
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import fastconv
from conftest import blas_rows_round_alike
from fastconv import _config, _plan

#: bitwise stable across thread counts (docs/threads.md): their threads split the
#: outputs, never a sum, and any BLAS call they make runs single-threaded inside their
#: own parallel loops. im2col is not on the list: its GEMMs run on BLAS's threads.
STABLE_ACROSS_THREADS = ("reference", "direct", "winograd_f2", "winograd_f4")
THREADS = 8
TOLERANCE = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-10}


def _conv_cases(dtype, rng, N=2, C=6, K=8, HW=9):
    """(name, call, want) of every registered conv kernel on a 3x3 stride-1 layer (that
    Winograd handles too) and a 3x3 stride-2 one."""
    cases = []
    for stride in (1, 2):
        x = rng.standard_normal((N, C, HW, HW)).astype(dtype)
        w = rng.standard_normal((K, C, 3, 3)).astype(dtype)
        p = fastconv._geometry.conv_params("conv2d", x.shape, w.shape, stride, 1)
        dy = rng.standard_normal(p.output_shape).astype(dtype)
        kw = dict(stride=stride, padding=1)
        calls = {
            "conv2d": lambda a, b, kw=kw, x=x, w=w: fastconv.conv2d(x, w, **kw, algorithm=a, backend=b),
            "conv2d_input": lambda a, b, kw=kw, x=x, w=w, dy=dy: fastconv.conv2d_input(
                x.shape, w, dy, **kw, algorithm=a, backend=b),
            "conv2d_weight": lambda a, b, kw=kw, x=x, w=w, dy=dy: fastconv.conv2d_weight(
                x, w.shape, dy, **kw, algorithm=a, backend=b),
        }
        for op, fn in calls.items():
            want = fn("reference", "numpy")
            for a, b in fastconv.algorithms(op):
                if _plan.supports(a, p):
                    cases.append((f"{op}/{a}/{b} stride {stride}", a,
                                  lambda fn=fn, a=a, b=b: fn(a, b), want))
    return cases


def _pool_cases(dtype, rng):
    x = rng.standard_normal((2, 3, 9, 9)).astype(dtype)
    y, idx = fastconv.max_pool2d(x, 3, 2, 1, return_indices=True, algorithm="reference")
    dy = rng.standard_normal(y.shape).astype(dtype)
    calls = {
        "max_pool2d": lambda a, b: fastconv.max_pool2d(x, 3, 2, 1, return_indices=True,
                                                       algorithm=a, backend=b),
        "max_pool2d_backward": lambda a, b: fastconv.max_pool2d_backward(dy, idx, x.shape,
                                                                         algorithm=a, backend=b),
        "avg_pool2d": lambda a, b: fastconv.avg_pool2d(x, 3, 2, 1, algorithm=a, backend=b),
        "avg_pool2d_backward": lambda a, b: fastconv.avg_pool2d_backward(
            dy, x.shape, 3, 2, 1, algorithm=a, backend=b),
        "adaptive_avg_pool2d": lambda a, b: fastconv.adaptive_avg_pool2d(x, (4, 5), algorithm=a,
                                                                         backend=b),
    }
    cases = []
    for op, fn in calls.items():
        want = fn("reference", "numpy")
        for a, b in fastconv.algorithms(op):
            cases.append((f"{op}/{a}/{b}", a, lambda fn=fn, a=a, b=b: fn(a, b), want))
    return cases


def every_kernel(dtype, seed=0):
    """(name, algorithm, call, reference result) for every registered kernel."""
    rng = np.random.default_rng(seed)
    return _conv_cases(dtype, rng) + _pool_cases(dtype, rng)


def _parts(result):
    return list(result) if isinstance(result, tuple) else [result]


def _bits(result):
    return [np.asarray(r).tobytes() for r in _parts(result)]


def _close(got, want):
    for g, w in zip(_parts(got), _parts(want)):
        g, w = np.asarray(g), np.asarray(w)
        if g.shape != w.shape or g.dtype != w.dtype:
            return False
        if g.dtype.kind in "iu":
            if not np.array_equal(g, w):
                return False
            continue
        scale = max(float(np.abs(w).max(initial=0.0)), 1e-30)
        if float(np.abs(g - w).max(initial=0.0)) > TOLERANCE[w.dtype] * scale:
            return False
    return True


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_eight_threads_calling_every_kernel_at_once_get_correct_results(dtype):
    cases = every_kernel(dtype)
    alone = {name: _bits(call()) for name, _, call, _ in cases}     # compile, and the bits
    barrier = threading.Barrier(THREADS)
    rounds = 3

    def worker(i):
        wrong = []
        barrier.wait()                                  # all threads start together
        order = cases[i % len(cases):] + cases[:i % len(cases)]
        for _ in range(rounds):
            for name, algorithm, call, want in order:
                got = call()
                if not _close(got, want):
                    wrong.append(f"{name}: differs from the reference (thread {i})")
                elif algorithm in STABLE_ACROSS_THREADS and _bits(got) != alone[name]:
                    wrong.append(f"{name}: bits differ from a lone caller's (thread {i})")
        return wrong

    with ThreadPoolExecutor(THREADS) as pool:
        wrong = [w for ws in pool.map(worker, range(THREADS)) for w in ws]
    assert not wrong, "\n".join(sorted(set(wrong)))


def _rss():
    """Resident set size of this process in bytes (Linux), or None. Garbage is collected
    and glibc's free pages handed back first (``malloc_trim``), or pages the allocator
    keeps after a free would hide a leak of the same size."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def test_ten_thousand_calls_leave_memory_flat():
    if _rss() is None:
        pytest.skip("no /proc/self/statm: cannot read the resident set size here")
    rng = np.random.default_rng(1)
    cases = [c for c in every_kernel(np.float32) if c[1] != "reference"]
    cases += [c for c in every_kernel(np.float32) if c[1] == "reference"][:4]
    # twelve weights in turn: more than the weight caches hold, so they evict
    x = rng.standard_normal((2, 8, 10, 10)).astype(np.float32)
    weights = [rng.standard_normal((8, 8, 3, 3)).astype(np.float32) for _ in range(12)]
    cases.append(("conv2d, 12 weights in turn", "auto",
                  lambda it=iter(range(10**9)): fastconv.conv2d(x, weights[next(it) % 12],
                                                                padding=1), None))
    for i in range(1_000):                     # compile, grow the workspaces and caches
        cases[i % len(cases)][2]()
    before = _rss()
    calls = 10_000
    for i in range(calls):
        cases[i % len(cases)][2]()
    grown = _rss() - before
    # keeping 1 KiB per call would grow it by 10 MiB (checked when this was written)
    assert grown < 4 * 2**20, f"resident memory grew {grown / 2**20:.1f} MiB over {calls} calls"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_same_call_twice_gives_the_same_bits(dtype):
    differ = []
    for name, _, call, _ in every_kernel(dtype, seed=2):
        if _bits(call()) != _bits(call()):
            differ.append(name)
    assert not differ, f"not repeatable: {differ}"


def _stable_cases(dtype):
    """Every kernel of the stable algorithms on layers big enough for the threads to
    split the work several ways (batch 4, 16 to 32 channels, several Winograd tiles).
    Winograd's forward and input gradient only where BLAS rounds a GEMM's rows alike
    whatever its row count (``blas_rows_round_alike``): their GEMMs multiply blocks of
    tiles, whose size follows the thread count."""
    rng = np.random.default_rng(3)
    cases = _conv_cases(dtype, rng, N=4, C=16, K=32, HW=14) + _pool_cases(dtype, rng)
    rows_alike = blas_rows_round_alike()
    return [c for c in cases if c[1] in STABLE_ACROSS_THREADS
            and (rows_alike or not c[1].startswith("winograd")
                 or c[0].startswith("conv2d_weight"))]


@pytest.mark.skipif(_config.MAX_THREADS < 2, reason="one CPU: no other thread count to compare")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_stable_algorithms_give_the_same_bits_on_any_thread_count(dtype):
    cases = _stable_cases(dtype)
    n = fastconv.get_num_threads()
    try:
        fastconv.set_num_threads(1)
        one = {name: _bits(call()) for name, _, call, _ in cases}
        fastconv.set_num_threads(_config.MAX_THREADS)
        many = {name: _bits(call()) for name, _, call, _ in cases}
    finally:
        fastconv.set_num_threads(n)
    differ = [name for name in one if one[name] != many[name]]
    assert not differ, (f"1 and {_config.MAX_THREADS} threads give different bits: {differ} "
                        f"(docs/threads.md says they are stable)")


IMPORT_ORDER = r"""
import ctypes, json, os, sys
import numpy as np
from threadpoolctl import ThreadpoolController
import fastconv

libs = [lib for lib in ThreadpoolController().lib_controllers if lib.internal_api == "openblas"]
a = np.random.default_rng(0).standard_normal((300, 400))
b = np.random.default_rng(1).standard_normal((400, 500))
fastconv.set_num_threads(2)
product = a @ b                                          # on the workers started again
print(json.dumps({
    "timeouts": [ctypes.CDLL(lib.filepath).openblas_thread_timeout() for lib in libs
                 if hasattr(ctypes.CDLL(lib.filepath), "openblas_thread_timeout")],
    "right": bool(np.allclose(product, np.einsum("ij,jk->ik", a, b))),
}))
"""


def _numpy_first(code):
    """Run ``code`` (IMPORT_ORDER, perhaps with a thread started before ``import
    fastconv``) in a fresh interpreter without OPENBLAS_THREAD_TIMEOUT set: its
    record, or a skip where NumPy's BLAS is not an OpenBLAS that reports its timeout."""
    import json
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    rec = json.loads(out.stdout.strip().splitlines()[-1])
    if not rec["timeouts"]:
        pytest.skip("NumPy's BLAS is not an OpenBLAS that reports its thread timeout")
    assert rec["right"]                     # a threaded matmul on the workers after
    return rec["timeouts"]


def test_numpy_imported_first_gets_the_short_openblas_spin():
    """With NumPy imported before fastconv (its OpenBLAS loaded with the default spin
    of 2^28 cycles), ``import fastconv`` has that OpenBLAS read OPENBLAS_THREAD_TIMEOUT
    again and restart its workers: it reports 20 after, and a threaded matmul on the
    restarted workers still gives the right product."""
    timeouts = _numpy_first(IMPORT_ORDER)
    assert timeouts == [20] * len(timeouts)


@pytest.mark.parametrize("daemon", [False, True])
def test_numpy_imported_first_with_another_thread_alive(daemon):
    """With another non-daemon Python thread alive when fastconv is imported (it could
    be inside an OpenBLAS call), OpenBLAS's workers are not stopped: its timeout stays
    unread. A daemon thread (a Jupyter kernel's) does not stop the restart."""
    timeouts = _numpy_first(IMPORT_ORDER.replace(
        "import fastconv\n", "import threading, time\nt = threading.Thread(target=time.sleep, "
        f"args=(1,), daemon={daemon})\nt.start()\nimport fastconv\n", 1))
    if daemon:
        assert timeouts == [20] * len(timeouts)
    else:
        assert 20 not in timeouts
