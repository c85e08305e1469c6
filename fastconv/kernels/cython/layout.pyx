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
from libc.string cimport memcmp, memcpy, memset

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


def stack_planes(const real[:, :, :, ::1] x, real[:, :, :, ::1] s,
                 const Py_ssize_t[:, ::1] place, int nt):
    """The stacked input of a kernel's 3x3 blocks (``kernels/kernel_blocks.py``): s[n,
    b*C + c, u, v] = x[n, c, u + dr, v + dc] for rows u in [r0, r1) and columns v in [c0,
    c1), 0 elsewhere, where place[b] = (r0, r1, c0, c1, dr, dc); x (N, C, H, W), s (N,
    B*C, Hs, Ws). One plane of s per parallel iteration."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], W = x.shape[3]
    cdef Py_ssize_t B = place.shape[0], Hs = s.shape[2], Ws = s.shape[3]
    if s.shape[0] != N or s.shape[1] != B * C or place.shape[1] != 6:
        raise ValueError(f"stack_planes: s of shape {tuple(s.shape)[:4]}, place of shape "
                         f"{tuple(place.shape)[:2]} for x of shape {tuple(x.shape)[:4]}")
    cdef Py_ssize_t it, n, b, c, u, r0, r1, c0, c1, dr, dc
    cdef int threads = nt if N * B * C * Hs * Ws >= SERIAL_ELEMENTS else 1
    cdef real *d
    cdef const real *src
    with nogil:
        for it in prange(N * B * C, num_threads=threads, schedule="static"):
            n, b, c = it // (B * C), it // C % B, it % C     # plane (n, b*C + c) of s
            r0, r1, c0, c1 = place[b, 0], place[b, 1], place[b, 2], place[b, 3]
            dr, dc = place[b, 4], place[b, 5]
            d = &s[n, b * C + c, 0, 0]
            src = &x[n, c, 0, 0]
            for u in range(Hs):
                if u < r0 or u >= r1 or c1 <= c0:       # a row outside x
                    memset(d + u * Ws, 0, Ws * sizeof(real))
                    continue
                memset(d + u * Ws, 0, c0 * sizeof(real))
                memcpy(d + u * Ws + c0, src + (u + dr) * W + c0 + dc, (c1 - c0) * sizeof(real))
                memset(d + u * Ws + c1, 0, (Ws - c1) * sizeof(real))


def stack_rows(const real[:, :, :, ::1] x, real[:, :, :, ::1] s,
               const Py_ssize_t[:, ::1] place, int nt):
    """:func:`stack_planes` channels last: x (N, H, W, C), s (N, Hs, Ws, B*C), s[n, u, v,
    b*C + c] = x[n, u + dr, v + dc, c] inside block b's rows and columns, else 0. One
    row of s per parallel iteration."""
    cdef Py_ssize_t N = x.shape[0], W = x.shape[2], C = x.shape[3]
    cdef Py_ssize_t B = place.shape[0], Hs = s.shape[1], Ws = s.shape[2]
    if s.shape[0] != N or s.shape[3] != B * C or place.shape[1] != 6:
        raise ValueError(f"stack_rows: s of shape {tuple(s.shape)[:4]}, place of shape "
                         f"{tuple(place.shape)[:2]} for x of shape {tuple(x.shape)[:4]}")
    cdef Py_ssize_t it, n, u, b, v, r0, r1, c0, c1, dr, dc
    cdef int threads = nt if N * Hs * Ws * B * C >= SERIAL_ELEMENTS else 1
    cdef real *d
    with nogil:
        for it in prange(N * Hs, num_threads=threads, schedule="static"):
            n, u = it // Hs, it % Hs                # row (n, u) of s
            for b in range(B):
                r0, r1, c0, c1 = place[b, 0], place[b, 1], place[b, 2], place[b, 3]
                dr, dc = place[b, 4], place[b, 5]
                for v in range(Ws):
                    d = &s[n, u, v, b * C]
                    if u < r0 or u >= r1 or v < c0 or v >= c1:
                        memset(d, 0, C * sizeof(real))
                    else:
                        memcpy(d, &x[n, u + dr, v + dc, 0], C * sizeof(real))


def fold_planes(const real[:, :, :, ::1] s, real[:, :, :, ::1] out,
                const Py_ssize_t[:, ::1] place, int nt):
    """The adjoint of :func:`stack_planes`: out[n, c] = the sum over blocks b, in order,
    of s[n, b*C + c]'s rows [r0, r1) and columns [c0, c1), each added at (u + dr, v +
    dc); out (N, C, H, W) is overwritten. One plane of out per parallel iteration, so
    each element's sum runs in one thread in a fixed order."""
    cdef Py_ssize_t N = out.shape[0], C = out.shape[1], H = out.shape[2], W = out.shape[3]
    cdef Py_ssize_t B = place.shape[0], Ws = s.shape[3]
    if s.shape[0] != N or s.shape[1] != B * C or place.shape[1] != 6:
        raise ValueError(f"fold_planes: s of shape {tuple(s.shape)[:4]}, place of shape "
                         f"{tuple(place.shape)[:2]} for out of shape {tuple(out.shape)[:4]}")
    cdef Py_ssize_t it, n, c, b, u, v, r0, r1, c0, c1, dr, dc
    cdef int threads = nt if N * B * C * s.shape[2] * Ws >= SERIAL_ELEMENTS else 1
    cdef real *o
    cdef const real *src
    with nogil:
        for it in prange(N * C, num_threads=threads, schedule="static"):
            n, c = it // C, it % C
            o = &out[n, c, 0, 0]
            memset(o, 0, H * W * sizeof(real))
            for b in range(B):
                r0, r1, c0, c1 = place[b, 0], place[b, 1], place[b, 2], place[b, 3]
                dr, dc = place[b, 4], place[b, 5]
                src = &s[n, b * C + c, 0, 0]
                for u in range(r0, r1):
                    for v in range(c0, c1):
                        o[(u + dr) * W + v + dc] += src[u * Ws + v]
