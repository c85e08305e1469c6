"""Max and average pooling, forward and backward: one (image, channel) plane per
parallel iteration (channels-last adaptive average pooling: one output pixel, every
channel), so no two iterations write the same memory.

Window (i, j) reads input rows ``i*sh - ph + a*dh`` and columns ``j*sw - pw + b*dw``;
positions outside the input are skipped (max) or counted by the divisor rule (avg).
No fastmath: max pooling must see NaN.
"""
import numpy as np
from numba import prange

from ._jit import jit
from ._ranges import valid_range


@jit(inline="always")
def _tap_range(i, s, pad, d, k, size):
    """Window i's start and the taps a in [a_lo, a_hi) whose position i*s - pad + a*d
    is in [0, size)."""
    start = i * s - pad
    a_lo, a_hi = valid_range(k, size, d, start)
    return start, a_lo, a_hi


@jit()
def _tap_ranges(out, s, pad, d, k, size):
    """Per window i: (start, a_lo, a_hi) as in ``_tap_range``, computed once per call
    (its divisions would otherwise run for every output)."""
    r = np.empty((out, 3), np.int64)
    for i in range(out):
        r[i, 0], r[i, 1], r[i, 2] = _tap_range(i, s, pad, d, k, size)
    return r


@jit(parallel=True)
def _max_pool2d(x, out, indices, N, C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, P, Q):
    rows = _tap_ranges(P, sh, ph, dh, kh, H)
    cols = _tap_ranges(Q, sw, pw, dw, kw, W)
    for nc in prange(N * C):
        n, c = nc // C, nc % C
        for i in range(P):
            h0, a_lo, a_hi = rows[i, 0], rows[i, 1], rows[i, 2]
            for j in range(Q):
                w0, b_lo, b_hi = cols[j, 0], cols[j, 1], cols[j, 2]
                h = h0 + a_lo * dh
                best = x[n, c, h, w0 + b_lo * dw]            # first valid tap
                best_idx = h * W + w0 + b_lo * dw
                for a in range(a_lo, a_hi):
                    h = h0 + a * dh
                    for b in range(b_lo, b_hi):
                        v = x[n, c, h, w0 + b * dw]
                        # larger, or NaN (as PyTorch); branch-free: on real data the
                        # comparison is unpredictable and a branch costs ~15 cycles
                        take = (v > best) | (v != v)
                        best = v if take else best
                        best_idx = h * W + w0 + b * dw if take else best_idx
                out[n, c, i, j] = best
                indices[n, c, i, j] = best_idx


@jit(parallel=True)
def _max_pool2d_values(x, out, N, C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, P, Q):
    """``_max_pool2d`` without the indices (none asked for): each output row starts as
    its windows' first valid taps, then takes the max over the tap rows one by one."""
    rows = _tap_ranges(P, sh, ph, dh, kh, H)
    cols = _tap_ranges(Q, sw, pw, dw, kw, W)
    for nc in prange(N * C):
        n, c = nc // C, nc % C
        for i in range(P):
            h0, a_lo, a_hi = rows[i, 0], rows[i, 1], rows[i, 2]
            for j in range(Q):
                out[n, c, i, j] = x[n, c, h0 + a_lo * dh, cols[j, 0] + cols[j, 1] * dw]
            for a in range(a_lo, a_hi):
                h = h0 + a * dh
                for j in range(Q):
                    w0, b_lo, b_hi = cols[j, 0], cols[j, 1], cols[j, 2]
                    best = out[n, c, i, j]
                    for b in range(b_lo, b_hi):
                        v = x[n, c, h, w0 + b * dw]
                        take = (v > best) | (v != v)
                        best = v if take else best
                    out[n, c, i, j] = best


@jit(parallel=True)
def _max_pool2d_backward(dy, indices, dx, N, C, W, P, Q):
    for nc in prange(N * C):
        n, c = nc // C, nc % C
        dx[n, c] = 0
        for i in range(P):
            for j in range(Q):
                idx = indices[n, c, i, j]
                dx[n, c, idx // W, idx % W] += dy[n, c, i, j]


@jit(inline="always")
def _avg_window(i, j, H, W, kh, kw, sh, sw, ph, pw, count_include_pad, divisor_override):
    """Clipped window [h0, h1) x [w0, w1) and its divisor (PyTorch's rule)."""
    h0, w0 = i * sh - ph, j * sw - pw
    h1, w1 = min(h0 + kh, H + ph), min(w0 + kw, W + pw)
    padded_count = (h1 - h0) * (w1 - w0)
    h0, w0, h1, w1 = max(h0, 0), max(w0, 0), min(h1, H), min(w1, W)
    if divisor_override > 0:
        div = divisor_override
    elif count_include_pad:
        div = padded_count
    else:
        div = (h1 - h0) * (w1 - w0)
    return h0, h1, w0, w1, div


@jit(parallel=True)
def _avg_pool2d(x, out, count_include_pad, divisor_override,
                N, C, H, W, kh, kw, sh, sw, ph, pw, P, Q):
    for nc in prange(N * C):
        n, c = nc // C, nc % C
        for i in range(P):
            for j in range(Q):
                h0, h1, w0, w1, div = _avg_window(i, j, H, W, kh, kw, sh, sw, ph, pw,
                                                  count_include_pad, divisor_override)
                acc = 0.0
                for h in range(h0, h1):
                    for w in range(w0, w1):
                        acc += x[n, c, h, w]
                out[n, c, i, j] = acc / div


@jit(parallel=True)
def _avg_pool2d_backward(dy, dx, count_include_pad, divisor_override,
                         N, C, H, W, kh, kw, sh, sw, ph, pw, P, Q):
    for nc in prange(N * C):
        n, c = nc // C, nc % C
        dx[n, c] = 0
        for i in range(P):
            for j in range(Q):
                h0, h1, w0, w1, div = _avg_window(i, j, H, W, kh, kw, sh, sw, ph, pw,
                                                  count_include_pad, divisor_override)
                g = dy[n, c, i, j] / div
                for h in range(h0, h1):
                    for w in range(w0, w1):
                        dx[n, c, h, w] += g


@jit(parallel=True)
def _adaptive_avg_pool2d(x, out, h_starts, h_ends, w_starts, w_ends):
    N, C = x.shape[0], x.shape[1]
    for nc in prange(N * C):
        n, c = nc // C, nc % C
        for i in range(h_starts.size):
            for j in range(w_starts.size):
                acc = 0.0
                for h in range(h_starts[i], h_ends[i]):
                    for w in range(w_starts[j], w_ends[j]):
                        acc += x[n, c, h, w]
                out[n, c, i, j] = acc / ((h_ends[i] - h_starts[i]) * (w_ends[j] - w_starts[j]))


@jit(parallel=True)
def _adaptive_avg_pool2d_nhwc(x, out, h_starts, h_ends, w_starts, w_ends):
    """Channels last, x (N, H, W, C) into out (N, P, Q, C): one output pixel (every
    channel) per parallel iteration, summed in the NCHW kernel's order."""
    N, C = x.shape[0], x.shape[3]
    P, Q = h_starts.size, w_starts.size
    for it in prange(N * P * Q):
        n, i, j = it // (P * Q), it // Q % P, it % Q
        acc = np.zeros(C)
        for h in range(h_starts[i], h_ends[i]):
            for w in range(w_starts[j], w_ends[j]):
                for c in range(C):
                    acc[c] += x[n, h, w, c]
        count = (h_ends[i] - h_starts[i]) * (w_ends[j] - w_starts[j])
        for c in range(C):
            out[n, i, j, c] = acc[c] / count


@jit(parallel=True)
def _max_pool2d_nhwc(x, out, N, C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, P, Q):
    """Channels last, values only: x (N, H, W, C) into out (N, P, Q, C), an output row
    per parallel iteration; each pixel from its first valid tap, then the later taps in
    scan order (NaN wins, as in the NCHW kernel)."""
    for it in prange(N * P):
        n, i = it // P, it % P
        h0 = i * sh - ph
        for j in range(Q):
            w0 = j * sw - pw
            first = True
            for a in range(kh):
                h = h0 + a * dh
                if h < 0 or h >= H:
                    continue
                for b in range(kw):
                    w = w0 + b * dw
                    if w < 0 or w >= W:
                        continue
                    if first:
                        for c in range(C):
                            out[n, i, j, c] = x[n, h, w, c]
                        first = False
                    else:
                        for c in range(C):
                            v = x[n, h, w, c]
                            if v > out[n, i, j, c] or v != v:
                                out[n, i, j, c] = v


# -- the registry's kernels: (plan, the reference's arguments) ----------------------------


def max_pool2d(plan, x, p, out, indices):
    """Values into ``out`` and, unless ``indices`` is None, flat indices into it;
    ``plan.layout`` "nhwc" (values only): x (N, H, W, C) into out (N, P, Q, C)."""
    if plan.layout == "nhwc":
        _max_pool2d_nhwc(x, out, *p.as_tuple())
        return
    if indices is None:
        _max_pool2d_values(x, out, *p.as_tuple())
    else:
        _max_pool2d(x, out, indices, *p.as_tuple())


def max_pool2d_backward(plan, dy, indices, p, out):
    _max_pool2d_backward(dy, indices, out, p.N, p.C, p.W, p.P, p.Q)


def _avg_args(p):
    return (p.N, p.C, p.H, p.W, p.kernel_h, p.kernel_w, p.stride_h, p.stride_w,
            p.pad_h, p.pad_w, p.P, p.Q)


def avg_pool2d(plan, x, p, count_include_pad, divisor_override, out):
    _avg_pool2d(x, out, bool(count_include_pad), int(divisor_override or 0), *_avg_args(p))


def avg_pool2d_backward(plan, dy, p, count_include_pad, divisor_override, out):
    _avg_pool2d_backward(dy, out, bool(count_include_pad), int(divisor_override or 0),
                         *_avg_args(p))


def adaptive_avg_pool2d(plan, x, h_windows, w_windows, out):
    """``plan.layout`` "nhwc": x (N, H, W, C) into out (N, P, Q, C), channels last."""
    if plan.layout == "nhwc":
        _adaptive_avg_pool2d_nhwc(x, out, *h_windows, *w_windows)
    else:
        _adaptive_avg_pool2d(x, out, *h_windows, *w_windows)
