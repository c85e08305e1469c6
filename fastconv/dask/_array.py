"""Convolution and pooling over Dask arrays: each output block is one call of the
public fastconv function on exactly the input that block reads.

How an image axis (H or W) is split
-----------------------------------
Output row ``p`` reads input rows ``[p*s - pad, p*s - pad + e)``, with ``e = dil*(k-1) + 1``
the kernel's extent; rows outside ``[0, H)`` are padding (the geometry of
``fastconv._geometry``, validated there for the whole array).

1. *Output chunks from input chunks, aligned to the stride.* An input chunk boundary
   ``b`` becomes the output boundary ``ceil(b / s)``: the first output whose nominal
   start ``p*s`` lies at or past ``b`` (clamped to ``[0, P]``; boundaries that coincide
   merge, so an input chunk smaller than the stride joins its neighbour). A 'same'
   convolution keeps the input's chunks; a stride-2 layer halves them.
2. *Halo.* Output chunk ``[p0, p1)`` reads input ``[p0*s - pad, (p1-1)*s - pad + e)``:
   the rows of its own input chunk and a halo on either side, from as many chunks as
   it takes (a chunk smaller than the halo is simply read whole). The part inside
   ``[0, H)`` is gathered by slicing (one slice per output chunk, concatenated and
   rechunked), so block ``i`` of the gathered array is exactly what output block ``i``
   reads; neighbouring blocks overlap by the halo.
3. *Border.* A block gets what lies outside ``[0, H)`` as padding: a convolution
   block passes its own (top, bottom, left, right) padding to the kernel; a pooling
   block pads itself, with zeros (``-inf`` for max pooling), and calls fastconv with
   ``padding=0``: it computes exactly the windows of the in-memory call. Average
   pooling divides window sums by PyTorch's divisor for each window's place in the
   whole image (the padding a block adds is no padding to the kernel).

An image in one chunk along both H and W skips all this: its blocks are the in-memory
call with the caller's own arguments, on a part of the batch (and of the channels).

One plan for the whole array (convolution)
-------------------------------------------
``conv2d`` plans the call once, for the whole array (:func:`plan`), and every block
runs that plan's algorithm with arithmetic per output pixel that does not depend on
the block's size or place, so the result is the in-memory one bit for bit:

- ``direct`` sums each output over (c, r, s) in one fixed order whatever the block's
  shape (its variants differ in register blocking, not in the order), so its blocks
  may be cut anywhere;
- Winograd's fused path (``fused``, ``split``) multiplies a block of ``block_rows``
  tile rows of one image, all ``tw`` tiles of a row, by one BLAS GEMM (when its plan
  has ``images`` 1; with several images per GEMM it is treated as im2col is): a block is
  given the whole array's ``block_rows`` and filter slices, every row of tiles (W in
  one chunk), and H boundaries on multiples of ``m * block_rows`` outputs, so its
  GEMMs are the in-memory ones, operand for operand;
- im2col's GEMM and Winograd's unfused and streamed paths batch many pixels or tiles
  into one BLAS call whose rounding depends on the batch (OpenBLAS's kernels are not
  bitwise stable under a change of the matrix sizes), so ``algorithm="auto"`` runs
  ``direct`` instead when the in-memory plan would be one of those, and also instead
  of Winograd when the input is chunked along W (its blocks would be bands of whole
  rows); forced (``algorithm="im2col"``), they run in the blocks, within tolerance.

Channels: a convolution needs all the channels of a group in one block to sum them in
the in-memory order, so the channel chunks are rechunked to one chunk
(``groups=1``) or to whole groups (boundaries rounded to a multiple of C/groups; each
block convolves its groups alone). With ``split_channels=True`` (``groups=1``) each
channel chunk gives a partial convolution instead (all K outputs from its slice of
the weight), summed in a binary tree: bounded memory for a large C, within tolerance.
"""
import dataclasses

import dask
import dask.array as da
import numpy as np

import fastconv

from .. import _config, _plan
from .._geometry import (adaptive_output_size, avg_pool_args, check_dtype, conv_params, flag,
                         pool_params)
from ..functional import _check_bias

__all__ = ["conv2d", "plan", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d"]


# -- input checks ----------------------------------------------------------------------


def _input(op, x, name):
    """``(4-D dask array, whether the caller passed 3-D)``: refuse what is not a Dask
    array, or whose chunk sizes are unknown."""
    if not isinstance(x, da.Array):
        raise TypeError(
            f"{op}: input must be a dask.array.Array, got {type(x).__name__}; for an "
            f"in-memory array call fastconv.{name}, or wrap it with "
            f"dask.array.from_array(x, chunks=...)")
    if x.ndim not in (3, 4):
        raise ValueError(f"{op}: expected input of shape (N, C, H, W) or (C, H, W), got "
                         f"shape {x.shape}")
    unknown = [axis for axis, chunks in enumerate(x.chunks) if any(np.isnan(chunks))]
    if unknown:
        raise ValueError(
            f"{op}: input of shape {x.shape} has unknown chunk sizes along axis "
            f"{', '.join(map(str, unknown))}; the halo of each block is computed from the "
            f"chunk sizes: call x.compute_chunk_sizes() first")
    return (x[None], True) if x.ndim == 3 else (x, False)


def _meta(dtype):
    return np.empty((0, 0, 0, 0), dtype)


def _zeros(x, shape, dtype, unbatched):
    """The empty result of an empty input (N = 0, or a convolution's C = 0)."""
    y = da.zeros(shape, dtype=dtype, chunks=(x.chunks[0],) + tuple((n,) for n in shape[1:]))
    return y[0] if unbatched else y


# -- splitting H and W -------------------------------------------------------------------


def _axis_blocks(chunks, out, stride, pad, extent, align=1):
    """Output blocks along one axis: ``[(p0, p1, lo, hi)]``, outputs ``[p0, p1)`` reading
    input ``[lo, hi)`` (beyond ``[0, size)`` where they reach into the padding).

    Output boundaries are the input chunk boundaries ``b`` mapped to ``ceil(b / stride)``
    (see the module docstring), rounded to the nearest multiple of ``align``; ``align``
    None: one block."""
    bounds = [] if align is None else np.cumsum(chunks)[:-1]
    align = align or 1
    cuts = sorted({0, out} | {min(out, (-(-int(b) // stride) + align // 2) // align * align)
                              for b in bounds})
    return [(p0, p1, p0 * stride - pad, (p1 - 1) * stride - pad + extent)
            for p0, p1 in zip(cuts, cuts[1:])]


def _inside(lo, hi, size):
    """The part of ``[lo, hi)`` inside ``[0, size)``, the rows of padding before and after
    it, and how many rows read to drop: ``(a, b), (before, after, drop)``. A range all in
    the padding reads one row anyway, dropped (Dask drops empty chunks)."""
    a = min(max(lo, 0), size)
    b = max(min(hi, size), a)
    before = min(max(-lo, 0), hi - lo)
    after = hi - lo - before - (b - a)
    if a == b:
        a = min(a, size - 1)
        return (a, a + 1), (before, after, 1)
    return (a, b), (before, after, 0)


def _gather(x, axis, ranges):
    """``x`` with block ``i`` along ``axis`` holding exactly input ``ranges[i]``
    (neighbouring ranges may overlap by a halo); ``x`` itself when its chunks already
    are those ranges."""
    lens = tuple(b - a for a, b in ranges)
    starts = tuple(int(s) for s in np.cumsum((0,) + x.chunks[axis])[:-1])
    if lens == x.chunks[axis] and tuple(a for a, _ in ranges) == starts:
        return x
    index = [slice(None)] * x.ndim
    pieces = []
    for a, b in ranges:
        index[axis] = slice(a, b)
        pieces.append(x[tuple(index)])
    return da.concatenate(pieces, axis=axis).rechunk({axis: lens})


class _Tiling:
    """The split of H and W for one call: the output chunks and, per block, its first
    output and the padding it adds at the image border. A few ints per block row and
    column (no arrays): it travels with every task."""

    def __init__(self, rows, cols, whole):
        self.whole = whole                 # one block along H and W: no padding here
        self.starts = (tuple(p0 for p0, _, _, _ in rows), tuple(q0 for q0, _, _, _ in cols))
        self.out_chunks = (tuple(p1 - p0 for p0, p1, _, _ in rows),
                           tuple(q1 - q0 for q0, q1, _, _ in cols))
        self.pads = None

    def window(self, block, i, j, fill):
        """Block ``(i, j)`` of the gathered input with its border padding added."""
        (t, b, dt), (left, r, dl) = self.pads[0][i], self.pads[1][j]
        block = block[:, :, dt:, dl:]
        if t or b or left or r:
            block = np.pad(block, ((0, 0), (0, 0), (t, b), (left, r)), constant_values=fill)
        return block

    def padding(self, i, j):
        """The padding (top, bottom, left, right) block ``(i, j)`` adds at the image
        border, or None when it reads no input row or column (a window of padding)."""
        (t, b, dt), (left, r, dl) = self.pads[0][i], self.pads[1][j]
        return None if dt or dl else (t, b, left, r)


def _split(x, rows, cols):
    """``(gathered input, tiling)``: block ``(i, j)`` of the gathered input along H and W
    holds the input rows ``rows[i]`` and columns ``cols[j]`` read, clipped to the image
    (or the whole image, when there is one block along each)."""
    H, W = x.shape[2:]
    tiling = _Tiling(rows, cols, whole=len(rows) == 1 and len(cols) == 1)
    if tiling.whole:
        return _gather(_gather(x, 2, [(0, H)]), 3, [(0, W)]), tiling
    inner_r, pads_r = zip(*(_inside(lo, hi, H) for _, _, lo, hi in rows))
    inner_c, pads_c = zip(*(_inside(lo, hi, W) for _, _, lo, hi in cols))
    tiling.pads = (pads_r, pads_c)
    return _gather(_gather(x, 2, inner_r), 3, inner_c), tiling


def _location(block_info):
    """(channel range of the input block, its block index along H, along W)."""
    info = block_info[0]
    _, _, i, j = info["chunk-location"]
    return info["array-location"][1], i, j


# -- convolution -------------------------------------------------------------------------


def _group_chunks(chunks, size):
    """Channel chunks with boundaries rounded to a multiple of ``size`` (C/groups)."""
    bounds = np.cumsum(chunks)[:-1]
    total = int(np.sum(chunks))
    cuts = sorted({0, total} | {int(round(b / size)) * size for b in bounds})
    return tuple(b - a for a, b in zip(cuts, cuts[1:]))


#: Winograd's tile size m, per algorithm
_TILE = {"winograd_f2": 2, "winograd_f4": 4}


def _exact(plan):
    """Whether blocks can run ``plan`` with the whole array's arithmetic per output
    pixel (see the module docstring): Numba's direct, and Winograd's fused paths whose
    GEMMs hold the tiles of one image, on 3x3 kernels (a larger kernel's 3x3 blocks,
    zero-padded, multiply input past the kernel by transformed zeros, which cancel
    only up to rounding: zeros past a block's edge and data give other bits)."""
    return plan.backend == "numba" and (
        plan.algorithm == "direct"
        or (plan.algorithm in _TILE and plan.variant in ("fused", "split")
            and plan["images"] == 1 and plan.get("kernel_blocks") is None))


def _whole_plan(p, dtype, algorithm, backend, w_chunks):
    """The plan every block follows: the in-memory call's, or for ``auto``, where the
    in-memory plan cannot be split exactly or is Winograd's and the input is chunked
    along W (its blocks would be whole rows, larger than the input's chunks), direct's."""
    if backend == "auto":
        # exactness is the Numba kernels' (module docstring): their plans where they exist
        try:
            return _whole_plan(p, dtype, algorithm, "numba", w_chunks)
        except ValueError:
            pass
    whole = _plan.make("conv2d", p, dtype, algorithm, backend)
    if algorithm == "auto" and (not _exact(whole) or (whole.algorithm in _TILE
                                                      and len(w_chunks) > 1)):
        try:
            direct = _plan.make("conv2d", p, dtype, "direct", backend)
        except ValueError:                   # backend="numpy": the reference only
            return whole
        if _exact(direct):
            return direct
    return whole


def _bands(h_chunks, w_chunks, align):
    """Chunks along H for bands of whole rows about as large as the input's largest
    chunk (at least ``align`` rows), when W is gathered into one chunk."""
    W = int(np.sum(w_chunks))
    rows = max(align, max(h_chunks) * max(w_chunks) // W)
    H = int(np.sum(h_chunks))
    return (rows,) * (H // rows) + ((H % rows,) if H % rows else ())


def _run_like(plan, x, w, bias, groups, stride, padding, dilation):
    """``fastconv.conv2d`` of a block, by the whole array's ``plan`` (an exact one), with
    ``padding`` as fastconv takes it or (top, bottom, left, right):
    direct's own plan for the block (its order per pixel is the same in every variant),
    or Winograd's with the whole array's blocking but the block's tile count."""
    x = np.ascontiguousarray(x)
    op = "fastconv.dask.conv2d"
    if isinstance(padding, tuple) and len(padding) == 4:
        # a block at the image border: its own padding, on any side (the kernels pad
        # while laying out the input, so the block is not copied to pad it)
        t, b, left, r = padding
        padded = x.shape[:2] + (x.shape[2] + t + b, x.shape[3] + left + r)
        pb = dataclasses.replace(conv_params(op, padded, w.shape, stride, 0, dilation, groups),
                                 H=x.shape[2], W=x.shape[3], pad_top=t, pad_bottom=b,
                                 pad_left=left, pad_right=r)
    else:
        pb = conv_params(op, x.shape, w.shape, stride, padding, dilation, groups)
    if plan.algorithm == "direct":
        run = _plan.make("conv2d", pb, x.dtype, "direct", plan.backend)
    else:
        m = _TILE[plan.algorithm]
        blocking = tuple((k, (-(-pb.P // m), -(-pb.Q // m)) if k == "tiles" else v)
                         for k, v in plan.blocking)
        run = dataclasses.replace(plan, blocking=blocking, geometry=pb,
                                  threads=_config.get_num_threads())
    out = np.empty(pb.output_shape, x.dtype)
    _plan.run(run, x, w, pb, out)
    if bias is not None:
        out += bias.reshape(1, -1, 1, 1)
    return out


def _conv_block(xb, params, *, tiling, partial, groups, plan, exact, geometry,
                block_info=None):
    """One output block: the convolution of input block ``xb`` with its channels'
    weight (a partial sum over a channel slice when ``partial``, else its groups), by
    the whole array's ``plan`` (its algorithm and backend only, unless ``exact``)."""
    w, bias = params
    (c0, c1), i, j = _location(block_info)
    if partial:
        wb, bb, g = w[:, c0:c1], None, 1
    else:
        Cg, Kg = w.shape[1], w.shape[0] // groups
        g0, g1 = c0 // Cg, c1 // Cg
        wb, g = w[g0 * Kg:g1 * Kg], g1 - g0
        bb = None if bias is None else bias[g0 * Kg:g1 * Kg]
    stride, padding, dilation = geometry
    if exact and not tiling.whole and tiling.padding(i, j) is not None:
        return _run_like(plan, xb, wb, bb, g, stride, tiling.padding(i, j), dilation)
    if not tiling.whole:
        xb, padding = tiling.window(xb, i, j, 0), 0
    if exact:
        return _run_like(plan, xb, wb, bb, g, stride, padding, dilation)
    return fastconv.conv2d(xb, wb, bb, stride, padding, dilation, g,
                           algorithm=plan.algorithm, backend=plan.backend)


def _tree_sum(parts):
    """Sum of the arrays, pairwise: ``((a + b) + (c + d)) + ...``."""
    while len(parts) > 1:
        parts = [parts[k] + parts[k + 1] if k + 1 < len(parts) else parts[k]
                 for k in range(0, len(parts), 2)]
    return parts[0]


def _conv_setup(op, input, weight, bias, stride, padding, dilation, groups, algorithm,
                backend, split_channels):
    """Validated ``(x, unbatched, w, bias, dtype, p, plan)`` of a conv2d call."""
    x, unbatched = _input(op, input, "conv2d")
    w = np.ascontiguousarray(weight)
    dtype = check_dtype(op, input=np.empty(0, x.dtype), weight=w, bias=bias)
    p = conv_params(op, x.shape, w.shape, stride, padding, dilation, groups)
    bias = _check_bias(op, bias, p.K, dtype)
    if flag(split_channels, "split_channels", op) and p.groups > 1:
        raise ValueError(
            f"{op}: split_channels=True sums partial convolutions over channel chunks, "
            f"which needs groups=1, got groups={p.groups}; the channel chunks of a grouped "
            f"convolution are rechunked to whole groups of {p.C // p.groups} channels "
            f"(leave split_channels=False)")
    plan = None if p.empty else _whole_plan(p, dtype, algorithm, backend, x.chunks[3])
    return x, unbatched, w, bias, dtype, p, plan


def plan(input, weight, stride=1, padding=0, dilation=1, groups=1, *, algorithm="auto",
         backend="auto"):
    """The plan every block of :func:`conv2d` with these arguments follows, planned once
    for the whole array (a :class:`fastconv.Plan`; None for an empty result).

    It is the plan of the in-memory ``fastconv.conv2d`` call on the whole array, except
    with ``algorithm="auto"`` where that plan's arithmetic depends on the block
    (im2col's GEMM, Winograd's unfused and streamed paths) or where it is Winograd's
    and ``input`` is chunked along W (Winograd's blocks are bands of whole rows): then
    it is ``direct``'s. It depends on the input's chunks along W only.
    ``fastconv.conv2d(x, weight, ..., algorithm=plan.algorithm)`` is then
    ``conv2d``'s result bit for bit (see ``docs/dask.md`` for when).

    >>> import numpy as np, dask.array as da, fastconv.dask as fd
    >>> x = da.ones((1, 3, 64, 64), chunks=(1, 3, 16, 16), dtype=np.float64)
    >>> fd.plan(x, np.ones((8, 3, 3, 3)), padding=1).algorithm
    'direct'
    """
    return _conv_setup("fastconv.dask.plan", input, weight, None, stride, padding, dilation,
                       groups, algorithm, backend, False)[-1]


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
           algorithm="auto", backend="auto", split_channels=False):
    """2-D convolution of a Dask array, as :func:`fastconv.conv2d`, lazily and by blocks.

    Parameters
    ----------
    input : dask.array.Array, shape (N, C, H, W) or (C, H, W)
        Any chunking along any axis, uneven chunks included; chunk sizes must be known.
    weight : ndarray, shape (K, C/groups, R, S)
        Held in memory; it enters the task graph once, as one key every block reads.
    bias : ndarray, shape (K,), optional
    stride, padding, dilation, groups, algorithm, backend
        As in :func:`fastconv.conv2d` (validated there, for the whole array).
    split_channels : bool
        False (default): the channel chunks are rechunked to one chunk (``groups=1``)
        or to whole groups, so each output sums its channels in the in-memory order.
        True (``groups=1`` only): each channel chunk gives a partial convolution and
        the partials are summed in a binary tree; memory bounded by the channel chunk,
        result within float tolerance, not bit for bit.

    Returns
    -------
    dask.array.Array, shape (N, K, P, Q) (or (K, P, Q)), the input's dtype
        Chunks: the input's along N; along K one chunk, or with groups one per block
        of whole groups; along P and Q the input's chunk boundaries divided by the
        stride (rounded up), so a 'same' convolution keeps the input's chunks. When the
        plan is Winograd's: one chunk along Q, and boundaries along P on multiples of
        ``m * block_rows`` (for an input chunked along W, bands of whole rows of about
        the bytes of its largest chunk).

    Shape
    -----
    ``P = floor((H + 2*pad_h - dil_h*(R-1) - 1) / stride_h) + 1``, likewise Q.

    Notes
    -----
    The call is planned once for the whole array (:func:`plan`), and every block runs
    that plan. Each output block reads its own input rows and columns plus the halo the
    kernel needs, however many input chunks that spans; blocks at the image border pad
    themselves with zeros. With ``algorithm="auto"`` (or ``"direct"``, or a Winograd
    algorithm whose whole-array plan is its fused path) the result is
    ``fastconv.conv2d(x, weight, ..., algorithm=plan(...).algorithm)`` bit for bit, for
    any chunking; that is the plain in-memory ``fastconv.conv2d`` call whenever its own
    plan is direct's or Winograd's fused path. A forced im2col (or Winograd's unfused
    path) and ``split_channels=True`` are within float tolerance. See ``docs/dask.md``.

    Examples
    --------
    >>> import numpy as np, dask.array as da, fastconv.dask as fd
    >>> x = da.ones((4, 2, 16, 16), chunks=(2, 2, 8, 8), dtype=np.float32)
    >>> y = fd.conv2d(x, np.ones((3, 2, 3, 3), np.float32), padding=1)
    >>> y.chunks
    ((2, 2), (3,), (8, 8), (8, 8))
    >>> float(y[0, 0, 0, 0].compute()), float(y[0, 0, 5, 5].compute())
    (8.0, 18.0)
    """
    op = "fastconv.dask.conv2d"
    x, unbatched, w, bias, dtype, p, whole = _conv_setup(
        op, input, weight, bias, stride, padding, dilation, groups, algorithm, backend,
        split_channels)
    if p.empty:
        return _zeros(x, p.output_shape, dtype, unbatched)
    exact = _exact(whole)
    align_h, align_w, h_chunks = 1, 1, x.chunks[2]
    if exact and whole.algorithm in _TILE:
        # the fused path's GEMMs: whole rows of tiles, blocks of block_rows tile rows
        align_h, align_w = _TILE[whole.algorithm] * whole["block_rows"], None
        if len(x.chunks[3]) > 1:
            h_chunks = _bands(x.chunks[2], x.chunks[3], align_h)
    rows = _axis_blocks(h_chunks, p.P, p.stride_h, p.pad_top, p.dil_h * (p.R - 1) + 1,
                        align_h)
    cols = _axis_blocks(x.chunks[3], p.Q, p.stride_w, p.pad_left, p.dil_w * (p.S - 1) + 1,
                        align_w)
    xg, tiling = _split(x, rows, cols)
    partial = bool(split_channels) and len(xg.chunks[1]) > 1
    # one key holds the weight (and the bias): Dask sends it to each worker once
    params = dask.delayed((w, None if partial else bias), traverse=False)
    if partial:
        k_chunks = (p.K,) * len(xg.chunks[1])
    else:
        xg = xg.rechunk({1: _group_chunks(xg.chunks[1], p.C // p.groups)})
        k_chunks = tuple(c // (p.C // p.groups) * (p.K // p.groups) for c in xg.chunks[1])
    y = xg.map_blocks(
        _conv_block, params, tiling=tiling, partial=partial, groups=p.groups, plan=whole,
        exact=exact and not partial, geometry=(stride, padding, dilation),
        chunks=(xg.chunks[0], k_chunks) + tiling.out_chunks, dtype=dtype, meta=_meta(dtype))
    if partial:
        y = _tree_sum([y[:, k * p.K:(k + 1) * p.K] for k in range(len(k_chunks))])
        if bias is not None:
            y = y + bias.astype(dtype, copy=False).reshape(1, -1, 1, 1)
    return y[0] if unbatched else y


# -- pooling -----------------------------------------------------------------------------


def _pool_split(x, p):
    rows = _axis_blocks(x.chunks[2], p.P, p.stride_h, p.pad_h, p.dil_h * (p.kernel_h - 1) + 1)
    cols = _axis_blocks(x.chunks[3], p.Q, p.stride_w, p.pad_w, p.dil_w * (p.kernel_w - 1) + 1)
    return _split(x, rows, cols)


def _max_block(xb, *, tiling, kwargs, block_info=None):
    if tiling.whole:
        return fastconv.max_pool2d(xb, **kwargs)
    _, i, j = _location(block_info)
    kwargs = dict(kwargs, padding=0, ceil_mode=False)
    return fastconv.max_pool2d(tiling.window(xb, i, j, -np.inf), **kwargs)


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False, *, algorithm="auto", backend="auto"):
    """2-D max pooling of a Dask array, as :func:`fastconv.max_pool2d`, by blocks.

    Parameters
    ----------
    input : dask.array.Array, shape (N, C, H, W) or (C, H, W)
        Any chunking; chunk sizes must be known.
    kernel_size, stride, padding, dilation, ceil_mode, algorithm, backend
        As in :func:`fastconv.max_pool2d`.
    return_indices : bool
        Must be False: the indices are not computed by blocks.

    Returns
    -------
    dask.array.Array, shape (N, C, P, Q) (or (C, P, Q))
        Chunks: the input's along N and C; along P and Q the input's boundaries divided
        by the stride (rounded up). Equal to the in-memory result, bit for bit.

    Shape
    -----
    ``P = floor((H + 2*pad_h - dil_h*(kernel_h-1) - 1) / stride_h) + 1`` (ceil in ceil mode).
    """
    op = "fastconv.dask.max_pool2d"
    if flag(return_indices, "return_indices", op):
        raise ValueError(f"{op}: return_indices=True is not supported on Dask arrays (the "
                         f"indices are per whole input plane); call fastconv.max_pool2d on "
                         f"the computed array instead")
    x, unbatched = _input(op, input, "max_pool2d")
    dtype = check_dtype(op, input=np.empty(0, x.dtype))
    p = pool_params(op, x.shape, kernel_size, stride, padding, dilation, ceil_mode)
    if p.empty:
        return _zeros(x, p.output_shape, dtype, unbatched)
    xg, tiling = _pool_split(x, p)
    kwargs = dict(kernel_size=(p.kernel_h, p.kernel_w), stride=(p.stride_h, p.stride_w),
                  padding=(p.pad_h, p.pad_w), dilation=(p.dil_h, p.dil_w),
                  ceil_mode=bool(ceil_mode), algorithm=algorithm, backend=backend)
    y = xg.map_blocks(_max_block, tiling=tiling, kwargs=kwargs,
                      chunks=xg.chunks[:2] + tiling.out_chunks, dtype=dtype, meta=_meta(dtype))
    return y[0] if unbatched else y


def _avg_divisors(start, stop, size, k, s, pad, count_include_pad):
    """PyTorch's divisor factor along one axis for windows ``[start, stop)``: the window
    clipped to the padded input, or to the input itself (``count_include_pad=False``).
    The divisor of window (i, j) is the product of its row and column factors."""
    lo = np.arange(start, stop) * s - pad
    hi = np.minimum(lo + k, size + pad)
    if count_include_pad:
        return hi - lo
    return np.minimum(hi, size) - np.maximum(lo, 0)


def _avg_block(xb, *, tiling, p, count_include_pad, divisor, kwargs, block_info=None):
    dtype = xb.dtype
    if tiling.whole:
        return fastconv.avg_pool2d(xb, **kwargs)
    _, i, j = _location(block_info)
    # window sums in float64 (the kernel's own accumulator: exact for float32 input),
    # then the division the kernel would do for this window of the whole image
    xb = tiling.window(xb.astype(np.float64, copy=False), i, j, 0)
    sums = fastconv.avg_pool2d(xb, (p.kernel_h, p.kernel_w), (p.stride_h, p.stride_w), 0,
                               divisor_override=1, algorithm=kwargs["algorithm"],
                               backend=kwargs["backend"])
    if divisor:
        return (sums / divisor).astype(dtype)
    p0, q0 = tiling.starts[0][i], tiling.starts[1][j]
    rows = _avg_divisors(p0, p0 + sums.shape[2], p.H, p.kernel_h, p.stride_h, p.pad_h,
                         count_include_pad)
    cols = _avg_divisors(q0, q0 + sums.shape[3], p.W, p.kernel_w, p.stride_w, p.pad_w,
                         count_include_pad)
    return (sums / np.multiply.outer(rows, cols)).astype(dtype)


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False,
               count_include_pad=True, divisor_override=None, *, algorithm="auto",
               backend="auto"):
    """2-D average pooling of a Dask array, as :func:`fastconv.avg_pool2d`, by blocks.

    Parameters
    ----------
    input : dask.array.Array, shape (N, C, H, W) or (C, H, W)
        Any chunking; chunk sizes must be known.
    kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override,
    algorithm, backend
        As in :func:`fastconv.avg_pool2d`.

    Returns
    -------
    dask.array.Array, shape (N, C, P, Q) (or (C, P, Q))
        Chunks as :func:`max_pool2d`'s.

    Shape
    -----
    ``P = floor((H + 2*pad_h - kernel_h) / stride_h) + 1`` (ceil in ceil mode).

    Notes
    -----
    A block split along H or W is pooled over its zero-padded input as window sums in
    float64 (the Numba kernel's accumulator), each divided by the divisor of that
    window in the whole image: the result is the in-memory one bit for bit, at twice
    the block's memory.
    """
    op = "fastconv.dask.avg_pool2d"
    x, unbatched = _input(op, input, "avg_pool2d")
    dtype = check_dtype(op, input=np.empty(0, x.dtype))
    p = pool_params(op, x.shape, kernel_size, stride, padding, 1, ceil_mode)
    cip, div = avg_pool_args(op, count_include_pad, divisor_override)
    if p.empty:
        return _zeros(x, p.output_shape, dtype, unbatched)
    xg, tiling = _pool_split(x, p)
    kwargs = dict(kernel_size=(p.kernel_h, p.kernel_w), stride=(p.stride_h, p.stride_w),
                  padding=(p.pad_h, p.pad_w), ceil_mode=bool(ceil_mode),
                  count_include_pad=cip, divisor_override=div or None,
                  algorithm=algorithm, backend=backend)
    y = xg.map_blocks(_avg_block, tiling=tiling, p=p, count_include_pad=cip, divisor=div,
                      kwargs=kwargs, chunks=xg.chunks[:2] + tiling.out_chunks, dtype=dtype,
                      meta=_meta(dtype))
    return y[0] if unbatched else y


def adaptive_avg_pool2d(input, output_size, *, algorithm="auto", backend="auto"):
    """Adaptive average pooling of a Dask array, as :func:`fastconv.adaptive_avg_pool2d`.

    Parameters
    ----------
    input : dask.array.Array, shape (N, C, H, W) or (C, H, W)
    output_size : int or (int or None, int or None)
    algorithm, backend : as in :func:`fastconv.adaptive_avg_pool2d`.

    Returns
    -------
    dask.array.Array, shape (N, C, P, Q) (or (C, P, Q))
        Chunked as the input along N and C, one chunk along P and Q.

    Notes
    -----
    The windows depend on the whole extent (row ``i`` averages input rows
    ``floor(i*H/P)`` to ``ceil((i+1)*H/P) - 1``), so the input is rechunked to one chunk
    along H and W first: a block is then whole planes, as many images and channels as
    the input's chunks along N and C hold (chunk those to bound the memory). Equal to
    the in-memory result bit for bit.
    """
    op = "fastconv.dask.adaptive_avg_pool2d"
    x, unbatched = _input(op, input, "adaptive_avg_pool2d")
    dtype = check_dtype(op, input=np.empty(0, x.dtype))
    P, Q = adaptive_output_size(op, x.shape, output_size)
    if min(x.shape[:2] + (P, Q)) == 0:
        return _zeros(x, x.shape[:2] + (P, Q), dtype, unbatched)
    x = x.rechunk({2: -1, 3: -1})
    y = x.map_blocks(fastconv.adaptive_avg_pool2d, (P, Q), algorithm=algorithm,
                     backend=backend, chunks=x.chunks[:2] + ((P,), (Q,)), dtype=dtype,
                     meta=_meta(dtype))
    return y[0] if unbatched else y
