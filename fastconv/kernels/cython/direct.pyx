# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Direct convolution: the Cython twin of ``fastconv/kernels/numba/direct.py`` (same
functions, same plans from ``fastconv._plan._direct``), register-tiled C loops from
``src/fc_direct.h`` compiled per instruction set.

Variants (``VARIANTS`` in ``__init__.py``):

- ``lanes`` (conv2d, and conv2d_input at stride 1): every geometry, both dtypes. The
  output channels are the vector lanes: a register block of ``MR`` output pixels x
  ``block(dtype)`` output channels (14 x 32 float32, 14 x 16 float64 with AVX-512;
  6 x 16 and 6 x 8 with AVX2; 6 x 8 and 6 x 4 in the baseline), FMAs of two weight
  vectors by each pixel's input broadcast, over the input channels and taps. The
  block is one output row of MR pixels, or two rows of MR/2 where that computes fewer
  padding pixels on short rows (``_rows``; ResNet's 7 x 7), or MR consecutive pixels
  of the flattened output grid, wrapping from one row to the next (each pixel's input
  at its own offset), where that computes few enough (``plan["wrap_work"]``: 7 x 7 on
  6-pixel blocks, 54 pixels computed for 49 against 63). The input is laid out per
  slice of images (about ``plan["slice_bytes"]`` per thread, so the kernel reads it
  from cache) as zero-padded phase planes ``xb[n, c, hp, b, wq]`` (padded column
  ``wq*sw + b``), where every tap of a block reads consecutive columns whatever the
  stride; or, for the forward's one-row blocks on few channels (:func:`_unpadded`:
  stems), not at all: each block reads its window of x in place, or a zero-padded
  copy of it at x's borders. The weight as ``wb[g, kb, c, r, s, k]`` (output channels
  last, zero past the group's), cached per weight (``kernels/weight_cache.py``). A work
  item is a band of output rows (of a row's worth of wrapping blocks) of one image,
  group and channel block; each block keeps its sums in registers and stores them once,
  through the epilogue (bias, residual, activation). The input gradient is this
  forward on ``grad_output`` with the weight rotated by 180 degrees, C and K swapped
  (padding ``dil*(R-1) - pad``).
- ``flat`` (conv2d, and conv2d_input at stride 1; float32, where the rules choose it:
  short rows on short patches, some stride-2 forwards): the pixels are the vector
  lanes, the output grid flattened (:func:`_flat`).
- ``phases`` (conv2d_input, stride > 1): one stride-1 forward of ``grad_output`` per
  residue class of the rows and columns of dx (the plan's ``rows``, ``cols``: the
  class's taps, padding, first row and dilation, ``_plan.input_grad_phases``; its
  ``cores``: ``lanes`` where C/groups fills a block, ``_plan.lanes_phase``, else
  ``flat``), each with its sub-kernel, writing every stride-th row and column of dx;
  nothing multiplies an inserted zero.
- ``blocked`` (conv2d_weight): work items (group, block of input channels, block of
  output channels), the batch cut in the plan's ``batch_splits`` parts, each with its
  own gradient, summed in order. Image by image and tap by tap, a register block of
  input channels (a cache line of them with AVX-512, else MR) x the output channels
  sums the image's pixels, FMAs of dy's channels by the input channels broadcast (dy
  laid out ``dyb[n, g, kb, p, q, k]``, the input zero-padded in blocks of the
  register block's input channels per pixel, ``xf[n, g, cb, hp, wp, c]``), kept
  between images in accumulators: image by image or item by item
  (:func:`_weight_image_outer`).
- ``depthwise`` (C == groups): plane by plane, each input plane copied into a
  zero-padded phase tile (in L1), then blocks of ``DW_ROWS`` output rows (7 where P
  is a multiple of 7 and not of DW_ROWS) x one vector of columns, a weight broadcast
  per tap; the input gradient at stride 1 with K == C is the same on ``grad_output``
  with the weight rotated. The weight gradient works per output channel on the same
  tiles. ``depthwise_scatter`` (the other input gradients) adds each tap's products
  into dx plane by plane.

Work items run on ``fastconv.get_num_threads()`` OpenMP threads, each item writing
only its own outputs, so results do not depend on the thread count: the forward cores'
(``lanes``, ``flat``) in chunks taken in turn, the first thread checking a cached
weight layout first (:func:`_pending`); the others' in one contiguous range per
thread (a thread's images stay in its cache).
"""
from cython.parallel cimport parallel, prange, threadid
from libc.string cimport memcmp, memmove, memset

import functools

import numpy as np

from ..._config import get_num_threads, workspace, workspace_array
from ..epilogue import Epilogue, apply, none
from ..layouts import depthwise_taps, flat_pitch, unpadded, zero_padded_nhwc
from ..weight_cache import CACHE as _weights
from ._hot cimport FC_DTILE, fc_direct, fc_dw, fc_dweight, fc_int, fc_kernels, load_table, real
from ._isa import ISA
from .layout import address

cdef const fc_kernels *hot = load_table(__name__, ISA)

#: pixels of the register block (FC_DMR in src/fc_isa.h)
MR = hot.direct_pixels
cdef Py_ssize_t MR_ = hot.direct_pixels
#: output channels of the flat core's block (FC_FKB in src/fc_isa.h)
FLAT_KB = hot.direct_flat_channels

#: copies of fewer elements run on the calling thread alone (as in im2col.pyx)
cdef Py_ssize_t SERIAL_ELEMENTS = 32768


cdef inline int _par(Py_ssize_t elements, int nt) noexcept nogil:
    return 1 if elements < SERIAL_ELEMENTS else nt


cdef struct fc_pending:
    # a cached weight layout's check (``WeightCache.get_unchecked``): memcmp of the
    # weight and its copy, nbytes long (0: none), made by the first thread of the cores'
    # parallel region while the others start on the work items; same: its result
    const char *copy
    const char *w
    size_t nbytes
    bint same


cdef fc_pending _pending(check):
    """``check`` (``get_unchecked``'s: None, or bitwise_equal bound to the copy and
    the weight) for the cores' region; one it cannot memcmp (not C-contiguous) is made
    here at once (``same`` False: the caller builds a fresh layout first)."""
    cdef fc_pending pd
    pd.nbytes, pd.same = 0, True
    if check is not None:
        copy, w = check.args
        if copy.flags.c_contiguous and w.flags.c_contiguous:
            pd.copy = <const char *><size_t>address(copy)
            pd.w = <const char *><size_t>address(w)
            pd.nbytes = w.nbytes
        else:
            pd.same = check()
    return pd


cdef object _layout(fc_pending *pd, wb, wkey, tag, build):
    """``wb``, or, when ``pd`` found the weight changed, a fresh layout (stored, and
    ``pd`` then checks nothing): what the cores' next run of a slice reads."""
    if pd.same:
        return wb
    pd[0] = _pending(None)
    return _weights.put(wkey, tag, build())


cdef inline Py_ssize_t _chunk(Py_ssize_t items, int nt) noexcept nogil:
    """The cores' work items per chunk: 4 chunks per thread, taken in turn (as
    ``fastconv.kernels.threads.run`` takes them for Numba's kernels), so the thread that
    makes the weight's check takes fewer."""
    return max(1, items // (4 * nt))


def block(dtype):
    """Output channels of the register block for ``dtype`` (two vectors)."""
    return hot.direct_block_f32() if np.dtype(dtype) == np.float32 else hot.direct_block_f64()


def _rows(P, Q, wrap_work=0):
    """Rows of the forward's pixel block on P x Q outputs: 2 (of MR/2 pixels) where that
    computes fewer padding pixels than rows of MR, else 1; 0 (MR consecutive pixels of
    the flattened output grid, rows wrapping) where that computes at most ``wrap_work``
    (``plan["wrap_work"]``) of the pixels those compute (7 x 7 outputs on 6-pixel
    blocks: 54 against 63)."""
    one = P * -(-Q // MR) * MR
    two = -(-P // 2) * 2 * -(-Q // (MR // 2)) * (MR // 2)
    rows = 2 if P > 1 and two < one else 1
    # pixels computed: an odd last row under row pairs is a half block of its own
    done = P * -(-Q // (MR // rows)) * (MR // rows)
    return 0 if -(-P * Q // MR) * MR <= wrap_work * done else rows


def _blocked(w, G, KB, flip):
    """wb[g, kb, c, r, s, k] = w[g*Kg + kb*KB + k, c, r, s] (0 past Kg); ``flip``: the
    input gradient's, w rotated by 180 degrees with its two channel axes swapped."""
    K, Cg, R, S = w.shape
    v = w.reshape(G, K // G, Cg, R, S)
    if flip:
        v = v[:, :, :, ::-1, ::-1].transpose(0, 2, 1, 3, 4)
    O = v.shape[1]
    wb = np.zeros((G, -(-O // KB) * KB) + v.shape[2:], w.dtype)
    wb[:, :O] = v
    return np.ascontiguousarray(wb.reshape((G, -1, KB) + v.shape[2:]).transpose(0, 1, 3, 4, 5, 2))


# -- the forward core (conv2d, conv2d_input) -----------------------------------------------


#: the cores' tap offsets (int64 arrays) by their geometry's key: made once, as networks
#: call the same geometries again and again (making the array took about 2 us a call)
_TAPS = {}


def _taps(key, offsets):
    """The read-only array of ``offsets``, kept in ``_TAPS`` under ``key``."""
    if len(_TAPS) >= 256:
        _TAPS.clear()
    toff = _TAPS[key] = np.array(offsets, np.int64)
    toff.flags.writeable = False
    return toff


#: elements of a block's window the unpadded lanes core copies at the input's borders
#: (FC_DTILE): 2048, 8 KiB of float32
TILE = FC_DTILE


def _unpadded(rows, streamed, flip, sw, Cg, TR, TW):
    """Whether the lanes core reads the input as it is (``fc_direct.unpadded``): the
    forward's one-row blocks of stride 1 or 2 whose window (TR x TW pixels of Cg
    channels: few input channels, stems) fits ``TILE`` elements. Its blocks then read x
    in place, those at its borders a zero-padded copy of their window, and no phase
    layout is made. The layout had taken 7% of the 3 -> 32 3x3/2 RGB stem's forward at
    N=1; without it the stem ran 5-8% faster on 1 thread and 8-14% on 2 (N = 1 and 8),
    a 7x7/2 stem within 2% either way. Larger windows lost: the input gradient's classes of 128 ->
    128 3x3/2 (windows of 1792-3840) ran 9% slower at N=8 (AMD EPYC Zen 4)."""
    return rows == 1 and not streamed and not flip and sw <= 2 and Cg * TR * TW <= FC_DTILE


cdef int _core_run(const real[:, :, :, ::1] x, real[::1] xb, const real[::1] wb,
                   real[:, :, :, ::1] out, fc_direct *d, fc_int sw, fc_int Wq, fc_int pt,
                   fc_int pl, const real[::1] bias_a, const real[::1] res_a,
                   int nt, bint streamed, bint flip, real[::1] wl,
                   fc_pending *pd) except -1:
    """The phase layout of the slice x, then every work item of it into out (both the
    slice's images; ``res_a`` the slice's residual), the first thread making ``pd``'s
    check first. ``streamed``: wb is the weight as it is (``flip``: the input
    gradient's), each item laying out its block into the thread's part of ``wl``.
    ``d.unpadded``: no layout, the items read x as it is."""
    cdef Py_ssize_t H = x.shape[2], W = x.shape[3], Hp = d.plane // d.rp
    cdef Py_ssize_t nrows = 0 if d.unpadded else x.shape[0] * x.shape[1] * Hp
    cdef const real *src = &x[0, 0, 0, 0] if d.unpadded else &xb[0]
    cdef Py_ssize_t items = (d.G * d.Kb if streamed
                             else x.shape[0] * d.G * d.Kb * d.brow), it
    cdef Py_ssize_t wsize = wl.shape[0] // nt, chunk = _chunk(items, nt)
    d.bias = &bias_a[0] if bias_a.shape[0] else NULL
    d.res = &res_a[0] if res_a.shape[0] else NULL
    with nogil:
        for it in prange(nrows, num_threads=_par(nrows * d.rp, nt), schedule="static"):
            if real is float:
                hot.direct_phase_row_f32(&x[0, 0, 0, 0], H, W, &xb[0], Hp, sw, Wq, pt, pl, it)
            else:
                hot.direct_phase_row_f64(&x[0, 0, 0, 0], H, W, &xb[0], Hp, sw, Wq, pt, pl, it)
        with parallel(num_threads=nt):
            if threadid() == 0 and pd.nbytes:
                pd.same = memcmp(pd.copy, pd.w, pd.nbytes) == 0
            for it in prange(items, schedule="dynamic", chunksize=chunk):
                if streamed:
                    if real is float:
                        hot.direct_streamed_item_f32(&xb[0], &wb[0], &out[0, 0, 0, 0], d,
                                                     x.shape[0], flip, it,
                                                     &wl[0] + threadid() * wsize)
                    else:
                        hot.direct_streamed_item_f64(&xb[0], &wb[0], &out[0, 0, 0, 0], d,
                                                     x.shape[0], flip, it,
                                                     &wl[0] + threadid() * wsize)
                elif real is float:
                    hot.direct_item_f32(src, &wb[0], &out[0, 0, 0, 0], d, it)
                else:
                    hot.direct_item_f64(src, &wb[0], &out[0, 0, 0, 0], d, it)
    return 0


cdef object _output(fc_direct *d, out, orow, ocol, ep):
    """The forward cores' output fields of ``d``: out's shape, where output pixel (p, q)
    goes (rows orow[0] + p*orow[1], columns ocol[0] + q*ocol[1]) and the activation;
    returns the epilogue (none when ``ep`` is None)."""
    ep = none(out.dtype) if ep is None else ep
    d.K, d.OH, d.OW = out.shape[1], out.shape[2], out.shape[3]
    d.oh0, d.ohs, d.ow0, d.ows = orow[0], orow[1], ocol[0], ocol[1]
    d.act = ep.act
    return ep


def _core(x, w, out, slice_bytes, G, P, Q, R, S, sh, sw, pt, pl, dh, dw, flip=False,
          wkey=None, kind=(), orow=(0, 1), ocol=(0, 1), ep=None, core="lanes", wrap_work=0,
          checked=False):
    """out (N, K', OH, OW) at rows orow[0] + p*orow[1], columns ocol[0] + q*ocol[1] = the
    direct correlation (P x Q outputs) of x (N, C', H, W) padded by (pt, pl) with w (K',
    C'/G, R, S), or with w (C', K'/G, R, S) rotated (``flip``: the input gradient's),
    through the epilogue ``ep``; the batch in slices of about ``slice_bytes`` of layout
    per thread. ``wkey``/``kind``: the array and tag the weight cache keys on; ``core``:
    ``lanes``, ``lanes_streamed`` (no cached layout, each work item lays out its block
    of w itself) or ``flat`` (:func:`_flat`); ``wrap_work``: ``_rows``'s; ``checked``:
    the weight cache's entry for ``wkey`` was checked against it earlier in this call
    (the input gradient's phases after their first), so a cached layout is used as it
    is."""
    cdef fc_direct d
    cdef fc_pending pd
    if core == "flat":
        _flat(x, w, out, slice_bytes, G, P, Q, R, S, sh, sw, pt, pl, dh, dw, flip, wkey,
              kind, orow, ocol, ep, checked)
        return
    streamed = core == "lanes_streamed"
    dtype = x.dtype
    N, C = x.shape[:2]
    K = out.shape[1]
    KB = block(dtype)
    Cg, Kg = C // G, K // G
    rows = _rows(P, Q, wrap_work)
    if rows:
        CB = MR // rows
        brow, bcol = -(-P // rows), -(-Q // CB)
        P_, Q_ = brow * rows, bcol * CB             # the outputs the blocks cover
    else:                                           # bands of a row's worth of blocks
        blocks, bcol = -(-P * Q // MR), -(-Q // MR)
        brow = -(-blocks // bcol)
        P_, Q_ = P, Q
    # rows and phase columns every block's taps read: tap (r, s) of output (p, q) reads
    # padded (p*sh + r*dh, q*sw + s*dw): row p*sh + r*dh, phase (s*dw) % sw, column
    # q + (s*dw) // sw of it, at r*dh*rp + toff_s[s] from output (p, q)'s tap (0, 0)
    Hp = (P_ - 1) * sh + (R - 1) * dh + 1
    Wq = Q_ + (S - 1) * dw // sw
    key = (R, S, dh, dw, sw, Wq)
    toff = _TAPS.get(key)
    if toff is None:
        toff_s = [(s * dw) % sw * Wq + (s * dw) // sw for s in range(S)]
        toff = _taps(key, [r * dh * sw * Wq + toff_s[s] for r in range(R) for s in range(S)])
    cdef const fc_int[::1] toff_v = toff
    d.G, d.Cg, d.Kg, d.Kb, d.R, d.S, d.sh, d.dh = G, Cg, Kg, -(-Kg // KB), R, S, sh, dh
    d.rp, d.plane, d.P, d.Q, d.rows, d.brow, d.bcol = sw * Wq, Hp * sw * Wq, P, Q, rows, brow, bcol
    ep = _output(&d, out, orow, ocol, ep)
    d.toff = &toff_v[0]
    nt = get_num_threads()
    TR, TW = (R - 1) * dh + 1, (MR - 1) * sw + (S - 1) * dw + 1
    d.unpadded = _unpadded(rows, streamed, flip, sw, Cg, TR, TW)
    if d.unpadded:
        H, W = x.shape[2:]
        key = ("unpadded", R, S, dh, dw, W, TW)
        offsets = _TAPS.get(key)
        if offsets is None:
            offsets = _taps(key, [r * dh * W + s * dw for r in range(R) for s in range(S)]
                                 + [r * dh * TW + s * dw for r in range(R) for s in range(S)])
        toff_v = offsets
        d.toff, d.toff_tile = &toff_v[0], &toff_v[R * S]
        d.H, d.W, d.sw, d.dw, d.pt, d.pl, d.TR, d.TW = H, W, sw, dw, pt, pl, TR, TW
        d.plane = H * W
        image, nb = 0, N
    else:
        image = C * d.plane
        nb = max(1, min(N, nt * slice_bytes // (image * dtype.itemsize)))
    xb = workspace("cython_direct_x", nb * image, dtype)
    per_image = K * P * Q
    check = tag = build = None          # a streamed core keeps no layout: no check
    if streamed:
        wb = np.ascontiguousarray(w).reshape(-1)
        wl = workspace("cython_direct_wl", nt * Cg * R * S * KB, dtype)
    else:
        wkey = w if wkey is None else wkey
        tag = ("direct_cython", flip, G, KB) + kind
        build = lambda: _blocked(w, G, KB, flip).reshape(-1)
        wb, check = _weights.get_unchecked(wkey, tag, build)
        if checked:
            check = None
        wl = xb[:0]
    for n0 in range(0, N, nb):
        n1 = min(N, n0 + nb)
        e = ep.images(n0, n1, per_image)
        pd = _pending(check)                # the first slice's region makes the check
        while True:
            wb = _layout(&pd, wb, wkey, tag, build)
            if dtype == np.float32:
                _core_run[float](x[n0:n1], xb, wb, out[n0:n1], &d, sw, Wq, pt, pl, e.bias,
                                 e.residual, nt, streamed, flip, wl, &pd)
            else:
                _core_run[double](x[n0:n1], xb, wb, out[n0:n1], &d, sw, Wq, pt, pl, e.bias,
                                  e.residual, nt, streamed, flip, wl, &pd)
            if pd.same:
                break                       # else the slice again, on a fresh layout
        check = None

cdef int _flat_run(const real[:, :, :, ::1] x, real[::1] xb, const real[::1] wb,
                   real[:, :, :, ::1] out, fc_direct *d, fc_int Hq, fc_int sh, fc_int sw,
                   fc_int pt, fc_int pl, const real[::1] bias_a, const real[::1] res_a,
                   int nt, fc_pending *pd) except -1:
    """The flat core's phase planes of the slice x, then every work item of it into out
    (``res_a`` the slice's residual), the first thread making ``pd``'s check first."""
    cdef Py_ssize_t H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t nrows = x.shape[0] * x.shape[1] * sh * Hq
    cdef Py_ssize_t items = x.shape[0] * d.G * d.Kb * d.nf, it, chunk = _chunk(items, nt)
    d.bias = &bias_a[0] if bias_a.shape[0] else NULL
    d.res = &res_a[0] if res_a.shape[0] else NULL
    with nogil:
        for it in prange(nrows, num_threads=_par(nrows * sw * d.Wq, nt), schedule="static"):
            if real is float:
                hot.direct_flat_row_f32(&x[0, 0, 0, 0], H, W, &xb[0], Hq, sh, sw, d.Wq, pt,
                                        pl, it)
            else:
                hot.direct_flat_row_f64(&x[0, 0, 0, 0], H, W, &xb[0], Hq, sh, sw, d.Wq, pt,
                                        pl, it)
        with parallel(num_threads=nt):
            if threadid() == 0 and pd.nbytes:
                pd.same = memcmp(pd.copy, pd.w, pd.nbytes) == 0
            for it in prange(items, schedule="dynamic", chunksize=chunk):
                if real is float:
                    hot.direct_flat_item_f32(&xb[0], &wb[0], &out[0, 0, 0, 0], d, it)
                else:
                    hot.direct_flat_item_f64(&xb[0], &wb[0], &out[0, 0, 0, 0], d, it)
    return 0


def _flat(x, w, out, slice_bytes, G, P, Q, R, S, sh, sw, pt, pl, dh, dw, flip, wkey, kind,
          orow, ocol, ep, checked):
    """The ``flat`` core (stride 1, or 2 along both axes): the output grid flattened
    (pixel f = p*Wq + q, rows of Wq columns, ``layouts.flat_pitch``; the columns past Q
    computed and dropped), blocks of ``direct_flat_pixels`` consecutive pixels (the
    vector lanes) x ``FLAT_KB`` output channels (broadcast weights), so short rows
    waste no lanes and few output channels waste few (the input gradient's phases of
    an RGB stem: 3). The input as zero-padded phase planes ``xb[n, c, a, b, i, wq]`` =
    padded (i*sh + a, wq*sw + b): tap (r, s) of pixel f reads f + toff[r*S + s] of its
    channel's planes. The weight as ``wb[g, kb, c, r, s, k]`` (k < FLAT_KB), cached.
    The Numba backend's ``flat`` core; arguments as :func:`_core`'s."""
    cdef fc_direct d
    cdef fc_pending pd
    cdef const fc_int[::1] toff_v
    dtype = x.dtype
    N, C, H, W = x.shape
    K = out.shape[1]
    KB = FLAT_KB
    J = hot.direct_flat_pixels_f32() if dtype == np.float32 else hot.direct_flat_pixels_f64()
    Cg, Kg = C // G, K // G
    Wq = flat_pitch(Q, S, sw, dw, pl, W)
    # tap (r, s) reads phase plane ((r*dh) % sh, (s*dw) % sw), pixel (p + (r*dh) // sh,
    # q + (s*dw) // sw); a read past a row's end lands in the next row's left padding,
    # past a stride-2 plane's last row in an extra row of zeros
    Hq = P + (R - 1) * dh // sh + (sh * sw > 1 and Wq < Q + (S - 1) * dw // sw)
    key = (R, S, dh, dw, sh, sw, Hq, Wq)
    toff = _TAPS.get(key)
    if toff is None:
        toff = _taps(key, [(((r * dh) % sh) * sw + (s * dw) % sw) * Hq * Wq
                           + (r * dh) // sh * Wq + (s * dw) // sw
                           for r in range(R) for s in range(S)])
    toff_v = toff
    plane = sh * sw * Hq * Wq
    tail = J + (S - 1) * dw // sw               # the last block reads past the planes
    d.G, d.Cg, d.Kg, d.Kb, d.R, d.S = G, Cg, Kg, -(-Kg // KB), R, S
    d.plane, d.P, d.Q, d.Wq, d.nf = plane, P, Q, Wq, -(-P * Wq // J)
    ep = _output(&d, out, orow, ocol, ep)
    d.toff = &toff_v[0]
    nt = get_num_threads()
    image = C * plane
    nb = max(1, min(N, nt * slice_bytes // (image * dtype.itemsize)))
    xb = workspace("cython_direct_x", nb * image + tail, dtype)
    wkey = w if wkey is None else wkey
    tag = ("direct_cython_flat", flip, G, KB) + kind
    build = lambda: _blocked(w, G, KB, flip).reshape(-1)
    wb, check = _weights.get_unchecked(wkey, tag, build)
    if checked:
        check = None
    # all channel blocks of a pixel block back to back (its input reused from cache)
    # unless the weight outweighs the slice's input; then the weights reused instead
    d.kb_inner = wb.nbytes <= nb * image * dtype.itemsize
    per_image = K * P * Q
    for n0 in range(0, N, nb):
        n1 = min(N, n0 + nb)
        xb[(n1 - n0) * image:(n1 - n0) * image + tail] = 0
        e = ep.images(n0, n1, per_image)
        pd = _pending(check)                # the first slice's region makes the check
        while True:
            wb = _layout(&pd, wb, wkey, tag, build)
            if dtype == np.float32:
                _flat_run[float](x[n0:n1], xb, wb, out[n0:n1], &d, Hq, sh, sw, pt, pl,
                                 e.bias, e.residual, nt, &pd)
            else:
                _flat_run[double](x[n0:n1], xb, wb, out[n0:n1], &d, Hq, sh, sw, pt, pl,
                                  e.bias, e.residual, nt, &pd)
            if pd.same:
                break                       # else the slice again, on a fresh layout
        check = None


# -- depthwise -------------------------------------------------------------------------------


#: output rows of the depthwise block (FC_DWR in src/fc_isa.h), of one vector each
DW_ROWS = hot.depthwise_rows


cdef fc_dw _dw_geometry(N, K, Kg, H, W, R, S, sh, sw, pt, pl, dh, dw, P, Q, dtype):
    """The depthwise geometry, with its phase tile: whole blocks of ``rows`` rows (DW_ROWS,
    or 7) x one vector plus the taps' reach; tap (r, s) reads tile row p + (r*dh) // sh of phase
    (r*dh) % sh, column q + (s*dw) // sw of phase (s*dw) % sw. Its tap offsets
    (``toff``) live in the calling thread's workspace until its next call."""
    cdef fc_dw g
    cdef fc_int[::1] toff
    cdef fc_int r, s
    J = block(dtype) // 2
    g.N, g.K, g.Kg, g.H, g.W, g.R, g.S = N, K, Kg, H, W, R, S
    g.sh, g.sw, g.pt, g.pl, g.dh, g.dw, g.P, g.Q = sh, sw, pt, pl, dh, dw, P, Q
    g.rows = 7 if P % 7 == 0 and P % DW_ROWS else DW_ROWS    # no rows computed in vain
    g.Hq = -(-P // g.rows) * g.rows + (R - 1) * dh // sh
    g.Wq = -(-Q // J) * J + (S - 1) * dw // sw
    g.Hn, g.Wn = P + (R - 1) * dh // sh, Q + (S - 1) * dw // sw  # what valid outputs read
    toff = workspace("cython_direct_taps", R * S, np.int64)
    for r in range(g.R):
        for s in range(g.S):
            toff[r * g.S + s] = ((((r * g.dh) % g.sh) * g.sw + (s * g.dw) % g.sw) * g.Hq * g.Wq
                                 + (r * g.dh) // g.sh * g.Wq + (s * g.dw) // g.sw)
    g.toff = &toff[0]
    return g


cdef int _dw_run(const real[:, :, :, ::1] x, const real[:, :, :, ::1] w,
                 real[:, :, :, ::1] out, const fc_dw *g, bint flip, const real[::1] bias_a,
                 const real[::1] res_a, int act, real[:, ::1] tiles, int nt) except -1:
    """Every output plane of the depthwise forward (``dw_plane``)."""
    cdef const real *bias = &bias_a[0] if bias_a.shape[0] else NULL
    cdef const real *res = &res_a[0] if res_a.shape[0] else NULL
    cdef Py_ssize_t it
    with nogil:
        for it in prange(g.N * g.K, num_threads=nt, schedule="static"):
            if real is float:
                hot.dw_plane_f32(&x[0, 0, 0, 0], &w[0, 0, 0, 0], &out[0, 0, 0, 0], g, flip,
                                 bias, res, act, &tiles[threadid(), 0], it)
            else:
                hot.dw_plane_f64(&x[0, 0, 0, 0], &w[0, 0, 0, 0], &out[0, 0, 0, 0], g, flip,
                                 bias, res, act, &tiles[threadid(), 0], it)
    return 0


cdef int _dw_scatter_run(const real[:, :, :, ::1] dy, const real[:, :, :, ::1] w,
                         real[:, :, :, ::1] out, const fc_dw *g, int nt) except -1:
    """Every input plane of the depthwise input gradient by scatter (``dw_scatter``)."""
    cdef Py_ssize_t it
    with nogil:
        for it in prange(out.shape[0] * out.shape[1], num_threads=nt, schedule="dynamic"):
            if real is float:
                hot.dw_scatter_f32(&dy[0, 0, 0, 0], &w[0, 0, 0, 0], &out[0, 0, 0, 0], g, it)
            else:
                hot.dw_scatter_f64(&dy[0, 0, 0, 0], &w[0, 0, 0, 0], &out[0, 0, 0, 0], g, it)
    return 0


cdef int _dw_weight_run(const real[:, :, :, ::1] x, const real[:, :, :, ::1] dy,
                        real[:, :, :, ::1] out, const fc_dw *g, real[:, ::1] tiles,
                        int nt) except -1:
    """Every output channel of the depthwise weight gradient (``dw_weight``)."""
    cdef Py_ssize_t k
    with nogil:
        for k in prange(g.K, num_threads=nt, schedule="dynamic"):
            if real is float:
                hot.dw_weight_f32(&x[0, 0, 0, 0], &dy[0, 0, 0, 0], &out[0, 0, 0, 0], g,
                                  &tiles[threadid(), 0], k)
            else:
                hot.dw_weight_f64(&x[0, 0, 0, 0], &dy[0, 0, 0, 0], &out[0, 0, 0, 0], g,
                                  &tiles[threadid(), 0], k)
    return 0


def _dw_tiles(sh, sw, Hq, Wq, dtype, nt, extra=0):
    """A phase tile per thread, and ``extra`` elements, zeroed: the parts of a tile the
    kernels never write (read for dropped pixels only) stay zero, not whatever was
    there (denormals would slow the FMAs)."""
    tiles = workspace("cython_direct_tile", nt * (sh * sw * Hq * Wq + extra), dtype)
    tiles[:] = 0
    return tiles.reshape(nt, -1)


def _depthwise(x, w, out, p, flip, ep):
    """The depthwise forward (``flip``: the stride-1 input gradient, on dy with the
    rotated weight) into out."""
    cdef fc_dw g
    N, C, H, W = x.shape
    K, P, Q = out.shape[1:]
    if flip:
        g = _dw_geometry(N, K, 1, H, W, p.R, p.S, 1, 1, p.dil_h * (p.R - 1) - p.pad_top,
                         p.dil_w * (p.S - 1) - p.pad_left, p.dil_h, p.dil_w, P, Q, x.dtype)
    else:
        g = _dw_geometry(N, K, K // C, H, W, p.R, p.S, p.stride_h, p.stride_w, p.pad_top,
                         p.pad_left, p.dil_h, p.dil_w, P, Q, x.dtype)
    nt = get_num_threads()
    # W more zeros: where dw_plane reads x as it is (AVX-512, stride 1), the tile is its
    # zero row for input rows outside x
    tiles = _dw_tiles(g.sh, g.sw, g.Hq, g.Wq, x.dtype, nt, W)
    if x.dtype == np.float32:
        _dw_run[float](x, w, out, &g, flip, ep.bias, ep.residual, ep.act, tiles, nt)
    else:
        _dw_run[double](x, w, out, &g, flip, ep.bias, ep.residual, ep.act, tiles, nt)


# -- the weight gradient ------------------------------------------------------------------


cdef int _weight_run(const real[:, :, :, ::1] x, const real[:, :, :, ::1] dy, real[::1] xf,
                     real[::1] dyb, real[:, ::1] gw, real[:, ::1] acc, const fc_dweight *d,
                     fc_int pt, fc_int pl, fc_int WR, int nt, bint image_outer) except -1:
    """dy's layout, then every (split, item) over its split's images in order into its
    accumulators, then its sums into gw[split]. ``image_outer``: image by image, every
    item, each thread laying out the x block (image, group, input-channel block) its
    items read in its own slot of ``xf`` (Hp*Wp*WR elements) when the block changes,
    just before they read it from cache (an image's dy blocks stay in cache through its
    items; ``acc`` a row per (split, item)); else x's layout of the whole batch first
    (``xf`` holds it), then item by item, every image (its accumulators stay in cache;
    ``acc`` a row per thread)."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t K = dy.shape[1], nsplit = gw.shape[0]
    cdef Py_ssize_t items = d.G * d.Cb * d.Kb, it, sp, i, step, n, row, item
    cdef Py_ssize_t ny = N * d.G * d.Kb * d.P, nx = N * d.G * d.Cb * d.Hp
    cdef Py_ssize_t steps = (N + nsplit - 1) // nsplit      # the most images of a split
    cdef Py_ssize_t blk = d.Hp * d.Wp * WR, total = nsplit * items
    cdef Py_ssize_t tid, first, last, key, held, hp
    cdef real *xt
    with nogil:
        for it in prange(ny, num_threads=_par(ny * d.Q * 16, nt), schedule="static"):
            if real is float:
                hot.direct_dy_row_f32(&dy[0, 0, 0, 0], K, d.P, d.Q, d.G, d.Kg, &dyb[0], it)
            else:
                hot.direct_dy_row_f64(&dy[0, 0, 0, 0], K, d.P, d.Q, d.G, d.Kg, &dyb[0], it)
        if image_outer:
            # x laid out block by block as the items need it, not for the whole batch
            # first: that pass wrote the batch's layout (14 MB for ResNet-50's res3
            # 3x3/2 at N=8) only for the items to read it back from memory
            for step in range(steps):           # the step-th image of each split
                for tid in prange(nt, num_threads=nt, schedule="static", chunksize=1):
                    first, last = tid * total // nt, (tid + 1) * total // nt
                    xt = &xf[0] + tid * blk
                    held = -1                   # the block (n*G + g)*Cb + cb in xt
                    for i in range(first, last):
                        sp, item = i // items, i % items
                        n = N * sp // nsplit + step
                        if step == 0:
                            memset(&acc[i, 0], 0, acc.shape[1] * sizeof(real))
                        if n >= N * (sp + 1) // nsplit:
                            continue
                        key = (n * d.G + item // d.Kb // d.Cb) * d.Cb + item // d.Kb % d.Cb
                        if key != held:
                            for hp in range(d.Hp):
                                if real is float:
                                    hot.direct_xblock_row_f32(
                                        &x[0, 0, 0, 0], C, H, W, d.G, d.Cg, xt + hp * d.Wp * WR,
                                        d.Hp, d.Wp, pt, pl, key * d.Hp + hp)
                                else:
                                    hot.direct_xblock_row_f64(
                                        &x[0, 0, 0, 0], C, H, W, d.G, d.Cg, xt + hp * d.Wp * WR,
                                        d.Hp, d.Wp, pt, pl, key * d.Hp + hp)
                            held = key
                        if real is float:
                            hot.direct_weight_item_f32(xt, &dyb[0], d, n, item, &acc[i, 0])
                        else:
                            hot.direct_weight_item_f64(xt, &dyb[0], d, n, item, &acc[i, 0])
            for i in prange(nsplit * items, num_threads=nt, schedule="static"):
                if real is float:
                    hot.direct_weight_store_f32(&gw[i // items, 0], d, i % items, &acc[i, 0])
                else:
                    hot.direct_weight_store_f64(&gw[i // items, 0], d, i % items, &acc[i, 0])
        else:
            for it in prange(nx, num_threads=_par(nx * d.Wp * MR_, nt), schedule="static"):
                if real is float:
                    hot.direct_xblock_row_f32(&x[0, 0, 0, 0], C, H, W, d.G, d.Cg,
                                              &xf[0] + it * d.Wp * WR, d.Hp, d.Wp, pt, pl, it)
                else:
                    hot.direct_xblock_row_f64(&x[0, 0, 0, 0], C, H, W, d.G, d.Cg,
                                              &xf[0] + it * d.Wp * WR, d.Hp, d.Wp, pt, pl, it)
            for i in prange(nsplit * items, num_threads=nt, schedule="static"):
                sp, item = i // items, i % items
                row = threadid()
                key = item // d.Kb                  # g*Cb + cb
                memset(&acc[row, 0], 0, acc.shape[1] * sizeof(real))
                for n in range(N * sp // nsplit, N * (sp + 1) // nsplit):
                    if real is float:
                        hot.direct_weight_item_f32(&xf[0] + (n * d.G * d.Cb + key) * blk,
                                                   &dyb[0], d, n, item, &acc[row, 0])
                    else:
                        hot.direct_weight_item_f64(&xf[0] + (n * d.G * d.Cb + key) * blk,
                                                   &dyb[0], d, n, item, &acc[row, 0])
                if real is float:
                    hot.direct_weight_store_f32(&gw[sp, 0], d, item, &acc[row, 0])
                else:
                    hot.direct_weight_store_f64(&gw[sp, 0], d, item, &acc[row, 0])
    return 0


# -- the registry's kernels: run a plan (fastconv._plan._direct) ----------------------------


def _taps_inside(n, size, step, off):
    """[lo, hi): the j < n whose position j*step + off lies in [0, size) (the C
    kernels' fc_valid_range)."""
    lo = 0 if off >= 0 else (-off + step - 1) // step
    hi = 0 if size - 1 - off < 0 else (size - 1 - off) // step + 1
    lo, hi = min(lo, n), min(hi, n)
    return lo, max(lo, hi)


@functools.lru_cache(maxsize=256)
def _tap_columns(S, W, dw, sw, pl, Q):
    """(cols, qa, qb) of ``depthwise_nhwc_row``: per output column its taps inside the
    input (flat pairs, read-only), and the columns whose every tap is; once per
    geometry, not per call."""
    cols = np.array([_taps_inside(S, W, dw, q * sw - pl) for q in range(Q)],
                    np.int64).reshape(-1)
    cols.flags.writeable = False
    return (cols,) + _taps_inside(Q, W - (S - 1) * dw, sw, -pl)


def _dw_nhwc(x, w, out, p, ep):
    """Depthwise convolution channels last, one output channel per input channel: out
    (N, P, Q, C) from x (N, H, W, C) read as it is (taps outside it skipped, not
    padded; padded if a tap is not finite), by ``depthwise_nhwc_row`` of
    ``src/fc_impl.h`` (the channels in the vector lanes), an output row per parallel
    iteration; the weight as (R, S, C), cached (the Numba kernel's layout and cache
    entry)."""
    _dw_nhwc_bound(w, p, ep)(x, out, ep.residual)


def _dw_nhwc_bound(w, p, ep):
    """``run(x, out, residual)``: :func:`_dw_nhwc` for weight ``w``, geometry ``p`` and
    the epilogue's bias and activation, with the weight's layout and the tap table
    looked up once (``residual``: flat, or zero-size for none)."""
    taps, finite = _weights.get(w, "depthwise_nhwc", lambda: depthwise_taps(w))
    taps = taps.reshape(-1)
    padded = not finite and p.padded
    p0 = unpadded(p) if padded else p
    cols, qa, qb = _tap_columns(p0.S, p0.W, p0.dil_w, p0.stride_w, p0.pad_left, p0.Q)
    bias, act = ep.bias, ep.act
    geometry = (p0.N, p0.H, p0.W, p0.C, p0.R, p0.S, p0.P, p0.Q, p0.stride_h, p0.stride_w,
                p0.pad_top, p0.pad_left, p0.dil_h, p0.dil_w, qa, qb, cols)

    def run(x, out, residual):
        if padded:                                  # a non-finite tap times the padding
            x = zero_padded_nhwc(x, p)
        _dw_nhwc_run(x.reshape(-1), taps, out.reshape(-1), bias, residual, act, *geometry,
                     get_num_threads())
    return run


def bind_conv2d(plan, w, p, epilogue):
    """``conv2d``'s kernel for ``plan`` bound to weight ``w`` (never modified after),
    as ``run(x, out, residual)`` (``im2col.bind_conv2d`` describes it); None for a
    variant without a bound form: ``depthwise_nhwc`` has one."""
    if plan.variant == "depthwise_nhwc":
        return _dw_nhwc_bound(w, p, none(w.dtype) if epilogue is None else epilogue)
    return None


def _dw_nhwc_run(const real[::1] x, const real[::1] w, real[::1] y, const real[::1] bias_a,
                 const real[::1] res_a, int act, fc_int N, fc_int H, fc_int W, fc_int C,
                 fc_int R, fc_int S, fc_int P, fc_int Q, fc_int sh, fc_int sw, fc_int pt,
                 fc_int pl, fc_int dh, fc_int dw, fc_int qa, fc_int qb,
                 const fc_int[::1] cols, int nt):
    cdef const real *bias = &bias_a[0] if bias_a.shape[0] else NULL
    cdef const real *res = &res_a[0] if res_a.shape[0] else NULL
    cdef fc_int it, n
    with nogil:
        for it in prange(N * P, num_threads=_par(N * P * Q * C * R * S, nt),
                         schedule="static"):
            n = it // P                             # output row (n, it % P)
            if real is float:
                hot.depthwise_nhwc_row_f32(&x[0] + n * H * W * C, H, W, C, C, &w[0], R, S,
                                           it % P * sh - pt, sh, sw, pl, dh, dw, Q, qa, qb,
                                           &cols[0], &y[0] + it * Q * C, bias,
                                           NULL if res == NULL else res + it * Q * C, act)
            else:
                hot.depthwise_nhwc_row_f64(&x[0] + n * H * W * C, H, W, C, C, &w[0], R, S,
                                           it % P * sh - pt, sh, sw, pl, dh, dw, Q, qa, qb,
                                           &cols[0], &y[0] + it * Q * C, bias,
                                           NULL if res == NULL else res + it * Q * C, act)


def conv2d(plan, x, w, p, out, epilogue=None):
    """Forward direct convolution into ``out`` (N, K, P, Q), with the ``epilogue``
    (``fastconv.kernels.epilogue``) applied by the kernels as they store each block;
    ``depthwise_nhwc``: x (N, H, W, C) into out (N, P, Q, K)."""
    ep = none(x.dtype) if epilogue is None else epilogue
    if plan.variant == "depthwise_nhwc":
        _dw_nhwc(x, w, out, p, ep)
        return
    if plan.variant == "depthwise":
        _depthwise(x, w, out, p, False, ep)
        return
    if plan.variant == "pointwise":                 # 1x1 stride 1: the planes are the GEMM's
        from .im2col import _pointwise
        _pointwise(x, w, p, out, ep, plan["panel_bytes"])
        return
    _core(x, w, out, plan["slice_bytes"], p.groups, p.P, p.Q, p.R, p.S, p.stride_h,
          p.stride_w, p.pad_top, p.pad_left, p.dil_h, p.dil_w, ep=ep, core=plan.variant,
          wrap_work=plan.get("wrap_work", 0))


def conv2d_input(plan, dy, w, p, out):
    """Gradient wrt the input into ``out`` (N, C, H, W): the forward core on grad_output
    with the weight rotated 180 degrees, C and K swapped; for stride > 1 one stride-1
    call per residue class (``phases``)."""
    cdef fc_dw g
    if plan.variant == "depthwise":
        _depthwise(dy, w, out, p, True, none(dy.dtype))
    elif plan.variant == "depthwise_scatter":
        g = _dw_geometry(p.N, p.K, p.K // p.groups, p.H, p.W, p.R, p.S, p.stride_h,
                         p.stride_w, p.pad_top, p.pad_left, p.dil_h, p.dil_w, p.P, p.Q,
                         dy.dtype)
        if dy.dtype == np.float32:
            _dw_scatter_run[float](dy, w, out, &g, get_num_threads())
        else:
            _dw_scatter_run[double](dy, w, out, &g, get_num_threads())
    elif plan.variant == "phases":
        rows, cols, cores = plan["rows"], plan["cols"], plan["cores"]
        if "" in cores:
            out[...] = 0                                # classes no tap reaches stay zero
        # every class's layout is cached under w: the first class's call checks w
        # against the cache's copy, the others take their layouts as they are (each
        # had checked the whole weight again: 4 checks of res3 3x3/2's 0.6 MB a call);
        # a class's taps are a view of w, copied only when its layout is built
        checked = False
        for a, (tr, ptr, oh0, Hi, dh) in enumerate(rows):
            for b, (tc, plc, ow0, Wi, dw) in enumerate(cols):
                core = cores[a * len(cols) + b]
                if not core:
                    continue
                wsub = w[:, :, slice(*tr) if tr else slice(None),
                         slice(*tc) if tc else slice(None)]
                _core(dy, wsub, out, plan["slice_bytes"], p.groups, Hi, Wi, wsub.shape[2],
                      wsub.shape[3], 1, 1, ptr, plc, dh, dw, flip=True, wkey=w,
                      kind=("phase", tr, tc), orow=(oh0, p.stride_h), ocol=(ow0, p.stride_w),
                      core=core, checked=checked)
                checked = True
    else:
        _core(dy, w, out, plan["slice_bytes"], p.groups, p.H, p.W, p.R, p.S, 1, 1,
              p.dil_h * (p.R - 1) - p.pad_top, p.dil_w * (p.S - 1) - p.pad_left, p.dil_h,
              p.dil_w, flip=True, core=plan.variant, wrap_work=plan.get("wrap_work", 0))


def _weight_block(dtype):
    """(input channels broadcast, output channels in vectors) of the blocked weight
    gradient's register block for ``dtype``."""
    if np.dtype(dtype) == np.float32:
        return hot.direct_weight_rows_f32(), hot.direct_weight_cols_f32()
    return hot.direct_weight_rows_f64(), hot.direct_weight_cols_f64()


def _weight_image_outer(p, dtype):
    """Whether the blocked weight gradient runs image by image (every item of an image
    before the next image) rather than item by item: where an image's x and dy blocks
    outweigh an item's accumulators. ResNet-50's res3 3x3/2 at N=8 ran 1.06-1.17x
    faster image by image, on 1 and 2 threads; its res5 3x3 (512 channels on 7x7)
    1.11x slower, its accumulators out of cache (AMD EPYC Zen 4). The sums, and so the
    bits, are the same either way."""
    MR, KB = _weight_block(dtype)
    Hp = (p.P - 1) * p.stride_h + (p.R - 1) * p.dil_h + 1
    Wp = (p.Q - 1) * p.stride_w + (p.S - 1) * p.dil_w + 1
    return Hp * Wp * MR + p.P * p.Q * KB > 2 * p.R * p.S * MR * KB


def conv2d_weight(plan, x, dy, p, out):
    """Gradient wrt the weight into ``out`` (K, C/groups, R, S)."""
    cdef fc_dw g
    cdef fc_dweight d
    dtype = x.dtype
    nt = get_num_threads()
    if plan.variant == "depthwise":
        g = _dw_geometry(p.N, p.K, p.K // p.groups, p.H, p.W, p.R, p.S, p.stride_h,
                         p.stride_w, p.pad_top, p.pad_left, p.dil_h, p.dil_w, p.P, p.Q, dtype)
        J = block(dtype) // 2                       # dy's rows padded to whole vectors
        tiles = _dw_tiles(g.sh, g.sw, g.Hq, g.Wq, dtype, nt, p.P * -(-p.Q // J) * J)
        if dtype == np.float32:
            _dw_weight_run[float](x, dy, out, &g, tiles, nt)
        else:
            _dw_weight_run[double](x, dy, out, &g, tiles, nt)
        return
    WR, KB = _weight_block(dtype)
    G, Cg, Kg = p.groups, p.C // p.groups, p.K // p.groups
    d.G, d.Cg, d.Kg, d.Cb, d.Kb = G, Cg, Kg, -(-Cg // WR), -(-Kg // KB)
    d.R, d.S, d.sh, d.sw, d.dh, d.dw = p.R, p.S, p.stride_h, p.stride_w, p.dil_h, p.dil_w
    d.P, d.Q = p.P, p.Q
    # every pixel a tap reads: (p*sh + r*dh, q*sw + s*dw) of the padded input
    d.Hp = (p.P - 1) * p.stride_h + (p.R - 1) * p.dil_h + 1
    d.Wp = (p.Q - 1) * p.stride_w + (p.S - 1) * p.dil_w + 1
    image_outer = _weight_image_outer(p, dtype)
    # x's layout: a block per thread (image by image), or the whole batch's
    xf = workspace("cython_direct_xf", (nt if image_outer else p.N * G * d.Cb)
                   * d.Hp * d.Wp * WR, dtype)
    dyb = workspace("cython_direct_dy", p.N * G * d.Kb * p.P * p.Q * KB, dtype)
    nsplit = plan["batch_splits"]
    gw = (out.reshape(1, -1) if nsplit == 1 else
          workspace("cython_direct_gw", nsplit * out.size, dtype).reshape(nsplit, -1))
    items = G * d.Cb * d.Kb
    acc = workspace_array("cython_direct_acc", (nsplit * items if image_outer else nt,
                                                p.R * p.S * WR * KB), dtype)
    if p.N == 0:
        acc.fill(0)
    if dtype == np.float32:
        _weight_run[float](x, dy, xf, dyb, gw, acc, &d, p.pad_top, p.pad_left, WR, nt,
                           image_outer)
    else:
        _weight_run[double](x, dy, xf, dyb, gw, acc, &d, p.pad_top, p.pad_left, WR, nt,
                            image_outer)
    if nsplit > 1:
        np.sum(gw.reshape((nsplit,) + out.shape), axis=0, out=out)


# -- the inverted residual block, fused: inverted_residual -------------------------------


cdef fc_int IR_CHUNK = 96          # pixels per 1x1 call: their rows stay in L1 across panels


cdef inline void _ir_pointwise(const real *x, fc_int C, const real *wt, fc_int K, fc_int cols,
                               fc_int npx, real *y, const real *bias, const real *res,
                               int act, fc_int k_lo, fc_int k_hi) noexcept nogil:
    """The 1x1 of ``npx`` pixels (rows of C channels from x) into y (rows of K), output
    channels [k_lo, k_hi) (whole panels of ``cols``): chunks of pixels, each panel per
    chunk."""
    cdef fc_int p0 = 0, p1, k0
    while p0 < npx:
        p1 = min(p0 + IR_CHUNK, npx)
        k0 = k_lo
        while k0 < k_hi:
            if real is float:
                hot.pointwise_nhwc_f32(x, C, wt, K, p0, p1, k0, y, bias, res, act)
            else:
                hot.pointwise_nhwc_f64(x, C, wt, K, p0, p1, k0, y, bias, res, act)
            k0 += cols
        p0 = p1


cdef void _ir_rows(const real *x, const real *we, const real *be, const real *wd,
                   const real *bd, const real *wp, const real *bp, real *y, real *eb,
                   real *db, fc_int H, fc_int W, fc_int C, fc_int E, fc_int K, fc_int R,
                   fc_int s, fc_int pad, fc_int Q, fc_int qa, fc_int qb, const fc_int *cols,
                   fc_int ecols, fc_int kcols, int act, bint residual, fc_int i0, fc_int i1,
                   fc_int band) noexcept nogil:
    """Output rows [i0, i1) of one image (x: (H, W, C); y: (P, Q, K)), ``band`` rows at a
    time: the input rows a band reads expanded (1x1, bias, act) into eb, unless ``we``
    is NULL (x is the depthwise's input), the rows before kept from the band before
    (slid to eb's front), the band's depthwise rows (bias, act) into db, and its 1x1
    projection (bias, x's rows added if ``residual``) into y."""
    cdef fc_int b0 = 0, b1 = 0                  # eb holds expanded rows [b0, b1)
    cdef fc_int j0 = i0, j1, lo, hi, i
    cdef const real *img = x
    cdef fc_int row = W * E                     # an expanded row's elements
    while j0 < i1:
        j1 = min(j0 + band, i1)
        lo = max(0, j0 * s - pad)               # the input rows the band reads: [lo, hi)
        hi = min(H, (j1 - 1) * s - pad + R)
        if we != NULL:
            if lo >= b1:                          # none of them in eb yet
                b0 = b1 = lo
            elif lo > b0:                         # slide the ones it keeps to the front
                memmove(eb, eb + (lo - b0) * row, (b1 - lo) * row * sizeof(real))
                b0 = lo
            if hi > b1:
                _ir_pointwise(x + b1 * W * C, C, we, E, ecols, (hi - b1) * W,
                              eb + (b1 - b0) * row, be, NULL, act, 0, E)
                b1 = hi
            img = eb - b0 * row                 # row r of the expanded image at eb + (r - b0) * row
        for i in range(j0, j1):
            if real is float:
                hot.depthwise_nhwc_row_f32(img, H, W, E, E, wd, R, R, i * s - pad, s, s, pad,
                                           1, 1, Q, qa, qb, cols, db + (i - j0) * Q * E, bd,
                                           NULL, act)
            else:
                hot.depthwise_nhwc_row_f64(img, H, W, E, E, wd, R, R, i * s - pad, s, s, pad,
                                           1, 1, Q, qa, qb, cols, db + (i - j0) * Q * E, bd,
                                           NULL, act)
        _ir_pointwise(db, E, wp, K, kcols, (j1 - j0) * Q, y + j0 * Q * K, bp,
                      x + j0 * W * C if residual else NULL, 0, 0, K)
        j0 = j1


cdef void _ir_panel(const real *x, const real *we, const real *be, const real *wd,
                    const real *bd, real *eimg, real *dimg, fc_int H, fc_int W, fc_int C,
                    fc_int E, fc_int R, fc_int s, fc_int pad, fc_int P, fc_int Q, fc_int qa,
                    fc_int qb, const fc_int *cols, fc_int ecols, int act,
                    fc_int k0) noexcept nogil:
    """Channels [k0, k0 + ecols) of one image's whole expanded input (into eimg, (H, W,
    E); x itself if ``we`` is NULL) and depthwise output (into dimg, (P, Q, E)): both
    are per channel, so a panel of them needs no other."""
    cdef fc_int cn = min(ecols, E - k0), i
    cdef const real *img = x
    if we != NULL:
        _ir_pointwise(x, C, we, E, ecols, H * W, eimg, be, NULL, act, k0, k0 + ecols)
        img = eimg
    for i in range(P):                          # no prefetch (sh 0): the image is in L2
        if real is float:
            hot.depthwise_nhwc_row_f32(img + k0, H, W, E, cn, wd + k0, R, R, i * s - pad,
                                       0, s, pad, 1, 1, Q, qa, qb, cols,
                                       dimg + i * Q * E + k0, NULL if bd == NULL else bd + k0,
                                       NULL, act)
        else:
            hot.depthwise_nhwc_row_f64(img + k0, H, W, E, cn, wd + k0, R, R, i * s - pad,
                                       0, s, pad, 1, 1, Q, qa, qb, cols,
                                       dimg + i * Q * E + k0, NULL if bd == NULL else bd + k0,
                                       NULL, act)


def _ir_channels_run(const real[::1] x, const real[::1] we_a, const real[::1] be_a,
                     const real[::1] wd, const real[::1] bd_a, real[::1] work, fc_int N,
                     fc_int H, fc_int W, fc_int C, fc_int E, fc_int R, fc_int s, fc_int pad,
                     fc_int P, fc_int Q, fc_int qa, fc_int qb, const fc_int[::1] cols,
                     fc_int ecols, int act, int nt):
    """The expanded input and depthwise output of every image whole, into ``work``
    (expanded images (N, H, W, E) when ``we`` is not empty, then depthwise outputs (N,
    P, Q, E)): work item = (image, panel of ``ecols`` expanded channels), on OpenMP's
    threads."""
    cdef const real *we = &we_a[0] if we_a.shape[0] else NULL
    cdef const real *be = &be_a[0] if be_a.shape[0] else NULL
    cdef const real *bd = &bd_a[0] if bd_a.shape[0] else NULL
    cdef fc_int nep = (E + ecols - 1) // ecols, it, n
    cdef fc_int esize = H * W * E if we != NULL else 0
    cdef real *dimgs = &work[0] + N * esize
    with nogil:
        for it in prange(N * nep, num_threads=min(nt, N * nep), schedule="static"):
            n = it // nep
            _ir_panel(&x[0] + n * H * W * C, we, be, &wd[0], bd, &work[0] + n * esize,
                      dimgs + n * P * Q * E, H, W, C, E, R, s, pad, P, Q, qa, qb, &cols[0],
                      ecols, act, it % nep * ecols)


def _ir_run(const real[::1] x, const real[::1] we_a, const real[::1] be_a,
            const real[::1] wd, const real[::1] bd_a, const real[::1] wp,
            const real[::1] bp_a, real[::1] y,
            real[::1] work, fc_int N, fc_int H, fc_int W, fc_int C, fc_int E, fc_int K,
            fc_int R, fc_int s, fc_int pad, fc_int P, fc_int Q, fc_int qa, fc_int qb,
            const fc_int[::1] cols, fc_int ecols, fc_int kcols, int act, bint residual,
            fc_int band, fc_int parts, fc_int per_thread, int nt):
    """The bands of ``_ir_rows`` on OpenMP's threads: work item = (image, part of
    its P rows), a contiguous range of them per thread, each thread with its own
    ``per_thread`` elements of ``work`` (expanded rows, then the band's depthwise rows)."""
    cdef const real *we = &we_a[0] if we_a.shape[0] else NULL
    cdef const real *be = &be_a[0] if be_a.shape[0] else NULL
    cdef const real *bd = &bd_a[0] if bd_a.shape[0] else NULL
    cdef const real *bp = &bp_a[0] if bp_a.shape[0] else NULL
    cdef fc_int it, n, i0, i1, rows = (P + parts - 1) // parts
    cdef int threads = min(nt, N * parts)
    cdef real *mine
    with nogil, parallel(num_threads=threads):
        mine = &work[0] + threadid() * per_thread
        for it in prange(N * parts, schedule="static"):
            n = it // parts                     # image n, its part it % parts of the rows
            i0 = it % parts * rows
            i1 = min(P, i0 + rows)
            if i0 < i1:
                _ir_rows(&x[0] + n * H * W * C, we, be, &wd[0], bd, &wp[0], bp,
                         &y[0] + n * P * Q * K, mine, mine + per_thread - band * Q * E,
                         H, W, C, E, K, R, s, pad, Q, qa, qb, &cols[0], ecols, kcols, act,
                         residual, i0, i1, band)


def bind_inverted_residual(plan, weights, biases, p, act):
    """``inverted_residual``'s kernel for ``plan`` bound to ``weights`` and ``biases``
    (never modified after: ``nn.optimize``'s), as ``run(x, out)``: the weights' layouts
    (the 1x1s' panels, the depthwise's (R, R, E) taps) and the tap table found once."""
    from .im2col import _nhwc_panels
    we, wd, wp = weights
    dt = wd.dtype
    dwt = _weights.get(wd, "depthwise_nhwc", lambda: depthwise_taps(wd))
    if p.pad and not dwt.finite:
        return _ir_unfused_bound(weights, biases, p, act)
    if we is None:
        ecols, wet = 1, np.zeros(0, dt)
    else:
        ecols, wet = _nhwc_panels(we)
        wet = wet.reshape(-1)
    kcols, wpt = _nhwc_panels(wp)
    wpt = wpt.reshape(-1)
    taps = dwt.taps.reshape(-1)
    be, bd, bp = biases
    cols, qa, qb = _tap_columns(p.R, p.W, 1, p.stride, p.pad, p.Q)
    band = plan["rows"]
    if plan["split"] == "channels":
        return _ir_channels_bound(wet, be, taps, bd, wpt, bp, p, act, cols, qa, qb, ecols,
                                  kcols, dt)
    # a thread's expanded rows ((band - 1) * stride + R of them), then its band's
    # depthwise output (band rows of Q x E)
    per_thread = ((((band - 1) * p.stride + p.R) * p.W * p.E) if p.expand else 0) \
        + band * p.Q * p.E
    geometry = (p.N, p.H, p.W, p.C, p.E, p.K, p.R, p.stride, p.pad, p.P, p.Q, qa, qb, cols,
                ecols, kcols, act, p.residual, band)

    def run(x, out):
        nt = get_num_threads()
        parts = 1 if p.N >= nt else -(-nt // p.N)     # N < threads: images cut in rows
        work = workspace("inverted_residual", min(nt, p.N * parts) * per_thread, dt)
        _ir_run(x.reshape(-1), wet, be, taps, bd, wpt, bp, out.reshape(-1), work, *geometry,
                parts, per_thread, nt)
    return run


def _ir_unfused_bound(weights, biases, p, act):
    """``run(x, out)`` of the block as its three convolutions, for a depthwise weight
    with a non-finite tap: the fused kernels skip the taps outside the input, where
    PyTorch multiplies the padding by it (0 x Inf and 0 x NaN are NaN). The 1x1s by
    NumPy's matmul (their bias and activation by ``epilogue.apply``), the depthwise by
    conv2d's channels-last kernel (:func:`_dw_nhwc`), which then runs on the
    zero-padded expanded input."""
    we, wd, wp = weights
    be, bd, bp = biases
    dt = wd.dtype
    empty = none(dt).residual
    convs = p.convs()                               # (expansion,) depthwise, projection
    depthwise = _dw_nhwc_bound(wd, convs[len(convs) - 2], Epilogue(bd, empty, act))

    def run(x, out):
        h = x
        if we is not None:
            h = np.matmul(x.reshape(-1, p.C), we.reshape(p.E, p.C).T).reshape(
                p.N, p.H, p.W, p.E)
            apply(h.transpose(0, 3, 1, 2), Epilogue(be, empty, act))
        d = np.empty((p.N, p.P, p.Q, p.E), dt)
        depthwise(h, d, empty)
        np.matmul(d.reshape(-1, p.E), wp.reshape(p.K, p.E).T, out=out.reshape(-1, p.K))
        apply(out.transpose(0, 3, 1, 2), Epilogue(bp, empty, 0))
        if p.residual:
            out += x
    return run


def _ir_channels_bound(wet, be, taps, bd, wpt, bp, p, act, cols, qa, qb, ecols, kcols, dt):
    """``run(x, out)`` of the ``channels`` split: every image's expanded input and
    depthwise output whole, a panel of channels per work item (``_ir_channels_run``),
    then the projection by the channels-last 1x1 kernel's own run (its work split in
    pixels and panels, ``im2col._pointwise_nhwc_run``)."""
    from .im2col import _pointwise_nhwc_run
    esize = p.H * p.W * p.E if p.expand else 0
    dsize = p.P * p.Q * p.E

    def run(x, out):
        nt = get_num_threads()
        work = workspace("inverted_residual", p.N * (esize + dsize), dt)
        xf = x.reshape(-1)
        _ir_channels_run(xf, wet, be, taps, bd, work, p.N, p.H, p.W, p.C, p.E, p.R,
                         p.stride, p.pad, p.P, p.Q, qa, qb, cols, ecols, act, nt)
        _pointwise_nhwc_run(work[p.N * esize:], wpt, out.reshape(-1), bp,
                            xf if p.residual else bp[:0], 0, p.N * p.P * p.Q, p.E, p.K,
                            kcols, nt)
    return run


def inverted_residual(plan, x, weights, biases, p, out, act):
    """The inverted residual block fused (``fastconv.inverted_residual``): out (N, P, Q,
    K) from x (N, H, W, C), channels last. Each thread runs bands of ``plan["rows"]``
    output rows of an image (images cut in parts of rows when there are fewer than
    threads): the input rows a band reads expanded by ``pointwise_nhwc`` (bias, act)
    into the thread's buffer, those the band before already expanded kept; its
    depthwise rows by ``depthwise_nhwc_row`` (bias, act); its 1x1 projection by
    ``pointwise_nhwc`` (bias, x added when ``p.residual``) into out. The expanded and
    depthwise activations stay in the thread's cache, never written to memory in
    full; each output's sums run in the unfused kernels' order (the same bits). With
    ``plan["split"]`` "channels" (one image on several threads, one band): each
    image's expansion and depthwise output whole, panels of channels per thread, then
    the projection (:func:`_ir_channels_bound`)."""
    bind_inverted_residual(plan, weights, biases, p, act)(x, out)
