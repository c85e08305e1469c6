# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""im2col + GEMM convolution: the Cython twin of ``fastconv/kernels/numba/im2col.py``
(same functions, same plans; see that file for the layouts and the reasons).

Every variant the planner (``fastconv._plan._im2col``) makes runs here:

- ``tiled``: per tile of ``plan["tile"]`` = (images, output rows), the patch matrix
  ``col[(c*R + r)*S + s, (t*pr + i)*Q + q]`` is gathered (a patch row per parallel
  iteration) and multiplied by BLAS, one GEMM per group. A tile of one image (whole,
  or a band of its output rows) is read and written by the GEMM in place in NCHW (rows
  P*Q apart); a tile of several images goes through a (K, images, pixels) buffer.
- ``image_gemm`` (1x1 stride-1 layers; the forward of any 1x1 layer without padding,
  strided too): the planes (every stride-th pixel) are the patch matrix, a GEMM per
  image and group: for the forward fastconv's own (``pointwise_panel`` in
  ``src/fc_impl.h``: the weight read as it is, panels of pixels, the epilogue in the
  store; :func:`_pointwise`), for the input gradient ``pointwise_input`` (the weight's
  columns copied a panel at a time, blocks of pixels x input channels stored through
  register transposes; :func:`_pointwise_input`) or, with a small float32 weight (plan
  ``transposed``), the forward's kernel on dy reading the weight transposed in place
  (:func:`_pointwise`), for the weight gradient
  ``pointwise_weight`` (dy's channels against x laid out pixel-major in panels of
  input channels, the sum over the batch's pixels in chunks; :func:`_weight_pointwise`);
  on one thread, NumPy's matmul (``fastconv/kernels/image_gemm.py``, shared with Numba)
  for the input gradient, and for the stride-1 forward without an epilogue in variants
  narrower than AVX-512 (:data:`NUMPY_FORWARD`).
- ``nhwc_gemm``, ``nhwc_tiled`` (channels-last calls): fastconv's own kernels, the
  epilogue in their stores: ``nhwc_gemm`` (1x1) by ``pointwise_nhwc``, ``nhwc_tiled``
  (any other kernel) by ``conv_nhwc`` on a zero-padded copy, its patches read in place
  through a table of offsets (``src/fc_impl.h``; :func:`_pointwise_nhwc`,
  :func:`_conv_nhwc`). Numba runs them as patch matrix + NumPy matmul
  (``kernels/channels_last.py``).
- ``batch_gemm`` (1x1 layers with small planes, N > 1; the input gradient on one
  thread): the batch copied channels-first, one GEMM per group; the weight gradient is
  ``image_gemm``'s, whose chunks of pixels span the small images. The forward, and the
  input gradient on more threads, run ``image_gemm`` on such planes: its panels span
  images (``_pointwise``).
- ``patch_gemm`` (weight gradients with many output pixels per patch row): no patch
  matrix; the input copied zero-padded, the (image, band of ``plan["band_rows"]``
  output rows) items split into ``plan["slices"]`` slices, each with its own
  accumulator, run in parallel; per item the slice copies the band of dy pixel-major
  and runs the register-tiled GEMM that reads the patch rows in place
  (``patch_gemm`` in ``src/fc_impl.h``, as wide as the instruction set). Slices own the
  accumulators and are summed in a fixed order: the result does not depend on the
  thread count.

BLAS is SciPy's (``scipy.linalg.cython_blas``), held at one thread and called in
blocks from OpenMP's threads (:func:`_pgemm`), so OpenMP's threads are the only ones;
on one thread, ``tiled``'s forward and input-gradient GEMMs and ``image_gemm``'s
(above) are NumPy's matmul instead, as in the Numba kernel (NumPy's OpenBLAS ran these
GEMMs 1.1-1.5x faster than SciPy's on the Intel Xeon ``rocketlake``; at one thread it
wakes no BLAS thread). On more threads NumPy's matmul would run on OpenBLAS's own threads,
which then spin for 0.1 s or more after it and take a core from the OpenMP loops that
follow: on AMD EPYC Zen 3, 2 threads, ResNet-50 res2's 3x3 gradients took 6.0-6.2 ms
after a 1x1 forward or input gradient on NumPy's matmul, 2.0 ms after one on
fastconv's own kernel. The gathers,
scatters and copies run on ``fastconv.get_num_threads()`` OpenMP threads; the hot
loops come from the instruction-set variant ``_isa.ISA`` names.
"""
import functools

from cython.parallel cimport prange, threadid
from libc.stdint cimport int64_t
from libc.string cimport memcpy, memset
from scipy.linalg.cython_blas cimport dgemm, sgemm

import numpy as np

from ..._config import (get_num_threads, get_workspace_limit, single_threaded_blas, workspace,
                        workspace_array)
from .. import image_gemm
from ..epilogue import none
from ..weight_cache import CACHE as _weights
from ._epilogue cimport _epilogue_run
from ._hot cimport FC_MR, fc_conv, fc_int, fc_kernels, load_table, real
from ._isa import ISA

cdef const fc_kernels *hot = load_table(__name__, ISA)

#: whether the 1x1 stride-1 forward without an epilogue multiplies by NumPy's matmul on
#: one thread: in variants with vectors narrower than AVX-512's (NumPy's OpenBLAS ran it
#: 1.1-1.2x the own kernel's speed on ResNet-50's 1x1 layers on AVX2, AMD EPYC Zen 3,
#: session 21). With AVX-512 the own kernel (``pointwise_panel``) runs it: on ResNet-50's
#: 1x1 shapes at N = 1 and 8 it ran 1.04-1.35x matmul's speed in float32 (median 1.14)
#: and a median 1.13x in float64 (Intel Xeon Ice Lake, session 47); OpenBLAS zeroes the
#: output before its product.
NUMPY_FORWARD = hot.pointwise_cols_f32() < 64

#: copies and gathers of fewer elements run on the calling thread alone: waking
#: OpenMP's workers costs tens of microseconds (docs/cython.md)
cdef Py_ssize_t SERIAL_ELEMENTS = 32768
#: a GEMM of fewer multiply-adds (one BLAS call, or fastconv's own) runs on
#: the calling thread alone
cdef Py_ssize_t SERIAL_MACS = 1 << 20


cdef inline int _par(Py_ssize_t elements, int nt) noexcept nogil:
    """The threads for a parallel loop over ``elements`` elements."""
    return 1 if elements < SERIAL_ELEMENTS else nt


cdef inline int _par_macs(Py_ssize_t macs, int nt) noexcept nogil:
    """The threads for a parallel GEMM of ``macs`` multiply-adds."""
    return 1 if macs < SERIAL_MACS else nt


cdef fc_conv _geometry(p):
    """The geometry of ConvParams ``p``."""
    cdef fc_conv g
    g.N, g.C, g.H, g.W, g.K, g.R, g.S, g.G = p.N, p.C, p.H, p.W, p.K, p.R, p.S, p.groups
    g.sh, g.sw, g.pt, g.pl = p.stride_h, p.stride_w, p.pad_top, p.pad_left
    g.dh, g.dw, g.P, g.Q = p.dil_h, p.dil_w, p.P, p.Q
    return g


# -- BLAS and copies --------------------------------------------------------------------


cdef void _gemm(bint ta, bint tb, int M, int N, int Kd, const real *A, int lda,
                const real *B, int ldb, real beta, real *C, int ldc) noexcept nogil:
    """Row-major C (M x N, rows ldc apart) = op(A) @ op(B) + beta * C, op(A) M x Kd
    (A stored Kd x M when ``ta``), op(B) Kd x N (B stored N x Kd when ``tb``). BLAS is
    column-major: it computes C^T = op(B)^T op(A)^T."""
    cdef char opa = b'T' if tb else b'N'
    cdef char opb = b'T' if ta else b'N'
    cdef real one = 1
    cdef Py_ssize_t i, j
    if M <= 0 or N <= 0:
        return
    if Kd <= 0:                                     # an empty sum
        for i in range(M):
            for j in range(N):
                C[i * ldc + j] = 0 if beta == 0 else beta * C[i * ldc + j]
        return
    if real is float:
        sgemm(&opa, &opb, &N, &M, &Kd, &one, <float *>B, &ldb, <float *>A, &lda, &beta,
              C, &ldc)
    else:
        dgemm(&opa, &opb, &N, &M, &Kd, &one, <double *>B, &ldb, <double *>A, &lda, &beta,
              C, &ldc)


#: the least rows or columns of a block of :func:`_pgemm`: each block's BLAS call
#: packs the whole of the other operand again
cdef int BLOCK_MIN_SIDE = 128


cdef int _blocks(int M, int N, Py_ssize_t Kd, int nt, int *step) noexcept nogil:
    """How :func:`_pgemm` cuts C (M x N) on ``nt`` threads: the number of blocks along
    its longer side and their ``step`` (rows or columns; a multiple of 16)."""
    cdef int side = N if N >= M else M
    # a power of two, at most 8, of blocks of at least BLOCK_MIN_SIDE; or two of half that
    cdef int parts = 2 if side >= BLOCK_MIN_SIDE else 1
    while parts < 8 and side // (2 * parts) >= BLOCK_MIN_SIDE:
        parts *= 2
    if parts <= 1 or nt <= 1 or <Py_ssize_t>M * N * Kd < SERIAL_MACS:
        step[0] = side
        return 1
    step[0] = ((side + parts - 1) // parts + 15) // 16 * 16
    return (side + step[0] - 1) // step[0]


def gemm_blocks(M, N, Kd, nt):
    """The (blocks, step) :func:`_pgemm` cuts a GEMM of C (M x N), Kd deep, into on
    ``nt`` threads (for tests)."""
    cdef int step
    cdef int parts = _blocks(M, N, Kd, nt, &step)
    return parts, step


cdef void _pgemm(bint ta, bint tb, int M, int N, int Kd, const real *A, int lda,
                 const real *B, int ldb, real beta, real *C, int ldc,
                 int nt) noexcept nogil:
    """:func:`_gemm` on OpenMP's threads: C cut along its longer side into up to 8 blocks
    (:func:`_blocks`: on more than one thread, their number set by the shape alone, so
    the result is the same on 2 threads as on 8; one thread makes one call, which
    OpenBLAS's Haswell kernels round differently from the blocks), one
    single-threaded BLAS call each. BLAS must be held
    at one thread (``single_threaded_blas``): fastconv's threads are then the only ones,
    and no BLAS worker waits for a core that an idle OpenMP worker spins on."""
    cdef int step, i, a, b
    cdef int parts = _blocks(M, N, Kd, nt, &step)
    if parts == 1:
        _gemm(ta, tb, M, N, Kd, A, lda, B, ldb, beta, C, ldc)
        return
    for i in prange(parts, num_threads=nt, schedule="static"):
        a = i * step
        b = min(N if N >= M else M, a + step)
        if N >= M:                      # columns a..b: op(B)'s columns, C's columns
            _gemm(ta, tb, M, b - a, Kd, A, lda, B + (a * ldb if tb else a), ldb, beta,
                  C + a, ldc)
        else:                           # rows a..b: op(A)'s rows, C's rows
            _gemm(ta, tb, b - a, N, Kd, A + (a if ta else a * lda), lda, B, ldb, beta,
                  C + a * ldc, ldc)


cdef void _swap_axes(const real *src, real *dst, Py_ssize_t A, Py_ssize_t B, Py_ssize_t L,
                     int nt) noexcept nogil:
    """dst (B, A, L) = src (A, B, L) with its first two axes swapped: runs of L copied."""
    cdef Py_ssize_t ab, a, b
    for ab in prange(A * B, num_threads=_par(A * B * L, nt), schedule="static"):
        a, b = ab // B, ab % B
        memcpy(dst + (b * A + a) * L, src + ab * L, L * sizeof(real))


cdef inline void _tile(Py_ssize_t i, Py_ssize_t N, Py_ssize_t P, Py_ssize_t tn, Py_ssize_t tr,
                       Py_ssize_t *n0, Py_ssize_t *nt, Py_ssize_t *p0,
                       Py_ssize_t *pr) noexcept nogil:
    """Tile i of the plan's (images, output rows) tile: whole images, or bands of one
    image's output rows (the Numba kernel's ``_tiles``)."""
    cdef Py_ssize_t bands
    if tr >= P:
        n0[0] = i * tn
        nt[0] = min(tn, N - n0[0])
        p0[0] = 0
        pr[0] = P
    else:
        bands = (P + tr - 1) // tr
        n0[0] = i // bands
        nt[0] = 1
        p0[0] = i % bands * tr
        pr[0] = min(tr, P - p0[0])


cdef inline Py_ssize_t _ntiles(Py_ssize_t N, Py_ssize_t P, Py_ssize_t tn,
                               Py_ssize_t tr) noexcept nogil:
    return (N + tn - 1) // tn if tr >= P else N * ((P + tr - 1) // tr)


cdef void _gather(const real *x, real *col, const fc_conv *g, Py_ssize_t n0, Py_ssize_t nt,
                  Py_ssize_t p0, Py_ssize_t pr, int threads) noexcept nogil:
    """The tile's patch matrix into ``col`` (C*R*S, nt*pr*Q): a patch row per iteration."""
    cdef Py_ssize_t rows = g.C * g.R * g.S, row
    for row in prange(rows, num_threads=_par(rows * nt * pr * g.Q, threads),
                      schedule="static"):
        if real is float:
            hot.im2col_row_f32(x, col, g, row, n0, nt, p0, pr)
        else:
            hot.im2col_row_f64(x, col, g, row, n0, nt, p0, pr)


cdef void _rows_to_tile(const real *src, real *dst, const fc_conv *g, Py_ssize_t n0,
                        Py_ssize_t nt, Py_ssize_t KC, int threads) noexcept nogil:
    """dst (KC, nt, P*Q) = src[n0:n0 + nt] ((N, KC, P*Q) of whole images)."""
    _swap_axes(src + n0 * KC * g.P * g.Q, dst, nt, KC, g.P * g.Q, threads)


# -- the fused epilogue (fastconv.kernels.epilogue) ---------------------------------------


cdef void _epilogue(real *out, const real *bias, const real *res, int act, Py_ssize_t n0,
                    Py_ssize_t nt, Py_ssize_t K, Py_ssize_t PQ, Py_ssize_t off, Py_ssize_t L,
                    int threads) noexcept nogil:
    """The epilogue of a tile just written: elements [off, off + L) of the planes of
    images n0 .. n0 + nt - 1 of ``out`` (N, K, PQ); ``bias``, ``res`` NULL when absent."""
    cdef Py_ssize_t nk, o
    for nk in prange(nt * K, num_threads=_par(nt * K * L, threads), schedule="static"):
        o = ((n0 + nk // K) * K + nk % K) * PQ + off
        _epilogue_run(out + o, NULL if res == NULL else res + o,
                      0 if bias == NULL else bias[nk % K], act, L)


cdef void _swap_epilogue(const real *src, real *dst, Py_ssize_t K, Py_ssize_t N,
                         Py_ssize_t L, const real *bias, const real *res, int act,
                         int nt) noexcept nogil:
    """``_swap_axes`` of (K, N, L) into (N, K, L) with the epilogue on each run as it is
    copied (in L1)."""
    cdef Py_ssize_t ab, a, b, o
    for ab in prange(K * N, num_threads=_par(K * N * L, nt), schedule="static"):
        a, b = ab // N, ab % N
        o = (b * K + a) * L
        memcpy(dst + o, src + ab * L, L * sizeof(real))
        _epilogue_run(dst + o, NULL if res == NULL else res + o,
                      0 if bias == NULL else bias[a], act, L)


# -- forward -----------------------------------------------------------------------------


cdef int _forward(const real[:, :, :, ::1] x, const real[:, :, :, ::1] w,
                  real[:, :, :, ::1] out, real[::1] colbuf, real[::1] resbuf,
                  const fc_conv *g, Py_ssize_t tn, Py_ssize_t tr, int nt,
                  const real[::1] bias_a, const real[::1] res_a, int act) except -1:
    """The forward of ``tiled``, the epilogue (``bias_a``, ``res_a`` zero-size when
    absent, ``act``) applied to each tile right after its GEMM while it is in cache
    (BLAS writes the products), or in the copy that lays the tile out as NCHW."""
    cdef Py_ssize_t G = g.G, Kg = g.K // g.G, Cg = g.C // g.G
    cdef Py_ssize_t CgRS = Cg * g.R * g.S, PQ = g.P * g.Q
    cdef Py_ssize_t gi, n, i, n0, ntl, p0, prl, cols
    cdef const real *wp = &w[0, 0, 0, 0]
    cdef real *col
    cdef real *res
    cdef real *op = &out[0, 0, 0, 0]
    cdef const real *bias = &bias_a[0] if bias_a.shape[0] else NULL
    cdef const real *resid = &res_a[0] if res_a.shape[0] else NULL
    cdef bint ep = bias != NULL or resid != NULL or act != 0
    col, res = &colbuf[0], &resbuf[0]             # tiled
    # one thread: NumPy's matmul, as the Numba kernel (NumPy's OpenBLAS, held at one
    # thread here, ran these GEMMs 1.1-1.5x faster than SciPy's; docs/cython.md)
    cdef object wm = None, cb = None, rb = None, on = None
    if nt == 1:
        wm, cb, rb = np.asarray(w).reshape(G, Kg, CgRS), np.asarray(colbuf), np.asarray(resbuf)
        on = np.asarray(out).reshape(g.N, G, Kg, PQ)
    with nogil:
        for i in range(_ntiles(g.N, g.P, tn, tr)):
            _tile(i, g.N, g.P, tn, tr, &n0, &ntl, &p0, &prl)
            cols = ntl * prl * g.Q
            _gather(&x[0, 0, 0, 0], col, g, n0, ntl, p0, prl, nt)
            if ntl == 1:                        # the GEMM writes NCHW (rows PQ apart)
                if nt == 1:
                    with gil:
                        np.matmul(wm, cb[:G * CgRS * cols].reshape(G, CgRS, cols),
                                  out=on[n0, :, :, p0 * g.Q:p0 * g.Q + cols])
                else:
                    for gi in range(G):
                        _pgemm(False, False, Kg, cols, CgRS, wp + gi * Kg * CgRS, CgRS,
                               col + gi * CgRS * cols, cols, 0, &out[n0, gi * Kg, p0, 0], PQ,
                               nt)
                if ep:
                    _epilogue(op, bias, resid, act, n0, 1, g.K, PQ, p0 * g.Q, cols, nt)
            else:                               # whole images: (K, ntl, PQ) -> NCHW
                if nt == 1:
                    with gil:
                        np.matmul(wm, cb[:G * CgRS * cols].reshape(G, CgRS, cols),
                                  out=rb[:g.K * cols].reshape(G, Kg, cols))
                else:
                    for gi in range(G):
                        _pgemm(False, False, Kg, cols, CgRS, wp + gi * Kg * CgRS, CgRS,
                               col + gi * CgRS * cols, cols, 0, res + gi * Kg * cols, cols, nt)
                if ep:
                    _swap_epilogue(<const real *>res, op + n0 * g.K * PQ, g.K, ntl, PQ, bias,
                                   NULL if resid == NULL else resid + n0 * g.K * PQ, act, nt)
                else:
                    _swap_axes(<const real *>res, &out[n0, 0, 0, 0], g.K, ntl, PQ, nt)
    return 0


# -- gradient with respect to the input ---------------------------------------------------


cdef int _input(str variant, const real[:, :, :, ::1] dy, const real[:, :, :, ::1] w,
                real[:, :, :, ::1] out, real[::1] colbuf, real[::1] resbuf, real[:, ::1] ph,
                const fc_conv *g, Py_ssize_t tn, Py_ssize_t tr, int nt) except -1:
    cdef Py_ssize_t G = g.G, Kg = g.K // g.G, Cg = g.C // g.G
    cdef Py_ssize_t CgRS = Cg * g.R * g.S, PQ = g.P * g.Q, HW = g.H * g.W, NPQ = g.N * PQ
    cdef Py_ssize_t gi, n, i, n0, ntl, p0, prl, cols, tc, ldb
    cdef const real *wp = &w[0, 0, 0, 0]
    cdef const real *dyt
    cdef real *col
    cdef real *res
    if variant == "batch_gemm":
        col, res = &colbuf[0], &resbuf[0]
        with nogil:
            _swap_axes(&dy[0, 0, 0, 0], res, g.N, g.K, PQ, nt)      # (K, N, PQ)
            for gi in range(G):
                _pgemm(True, False, Cg, NPQ, Kg, wp + gi * Kg * Cg, Cg, res + gi * Kg * NPQ,
                      NPQ, 0, col + gi * Cg * NPQ, NPQ, nt)
            _swap_axes(<const real *>col, &out[0, 0, 0, 0], g.C, g.N, HW, nt)
        return 0
    col, res = &colbuf[0], &resbuf[0]
    # one thread: NumPy's matmul, as in _forward
    cdef object wt = None, cb = None, rb = None, dn = None
    if nt == 1:
        wt = np.asarray(w).reshape(G, Kg, CgRS).transpose(0, 2, 1)
        cb, rb = np.asarray(colbuf), np.asarray(resbuf)
        dn = np.asarray(dy).reshape(g.N, G, Kg, PQ)
    with nogil:
        memset(&out[0, 0, 0, 0], 0, g.N * g.C * HW * sizeof(real))
        for i in range(_ntiles(g.N, g.P, tn, tr)):
            _tile(i, g.N, g.P, tn, tr, &n0, &ntl, &p0, &prl)
            cols = ntl * prl * g.Q
            if ntl == 1:                        # dy's rows read in place (PQ apart)
                dyt = &dy[n0, 0, p0, 0]
                ldb = PQ
            else:
                _rows_to_tile(&dy[0, 0, 0, 0], res, g, n0, ntl, g.K, nt)
                dyt = res
                ldb = cols
            if nt == 1:
                with gil:
                    np.matmul(wt, dn[n0, :, :, p0 * g.Q:p0 * g.Q + cols] if ntl == 1
                              else rb[:g.K * cols].reshape(G, Kg, cols),
                              out=cb[:G * CgRS * cols].reshape(G, CgRS, cols))
            else:
                for gi in range(G):
                    _pgemm(True, False, CgRS, cols, Kg, wp + gi * Kg * CgRS, CgRS,
                           dyt + gi * Kg * ldb, ldb, 0, col + gi * CgRS * cols, cols, nt)
            for tc in prange(ntl * g.C, num_threads=_par(g.C * g.R * g.S * cols, nt),
                             schedule="static"):
                if real is float:
                    hot.col2im_plane_f32(col, &out[0, 0, 0, 0], g, tc // g.C, tc % g.C, n0, ntl,
                                         p0, prl, &ph[threadid(), 0])
                else:
                    hot.col2im_plane_f64(col, &out[0, 0, 0, 0], g, tc // g.C, tc % g.C, n0, ntl,
                                         p0, prl, &ph[threadid(), 0])
    return 0


# -- gradient with respect to the weight --------------------------------------------------


cdef int _weight(const real[:, :, :, ::1] x, const real[:, :, :, ::1] dy,
                 real[:, :, :, ::1] out, real[::1] colbuf, real[::1] resbuf,
                 const fc_conv *g, Py_ssize_t tn, Py_ssize_t tr, int nt) except -1:
    """The ``tiled`` weight gradient: per tile, the patch matrix times dy's, added."""
    cdef Py_ssize_t G = g.G, Kg = g.K // g.G, Cg = g.C // g.G
    cdef Py_ssize_t CgRS = Cg * g.R * g.S, PQ = g.P * g.Q
    cdef Py_ssize_t gi, i, n0, ntl, p0, prl, cols, lda
    cdef real *wp = &out[0, 0, 0, 0]
    cdef const real *dyt
    cdef real *col
    cdef real *res
    col, res = &colbuf[0], &resbuf[0]
    with nogil:
        for i in range(_ntiles(g.N, g.P, tn, tr)):
            _tile(i, g.N, g.P, tn, tr, &n0, &ntl, &p0, &prl)
            cols = ntl * prl * g.Q
            _gather(&x[0, 0, 0, 0], col, g, n0, ntl, p0, prl, nt)
            if ntl == 1:
                dyt = &dy[n0, 0, p0, 0]
                lda = PQ
            else:
                _rows_to_tile(&dy[0, 0, 0, 0], res, g, n0, ntl, g.K, nt)
                dyt = res
                lda = cols
            for gi in range(G):
                _pgemm(False, True, Kg, CgRS, cols, dyt + gi * Kg * lda, lda,
                      col + gi * CgRS * cols, cols, 0 if i == 0 else 1, wp + gi * Kg * CgRS,
                      CgRS, nt)
    return 0


cdef int _to_padded(const real[:, :, :, ::1] src, real[:, :, :, ::1] dst, Py_ssize_t pt,
                    Py_ssize_t pl, int nt) except -1:
    """dst[n, c, hp, wq] = src[n, c, hp - pt, wq - pl] inside src, else 0 (rows and
    columns of src past dst's end are cropped): the Numba layout's ``to_padded``."""
    cdef Py_ssize_t C = src.shape[1], Hs = src.shape[2], Ws = src.shape[3]
    cdef Py_ssize_t Hp = dst.shape[2], Wq = dst.shape[3]
    cdef Py_ssize_t lo = max(0, -pl), hi = min(Ws, Wq - pl)
    cdef Py_ssize_t h0 = max(0, min(Hp, pt)), h1 = max(0, min(Hp, Hs + pt))
    cdef Py_ssize_t nc, n, c, hp
    cdef real *d
    with nogil:
        for nc in prange(src.shape[0] * C, num_threads=_par(src.shape[0] * C * Hp * Wq, nt),
                         schedule="static"):
            n, c = nc // C, nc % C
            d = &dst[n, c, 0, 0]
            memset(d, 0, h0 * Wq * sizeof(real))
            memset(d + max(h0, h1) * Wq, 0, (Hp - max(h0, h1)) * Wq * sizeof(real))
            for hp in range(h0, h1):
                if hi <= lo:
                    memset(d + hp * Wq, 0, Wq * sizeof(real))
                    continue
                memset(d + hp * Wq, 0, (lo + pl) * sizeof(real))
                memcpy(d + hp * Wq + lo + pl, &src[n, c, hp - pt, lo], (hi - lo) * sizeof(real))
                memset(d + hp * Wq + hi + pl, 0, (Wq - hi - pl) * sizeof(real))
    return 0


cdef int _weight_fused(const real[:, :, :, ::1] xp, const real[:, :, :, ::1] dy,
                       Py_ssize_t n0, Py_ssize_t nimg, const int64_t[:, ::1] offs,
                       Py_ssize_t sh, Py_ssize_t sw, real[:, :, :, ::1] D,
                       real[:, :, :, ::1] A, int nt) except -1:
    """Images [n0, n0 + nimg) of the weight gradient, their padded copies in ``xp``:
    slice t (of ``len(A)``) adds its (image, band) items into ``A[t]`` (G, rows, Kgp),
    copying each band of dy pixel-major into ``D[t]`` (G, band pixels, Kgp) for the GEMM
    (the Numba kernel's ``_weight_fused``)."""
    cdef Py_ssize_t nslices = D.shape[0], G = D.shape[1], cols = D.shape[2], Kgp = D.shape[3]
    cdef Py_ssize_t rows = A.shape[2], P = dy.shape[2], Q = dy.shape[3]
    cdef Py_ssize_t Kg = dy.shape[1] // G, pr = cols // Q
    cdef Py_ssize_t nbands = (P + pr - 1) // pr, nitems = nimg * nbands
    cdef Py_ssize_t pitch = sh * xp.shape[3]
    # the padding columns patch_gemm reads: up to a whole vector past Kg (16 lanes at most)
    cdef Py_ssize_t zc = min(Kgp, (Kg + 15) // 16 * 16) - Kg
    cdef Py_ssize_t t, item, n, p0, nb, gi, px
    with nogil:
        for t in prange(nslices, num_threads=nt, schedule="dynamic"):
            memset(&A[t, 0, 0, 0], 0, G * rows * Kgp * sizeof(real))
            if zc > 0:
                for gi in range(G):
                    for px in range(cols):
                        memset(&D[t, gi, px, Kg], 0, zc * sizeof(real))
            for item in range(nitems * t // nslices, nitems * (t + 1) // nslices):
                n = item // nbands
                p0 = item % nbands * pr
                nb = min(pr, P - p0)
                for gi in range(G):
                    if real is float:
                        hot.pixel_major_f32(&dy[n0 + n, gi * Kg, p0, 0], P * Q, Kg, nb * Q,
                                            &D[t, gi, 0, 0], Kgp)
                        hot.patch_gemm_f32(&xp[n, 0, 0, 0] + p0 * pitch, &offs[gi, 0],
                                           &D[t, gi, 0, 0], &A[t, gi, 0, 0], rows, Kgp, Kg,
                                           nb, Q, pitch, sw)
                    else:
                        hot.pixel_major_f64(&dy[n0 + n, gi * Kg, p0, 0], P * Q, Kg, nb * Q,
                                            &D[t, gi, 0, 0], Kgp)
                        hot.patch_gemm_f64(&xp[n, 0, 0, 0] + p0 * pitch, &offs[gi, 0],
                                           &D[t, gi, 0, 0], &A[t, gi, 0, 0], rows, Kgp, Kg,
                                           nb, Q, pitch, sw)
    return 0


def _weight_blocked(plan, x, dy, p, out):
    """The weight gradient of the ``patch_gemm`` variant (the Numba kernel's
    ``_weight_blocked``): the padded input in groups of images that fit the workspace
    bound, each group's slices summed in a fixed order."""
    G, Kg, CgRS = p.groups, p.K // p.groups, (p.C // p.groups) * p.R * p.S
    pr = plan["band_rows"]
    # padded to whole register blocks of patch_gemm (FC_MR rows x pointwise_cols()
    # columns), not the plan's (Numba's) block: the C loop's tails are scalar (the 7x7/2
    # stem's 147 x 64 padded to Numba's 148 x 72 left 8 columns of every block and 4 rows
    # to them: 6x slower than Numba on AMD Zen 3)
    cw = hot.pointwise_cols_f32() if x.dtype == np.float32 else hot.pointwise_cols_f64()
    rows, Kgp = -(-CgRS // FC_MR) * FC_MR, -(-Kg // cw) * cw
    sh, sw, dh, dw = p.stride_h, p.stride_w, p.dil_h, p.dil_w
    # the padded rows and columns that patches read
    Hp, Wp = (p.P - 1) * sh + (p.R - 1) * dh + 1, (p.Q - 1) * sw + (p.S - 1) * dw + 1
    # patch row (c, r, s) of group g starts at padded row r*dh, column s*dw of channel c
    row = np.minimum(np.arange(rows), CgRS - 1)     # padding rows repeat the last
    c = np.arange(G)[:, None] * (p.C // G) + row // (p.R * p.S)
    offs = np.ascontiguousarray((c * Hp + row // p.S % p.R * dh) * Wp + row % p.S * dw,
                                dtype=np.int64)
    nslices = plan["slices"]
    D = _buffer("D", (nslices, G, pr * p.Q, Kgp), x.dtype)
    A = _buffer("A", (nslices, G, rows, Kgp), x.dtype)
    group = max(1, min(p.N, get_workspace_limit() // (p.C * Hp * Wp * x.itemsize)))
    xp = _buffer("padded", (group, p.C, Hp, Wp), x.dtype)
    acc = _buffer("acc", (G, rows, Kgp), x.dtype)
    nt = get_num_threads()
    for n0 in range(0, p.N, group):
        n1 = min(p.N, n0 + group)
        if x.dtype == np.float32:
            _to_padded[float](x[n0:n1], xp[:n1 - n0], p.pad_top, p.pad_left, nt)
            _weight_fused[float](xp, dy, n0, n1 - n0, offs, sh, sw, D, A, nt)
        else:
            _to_padded[double](x[n0:n1], xp[:n1 - n0], p.pad_top, p.pad_left, nt)
            _weight_fused[double](xp, dy, n0, n1 - n0, offs, sh, sw, D, A, nt)
        if n0 == 0:
            np.sum(A, axis=0, out=acc)
        else:
            acc += A.sum(axis=0)
    out.reshape(G, Kg, CgRS)[...] = acc[:, :CgRS, :Kg].transpose(0, 2, 1)


# -- the registry's kernels: (plan, the reference's arguments) ----------------------------


def _buffer(slot, shape, dtype):
    return workspace_array("im2col." + slot, shape, dtype)


def _buffers(plan, p, dtype):
    """Flat buffers (reused per Python thread) for the variant: the patch matrix and
    GEMM result of the largest tile, or the batch channels-first and its result."""
    if plan.variant == "batch_gemm":
        return (workspace("im2col.xt", p.N * max(p.C, p.K) * p.H * p.W, dtype),
                workspace("im2col.res", p.N * max(p.C, p.K) * p.P * p.Q, dtype))
    if plan.variant == "image_gemm":            # the gradients': none
        return workspace("im2col.col", 1, dtype), workspace("im2col.res", 1, dtype)
    nt, pr = plan["tile"]
    cols = min(nt, p.N) * min(pr, p.P) * p.Q
    return (workspace("im2col.col", p.C * p.R * p.S * cols, dtype),
            workspace("im2col.res", max(1, p.K * cols), dtype))


def _tiles(plan):
    return plan["tile"] if plan.variant == "tiled" else (1, 1)


def conv2d(plan, x, w, p, out, epilogue=None):
    """Forward convolution into ``out`` (N, K, P, Q), with the ``epilogue``
    (``fastconv.kernels.epilogue``) applied tile by tile."""
    if p.K == 0:
        return
    if plan.variant == "nhwc_gemm":             # x (N, H, W, C), out (N, P, Q, K)
        _pointwise_nhwc(x, w, p, out, none(x.dtype) if epilogue is None else epilogue)
        return
    if plan.variant == "nhwc_tiled":            # x (N, H, W, C), out (N, P, Q, K)
        _conv_nhwc(x, w, p, out, none(x.dtype) if epilogue is None else epilogue,
                   plan["band"])
        return
    cdef fc_conv g = _geometry(p)
    ep = none(x.dtype) if epilogue is None else epilogue
    if plan.variant == "image_gemm":
        if (NUMPY_FORWARD and ep.empty and p.stride_h == p.stride_w == 1
                and get_num_threads() == 1):
            with single_threaded_blas():        # NumPy's GEMM, waking no BLAS thread
                image_gemm.forward(x, w, p, out)
        else:
            _pointwise(x, w, p, out, ep, plan["panel_bytes"])
        return
    colbuf, resbuf = _buffers(plan, p, x.dtype)
    tn, tr = _tiles(plan)
    with single_threaded_blas():
        if x.dtype == np.float32:
            _forward[float](x, w, out, colbuf, resbuf, &g, tn, tr, get_num_threads(),
                            ep.bias, ep.residual, ep.act)
        else:
            _forward[double](x, w, out, colbuf, resbuf, &g, tn, tr, get_num_threads(),
                             ep.bias, ep.residual, ep.act)


def _pointwise(x, w, p, out, ep, panel_bytes, transposed=False):
    """The 1x1 forward without padding (``image_gemm``): per (image, group, panel of
    output pixels, slice of output channels), on OpenMP's threads, ``pointwise_panel``
    of ``src/fc_impl.h``, reading the weight as it is (no derived copy to check) with
    the epilogue in its stores: one pass over the output, no BLAS. A panel is as many
    of the kernel's register blocks of pixels as fit ``panel_bytes`` (the plan's) with
    all input channels, up to the kernel's widest (``pointwise_panel_cols``), at least
    one. A strided layer's panel is gathered from every stride-th row and column
    (``pointwise_gather``), with no subsampled copy of the input. Where an image holds
    fewer pixels than a panel (N > 1), panels span images (``_pointwise_span_run``).

    ``transposed``: ``w`` (C, K/groups, 1, 1) is read transposed, as ``p``'s (K,
    C/groups, 1, 1) weight: the 1x1 stride-1 input gradient, with ``p`` the layer's
    geometry with C and K swapped, ``x`` its dy and ``out`` its dx."""
    G, Cg, Kg, HW = p.groups, p.C // p.groups, p.K // p.groups, p.P * p.Q
    wk, wc = (1, Kg) if transposed else (Cg, 1)  # the group's weight (k, c) at wk*k + wc*c
    nb = -(-Kg // FC_MR)
    dt = x.dtype
    f32 = dt == np.float32
    block = hot.pointwise_cols_f32() if f32 else hot.pointwise_cols_f64()
    widest = hot.pointwise_panel_cols_f32() if f32 else hot.pointwise_panel_cols_f64()
    cols = min(widest, max(1, panel_bytes // (max(Cg, 1) * block * dt.itemsize)) * block)
    nt = get_num_threads()
    items = p.N * G * -(-HW // cols)
    # few panels of pixels (an image's last one may hold a few pixels only): every
    # thread takes one slice of the output channels of all of them (the same work
    # each); many: each thread a range of whole panels
    strided = p.stride_h != 1 or p.stride_w != 1
    # images smaller than a panel (7x7, 14x14 at N > 1): panels span images, so the
    # register blocks do not run on a short image's empty lanes (ResNet-50's 2048->512
    # 1x1 on 7x7 at N=8 ran 49 pixels on 64 lanes)
    span = not strided and p.N > 1 and HW < cols
    if span:
        items = G * -(-(p.N * HW) // cols)
    ks = 1 if items >= 4 * nt else min(nb, nt)
    panels = workspace("im2col.panel", nt * Cg * cols, dt)
    if span:
        rows = workspace("im2col.span_rows", nt * Kg * cols * (2 if ep.residual.size else 1),
                         dt)
        _pointwise_span_run(x.reshape(-1), np.ascontiguousarray(w).reshape(-1),
                            out.reshape(-1), ep.bias, ep.residual, ep.act, p.N, G, Cg, Kg,
                            HW, cols, ks, panels, rows, nt, wk, wc)
        return
    _pointwise_run(x.reshape(-1), np.ascontiguousarray(w).reshape(-1), out.reshape(-1),
                   ep.bias, ep.residual, ep.act, p.N, G, Cg, Kg, HW, cols, ks, panels, nt,
                   p.H * p.W, p.W, p.Q, p.stride_h, p.stride_w, wk, wc)


def _pointwise_input(dy, w, p, out, panel_bytes):
    """The 1x1 stride-1 input gradient dx = w^T dy (``image_gemm`` on more than one
    thread): per (image, group, chunk of pixels, slice of input channels), on OpenMP's
    threads, ``pointwise_input`` of ``src/fc_impl.h``: the weight's columns of the
    thread's slice copied in panels once per group, dy's chunk copied, a register block
    of pixels x input channels over all of dy's channels, stored through register
    transposes. No derived copy of the weight is kept (so none is checked: ResNet-50
    res5's 4 MiB weight took 0.2 ms to check, a fifth of the layer) and no BLAS runs. A
    chunk is as many pixels as fit ``panel_bytes`` (the plan's) with all of dy's
    channels."""
    G, Kg, Cg, HW = p.groups, p.K // p.groups, p.C // p.groups, p.H * p.W
    dt = dy.dtype
    cols = hot.pointwise_cols_f32() if dt == np.float32 else hot.pointwise_cols_f64()
    chunk = min(HW, max(1, panel_bytes // (max(Kg, 1) * dt.itemsize)))
    nt = get_num_threads()
    npan = -(-Cg // cols)
    items = p.N * G * -(-HW // chunk)
    # as _pointwise: few chunks, every thread a slice of the input channels of all of
    # them; many, each thread a range of whole chunks
    ks = 1 if items >= 4 * nt else min(npan, nt)
    wcols = -(-npan // ks) * cols                   # a slice's columns, at most
    per_thread = Kg * (wcols + chunk)
    packs = workspace("im2col.pack", nt * per_thread, dt)
    _pointwise_input_run(dy.reshape(-1), np.ascontiguousarray(w).reshape(-1),
                         out.reshape(-1), p.N, G, Kg, Cg, HW, chunk, cols, ks, packs,
                         per_thread, wcols, nt)


def _pointwise_input_run(const real[::1] dy, const real[::1] w, real[::1] dx, fc_int N,
                         fc_int G, fc_int Kg, fc_int Cg, fc_int HW, fc_int chunk,
                         fc_int cols, fc_int ks, real[::1] packs, fc_int per_thread,
                         fc_int wcols, int nt):
    """``_pointwise_input``'s loop; per thread ``per_thread`` elements of ``packs``: the
    weight's columns of its slice (Kg * wcols), then dy's chunk (Kg * chunk)."""
    cdef fc_int nch = (HW + chunk - 1) // chunk, npan = (Cg + cols - 1) // cols
    cdef fc_int P = N * G * nch, items = P * ks, item, part, ng, g, p0, c0, c1, first, last
    cdef fc_int packed                              # part*G + g of the panels in wpack
    cdef int tid, threads = _par_macs(N * Kg * HW * Cg, nt)
    # one chunk of one image: no item reuses a slice's panels, so each is copied just
    # before its use, while it stays in cache (2), not all first (1, 0: kept)
    cdef int once = 2 if N == 1 and nch == 1 else 1
    cdef real *wpack
    with nogil:
        # each thread a contiguous range of items = part*P + (n*G + g)*nch + chunk
        for tid in prange(threads, num_threads=threads, schedule="static", chunksize=1):
            first, last = tid * items // threads, (tid + 1) * items // threads
            wpack = &packs[0] + tid * per_thread
            packed = -1
            for item in range(first, last):
                part = item // P
                ng = item % P // nch                # image n, group g: n*G + g
                g = ng % G
                p0 = item % nch * chunk
                c0 = part * npan // ks * cols
                c1 = min((part + 1) * npan // ks * cols, Cg)
                if real is float:
                    hot.pointwise_input_f32(&dy[0] + ng * Kg * HW, HW, Kg,
                                            &w[0] + g * Kg * Cg, Cg, c0, c1, p0,
                                            min(p0 + chunk, HW), &dx[0] + ng * Cg * HW,
                                            wpack, once if packed != part * G + g else 0,
                                            wpack + Kg * wcols)
                else:
                    hot.pointwise_input_f64(&dy[0] + ng * Kg * HW, HW, Kg,
                                            &w[0] + g * Kg * Cg, Cg, c0, c1, p0,
                                            min(p0 + chunk, HW), &dx[0] + ng * Cg * HW,
                                            wpack, once if packed != part * G + g else 0,
                                            wpack + Kg * wcols)
                packed = part * G + g


#: pixels per work item of the channels-last 1x1 forward, at most (16 register blocks
#: of 6); the pixels are cut into chunks of equal size to within 6 (its register blocks'
#: rows), so that OpenMP's static shares are equal work
cdef fc_int NHWC_ITEM_PIXELS = 96


cdef inline fc_int _chunk_start(fc_int c, fc_int npx, fc_int nchunks) noexcept nogil:
    """The first pixel of chunk c of ``npx`` pixels cut into ``nchunks``: c * npx /
    nchunks to the nearest multiple of 6 (``npx`` for c = nchunks)."""
    if c >= nchunks:
        return npx
    return (c * npx + 3 * nchunks) // (6 * nchunks) * 6


def _nhwc_panels(w):
    """(cols, the weight (K, C, R, S) in panels of ``cols`` output channels, each
    (R*S*C, cols) contiguous, its rows in patch order (r, s, c), zero past K): the
    layout of both channels-last kernels, cached per weight."""
    K = w.shape[0]
    cols = hot.pointwise_cols_f32() if w.dtype == np.float32 else hot.pointwise_cols_f64()
    Kp = -(-K // cols) * cols

    def build():
        wk = np.zeros((Kp, w[0].size), w.dtype)
        wk[:K] = w.transpose(0, 2, 3, 1).reshape(K, -1)
        return np.ascontiguousarray(wk.reshape(Kp // cols, cols, -1).transpose(0, 2, 1))
    return cols, _weights.get(w, ("nhwc_panels", cols), build)


def _pointwise_nhwc(x, w, p, out, ep):
    """The channels-last 1x1 stride-1 forward (``nhwc_gemm``): x (N, H, W, C) is the
    (pixels, C) matrix; per (block of pixels, block of output channels), on OpenMP's
    threads, ``pointwise_nhwc`` of ``src/fc_impl.h`` with the weight laid out once
    (cached per weight) in panels of ``cols`` output channels, each (C, cols)
    contiguous, and the epilogue in its stores: no BLAS, one pass over the output."""
    _pointwise_nhwc_bound(w, p, ep)(x, out, ep.residual)


def _pointwise_nhwc_bound(w, p, ep):
    """``run(x, out, residual)``: :func:`_pointwise_nhwc` for weight ``w``, geometry
    ``p`` and the epilogue's bias and activation, with the weight's panels looked up
    once (``residual``: flat, or zero-size for none)."""
    cols, wt = _nhwc_panels(w)
    wt = wt.reshape(-1)
    bias, act, npx, C, K = ep.bias, ep.act, p.N * p.H * p.W, p.C, p.K

    def run(x, out, residual):
        _pointwise_nhwc_run(x.reshape(-1), wt, out.reshape(-1), bias, residual, act, npx,
                            C, K, cols, get_num_threads())
    return run


def bind_conv2d(plan, w, p, epilogue):
    """``conv2d``'s kernel for ``plan`` bound to weight ``w`` (never modified after:
    a prepared weight's array), as ``run(x, out, residual)`` taking what the kernel
    takes (``residual`` flat, or zero-size for none): the weight's layout and the
    geometry's arguments found once, not on every call (``functional._Conv2dCall.bind``).
    None for a variant without a bound form: ``nhwc_gemm`` has one."""
    if plan.variant == "nhwc_gemm":
        return _pointwise_nhwc_bound(w, p, none(w.dtype) if epilogue is None else epilogue)
    return None


cpdef bint _uneven_shares(fc_int nchunks, fc_int nkp, fc_int K, fc_int cols, int threads):
    """Whether OpenMP's static shares of the (chunk, panel) items (``nchunks`` chunks of
    pixels x ``nkp`` panels of ``cols`` output channels, the last one short when
    ``cols`` does not divide ``K``) give some thread 10% more output channels than the
    mean: at 7x7, MobileNet-v2's 960->160 layer made 3 items of 64, 64 and 32 channels,
    and its first thread took 128 of them."""
    cdef fc_int items = nchunks * nkp, t, i, lo, hi, work, most = 0, total = 0
    if threads < 2:
        return False
    for t in range(threads):                  # GCC's static schedule: contiguous shares,
        lo = t * (items // threads) + min(t, items % threads)     # the first items %
        hi = lo + items // threads + (1 if t < items % threads else 0)   # threads 1 more
        work = 0
        for i in range(lo, hi):
            work += min(cols, K - i % nkp * cols)
        most = max(most, work)
        total += work
    return most * threads * 10 > total * 11


def _pointwise_nhwc_run(const real[::1] x, const real[::1] wt, real[::1] y,
                        const real[::1] bias_a, const real[::1] res_a, int act,
                        fc_int npx, fc_int C, fc_int K, fc_int cols, int nt):
    cdef const real *bias = &bias_a[0] if bias_a.shape[0] else NULL
    cdef const real *res = &res_a[0] if res_a.shape[0] else NULL
    cdef fc_int nkp = (K + cols - 1) // cols
    cdef fc_int nchunks = (npx + NHWC_ITEM_PIXELS - 1) // NHWC_ITEM_PIXELS
    cdef fc_int item, p0, p1, k0
    cdef int threads = _par_macs(npx * K * C, nt)
    if _uneven_shares(nchunks, nkp, K, cols, threads) and npx >= 12 * threads:
        # whole chunks per thread instead (each of ~npx/threads pixels, every panel)
        nchunks = (nchunks + threads - 1) // threads * threads
    with nogil:
        for item in prange(nchunks * nkp, num_threads=threads, schedule="static"):
            p0 = _chunk_start(item // nkp, npx, nchunks)    # item = chunk*nkp + panel: a
            p1 = _chunk_start(item // nkp + 1, npx, nchunks)  # chunk's pixels stay in
            k0 = item % nkp * cols                          # cache across panels
            if real is float:
                hot.pointwise_nhwc_f32(&x[0], C, &wt[0], K, p0, p1, k0, &y[0], bias, res, act)
            else:
                hot.pointwise_nhwc_f64(&x[0], C, &wt[0], K, p0, p1, k0, &y[0], bias, res, act)


@functools.lru_cache(maxsize=64)
def _patch_offsets(R, S, C, dh, dw, Wp):
    """``conv_nhwc``'s offs: patch input (r, s, c)'s offset from the patch's first in a
    zero-padded channels-last image Wp pixels wide, in the weight panels' order
    (read-only; once per geometry)."""
    r, s, c = np.meshgrid(np.arange(R), np.arange(S), np.arange(C), indexing="ij")
    offs = np.ascontiguousarray(((r * dh * Wp + s * dw) * C + c).reshape(-1), np.int64)
    offs.flags.writeable = False
    return offs


def _conv_nhwc(x, w, p, out, ep, band):
    """The channels-last forward of any kernel size (``nhwc_tiled``; the Numba backend
    runs it as patch matrix + GEMM, ``kernels/channels_last.py``): groups of images
    copied zero-padded (a layer without padding reads x in place), then per (image,
    band of ``band`` output rows, panel of output channels), on OpenMP's threads,
    ``conv_nhwc`` of ``src/fc_impl.h``: register blocks of output pixels (the band's
    as one run) x output channels over the patch, read in place through a table of
    offsets (none for a 1x1 kernel; no patch matrix, no BLAS), the
    weight laid out once (cached per weight) in panels of ``cols`` output channels,
    each (R*S*C, cols), the epilogue in its stores."""
    dt = x.dtype
    n = p.R * p.S * p.C
    cols, wt = _nhwc_panels(w)
    Hp, Wp = p.H + p.pad_top + p.pad_bottom, p.W + p.pad_left + p.pad_right
    offs = _patch_offsets(p.R, p.S, p.C, p.dil_h, p.dil_w, Wp)
    image = Hp * Wp * p.C
    padded = Hp != p.H or Wp != p.W
    if padded:
        group = max(1, min(p.N, get_workspace_limit() // (image * x.itemsize)))
        xp = workspace("conv_nhwc.padded", group * image, dt)
    else:                                   # no padding: the patches are read from x
        group, xp = p.N, workspace("conv_nhwc.padded", 1, dt)
    xf, yf, nt = x.reshape(-1), out.reshape(-1), get_num_threads()
    # a weight larger than an image: each panel of it runs every band of the image
    # while it stays in cache, not every panel each band
    rows_inner = wt.nbytes > image * x.itemsize
    for n0 in range(0, p.N, group):
        ng = min(group, p.N - n0)
        _conv_nhwc_run(xf, xp, wt.reshape(-1), offs, yf, ep.bias, ep.residual, ep.act, n0,
                       ng, p.H, p.W, p.C, p.pad_top, p.pad_left, Hp, Wp, p.P, p.Q, p.K,
                       p.stride_h, p.stride_w, n, cols, nt, padded, rows_inner, band)


def _conv_nhwc_run(const real[::1] x, real[::1] xp, const real[::1] wt,
                   const fc_int[::1] offs, real[::1] y, const real[::1] bias_a,
                   const real[::1] res_a, int act, fc_int n0, fc_int ng, fc_int H, fc_int W,
                   fc_int C, fc_int pt, fc_int pl, fc_int Hp, fc_int Wp, fc_int P, fc_int Q,
                   fc_int K, fc_int sh, fc_int sw, fc_int n, fc_int cols, int nt,
                   bint padded, bint rows_inner, fc_int band):
    cdef const real *bias = &bias_a[0] if bias_a.shape[0] else NULL
    cdef const real *res = &res_a[0] if res_a.shape[0] else NULL
    cdef fc_int nkp = (K + cols - 1) // cols, nb = (P + band - 1) // band
    cdef fc_int row, i, hp, item, m, b, pr, k0, o
    cdef real *d
    # the images the patches are read from: the group's padded copy, or x itself
    cdef const real *src = &xp[0] if padded else &x[0] + n0 * H * W * C
    cdef const fc_int *op = NULL if n == C else &offs[0]     # 1x1: no table
    with nogil:
        # the group's images zero-padded: padded row (image i, row hp) per iteration
        for row in prange(ng * Hp if padded else 0, num_threads=_par(ng * Hp * Wp * C, nt),
                          schedule="static"):
            i, hp = row // Hp, row % Hp
            d = &xp[0] + row * Wp * C
            if hp < pt or hp >= pt + H:
                memset(d, 0, Wp * C * sizeof(real))
            else:
                memset(d, 0, pl * C * sizeof(real))
                memcpy(d + pl * C, &x[0] + ((n0 + i) * H + hp - pt) * W * C,
                       W * C * sizeof(real))
                memset(d + (pl + W) * C, 0, (Wp - pl - W) * C * sizeof(real))
        # item = (image m, band b of output rows, panel): the panel varies fastest, so
        # the items of one band share its input rows in cache; rows_inner: the band
        # fastest, so the items of one panel share it in cache
        for item in prange(ng * nb * nkp, num_threads=_par(ng * P * Q * K * n, nt),
                           schedule="static"):
            m = item // (nb * nkp)
            if rows_inner:
                b, k0 = item % nb, item // nb % nkp * cols
            else:
                b, k0 = item // nkp % nb, item % nkp * cols
            pr = b * band
            o = ((n0 + m) * P + pr) * Q * K             # the band's first output element
            if real is float:
                hot.conv_nhwc_f32(src + (m * Hp + pr * sh) * Wp * C, sh * Wp * C,
                                  min(band, P - pr), sw * C, op, n, &wt[0], K, Q, k0,
                                  &y[0] + o, bias, NULL if res == NULL else res + o, act)
            else:
                hot.conv_nhwc_f64(src + (m * Hp + pr * sh) * Wp * C, sh * Wp * C,
                                  min(band, P - pr), sw * C, op, n, &wt[0], K, Q, k0,
                                  &y[0] + o, bias, NULL if res == NULL else res + o, act)


cdef inline void _panel(const real *x, fc_int C, fc_int HW, fc_int p0, fc_int np,
                        const real *W, fc_int wk, fc_int wc, fc_int K, fc_int kb0,
                        fc_int kb1, real *y, const real *bias, const real *res, int act,
                        real *panel, fc_int cw, int fill) noexcept nogil:
    """``pointwise_panel`` of ``src/fc_impl.h`` for real."""
    if real is float:
        hot.pointwise_panel_f32(x, C, HW, p0, np, W, wk, wc, K, kb0, kb1, y, bias, res, act,
                                panel, cw, fill)
    else:
        hot.pointwise_panel_f64(x, C, HW, p0, np, W, wk, wc, K, kb0, kb1, y, bias, res, act,
                                panel, cw, fill)


def _pointwise_run(const real[::1] x, const real[::1] wp, real[::1] y,
                   const real[::1] bias_a, const real[::1] res_a, int act, fc_int N,
                   fc_int G, fc_int Cg, fc_int Kg, fc_int HW, fc_int cols, fc_int ks,
                   real[::1] panels, int nt, fc_int HWi, fc_int W, fc_int Q, fc_int sh,
                   fc_int sw, fc_int wk, fc_int wc):
    """``_pointwise``'s loop: HW output pixels per plane; the input's planes HWi apart,
    rows W wide, read at strides (sh, sw) (Q output pixels per row); the group's weight
    (k, c) at wk*k + wc*c."""
    cdef const real *bias = &bias_a[0] if bias_a.shape[0] else NULL
    cdef const real *res = &res_a[0] if res_a.shape[0] else NULL
    cdef fc_int nb = (Kg + FC_MR - 1) // FC_MR, npan = (HW + cols - 1) // cols
    cdef fc_int P = N * G * npan, items = P * ks, item, n, g, pan, part, p0, o, first, last
    cdef int tid, threads = _par_macs(N * Kg * HW * Cg, nt)
    cdef bint strided = sh != 1 or sw != 1, fill
    cdef const real *xg
    cdef real *panel
    with nogil:
        # each thread a contiguous range of items = part*P + (n*G + g)*npan + pan: with
        # one slice (ks 1) a range of panels, with one slice per thread all panels of
        # its slice (a panel copied once per thread either way)
        for tid in prange(threads, num_threads=threads, schedule="static", chunksize=1):
            first, last = tid * items // threads, (tid + 1) * items // threads
            for item in range(first, last):
                part = item // P
                pan = item % npan
                g = item // npan % G
                n = item % P // (npan * G)
                p0 = pan * cols
                o = (n * G + g) * Kg * HW          # the group's first output plane
                xg = &x[0] + (n * G + g) * Cg * HWi
                panel = &panels[0] + tid * Cg * cols
                fill = item == first or P > 1
                if strided and fill:
                    if real is float:
                        hot.pointwise_gather_f32(xg, Cg, HWi, W, Q, sh, sw, p0,
                                                 HW - p0 if HW - p0 < cols else cols, panel,
                                                 cols)
                    else:
                        hot.pointwise_gather_f64(xg, Cg, HWi, W, Q, sh, sw, p0,
                                                 HW - p0 if HW - p0 < cols else cols, panel,
                                                 cols)
                _panel(xg, Cg, HW, p0, HW - p0 if HW - p0 < cols else cols,
                       &wp[0] + g * Kg * Cg, wk, wc, Kg, part * nb // ks,
                       (part + 1) * nb // ks,
                       &y[0] + o, NULL if bias == NULL else bias + g * Kg,
                       NULL if res == NULL else res + o, act, panel, cols,
                       fill and not strided)


cdef inline void _span_gather(real *dst, const real *src, fc_int HW, fc_int plane,
                              fc_int f0, fc_int np) noexcept nogil:
    """dst[0 .. np) = the batch's pixels f0 .. f0 + np - 1 of src's planes (pixel f: image
    f // HW's plane, ``plane`` elements after the previous image's, at f % HW)."""
    cdef fc_int f = f0, seg
    while f < f0 + np:
        seg = min(HW - f % HW, f0 + np - f)
        memcpy(dst + (f - f0), src + f // HW * plane + f % HW, seg * sizeof(real))
        f = f + seg


cdef inline void _span_scatter(real *dst, const real *src, fc_int HW, fc_int plane,
                               fc_int f0, fc_int np) noexcept nogil:
    """_span_gather's inverse: src[0 .. np) into the pixels f0 .. of dst's planes."""
    cdef fc_int f = f0, seg
    while f < f0 + np:
        seg = min(HW - f % HW, f0 + np - f)
        memcpy(dst + f // HW * plane + f % HW, src + (f - f0), seg * sizeof(real))
        f = f + seg


def _pointwise_span_run(const real[::1] x, const real[::1] wp, real[::1] y,
                        const real[::1] bias_a, const real[::1] res_a, int act, fc_int N,
                        fc_int G, fc_int Cg, fc_int Kg, fc_int HW, fc_int cols, fc_int ks,
                        real[::1] panels, real[::1] rows, int nt, fc_int wk, fc_int wc):
    """``_pointwise``'s loop where an image holds fewer pixels than a panel: each group's
    panels run over the batch's pixels f = n*HW + p in a row, spanning images. A panel's
    columns are gathered image by image; its output rows (those of the item's slice of
    output channels) are computed into the thread's part of ``rows`` (Kg x cols, then as
    much again for the residual's rows, gathered the same way) and copied out to each
    image's planes. Each pixel's sums are the same as ``_pointwise_run``'s."""
    cdef const real *bias = &bias_a[0] if bias_a.shape[0] else NULL
    cdef bint has_res = res_a.shape[0] > 0
    cdef fc_int nb = (Kg + FC_MR - 1) // FC_MR, F = N * HW, npan = (F + cols - 1) // cols
    cdef fc_int P = G * npan, items = P * ks, item, g, part, f0, np, first, last, c, k
    cdef fc_int kb0, kb1, plane = G * Kg * HW
    cdef int tid, threads = _par_macs(N * Kg * HW * Cg, nt)
    cdef real *panel
    cdef real *yb
    cdef real *rb
    with nogil:
        # each thread a contiguous range of items = part*P + g*npan + panel, as
        # _pointwise_run's (a panel gathered once per thread either way)
        for tid in prange(threads, num_threads=threads, schedule="static", chunksize=1):
            first, last = tid * items // threads, (tid + 1) * items // threads
            panel = &panels[0] + tid * Cg * cols
            yb = &rows[0] + tid * Kg * cols * (2 if has_res else 1)
            rb = yb + Kg * cols
            for item in range(first, last):
                part = item // P
                g = item % P // npan
                f0 = item % npan * cols
                np = min(cols, F - f0)
                kb0, kb1 = part * nb // ks, (part + 1) * nb // ks
                if item == first or P > 1:
                    for c in range(Cg):
                        _span_gather(panel + c * cols, &x[0] + (g * Cg + c) * HW, HW,
                                     G * Cg * HW, f0, np)
                        if np < cols:
                            memset(panel + c * cols + np, 0, (cols - np) * sizeof(real))
                for k in range(kb0 * FC_MR, min(kb1 * FC_MR, Kg)):
                    if has_res:
                        _span_gather(rb + k * cols, &res_a[0] + (g * Kg + k) * HW, HW,
                                     plane, f0, np)
                _panel(panel, Cg, cols, 0, np, &wp[0] + g * Kg * Cg, wk, wc, Kg, kb0, kb1,
                       yb, NULL if bias == NULL else bias + g * Kg,
                       rb if has_res else NULL, act, panel, cols, 0)
                for k in range(kb0 * FC_MR, min(kb1 * FC_MR, Kg)):
                    _span_scatter(&y[0] + (g * Kg + k) * HW, yb + k * cols, HW, plane, f0,
                                  np)


def conv2d_input(plan, dy, w, p, out):
    """Gradient with respect to the input, into ``out`` (N, C, H, W): GEMM then col2im."""
    if p.K == 0:
        out[...] = 0
        return
    if plan.variant == "image_gemm":
        if get_num_threads() == 1:
            with single_threaded_blas():        # NumPy's GEMM, waking no BLAS thread
                image_gemm.input_grad(dy, w, p, out)
        elif plan.get("transposed"):            # the forward's kernel on dy
            _pointwise(dy, w, p.transposed(), out, none(dy.dtype), plan["panel_bytes"],
                       transposed=True)
        else:
            _pointwise_input(dy, w, p, out, plan["panel_bytes"])
        return
    cdef fc_conv g = _geometry(p)
    colbuf, resbuf = _buffers(plan, p, dy.dtype)
    tn, tr = _tiles(plan)
    nt = get_num_threads()
    sw = p.stride_w
    ph = _buffer("phases", (nt, sw * (-(-p.W // sw))), dy.dtype)
    with single_threaded_blas():
        if dy.dtype == np.float32:
            _input[float](plan.variant, dy, w, out, colbuf, resbuf, ph, &g, tn, tr, nt)
        else:
            _input[double](plan.variant, dy, w, out, colbuf, resbuf, ph, &g, tn, tr, nt)


cdef void _pw_panel(const real *dy, const real *dyc, const real *panel, real *out,
                    Py_ssize_t K, Py_ssize_t HW, Py_ssize_t Kg, Py_ssize_t Cg, Py_ssize_t cols,
                    Py_ssize_t g, Py_ssize_t chunk, Py_ssize_t l0, Py_ssize_t l1,
                    Py_ssize_t q0, Py_ssize_t q1, Py_ssize_t k0, bint packed) noexcept nogil:
    """Rows [q0, q1) of group g's gradient ``out`` (Kg, Cg) x the ``panel``'s input
    channels from k0, over the chunk's pixels [l0, l1): one ``pointwise_weight`` call
    on dy's copy ``dyc`` (``packed``), else one per image's run of the chunk in dy."""
    cdef Py_ssize_t l = l0, n, ln
    if packed:
        if real is float:
            hot.pointwise_weight_f32(dyc + g * Kg * chunk, chunk, l1 - l0, panel, Cg, q0, q1,
                                     k0, out, l0 > 0)
        else:
            hot.pointwise_weight_f64(dyc + g * Kg * chunk, chunk, l1 - l0, panel, Cg, q0, q1,
                                     k0, out, l0 > 0)
        return
    while l < l1:                                   # image n's run [l, l + ln)
        n = l // HW
        ln = min(l1, (n + 1) * HW) - l
        if real is float:
            hot.pointwise_weight_f32(dy + (n * K + g * Kg) * HW + l - n * HW, HW, ln,
                                     panel + (l - l0) * cols, Cg, q0, q1, k0, out, l > 0)
        else:
            hot.pointwise_weight_f64(dy + (n * K + g * Kg) * HW + l - n * HW, HW, ln,
                                     panel + (l - l0) * cols, Cg, q0, q1, k0, out, l > 0)
        l = l + ln


cdef int _weight_pointwise_run(const real[:, :, :, ::1] x, const real[:, :, :, ::1] dy,
                               real[::1] panels, real[::1] dyc, real[::1] out, Py_ssize_t G,
                               Py_ssize_t Cg, Py_ssize_t Kg, Py_ssize_t cols, Py_ssize_t rows,
                               Py_ssize_t pgroup, Py_ssize_t kc, Py_ssize_t sh, Py_ssize_t sw,
                               int nt) except -1:
    """out[g, k, c] = sum over the batch's pixels l = n*HW + hw of dy[n, g*Kg + k, hw]
    x[n, g*Cg + c, hw] (HW = P*Q; with a stride, x's pixel at row (hw // Q)*sh, column
    (hw % Q)*sw, gathered), in chunks of at most ``kc`` consecutive l (spanning images where
    they are small): the chunk's pixels of x laid out in ``panels`` (G, npan, chunk,
    cols) (input channels past Cg 0), then per work item (group, band of ``rows``
    output channels, ``pgroup`` panels) the own GEMM ``pointwise_weight`` of the band
    with each panel in turn (the panel's chunk stays in L2 while the band's blocks of
    rows run over it), every run's sums added to the ones before in order (the same
    bits on any thread count).
    Where images are smaller than a chunk, dy's runs of it are copied into ``dyc`` (K,
    chunk) first, so each panel takes one call over the whole chunk: a call per 7x7
    image had re-read the item's sums every 49 pixels."""
    cdef Py_ssize_t N = x.shape[0], HW = dy.shape[2] * dy.shape[3], L = N * HW, K = G * Kg
    cdef Py_ssize_t Q = dy.shape[3], W = x.shape[3], plane = x.shape[2] * W
    cdef Py_ssize_t npan = (Cg + cols - 1) // cols, nr = (Kg + rows - 1) // rows
    cdef Py_ssize_t ngr = (npan + pgroup - 1) // pgroup
    cdef Py_ssize_t nch = (L + kc - 1) // kc, chunk = (L + nch - 1) // nch
    cdef Py_ssize_t ci, it, n, g, j, r, nc, px, l0, l1, l, ln, i, o, la, lb
    # the layout's items: each panel's chunk in parts, enough for the threads
    cdef Py_ssize_t parts = 1 if nt == 1 or npan == 0 else max(
        1, min(chunk, (2 * nt + G * npan - 1) // (G * npan)))
    cdef real *dst
    cdef const real *src
    cdef int ptp = _par(chunk * G * npan * cols, nt), ptg = _par_macs(Kg * Cg * G * chunk, nt)
    cdef bint packed = HW < chunk                           # dy's runs copied to dyc
    with nogil:
        for ci in range(nch):
            l0, l1 = L * ci // nch, L * (ci + 1) // nch     # the chunk's pixels
            if packed:
                for it in prange(K, num_threads=_par(chunk * K, nt), schedule="static"):
                    l = l0
                    while l < l1:
                        n = l // HW
                        ln = min(l1, (n + 1) * HW) - l
                        memcpy(&dyc[0] + it * chunk + l - l0, &dy[n, it, 0, 0] + l - n * HW,
                               ln * sizeof(real))
                        l = l + ln
            for it in prange(G * npan * parts, num_threads=ptp, schedule="static"):
                g, j = it // parts // npan, it // parts % npan      # panel it // parts,
                nc = min(cols, Cg - j * cols)                       # pixels [la, lb)
                la = l0 + (l1 - l0) * (it % parts) // parts
                lb = l0 + (l1 - l0) * (it % parts + 1) // parts
                l = la
                while l < lb:                               # image n's run [l, l + ln)
                    n = l // HW
                    ln = min(lb, (n + 1) * HW) - l
                    dst = &panels[0] + (it // parts * chunk + l - l0) * cols
                    src = &x[n, g * Cg + j * cols, 0, 0]
                    if sh != 1 or sw != 1:                  # output pixel o's input
                        for px in range(ln):
                            o = l - n * HW + px
                            for i in range(nc):
                                dst[px * cols + i] = src[i * plane + o // Q * sh * W
                                                         + o % Q * sw]
                    elif real is float:
                        hot.pixel_major_f32(src + l - n * HW, HW, nc, ln, dst, cols)
                    else:
                        hot.pixel_major_f64(src + l - n * HW, HW, nc, ln, dst, cols)
                    if nc < cols:
                        for px in range(ln):
                            memset(dst + px * cols + nc, 0, (cols - nc) * sizeof(real))
                    l = l + ln
            for it in prange(G * nr * ngr, num_threads=ptg, schedule="dynamic"):
                g, r = it // (nr * ngr), it // ngr % nr
                for j in range(it % ngr * pgroup, min(npan, (it % ngr + 1) * pgroup)):
                    _pw_panel(&dy[0, 0, 0, 0], &dyc[0] if packed else NULL,
                              &panels[0] + (g * npan + j) * chunk * cols,
                              &out[0] + g * Kg * Cg, K, HW, Kg, Cg, cols, g, chunk, l0, l1,
                              r * rows, min(Kg, (r + 1) * rows), j * cols, packed)
    return 0


def _weight_pointwise(x, dy, p, out, panel_bytes):
    """The 1x1 weight gradient without padding (``image_gemm``, ``batch_gemm``; strided
    too) by fastconv's own GEMM, no BLAS: dy's channels against x's laid out
    pixel-major in panels of ``pointwise_cols()`` channels, in chunks of the batch's
    pixels whose panel takes at most ``panel_bytes`` (the plan's), each work item a
    group of panels (and a band of dy's channels where the panels are too few for the
    threads; :func:`_weight_pointwise_run`)."""
    G, Cg, Kg, HW = p.groups, p.C // p.groups, p.K // p.groups, p.P * p.Q
    if p.N * HW == 0:
        out.fill(0)                                 # an empty sum
        return
    dt = x.dtype
    cols = hot.pointwise_cols_f32() if dt == np.float32 else hot.pointwise_cols_f64()
    nt = get_num_threads()
    kc = max(1, panel_bytes // (cols * dt.itemsize))  # pixels per chunk
    npan, nch = -(-Cg // cols), -(-(p.N * HW) // kc)
    chunk = -(-(p.N * HW) // nch)
    panels = workspace("im2col.weight_panels", G * npan * chunk * cols, dt)
    dyc = workspace("im2col.weight_dy", p.K * chunk if HW < chunk else 1, dt)
    # work items: a group's panels in groups, bands of its output channels where there
    # are too few panels for the threads
    nr = (min(-(-Kg // FC_MR), -(-4 * nt // (G * npan)))
          if nt > 1 and G * npan < 4 * nt else 1)
    rows = -(-Kg // nr)
    ngr = min(npan, -(-4 * nt // (G * nr))) if nt > 1 else 1
    pgroup = -(-npan // max(1, ngr))
    if dt == np.float32:
        _weight_pointwise_run[float](x, dy, panels, dyc, out.reshape(-1), G, Cg, Kg, cols,
                                     rows, pgroup, kc, p.stride_h, p.stride_w, nt)
    else:
        _weight_pointwise_run[double](x, dy, panels, dyc, out.reshape(-1), G, Cg, Kg, cols,
                                      rows, pgroup, kc, p.stride_h, p.stride_w, nt)


def conv2d_weight(plan, x, dy, p, out):
    """Gradient with respect to the weight, into ``out`` (K, C/groups, R, S)."""
    if p.K == 0:
        return
    if plan.variant == "patch_gemm":
        _weight_blocked(plan, x, dy, p, out)
        return
    if plan.variant in ("image_gemm", "batch_gemm"):       # 1x1 unpadded: own GEMM
        _weight_pointwise(x, dy, p, out, plan["panel_bytes"])
        return
    cdef fc_conv g = _geometry(p)
    colbuf, resbuf = _buffers(plan, p, x.dtype)
    tn, tr = _tiles(plan)
    with single_threaded_blas():
        if x.dtype == np.float32:
            _weight[float](x, dy, out, colbuf, resbuf, &g, tn, tr, get_num_threads())
        else:
            _weight[double](x, dy, out, colbuf, resbuf, &g, tn, tr, get_num_threads())
