"""The Cython backend (fastconv/kernels/cython/, docs/cython.md): registered when
built, each kernel against its Numba twin and the reference in every variant the
planner makes, each instruction-set variant forced in a subprocess, thread counts and
concurrent Python threads.

Skipped, with the reason, when the extension is not built (a source tree used in
place); with ``FASTCONV_REQUIRE_CYTHON=1`` (CI) a missing build fails instead.
"""
import contextlib
import itertools
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import fastconv
from fastconv import _dispatch, _machine, _tuning
from fastconv.kernels import cython as cy

from conftest import (DTYPES, arrays, assert_close, blas_rows_round_alike, conv_args,
                      conv_cases, on_one_thread, pool_cases, tolerance)

WHY_NOT = cy.available()
if WHY_NOT is not None and os.environ.get("FASTCONV_REQUIRE_CYTHON") != "1":
    pytest.skip(f"Cython backend not available: {WHY_NOT}", allow_module_level=True)

CONV_OPS = ("conv2d", "conv2d_input", "conv2d_weight")
POOL_OPS = ("max_pool2d", "max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward",
            "adaptive_avg_pool2d")


# -- registry and planner ----------------------------------------------------------------


def test_backend_is_registered_and_available():
    assert WHY_NOT is None, WHY_NOT
    assert "cython" in _dispatch.available_backends()
    for op in CONV_OPS:
        for algorithm in ("im2col", "winograd_f2", "winograd_f4", "direct"):
            assert (algorithm, "cython") in fastconv.algorithms(op)
    for op in POOL_OPS:
        assert ("direct", "cython") in fastconv.algorithms(op)
    assert cy.ISA in cy.SUPPORTED and set(cy.SUPPORTED) <= set(cy.BUILT)
    if cy.BUILT != ("native",) and os.uname().machine == "x86_64":
        assert cy.BUILT == ("baseline", "avx2", "avx512")


def test_auto_prefers_cython_where_it_has_the_algorithm():
    """backend="auto": the selector's algorithm, on Cython if Cython has it, else Numba
    (docs/cython.md); the same plan before and after the Numba kernels ran."""
    for op in CONV_OPS:
        for algorithm, want in (("im2col", "cython"), ("winograd_f4", "cython"),
                                ("reference", "numpy")):
            kw = dict(padding=1, algorithm=algorithm)
            plan = fastconv.plan(op, (2, 8, 12, 12), (8, 8, 3, 3), **kw)
            assert plan.backend == want, plan
            if want != "numpy":
                fastconv.plan(op, (2, 8, 12, 12), (8, 8, 3, 3), **kw, backend="numba")
            assert fastconv.plan(op, (2, 8, 12, 12), (8, 8, 3, 3), **kw) == plan
    for op, kw in (("max_pool2d", {}), ("avg_pool2d", {})):
        assert fastconv.plan(op, (2, 8, 12, 12), kernel_size=2, **kw).backend == "cython"
    x, w = arrays(0, np.float32, (2, 8, 12, 12), (8, 8, 3, 3))
    fastconv.conv2d(x, w, padding=1, algorithm="im2col", backend="numba")   # Numba warm now
    with fastconv.trace_plans() as ran:
        fastconv.conv2d(x, w, padding=1, algorithm="im2col")
    assert ran[-1].backend == "cython"


def test_auto_runs_cython_for_every_variant_it_has():
    """Direct's forward of 8 input channels to 12 output channels on 3x3 (rows shorter
    than any lanes block): the rules choose the flat core, which both backends have
    (Cython's since session 17), so backend="auto" runs it on Cython, as it does
    direct's 1x1 pointwise GEMM and Winograd's streamed path (a large filter on few
    tiles, where ``STREAM_MIN_FILTER_BYTES`` allows it)."""
    shapes = ((1, 8, 3, 3), (12, 8, 3, 3))
    plan = fastconv.plan("conv2d", *shapes, padding=1, algorithm="direct")
    assert (plan.backend, plan.variant) == ("cython", "flat"), plan
    plan = fastconv.plan("conv2d", (1, 2048, 7, 7), (512, 2048, 1, 1), algorithm="direct")
    assert (plan.backend, plan.variant) == ("cython", "pointwise"), plan
    shapes = ((8, 512, 7, 7), (512, 512, 3, 3))
    with tuned(STREAM_MIN_FILTER_BYTES=2**24):
        plan = fastconv.plan("conv2d", *shapes, padding=1, algorithm="winograd_f4")
    assert (plan.backend, plan.variant) == ("cython", "streamed"), plan
    small = fastconv.plan("conv2d", (8, 64, 7, 7), (64, 64, 3, 3), padding=1,
                          algorithm="winograd_f4")
    assert (small.backend, small.variant) == ("cython", "fused"), small


def test_set_backend_cython_runs_every_op_on_cython():
    fastconv.set_backend("cython")
    x, w = arrays(0, np.float32, (1, 4, 8, 8), (4, 4, 3, 3))
    with fastconv.trace_plans() as ran:
        y = fastconv.conv2d(x, w, padding=1)
        fastconv.conv2d_input(x.shape, w, y, padding=1)
        fastconv.conv2d_weight(x, w.shape, y, padding=1)
        z, idx = fastconv.max_pool2d(x, 2, return_indices=True)
        fastconv.max_pool2d_backward(z, idx, x.shape)
        fastconv.avg_pool2d_backward(fastconv.avg_pool2d(x, 2), x.shape, 2)
        fastconv.adaptive_avg_pool2d(x, 3)
        fastconv.conv2d(x, w, padding=1, algorithm="direct")
    assert len(ran) == 9 and {p.backend for p in ran} == {"cython"}


def test_backend_cython_runs_what_it_has_and_names_the_rest():
    x, w = arrays(0, np.float32, (1, 4, 8, 8), (4, 4, 3, 3))
    with fastconv.trace_plans() as ran:
        fastconv.conv2d(x, w, padding=1, backend="cython")           # auto: im2col here
        fastconv.max_pool2d(x, 2, backend="cython")
    assert [(p.algorithm, p.backend) for p in ran] == [("im2col", "cython"), ("direct", "cython")]
    with pytest.raises(ValueError, match=r"algorithm='fft', backend='cython'.*"
                                         r"registered:.*\(algorithm='direct', backend='cython'\)"):
        fastconv.conv2d(x, w, padding=1, algorithm="fft", backend="cython")


# -- every kernel against Numba and the reference -----------------------------------------


def _conv_all(case, x, w, dy, backend, algorithm="im2col"):
    kw = dict(conv_args(case), algorithm=algorithm, backend=backend)
    return {"conv2d": fastconv.conv2d(x, w, **kw),
            "conv2d_input": fastconv.conv2d_input(x.shape, w, dy, **kw),
            "conv2d_weight": fastconv.conv2d_weight(x, w.shape, dy, **kw)}


def _check_conv(case, dtype, seed, ops=CONV_OPS):
    p = case["params"]
    x, w, dy = arrays(seed, dtype, p.input_shape, p.weight_shape, p.output_shape)
    with fastconv.trace_plans() as ran:
        got = _conv_all(case, x, w, dy, "cython")
    numba = _conv_all(case, x, w, dy, "numba")
    want = _conv_all(case, x, w, dy, "numpy", "reference")
    tol = tolerance(dtype, "im2col")
    for op in ops:
        assert got[op].dtype == dtype
        assert_close(got[op], want[op], tol, f"{op} cython vs reference {p}")
        assert_close(got[op], numba[op], tol, f"{op} cython vs numba {p}")
    return {plan.op: plan.variant for plan in ran}


@settings(max_examples=25)
@given(case=conv_cases("im2col"), dtype=st.sampled_from(DTYPES))
def test_im2col_matches_numba_and_reference(case, dtype):
    _check_conv(case, dtype, case["params"].N + 3)


WINOGRAD = ("winograd_f2", "winograd_f4")


def _check_winograd(case, dtype, algorithm, seed=0):
    """Cython's Winograd (forward, both gradients) against the reference and Numba's
    within the tolerance of ``algorithm``; returns the plans Cython ran."""
    p = case["params"]
    x, w, dy = arrays(seed + p.N, dtype, p.input_shape, p.weight_shape, p.output_shape)
    with fastconv.trace_plans() as ran:
        got = _conv_all(case, x, w, dy, "cython", algorithm)
    numba = _conv_all(case, x, w, dy, "numba", algorithm)
    want = _conv_all(case, x, w, dy, "numpy", "reference")
    tol = tolerance(dtype, algorithm)
    for op in CONV_OPS:
        assert got[op].dtype == dtype
        assert_close(got[op], want[op], tol, f"{op} {algorithm} cython vs reference {p}")
        assert_close(got[op], numba[op], tol, f"{op} {algorithm} cython vs numba {p}")
    assert {(pl.algorithm, pl.backend) for pl in ran} == {(algorithm, "cython")}
    return ran


@settings(max_examples=25)
@given(data=st.data(), algorithm=st.sampled_from(WINOGRAD), dtype=st.sampled_from(DTYPES))
def test_winograd_matches_numba_and_reference(data, algorithm, dtype):
    """The planner's own plans: fused forward and input gradient, the weight gradient
    fused but on few tiles with much work (partial tiles, any padding, asymmetric
    included)."""
    ran = _check_winograd(data.draw(conv_cases(algorithm)), dtype, algorithm)
    for pl in ran:
        if pl.op != "conv2d_weight":
            assert pl.variant in ("fused", "split"), pl
            continue
        th, tw = pl["tiles"]
        g = pl.geometry
        tiles, alpha2 = g.N * th * tw, 16 if algorithm == "winograd_f2" else 36
        many = (tiles >= _tuning.get("WEIGHT_FUSED_MIN_TILES")
                or tiles * alpha2 * g.C * g.K < _tuning.get("WEIGHT_UNFUSED_MIN_MACS"))
        assert pl.variant == ("fused" if many else "unfused"), pl


@settings(max_examples=15)
@given(data=st.data(), algorithm=st.sampled_from(WINOGRAD), dtype=st.sampled_from(DTYPES),
       threads=st.sampled_from([1, 2]))
def test_winograd_split_and_weight_parts(data, algorithm, dtype, threads):
    """Forced: the forward's filter split in slices of output channels (2 threads; one
    thread runs unfused), the weight gradient summed in 2 or 4 parts of small blocks of
    tile rows."""
    if threads > fastconv._config.MAX_THREADS:
        pytest.skip("needs 2 threads")
    case = data.draw(conv_cases(algorithm, max_hw=20))
    fastconv.set_num_threads(threads)
    with tuned(FUSED_MAX_FILTER_BYTES=0, SPLIT_MIN_TILES=0, WEIGHT_PART_MIN_TILES=1,
               WEIGHT_FUSED_MIN_TILES=0,
               WEIGHT_FOUR_PARTS_TILES=data.draw(st.sampled_from([3, 10**9])),
               WEIGHT_BLOCK_TILES=data.draw(st.sampled_from([1, 8]))):
        ran = _check_winograd(case, dtype, algorithm, seed=1)
    by_op = {pl.op: pl for pl in ran}
    want = {"split"} if threads == 2 else {"unfused", "unfused_blas"}
    assert {by_op["conv2d"].variant, by_op["conv2d_input"].variant} <= want, ran
    assert by_op["conv2d_weight"].variant == "fused"
    if threads == 2:
        assert by_op["conv2d"]["filter_slices"] == 2


@settings(max_examples=20)
@given(data=st.data(), algorithm=st.sampled_from(WINOGRAD), dtype=st.sampled_from(DTYPES),
       threads=st.sampled_from([1, 2]), own=st.booleans(), workspace=st.sampled_from([1, None]))
def test_winograd_unfused(data, algorithm, dtype, threads, own, workspace):
    """Forced unfused: the alpha^2 GEMMs on all of a batch's tiles at once, by the
    channels-last 1x1 kernel on U's panels (``unfused``: float32, the tile rows padded
    to its register block) or by BLAS (``unfused_blas``), in batches of one or a few
    tile rows (workspace limit 1) or of every tile; forward and input gradient, and the
    forward with bias, residual and ReLU6 in the output transform. The weight gradient
    unfused: BLAS GEMMs summed over the batches."""
    if threads > fastconv._config.MAX_THREADS:
        pytest.skip("needs 2 threads")
    case = data.draw(conv_cases(algorithm, max_hw=20))
    fastconv.set_num_threads(threads)
    want = "unfused" if own and dtype == np.float32 else "unfused_blas"
    p = case["params"]
    x, w, dy, bias = arrays(7 + p.N, dtype, p.input_shape, p.weight_shape, p.output_shape,
                            (p.K,))
    fused = dict(bias=bias, residual=dy, activation="relu6", **conv_args(case))
    with tuned(workspace, FUSED_MAX_FILTER_BYTES=0, SPLIT_MAX_SLICE_BYTES=0,
               SPLIT_MAX_STREAM_BYTES=0, GEMM_MAX_PADDING=2**40 if own else 0,
               WEIGHT_FUSED_MAX_FILTER_BYTES=0):
        ran = _check_winograd(case, dtype, algorithm, seed=2)
        with fastconv.trace_plans() as ep_ran:
            got = fastconv.conv2d(x, w, **fused, algorithm=algorithm, backend="cython")
    for pl in ran + ep_ran:
        if pl.op == "conv2d_weight":
            assert pl.variant == "unfused", pl
            assert workspace is None or pl["tile_batch"] == 1, pl
        else:
            assert pl.variant == want, pl
            assert workspace is None or pl["tile_batch"] <= pl["gemm_block"][0], pl
    assert_close(got, fastconv.conv2d(x, w, **fused, algorithm="reference"),
                 tolerance(dtype, algorithm), f"epilogue {algorithm} {want} {p}")


#: 3x3 layers whose plans are streamed, unfused or unfused_blas (and fused/split)
_VARIANT_LAYERS = [
    ("conv2d", (1, 512, 7, 7), 512, np.float32),
    ("conv2d", (8, 128, 28, 28), 128, np.float32),
    ("conv2d", (8, 128, 28, 28), 128, np.float64),
    ("conv2d_input", (8, 256, 14, 14), 256, np.float32),
    ("conv2d_weight", (8, 512, 14, 14), 512, np.float32),
    ("conv2d", (1, 64, 56, 56), 64, np.float32),
]


def test_plans_name_only_variants_the_backend_runs():
    """The selector gives each backend only the variants its manifest declares
    (``VARIANTS``), and Cython has every Winograd variant: both backends make the same
    decision, and auto runs it on Cython. The layers cover every variant."""
    seen = set()
    # the defaults, and the thresholds under which the rules stream (F4's large filters)
    # and split (2.4 MB filters on 2 threads)
    settings = ({}, {"STREAM_MIN_FILTER_BYTES": 2**24}, {"FUSED_MAX_FILTER_BYTES": 2**20})
    for threads, setting in itertools.product(
            sorted({1, min(2, fastconv._config.MAX_THREADS)}), settings):
        fastconv.set_num_threads(threads)
        with tuned(**setting):
            _check_variant_layers(seen)
    assert seen >= {"streamed", "unfused", "unfused_blas", "fused", "split"}, seen


def _check_variant_layers(seen):
    """One pass of the check above over _VARIANT_LAYERS, adding the variants seen."""
    for op, shape, K, dtype in _VARIANT_LAYERS:
        for algorithm in WINOGRAD:
            args = (op, shape, (K, shape[1], 3, 3))
            kw = dict(padding=1, dtype=dtype, algorithm=algorithm)
            have = cy.VARIANTS[(op, algorithm)]
            plan = fastconv.plan(*args, **kw, backend="cython")
            assert plan.variant in have, plan
            numba = fastconv.plan(*args, **kw, backend="numba")
            auto = fastconv.plan(*args, **kw)
            assert plan.variant == numba.variant, (plan, numba)
            assert (auto.backend, auto.variant) == ("cython", plan.variant), auto
            seen.add(plan.variant)
            p = plan.geometry
            for cand in fastconv._plan.candidates(op, p, dtype):
                if cand.backend == "cython" and cand.algorithm == algorithm:
                    assert cand.variant in have, cand


def test_winograd_edge_cases():
    """One-pixel outputs, padding beyond the kernel, a single tile column, channels not
    a multiple of a vector, and non-finite inputs, which stay non-finite."""
    for shape, K, pad in (((1, 3, 1, 1), 2, 1), ((2, 5, 9, 3), 7, (2, 0)),
                          ((1, 17, 6, 30), 33, 0), ((3, 1, 4, 4), 1, 3)):
        for algorithm in WINOGRAD:
            for dtype in DTYPES:
                x, w = arrays(3, dtype, shape, (K, shape[1], 3, 3))
                got = fastconv.conv2d(x, w, padding=pad, algorithm=algorithm, backend="cython")
                want = fastconv.conv2d(x, w, padding=pad, algorithm="reference")
                assert_close(got, want, tolerance(dtype, algorithm), f"{shape} {pad}")
    x, w = arrays(4, np.float32, (1, 4, 16, 16), (4, 4, 3, 3))
    x[0, 1, 3, 3] = np.nan
    for algorithm in WINOGRAD:
        y = fastconv.conv2d(x, w, padding=1, algorithm=algorithm, backend="cython")
        assert np.isnan(y[0, :, 3, 3]).all() and np.isfinite(y[0, :, 15, 15]).all()


def test_winograd_rows_shorter_than_a_transpose():
    """NCHW output rows shorter than a register transpose (the slab's rows cover whole
    transposes): stored whole where the next row follows, cut to the row at the last
    row of a tile row, with bias, residual and ReLU and without; row counts that end
    in a full and in a cropped tile row, output channels not a multiple of a vector."""
    for dtype in DTYPES:
        for algorithm in WINOGRAD:
            for Q in (6, 7, 13, 14, 15):
                for H, K in ((13, 21), (16, 40)):
                    x, w, r = arrays(Q + H, dtype, (2, 5, H, Q), (K, 5, 3, 3), (2, K, H, Q))
                    b = arrays(1, dtype, (K,))[0]
                    for kw in ({}, dict(activation="relu", residual=r)):
                        got = fastconv.conv2d(x, w, b, padding=1, algorithm=algorithm,
                                              backend="cython", **kw)
                        want = fastconv.conv2d(x, w, b, padding=1, algorithm="reference", **kw)
                        assert_close(got, want, tolerance(dtype, algorithm),
                                     f"{algorithm} {dtype.__name__} Q={Q} H={H} K={K} {kw}")


def test_winograd_input_rows_shorter_than_a_transpose():
    """The slab of input (and dy) rows shorter than a register transpose, read by whole
    transposes of channels running on into the next row where that stays inside the
    image (the last row element by element): forward and both gradients, widths under
    and over a vector, channel counts over a transpose and not a multiple of it."""
    for dtype in DTYPES:
        for algorithm in WINOGRAD:
            for W in (6, 7, 13, 14, 15):
                for C, pad in ((21, 1), (16, 0)):
                    x, w = arrays(W + C, dtype, (2, C, 9, W), (18, C, 3, 3))
                    kw = dict(padding=pad)
                    with fastconv.trace_plans() as ran:
                        y = fastconv.conv2d(x, w, **kw, algorithm=algorithm, backend="cython")
                    assert (ran[-1].algorithm, ran[-1].backend) == (algorithm, "cython")
                    want = fastconv.conv2d(x, w, **kw, algorithm="reference")
                    tol = tolerance(dtype, algorithm)
                    name = f"{algorithm} {dtype.__name__} W={W} C={C} pad={pad}"
                    assert_close(y, want, tol, "forward " + name)
                    dy = arrays(W, dtype, y.shape)[0]
                    for op, got, ref in (
                            ("input", fastconv.conv2d_input(x.shape, w, dy, **kw,
                                                            algorithm=algorithm,
                                                            backend="cython"),
                             fastconv.conv2d_input(x.shape, w, dy, **kw, algorithm="reference")),
                            ("weight", fastconv.conv2d_weight(x, w.shape, dy, **kw,
                                                              algorithm=algorithm,
                                                              backend="cython"),
                             fastconv.conv2d_weight(x, w.shape, dy, **kw,
                                                    algorithm="reference"))):
                        assert_close(got, ref, tol, f"{op} {name}")


# -- direct --------------------------------------------------------------------------------


def _check_direct(case, dtype, seed):
    """Cython's direct (the forward bare and with bias, residual and ReLU fused, both
    gradients) against the reference and Numba's direct; returns the plans Cython ran,
    each asserted to be Cython's direct in a variant it lists."""
    p = case["params"]
    x, w, dy, bias = arrays(seed, dtype, p.input_shape, p.weight_shape, p.output_shape, (p.K,))
    fused = dict(bias=bias, residual=dy, activation="relu")
    with fastconv.trace_plans() as ran:
        got = _conv_all(case, x, w, dy, "cython", "direct")
        got["epilogue"] = fastconv.conv2d(x, w, **fused, **conv_args(case), algorithm="direct",
                                          backend="cython")
    numba = _conv_all(case, x, w, dy, "numba", "direct")
    want = _conv_all(case, x, w, dy, "numpy", "reference")
    want["epilogue"] = fastconv.conv2d(x, w, **fused, **conv_args(case), algorithm="reference")
    tol = tolerance(dtype, "direct")
    for op in got:
        assert got[op].dtype == dtype
        assert_close(got[op], want[op], tol, f"{op} cython vs reference {p}")
        if op in numba:
            assert_close(got[op], numba[op], tol, f"{op} cython vs numba {p}")
    assert [(pl.algorithm, pl.backend) for pl in ran] == [("direct", "cython")] * 4
    for pl in ran:
        assert pl.variant in cy.VARIANTS[(pl.op, "direct")], pl
    return ran


@settings(max_examples=30)
@given(case=conv_cases("direct"), dtype=st.sampled_from(DTYPES))
def test_direct_matches_numba_and_reference(case, dtype):
    """Random valid geometries: groups, strides, dilation, padding (asymmetric "same"
    included), non-square inputs and kernels."""
    _check_direct(case, dtype, case["params"].N + 11)


def _case(N, C, H, W, K, R, S, stride=1, padding=0, dilation=1, groups=1):
    args = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    return dict(args, params=fastconv._geometry.conv_params(
        "test", (N, C, H, W), (K, C // groups, R, S), stride, padding, dilation, groups))


def _mr():
    """Pixels of Cython's direct register block (6 with AVX2, 14 with AVX-512), or 6
    when the backend is missing (the module is skipped then)."""
    from fastconv.kernels.cython import direct
    return direct.MR


#: a geometry for each path of Cython's direct: (what, op -> variant it must run, case)
DIRECT_PATHS = [
    # rows of 2*MR: the first block stores by register transposes, the last (whose
    # transposes would pass the row's end) element by element
    ("lanes, one-row blocks, channel tail", {"conv2d": "lanes", "conv2d_input": "lanes"},
     _case(2, 5, 9, 2 * _mr(), 37, 3, 3, padding=1)),
    # rows of MR + 1: wrapping blocks compute 4*MR pixels of 3 rows, rows of blocks 6*MR
    ("lanes, blocks wrapping rows, channel tail", {"conv2d": "lanes", "conv2d_input": "lanes"},
     _case(2, 5, 3, _mr() + 1, 37, 3, 3, padding=1)),
    ("lanes, two-row blocks (short rows, odd P)", {"conv2d": "lanes", "conv2d_input": "lanes"},
     _case(1, 32, 7, _mr() // 2, 32, 3, 3, padding=1)),
    ("flat (short rows, a short patch; float64: lanes)",
     {"conv2d": {np.float32: "flat", np.float64: "lanes"},
      "conv2d_input": {np.float32: "flat", np.float64: "lanes"}},
     _case(1, 16, 7, 3, 13, 3, 3, padding=1)),
    ("flat, stride 2 (short rows, a short patch; float64: lanes)",
     {"conv2d": {np.float32: "flat", np.float64: "lanes"}},
     _case(2, 5, 9, 5, 14, 3, 3, 2, 1)),
    # rows several vectors wide, split into their two column phases (padding and an
    # odd width at the ends)
    ("lanes, stride 2, wide rows split into phases",
     {"conv2d": "lanes", "conv2d_input": "phases"}, _case(2, 3, 9, 75, 20, 3, 3, 2, (1, 2))),
    ("stride 2, RGB stem; input gradient by phases",
     {"conv2d": "lanes", "conv2d_input": "phases"}, _case(1, 3, 21, 19, 20, 7, 7, 2, 3)),
    # one-row blocks on few channels read x as it is (fc_direct.unpadded): rows of
    # blocks inside the input between blocks at its left, right, top and bottom edges,
    # which read zero-padded copies of their windows; stride 1 and 2, dilation
    ("lanes, one-row blocks unpadded, stride 2, inner and edge windows", {"conv2d": "lanes"},
     _case(2, 3, 9, 6 * _mr(), 20, 3, 3, 2, 1)),
    ("lanes, one-row blocks unpadded, stride 1", {"conv2d": "lanes"},
     _case(1, 5, 6, 3 * _mr(), 37, 3, 3, padding=1)),
    ("lanes, one-row blocks unpadded, stride 2, dilation 2, asymmetric padding",
     {"conv2d": "lanes"}, _case(1, 4, 11, 6 * _mr() + 1, 20, 3, 3, 2, (2, 1), 2)),
    # more channels than a block's window holds: the phase layout
    ("lanes, one-row blocks, stride 2, phase layout (wide windows)", {"conv2d": "lanes"},
     _case(1, 160, 5, 4 * _mr(), 20, 3, 3, 2, 1)),
    ("strides (3, 2), dilation (2, 1), groups; a phase no tap reaches",
     {"conv2d": "lanes", "conv2d_input": "phases"},
     _case(2, 6, 11, 10, 9, 2, 3, (3, 2), (0, 1), (2, 1), 3)),
    ("1x1, stride 1: pointwise (float32; im2col's 1x1 kernel), lanes (float64)",
     {"conv2d": {np.float32: "pointwise", np.float64: "lanes"}},
     _case(4, 80, 5, 6, 70, 1, 1)),
    ("weight gradient in batch splits", {"conv2d_weight": "blocked"},
     _case(4, 3, 10, 10, 16, 3, 3, padding=1)),
    ("weight gradient, many items, no split", {"conv2d_weight": "blocked"},
     _case(2, 48, 6, 6, 96, 3, 3, 2, 1)),
    ("depthwise, stride 1", {"conv2d": "depthwise", "conv2d_input": "depthwise",
                             "conv2d_weight": "depthwise"},
     _case(2, 8, 13, 21, 8, 3, 3, padding=1, groups=8)),
    # 3x3 and 5x5 at stride 1 with AVX-512 read x as it is, by masked loads: columns
    # masked at both edges of rows three vectors wide, a partial last block of rows;
    # then a filter whose rows reach further than that path takes (the padded tile)
    ("depthwise, stride 1, 5x5, dilated rows, wide padded rows",
     {"conv2d": "depthwise", "conv2d_input": "depthwise"},
     _case(1, 5, 19, 37, 5, 5, 5, 1, (4, 2), (2, 1), 5)),
    ("depthwise, stride 1, a reach of 18 rows, rows narrower than a vector",
     {"conv2d": "depthwise", "conv2d_input": "depthwise"},
     _case(1, 2, 20, 6, 2, 3, 3, 1, (9, 1), (9, 1), 2)),
    # 3x3 at stride 2 (dilation 1) with AVX-512 reads x as it is too, each row's columns
    # deinterleaved: rows of three vectors and a short one masked at both edges,
    # asymmetric padding, a partial last block of rows, multiplier 2; then rows
    # narrower than a vector, no padding, blocks of 7 rows (P = 14)
    ("depthwise, stride 2, 3x3, multiplier 2, wide rows",
     {"conv2d": "depthwise", "conv2d_input": "depthwise_scatter", "conv2d_weight": "depthwise"},
     _case(2, 3, 23, 70, 6, 3, 3, 2, (1, 2), 1, 3)),
    ("depthwise, stride 2, 3x3, narrow rows",
     {"conv2d": "depthwise", "conv2d_input": "depthwise_scatter", "conv2d_weight": "depthwise"},
     _case(1, 4, 29, 9, 4, 3, 3, 2, 0, 1, 4)),
    ("depthwise, stride 2, dilation, multiplier 2",
     {"conv2d": "depthwise", "conv2d_input": "depthwise_scatter", "conv2d_weight": "depthwise"},
     _case(2, 4, 12, 9, 8, 3, 3, 2, (2, 1), (2, 1), 4)),
    ("depthwise 5x5, stride (1, 3), padding past the taps", {"conv2d_input": "depthwise_scatter"},
     _case(1, 3, 7, 11, 3, 5, 5, (1, 3), 2, 1, 3)),
]


@pytest.mark.parametrize("what,variants,case", DIRECT_PATHS, ids=[d[0] for d in DIRECT_PATHS])
@pytest.mark.parametrize("dtype", DTYPES)
def test_direct_paths(monkeypatch, what, variants, case, dtype):
    """Each variant and each block shape of Cython's direct, asserted to have run."""
    from fastconv.kernels.cython import direct
    rows, blocks = direct._rows, []

    def spy(P, Q, wrap_work=0):                     # the lanes core's block shape
        blocks.append(rows(P, Q, wrap_work))
        return blocks[-1]

    monkeypatch.setattr(direct, "_rows", spy)
    unpadded, reads = direct._unpadded, []

    def spy_reads(*args):                           # whether the core read x as it is
        reads.append(unpadded(*args))
        return reads[-1]

    monkeypatch.setattr(direct, "_unpadded", spy_reads)
    ran = {pl.op: pl for pl in _check_direct(case, dtype, 1)}
    if "unpadded" in what:                          # the forward's call comes first
        assert reads and reads[0], reads
    if "phase layout" in what:
        assert reads and not reads[0], reads
    shape = {"one-row": 1, "two-row": 2, "wrapping": 0}
    for words, want in shape.items():
        if words in what:
            assert blocks and set(blocks) == {want}, blocks
    plan_splits = ran["conv2d_weight"].get("batch_splits")
    if "batch splits" in what:
        assert plan_splits > 1
    if "no split" in what:
        assert plan_splits == 1
    if "no tap" in what:
        assert "" in ran["conv2d_input"]["cores"]
    for op, variant in variants.items():
        want = variant[dtype] if isinstance(variant, dict) else variant
        assert ran[op].variant == want, ran[op]


@settings(max_examples=30, deadline=None)
@given(N=st.integers(1, 2), C=st.integers(1, 6), H=st.integers(3, 12), K=st.integers(1, 40),
       RS=st.sampled_from([(3, 3), (7, 7), (1, 3), (5, 2)]), stride=st.sampled_from([1, 2]),
       dil=st.sampled_from([1, 2]), pads=st.tuples(st.integers(0, 3), st.integers(0, 3)),
       blocks=st.integers(1, 4), slack=st.integers(0, 1), fused=st.booleans(),
       threads=st.sampled_from([1, 2]),
       dtype=st.sampled_from(DTYPES))
def test_unpadded_lanes_reads_only_its_input(N, C, H, K, RS, stride, dil, pads, blocks, slack,
                                             fused, threads, dtype):
    """The lanes core reading x as it is (fc_direct.unpadded; asserted to have run), on
    rows of one to four blocks (Q a multiple of the block's pixels: one-row blocks,
    which this path takes, not wrapping ones): x sits between NaNs, so a block whose window reached
    past the input (a border block not read from its zero-padded copy, a wrong column
    or row) would put NaN in the output; the result is the reference's, with and
    without the epilogue, on 1 and 2 threads."""
    from fastconv.kernels.cython import direct
    R, S = RS
    # Q = blocks * MR outputs per row
    W = (blocks * direct.MR - 1) * stride + (S - 1) * dil + 1 - 2 * pads[1] + slack * (stride - 1)
    assume(W >= 1 and H + 2 * pads[0] >= (R - 1) * dil + 1)
    assume(2 * pads[0] < (R - 1) * dil + 1 + H and 2 * pads[1] < (S - 1) * dil + 1 + W)
    assume(C * ((R - 1) * dil + 1) * ((direct.MR - 1) * stride + (S - 1) * dil + 1)
           <= direct.TILE)                          # the window of the path's blocks
    case = _case(N, C, H, W, K, R, S, stride, pads, dil)
    p = case["params"]
    assert p.Q == blocks * direct.MR
    unpadded, reads = direct._unpadded, []

    def spy(*args):
        reads.append(unpadded(*args))
        return reads[-1]

    rng = np.random.default_rng(0)
    size = int(np.prod(p.input_shape))
    guarded = np.full(size + 2 * 1024, np.nan, dtype)
    x = guarded[1024:1024 + size].reshape(p.input_shape)
    x[...] = rng.standard_normal(p.input_shape)
    w = rng.standard_normal(p.weight_shape).astype(dtype)
    kw = dict(conv_args(case), algorithm="direct", backend="cython")
    ep = {}
    if fused:
        ep = dict(bias=rng.standard_normal(K).astype(dtype),
                  residual=rng.standard_normal(p.output_shape).astype(dtype), activation="relu")
    before = fastconv.get_num_threads()
    fastconv.set_num_threads(threads)
    try:
        with pytest.MonkeyPatch.context() as mp, fastconv.trace_plans() as ran:
            mp.setattr(direct, "_unpadded", spy)
            got = fastconv.conv2d(x, w, **ep, **kw)
    finally:
        fastconv.set_num_threads(before)
    assume(ran[-1].variant == "lanes" and reads)    # the lanes core: float32 (else flat)
    assert reads == [True], reads
    want = fastconv.conv2d(x, w, **ep, **dict(kw, algorithm="reference", backend="auto"))
    assert_close(got, want, tolerance(dtype, "direct"), f"unpadded lanes {p}")


@pytest.mark.parametrize("N,C,H,W,K,groups,act,threads", [
    pytest.param(8, 96, 7, 7, 40, 1, "relu", 1,         # 49 pixels an image
                 marks=pytest.mark.skipif(cy.ISA == "baseline", reason=(
                     "the baseline build's panels (16 pixels) are smaller than 7x7"))),
    (8, 96, 3, 3, 40, 1, "relu", 1),
    (5, 32, 3, 5, 20, 2, "relu6", 2),       # groups; images shorter than a vector
    (3, 48, 2, 7, 130, 1, None, 2),         # a panel's last pixels, channels past a block
])
def test_pointwise_panels_span_images(monkeypatch, N, C, H, W, K, groups, act, threads):
    """The 1x1 forward on images smaller than a panel (N > 1) runs panels spanning
    images (asserted to have run), with bias, residual and activation: equal to the
    reference, and bitwise equal to the images computed one at a time (one image: no
    span)."""
    from fastconv.kernels.cython import im2col
    spans, run = [], im2col._pointwise_span_run

    def spy(*args):
        spans.append(args)
        return run(*args)

    monkeypatch.setattr(im2col, "_pointwise_span_run", spy)
    x, w, b, r = arrays(5, np.float32, (N, C, H, W), (K, C // groups, 1, 1), (K,),
                        (N, K, H, W))
    kw = dict(groups=groups, activation=act, algorithm="direct", backend="cython")
    before = fastconv.get_num_threads()
    try:
        fastconv.set_num_threads(threads)
        with fastconv.trace_plans() as ran:
            got = fastconv.conv2d(x, w, b, residual=r, **kw)
        assert ran[-1].variant == "pointwise" and len(spans) == 1, (ran, len(spans))
        each = np.concatenate([fastconv.conv2d(x[n:n + 1], w, b, residual=r[n:n + 1], **kw)
                               for n in range(N)])
    finally:
        fastconv.set_num_threads(before)
    assert len(spans) == 1                          # N = 1: panels within the image
    want = fastconv.conv2d(x, w, b, residual=r, groups=groups, activation=act,
                           algorithm="reference")
    assert_close(got, want, tolerance(np.float32, "direct"), "spanning panels")
    np.testing.assert_array_equal(got, each)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("what,variants,case", DIRECT_PATHS + [
    ("depthwise input gradient cropping (padding past the taps' reach)",
     {"conv2d_input": "depthwise"}, _case(2, 3, 1, 4, 3, 1, 3, padding=(0, 3), groups=3))],
    ids=[d[0] for d in DIRECT_PATHS] + ["depthwise crop"])
def test_direct_writes_only_its_output_and_scratch(monkeypatch, what, variants, case, dtype):
    """The C loops are not bounds-checked in any build: every scratch array direct.pyx
    takes, and the output, sit between guard zones that must come back untouched."""
    from fastconv import _plan
    from fastconv.kernels import epilogue
    from fastconv.kernels.cython import direct
    guard, taken = 1024, []

    def guarded(slot, size, dtype_):
        buf = np.full(size + 2 * guard, 7, dtype_)
        taken.append((slot, buf, size))
        return buf[guard:guard + size]

    monkeypatch.setattr(direct, "workspace", guarded)
    p = case["params"]
    x, w, dy = arrays(3, dtype, p.input_shape, p.weight_shape, p.output_shape)
    for op, args, shape in (("conv2d", (x, w), p.output_shape),
                            ("conv2d_input", (dy, w), p.input_shape),
                            ("conv2d_weight", (x, dy), p.weight_shape)):
        plan = _plan.make(op, p, dtype, "direct", "cython")
        assert plan.backend == "cython"
        out = guarded("out", int(np.prod(shape)), dtype).reshape(shape)
        _plan.run(plan, *args, p, out, *((epilogue.none(dtype),) if op == "conv2d" else ()))
        want = variants.get(op)
        want = want[dtype] if isinstance(want, dict) else want
        assert want is None or plan.variant == want, plan
    assert taken
    for slot, buf, size in taken:
        assert (buf[:guard] == 7).all() and (buf[guard + size:] == 7).all(), \
            f"{slot}: written outside its {size} elements ({what}, {np.dtype(dtype).name})"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant,shape,weight,kw", [
    ("image_gemm", (2, 10, 7, 9), (22, 5, 1, 1), dict(groups=2)),      # short panels
    ("image_gemm", (1, 3, 13, 11), (70, 3, 1, 1), {}),                  # channel tail
    ("image_gemm", (2, 10, 9, 11), (22, 5, 1, 1), dict(groups=2, stride=2)),  # gathered
    ("image_gemm", (1, 3, 13, 11), (70, 3, 1, 1), dict(stride=(2, 3))),   # panels
    ("nhwc_gemm", (2, 9, 5, 7), (70, 9, 1, 1), {}),                     # last panel, rows
    ("nhwc_gemm", (1, 17, 3, 3), (5, 17, 1, 1), {}),
    # a panel a vector and a half wide (pointwise_nhwc's half vector): AVX-512 float32
    # (K 24, and in the last panel 88), AVX2 float32 and AVX-512 float64 (44), AVX2
    # float64 (6)
    ("nhwc_gemm", (2, 9, 5, 7), (24, 9, 1, 1), {}),
    ("nhwc_gemm", (1, 9, 5, 7), (88, 9, 1, 1), {}),
    ("nhwc_gemm", (1, 9, 5, 7), (44, 9, 1, 1), {}),
    ("nhwc_gemm", (2, 9, 5, 7), (6, 9, 1, 1), {}),
    ("nhwc_tiled", (2, 3, 15, 13), (32, 3, 3, 3), dict(stride=2, padding=1)),  # a stem
    ("nhwc_tiled", (1, 9, 7, 6), (70, 9, 3, 2), dict(padding=(2, 1), dilation=(1, 2))),
    # ResNet's 3x3/2 to 7 x 7: bands of 4 rows and 3, register blocks across rows
    ("nhwc_tiled", (2, 16, 13, 13), (20, 16, 3, 3), dict(stride=2, padding=1)),
    ("depthwise_nhwc", (2, 35, 9, 13), (35, 1, 3, 3), dict(padding=1, groups=35)),
    ("depthwise_nhwc", (1, 20, 6, 5), (20, 1, 5, 3), dict(stride=2, padding=(2, 1),
                                                          groups=20)),
])
def test_own_gemms_and_depthwise_write_only_their_output(monkeypatch, variant, shape,
                                                        weight, kw, dtype):
    """The 1x1 forwards' GEMMs (``pointwise_panel``, ``pointwise_nhwc``), the
    channels-last convolution (``conv_nhwc``, and its padded copy) and depthwise
    (``depthwise_nhwc_row``), C loops without bounds checks:
    the output and every scratch array sit between guard zones that come back
    untouched, and the result is the reference's."""
    from fastconv import _config
    from fastconv.kernels.cython import im2col
    guard, taken = 1024, []
    real_empty = _config.empty

    def guarded(slot, size, dtype_):
        buf = np.full(size + 2 * guard, 7, dtype_)
        taken.append((slot, buf, size))
        return buf[guard:guard + size]

    def guarded_empty(shape_, dtype_):
        if np.dtype(dtype_) != np.dtype(dtype):
            return real_empty(shape_, dtype_)
        return guarded("output", int(np.prod(shape_)), dtype_).reshape(shape_)

    monkeypatch.setattr(im2col, "workspace", guarded)
    x, w, b = arrays(5, dtype, shape, weight, (weight[0],))
    nhwc = variant != "image_gemm"
    want = fastconv.conv2d(x, w, b, activation="relu", algorithm="reference", **kw)
    monkeypatch.setattr(_config, "empty", guarded_empty)  # the op's output array
    with tuned(POINTWISE_ONE_GEMM_BELOW=0), fastconv.trace_plans() as ran:
        got = fastconv.conv2d(fastconv.to_channels_last(x) if nhwc else x, w, b,
                              activation="relu", backend="cython", **kw)
    monkeypatch.setattr(_config, "empty", real_empty)
    assert [(q.backend, q.variant) for q in ran] == [("cython", variant)]
    if variant == "nhwc_tiled":             # bands of rows, each one run of pixels
        assert 1 < ran[0]["band"] < ran[0].geometry.P
    assert_close(got, want, tolerance(dtype, "direct"), variant)
    assert any(slot == "output" for slot, _, _ in taken)
    for slot, buf, size in taken:
        assert (buf[:guard] == 7).all() and (buf[guard + size:] == 7).all(), \
            f"{slot}: written outside its {size} elements ({variant})"


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("shape, args", [
    ((2, 35, 9, 13), ((3, 3), (2, 2), (1, 1), (1, 1), False)),
    ((1, 20, 6, 5), ((2, 3), (1, 2), (1, 1), (2, 1), True)),
    ((3, 16, 7, 7), ((3, 3), (2, 2), (1, 1), (1, 1), True)),
])
def test_max_pool_nhwc_writes_only_its_output(monkeypatch, dtype, shape, args):
    """Channels-last max pooling (``max_pool_nhwc_row``, C without bounds checks) writes
    its output between guard zones that come back untouched, with the reference's
    values."""
    from fastconv import _config
    guard, taken = 1024, []
    real_empty = _config.empty

    def guarded_empty(shape_, dtype_):
        if np.dtype(dtype_) != np.dtype(dtype):
            return real_empty(shape_, dtype_)
        buf = np.full(int(np.prod(shape_)) + 2 * guard, 7, dtype_)
        taken.append(buf)
        return buf[guard:-guard].reshape(shape_)

    x = arrays(6, dtype, shape)[0]
    want = fastconv.max_pool2d(x, *args, algorithm="reference")
    xl = fastconv.to_channels_last(x)
    monkeypatch.setattr(_config, "empty", guarded_empty)
    with fastconv.trace_plans() as ran:
        got = fastconv.max_pool2d(xl, *args, backend="cython")
    monkeypatch.setattr(_config, "empty", real_empty)
    assert [(q.backend, q.layout) for q in ran] == [("cython", "nhwc")]
    np.testing.assert_array_equal(got, want)
    assert len(taken) == 1
    assert (taken[0][:guard] == 7).all() and (taken[0][-guard:] == 7).all()


def test_direct_auto_runs_cython_where_it_has_the_rules_variant():
    """backend="auto" runs direct on Cython where Cython runs the variant the rules
    choose among every backend's (``_plan._backend_for_variant``), which since session
    17 is every direct plan: the lanes forward on small patches (an RGB 3x3 stem) and
    the flat core too; the NCHW depthwise forward on every plane, small ones too;
    Cython's ``lanes``
    where Numba's plan is ``row`` (``_plan.STANDS_IN_FOR``); ``lanes_streamed`` (a
    512-channel layer on rows of two-row blocks: 3x3 with the suite's 16-register
    blocks, 7x7 with AVX-512's) on Cython."""
    if "numba" not in _dispatch.available_backends():
        pytest.skip("Numba is not installed: auto has only Cython's variants")
    cases = [("conv2d", (2, 8, 12, 12), (8, 1, 3, 3), dict(padding=1, groups=8), np.float32),
             ("conv2d", (1, 8, 56, 56), (8, 1, 3, 3), dict(padding=1, groups=8), np.float32),
             ("conv2d", (1, 3, 40, 40), (32, 3, 3, 3), dict(padding=1, stride=2), np.float32),
             ("conv2d", (1, 3, 40, 40), (16, 3, 7, 7), dict(padding=3, stride=2), np.float32),
             ("conv2d", (2, 8, 12, 12), (16, 8, 3, 3), dict(padding=1), np.float64),
             ("conv2d", (1, 8, 3, 3), (12, 8, 3, 3), dict(padding=1), np.float32),
             ("conv2d", (1, 512, 7, 7), (512, 512, 3, 3), dict(padding=1), np.float32),
             ("conv2d", (1, 512, 3, 3), (512, 512, 3, 3), dict(padding=1), np.float32),
             ("conv2d", (2, 20, 5, 6), (70, 20, 1, 1), {}, np.float32),
             ("conv2d_input", (2, 8, 12, 12), (16, 8, 3, 3), dict(padding=1, stride=2),
              np.float32),
             ("conv2d_weight", (2, 8, 12, 12), (16, 8, 3, 3), dict(padding=1), np.float32)]
    seen = set()
    for op, xs, ws, kw, dtype in cases:
        numba = fastconv.plan(op, xs, ws, **kw, dtype=dtype, algorithm="direct", backend="numba")
        auto = fastconv.plan(op, xs, ws, **kw, dtype=dtype, algorithm="direct")
        stands_in = op == "conv2d" and numba.variant == "row"
        on_cython = numba.variant in cy.VARIANTS[(op, "direct")] or stands_in
        assert on_cython, numba
        assert auto.backend == "cython", (numba, auto)
        assert auto.variant == ("lanes" if stands_in else numba.variant)
        seen.add((auto.backend, stands_in))
        seen.add(auto.variant)
    assert seen >= {("cython", False), ("cython", True), "lanes_streamed", "flat"}


@contextlib.contextmanager
def tuned(workspace=None, **thresholds):
    """Tuning thresholds (and the workspace limit) set inside the block, put back after."""
    limit = fastconv.get_workspace_limit()
    before = {name: _tuning.get(name) for name in thresholds}
    try:
        for name, value in thresholds.items():
            _tuning.set(name, value)
        if workspace is not None:
            fastconv.set_workspace_limit(workspace)
        yield
    finally:
        for name, value in before.items():
            _tuning.set(name, value)
        fastconv.set_workspace_limit(limit)


@st.composite
def pointwise_cases(draw):
    groups = draw(st.sampled_from([1, 2, 3]))
    C, K = groups * draw(st.integers(1, 6)), groups * draw(st.integers(1, 6))
    N, H, W = draw(st.integers(2, 4)), draw(st.integers(1, 12)), draw(st.integers(1, 12))
    params = fastconv._geometry.conv_params("t", (N, C, H, W), (K, C // groups, 1, 1),
                                            groups=groups)
    return dict(N=N, C=C, H=H, W=W, K=K, R=1, S=1, stride=(1, 1), padding=(0, 0),
                dilation=(1, 1), groups=groups, params=params)


@pytest.mark.parametrize("variant", ["image_gemm", "batch_gemm"])
@settings(max_examples=10)
@given(case=pointwise_cases(), dtype=st.sampled_from(DTYPES), threads=st.sampled_from([1, 2]))
def test_pointwise_variants(variant, case, dtype, threads):
    """1x1 layers: a GEMM per image, or one over the batch channels-first
    (``batch_gemm``: the weight gradient, and the input gradient on one thread; the
    forward, and the input gradient on more threads, run ``image_gemm``'s own kernels,
    whose panels span small images)."""
    threads = min(threads, fastconv._config.MAX_THREADS)
    saved = fastconv.get_num_threads()
    try:
        fastconv.set_num_threads(threads)
        with tuned(POINTWISE_ONE_GEMM_BELOW=0 if variant == "image_gemm" else 10**9):
            ran = _check_conv(case, dtype, 1)
    finally:
        fastconv.set_num_threads(saved)
    want = dict.fromkeys(("conv2d", "conv2d_input", "conv2d_weight"), variant)
    if variant == "batch_gemm":
        want["conv2d"] = "image_gemm"
        want["conv2d_input"] = "batch_gemm" if threads == 1 else "image_gemm"
    assert ran == want


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threads", [1, 2])
def test_nchw_1x1_calls_numpys_blas_only_on_one_thread(monkeypatch, dtype, threads):
    """Cython's NCHW 1x1 layers (``image_gemm``) call NumPy's matmul
    (``kernels/image_gemm.py``, as Numba's) only on one thread: the input gradient, and
    the forward without an epilogue or stride in variants narrower than AVX-512 (with
    AVX-512 the own kernel ran faster). On more threads NumPy's BLAS would wake
    its own threads, which spin after the call and slow the OpenMP loops that follow;
    the forward and the input gradient run the own GEMMs (``pointwise_panel``,
    ``pointwise_input``). The weight gradient runs its own GEMM (``pointwise_weight``)
    on any thread count. A spy counts the NumPy path's calls; every result is the
    reference's."""
    if threads > fastconv.get_num_threads():
        pytest.skip("this machine has one core")
    from fastconv.kernels import image_gemm
    calls = []
    for name in ("forward", "input_grad", "weight_grad"):
        def spy(*args, _real=getattr(image_gemm, name), _name=name, **kw):
            calls.append(_name)
            return _real(*args, **kw)
        monkeypatch.setattr(image_gemm, name, spy)
    x, w, b = arrays(3, dtype, (2, 6, 9, 7), (10, 3, 1, 1), (10,))
    dy = arrays(4, dtype, (2, 10, 9, 7))[0]
    one = threads == 1
    wide = cy.ISA == "avx512" or cy.ISA == "native" and _machine.float32_lanes() == 16
    cases = [("conv2d", dict(), one and not wide), ("conv2d", dict(bias=b), False),
             ("conv2d", dict(activation="relu"), False), ("conv2d", dict(stride=2), False),
             ("conv2d_input", dict(), one), ("conv2d_weight", dict(), False)]
    n = fastconv.get_num_threads()
    try:
        fastconv.set_num_threads(threads)
        for op, kw, numpy_path in cases:
            del calls[:]
            run = {"conv2d": lambda algorithm, backend="auto": fastconv.conv2d(
                       x, w, groups=2, algorithm=algorithm, backend=backend, **kw),
                   "conv2d_input": lambda algorithm, backend="auto": fastconv.conv2d_input(
                       x.shape, w, dy, groups=2, algorithm=algorithm, backend=backend),
                   "conv2d_weight": lambda algorithm, backend="auto": fastconv.conv2d_weight(
                       x, w.shape, dy, groups=2, algorithm=algorithm, backend=backend)}[op]
            want = run("reference")
            with tuned(POINTWISE_ONE_GEMM_BELOW=0), fastconv.trace_plans() as ran:
                got = run("im2col", "cython")
            assert [(q.backend, q.variant) for q in ran] == [("cython", "image_gemm")], ran
            assert len(calls) == numpy_path, (op, kw, calls)
            assert_close(got, want, tolerance(dtype, "im2col"), f"image_gemm {op} {kw}")
    finally:
        fastconv.set_num_threads(n)


@pytest.mark.parametrize("dtype", DTYPES)
def test_1x1_input_gradient_of_one_weight_at_two_group_counts(dtype):
    """The 1x1 input gradient reads the weight per group count: one (3, 1, 1, 1) array
    is a 1 -> 3 weight with groups=1 and a depthwise one with groups=3
    (conv_transpose2d reads it both ways); each call reads it its own way (a cached
    transposed copy once mixed the two up)."""
    if fastconv.get_num_threads() < 2:
        pytest.skip("the transposed-weight path runs on more than one thread")
    w = arrays(5, dtype, (3, 1, 1, 1))[0]
    for groups, C in ((1, 1), (3, 3), (1, 1)):
        dy = arrays(groups, dtype, (2, 3, 4, 5))[0]
        with tuned(POINTWISE_ONE_GEMM_BELOW=0), fastconv.trace_plans() as ran:
            got = fastconv.conv2d_input((2, C, 4, 5), w, dy, groups=groups,
                                        algorithm="im2col", backend="cython")
        assert [(q.backend, q.variant) for q in ran] == [("cython", "image_gemm")], ran
        want = fastconv.conv2d_input((2, C, 4, 5), w, dy, groups=groups,
                                     algorithm="reference")
        assert_close(got, want, tolerance(dtype, "im2col"), f"groups={groups}")


@settings(max_examples=30)
@given(groups=st.sampled_from([1, 2]), C=st.integers(1, 40), K=st.integers(1, 70),
       N=st.integers(1, 3), H=st.integers(1, 20), W=st.integers(1, 20),
       dtype=st.sampled_from(DTYPES), bias=st.booleans(), residual=st.booleans(),
       activation=st.sampled_from([None, "relu", "relu6"]), nan=st.booleans(),
       threads=st.sampled_from([1, 2]), nhwc=st.booleans())
def test_pointwise_forward_with_packed_weight_and_epilogue(groups, C, K, N, H, W, dtype,
                                                           bias, residual, activation, nan,
                                                           threads, nhwc):
    """Cython's 1x1 forward, its own GEMM with the epilogue in the store, against the
    reference: NCHW (``image_gemm``: ``pointwise_panel``, panels of pixels by blocks of
    output channels, the weight packed) and channels last (``nhwc_gemm``:
    ``pointwise_nhwc``, blocks of pixels by blocks of output channels); any pixel and
    channel remainders, groups (NCHW), slices across threads, and a NaN in the input
    (it stays NaN through ReLU/ReLU6)."""
    if nhwc:
        groups = 1                                    # channels last: one group
    C, K = C * groups, K * groups
    rng = np.random.default_rng(C * 1000 + K * 10 + N)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    if nan:
        x[0, 0, H // 2, W // 2] = np.nan
    w = rng.standard_normal((K, C // groups, 1, 1)).astype(dtype)
    b = rng.standard_normal(K).astype(dtype) if bias else None
    r = rng.standard_normal((N, K, H, W)).astype(dtype) if residual else None
    args = dict(groups=groups, activation=activation, residual=r)
    want = fastconv.conv2d(x, w, b, algorithm="reference", **args)
    if nhwc:
        x = fastconv.to_channels_last(x)
        args["residual"] = None if r is None else fastconv.to_channels_last(r)
    saved = fastconv.get_num_threads()
    try:
        fastconv.set_num_threads(threads)
        with tuned(POINTWISE_ONE_GEMM_BELOW=0), fastconv.trace_plans() as ran:
            got = fastconv.conv2d(x, w, b, algorithm="im2col", backend="cython", **args)
    finally:
        fastconv.set_num_threads(saved)
    nhwc = fastconv.channels_last(x)              # not when C = 1 or H = W = 1 (both)
    variant = "nhwc_gemm" if nhwc else "image_gemm"
    assert [(q.backend, q.variant, q.threads) for q in ran] == [("cython", variant, threads)]
    assert (got.transpose(0, 2, 3, 1) if nhwc else got).flags.c_contiguous
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg="NaN placement")
    # rounding is relative to the sums of |terms| (an output may cancel to near 0)
    scale = fastconv.conv2d(np.nan_to_num(np.abs(x)), np.abs(w), groups=groups,
                            algorithm="reference").max()
    scale += (0 if b is None else np.abs(b).max()) + (0 if r is None else np.abs(r).max())
    finite = ~np.isnan(want)
    err = np.abs(got[finite].astype(np.float64) - want[finite]).max(initial=0.0)
    assert err <= tolerance(dtype, "im2col") * max(scale, 1e-30), (err, scale)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_pointwise_nhwc_uneven_panels_shared_by_pixels(dtype):
    """Channels-last 1x1 forward whose output channels make panels of unequal size (2.5
    panels) on few pixels (9x9, one chunk): OpenMP's static shares of the (chunk,
    panel) items would give the first thread two full panels and the second a half
    one (``_uneven_shares``), so the pixels go in one chunk per thread instead. On
    two threads the result is the reference's, and the same bits as on one thread
    (each pixel's sum runs in the same order whatever its block)."""
    if fastconv._config.MAX_THREADS < 2:
        pytest.skip("fastconv may use one thread here (NUMBA_NUM_THREADS)")
    from fastconv.kernels.cython import im2col
    H = 9                                              # 81 pixels: one chunk
    cols = im2col._nhwc_panels(np.zeros((1, 8, 1, 1), dtype))[0]
    K = cols * 5 // 2                                  # panels of cols, cols, cols / 2
    C = max(768, -(-(1 << 20) // (H * H * K * 8)) * 8)   # narrow ISAs' panels: more C
    assert H * H * K * C >= 1 << 20                    # not under SERIAL_MACS: threads
    assert im2col._uneven_shares(1, 3, K, cols, 2)     # this geometry takes the rule
    assert not im2col._uneven_shares(1, 4, 4 * cols, cols, 2)   # whole panels: even
    assert not im2col._uneven_shares(1, 3, K, cols, 1)
    x, w, b, r = arrays(11, dtype, (1, C, H, H), (K, C, 1, 1), (K,), (1, K, H, H))
    want = fastconv.conv2d(x, w, b, activation="relu", residual=r, algorithm="reference")
    xc, rc = fastconv.to_channels_last(x), fastconv.to_channels_last(r)
    got = {}
    saved = fastconv.get_num_threads()
    try:
        for threads in (1, 2):
            fastconv.set_num_threads(threads)
            with tuned(POINTWISE_ONE_GEMM_BELOW=0), fastconv.trace_plans() as ran:
                got[threads] = fastconv.conv2d(xc, w, b, activation="relu", residual=rc,
                                               algorithm="im2col", backend="cython")
            assert [(q.variant, q.threads) for q in ran] == [("nhwc_gemm", threads)]
    finally:
        fastconv.set_num_threads(saved)
    assert_close(got[2], want, tolerance(dtype, "im2col"), "two threads")
    np.testing.assert_array_equal(got[2], got[1])


@pytest.mark.parametrize("kernel", ["pointwise_input", "transposed"])
@settings(max_examples=25)
@given(groups=st.sampled_from([1, 2, 3]), C=st.integers(1, 40), K=st.integers(1, 70),
       N=st.integers(1, 3), H=st.integers(1, 20), W=st.integers(1, 20),
       dtype=st.sampled_from(DTYPES))
def test_pointwise_input_gradient_on_two_threads(kernel, groups, C, K, N, H, W, dtype):
    """Cython's 1x1 input gradient on two threads (``image_gemm``) against the
    reference, by each kernel the planner may choose (``_plan._transposed_input``):
    ``pointwise_input`` (the weight (K, C/groups) copied a panel of input channels at a
    time, dy's chunks copied, blocks stored transposed), or in float32 the forward's
    ``pointwise_panel`` on dy reading the weight transposed (plan ``transposed``; its
    panels spanning images where they are small); any pixel and channel remainders,
    chunks of pixels, the channels split into slices across the threads (few chunks)
    or chunks shared out whole (many)."""
    if fastconv._config.MAX_THREADS < 2:
        pytest.skip("fastconv may use one thread here (NUMBA_NUM_THREADS); on one thread "
                    "this gradient runs on NumPy's matmul")
    from fastconv.kernels import image_gemm
    C, K = C * groups, K * groups
    rng = np.random.default_rng(C * 1000 + K * 10 + N)
    w = rng.standard_normal((K, C // groups, 1, 1)).astype(dtype)
    dy = rng.standard_normal((N, K, H, W)).astype(dtype)
    want = fastconv.conv2d_input((N, C, H, W), w, dy, groups=groups, algorithm="reference")
    saved = fastconv.get_num_threads()
    try:
        fastconv.set_num_threads(2)
        rule = 0 if kernel == "pointwise_input" else 10**9
        with tuned(POINTWISE_ONE_GEMM_BELOW=0, TRANSPOSED_INPUT_MAX_L1=rule), \
                fastconv.trace_plans() as ran, \
                pytest.MonkeyPatch.context() as mp:
            mp.setattr(image_gemm, "input_grad", None)      # NumPy's path must not run
            got = fastconv.conv2d_input((N, C, H, W), w, dy, groups=groups,
                                        algorithm="im2col", backend="cython")
    finally:
        fastconv.set_num_threads(saved)
    assert [(q.backend, q.variant, q.threads) for q in ran] == [("cython", "image_gemm", 2)]
    transposed = kernel == "transposed" and np.dtype(dtype) == np.float32
    assert ran[0].get("transposed", False) == transposed, ran
    scale = fastconv.conv2d_input((N, C, H, W), np.abs(w), np.abs(dy), groups=groups,
                                  algorithm="reference").max()
    err = np.abs(got.astype(np.float64) - want).max(initial=0.0)
    assert err <= tolerance(dtype, "im2col") * max(scale, 1e-30), (err, scale)


@settings(max_examples=40)
@given(groups=st.sampled_from([1, 2, 3]), C=st.integers(1, 70), K=st.integers(1, 40),
       N=st.integers(1, 4), H=st.integers(1, 12), W=st.integers(1, 12),
       dtype=st.sampled_from(DTYPES), threads=st.sampled_from([1, 2]),
       chunk_bytes=st.sampled_from([1, 3000, 2**18]),
       stride=st.sampled_from([1, 1, 2, (1, 3), (2, 1)]))
def test_pointwise_weight_gradient_in_chunks(groups, C, K, N, H, W, dtype, threads,
                                             chunk_bytes, stride):
    """Cython's 1x1 weight gradient without padding (``image_gemm``, ``batch_gemm``: the
    own GEMM ``pointwise_weight``, no BLAS): x laid out pixel-major in panels of input
    channels (remainders zero; strided: every stride-th row and column gathered), the
    sum over the batch's pixels in chunks of one pixel, of a few (runs of several
    images, dy's runs copied), or of the whole batch, split into bands of output
    channels on two threads. Against the reference; every scratch array and the output
    sit between guard zones that come back untouched (C without bounds checks); one
    call and a repeat agree bitwise."""
    from fastconv import _config
    from fastconv.kernels import image_gemm
    from fastconv.kernels.cython import im2col
    if threads > fastconv._config.MAX_THREADS:
        pytest.skip("fastconv may use one thread here (NUMBA_NUM_THREADS)")
    C, K = C * groups, K * groups
    rng = np.random.default_rng(C * 1000 + K * 10 + N)
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    dy = rng.standard_normal((N, K, -(-H // sh), -(-W // sw))).astype(dtype)
    shape = (K, C // groups, 1, 1)
    kw = dict(groups=groups, stride=stride)
    want = fastconv.conv2d_weight(x, shape, dy, algorithm="reference", **kw)
    guard, taken = 256, []

    def guarded(slot, size, dtype_):
        buf = np.full(size + 2 * guard, 7, dtype_)
        taken.append((slot, buf, size))
        return buf[guard:guard + size]

    def guarded_empty(shape_, dtype_):
        return guarded("output", int(np.prod(shape_)), dtype_).reshape(shape_)

    saved = fastconv.get_num_threads()
    try:
        fastconv.set_num_threads(threads)
        with tuned(POINTWISE_WEIGHT_BYTES=chunk_bytes), fastconv.trace_plans() as ran, \
                pytest.MonkeyPatch.context() as mp:
            mp.setattr(image_gemm, "weight_grad", None)     # NumPy's path must not run
            mp.setattr(im2col, "workspace", guarded)
            mp.setattr(_config, "empty", guarded_empty)
            got = fastconv.conv2d_weight(x, shape, dy, algorithm="im2col", backend="cython",
                                         **kw)
            again = fastconv.conv2d_weight(x, shape, dy, algorithm="im2col",
                                           backend="cython", **kw)
    finally:
        fastconv.set_num_threads(saved)
    assert {(q.backend, q.variant) for q in ran} <= {("cython", "image_gemm"),
                                                     ("cython", "batch_gemm")}, ran
    assert ran and ran[0]["panel_bytes"] == chunk_bytes
    assert any(slot == "im2col.weight_panels" for slot, _, _ in taken)
    for slot, buf, size in taken:
        assert (buf[:guard] == 7).all() and (buf[guard + size:] == 7).all(), \
            f"{slot}: written outside its {size} elements"
    scale = fastconv.conv2d_weight(np.abs(x), shape, np.abs(dy), algorithm="reference",
                                   **kw).max()
    err = np.abs(got.astype(np.float64) - want).max(initial=0.0)
    assert err <= tolerance(dtype, "im2col") * max(scale, 1e-30), (err, scale)
    np.testing.assert_array_equal(again, got)


@pytest.mark.parametrize("limit", [1500, 20000])
@settings(max_examples=10)
@given(case=conv_cases("im2col", max_hw=16), dtype=st.sampled_from(DTYPES))
def test_tiles_of_images_and_of_output_rows(limit, case, dtype):
    """A small workspace: bands of one image's output rows (1500 bytes), or tiles of a
    few images (20000), each GEMM writing NCHW in place or through the tile buffer.
    (A weight gradient with many output pixels per patch row and enough output
    channels runs ``patch_gemm``, a rule of ``_plan._im2col`` that does not read the
    workspace limit.)"""
    with tuned(workspace=limit):
        ran = _check_conv(case, dtype, 2)
    assert set(ran.values()) <= {"tiled", "image_gemm", "batch_gemm", "patch_gemm"}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant,shape,weight", [
    ("tiled", (2, 32, 20, 20), (48, 32, 3, 3)),
])
def test_blas_gemms_in_blocks_on_openmp_threads(variant, shape, weight, dtype):
    """The GEMMs that call BLAS run in blocks, one single-threaded BLAS call each, on
    OpenMP's threads (``_pgemm``): cut on two threads (the cut is asserted), right
    against the reference for every op on one thread and two, and bitwise equal on
    repeated calls with the same thread count. One thread and two need not agree
    bitwise: one thread runs one BLAS call (and ``tiled``'s forward and input gradient
    NumPy's matmul), and OpenBLAS's Haswell kernels (AMD Zen 3) round a GEMM cut into
    column blocks differently from the whole (its SkylakeX kernels, on Intel
    ``rocketlake``, do not)."""
    from fastconv.kernels.cython import im2col
    if fastconv._config.MAX_THREADS < 2:
        pytest.skip("fastconv may use one thread here (NUMBA_NUM_THREADS)")
    R = weight[2]
    x, w, dy = arrays(4, dtype, shape, weight, (shape[0], weight[0]) + shape[2:])
    kw = dict(padding=R // 2, backend="cython", algorithm="im2col")
    ops = {"conv2d": lambda: fastconv.conv2d(x, w, **kw),
           "conv2d_input": lambda: fastconv.conv2d_input(x.shape, w, dy, **kw),
           "conv2d_weight": lambda: fastconv.conv2d_weight(x, w.shape, dy, **kw)}
    ref = dict(padding=R // 2, algorithm="reference")
    want = {"conv2d": fastconv.conv2d(x, w, **ref),
            "conv2d_input": fastconv.conv2d_input(x.shape, w, dy, **ref),
            "conv2d_weight": fastconv.conv2d_weight(x, w.shape, dy, **ref)}
    with tuned(POINTWISE_ONE_GEMM_BELOW=10**9):
        fastconv.set_num_threads(2)
        with fastconv.trace_plans() as ran:
            two = {op: fn() for op, fn in ops.items()}
        two_again = {op: fn() for op, fn in ops.items()}
        one = on_one_thread(lambda: {op: fn() for op, fn in ops.items()})
        one_again = on_one_thread(lambda: {op: fn() for op, fn in ops.items()})
    fastconv.set_num_threads(fastconv._config.MAX_THREADS)
    plan = ran[0]
    assert plan.variant == variant
    pixels = shape[0] * plan.geometry.P * plan.geometry.Q
    if variant == "tiled":
        tn, pr = plan["tile"]
        pixels = min(tn, shape[0]) * min(pr, plan.geometry.P) * plan.geometry.Q
    patch = weight[1] * weight[2] * weight[3]
    blocks, _ = im2col.gemm_blocks(weight[0], pixels, patch, 2)
    assert blocks > 1, (variant, weight[0], pixels, patch)
    for op in ops:
        for got in (one, two):
            assert_close(got[op], want[op], tolerance(dtype, "im2col"), f"{op} {variant}")
        np.testing.assert_array_equal(two_again[op], two[op], err_msg=f"{op} {variant}")
        np.testing.assert_array_equal(one_again[op], one[op], err_msg=f"{op} {variant}")


@settings(max_examples=20)
@given(data=st.data(), dtype=st.sampled_from(DTYPES))
def test_patch_gemm_weight_gradient(data, dtype):
    """The weight gradient read in place by the register-tiled GEMM, forced on every
    geometry, with small bands and several slices (partial bands, several register
    blocks and their remainders, groups)."""
    case = data.draw(conv_cases("im2col"))
    p = case["params"]
    # unpadded 1x1 layers (strided too) keep their GEMM variants
    assume(not (p.R == p.S == 1 and not p.padded))
    x, w, dy = arrays(p.N + p.C, dtype, p.input_shape, p.weight_shape, p.output_shape)
    kw = conv_args(case)
    # padded copies of a few images at a time, or of all
    with tuned(workspace=data.draw(st.sampled_from([None, 4000])),
               WEIGHT_FUSED_MIN_RATIO=0, WEIGHT_FUSED_MIN_CHANNELS=0,
               WEIGHT_BAND_COLUMNS=data.draw(st.sampled_from([1, 7, 40])),
               WEIGHT_SLICES=data.draw(st.sampled_from([1, 3, 16]))):
        with fastconv.trace_plans() as ran:
            got = fastconv.conv2d_weight(x, w.shape, dy, **kw, algorithm="im2col",
                                         backend="cython")
        numba = fastconv.conv2d_weight(x, w.shape, dy, **kw, algorithm="im2col", backend="numba")
    assert ran[0].variant == "patch_gemm"
    want = fastconv.conv2d_weight(x, w.shape, dy, **kw, algorithm="reference")
    # relative to the sum of the terms' magnitudes (see test_kernels' blocked test)
    terms = fastconv.conv2d_weight(np.abs(x), w.shape, np.abs(dy), **kw, algorithm="reference")
    scale = max(np.abs(terms).max(), 1e-30)
    for other, name in ((want, "reference"), (numba, "numba")):
        err = np.abs(got - other).max() / scale
        assert err <= tolerance(dtype, "im2col"), f"patch_gemm vs {name} {p}: {err:.3g}"


@pytest.mark.parametrize("dtype", DTYPES)
def test_patch_gemm_at_the_planners_blocks(dtype):
    """A layer with many output pixels per patch row, whose weight gradient the planner
    sends to patch_gemm unforced (64 and 80 output channels: whole register blocks, and
    a padded last block; 16, 32 and 40: blocks of fewer vectors, the last one padded)."""
    x = arrays(4, dtype, (2, 3, 26, 24))[0]
    for K in (64, 80, 16, 32, 40):
        (dy,) = arrays(K, dtype, (2, K, 26, 24))
        with fastconv.trace_plans() as ran:
            got = fastconv.conv2d_weight(x, (K, 3, 3, 3), dy, padding=1, algorithm="im2col",
                                         backend="cython")
        assert ran[0].variant == "patch_gemm"
        numba = fastconv.conv2d_weight(x, (K, 3, 3, 3), dy, padding=1, algorithm="im2col",
                                       backend="numba")
        want = fastconv.conv2d_weight(x, (K, 3, 3, 3), dy, padding=1, algorithm="reference")
        assert_close(got, want, tolerance(dtype, "im2col"), f"patch_gemm K={K} vs reference")
        assert_close(got, numba, tolerance(dtype, "im2col"), f"patch_gemm K={K} vs numba")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("C,K,groups", [(3, 7, 1), (4, 26, 2), (5, 64, 1)])
def test_patch_gemm_register_block_remainders(monkeypatch, dtype, C, K, groups):
    """Blocks the register tile does not divide (5 rows x 20 or 12 columns): the GEMM's
    element-by-element remainders."""
    from fastconv.kernels import layouts
    monkeypatch.setattr(layouts, "PATCH_GEMM_BLOCKS", ((20, 5), (12, 5)))
    x = arrays(C, dtype, (2, C, 11, 9))[0]
    (dy,) = arrays(K, dtype, (2, K, 11, 9))
    w_shape = (K, C // groups, 3, 3)
    with tuned(WEIGHT_FUSED_MIN_RATIO=0, WEIGHT_FUSED_MIN_CHANNELS=0, WEIGHT_BAND_COLUMNS=20):
        with fastconv.trace_plans() as ran:
            got = fastconv.conv2d_weight(x, w_shape, dy, padding=1, groups=groups,
                                         algorithm="im2col", backend="cython")
    assert ran[0].variant == "patch_gemm" and ran[0]["block"][0] == 5
    want = fastconv.conv2d_weight(x, w_shape, dy, padding=1, groups=groups,
                                  algorithm="reference")
    assert_close(got, want, tolerance(dtype, "im2col"), "patch_gemm remainders")


def _pool_all(case, x, dy_seed, backend, algorithm="direct"):
    args = {k: case[k] for k in ("kernel_size", "stride", "padding", "dilation", "ceil_mode")}
    kw = dict(algorithm=algorithm, backend=backend)
    y, idx = fastconv.max_pool2d(x, **args, return_indices=True, **kw)
    (dy,) = arrays(dy_seed, x.dtype, y.shape)
    avg = dict(args, count_include_pad=case["cip"], divisor_override=case["div"])
    del avg["dilation"]
    a = fastconv.avg_pool2d(x, **avg, **kw)
    (da,) = arrays(dy_seed + 1, x.dtype, a.shape)
    return {"max_pool2d": y, "indices": idx,
            "max_pool2d_backward": fastconv.max_pool2d_backward(dy, idx, x.shape, **kw),
            "avg_pool2d": a,
            "avg_pool2d_backward": fastconv.avg_pool2d_backward(da, x.shape, **avg, **kw),
            "adaptive_avg_pool2d": fastconv.adaptive_avg_pool2d(x, case["adaptive"], **kw)}


@settings(max_examples=30)
@given(case=pool_cases(max_pool=True), dtype=st.sampled_from(DTYPES), cip=st.booleans(),
       div=st.sampled_from([None, 1, 3]),
       adaptive=st.tuples(st.integers(1, 7), st.integers(1, 7)))
def test_pooling_matches_numba_and_reference(case, dtype, cip, div, adaptive):
    """Every pooling op; max pooling's values and indices equal the reference's and
    Numba's exactly, the sums (gradients of overlapping windows too) agree within the
    tolerance (average pooling has no
    dilation: the drawn one is dropped there)."""
    case = dict(case, cip=cip, div=div, adaptive=adaptive)
    (x,) = arrays(case["H"] * 3 + case["W"], dtype, (case["N"], case["C"], case["H"], case["W"]))
    got = _pool_all(case, x, 5, "cython")
    numba = _pool_all(case, x, 5, "numba")
    want = _pool_all(case, x, 5, "numpy", "reference")
    for key in ("max_pool2d", "indices"):
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
        np.testing.assert_array_equal(got[key], numba[key], err_msg=key)
    for key in ("max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward", "adaptive_avg_pool2d"):
        assert got[key].dtype == dtype
        assert_close(got[key], want[key], tolerance(dtype, "direct"), f"{key} vs reference")
        assert_close(got[key], numba[key], tolerance(dtype, "direct"), f"{key} vs numba")


def test_pooling_sees_nan_and_inf():
    x = np.arange(2 * 3 * 7 * 9, dtype=np.float32).reshape(2, 3, 7, 9)
    x[0, 0, 1, 1] = np.nan
    x[1, 2, 3, 4] = np.inf
    x[0, 1, 5, 8] = -np.inf
    for kw in (dict(kernel_size=3, stride=1, padding=1), dict(kernel_size=2)):
        got = fastconv.max_pool2d(x, **kw, return_indices=True, backend="cython")
        want = fastconv.max_pool2d(x, **kw, return_indices=True, algorithm="reference")
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)
        assert_close(fastconv.avg_pool2d(x, **kw, backend="cython"),
                     fastconv.avg_pool2d(x, **kw, algorithm="reference"), 1e-6, "avg")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,kw", [
    ((2, 3, 112, 112), dict(kernel_size=3, stride=2, padding=1)),          # ResNet's
    ((1, 2, 9, 10), dict(kernel_size=3, stride=(1, 2), padding=1)),
    ((1, 2, 8, 9), dict(kernel_size=(2, 5), stride=2, padding=(1, 2))),
    ((1, 2, 7, 7), dict(kernel_size=2, stride=2, ceil_mode=True)),          # window past W
    ((1, 2, 3, 3), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
    ((1, 1, 3, 4200), dict(kernel_size=3, stride=2, padding=1)),            # over the span
    ((1, 2, 9, 9), dict(kernel_size=3, stride=2, dilation=2)),              # tap by tap
])
def test_max_pool_values_only_stride_2(shape, kw, dtype):
    """The values-only max pool at column stride 2 (dilation 1, rows of up to
    FC_POOL_SPAN padded columns): separable, the rows' maximum per padded column (-inf
    outside the input), then each window's over its columns; other geometries tap by
    tap. The values equal the reference's and those of the pass with indices (the
    tap-by-tap loop), with NaN, inf and -inf in windows at the borders and inside."""
    x = arrays(8, dtype, shape)[0]
    x.flat[::7] = np.nan
    x.flat[3::11] = np.inf
    x.flat[5::13] = -np.inf
    got = fastconv.max_pool2d(x, **kw, backend="cython")
    want = fastconv.max_pool2d(x, **kw, algorithm="reference")
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(
        got, fastconv.max_pool2d(x, **kw, return_indices=True, backend="cython")[0])


# -- instruction-set variants, forced in a subprocess ------------------------------------

_SCRIPT = r"""
import sys, numpy as np, fastconv, fastconv._tuning as tuning
import fastconv.kernels.cython as cy
rng = np.random.default_rng(7)
out = {}
for dt in (np.float32, np.float64):
    x = rng.standard_normal((2, 6, 17, 15)).astype(dt)
    w = rng.standard_normal((8, 3, 3, 3)).astype(dt)
    kw = dict(padding=1, stride=(1, 2), groups=2, backend="cython")
    y = fastconv.conv2d(x, w, **kw)
    dy = rng.standard_normal(y.shape).astype(dt)
    out[f"conv2d_{dt.__name__}"] = y
    out[f"conv2d_input_{dt.__name__}"] = fastconv.conv2d_input(x.shape, w, dy, **kw)
    tuning.set("WEIGHT_FUSED_MIN_RATIO", 0); tuning.set("WEIGHT_FUSED_MIN_CHANNELS", 0)
    out[f"conv2d_weight_{dt.__name__}"] = fastconv.conv2d_weight(x, w.shape, dy, **kw)
    # patch_gemm's column blocks: 40 output channels, a narrower last block on every
    # variant (AVX-512 float32: 3 of its 4 vectors)
    dy40 = rng.standard_normal((2, 40, 17, 15)).astype(dt)
    out[f"patch40_conv2d_weight_{dt.__name__}"] = fastconv.conv2d_weight(
        x, (40, 6, 3, 3), dy40, padding=1, algorithm="im2col", backend="cython")
    tuning.reset()
    # the 1x1 input gradient (its own kernel on more than one thread): 37 channels, 49
    # pixels, every variant's panels and pixel blocks with remainders
    w1 = rng.standard_normal((29, 37, 1, 1)).astype(dt)
    dy1 = rng.standard_normal((2, 29, 7, 7)).astype(dt)
    out[f"pointwise_conv2d_input_{dt.__name__}"] = fastconv.conv2d_input(
        (2, 37, 7, 7), w1, dy1, backend="cython")
    # the channels-last 1x1 with its epilogue, panels a vector and a half wide on some
    # variant (K 24: AVX-512 float32; 44: AVX2 float32, AVX-512 float64; 6: AVX2 float64)
    for K in (24, 44, 6):
        x1 = fastconv.to_channels_last(rng.standard_normal((2, 13, 5, 7)).astype(dt))
        w1 = rng.standard_normal((K, 13, 1, 1)).astype(dt)
        r1 = fastconv.to_channels_last(rng.standard_normal((2, K, 5, 7)).astype(dt))
        out[f"pointwise{K}_conv2d_{dt.__name__}"] = fastconv.conv2d(
            x1, w1, w1[:, 0, 0, 0], residual=r1, activation="relu6", backend="cython")
    # the fused inverted residual block: expansion, stride 2; residual, in bands of rows
    for name, (C, E, K, s) in (("block", (13, 40, 24, 2)), ("block_res", (12, 36, 12, 1))):
        xb = fastconv.to_channels_last(rng.standard_normal((2, C, 11, 9)).astype(dt))
        ws = [(rng.standard_normal(sh) / sh[1]).astype(dt)
              for sh in ((E, C, 1, 1), (E, 1, 3, 3), (K, E, 1, 1))]
        tuning.set("BLOCK_BAND_BYTES", 1 if s == 1 else 4096)
        out[f"{name}_{dt.__name__}"] = fastconv.inverted_residual(
            xb, ws[0], ws[0][:, 0, 0, 0], ws[1], ws[1][:, 0, 0, 0], ws[2], ws[2][:, 0, 0, 0],
            s, residual=s == 1, backend="cython")
        tuning.reset()
    z, i = fastconv.max_pool2d(x, 3, stride=2, padding=1, return_indices=True, backend="cython")
    out[f"max_pool2d_{dt.__name__}"], out[f"indices_{dt.__name__}"] = z, i
    out[f"avg_pool2d_{dt.__name__}"] = fastconv.avg_pool2d(x, 3, stride=1, padding=1, backend="cython")
    xw = rng.standard_normal((2, 19, 13, 11)).astype(dt)
    ww = rng.standard_normal((21, 19, 3, 3)).astype(dt)
    for alg in ("winograd_f2", "winograd_f4"):
        kw = dict(padding=1, algorithm=alg, backend="cython")
        yw = fastconv.conv2d(xw, ww, **kw)
        out[f"{alg}_conv2d_{dt.__name__}"] = yw
        out[f"{alg}_conv2d_input_{dt.__name__}"] = fastconv.conv2d_input(xw.shape, ww, yw, **kw)
        out[f"{alg}_conv2d_weight_{dt.__name__}"] = fastconv.conv2d_weight(xw, ww.shape, yw, **kw)
    # outputs of one column on several images (on two threads where the CPU has them):
    # rows shorter than half a register transpose (AVX2's float64, SSE's float32
    # vectors), whose whole vectors would reach other tiles' and images' rows
    xq = rng.standard_normal((4, 3, 9, 3)).astype(dt)
    wq = rng.standard_normal((8, 3, 3, 3)).astype(dt)
    for alg in ("winograd_f2", "winograd_f4"):
        out[f"{alg}_conv2d_column_{dt.__name__}"] = fastconv.conv2d(
            xq, wq, algorithm=alg, backend="cython")
    for name, xs, ws, kw in (
            ("", (2, 6, 9, 17), (20, 3, 3, 3), dict(padding=1, groups=2)),
            ("short", (1, 5, 6, 5), (18, 5, 3, 3), dict(padding=1)),
            ("stride2", (2, 3, 15, 13), (24, 3, 5, 5), dict(padding=2, stride=2)),
            ("dw", (2, 6, 10, 9), (6, 1, 3, 3), dict(padding=1, groups=6)),
            ("dw2", (2, 6, 10, 9), (6, 1, 3, 3), dict(padding=1, stride=2, groups=6))):
        kw = dict(kw, algorithm="direct", backend="cython")
        xd, wd = rng.standard_normal(xs).astype(dt), rng.standard_normal(ws).astype(dt)
        yd = fastconv.conv2d(xd, wd, **kw)
        key = f"direct{name}_{{}}_{dt.__name__}"
        out[key.format("conv2d")] = yd
        out[key.format("epilogue")] = fastconv.conv2d(xd, wd, bias=wd[:, 0, 0, 0], residual=yd,
                                                      activation="relu6", **kw)
        out[key.format("conv2d_input")] = fastconv.conv2d_input(xd.shape, wd, yd, **kw)
        out[key.format("conv2d_weight")] = fastconv.conv2d_weight(xd, wd.shape, yd, **kw)
np.savez(sys.argv[1], **out)
print(cy.ISA, "numba" in sys.modules)
"""


def _run_forced(isa, path):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(fastconv.__file__).resolve().parents[1])]
        + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    if isa is None:
        env.pop("FASTCONV_ISA", None)
    else:
        env["FASTCONV_ISA"] = isa
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, str(path)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    isa_ran, numba_imported = proc.stdout.split()
    return isa_ran, numba_imported == "True", dict(np.load(path)), proc.stderr


@pytest.fixture(scope="module")
def default_isa_results(tmp_path_factory):
    return _run_forced(None, tmp_path_factory.mktemp("isa") / "default.npz")


@pytest.mark.parametrize("isa", ["baseline", "avx2", "avx512"])
def test_forced_isa_gives_the_same_results(isa, tmp_path, default_isa_results):
    """Each variant the CPU runs, forced by FASTCONV_ISA, reports itself and gives the
    default variant's results: gathers, copies and pooling bit for bit, the GEMMs within
    the tolerance (a variant with FMA rounds its products differently)."""
    if isa not in cy.SUPPORTED:
        pytest.skip(f"this CPU or build does not run {isa} (it runs {', '.join(cy.SUPPORTED)})")
    best, numba_imported, want, _ = default_isa_results
    assert best == cy.SUPPORTED[-1]
    assert not numba_imported, "the Cython kernels imported Numba"
    ran, _, got, _ = _run_forced(isa, tmp_path / f"{isa}.npz")
    assert ran == isa
    for key, value in want.items():
        if key.startswith(("max_pool2d", "indices", "avg_pool2d")):
            np.testing.assert_array_equal(got[key], value, err_msg=f"{key} under {isa}")
        else:
            algorithm = key.split("_conv2d")[0] if key.startswith("winograd") else "im2col"
            assert_close(got[key], value, tolerance(value.dtype, algorithm),
                         f"{key} under {isa}")
    assert any(key.startswith("winograd_f4") for key in want)
    assert any(key.startswith("direct") for key in want)


def test_unknown_or_unsupported_isa_is_ignored_with_a_warning(tmp_path):
    ran, _, _, stderr = _run_forced("sse9", tmp_path / "bad.npz")
    assert ran == cy.SUPPORTED[-1]
    assert "FASTCONV_ISA='sse9' is not in this build" in stderr


# -- threads ---------------------------------------------------------------------------


def _every_op(seed, dtype=np.float32):
    """Each Cython kernel once, on fixed data (the weight gradient both ways)."""
    x, w = arrays(seed, dtype, (3, 8, 19, 17), (16, 4, 3, 3))
    kw = dict(padding=1, groups=2, algorithm="im2col", backend="cython")
    y = fastconv.conv2d(x, w, **kw)
    res = {"conv2d": y, "conv2d_input": fastconv.conv2d_input(x.shape, w, y, **kw),
           "conv2d_weight": fastconv.conv2d_weight(x, w.shape, y, **kw)}
    xs, dys = arrays(seed + 1, dtype, (2, 3, 24, 24), (2, 64, 24, 24))
    with fastconv.trace_plans() as ran:
        res["patch_gemm"] = fastconv.conv2d_weight(xs, (64, 3, 3, 3), dys, padding=1,
                                                   algorithm="im2col", backend="cython")
    assert ran[0].variant == "patch_gemm"
    xw, dyw = arrays(seed + 2, dtype, (3, 16, 21, 18), (3, 24, 21, 18))
    ww = arrays(seed + 3, dtype, (24, 16, 3, 3))[0]
    for algorithm in ("winograd_f2", "winograd_f4"):
        kw = dict(padding=1, algorithm=algorithm, backend="cython")
        with fastconv.trace_plans() as ran:
            res[f"{algorithm}_conv2d"] = fastconv.conv2d(xw, ww, **kw)
            res[f"{algorithm}_conv2d_input"] = fastconv.conv2d_input(xw.shape, ww, dyw, **kw)
            res[f"{algorithm}_conv2d_weight"] = fastconv.conv2d_weight(xw, ww.shape, dyw, **kw)
        assert [pl.variant for pl in ran] == ["fused"] * 3
    xd, wd, dwd = arrays(seed + 4, dtype, (3, 12, 15, 17), (40, 6, 3, 3), (12, 1, 3, 3))
    with fastconv.trace_plans() as ran:
        for name, kw in (("direct", dict(padding=1, groups=2)),
                         ("direct_s2", dict(padding=1, stride=2, groups=2))):
            kw = dict(kw, algorithm="direct", backend="cython")
            yd = fastconv.conv2d(xd, wd, **kw)
            res[f"{name}_conv2d"] = fastconv.conv2d(xd, wd, bias=wd[:, 0, 0, 0], residual=yd,
                                                     activation="relu", **kw)
            res[f"{name}_conv2d_input"] = fastconv.conv2d_input(xd.shape, wd, yd, **kw)
            res[f"{name}_conv2d_weight"] = fastconv.conv2d_weight(xd, wd.shape, yd, **kw)
        kw = dict(padding=1, groups=12, algorithm="direct", backend="cython")
        yd = fastconv.conv2d(xd, dwd, **kw)
        res.update(depthwise_conv2d=yd,
                   depthwise_conv2d_input=fastconv.conv2d_input(xd.shape, dwd, yd, **kw),
                   depthwise_conv2d_weight=fastconv.conv2d_weight(xd, dwd.shape, yd, **kw))
    assert {pl.variant for pl in ran} == {"lanes", "phases", "blocked", "depthwise"}
    z, idx = fastconv.max_pool2d(y, 3, stride=2, padding=1, return_indices=True,
                                 backend="cython")
    res.update(max_pool2d=z, indices=idx,
               max_pool2d_backward=fastconv.max_pool2d_backward(z, idx, y.shape, backend="cython"),
               avg_pool2d=fastconv.avg_pool2d(y, 3, stride=2, padding=1, backend="cython"),
               avg_pool2d_backward=fastconv.avg_pool2d_backward(z, y.shape, 3, stride=2,
                                                                padding=1, backend="cython"),
               adaptive_avg_pool2d=fastconv.adaptive_avg_pool2d(y, (4, 3), backend="cython"))
    return res


def test_one_thread_and_two_give_the_same_results():
    """Bitwise, except Winograd's forward and input gradient where BLAS's rounding of a
    GEMM's rows depends on its row count (``blas_rows_round_alike``; their GEMMs
    multiply blocks of tiles sized by the thread count): there, close."""
    if fastconv._config.MAX_THREADS < 2:
        pytest.skip("fastconv may use one thread here (NUMBA_NUM_THREADS)")
    one = on_one_thread(lambda: _every_op(3))
    fastconv.set_num_threads(2)
    two = _every_op(3)
    rows_alike = blas_rows_round_alike()
    for key in one:
        if rows_alike or not key.startswith("winograd") or key.endswith("_weight"):
            np.testing.assert_array_equal(one[key], two[key], err_msg=key)
        else:
            algorithm = key.split("_conv2d")[0]                 # winograd_f2 or _f4
            assert_close(two[key], one[key], tolerance(np.float32, algorithm), key)


def test_repeated_calls_are_bitwise_equal():
    a, b = _every_op(5), _every_op(5)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_concurrent_calls_from_python_threads():
    want = _every_op(9)
    results, errors = [], []

    def work():
        try:
            for _ in range(3):
                results.append(_every_op(9))
        except Exception as exc:       # re-raised below in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(results) == 12
    for res in results:
        for key in want:
            np.testing.assert_array_equal(res[key], want[key], err_msg=key)


@pytest.mark.parametrize("dtype", DTYPES)
def test_direct_weight_gradient_in_both_orders(dtype):
    """Cython's blocked weight gradient runs image by image where an image's x and dy
    blocks outweigh an item's accumulators (a 3x3/2 layer on 40x40), item by item where
    they do not (64 channels on 5x5): each equals the reference, and gives the same bits
    on 1 and 2 threads."""
    from fastconv._geometry import conv_params
    from fastconv.kernels.cython import direct
    cases = [((3, 16, 40, 40), (20, 16, 3, 3), 2, True),
             ((3, 64, 5, 5), (40, 64, 3, 3), 1, False)]
    for xs, ws, stride, outer in cases:
        p = conv_params("test", xs, ws, stride, 1, 1, 1)
        assert direct._weight_image_outer(p, np.dtype(dtype)) == outer
        x, dy = arrays(7, dtype, p.input_shape, p.output_shape)
        got = {}
        for threads in (1, 2)[:fastconv._config.MAX_THREADS]:
            fastconv.set_num_threads(threads)
            with fastconv.trace_plans() as ran:
                got[threads] = fastconv.conv2d_weight(x, ws, dy, stride=stride, padding=1,
                                                      algorithm="direct", backend="cython")
            assert (ran[-1].backend, ran[-1].variant) == ("cython", "blocked")
        np.testing.assert_array_equal(got[1], got.get(2, got[1]))
        want = fastconv.conv2d_weight(x, ws, dy, stride=stride, padding=1,
                                      algorithm="reference")
        assert_close(got[1], want, tolerance(dtype, "direct"), f"{p} image_outer={outer}")
