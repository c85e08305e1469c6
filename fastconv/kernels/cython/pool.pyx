# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Max and average pooling, forward and backward: the Cython twin of
``fastconv/kernels/numba/pool.py`` (same functions, same plans, same results).

One (image, channel) plane per parallel iteration (OpenMP ``prange`` on
``fastconv.get_num_threads()`` threads, or the calling thread alone for fewer than
``SERIAL_ELEMENTS`` input elements; channels-last adaptive average pooling: one
output pixel, every channel), so no two iterations write the same memory;
each plane runs a hot loop of ``src/fc_impl.h`` from the instruction-set variant
``_isa.ISA`` names. Sums are taken in double in the Numba kernels' order; max pooling
sees NaN (no fast-math anywhere).
"""
from cython.parallel cimport prange, threadid
from libc.stdint cimport int64_t

import numpy as np

from ..._config import get_num_threads, workspace_array
from ._hot cimport fc_kernels, fc_pool, load_table, real
from ._isa import ISA

cdef const fc_kernels *hot = load_table(__name__, ISA)

#: pools of fewer input elements run on the calling thread alone: waking OpenMP's
#: workers costs more than the pool (as in im2col.pyx; ResNet's global pool of
#: 512 x 7 x 7, session 16)
SERIAL_ELEMENTS = 32768


def _threads(a):
    """The threads for a pool over array ``a`` (its input, or dy)."""
    return 1 if a.size < SERIAL_ELEMENTS else get_num_threads()


cdef fc_pool _geometry(p):
    """The plane geometry of PoolParams ``p``."""
    cdef fc_pool g
    g.H, g.W, g.kh, g.kw = p.H, p.W, p.kernel_h, p.kernel_w
    g.sh, g.sw, g.ph, g.pw = p.stride_h, p.stride_w, p.pad_h, p.pad_w
    g.dh, g.dw, g.P, g.Q = p.dil_h, p.dil_w, p.P, p.Q
    return g


cdef int _max_pool(const real[:, :, :, ::1] x, real[:, :, :, ::1] y,
                   int64_t[:, :, :, ::1] idx, const fc_pool *g, int nt) except -1:
    """Values into y and, unless idx is None, flat indices into idx."""
    cdef Py_ssize_t C = x.shape[1], nc, n, c
    cdef bint with_idx = idx is not None
    cdef int64_t *ip
    with nogil:
        for nc in prange(x.shape[0] * C, num_threads=nt, schedule="static"):
            n, c = nc // C, nc % C
            ip = &idx[n, c, 0, 0] if with_idx else NULL
            if real is float:
                hot.max_pool_plane_f32(&x[n, c, 0, 0], &y[n, c, 0, 0], ip, g)
            else:
                hot.max_pool_plane_f64(&x[n, c, 0, 0], &y[n, c, 0, 0], ip, g)
    return 0


cdef int _max_pool_nhwc(const real[:, :, :, ::1] x, real[:, :, :, ::1] y, const fc_pool *g,
                        int nt) except -1:
    """Channels last, values only: x (N, H, W, C) into y (N, P, Q, C), an output row
    (every channel) per parallel iteration."""
    cdef Py_ssize_t P = y.shape[1], C = x.shape[3], it, n, i
    with nogil:
        for it in prange(x.shape[0] * P, num_threads=nt, schedule="static"):
            n, i = it // P, it % P
            if real is float:
                hot.max_pool_nhwc_row_f32(&x[n, 0, 0, 0], &y[n, i, 0, 0], g, C, i)
            else:
                hot.max_pool_nhwc_row_f64(&x[n, 0, 0, 0], &y[n, i, 0, 0], g, C, i)
    return 0


cdef int _max_pool_backward(const real[:, :, :, ::1] dy, const int64_t[:, :, :, ::1] idx,
                            real[:, :, :, ::1] dx, int nt) except -1:
    cdef Py_ssize_t C = dx.shape[1], nc, n, c
    cdef Py_ssize_t HW = dx.shape[2] * dx.shape[3], PQ = dy.shape[2] * dy.shape[3]
    with nogil:
        for nc in prange(dx.shape[0] * C, num_threads=nt, schedule="static"):
            n, c = nc // C, nc % C
            if real is float:
                hot.max_pool_backward_plane_f32(&dy[n, c, 0, 0], &idx[n, c, 0, 0],
                                                &dx[n, c, 0, 0], HW, PQ)
            else:
                hot.max_pool_backward_plane_f64(&dy[n, c, 0, 0], &idx[n, c, 0, 0],
                                                &dx[n, c, 0, 0], HW, PQ)
    return 0


cdef int _avg_pool(const real[:, :, :, ::1] x, real[:, :, :, ::1] y, const fc_pool *g,
                   int cip, int64_t dov, double[:, ::1] acc, int nt) except -1:
    cdef Py_ssize_t C = x.shape[1], nc, n, c
    with nogil:
        for nc in prange(x.shape[0] * C, num_threads=nt, schedule="static"):
            n, c = nc // C, nc % C
            if real is float:
                hot.avg_pool_plane_f32(&x[n, c, 0, 0], &y[n, c, 0, 0], g, cip, dov,
                                       &acc[threadid(), 0])
            else:
                hot.avg_pool_plane_f64(&x[n, c, 0, 0], &y[n, c, 0, 0], g, cip, dov,
                                       &acc[threadid(), 0])
    return 0


cdef int _avg_pool_backward(const real[:, :, :, ::1] dy, real[:, :, :, ::1] dx,
                            const fc_pool *g, int cip, int64_t dov, int nt) except -1:
    cdef Py_ssize_t C = dx.shape[1], nc, n, c
    with nogil:
        for nc in prange(dx.shape[0] * C, num_threads=nt, schedule="static"):
            n, c = nc // C, nc % C
            if real is float:
                hot.avg_pool_backward_plane_f32(&dy[n, c, 0, 0], &dx[n, c, 0, 0], g, cip, dov)
            else:
                hot.avg_pool_backward_plane_f64(&dy[n, c, 0, 0], &dx[n, c, 0, 0], g, cip, dov)
    return 0


cdef int _adaptive_avg_pool(const real[:, :, :, ::1] x, real[:, :, :, ::1] y,
                            const int64_t[::1] hs, const int64_t[::1] he,
                            const int64_t[::1] ws, const int64_t[::1] we, int nt) except -1:
    cdef Py_ssize_t C = x.shape[1], nc, n, c
    cdef Py_ssize_t H = x.shape[2], W = x.shape[3], P = y.shape[2], Q = y.shape[3]
    with nogil:
        for nc in prange(x.shape[0] * C, num_threads=nt, schedule="static"):
            n, c = nc // C, nc % C
            if real is float:
                hot.adaptive_avg_plane_f32(&x[n, c, 0, 0], &y[n, c, 0, 0], H, W,
                                           &hs[0], &he[0], P, &ws[0], &we[0], Q)
            else:
                hot.adaptive_avg_plane_f64(&x[n, c, 0, 0], &y[n, c, 0, 0], H, W,
                                           &hs[0], &he[0], P, &ws[0], &we[0], Q)
    return 0


cdef int _adaptive_avg_pool_nhwc(const real[:, :, :, ::1] x, real[:, :, :, ::1] y,
                                 const int64_t[::1] hs, const int64_t[::1] he,
                                 const int64_t[::1] ws, const int64_t[::1] we,
                                 double[:, ::1] acc, int nt) except -1:
    """Channels last, x (N, H, W, C) into y (N, P, Q, C): one output pixel (every
    channel) per parallel iteration."""
    cdef Py_ssize_t W = x.shape[2], C = x.shape[3], P = y.shape[1], Q = y.shape[2]
    cdef Py_ssize_t it, n, i, j
    with nogil:
        for it in prange(x.shape[0] * P * Q, num_threads=nt, schedule="static"):
            n, i, j = it // (P * Q), it // Q % P, it % Q
            if real is float:
                hot.adaptive_avg_nhwc_f32(&x[n, 0, 0, 0], &y[n, i, j, 0], W, C, &hs[0], &he[0],
                                          &ws[0], &we[0], i, j, &acc[threadid(), 0])
            else:
                hot.adaptive_avg_nhwc_f64(&x[n, 0, 0, 0], &y[n, i, j, 0], W, C, &hs[0], &he[0],
                                          &ws[0], &we[0], i, j, &acc[threadid(), 0])
    return 0


# -- the registry's kernels: (plan, the reference's arguments) ----------------------------


def max_pool2d(plan, x, p, out, indices):
    """Values into ``out`` and, unless ``indices`` is None, flat indices into it;
    ``plan.layout`` "nhwc" (values only): x (N, H, W, C) into out (N, P, Q, C)."""
    cdef fc_pool g = _geometry(p)
    if plan.layout == "nhwc":
        if x.dtype == np.float32:
            _max_pool_nhwc[float](x, out, &g, _threads(x))
        else:
            _max_pool_nhwc[double](x, out, &g, _threads(x))
        return
    if x.dtype == np.float32:
        _max_pool[float](x, out, indices, &g, _threads(x))
    else:
        _max_pool[double](x, out, indices, &g, _threads(x))


def max_pool2d_backward(plan, dy, indices, p, out):
    if dy.dtype == np.float32:
        _max_pool_backward[float](dy, indices, out, _threads(out))
    else:
        _max_pool_backward[double](dy, indices, out, _threads(out))


def avg_pool2d(plan, x, p, count_include_pad, divisor_override, out):
    cdef fc_pool g = _geometry(p)
    nt = _threads(x)
    acc = workspace_array("pool.acc", (nt, max(1, p.Q)), np.float64)
    cip, dov = bool(count_include_pad), int(divisor_override or 0)
    if x.dtype == np.float32:
        _avg_pool[float](x, out, &g, cip, dov, acc, nt)
    else:
        _avg_pool[double](x, out, &g, cip, dov, acc, nt)


def avg_pool2d_backward(plan, dy, p, count_include_pad, divisor_override, out):
    cdef fc_pool g = _geometry(p)
    cip, dov = bool(count_include_pad), int(divisor_override or 0)
    if dy.dtype == np.float32:
        _avg_pool_backward[float](dy, out, &g, cip, dov, _threads(out))
    else:
        _avg_pool_backward[double](dy, out, &g, cip, dov, _threads(out))


def adaptive_avg_pool2d(plan, x, h_windows, w_windows, out):
    """``plan.layout`` "nhwc": x (N, H, W, C) into out (N, P, Q, C), channels last."""
    hs, he = (np.ascontiguousarray(a, np.int64) for a in h_windows)
    ws, we = (np.ascontiguousarray(a, np.int64) for a in w_windows)
    nt = _threads(x)
    if plan.layout == "nhwc":
        acc = workspace_array("pool.acc", (nt, max(1, x.shape[3])), np.float64)
        if x.dtype == np.float32:
            _adaptive_avg_pool_nhwc[float](x, out, hs, he, ws, we, acc, nt)
        else:
            _adaptive_avg_pool_nhwc[double](x, out, hs, he, ws, we, acc, nt)
    elif x.dtype == np.float32:
        _adaptive_avg_pool[float](x, out, hs, he, ws, we, nt)
    else:
        _adaptive_avg_pool[double](x, out, hs, he, ws, we, nt)
