"""The fused epilogue (``fastconv.kernels.epilogue``) in Numba: the helpers the
kernels call as they store a block of the output, with the bias ``bias`` (K,), the
flat residual ``rf`` (zero-size when absent; the same flat offsets as the output's)
and the activation code ``act`` (0 none, 1 relu, 2 relu6; NaN passes through)."""
from ._jit import jit


@jit(inline="always")
def put(of, o, v, k, bias, rf, act):
    """of[o] = v (output element o, channel k) with the epilogue (stores of int
    constants cast to of's dtype; comparisons keep NaN)."""
    if bias.size:
        v += bias[k]
    if rf.size:
        v += rf[o]
    if act != 0 and v < 0:
        of[o] = 0
    elif act == 2 and v > 6:
        of[o] = 6
    else:
        of[o] = v


@jit(inline="always")
def run(of, o, n, k, bias, rf, act):
    """of[o:o + n] (channel k), just stored, with the epilogue applied in place."""
    if bias.size:
        b = bias[k]
        for i in range(n):
            of[o + i] += b
    if rf.size:
        for i in range(n):
            of[o + i] += rf[o + i]
    if act == 1:
        for i in range(n):
            if of[o + i] < 0:
                of[o + i] = 0
    elif act == 2:
        for i in range(n):
            v = of[o + i]
            if v < 0:
                of[o + i] = 0
            elif v > 6:
                of[o + i] = 6


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
