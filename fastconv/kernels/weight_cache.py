"""What kernels derive from a weight (re-layouts, transformed filters), kept for the
next call with the same weight, two ways:

- **Prepared weights** (:class:`PreparedWeight`, ``fastconv.prepare_weight``): a private
  read-only copy of the weight made once, for weights that do not change between calls
  (inference, as oneDNN, ONNX Runtime and cuDNN prepack constant weights). Whatever a
  kernel derives from it is kept with it, for as long as it lives: no check, no
  eviction, no copy per call.
- **Plain arrays**: :data:`CACHE`, bounded in bytes, keyed by the array's address,
  shape, strides and dtype. A hit requires the weight to be bitwise equal to a copy
  taken when the entry was built (one memcmp of the weight per lookup), so an in-place
  update (an optimiser step) or a reused address never returns a stale layout.
"""
import ctypes
import functools
import threading
import weakref
from collections import OrderedDict

import numpy as np

from .. import _config

try:                                   # C's memcmp: stops at the first difference
    _memcmp = ctypes.CDLL(None).memcmp
    _memcmp.restype, _memcmp.argtypes = ctypes.c_int, [ctypes.c_void_p, ctypes.c_void_p,
                                                       ctypes.c_size_t]
except (OSError, AttributeError, TypeError):   # no C library handle (Windows)
    _memcmp = None


#: weights of at least this many bytes are compared on every thread at once
PARALLEL_BYTES = 1 << 20

# the Cython backend's comparison, where it is built: a fraction of a ctypes call's cost
try:
    from .cython.layout import same_bytes as _same_bytes
except ImportError:
    _same_bytes = None


def bitwise_equal(a, b):
    """Whether arrays ``a`` and ``b`` of one shape and dtype hold the same bits (NaN ==
    NaN, -0 != 0). memcmp when both are C-contiguous (faster than ``np.array_equal``,
    and it stops at the first difference): by the Cython backend's ``same_bytes``,
    from ``PARALLEL_BYTES`` a slice per thread at once (res5's 9.4 MB 3x3 weight on 2
    threads: 0.12 ms against 0.32 in cache, 0.60 against 0.80 from memory; AMD EPYC
    Zen 4), else through ctypes."""
    if a.flags.c_contiguous and b.flags.c_contiguous:
        if _same_bytes is not None:
            return _same_bytes(a, b, _config.get_num_threads()
                               if a.nbytes >= PARALLEL_BYTES else 1)
        if _memcmp is not None:
            return _memcmp(_config.address(a), _config.address(b), a.nbytes) == 0
    bits = np.dtype(f"u{a.itemsize}")
    return bool(np.array_equal(a.view(bits), b.view(bits)))


#: id of a prepared weight's array -> weak reference to its PreparedWeight
_PREPARED = {}


class PreparedWeight:
    """A convolution weight prepared once for many calls.

    Holds a private, read-only, C-contiguous copy of ``weight`` (``.array``); every
    layout or transformed filter a kernel derives from it is kept with it and reused
    without a check, since nothing can change the copy. Pass it wherever
    ``fastconv.conv2d``, ``conv2d_input`` or ``conv_transpose2d`` take a weight. After
    changing the weight, prepare it again.

    Examples
    --------
    >>> pw = fastconv.prepare_weight(w)                      # doctest: +SKIP
    >>> for x in batches:                                     # doctest: +SKIP
    ...     y = fastconv.conv2d(x, pw, padding=1)
    """

    def __init__(self, weight):
        source = np.asarray(weight)
        if source.ndim != 4:
            raise ValueError(f"prepare_weight: expected a weight of shape (K, C/groups, R, S),"
                             f" got shape {source.shape}")
        array = _config.empty(source.shape, source.dtype)     # one copy, cache-line aligned
        array[...] = source
        array.flags.writeable = False
        self.array = array
        self.derived = {}
        #: conv2d's validated calls on this weight, bound to it (``functional.conv2d``)
        self.calls = {}
        key = id(array)
        _PREPARED[key] = weakref.ref(self)
        weakref.finalize(self, _PREPARED.pop, key, None)

    @property
    def shape(self):
        return self.array.shape

    @property
    def dtype(self):
        return self.array.dtype

    @property
    def nbytes(self):
        """Bytes held: the copy and everything derived from it."""
        return self.array.nbytes + sum(d.nbytes for d in self.derived.values())

    def __repr__(self):
        return (f"PreparedWeight(shape={self.array.shape}, dtype={self.array.dtype}, "
                f"derived={len(self.derived)}, nbytes={self.nbytes})")


def prepared(w):
    """The PreparedWeight whose array ``w`` is, or None."""
    ref = _PREPARED.get(id(w))
    pw = ref() if ref is not None else None
    return pw if pw is not None and pw.array is w else None


def _aligned(derived):
    """A C-contiguous array ``derived`` moved to a cache-line-aligned copy
    (``_config.empty``), so the kernels' vector loads of it never split two lines;
    anything else as it is."""
    if (isinstance(derived, np.ndarray) and derived.flags.c_contiguous
            and _config.address(derived) % _config.ALIGN):
        out = _config.empty(derived.shape, derived.dtype)
        out[...] = derived
        return out
    return derived


class WeightCache:
    """Derived arrays of recently used weights. Key: (address, shape, strides, dtype),
    then the kernel's tag. One copy of each weight is kept, taken when its first entry
    was built; a hit requires the weight to be bitwise equal to it. Holds at most
    ``max_bytes`` bytes (copies included), least recently used first out; the derived
    arrays of prepared weights live with them instead."""

    def __init__(self, max_bytes=512 * 2**20):
        self.max_bytes = max_bytes
        self.entries = OrderedDict()          # key -> [copy, {tag: derived}]
        self.lock = threading.Lock()

    def get(self, w, kind, build):
        """``build()``'s result for weight ``w`` and tag ``kind``, cached."""
        derived, copy = self._lookup(w, kind)
        if derived is not None and (copy is None or bitwise_equal(copy, w)):
            return derived
        return self.put(w, kind, build())

    def get_unchecked(self, w, kind, build):
        """(derived, check) for weight ``w`` and tag ``kind``: a cached entry and the
        function that says whether it is still valid (``w`` bitwise equal to the copy),
        which the caller must call before using the entry's results (it may run it while
        other threads already compute with the entry; its ``args`` are the copy and
        ``w``, for a caller that compares them itself); or ``build()``'s result, stored,
        and None. For a prepared weight: its own derived array, and None."""
        derived, copy = self._lookup(w, kind)
        if derived is None:
            return self.put(w, kind, build()), None
        return derived, None if copy is None else functools.partial(bitwise_equal, copy, w)

    def _lookup(self, w, kind):
        """(derived, copy): what is kept for weight ``w`` and tag ``kind`` (None if
        nothing) and the copy of ``w`` it is valid for (None for a prepared weight's)."""
        pw = prepared(w)
        if pw is not None:
            return pw.derived.get(kind), None
        key = self._key(w)
        with self.lock:
            hit = self.entries.get(key)
            if hit is None:
                return None, None
            self.entries.move_to_end(key)
            return hit[1].get(kind), hit[0]

    def put(self, w, kind, derived):
        """Store ``derived`` for weight ``w`` and tag ``kind``. A weight that no longer
        matches its copy starts a new entry (a copy of it is taken). An array is stored
        cache-line aligned (:func:`_aligned`)."""
        derived = _aligned(derived)
        pw = prepared(w)
        if pw is not None:
            pw.derived[kind] = derived
            return derived
        key = self._key(w)
        with self.lock:
            entry = self.entries.get(key)
            if entry is None or not bitwise_equal(entry[0], w):
                entry = self.entries[key] = [w.copy(), {}]
            entry[1][kind] = derived
            self.entries.move_to_end(key)
            while len(self.entries) > 1 and self._nbytes() > self.max_bytes:
                self.entries.popitem(last=False)
        return derived

    def clear(self):
        with self.lock:
            self.entries.clear()

    @staticmethod
    def _key(w):
        return _config.address(w), w.shape, w.strides, w.dtype.str

    def _nbytes(self):
        return sum(c.nbytes + sum(d.nbytes for d in ds.values())
                   for c, ds in self.entries.values())


#: the cache every kernel shares for plain weight arrays
CACHE = WeightCache()
