"""im2col + GEMM convolution: Numba gathers patches, BLAS (NumPy's matmul) multiplies.

The batch is processed in tiles so the workspace (patch matrix + GEMM result) stays
under ``fastconv._config.get_workspace_limit()``: several whole images per tile, or,
when one image alone is too big, bands of its output rows. BLAS is called outside
any Numba parallel region, so BLAS threads and Numba threads never multiply.

Patch matrix layout, for a tile of ``nt`` images and output rows ``[p0, p0 + pr)``::

    col[(c*R + r)*S + s, (t*pr + i)*Q + q] = x[n0 + t, c, (p0 + i)*sh - pt + r*dh,
                                              q*sw - pl + s*dw]   (0 outside the input)

Rows ordered (c, r, s) make each group's rows one contiguous block, so all groups are
one batched matmul ``(G, K/G, C/G*R*S) @ (G, C/G*R*S, cols)``.
"""
import numpy as np
from numba import prange

from ..._config import get_workspace_limit, jit, workspace
from ._ranges import valid_range


@jit(parallel=True)
def _im2col(x, col, n0, nt, p0, pr, C, H, W, R, S, sh, sw, pt, pl, dh, dw, Q):
    for row in prange(C * R * S):
        c, r, s = row // (R * S), (row // S) % R, row % S
        off = s * dw - pl                      # input column = q*sw + off
        q_lo, q_hi = valid_range(Q, W, sw, off)
        for t in range(nt):
            for i in range(pr):
                h = (p0 + i) * sh - pt + r * dh
                base = (t * pr + i) * Q
                if h < 0 or h >= H:
                    col[row, base:base + Q] = 0
                    continue
                col[row, base:base + q_lo] = 0
                for q in range(q_lo, q_hi):
                    col[row, base + q] = x[n0 + t, c, h, q * sw + off]
                col[row, base + q_hi:base + Q] = 0


@jit(parallel=True)
def _col2im(col, dx, n0, nt, p0, pr, C, H, W, R, S, sh, sw, pt, pl, dh, dw, Q):
    # one (image, channel) plane per iteration: no two iterations write the same plane
    for tc in prange(nt * C):
        t, c = tc // C, tc % C
        for r in range(R):
            for s in range(S):
                row = (c * R + r) * S + s
                off = s * dw - pl
                q_lo, q_hi = valid_range(Q, W, sw, off)
                for i in range(pr):
                    h = (p0 + i) * sh - pt + r * dh
                    if h < 0 or h >= H:
                        continue
                    base = (t * pr + i) * Q
                    for q in range(q_lo, q_hi):
                        dx[n0 + t, c, h, q * sw + off] += col[row, base + q]


def _tiles(p, itemsize):
    """(n0, nt, p0, pr) tiles whose workspace, (C*R*S + K) values per output column,
    fits the bound: whole images when one fits, else bands of output rows."""
    per_column = (p.C * p.R * p.S + p.K) * itemsize
    budget = get_workspace_limit()
    per_image = per_column * p.P * p.Q
    if per_image <= budget:
        nt = max(1, min(p.N, budget // per_image))
        for n0 in range(0, p.N, nt):
            yield n0, min(nt, p.N - n0), 0, p.P
    else:
        pr = max(1, budget // (per_column * p.Q))
        for n0 in range(p.N):
            for p0 in range(0, p.P, pr):
                yield n0, 1, p0, min(pr, p.P - p0)


def _is_pointwise(p):
    """1x1 kernel, stride 1, no padding: the input planes already are the patch matrix."""
    return (p.R == p.S == p.stride_h == p.stride_w == 1
            and p.pad_top == p.pad_bottom == p.pad_left == p.pad_right == 0)


def _geometry_args(p):
    return (p.C, p.H, p.W, p.R, p.S, p.stride_h, p.stride_w, p.pad_top, p.pad_left,
            p.dil_h, p.dil_w, p.Q)


def _buffers(p, dtype):
    """Flat buffers for the largest tile's patch matrix and GEMM result (reused)."""
    n0, nt, p0, pr = next(_tiles(p, np.dtype(dtype).itemsize))
    cols = nt * pr * p.Q
    return (workspace("im2col.col", p.C * p.R * p.S * cols, dtype),
            workspace("im2col.res", p.K * cols, dtype))


def _patches(x, p, colbuf):
    """For each tile, ``(n0, nt, p0, pr, col)`` with ``col`` its (G, C/G*R*S, cols)
    patch matrix, gathered into ``colbuf``."""
    G, CgRS = p.groups, (p.C // p.groups) * p.R * p.S
    for n0, nt, p0, pr in _tiles(p, x.itemsize):
        cols = nt * pr * p.Q
        col = colbuf[:p.C * p.R * p.S * cols].reshape(G, CgRS, cols)
        _im2col(x, col.reshape(-1, cols), n0, nt, p0, pr, *_geometry_args(p))
        yield n0, nt, p0, pr, col


def conv2d(x, w, p, out):
    """Forward convolution into ``out`` (N, K, P, Q)."""
    G, Kg, CgRS = p.groups, p.K // p.groups, (p.C // p.groups) * p.R * p.S
    wmat = w.reshape(G, Kg, CgRS)
    if _is_pointwise(p):
        np.matmul(wmat, x.reshape(p.N, G, CgRS, p.H * p.W), out=out.reshape(p.N, G, Kg, p.P * p.Q))
        return
    colbuf, resbuf = _buffers(p, x.dtype)
    for n0, nt, p0, pr, col in _patches(x, p, colbuf):
        cols = col.shape[2]
        if nt == 1 and pr == p.P:                       # one whole image: GEMM writes NCHW
            np.matmul(wmat, col, out=out[n0].reshape(G, Kg, cols))
        else:
            res = np.matmul(wmat, col, out=resbuf[:p.K * cols].reshape(G, Kg, cols))
            out[n0:n0 + nt, :, p0:p0 + pr] = res.reshape(p.K, nt, pr, p.Q).transpose(1, 0, 2, 3)


def conv2d_input(dy, w, p, out):
    """Gradient with respect to the input, into ``out`` (N, C, H, W): GEMM then col2im."""
    G, Kg, CgRS = p.groups, p.K // p.groups, (p.C // p.groups) * p.R * p.S
    wT = w.reshape(G, Kg, CgRS).transpose(0, 2, 1)
    if _is_pointwise(p):
        np.matmul(wT, dy.reshape(p.N, G, Kg, p.P * p.Q), out=out.reshape(p.N, G, CgRS, p.H * p.W))
        return
    out[...] = 0
    colbuf, resbuf = _buffers(p, dy.dtype)
    for n0, nt, p0, pr in _tiles(p, dy.itemsize):
        cols = nt * pr * p.Q
        dyt = resbuf[:p.K * cols].reshape(p.K, nt, pr, p.Q)
        dyt[...] = dy[n0:n0 + nt, :, p0:p0 + pr].transpose(1, 0, 2, 3)
        col = np.matmul(wT, dyt.reshape(G, Kg, cols),
                        out=colbuf[:p.C * p.R * p.S * cols].reshape(G, CgRS, cols))
        _col2im(col.reshape(-1, cols), out, n0, nt, p0, pr, *_geometry_args(p))


def conv2d_weight(x, dy, p, out):
    """Gradient with respect to the weight, into ``out`` (K, C/groups, R, S)."""
    G, Kg, CgRS = p.groups, p.K // p.groups, (p.C // p.groups) * p.R * p.S
    acc = np.zeros((G, Kg, CgRS), x.dtype)
    if _is_pointwise(p):
        for n in range(p.N):
            acc += np.matmul(dy[n].reshape(G, Kg, p.P * p.Q),
                             x[n].reshape(G, CgRS, p.H * p.W).transpose(0, 2, 1))
        out[...] = acc.reshape(out.shape)
        return
    colbuf, resbuf = _buffers(p, x.dtype)
    for n0, nt, p0, pr, col in _patches(x, p, colbuf):
        cols = col.shape[2]
        dyt = resbuf[:p.K * cols].reshape(p.K, nt, pr, p.Q)
        dyt[...] = dy[n0:n0 + nt, :, p0:p0 + pr].transpose(1, 0, 2, 3)
        acc += np.matmul(dyt.reshape(G, Kg, cols), col.transpose(0, 2, 1))
    out[...] = acc.reshape(out.shape)
