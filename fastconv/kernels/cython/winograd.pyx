# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Winograd convolution F(2x2,3x3) and F(4x4,3x3): the Cython twin of
``fastconv/kernels/numba/winograd.py`` (same functions, same plans, same arithmetic;
see that file for the algorithm, Lavin & Gray 2016, and the layouts).

The variants this backend runs (``VARIANTS`` in the manifest; the selector,
``fastconv._plan._winograd``, makes no other for it): every one of Numba's.

- forward and input gradient ``fused``: each thread takes blocks of
  ``plan["block_rows"]`` tile rows of one image in turn, copies the input rows they
  read into its own zero-padded channels-last slab, runs the input transform, the
  alpha^2 GEMMs with the transformed filter (SciPy's BLAS, one thread, called from
  each OpenMP thread) and the output transform straight into the NCHW output, all
  while the block is in its cache. ``split``: the same with the filter cut into
  ``plan["filter_slices"]`` slices of output channels, a work item per (block, slice),
  for filters too large for one thread's cache.
- forward and input gradient ``unfused`` and ``unfused_blas``, for filters too large
  to read once per block: batches of ``plan["tile_batch"]`` tiles (whole tile rows)
  of any images, in three parallel steps, the input transform, the alpha^2 GEMMs on
  the whole batch, the output transform. ``unfused``'s GEMMs are the channels-last
  1x1 kernel's register blocks (``pointwise_nhwc``'s, the last rows in one block as
  wide as they are) reading U in place, stored as panels of output channels;
  ``unfused_blas``'s are BLAS, one xi per call.
- forward and input gradient ``streamed`` (float32 F(4x4,3x3), a very large filter on
  few tiles): ``unfused`` with one batch of every tile and no transformed filter; a
  GEMM work item is a panel of output channels for every xi, transforming the
  weight's chunks of ``plan["channels"]`` input channels in its cache and adding
  their products by the 1x1 kernel (``wino_streamed``): the weight is read once per
  call. The rules give it no layer by default (``_tuning.STREAM_MIN_FILTER_BYTES``).
- weight gradient ``fused``: blocks of tile rows again, their input and dy transforms
  and the GEMMs ``dU[xi] += dM[xi]^T V[xi]`` added into ``plan["parts"]`` partial sums,
  each a fixed range of blocks, summed in order at the end: the result does not depend
  on the thread count. ``unfused``: batches of tile rows, one sum per xi over the
  batches in order. Then ``dw = G^T dU G`` in double.

The transforms are C (``src/fc_winograd.h``), compiled per instruction set and taken
from the variant's table (``_isa.ISA``). The filter transform ``U = G g G^T`` runs in
double and is cached per weight (``kernels/weight_cache``), as Numba's is.
"""
from cython.parallel cimport prange, threadid
from scipy.linalg.cython_blas cimport dgemm, sgemm

import numpy as np

from ..._config import get_num_threads, single_threaded_blas, workspace
from ..epilogue import none
from ..kernel_blocks import larger_kernels
from ..weight_cache import CACHE as _filters
from ._epilogue cimport _epilogue_run
from ._hot cimport FC_MR, fc_int, fc_kernels, load_table, real
from ._isa import ISA

cdef const fc_kernels *hot = load_table(__name__, ISA)

_TILE = {"winograd_f2": 2, "winograd_f4": 4}


cdef void _gemm(bint ta, int M, int N, int Kd, const real *A, int lda, const real *B,
                int ldb, real beta, real *C, int ldc) noexcept nogil:
    """Row-major C (M x N) = op(A) @ B + beta * C, op(A) M x Kd (A stored Kd x M when
    ``ta``), B Kd x N; BLAS computes C^T = B^T op(A)^T."""
    cdef char opa = b'N'
    cdef char opb = b'T' if ta else b'N'
    cdef real one = 1
    if real is float:
        sgemm(&opa, &opb, &N, &M, &Kd, &one, <float *>B, &ldb, <float *>A, &lda, &beta,
              C, &ldc)
    else:
        dgemm(&opa, &opb, &N, &M, &Kd, &one, <double *>B, &ldb, <double *>A, &lda, &beta,
              C, &ldc)


cdef void _slab(const real *x, fc_int C, fc_int H, fc_int W, fc_int h0, fc_int ow,
                fc_int rows, fc_int Sw, real *S, bint nhwc) noexcept nogil:
    if real is float:
        hot.wino_slab_f32(x, C, H, W, h0, ow, rows, Sw, S, nhwc)
    else:
        hot.wino_slab_f64(x, C, H, W, h0, ow, rows, Sw, S, nhwc)


cdef void _input(const real *S, fc_int Sw, fc_int C, fc_int m, fc_int tw, fc_int nt,
                 real *V, fc_int ldt, real *tmp) noexcept nogil:
    if real is float:
        hot.wino_input_f32(S, Sw, C, m, tw, nt, V, ldt, tmp)
    else:
        hot.wino_input_f64(S, Sw, C, m, tw, nt, V, ldt, tmp)


cdef void _dy(const real *D, fc_int Dw, fc_int K, fc_int m, fc_int tw, fc_int nt,
              real *dM, fc_int ldt, real *tmp) noexcept nogil:
    if real is float:
        hot.wino_dy_f32(D, Dw, K, m, tw, nt, dM, ldt, tmp)
    else:
        hot.wino_dy_f64(D, Dw, K, m, tw, nt, dM, ldt, tmp)


cdef void _output(const real *M, fc_int ldt, fc_int kp, fc_int nk, fc_int m, fc_int tw,
                  fc_int nt, real *y, fc_int P, fc_int Q, fc_int p0, const real *bias,
                  const real *res, int act, real *tmp, fc_int ky) noexcept nogil:
    if real is float:
        hot.wino_output_f32(M, ldt, kp, nk, m, tw, nt, y, P, Q, p0, bias, res, act, tmp, ky)
    else:
        hot.wino_output_f64(M, ldt, kp, nk, m, tw, nt, y, P, Q, p0, bias, res, act, tmp, ky)


# -- the parallel kernels --------------------------------------------------------------


cdef void _fused(const real *x, const real *U, real *y, fc_int N, fc_int C, fc_int H,
                 fc_int W, fc_int K, fc_int P, fc_int Q, fc_int m, fc_int th, fc_int tw,
                 fc_int oh, fc_int ow, fc_int R, fc_int G, fc_int nsplit, fc_int kp,
                 int nthreads, real *Sb, real *Vb, real *Mb, real *Tb, fc_int tsize,
                 const real *bias, const real *res, int act, bint nhwc) noexcept nogil:
    """y = the correlation of x (input rows, columns offset by oh, ow) with the
    transformed filter U (nsplit, alpha^2, C, kp); work item (G images, block of R tile
    rows, filter slice): G > 1 only when a block holds whole images (R >= th), so one
    GEMM multiplies the tiles of G images. The epilogue (``bias``, ``res`` NULL when
    absent, ``act``) runs in the output transform's stores. ``nhwc``: x (N, H, W, C) and
    y, res (N, P, Q, K), channels last. Thread tid takes items tid, tid + nthreads,
    ... with its own slab, V, M and scratch (``Sb``, ``Vb``, ``Mb``, ``Tb`` + tid * their
    size)."""
    cdef fc_int al = m + 2, al2 = (m + 2) * (m + 2)
    cdef fc_int Wp = m * tw + 2, rows = m * R + 2, tb = G * R * tw
    cdef fc_int nblocks = (th + R - 1) // R, ngroups = (N + G - 1) // G
    cdef fc_int nitems = ngroups * nblocks * nsplit
    cdef fc_int ssize = rows * Wp * C, vsize = al2 * tb * C, msize = al2 * tb * kp
    cdef int tid
    cdef fc_int item, nb, part, n0, ng, g, i0, nt1, nk, xi, held, o
    cdef real *S
    cdef real *V
    cdef real *M
    cdef real *T
    for tid in prange(nthreads, num_threads=nthreads, schedule="static", chunksize=1):
        S, V, M, T = Sb + tid * ssize, Vb + tid * vsize, Mb + tid * msize, Tb + tid * tsize
        held = -1                                    # the (images, block) in V
        item = tid
        while item < nitems:
            nb, part = item // nsplit, item % nsplit
            n0, i0 = nb // nblocks * G, nb % nblocks * R
            ng = (N if N < n0 + G else n0 + G) - n0
            nt1 = ((th if th < i0 + R else i0 + R) - i0) * tw    # tiles per image
            if nb != held:
                for g in range(ng):                  # image n0 + g: V rows g*nt1 on
                    _slab(x + (n0 + g) * C * H * W, C, H, W, i0 * m + oh, ow, rows, Wp, S,
                          nhwc)
                    _input(S, Wp, C, m, tw, nt1, V + g * nt1 * C, tb, T)
                held = nb
            nk = (K if K < part * kp + kp else part * kp + kp) - part * kp
            if nk > 0:
                for xi in range(al2):
                    _gemm(False, <int>(ng * nt1), <int>kp, <int>C, V + xi * tb * C, <int>C,
                          U + (part * al2 + xi) * C * kp, <int>kp, 0,
                          M + xi * tb * kp, <int>kp)
                for g in range(ng):                  # channel part*kp of image n0 + g
                    if nhwc:
                        o = (n0 + g) * P * Q * K + part * kp
                    else:
                        o = ((n0 + g) * K + part * kp) * P * Q
                    _output(M + g * nt1 * kp, tb, kp, nk, m, tw, nt1, y + o, P, Q, m * i0,
                            NULL if bias == NULL else bias + part * kp,
                            NULL if res == NULL else res + o, act, T, K if nhwc else 0)
            item = item + nthreads


cdef void _fused_weight(const real *x, const real *dy, real *dU, fc_int N, fc_int C,
                        fc_int H, fc_int W, fc_int K, fc_int P, fc_int Q, fc_int m,
                        fc_int th, fc_int tw, fc_int oh, fc_int ow, fc_int R, fc_int parts,
                        int nthreads, real *Sb, real *Db, real *Vb, real *Mb, real *Tb,
                        fc_int tsize) noexcept nogil:
    """dU[g, xi] (K x C) = sum of dM[xi]^T V[xi] over the blocks of part g: blocks
    g*nitems // parts .. (g + 1)*nitems // parts - 1, in order; parts on the threads
    (static, one at a time), so the sums do not depend on the thread count."""
    cdef fc_int al2 = (m + 2) * (m + 2)
    cdef fc_int Wp = m * tw + 2, rows = m * R + 2, tb = R * tw
    cdef fc_int nblocks = (th + R - 1) // R
    cdef fc_int nitems = N * nblocks
    cdef fc_int ssize = rows * Wp * C, dsize = m * R * (Wp - 2) * K
    cdef fc_int vsize = al2 * tb * C, msize = al2 * tb * K
    cdef Py_ssize_t g
    cdef int tid
    cdef fc_int item, lo, hi, n, i0, nt, xi
    cdef real beta
    cdef real *S
    cdef real *D
    cdef real *V
    cdef real *dM
    cdef real *T
    for g in prange(parts, num_threads=nthreads, schedule="static", chunksize=1):
        tid = threadid()
        S, D, T = Sb + tid * ssize, Db + tid * dsize, Tb + tid * tsize
        V, dM = Vb + tid * vsize, Mb + tid * msize
        lo, hi = g * nitems // parts, (g + 1) * nitems // parts
        item = lo
        while item < hi:
            n, i0 = item // nblocks, item % nblocks * R
            nt = ((th if th < i0 + R else i0 + R) - i0) * tw
            _slab(x + n * C * H * W, C, H, W, i0 * m + oh, ow, rows, Wp, S, False)
            # dy's rows: zeros past P, Q
            _slab(dy + n * K * P * Q, K, P, Q, i0 * m, 0, m * R, Wp - 2, D, False)
            _input(S, Wp, C, m, tw, nt, V, tb, T)
            _dy(D, Wp - 2, K, m, tw, nt, dM, tb, T)
            beta = 0 if item == lo else 1
            for xi in range(al2):
                _gemm(True, <int>K, <int>C, <int>nt, dM + xi * tb * K, <int>K,
                      V + xi * tb * C, <int>C, beta, dU + (g * al2 + xi) * K * C, <int>C)
            item = item + 1


cdef void _panels(const real *V, fc_int C, const real *Up, fc_int K, fc_int rows, fc_int k0,
                  real *M) noexcept nogil:
    """M[t, k0:k0 + cols] = V[t, :] @ the panel of U from output channel k0, for the rows
    tiles t: the 1x1 kernel's whole FC_MR-row blocks (``pointwise_nhwc``), then the last
    rows in one block as wide as they are (``pointwise_weight``'s), not in a whole block
    whose rows past the tiles are zeros (16 tiles had run as 18 rows, 4 as 6). The whole
    batch through ``pointwise_weight``'s blocks, as even as the rows allow, ran 0.5-2%
    slower at N = 8 on 1 thread (AMD EPYC Zen 4)."""
    cdef fc_int bulk = rows // FC_MR * FC_MR
    if real is float:
        if bulk:
            hot.pointwise_nhwc_f32(V, C, Up, K, 0, bulk, k0, M, NULL, NULL, 0)
        if rows > bulk:
            hot.pointwise_weight_f32(V, C, C, Up + k0 * C, K, bulk, rows, k0, M, 0)
    else:
        if bulk:
            hot.pointwise_nhwc_f64(V, C, Up, K, 0, bulk, k0, M, NULL, NULL, 0)
        if rows > bulk:
            hot.pointwise_weight_f64(V, C, C, Up + k0 * C, K, bulk, rows, k0, M, 0)


cdef void _streamed(const real *V, fc_int rows, fc_int C, const real *w,
                    fc_int Kw, fc_int Cw, bint rot, fc_int m, fc_int K, fc_int k0, fc_int CB,
                    real *M, real *F) noexcept nogil:
    if real is float:
        hot.wino_streamed_f32(V, rows, C, w, Kw, Cw, rot, m, K, k0, CB, M, F)
    else:
        hot.wino_streamed_f64(V, rows, C, w, Kw, Cw, rot, m, K, k0, CB, M, F)


cdef void _residual(real *y, const real *res, fc_int r0, fc_int nr, fc_int th, fc_int K,
                    fc_int P, fc_int Q, fc_int m, int act, int nthreads) noexcept nogil:
    """y = act(y + res) (NCHW) on the output rows of tile rows r0 .. r0 + nr - 1 (of any
    images, th an image's), once they are stored: per image and channel one run of whole
    rows, as long and as prefetchable as NumPy's pass. Added by wino_store, row by row of
    a tile row (short runs in K planes), the residual of ResNet-18's 256-channel 3x3 at
    N=8 had cost 8% of the layer, more than the NumPy passes it replaces (AMD EPYC Zen 4).
    The arithmetic of wino_store's: y holds the sums with the bias added."""
    cdef fc_int n0 = r0 // th, n1 = (r0 + nr - 1) // th + 1
    cdef fc_int n, a, b, o
    cdef Py_ssize_t it
    for it in prange((n1 - n0) * K, num_threads=nthreads, schedule="static"):
        n = n0 + it // K
        a = m * (max(r0, n * th) - n * th)              # the image's first row, and last + 1
        b = min(P, m * (min(r0 + nr, (n + 1) * th) - n * th))
        o = ((n * K + it % K) * P + a) * Q
        _epilogue_run(y + o, res + o, -0.0, act, (b - a) * Q)    # + -0.0: y as it is


cdef void _unfused(const real *x, const real *U, real *y, fc_int N, fc_int C, fc_int H,
                   fc_int W, fc_int K, fc_int P, fc_int Q, fc_int m, fc_int th, fc_int tw,
                   fc_int oh, fc_int ow, fc_int B, fc_int cols, int nthreads, real *Sb,
                   real *V, real *M, real *Tb, fc_int tsize, const real *bias,
                   const real *res, int act, const real *w, fc_int Kw, fc_int Cw, bint rot,
                   fc_int CB, real *Fb, fc_int fsize, int tthreads, bint nhwc) noexcept nogil:
    """y = the correlation of x with the transformed filter U, in batches of B tile rows
    (of any images, nt tiles): the batch's input transform into V (alpha^2, nt, C), a
    tile row per work item; the alpha^2 GEMMs M[xi] (nt, K) = V[xi] U[xi]; the output
    transform with the epilogue, a tile row per work item. ``cols`` > 0: U is (alpha^2,
    panels, C, cols), and a GEMM work item is one panel of one xi, the 1x1 kernel's
    register blocks reading it in place (:func:`_panels`); ``cols`` 0: U is (alpha^2, C,
    K), a work item one xi's GEMM by single-threaded BLAS. Each GEMM's sums run in one
    order: the bits do not depend on the thread count. Each U[xi] is read once per
    batch, not once per block of tiles as fused reads it. ``w`` not NULL (streamed: one
    batch of every tile): no U; a GEMM work item is a panel of ``cols`` output channels
    for every xi, its U made from the weight ``w`` (Kw, Cw, 3, 3; ``rot``), CB input
    channels at a time, in the thread's scratch (``Fb`` + tid * fsize;
    ``wino_streamed``); the transforms run on ``tthreads`` threads. ``nhwc``: x, y and
    res channels last."""
    cdef fc_int al2 = (m + 2) * (m + 2), Wp = m * tw + 2, rows = N * th
    cdef fc_int ssize = (m + 2) * Wp * C, npan = (K + cols - 1) // cols if cols else 1
    cdef fc_int r0, nr, nt, n, i, o, xi, j
    cdef Py_ssize_t it
    cdef int tid
    cdef bint planar = res != NULL and not nhwc     # the residual added by _residual
    r0 = 0
    while r0 < rows:
        nr = min(B, rows - r0)
        nt = nr * tw
        for it in prange(nr, num_threads=tthreads, schedule="static"):
            tid = threadid()
            n, i = (r0 + it) // th, (r0 + it) % th
            _slab(x + n * C * H * W, C, H, W, i * m + oh, ow, m + 2, Wp, Sb + tid * ssize,
                  nhwc)
            _input(Sb + tid * ssize, Wp, C, m, tw, tw, V + it * tw * C, nt, Tb + tid * tsize)
        if w != NULL:
            for j in prange(npan, num_threads=nthreads, schedule="static"):
                _streamed(V, nt, C, w, Kw, Cw, rot, m, K, j * cols, CB, M,
                          Fb + threadid() * fsize)
        else:
            for it in prange(al2 * npan, num_threads=nthreads, schedule="static"):
                xi, j = it // npan, it % npan
                if cols:
                    _panels(V + xi * nt * C, C, U + xi * npan * C * cols, K, nt,
                            j * cols, M + xi * nt * K)
                else:
                    _gemm(False, <int>nt, <int>K, <int>C, V + xi * nt * C, <int>C,
                          U + xi * C * K, <int>K, 0, M + xi * nt * K, <int>K)
        for it in prange(nr, num_threads=tthreads, schedule="static"):
            tid = threadid()
            n, i = (r0 + it) // th, (r0 + it) % th
            o = n * K * P * Q
            _output(M + it * tw * K, nt, K, K, m, tw, tw, y + o, P, Q, m * i, bias,
                    NULL if res == NULL or planar else res + o, 0 if planar else act,
                    Tb + tid * tsize, K if nhwc else 0)
        if planar:
            _residual(y, res, r0, nr, th, K, P, Q, m, act, tthreads)
        r0 = r0 + nr


cdef void _unfused_weight(const real *x, const real *dy, real *dU, fc_int N, fc_int C,
                          fc_int H, fc_int W, fc_int K, fc_int P, fc_int Q, fc_int m,
                          fc_int th, fc_int tw, fc_int oh, fc_int ow, fc_int B, int nthreads,
                          real *Sb, real *Db, real *V, real *dM, real *Tb,
                          fc_int tsize) noexcept nogil:
    """dU[xi] (K x C) = the sum over batches of B tile rows of dM[xi]^T V[xi]: each
    batch's input and dy transforms, a tile row per work item, then its alpha^2 GEMMs
    (single-threaded BLAS, beta = 1 after the first batch), one xi per work item: each
    sum runs in batch order, whatever the thread count."""
    cdef fc_int al2 = (m + 2) * (m + 2), Wp = m * tw + 2, rows = N * th
    cdef fc_int ssize = (m + 2) * Wp * C, dsize = m * (Wp - 2) * K
    cdef fc_int r0, nr, nt, n, i
    cdef Py_ssize_t it, xi
    cdef int tid
    r0 = 0
    while r0 < rows:
        nr = min(B, rows - r0)
        nt = nr * tw
        for it in prange(nr, num_threads=nthreads, schedule="static"):
            tid = threadid()
            n, i = (r0 + it) // th, (r0 + it) % th
            _slab(x + n * C * H * W, C, H, W, i * m + oh, ow, m + 2, Wp, Sb + tid * ssize, False)
            _slab(dy + n * K * P * Q, K, P, Q, i * m, 0, m, Wp - 2, Db + tid * dsize, False)
            _input(Sb + tid * ssize, Wp, C, m, tw, tw, V + it * tw * C, nt, Tb + tid * tsize)
            _dy(Db + tid * dsize, Wp - 2, K, m, tw, tw, dM + it * tw * K, nt, Tb + tid * tsize)
        for xi in prange(al2, num_threads=nthreads, schedule="static"):
            _gemm(True, <int>K, <int>C, <int>nt, dM + xi * nt * K, <int>K, V + xi * nt * C,
                  <int>C, 0 if r0 == 0 else 1, dU + xi * K * C, <int>C)
        r0 = r0 + nr


# -- filter transforms ------------------------------------------------------------------


def _filter_run(const real[::1] w, fc_int Kw, fc_int Cw, bint rot, fc_int m, fc_int kp,
                real[::1] U, int nthreads):
    """U (nsplit, alpha^2, C, kp) = the transformed filter, an input channel per
    iteration (``wino_filter``)."""
    cdef fc_int C = Kw if rot else Cw
    cdef Py_ssize_t c
    with nogil:
        for c in prange(C, num_threads=nthreads, schedule="static"):
            if real is float:
                hot.wino_filter_f32(&w[0], Kw, Cw, rot, m, c, kp, &U[0])
            else:
                hot.wino_filter_f64(&w[0], Kw, Cw, rot, m, c, kp, &U[0])


def _filter_t_run(real[::1] dU, fc_int parts, fc_int K, fc_int C, fc_int m,
                  double[::1] tmp, real[::1] dw, int nthreads):
    """dw = G^T (dU[0] + dU[1] + ...) G, an output channel per iteration
    (``wino_filter_t``); tmp: 3*alpha*C doubles per thread."""
    cdef Py_ssize_t k
    cdef fc_int ts = 3 * (m + 2) * C
    with nogil:
        for k in prange(K, num_threads=nthreads, schedule="static"):
            if real is float:
                hot.wino_filter_t_f32(&dU[0], parts, K, C, m, k, &tmp[threadid() * ts], &dw[0])
            else:
                hot.wino_filter_t_f64(&dU[0], parts, K, C, m, k, &tmp[threadid() * ts], &dw[0])


# -- drivers ------------------------------------------------------------------------------


def _buffer(slot, size, dtype):
    return workspace("cython_winograd_" + slot, size, dtype)


def _filter(m, w, kind, nsplit, cols=0):
    """U = G g G^T (float64, stored in w's dtype), zero-padded, cached per weight; g = w
    (``kind`` "fwd") or w rotated 180 degrees with C and K swapped ("rot"). As
    ``nsplit`` slices of output channels, (nsplit, alpha^2, C, kp); or (``cols``) as
    panels of ``cols`` output channels for each xi, (alpha^2, panels, C, cols)."""
    def build():
        K, C = w.shape[:2] if kind == "fwd" else w.shape[1::-1]
        n = -(-K // cols) if cols else nsplit
        kp = cols or -(-K // nsplit)
        Uk = np.zeros((n, (m + 2) ** 2, C, kp), w.dtype)
        _filter_run(np.ascontiguousarray(w).reshape(-1), w.shape[0], w.shape[1],
                    kind == "rot", m, kp, Uk.reshape(-1), get_num_threads())
        return np.ascontiguousarray(Uk.transpose(1, 0, 2, 3)) if cols else Uk
    return _filters.get(w, ("winograd_cython", kind, m, nsplit, cols), build)


def _winograd(plan, m, x, w, kind, y, off_h, off_w, ep):
    """Stride-1 3x3 correlation of x (N, C, H, W) with g (w, or w rotated, "rot") into
    y (N, K, P, Q), offsets off_h, off_w, by the plan's variant (fused, split, unfused
    or unfused_blas), with the epilogue ``ep`` (``fastconv.kernels.epilogue``) in the
    output transform. A channels-last plan (``plan.layout`` "nhwc"): x (N, H, W, C), y
    and the residual (N, P, Q, K), read and written in place (its slabs are copies of
    rows, its stores runs of channels, where NCHW's are transposes)."""
    nhwc = plan.layout == "nhwc"
    if nhwc:
        N, H, W, C = x.shape
        P, Q, K = y.shape[1:]
    else:
        N, C, H, W = x.shape
        K, P, Q = y.shape[1:]
    th, tw = plan["tiles"]
    streamed = plan.variant == "streamed"
    unfused = streamed or plan.variant in ("unfused", "unfused_blas")
    cols, CB, fsize, tthreads = 0, 0, 0, plan.threads
    wf = x[:0].reshape(-1)                      # the weight, for streamed only
    if streamed:            # one batch of every tile row, no transformed filter
        B, G, R, nsplit, rows, kp = N * th, 1, 1, 1, m + 2, K
        cols = hot.pointwise_cols_f32() if x.dtype == np.float32 else hot.pointwise_cols_f64()
        CB = plan["channels"]
        fsize = (hot.wino_streamed_scratch_f32(m, CB) if x.dtype == np.float32
                 else hot.wino_streamed_scratch_f64(m, CB))
        Uk, wf = wf, np.ascontiguousarray(w).reshape(-1)
        if plan["serial"]:
            tthreads = 1
    elif unfused:           # batches of B tile rows, the tile batch's V and M in the workspace
        B, G, R, nsplit, rows = max(1, plan["tile_batch"] // tw), 1, 1, 1, m + 2
        if plan.variant == "unfused":
            cols = hot.pointwise_cols_f32() if x.dtype == np.float32 else hot.pointwise_cols_f64()
        Uk, kp = _filter(m, w, kind, 1, cols), K
    else:
        R, G, nsplit = plan["block_rows"], plan["images"], plan["filter_slices"]
        B, rows = G * R, m * R + 2
        Uk = _filter(m, w, kind, nsplit)
        kp = Uk.shape[3]
    al2 = (m + 2) ** 2
    nthreads = plan.threads
    tsize = max((m + 2) ** 2 * C, m * (m + 2) * kp + m * m * tw * kp)
    dt = x.dtype
    nv = 1 if unfused else nthreads             # V and M: shared, or one per thread
    S = _buffer("S", nthreads * rows * (m * tw + 2) * C, dt)
    ldt = B * tw                                # a batch's tiles
    V = _buffer("V", nv * al2 * ldt * C, dt)
    M = _buffer("M", nv * al2 * ldt * kp, dt)
    T = _buffer("T", nthreads * tsize, dt)
    F = _buffer("F", max(1, nthreads * fsize), dt)
    with single_threaded_blas():
        _run(x.reshape(-1), Uk.reshape(-1), y.reshape(-1), N, C, H, W, K, P, Q, m, th, tw,
             off_h, off_w, R, G, nsplit, kp, unfused, B, cols, nthreads, S, V, M, T, tsize,
             ep.bias, ep.residual, ep.act, wf, w.shape[0], w.shape[1], kind == "rot", CB, F,
             fsize, tthreads, nhwc)


def _run(const real[::1] x, const real[::1] U, real[::1] y, fc_int N, fc_int C, fc_int H,
         fc_int W, fc_int K, fc_int P, fc_int Q, fc_int m, fc_int th, fc_int tw, fc_int oh,
         fc_int ow, fc_int R, fc_int G, fc_int nsplit, fc_int kp, bint unfused, fc_int B,
         fc_int cols, int nthreads, real[::1] S, real[::1] V, real[::1] M, real[::1] T,
         fc_int tsize, const real[::1] bias, const real[::1] res, int act,
         const real[::1] w, fc_int Kw, fc_int Cw, bint rot, fc_int CB, real[::1] F,
         fc_int fsize, int tthreads, bint nhwc):
    cdef const real *b = &bias[0] if bias.shape[0] else NULL
    cdef const real *r = &res[0] if res.shape[0] else NULL
    cdef const real *wp = &w[0] if w.shape[0] else NULL
    cdef const real *up = &U[0] if U.shape[0] else NULL
    with nogil:
        if unfused:
            _unfused(&x[0], up, &y[0], N, C, H, W, K, P, Q, m, th, tw, oh, ow, B, cols,
                     nthreads, &S[0], &V[0], &M[0], &T[0], tsize, b, r, act, wp, Kw, Cw,
                     rot, CB, &F[0], fsize, tthreads, nhwc)
        else:
            _fused(&x[0], up, &y[0], N, C, H, W, K, P, Q, m, th, tw, oh, ow, R, G, nsplit,
                   kp, nthreads, &S[0], &V[0], &M[0], &T[0], tsize, b, r, act, nhwc)


def _weight_run(const real[::1] x, const real[::1] dy, real[::1] dU, fc_int N, fc_int C, fc_int H,
                fc_int W, fc_int K, fc_int P, fc_int Q, fc_int m, fc_int th, fc_int tw,
                fc_int oh, fc_int ow, bint unfused, fc_int R, fc_int parts, int nthreads,
                real[::1] S, real[::1] D, real[::1] V, real[::1] M, real[::1] T, fc_int tsize):
    with nogil:
        if unfused:
            _unfused_weight(&x[0], &dy[0], &dU[0], N, C, H, W, K, P, Q, m, th, tw, oh, ow, R,
                            nthreads, &S[0], &D[0], &V[0], &M[0], &T[0], tsize)
        else:
            _fused_weight(&x[0], &dy[0], &dU[0], N, C, H, W, K, P, Q, m, th, tw, oh, ow, R,
                          parts, nthreads, &S[0], &D[0], &V[0], &M[0], &T[0], tsize)


def _winograd_weight(plan, m, x, dy, dw, off_h, off_w):
    """dw (K, C, 3, 3) = the weight gradient of the stride-1 3x3 correlation of x with
    offsets off_h, off_w, for dy (N, K, P, Q), by F(m x m, 3x3) transposed: fused
    (blocks of R tile rows in ``parts`` partial sums, each thread its own V and M) or
    unfused (batches of R tile rows, one V and M shared, one sum)."""
    N, C, H, W = x.shape
    K, P, Q = dy.shape[1:]
    th, tw = plan["tiles"]
    unfused = plan.variant == "unfused"
    if unfused:
        R, parts, nthreads = max(1, plan["tile_batch"] // tw), 1, plan.threads
        rows, nv = 1, 1
    else:
        R, parts, nthreads = plan["block_rows"], plan["parts"], plan["threads_used"]
        rows, nv = R, nthreads
    al, dt = m + 2, x.dtype
    al2 = al * al
    tsize = al2 * max(C, K)
    S = _buffer("S", nthreads * (m * rows + 2) * (m * tw + 2) * C, dt)
    D = _buffer("D", nthreads * m * rows * m * tw * K, dt)
    V = _buffer("V", nv * al2 * R * tw * C, dt)
    M = _buffer("M", nv * al2 * R * tw * K, dt)
    T = _buffer("T", nthreads * tsize, dt)
    dU = _buffer("U", parts * al2 * K * C, dt)
    with single_threaded_blas():
        _weight_run(x.reshape(-1), dy.reshape(-1), dU, N, C, H, W, K, P, Q, m, th, tw,
                    off_h, off_w, unfused, R, parts, nthreads, S, D, V, M, T, tsize)
    nt = 1 if plan["serial_filter"] else plan.threads
    tmp = _buffer("F", nt * 3 * al * C, np.float64)
    _filter_t_run(dU, parts, K, C, m, tmp, dw.reshape(-1), nt)


# -- The registry's kernels: run a plan (fastconv._plan._winograd) --------------------------


@larger_kernels
def conv2d(plan, x, w, p, out, epilogue=None):
    """Forward convolution into ``out`` (N, K, P, Q; a channels-last plan: x (N, H, W,
    C) into (N, P, Q, K)), with the ``epilogue``
    (``fastconv.kernels.epilogue``) in the output transform's stores."""
    _winograd(plan, _TILE[plan.algorithm], x, w, "fwd", out, -p.pad_top, -p.pad_left,
              none(x.dtype) if epilogue is None else epilogue)


@larger_kernels
def conv2d_input(plan, dy, w, p, out):
    """Gradient with respect to the input, into ``out`` (N, C, H, W): the forward
    computation on dy with the filter rotated 180 degrees and C, K swapped."""
    _winograd(plan, _TILE[plan.algorithm], np.ascontiguousarray(dy), w, "rot", out,
              p.pad_top - 2, p.pad_left - 2, none(dy.dtype))


@larger_kernels
def conv2d_weight(plan, x, dy, p, out):
    """Gradient with respect to the weight, into ``out`` (K, C, 3, 3)."""
    _winograd_weight(plan, _TILE[plan.algorithm], x, np.ascontiguousarray(dy), out,
                     -p.pad_top, -p.pad_left)
