"""The registry of kernels, built from the backends' manifests.

Each backend package under ``fastconv/kernels/`` declares, in its ``__init__``, the
kernels it provides (``KERNELS``: (op, algorithm) -> where the kernel lives), whether
it can run here (``available()``), and how to load one (``load(op, algorithm)``). Its
manifest imports nothing heavy: a backend's modules (Numba's JIT included) load with
its first kernel. The reference (plain NumPy, the specification) is the built-in
backend ``"numpy"``.

Every kernel takes ``(plan, *arrays_and_geometry)``, with the op's arguments:

    conv2d               (plan, x, w, p: ConvParams, out, epilogue=None)  (kernels.epilogue)
    conv2d_input         (plan, dy, w, p: ConvParams, out)
    conv2d_weight        (plan, x, dy, p: ConvParams, out)
    max_pool2d           (plan, x, p: PoolParams, out, indices)
    max_pool2d_backward  (plan, dy, indices, p: PoolParams, out)
    avg_pool2d           (plan, x, p: PoolParams, count_include_pad, divisor_override, out)
    avg_pool2d_backward  (plan, dy, p: PoolParams, count_include_pad, divisor_override, out)
    adaptive_avg_pool2d  (plan, x, h_windows, w_windows, out)

Tests and benchmarks loop over this registry: a kernel registered is a kernel tested.
"""
import importlib

from . import reference

#: backends in the order ``backend="auto"`` prefers them (the first installed one with
#: a kernel for the op and algorithm)
PREFERENCE = ("numba", "cython")

OPS = ("conv2d", "conv2d_input", "conv2d_weight", "max_pool2d", "max_pool2d_backward",
       "avg_pool2d", "avg_pool2d_backward", "adaptive_avg_pool2d")


def _manifests():
    """name -> manifest module of every backend package that exists."""
    found = {}
    for name in PREFERENCE:
        try:
            found[name] = importlib.import_module(f"fastconv.kernels.{name}")
        except ImportError:
            continue
    return found


_MANIFESTS = _manifests()
_WHY_NOT = {name: m.available() for name, m in _MANIFESTS.items()}


def available_backends():
    """The backends that can run here, reference (``"numpy"``) last."""
    return tuple(n for n in PREFERENCE if n in _MANIFESTS and _WHY_NOT[n] is None) + ("numpy",)


def missing_reason(backend):
    """Why ``backend`` is not available, as a sentence to append to an error."""
    if backend in _WHY_NOT and _WHY_NOT[backend]:
        return f"; {backend}: {_WHY_NOT[backend]}"
    if backend not in _MANIFESTS and backend in PREFERENCE:
        return f"; {backend}: not built in this installation"
    return ""


def default_backend():
    """The process default for ``backend=``: ``"auto"``."""
    return "auto"


#: (op, algorithm, backend) of every kernel of the available backends
REGISTRY = tuple(
    [(op, "reference", "numpy") for op in OPS]
    + [(op, algorithm, name) for name in available_backends() if name != "numpy"
       for op, algorithm in _MANIFESTS[name].KERNELS])

_PAIRS = {op: tuple((a, b) for o, a, b in REGISTRY if o == op) for op in OPS}


def pairs(op):
    """The registered (algorithm, backend) pairs of ``op``."""
    return _PAIRS[op]


def algorithms(op):
    """The registered ``(algorithm, backend)`` pairs for ``op``, e.g.
    ``fastconv.algorithms("conv2d")`` -> ``[('reference', 'numpy'), ('im2col', 'numba'), ...]``.
    Every pair is accepted by the op's ``algorithm=`` and ``backend=`` arguments."""
    if op not in _PAIRS:
        raise ValueError(f"algorithms: unknown op {op!r}; ops are {', '.join(OPS)}")
    return list(_PAIRS[op])


def _reference(op):
    fn = getattr(reference, op)

    def kernel(plan, *args):
        fn(*args)
    return kernel


_loaded = {}


def kernel(op, algorithm, backend):
    """The kernel of (op, algorithm, backend), loading its backend's module on first use."""
    key = (op, algorithm, backend)
    fn = _loaded.get(key)
    if fn is None:
        if key not in REGISTRY:
            raise ValueError(f"{op}: no kernel for algorithm={algorithm!r}, "
                             f"backend={backend!r}")
        fn = _loaded[key] = (_reference(op) if backend == "numpy"
                             else _MANIFESTS[backend].load(op, algorithm))
    return fn
