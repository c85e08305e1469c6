"""1x1 layers without padding as NumPy matmuls, for the ``image_gemm`` variant: stride 1,
and the forward and weight gradient of strided layers (every stride-th row and column
copied first). Numba's forward and gradients; Cython's on one thread only, the input
gradient and, in variants narrower than AVX-512, the forward without an epilogue (on
more, NumPy's matmul runs on OpenBLAS's own threads, whose spinning after it slows
Cython's OpenMP loops). Each image's planes
are its patch matrix, so no patches are gathered. The GEMMs are NumPy's ``matmul``
(NumPy's own OpenBLAS; on the Intel Xeon ``rocketlake`` its 0.3.31 ran these streaming
GEMMs 1.1-1.5x faster than SciPy's 0.3.30, which Cython's ``cython_blas`` calls)."""
import numpy as np


def forward(x, w, p, out, per_image=None):
    """out (N, K, P, Q) = the 1x1 convolution without padding of x (N, C, H, W) with w
    (strided: of every stride-th row and column, copied first); with ``per_image`` (the
    backend's epilogue of image n), image by image, each image's epilogue right after
    its GEMM while it is in cache."""
    G, Kg, Cg, HW = p.groups, p.K // p.groups, p.C // p.groups, p.P * p.Q
    if p.stride_h != 1 or p.stride_w != 1:
        x = np.ascontiguousarray(x[:, :, ::p.stride_h, ::p.stride_w])
    wmat = w.reshape(G, Kg, Cg)
    if per_image is None:
        np.matmul(wmat, x.reshape(p.N, G, Cg, HW), out=out.reshape(p.N, G, Kg, HW))
        return
    for n in range(p.N):
        np.matmul(wmat, x[n].reshape(G, Cg, HW), out=out[n].reshape(G, Kg, HW))
        per_image(n)


def input_grad(dy, w, p, out):
    """out (N, C, H, W) = the input gradient of the 1x1 stride-1 convolution: w^T dy."""
    G, Kg, Cg = p.groups, p.K // p.groups, p.C // p.groups
    np.matmul(w.reshape(G, Kg, Cg).transpose(0, 2, 1), dy.reshape(p.N, G, Kg, p.P * p.Q),
              out=out.reshape(p.N, G, Cg, p.H * p.W))


def weight_grad(x, dy, p, out):
    """out (K, C/groups, 1, 1) = the weight gradient of the 1x1 convolution without
    padding: the sum over images of dy[n] x[n]^T, image by image in order (strided: of
    every stride-th row and column of x, copied first)."""
    G, Kg, Cg, HW = p.groups, p.K // p.groups, p.C // p.groups, p.P * p.Q
    if p.stride_h != 1 or p.stride_w != 1:
        x = np.ascontiguousarray(x[:, :, ::p.stride_h, ::p.stride_w])
    acc = out.reshape(G, Kg, Cg)
    xs, dys = x.reshape(p.N, G, Cg, HW), dy.reshape(p.N, G, Kg, HW)
    np.matmul(dys[0], xs[0].transpose(0, 2, 1), out=acc)
    if p.N > 1:
        term = np.empty_like(acc)
        for n in range(1, p.N):
            acc += np.matmul(dys[n], xs[n].transpose(0, 2, 1), out=term)
