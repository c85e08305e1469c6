"""Plain NumPy specification of every fastconv op, forward and backward.

Obviously correct and never optimised: each function loops over kernel taps (or
output positions for pooling) and lets NumPy vectorise over batch and channels. All
arithmetic is done in float64 and the result is written into ``out`` (cast to its
dtype). The signatures are the kernel signatures of the registry (see
``fastconv._dispatch``), so the reference is also a selectable algorithm,
``algorithm="reference"``.

Conventions (see ``fastconv._geometry``): padded input row ``h' = p*stride_h + r*dil_h``
is input row ``h = h' - pad_top``; out-of-range rows and columns read as zero.
"""
import numpy as np

from .kernels.epilogue import Epilogue, apply as apply_epilogue


def _padded(x, p):
    """x in float64, zero-padded by (pad_top, pad_bottom, pad_left, pad_right)."""
    return np.pad(np.asarray(x, np.float64),
                  ((0, 0), (0, 0), (p.pad_top, p.pad_bottom), (p.pad_left, p.pad_right)))


def _window(xp, p, r, s):
    """The (N, C, P, Q) view of padded input read by kernel tap (r, s)."""
    h0, w0 = r * p.dil_h, s * p.dil_w
    return xp[:, :, h0:h0 + p.stride_h * (p.P - 1) + 1:p.stride_h,
              w0:w0 + p.stride_w * (p.Q - 1) + 1:p.stride_w]


def _groups(p):
    """Per group: (input-channel slice, output-channel slice)."""
    Cg, Kg = p.C // p.groups, p.K // p.groups
    return [(slice(g * Cg, (g + 1) * Cg), slice(g * Kg, (g + 1) * Kg)) for g in range(p.groups)]


def conv2d(x, w, p, out, epilogue=None):
    """out[n, k, p, q] = act(sum_{c, r, s} x_pad[n, c, p*sh + r*dh, q*sw + s*dw] * w[k, c, r, s]
    + bias[k] + residual[n, k, p, q]), the ``epilogue``'s parts (``kernels.epilogue``)
    that are present, in float64."""
    xp, w = _padded(x, p), np.asarray(w, np.float64)
    y = np.zeros(p.output_shape)
    for cs, ks in _groups(p):
        for r in range(p.R):
            for s in range(p.S):
                y[:, ks] += np.einsum("ncpq,kc->nkpq", _window(xp[:, cs], p, r, s), w[ks, :, r, s])
    if epilogue is not None:
        apply_epilogue(y, epilogue)
    out[...] = y


def conv2d_input(dy, w, p, out):
    """Gradient of conv2d with respect to its input: scatter each tap back."""
    dy, w = np.asarray(dy, np.float64), np.asarray(w, np.float64)
    dxp = np.zeros((p.N, p.C, p.H + p.pad_top + p.pad_bottom, p.W + p.pad_left + p.pad_right))
    for cs, ks in _groups(p):
        for r in range(p.R):
            for s in range(p.S):
                _window(dxp[:, cs], p, r, s)[...] += np.einsum(
                    "nkpq,kc->ncpq", dy[:, ks], w[ks, :, r, s])
    out[...] = dxp[:, :, p.pad_top:p.pad_top + p.H, p.pad_left:p.pad_left + p.W]


def conv2d_weight(x, dy, p, out):
    """Gradient of conv2d with respect to its weight."""
    xp, dy = _padded(x, p), np.asarray(dy, np.float64)
    dw = np.zeros(p.weight_shape)
    for cs, ks in _groups(p):
        for r in range(p.R):
            for s in range(p.S):
                dw[ks, :, r, s] = np.einsum("nkpq,ncpq->kc", dy[:, ks], _window(xp[:, cs], p, r, s))
    out[...] = dw


def conv2d_bias(dy):
    """Gradient of conv2d with respect to its bias: sum over N, P, Q."""
    return np.asarray(dy, np.float64).sum(axis=(0, 2, 3))


def inverted_residual(x, weights, biases, p, out, act):
    """The inverted residual block of ``fastconv.inverted_residual`` as its convolutions,
    in float64 throughout: ``act(expansion + bias)`` (when ``weights[0]`` is not None),
    ``act(depthwise + bias)``, ``projection + bias`` (+ x when ``p.residual``).
    ``weights``: (expansion or None, depthwise, projection); ``biases``: theirs, each
    zero-size when absent; ``act``: the activation's code (``kernels.epilogue``)."""
    convs = p.convs()
    ws = [w for w in weights if w is not None]
    h = np.asarray(x, np.float64)
    for i, (cp, w, b) in enumerate(zip(convs, ws, biases[3 - len(convs):])):
        last = i == len(convs) - 1
        y = np.empty(cp.output_shape)
        res = np.asarray(x).reshape(-1) if last and p.residual else np.empty(0)
        conv2d(h, w, cp, y, Epilogue(np.asarray(b), res, 0 if last else act))
        h = y
    out[...] = h


def _inside(start, kernel, dil, size):
    """Input positions ``start + a*dil`` (``0 <= a < kernel``) that lie in ``[0, size)``,
    in order: ``range(kernel)`` filtered, without visiting the taps outside (a kernel
    may be far larger than the input, with as much padding)."""
    first = max(0, -(start // dil))                  # first a with start + a*dil >= 0
    last = min(kernel - 1, (size - 1 - start) // dil)  # last a with start + a*dil < size
    return [start + a * dil for a in range(first, last + 1)]


def _pool_taps(p, i, j):
    """Valid (h, w) input positions of pooling window (i, j), in scan order."""
    rows = _inside(i * p.stride_h - p.pad_h, p.kernel_h, p.dil_h, p.H)
    cols = _inside(j * p.stride_w - p.pad_w, p.kernel_w, p.dil_w, p.W)
    return [(h, w) for h in rows for w in cols]


def max_pool2d(x, p, out, indices):
    """Max over each window; index = h*W + w of the first maximum, NaN wins (as PyTorch).
    ``indices`` None: values only."""
    x = np.asarray(x, np.float64)
    for i in range(p.P):
        for j in range(p.Q):
            taps = _pool_taps(p, i, j)
            best = np.full((p.N, p.C), -np.inf)
            idx = np.full((p.N, p.C), -1, np.int64)
            for t, (h, w) in enumerate(taps):
                v = x[:, :, h, w]
                take = (t == 0) | (v > best) | np.isnan(v)
                best = np.where(take, v, best)
                idx = np.where(take, h * p.W + w, idx)
            out[:, :, i, j] = best
            if indices is not None:
                indices[:, :, i, j] = idx


def max_pool2d_backward(dy, indices, p, out):
    """Each output gradient goes to the input position its index names (summed)."""
    dx = np.zeros((p.N * p.C, p.H * p.W))
    rows = np.arange(p.N * p.C)[:, None]
    np.add.at(dx, (rows, indices.reshape(p.N * p.C, -1)),
              np.asarray(dy, np.float64).reshape(p.N * p.C, -1))
    out[...] = dx.reshape(p.input_shape)


def _avg_window(p, i, j, count_include_pad, divisor_override):
    """Clipped window rows/cols and the divisor of average-pooling window (i, j)."""
    h0, w0 = i * p.stride_h - p.pad_h, j * p.stride_w - p.pad_w
    h1, w1 = min(h0 + p.kernel_h, p.H + p.pad_h), min(w0 + p.kernel_w, p.W + p.pad_w)
    padded_count = (h1 - h0) * (w1 - w0)  # counts padding, not the ceil-mode overhang
    h0, w0, h1, w1 = max(h0, 0), max(w0, 0), min(h1, p.H), min(w1, p.W)
    if divisor_override:
        div = divisor_override
    elif count_include_pad:
        div = padded_count
    else:
        div = (h1 - h0) * (w1 - w0)
    return slice(h0, h1), slice(w0, w1), div


def avg_pool2d(x, p, count_include_pad, divisor_override, out):
    """Mean over each window (divisor as PyTorch's ``avg_pool2d``)."""
    x = np.asarray(x, np.float64)
    for i in range(p.P):
        for j in range(p.Q):
            hs, ws, div = _avg_window(p, i, j, count_include_pad, divisor_override)
            out[:, :, i, j] = x[:, :, hs, ws].sum(axis=(2, 3)) / div


def avg_pool2d_backward(dy, p, count_include_pad, divisor_override, out):
    """Each output gradient spread evenly (1/divisor) over its window."""
    dy = np.asarray(dy, np.float64)
    dx = np.zeros(p.input_shape)
    for i in range(p.P):
        for j in range(p.Q):
            hs, ws, div = _avg_window(p, i, j, count_include_pad, divisor_override)
            dx[:, :, hs, ws] += (dy[:, :, i, j] / div)[:, :, None, None]
    out[...] = dx


def adaptive_avg_pool2d(x, h_windows, w_windows, out):
    """Mean over window [starts[i], ends[i]) x [starts[j], ends[j])."""
    x = np.asarray(x, np.float64)
    for i, (h0, h1) in enumerate(zip(*h_windows)):
        for j, (w0, w1) in enumerate(zip(*w_windows)):
            out[:, :, i, j] = x[:, :, h0:h1, w0:w1].mean(axis=(2, 3))
