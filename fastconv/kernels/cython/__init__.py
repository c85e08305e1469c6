"""The Cython backend: kernels compiled ahead of time, when fastconv is installed.

This file is the backend's manifest, as ``kernels/numba/__init__.py`` is Numba's: the
kernels it provides, whether it can run here, and how to load one. Importing it never
fails: without the compiled extensions (a source tree used in place, a build without a
C compiler) ``available()`` says why, and the registry leaves the backend out.

The hot loops are compiled once per instruction set and chosen at import
(``_isa.py``): :data:`ISA` names the variant that runs (``baseline``, ``avx2``,
``avx512``, or ``native`` for a ``FASTCONV_NATIVE=1`` build); ``FASTCONV_ISA`` forces
a lower one. Build, variants and settings: ``docs/cython.md``.
"""
import importlib

NAME = "cython"

#: (op, algorithm) -> (module, function) of the kernel that runs that op's plans; the
#: names match the Numba backend's
KERNELS = {
    ("conv2d", "im2col"): ("im2col", "conv2d"),
    ("conv2d_input", "im2col"): ("im2col", "conv2d_input"),
    ("conv2d_weight", "im2col"): ("im2col", "conv2d_weight"),
    ("max_pool2d", "direct"): ("pool", "max_pool2d"),
    ("max_pool2d_backward", "direct"): ("pool", "max_pool2d_backward"),
    ("avg_pool2d", "direct"): ("pool", "avg_pool2d"),
    ("avg_pool2d_backward", "direct"): ("pool", "avg_pool2d_backward"),
    ("adaptive_avg_pool2d", "direct"): ("pool", "adaptive_avg_pool2d"),
}


def available():
    """None when this backend can run here, else the reason it cannot."""
    try:
        importlib.import_module(f"{__name__}._isa")
    except ImportError as exc:
        return (f"not built: install from source with a C compiler "
                f"(pip install . compiles it; {exc})")
    return None


def load(op, algorithm):
    """The kernel for (op, algorithm): ``kernel(plan, *args)``, its module imported on
    first use."""
    module, name = KERNELS[(op, algorithm)]
    fn = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    if module == "im2col":
        _blas_threads()
    return fn


def boundscheck():
    """Whether the kernel modules were compiled with bounds checks (a
    ``FASTCONV_CYTHON_BOUNDSCHECK=1`` build, for tests): asked of the compiled code
    itself, which raises IndexError for an index past a view's end only when checked."""
    return all(importlib.import_module(f"{__name__}.{m}")._boundscheck_on()
               for m in ("im2col", "pool"))


def _blas_threads():
    """The im2col module loads SciPy's BLAS: put its thread count in step with a
    ``fastconv.set_num_threads`` made before it was loaded."""
    from ... import _config
    n = getattr(_config._threads, "n", None)
    if n is not None:
        from threadpoolctl import threadpool_limits
        threadpool_limits(limits=n, user_api="blas")


def __getattr__(name):
    """``ISA`` (the variant that runs), ``BUILT`` (the variants in this build) and
    ``SUPPORTED`` (those this CPU runs), from ``_isa`` on first use."""
    if name in ("ISA", "BUILT", "SUPPORTED"):
        return getattr(importlib.import_module(f"{__name__}._isa"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
