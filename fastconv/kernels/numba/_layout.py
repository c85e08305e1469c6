"""Layouts shared by the kernels: zero-padded planes (the input of direct's flat and
lanes kernels and of im2col's blocked weight gradient), channels-last blocks of one
image (direct's weight-gradient input) and blocked weights (output channels last:
direct's forward kernels, Winograd's filter transformed on the fly)."""
from numba import prange

from ._jit import jit, one_thread
from ._transpose import transpose_block, transpose_rows


def to_padded(src, dst, Hp, Wq, pt, pl, serial_rows):
    """dst[n, c, hp, wq] = src[n, c, hp - pt, wq - pl] inside src, else 0 (``dst`` flat,
    Hp x Wq planes; negative offsets crop src): a plane per work item, row copies as
    slices (faster than a row per work item, as direct's ``_to_phase`` does, or a
    single-threaded NumPy copy), on one thread below ``serial_rows`` (the plan's ``pad_serial_rows``)
    rows."""
    with one_thread(src.shape[0] * src.shape[1] * Hp < serial_rows):
        _padded(src, dst, Hp, Wq, pt, pl)


@jit(parallel=True)
def _padded(src, dst, Hp, Wq, pt, pl):
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


@jit(parallel=True)
def w_blocked(wf, dst, G, Kg, Kb, Cg, R, S, flip, KB):
    """dst[g, kb, c, r, s, k] = w[g*Kg + kb*KB + k, c, r, s] (0 past the group's Kg); with
    ``flip`` the weight of the input gradient, w[g*Cg + c, kb*KB + k, R-1-r, S-1-s]
    (``w`` is then (K, C/groups, R, S) and Kg, Cg are the swapped counts); ``wf`` and
    ``dst`` flat. A block (g, kb) per work item (``w_block``: block transposes, faster
    than element by element)."""
    for it in prange(G * Kb):
        w_block(wf, dst, it * Cg * R * S * KB, it // Kb, it % Kb, 0, Cg, Kg, Cg, R * S, flip, KB)


@jit(inline="always")
def w_block(wf, dst, do, g, kb, c0, cb, Kg, Cg, RS, flip, KB):
    """dst[do + ((c - c0)*RS + rs)*KB + k] = w[g*Kg + kb*KB + k, c, rs] for the cb input
    channels c from c0 and k < KB (0 past Kg; rs = r*S + s); with ``flip``
    w[g*Cg + c, kb*KB + k, RS-1-rs] (see ``w_blocked``). The rows k of w over the cb*RS
    columns (c, rs) (each c's RS columns, reversed, with ``flip``) are transposed into
    cb*RS rows of KB: by L x L block transposes (``lanes``) where L rows lie inside Kg,
    else element by element."""
    L = 64 // wf.itemsize
    rows = min(KB, Kg - kb * KB)
    n = RS if flip else cb * RS                         # columns per transpose
    for ci in range(cb if flip else 1):
        c = c0 + ci
        so = ((g * Cg + c) * Kg + kb * KB) * RS if flip else ((g * Kg + kb * KB) * Cg + c0) * RS
        ss = RS if flip else Cg * RS                    # w's elements from k to k + 1
        dc = do + ci * n * KB
        for k0 in range(0, KB, L):                      # L rows of w at a time
            for i0 in range(0, n, L):
                m = min(L, n - i0)                      # columns i0.. of w, rows of dst
                # dst row of column i0 + i: i0 + i, or n - 1 - i0 - i with flip
                d0, ds = (dc + (n - 1 - i0) * KB, -KB) if flip else (dc + i0 * KB, KB)
                # the transposes read L columns from each row (past a short row's end
                # into the next: those land in rows past m, not stored)
                if k0 + L <= rows and so + (k0 + L - 1) * ss + i0 + L <= wf.size:
                    transpose_rows(wf, so + k0 * ss + i0, ss, dst, d0 + k0, ds, m)
                    continue
                for i in range(m):
                    for l in range(min(L, KB - k0)):
                        v = wf[so + (k0 + l) * ss + i0 + i] if k0 + l < rows else 0
                        dst[d0 + i * ds + k0 + l] = v


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
