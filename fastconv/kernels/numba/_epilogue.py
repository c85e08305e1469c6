"""The fused epilogue (``fastconv.kernels.epilogue``) in Numba: the helpers the
kernels call as they store a block of the output, with the bias ``bias`` (K,), the
flat residual ``rf`` (zero-size when absent; the same flat offsets as the output's)
and the activation code ``act`` (0 none, 1 relu, 2 relu6; NaN passes through)."""
from numba import prange, types
from numba.core.extending import intrinsic

from ._jit import jit


@intrinsic
def _below(typingctx, v, lo):
    """``lo if v < lo else v`` as one LLVM ``select`` (Numba's conditional expression
    became a branch, mispredicted on half the elements of a ReLU; NaN stays: the
    comparison is ordered)."""
    if not isinstance(v, types.Float) or v != lo:
        return None

    def codegen(context, builder, signature, args):
        return builder.select(builder.fcmp_ordered("<", args[0], args[1]), args[1], args[0])
    return v(v, lo), codegen


@intrinsic
def _above(typingctx, v, hi):
    """``hi if v > hi else v`` as one LLVM ``select``."""
    if not isinstance(v, types.Float) or v != hi:
        return None

    def codegen(context, builder, signature, args):
        return builder.select(builder.fcmp_ordered(">", args[0], args[1]), args[1], args[0])
    return v(v, hi), codegen


@jit(inline="always")
def put(of, o, v, k, bias, rf, act):
    """of[o] = v (output element o, channel k) with the epilogue."""
    zero, six = of.dtype.type(0), of.dtype.type(6)
    v = of.dtype.type(v)
    if bias.size:
        v += bias[k]
    if rf.size:
        v += rf[o]
    if act != 0:
        v = _below(v, zero)                        # selects, no branches; NaN stays
    if act == 2:
        v = _above(v, six)
    of[o] = v


@jit(inline="always")
def run(of, o, n, k, bias, rf, act):
    """of[o:o + n] (channel k), just stored, with the epilogue applied in place: one
    loop per case, the activation as selects (each loop vectorised; a test of the
    activation inside the loop kept it scalar)."""
    if bias.size == 0 and rf.size == 0 and act == 0:
        return
    zero, six = of.dtype.type(0), of.dtype.type(6)
    b = bias[k] if bias.size else zero
    y = of[o:o + n]
    if rf.size:
        r = rf[o:o + n]
        if act == 0:
            for i in range(n):
                y[i] = (y[i] + b) + r[i]
        elif act == 1:
            for i in range(n):
                y[i] = _below((y[i] + b) + r[i], zero)
        else:
            for i in range(n):
                y[i] = _above(_below((y[i] + b) + r[i], zero), six)
    elif act == 0:
        for i in range(n):
            y[i] = y[i] + b
    elif act == 1:
        for i in range(n):
            y[i] = _below(y[i] + b, zero)
    else:
        for i in range(n):
            y[i] = _above(_below(y[i] + b, zero), six)


@jit(inline="always")
def run_channels(of, o, n, k0, bias, act):
    """of[o:o + n], channels k0 .. k0 + n - 1 of one pixel (a channels-last block), with
    the bias and the activation (no residual) applied in place (one loop per case)."""
    if bias.size == 0 and act == 0:
        return
    zero, six = of.dtype.type(0), of.dtype.type(6)
    y = of[o:o + n]
    if bias.size:
        bk = bias[k0:k0 + n]
        if act == 0:
            for i in range(n):
                y[i] = y[i] + bk[i]
        elif act == 1:
            for i in range(n):
                y[i] = _below(y[i] + bk[i], zero)
        else:
            for i in range(n):
                y[i] = _above(_below(y[i] + bk[i], zero), six)
    elif act == 1:
        for i in range(n):
            y[i] = _below(y[i], zero)
    else:
        for i in range(n):
            y[i] = _above(_below(y[i], zero), six)


@jit(inline="always")
def channels(of, o, n, k0, bias, rf, act):
    """of[o:o + n], channels k0 .. k0 + n - 1 of one pixel (a channels-last run), with
    the epilogue applied in place (``rf`` in of's order): the arithmetic of :func:`run`,
    one loop per step."""
    if rf.size == 0:
        run_channels(of, o, n, k0, bias, act)
        return
    zero, six = of.dtype.type(0), of.dtype.type(6)
    y, r = of[o:o + n], rf[o:o + n]
    if bias.size:
        bk = bias[k0:k0 + n]
        for i in range(n):
            y[i] = (y[i] + bk[i]) + r[i]
    else:
        for i in range(n):
            y[i] = y[i] + r[i]
    if act == 1:
        for i in range(n):
            y[i] = _below(y[i], zero)
    elif act == 2:
        for i in range(n):
            y[i] = _above(_below(y[i], zero), six)


@jit(inline="always")
def store_channels(src, s, of, o, n, k0, bias, rf, act):
    """of[o:o + n] = src[s:s + n], channels k0 .. k0 + n - 1 of one pixel, with the
    epilogue (:func:`channels`)."""
    for i in range(n):
        of[o + i] = src[s + i]
    channels(of, o, n, k0, bias, rf, act)


@jit(inline="always")
def store(src, s, of, o, n, k, bias, rf, act):
    """of[o:o + n] = src[s:s + n] with the epilogue (channel k)."""
    for i in range(n):
        of[o + i] = src[s + i]
    run(of, o, n, k, bias, rf, act)


@jit()
def planes(of, src, inplace, n0, nt, K, P, Q, p0, pr, bias, rf, act):
    """Rows [p0, p0 + pr) of channels 0..K-1 of images n0 .. n0 + nt - 1 of ``of`` (flat
    N, K, P, Q) with the epilogue: copied from ``src`` laid out (K, nt, pr*Q), or
    (``inplace``) applied to the values already there."""
    L = pr * Q
    for t in range(nt):
        for k in range(K):
            o = ((n0 + t) * K + k) * P * Q + p0 * Q
            if inplace:
                run(of, o, L, k, bias, rf, act)
            else:
                store(src, (k * nt + t) * L, of, o, L, k, bias, rf, act)


@jit(parallel=True)
def rows(of, r0, r1, K, bias, rf, act):
    """Rows r0 .. r1 - 1 of ``of`` (flat, rows of K channels: a channels-last output)
    with the epilogue applied in place (``rf`` flattened in the same order)."""
    for r in prange(r0, r1):
        channels(of, r * K, K, 0, bias, rf, act)
