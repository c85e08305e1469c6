"""The registry of kernels and the one place that picks one.

``REGISTRY[(op, algorithm, backend)]`` is a kernel with the op's signature (the same
for every algorithm, see ``fastconv.reference`` for the specification of each):

    conv2d               (x, w, p: ConvParams, out)
    conv2d_input         (dy, w, p: ConvParams, out)
    conv2d_weight        (x, dy, p: ConvParams, out)
    max_pool2d           (x, p: PoolParams, out, indices)
    max_pool2d_backward  (dy, indices, p: PoolParams, out)
    avg_pool2d           (x, p: PoolParams, count_include_pad, divisor_override, out)
    avg_pool2d_backward  (dy, p: PoolParams, count_include_pad, divisor_override, out)
    adaptive_avg_pool2d  (x, h_windows, w_windows, out)

``SUPPORTS[(algorithm, backend)]``, where present, says which geometries an algorithm
handles (e.g. Winograd: 3x3, stride 1, dilation 1, groups 1); algorithms without an
entry handle every valid geometry.

Tests and benchmarks loop over this registry: a kernel registered is a kernel tested.
"""
from . import reference
from .kernels.numba import im2col as nb_im2col
from .kernels.numba import pool as nb_pool
from .kernels.numba import winograd as nb_winograd

REGISTRY = {
    ("conv2d", "reference", "numpy"): reference.conv2d,
    ("conv2d_input", "reference", "numpy"): reference.conv2d_input,
    ("conv2d_weight", "reference", "numpy"): reference.conv2d_weight,
    ("max_pool2d", "reference", "numpy"): reference.max_pool2d,
    ("max_pool2d_backward", "reference", "numpy"): reference.max_pool2d_backward,
    ("avg_pool2d", "reference", "numpy"): reference.avg_pool2d,
    ("avg_pool2d_backward", "reference", "numpy"): reference.avg_pool2d_backward,
    ("adaptive_avg_pool2d", "reference", "numpy"): reference.adaptive_avg_pool2d,
    ("conv2d", "im2col", "numba"): nb_im2col.conv2d,
    ("conv2d_input", "im2col", "numba"): nb_im2col.conv2d_input,
    ("conv2d_weight", "im2col", "numba"): nb_im2col.conv2d_weight,
    ("max_pool2d", "direct", "numba"): nb_pool.max_pool2d,
    ("max_pool2d_backward", "direct", "numba"): nb_pool.max_pool2d_backward,
    ("avg_pool2d", "direct", "numba"): nb_pool.avg_pool2d,
    ("avg_pool2d_backward", "direct", "numba"): nb_pool.avg_pool2d_backward,
    ("adaptive_avg_pool2d", "direct", "numba"): nb_pool.adaptive_avg_pool2d,
    ("conv2d", "winograd_f2", "numba"): nb_winograd.conv2d_f2,
    ("conv2d_input", "winograd_f2", "numba"): nb_winograd.conv2d_input_f2,
    ("conv2d", "winograd_f4", "numba"): nb_winograd.conv2d_f4,
    ("conv2d_input", "winograd_f4", "numba"): nb_winograd.conv2d_input_f4,
}

SUPPORTS = {
    ("winograd_f2", "numba"): nb_winograd.supports,
    ("winograd_f4", "numba"): nb_winograd.supports,
}

OPS = tuple(dict.fromkeys(op for op, _, _ in REGISTRY))


def algorithms(op):
    """The registered ``(algorithm, backend)`` pairs for ``op``, e.g.
    ``fastconv.algorithms("conv2d")`` -> ``[('reference', 'numpy'), ('im2col', 'numba')]``.
    Every pair is accepted by the op's ``algorithm=`` and ``backend=`` arguments."""
    if op not in OPS:
        raise ValueError(f"algorithms: unknown op {op!r}; ops are {', '.join(OPS)}")
    return [(a, b) for o, a, b in REGISTRY if o == op]


def supports(algorithm, backend, p):
    """Whether ``(algorithm, backend)`` handles the geometry ``p``."""
    rule = SUPPORTS.get((algorithm, backend))
    return rule is None or rule(p)


def _auto(op, p):
    """The selection rules: the algorithm ``auto`` runs for this geometry."""
    if op.startswith("conv2d"):
        return "im2col"
    return "direct"


def select(op, algorithm, backend, p):
    """The kernel for ``op`` given the user's ``algorithm=``/``backend=`` and the
    geometry ``p``. ``"auto"`` for either lets the rules choose."""
    pairs = algorithms(op)
    if algorithm == "auto":
        preferred = _auto(op, p)
        candidates = [(a, b) for a, b in pairs
                      if backend in ("auto", b) and supports(a, b, p)]
        candidates.sort(key=lambda ab: (ab[0] != preferred, ab[0] == "reference"))
    else:
        candidates = [(a, b) for a, b in pairs if a == algorithm and backend in ("auto", b)]
    if not candidates:
        valid = ", ".join(f"(algorithm={a!r}, backend={b!r})" for a, b in pairs)
        raise ValueError(
            f"{op}: no kernel for algorithm={algorithm!r}, backend={backend!r}; "
            f"registered: {valid}, and 'auto' for either")
    algorithm, backend = candidates[0]
    if not supports(algorithm, backend, p):
        raise ValueError(
            f"{op}: algorithm={algorithm!r} (backend={backend!r}) does not handle this "
            f"geometry: {p}; {SUPPORTS[(algorithm, backend)].__doc__}")
    return REGISTRY[(op, algorithm, backend)]
