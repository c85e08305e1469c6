"""Running serial kernels that release the GIL on all of fastconv's threads: the
work items split into chunks, taken in turn by the calling thread and a pool of Python
threads. Any backend's kernel of the form ``fn(*args, it0, it1)`` (items
``[it0, it1)``) can run here; Numba's generated kernels do (a ``prange`` around them
compiled slower and vectorised worse)."""
import itertools
from concurrent.futures import ThreadPoolExecutor

from .. import _config

_pool = None


def _executor():
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=_config.MAX_THREADS,
                                   thread_name_prefix="fastconv")
    return _pool


def run(fn, total, *args, first=None):
    """Run ``fn(*args, it0, it1)`` over work items [0, total) on
    ``fastconv.get_num_threads()`` threads: 4 chunks per thread, taken in turn by the
    calling thread and ``threads - 1`` pool workers, so the calling thread starts at once
    and a worker that wakes late (a hand-off costs tens of microseconds) takes fewer
    chunks. ``first``: a function the calling thread runs before it takes chunks (while
    the workers start on them); its result is returned. When the calling thread took
    every chunk, the workers (which then find none and touch nothing) are not waited
    for."""
    nt = _config.get_num_threads()
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
