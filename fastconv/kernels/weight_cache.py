"""A small cache of arrays derived from weights (re-layouts, transformed filters),
shared by the kernels, for layers that call with the same weight again (inference, a
benchmark loop). Never at the cost of a wrong answer: a hit requires the weight to be
bitwise equal to a copy taken when the entry was built."""
import ctypes
import threading
from collections import OrderedDict

import numpy as np

try:                                   # C's memcmp: stops at the first difference
    _memcmp = ctypes.CDLL(None).memcmp
    _memcmp.restype, _memcmp.argtypes = ctypes.c_int, [ctypes.c_void_p, ctypes.c_void_p,
                                                       ctypes.c_size_t]
except (OSError, AttributeError, TypeError):   # no C library handle (Windows)
    _memcmp = None


def bitwise_equal(a, b):
    """Whether arrays ``a`` and ``b`` of one shape and dtype hold the same bits (NaN ==
    NaN, -0 != 0). memcmp when both are C-contiguous: faster than ``np.array_equal``,
    and it stops at the first difference."""
    if _memcmp is not None and a.flags.c_contiguous and b.flags.c_contiguous:
        return _memcmp(a.ctypes.data, b.ctypes.data, a.nbytes) == 0
    bits = np.dtype(f"u{a.itemsize}")
    return bool(np.array_equal(a.view(bits), b.view(bits)))


class WeightCache:
    """Derived arrays of recently used weights. Key: (address, shape, strides, dtype,
    kind). A hit requires the weight to be bitwise equal to the copy taken when the
    entry was built, so in-place updates and reused addresses are always detected.
    Holds at most ``size`` entries and ``max_bytes`` bytes (copies included)."""

    def __init__(self, size=8, max_bytes=512 * 2**20):
        self.size, self.max_bytes = size, max_bytes
        self.entries = OrderedDict()
        self.lock = threading.Lock()

    def get(self, w, kind, build):
        """``build()``'s result for weight ``w`` and tag ``kind``, cached."""
        derived, check = self.get_unchecked(w, kind, build)
        return derived if check is None or check() else self.put(w, kind, build())

    def get_unchecked(self, w, kind, build):
        """(derived, check) for weight ``w`` and tag ``kind``: a cached entry and the
        function that says whether it is still valid (``w`` bitwise equal to the copy),
        which the caller must call before using the entry's results (it may run it while
        other threads already compute with the entry); or ``build()``'s result, stored,
        and None."""
        key = self._key(w, kind)
        with self.lock:
            hit = self.entries.get(key)
            if hit is not None:
                self.entries.move_to_end(key)
        if hit is None:
            return self.put(w, kind, build()), None
        copy, derived = hit
        return derived, lambda: bitwise_equal(copy, w)

    def put(self, w, kind, derived):
        """Store ``derived`` for weight ``w`` (a copy of it is taken) and tag ``kind``."""
        key = self._key(w, kind)
        with self.lock:
            self.entries[key] = (w.copy(), derived)
            self.entries.move_to_end(key)
            while len(self.entries) > 1 and (
                    len(self.entries) > self.size or self._nbytes() > self.max_bytes):
                self.entries.popitem(last=False)
        return derived

    @staticmethod
    def _key(w, kind):
        return (w.__array_interface__["data"][0], w.shape, w.strides, w.dtype.str, kind)

    def _nbytes(self):
        return sum(c.nbytes + d.nbytes for c, d in self.entries.values())
