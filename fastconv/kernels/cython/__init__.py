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
import importlib.util

NAME = "cython"

#: (op, algorithm) -> (module, function) of the kernel that runs that op's plans; the
#: names match the Numba backend's
KERNELS = {
    ("conv2d", "im2col"): ("im2col", "conv2d"),
    ("conv2d_input", "im2col"): ("im2col", "conv2d_input"),
    ("conv2d_weight", "im2col"): ("im2col", "conv2d_weight"),
    ("conv2d", "winograd_f2"): ("winograd", "conv2d"),
    ("conv2d_input", "winograd_f2"): ("winograd", "conv2d_input"),
    ("conv2d_weight", "winograd_f2"): ("winograd", "conv2d_weight"),
    ("conv2d", "winograd_f4"): ("winograd", "conv2d"),
    ("conv2d_input", "winograd_f4"): ("winograd", "conv2d_input"),
    ("conv2d_weight", "winograd_f4"): ("winograd", "conv2d_weight"),
    ("conv2d", "direct"): ("direct", "conv2d"),
    ("conv2d_input", "direct"): ("direct", "conv2d_input"),
    ("conv2d_weight", "direct"): ("direct", "conv2d_weight"),
    ("max_pool2d", "direct"): ("pool", "max_pool2d"),
    ("max_pool2d_backward", "direct"): ("pool", "max_pool2d_backward"),
    ("avg_pool2d", "direct"): ("pool", "avg_pool2d"),
    ("avg_pool2d_backward", "direct"): ("pool", "avg_pool2d_backward"),
    ("adaptive_avg_pool2d", "direct"): ("pool", "adaptive_avg_pool2d"),
    ("inverted_residual", "direct"): ("direct", "inverted_residual"),
}

#: (op, algorithm) -> the variants this backend runs, where it runs fewer than the
#: selector makes for Numba (``fastconv._plan`` chooses only among these for it)
VARIANTS = {
    (op, algorithm): variants
    for algorithm in ("winograd_f2", "winograd_f4")
    for op, variants in (("conv2d", ("fused", "split", "unfused", "unfused_blas", "streamed")),
                         ("conv2d_input", ("fused", "split", "unfused", "unfused_blas",
                                           "streamed")),
                         ("conv2d_weight", ("fused", "unfused")))
}
# direct: the forward cores ``lanes`` (output channels in the vector lanes, every
# geometry and both dtypes, standing in for Numba's ``row``), ``lanes_streamed`` (the
# same core, each work item laying out its block of a large weight itself) and ``flat``
# (pixels in the lanes); ``pointwise`` (1x1 stride 1: im2col's 1x1 kernel,
# ``pointwise_panel``, whose GEMM it is); and the channels-last ``depthwise_nhwc``
VARIANTS.update({
    ("conv2d", "direct"): ("lanes", "lanes_streamed", "flat", "pointwise", "depthwise",
                           "depthwise_nhwc"),
    ("conv2d_input", "direct"): ("lanes", "lanes_streamed", "flat", "phases", "depthwise",
                                 "depthwise_scatter"),
    ("conv2d_weight", "direct"): ("blocked", "depthwise"),
})


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
    if module in _BLAS_MODULES:
        _load_cython_blas()
    fn = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    if module in _BLAS_MODULES:
        _blas_threads()
    return fn


def bind(op, algorithm):
    """The bound form of (op, algorithm)'s kernel, where its module has one (its
    ``bind_<kernel>``: ``bind(plan, w, p, epilogue)`` -> ``run(x, out, residual)`` or
    None, ``functional._Conv2dCall.bind``; ``bind(plan, weights, biases, p, act)`` ->
    ``run(x, out)`` for ``inverted_residual``, ``functional._BlockCall.bind``), else
    None. Call after :func:`load`."""
    module, name = KERNELS[(op, algorithm)]
    return getattr(importlib.import_module(f"{__name__}.{module}"), f"bind_{name}", None)


#: the modules that call BLAS (SciPy's ``cython_blas``)
_BLAS_MODULES = ("im2col", "winograd")


def _load_cython_blas():
    """Load ``scipy.linalg.cython_blas`` (the BLAS the modules call) without SciPy's
    ``scipy.linalg`` package, whose Python modules take most of a cold start's time
    (docs/cython.md, "Cold start"): the extension alone, registered under its name, so
    the modules' import of it finds it. A later ``import scipy.linalg`` runs as usual
    and gets this same module as its ``cython_blas`` attribute (:class:`_LinalgFinder`).
    Falls back to the ordinary import on any surprise."""
    import sys
    name = "scipy.linalg.cython_blas"
    if name in sys.modules or "scipy.linalg" in sys.modules:
        return
    try:
        import importlib.machinery
        import importlib.util
        import os
        spec = importlib.util.find_spec("scipy")
        folder = os.path.join(os.path.dirname(spec.origin), "linalg")
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = os.path.join(folder, "cython_blas" + suffix)
            if os.path.exists(path):
                break
        else:
            return
        blas = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(blas)
        sys.modules[name] = module
        try:
            blas.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
        sys.meta_path.insert(0, _LinalgFinder)
    except Exception:  # noqa: BLE001 - the ordinary import (by the module) still works
        return


class _LinalgFinder:
    """Once, when ``scipy.linalg`` is imported after :func:`_load_cython_blas`: the
    package imported as usual, then given its ``cython_blas`` attribute (which the
    import system sets only on a parent already imported)."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        import sys
        if name != "scipy.linalg":
            return None
        sys.meta_path.remove(_LinalgFinder)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _WithBlas(spec.loader)
        return spec


class _WithBlas:
    """A loader that runs ``loader`` and sets ``module.cython_blas``."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        import sys
        self.loader.exec_module(module)
        if "scipy.linalg.cython_blas" in sys.modules:
            module.cython_blas = sys.modules["scipy.linalg.cython_blas"]

    def __getattr__(self, name):
        return getattr(self.loader, name)


def boundscheck():
    """Whether the kernel modules were compiled with bounds checks (a
    ``FASTCONV_CYTHON_BOUNDSCHECK=1`` build, for tests, which checks every module or
    none): asked of the compiled code itself, which raises IndexError for an index past
    a view's end only when checked."""
    return importlib.import_module(f"{__name__}._cpu").boundscheck_on()


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
