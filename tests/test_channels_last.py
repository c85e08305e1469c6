"""Channels-last data (PyTorch's ``channels_last`` memory format): every op takes it and
returns its result in it; the kernels that compute in that layout (im2col's
``nhwc_gemm`` and ``nhwc_tiled``, Winograd's forward (each path: tests/test_winograd.py),
direct's ``depthwise_nhwc``, max pooling) are checked to have run with ``layout ==
"nhwc"`` and against the reference, with every epilogue; and
``nn.optimize`` keeps a network's activations channels last where every convolution
computes so, with no conversion between two convolutions."""
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import fastconv
from fastconv import nn, reference
from fastconv.kernels import epilogue

from conftest import (DTYPES, arrays, assert_close, conv_args, conv_cases, kernel_pairs,
                      tolerance)

cl = fastconv.to_channels_last


def _distinct(shape):
    """Whether channels last is a layout of its own for ``shape`` (not also NCHW)."""
    return fastconv.channels_last(cl(np.empty(shape, np.float32)))


def _reference(x, w, p, bias, res, act):
    want = np.empty(p.output_shape, np.float64)
    reference.conv2d(np.ascontiguousarray(x), w, p, want,
                     epilogue.make(np.float64, bias,
                                   None if res is None else np.ascontiguousarray(res), act))
    return want


def test_detection_and_conversion():
    x = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    y = cl(x)
    assert fastconv.channels_last(y) and not fastconv.channels_last(x)
    assert y.shape == x.shape and np.array_equal(y, x)
    assert y.transpose(0, 2, 3, 1).flags.c_contiguous
    assert cl(y) is not None and np.shares_memory(cl(y), y)       # no second copy
    # both layouts at once (C == 1, or 1x1 planes) count as NCHW, as in PyTorch
    assert not fastconv.channels_last(cl(x[:, :1]))
    assert not fastconv.channels_last(cl(x[:, :, :1, :1]))
    # other strides are neither: they are copied to NCHW and the result is NCHW
    odd = np.ascontiguousarray(x.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
    assert not fastconv.channels_last(odd)
    w = np.ones((2, 3, 3, 3), np.float32)
    out = fastconv.conv2d(odd, w, padding=1)
    assert out.flags.c_contiguous
    np.testing.assert_array_equal(out, fastconv.conv2d(x, w, padding=1))
    with pytest.raises(ValueError, match=r"expected an \(N, C, H, W\) array, got shape \(3, 4\)"):
        cl(np.zeros((3, 4)))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("algorithm,backend", kernel_pairs("conv2d"))
@settings(max_examples=5)
@given(data=st.data())
def test_every_algorithm(algorithm, backend, dtype, data):
    """A channels-last input gives a channels-last output equal to the reference's, by
    each (algorithm, backend), with a random epilogue; im2col computes every one-group
    layer channels last (its plan's layout is "nhwc"), and Winograd every layer, the
    others convert."""
    case = data.draw(conv_cases(algorithm, max_channels=12, max_hw=16, max_n=3))
    p = case["params"]
    x, w, b, r = arrays(data.draw(st.integers(0, 99)), dtype, p.input_shape, p.weight_shape,
                        (p.K,), p.output_shape)
    bias = data.draw(st.sampled_from([None, b]))
    res = data.draw(st.sampled_from([None, r]))
    act = data.draw(st.sampled_from(list(epilogue.ACTIVATIONS)))
    with fastconv.trace_plans() as ran:
        y = fastconv.conv2d(cl(x), w, bias, **conv_args(case), activation=act,
                            residual=None if res is None else cl(res), algorithm=algorithm,
                            backend=backend)
    plan = ran[-1]
    assert (plan.algorithm, plan.backend) == (algorithm, backend)
    assert fastconv.channels_last(y) == (_distinct(p.input_shape) and _distinct(p.output_shape))
    if algorithm == "im2col" and p.groups == 1 and _distinct(p.input_shape):
        assert plan.layout == "nhwc" and plan.variant in ("nhwc_gemm", "nhwc_tiled")
    if algorithm.startswith("winograd") and _distinct(p.input_shape):
        assert plan.layout == "nhwc", plan
    assert_close(y, _reference(x, w, p, bias, res, act), tolerance(dtype, algorithm),
                 f"{algorithm}/{backend} {p} bias={bias is not None} "
                 f"residual={res is not None} act={act}")


@st.composite
def depthwise_cases(draw):
    """A depthwise geometry (groups = C = K) of any kernel, stride, dilation, padding."""
    C = draw(st.integers(2, 40))                    # past one block of 16 lanes, with a tail
    R, S = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    ph, pw = draw(st.integers(0, (dh * (R - 1)) // 2)), draw(st.integers(0, (dw * (S - 1)) // 2))
    H = draw(st.integers(max(1, dh * (R - 1) + 1 - 2 * ph), 30))
    W = draw(st.integers(max(1, dw * (S - 1) + 1 - 2 * pw), 30))
    N = draw(st.integers(1, 3))
    assume(H * W > 1)                                # else NCHW too: not channels last
    return dict(N=N, C=C, H=H, W=W, K=C, R=R, S=S, stride=(sh, sw), padding=(ph, pw),
                dilation=(dh, dw), groups=C)


@pytest.mark.parametrize("backend", ["numba", "cython"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@settings(max_examples=25)
@given(case=depthwise_cases(), seed=st.integers(0, 99), data=st.data())
def test_depthwise_nhwc(backend, dtype, case, seed, data):
    """Each backend's channels-last depthwise kernel (Numba: blocks of 8, 4 and 2
    pixels x 16 channels; Cython: blocks of 8 and 4 pixels x a vector of channels; the
    border pixels and the channel tail one by one) against the reference, with an
    epilogue, and sometimes a non-finite tap: the kernels skip the taps outside the
    input, but PyTorch multiplies it by the padding (0 x Inf is NaN)."""
    if ("conv2d", "direct", backend) not in fastconv._dispatch.REGISTRY:
        pytest.skip(f"the {backend} backend is not available")
    p = fastconv._geometry.conv_params(
        "test", (case["N"], case["C"], case["H"], case["W"]), (case["K"], 1, case["R"], case["S"]),
        case["stride"], case["padding"], case["dilation"], case["groups"])
    x, w, b, r = arrays(seed, dtype, p.input_shape, p.weight_shape, (p.K,), p.output_shape)
    bias = data.draw(st.sampled_from([None, b]))
    res = data.draw(st.sampled_from([None, r]))
    act = data.draw(st.sampled_from(list(epilogue.ACTIVATIONS)))
    bad = data.draw(st.sampled_from([None, np.nan, np.inf, -np.inf]))
    if bad is not None:
        w[data.draw(st.integers(0, p.K - 1)), 0, data.draw(st.integers(0, p.R - 1)),
          data.draw(st.integers(0, p.S - 1))] = bad
    with fastconv.trace_plans() as ran:
        y = fastconv.conv2d(cl(x), w, bias, **conv_args(case), activation=act,
                            residual=None if res is None else cl(res), algorithm="direct",
                            backend=backend)
    assert (ran[-1].variant, ran[-1].layout, ran[-1].backend) == (
        "depthwise_nhwc", "nhwc", backend), ran[-1]
    assert_close(y, _reference(x, w, p, bias, res, act), tolerance(dtype, "direct"),
                 f"depthwise_nhwc {p}")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("C", [40, 21])
@pytest.mark.parametrize("stride,W", [(1, 14), (2, 26)])
def test_depthwise_nhwc_3x3_blocks(dtype, C, stride, W):
    """The Cython kernel's 3x3 blocks (stride 1 or 2, dilation 1: ``dw_nhwc_block3``,
    each input row's pixels loaded once): widths whose inner columns (12: the taps of
    the edge columns reach the padding) make one block of 8 pixels and one of 4, the
    edge columns and the channel tail (40 or 21 channels) one by one, with the bias, a
    residual and ReLU6, against the reference. The random geometries above reach these
    blocks only now and then."""
    if ("conv2d", "direct", "cython") not in fastconv._dispatch.REGISTRY:
        pytest.skip("the Cython backend is not built")
    p = fastconv._geometry.conv_params("test", (2, C, 7, W), (C, 1, 3, 3), stride, 1, 1, C)
    x, w, b, r = arrays(stride + C, dtype, p.input_shape, p.weight_shape, (C,),
                        p.output_shape)
    with fastconv.trace_plans() as ran:
        y = fastconv.conv2d(cl(x), w, b, stride=stride, padding=1, groups=C,
                            activation="relu6", residual=cl(r), algorithm="direct",
                            backend="cython")
    assert (ran[-1].variant, ran[-1].layout) == ("depthwise_nhwc", "nhwc"), ran[-1]
    assert_close(y, _reference(x, w, p, b, r, "relu6"), tolerance(dtype, "direct"),
                 f"depthwise_nhwc {p}")


@pytest.mark.parametrize("backend", ["numba", "cython"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@settings(max_examples=25)
@given(N=st.integers(1, 3), C=st.integers(1, 40), H=st.integers(1, 12), W=st.integers(1, 12),
       kh=st.integers(1, 4), kw=st.integers(1, 4), sh=st.integers(1, 3), sw=st.integers(1, 3),
       dh=st.integers(1, 2), dw=st.integers(1, 2), ceil=st.booleans(), seed=st.integers(0, 99),
       data=st.data())
def test_max_pool_nhwc(backend, dtype, N, C, H, W, kh, kw, sh, sw, dh, dw, ceil, seed, data):
    """Each backend's channels-last max pooling (values only: a vector of channels at
    a time, taps in scan order) against the reference, NaN included; with indices the
    call is computed NCHW and gives the same values."""
    if ("max_pool2d", "direct", backend) not in fastconv._dispatch.REGISTRY:
        pytest.skip(f"the {backend} backend is not available")
    assume(dh * (kh - 1) < H and dw * (kw - 1) < W)
    ph = data.draw(st.integers(0, kh // 2))
    pw = data.draw(st.integers(0, kw // 2))
    x = arrays(seed, dtype, (N, C, H, W))[0]
    x[0, 0, 0, 0] = np.nan
    args = ((kh, kw), (sh, sw), (ph, pw), (dh, dw), ceil)
    want = fastconv.max_pool2d(x, *args, algorithm="reference")
    with fastconv.trace_plans() as ran:
        got = fastconv.max_pool2d(cl(x), *args, backend=backend)
    # an array both C-contiguous and channels last (C == 1 or H == W == 1) is NCHW
    assert (ran[-1].layout, ran[-1].backend) == (
        "nhwc" if _distinct(x.shape) else "nchw", backend), ran[-1]
    assert fastconv.channels_last(got) or not _distinct(got.shape)
    np.testing.assert_array_equal(got, want)
    with fastconv.trace_plans() as ran:
        values, idx = fastconv.max_pool2d(cl(x), *args, return_indices=True, backend=backend)
    assert ran[-1].layout == "nchw"
    np.testing.assert_array_equal(values, want)
    np.testing.assert_array_equal(
        idx, fastconv.max_pool2d(x, *args, return_indices=True, algorithm="reference")[1])


def test_pooling_and_input_gradient_keep_the_layout():
    """Pooling and the input gradient take channels-last arrays and return them
    (computed NCHW, converted both ways, except adaptive average pooling and max
    pooling's values, computed channels last), with the NCHW call's values."""
    x, dy = arrays(0, np.float32, (2, 5, 9, 8), (2, 6, 9, 8))
    w = arrays(1, np.float32, (6, 5, 3, 3))[0]
    for fn in (lambda a: fastconv.max_pool2d(a, 3, 2, 1),
               lambda a: fastconv.avg_pool2d(a, 2),
               lambda a: fastconv.adaptive_avg_pool2d(a, (3, 2))):
        got, want = fn(cl(x)), fn(x)
        assert fastconv.channels_last(got) and want.flags.c_contiguous
        np.testing.assert_array_equal(got, want)
    got, idx = fastconv.max_pool2d(cl(x), 2, return_indices=True)
    assert fastconv.channels_last(idx)
    np.testing.assert_array_equal(idx, fastconv.max_pool2d(x, 2, return_indices=True)[1])
    got = fastconv.conv2d_input(x.shape, w, cl(dy), padding=1)
    assert fastconv.channels_last(got)
    np.testing.assert_array_equal(got, fastconv.conv2d_input(x.shape, w, dy, padding=1))
    # the weight gradient's result is a weight: (K, C, R, S), C-contiguous
    gw = fastconv.conv2d_weight(cl(x), w.shape, cl(dy), padding=1)
    assert gw.flags.c_contiguous
    np.testing.assert_allclose(gw, fastconv.conv2d_weight(x, w.shape, dy, padding=1),
                               rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("backend", ["numba", "cython"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_one_pixel_computes_channels_last(backend, dtype):
    """A C-contiguous input of one pixel per channel whose output is one pixel too (a
    Linear layer as a 1x1 convolution; a 3x3 with padding 1) is both layouts at once:
    the channels-last kernels run it, and the result is C-contiguous (NCHW) and equals
    the reference's. A larger output (padding around the pixel) stays NCHW."""
    if ("conv2d", "im2col", backend) not in fastconv._dispatch.REGISTRY:
        pytest.skip(f"the {backend} backend is not available")
    rng = np.random.default_rng(0)
    for shape, wshape, padding, variant in [((3, 40, 1, 1), (70, 40, 1, 1), 0, "nhwc_gemm"),
                                           ((2, 8, 1, 1), (5, 8, 3, 3), 1, "nhwc_tiled"),
                                           ((2, 8, 1, 1), (5, 8, 1, 1), 1, None)]:
        x = rng.standard_normal(shape).astype(dtype)
        w = rng.standard_normal(wshape).astype(dtype)
        bias = rng.standard_normal(wshape[0]).astype(dtype)
        with fastconv.trace_plans() as ran:
            y = fastconv.conv2d(x, w, bias, padding=padding, activation="relu",
                                backend=backend)
        assert y.flags.c_contiguous
        if variant is None:
            assert ran[-1].layout == "nchw"
        else:
            assert (ran[-1].layout, ran[-1].variant) == ("nhwc", variant), ran[-1]
        p = fastconv._geometry.conv_params("test", x.shape, w.shape, 1, padding, 1, 1)
        assert_close(y, _reference(x, w, p, bias, None, "relu"), tolerance(dtype, "im2col"),
                     f"{backend} {p}")


def test_optimize_runs_mobilenet_channels_last_without_conversions():
    """``nn.optimize``: MobileNet-v2's convolutions all compute channels last, so after
    the first call (NCHW, which decides) its activations stay channels last and no
    convolution converts (every plan's layout is "nhwc": its stem, its 17 inverted
    residual blocks, each one fused call, its last 1x1 and its classifier); the logits
    equal the NCHW run's. So do ResNet-18's, Winograd on its 3x3 layers included."""
    if ("conv2d", "direct", "numba") not in fastconv._dispatch.REGISTRY:
        pytest.skip("the Numba backend is not available (depthwise_nhwc is Numba's)")
    x = arrays(3, np.float32, (2, 3, 64, 64))[0]          # 2x2 planes at the end
    model = nn.models.mobilenet_v2(num_classes=10, rng=0)
    fast = nn.optimize(model)
    assert fast.format_for(x.shape) is None
    first = fast(x)
    assert fast.format_for(x.shape) == "channels_last"
    with fastconv.trace_plans() as ran:
        second = fast(x)
    convs = [p for p in ran if p.op in ("conv2d", "inverted_residual")]
    assert [p.op for p in convs] == ["conv2d"] + ["inverted_residual"] * 17 + ["conv2d"] * 2
    assert all(p.layout == "nhwc" for p in convs), [p for p in convs if p.layout != "nhwc"]
    head = convs[-1].geometry                     # the Linear: a 1x1 convolution of 1 pixel
    assert (head.C, head.K, head.H, head.W, head.R) == (1280, 10, 1, 1, 1)
    tol = 1e-4 * np.abs(first).max()
    np.testing.assert_allclose(second, first, rtol=0, atol=tol)
    forced = nn.optimize(model, memory_format="contiguous")
    with fastconv.trace_plans() as ran:
        np.testing.assert_allclose(forced(x), first, rtol=0, atol=tol)
    convs = [p for p in ran if p.op == "conv2d"]     # the blocks' kernels: channels last
    assert [p.layout for p in convs] == ["nchw"] * 2 + ["nhwc"]    # one pixel: either

    resnet = nn.optimize(nn.models.resnet18(num_classes=10, rng=0))
    x = arrays(4, np.float32, (1, 3, 96, 96))[0]     # layer1: 24x24, Winograd F(4x4,3x3)
    first = resnet(x)
    assert resnet.format_for(x.shape) == "channels_last"
    with fastconv.trace_plans() as ran:
        second = resnet(x)
    convs = [p for p in ran if p.op == "conv2d"]
    assert len(convs) == 21 and any(p.algorithm.startswith("winograd") for p in convs)
    assert all(p.layout == "nhwc" for p in convs), [p for p in convs if p.layout != "nhwc"]
    np.testing.assert_allclose(second, first, rtol=0, atol=1e-4 * np.abs(first).max())
    with pytest.raises(ValueError, match="memory_format must be"):
        nn.optimize(model, memory_format="nhwc")


@settings(max_examples=40)
@given(N=st.integers(0, 3), C=st.one_of(st.just(3), st.integers(1, 70)), H=st.integers(1, 40),
       W=st.integers(1, 40),
       dtype=st.sampled_from([np.float32, np.float64, np.int64]),
       threads=st.sampled_from([1, 2]))
def test_layout_conversions_are_exact_copies(N, C, H, W, dtype, threads):
    """to_channels_last and the conversion back to NCHW (a call computed NCHW on a
    channels-last input) copy every value to its place, by the Cython backend's tiled
    transpose (float32 and float64, run and checked directly where it is built, tiles
    cut at every edge; an RGB image's three planes by a loop of their own) or NumPy's
    copy (other dtypes)."""
    fastconv.set_num_threads(min(threads, fastconv._config.MAX_THREADS))
    x = (np.random.default_rng(N * C + H * W).standard_normal((N, C, H, W)) * 100).astype(dtype)
    y = fastconv.to_channels_last(x)
    assert y.shape == x.shape and y.transpose(0, 2, 3, 1).flags.c_contiguous
    np.testing.assert_array_equal(y, x)
    from fastconv import functional as F
    back = F._contiguous("test", "x", y)
    assert back.flags.c_contiguous
    np.testing.assert_array_equal(back, x)
    layout = F._layout_module()
    if layout is not None and dtype != np.int64:
        dst = np.empty((N, H * W, C), dtype)
        layout.transpose_planes(x.reshape(N, C, H * W), dst, fastconv.get_num_threads())
        np.testing.assert_array_equal(dst, x.reshape(N, C, H * W).transpose(0, 2, 1))
        with pytest.raises(ValueError, match="dst of shape"):
            layout.transpose_planes(x.reshape(N, C, H * W), dst.reshape(N, C, H * W)
                                    if C != H * W else dst[:, :, :0], 1)
