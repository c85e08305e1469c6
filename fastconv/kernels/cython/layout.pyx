# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Layout conversions between NCHW and channels last (``fastconv.to_channels_last`` and
the conversions of calls that compute NCHW), and the weight cache's comparison of a
weight with its copy (:func:`same_bytes`). The conversions: each image's (C, H*W)
matrix transposed to (H*W, C), or back, in tiles of about 4096 elements (64 x 64, or
longer along one axis when the other is short), so that the tile's reads and writes
stay in cache, on OpenMP's threads. Plain loops, no per-instruction-set build. Against NumPy's strided
copy (Intel Xeon ``rocketlake``, 1 thread, float32, session 15): a 64 x 112 x 112
image back to NCHW 0.49 ms against 4.6 ms, a 3 x 224 x 224 one to channels last
0.06 against 0.16 ms; slower on a 64-channel image to channels last (0.53 against
0.37 ms), where NumPy's copy is not pathological.
"""
from cython.parallel cimport prange
from cpython.buffer cimport (PyBUF_SIMPLE, PyBUF_STRIDED_RO, PyBuffer_Release,
                            PyObject_GetBuffer)
from libc.string cimport memcmp

ctypedef fused real:
    float
    double

#: a tile's elements: about 4096 (16 KB of float32), 32 x 32 up to as long as a short
#: side allows
cdef Py_ssize_t TILE_ELEMENTS = 4096
#: copies of fewer elements run on the calling thread alone
cdef Py_ssize_t SERIAL_ELEMENTS = 65536


cdef inline Py_ssize_t _side(Py_ssize_t other) noexcept nogil:
    """A tile's side along an axis when the other axis has ``other`` elements: 64, or
    longer when the other is shorter (C = 3: 3 x 1365 tiles, not 3 x 64)."""
    return 64 if other >= 64 else TILE_ELEMENTS // other


def transpose_planes(const real[:, :, ::1] src, real[:, :, ::1] dst, int nt):
    """dst[n, s, r] = src[n, r, s] for src (N, R, S) and dst (N, S, R), both
    C-contiguous: one tile per parallel iteration, written row by row of dst."""
    cdef Py_ssize_t N = src.shape[0], R = src.shape[1], S = src.shape[2]
    if dst.shape[0] != N or dst.shape[1] != S or dst.shape[2] != R:
        raise ValueError(f"transpose_planes: dst of shape {tuple(dst.shape)[:3]} for src "
                         f"of shape {(N, R, S)}")
    if N * R * S == 0:
        return
    cdef Py_ssize_t tr = _side(S), ts = _side(R)
    cdef Py_ssize_t nr = (R + tr - 1) // tr, ns = (S + ts - 1) // ts
    cdef Py_ssize_t it, n, r0, s0, r1, s1, r, s
    cdef const real *a
    cdef real *b
    with nogil:
        for it in prange(N * nr * ns, num_threads=nt if N * R * S >= SERIAL_ELEMENTS else 1,
                         schedule="static"):
            n = it // (nr * ns)                 # tile (n, rows r0.., columns s0..) of src
            r0 = it // ns % nr * tr
            s0 = it % ns * ts
            r1 = r0 + tr if r0 + tr < R else R
            s1 = s0 + ts if s0 + ts < S else S
            a = &src[n, 0, 0]
            b = &dst[n, 0, 0]
            if R == 3:                          # an RGB image to channels last: the three
                for s in range(s0, s1):         # planes interleaved, no inner loop
                    b[3 * s] = a[s]
                    b[3 * s + 1] = a[S + s]
                    b[3 * s + 2] = a[2 * S + s]
                continue
            for s in range(s0, s1):             # a row of dst's tile per pass
                for r in range(r0, r1):
                    b[s * R + r] = a[r * S + s]


def address(a):
    """The address of array ``a``'s first element, as an int (the weight cache's key;
    read through the buffer protocol, at a fraction of ``a.ctypes.data``'s cost)."""
    cdef Py_buffer view
    PyObject_GetBuffer(a, &view, PyBUF_STRIDED_RO)
    cdef size_t at = <size_t>view.buf
    PyBuffer_Release(&view)
    return at


def same_bytes(a, b, int nt):
    """Whether the C-contiguous arrays ``a`` and ``b`` (of one size) hold the same
    bytes: one memcmp on the calling thread for ``nt`` 1, else memcmp of ``nt`` slices
    at once, one per OpenMP thread (the weight cache's check of a large weight,
    ``kernels/weight_cache.py``: one core's memcmp reads memory at a fraction of what
    two do). An array that is not C-contiguous raises NumPy's error."""
    cdef Py_buffer va, vb
    PyObject_GetBuffer(a, &va, PyBUF_SIMPLE)
    try:
        PyObject_GetBuffer(b, &vb, PyBUF_SIMPLE)
        try:
            if va.len != vb.len:
                raise ValueError(f"same_bytes: arrays of {va.len} and {vb.len} bytes")
            return _same(<const char *>va.buf, <const char *>vb.buf, va.len, nt)
        finally:
            PyBuffer_Release(&vb)
    finally:
        PyBuffer_Release(&va)


cdef bint _same(const char *pa, const char *pb, size_t n, int nt) noexcept:
    if nt <= 1:
        return memcmp(pa, pb, n) == 0
    cdef size_t part = (n + nt - 1) // nt
    cdef Py_ssize_t t
    cdef size_t lo, hi
    cdef int differ = 0
    with nogil:
        for t in prange(nt, num_threads=nt, schedule="static"):
            lo = t * part
            hi = lo + part if lo + part < n else n
            if lo < hi and memcmp(pa + lo, pb + lo, hi - lo) != 0:
                differ += 1
    return differ == 0
