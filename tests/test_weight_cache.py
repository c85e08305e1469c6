"""The weight cache's bitwise comparison and its hit/miss behaviour."""
import numpy as np
import pytest

from fastconv.kernels import weight_cache
from fastconv.kernels.weight_cache import WeightCache, bitwise_equal


@pytest.mark.parametrize("fast", [True, False])
def test_bitwise_equal(fast, monkeypatch):
    """Same bits only: NaN equals NaN, -0 differs from 0, a change in the last element is
    seen; memcmp and the NumPy fallback agree (also on non-contiguous arrays)."""
    if not fast:
        monkeypatch.setattr(weight_cache, "_memcmp", None)
    a = np.random.default_rng(0).standard_normal((64, 32, 3, 3)).astype(np.float32)
    a[1, 2, 0, 0] = np.nan
    b = a.copy()
    assert bitwise_equal(a, b)
    b[-1, -1, -1, -1] = np.nextafter(b[-1, -1, -1, -1], np.float32(np.inf))
    assert not bitwise_equal(a, b)
    z, nz = np.zeros(3), np.zeros(3)
    nz[1] = -0.0
    assert not bitwise_equal(z, nz)
    assert bitwise_equal(a[:, ::2], a[:, ::2].copy())
    assert not bitwise_equal(a[:, 1::2], b[:, 1::2])          # the changed element is in


def test_hit_and_in_place_miss():
    cache, builds = WeightCache(), []
    w = np.ones((4, 4), np.float32)

    def build():
        builds.append(w.sum())
        return w * 2

    first = cache.get(w, "k", build)
    assert cache.get(w, "k", build) is first and len(builds) == 1
    w[3, 3] = 5                                   # same array, new contents: rebuilt
    assert cache.get(w, "k", build)[3, 3] == 10 and len(builds) == 2
