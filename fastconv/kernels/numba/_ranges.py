"""Index arithmetic shared by the Numba kernels."""
from ._jit import jit


@jit(inline="always")
def valid_range(n, size, step, off):
    """``[lo, hi)``: the indices j in [0, n) whose position ``j*step + off`` lies in
    [0, size) (output columns of a kernel tap, taps of a pooling window, ...)."""
    lo = 0 if off >= 0 else (-off + step - 1) // step
    hi = 0 if size - 1 - off < 0 else min(n, (size - 1 - off) // step + 1)
    return lo, max(lo, hi)
