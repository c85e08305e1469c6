"""im2col on channels-last data, for both backends' ``nhwc_gemm`` and ``nhwc_tiled``
variants (``fastconv._plan._channels_last``): the forward of one-group layers computed
on (N, H, W, C) input into (N, P, Q, K) output, no layout conversion either way.

Channels last, an output pixel's patch is R rows of S*C consecutive inputs, and the
output is the GEMM ``patches (pixels, R*S*C) @ weight (R*S*C, K)`` with no transpose:

- ``nhwc_gemm`` (1x1, stride 1): the input *is* the patch matrix (N*H*W, C); one GEMM
  per slice of rows (``plan["rows"]``), each slice given its epilogue while it is in
  cache;
- ``nhwc_tiled``: tiles of whole images, or of rows of one image (``plan["tile"]``),
  zero-padded, their patches gathered by one strided copy, then one GEMM.

The GEMMs are NumPy's ``matmul`` (its OpenBLAS), as ``image_gemm.py``'s are; the
backend applies the epilogue (``kernels.epilogue``, its residual flattened in NHWC
order) to the rows just written, while they are in cache. (The Cython backend runs
both with its own kernels, the patches read in place and the epilogue in their stores:
``_pointwise_nhwc`` and ``_conv_nhwc`` in ``im2col.pyx``; this module serves Numba's.)
"""
import numpy as np
from numpy.lib.stride_tricks import as_strided

from .._config import workspace_array
from .layouts import zero_padded_nhwc
from .weight_cache import CACHE

VARIANTS = ("nhwc_gemm", "nhwc_tiled")


def _weight_matrix(w):
    """w (K, C, R, S) as the (R*S*C, K) matrix of channels-last patches, cached."""
    K = w.shape[0]
    return CACHE.get(w, "nhwc_patches",
                     lambda: np.ascontiguousarray(w.transpose(2, 3, 1, 0).reshape(-1, K)))


def conv2d(plan, x, w, p, out, finish=None):
    """out (N, P, Q, K) = the convolution of x (N, H, W, C), both C-contiguous, with w
    (K, C, R, S), one group; ``finish(r0, r1)``, the backend's epilogue, on output
    pixels r0 .. r1 - 1 of the batch right after their GEMM (None: no epilogue)."""
    K = p.K
    y = out.reshape(-1, K)
    if plan.variant == "nhwc_gemm":
        xs = x.reshape(-1, p.C)
        wt = w.reshape(K, p.C).T                    # a transposed view: BLAS reads it as is
        step = plan["rows"]
        for r0 in range(0, len(xs), step):
            r1 = min(r0 + step, len(xs))
            np.matmul(xs[r0:r1], wt, out=y[r0:r1])
            if finish is not None:
                finish(r0, r1)
        return
    wmat = _weight_matrix(w)
    nt, pr = plan["tile"]
    Hp = p.H + p.pad_top + p.pad_bottom
    Wp = p.W + p.pad_left + p.pad_right
    for n0 in range(0, p.N, nt):
        n1 = min(n0 + nt, p.N)
        if p.padded:                                  # reused workspace: no fresh pages
            xp = zero_padded_nhwc(x[n0:n1], p, workspace_array("nhwc_padded",
                                                               (n1 - n0, Hp, Wp, p.C), x.dtype))
        else:
            xp = x[n0:n1]
        for p0 in range(0, p.P, pr):
            p1 = min(p0 + pr, p.P)
            # patches of output rows p0..p1: pixel (n, p, q), tap (r, s), channel c reads
            # padded pixel (p*sh + r*dh, q*sw + s*dw)
            sn, sh_, sw_, sc = xp.strides
            view = as_strided(xp[:, p0 * p.stride_h:],
                              (n1 - n0, p1 - p0, p.Q, p.R, p.S, p.C),
                              (sn, sh_ * p.stride_h, sw_ * p.stride_w, sh_ * p.dil_h,
                               sw_ * p.dil_w, sc), writeable=False)
            rows = slice((n0 * p.P + p0) * p.Q, ((n1 - 1) * p.P + p1) * p.Q)
            patches = workspace_array("nhwc_patches", (rows.stop - rows.start,
                                                       p.R * p.S * p.C), x.dtype)
            patches.reshape(view.shape)[...] = view         # the gathering copy
            np.matmul(patches, wmat, out=y[rows])
            if finish is not None:
                finish(rows.start, rows.stop)
