"""Blocked, register-tiled direct convolution (Georganas et al., "Anatomy of
High-Performance Deep Learning Convolutions on SIMD Architectures", SC18,
arXiv 1808.05567).

As in the paper, the inner kernel keeps a block of output pixels x output channels in
vector registers and does one FMA per (pixel vector, output channel, input channel,
tap), and the layouts put the vectorised dimension innermost. LLVM's SLP vectorizer
(the only way to get register tiles out of Numba) packs the scalar accumulators along
whatever the kernel's final stores run over: stored straight to NCHW rows, the lanes
are *pixels* with the output channels broadcast weights (``vmovups`` + ``vfmadd231ps
mem{1to16}, zmm``); stored first to a small (pixels, channels) buffer, the lanes are
the paper's output channels with the input broadcast, which needs no stride phases
(the ``lanes`` kernel; stored to NCHW, that shape had made SLP gather). Layouts, built
per call by parallel Numba loops from NCHW (their cost counts in the kernel's time) and
never returned::

    forward input, stride 1   xb[n, c, hp, wq]          zero-padded planes, rows of
      (flat); lanes kernel                               Wq = Q + (S-1)*dil_w columns
                                                         (lanes: (Q-1)*sw + (S-1)*dil_w + 1)
    forward input, stride 2   xb[n, c, a, b, i, wq]     phase planes: padded pixel
      (flat kernel)                                      (2*i + a, 2*wq + b)
    forward input, stride > 1 xb[n, c, hp, phase, wq]   padded column wp = wq*sw + phase,
                                                         so each tap reads consecutive wq
                                                         (stride 2: ``split_stride2_8pairs``)
    forward weight            wb[g, kb, c, r, s, k]     k < KB (12, 16, 32; pointwise 64)
                                                         output channels
    weight-gradient input     xf[h, w, c]               one channel block of one image,
                                                         channels last, L = 16 (8 fp64),
                                                         unpadded, built by the kernel
    weight-gradient dy        dyb[n, g, kb, p, q, k]    16 output channels last

Kernels (generated as source by ``codegen``, names explained there; compiled with SLP on):

* ``direct_lanes_1x14_k32_s{1,2}`` (float32, strides 1, 2, rows of 14 pixels or more): 14
  pixels of one output row, each a broadcast from the padded input (column stride a
  constant of the kernel) x 32 output channels (two vectors of weights): two vector
  loads and 14 broadcasts per 28 FMAs, no lanes wasted on padding columns or phase
  planes. A work item is a whole output row, gathered in a (Q, 32) buffer and written
  to NCHW by 16 x 16 register transposes, the last Q % 16 columns by masked stores
  (element-wise stores were slower, the more so the fewer inputs per output).
  ``direct_lanes_2x7_k32_s{1,2}``, for rows of 7 to 13 pixels and at least 256 inputs
  per output: the same on 7 pixels of two rows, the last row of an odd P alone (no
  lanes spent on the padding columns the flat kernel computes on short rows, and no
  overlapping last block; a 1 x 7 x 64 block spills registers).
  ``direct_lanes_streamed_2x7_k32_s{1,2}``, the same for weights >= 8 MB
  (``LANES_STREAM_MIN_WEIGHT``), takes the weight as it is: a work item is one block of 32
  output channels over all the blocks of the images, and lays out that block of the
  weight itself, 64 input channels at a time, into a buffer that stays in cache (the
  weight read once per call, not three times as with a cached layout and its check).
* ``direct_flat_32px_k12`` (float32, stride 1; stride 2 when it wastes fewer lanes than the row
  kernel, e.g. res3 3x3/2): 32 consecutive pixels of the flattened padded grid (f =
  p*Wq + q; every tap reads f + a per-tap offset, r*dil_h*Wq + s*dil_w for stride 1,
  into one of the four phase planes for stride 2, so rows need no special case; columns
  q >= Q are computed and dropped) x 12 output channels: two vector loads and 12
  broadcasts per 24 FMAs.
* ``direct_pointwise_6px_k64`` (float32 1x1, stride 1, no padding): a GEMM whose rows are the
  pixels of the batch, read in place from NCHW (a row's channels H*W apart: no layout
  conversion), by ``patch_gemm_6x64`` (6 pixels x 64 output channels of accumulators),
  a work item's (rows, 64) result written to NCHW by 16 x 16 block transposes (no
  channels-first copy of the batch, which im2col's single GEMM needs).
* ``direct_row_{16,8}px_k16`` (strided, and all float64): 16 (8) pixels of one output row x
  16 output channels; the tap columns' offsets come from a table (no division per tap).
* ``direct_weight_grad_c{16,8}_k16``: weight gradient, 16 (8) input channels (lanes) x 16 output
  channels broadcast from dy, summed over the pixels of the batch (or of a batch split)
  image by image; writes the gradient's own layout.
* Gradient wrt input: the forward kernels on ``grad_output`` with the weight rotated by
  180 degrees and C, K swapped (padding ``dil*(R-1) - pad``). For stride > 1 (dilation
  1 along that axis, float32) one stride-1 call per residue class of the output rows
  and columns, each with its sub-kernel, writing strided rows of dx; otherwise the
  layout conversion inserts ``stride - 1`` zeros between grad_output pixels.
* ``depthwise_4x16`` (depthwise, C/groups = 1, both dtypes): each plane copied into a
  zero-padded, phase-split tile that stays in L1, then blocks of 4 output rows x 16
  columns (the lanes) with one weight broadcast per tap. The input gradient for
  stride 1 and K = C is the same kernel with the weight rotated; otherwise NCHW loops.
  ``depthwise_weight_grad_4x16``, the weight gradient, works on the same tiles tap by tap.
* ``depthwise_nhwc_8px_c16`` (channels-last calls, K = C, both dtypes): 8 output pixels
  of a row x 16 channels (the lanes) read from the input as it is, the taps outside it
  cut from the border pixels' loops (``docs/channels_last.md``).

The forward converts and convolves the batch in slices of images whose layout fits in
about 2 MB per thread, so the kernel reads the layout from cache rather than memory.

Work items (image, group, channel block, pixel block) are split into 4 ranges per
thread, taken in turn by the calling thread and ``numba.get_num_threads() - 1`` pool
workers (the kernels release the GIL): a Numba ``prange`` around the generated bodies
compiled slower and vectorised worse. Both cores are busy for N = 1.

Scratch layouts live in ``fastconv._config.workspace`` (per Python thread, reused
across calls: no fresh pages to fault in). Weight re-layouts are cached (see
``fastconv.kernels.weight_cache``): the key is the array's address, shape, strides and
dtype, and a hit's results are only returned after an exact bitwise comparison of
the weight with a private copy kept at the time of the re-layout. A weight changed in
place (an optimiser step) therefore never returns a stale layout. The comparison (one
memcmp of the weight) runs on the calling thread while the pool's threads start the
first kernel run with the cached layout; when it fails, that run is repeated with a
fresh one (so an unchanged weight's check costs no time of its own).
"""

import numba
import numpy as np
from numba import prange

from ..._config import workspace, workspace_array
from ..epilogue import none
from ..layouts import (DW_BLOCK, DW_NHWC_BLOCK, FLAT_BLOCKS, PAIRS, depthwise_taps, flat_pitch,
                       lanes_block, unpadded, zero_padded_nhwc)
from ..weight_cache import CACHE as _weights
from . import codegen
from ._jit import jit
from ._layout import to_padded, w_blocked as _w_blocked
from ._ranges import valid_range
from ._threads import run as _run
from ._transpose import transpose_block

_FASTMATH = {"contract", "reassoc"}

# -- Blocking choices --------------------------------------------------------------------


def _pixel_block(Q, dtype):
    """Output pixels per register block of the strided (row) kernel, the vector lanes: 16
    for float32, 8 for float64 (one zmm register either way). Float32 stride 1, and stride
    2 where it wastes fewer lanes, take the flat kernel instead (``_flat_wins``). (A
    float32 8-pixel variant would suit Q <= 8; left out to keep the first-use compile
    time down.)"""
    return 16 if dtype == np.float32 else 8


# -- Layout conversions (parallel) -------------------------------------------------------


@jit(parallel=True)
def _to_phase(src, dst, Hp, Wq, sw, pt, pl, ish, isw):
    """dst[n, c, hp, phase, wq] = src[n, c, (hp-pt)/ish, (wp-pl)/isw] with wp = wq*sw + phase
    when that is an integer index inside src, else 0 (padding and inserted zeros)."""
    N, C, Hs, Ws = src.shape
    for it in prange(N * C * Hp):
        hp = it % Hp
        t = it // Hp
        c = t % C
        n = t // C
        base = it * sw * Wq
        dst[base:base + sw * Wq] = 0
        hh = hp - pt
        if hh < 0 or hh % ish != 0:
            continue
        h = hh // ish
        if h >= Hs:
            continue
        row = src[n, c, h]
        if sw == 1 and isw == 1:                        # one contiguous copy
            lo, hi = max(0, -pl), min(Ws, Wq - pl)
            if hi > lo:
                dst[base + lo + pl:base + hi + pl] = row[lo:hi]
            continue
        if isw == 1:
            for b in range(sw):                         # dst column wq reads wq*sw + b - pl
                lo, hi = valid_range(Wq, Ws, sw, b - pl)
                d = dst[base + b * Wq + lo:base + b * Wq + hi]
                r = row[lo * sw + b - pl:]
                if sw == 2:                             # a constant stride vectorises
                    for j in range(hi - lo):
                        d[j] = r[2 * j]
                else:
                    for j in range(hi - lo):
                        d[j] = r[j * sw]
            continue
        for w in range(Ws):                             # with inserted zeros
            wp = w * isw + pl
            if wp >= 0:
                wq = wp // sw
                if wq < Wq:
                    dst[base + (wp % sw) * Wq + wq] = row[w]


@jit(inline="always")
def _dy_row(dy, df, dst, G, Kg, Kb, it):
    """Row ``it`` of dst[n, g, kb, p, q, k] = dy[n, g*Kg + kb*16 + k, p, q] (0 past the
    group's K), by block transposes of 16 / ``lanes(dtype)`` sub-blocks of channels."""
    K, P, Q = dy.shape[1], dy.shape[2], dy.shape[3]
    L = 64 // dy.itemsize                               # lanes(dtype)
    p_ = it % P
    t = it // P
    kb = t % Kb
    t = t // Kb
    g = t % G
    n = t // G
    base = it * Q * 16
    k0 = g * Kg + kb * 16
    nk = min(16, Kg - kb * 16)
    if nk == 16 and Q >= L:
        for ks in range(0, 16, L):
            so = ((n * K + k0 + ks) * P + p_) * Q
            for qb in range(0, Q, L):                   # the last block overlaps
                q = min(qb, Q - L)
                transpose_block(df, so + q, P * Q, dst, base + q * 16 + ks, 16)
        return
    dst[base:base + Q * 16] = 0
    for k in range(nk):
        row = dy[n, k0 + k, p_]
        for q in range(Q):
            dst[base + q * 16 + k] = row[q]


@jit(parallel=True)
def _dy_blocked(dy, dyb, G, Kg, Kb):
    """The weight gradient's grad_output layout dyb[n, g, kb, p, q, k] (``_dy_row``)."""
    df = dy.reshape(dy.size)
    for it in prange(dy.shape[0] * G * Kb * dy.shape[2]):
        _dy_row(dy, df, dyb, G, Kg, Kb, it)


def _blocked_weight(w, wkey, kind, G, Kg, Kb, Cg, flip, KB, checked=False):
    """A function ``weight(fresh=False)`` -> (wb, check): the blocked weight layout of
    ``w`` (see ``_w_blocked``) from the cache when ``wkey`` (the caller's array, ``w``
    derived from it) was seen before, with the check the kernel's first run makes while
    it already computes (``_forward_blocked``; none when ``checked``: the cache's entry
    for ``wkey`` was checked earlier in this call), else (or ``fresh``) built, and
    None."""
    tag = ("direct", flip, G, Kg, Cg, KB) + kind

    def build():
        wc = np.ascontiguousarray(w)
        wb = np.empty(G * Kb * Cg * w.shape[2] * w.shape[3] * KB, w.dtype)
        _w_blocked(wc.reshape(wc.size), wb, G, Kg, Kb, Cg, w.shape[2], w.shape[3], flip, KB)
        return wb

    def weight(fresh=False):
        if fresh:
            return _weights.put(wkey, tag, build()), None
        wb, check = _weights.get_unchecked(wkey, tag, build)
        return wb, None if checked else check

    return weight


# -- Forward core (used by conv2d and conv2d_input) ----------------------------------------


def _forward_blocked(core, slice_bytes, serial_rows, x, w, out, N, C, K, R, S, G, sh, sw,
                     pt, pl, dh, dw, P, Q, ish=1, isw=1, flip=False, wkey=None, kind=(),
                     orow=(0, 1), ocol=(0, 1), ep=None, checked=False):
    """out (N, K, P, Q) = direct convolution of x (N, C, H', W') by w, where the virtual
    input is x with ``ish - 1``/``isw - 1`` zeros between pixels, padded by pt, pl, by
    the plan's ``core`` (``fastconv._plan.DIRECT_CORES``), converting and convolving
    the batch in slices of about ``slice_bytes`` of layout per thread.
    ``wkey``/``kind``: the array and tag the weight cache keys on (``w`` derived from
    ``wkey``); ``orow``/``ocol`` (offset, step): output pixel (p, q) goes to
    ``out[..., orow[0] + p*orow[1], ocol[0] + q*ocol[1]]`` (stride 1: the flat kernel);
    ``ep``: the forward's epilogue, which the kernels apply as they store each block;
    ``checked``: the weight cache's entry for ``wkey`` was checked earlier in this call
    (the input gradient's phases after their first)."""
    wkey = w if wkey is None else wkey
    dtype = x.dtype
    ep = none(dtype) if ep is None else ep
    Cg, Kg = C // G, K // G
    zero = dtype.type(0)
    pairs = codegen.kernel("split_stride2", pairs=PAIRS)
    if core in ("lanes", "lanes_streamed"):
        # output channels in the lanes, pixels of a row broadcast from a padded copy
        M, J, KB = lanes_block(P, Q)
        Hp, Wq = (P - 1) * sh + (R - 1) * dh + 1, (Q - 1) * sw + (S - 1) * dw + 1
        plane, tail = Hp * Wq, 0
        Kb = -(-Kg // KB)

        def convert(xs, xb):
            to_padded(xs, xb, Hp, Wq, pt, pl, serial_rows)

        if core == "lanes_streamed":
            # each work item lays out its block of the weight itself: no cached layout
            wc = np.ascontiguousarray(w).reshape(-1)

            def weight(fresh=False):
                return wc, None

            def kernel(n, xb, os_, wb, first, e):
                return _run(codegen.kernel("direct_lanes_streamed", rows=M, cols=J,
                                           channels=KB, stride=sw), G * Kb, xb, wb, os_,
                            n, C, G, Hp, Wq, Kb, Kg, R, S, sh, dh, dw, P, Q, flip, zero, *e)
        else:
            weight = _blocked_weight(w, wkey, kind, G, Kg, Kb, Cg, flip, KB, checked)

            def kernel(n, xb, os_, wb, first, e):
                items = n * G * Kb * -(-P // M) * (1 if M == 1 else -(-Q // J))  # M > 1: blocks
                return _run(codegen.kernel("direct_lanes", rows=M, cols=J, channels=KB,
                                           stride=sw), items, xb, wb, os_, n,
                            C, G, Hp, Wq, Kb, Kg, R, S, sh, dh, dw, P, Q, zero, *e, first=first)
    elif core == "flat":
        # flattened rows of the (phase) planes: pixels f = p*Wq + q are the vector lanes
        J, KB = FLAT_BLOCKS[0]
        Kb = -(-Kg // KB)
        # tap (r, s) reads padded (p*sh + r*dh, q*sw + s*dw): phase plane ((r*dh) % sh,
        # (s*dw) % sw), pixel (p + (r*dh) // sh, q + (s*dw) // sw) of that Hq x Wq plane
        Wq = flat_pitch(Q, S, sw, dw, pl, (x.shape[3] - 1) * isw + 1)
        # reads past a row's end land in the next row's left padding; past the last row
        # of a phase plane that would be the next plane's first column, so stride 2 adds
        # a row to each plane when its rows are shorter than the taps reach
        Hq = P + (R - 1) * dh // sh + (sh * sw > 1 and Wq < Q + (S - 1) * dw // sw)
        toff = np.array([(((r * dh) % sh) * sw + (s * dw) % sw) * Hq * Wq
                         + (r * dh) // sh * Wq + (s * dw) // sw
                         for r in range(R) for s in range(S)], np.int64)
        plane = sh * sw * Hq * Wq
        tail = J + (S - 1) * dw // sw               # the last block reads past the planes
        weight = _blocked_weight(w, wkey, kind, G, Kg, Kb, Cg, flip, KB, checked)
        nf = -(-P * Wq // J)

        def convert(xs, xb):
            if sh == 1:
                if ish == isw == 1:
                    to_padded(xs, xb, Hq, Wq, pt, pl, serial_rows)
                else:
                    _to_phase(xs, xb, Hq, Wq, 1, pt, pl, ish, isw)
            else:
                _run(pairs, len(xs) * C, xs, xb, 2 * Hq, Hq, Wq, pt, pl, True, zero)

        # all output-channel blocks of one pixel block back to back (input reused from
        # L1/L2, weights streamed once per pixel block) unless the weight layout is larger
        # than the slice's input layout; then all pixel blocks of one channel block (the
        # weights reused instead)
        def kernel(n, xb, os_, wb, first, e):
            return _run(codegen.kernel("direct_flat", pixels=J, channels=KB), n * G * Kb * nf,
                        xb, wb, os_, toff,
                        n, C, G, plane, Wq, Kb, Kg, P, Q, orow[0], orow[1], ocol[0], ocol[1],
                        wb.nbytes <= xb.nbytes, zero, *e, first=first)
    else:
        # output rows in blocks of J pixels; column phases split so each tap reads J in a row
        Hp = (P - 1) * sh + (R - 1) * dh + 1
        Kb = -(-Kg // 16)
        J = _pixel_block(Q, dtype)
        Wq = max(Q, J) + ((S - 1) * dw) // sw       # columns per phase read by any block
        plane = Hp * sw * Wq
        tail = 0
        assert orow == ocol == (0, 1)
        weight = _blocked_weight(w, wkey, kind, G, Kg, Kb, Cg, flip, 16, checked)
        # offset of tap column s in a row: phase (s*dw) % sw, then (s*dw) // sw columns in
        soff = np.array([(s * dw) % sw * Wq + (s * dw) // sw for s in range(S)], np.int64)

        def convert(xs, xb):
            if sw == 2 and ish == isw == 1:
                _run(pairs, len(xs) * C, xs, xb, Hp, 0, Wq, pt, pl, False, zero)
            else:
                _to_phase(xs, xb, Hp, Wq, sw, pt, pl, ish, isw)

        def kernel(n, xb, os_, wb, first, e):
            return _run(codegen.kernel("direct_row", pixels=J, channels=16), n * G * Kb * P, xb,
                        wb, os_, soff, n, C, G,
                        Hp, Wq, Kb, Kg, R, S, sh, sw, dh, P, Q, zero, *e, first=first)
    # a few images at a time, so that the layout is still in cache when the kernel reads it
    image = C * plane
    nb = max(1, min(N, numba.get_num_threads() * slice_bytes // (image * dtype.itemsize)))
    xb = workspace("direct_x", nb * image + tail, dtype)
    xb[nb * image:] = 0
    # a cached layout is checked by the calling thread while the workers start the first
    # kernel run (the compare overlaps the work); if the weight changed, that run is
    # done again with a fresh layout
    wb, check = weight()
    for n0 in range(0, N, nb):
        xs = x[n0:n0 + nb]
        convert(xs, xb)
        e = ep.images(n0, n0 + len(xs), K * P * Q)      # its residual: these images'
        if kernel(len(xs), xb, out[n0:n0 + nb], wb, check, e) is False:
            wb, _ = weight(fresh=True)
            kernel(len(xs), xb, out[n0:n0 + nb], wb, None, e)
        check = None


# -- Pointwise forward (1x1, stride 1, no padding, float32) -------------------------------


def _pointwise(plan, x, w, out, G, ep):
    """out = the 1x1 stride-1 unpadded convolution of x (float32) as a GEMM on all
    threads: the batch's pixels are the rows, read in place from x, times the blocked
    weight (64 output channels per block), each work item's result written back to NCHW
    (the generated ``pointwise`` kernel). The weight cache is checked while the product
    runs (as in ``_forward_blocked``)."""
    N, C, H, W = x.shape
    K = out.shape[1]
    Cg, Kg = C // G, K // G
    TB, J = plan["block"]
    Kb = -(-Kg // J)
    nb = -(-N * H * W // TB)
    # chunks of about the plan's rows, and at least 2 items per thread when possible
    nch = max(1, min(nb, max(round(nb * TB / plan["rows"]),
                             -(-2 * numba.get_num_threads() // (G * Kb)))))
    weight = _blocked_weight(w, w, (), G, Kg, Kb, Cg, False, J)
    items = codegen.kernel("direct_pointwise", pixels=TB, channels=J)

    def kernel(wb, first):
        return _run(items, G * Kb * nch, x, wb, out, G, Kb, nch, plan["kc"], *ep, first=first)

    if kernel(*weight()) is False:              # the cached layout was stale: again
        kernel(weight(fresh=True)[0], None)


# -- Depthwise (C/groups == 1) ------------------------------------------------------------


def _dw_tile(P, Q, R, S, sh, sw, dh, dw):
    """Phase-plane rows/columns (Hq, Wq) of the depthwise kernels' tile, and the offset of
    each tap in it: whole blocks of outputs plus the furthest tap's reach. Tap (r, s)
    reads padded row p*sh + r*dh: phase (r*dh) % sh, tile row p + (r*dh) // sh."""
    J, M = DW_BLOCK
    Hq = -(-P // M) * M + (R - 1) * dh // sh
    Wq = -(-Q // J) * J + (S - 1) * dw // sw
    toff = np.array([(((r * dh) % sh) * sw + (s * dw) % sw) * Hq * Wq
                     + (r * dh) // sh * Wq + (s * dw) // sw
                     for r in range(R) for s in range(S)], np.int64)
    return Hq, Wq, toff


def _dw_planes(x, w, out, Kg, sh, sw, pt, pl, dh, dw, flip=False, ep=None):
    """Depthwise convolution, plane by plane: out[n, k] = x_pad[n, k // Kg] correlated with
    w[k, 0] (``flip``: rotated by 180 degrees, the input gradient's weight), by the
    generated ``depthwise`` kernel on a phase-split tile of each plane (see ``codegen``)."""
    N, K, P, Q = out.shape
    R, S = w.shape[2], w.shape[3]
    Hq, Wq, toff = _dw_tile(P, Q, R, S, sh, sw, dh, dw)
    _run(codegen.kernel("depthwise", rows=DW_BLOCK[1], cols=DW_BLOCK[0]), N * K, x, w, out,
         toff, Kg, sh, sw, pt, pl, Hq, Wq, flip, x.dtype.type(0),
         *(none(x.dtype) if ep is None else ep))


@jit(parallel=True, fastmath=_FASTMATH)
def _dw_input(dy, w, out, Kg, sh, sw, pt, pl, dh, dw):
    """Depthwise input gradient: scatter each tap of the Kg outputs of channel c into dx[n, c]."""
    N, C, H, W = out.shape
    _, K, P, Q = dy.shape
    R, S = w.shape[2], w.shape[3]
    for it in prange(N * C):
        n, c = it // C, it % C
        out[n, c] = 0
        for k in range(c * Kg, (c + 1) * Kg):
            for p_ in range(P):
                d = dy[n, k, p_]
                for r in range(R):
                    h = p_ * sh - pt + r * dh
                    if h < 0 or h >= H:
                        continue
                    o = out[n, c, h]
                    for s in range(S):
                        off = s * dw - pl
                        q_lo, q_hi = valid_range(Q, W, sw, off)
                        wv = w[k, 0, r, s]
                        if sw == 1:                    # contiguous: vectorised
                            os_ = o[off + q_lo:off + q_hi]
                            ds = d[q_lo:q_hi]
                            for q in range(q_hi - q_lo):
                                os_[q] += wv * ds[q]
                        else:
                            for q in range(q_lo, q_hi):
                                o[q * sw + off] += wv * d[q]


def _dw_nhwc(x, w, out, p, ep):
    """Depthwise convolution channels last, one output channel per input channel: out
    (N, P, Q, C) from x (N, H, W, C), by the generated ``depthwise_nhwc`` kernel (the
    channels in the vector lanes), reading the input as it is (taps outside it are
    skipped, not padded; padded if a tap is not finite)."""
    taps, finite = _weights.get(w, "depthwise_nhwc", lambda: depthwise_taps(w))
    if not finite and p.padded:
        x, p = zero_padded_nhwc(x, p), unpadded(p)   # a non-finite tap times the padding
    J, M = DW_NHWC_BLOCK
    _run(codegen.kernel("depthwise_nhwc", pixels=M, channels=J), p.N * p.P, x, taps, out,
         p.stride_h, p.stride_w, p.pad_top, p.pad_left, p.dil_h, p.dil_w, x.dtype.type(0),
         *ep)


# -- The registry's kernels: run a plan (fastconv._plan._direct) ---------------------------


def conv2d(plan, x, w, p, out, epilogue=None):
    """Forward direct convolution into ``out`` (N, K, P, Q), with the ``epilogue``
    (``fastconv.kernels.epilogue``) applied by every kernel as it stores a block."""
    ep = none(x.dtype) if epilogue is None else epilogue
    if plan.variant == "depthwise":
        _dw_planes(x, w, out, p.K // p.groups, p.stride_h, p.stride_w, p.pad_top, p.pad_left,
                   p.dil_h, p.dil_w, ep=ep)
    elif plan.variant == "depthwise_nhwc":          # x (N, H, W, C), out (N, P, Q, C)
        _dw_nhwc(x, w, out, p, ep)
    elif plan.variant == "pointwise":
        _pointwise(plan, x, w, out, p.groups, ep)
    else:
        _forward_blocked(plan.variant, plan["slice_bytes"], plan["pad_serial_rows"], x, w, out,
                         p.N, p.C, p.K, p.R, p.S, p.groups, p.stride_h, p.stride_w,
                         p.pad_top, p.pad_left, p.dil_h, p.dil_w, p.P, p.Q, ep=ep)


def _input_grad_phases(plan, dy, w, p, out):
    """Input gradient for stride > 1 without inserted zeros: one stride-1 forward call per
    (row, column) residue class of the plan, each writing its rows/columns of dx with a
    stride."""
    rows, cols, cores = plan["rows"], plan["cols"], plan["cores"]
    if "" in cores:
        out[...] = 0                                   # classes no tap reaches stay zero
    # the first class's call checks w against the weight cache's copy, the others take
    # their cached layouts as they are; a class's taps are a view of w, copied only when
    # its layout is built (as Cython's phases)
    checked = False
    for a, (tr, ptr, oh0, Hi, dh) in enumerate(rows):
        for b, (tc, plc, ow0, Wi, dw) in enumerate(cols):
            core = cores[a * len(cols) + b]
            if not core:
                continue
            wsub = w[:, :, slice(*tr) if tr else slice(None),
                     slice(*tc) if tc else slice(None)]
            # the lanes core writes whole rows: its class into a dense array (a reused
            # workspace), then copied to every stride-th row and column; the flat core
            # writes them itself
            lanes = core == "lanes"
            dst = workspace_array("phase_class", (p.N, p.C, Hi, Wi), out.dtype) if lanes else out
            _forward_blocked(core, plan["slice_bytes"], plan["pad_serial_rows"], dy, wsub, dst,
                             p.N, p.K, p.C, wsub.shape[2], wsub.shape[3], p.groups, 1, 1,
                             ptr, plc, dh, dw, Hi, Wi, flip=True, wkey=w,
                             kind=("phase", tr, tc),          # cached per sub-kernel
                             orow=(0, 1) if lanes else (oh0, p.stride_h),
                             ocol=(0, 1) if lanes else (ow0, p.stride_w), checked=checked)
            checked = True
            if lanes:
                out[:, :, oh0:oh0 + (Hi - 1) * p.stride_h + 1:p.stride_h,
                    ow0:ow0 + (Wi - 1) * p.stride_w + 1:p.stride_w] = dst


def conv2d_input(plan, dy, w, p, out):
    """Gradient wrt the input into ``out`` (N, C, H, W): forward kernel on grad_output with
    the weight rotated 180 degrees, C and K swapped (zeros inserted for stride > 1, or
    one call per residue class: the plan's ``phases``)."""
    if plan.variant == "depthwise":
        # one output channel per input channel: the forward with the rotated weight
        _dw_planes(dy, w, out, 1, 1, 1, p.dil_h * (p.R - 1) - p.pad_top,
                   p.dil_w * (p.S - 1) - p.pad_left, p.dil_h, p.dil_w, flip=True)
    elif plan.variant == "depthwise_scatter":
        _dw_input(dy, w, out, p.K // p.groups, p.stride_h, p.stride_w, p.pad_top, p.pad_left,
                  p.dil_h, p.dil_w)
    elif plan.variant == "phases":
        _input_grad_phases(plan, dy, w, p, out)
    else:
        # dx[h] = sum_r' D[h - pt' + r'*dh] * w[R-1-r'], D = dy with stride-1 zeros
        # between rows, pt' = dh*(R-1) - pt (may be negative: the conversion handles it)
        pt2 = p.dil_h * (p.R - 1) - p.pad_top
        pl2 = p.dil_w * (p.S - 1) - p.pad_left
        _forward_blocked(plan.variant, plan["slice_bytes"], plan["pad_serial_rows"], dy, w, out,
                         p.N, p.K, p.C, p.R, p.S, p.groups, 1, 1, pt2, pl2, p.dil_h, p.dil_w,
                         p.H, p.W, ish=p.stride_h, isw=p.stride_w, flip=True)


def conv2d_weight(plan, x, dy, p, out):
    """Gradient wrt the weight into ``out`` (K, C/groups, R, S)."""
    if plan.variant == "depthwise":
        Hq, Wq, toff = _dw_tile(p.P, p.Q, p.R, p.S, p.stride_h, p.stride_w, p.dil_h, p.dil_w)
        _run(codegen.kernel("depthwise_weight_grad", rows=DW_BLOCK[1], cols=DW_BLOCK[0]), p.K,
             x, dy, out, toff,
             p.K // p.groups, p.stride_h, p.stride_w, p.pad_top, p.pad_left, Hq, Wq,
             x.dtype.type(0))
        return
    dtype = x.dtype
    G, Cg, Kg = p.groups, p.C // p.groups, p.K // p.groups
    L = plan["lanes"]                                # input channels in the vector lanes
    Cb, Kb = -(-Cg // L), -(-Kg // 16)
    dyb = workspace("direct_dy", p.N * G * Kb * p.P * p.Q * 16, dtype)
    _dy_blocked(dy, dyb, G, Kg, Kb)
    # the kernel converts the input blocks itself, per thread (see codegen.direct); with few
    # items, the batch in the plan's parts, each summed into its own copy of the gradient
    items = G * Cb * Kb
    nsplit = plan["batch_splits"]
    acc = workspace("direct_acc", nsplit * items * p.R * p.S * 16 * L, dtype)
    gw = out.reshape(out.size) if nsplit == 1 else workspace("direct_gw", nsplit * out.size,
                                                             dtype)
    _run(codegen.kernel("direct_weight_grad", in_channels=L, channels=16), nsplit * items, x,
         dyb, acc, gw, nsplit, G, Cb, Cg, Kb,
         Kg, p.R, p.S, p.stride_h, p.stride_w, p.dil_h, p.dil_w, p.pad_top, p.pad_left, p.P,
         p.Q, dtype.type(0))
    if nsplit > 1:
        np.sum(gw.reshape((nsplit,) + out.shape), axis=0, out=out)


# -- The inverted residual block (fastconv.inverted_residual) ------------------------------


def inverted_residual(plan, x, weights, biases, p, out, act):
    """The inverted residual block (``fastconv.inverted_residual``): out (N, P, Q, K) from
    x (N, H, W, C), channels last, each step over the whole batch (the selector's plan
    gives Numba whole images, ``plan["rows"]`` = P): the expansion by one NumPy
    ``matmul`` (OpenBLAS) with the bias and activation applied in place, the depthwise
    convolution by the generated ``depthwise_nhwc`` kernel, the projection by one
    ``matmul`` with the bias and x (``p.residual``) added in place; the expanded and
    depthwise activations in reused workspaces. Each step is a call from Python:
    image by image (or band by band), the calls multiplied, and at 2 threads each
    hand-over between OpenBLAS's threads and fastconv's cost more (MobileNet-v2 at
    N=8 ran 1.45x slower image by image, AMD EPYC Zen 4)."""
    from ._epilogue import rows as _rows
    we, wd, wp = weights
    be, bd, bp = biases
    dt, E, K, N = x.dtype, p.E, p.K, p.N
    taps, finite = _weights.get(wd, "depthwise_nhwc", lambda: depthwise_taps(wd))
    J, M = DW_NHWC_BLOCK
    empty = none(dt).bias
    if we is None:
        e = x
    else:
        e = workspace_array("inverted_residual.expanded", (N, p.H, p.W, E), dt)
        ef = e.reshape(-1, E)
        np.matmul(x.reshape(-1, p.C), we.reshape(E, p.C).T, out=ef)
        _rows(ef.reshape(-1), 0, len(ef), E, be, empty, act)
    d = workspace_array("inverted_residual.depthwise", (N, p.P, p.Q, E), dt)
    pad = p.pad
    if not finite and pad:                      # a non-finite tap times the padding
        e, pad = zero_padded_nhwc(e, p.convs()[-2]), 0
    _run(codegen.kernel("depthwise_nhwc", pixels=M, channels=J), N * p.P, e, taps, d,
         p.stride, p.stride, pad, pad, 1, 1, dt.type(0), bd, empty, act)
    y = out.reshape(-1, K)
    np.matmul(d.reshape(-1, E), wp.reshape(K, E).T, out=y)
    _rows(y.reshape(-1), 0, len(y), K, bp, x.reshape(-1) if p.residual else empty, 0)
