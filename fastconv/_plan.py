"""The selector: one place that decides how a call runs, as a :class:`Plan`.

A plan names the algorithm, the backend, and the variant with its blocking (tiles,
weight layout, thread split). Backends hold loops only: given a plan and arrays, they
run it. ``fastconv.plan(...)`` returns the plan a call would run (as PyTorch exposes
``select_conv_backend`` for tests); ``fastconv.autotune`` chooses among plans,
variants included. Every threshold a rule reads is in ``fastconv._tuning``.

How ``algorithm="auto"`` chooses, when nothing was autotuned (``_algorithm``):

- 1x1 stride-1 layers: im2col (one GEMM); direct's pointwise GEMM for the float32
  forward of batches of several small planes with C >> K (res5's 2048 -> 512).
- depthwise layers: direct.
- stride-1 kernels other than 3x3 (5x5, 7x7) whose R*S is ``BLOCKS_MIN_SAVING`` times
  F(4x4,3x3)'s multiply-adds on their 3x3 blocks: Winograd on the blocks, where the
  rules below give it to the 3x3 convolution of the blocks
  (``_geometry.blocked_params``); weight gradients only in float32 with tiles for two
  partial sums.
- 3x3 stride-1 layers with enough channels: Winograd F(4x4,3x3) from 20x20 outputs per
  image, and for forward and grad-input from 100 outputs over the batch; F(2x2,3x3)
  for the weight gradient there; below 100 outputs, F(2x2,3x3) for float32 grad-input
  and forwards with 256 channels or more in and out (im2col for their weight
  gradient), else direct (where its lanes kernel fits) or im2col.
- the other forwards with a kernel larger than 1x1 (RGB stems, stride 2, 5x5, 7x7,
  dilated, grouped): direct; so are their gradients where C/groups fills a vector's
  lanes: the input gradient at stride 1, the weight gradient at strides 1 and 2 with
  long patches.
- on CPUs with fewer vector registers than ``WINOGRAD_BELOW_REGISTERS`` (AVX2's 16),
  float32 3x3 stride-1 forwards on images under ``F4_MIN_IMAGE`` outputs run Winograd:
  F(4x4,3x3) from ``F4_MIN_IMAGE`` outputs over the batch, F(2x2,3x3) below.
- on CPUs with fewer vector registers than ``BLAS_BELOW_REGISTERS`` (AVX2's 16), the
  other forwards that direct's lanes kernel or Winograd on images under
  ``F4_MIN_IMAGE`` outputs would run (stride 2, 5x5, float64, ...) go to im2col's BLAS
  GEMM (direct's register block is 12 accumulators there, not 28); stems stay direct.
- everything else (1x1 with stride or padding included): im2col.

``backend="auto"`` (unless ``fastconv.set_backend`` or ``FASTCONV_BACKEND`` set another
default) takes, for the algorithm chosen, the first backend in
:data:`fastconv._dispatch.AUTO_ORDER` (Cython, then Numba) that is available and has a
kernel for the op and algorithm.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import tempfile
import threading
import warnings
from dataclasses import dataclass, field

import numpy as np

from . import _config, _dispatch, _machine, _tuning
from ._machine import vector_registers
from ._geometry import (ConvParams, block_params, blocked_params, check_dtype, conv_params,
                        int_tuple, kernel_blocks, pool_params)
from .kernels import layouts

CONV_OPS = ("conv2d", "conv2d_input", "conv2d_weight")


_MISSING = object()      # Plan.get's default when Plan[name] asks


@dataclass(frozen=True)
class Plan:
    """How one call runs: ``op`` by ``algorithm`` on ``backend``, in ``variant`` with
    ``blocking`` (name, value) pairs, on ``threads`` threads, for ``dtype``.
    ``plan["name"]`` reads a blocking value."""

    op: str
    algorithm: str
    backend: str
    variant: str = ""
    blocking: tuple = ()
    threads: int = 1
    dtype: str = "float32"
    geometry: object = field(default=None, repr=False, compare=False)
    #: the memory layout the kernel computes in: "nchw", or "nhwc" for a channels-last
    #: call run on the channels-last data as it is (``_channels_last``); a channels-last
    #: call with an "nchw" plan is converted to NCHW and its result back
    layout: str = "nchw"

    def __getitem__(self, name):
        value = self.get(name, _MISSING)
        if value is not _MISSING:
            return value
        raise KeyError(f"plan for {self.op} ({self.algorithm}, {self.variant or '-'}) "
                       f"has no blocking value {name!r}; it has "
                       f"{', '.join(k for k, _ in self.blocking) or 'none'}")

    def get(self, name, default=None):
        for key, value in self.blocking:
            if key == name:
                return value
        return default

    def __repr__(self):
        parts = [f"{self.op}: {self.algorithm}/{self.backend}"]
        if self.variant:
            parts.append(f"variant={self.variant!r}")
        parts += [f"{k}={v!r}" for k, v in self.blocking]
        parts += [f"threads={self.threads}", self.dtype]
        if self.layout != "nchw":
            parts.append(f"layout={self.layout!r}")
        return f"Plan({', '.join(parts)})"


# -- Which algorithm -------------------------------------------------------------------


def _algorithm(op, p, dtype, layout="nchw"):
    """The algorithm ``auto`` prefers for ``op`` on geometry ``p`` and ``dtype``, for a
    call whose data is in ``layout`` (the rules in the module docstring)."""
    t = _tuning
    if op not in CONV_OPS:
        return "direct"
    if p.pointwise:
        pointwise = (op == "conv2d" and dtype == np.float32 and p.groups == 1
                     and p.N >= t.POINTWISE_MIN_IMAGES and p.P * p.Q < t.POINTWISE_MAX_IMAGE
                     and p.K >= t.POINTWISE_MIN_OUTPUTS
                     and p.C >= t.POINTWISE_MIN_REDUCTION * p.K)
        return "direct" if pointwise else "im2col"
    if p.groups > 1 and p.groups == p.C == p.K:
        return "direct"
    # on CPUs with few vector registers, Winograd runs the float32 forwards on small
    # images, and BLAS those that direct's lanes kernel would (its register block is too
    # small there)
    registers = vector_registers()
    blas = op == "conv2d" and registers < t.BLAS_BELOW_REGISTERS
    small_winograd = (op == "conv2d" and dtype == np.float32
                      and registers < t.WINOGRAD_BELOW_REGISTERS)
    if winograd_supports(p) and (p.R, p.S) != (3, 3) and (
            p.R * p.S >= t.BLOCKS_MIN_SAVING * F4_MACS * math.prod(kernel_blocks(p))):
        # larger kernels (5x5) as 3x3 blocks, where the 3x3 rules give the blocks
        # Winograd; float32 weight gradients with tiles for two partial sums at least
        # (fewer are summed on one thread: 5x5 at N = 1 ran 0.43x direct's speed on 2
        # threads; float64 at N = 8 0.81x)
        blocked = _algorithm(op, blocked_params(p), dtype, layout)
        m = 4 if blocked == "winograd_f4" else 2
        tiles = p.N * -(-p.P // m) * -(-p.Q // m)
        winograd = blocked in ("winograd_f2", "winograd_f4")
        if winograd and (op != "conv2d_weight"
                         or (dtype == np.float32 and weight_parts(tiles) >= 2)):
            return blocked
    if (winograd_supports(p) and (p.R, p.S) == (3, 3)
            and min(p.C, p.K) >= t.WINOGRAD_MIN_CHANNELS):
        image, outputs = p.P * p.Q, p.N * p.P * p.Q
        if image >= t.F4_MIN_IMAGE:
            return "winograd_f4"
        if small_winograd:
            # F(2x2,3x3)'s filter is 2.25x smaller and read by 4x the tiles: few tiles
            # (N = 1) are bound by reading it, which a network cannot keep in cache
            return "winograd_f4" if outputs >= t.F4_MIN_IMAGE else "winograd_f2"
        if blas:
            return "im2col"
        if outputs < t.F2_MIN_OUTPUTS:
            # few outputs on many channels (res5's 512 channels on 7x7 at N = 1):
            # F(2x2,3x3) beats direct's lanes kernel on dy and on x, and im2col's GEMM,
            # which computes a channels-last forward direct would
            few = dtype == np.float32 and min(p.C, p.K) >= t.F2_FEW_MIN_CHANNELS
            if few and op in ("conv2d", "conv2d_input"):
                return "winograd_f2"
            if few:
                # the weight gradient: im2col's GEMM ran 1.07-1.3x direct's on 512
                # channels on 7x7 at N = 1, 1.06-1.14x on 256 -> 512 on 9x9, 1 and 2
                # threads, the same on 256 on 7x7 (AMD EPYC Zen 4, session 41)
                return "im2col"
            lanes = layouts.lanes_block(p.P, p.Q) is not None
            return "direct" if op == "conv2d_weight" or lanes else "im2col"
        return "winograd_f2" if op == "conv2d_weight" else "winograd_f4"
    if p.K // p.groups < t.DIRECT_MIN_OUTPUTS:
        return "im2col"
    Cg = p.C // p.groups
    patch = Cg * p.R * p.S
    stem = patch < t.DIRECT_MAX_PATCH and p.R * p.S > 1       # not 1x1 with stride or padding
    # any other forward with a kernel larger than 1x1 (stride 2, 5x5, 7x7, dilated,
    # grouped): direct's lanes kernel ran 1.12-3.0x im2col's on 8 such layers at N=1 and
    # 8, 1 and 2 threads (AMD EPYC Zen 4, session 31)
    if op == "conv2d" and (stem or (p.R * p.S > 1 and not blas)):
        return "direct"
    # the gradients of the layers direct's forward takes, where its blocks fill (C/groups
    # of one vector's lanes at least): the input gradient of stride 1 (a forward on dy),
    # and the weight gradient of strides 1 and 2 with long patches. 5x5, 7x7, dilated
    # and grouped layers ran 1.3-1.9x im2col's speed on both backends (AMD EPYC Zen 4,
    # session 33); im2col keeps RGB stems, and stride-2 input gradients but those below
    wide = Cg >= t.DIRECT_MIN_OUTPUTS and p.R * p.S > 1
    if (op == "conv2d_input" and wide and p.stride_h == p.stride_w == 1
            and registers >= t.BLAS_BELOW_REGISTERS):
        return "direct"
    if (op == "conv2d_weight" and wide and max(p.stride_h, p.stride_w) <= 2
            and patch >= t.DIRECT_MAX_PATCH):
        return "direct"
    # stride-2 input gradients with enough outputs or input channels: a lanes forward
    # per residue class
    if (op == "conv2d_input" and p.stride_h == p.stride_w == 2 and p.dil_h == p.dil_w == 1
            and registers >= t.BLAS_BELOW_REGISTERS
            and (p.N * p.P * p.Q >= t.PHASES_MIN_OUTPUTS or Cg >= t.PHASES_MIN_CHANNELS)
            and lanes_phase(dtype, p.P, p.Q, Cg)):
        return "direct"
    return "im2col"


#: F(4x4,3x3)'s multiply-adds per output and input channel, 36 per tile of 16 outputs
F4_MACS = 36 / 16


def winograd_supports(p):
    """Winograd handles stride 1, dilation 1, groups 1 (any padding), 3x3 kernels and
    others as 3x3 blocks of the kernel zero-padded to a multiple of 3."""
    return (p.stride_h == 1 and p.stride_w == 1 and p.dil_h == 1 and p.dil_w == 1
            and p.groups == 1)


#: geometries an algorithm handles, where it does not handle every valid one
SUPPORTS = {"winograd_f2": winograd_supports, "winograd_f4": winograd_supports}


def supports(algorithm, p):
    """Whether ``algorithm`` handles the geometry ``p``."""
    rule = SUPPORTS.get(algorithm)
    return rule is None or rule(p)


# -- direct: which forward core, with what blocking ----------------------------------------


def flat_wins(dtype, sh, sw, ish, isw, Q, Kg, extra):
    """Whether the flat kernel (32 pixels x 12 output channels, float32) runs the forward:
    always for stride 1; for stride 2 (without inserted zeros) when it wastes fewer lanes
    than the row kernel (16 pixels of a row x 16 channels), whose last block of a row of Q
    pixels is partly empty; the flat kernel computes ``extra`` dropped columns per row."""
    if dtype != np.float32:
        return False
    if sh == sw == 1:
        return True
    if not (sh == sw == 2 and ish == isw == 1):
        return False
    rows = Q / (16 * -(-Q // 16)) * Kg / (16 * -(-Kg // 16))
    flat = Q / (Q + extra) * Kg / (12 * -(-Kg // 12))
    return flat > rows


def lanes_wins(dtype, sh, sw, ish, isw, P, Q, patch):
    """Whether a lanes kernel (output channels in the lanes) runs the forward: float32,
    stride 1 or 2 (no inserted zeros) and outputs that hold one of its blocks (for 2 x 7,
    long reductions: ``LANES_MIN_PATCH``)."""
    block = layouts.lanes_block(P, Q)
    return (dtype == np.float32 and sh == sw and sw in layouts.LANES_STRIDES
            and ish == isw == 1 and block is not None
            and (block[0] == 1 or patch >= _tuning.LANES_MIN_PATCH))


def lanes_phase(dtype, P, Q, Cg):
    """Whether the input gradient's residue class of P x Q pixels of dx (Cg channels per
    group, the classes' forward's outputs) runs the lanes core: float32, a lanes block
    that fits and C/groups of two vectors at least (the block's channels; fewer, an RGB
    stem's 3, would leave most lanes empty). Else the flat core."""
    return (dtype == np.float32 and layouts.lanes_block(P, Q) is not None
            and Cg >= 2 * layouts.lanes(dtype))


def streams_weight(nbytes):
    """Whether the 2 x 7 lanes kernel takes a weight of ``nbytes`` as it is."""
    return nbytes >= _tuning.LANES_STREAM_MIN_WEIGHT


#: direct's forward cores: the generated kernel family each runs
DIRECT_CORES = ("lanes", "lanes_streamed", "flat", "row")


def direct_core(dtype, sh, sw, ish, isw, P, Q, R, S, dw, pl, Wv, Cg, Kg, wbytes,
                lanes_ok=True):
    """The forward core (one of ``DIRECT_CORES``) for a blocked direct forward of
    P x Q outputs of Kg channels from Cg*R*S inputs each, on a virtual input ``Wv``
    columns wide (``ish``/``isw`` - 1 zeros inserted between pixels); ``lanes_ok``:
    whether the outputs are written as one dense block (not strided phases)."""
    if lanes_ok and lanes_wins(dtype, sh, sw, ish, isw, P, Q, Cg * R * S):
        M = layouts.lanes_block(P, Q)[0]
        return "lanes_streamed" if M > 1 and streams_weight(wbytes) else "lanes"
    if flat_wins(dtype, sh, sw, ish, isw, Q, Kg, layouts.flat_pitch(Q, S, sw, dw, pl, Wv) - Q):
        return "flat"
    return "row"


def input_grad_phases(stride, dil, pad, R, H, P):
    """Per residue class rho of (h + pad) mod stride: ((start, stop, step) of its taps,
    pad', output offset, output count, dilation) of the stride-1 forward convolution of
    dy that gives those rows of dx.

    Rows h = rho - pad + i*stride take the taps r with r*dil = rho (mod stride): with
    g = gcd(dil, stride), none unless g divides rho, else r = r0 + m*T (T = stride/g),
    reading dy[i - c - m*dil/g] (c = (r0*dil - rho)/stride): a correlation of dy with
    the rotated sub-kernel at dilation dil/g. Nothing multiplies an inserted zero, so a
    NaN weight reaches only the rows its tap reaches, as in the reference."""
    if stride == 1:
        return ((None, dil * (R - 1) - pad, 0, H, dil),)
    g = math.gcd(dil, stride)
    T, d2 = stride // g, dil // g
    out = []
    # the classes some row h < H falls in: all of them, or fewer when stride > H
    classes = range(stride) if stride <= H else sorted({(h + pad) % stride for h in range(H)})
    for rho in classes:
        i0 = -((rho - pad) // stride)                  # first i with h >= 0
        i1 = (H - 1 + pad - rho) // stride             # last i with h < H
        r0 = (rho // g) * pow(d2, -1, T) % T if T > 1 else 0
        taps = range(r0, R, T) if rho % g == 0 else range(0)
        if len(taps) == 0 or i1 < i0:
            out.append(((0, 0, 1), 0, rho - pad + i0 * stride, max(0, i1 - i0 + 1), 1))
            continue
        c = (r0 * dil - rho) // stride
        out.append(((r0, R, T), (len(taps) - 1) * d2 + c - i0, rho - pad + i0 * stride,
                    i1 - i0 + 1, d2))
    return tuple(out)


def _taps(spec, R):
    """Number of taps a phase's (start, stop, step) (None: all) selects."""
    return R if spec is None else len(range(*spec))


def _direct(op, p, dtype, threads, backend=None):
    """(variant, blocking) of direct for ``op`` on ``p``, among the variants ``backend``
    runs (``_dispatch.variants``; the Cython backend's ``lanes`` takes the forwards
    the rules give ``row``, which it lacks)."""
    have = _dispatch.variants(op, "direct", backend)

    def core_of(core):
        return core if have is None or core in have else next(c for c in DIRECT_CORES
                                                              if c in have)

    itemsize = dtype.itemsize
    G, Cg, Kg = p.groups, p.C // p.groups, p.K // p.groups
    wbytes = p.K * Cg * p.R * p.S * itemsize
    depthwise = p.C == p.groups
    if op == "conv2d_weight":
        if depthwise:
            return "depthwise", (("block", layouts.DW_BLOCK),)
        L = layouts.lanes(dtype)
        items = G * -(-Cg // L) * -(-Kg // layouts.DY_BLOCK)
        splits = max(1, min(p.N, -(-_tuning.DIRECT_WEIGHT_GRAD_ITEMS // items)))
        return "blocked", (("lanes", L), ("batch_splits", splits))
    if op == "conv2d":
        if depthwise:
            return "depthwise", (("block", layouts.DW_BLOCK),)
        if dtype == np.float32 and p.pointwise and (have is None or "pointwise" in have):
            J, TB = layouts.PATCH_GEMM_BLOCKS[0]
            return "pointwise", (("block", (TB, J)), ("rows", _tuning.POINTWISE_ROWS),
                                 ("kc", _tuning.POINTWISE_KC),
                                 ("panel_bytes", _tuning.POINTWISE_PANEL_BYTES))
        core = core_of(direct_core(dtype, p.stride_h, p.stride_w, 1, 1, p.P, p.Q, p.R, p.S,
                                   p.dil_w, p.pad_left, p.W, Cg, Kg, wbytes))
        return core, _core_blocking(core, p.P, p.Q, dtype)
    # conv2d_input
    if depthwise and p.K == p.C and p.stride_h == p.stride_w == 1:
        return "depthwise", (("block", layouts.DW_BLOCK), ("flip", True))
    if depthwise:
        return "depthwise_scatter", ()
    if p.stride_h > 1 or p.stride_w > 1:
        rows = input_grad_phases(p.stride_h, p.dil_h, p.pad_top, p.R, p.H, p.P)
        cols = input_grad_phases(p.stride_w, p.dil_w, p.pad_left, p.S, p.W, p.Q)
        phases = []
        for tr, _, _, Hi, _ in rows:
            for tc, _, _, Wi, _ in cols:
                # lanes or flat (lanes_phase); "" for a class no tap reaches
                empty = _taps(tr, p.R) == 0 or _taps(tc, p.S) == 0 or Hi == 0 or Wi == 0
                core = "lanes" if lanes_phase(dtype, Hi, Wi, Cg) else "flat"
                phases.append("" if empty else core)
        return "phases", (("rows", rows), ("cols", cols), ("cores", tuple(phases)),
                          ("slice_bytes", _tuning.DIRECT_SLICE_BYTES),
                          ("pad_serial_rows", _tuning.PAD_SERIAL_ROWS))
    # the forward on dy (zeros inserted between its pixels for stride > 1), the weight
    # rotated, C and K swapped
    pl2 = p.dil_w * (p.S - 1) - p.pad_left
    core = core_of(direct_core(dtype, 1, 1, p.stride_h, p.stride_w, p.H, p.W, p.R, p.S,
                               p.dil_w, pl2, (p.Q - 1) * p.stride_w + 1, Kg, Cg, wbytes))
    return core, _core_blocking(core, p.H, p.W, dtype)


def _core_blocking(core, P, Q, dtype):
    """Blocking of a direct forward core on P x Q outputs: its register block (rows,
    pixels, output channels), and the layout bytes per thread of a slice of images."""
    block = {"lanes": lambda: layouts.lanes_block(P, Q),
             "lanes_streamed": lambda: layouts.lanes_block(P, Q),
             "flat": lambda: (1,) + layouts.FLAT_BLOCKS[0],
             "row": lambda: (1, layouts.FWD_BLOCKS[dtype == np.float32], 16)}[core]()
    wrap = (("wrap_work", _tuning.LANES_WRAP_MAX_WORK),) if core.startswith("lanes") else ()
    return (("block", block), ("slice_bytes", _tuning.DIRECT_SLICE_BYTES),
            ("pad_serial_rows", _tuning.PAD_SERIAL_ROWS)) + wrap


# -- Winograd: which path, with what tiles -------------------------------------------------


def fused_blocks(nthreads, N, th, tw):
    """(tile rows R, images G) per block of the fused path: about BLOCK_TILES tiles,
    at least one block per thread (``nthreads``: 1 when the output channels are split
    instead). Rows of one image; or whole images, G of them in one GEMM, when an image
    has at most half that many tiles and there are G >= 2 images per thread (few tiles
    per image: each block reads the whole transformed filter)."""
    target = _tuning.BLOCK_TILES
    G = min(target // (th * tw), N // nthreads)
    if G >= 2:
        return th, G
    return max(1, min(target // tw, -(-N * th // nthreads))), 1


def weight_parts(tiles):
    """How many partial dU the fused Winograd weight gradient sums ``tiles`` tiles into
    (fixed by the shape: the result does not depend on the threads)."""
    if tiles < 2 * _tuning.WEIGHT_PART_MIN_TILES:
        return 1
    return 2 if tiles < _tuning.WEIGHT_FOUR_PARTS_TILES else _tuning.WEIGHT_PARTS


def _own_gemm(K, dtype):
    """Whether Winograd's unfused path multiplies by fastconv's own GEMM (float32, K
    padded to its blocks' columns by at most GEMM_MAX_PADDING), else BLAS's."""
    J = layouts.GEMM_BLOCK[0]
    return dtype == np.float32 and -(-K // J) * J <= K * _tuning.GEMM_MAX_PADDING


def _tile_batch(alpha2, C, K, itemsize, TB):
    """Tiles per batch of Winograd's unfused path: as many as the workspace holds of
    their transformed input and products (alpha2 (C + K) values each), in whole GEMM
    blocks of TB."""
    return max(TB, _config.get_workspace_limit() // (alpha2 * (C + K) * itemsize) // TB * TB)


def _winograd(op, m, p, dtype, threads, backend):
    """(variant, blocking) of Winograd F(m x m, 3x3) for ``op`` on ``p``, among the
    variants ``backend`` runs (``_dispatch.variants``; the Cython backend: all of
    them). A kernel other than 3x3 runs as 3x3 blocks (``kernels/kernel_blocks.py``):
    the plan of the 3x3 convolution they make, with ("kernel_blocks", (rows, columns))."""
    if (p.R, p.S) == (3, 3):
        return _winograd_3x3(op, m, p, dtype, threads, backend)
    q = blocked_params(p)
    # forward and input gradient: groups of images whose stacked input (its gradient)
    # stays in the L2, where the 3x3 kernel reads it back (the fold reads it too)
    room = int(_machine.caches()["l2"] * _tuning.BLOCKS_CACHE_SHARE)
    images = (p.N if op == "conv2d_weight"
              else max(1, min(p.N, room // (q.C * q.H * q.W * dtype.itemsize))))
    variant, blocking = _winograd_3x3(op, m, dataclasses.replace(q, N=images), dtype,
                                      threads, backend)
    return variant, blocking + (("kernel_blocks", kernel_blocks(p)),
                                ("block_images", images))


def _winograd_3x3(op, m, p, dtype, threads, backend):
    have = _dispatch.variants(op, f"winograd_f{m}", backend)

    def runs(variant):
        return have is None or variant in have

    t = _tuning
    itemsize = dtype.itemsize
    alpha2 = (m + 2) ** 2
    C, K, P, Q = p.C, p.K, p.P, p.Q
    if op == "conv2d_input":                   # the forward on dy: C and K swapped
        C, K, P, Q = p.K, p.C, p.H, p.W
    N = p.N
    th, tw = -(-P // m), -(-Q // m)
    Hp, Wp = m * th + 2, m * tw + 2
    filter_bytes = alpha2 * C * K * itemsize
    tiles = N * th * tw
    if op == "conv2d_weight":
        # fused: each partial sum is one thread's; few tiles (one part) with much work,
        # unfused, whose GEMMs use every thread (by the shape alone: the same bits on
        # any thread count)
        few = (tiles < t.WEIGHT_FUSED_MIN_TILES
               and tiles * alpha2 * C * K >= t.WEIGHT_UNFUSED_MIN_MACS)
        if ((filter_bytes <= t.WEIGHT_FUSED_MAX_FILTER_BYTES and not few)
                or not runs("unfused")):
            parts = weight_parts(tiles)
            R = max(1, min(t.WEIGHT_BLOCK_TILES // tw, -(-N * th // parts)))
            parts = min(parts, N * -(-th // R))
            return "fused", (("tiles", (th, tw)), ("block_rows", R), ("parts", parts),
                             ("threads_used", min(threads, parts)),
                             ("serial_filter", parts * filter_bytes
                              <= t.SERIAL_FILTER_T_MAX_BYTES))
        group = max(1, min(N, _config.get_workspace_limit()
                           // ((Hp * Wp * C + (Hp - 2) * (Wp - 2) * K) * itemsize)))
        tb = max(1, min(group * th * tw,
                        _config.get_workspace_limit() // (alpha2 * (C + K) * itemsize)))
        return "unfused", (("tiles", (th, tw)), ("images", group), ("tile_batch", tb),
                           ("serial_filter", filter_bytes <= t.SERIAL_FILTER_T_MAX_BYTES))
    if (m == 4 and dtype == np.float32 and filter_bytes >= t.STREAM_MIN_FILTER_BYTES
            and tiles <= t.STREAM_MAX_TILES and runs("streamed")):
        return "streamed", (("tiles", (th, tw)), ("channels", layouts.STREAM_CHANNELS),
                            ("serial", tiles <= t.STREAM_SERIAL_TILES))
    # on CPUs with few vector registers, the unfused path wherever its transformed tiles
    # (a batch of them) stay in the L3
    unfused = (vector_registers() < t.UNFUSED_BELOW_REGISTERS and runs("unfused")
               and _own_gemm(K, dtype)
               and min(tiles, _tile_batch(alpha2, C, K, itemsize, 1)) * alpha2 * (C + K)
               * itemsize <= _machine.caches()["l3"])
    fused = filter_bytes <= t.FUSED_MAX_FILTER_BYTES and not unfused
    R, G = fused_blocks(1, N, th, tw)
    slice_bytes, blocks = filter_bytes / threads, -(-N // G) * -(-th // R)
    # split: with fewer tiles than a block, the unfused path's GEMMs ran faster
    split = not fused and not unfused and threads > 1 and tiles >= t.SPLIT_MIN_TILES and (
        slice_bytes <= t.SPLIT_MAX_SLICE_BYTES
        or blocks * slice_bytes <= t.SPLIT_MAX_STREAM_BYTES or not runs("unfused"))
    if fused or split or not (runs("unfused") and runs("unfused_blas")):
        R, G = fused_blocks(1 if split else threads, N, th, tw)
        return ("split" if split else "fused"), (("tiles", (th, tw)), ("block_rows", R),
                                                 ("images", G),
                                                 ("filter_slices", threads if split else 1))
    own = _own_gemm(K, dtype)
    J, TB = layouts.GEMM_BLOCK if own else (1, 1)
    group = max(1, min(N, _config.get_workspace_limit() // (Hp * Wp * C * itemsize)))
    tb = _tile_batch(alpha2, C, K, itemsize, TB)
    return ("unfused" if own else "unfused_blas"), (
        ("tiles", (th, tw)), ("images", group), ("tile_batch", tb), ("gemm_block", (TB, J)),
        ("gemm_rows_bytes", t.GEMM_ROWS_BYTES))


# -- im2col ---------------------------------------------------------------------------------


def _transposed_input(p, dtype):
    """Whether Cython's 1x1 input gradient (``image_gemm``, 2+ threads) runs the
    forward's kernel on dy with the weight read transposed where it is: each row block
    of input channels reads a cache line from every output channel's row of the weight,
    which the next row blocks read again, so the weight should stay near L1d
    (``_tuning.TRANSPOSED_INPUT_MAX_L1``). Float32 only: float64's ran 0.86-0.95x
    pointwise_input's speed where float32's ran 1.2x and more (Intel Xeon Ice Lake)."""
    weight = (p.K // p.groups) * (p.C // p.groups) * 4
    return (np.dtype(dtype) == np.float32
            and weight <= _machine.caches()["l1d"] * _tuning.TRANSPOSED_INPUT_MAX_L1)


def _im2col(op, p, dtype, threads, backend=None):
    """(variant, blocking) of im2col for ``op`` on ``p``."""
    t = _tuning
    # Cython's own 1x1 forward spans small images in its panels (``_pointwise``), so it
    # runs planes of any size per image (``image_gemm``), as does its input gradient on
    # 2+ threads: against one GEMM over the batch (``batch_gemm``), on 7x7 planes at N = 4
    # and 8 the forward ran 1.12-2.0x faster (float64 1.16-1.68x) on 1 and 2 threads and
    # the input gradient 1.05-1.75x on 2; on one thread the input gradient's matmul per
    # image ran 0.85-0.92x (Intel Xeon Ice Lake). ``backend`` None: the rules' choice
    # among every backend's variants, Cython's here
    own = backend in (None, "cython") and (op == "conv2d"
                                           or op == "conv2d_input" and threads > 1)
    one_gemm = p.N > 1 and p.P * p.Q < t.POINTWISE_ONE_GEMM_BELOW and not own
    # Cython's own 1x1 kernels' (forward, input gradient, weight gradient)
    panel = (("panel_bytes", {"conv2d_input": t.POINTWISE_INPUT_BYTES,
                              "conv2d_weight": t.POINTWISE_WEIGHT_BYTES}.get(
                                  op, t.POINTWISE_PANEL_BYTES)),)
    if p.pointwise:
        if op == "conv2d_weight":           # Cython: one own GEMM over the batch either way
            return ("batch_gemm" if one_gemm else "image_gemm"), panel
        if op == "conv2d_input" and own and _transposed_input(p, dtype):
            panel = (("panel_bytes", t.POINTWISE_PANEL_BYTES), ("transposed", True))
        return ("batch_gemm", ()) if one_gemm else ("image_gemm", panel)
    if op in ("conv2d", "conv2d_weight") and p.R == p.S == 1 and not p.padded:
        return "image_gemm", panel  # strided 1x1 (a downsample): no patch matrix either
    CgRS = (p.C // p.groups) * p.R * p.S
    if (op == "conv2d_weight" and p.P * p.Q >= t.WEIGHT_FUSED_MIN_RATIO * CgRS
            and p.K // p.groups >= t.WEIGHT_FUSED_MIN_CHANNELS):
        J, TB = layouts.patch_gemm_block(dtype)
        return "patch_gemm", (("block", (TB, J)),
                              ("band_rows", max(1, min(p.P, t.WEIGHT_BAND_COLUMNS // p.Q))),
                              ("slices", t.WEIGHT_SLICES),
                              ("pad_serial_rows", t.PAD_SERIAL_ROWS))
    return "tiled", (("tile", _tile(p, dtype)),)


def _tile(p, dtype):
    """(images, output rows) of an im2col tile whose patches and GEMM result fit the
    workspace limit: whole images when one fits, else bands of one image's rows."""
    per_column = (p.C * p.R * p.S + p.K) * dtype.itemsize
    budget = _config.get_workspace_limit()
    per_image = per_column * p.P * p.Q
    if per_image <= budget:
        return max(1, min(p.N, budget // per_image)), p.P
    return 1, max(1, budget // (per_column * p.Q))


_VARIANTS = {
    "direct": _direct,
    "im2col": _im2col,
    "winograd_f2": lambda op, p, dtype, threads, backend: _winograd(op, 2, p, dtype, threads,
                                                                    backend),
    "winograd_f4": lambda op, p, dtype, threads, backend: _winograd(op, 4, p, dtype, threads,
                                                                    backend),
}


# -- Making a plan ------------------------------------------------------------------------


def _backend_for(op, algorithm, backend):
    """The backend that runs (op, algorithm) given the user's ``backend=``."""
    have = [b for a, b in _dispatch.pairs(op) if a == algorithm]
    if backend == "auto":
        if algorithm == "reference":
            return "numpy"
        for b in _dispatch.AUTO_ORDER:
            if b in have:
                return b
        return None
    return backend if backend in have else None


@functools.lru_cache(maxsize=4096)
def _make(op, p, dtype, algorithm, backend, threads, generation, budget, layout="nchw"):
    """The plan (memoised: training calls the same shapes every step)."""
    conv = op in CONV_OPS
    pairs = _dispatch.pairs(op)
    check_names(op, algorithm, backend)
    auto_backend = backend == "auto"
    auto_algorithm = algorithm == "auto"
    user_backend = backend
    if algorithm == "auto":
        preferred = _algorithm(op, p, dtype, layout) if conv else "direct"
        order = [preferred] + [a for a, _ in pairs if a not in (preferred, "reference")]
        order.append("reference")
        chosen = None
        for a in dict.fromkeys(order):
            b = _backend_for(op, a, backend)
            if b is not None and (not conv or supports(a, p)):
                chosen = (a, b)
                break
        if chosen is None:
            raise ValueError(f"{op}: no kernel for backend={backend!r}; registered: "
                             f"{_registered(pairs)}")
        algorithm, backend = chosen
    else:
        backend = _backend_for(op, algorithm, backend)
        if conv and not supports(algorithm, p):
            raise ValueError(
                f"{op}: algorithm={algorithm!r} (backend={backend!r}) does not handle this "
                f"geometry: {p}; {SUPPORTS[algorithm].__doc__}")
    variant, blocking = "", ()
    if conv and algorithm in _VARIANTS:
        variant, blocking = _VARIANTS[algorithm](op, p, dtype, threads, backend)
        if auto_backend:
            backend, variant, blocking = _backend_for_variant(op, p, dtype, algorithm,
                                                              threads, backend, variant,
                                                              blocking)
    if layout == "nhwc":
        nhwc = _channels_last(op, p, dtype, algorithm, backend, variant, blocking,
                              auto_algorithm, user_backend, threads)
        if nhwc is not None:
            algorithm, backend, variant, blocking = nhwc
            return Plan(op, algorithm, backend, variant, blocking, threads, dtype.name, p,
                        "nhwc")
    return Plan(op, algorithm, backend, variant, blocking, threads, dtype.name, p)


def _channels_last(op, p, dtype, algorithm, backend, variant, blocking, auto_algorithm,
                   user_backend, threads=1):
    """(algorithm, backend, variant, blocking) of a plan that computes a channels-last
    call in that layout, or None where no kernel does (the call is converted):

    - im2col, one group: ``nhwc_gemm`` for 1x1 stride 1 (one GEMM over every pixel of
      the batch), else ``nhwc_tiled`` (patches gathered from channels-last rows);
      both backends (``kernels/channels_last.py``);
    - Winograd's forward, every variant, both backends: the same plan, its slabs copied
      from channels-last rows and its output transform storing runs of channels (its
      tiles are channels last inside; the bits equal the NCHW plan's);
    - direct's depthwise with one output channel per input channel: ``depthwise_nhwc``
      (both backends), the channels in the vector lanes, on the backend of the plan if it has
      the variant, or for ``backend="auto"`` the first of ``AUTO_ORDER`` that has it;
    - where ``algorithm="auto"`` chose direct for a one-group layer (stems, stride 2),
      im2col's channels-last GEMM instead of a conversion each way;
    - ``adaptive_avg_pool2d`` and ``max_pool2d`` (both backends' direct kernels; not
      the reference; max_pool2d only for its values: the caller asks for "nchw" when it
      wants the indices);
    - ``inverted_residual``: both backends' ``fused`` kernel (the reference computes
      NCHW), in bands of ``rows`` output rows (Cython: :func:`block_band`, its threads'
      work split as :func:`block_split` says; Numba: whole images).
    """
    if op in ("adaptive_avg_pool2d", "max_pool2d"):
        return None if algorithm == "reference" else (algorithm, backend, variant, blocking)
    if op == "inverted_residual":
        if algorithm == "reference":
            return None
        if backend != "cython":
            # Numba's steps are calls from Python, whose cost small bands would
            # multiply: whole images, every step over the batch at once
            return algorithm, backend, "fused", (("rows", p.P),)
        rows = block_band(p, dtype)
        return algorithm, backend, "fused", (("rows", rows),
                                             ("split", block_split(p, dtype, threads)))
    if op != "conv2d":
        return None
    if algorithm == "direct" and variant == "depthwise" and p.K == p.C:
        have = [b for a, b in _dispatch.pairs(op) if a == "direct"]
        for b in _dispatch.AUTO_ORDER if user_backend == "auto" else (backend,):
            runs = _dispatch.variants(op, "direct", b)
            if b in have and (runs is None or "depthwise_nhwc" in runs):
                return algorithm, b, "depthwise_nhwc", ()
    if p.groups != 1:
        return None
    if algorithm in ("winograd_f2", "winograd_f4"):
        return algorithm, backend, variant, blocking
    if algorithm != "im2col":
        if not (auto_algorithm and algorithm == "direct"):
            return None
        backend = _backend_for(op, "im2col", user_backend)
        if backend is None:
            return None
    if p.pointwise:
        rows = max(16, _tuning.NHWC_GEMM_BYTES // (p.K * dtype.itemsize))
        return "im2col", backend, "nhwc_gemm", (("rows", rows),)
    return "im2col", backend, "nhwc_tiled", (("tile", _tile(p, dtype)),
                                             ("band", _nhwc_band(p, threads)))


def _nhwc_band(p, threads):
    """Output rows per work item of Cython's channels-last kernel (``nhwc_tiled``): as
    many as hold ``NHWC_BAND_PIXELS`` pixels, fewer where the items (images x bands x
    panels of output channels) would be fewer than two per thread."""
    band = min(p.P, max(1, -(-_tuning.NHWC_BAND_PIXELS // p.Q)))
    panels = -(-p.K // layouts.GEMM_BLOCK[0])         # the float32 panels' count
    while band > 1 and p.N * -(-p.P // band) * panels < 2 * threads:
        band = -(-band // 2)
    return band


def block_band(p, dtype):
    """Output rows per band of the fused inverted residual block (geometry ``p``,
    ``_geometry.BlockParams``): as many as keep a band's expanded input rows
    (``(rows - 1) * stride + R`` of W x E values, when it expands) and its depthwise
    output (rows of Q x E) within ``_tuning.BLOCK_BAND_BYTES``; at least 1, at most P."""
    budget = _tuning.BLOCK_BAND_BYTES // np.dtype(dtype).itemsize
    per_row = p.Q * p.E + (p.stride * p.W * p.E if p.expand else 0)
    fixed = (p.R - p.stride) * p.W * p.E if p.expand else 0
    return int(min(p.P, max(1, (budget - fixed) // per_row)))


def block_split(p, dtype, threads):
    """How the Cython block kernel shares its work among ``threads``: ``"rows"``, each
    thread bands of its own images or parts of an image's rows; or ``"channels"``, where
    there are fewer images than threads and an image is one band (:func:`block_band`):
    each image's expansion and depthwise output whole, in panels of channels per
    thread, then the projection split in pixels. Cut in rows, MobileNet-v2's 7x7 images
    at N=1 went 4 + 3 rows to 2 threads, each part expanding the rows above and below it
    again (5 + 4 rows expanded for 7); in channels the network ran 2-3% faster on 2
    threads. Its 14x14 blocks, several bands each, ran 7-18% slower in channels than in
    rows (AMD EPYC Zen 4)."""
    return "channels" if p.N < threads and block_band(p, dtype) >= p.P else "rows"


#: Where ``backend="auto"`` departs from "the first backend of AUTO_ORDER that runs the
#: variant the rules choose", as measured in whole networks (Intel Xeon ``rocketlake``;
#: docs/cython.md). (op, backend, its variant) -> the variants of another backend it
#: stands in for, being at least as fast: Cython's ``lanes`` forward for Numba's
#: ``row`` (float64, 1.3-2.5x).
STANDS_IN_FOR = {("conv2d", "cython", "lanes"): ("row",)}
def _backend_for_variant(op, p, dtype, algorithm, threads, backend, variant, blocking):
    """(backend, variant, blocking) for ``backend="auto"``: ``backend`` (the first of
    ``AUTO_ORDER`` with the algorithm) unless it lacks the variant the rules choose
    among every backend's variants (or one it stands in for, ``STANDS_IN_FOR``) and a
    later backend in that order runs it (none since Cython has direct's ``flat``)."""
    best = _VARIANTS[algorithm](op, p, dtype, threads, None)
    have = [b for a, b in _dispatch.pairs(op) if a == algorithm]
    if variant == best[0] or best[0] in STANDS_IN_FOR.get((op, backend, variant), ()):
        return backend, variant, blocking
    for b in _dispatch.AUTO_ORDER:
        if b != backend and b in have:
            v, blk = _VARIANTS[algorithm](op, p, dtype, threads, b)
            if v == best[0]:
                return b, v, blk
    return backend, variant, blocking


def check_names(op, algorithm, backend):
    """Raise ValueError unless ``algorithm=`` and ``backend=`` name a registered kernel of
    ``op`` on an available backend (``"auto"`` for either)."""
    if backend not in ("auto", "numpy") and backend not in _dispatch.available_backends():
        raise ValueError(
            f"{op}: backend {backend!r} is not available; available: "
            f"{', '.join(_dispatch.available_backends())} (and 'auto')"
            + _dispatch.missing_reason(backend))
    if algorithm != "auto" and _backend_for(op, algorithm, backend) is None:
        raise ValueError(
            f"{op}: no kernel for algorithm={algorithm!r}, backend={backend!r}; "
            f"registered: {_registered(_dispatch.pairs(op))}, and 'auto' for either")


def _registered(pairs):
    return ", ".join(f"(algorithm={a!r}, backend={b!r})" for a, b in pairs)


def conv2d_layout(p, algorithm, layout):
    """The layout ``conv2d``'s plan is made for, given the input's ``layout``: that, or
    under ``algorithm="auto"`` "nhwc" for an input of one pixel per channel whose output
    is one pixel too (the same memory in either layout, and the result C-contiguous
    either way: a Linear layer as a 1x1 convolution). The channels-last kernels ran
    these 1.5-7x faster than the NCHW plans (MobileNet-v2's 1280->1000 at N=1 and 8, on
    1 and 2 threads, AMD EPYC Zen 4)."""
    if layout == "nchw" and algorithm == "auto" and p.H == p.W == p.P == p.Q == 1:
        return "nhwc"
    return layout


def make(op, p, dtype, algorithm="auto", backend="auto", layout="nchw"):
    """The plan for ``op`` on validated geometry ``p`` and ``dtype``, given the user's
    ``algorithm=`` and ``backend=`` (``"auto"``: autotuned winner if any, else the
    rules), for input in ``layout`` ("nchw", or "nhwc": channels-last; the plan's own
    ``layout`` says whether its kernel computes in it)."""
    dtype = np.dtype(dtype)
    threads = _config.get_num_threads()
    if backend == "auto":
        backend = _dispatch.default_backend()
    if (algorithm == "auto" and backend == "auto" and op in CONV_OPS and layout == "nchw"
            and (_autotune_enabled or _load_tuned())):
        tuned = _load_tuned().get(_key(op, p, dtype))
        if tuned is None and _autotune_enabled:
            tuned = tune(op, p, dtype)
        if tuned is not None:
            plan = _from_tuned(op, p, dtype, tuned, threads)
            if plan is not None:
                return plan
    return _make(op, p, dtype, algorithm, backend, threads, _tuning.generation,
                 _config.get_workspace_limit(), layout)


def settings():
    """What :func:`make`'s plan depends on beyond the call's own arguments: this thread's
    thread count, the default backend, the tuning values' generation, the workspace
    limit and autotuning. A plan kept across calls (``functional._Conv2dCall``) is the
    one ``make`` would return while this stays equal."""
    return (_config.get_num_threads(), _dispatch.default_backend(), _tuning.generation,
            _config.get_workspace_limit(), _autotune_enabled)


# -- Tracing: which plans ran -----------------------------------------------------------

_trace = threading.local()


@contextlib.contextmanager
def trace():
    """Record the plans the calling thread runs inside the block, in a list (a block
    nested in another records its plans in both)::

        with fastconv.trace_plans() as ran:
            fastconv.conv2d(x, w, algorithm="direct")
        ran[-1].variant          # e.g. 'lanes'
    """
    ran = []
    outer = getattr(_trace, "ran", None)
    _trace.ran = ran
    try:
        yield ran
    finally:
        _trace.ran = outer
        if outer is not None:                       # an enclosing block sees them too
            outer.extend(ran)


def run(plan, *args):
    """Run ``plan`` on ``args`` (the op's arrays and geometry) by its backend's kernel."""
    ran = getattr(_trace, "ran", None)
    if ran is not None:
        ran.append(plan)
    _dispatch.kernel(plan.op, plan.algorithm, plan.backend)(plan, *args)


def run_bound(plan, bound, *args):
    """Run ``plan`` by ``bound``, its kernel bound to a weight
    (``functional._Conv2dCall.bind``), on ``args``; traced as :func:`run` is."""
    ran = getattr(_trace, "ran", None)
    if ran is not None:
        ran.append(plan)
    bound(*args)


# -- The public view ----------------------------------------------------------------------


def plan(op, input_shape, weight_shape=None, *, stride=None, padding=0, dilation=1, groups=1,
         kernel_size=None, ceil_mode=False, dtype=np.float32, algorithm="auto",
         backend="auto", layout="nchw"):
    """The plan a call with these arguments would run, without running it.

    Parameters
    ----------
    op : str
        ``"conv2d"``, ``"conv2d_input"``, ``"conv2d_weight"``, a pooling op
        (``"max_pool2d"``, ``"avg_pool2d"``, with ``kernel_size``, and their backward),
        or ``"inverted_residual"``.
    input_shape : tuple of int
        (N, C, H, W) of the forward pass's input.
    weight_shape : tuple of int
        (K, C/groups, R, S), for the conv ops; for ``"inverted_residual"`` its three
        weights' shapes (expansion or None, depthwise, projection), with ``stride``.
    stride, padding, dilation, groups, algorithm, backend
        As in :func:`fastconv.conv2d` (pooling: ``stride`` defaults to ``kernel_size``).
    dtype : numpy dtype
        float32 or float64.
    layout : "nchw" or "nhwc"
        The input's memory layout ("nhwc": channels last, docs/channels_last.md).

    Returns
    -------
    Plan
        A frozen object: ``.algorithm``, ``.backend``, ``.variant`` and ``.blocking``
        (``plan["name"]``); its ``repr`` reads as one line.

    Examples
    --------
    >>> fastconv.plan("conv2d", (1, 64, 56, 56), (64, 64, 3, 3), padding=1)  # doctest: +SKIP
    Plan(conv2d: winograd_f4/numba, variant='fused', ...)
    """
    if not isinstance(op, str) or op not in _dispatch.OPS:
        raise ValueError(f"plan: unknown op {op!r}; ops are {', '.join(_dispatch.OPS)}")
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"plan: dtype must be float32 or float64, got {dtype!r}") from None
    dt = check_dtype("plan", dtype=np.empty(0, dt))
    input_shape = int_tuple("plan", "input_shape", input_shape)
    if op in CONV_OPS:
        if weight_shape is None:
            raise ValueError(f"plan: {op} needs weight_shape")
        weight_shape = int_tuple("plan", "weight_shape", weight_shape)
        p = conv_params(op, tuple(input_shape), tuple(weight_shape),
                        1 if stride is None else stride, padding,
                        dilation, groups)
    elif op == "inverted_residual":
        shapes = weight_shape
        if not (isinstance(shapes, (tuple, list)) and len(shapes) == 3):
            raise ValueError(f"plan: inverted_residual needs weight_shape as the three "
                             f"weights' shapes (expansion or None, depthwise, projection), "
                             f"got {weight_shape!r}")
        p = block_params(op, tuple(input_shape), None if shapes[0] is None else
                         int_tuple("plan", "weight_shape", shapes[0]),
                         int_tuple("plan", "weight_shape", shapes[1]),
                         int_tuple("plan", "weight_shape", shapes[2]),
                         1 if stride is None else stride)
        layout = "nhwc"                     # its kernels' layout whatever the input's
    elif op in _dispatch.OPS:
        if op == "adaptive_avg_pool2d" or op == "max_pool2d_backward":
            p = None
        else:
            if kernel_size is None:
                raise ValueError(f"plan: {op} needs kernel_size")
            p = pool_params(op, tuple(input_shape), kernel_size, stride, padding, dilation,
                            ceil_mode)
    else:
        raise ValueError(f"plan: unknown op {op!r}; ops are {', '.join(_dispatch.OPS)}")
    if layout not in ("nchw", "nhwc"):
        raise ValueError(f"plan: layout must be 'nchw' or 'nhwc', got {layout!r}")
    if op == "conv2d":
        layout = conv2d_layout(p, algorithm, layout)
    return make(op, p, dt, algorithm, backend, layout)


# -- Autotuning: time the candidate plans once per geometry, remember the winner ----------

_tuned = None             # key -> [algorithm, backend, variant], loaded on first use
_autotune_enabled = False


@functools.lru_cache(maxsize=1)
def _cpu():
    """The CPU's model name (read on first use: ``fastconv.bench`` is not imported by
    ``import fastconv``)."""
    from .bench import cpu_model
    return cpu_model()


def _tune_file():
    return os.path.join(os.path.dirname(_config.CACHE_DIR.rstrip(os.sep)), "autotune.json")


def _key(op, p, dtype):
    """Autotune key: op, geometry, dtype, thread count and CPU."""
    return "|".join([op, ",".join(map(str, p.as_tuple())), np.dtype(dtype).name,
                     str(_config.get_num_threads()), _cpu()])


def _load_tuned():
    global _tuned
    if _tuned is None:
        try:
            with open(_tune_file()) as f:
                _tuned = json.load(f)
        except (OSError, ValueError):
            _tuned = {}
    return _tuned


def _save_tuned():
    path = _tune_file()
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=os.path.dirname(path), delete=False,
                                         suffix=".tmp") as f:
            json.dump(_tuned, f, indent=0, sort_keys=True)
        os.replace(f.name, path)
    except OSError as exc:
        warnings.warn(f"fastconv: could not save autotune results to {path!r}: {exc}",
                      RuntimeWarning, stacklevel=3)


#: the variants autotune may force, per algorithm and op, beside the rules' choice
_ALTERNATIVES = {
    ("direct", "conv2d"): ("lanes", "flat", "row"),
    ("winograd_f2", "conv2d"): ("fused", "split", "unfused", "unfused_blas"),
    ("winograd_f4", "conv2d"): ("fused", "split", "unfused", "unfused_blas", "streamed"),
    ("winograd_f2", "conv2d_input"): ("fused", "split", "unfused", "unfused_blas"),
    ("winograd_f4", "conv2d_input"): ("fused", "split", "unfused", "unfused_blas", "streamed"),
}


def _forced(plan, variant):
    """``plan`` with ``variant`` instead of the rules' choice, or None where that
    variant cannot run the geometry."""
    if variant == plan.variant:
        return plan
    have = _dispatch.variants(plan.op, plan.algorithm, plan.backend)
    if have is not None and variant not in have:
        return None                 # a variant this backend does not run
    if variant not in _ALTERNATIVES.get((plan.algorithm, plan.op), ()):
        return None                 # e.g. a remembered 'streamed' or weight-gradient 'fused'
    p, dtype = plan.geometry, np.dtype(plan.dtype)
    if plan.algorithm == "direct":
        if plan.variant not in DIRECT_CORES or dtype != np.float32:
            return None
        if variant == "lanes" and not (p.stride_h == p.stride_w and p.stride_w in
                                       layouts.LANES_STRIDES
                                       and layouts.lanes_block(p.P, p.Q) is not None):
            return None
        if variant == "flat" and not (p.stride_h == p.stride_w and p.stride_w in (1, 2)):
            return None
        return Plan(plan.op, plan.algorithm, plan.backend, variant,
                    _core_blocking(variant, p.P, p.Q, dtype), plan.threads, plan.dtype, p)
    if plan.variant not in ("fused", "split", "unfused", "unfused_blas", "streamed"):
        return None                             # e.g. the weight gradient's
    if variant == "split" and plan.threads < 2:
        return None
    if variant in ("unfused", "streamed") and dtype != np.float32:
        return None
    m = 2 if plan.algorithm == "winograd_f2" else 4
    blocks = plan.get("kernel_blocks")
    g = p if blocks is None else dataclasses.replace(blocked_params(p), N=plan["block_images"])
    # (a kernel other than 3x3: the 3x3 convolution of its blocks, on a group of images)
    C, K, P, Q = ((g.K, g.C, g.H, g.W) if plan.op == "conv2d_input" else (g.C, g.K, g.P, g.Q))
    th, tw = -(-P // m), -(-Q // m)
    if variant == "streamed":                   # one batch of every tile: few of them
        tiles = g.N * th * tw
        if m != 4 or tiles > _tuning.STREAM_MAX_TILES:
            return None
        blocking = (("tiles", (th, tw)), ("channels", layouts.STREAM_CHANNELS),
                    ("serial", tiles <= _tuning.STREAM_SERIAL_TILES))
    elif variant in ("fused", "split"):
        split = variant == "split"
        R, G = fused_blocks(1 if split else plan.threads, g.N, th, tw)
        blocking = (("tiles", (th, tw)), ("block_rows", R), ("images", G),
                    ("filter_slices", plan.threads if split else 1))
    else:
        J, TB = layouts.GEMM_BLOCK if variant == "unfused" else (1, 1)
        itemsize = dtype.itemsize
        Hp, Wp = m * th + 2, m * tw + 2
        limit = _config.get_workspace_limit()
        group = max(1, min(g.N, limit // (Hp * Wp * C * itemsize)))
        tb = max(TB, limit // ((m + 2) ** 2 * (C + K) * itemsize) // TB * TB)
        blocking = (("tiles", (th, tw)), ("images", group), ("tile_batch", tb),
                    ("gemm_block", (TB, J)), ("gemm_rows_bytes", _tuning.GEMM_ROWS_BYTES))
    if blocks is not None:
        blocking += (("kernel_blocks", blocks), ("block_images", g.N))
    return Plan(plan.op, plan.algorithm, plan.backend, variant, blocking, plan.threads,
                plan.dtype, p)


def candidates(op, p, dtype):
    """Every plan autotune times for conv ``op`` on ``p``: each registered algorithm
    (but the reference) that handles ``p``, on each backend, in each variant it may
    run."""
    dtype = np.dtype(dtype)
    out = []
    for a, b in _dispatch.pairs(op):
        if a == "reference" or not supports(a, p) or b not in _dispatch.available_backends():
            continue
        base = _make(op, p, dtype, a, b, _config.get_num_threads(), _tuning.generation,
                     _config.get_workspace_limit())
        out.append(base)
        for variant in _ALTERNATIVES.get((a, op), ()):
            alt = _forced(base, variant)
            if alt is not None and alt not in out:
                out.append(alt)
    return out


def _from_tuned(op, p, dtype, tuned, threads):
    """The plan a remembered winner [algorithm, backend, variant] names, or None when it
    no longer applies (an algorithm or backend gone, a variant that cannot run)."""
    algorithm, backend = tuned[0], tuned[1]
    variant = tuned[2] if len(tuned) > 2 else None
    if (algorithm, backend) not in _dispatch.pairs(op) or not supports(algorithm, p) \
            or backend not in _dispatch.available_backends():
        return None
    base = _make(op, p, dtype, algorithm, backend, threads, _tuning.generation,
                 _config.get_workspace_limit())
    return base if variant is None else _forced(base, variant)


def _operands(op, p, dtype):
    """Random operands for timing ``op`` on geometry ``p`` (never the user's arrays)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(p.input_shape).astype(dtype)
    w = rng.standard_normal(p.weight_shape).astype(dtype)
    dy = rng.standard_normal(p.output_shape).astype(dtype)
    if op == "conv2d":
        return x, w, np.empty(p.output_shape, dtype)
    if op == "conv2d_input":
        return dy, w, np.empty(p.input_shape, dtype)
    return x, dy, np.empty(p.weight_shape, dtype)


def tune(op, p, dtype, rounds=3):
    """Time every candidate plan (:func:`candidates`) of conv ``op`` on geometry ``p``,
    interleaved; remember the fastest in memory and on disk; return its plan."""
    from .bench import interleaved
    if op not in CONV_OPS:
        raise ValueError(f"autotune: only {', '.join(CONV_OPS)} are tuned, got {op!r}")
    a, b, out = _operands(op, p, dtype)
    plans = candidates(op, p, dtype)
    times = interleaved({i: (lambda pl=pl: run(pl, a, b, p, out)) for i, pl in enumerate(plans)},
                        rounds=rounds, warmup=1)
    best = plans[min(times, key=lambda k: np.median(times[k]))]
    _load_tuned()[_key(op, p, dtype)] = [best.algorithm, best.backend, best.variant]
    _save_tuned()
    return [best.algorithm, best.backend, best.variant]


def autotune(enable=True):
    """Switch autotuning on or off for ``algorithm="auto"`` (off by default).

    When on, the first conv2d, conv2d_input or conv2d_weight call of each geometry,
    dtype and thread count times every candidate plan (algorithms, backends and their
    variants) on random data (like cuDNN's benchmark mode) and every later ``auto`` call
    runs the fastest. Winners persist in ``autotune.json`` beside the JIT cache, keyed
    also by CPU, and are used even when tuning is off; an explicit ``algorithm=`` always
    wins.
    """
    global _autotune_enabled
    _autotune_enabled = bool(enable)


__all__ = ["Plan", "plan", "make", "run", "trace", "autotune", "tune", "candidates",
           "supports", "SUPPORTS", "CONV_OPS", "ConvParams"]
