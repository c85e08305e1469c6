# cython: language_level=3
"""The fused epilogue's arithmetic (``fastconv.kernels.epilogue``) where a module applies
it in a pass of its own, after the stores: ``im2col`` on a tile just written,
``winograd`` on the rows of a batch of tile rows."""
from ._hot cimport real


cdef inline real _act(real v, int act) noexcept nogil:
    """``v`` through activation ``act`` (0 none, 1 relu, 2 relu6) as selects (no
    branches: the loops vectorise); comparisons keep NaN."""
    if act != 0:
        v = 0 if v < 0 else v
    if act == 2:
        v = 6 if v > 6 else v
    return v


cdef inline void _epilogue_run(real *o, const real *r, real b, int act,
                               Py_ssize_t L) noexcept nogil:
    """o[:L] = act(o[:L] + b + r[:L]) (r NULL: no residual), one channel's run."""
    cdef Py_ssize_t i
    if r != NULL:
        for i in range(L):
            o[i] = _act((o[i] + b) + r[i], act)
    else:
        for i in range(L):
            o[i] = _act(o[i] + b, act)
