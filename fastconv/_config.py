"""Run-time settings in one place: threads, the JIT cache directory, the im2col
workspace bound, and the Numba compile flags every kernel uses.

Imported before any kernel module, because Numba reads its cache directory when a
function is decorated.
"""
import contextlib
import os
import tempfile
import threading
import warnings

# Idle OpenMP workers must sleep, not spin: after a Numba parallel region, spinning
# workers take the cores from the BLAS threads of the GEMM that follows (measured here:
# im2col + GEMM 1.5x slower, the gather alone 8x). Read when libgomp starts, so before
# Numba's first parallel call; a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Likewise OpenBLAS's workers: by default they spin for 2^28 cycles (about 0.1 s here)
# after each GEMM, and a Numba kernel that follows ran 1.5-2x slower meanwhile (fused
# Winograd after an im2col GEMM, measured). 2^20 cycles (0.3 ms) still covers the gaps
# between the GEMMs of one layer. Read when OpenBLAS loads: import fastconv before NumPy.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "20")

import numba  # noqa: E402
import numpy as np  # noqa: E402
from numba.core import config as _numba_config  # noqa: E402
from threadpoolctl import ThreadpoolController, threadpool_limits  # noqa: E402

# -- JIT cache: a writable directory, chosen before any kernel is decorated ----------


def _writable(path):
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path):
            pass
        return True
    except OSError:
        return False


def _choose_cache_dir():
    """FASTCONV_CACHE_DIR, else NUMBA_CACHE_DIR, else ~/.cache/fastconv/numba; a temp
    directory (with a warning) when none of those can be written."""
    wanted = (os.environ.get("FASTCONV_CACHE_DIR") or os.environ.get("NUMBA_CACHE_DIR")
              or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                              "fastconv", "numba"))
    if _writable(wanted):
        return wanted
    fallback = os.path.join(tempfile.gettempdir(), f"fastconv-numba-{os.getuid()}")
    warnings.warn(f"fastconv: cannot write the JIT cache directory {wanted!r}; "
                  f"using {fallback!r} instead (set FASTCONV_CACHE_DIR to choose)",
                  RuntimeWarning, stacklevel=2)
    os.makedirs(fallback, exist_ok=True)
    return fallback


CACHE_DIR = _choose_cache_dir()
_numba_config.CACHE_DIR = CACHE_DIR
# Numba's workqueue layer aborts on concurrent calls from several Python threads;
# prefer OpenMP (always present with GCC's libgomp here), then TBB.
_numba_config.THREADING_LAYER_PRIORITY = ["omp", "tbb", "workqueue"]

# -- Compile flags -----------------------------------------------------------------

#: flags of every fastconv kernel: cached on disk, no GIL, no bounds checks (the
#: wrappers validate), no division-by-zero checks in loops. No fastmath here: pooling
#: must see NaN; kernels that may reassociate ask for it themselves.
JIT_FLAGS = dict(cache=True, nogil=True, boundscheck=False, error_model="numpy")


def jit(**extra):
    """``numba.njit`` with fastconv's flags (see ``JIT_FLAGS``)."""
    return numba.njit(**{**JIT_FLAGS, **extra})


# -- Workspace bound for im2col ------------------------------------------------------

_workspace_bytes = 64 * 2**20


def set_workspace_limit(nbytes):
    """Bound, in bytes, of the im2col workspace (default 64 MiB). The batch (or, for a
    single large image, its output rows) is processed in tiles that fit."""
    if not isinstance(nbytes, int) or nbytes < 1:
        raise ValueError(f"workspace limit must be a positive int of bytes, got {nbytes!r}")
    global _workspace_bytes
    _workspace_bytes = nbytes


def get_workspace_limit():
    """The im2col workspace bound in bytes."""
    return _workspace_bytes


_local = threading.local()


def workspace(slot, size, dtype):
    """A flat scratch array of at least ``size`` elements, reused across calls.

    Kept per Python thread (concurrent calls never share one) and per ``slot`` name,
    and grown when too small, so a kernel called again on the same shapes touches
    no fresh memory (fresh pages cost a page fault each on first touch). Each slot
    keeps the largest size asked of it until :func:`release_workspace`."""
    buffers = _local.__dict__.setdefault("buffers", {})
    key = (slot, np.dtype(dtype))
    buf = buffers.get(key)
    if buf is None or buf.size < size:
        buf = buffers[key] = np.empty(size, dtype)
    return buf[:size]


def workspace_array(slot, shape, dtype):
    """A C-contiguous array of ``shape`` on the calling thread's :func:`workspace`."""
    return workspace(slot, int(np.prod(shape)), dtype).reshape(shape)


def release_workspace():
    """Free the calling thread's reusable kernel workspace (see :func:`workspace`)."""
    _local.__dict__.pop("buffers", None)


# -- Threads -------------------------------------------------------------------------


def set_num_threads(n):
    """Use ``n`` threads in the Numba kernels and in BLAS (through threadpoolctl).

    Kernels that call BLAS from inside a parallel region hold it at one thread there
    (:func:`single_threaded_blas`), so the two never multiply.
    ``n`` can be at most the number of threads Numba started with
    (``NUMBA_NUM_THREADS``, fixed when Numba is imported). As in Numba, the setting
    is per Python thread.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"set_num_threads: n must be a positive int, got {n!r}")
    if n > _numba_config.NUMBA_NUM_THREADS:
        raise ValueError(
            f"set_num_threads: n={n} exceeds NUMBA_NUM_THREADS="
            f"{_numba_config.NUMBA_NUM_THREADS}; set that environment variable before "
            f"importing fastconv to allow more")
    numba.set_num_threads(n)
    threadpool_limits(limits=n)


def get_num_threads():
    """The number of threads the kernels use."""
    return numba.get_num_threads()


@contextlib.contextmanager
def one_thread(on=True):
    """Numba's parallel regions on the calling thread alone inside the block (when
    ``on``; this thread's setting only), for work too small to pay for waking the
    OpenMP workers: about 45 us on 2 threads here."""
    threads = numba.get_num_threads()
    if on and threads > 1:
        numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(threads)


# -- BLAS called from every thread of a parallel kernel ------------------------------

_blas_lock = threading.Lock()
_blas_users = 0
_blas_saved = []
_blas_libs = None


@contextlib.contextmanager
def single_threaded_blas():
    """BLAS at one thread inside the block, for kernels that call BLAS (Numba's
    ``np.dot``, through SciPy) from each thread of a Numba parallel region: BLAS's
    own threads would multiply with Numba's. Safe from several Python threads at
    once: the first in sets one thread, the last out restores the user's setting."""
    global _blas_users, _blas_saved, _blas_libs
    with _blas_lock:
        if _blas_libs is None:
            import scipy.linalg.cython_blas  # noqa: F401  (the BLAS Numba calls)
            _blas_libs = [lib for lib in ThreadpoolController().lib_controllers
                          if lib.user_api == "blas"]
        if _blas_users == 0:
            _blas_saved = [lib.get_num_threads() for lib in _blas_libs]
            for lib, n in zip(_blas_libs, _blas_saved):
                if n != 1:
                    lib.set_num_threads(1)
        _blas_users += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_users -= 1
            if _blas_users == 0:
                for lib, n in zip(_blas_libs, _blas_saved):
                    if n != 1:
                        lib.set_num_threads(n)
