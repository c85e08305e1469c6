"""Running the SLP-compiled serial kernels (``_direct_gen``'s, and the kernels that call
them) on all threads. A Numba ``prange`` cannot host them: parfor lowering recompiles
the loop nest (with the callee inlined) and loses the vectorisation (the generated GEMM
ran at 8 GFLOP/s inside a ``prange``, 230 outside)."""
import itertools
import threading
from concurrent.futures import ThreadPoolExecutor

import numba
from numba.core import config as _numba_config

_compiled = set()
_compile_lock = threading.Lock()
_pool = None


def _executor():
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=_numba_config.NUMBA_NUM_THREADS,
                                   thread_name_prefix="fastconv")
    return _pool


def run(fn, total, *args, first=None):
    """Run a generated kernel over work items [0, total) on ``numba.get_num_threads()``
    threads (the kernels release the GIL): 4 chunks per thread, taken in turn by the
    calling thread and ``threads - 1`` pool workers, so the calling thread starts at once
    and a worker that wakes late (a pool hand-off costs about 40 us here) takes fewer
    chunks. ``first``: a function the calling thread runs before it takes chunks (while
    the workers start on them); its result is returned. When the calling thread took
    every chunk, the workers (which then find none) are not waited for: a small call
    (res5-sized 3x3 with 32 channels, N=1) took 87 us instead of 101 on 2 threads, where
    waiting for a worker to wake and find nothing had cost about 25 us. The first call
    per dtype
    compiles (or loads from the cache) with the SLP vectorizer on and restores Numba's
    setting afterwards."""
    key = (fn, args[0].dtype)
    if key not in _compiled:
        with _compile_lock:
            old = _numba_config.SLP_VECTORIZE
            _numba_config.SLP_VECTORIZE = 1
            try:
                fn(*args, 0, 0)                     # empty range: compile only
            finally:
                _numba_config.SLP_VECTORIZE = old
            _compiled.add(key)
    nt = numba.get_num_threads()
    chunks = min(total, 4 * nt) if nt > 1 else 1
    if chunks <= 1:
        result = first() if first is not None else None
        fn(*args, 0, total)
        return result
    bounds = [total * i // chunks for i in range(chunks + 1)]
    turn = itertools.count()                        # next() is atomic under the GIL

    def work():
        i, taken = next(turn), 0
        while i < chunks:
            fn(*args, bounds[i], bounds[i + 1])
            i, taken = next(turn), taken + 1
        return taken

    helpers = [_executor().submit(work) for _ in range(min(nt, chunks) - 1)]
    taken = 0
    try:
        result = first() if first is not None else None
        taken = work()
    finally:
        # a small call can be over before a worker wakes: one that finds no chunk left
        # touches nothing, so it is not waited for
        if taken < chunks:
            for f in helpers:
                f.result()
    return result
