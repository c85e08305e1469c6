"""Layout specs and blocking constants that every backend shares: the selector
(``fastconv._plan``) plans with them, and each backend's kernels are built for them, so
two backends given one plan run the same blocks.

Blocked layouts (built per call from NCHW, never returned)::

    padded planes        xb[n, c, hp, wq]         zero-padded rows of Wq columns
    phase planes         xb[n, c, hp, phase, wq]  padded column wp = wq*sw + phase
    blocked weight       wb[g, kb, c, r, s, k]    k < KB output channels last
    channels-last block  xf[h, w, c]              one channel block of one image
    blocked dy           dyb[n, g, kb, p, q, k]   16 output channels last
"""
import dataclasses
from typing import NamedTuple

import numpy as np

from .. import _config
from .._machine import vector_registers

#: pixels per block of direct's row kernel (``direct_row_{J}px_k16``): float64, float32
FWD_BLOCKS = (8, 16)

#: The register blocks of the float32 kernels, by the vector registers the CPU has: each
#: keeps about three quarters of them as accumulators (the rest hold the operands).
#: 32 registers (AVX-512): 1 x 14 pixels x 32 channels is 28 zmm (measured on Zen 4/5 and
#: the Xeon). 16 registers (AVX2 without AVX-512): 1 x 4 x 24 is 12 ymm; the AVX-512
#: blocks there spill and ran 2-3x slower (Zen 3, interleaved, 1 thread, res2-res5
#: 3x3 layers; 1 x 6 x 16 and 1 x 12 x 8 were in between).
_BLOCKS = {
    32: dict(FLAT_BLOCKS=((32, 12),), LANES_BLOCKS=((1, 14, 32), (2, 7, 32)),
             GEMM_BLOCK=(64, 6), PATCH_GEMM_BLOCKS=((64, 6), (32, 6))),
    16: dict(FLAT_BLOCKS=((24, 4),), LANES_BLOCKS=((1, 4, 24), (2, 2, 24)),
             GEMM_BLOCK=(24, 4), PATCH_GEMM_BLOCKS=((24, 4), (12, 4))),
}[vector_registers()]
#: (pixels, output channels) of direct's flat kernel, float32
FLAT_BLOCKS = _BLOCKS["FLAT_BLOCKS"]
#: (rows, pixels per row, output channels) of direct's lanes kernels, float32: one row
#: for rows that hold a block, two rows of half as many for shorter rows (res5's 7 x 7)
LANES_BLOCKS = _BLOCKS["LANES_BLOCKS"]
#: column strides the lanes kernels exist for
LANES_STRIDES = (1, 2)
#: input channels per chunk of a weight laid out on the fly (the streamed lanes kernel,
#: Winograd's streamed filter): the chunk stays in the thread's cache
STREAM_CHANNELS = 64
#: input channels per block of direct's weight gradient: float32, float64
BWW_LANES = (16, 8)
#: column pairs per chunk of the stride-2 phase split
PAIRS = 8
#: (columns, rows) of the depthwise kernels, both dtypes
DW_BLOCK = (16, 4)
#: direct's channels-last depthwise kernel: (channels (the vector lanes), output pixels of a row)
DW_NHWC_BLOCK = (16, 8)
#: (columns, rows) of the register-tiled GEMM (Winograd's products), float32
GEMM_BLOCK = _BLOCKS["GEMM_BLOCK"]
#: (columns, rows) of the GEMM that reads patch rows in place (im2col's weight gradient,
#: direct's pointwise forward): float32, float64
PATCH_GEMM_BLOCKS = _BLOCKS["PATCH_GEMM_BLOCKS"]
#: output channels per block of direct's weight gradient (dy's layout)
DY_BLOCK = 16
#: tiles per parallel work item of Winograd's unfused transforms, at most
WINOGRAD_CHUNK_TILES = 32


def lanes(dtype):
    """Elements of ``dtype`` in one 64-byte vector (16 float32, 8 float64)."""
    return 64 // np.dtype(dtype).itemsize


def lanes_block(P, Q):
    """(rows, pixels per row, output channels) of the lanes kernel for P x Q outputs: the
    first of ``LANES_BLOCKS`` that fits, or None."""
    return next((b for b in LANES_BLOCKS if b[0] <= P and b[1] <= Q), None)


def flat_pitch(Q, S, sw, dw, pl, Wv):
    """Columns Wq per row of the flat kernel's (phase) planes: the fewest (>= Q) such
    that every read of a kept pixel (q < Q) past a row's end, at column wq >= Wq, reads a
    zero of the padding both where it should (virtual column wq*sw + b >= pl + Wv) and
    where it lands (column wq - Wq of the next row, < pl: left padding), so the right
    padding of a row is the left padding of the next (res3 3x3: 29 columns for 28
    outputs, not 30). ``Wv``: the virtual input width (inserted zeros do not count)."""
    taps = {((s * dw) % sw, (s * dw) // sw) for s in range(S)}
    for Wq in range(Q, Q + (S - 1) * dw // sw):
        if all(wq * sw + b >= pl + Wv and (wq - Wq) * sw + b < pl
               for b, e in taps for wq in range(max(Wq, e), Q + e)):
            return Wq
    return Q + (S - 1) * dw // sw


def patch_gemm_block(dtype):
    """(columns, rows) of the patch GEMM for ``dtype``."""
    return PATCH_GEMM_BLOCKS[0 if np.dtype(dtype) == np.float32 else 1]


class DepthwiseTaps(NamedTuple):
    """The channels-last depthwise kernels' weight (``depthwise_nhwc``), cached per
    weight: ``taps`` (R, S, C), cache-line aligned, and whether every tap is finite."""
    taps: np.ndarray
    finite: bool

    @property
    def nbytes(self):
        return self.taps.nbytes


def depthwise_taps(w):
    """:class:`DepthwiseTaps` of a depthwise weight ``w`` (C, 1, R, S)."""
    taps = _config.empty(w.shape[2:] + w.shape[:1], w.dtype)
    taps[...] = w[:, 0].transpose(1, 2, 0)
    return DepthwiseTaps(taps, bool(np.isfinite(taps).all()))


def zero_padded_nhwc(x, p, out=None):
    """x (n, H, W, C), images of geometry ``p``, inside their zero padding, in ``out``
    (n, H + pads, W + pads, C; default: a new array), as :func:`unpadded` ``(p)`` reads
    them: for im2col's channels-last patches, and for the kernels that skip the taps
    outside the input given a non-finite weight, which PyTorch multiplies by the
    padding's zeros (0 x Inf and 0 x NaN are NaN)."""
    shape = (len(x), p.H + p.pad_top + p.pad_bottom, p.W + p.pad_left + p.pad_right, p.C)
    if out is None:
        out = np.zeros(shape, x.dtype)
    else:
        out.fill(0)
    out[:, p.pad_top:p.pad_top + p.H, p.pad_left:p.pad_left + p.W] = x
    return out


def unpadded(p):
    """The geometry ``p`` with its padding made part of the input."""
    return dataclasses.replace(p, H=p.H + p.pad_top + p.pad_bottom,
                               W=p.W + p.pad_left + p.pad_right, pad_top=0, pad_bottom=0,
                               pad_left=0, pad_right=0)
