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

1x1 stride-1 layers need no patch matrix (the planes are one); with small planes and
several images, the batch is copied channels-first and multiplied in one GEMM.

The weight gradient of layers with many output pixels per patch row (a 7x7 RGB stem:
12544 pixels, 147 rows) is a long sum of small products, which BLAS splits badly. There
each thread takes a share of the pixels and works on blocks small enough for its L2:
it copies a band of dy, gathers the block's patch rows from the input split into
stride phases (so every patch row is a run of consecutive elements), and adds a
one-thread GEMM to its own accumulator (``_weight_fused``): in float32 the generated
register-tiled kernel that Winograd uses (``_direct_gen``; 230-260 GFLOP/s on one core
here, where OpenBLAS reached 175), in float64 BLAS.
"""
import numpy as np
from numba import prange

from ..._config import (get_num_threads, get_workspace_limit, jit, single_threaded_blas,
                        workspace, workspace_array)
from . import _direct_gen
from ._ranges import valid_range
from ._threads import run as _run
from ._transpose import transpose_block

_GEMM_COLS, _GEMM_ROWS = _direct_gen.GEMM_BLOCK
_GEMM = getattr(_direct_gen.load(), "gemm_%d_%d" % _direct_gen.GEMM_BLOCK)


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


@jit(parallel=True)
def _phases(x, xs, sh, sw, pt, pl):
    """The zero-padded input split into its stride phases: ``xs[n, c, a*sw + b, i, j] =
    x[n, c, i*sh + a - pt, j*sw + b - pl]`` (0 outside x), so that every row of a patch
    matrix is a run of consecutive elements of one phase plane."""
    C, H, W = x.shape[1:]
    Hph, Wph = xs.shape[3:]
    for nc in prange(x.shape[0] * C):
        n, c = nc // C, nc % C
        for a in range(sh):
            for i in range(Hph):
                h = i * sh + a - pt
                for b in range(sw):
                    dst = xs[n, c, a * sw + b, i]
                    if h < 0 or h >= H:
                        dst[:] = 0
                        continue
                    lo, hi = valid_range(Wph, W, sw, b - pl)
                    dst[:lo] = 0
                    for j in range(lo, hi):
                        dst[j] = x[n, c, h, j * sw + b - pl]
                    dst[hi:] = 0


# Not cached (compiled once per process, about a second): a cached caller of the
# generated GEMM would name the generated module of its first compile, which a changed
# generator renames.
@jit(cache=False)
def _mult_blas(Col, D, T):
    """T = Col @ D by BLAS (one thread)."""
    np.dot(Col, D, T)


@jit(cache=False)
def _mult_own(Col, D, T):
    """T = Col @ D (float32; rows a multiple of ``GEMM_BLOCK[1]``, columns of
    ``GEMM_BLOCK[0]``) by the generated register-tiled GEMM."""
    rows, inner, kp = Col.shape[0], Col.shape[1], D.shape[1]
    _GEMM(Col.reshape(Col.size), D.reshape(D.size), T.reshape(T.size), 1, rows, inner, kp,
          rows // _GEMM_ROWS, np.float32(0), 0, kp // _GEMM_COLS * (rows // _GEMM_ROWS))


@jit(cache=False)
def _weight_fused(xs, dy, Db, Cb, Tb, Ab, mult, R, S, sh, sw, dh, dw, it0, it1):
    """The weight gradient, sum over images and output pixels of patches x dy^T, with
    the patches read from the phase planes ``xs`` (see ``_phases``), into one
    accumulator per thread, ``Ab[t]`` (G, blocks, rb, K/G rounded up): patch row
    ``j*rb' + i`` of group g (rb' the real rows per block) in ``[g, j, i]``.

    Work item (image n, band of ``pr`` output rows, group g, block of patch rows): the
    thread copies the band of dy, pixel-major, into its ``Db`` (once per band, by block
    transposes), the block's patch rows into its ``Cb``, and adds ``mult(Cb, Db[g])``
    (a one-thread GEMM) to the block of its accumulator. "Thread" t in [it0, it1) takes
    the t-th of ``len(Db)`` contiguous ranges of the items, so the threads split the
    sum over pixels (the long dimension of these layers); ``_threads.run`` runs them."""
    nthreads, G, cols, Kgp = Db.shape
    nblocks, rbp = Ab.shape[2], Ab.shape[3]
    N, K, P, Q = dy.shape
    C, Kg = xs.shape[1], K // G
    Cg, pr = C // G, cols // Q
    CgRS, nbands = Cg * R * S, (P + pr - 1) // pr
    rb = (CgRS + nblocks - 1) // nblocks            # real patch rows per block
    nitems = N * nbands * G * nblocks
    L = 64 // dy.itemsize                           # lanes(dtype)
    dyf = dy.reshape(dy.size)
    for t in range(it0, it1):
        D, Col, T, A = Db[t], Cb[t], Tb[t], Ab[t]
        Df = D.reshape(D.size)
        A[...] = 0
        D[...] = 0                                  # the padding columns stay zero
        held = -1                                   # the (n, band) copied into D
        for item in range(nitems * t // nthreads, nitems * (t + 1) // nthreads):
            nb, gj = item // (G * nblocks), item % (G * nblocks)
            g, j = gj // nblocks, gj % nblocks
            n, p0 = nb // nbands, nb % nbands * pr
            if nb != held:
                for gg in range(G):
                    for i in range(pr):
                        if p0 + i >= P:             # rows past P: zeros
                            D[gg, i * Q:i * Q + Q, :Kg] = 0
                            continue
                        if Kg % L == 0 and Q >= L:  # L x L block transposes
                            so = ((n * K + gg * Kg) * P + p0 + i) * Q
                            do = (gg * cols + i * Q) * Kgp
                            for k0 in range(0, Kg, L):
                                for qb in range(0, Q, L):   # the last block overlaps
                                    q = min(qb, Q - L)
                                    transpose_block(dyf, so + k0 * P * Q + q, P * Q, Df,
                                                    do + q * Kgp + k0, Kgp)
                            continue
                        for q in range(Q):
                            for k in range(Kg):
                                D[gg, i * Q + q, k] = dy[n, gg * Kg + k, p0 + i, q]
                held = nb
            for i in range(rbp):                    # patch row j*rb + i of group g
                row = j * rb + i
                if i >= rb or row >= CgRS:
                    Col[i] = 0
                    continue
                c = g * Cg + row // (R * S)
                r, s = (row // S) % R, row % S
                # padded input row p*sh + r*dh is row p + r*dh//sh of phase r*dh % sh
                plane = (r * dh) % sh * sw + (s * dw) % sw
                i0, j0 = (r * dh) // sh, (s * dw) // sw
                for b in range(pr):
                    if p0 + b < P:
                        Col[i, b * Q:b * Q + Q] = xs[n, c, plane, p0 + b + i0, j0:j0 + Q]
                    else:
                        Col[i, b * Q:b * Q + Q] = 0
            mult(Col, D[g], T)
            A[g, j] += T


def _weight_blocks(p, itemsize):
    """(pr, rb): bands of ``pr`` output rows, about WEIGHT_BAND_COLUMNS pixels, and
    blocks of ``rb`` patch rows whose gathered block is at most WEIGHT_BLOCK_BYTES."""
    pr = max(1, min(p.P, WEIGHT_BAND_COLUMNS // p.Q))
    CgRS = (p.C // p.groups) * p.R * p.S
    rb = max(1, min(CgRS, WEIGHT_BLOCK_BYTES // (pr * p.Q * itemsize)))
    nblocks = -(-CgRS // rb)
    return pr, -(-CgRS // nblocks)                  # blocks of even size


#: the weight gradient takes the fused path (``_weight_fused``, the threads split the
#: sum over pixels) when an image has this many output pixels per patch row, where
#: BLAS, which splits the small K x C*R*S result among its threads, does poorly.
#: Against one GEMM per tile of the batch with BLAS's threads, in one process: ResNet
#: conv1 (85 pixels per row) 1.1-1.35x faster; res3 3x3/2 (0.7) 0.8-1.1x, res4, res5
#: (0.1 and less) 0.75-1.0x.
WEIGHT_FUSED_MIN_RATIO = 16
#: ... and at least this many output channels per group (the GEMM's 64 columns; with
#: the 8 of a small MNIST network it ran 1.2-3x slower than one GEMM per tile)
WEIGHT_FUSED_MIN_CHANNELS = 64
WEIGHT_BAND_COLUMNS = 1024
WEIGHT_BLOCK_BYTES = 512 * 1024


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


#: 1x1 layers with planes smaller than this and more than one image run one GEMM over
#: the whole batch, on copies with the channels first (res5 1x1, 7x7 planes, N=8, 2
#: threads: 1.13x PyTorch against 1.01x for one GEMM per image; 14x14: 0.94x
#: against 1.23x)
POINTWISE_ONE_GEMM_BELOW = 100


def _one_gemm(p):
    return p.N > 1 and p.P * p.Q < POINTWISE_ONE_GEMM_BELOW


def _batch_major(a, G, slot):
    """(N, C, H, W) -> a (G, C/G, N*H*W) copy: the batch as one patch matrix."""
    N, C, H, W = a.shape
    t = _buffer(slot, (G, C // G, N, H * W), a.dtype)
    t[...] = a.reshape(N, G, C // G, H * W).transpose(1, 2, 0, 3)
    return t.reshape(G, C // G, N * H * W)


def _from_batch_major(res, out):
    """out (N, C, H, W) from its (G, C/G, N*H*W) form ``res``."""
    N, C, H, W = out.shape
    G = res.shape[0]
    out.reshape(N, G, C // G, H * W)[...] = res.reshape(G, C // G, N, H * W).transpose(2, 0, 1, 3)


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
    patch matrix, gathered into ``colbuf`` (of a 1x1 layer: each image's planes)."""
    G, CgRS = p.groups, (p.C // p.groups) * p.R * p.S
    if _is_pointwise(p):
        for n in range(p.N):
            yield n, 1, 0, p.P, x[n].reshape(G, CgRS, p.H * p.W)
        return
    for n0, nt, p0, pr in _tiles(p, x.itemsize):
        cols = nt * pr * p.Q
        col = colbuf[:p.C * p.R * p.S * cols].reshape(G, CgRS, cols)
        _im2col(x, col.reshape(-1, cols), n0, nt, p0, pr, *_geometry_args(p))
        yield n0, nt, p0, pr, col


def conv2d(x, w, p, out):
    """Forward convolution into ``out`` (N, K, P, Q)."""
    G, Kg, CgRS = p.groups, p.K // p.groups, (p.C // p.groups) * p.R * p.S
    wmat = w.reshape(G, Kg, CgRS)
    if _is_pointwise(p) and _one_gemm(p):
        res = np.matmul(wmat, _batch_major(x, G, "xt"), out=_buffer("res", (G, Kg, p.N * p.P * p.Q), x.dtype))
        _from_batch_major(res, out)
        return
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
    if _is_pointwise(p) and _one_gemm(p):
        res = np.matmul(wT, _batch_major(dy, G, "dyt"), out=_buffer("res", (G, CgRS, p.N * p.P * p.Q), dy.dtype))
        _from_batch_major(res, out)
        return
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
    if _is_pointwise(p) and _one_gemm(p):
        np.matmul(_batch_major(dy, G, "dyt"), _batch_major(x, G, "xt").transpose(0, 2, 1),
                  out=out.reshape(G, Kg, CgRS))
    elif (not _is_pointwise(p) and p.P * p.Q >= WEIGHT_FUSED_MIN_RATIO * CgRS
          and Kg >= WEIGHT_FUSED_MIN_CHANNELS):
        _weight_blocked(x, dy, p, out)
    else:                                       # one GEMM per tile, BLAS's threads
        acc = np.zeros((G, Kg, CgRS), x.dtype)
        colbuf, resbuf = _buffers(p, x.dtype)
        for n0, nt, p0, pr, col in _patches(x, p, colbuf):
            cols = col.shape[2]
            if nt == 1 and pr == p.P:
                dyt = dy[n0].reshape(G, Kg, cols)
            else:
                dyt = resbuf[:p.K * cols].reshape(p.K, nt, pr, p.Q)
                dyt[...] = dy[n0:n0 + nt, :, p0:p0 + pr].transpose(1, 0, 2, 3)
            acc += np.matmul(dyt.reshape(G, Kg, cols), col.transpose(0, 2, 1))
        out[...] = acc.reshape(out.shape)


def _weight_blocked(x, dy, p, out):
    """The weight gradient by ``_weight_fused``: blocks of the patch matrix gathered
    and multiplied where they stay in each thread's cache; in float32 by the generated
    GEMM (Winograd's), in float64 by BLAS."""
    G, Kg, CgRS = p.groups, p.K // p.groups, (p.C // p.groups) * p.R * p.S
    nthreads = get_num_threads()
    own = x.dtype == np.float32
    cols_block, rows_block = (_GEMM_COLS, _GEMM_ROWS) if own else (1, 1)
    pr, rb = _weight_blocks(p, x.itemsize)
    cols = pr * p.Q
    nblocks = -(-CgRS // rb)
    rbp, Kgp = -(-rb // rows_block) * rows_block, -(-Kg // cols_block) * cols_block
    D = _buffer("D", (nthreads, G, cols, Kgp), x.dtype)
    Col = _buffer("col", (nthreads, rbp, cols), x.dtype)
    T = _buffer("T", (nthreads, rbp, Kgp), x.dtype)
    A = _buffer("A", (nthreads, G, nblocks, rbp, Kgp), x.dtype)
    plane = (p.stride_h * p.stride_w, p.P + (p.R - 1) * p.dil_h // p.stride_h,
             p.Q + (p.S - 1) * p.dil_w // p.stride_w)
    group = max(1, min(p.N, get_workspace_limit() // (p.C * int(np.prod(plane)) * x.itemsize)))
    xs = _buffer("phases", (group, p.C) + plane, x.dtype)
    dy = np.ascontiguousarray(dy)
    acc = _buffer("acc", (G, nblocks, rbp, Kgp), x.dtype)
    for n0 in range(0, p.N, group):              # images whose phase planes fit the bound
        n1 = min(p.N, n0 + group)
        _phases(x[n0:n1], xs[:n1 - n0], p.stride_h, p.stride_w, p.pad_top, p.pad_left)
        with single_threaded_blas():
            _run(_weight_fused, nthreads, xs[:n1 - n0], dy[n0:n1], D, Col, T, A,
                 _mult_own if own else _mult_blas, p.R, p.S, p.stride_h, p.stride_w,
                 p.dil_h, p.dil_w)
        if n0 == 0:
            np.sum(A, axis=0, out=acc)
        else:
            acc += A.sum(axis=0)
    # acc[g, j, i, k] holds patch row j*rb + i of output channel g*Kg + k
    out.reshape(G, Kg, CgRS)[...] = acc[:, :, :rb, :Kg].transpose(0, 3, 1, 2).reshape(
        G, Kg, -1)[:, :, :CgRS]


def _buffer(slot, shape, dtype):
    return workspace_array("im2col." + slot, shape, dtype)
