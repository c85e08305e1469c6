"""Winograd F(2x2,3x3) and F(4x4,3x3): edge tiles, asymmetric and large padding, the
transform matrices, and the float32 accuracy on a large-C layer (Lavin & Gray 2016)."""
import numpy as np
import pytest

import fastconv
from fastconv import reference
from fastconv._geometry import ConvParams
from fastconv.kernels.numba import winograd as wg

from conftest import arrays, assert_close

ALGORITHMS = ("winograd_f2", "winograd_f4")
KERNELS = {"winograd_f2": (wg.conv2d_f2, wg.conv2d_input_f2, wg.conv2d_weight_f2),
           "winograd_f4": (wg.conv2d_f4, wg.conv2d_input_f4, wg.conv2d_weight_f4)}
# max |error| / max |reference|, on small C (float32 accuracy on large C: see below)
EDGE_TOL = {np.float32: {"winograd_f2": 2e-6, "winograd_f4": 2e-5},
            np.float64: {"winograd_f2": 1e-14, "winograd_f4": 1e-13}}


def _params(N, C, H, W, K, pt, pb, pl, pr):
    P, Q = H + pt + pb - 2, W + pl + pr - 2
    return ConvParams(N, C, H, W, K, 3, 3, 1, 1, 1, pt, pb, pl, pr, 1, 1, P, Q)


@pytest.mark.parametrize("m, BT, G, AT", [(2, wg.BT2, wg.G2, wg.AT2), (4, wg.BT4, wg.G4, wg.AT4)])
def test_matrices_compute_a_correlation(m, BT, G, AT):
    """A^T [(G g) * (B^T d)] = the m outputs of the 1-D correlation of d with g."""
    d, g = np.random.default_rng(m).standard_normal((2, m + 2))
    g = g[:3]
    want = np.array([d[i:i + 3] @ g for i in range(m)])
    np.testing.assert_allclose(AT @ ((G @ g) * (BT @ d)), want, rtol=0, atol=1e-13)


def _edge_cases():
    rng = np.random.default_rng(1)
    cases = []
    for i, hw in enumerate(range(1, 14)):
        H, W = hw, int(rng.integers(1, 14))
        C = int(rng.integers(1, 41)) if i % 2 else int(rng.integers(60, 71))
        K = int(rng.integers(60, 71)) if i % 2 else int(rng.integers(1, 41))
        # padding from 0 to 3 per side (3 > 2: the grad-input padding 2 - pad < 0 crops)
        pads = [int(v) for v in rng.integers(0, 4, size=4)]
        if H + pads[0] + pads[1] < 3:
            pads[1] = 3 - H - pads[0]
        if W + pads[2] + pads[3] < 3:
            pads[3] = 3 - W - pads[2]
        cases.append((1, C, H, W, K, *pads))
    # rows of at least one vector and whole vectors of channels: the channels-last
    # conversions' block transposes (last block of a row overlapping; a channel tail)
    cases += [(2, 32, 4, 37, 40, 1, 1, 1, 1), (1, 40, 3, 17, 33, 0, 2, 3, 0),
              (1, 48, 5, 16, 16, 1, 1, 0, 0)]
    return cases


#: the three ways the forward passes run: fused per thread on tile batches, fused with
#: the output channels shared out among threads, and unfused; the weight gradient runs
#: fused on the first (in 1, 2 or 4 parts of a few blocks of 8 tiles), unfused on the
#: others
PATHS = {"fused": dict(FUSED_MAX_FILTER_BYTES=2**40,
                       WEIGHT_FUSED_MAX_FILTER_BYTES=2**40, WEIGHT_PART_MIN_TILES=2,
                       WEIGHT_FOUR_PARTS_TILES=12, WEIGHT_BLOCK_TILES=8),
         "split": dict(FUSED_MAX_FILTER_BYTES=0, SPLIT_MAX_SLICE_BYTES=2**40,
                       WEIGHT_FUSED_MAX_FILTER_BYTES=0),
         "unfused": dict(FUSED_MAX_FILTER_BYTES=0, SPLIT_MAX_SLICE_BYTES=0,   # float32: own GEMM
                         SPLIT_MAX_STREAM_BYTES=0, WEIGHT_FUSED_MAX_FILTER_BYTES=0)}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_edge_tiles_and_padding(algorithm, dtype, path, monkeypatch):
    """H, W in 1..13 (partial tiles, images smaller than a tile), asymmetric padding up
    to 3, C and K in 1..40 and 60..70 (K not a multiple of the thread count), and a few
    rows of 16-37 columns with 32-48 channels: forward,
    grad-input and grad-weight against the reference, on each path."""
    if path == "split" and fastconv.get_num_threads() < 2:
        pytest.skip("the output channels are shared out only among 2 or more threads")
    for name, value in PATHS[path].items():
        monkeypatch.setattr(wg, name, value)
    forward, backward, weight = KERNELS[algorithm]
    tol = EDGE_TOL[dtype][algorithm]
    for seed, case in enumerate(_edge_cases()):
        p = _params(*case)
        assert wg.supports(p)
        x, w, dy = arrays(seed, dtype, p.input_shape, p.weight_shape, p.output_shape)
        for kernel, ref, args, shape, what in [
                (forward, reference.conv2d, (x, w), p.output_shape, "conv2d"),
                (backward, reference.conv2d_input, (dy, w), p.input_shape, "conv2d_input"),
                (weight, reference.conv2d_weight, (x, dy), p.weight_shape, "conv2d_weight")]:
            got, want = np.empty(shape, dtype), np.empty(shape)
            kernel(*args, p, got)
            ref(*args, p, want)
            assert_close(got, want, tol, f"{algorithm} {what} {np.dtype(dtype)} {case}")


def test_filter_transformed_on_the_fly(monkeypatch):
    """F(4x4,3x3) float32 with the filter transformed per call in the work items
    (``_streamed_items``: 64 output channels, chunks of 64 input channels), forced on the
    edge cases (channel tails in both, partial tiles, padding) and on 64-130 channels
    (several panels and chunks): forward and grad-input against the reference."""
    monkeypatch.setattr(wg, "STREAM_MIN_FILTER_BYTES", 0)
    monkeypatch.setattr(wg, "STREAM_MAX_TILES", 2**40)
    assert wg._streams(4, np.float32, 0, 1) and not wg._streams(2, np.float32, 0, 1)
    tol = EDGE_TOL[np.float32]["winograd_f4"]
    for seed, case in enumerate(_edge_cases() + [(2, 130, 9, 9, 70, 1, 1, 1, 1),
                                                   (1, 64, 6, 11, 129, 0, 2, 1, 0)]):
        p = _params(*case)
        x, w, dy = arrays(seed, np.float32, p.input_shape, p.weight_shape, p.output_shape)
        for kernel, ref, args, shape, what in [
                (wg.conv2d_f4, reference.conv2d, (x, w), p.output_shape, "conv2d"),
                (wg.conv2d_input_f4, reference.conv2d_input, (dy, w), p.input_shape,
                 "conv2d_input")]:
            got, want = np.empty(shape, np.float32), np.empty(shape)
            kernel(*args, p, got)
            ref(*args, p, want)
            assert_close(got, want, tol, f"streamed {what} {case}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_public_api(algorithm, dtype):
    """Through fastconv.conv2d / conv2d_input with padding 0, 1, 2 and 'same'."""
    tol = EDGE_TOL[dtype][algorithm]
    for seed, (N, C, H, W, K, padding) in enumerate(
            [(1, 5, 9, 7, 3, 1), (2, 3, 6, 11, 4, 0), (1, 7, 5, 5, 6, 2), (3, 2, 4, 13, 5, "same")]):
        x, w = arrays(seed, dtype, (N, C, H, W), (K, C, 3, 3))
        y = fastconv.conv2d(x, w, padding=padding, algorithm=algorithm, backend="numba")
        y_ref = fastconv.conv2d(x, w, padding=padding, algorithm="reference")
        assert y.dtype == dtype
        assert_close(y, y_ref, tol, f"{algorithm} conv2d {padding}")
        (dy,) = arrays(seed + 100, dtype, y.shape)
        dx = fastconv.conv2d_input(x.shape, w, dy, padding=padding, algorithm=algorithm,
                                   backend="numba")
        dx_ref = fastconv.conv2d_input(x.shape, w, dy, padding=padding, algorithm="reference")
        assert_close(dx, dx_ref, tol, f"{algorithm} conv2d_input {padding}")
        dw = fastconv.conv2d_weight(x, w.shape, dy, padding=padding, algorithm=algorithm,
                                    backend="numba")
        dw_ref = fastconv.conv2d_weight(x, w.shape, dy, padding=padding, algorithm="reference")
        assert_close(dw, dw_ref, tol, f"{algorithm} conv2d_weight {padding}")


@pytest.mark.parametrize("algorithm, bound", [("winograd_f2", 1e-5), ("winograd_f4", 1e-4)])
def test_float32_accuracy_large_channels(algorithm, bound):
    """C=256 (the error grows with the reduction length): max abs error against the
    float64 reference, relative to the output's largest magnitude, within 1e-5 for
    F(2x2,3x3) and 1e-4 for F(4x4,3x3); the same bound for both gradients."""
    x, w = arrays(7, np.float32, (1, 256, 12, 12), (32, 256, 3, 3))
    y = fastconv.conv2d(x, w, padding=1, algorithm=algorithm, backend="numba")
    y_ref = fastconv.conv2d(x.astype(np.float64), w.astype(np.float64), padding=1,
                            algorithm="reference")
    err = np.abs(y - y_ref).max() / np.abs(y_ref).max()
    assert err <= bound, f"{algorithm}: relative error {err:.3g} > {bound:.0e}"
    (dy,) = arrays(8, np.float32, y.shape)
    for op, got, want in [
            ("conv2d_input",
             fastconv.conv2d_input(x.shape, w, dy, padding=1, algorithm=algorithm, backend="numba"),
             fastconv.conv2d_input(x.shape, w.astype(np.float64), dy.astype(np.float64),
                                   padding=1, algorithm="reference")),
            ("conv2d_weight",
             fastconv.conv2d_weight(x, w.shape, dy, padding=1, algorithm=algorithm, backend="numba"),
             fastconv.conv2d_weight(x.astype(np.float64), w.shape, dy.astype(np.float64),
                                    padding=1, algorithm="reference"))]:
        err = np.abs(got - want).max() / np.abs(want).max()
        assert err <= bound, f"{algorithm} {op}: relative error {err:.3g} > {bound:.0e}"


@pytest.mark.parametrize("path", ["fused", "unfused"])
@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-13), (np.float32, 1e-5)])
def test_workspace_tiling(path, dtype, tol, monkeypatch):
    """A workspace limit of one tile's worth gives the same result, tile by tile (and
    grad-weight sums its tile batches)."""
    x, w = arrays(3, dtype, (2, 3, 10, 9), (60, 3, 3, 3))   # 60 channels: the own GEMM, padded
    want = fastconv.conv2d(x, w, padding=1, algorithm="reference")
    for name, value in PATHS[path].items():
        monkeypatch.setattr(wg, name, value)
    monkeypatch.setattr(wg, "get_workspace_limit", lambda: 1)
    dy = np.ones_like(want)
    want_dw = fastconv.conv2d_weight(x, w.shape, dy, padding=1, algorithm="reference")
    for algorithm in ALGORITHMS:
        got = fastconv.conv2d(x, w, padding=1, algorithm=algorithm, backend="numba")
        assert_close(got, want, tol, algorithm)
        got = fastconv.conv2d_weight(x, w.shape, dy, padding=1, algorithm=algorithm,
                                     backend="numba")
        assert_close(got, want_dw, tol, f"{algorithm} conv2d_weight")


@pytest.mark.parametrize("parts", [2, 4])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_weight_gradient_independent_of_threads(algorithm, dtype, parts, monkeypatch):
    """The fused weight gradient sums fixed runs of tiles into a fixed number of parts
    and adds those in order: bit-identical on 1 and 2 threads (and close to the
    reference), with 2 parts (the defaults) and 4."""
    if fastconv.get_num_threads() < 2:
        pytest.skip("needs 2 threads")
    if parts == 4:
        monkeypatch.setattr(wg, "WEIGHT_FOUR_PARTS_TILES", 128)
    x, w = arrays(5, dtype, (3, 6, 30, 29), (7, 6, 3, 3))
    (dy,) = arrays(6, dtype, (3, 7, 30, 29))
    m = int(algorithm[-1])
    assert wg._weight_parts(3 * -(-30 // m) * -(-29 // m)) == parts
    threads = fastconv.get_num_threads()
    got = {}
    try:
        for n in (1, 2):
            fastconv.set_num_threads(n)
            got[n] = fastconv.conv2d_weight(x, w.shape, dy, padding=1, algorithm=algorithm,
                                            backend="numba")
    finally:
        fastconv.set_num_threads(threads)
    assert np.array_equal(got[1], got[2])
    want = fastconv.conv2d_weight(x, w.shape, dy, padding=1, algorithm="reference")
    assert_close(got[2], want, EDGE_TOL[dtype][algorithm], algorithm)


def test_supports():
    """3x3, stride 1, dilation 1, groups 1 only; the docstring names the limits."""
    ok = _params(1, 4, 8, 8, 4, 1, 1, 1, 1)
    assert wg.supports(ok)
    for change in [dict(R=5, S=5), dict(stride_h=2), dict(dil_w=2), dict(groups=2)]:
        assert not wg.supports(ConvParams(**{**ok.__dict__, **change}))
    assert "3x3" in wg.supports.__doc__


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_nan_and_inf_stay_non_finite(algorithm):
    """A NaN or Inf spreads to its whole output tile: every output the reference makes
    non-finite is non-finite here too (a superset), forward and grad-input."""
    x, w = arrays(4, np.float32, (1, 2, 9, 7), (3, 2, 3, 3))
    x[0, 0, 2, 3], x[0, 1, 6, 1] = np.nan, np.inf
    got = fastconv.conv2d(x, w, padding=1, algorithm=algorithm, backend="numba")
    want = fastconv.conv2d(x, w, padding=1, algorithm="reference")
    assert not np.isfinite(got[~np.isfinite(want)]).any()
    got = fastconv.conv2d_input(x.shape, w, np.ascontiguousarray(x[:, :1].repeat(3, 1)),
                                padding=1, algorithm=algorithm, backend="numba")
    want = fastconv.conv2d_input(x.shape, w, np.ascontiguousarray(x[:, :1].repeat(3, 1)),
                                 padding=1, algorithm="reference")
    assert not np.isfinite(got[~np.isfinite(want)]).any()
