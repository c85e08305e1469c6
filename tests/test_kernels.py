"""Every registered kernel against the NumPy reference, over random valid geometries.

A kernel added to ``fastconv._dispatch.REGISTRY`` is tested here without a line of
new test code; algorithms that handle only some geometries draw from those.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastconv
from fastconv import _dispatch, _plan
from fastconv.kernels.numba import im2col as nb_im2col

from conftest import (DTYPES, LIMITS, arrays, assert_close, conv_args, conv_cases, conv_outputs,
                      kernel_pairs, on_one_thread, pool_cases, tolerance)

CONV_PAIRS = sorted({ab for op in ("conv2d", "conv2d_input", "conv2d_weight")
                     for ab in kernel_pairs(op)})


@pytest.mark.parametrize("algorithm,backend", CONV_PAIRS)
@settings(max_examples=60)
@given(data=st.data(), dtype=st.sampled_from(DTYPES))
def test_conv_kernel_matches_reference(algorithm, backend, data, dtype):
    case = data.draw(conv_cases(algorithm))
    p = case["params"]
    assert _plan.supports(algorithm, p), f"strategy drew an unsupported case {p}"
    x, w, dy = arrays(p.N * 7 + p.K, dtype, p.input_shape, p.weight_shape, p.output_shape)
    got = conv_outputs(case, x, w, dy, algorithm, backend)
    want = conv_outputs(case, x, w, dy, "reference", "numpy")
    tol = tolerance(dtype, algorithm)
    for op, value in got.items():
        if value is not None:
            assert value.dtype == dtype, f"{op}: dtype {value.dtype} != {dtype}"
            assert_close(value, want[op], tol, f"{op} {algorithm}/{backend} {p}")


@pytest.mark.parametrize("algorithm,backend", CONV_PAIRS)
@settings(max_examples=20)
@given(data=st.data())
def test_conv_algorithms_agree_with_each_other(algorithm, backend, data):
    """Each algorithm against im2col (another fast path, not only the reference)."""
    case = data.draw(conv_cases(algorithm))
    p = case["params"]
    x, w, dy = arrays(1, np.float64, p.input_shape, p.weight_shape, p.output_shape)
    got = conv_outputs(case, x, w, dy, algorithm, backend)
    other = conv_outputs(case, x, w, dy, "im2col", "numba")
    for op, value in got.items():
        if value is not None:
            assert_close(value, other[op], 1e-11, f"{op} {algorithm} vs im2col")


def _pointwise(N, H, W, groups):
    return fastconv._geometry.conv_params("test", (N, 6, H, W), (10, 6 // groups, 1, 1),
                                          groups=groups)


POINTWISE_PAIRS = [ab for ab in CONV_PAIRS if _plan.supports(ab[0], _pointwise(1, 5, 7, 1))]


@pytest.mark.parametrize("algorithm,backend", POINTWISE_PAIRS)
@pytest.mark.parametrize("N,HW,groups", [(1, (5, 7), 1), (3, (5, 7), 1), (3, (5, 7), 2),
                                         (2, (12, 12), 1), (2, (12, 12), 2)])
def test_pointwise_layers_match_reference(algorithm, backend, N, HW, groups):
    """1x1 stride-1 layers (rare among the random geometries above) take their own
    paths: one GEMM per image, or one for the whole batch when planes are small."""
    H, W = HW
    params = _pointwise(N, H, W, groups)
    case = dict(N=N, C=6, H=H, W=W, K=10, R=1, S=1, stride=(1, 1), padding=(0, 0),
                dilation=(1, 1), groups=groups, params=params)
    x, w, dy = arrays(N, np.float64, params.input_shape, params.weight_shape, params.output_shape)
    got = conv_outputs(case, x, w, dy, algorithm, backend)
    want = conv_outputs(case, x, w, dy, "reference", "numpy")
    for op, value in got.items():
        if value is not None:
            assert_close(value, want[op], tolerance(np.float64, algorithm), f"{op} {algorithm} {params}")


@settings(max_examples=40, deadline=None)
@given(data=st.data(), dtype=st.sampled_from(DTYPES))
def test_im2col_blocked_weight_gradient(data, dtype):
    """im2col's blocked weight-gradient path (taken by layers with many output pixels
    per patch row, such as a 7x7 RGB stem), forced on every geometry with small bands
    and blocks, so partial bands, several blocks and groups all occur."""
    case = data.draw(conv_cases("im2col"))
    p = case["params"]
    x, w, dy = arrays(p.N + p.C, dtype, p.input_shape, p.weight_shape, p.output_shape)
    kw = conv_args(case)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(nb_im2col, "WEIGHT_FUSED_MIN_RATIO", 0)
        mp.setattr(nb_im2col, "WEIGHT_FUSED_MIN_CHANNELS", 0)
        mp.setattr(nb_im2col, "WEIGHT_BAND_COLUMNS", data.draw(st.sampled_from([1, 7, 40])))
        mp.setattr(nb_im2col, "WEIGHT_SLICES", data.draw(st.sampled_from([1, 3, 64])))
        got = fastconv.conv2d_weight(x, w.shape, dy, **kw, algorithm="im2col")
    want = fastconv.conv2d_weight(x, w.shape, dy, **kw, algorithm="reference")
    # the rounding error of a sum is relative to the sum of the terms' magnitudes: two
    # float32 products that cancel to 1/600 of their size drew 1.1e-5 of the result
    terms = fastconv.conv2d_weight(np.abs(x), w.shape, np.abs(dy), **kw, algorithm="reference")
    err = np.abs(got - want).max() / max(np.abs(terms).max(), 1e-30)
    assert err <= tolerance(dtype, "im2col"), f"blocked grad-weight {p}: relative error {err:.3g}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("C,K,W,stride,groups", [(3, 32, 37, 1, 1), (4, 64, 40, 2, 2),
                                                  (2, 24, 40, 1, 1), (3, 80, 21, 2, 1)])
def test_im2col_blocked_weight_gradient_transposes(dtype, C, K, W, stride, groups):
    """The blocked weight gradient copies dy pixel-major by block transposes when a
    group's channels are whole vectors and a row at least one (the last block of a row
    overlapping the one before), element by element otherwise (K/groups = 24); with
    K/groups = 80 its GEMM runs over several blocks of columns (64 float32, 32 float64)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, C, 6, W)).astype(dtype)
    w_shape = (K, C // groups, 3, 3)
    kw = dict(stride=stride, padding=1, groups=groups)
    dy = rng.standard_normal(fastconv.conv2d(x, np.zeros(w_shape, dtype), **kw).shape).astype(dtype)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(nb_im2col, "WEIGHT_FUSED_MIN_RATIO", 0)
        mp.setattr(nb_im2col, "WEIGHT_FUSED_MIN_CHANNELS", 0)
        mp.setattr(nb_im2col, "WEIGHT_BAND_COLUMNS", 50)
        got = fastconv.conv2d_weight(x, w_shape, dy, **kw, algorithm="im2col")
    want = fastconv.conv2d_weight(x, w_shape, dy, **kw, algorithm="reference")
    assert_close(got, want, tolerance(dtype, "im2col"), "blocked grad-weight")


@pytest.mark.parametrize("dtype", DTYPES)
def test_im2col_blocked_weight_gradient_threads_agree(dtype):
    """The blocked weight gradient sums fixed slices of the pixels, each into its own
    accumulator, in a fixed order: the same bits on one thread as on all."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 3, 30, 30)).astype(dtype)
    w_shape = (64, 3, 7, 7)
    kw = dict(stride=2, padding=3)
    dy = rng.standard_normal(fastconv.conv2d(x, np.zeros(w_shape, dtype), **kw).shape).astype(dtype)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(nb_im2col, "WEIGHT_FUSED_MIN_RATIO", 0)
        mp.setattr(nb_im2col, "WEIGHT_BAND_COLUMNS", 15)
        one = on_one_thread(
            lambda: fastconv.conv2d_weight(x, w_shape, dy, **kw, algorithm="im2col"))
        every = fastconv.conv2d_weight(x, w_shape, dy, **kw, algorithm="im2col")
    np.testing.assert_array_equal(one, every)


@pytest.mark.parametrize("algorithm,backend", kernel_pairs("max_pool2d"))
@settings(max_examples=80)
@given(case=pool_cases(max_pool=True), dtype=st.sampled_from(DTYPES))
def test_max_pool_kernel_matches_reference(algorithm, backend, case, dtype):
    (x,) = arrays(case["H"] * 3 + case["W"], dtype, (case["N"], case["C"], case["H"], case["W"]))
    args = {k: case[k] for k in ("kernel_size", "stride", "padding", "dilation", "ceil_mode")}
    y, idx = fastconv.max_pool2d(x, **args, return_indices=True, algorithm=algorithm, backend=backend)
    y_ref, idx_ref = fastconv.max_pool2d(x, **args, return_indices=True, algorithm="reference")
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(idx, idx_ref)
    (dy,) = arrays(5, dtype, y.shape)
    for bwd_alg, bwd_backend in kernel_pairs("max_pool2d_backward"):
        dx = fastconv.max_pool2d_backward(dy, idx, x.shape, algorithm=bwd_alg, backend=bwd_backend)
        dx_ref = fastconv.max_pool2d_backward(dy, idx, x.shape, algorithm="reference")
        assert_close(dx, dx_ref, tolerance(dtype, bwd_alg), "max_pool2d_backward")


@pytest.mark.parametrize("algorithm,backend", kernel_pairs("avg_pool2d"))
@settings(max_examples=80)
@given(case=pool_cases(max_pool=False), dtype=st.sampled_from(DTYPES),
       count_include_pad=st.booleans(), divisor_override=st.sampled_from([None, 1, 3]))
def test_avg_pool_kernel_matches_reference(algorithm, backend, case, dtype, count_include_pad,
                                           divisor_override):
    (x,) = arrays(case["H"] + case["W"], dtype, (case["N"], case["C"], case["H"], case["W"]))
    args = dict(kernel_size=case["kernel_size"], stride=case["stride"], padding=case["padding"],
                ceil_mode=case["ceil_mode"], count_include_pad=count_include_pad,
                divisor_override=divisor_override)
    y = fastconv.avg_pool2d(x, **args, algorithm=algorithm, backend=backend)
    assert_close(y, fastconv.avg_pool2d(x, **args, algorithm="reference"),
                 tolerance(dtype, algorithm), "avg_pool2d")
    (dy,) = arrays(3, dtype, y.shape)
    for bwd_alg, bwd_backend in kernel_pairs("avg_pool2d_backward"):
        dx = fastconv.avg_pool2d_backward(dy, x.shape, **args, algorithm=bwd_alg, backend=bwd_backend)
        assert_close(dx, fastconv.avg_pool2d_backward(dy, x.shape, **args, algorithm="reference"),
                     tolerance(dtype, bwd_alg), "avg_pool2d_backward")


@pytest.mark.parametrize("algorithm,backend", kernel_pairs("adaptive_avg_pool2d"))
@settings(max_examples=40)
@given(H=st.integers(1, 20), W=st.integers(1, 20), P=st.integers(1, 9), Q=st.integers(1, 9),
       dtype=st.sampled_from(DTYPES))
def test_adaptive_avg_pool_kernel_matches_reference(algorithm, backend, H, W, P, Q, dtype):
    (x,) = arrays(H * W, dtype, (2, 3, H, W))
    y = fastconv.adaptive_avg_pool2d(x, (P, Q), algorithm=algorithm, backend=backend)
    assert_close(y, fastconv.adaptive_avg_pool2d(x, (P, Q), algorithm="reference"),
                 tolerance(dtype, algorithm), "adaptive_avg_pool2d")


def test_every_listed_pair_is_accepted():
    """algorithms(op) lists only pairs its op's algorithm=/backend= accept."""
    x, w = arrays(0, np.float32, (1, 2, 6, 6), (2, 2, 3, 3))
    for algorithm, backend in fastconv.algorithms("conv2d"):
        fastconv.conv2d(x, w, padding=1, algorithm=algorithm, backend=backend)
    for algorithm, backend in fastconv.algorithms("max_pool2d"):
        fastconv.max_pool2d(x, 2, algorithm=algorithm, backend=backend)
    for algorithm, backend in fastconv.algorithms("avg_pool2d"):
        fastconv.avg_pool2d(x, 2, algorithm=algorithm, backend=backend)
    assert ("reference", "numpy") in fastconv.algorithms("conv2d_weight")


def test_limits_match_the_dispatcher():
    """The strategies' limits name only registered algorithms with a SUPPORTS rule."""
    for algorithm in LIMITS:
        if any(a == algorithm for a, _ in fastconv.algorithms("conv2d")):
            assert any(key[0] == algorithm for key in _dispatch.SUPPORTS)


@pytest.mark.parametrize("algorithm,backend", CONV_PAIRS)
def test_conv_is_deterministic(algorithm, backend):
    x, w = arrays(2, np.float32, (2, 8, 17, 15), (8, 8, 3, 3))
    a = fastconv.conv2d(x, w, padding=1, algorithm=algorithm, backend=backend)
    b = fastconv.conv2d(x, w, padding=1, algorithm=algorithm, backend=backend)
    np.testing.assert_array_equal(a, b)


def test_auto_conv_uses_a_registered_kernel_for_every_case():
    case = dict(stride=1, padding=1, dilation=1, groups=1)
    x, w = arrays(3, np.float32, (1, 4, 9, 9), (4, 4, 3, 3))
    want = fastconv.conv2d(x, w, **case, algorithm="reference")
    assert_close(fastconv.conv2d(x, w, **case), want, 1e-4, "auto")


@pytest.mark.parametrize("shape,kw,op,want", [
    ((1, 64, 56, 56), dict(K=256, R=1), "conv2d", "im2col"),             # pointwise: one GEMM
    ((8, 64, 56, 56), dict(K=256, R=1), "conv2d", "im2col"),
    ((8, 2048, 7, 7), dict(K=512, R=1), "conv2d", "direct"),             # the pointwise GEMM
    ((4, 1024, 3, 3), dict(K=256, R=1), "conv2d", "direct"),
    ((2, 2048, 7, 7), dict(K=512, R=1), "conv2d", "im2col"),             # too few images
    ((8, 512, 7, 7), dict(K=2048, R=1), "conv2d", "im2col"),             # C < 4K
    ((8, 1024, 14, 14), dict(K=256, R=1), "conv2d", "im2col"),           # 196 pixels
    ((8, 128, 7, 7), dict(K=32, R=1), "conv2d", "im2col"),               # K < 64
    ((8, 2048, 7, 7), dict(K=512, R=1), "conv2d_input", "im2col"),
    ((8, 128, 28, 28), dict(K=128, R=3, padding=1), "conv2d", "winograd_f4"),
    ((8, 256, 14, 14), dict(K=256, R=3, padding=1), "conv2d_input", "winograd_f4"),
    ((8, 512, 14, 14), dict(K=512, R=3, padding=1), "conv2d_weight", "winograd_f2"),
    ((1, 256, 14, 14), dict(K=256, R=3, padding=1), "conv2d", "winograd_f4"),   # 9 MiB
    ((1, 256, 14, 14), dict(K=256, R=3, padding=1), "conv2d_input", "winograd_f4"),
    ((1, 256, 14, 14), dict(K=256, R=3, padding=1), "conv2d_weight", "winograd_f2"),
    ((1, 512, 14, 14), dict(K=512, R=3, padding=1), "conv2d", "winograd_f4"),   # 36 MiB, 16 tiles
    ((1, 512, 7, 7), dict(K=512, R=3, padding=1), "conv2d_input", "direct"),    # lanes 2 x 7
    ((1, 512, 7, 7), dict(K=512, R=3, padding=1), "conv2d", "direct"),
    ((1, 512, 7, 7), dict(K=512, R=3, padding=1), "conv2d_weight", "direct"),
    ((1, 64, 6, 6), dict(K=64, R=3, padding=1), "conv2d", "im2col"),           # rows under 7
    ((8, 512, 7, 7), dict(K=512, R=3, padding=1), "conv2d", "winograd_f4"),     # 32 tiles
    ((8, 512, 7, 7), dict(K=512, R=3, padding=1), "conv2d_input", "winograd_f4"),
    ((4, 512, 7, 7), dict(K=512, R=3, padding=1), "conv2d", "winograd_f4"),
    ((1, 3, 224, 224), dict(K=64, R=7, stride=2, padding=3), "conv2d", "direct"),
    ((8, 128, 56, 56), dict(K=128, R=3, stride=2, padding=1), "conv2d", "direct"),
    ((8, 128, 56, 56), dict(K=128, R=3, stride=2, padding=1), "conv2d_weight", "direct"),
    ((1, 128, 56, 56), dict(K=128, R=3, stride=2, padding=1), "conv2d_weight", "direct"),
    ((1, 256, 28, 28), dict(K=256, R=3, stride=2, padding=1), "conv2d_weight", "direct"),
    ((8, 512, 14, 14), dict(K=512, R=3, stride=2, padding=1), "conv2d_weight", "direct"),
    ((8, 3, 224, 224), dict(K=64, R=7, stride=2, padding=3), "conv2d_weight", "im2col"),
    ((8, 128, 56, 56), dict(K=128, R=3, stride=2, padding=1), "conv2d_input", "im2col"),
    ((8, 256, 56, 56), dict(K=512, R=1, stride=2), "conv2d", "im2col"),
    ((1, 1, 28, 28), dict(K=8, R=3), "conv2d", "im2col"),
    ((8, 256, 28, 28), dict(K=256, R=3, padding=1, groups=256), "conv2d_weight", "direct"),
])
def test_selection_rules(shape, kw, op, want):
    """The rules of fastconv._dispatch._auto pick what the benchmarks measured fastest
    (float32)."""
    kw = dict(kw)
    K, R, groups = kw.pop("K"), kw.pop("R"), kw.get("groups", 1)
    p = fastconv._geometry.conv_params("t", shape, (K, shape[1] // groups, R, R), **kw)
    assert _dispatch._auto(op, p, np.float32) == want
    assert _dispatch.select(op, "auto", "auto", p, np.float32) is _dispatch.REGISTRY[(op, want, "numba")]


def test_pointwise_selection_is_float32_only():
    """direct's pointwise forward is float32; other dtypes (or none given) keep im2col."""
    p = fastconv._geometry.conv_params("t", (8, 2048, 7, 7), (512, 2048, 1, 1))
    assert _dispatch._auto("conv2d", p, np.float32) == "direct"
    assert _dispatch._auto("conv2d", p, np.float64) == "im2col"
    assert _dispatch._auto("conv2d", p) == "im2col"


@pytest.mark.parametrize("algorithm,backend", CONV_PAIRS)
def test_weights_changed_in_place_are_never_served_stale(algorithm, backend):
    """Kernels may cache what they derive from a weight; an optimiser step that edits
    the same array in place must still give the new answer (forward and grad-input)."""
    x, w, dy = arrays(7, np.float32, (2, 16, 12, 12), (16, 16, 3, 3), (2, 16, 12, 12))
    kw = dict(padding=1, algorithm=algorithm, backend=backend)
    for _ in range(2):   # the second round finds whatever the first one cached
        for edit in (lambda: w.__imul__(-0.5), lambda: w.__setitem__((3, 5, 1, 2), 7.0)):
            fastconv.conv2d(x, w, **kw)
            fastconv.conv2d_input(x.shape, w, dy, **kw)
            edit()
            assert_close(fastconv.conv2d(x, w, **kw),
                         fastconv.conv2d(x, w, padding=1, algorithm="reference"),
                         tolerance(np.float32, algorithm), f"{algorithm} after an in-place edit")
            assert_close(fastconv.conv2d_input(x.shape, w, dy, **kw),
                         fastconv.conv2d_input(x.shape, w, dy, padding=1, algorithm="reference"),
                         tolerance(np.float32, algorithm), f"{algorithm} grad-input after an edit")
