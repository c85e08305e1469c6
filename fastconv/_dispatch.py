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
    max_pool2d           (plan, x, p: PoolParams, out, indices)  (indices None: values only)
    max_pool2d_backward  (plan, dy, indices, p: PoolParams, out)
    avg_pool2d           (plan, x, p: PoolParams, count_include_pad, divisor_override, out)
    avg_pool2d_backward  (plan, dy, p: PoolParams, count_include_pad, divisor_override, out)
    adaptive_avg_pool2d  (plan, x, h_windows, w_windows, out)
    inverted_residual    (plan, x, weights, biases, p: BlockParams, out, act)
                         weights (expansion or None, depthwise, projection), biases theirs
                         (zero-size when absent), act an activation code (kernels.epilogue)

Tests and benchmarks loop over this registry: a kernel registered is a kernel tested.
"""
import importlib
import os

from . import reference

#: the backend packages under ``fastconv/kernels/``, in the order the registry (and
#: ``fastconv.algorithms``) lists them
PREFERENCE = ("numba", "cython")

#: the order in which ``backend="auto"`` tries the backends, for the algorithm the
#: selector chose: the first available one with a kernel for the op and algorithm.
#: Cython first: its kernels are compiled ahead of time (no JIT stall, Numba never
#: imported for what it has), the choice never depends on what ran before (so
#: repeated calls stay bitwise equal), and it costs nothing per call (plans are
#: memoised). Numba runs the algorithms Cython lacks. docs/cython.md, "Choosing a backend".
AUTO_ORDER = ("cython", "numba")

OPS = ("conv2d", "conv2d_input", "conv2d_weight", "max_pool2d", "max_pool2d_backward",
       "avg_pool2d", "avg_pool2d_backward", "adaptive_avg_pool2d", "inverted_residual")


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


def _check_backend(name, where):
    """``name`` if it is ``"auto"`` or an available backend, else ValueError naming them."""
    if name == "auto" or (isinstance(name, str) and name in available_backends()):
        return name
    raise ValueError(f"{where}: unknown or unavailable backend {name!r}; available: "
                     f"{', '.join(available_backends())}, or 'auto'"
                     + (missing_reason(name) if isinstance(name, str) else ""))


def _env_backend():
    name = os.environ.get("FASTCONV_BACKEND", "").strip().lower()
    return _check_backend(name, "FASTCONV_BACKEND") if name else "auto"


def set_backend(name):
    """Set the process default of every op's ``backend=`` argument.

    Parameters
    ----------
    name : str
        ``"auto"`` (the rule of docs/cython.md: Cython where it has the algorithm,
        else Numba), an available backend (``"cython"``, ``"numba"``) or ``"numpy"``
        (the reference). The environment variable ``FASTCONV_BACKEND`` sets the same
        default when fastconv is imported.

    A call's own ``backend=`` other than ``"auto"`` still wins. With a backend set,
    ``algorithm="auto"`` chooses among that backend's algorithms, and an
    ``algorithm=`` it lacks raises ValueError naming the registered pairs.

    Examples
    --------
    >>> fastconv.set_backend("cython")      # doctest: +SKIP
    >>> fastconv.get_backend()              # doctest: +SKIP
    'cython'
    """
    global _default
    _default = _check_backend(name, "set_backend")


def get_backend():
    """The process default of ``backend=`` (:func:`set_backend`, ``FASTCONV_BACKEND``)."""
    return _default


def default_backend():
    """What ``backend="auto"`` in a call stands for: the process default."""
    return _default


#: (op, algorithm, backend) of every kernel of the available backends
REGISTRY = tuple(
    [(op, "reference", "numpy") for op in OPS]
    + [(op, algorithm, name) for name in available_backends() if name != "numpy"
       for op, algorithm in _MANIFESTS[name].KERNELS])

_default = _env_backend()

_PAIRS = {op: tuple((a, b) for o, a, b in REGISTRY if o == op) for op in OPS}


def pairs(op):
    """The registered (algorithm, backend) pairs of ``op``."""
    return _PAIRS[op]


def variants(op, algorithm, backend):
    """The variants ``backend`` runs of (op, algorithm), from its manifest's ``VARIANTS``;
    None: every variant the selector makes (the Numba backend's set)."""
    manifest = _MANIFESTS.get(backend)
    return None if manifest is None else getattr(manifest, "VARIANTS", {}).get((op, algorithm))


def algorithms(op):
    """The registered ``(algorithm, backend)`` pairs for ``op``, e.g.
    ``fastconv.algorithms("conv2d")`` -> ``[('reference', 'numpy'), ('im2col', 'numba'), ...]``.
    Every pair is accepted by the op's ``algorithm=`` and ``backend=`` arguments."""
    if op not in _PAIRS:
        raise ValueError(f"algorithms: unknown op {op!r}; ops are {', '.join(OPS)}")
    return list(_PAIRS[op])


def binder(op, algorithm, backend):
    """The bound form of the kernel of (op, algorithm, backend), from its manifest's
    ``bind`` (a backend without one has none), or None; ``functional._Conv2dCall.bind``
    uses it. Call after :func:`kernel`."""
    bind = getattr(_MANIFESTS.get(backend), "bind", None)
    return None if bind is None else bind(op, algorithm)


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
