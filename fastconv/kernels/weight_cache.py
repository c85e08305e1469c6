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
    NaN, -0 != 0). memcmp when both are C-contiguous: 2.4x faster than
    ``np.array_equal`` on a 9.4 MB weight, and it stops at the first difference."""
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
        key = (w.__array_interface__["data"][0], w.shape, w.strides, w.dtype.str, kind)
        with self.lock:
            hit = self.entries.get(key)
        if hit is not None:
            copy, derived = hit
            if bitwise_equal(copy, w):
                with self.lock:
                    self.entries.move_to_end(key)
                return derived
        derived = build()
        with self.lock:
            self.entries[key] = (w.copy(), derived)
            self.entries.move_to_end(key)
            while len(self.entries) > 1 and (
                    len(self.entries) > self.size or self._nbytes() > self.max_bytes):
                self.entries.popitem(last=False)
        return derived

    def _nbytes(self):
        return sum(c.nbytes + d.nbytes for c, d in self.entries.values())
