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
Channels-last calls (variants ``nhwc_gemm``, ``nhwc_tiled``) run
``kernels/channels_last.py``, shared with Cython, with the epilogue compiled here.

The weight gradient of layers with many output pixels per patch row (a 7x7 RGB stem:
12544 pixels, 147 rows) is a long sum of small products, which BLAS splits badly. There
no patch matrix is gathered: the input is copied zero-padded, the pixels are split into
a fixed number of slices, each with its own accumulator, and per band of output rows a
slice copies dy pixel-major (a block small enough for L1) and runs a one-thread
register-tiled GEMM (``codegen``'s ``patch_gemm``) that reads the patch rows in
place from the padded input (``_weight_fused``): gathering a patch matrix and copying
dy whole cost about as much as the multiplications.
"""
import numpy as np
from numba import prange

from ..._config import get_workspace_limit, workspace, workspace_array
from .. import channels_last, image_gemm
from ..epilogue import none
from . import codegen
from ._epilogue import planes as _planes, rows as _rows
from ._jit import jit
from ._layout import to_padded
from ._ranges import valid_range
from ._threads import run as _run
from ._transpose import transpose_block

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
    """dx[n0 + t] += the patches in ``col`` (output rows p0 .. p0 + pr of nt images) added
    back where they were gathered from. Stride 1 along the columns: each tap's run of Q
    values adds to a run of dx. Larger strides: a dx row is summed as its ``sw`` column
    phases (every tap's run adds to a run of one phase) and the phases are then added
    to the row interleaved (faster than a strided scatter per tap; stride 1 keeps the
    direct adds, which the phase buffer would only slow down)."""
    Wph = (W + sw - 1) // sw                       # columns per phase
    for tc in prange(nt * C):                      # one (image, channel) plane each
        t, c = tc // C, tc % C
        if sw == 1:
            for r in range(R):
                for s in range(S):
                    row = (c * R + r) * S + s
                    off = s * dw - pl
                    q_lo, q_hi = valid_range(Q, W, 1, off)
                    for i in range(pr):
                        h = (p0 + i) * sh - pt + r * dh
                        if h < 0 or h >= H:
                            continue
                        base = (t * pr + i) * Q
                        for q in range(q_lo, q_hi):
                            dx[n0 + t, c, h, q + off] += col[row, base + q]
            continue
        ph = np.empty((sw, Wph), col.dtype)
        h_lo = max(0, p0 * sh - pt)
        h_hi = min(H, (p0 + pr - 1) * sh - pt + (R - 1) * dh + 1)
        for h in range(h_lo, h_hi):
            ph[:] = 0
            for r in range(R):
                hh = h + pt - r * dh               # = (p0 + i) * sh for the row i it came from
                if hh % sh != 0 or not (0 <= hh // sh - p0 < pr):
                    continue
                base = (t * pr + hh // sh - p0) * Q
                for s in range(S):
                    row = (c * R + r) * S + s
                    off = s * dw - pl              # dx column q*sw + off: phase b, index q + j0
                    b = off % sw
                    j0 = (off - b) // sw
                    q_lo, q_hi = valid_range(Q, W, sw, off)
                    dst = ph[b, q_lo + j0:q_hi + j0]
                    src = col[row, base + q_lo:base + q_hi]
                    for q in range(q_hi - q_lo):
                        dst[q] += src[q]
            out = dx[n0 + t, c, h]
            if sw == 2:
                for j in range(W // 2):
                    out[2 * j] += ph[0, j]
                    out[2 * j + 1] += ph[1, j]
                if W % 2:
                    out[W - 1] += ph[0, W // 2]
            else:
                for w in range(W):
                    out[w] += ph[w % sw, w // sw]


# Not cached (compiled once per process): a cached caller of the
# generated GEMM would name the generated module of its first compile, which a changed
# generator renames.
@jit(cache=False)
def _weight_fused(xp, dy, offs, sh, sw, Db, Ab, gemm, it0, it1):
    """The weight gradient, sum over images and output pixels of patches x dy^T, with
    the patches read in place from the zero-padded input ``xp`` (``_layout.to_padded``), in
    ``len(Ab)`` slices of the (image, band of output rows) items: slice t adds its items
    into its own accumulator ``Ab[t]`` (G, rows, K/G rounded up), patch row i of group g
    in ``[g, i]``. ``offs[g, i]`` is the offset of patch row i of group g in an image
    at output pixel (0, 0); the next pixel is ``sw`` further, the next row ``sh`` rows.

    Item (image n, band of ``pr`` output rows): the slice copies the band of dy,
    pixel-major, into its ``Db[t]`` (by block transposes) and runs ``gemm`` (a
    one-thread GEMM that reads the patch rows from ``xp``) per group. Slices, not
    threads, own the accumulators, so the result does not depend on the thread count;
    ``_threads.run`` runs slices [it0, it1)."""
    nslices, G, cols, Kgp = Db.shape
    rows = Ab.shape[2]
    N, K, P, Q = dy.shape
    Kg, pr = K // G, cols // Q
    nbands = (P + pr - 1) // pr
    nitems = N * nbands
    image, pitch = xp[0].size, sh * xp.shape[3]
    L = 64 // dy.itemsize                           # lanes(dtype)
    dyf, xf = dy.reshape(dy.size), xp.reshape(xp.size)
    for t in range(it0, it1):
        D, A = Db[t], Ab[t]
        Df, Af = D.reshape(D.size), A.reshape(A.size)
        A[...] = 0
        D[...] = 0                                  # the padding columns stay zero
        for item in range(nitems * t // nslices, nitems * (t + 1) // nslices):
            n, p0 = item // nbands, item % nbands * pr
            nb = min(pr, P - p0)                    # output rows in the band
            for g in range(G):
                for i in range(nb):
                    if Kg % L == 0 and Q >= L:      # L x L block transposes
                        so = ((n * K + g * Kg) * P + p0 + i) * Q
                        do = (g * cols + i * Q) * Kgp
                        for k0 in range(0, Kg, L):
                            for qb in range(0, Q, L):   # the last block overlaps
                                q = min(qb, Q - L)
                                transpose_block(dyf, so + k0 * P * Q + q, P * Q, Df,
                                                do + q * Kgp + k0, Kgp)
                        continue
                    for q in range(Q):
                        for k in range(Kg):
                            D[g, i * Q + q, k] = dy[n, g * Kg + k, p0 + i, q]
                gemm(xf, n * image + p0 * pitch, offs[g], Df, g * cols * Kgp, Af,
                     g * rows * Kgp, rows, Kgp, nb, Q, pitch, sw)


def _tiles(plan, p):
    """(n0, nt, p0, pr) tiles of the plan's (images, output rows) tile: whole images,
    or bands of one image's output rows."""
    nt, pr = plan["tile"]
    if pr == p.P:
        for n0 in range(0, p.N, nt):
            yield n0, min(nt, p.N - n0), 0, p.P
    else:
        for n0 in range(p.N):
            for p0 in range(0, p.P, pr):
                yield n0, 1, p0, min(pr, p.P - p0)


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


def _buffers(plan, p, dtype):
    """Flat buffers for the largest tile's patch matrix and GEMM result (reused)."""
    nt, pr = plan["tile"]
    cols = min(nt, p.N) * pr * p.Q
    return (workspace("im2col.col", p.C * p.R * p.S * cols, dtype),
            workspace("im2col.res", p.K * cols, dtype))


def _patches(plan, x, p, colbuf):
    """For each tile, ``(n0, nt, p0, pr, col)`` with ``col`` its (G, C/G*R*S, cols)
    patch matrix, gathered into ``colbuf``."""
    G, CgRS = p.groups, (p.C // p.groups) * p.R * p.S
    for n0, nt, p0, pr in _tiles(plan, p):
        cols = nt * pr * p.Q
        col = colbuf[:p.C * p.R * p.S * cols].reshape(G, CgRS, cols)
        _im2col(x, col.reshape(-1, cols), n0, nt, p0, pr, *_geometry_args(p))
        yield n0, nt, p0, pr, col


def conv2d(plan, x, w, p, out, epilogue=None):
    """Forward convolution into ``out`` (N, K, P, Q), with the ``epilogue``
    (``kernels.epilogue``) applied to each tile right after its GEMM, while it is in
    cache (BLAS writes the products; the epilogue cannot go into its store)."""
    if plan.variant in channels_last.VARIANTS:  # x (N, H, W, C), out (N, P, Q, K)
        ep = none(x.dtype) if epilogue is None else epilogue
        channels_last.conv2d(plan, x, w, p, out, None if ep.empty else lambda r0, r1: _rows(
            out.reshape(-1), r0, r1, p.K, *ep))
        return
    G, Kg, CgRS = p.groups, p.K // p.groups, (p.C // p.groups) * p.R * p.S
    wmat = w.reshape(G, Kg, CgRS)
    ep = none(x.dtype) if epilogue is None else epilogue
    of = out.reshape(-1)

    def finish(src, n0, nt, p0, pr):
        """The epilogue of a tile: copied from ``src`` (K, nt, pr*Q), or in place (None)."""
        _planes(of, of if src is None else src.reshape(-1), src is None, n0, nt, p.K, p.P,
                p.Q, p0, pr, ep.bias, ep.residual, ep.act)

    if plan.variant == "batch_gemm":
        res = np.matmul(wmat, _batch_major(x, G, "xt"), out=_buffer("res", (G, Kg, p.N * p.P * p.Q), x.dtype))
        if ep.empty:
            _from_batch_major(res, out)
        else:                                           # the transposing copy applies it
            finish(res, 0, p.N, 0, p.P)
        return
    if plan.variant == "image_gemm":
        image_gemm.forward(x, w, p, out,
                           None if ep.empty else lambda n: finish(None, n, 1, 0, p.P))
        return
    colbuf, resbuf = _buffers(plan, p, x.dtype)
    for n0, nt, p0, pr, col in _patches(plan, x, p, colbuf):
        cols = col.shape[2]
        if nt == 1 and pr == p.P:                       # one whole image: GEMM writes NCHW
            np.matmul(wmat, col, out=out[n0].reshape(G, Kg, cols))
            if not ep.empty:
                finish(None, n0, 1, 0, p.P)
        else:
            res = np.matmul(wmat, col, out=resbuf[:p.K * cols].reshape(G, Kg, cols))
            if ep.empty:
                out[n0:n0 + nt, :, p0:p0 + pr] = res.reshape(p.K, nt, pr, p.Q).transpose(1, 0, 2, 3)
            else:
                finish(res, n0, nt, p0, pr)


def conv2d_input(plan, dy, w, p, out):
    """Gradient with respect to the input, into ``out`` (N, C, H, W): GEMM then col2im."""
    G, Kg, CgRS = p.groups, p.K // p.groups, (p.C // p.groups) * p.R * p.S
    wT = w.reshape(G, Kg, CgRS).transpose(0, 2, 1)
    if plan.variant == "batch_gemm":
        res = np.matmul(wT, _batch_major(dy, G, "dyt"), out=_buffer("res", (G, CgRS, p.N * p.P * p.Q), dy.dtype))
        _from_batch_major(res, out)
        return
    if plan.variant == "image_gemm":
        image_gemm.input_grad(dy, w, p, out)
        return
    out[...] = 0
    colbuf, resbuf = _buffers(plan, p, dy.dtype)
    for n0, nt, p0, pr in _tiles(plan, p):
        cols = nt * pr * p.Q
        dyt = resbuf[:p.K * cols].reshape(p.K, nt, pr, p.Q)
        dyt[...] = dy[n0:n0 + nt, :, p0:p0 + pr].transpose(1, 0, 2, 3)
        col = np.matmul(wT, dyt.reshape(G, Kg, cols),
                        out=colbuf[:p.C * p.R * p.S * cols].reshape(G, CgRS, cols))
        _col2im(col.reshape(-1, cols), out, n0, nt, p0, pr, *_geometry_args(p))


def conv2d_weight(plan, x, dy, p, out):
    """Gradient with respect to the weight, into ``out`` (K, C/groups, R, S)."""
    G, Kg, CgRS = p.groups, p.K // p.groups, (p.C // p.groups) * p.R * p.S
    if plan.variant == "batch_gemm":
        np.matmul(_batch_major(dy, G, "dyt"), _batch_major(x, G, "xt").transpose(0, 2, 1),
                  out=out.reshape(G, Kg, CgRS))
    elif plan.variant == "patch_gemm":
        _weight_blocked(plan, x, dy, p, out)
    elif plan.variant == "image_gemm":
        image_gemm.weight_grad(x, dy, p, out)
    else:                                       # one GEMM per tile, BLAS's threads
        acc = np.zeros((G, Kg, CgRS), x.dtype)
        colbuf, resbuf = _buffers(plan, p, x.dtype)
        for n0, nt, p0, pr, col in _patches(plan, x, p, colbuf):
            cols = col.shape[2]
            if nt == 1 and pr == p.P:
                dyt = dy[n0].reshape(G, Kg, cols)
            else:
                dyt = resbuf[:p.K * cols].reshape(p.K, nt, pr, p.Q)
                dyt[...] = dy[n0:n0 + nt, :, p0:p0 + pr].transpose(1, 0, 2, 3)
            acc += np.matmul(dyt.reshape(G, Kg, cols), col.transpose(0, 2, 1))
        out[...] = acc.reshape(out.shape)


def _weight_blocked(plan, x, dy, p, out):
    """The weight gradient by ``_weight_fused``: the generated GEMM reads the patch rows
    in place from the zero-padded input, adding into one accumulator per slice of the
    pixels (summed at the end, in a fixed order)."""
    G, Kg, CgRS = p.groups, p.K // p.groups, (p.C // p.groups) * p.R * p.S
    TB, J = plan["block"]
    gemm = codegen.kernel("patch_gemm", rows=TB, cols=J)
    pr = plan["band_rows"]
    rows, Kgp = -(-CgRS // TB) * TB, -(-Kg // J) * J
    sh, sw, dh, dw = p.stride_h, p.stride_w, p.dil_h, p.dil_w
    # the padded rows and columns that patches read
    Hp, Wp = (p.P - 1) * sh + (p.R - 1) * dh + 1, (p.Q - 1) * sw + (p.S - 1) * dw + 1
    # patch row (c, r, s) = (row // RS, row // S % R, row % S) of group g starts at
    # padded row r*dh, column s*dw of channel c
    row = np.minimum(np.arange(rows), CgRS - 1)     # padding rows repeat the last
    c = np.arange(G)[:, None] * (p.C // G) + row // (p.R * p.S)
    offs = (c * Hp + row // p.S % p.R * dh) * Wp + row % p.S * dw
    nslices = plan["slices"]
    D = _buffer("D", (nslices, G, pr * p.Q, Kgp), x.dtype)
    A = _buffer("A", (nslices, G, rows, Kgp), x.dtype)
    group = max(1, min(p.N, get_workspace_limit() // (p.C * Hp * Wp * x.itemsize)))
    xp = _buffer("padded", (group, p.C, Hp, Wp), x.dtype)
    dy = np.ascontiguousarray(dy)
    acc = _buffer("acc", (G, rows, Kgp), x.dtype)
    for n0 in range(0, p.N, group):              # images whose padded copies fit the bound
        n1 = min(p.N, n0 + group)
        to_padded(x[n0:n1], xp.reshape(-1), Hp, Wp, p.pad_top, p.pad_left,
                  plan["pad_serial_rows"])
        _run(_weight_fused, nslices, xp[:n1 - n0], dy[n0:n1], offs, sh, sw, D, A, gemm)
        if n0 == 0:
            np.sum(A, axis=0, out=acc)
        else:
            acc += A.sum(axis=0)
    out.reshape(G, Kg, CgRS)[...] = acc[:, :CgRS, :Kg].transpose(0, 2, 1)


def _buffer(slot, shape, dtype):
    return workspace_array("im2col." + slot, shape, dtype)
