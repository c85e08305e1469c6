"""Numba's settings for fastconv's kernels: the JIT cache directory, the threading
layer, the compile flags, and the thread count kept in step with
``fastconv.set_num_threads``. Imported before any Numba kernel module is, because
Numba reads its cache directory when a function is decorated."""
import contextlib
import os

import numba
from numba.core import config as _numba_config

from ... import _config


def _boundscheck():
    """Whether kernels compile with bounds checks: ``FASTCONV_BOUNDSCHECK=1``, or
    Numba's own ``NUMBA_BOUNDSCHECK=1`` (which Numba applies to every function whatever
    its decorator says; a ``NUMBA_BOUNDSCHECK=0`` wins over ``FASTCONV_BOUNDSCHECK``).
    An out-of-bounds index then raises IndexError instead of reading or writing
    memory outside the array. For test runs: the checks cost speed."""
    for var in ("FASTCONV_BOUNDSCHECK", "NUMBA_BOUNDSCHECK"):
        value = os.environ.get(var, "").strip().lower()
        if value:
            return value not in ("0", "false", "no", "off")
    return False


#: kernels compiled with bounds checks (see ``_boundscheck``)
BOUNDSCHECK = _boundscheck()
# Numba's cache key does not include the bounds-check flag, so checked and unchecked
# compiles must never share a cache directory
_numba_config.CACHE_DIR = (os.path.join(_config.CACHE_DIR, "boundscheck") if BOUNDSCHECK
                           else _config.CACHE_DIR)


def _target_features():
    """The CPU features Numba compiles for. On a CPU with AVX-512 (unless
    ``FASTCONV_VECTOR_WIDTH=256``): the host's, with LLVM's preference for 256-bit
    vectors turned off (LLVM tunes Intel's AVX-512 cores, Skylake-X to Sapphire Rapids,
    for 256-bit vectors, so the generated kernels would run at half the width the CPU
    has, and the 32-register blocks would spill; AMD's Zen 4/5 have no such
    preference). Otherwise, and with ``FASTCONV_VECTOR_WIDTH=256``, LLVM's choice. A
    user's ``NUMBA_CPU_NAME`` or ``NUMBA_CPU_FEATURES`` wins. Numba applies this to
    every function it compiles in the process."""
    if (_numba_config.CPU_FEATURES or _numba_config.CPU_NAME
            or os.environ.get("FASTCONV_VECTOR_WIDTH", "512").strip() == "256"):
        return _numba_config.CPU_FEATURES       # the user's target, or LLVM's choice
    import llvmlite.binding as ll
    features = ll.get_host_cpu_features()
    if not features.get("avx512f"):
        return _numba_config.CPU_FEATURES
    return features.flatten() + ",-prefer-256-bit"


_numba_config.CPU_FEATURES = _target_features()
# Numba's workqueue layer aborts on concurrent calls from several Python threads;
# prefer OpenMP (GCC's libgomp), then TBB.
_numba_config.THREADING_LAYER_PRIORITY = ["omp", "tbb", "workqueue"]

#: flags of every fastconv kernel (the generated ones too): cached on disk, no GIL, no
#: bounds checks (the wrappers validate; ``FASTCONV_BOUNDSCHECK=1`` turns them on for a
#: test run), no division-by-zero checks in loops. No fastmath here: pooling must see
#: NaN; kernels that may reassociate ask for it themselves.
JIT_FLAGS = dict(cache=True, nogil=True, boundscheck=BOUNDSCHECK, error_model="numpy")


def jit(**extra):
    """``numba.njit`` with fastconv's flags (see ``JIT_FLAGS``)."""
    return numba.njit(**{**JIT_FLAGS, **extra})


def _set_threads(n):
    """Numba's thread count for the calling thread: ``n``, at most the threads Numba
    started with (``NUMBA_NUM_THREADS`` may have changed between fastconv's import and
    Numba's, e.g. in a Dask worker whose nanny sets it)."""
    numba.set_num_threads(min(n, _numba_config.NUMBA_NUM_THREADS))


def sync_threads():
    """Numba's thread count for the calling thread = fastconv's (``set_num_threads``
    may have been called before Numba was imported, or on another backend's behalf)."""
    n = min(_config.get_num_threads(), _numba_config.NUMBA_NUM_THREADS)
    if numba.get_num_threads() != n:
        numba.set_num_threads(n)


@contextlib.contextmanager
def one_thread(on=True):
    """Numba's parallel regions on the calling thread alone inside the block (when
    ``on``; this thread's setting only), for work too small to pay for waking the
    OpenMP workers (tens of microseconds)."""
    threads = numba.get_num_threads()
    if on and threads > 1:
        numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(threads)


_config.thread_hooks.append(_set_threads)
