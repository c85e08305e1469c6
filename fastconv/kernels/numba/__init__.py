"""The Numba backend: kernels JIT-compiled by Numba (cached on disk).

This file is the backend's manifest: it says which kernels the backend provides and
loads them on demand. Importing it does not import Numba; the first kernel that is
needed does (with Numba's settings, ``_jit.py``).
"""
import importlib
import importlib.util

NAME = "numba"

#: (op, algorithm) -> (module, function) of the kernel that runs that op's plans
KERNELS = {
    ("conv2d", "im2col"): ("im2col", "conv2d"),
    ("conv2d_input", "im2col"): ("im2col", "conv2d_input"),
    ("conv2d_weight", "im2col"): ("im2col", "conv2d_weight"),
    ("conv2d", "direct"): ("direct", "conv2d"),
    ("conv2d_input", "direct"): ("direct", "conv2d_input"),
    ("conv2d_weight", "direct"): ("direct", "conv2d_weight"),
    ("conv2d", "winograd_f2"): ("winograd", "conv2d"),
    ("conv2d_input", "winograd_f2"): ("winograd", "conv2d_input"),
    ("conv2d_weight", "winograd_f2"): ("winograd", "conv2d_weight"),
    ("conv2d", "winograd_f4"): ("winograd", "conv2d"),
    ("conv2d_input", "winograd_f4"): ("winograd", "conv2d_input"),
    ("conv2d_weight", "winograd_f4"): ("winograd", "conv2d_weight"),
    ("max_pool2d", "direct"): ("pool", "max_pool2d"),
    ("max_pool2d_backward", "direct"): ("pool", "max_pool2d_backward"),
    ("avg_pool2d", "direct"): ("pool", "avg_pool2d"),
    ("avg_pool2d_backward", "direct"): ("pool", "avg_pool2d_backward"),
    ("adaptive_avg_pool2d", "direct"): ("pool", "adaptive_avg_pool2d"),
    ("inverted_residual", "direct"): ("direct", "inverted_residual"),
}


def available():
    """None when this backend can run here, else the reason it cannot."""
    if importlib.util.find_spec("numba") is None:
        return "Numba is not installed (pip install numba)"
    return None


def load(op, algorithm):
    """The kernel for (op, algorithm): ``kernel(plan, *args)``. Imports Numba and the
    kernel's module on first use; each call first puts Numba's thread count in step
    with ``fastconv.set_num_threads`` (a per-thread setting in both)."""
    module, name = KERNELS[(op, algorithm)]
    from ._jit import sync_threads
    fn = getattr(importlib.import_module(f"{__name__}.{module}"), name)

    def kernel(plan, *args):
        sync_threads()
        fn(plan, *args)

    kernel.__name__ = kernel.__qualname__ = f"{module}.{name}"
    kernel.__wrapped__ = fn
    return kernel
