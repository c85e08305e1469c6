"""Winograd convolution F(2x2,3x3) and F(4x4,3x3) (Lavin & Gray, "Fast Algorithms for
Convolutional Neural Networks", CVPR 2016, arXiv 1509.09308).

F(m x m, 3x3) computes an m x m output tile from an alpha x alpha input tile
(alpha = m + 2) as ``Y = A^T [(G g G^T) * (B^T d B)] A``. The element-wise product
over a batch of tiles and all channels is alpha^2 independent GEMMs::

    U[xi, k, c] = (G g[k, c] G^T)[xi]            filter transform   (Numba, parallel)
    V[xi, c, t] = (B^T d[c, t] B)[xi]            input transform    (Numba, parallel)
    M[xi]       = U[xi] @ V[xi]   (K x C)(C x T)  alpha^2 GEMMs     (BLAS, np.matmul)
    y[k, t]     = A^T M[:, k, t] A               output transform   (Numba, parallel)

The matrices are those of Lavin's ``wincnn`` for the interpolation points
F(2x2,3x3): 0, 1, -1, inf and F(4x4,3x3): 0, 1, -1, 2, -2, inf (see ``BT2, G2, AT2``
and ``BT4, G4, AT4`` below; the Numba code writes their products out by hand).

Output tile ``(i, j)`` of image ``n`` covers output rows ``i*m .. i*m + m - 1`` and
reads input rows ``i*m + off_h .. i*m + off_h + alpha - 1`` with ``off_h = -pad_top``
(columns alike): reads outside the input are zeros and writes outside the output are
dropped, so partial tiles at the edges and any padding, even asymmetric, are exact.

The gradient with respect to the input of a stride-1 3x3 convolution is the same
computation on ``dy`` with the filter rotated 180 degrees, C and K swapped, and
``off_h = pad_top - 2`` (padding ``2 - pad_top``; a negative padding just crops).

Tiles are processed in batches so that ``V`` and ``M`` (alpha^2 (C + K) values per
tile) stay under ``fastconv._config.get_workspace_limit()``; the transformed filter
``U`` (alpha^2 K C values; for grad-weight ``dU``, plus a second such buffer for the
partial sums when there are several batches) comes on top of that. All are reused
across calls (``fastconv._config.workspace``). BLAS is called outside any Numba
parallel region. Accuracy: F(2x2,3x3) is about as accurate as direct
convolution; F(4x4,3x3) loses about one more decimal digit in float32 (see
``tests/test_winograd.py``).

The gradient with respect to the weight runs the transposed computation: the same
input transform ``V``, ``dM = A dy A^T`` on m x m tiles of ``dy`` (zeros past the
output's edge), alpha^2 GEMMs ``dU[xi] = dM[xi] @ V[xi]^T`` summed over tile batches,
and ``dw = G^T dU G``.
"""
import numpy as np
from numba import prange

from ..._config import get_workspace_limit, jit, workspace
from ..weight_cache import WeightCache

# -- Transform matrices (reference and documentation; the kernels inline them) -------

#: F(2x2,3x3), points 0, 1, -1, inf
BT2 = np.array([[1, 0, -1, 0],
                [0, 1, 1, 0],
                [0, -1, 1, 0],
                [0, 1, 0, -1]], np.float64)
G2 = np.array([[1, 0, 0],
               [1 / 2, 1 / 2, 1 / 2],
               [1 / 2, -1 / 2, 1 / 2],
               [0, 0, 1]], np.float64)
AT2 = np.array([[1, 1, 1, 0],
                [0, 1, -1, -1]], np.float64)

#: F(4x4,3x3), points 0, 1, -1, 2, -2, inf
BT4 = np.array([[4, 0, -5, 0, 1, 0],
                [0, -4, -4, 1, 1, 0],
                [0, 4, -4, -1, 1, 0],
                [0, -2, -1, 2, 1, 0],
                [0, 2, -1, -2, 1, 0],
                [0, 4, 0, -5, 0, 1]], np.float64)
G4 = np.array([[1 / 4, 0, 0],
               [-1 / 6, -1 / 6, -1 / 6],
               [-1 / 6, 1 / 6, -1 / 6],
               [1 / 24, 1 / 12, 1 / 6],
               [1 / 24, -1 / 12, 1 / 6],
               [0, 0, 1]], np.float64)
AT4 = np.array([[1, 1, 1, 1, 1, 0],
                [0, 1, -1, 2, -2, 0],
                [0, 1, 1, 4, 4, 0],
                [0, 1, -1, 8, -8, 1]], np.float64)

# float32 constants keep float32 arithmetic in float32 (an int literal would promote
# it to float64); all are exact in float32.
_2 = np.float32(2.0)
_4 = np.float32(4.0)
_5 = np.float32(5.0)
_8 = np.float32(8.0)

# fast-math without 'nnan'/'ninf': a NaN or Inf in the input must stay non-finite in
# the output (it spreads to the whole output tile, a superset of direct convolution's)
_FASTMATH = {"nsz", "arcp", "contract", "reassoc"}

_CHUNK = 32          # tiles per parallel work item of the input/output transforms


# -- 1-D transforms (one row or column of a tile) ------------------------------------

@jit(inline="always")
def _bt2(d0, d1, d2, d3):
    return d0 - d2, d1 + d2, d2 - d1, d1 - d3


@jit(inline="always")
def _g2(g0, g1, g2):
    h = 0.5 * (g0 + g2)                       # float64: weights are transformed in float64
    return 1.0 * g0, h + 0.5 * g1, h - 0.5 * g1, 1.0 * g2


@jit(inline="always")
def _at2(m0, m1, m2, m3):
    return m0 + m1 + m2, m1 - m2 - m3


@jit(inline="always")
def _bt4(d0, d1, d2, d3, d4, d5):
    a = d4 - _4 * d2                          # shared sub-expressions of rows 1-4
    b = d3 - _4 * d1
    c = d4 - d2
    e = _2 * (d3 - d1)
    return (_4 * d0 - _5 * d2 + d4, a + b, a - b, c + e, c - e, _4 * d1 - _5 * d3 + d5)


@jit(inline="always")
def _g4(g0, g1, g2):
    s = (g0 + g2) * (-1.0 / 6.0)
    t = (g0 * (1.0 / 24.0) + g2 * (1.0 / 6.0))
    return (g0 * 0.25, s - g1 * (1.0 / 6.0), s + g1 * (1.0 / 6.0),
            t + g1 * (1.0 / 12.0), t - g1 * (1.0 / 12.0), 1.0 * g2)


@jit(inline="always")
def _at4(m0, m1, m2, m3, m4, m5):
    a = m1 + m2
    b = m1 - m2
    c = m3 + m4
    e = m3 - m4
    return m0 + a + c, b + _2 * e, a + _4 * c, b + _8 * e + m5


@jit(inline="always")
def _bt2r(d):
    return _bt2(d[0], d[1], d[2], d[3])


@jit(inline="always")
def _bt4r(d):
    return _bt4(d[0], d[1], d[2], d[3], d[4], d[5])


# -- one input tile: load alpha rows, B^T along w, then B^T along h, store ----------

@jit(inline="always")
def _row4(x, n, c, h, w0):
    return x[n, c, h, w0], x[n, c, h, w0 + 1], x[n, c, h, w0 + 2], x[n, c, h, w0 + 3]


@jit(inline="always")
def _row6(x, n, c, h, w0):
    return (x[n, c, h, w0], x[n, c, h, w0 + 1], x[n, c, h, w0 + 2],
            x[n, c, h, w0 + 3], x[n, c, h, w0 + 4], x[n, c, h, w0 + 5])


@jit(fastmath=_FASTMATH)
def _tile_f2(x, n, c, h0, w0, V, vc, u):
    """V[:, vc, u] = B^T d B for the tile d = x[n, c, h0:h0 + 4, w0:w0 + 4]."""
    r0 = _bt2r(_row4(x, n, c, h0, w0))
    r1 = _bt2r(_row4(x, n, c, h0 + 1, w0))
    r2 = _bt2r(_row4(x, n, c, h0 + 2, w0))
    r3 = _bt2r(_row4(x, n, c, h0 + 3, w0))
    for b in range(4):
        col = _bt2(r0[b], r1[b], r2[b], r3[b])
        for a in range(4):
            V[a * 4 + b, vc, u] = col[a]


@jit(fastmath=_FASTMATH)
def _tile_f4(x, n, c, h0, w0, V, vc, u):
    """V[:, vc, u] = B^T d B for the tile d = x[n, c, h0:h0 + 6, w0:w0 + 6]."""
    r0 = _bt4r(_row6(x, n, c, h0, w0))
    r1 = _bt4r(_row6(x, n, c, h0 + 1, w0))
    r2 = _bt4r(_row6(x, n, c, h0 + 2, w0))
    r3 = _bt4r(_row6(x, n, c, h0 + 3, w0))
    r4 = _bt4r(_row6(x, n, c, h0 + 4, w0))
    r5 = _bt4r(_row6(x, n, c, h0 + 5, w0))
    for b in range(6):
        col = _bt4(r0[b], r1[b], r2[b], r3[b], r4[b], r5[b])
        for a in range(6):
            V[a * 6 + b, vc, u] = col[a]


@jit()
def _gather(x, d, n, c, h0, w0):
    """d[0, 0] = the tile of x[n, c] at (h0, w0), zeros outside x (an edge tile)."""
    H, W = x.shape[2], x.shape[3]
    for a in range(d.shape[2]):
        for b in range(d.shape[3]):
            h, w = h0 + a, w0 + b
            d[0, 0, a, b] = x[n, c, h, w] if 0 <= h < H and 0 <= w < W else 0


# -- filter transforms: U[xi, k, c] = (G w[k, c] G^T)[xi] -----------------------------

@jit(parallel=True)
def _filter_f2(w, U):
    K, C = w.shape[0], w.shape[1]
    for k in prange(K):
        for c in range(C):
            r0 = _g2(w[k, c, 0, 0], w[k, c, 0, 1], w[k, c, 0, 2])   # G along s
            r1 = _g2(w[k, c, 1, 0], w[k, c, 1, 1], w[k, c, 1, 2])
            r2 = _g2(w[k, c, 2, 0], w[k, c, 2, 1], w[k, c, 2, 2])
            for b in range(4):                                       # then G along r
                col = _g2(r0[b], r1[b], r2[b])
                for a in range(4):
                    U[a * 4 + b, k, c] = col[a]


@jit(parallel=True)
def _filter_f4(w, U):
    K, C = w.shape[0], w.shape[1]
    for k in prange(K):
        for c in range(C):
            r0 = _g4(w[k, c, 0, 0], w[k, c, 0, 1], w[k, c, 0, 2])
            r1 = _g4(w[k, c, 1, 0], w[k, c, 1, 1], w[k, c, 1, 2])
            r2 = _g4(w[k, c, 2, 0], w[k, c, 2, 1], w[k, c, 2, 2])
            for b in range(6):
                col = _g4(r0[b], r1[b], r2[b])
                for a in range(6):
                    U[a * 6 + b, k, c] = col[a]


# -- input transforms: V[xi, c, u] = (B^T d B)[xi] for tile t0 + u --------------------

@jit(parallel=True)
def _input_f2(x, V, t0, nt, th, tw, oh, ow):
    N, C, H, W = x.shape
    nchunks = (nt + _CHUNK - 1) // _CHUNK
    for job in prange(C * nchunks):
        c, u0 = job // nchunks, (job % nchunks) * _CHUNK
        d = np.empty((1, 1, 4, 4), x.dtype)                     # an edge tile, zero-padded
        for u in range(u0, min(nt, u0 + _CHUNK)):
            t = t0 + u                                           # tile t = (n*th + i)*tw + j
            n, i, j = t // (th * tw), (t // tw) % th, t % tw
            h0, w0 = i * 2 + oh, j * 2 + ow
            if h0 >= 0 and w0 >= 0 and h0 + 4 <= H and w0 + 4 <= W:
                _tile_f2(x, n, c, h0, w0, V, c, u)
            else:
                _gather(x, d, n, c, h0, w0)
                _tile_f2(d, 0, 0, 0, 0, V, c, u)


@jit(parallel=True)
def _input_f4(x, V, t0, nt, th, tw, oh, ow):
    N, C, H, W = x.shape
    nchunks = (nt + _CHUNK - 1) // _CHUNK
    for job in prange(C * nchunks):
        c, u0 = job // nchunks, (job % nchunks) * _CHUNK
        d = np.empty((1, 1, 6, 6), x.dtype)
        for u in range(u0, min(nt, u0 + _CHUNK)):
            t = t0 + u
            n, i, j = t // (th * tw), (t // tw) % th, t % tw
            h0, w0 = i * 4 + oh, j * 4 + ow
            if h0 >= 0 and w0 >= 0 and h0 + 6 <= H and w0 + 6 <= W:
                _tile_f4(x, n, c, h0, w0, V, c, u)
            else:
                _gather(x, d, n, c, h0, w0)
                _tile_f4(d, 0, 0, 0, 0, V, c, u)


# -- output transforms: y = A^T M A, cropped to the output ----------------------------

@jit(parallel=True, fastmath=_FASTMATH)
def _output_f2(M, y, t0, nt, th, tw):
    N, K, P, Q = y.shape
    nchunks = (nt + _CHUNK - 1) // _CHUNK
    for job in prange(K * nchunks):
        k, u0 = job // nchunks, (job % nchunks) * _CHUNK
        for u in range(u0, min(nt, u0 + _CHUNK)):
            t = t0 + u
            n, i, j = t // (th * tw), (t // tw) % th, t % tw
            p0, q0 = i * 2, j * 2
            c0 = _at2(M[0, k, u], M[4, k, u], M[8, k, u], M[12, k, u])    # A^T along h
            c1 = _at2(M[1, k, u], M[5, k, u], M[9, k, u], M[13, k, u])
            c2 = _at2(M[2, k, u], M[6, k, u], M[10, k, u], M[14, k, u])
            c3 = _at2(M[3, k, u], M[7, k, u], M[11, k, u], M[15, k, u])
            for a in range(min(2, P - p0)):                               # then along w
                row = _at2(c0[a], c1[a], c2[a], c3[a])
                if q0 + 2 <= Q:
                    y[n, k, p0 + a, q0] = row[0]
                    y[n, k, p0 + a, q0 + 1] = row[1]
                else:
                    y[n, k, p0 + a, q0] = row[0]


@jit(parallel=True, fastmath=_FASTMATH)
def _output_f4(M, y, t0, nt, th, tw):
    N, K, P, Q = y.shape
    nchunks = (nt + _CHUNK - 1) // _CHUNK
    for job in prange(K * nchunks):
        k, u0 = job // nchunks, (job % nchunks) * _CHUNK
        for u in range(u0, min(nt, u0 + _CHUNK)):
            t = t0 + u
            n, i, j = t // (th * tw), (t // tw) % th, t % tw
            p0, q0 = i * 4, j * 4
            c0 = _at4(M[0, k, u], M[6, k, u], M[12, k, u], M[18, k, u], M[24, k, u], M[30, k, u])
            c1 = _at4(M[1, k, u], M[7, k, u], M[13, k, u], M[19, k, u], M[25, k, u], M[31, k, u])
            c2 = _at4(M[2, k, u], M[8, k, u], M[14, k, u], M[20, k, u], M[26, k, u], M[32, k, u])
            c3 = _at4(M[3, k, u], M[9, k, u], M[15, k, u], M[21, k, u], M[27, k, u], M[33, k, u])
            c4 = _at4(M[4, k, u], M[10, k, u], M[16, k, u], M[22, k, u], M[28, k, u], M[34, k, u])
            c5 = _at4(M[5, k, u], M[11, k, u], M[17, k, u], M[23, k, u], M[29, k, u], M[35, k, u])
            for a in range(min(4, P - p0)):
                row = _at4(c0[a], c1[a], c2[a], c3[a], c4[a], c5[a])
                if q0 + 4 <= Q:
                    y[n, k, p0 + a, q0] = row[0]
                    y[n, k, p0 + a, q0 + 1] = row[1]
                    y[n, k, p0 + a, q0 + 2] = row[2]
                    y[n, k, p0 + a, q0 + 3] = row[3]
                else:
                    for b in range(Q - q0):
                        y[n, k, p0 + a, q0 + b] = row[b]


# -- grad-weight transforms (the transposes of the output and filter transforms) -----

@jit(inline="always")
def _a2(d0, d1):
    """A = AT2^T applied to (d0, d1)."""
    return d0, d0 + d1, d0 - d1, -d1


@jit(inline="always")
def _a4(d0, d1, d2, d3):
    """A = AT4^T applied to (d0, d1, d2, d3)."""
    e, o = d0 + d2, d1 + d3
    e4, o4 = d0 + _4 * d2, _2 * d1 + _8 * d3
    return d0, e + o, e - o, e4 + o4, e4 - o4, d3


@jit(inline="always")
def _gt2(v0, v1, v2, v3):
    """G2^T applied to (v0, .., v3), in float64."""
    h, d = 0.5 * (v1 + v2), 0.5 * (v1 - v2)
    return v0 + h, d, h + v3


@jit(inline="always")
def _gt4(v0, v1, v2, v3, v4, v5):
    """G4^T applied to (v0, .., v5), in float64."""
    s, d = (v1 + v2) * (1.0 / 6.0), (v2 - v1) * (1.0 / 6.0)
    s2, d2 = v3 + v4, v3 - v4
    return (v0 * 0.25 - s + s2 * (1.0 / 24.0), d + d2 * (1.0 / 12.0),
            s2 * (1.0 / 6.0) - s + v5)


@jit(fastmath=_FASTMATH)
def _dtile_f2(dy, n, k, p0, q0, dM, mk, u):
    """dM[:, mk, u] = A d A^T for the tile d = dy[n, k, p0:p0 + 2, q0:q0 + 2]."""
    r0 = _a2(dy[n, k, p0, q0], dy[n, k, p0, q0 + 1])
    r1 = _a2(dy[n, k, p0 + 1, q0], dy[n, k, p0 + 1, q0 + 1])
    for b in range(4):
        col = _a2(r0[b], r1[b])
        for a in range(4):
            dM[a * 4 + b, mk, u] = col[a]


@jit(fastmath=_FASTMATH)
def _dtile_f4(dy, n, k, p0, q0, dM, mk, u):
    """dM[:, mk, u] = A d A^T for the tile d = dy[n, k, p0:p0 + 4, q0:q0 + 4]."""
    r0 = _a4(dy[n, k, p0, q0], dy[n, k, p0, q0 + 1], dy[n, k, p0, q0 + 2], dy[n, k, p0, q0 + 3])
    r1 = _a4(dy[n, k, p0 + 1, q0], dy[n, k, p0 + 1, q0 + 1], dy[n, k, p0 + 1, q0 + 2],
             dy[n, k, p0 + 1, q0 + 3])
    r2 = _a4(dy[n, k, p0 + 2, q0], dy[n, k, p0 + 2, q0 + 1], dy[n, k, p0 + 2, q0 + 2],
             dy[n, k, p0 + 2, q0 + 3])
    r3 = _a4(dy[n, k, p0 + 3, q0], dy[n, k, p0 + 3, q0 + 1], dy[n, k, p0 + 3, q0 + 2],
             dy[n, k, p0 + 3, q0 + 3])
    for b in range(6):
        col = _a4(r0[b], r1[b], r2[b], r3[b])
        for a in range(6):
            dM[a * 6 + b, mk, u] = col[a]


@jit(parallel=True)
def _dy_f2(dy, dM, t0, nt, th, tw):
    """dM[xi, k, u] = (A d A^T)[xi] for tile t0 + u of dy (zeros past the output's edge)."""
    N, K, P, Q = dy.shape
    nchunks = (nt + _CHUNK - 1) // _CHUNK
    for job in prange(K * nchunks):
        k, u0 = job // nchunks, (job % nchunks) * _CHUNK
        d = np.empty((1, 1, 2, 2), dy.dtype)
        for u in range(u0, min(nt, u0 + _CHUNK)):
            t = t0 + u
            n, i, j = t // (th * tw), (t // tw) % th, t % tw
            if i * 2 + 2 <= P and j * 2 + 2 <= Q:
                _dtile_f2(dy, n, k, i * 2, j * 2, dM, k, u)
            else:
                _gather(dy, d, n, k, i * 2, j * 2)
                _dtile_f2(d, 0, 0, 0, 0, dM, k, u)


@jit(parallel=True)
def _dy_f4(dy, dM, t0, nt, th, tw):
    N, K, P, Q = dy.shape
    nchunks = (nt + _CHUNK - 1) // _CHUNK
    for job in prange(K * nchunks):
        k, u0 = job // nchunks, (job % nchunks) * _CHUNK
        d = np.empty((1, 1, 4, 4), dy.dtype)
        for u in range(u0, min(nt, u0 + _CHUNK)):
            t = t0 + u
            n, i, j = t // (th * tw), (t // tw) % th, t % tw
            if i * 4 + 4 <= P and j * 4 + 4 <= Q:
                _dtile_f4(dy, n, k, i * 4, j * 4, dM, k, u)
            else:
                _gather(dy, d, n, k, i * 4, j * 4)
                _dtile_f4(d, 0, 0, 0, 0, dM, k, u)


@jit(parallel=True)
def _filter_t2(dU, dw):
    """dw[k, c] = G^T dU[:, k, c] G, in float64."""
    K, C = dw.shape[0], dw.shape[1]
    for k in prange(K):
        for c in range(C):
            r0 = _gt2(dU[0, k, c], dU[1, k, c], dU[2, k, c], dU[3, k, c])   # along xb
            r1 = _gt2(dU[4, k, c], dU[5, k, c], dU[6, k, c], dU[7, k, c])
            r2 = _gt2(dU[8, k, c], dU[9, k, c], dU[10, k, c], dU[11, k, c])
            r3 = _gt2(dU[12, k, c], dU[13, k, c], dU[14, k, c], dU[15, k, c])
            for s in range(3):                                               # along xa
                col = _gt2(r0[s], r1[s], r2[s], r3[s])
                for r in range(3):
                    dw[k, c, r, s] = col[r]


@jit(parallel=True)
def _filter_t4(dU, dw):
    K, C = dw.shape[0], dw.shape[1]
    for k in prange(K):
        for c in range(C):
            r0 = _gt4(dU[0, k, c], dU[1, k, c], dU[2, k, c], dU[3, k, c], dU[4, k, c], dU[5, k, c])
            r1 = _gt4(dU[6, k, c], dU[7, k, c], dU[8, k, c], dU[9, k, c], dU[10, k, c], dU[11, k, c])
            r2 = _gt4(dU[12, k, c], dU[13, k, c], dU[14, k, c], dU[15, k, c], dU[16, k, c],
                      dU[17, k, c])
            r3 = _gt4(dU[18, k, c], dU[19, k, c], dU[20, k, c], dU[21, k, c], dU[22, k, c],
                      dU[23, k, c])
            r4 = _gt4(dU[24, k, c], dU[25, k, c], dU[26, k, c], dU[27, k, c], dU[28, k, c],
                      dU[29, k, c])
            r5 = _gt4(dU[30, k, c], dU[31, k, c], dU[32, k, c], dU[33, k, c], dU[34, k, c],
                      dU[35, k, c])
            for s in range(3):
                col = _gt4(r0[s], r1[s], r2[s], r3[s], r4[s], r5[s])
                for r in range(3):
                    dw[k, c, r, s] = col[r]


# -- drivers --------------------------------------------------------------------------

_KERNELS = {2: (_filter_f2, _input_f2, _output_f2), 4: (_filter_f4, _input_f4, _output_f4)}


#: transformed filters of recently used weights (checked bitwise on every hit)
_filters = WeightCache()


def _workspace(sizes, dtype, slots="UVM"):
    """Flat buffers of ``sizes`` elements, reused across calls per thread (see
    ``fastconv._config.workspace``): one slot per array."""
    return [workspace("winograd_" + slot, size, dtype) for slot, size in zip(slots, sizes)]


def _plane_stride(size):
    """Elements between consecutive xi-planes of U, V, M: the size rounded up to 16 plus
    16, so the alpha^2 planes the transforms write at once start in different cache
    sets (with power-of-two plane sizes they all collide and each store misses)."""
    return -(-size // 16) * 16 + 16


def _planes(buf, alpha2, rows, cols):
    """An (alpha2, rows, cols) view of ``buf``, each plane C-contiguous, planes
    ``_plane_stride(rows * cols)`` elements apart (np.matmul accepts any batch stride)."""
    stride = _plane_stride(rows * cols)
    return buf[:alpha2 * stride].reshape(alpha2, stride)[:, :rows * cols].reshape(alpha2, rows, cols)


def _transformed_filter(m, w):
    """U = G w G^T as (alpha^2, K, C) planes, in memory of its own (it may be cached)."""
    K, C = w.shape[:2]
    alpha2 = (m + 2) ** 2
    U = _planes(np.empty(_plane_stride(K * C) * alpha2, w.dtype), alpha2, K, C)
    _KERNELS[m][0](w, U)
    return U


def _winograd(m, x, U, y, off_h, off_w):
    """Stride-1 3x3 correlation ``y[n, k, p, q] = sum x[n, c, p + off_h + r, q + off_w + s]
    * w[k, c, r, s]`` (zeros outside x) with F(m x m, 3x3); x (N, C, H, W) C-contiguous,
    U the transformed filter of w (K, C, 3, 3), y (N, K, P, Q) filled."""
    _, input_kernel, output_kernel = _KERNELS[m]
    N, C = x.shape[:2]
    K, P, Q = y.shape[1:]
    alpha2 = (m + 2) ** 2
    th, tw = -(-P // m), -(-Q // m)
    T = N * th * tw
    tb = max(1, min(T, get_workspace_limit() // (alpha2 * (C + K) * x.itemsize)))
    vbuf, mbuf = _workspace([_plane_stride(C * tb) * alpha2, _plane_stride(K * tb) * alpha2],
                            x.dtype, slots="VM")
    for t0 in range(0, T, tb):
        nt = min(tb, T - t0)
        V = _planes(vbuf, alpha2, C, nt)
        M = _planes(mbuf, alpha2, K, nt)
        input_kernel(x, V, t0, nt, th, tw, off_h, off_w)
        np.matmul(U, V, out=M)
        output_kernel(M, y, t0, nt, th, tw)


def _forward(m):
    def conv2d(x, w, p, out):
        """Forward convolution into ``out`` (N, K, P, Q)."""
        U = _filters.get(w, ("fwd", m), lambda: _transformed_filter(m, w))
        _winograd(m, x, U, out, -p.pad_top, -p.pad_left)
    conv2d.__name__ = conv2d.__qualname__ = f"conv2d_f{m}"
    return conv2d


def _backward_input(m):
    def conv2d_input(dy, w, p, out):
        """Gradient with respect to the input, into ``out`` (N, C, H, W): the forward
        computation on dy with the filter rotated 180 degrees and C, K swapped."""
        U = _filters.get(w, ("rot", m), lambda: _transformed_filter(
            m, np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))))
        _winograd(m, np.ascontiguousarray(dy), U, out, p.pad_top - 2, p.pad_left - 2)
    conv2d_input.__name__ = conv2d_input.__qualname__ = f"conv2d_input_f{m}"
    return conv2d_input


_WEIGHT_KERNELS = {2: (_dy_f2, _filter_t2), 4: (_dy_f4, _filter_t4)}


def _winograd_weight(m, x, dy, dw, off_h, off_w):
    """dw[k, c, r, s] = sum dy[n, k, p, q] * x[n, c, p + off_h + r, q + off_w + s] with
    F(m x m, 3x3) transposed: dU[xi] = sum over tiles of (A dy A^T)[xi] (B^T x B)[xi]^T
    (alpha^2 GEMMs [K x tiles] x [tiles x C]), then dw = G^T dU G."""
    input_kernel = _KERNELS[m][1]
    dy_kernel, filter_kernel = _WEIGHT_KERNELS[m]
    N, C = x.shape[:2]
    K, P, Q = dy.shape[1:]
    alpha2 = (m + 2) ** 2
    th, tw = -(-P // m), -(-Q // m)
    T = N * th * tw
    tb = max(1, min(T, get_workspace_limit() // (alpha2 * (C + K) * x.itemsize)))
    sizes = [_plane_stride(K * C) * alpha2, _plane_stride(C * tb) * alpha2,
             _plane_stride(K * tb) * alpha2]
    ubuf, vbuf, mbuf = _workspace(sizes, x.dtype)
    dU = _planes(ubuf, alpha2, K, C)
    if tb < T:                                   # the GEMMs of later batches, summed
        part = _planes(_workspace([sizes[0]], x.dtype, slots="P")[0], alpha2, K, C)
    for t0 in range(0, T, tb):
        nt = min(tb, T - t0)
        V = _planes(vbuf, alpha2, C, nt)
        dM = _planes(mbuf, alpha2, K, nt)
        input_kernel(x, V, t0, nt, th, tw, off_h, off_w)
        dy_kernel(dy, dM, t0, nt, th, tw)
        if t0 == 0:
            np.matmul(dM, V.transpose(0, 2, 1), out=dU)
        else:
            np.matmul(dM, V.transpose(0, 2, 1), out=part)
            dU += part
    filter_kernel(dU, dw)


def _backward_weight(m):
    def conv2d_weight(x, dy, p, out):
        """Gradient with respect to the weight, into ``out`` (K, C, 3, 3)."""
        _winograd_weight(m, x, np.ascontiguousarray(dy), out, -p.pad_top, -p.pad_left)
    conv2d_weight.__name__ = conv2d_weight.__qualname__ = f"conv2d_weight_f{m}"
    return conv2d_weight


conv2d_f2, conv2d_f4 = _forward(2), _forward(4)
conv2d_weight_f2, conv2d_weight_f4 = _backward_weight(2), _backward_weight(4)
conv2d_input_f2, conv2d_input_f4 = _backward_input(2), _backward_input(4)


def supports(p):
    """Winograd handles 3x3 kernels, stride 1, dilation 1, groups 1 (any padding)."""
    return (p.R == 3 and p.S == 3 and p.stride_h == 1 and p.stride_w == 1
            and p.dil_h == 1 and p.dil_w == 1 and p.groups == 1)
