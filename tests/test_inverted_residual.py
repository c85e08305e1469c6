"""``fastconv.inverted_residual``: MobileNet-v2's block as one fused call.

Every registered kernel against the reference over random valid geometries (bands of
one row to the whole image, expansion or none, residual or none, both dtypes, both
layouts, 1 and 2 threads), the Cython kernel bit for bit against the three conv2d
calls it fuses, the reference against those calls, and bad input refused with
messages naming the shapes.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastconv
import fastconv.functional as F
from fastconv import _dispatch, _plan

from conftest import DTYPES, assert_close, kernel_pairs, on_one_thread, tolerance, tuned

PAIRS = kernel_pairs("inverted_residual")


@st.composite
def blocks(draw, max_hw=12):
    """(x, args, kwargs, p) of a valid block: C, E, K channels, an R x R depthwise (R
    in 1, 3, 5) at stride 1-3, the residual where the output has the input's shape."""
    N = draw(st.integers(1, 3))
    C = draw(st.integers(1, 20))
    expand = draw(st.booleans())
    E = draw(st.integers(1, 40)) if expand else C
    H, W = draw(st.integers(1, max_hw)), draw(st.integers(1, max_hw))
    R = draw(st.sampled_from([1, 3, 3, 5]))
    stride = draw(st.sampled_from([1, 1, 2, 3]))
    residual = stride == 1 and draw(st.booleans())
    K = C if residual else draw(st.integers(1, 20))
    dtype = draw(st.sampled_from(DTYPES))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))

    def normal(*shape, fan=1):
        return (rng.standard_normal(shape) / np.sqrt(fan)).astype(dtype)

    def bias(n):
        return normal(n) if draw(st.booleans()) else None

    x = normal(N, C, H, W)
    if draw(st.booleans()):
        x = F.to_channels_last(x)
    args = (normal(E, C, 1, 1, fan=C) if expand else None, bias(E) if expand else None,
            normal(E, 1, R, R, fan=R * R), bias(E), normal(K, E, 1, 1, fan=E), bias(K))
    kwargs = dict(stride=stride, residual=residual,
                  activation=draw(st.sampled_from([None, "relu", "relu6"])))
    return x, args, kwargs


@pytest.mark.parametrize("algorithm,backend", PAIRS)
@settings(max_examples=40, deadline=None)
@given(case=blocks(), band_bytes=st.sampled_from([1, 2000, 512 * 1024]),
       threads=st.sampled_from([1, 2]), bad=st.sampled_from([None, None, np.nan, np.inf]),
       where=st.integers(0, 2**16))
def test_kernel_matches_reference(algorithm, backend, case, band_bytes, threads, bad, where):
    """Each kernel's output, in the input's layout, within the dtype's tolerance of
    the reference's; small band budgets force bands of one row up (the expanded rows
    of one band slid to the next's); the plan that ran is the pair's fused one, its
    bands and (Cython) its split among threads as the selector chose them: one image
    on 2 threads in one band splits its channels. Sometimes a depthwise tap is not
    finite: the kernels skip the taps outside the input, but PyTorch (the reference)
    multiplies the padding by it (0 x Inf is NaN)."""
    x, args, kwargs = case
    if bad is not None:
        wd = args[2].copy()
        wd.flat[where % wd.size] = bad
        args = args[:2] + (wd,) + args[3:]
    want = F.inverted_residual(x, *args, **kwargs, algorithm="reference")
    before = fastconv.get_num_threads()
    try:
        fastconv.set_num_threads(threads)
        with tuned(BLOCK_BAND_BYTES=band_bytes), fastconv.trace_plans() as ran:
            got = F.inverted_residual(x, *args, **kwargs, algorithm=algorithm, backend=backend)
            plan = ran[-1]
            assert plan["rows"] == (_plan.block_band(plan.geometry, x.dtype)
                                    if backend == "cython" else plan.geometry.P)
            if backend == "cython":
                assert plan["split"] == _plan.block_split(plan.geometry, x.dtype, threads)
    finally:
        fastconv.set_num_threads(before)
    assert (plan.op, plan.algorithm, plan.backend, plan.variant, plan.layout) == \
        ("inverted_residual", algorithm, backend, "fused", "nhwc")
    if band_bytes == 1 and backend == "cython":
        assert plan["rows"] == 1
    assert got.dtype == x.dtype
    assert (got.transpose(0, 2, 3, 1) if F.channels_last(x) else got).flags.c_contiguous
    assert_close(got, want, 10 * tolerance(x.dtype, "default"), f"{backend} {plan}")


@settings(max_examples=30, deadline=None)
@given(case=blocks(max_hw=9))
def test_reference_is_the_three_convolutions(case):
    """The reference equals conv2d's reference run three times (bias and activation
    in the first two, the input added in the last)."""
    x, (we, be, wd, bd, wp, bp), kw = case
    h = x if we is None else F.conv2d(x, we, be, activation=kw["activation"],
                                      algorithm="reference")
    R = wd.shape[2]
    h = F.conv2d(h, wd, bd, kw["stride"], R // 2, 1, wd.shape[0], activation=kw["activation"],
                 algorithm="reference")
    want = F.conv2d(h, wp, bp, residual=x if kw["residual"] else None, algorithm="reference")
    got = F.inverted_residual(x, we, be, wd, bd, wp, bp, **kw, algorithm="reference")
    assert_close(got, want, 10 * tolerance(x.dtype, "default"), "reference")


@pytest.mark.skipif("cython" not in _dispatch.available_backends(),
                    reason="the Cython backend is not built here")
@pytest.mark.parametrize("dtype", DTYPES)
def test_cython_kernel_is_the_unfused_calls_bit_for_bit(dtype):
    """The Cython kernel sums each output in the order the channels-last kernels of
    the three conv2d calls do: the same bits, on several bands, on 1 and 2 threads
    (2 images: one each; 1 image: its rows cut in two, or its channels when it is one
    band), with and without the residual."""
    rng = np.random.default_rng(0)
    for N, C, E, K, H, stride in [(2, 16, 96, 24, 23, 2), (2, 24, 144, 24, 17, 1),
                                  (2, 32, None, 16, 9, 1), (1, 20, 120, 20, 7, 1),
                                  (1, 16, 200, 24, 14, 2)]:
        Ee = C if E is None else E
        x = F.to_channels_last(rng.standard_normal((N, C, H, H)).astype(dtype))
        we = None if E is None else (rng.standard_normal((E, C, 1, 1)) / C).astype(dtype)
        be = None if E is None else rng.standard_normal(E).astype(dtype)
        wd, bd = rng.standard_normal((Ee, 1, 3, 3)).astype(dtype), rng.standard_normal(Ee).astype(dtype)
        wp, bp = (rng.standard_normal((K, Ee, 1, 1)) / Ee).astype(dtype), rng.standard_normal(K).astype(dtype)
        residual = stride == 1 and K == C
        h = x if we is None else F.conv2d(x, we, be, activation="relu6", backend="cython")
        h = F.conv2d(h, wd, bd, stride, 1, 1, Ee, activation="relu6", backend="cython")
        want = F.conv2d(h, wp, bp, residual=x if residual else None, backend="cython")
        splits = set()
        for threads in (1, 2):
            for band_bytes in (1, 30000, 512 * 1024):
                with tuned(BLOCK_BAND_BYTES=band_bytes), fastconv.trace_plans() as ran:
                    got = (on_one_thread if threads == 1 else lambda f: f())(
                        lambda: F.inverted_residual(x, we, be, wd, bd, wp, bp, stride,
                                                    residual=residual, backend="cython"))
                splits.add(ran[-1]["split"])
                np.testing.assert_array_equal(got, want, err_msg=f"{C}->{E}->{K} {threads} "
                                                                 f"threads, {band_bytes} B")
        if N == 1 and fastconv.get_num_threads() > 1:
            assert splits == {"rows", "channels"}


@pytest.mark.parametrize("algorithm,backend", PAIRS)
def test_deterministic_and_unbatched(algorithm, backend):
    """Repeated calls give the same bits; a 3-D input gives the batch-of-one result
    without its batch axis; an empty batch gives an empty result without a kernel."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 8, 10, 10)).astype(np.float32)
    args = (rng.standard_normal((24, 8, 1, 1)).astype(np.float32), None,
            rng.standard_normal((24, 1, 3, 3)).astype(np.float32), None,
            rng.standard_normal((8, 24, 1, 1)).astype(np.float32), None)
    kw = dict(residual=True, algorithm=algorithm, backend=backend)
    first = F.inverted_residual(x, *args, **kw)
    np.testing.assert_array_equal(F.inverted_residual(x, *args, **kw), first)
    np.testing.assert_array_equal(F.inverted_residual(x[0], *args, **kw), first[0])
    with fastconv.trace_plans() as ran:
        empty = F.inverted_residual(x[:0], *args, **kw)
    assert empty.shape == (0, 8, 10, 10) and not ran


@pytest.mark.parametrize("change, message", [
    (dict(we=np.zeros((24, 7, 1, 1), np.float32)),
     r"expand_weight of shape \(24, 7, 1, 1\) does not match input \(1, 8, 6, 6\) and "
     r"depthwise_weight \(24, 1, 3, 3\); expected \(24, 8, 1, 1\)"),
    (dict(wd=np.zeros((24, 1, 3, 5), np.float32)),
     r"depthwise_weight of shape \(24, 1, 3, 5\) must be square and odd .* got 3x5"),
    (dict(wd=np.zeros((24, 1, 2, 2), np.float32)),
     r"depthwise_weight of shape \(24, 1, 2, 2\) must be square and odd .* got 2x2"),
    (dict(wd=np.zeros((24, 2, 3, 3), np.float32)), r"expected depthwise_weight of shape "
                                                    r"\(E, 1, R, R\), got \(24, 2, 3, 3\)"),
    (dict(wp=np.zeros((8, 23, 1, 1), np.float32)),
     r"project_weight of shape \(8, 23, 1, 1\) does not match depthwise_weight "
     r"\(24, 1, 3, 3\); expected \(K, 24, 1, 1\)"),
    (dict(stride=2), r"residual=True adds the input \(1, 8, 6, 6\) to the output "
                     r"\(1, 8, 3, 3\): it needs stride 1"),
    (dict(stride=0), r"stride must be a positive int, got 0"),
    (dict(stride=2**64, residual=False), r"stride must fit in a 64-bit integer"),
    (dict(bp=np.zeros(9, np.float32)), r"bias of shape \(9,\) does not match the K=8"),
    (dict(we=None), r"without an expansion, depthwise_weight \(24, 1, 3, 3\) must have "
                    r"the input's C=8 channels"),
    (dict(activation="gelu"), r"activation must be None, 'relu' or 'relu6', got 'gelu'"),
    (dict(wd=np.zeros((24, 1, 3, 3), np.float64)), r"arrays must share one dtype"),
])
def test_bad_input_is_refused_naming_the_shapes(change, message):
    arrays = dict(x=np.zeros((1, 8, 6, 6), np.float32), we=np.zeros((24, 8, 1, 1), np.float32),
                  be=None, wd=np.zeros((24, 1, 3, 3), np.float32), bd=None,
                  wp=np.zeros((8, 24, 1, 1), np.float32), bp=None)
    kw = dict(stride=1, residual=True)
    for name, value in change.items():
        (arrays if name in arrays else kw)[name] = value
    if "activation" in change:
        kw["activation"] = change["activation"]
    with pytest.raises((ValueError, TypeError), match="inverted_residual: " + message):
        F.inverted_residual(*arrays.values(), **kw)
    with pytest.raises(ValueError, match="expand_bias given without expand_weight"):
        F.inverted_residual(arrays["x"], None, np.zeros(24, np.float32), arrays["wd"], None,
                            arrays["wp"], None)


def test_plan_of_a_block():
    """``fastconv.plan`` makes the block's plan from its three weights' shapes (the
    fused kernel, channels last, the selector's bands); other weight shapes are
    refused naming the op."""
    plan = fastconv.plan("inverted_residual", (1, 16, 112, 112),
                         ((96, 16, 1, 1), (96, 1, 3, 3), (24, 96, 1, 1)),
                         stride=2)
    assert (plan.op, plan.variant, plan.layout) == ("inverted_residual", "fused", "nhwc")
    assert plan["rows"] == _plan.block_band(plan.geometry, np.float32) >= 1
    with pytest.raises(ValueError, match="plan: inverted_residual needs weight_shape"):
        fastconv.plan("inverted_residual", (1, 16, 8, 8), (96, 16, 1, 1))
