"""Run-time settings that every backend shares: threads, the cache directory, the
workspace bound and the per-thread scratch arrays, and BLAS held at one thread.

Nothing here imports Numba: ``import fastconv`` stays light, and a backend's own
settings (Numba's JIT flags, cache and threading layer: ``kernels/numba/_jit.py``) load
with its first kernel.
"""
import contextlib
import ctypes
import math
import os
import sys
import tempfile
import threading
import warnings

# Idle OpenMP workers spin briefly, then sleep: GNU OpenMP's 10,000 polls (0.15-0.5 ms
# of CPU measured on the Intel Xeon `rocketlake`) cover the gap between two layers, so the next
# layer's parallel region does not pay a futex wake-up per worker (tens of microseconds
# on a VM, more than some layers take), yet a worker never holds a core for long. The
# Cython backend's GEMMs run as single-threaded BLAS calls on OpenMP's threads, so no
# BLAS worker of theirs waits for a core a polling worker holds (docs/settings.md).
# Read when the OpenMP runtime starts, so before the first parallel call; a user's
# own OMP_WAIT_POLICY or GOMP_SPINCOUNT wins.
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["GOMP_SPINCOUNT"] = "10000"
# Likewise OpenBLAS's workers spin for about 0.1 s after each GEMM by default, slowing
# the kernel that follows; 2^20 cycles still cover the gaps between one layer's GEMMs.
# OpenBLAS reads it when it loads; one loaded before (NumPy imported first) is told at
# the end of this module (_shorten_openblas_spin).
_OPENBLAS_LOADED_FIRST = ("OPENBLAS_THREAD_TIMEOUT" not in os.environ
                          and "numpy" in sys.modules)
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "20")

import numpy as np  # noqa: E402

# -- Cache directory (the JIT cache, autotune results) --------------------------------


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


#: bytes every array fastconv allocates for its kernels is aligned to: a cache line, so
#: 512-bit loads and stores of vectors at multiples of 16 floats never split two lines
ALIGN = 64


# address(a): the address of array a's first element, as an int. The Cython backend's
# buffer read where it is built (a fraction of ctypes' cost; loaded after the OpenMP
# settings above, which its OpenMP runtime reads when it loads), else NumPy's
try:
    from .kernels.cython.layout import address
except ImportError:
    def address(a):
        return a.__array_interface__["data"][0]


def empty(shape, dtype):
    """``np.empty(shape, dtype)``, C-contiguous, its data aligned to :data:`ALIGN` bytes
    (NumPy's allocations are aligned to 16 only)."""
    dtype = np.dtype(dtype)
    if dtype.hasobject:                             # not a kernel's: no bytes to align
        return np.empty(shape, dtype)
    shape = tuple(shape) if isinstance(shape, (tuple, list)) else (int(shape),)
    raw = np.empty(math.prod(shape) * dtype.itemsize + ALIGN, np.uint8)
    return np.ndarray(shape, dtype, raw, -address(raw) % ALIGN)


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
        buf = buffers[key] = empty(size, dtype)
    return buf[:size]


def workspace_array(slot, shape, dtype):
    """A C-contiguous array of ``shape`` on the calling thread's :func:`workspace`."""
    return workspace(slot, math.prod(shape), dtype).reshape(shape)


def release_workspace():
    """Free the calling thread's reusable kernel workspace (see :func:`workspace`)."""
    _local.__dict__.pop("buffers", None)


# -- Threads -------------------------------------------------------------------------


def _default_threads():
    """NUMBA_NUM_THREADS if set, else the CPUs this process may run on (Numba's rule)."""
    env = os.environ.get("NUMBA_NUM_THREADS")
    if env:
        return int(env)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:                           # not on Linux
        return os.cpu_count() or 1


#: the most threads a kernel may use, fixed at import (``NUMBA_NUM_THREADS``)
MAX_THREADS = _default_threads()
_threads = threading.local()
#: backends' own thread settings: functions called with n by :func:`set_num_threads`
#: (a backend registers one when it loads)
thread_hooks = []


def set_num_threads(n):
    """Use ``n`` threads in every backend's kernels and in BLAS (through threadpoolctl).

    Kernels that call BLAS from inside a parallel region hold it at one thread there
    (:func:`single_threaded_blas`), so the two never multiply. ``n`` can be at most
    ``NUMBA_NUM_THREADS`` (read when fastconv is imported; default: the CPUs this
    process may use). As in Numba, the setting is per Python thread.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"set_num_threads: n must be a positive int, got {n!r}")
    if n > MAX_THREADS:
        raise ValueError(
            f"set_num_threads: n={n} exceeds NUMBA_NUM_THREADS={MAX_THREADS}; set that "
            f"environment variable before importing fastconv to allow more")
    from threadpoolctl import threadpool_limits
    _threads.n = n
    threadpool_limits(limits=n)
    for hook in thread_hooks:
        hook(n)


def get_num_threads():
    """The number of threads the kernels use (this Python thread's setting)."""
    return getattr(_threads, "n", MAX_THREADS)


# -- BLAS called from every thread of a parallel kernel ------------------------------

_blas_lock = threading.Lock()
_blas_users = 0
_blas_saved = []
_blas_libs = None


@contextlib.contextmanager
def single_threaded_blas():
    """BLAS at one thread inside the block, for kernels that call BLAS (SciPy's, e.g.
    Numba's ``np.dot``) from each thread of a parallel region: BLAS's
    own threads would multiply with Numba's. Safe from several Python threads at
    once: the first in sets one thread, the last out restores the user's setting."""
    global _blas_users, _blas_saved, _blas_libs
    with _blas_lock:
        if _blas_libs is None:
            from threadpoolctl import ThreadpoolController
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


# -- OpenBLAS loaded before fastconv ------------------------------------------------------


def _shorten_openblas_spin():
    """Give OpenBLAS libraries loaded before fastconv (NumPy imported first) the short
    spin of OPENBLAS_THREAD_TIMEOUT, which they read only when they load: each one
    reads its environment again (``openblas_read_env``) and stops its idle workers
    (``blas_thread_shutdown_``, as its own fork handler does), which its next threaded
    call starts again with the new timeout. Without it, a NumPy matmul on 2 threads
    left a worker spinning for 0.1 s into the convolutions after it: ResNet-18 at N = 1
    ran 4.6x slower (AMD EPYC Zen 4, session 36). Libraries without those functions
    are left as they are, and so is every library when fastconv is imported off the
    main thread or another non-daemon Python thread is alive: it could be inside an
    OpenBLAS call, whose workers must not be stopped. (Daemon threads, such as a
    Jupyter kernel's heartbeat and I/O threads, are taken not to call BLAS.)"""
    main = threading.main_thread()
    if threading.current_thread() is not main or any(
            t is not main and not t.daemon and t.is_alive() for t in threading.enumerate()):
        return
    from threadpoolctl import ThreadpoolController
    for lib in ThreadpoolController().lib_controllers:
        if lib.internal_api != "openblas":
            continue
        try:
            dll = ctypes.CDLL(lib.filepath)
            read_env, shutdown = dll.openblas_read_env, dll.blas_thread_shutdown_
        except (OSError, AttributeError):
            continue
        read_env.restype = None
        read_env()
        shutdown()


if _OPENBLAS_LOADED_FIRST:
    _shorten_openblas_spin()
