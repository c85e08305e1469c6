"""Zero-padded planes, the layout that direct's flat and lanes kernels and im2col's
blocked weight gradient read their input from, and channels-last blocks of one image,
direct's weight-gradient input."""
from numba import prange

from ..._config import jit
from ._transpose import transpose_block


@jit(parallel=True)
def to_padded(src, dst, Hp, Wq, pt, pl):
    """dst[n, c, hp, wq] = src[n, c, hp - pt, wq - pl] inside src, else 0 (``dst`` flat,
    Hp x Wq planes; negative offsets crop src): a plane per work item, row copies as
    slices (1.4-1.6x faster than direct's ``_to_phase``, a row per work item, on res3 at
    N=4 and 8; a single-threaded NumPy copy ran 0.96-0.97x there on 2 threads)."""
    N, C, Hs, Ws = src.shape
    lo, hi = max(0, -pl), min(Ws, Wq - pl)               # the columns of src kept
    h0, h1 = max(0, min(Hp, pt)), max(0, min(Hp, Hs + pt))   # rows hp holding src rows
    for nc in prange(N * C):
        n, c = nc // C, nc % C
        base = nc * Hp * Wq
        dst[base:base + h0 * Wq] = 0
        dst[base + max(h0, h1) * Wq:base + Hp * Wq] = 0
        for hp in range(h0, h1):
            d = base + hp * Wq
            if hi <= lo:
                dst[d:d + Wq] = 0
                continue
            dst[d:d + lo + pl] = 0
            dst[d + lo + pl:d + hi + pl] = src[n, c, hp - pt, lo:hi]
            dst[d + hi + pl:d + Wq] = 0


@jit()
def channels_last_block(src, sf, dst, n, c0, nc):
    """dst[h, w, c] = src[n, c0 + c, h, w] for c < nc, else 0 (channel tail): one block of
    L = ``lanes(dtype)`` channels of one image, channels last, unpadded (``dst`` flat,
    H x W x L; ``sf``: src flat), by block transposes where the block has all its
    channels and rows have at least L columns (the last block of a row overlapping the
    one before). The direct weight gradient's input."""
    N, C, H, W = src.shape
    L = 64 // src.itemsize
    for h in range(H):
        base = h * W * L
        if nc == L and W >= L:
            so = ((n * C + c0) * H + h) * W
            for wb in range(0, W, L):
                w = min(wb, W - L)
                transpose_block(sf, so + w, H * W, dst, base + w * L, L)
            continue
        for w in range(W):
            d = base + w * L
            for c in range(nc):
                dst[d + c] = src[n, c0 + c, h, w]
            dst[d + nc:d + L] = 0
