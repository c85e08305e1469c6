"""im2col-specific tests: each of its variants forced and checked to have run (one GEMM
per image or over the batch for 1x1 layers, tiles of images or bands of rows under the
workspace bound, and the weight gradient's blocked GEMM that reads patch rows in
place: bands, slices, transposes, threads)."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastconv
from fastconv.kernels import layouts

from conftest import (DTYPES, arrays, assert_close, conv_args, conv_cases, on_one_thread,
                      ran_plan, tolerance, tuned)

#: thresholds that send every weight gradient (but unpadded 1x1 layers') to the blocked
#: GEMM
BLOCKED = dict(WEIGHT_FUSED_MIN_RATIO=0, WEIGHT_FUSED_MIN_CHANNELS=0)


@settings(max_examples=40, deadline=None)
@given(data=st.data(), dtype=st.sampled_from(DTYPES))
def test_blocked_weight_gradient(data, dtype):
    """im2col's blocked weight-gradient path (taken by layers with many output pixels
    per patch row, such as a 7x7 RGB stem), forced on every geometry with small bands
    and blocks, so partial bands, several blocks and groups all occur; 1x1 layers
    without padding (strided too) keep their GEMMs over the images' planes."""
    case = data.draw(conv_cases("im2col"))
    p = case["params"]
    x, w, dy = arrays(p.N + p.C, dtype, p.input_shape, p.weight_shape, p.output_shape)
    kw = conv_args(case)
    band = data.draw(st.sampled_from([1, 7, 40]))
    slices = data.draw(st.sampled_from([1, 3, 64]))
    with tuned(**BLOCKED, WEIGHT_BAND_COLUMNS=band, WEIGHT_SLICES=slices):
        got, plan = ran_plan(lambda: fastconv.conv2d_weight(x, w.shape, dy, **kw,
                                                            algorithm="im2col"),
                             algorithm="im2col")
    if p.R == p.S == 1 and not p.padded:
        assert plan.variant in ("batch_gemm", "image_gemm"), plan
    else:
        assert plan.variant == "patch_gemm", plan
        assert plan["slices"] == slices
        assert plan["band_rows"] == max(1, min(p.P, band // p.Q))
    want = fastconv.conv2d_weight(x, w.shape, dy, **kw, algorithm="reference")
    # the rounding error of a sum is relative to the sum of the terms' magnitudes: two
    # float32 products that cancel to 1/600 of their size drew 1.1e-5 of the result
    terms = fastconv.conv2d_weight(np.abs(x), w.shape, np.abs(dy), **kw, algorithm="reference")
    err = np.abs(got - want).max() / max(np.abs(terms).max(), 1e-30)
    assert err <= tolerance(dtype, "im2col"), f"blocked grad-weight {p}: relative error {err:.3g}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("C,K,W,stride,groups", [(3, 32, 37, 1, 1), (4, 64, 40, 2, 2),
                                                  (2, 24, 40, 1, 1), (3, 80, 21, 2, 1)])
def test_blocked_weight_gradient_transposes(dtype, C, K, W, stride, groups):
    """The blocked weight gradient copies dy pixel-major by block transposes when a
    group's channels are whole vectors and a row at least one (the last block of a row
    overlapping the one before), element by element otherwise (K/groups = 24); with
    K/groups = 80 its GEMM runs over several blocks of columns (``layouts``'
    PATCH_GEMM_BLOCKS: 24 float32, 12 float64 with 16 vector registers; 64, 32 with 32)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, C, 6, W)).astype(dtype)
    w_shape = (K, C // groups, 3, 3)
    kw = dict(stride=stride, padding=1, groups=groups)
    dy = rng.standard_normal(fastconv.conv2d(x, np.zeros(w_shape, dtype), **kw).shape).astype(dtype)
    with tuned(**BLOCKED, WEIGHT_BAND_COLUMNS=50):
        got, plan = ran_plan(lambda: fastconv.conv2d_weight(x, w_shape, dy, **kw,
                                                            algorithm="im2col"),
                             algorithm="im2col", variant="patch_gemm")
    cols, rows = layouts.patch_gemm_block(dtype)
    assert plan["block"] == (rows, cols)
    assert layouts.patch_gemm_block(dtype) == layouts.PATCH_GEMM_BLOCKS[dtype != np.float32]
    if K // groups == 80:
        assert K // groups > cols                 # several blocks of columns
    want = fastconv.conv2d_weight(x, w_shape, dy, **kw, algorithm="reference")
    assert_close(got, want, tolerance(dtype, "im2col"), "blocked grad-weight")


@pytest.mark.parametrize("dtype", DTYPES)
def test_blocked_weight_gradient_threads_agree(dtype):
    """The blocked weight gradient sums fixed slices of the pixels, each into its own
    accumulator, in a fixed order: the same bits on one thread as on all."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 3, 30, 30)).astype(dtype)
    w_shape = (64, 3, 7, 7)
    kw = dict(stride=2, padding=3)
    dy = rng.standard_normal(fastconv.conv2d(x, np.zeros(w_shape, dtype), **kw).shape).astype(dtype)

    def grad():
        return ran_plan(lambda: fastconv.conv2d_weight(x, w_shape, dy, **kw, algorithm="im2col"),
                        variant="patch_gemm", band_rows=1, slices=16)

    with tuned(WEIGHT_FUSED_MIN_RATIO=0, WEIGHT_BAND_COLUMNS=15):
        one, plan_one = on_one_thread(grad)
        every, plan_every = grad()
    np.testing.assert_array_equal(one, every)
    assert plan_one.blocking == plan_every.blocking


@pytest.mark.parametrize("dtype", DTYPES)
def test_auto_picks_the_blocked_weight_gradient_for_a_stem(dtype):
    """The defaults send a 7x7 RGB stem's weight gradient (3136 output pixels per 147
    patch rows, 64 channels) to the blocked GEMM."""
    x, = arrays(2, dtype, (1, 3, 112, 112))
    w_shape = (64, 3, 7, 7)
    dy, = arrays(3, dtype, (1, 64, 56, 56))
    got, _ = ran_plan(lambda: fastconv.conv2d_weight(x, w_shape, dy, stride=2, padding=3),
                      algorithm="im2col", variant="patch_gemm")
    assert_close(got, fastconv.conv2d_weight(x, w_shape, dy, stride=2, padding=3,
                                             algorithm="reference"),
                 tolerance(dtype, "im2col"), "stem grad-weight")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,HW,variant", [(1, (5, 7), "image_gemm"), (3, (5, 7), "batch_gemm"),
                                          (2, (12, 12), "image_gemm")])
def test_pointwise_variants(dtype, N, HW, variant):
    """1x1 stride-1 layers: one GEMM per image on the planes in place, or one over the
    batch for small planes and N > 1 (forward and both gradients; groups), on Numba.
    (Cython's forward runs per image on any planes: test_cython.py's
    test_pointwise_variants.)"""
    for groups in (1, 2):
        x, w = arrays(N, dtype, (N, 6) + HW, (10, 6 // groups, 1, 1))
        dy, = arrays(N + 1, dtype, (N, 10) + HW)
        for op, call, ref in [
                ("conv2d", lambda **a: fastconv.conv2d(x, w, groups=groups, **a), None),
                ("conv2d_input", lambda **a: fastconv.conv2d_input(x.shape, w, dy, groups=groups,
                                                                    **a), None),
                ("conv2d_weight", lambda **a: fastconv.conv2d_weight(x, w.shape, dy,
                                                                      groups=groups, **a), None)]:
            got, _ = ran_plan(lambda: call(algorithm="im2col", backend="numba"), op=op,
                              variant=variant)
            assert_close(got, call(algorithm="reference"), tolerance(dtype, "im2col"),
                         f"{op} {variant} groups={groups}")
    with tuned(POINTWISE_ONE_GEMM_BELOW=10**9):      # larger planes in one GEMM too
        assert fastconv.plan("conv2d", (N, 6) + HW, (10, 6, 1, 1), algorithm="im2col",
                             backend="numba").variant == ("batch_gemm" if N > 1 else
                                                          "image_gemm")


@pytest.mark.parametrize("limit,tile", [(1, (1, 1)), (5000, (1, 2)), (40_000, (2, 7)),
                                        (10**6, (5, 7))])
def test_workspace_bound_sets_the_tiles(limit, tile):
    """The workspace bound sets the plan's tile: bands of output rows of one image when
    an image does not fit (tiny bounds: one row), else as many whole images as fit
    (176 bytes per output column, 84 columns per image); every tiling gives the same
    result (forward, grad-input, grad-weight)."""
    x, w = arrays(1, np.float64, (5, 3, 13, 12), (4, 3, 3, 2))
    kw = dict(stride=(2, 1), padding=1, dilation=(1, 2))
    want = fastconv.conv2d(x, w, **kw, algorithm="reference")
    dy = np.ones_like(want)
    old = fastconv.get_workspace_limit()
    try:
        fastconv.set_workspace_limit(limit)
        for op, call in [("conv2d", lambda **a: fastconv.conv2d(x, w, **kw, **a)),
                         ("conv2d_input", lambda **a: fastconv.conv2d_input(x.shape, w, dy, **kw,
                                                                             **a)),
                         ("conv2d_weight", lambda **a: fastconv.conv2d_weight(x, w.shape, dy,
                                                                               **kw, **a))]:
            got, _ = ran_plan(lambda: call(algorithm="im2col"), op=op, variant="tiled", tile=tile)
            assert_close(got, call(algorithm="reference"), 1e-12, f"{op} tile {tile}")
    finally:
        fastconv.set_workspace_limit(old)
