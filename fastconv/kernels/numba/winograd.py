"""Winograd convolution F(2x2,3x3) and F(4x4,3x3) (Lavin & Gray, "Fast Algorithms for
Convolutional Neural Networks", CVPR 2016, arXiv 1509.09308).

F(m x m, 3x3) computes an m x m output tile from an alpha x alpha input tile
(alpha = m + 2) as ``Y = A^T [(G g G^T) * (B^T d B)] A``. Over a batch of tiles and all
channels, the element-wise product is alpha^2 independent GEMMs::

    U[xi, c, k] = (G g[k, c] G^T)[xi]             filter transform (once per weight, cached)
    V[xi, u, c] = (B^T d[u, c] B)[xi]             input transform of tile u
    M[xi]       = V[xi] @ U[xi]  (tiles x C)(C x K)  alpha^2 GEMMs (BLAS)
    y[tile u]   = A^T M[:, u, k] A                output transform

The matrices are those of Lavin's ``wincnn`` for the interpolation points
F(2x2,3x3): 0, 1, -1, inf and F(4x4,3x3): 0, 1, -1, 2, -2, inf (see ``BT2, G2, AT2``
and ``BT4, G4, AT4`` below; the Numba code writes their products out by hand).

Layout: channels last. The input is copied into zero-padded channels-last slabs
``S[h, w, c] = x[n, c, h + off_h, w + off_w]`` (zeros outside x) that cover whole
tiles, so no tile needs an edge check and every transform is a loop over contiguous
channels, which LLVM vectorises. Output tile ``(i, j)`` of image ``n`` covers output rows
``i*m .. i*m + m - 1`` and reads input rows ``i*m .. i*m + alpha - 1`` of its slab
(columns alike); outputs past the edge are computed and dropped, so partial tiles and
any padding, even asymmetric, are exact. The output transform writes a channels-last
slab of output rows, which block transposes (``_transpose``) store to the NCHW output;
for rows shorter than a vector, where those cannot run, it writes the NCHW output
directly (its stores cross planes, still faster than an element-wise transposing pass).

Forward, with a transformed filter of at most ``FUSED_MAX_FILTER_BYTES``: each thread
takes blocks of tile rows (about 64 tiles) in turn; it copies the input rows of a block
into its own slab and runs the input transform, the alpha^2 GEMMs (one-thread BLAS,
called from the thread) and the output transform while slab, V and M are in its cache
(fused, as NNPACK and oneDNN do, rather than a separate whole-image layout pass:
faster), then stores the block's output rows. With a larger filter, which each block
would read again, the whole group of images is laid out first and the three steps run
one after the other on batches of many tiles, each on all threads (in float32 the GEMMs
are our register-tiled kernel, ``_gemm``, which reads the filter in place and shares the
alpha^2 products out among the threads; float64 uses BLAS); but with 2 or more threads
and a filter whose slices stay in cache, or are read for few blocks of tiles, the tiles
run fused again, each thread on its own slice of the output channels
(``SPLIT_MAX_SLICE_BYTES``).

F(4x4,3x3) in float32 with a transformed filter of ``STREAM_MIN_FILTER_BYTES`` or more
(none by default: the unfused path ran faster on every such layer on AMD Zen 4) on at
most ``STREAM_MAX_TILES`` tiles can transform the filter on the fly (``streamed``), not
read the cached one from memory for GEMMs of a few dozen rows. Each work item takes 64
output channels and, 64 input channels at a time, block-transposes the weight chunk,
transforms it into a U chunk in its own cache (float32 arithmetic) and adds V @ U into
M (a generated GEMM, ``gemm_acc``): the weight is read once per call, nothing else of
the filter's, and no weight cache is needed.

The gradient with respect to the input of a stride-1 3x3 convolution is the same
computation on ``dy`` with the filter rotated 180 degrees, C and K swapped, and
``off_h = pad_top - 2`` (padding ``2 - pad_top``; a negative padding just crops).

The gradient with respect to the weight runs the transposed computation: the same
input transform ``V``, ``dM = A dy A^T`` on m x m tiles of ``dy`` (zeros past the
output's edge), alpha^2 GEMMs ``dU[xi] = dM[xi]^T @ V[xi]`` (K x C) summed over tile
batches, and ``dw = G^T dU G``. With a transformed filter of at most
``WEIGHT_FUSED_MAX_FILTER_BYTES`` it runs fused like the forward: blocks of tile rows
(about 64 tiles) whose x and dy rows each thread copies into its own slabs, transforms
and adds into a partial dU (BLAS GEMMs with beta = 1); the blocks are shared among a
fixed number of partial sums (1, 2 or 4, from the tile count), added in order at the
end, so the result does not depend on the thread count. Larger filters: whole groups
of images laid out, then the transforms and GEMMs on batches of tiles, each on all
threads.

Workspace: the unfused paths process images in groups whose padded channels-last
copies fit in ``fastconv._config.get_workspace_limit()`` (at least one image per
group), and the grad-weight's tile batches likewise; all buffers are reused across calls
(``fastconv._config.workspace``). Accuracy: F(2x2,3x3) is about as accurate as direct
convolution; F(4x4,3x3) loses about one more decimal digit in float32 (see
``tests/test_winograd.py``).
"""
import numpy as np
from numba import prange, types

from ..._config import get_num_threads, single_threaded_blas, workspace_array
from ..epilogue import none
from ..kernel_blocks import larger_kernels
from ..layouts import GEMM_BLOCK, STREAM_CHANNELS, WINOGRAD_CHUNK_TILES
from ..weight_cache import CACHE as _filters
from . import codegen
from ._epilogue import put, run as ep_run, run_channels, store_channels
from ._jit import jit, one_thread
from ._threads import run as _run
from ._layout import w_block
from ._transpose import transpose_block, transpose_rows

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
_Q, _M6 = np.float32(0.25), np.float32(-1 / 6)    # G4's (rounded: the float32 transform)
_6, _12, _24 = np.float32(1 / 6), np.float32(1 / 12), np.float32(1 / 24)

# fast-math without 'nnan'/'ninf': a NaN or Inf in the input must stay non-finite in
# the output (it spreads to the whole output tile, a superset of direct convolution's)
_FASTMATH = {"nsz", "arcp", "contract", "reassoc"}


@jit(inline="always")
def _tile(t, th, tw):
    """(image, tile row, tile column) of tile t of th x tw tiles per image."""
    return t // (th * tw), (t // tw) % th, t % tw


@jit(inline="always")
def _chunk(nt):
    """Tiles per work item of the unfused transforms: ``WINOGRAD_CHUNK_TILES``, fewer for
    few tiles (at least 8 items, so that every thread gets some)."""
    return max(1, min(WINOGRAD_CHUNK_TILES, nt // 8))


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


# -- one tile, all channels (innermost loops run over contiguous channels) ----------
# ``tmp`` (alpha, alpha, >= channels) holds the tile after its first 1-D pass.

@jit(fastmath=_FASTMATH)
def _in_tile2(Xp, n, h0, w0, tmp, V, u):
    """V[:, u, :] = B^T d B for the tile d = Xp[n, h0:h0 + 4, w0:w0 + 4, :]."""
    for a in range(4):                                    # B^T along w, row by row
        src, dst = Xp[n, h0 + a], tmp[a]
        for c in range(Xp.shape[3]):
            r = _bt2(src[w0, c], src[w0 + 1, c], src[w0 + 2, c], src[w0 + 3, c])
            dst[0, c], dst[1, c], dst[2, c], dst[3, c] = r
    for b in range(4):                                    # then along h: xi = a*4 + b
        for c in range(Xp.shape[3]):
            r = _bt2(tmp[0, b, c], tmp[1, b, c], tmp[2, b, c], tmp[3, b, c])
            V[b, u, c], V[4 + b, u, c], V[8 + b, u, c], V[12 + b, u, c] = r


@jit(fastmath=_FASTMATH)
def _in_tile4(Xp, n, h0, w0, tmp, V, u):
    """V[:, u, :] = B^T d B for the tile d = Xp[n, h0:h0 + 6, w0:w0 + 6, :]."""
    for a in range(6):
        src, dst = Xp[n, h0 + a], tmp[a]
        for c in range(Xp.shape[3]):
            r = _bt4(src[w0, c], src[w0 + 1, c], src[w0 + 2, c], src[w0 + 3, c],
                     src[w0 + 4, c], src[w0 + 5, c])
            dst[0, c], dst[1, c], dst[2, c], dst[3, c], dst[4, c], dst[5, c] = r
    for b in range(6):
        for c in range(Xp.shape[3]):
            r = _bt4(tmp[0, b, c], tmp[1, b, c], tmp[2, b, c], tmp[3, b, c], tmp[4, b, c],
                     tmp[5, b, c])
            (V[b, u, c], V[6 + b, u, c], V[12 + b, u, c], V[18 + b, u, c], V[24 + b, u, c],
             V[30 + b, u, c]) = r


@jit(fastmath=_FASTMATH)
def _out_tile2(M, u, tmp, y, n, p0, q0, k0, nk, bias, rf, act):
    """y[n, k0:k0 + nk, p0:p0 + 2, q0:q0 + 2] = A^T M[:, u, :nk] A, cropped to the output,
    through the epilogue (NCHW: the stores run across planes, still cheaper than a
    separate transposing pass)."""
    K, P, Q = y.shape[1], y.shape[2], y.shape[3]
    yf = y.reshape(y.size)
    for b in range(4):                                    # A^T along h
        for k in range(nk):
            tmp[0, b, k], tmp[1, b, k] = _at2(M[b, u, k], M[4 + b, u, k], M[8 + b, u, k],
                                              M[12 + b, u, k])
    for a in range(min(2, P - p0)):                       # then along w
        for k in range(nk):
            r = _at2(tmp[a, 0, k], tmp[a, 1, k], tmp[a, 2, k], tmp[a, 3, k])
            o = ((n * K + k0 + k) * P + p0 + a) * Q + q0
            put(yf, o, r[0], k0 + k, bias, rf, act)
            if q0 + 1 < Q:
                put(yf, o + 1, r[1], k0 + k, bias, rf, act)


@jit(fastmath=_FASTMATH)
def _out_tile4(M, u, tmp, y, n, p0, q0, k0, nk, bias, rf, act):
    """y[n, k0:k0 + nk, p0:p0 + 4, q0:q0 + 4] = A^T M[:, u, :nk] A, cropped to the output,
    through the epilogue."""
    K, P, Q = y.shape[1], y.shape[2], y.shape[3]
    yf = y.reshape(y.size)
    for b in range(6):
        for k in range(nk):
            tmp[0, b, k], tmp[1, b, k], tmp[2, b, k], tmp[3, b, k] = _at4(
                M[b, u, k], M[6 + b, u, k], M[12 + b, u, k], M[18 + b, u, k],
                M[24 + b, u, k], M[30 + b, u, k])
    for a in range(min(4, P - p0)):
        for k in range(nk):
            r = _at4(tmp[a, 0, k], tmp[a, 1, k], tmp[a, 2, k], tmp[a, 3, k], tmp[a, 4, k],
                     tmp[a, 5, k])
            o = ((n * K + k0 + k) * P + p0 + a) * Q + q0
            for b in range(min(4, Q - q0)):               # the last tile column: fewer
                put(yf, o + b, r[b], k0 + k, bias, rf, act)


@jit(fastmath=_FASTMATH)
def _out_tile2_cl(M, u, tmp, O, r0, q0):
    """O[r0 + a, q0 + b, :] = (A^T M[:, u, :] A)[a, b], a, b < 2: a whole tile into a
    channels-last slab O (rows, columns, channels)."""
    for b in range(4):
        for k in range(O.shape[2]):
            tmp[0, b, k], tmp[1, b, k] = _at2(M[b, u, k], M[4 + b, u, k], M[8 + b, u, k],
                                              M[12 + b, u, k])
    for a in range(2):
        o = O[r0 + a]
        for k in range(O.shape[2]):
            o[q0, k], o[q0 + 1, k] = _at2(tmp[a, 0, k], tmp[a, 1, k], tmp[a, 2, k], tmp[a, 3, k])


@jit(fastmath=_FASTMATH)
def _out_tile4_cl(M, u, tmp, O, r0, q0):
    """O[r0 + a, q0 + b, :] = (A^T M[:, u, :] A)[a, b], a, b < 4 (see ``_out_tile2_cl``)."""
    for b in range(6):
        for k in range(O.shape[2]):
            tmp[0, b, k], tmp[1, b, k], tmp[2, b, k], tmp[3, b, k] = _at4(
                M[b, u, k], M[6 + b, u, k], M[12 + b, u, k], M[18 + b, u, k],
                M[24 + b, u, k], M[30 + b, u, k])
    for a in range(4):
        o = O[r0 + a]
        for k in range(O.shape[2]):
            o[q0, k], o[q0 + 1, k], o[q0 + 2, k], o[q0 + 3, k] = _at4(
                tmp[a, 0, k], tmp[a, 1, k], tmp[a, 2, k], tmp[a, 3, k], tmp[a, 4, k],
                tmp[a, 5, k])


@jit()
def _store_rows(O, y, n, p0, k0, nk, q_lo, q_hi, bias, rf, act):
    """y[n, k0 + k, p0 + r, q] = O[r, q, k] for k < nk, q_lo <= q < q_hi and the rows of
    O inside y: a channels-last output slab back to NCHW, by block transposes for whole
    vectors of channels in runs of at least one vector of columns, element by element
    otherwise, through the epilogue: without a residual, applied to the slab's row (bias
    and activation along the contiguous channels) before it is stored; with one, to
    the rows just stored (in L2)."""
    K, P, Q = y.shape[1], y.shape[2], y.shape[3]
    Wo, kp = O.shape[1], O.shape[2]
    L = 64 // y.itemsize                                 # lanes(dtype)
    kfull = nk - nk % L if q_hi - q_lo >= L else 0
    of, yf = O.reshape(O.size), y.reshape(y.size)
    on_slab = rf.size == 0 and (bias.size > 0 or act != 0)
    for r in range(min(O.shape[0], P - p0)):
        yo = ((n * K + k0) * P + p0 + r) * Q
        if on_slab:
            for q in range(q_lo, q_hi):
                run_channels(of, (r * Wo + q) * kp, nk, k0, bias, act)
        for kb in range(0, kfull, L):
            for qb in range(q_lo, q_hi, L):              # the last block overlaps
                q = min(qb, q_hi - L)
                transpose_block(of, (r * Wo + q) * kp + kb, kp, yf, yo + kb * P * Q + q, P * Q)
        for k in range(kfull, nk):
            for q in range(q_lo, q_hi):
                yf[yo + k * P * Q + q] = O[r, q, k]
    if rf.size:
        # after all the slab's rows are stored (right after a row's transposes, reading
        # it back stalled on the stores)
        for r in range(min(O.shape[0], P - p0)):
            yo = ((n * K + k0) * P + p0 + r) * Q
            for k in range(nk):
                ep_run(yf, yo + k * P * Q + q_lo, q_hi - q_lo, k0 + k, bias, rf, act)


@jit()
def _store_rows_cl(O, y, n, p0, k0, nk, q_lo, q_hi, bias, rf, act):
    """y[n, p0 + r, q, k0 + k] = O[r, q, k] for k < nk, q_lo <= q < q_hi and the rows of
    O inside y (N, P, Q, K), channels last: a run of channels per pixel, through the
    epilogue (the arithmetic of ``_store_rows``: the same bits)."""
    P, Q, K = y.shape[1], y.shape[2], y.shape[3]
    of, yf = O.reshape(O.size), y.reshape(y.size)
    Wo, kp = O.shape[1], O.shape[2]
    for r in range(min(O.shape[0], P - p0)):
        for q in range(q_lo, q_hi):
            store_channels(of, (r * Wo + q) * kp, yf, ((n * P + p0 + r) * Q + q) * K + k0,
                           nk, k0, bias, rf, act)


@jit(fastmath=_FASTMATH)
def _dy_tile2(D, n, p0, q0, tmp, dM, u):
    """dM[:, u, :] = A d A^T for the tile d = D[n, p0:p0 + 2, q0:q0 + 2, :]."""
    for a in range(2):                                    # A along w, row by row
        src, dst = D[n, p0 + a], tmp[a]
        for k in range(D.shape[3]):
            dst[0, k], dst[1, k], dst[2, k], dst[3, k] = _a2(src[q0, k], src[q0 + 1, k])
    for b in range(4):                                    # then along h
        for k in range(D.shape[3]):
            dM[b, u, k], dM[4 + b, u, k], dM[8 + b, u, k], dM[12 + b, u, k] = _a2(
                tmp[0, b, k], tmp[1, b, k])


@jit(fastmath=_FASTMATH)
def _dy_tile4(D, n, p0, q0, tmp, dM, u):
    """dM[:, u, :] = A d A^T for the tile d = D[n, p0:p0 + 4, q0:q0 + 4, :]."""
    for a in range(4):
        src, dst = D[n, p0 + a], tmp[a]
        for k in range(D.shape[3]):
            dst[0, k], dst[1, k], dst[2, k], dst[3, k], dst[4, k], dst[5, k] = _a4(
                src[q0, k], src[q0 + 1, k], src[q0 + 2, k], src[q0 + 3, k])
    for b in range(6):
        for k in range(D.shape[3]):
            (dM[b, u, k], dM[6 + b, u, k], dM[12 + b, u, k], dM[18 + b, u, k],
             dM[24 + b, u, k], dM[30 + b, u, k]) = _a4(tmp[0, b, k], tmp[1, b, k],
                                                       tmp[2, b, k], tmp[3, b, k])


# -- layout change: NCHW -> zero-padded channels-last -----------------------------

@jit()
def _slab(x, n, h0, ow, S, r0, nr):
    """S[r0 + r, w, c] = x[n, c, h0 + r, w + ow] for the rows r < nr and all columns w
    of S (rows, columns, C), a padded channels-last image or slab, C-contiguous like x;
    zeros outside x. Whole vectors of channels by block transposes (of the first columns
    only for a row shorter than a vector: still faster than element by element), a tail
    of channels element by element."""
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    Sw = S.shape[1]
    lo, hi = max(0, -ow), min(Sw, W - ow)                # the columns of S inside x
    L = 64 // x.itemsize                                 # lanes(dtype)
    cfull = C - C % L
    xf, sf = x.reshape(x.size), S.reshape(S.size)
    # The tail reads one value per plane per column. Planes a multiple of 4 KiB apart
    # (32x32, 224x224) fall in one L1 set: then read 8 planes at a time.
    cb = 8 if H * W * x.itemsize % 4096 == 0 else C
    for r in range(r0, r0 + nr):
        hs = h0 + r - r0
        row = S[r]
        if hs < 0 or hs >= H:
            row[:, :] = 0
            continue
        row[:lo, :] = 0
        row[hi:, :] = 0
        cend = cfull
        for c0 in range(0, cfull, L):
            so = ((n * C + c0) * H + hs) * W + ow
            if hi - lo < L:
                # a row shorter than L: its hi - lo columns, the transpose reading L
                # (past the row: the next one's, not stored) while inside x
                if so + (L - 1) * H * W + lo + L > xf.size:
                    cend = c0
                    break
                transpose_rows(xf, so + lo, H * W, sf, (r * Sw + lo) * C + c0, C, hi - lo)
                continue
            for wb in range(lo, hi, L):                  # the last block overlaps
                w = min(wb, hi - L)
                transpose_block(xf, so + w, H * W, sf, (r * Sw + w) * C + c0, C)
        for c0 in range(cend, C, cb):
            for w in range(lo, hi):
                for c in range(c0, min(C, c0 + cb)):
                    row[w, c] = x[n, c, hs, w + ow]


@jit()
def _slab_cl(x, n, h0, ow, S, r0, nr):
    """``_slab`` of a channels-last x (N, H, W, C): S[r0 + r, w, :] = x[n, h0 + r, w + ow,
    :], zeros outside x; a row's pixels are a copy."""
    H, W = x.shape[1], x.shape[2]
    lo, hi = max(0, -ow), min(S.shape[1], W - ow)       # the columns of S inside x
    for r in range(r0, r0 + nr):
        hs = h0 + r - r0
        row = S[r]
        if hs < 0 or hs >= H or hi <= lo:
            row[:, :] = 0
            continue
        row[:lo, :] = 0
        row[hi:, :] = 0
        row[lo:hi, :] = x[n, hs, lo + ow:hi + ow, :]


@jit(parallel=True)
def _to_channels_last(x, Xp, oh, ow, cl):
    """Xp[n, h, w, c] = x[n, c, h + oh, w + ow] (``cl``: x[n, h + oh, w + ow, c]), zeros
    outside x."""
    Hp = Xp.shape[1]
    for it in prange(x.shape[0] * Hp):
        n, h = it // Hp, it % Hp
        if cl:
            _slab_cl(x, n, h + oh, ow, Xp[n], h, 1)
        else:
            _slab(x, n, h + oh, ow, Xp[n], h, 1)


# -- filter transforms, in float64 (passes over contiguous channels where possible) ---

@jit(parallel=True)
def _filter_f2(w, U):
    """U[xi, c, k] = (G w[k, c] G^T)[xi]."""
    K, C = w.shape[0], w.shape[1]
    for c in prange(C):
        tmp = np.empty((3, 4, K))
        for r in range(3):                                    # G along s
            for k in range(K):
                tmp[r, 0, k], tmp[r, 1, k], tmp[r, 2, k], tmp[r, 3, k] = _g2(
                    w[k, c, r, 0], w[k, c, r, 1], w[k, c, r, 2])
        for b in range(4):                                    # then along r: xi = a*4 + b
            for k in range(K):
                U[b, c, k], U[4 + b, c, k], U[8 + b, c, k], U[12 + b, c, k] = _g2(
                    tmp[0, b, k], tmp[1, b, k], tmp[2, b, k])


@jit(parallel=True)
def _filter_f4(w, U):
    """U[xi, c, k] = (G w[k, c] G^T)[xi]."""
    K, C = w.shape[0], w.shape[1]
    for c in prange(C):
        tmp = np.empty((3, 6, K))
        for r in range(3):
            for k in range(K):
                (tmp[r, 0, k], tmp[r, 1, k], tmp[r, 2, k], tmp[r, 3, k], tmp[r, 4, k],
                 tmp[r, 5, k]) = _g4(w[k, c, r, 0], w[k, c, r, 1], w[k, c, r, 2])
        for b in range(6):
            for k in range(K):
                (U[b, c, k], U[6 + b, c, k], U[12 + b, c, k], U[18 + b, c, k], U[24 + b, c, k],
                 U[30 + b, c, k]) = _g4(tmp[0, b, k], tmp[1, b, k], tmp[2, b, k])


@jit(inline="always")
def _add_parts(dU, k):
    """dU[0, :, k] += dU[1, :, k], then dU[2, :, k], ... (the partial sums, in order)."""
    for g in range(1, dU.shape[0]):
        for xi in range(dU.shape[1]):
            for c in range(dU.shape[3]):
                dU[0, xi, k, c] += dU[g, xi, k, c]


@jit(parallel=True)
def _filter_t2(dU, dw):
    """dw[k, c] = G^T dU[:, k, c] G, where dU (parts, alpha^2, K, C) holds partial sums
    (added in order into dU[0])."""
    K, C = dU.shape[2], dU.shape[3]
    for k in prange(K):
        _add_parts(dU, k)
        tmp = np.empty((4, 3, C))
        for a in range(4):                                    # G^T along xb, row xa = a
            for c in range(C):
                tmp[a, 0, c], tmp[a, 1, c], tmp[a, 2, c] = _gt2(
                    dU[0, 4 * a, k, c], dU[0, 4 * a + 1, k, c], dU[0, 4 * a + 2, k, c],
                    dU[0, 4 * a + 3, k, c])
        for s in range(3):                                    # then along xa
            for c in range(C):
                dw[k, c, 0, s], dw[k, c, 1, s], dw[k, c, 2, s] = _gt2(
                    tmp[0, s, c], tmp[1, s, c], tmp[2, s, c], tmp[3, s, c])


@jit(parallel=True)
def _filter_t4(dU, dw):
    """dw[k, c] = G^T dU[:, k, c] G, where dU (parts, alpha^2, K, C) holds partial sums
    (added in order into dU[0])."""
    K, C = dU.shape[2], dU.shape[3]
    for k in prange(K):
        _add_parts(dU, k)
        tmp = np.empty((6, 3, C))
        for a in range(6):
            for c in range(C):
                tmp[a, 0, c], tmp[a, 1, c], tmp[a, 2, c] = _gt4(
                    dU[0, 6 * a, k, c], dU[0, 6 * a + 1, k, c], dU[0, 6 * a + 2, k, c],
                    dU[0, 6 * a + 3, k, c], dU[0, 6 * a + 4, k, c], dU[0, 6 * a + 5, k, c])
        for s in range(3):
            for c in range(C):
                dw[k, c, 0, s], dw[k, c, 1, s], dw[k, c, 2, s] = _gt4(
                    tmp[0, s, c], tmp[1, s, c], tmp[2, s, c], tmp[3, s, c], tmp[4, s, c],
                    tmp[5, s, c])


# -- the parallel kernels --------------------------------------------------------------

@jit(parallel=True)
def _fused(x, Uk, y, m, th, tw, oh, ow, R, G, Sb, Vb, Mb, Tb, Ob, bias, rf, act, cl):
    """y (NCHW) = the correlation of x (NCHW; input rows and columns offset by oh, ow)
    with the transformed filter ``Uk`` (nsplit, alpha^2, C, kp), split into ``nsplit``
    slices of kp output channels (zero-padded). Work item ``(images, block, part)``
    takes R tile rows of G images (G > 1 only when a block holds whole images, R >= th,
    so one GEMM multiplies the tiles of G images): it copies the input rows an image's
    tiles read into its thread's channels-last slab (``Sb[tid]``, zero-padded), runs
    their input transforms, the GEMMs with filter slice ``part``, the output transform
    of those kp channels into a channels-last output slab (``Ob[tid]``) and stores that
    to y image by image (rows shorter than a vector: tile by tile straight into y),
    through the epilogue (``bias``, ``rf``, ``act``: ``fastconv.kernels.epilogue``).
    Thread ``tid`` takes items tid, tid + nthreads, ... with its own slabs, V, M and tmp
    (``Sb``, ``Vb``, ``Mb``, ``Tb``, ``Ob`` [tid]). ``cl``: x (N, H, W, C) and y (N, P,
    Q, K), channels last: slabs copied, output slabs stored as runs of channels."""
    nthreads, alpha2, tb = Vb.shape[0], Vb.shape[1], Vb.shape[2]
    nsplit, kp, K = Uk.shape[0], Uk.shape[3], y.shape[3] if cl else y.shape[1]
    N = x.shape[0]
    nblocks = (th + R - 1) // R
    nitems = (N + G - 1) // G * nblocks * nsplit
    for tid in prange(nthreads):
        S, V, M, tmp, O = Sb[tid], Vb[tid], Mb[tid], Tb[tid], Ob[tid]
        held = -1                                        # the (images, block) in V
        for item in range(tid, nitems, nthreads):
            nb, part = item // nsplit, item % nsplit
            n0, i0 = nb // nblocks * G, nb % nblocks * R
            ng = min(N, n0 + G) - n0
            nt1 = (min(th, i0 + R) - i0) * tw            # tiles per image
            nt = ng * nt1
            if nb != held:
                for g in range(ng):                      # image n0 + g: V rows g*nt1 on
                    if cl:
                        _slab_cl(x, n0 + g, i0 * m + oh, ow, S[0], 0, S.shape[1])
                    else:
                        _slab(x, n0 + g, i0 * m + oh, ow, S[0], 0, S.shape[1])
                    for u in range(nt1):
                        i, j = u // tw, u % tw           # tile (i0 + i, j); S row m*i
                        if m == 2:
                            _in_tile2(S, 0, 2 * i, 2 * j, tmp, V, g * nt1 + u)
                        else:
                            _in_tile4(S, 0, 4 * i, 4 * j, tmp, V, g * nt1 + u)
                V[:, nt:, :] = 0              # a short last block: its GEMM rows unused
                held = nb
            for xi in range(alpha2):
                np.dot(V[xi], Uk[part, xi], M[xi])
            k0 = part * kp
            nk = min(K, k0 + kp) - k0
            for g in range(ng):
                n = n0 + g
                if not cl and y.shape[3] < 64 // y.itemsize:    # short rows: straight into y
                    for u in range(nt1):
                        i, j = i0 + u // tw, u % tw
                        if m == 2:
                            _out_tile2(M, g * nt1 + u, tmp, y, n, 2 * i, 2 * j, k0, nk,
                                       bias, rf, act)
                        else:
                            _out_tile4(M, g * nt1 + u, tmp, y, n, 4 * i, 4 * j, k0, nk,
                                       bias, rf, act)
                    continue
                for u in range(nt1):
                    i, j = u // tw, u % tw
                    if m == 2:
                        _out_tile2_cl(M, g * nt1 + u, tmp, O, 2 * i, 2 * j)
                    else:
                        _out_tile4_cl(M, g * nt1 + u, tmp, O, 4 * i, 4 * j)
                if cl:
                    _store_rows_cl(O, y, n, m * i0, k0, nk, 0, y.shape[2], bias, rf, act)
                else:
                    _store_rows(O, y, n, m * i0, k0, nk, 0, y.shape[3], bias, rf, act)


#: BLAS ``?gemm`` through Numba's wrapper (the one ``np.dot`` calls, so
#: ``single_threaded_blas`` holds it too), for its ``beta``: C = alpha A B + beta C
_xxgemm = types.ExternalFunction("numba_xxgemm", types.intc(
    types.char, types.char, types.char, types.intp, types.intp, types.intp,   # kind, trans, m n k
    types.voidptr, types.voidptr, types.intp, types.voidptr, types.intp,     # alpha, a, b
    types.voidptr, types.voidptr, types.intp))                               # beta, c
#: its character arguments: the BLAS routine's type and the operands' transposition
_SINGLE, _DOUBLE = ord("s"), ord("d")
_NO_TRANS, _TRANS = ord("n"), ord("t")


@jit(parallel=True)
def _fused_weight(x, dy, m, th, tw, oh, ow, Sb, Db, Vb, Mb, Tb, dU):
    """dU[g, xi] = sum of dM[xi]^T V[xi] over the tiles of the work items of part g, for
    x (NCHW; input rows and columns offset by oh, ow) and dy (NCHW). Work item ``(n,
    block)`` takes R = ``Vb.shape[2] // tw`` tile rows of image n: it copies the input
    rows and the dy rows they read into its thread's channels-last slabs (``Sb``,
    ``Db`` [tid], zero-padded), runs their input and dy transforms into V and dM and adds
    the alpha^2 products into dU[g]. Part g takes the items g*nitems // parts ..
    (g + 1)*nitems // parts - 1, in order; thread ``tid`` takes parts tid, tid + nthreads,
    ..., so the sums do not depend on the thread count."""
    nthreads, alpha2, tb = Vb.shape[0], Vb.shape[1], Vb.shape[2]
    parts, K, C = dU.shape[0], dU.shape[2], dU.shape[3]
    R = tb // tw
    nblocks = (th + R - 1) // R
    nitems = x.shape[0] * nblocks
    kind = _SINGLE if x.itemsize == 4 else _DOUBLE
    for tid in prange(nthreads):
        S, D, V, dM, tmp = Sb[tid], Db[tid], Vb[tid], Mb[tid], Tb[tid]
        one, beta = np.ones(1, x.dtype), np.empty(1, x.dtype)
        for g in range(tid, parts, nthreads):
            for item in range(g * nitems // parts, (g + 1) * nitems // parts):
                n, i0 = item // nblocks, item % nblocks * R
                _slab(x, n, i0 * m + oh, ow, S[0], 0, S.shape[1])
                _slab(dy, n, i0 * m, 0, D[0], 0, D.shape[1])     # zeros past P, Q
                nt = (min(th, i0 + R) - i0) * tw
                for u in range(nt):
                    i, j = u // tw, u % tw               # tile (i0 + i, j); slab row m*i
                    if m == 2:
                        _in_tile2(S, 0, 2 * i, 2 * j, tmp, V, u)
                        _dy_tile2(D, 0, 2 * i, 2 * j, tmp, dM, u)
                    else:
                        _in_tile4(S, 0, 4 * i, 4 * j, tmp, V, u)
                        _dy_tile4(D, 0, 4 * i, 4 * j, tmp, dM, u)
                # dU[g, xi] (K x C, row-major) is C x K column-major: V[xi]^T dM[xi]
                beta[0] = 0 if item == g * nitems // parts else 1
                for xi in range(alpha2):
                    _xxgemm(kind, _NO_TRANS, _TRANS, C, K, nt, one.ctypes, V[xi].ctypes, C,
                            dM[xi].ctypes, K, beta.ctypes, dU[g, xi].ctypes, C)


@jit(parallel=True)
def _transform_tiles(src, dst, nt, m, t0, th, tw, dy):
    """dst[:, u, :] for the tiles t0 + u, u < nt, of src: the input transform of the
    padded channels-last input, or (``dy``) that of the output gradient's m x m tiles."""
    ch = _chunk(nt)
    for chunk in prange((nt + ch - 1) // ch):
        tmp = np.empty((m + 2, m + 2, src.shape[3]), src.dtype)
        for u in range(chunk * ch, min(nt, chunk * ch + ch)):
            n, i, j = _tile(t0 + u, th, tw)
            if m == 2 and dy:
                _dy_tile2(src, n, 2 * i, 2 * j, tmp, dst, u)
            elif m == 2:
                _in_tile2(src, n, 2 * i, 2 * j, tmp, dst, u)
            elif dy:
                _dy_tile4(src, n, 4 * i, 4 * j, tmp, dst, u)
            else:
                _in_tile4(src, n, 4 * i, 4 * j, tmp, dst, u)


@jit(parallel=True)
def _output_tiles(M, nt, y, m, t0, th, tw, bias, rf, act, cl):
    """The output tiles t0 + u, u < nt, of y from M[:, u, :]. Rows of at least one vector
    of columns: a row of tiles (or the part of one in this batch) at a time, into a
    channels-last slab, then stored by block transposes (faster than tile by tile);
    shorter rows, where a slab's element-wise store would be slower: tile by tile
    straight into y. The epilogue (``bias``, ``rf`` y's residual, ``act``) applies as
    each is stored. ``cl``: y (N, P, Q, K), channels last (always by slabs)."""
    K, Q = (y.shape[3], y.shape[2]) if cl else (y.shape[1], y.shape[3])
    if not cl and Q < 64 // y.itemsize:
        ch = _chunk(nt)
        for chunk in prange((nt + ch - 1) // ch):
            tmp = np.empty((m + 2, m + 2, M.shape[2]), M.dtype)
            for u in range(chunk * ch, min(nt, chunk * ch + ch)):
                n, i, j = _tile(t0 + u, th, tw)
                if m == 2:
                    _out_tile2(M, u, tmp, y, n, 2 * i, 2 * j, 0, K, bias, rf, act)
                else:
                    _out_tile4(M, u, tmp, y, n, 4 * i, 4 * j, 0, K, bias, rf, act)
        return
    for row in prange(t0 // tw, (t0 + nt - 1) // tw + 1):    # tile row n*th + i
        n, i = row // th, row % th
        j0, j1 = max(0, t0 - row * tw), min(tw, t0 + nt - row * tw)
        O = np.empty((m, m * tw, M.shape[2]), M.dtype)
        tmp = np.empty((m + 2, m + 2, M.shape[2]), M.dtype)
        for j in range(j0, j1):
            if m == 2:
                _out_tile2_cl(M, row * tw + j - t0, tmp, O, 0, 2 * j)
            else:
                _out_tile4_cl(M, row * tw + j - t0, tmp, O, 0, 4 * j)
        if cl:
            _store_rows_cl(O, y, n, m * i, 0, K, m * j0, min(Q, m * j1), bias, rf, act)
        else:
            _store_rows(O, y, n, m * i, 0, K, m * j0, min(Q, m * j1), bias, rf, act)


#: output channels per work item of the F(4x4,3x3) path that transforms the filter on
#: the fly (``_streamed_items``); its input channels per chunk are ``STREAM_CHANNELS``
STREAM_PANEL = GEMM_BLOCK[0]


@jit(inline="always")
def _g4f(g0, g1, g2):
    """``_g4`` in float32 (the transform on the fly: a rounding of U's elements, against
    F(4x4,3x3)'s own error about 100 times larger)."""
    s = (g0 + g2) * _M6
    t = g0 * _24 + g2 * _6
    return g0 * _Q, s - g1 * _6, s + g1 * _6, t + g1 * _12, t - g1 * _12, g2


@jit(fastmath=_FASTMATH)
def _filter_chunk4(Wt, Ut, cb, tmp):
    """Ut[xi, c*J + k] = (G4 g G4^T)[xi] for the cb channels c of a chunk, g[k, c] the 3x3
    filter at Wt[c, r*3 + s, k] (k < J = 64: the vector lanes); G4 along s into tmp (3, 6,
    J), then along r (xi = a*6 + e). 16 float32 lanes, two passes (one loop over both
    passes with unsigned offsets was not vectorised)."""
    J = Wt.shape[2]
    for c in range(cb):
        for r in range(3):
            for k in range(J):
                a0, a1, a2, a3, a4, a5 = _g4f(Wt[c, 3 * r, k], Wt[c, 3 * r + 1, k],
                                              Wt[c, 3 * r + 2, k])
                tmp[r, 0, k] = a0
                tmp[r, 1, k] = a1
                tmp[r, 2, k] = a2
                tmp[r, 3, k] = a3
                tmp[r, 4, k] = a4
                tmp[r, 5, k] = a5
        for e in range(6):
            for k in range(J):
                a0, a1, a2, a3, a4, a5 = _g4f(tmp[0, e, k], tmp[1, e, k], tmp[2, e, k])
                o = c * J + k
                Ut[e, o] = a0
                Ut[6 + e, o] = a1
                Ut[12 + e, o] = a2
                Ut[18 + e, o] = a3
                Ut[24 + e, o] = a4
                Ut[30 + e, o] = a5


# Not cached (compiled once per process): typed by its GEMM argument's
# object, it missed the cache in every process and added a cache file each time
@jit(fastmath=_FASTMATH, cache=False)
def _streamed_items(Vc, wf, M, K, flip, gemm, it0, it1):
    """Work items it: the output channels [64*it, 64*it + 64) of M (36, T, Kp) =
    V (36, T, C) @ U (36, C, 64) for F(4x4,3x3), V given by chunks of channels (Vc, see
    ``_by_chunks``), with U = G g G^T transformed here from
    the weight, ``STREAM_CHANNELS`` input channels at a time, in the thread's cache (g =
    w, or with ``flip`` w rotated 180 degrees with C and K swapped; ``wf`` w flat, K the
    output channels): the weight is read once per call and no transformed filter is
    kept, so nothing is streamed from memory but the weight. ``gemm``: the generated
    ``gemm_acc``."""
    X, T, C = Vc.shape[1], Vc.shape[2], wf.size // (9 * K)
    Kp = M.shape[2]
    J, CB = STREAM_PANEL, STREAM_CHANNELS
    Wt = np.empty(CB * 9 * J, Vc.dtype)               # [c, rs, k]: the chunk, k last
    # Ut[xi, c, k] at xi*pitch + c*J + k: with a pitch of CB*J floats (a multiple of 4 KB)
    # all 36 stores of a (c, k) fell in one L1 set (4K aliasing); one line more
    pitch = CB * J + 64 // Vc.itemsize
    Ut = np.empty(X * pitch, Vc.dtype)
    Wt3, Ut2 = Wt.reshape((CB, 9, J)), Ut.reshape((X, pitch))
    tmp = np.empty((3, 6, J), Vc.dtype)
    vf, mf = Vc.reshape(Vc.size), M.reshape(M.size)
    for it in range(it0, it1):
        k0 = it * J
        for xi in range(X):
            M[xi, :, k0:k0 + J] = 0
        for c0 in range(0, C, CB):
            cb = min(CB, C - c0)
            w_block(wf, Wt, 0, 0, it, c0, cb, K, C, 9, flip, J)
            _filter_chunk4(Wt3, Ut2, cb, tmp)
            for xi in range(X):
                gemm(vf, ((c0 // CB) * X + xi) * T * CB, CB, Ut, xi * pitch, mf,
                     xi * T * Kp + k0, Kp, T, cb)


@jit(parallel=True)
def _by_chunks(V, Vc, CB):
    """Vc[ch, xi, t, j] = V[xi, t, ch*CB + j] (j < CB, within C): the channels of V in
    chunks of CB, so that a GEMM over one chunk reads contiguous rows (faster than rows
    C apart)."""
    X, T, C = V.shape
    for it in prange(Vc.shape[0] * X):
        ch, xi = it // X, it % X
        n = min(CB, C - ch * CB)
        for t in range(T):
            Vc[ch, xi, t, :n] = V[xi, t, ch * CB:ch * CB + n]


# -- drivers --------------------------------------------------------------------------

_FILTERS = {2: (_filter_f2, _filter_t2), 4: (_filter_f4, _filter_t4)}



def _buffer(slot, shape, dtype):
    return workspace_array("winograd_" + slot, shape, dtype)


def _transformed_filter(m, w):
    """U = G w G^T as (alpha^2, C, K), in memory of its own (it may be cached)."""
    K, C = w.shape[:2]
    U = np.empty(((m + 2) ** 2, C, K), w.dtype)
    _FILTERS[m][0](w, U)
    return U


def _filter(m, w, kind, nsplit, multiple=1):
    """The transformed filter of ``w`` (``kind`` "fwd"; "rot" for the gradient with
    respect to the input: rotated 180 degrees, C and K swapped) as ``nsplit`` slices of
    output channels, (nsplit, alpha^2, C, kp), kp = ceil(K / nsplit) rounded up to a
    ``multiple``, zero-padded; cached."""
    def build():
        g = w if kind == "fwd" else np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
        U = _transformed_filter(m, g)
        kp = -(-U.shape[2] // nsplit)
        kp = -(-kp // multiple) * multiple
        if nsplit == 1 and kp == U.shape[2]:
            return U[None]
        Uk = np.zeros((nsplit, *U.shape[:2], kp), U.dtype)
        for part in range(nsplit):
            piece = U[:, :, part * kp:part * kp + kp]
            Uk[part, :, :, :piece.shape[2]] = piece
        return Uk
    return _filters.get(w, ("winograd", kind, m, nsplit, multiple), build)


def _winograd(plan, m, x, w, kind, y, off_h, off_w, ep):
    """Stride-1 3x3 correlation ``y[n, k, p, q] = sum x[n, c, p + off_h + r, q + off_w + s]
    * g[k, c, r, s]`` (zeros outside x) with F(m x m, 3x3), where g is ``w`` (``kind``
    "fwd") or ``w`` rotated with C and K swapped ("rot"); x (N, C, H, W) C-contiguous,
    y (N, K, P, Q) filled; by the plan's variant (``fastconv._plan._winograd``), with
    the epilogue ``ep`` (``fastconv.kernels.epilogue``) in the output transform's
    stores. A channels-last plan (``plan.layout`` "nhwc"): x (N, H, W, C), y and the
    residual (N, P, Q, K), read and written in place."""
    cl = plan.layout == "nhwc"
    if cl:
        N, C, K, P, Q = x.shape[0], x.shape[3], y.shape[3], y.shape[1], y.shape[2]
    else:
        N, C = x.shape[:2]
        K, P, Q = y.shape[1:]
    alpha2 = (m + 2) ** 2
    th, tw = plan["tiles"]
    Hp, Wp = m * th + 2, m * tw + 2
    nthreads = plan.threads
    if plan.variant == "streamed":
        J, TB = GEMM_BLOCK
        nt = N * th * tw
        rows = -(-nt // TB) * TB                    # the GEMMs' rows: whole blocks
        CB = plan["channels"]
        Xp = _buffer("X", (N, Hp, Wp, C), x.dtype)
        V = _buffer("V", (alpha2, rows, C), x.dtype)
        M = _buffer("M", (alpha2, rows, -(-K // J) * J), x.dtype)
        with one_thread(plan["serial"]):
            _to_channels_last(x, Xp, off_h, off_w, cl)
            V[:, nt:] = 0
            _transform_tiles(Xp, V, nt, m, 0, th, tw, False)
            Vc = _buffer("Vc", (-(-C // CB), alpha2, rows, CB), x.dtype)
            _by_chunks(V, Vc, CB)
        _run(_streamed_items, M.shape[2] // J, Vc, np.ascontiguousarray(w).reshape(-1), M, K,
             kind == "rot", codegen.kernel("gemm_acc", rows=TB, cols=J))
        with one_thread(plan["serial"]):
            _output_tiles(M, nt, y, m, 0, th, tw, *ep, cl)
        return
    if plan.variant in ("fused", "split"):
        Uk = _filter(m, w, kind, plan["filter_slices"])
        # a block's V and M stay near the thread's L2
        R, G = plan["block_rows"], plan["images"]
        Sb = _buffer("X", (nthreads, 1, m * R + 2, Wp, C), x.dtype)
        Vb = _buffer("V", (nthreads, alpha2, G * R * tw, C), x.dtype)
        Mb = _buffer("M", (nthreads, alpha2, G * R * tw, Uk.shape[3]), x.dtype)
        Tb = _buffer("T", (nthreads, m + 2, m + 2, max(C, Uk.shape[3])), x.dtype)
        Ob = _buffer("O", (nthreads, m * R, m * tw, Uk.shape[3]), x.dtype)
        with single_threaded_blas():
            _fused(x, Uk, y, m, th, tw, off_h, off_w, R, G, Sb, Vb, Mb, Tb, Ob, *ep, cl)
        return
    # unfused: our GEMM kernel (float32, K padded to its columns), or BLAS (unfused_blas)
    TB, J = plan["gemm_block"]
    own = plan.variant == "unfused"
    U = _filter(m, w, kind, 1, J)[0]             # (alpha^2, C, K rounded up to J)
    group, tb = plan["images"], plan["tile_batch"]
    Xp = _buffer("X", (group, Hp, Wp, C), x.dtype)
    for n0 in range(0, N, group):
        n1 = min(N, n0 + group)
        _to_channels_last(x[n0:n1], Xp[:n1 - n0], off_h, off_w, cl)
        for t0 in range(0, (n1 - n0) * th * tw, tb):
            nt = min(tb, (n1 - n0) * th * tw - t0)
            rows = -(-nt // TB) * TB                # the GEMMs' rows: whole blocks
            V = _buffer("V", (alpha2, rows, C), x.dtype)
            M = _buffer("M", (alpha2, rows, U.shape[2]), x.dtype)
            V[:, nt:] = 0
            _transform_tiles(Xp[:n1 - n0], V, nt, m, t0, th, tw, False)
            if own:
                _gemm(V, U, M, plan["gemm_rows_bytes"])
            else:
                _matmul(V, U, M)
            _output_tiles(M, nt, y[n0:n1], m, t0, th, tw, *ep.images(n0, n1, K * P * Q), cl)


@jit(parallel=True)
def _batched_dot(A, B, out, transpose_a):
    """out[x] = A[x] @ B[x] (A[x]^T with ``transpose_a``) for every x: one BLAS call per x
    on each thread."""
    for xi in prange(out.shape[0]):
        if transpose_a:
            np.dot(A[xi].T, B[xi], out[xi])
        else:
            np.dot(A[xi], B[xi], out[xi])


def _matmul(A, B, out, transpose_a=False):
    """out[x] = A[x] @ B[x] (A[x] transposed with ``transpose_a``), returns out. On 2 or
    more threads the threads share out the alpha^2 products, each a one-thread BLAS call
    (numpy's batched matmul on OpenBLAS's threads is slower on these many small
    products); on one thread numpy's matmul (faster than Numba's calls there)."""
    if get_num_threads() > 1:
        with single_threaded_blas():
            _batched_dot(A, B, out, transpose_a)
    else:
        np.matmul(A.transpose(0, 2, 1) if transpose_a else A, B, out=out)
    return out


def _gemm(V, U, M, rows_bytes):
    """M[x] = V[x] @ U[x] for every x, float32, on all threads, by the generated kernel
    (``codegen.gemm.gemm``); V's rows a multiple of its row block, U's and M's
    columns of its column block. It reads V and U in place, where BLAS packs both per
    call, which costs most with few tiles."""
    J, TB = GEMM_BLOCK
    X, T, C = V.shape
    Kp = U.shape[2]
    ntb = T // TB
    CH = max(1, min(ntb, rows_bytes // (TB * C * V.itemsize)))
    _run(codegen.kernel("gemm", rows=TB, cols=J), X * -(-ntb // CH) * (Kp // J) * CH,
         V.reshape(-1), U.reshape(-1), M.reshape(-1), X, T, C, Kp, CH, np.float32(0))


def _weight_filter(m, dU, dw, serial):
    """dw = G^T (dU[0] + dU[1] + ...) G (``_filter_t2/4``), on one thread if ``serial``."""
    with one_thread(serial):
        _FILTERS[m][1](dU, dw)


def _winograd_weight(plan, m, x, dy, dw, off_h, off_w):
    """dw[k, c, r, s] = sum dy[n, k, p, q] * x[n, c, p + off_h + r, q + off_w + s] with
    F(m x m, 3x3) transposed: dU[xi] = sum over tiles of (A dy A^T)[xi]^T (B^T x B)[xi]
    (alpha^2 GEMMs [K x tiles] x [tiles x C]), then dw = G^T dU G. The fused path's sums
    and their order follow from the shape alone: the same result on any thread count."""
    N, C = x.shape[:2]
    K, P, Q = dy.shape[1:]
    alpha2 = (m + 2) ** 2
    th, tw = plan["tiles"]
    Hp, Wp = m * th + 2, m * tw + 2
    if plan.variant == "fused":
        # blocks of R tile rows in a fixed number of parts (the tiles each GEMM sums
        # must not depend on the threads)
        R, parts, nthreads = plan["block_rows"], plan["parts"], plan["threads_used"]
        Sb = _buffer("X", (nthreads, 1, m * R + 2, Wp, C), x.dtype)
        Db = _buffer("Y", (nthreads, 1, m * R, Wp - 2, K), x.dtype)
        Vb = _buffer("V", (nthreads, alpha2, R * tw, C), x.dtype)
        Mb = _buffer("M", (nthreads, alpha2, R * tw, K), x.dtype)
        Tb = _buffer("T", (nthreads, m + 2, m + 2, max(C, K)), x.dtype)
        dU = _buffer("U", (parts, alpha2, K, C), x.dtype)
        with single_threaded_blas():
            _fused_weight(x, dy, m, th, tw, off_h, off_w, Sb, Db, Vb, Mb, Tb, dU)
        _weight_filter(m, dU, dw, plan["serial_filter"])
        return
    group, tb = plan["images"], plan["tile_batch"]
    Xp = _buffer("X", (group, Hp, Wp, C), x.dtype)
    D = _buffer("Y", (group, Hp - 2, Wp - 2, K), x.dtype)
    dU = _buffer("U", (1, alpha2, K, C), x.dtype)
    first = True
    for n0 in range(0, N, group):
        n1 = min(N, n0 + group)
        _to_channels_last(x[n0:n1], Xp[:n1 - n0], off_h, off_w, False)
        _to_channels_last(dy[n0:n1], D[:n1 - n0], 0, 0, False)      # zeros past P, Q
        for t0 in range(0, (n1 - n0) * th * tw, tb):
            nt = min(tb, (n1 - n0) * th * tw - t0)
            V = _buffer("V", (alpha2, nt, C), x.dtype)
            dM = _buffer("M", (alpha2, nt, K), x.dtype)
            _transform_tiles(Xp[:n1 - n0], V, nt, m, t0, th, tw, False)
            _transform_tiles(D[:n1 - n0], dM, nt, m, t0, th, tw, True)
            if first:
                _matmul(dM, V, dU[0], transpose_a=True)
                first = False
            else:
                dU[0] += _matmul(dM, V, _buffer("P", (alpha2, K, C), x.dtype), transpose_a=True)
    _weight_filter(m, dU, dw, plan["serial_filter"])


# -- The registry's kernels: run a plan (fastconv._plan._winograd) --------------------------

_TILE = {"winograd_f2": 2, "winograd_f4": 4}


@larger_kernels
def conv2d(plan, x, w, p, out, epilogue=None):
    """Forward convolution into ``out`` (N, K, P, Q), with the ``epilogue`` applied in
    the output transform's stores."""
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
