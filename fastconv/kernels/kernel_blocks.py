"""Winograd for kernels other than 3x3, as 3x3 blocks (both backends).

An R x S kernel zero-padded to a multiple of 3 is ``br x bs`` blocks of 3x3
(``_geometry.kernel_blocks``: 2 x 2 for 5x5). The stride-1 convolution is the sum of
the blocks' 3x3 convolutions, block (i, j) over the input shifted by (3i, 3j); so it is
one 3x3 convolution of the blocks stacked along the input channels
(``_geometry.blocked_params``), which the backend's 3x3 Winograd kernel runs:

- forward: the input stacked (:func:`stack_input`, ``br*bs`` shifted copies) with the
  weight's blocks (:func:`stack_weight`, kept with the weight), the epilogue as it is;
- input gradient: the stacked input's gradient, each block's part added back at its
  shift (:func:`fold_input`, the adjoint of stacking);
- weight gradient: the blocks' gradients, put back in place (:func:`unstack_weight`).

F(4x4,3x3) then does 36/16 multiply-adds per output and block, 9 for a 5x5 kernel in
place of 25. The forward and the input gradient run on groups of the plan's
``block_images`` images, whose stacked input (its gradient) stays in cache between the
stacking, the 3x3 kernel and the folding. A backend's Winograd kernels take
:func:`larger_kernels` as decorator.
"""
import functools

import numpy as np

from .. import _config
from .._geometry import blocked_params, kernel_blocks
from .epilogue import none
from .weight_cache import CACHE, PreparedWeight

# the copies on OpenMP's threads where the Cython backend is built, else NumPy's (whose
# serial copies took 0.37 ms to stack and 0.53 to fold a 32-channel 28 x 28 batch of 8;
# on threads, that 5x5 layer ran 1.08-1.26x faster, its weight gradient on 2 threads
# 1.9x: AMD EPYC Zen 4, session 40)
try:
    from .cython import layout as _layout
except ImportError:
    _layout = None


def _placements(p):
    """(b, stacked, inside) of each block b = i*bs + j: the rows and columns (two
    slices) of the stacked input that read the input, and those of the input they
    read (``inside``), shifted by (3i, 3j) from the padded origin."""
    q = blocked_params(p)
    br, bs = kernel_blocks(p)

    def span(shift, pad, size, stacked):
        # stacked rows u in [lo, hi) read input row u + shift - pad, 0 <= it < size
        lo = min(max(0, pad - shift), stacked)
        hi = max(lo, min(stacked, size + pad - shift))
        return slice(lo, hi), slice(lo + shift - pad, hi + shift - pad)

    placed = []
    for i in range(br):
        rows, x_rows = span(3 * i, p.pad_top, p.H, q.H)
        for j in range(bs):
            cols, x_cols = span(3 * j, p.pad_left, p.W, q.W)
            placed.append((i * bs + j, (rows, cols), (x_rows, x_cols)))
    return placed


@functools.lru_cache(maxsize=256)
def _place_table(p):
    """:func:`_placements` as the Cython copies' table: per block (r0, r1, c0, c1, dr,
    dc), its stacked rows [r0, r1) and columns [c0, c1) reading input row u + dr and
    column v + dc."""
    table = np.zeros((len(_placements(p)), 6), np.intp)
    for b, (rows, cols), (x_rows, x_cols) in _placements(p):
        table[b] = (rows.start, rows.stop, cols.start, cols.stop,
                    x_rows.start - rows.start, x_cols.start - cols.start)
    table.flags.writeable = False
    return table


def stack_input(x, p, nhwc=False):
    """The stacked input of ``blocked_params(p)`` from ``x`` (n, C, H, W), in the
    calling thread's workspace: (n, b*C, P + 2, Q + 2), or (``nhwc``, x (n, H, W, C))
    (n, P + 2, Q + 2, b*C)."""
    q = blocked_params(p)
    C, n = p.C, x.shape[0]
    shape = (n, q.H, q.W, q.C) if nhwc else (n, q.C, q.H, q.W)
    s = _config.workspace_array("kernel_blocks", shape, x.dtype)
    if _layout is not None and x.flags.c_contiguous:
        (_layout.stack_rows if nhwc else _layout.stack_planes)(
            x, s, _place_table(p), _config.get_num_threads())
        return s
    planes = x.transpose(0, 3, 1, 2) if nhwc else x     # (n, C, rows, columns) views
    for b, (rows, cols), inside in _placements(p):
        sb = (s[..., b * C:(b + 1) * C].transpose(0, 3, 1, 2) if nhwc
              else s[:, b * C:(b + 1) * C])
        sb[:, :, :rows.start] = 0                   # zeros where the shift leaves x
        sb[:, :, rows.stop:] = 0
        sb[:, :, rows, :cols.start] = 0
        sb[:, :, rows, cols.stop:] = 0
        sb[:, :, rows, cols] = planes[:, :, inside[0], inside[1]]
    return s


def fold_input(s, p, out):
    """``out`` (n, C, H, W) = the gradient of x from ``s``, the gradient of its stacked
    input (n, b*C, P + 2, Q + 2): each block's part added at its shift."""
    if _layout is not None and s.flags.c_contiguous and out.flags.c_contiguous:
        _layout.fold_planes(s, out, _place_table(p), _config.get_num_threads())
        return
    C = p.C
    out[...] = 0
    for b, (rows, cols), inside in _placements(p):
        out[:, :, inside[0], inside[1]] += s[:, b * C:(b + 1) * C, rows, cols]


def stack_weight(w):
    """The weight's blocks stacked (K, b*C, 3, 3), block b = i*bs + j being rows 3i..
    and columns 3j.. of the zero-padded kernel; made once per weight and kept with it
    (``weight_cache``) as a prepared weight, so that the filter transforms made from it
    are kept too."""
    def build():
        K, C, R, S = w.shape
        br, bs = -(-R // 3), -(-S // 3)
        padded = np.zeros((K, C, 3 * br, 3 * bs), w.dtype)
        padded[:, :, :R, :S] = w
        # (K, C, i, r, j, s) -> (K, i, j, C, r, s)
        blocks = padded.reshape(K, C, br, 3, bs, 3).transpose(0, 2, 4, 1, 3, 5)
        return PreparedWeight(blocks.reshape(K, br * bs * C, 3, 3))
    return CACHE.get(w, ("kernel_blocks",), build).array


def unstack_weight(g, p, out):
    """``out`` (K, C, R, S) = the weight gradient from ``g``, its blocks' (K, b*C, 3, 3)."""
    br, bs = kernel_blocks(p)
    # (K, i, j, C, r, s) -> (K, C, i, r, j, s)
    full = g.reshape(p.K, br, bs, p.C, 3, 3).transpose(0, 3, 1, 4, 2, 5)
    out[...] = full.reshape(p.K, p.C, 3 * br, 3 * bs)[:, :, :p.R, :p.S]


def _groups(plan, N):
    """[n0, n1) of each group of the plan's ``block_images`` images: the kernel runs on
    one group at a time, whose stacked input (or its gradient) stays in cache."""
    g = plan["block_images"]
    return [(n0, min(N, n0 + g)) for n0 in range(0, N, g)]


def conv2d(kernel, plan, x, w, p, out, epilogue=None):
    wb, q = stack_weight(w), blocked_params(p)
    ep = none(x.dtype) if epilogue is None else epilogue
    nhwc = plan.layout == "nhwc"
    for n0, n1 in _groups(plan, p.N):
        kernel(plan, stack_input(x[n0:n1], p, nhwc), wb, q, out[n0:n1],
               ep.images(n0, n1, p.K * p.P * p.Q))


def conv2d_input(kernel, plan, dy, w, p, out):
    wb, q = stack_weight(w), blocked_params(p)
    for n0, n1 in _groups(plan, p.N):
        s = _config.workspace_array("kernel_blocks", (n1 - n0, q.C, q.H, q.W), out.dtype)
        kernel(plan, dy[n0:n1], wb, q, s)
        fold_input(s, p, out[n0:n1])


def conv2d_weight(kernel, plan, x, dy, p, out):
    """The weight gradient in one call (its sum over the images is the kernel's)."""
    q = blocked_params(p)
    g = _config.workspace_array("kernel_blocks_weight", (p.K, q.C, 3, 3), out.dtype)
    kernel(plan, stack_input(x, p), dy, q, g)
    unstack_weight(g, p, out)


_BLOCKED = {"conv2d": conv2d, "conv2d_input": conv2d_input, "conv2d_weight": conv2d_weight}


def larger_kernels(kernel):
    """Decorator of a backend's 3x3 Winograd kernel of ``conv2d``, ``conv2d_input`` or
    ``conv2d_weight`` (by its name): geometries with another kernel size run as 3x3
    blocks."""
    blocked = _BLOCKED[kernel.__name__]

    @functools.wraps(kernel)
    def run(plan, a, b, p, out, *rest):
        if p.R == 3 and p.S == 3:
            return kernel(plan, a, b, p, out, *rest)
        return blocked(kernel, plan, a, b, p, out, *rest)
    return run
