"""The neutral thread runner (``fastconv.kernels.threads``) for Numba's generated
kernels: each is compiled (or loaded from the cache) on first use with LLVM's SLP
vectorizer on, which packs their scalar register blocks into vectors."""
import threading

from numba.core import config as _numba_config

from ..threads import run as _run_threads

_compiled = set()
_compile_lock = threading.Lock()


def run(fn, total, *args, first=None):
    """``fastconv.kernels.threads.run`` for a generated kernel; the first call per
    dtype compiles it with the SLP vectorizer on and restores Numba's setting after."""
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
    return _run_threads(fn, total, *args, first=first)
