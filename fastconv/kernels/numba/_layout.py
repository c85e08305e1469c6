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
def channels_last_block(src, sf, dst, n, c0, nc, Hp, Wp, pt, pl):
    """dst[hp, wp, c] = src[n, c0 + c, hp - pt, wp - pl] for c < nc inside src, else 0
    (padding, channel tail): one block of L = ``lanes(dtype)`` channels of one image,
    channels last (``dst`` flat, Hp x Wp x L; ``sf``: src flat), by block transposes
    where the block has all its channels and a row has at least L columns (the last
    block of a row overlapping the one before). The direct weight gradient's input."""
    N, C, Hs, Ws = src.shape
    L = 64 // src.itemsize
    w0, w1 = max(0, -pl), min(Ws, Wp - pl)              # the columns of src kept
    for hp in range(Hp):
        base = hp * Wp * L
        h = hp - pt
        if h < 0 or h >= Hs or w1 <= w0:
            dst[base:base + Wp * L] = 0
            continue
        dst[base:base + (w0 + pl) * L] = 0
        dst[base + (w1 + pl) * L:base + Wp * L] = 0
        if nc == L and w1 - w0 >= L:
            so = ((n * C + c0) * Hs + h) * Ws
            for wb in range(w0, w1, L):
                wq = min(wb, w1 - L)
                transpose_block(sf, so + wq, Hs * Ws, dst, base + (wq + pl) * L, L)
            continue
        for w in range(w0, w1):
            d = base + (w + pl) * L
            for c in range(nc):
                dst[d + c] = src[n, c0 + c, h, w]
            dst[d + nc:d + L] = 0
