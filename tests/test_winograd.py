"""Winograd F(2x2,3x3) and F(4x4,3x3): edge tiles, asymmetric and large padding on each
of its paths (fused, split, unfused with its own GEMM or BLAS, the filter transformed
on the fly; the weight gradient fused in fixed parts or unfused), each forced by
thresholds and checked to be the plan that ran; the transform matrices, and the
float32 accuracy on a large-C layer (Lavin & Gray 2016)."""
import numpy as np
import pytest

import fastconv
from fastconv import _plan
from fastconv._geometry import ConvParams
from fastconv.kernels.numba import winograd as wg

from conftest import arrays, assert_close, kernel_pairs, ran_plan, tolerance, tuned

ALGORITHMS = ("winograd_f2", "winograd_f4")
OPS = ("conv2d", "conv2d_input", "conv2d_weight")
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


#: the ways the forward passes run: fused per thread on tile batches, fused with the
#: output channels shared out among threads, and unfused (float32: fastconv's GEMM with
#: K padded to its columns; BLAS: float64, or float32 when padding K costs too much);
#: the weight gradient runs fused on the first (in 1, 2 or 4 parts of a few blocks of 8
#: tiles), unfused on the others
PATHS = {"fused": dict(FUSED_MAX_FILTER_BYTES=2**40,
                       WEIGHT_FUSED_MAX_FILTER_BYTES=2**40, WEIGHT_FUSED_MIN_TILES=0,
                       WEIGHT_PART_MIN_TILES=2,
                       WEIGHT_FOUR_PARTS_TILES=12, WEIGHT_BLOCK_TILES=8),
         "split": dict(FUSED_MAX_FILTER_BYTES=0, SPLIT_MAX_SLICE_BYTES=2**40, SPLIT_MIN_TILES=0,
                       WEIGHT_FUSED_MAX_FILTER_BYTES=0),
         "unfused": dict(FUSED_MAX_FILTER_BYTES=0, SPLIT_MAX_SLICE_BYTES=0,
                         SPLIT_MAX_STREAM_BYTES=0, WEIGHT_FUSED_MAX_FILTER_BYTES=0,
                         GEMM_MAX_PADDING=2**40),
         "unfused_blas": dict(FUSED_MAX_FILTER_BYTES=0, SPLIT_MAX_SLICE_BYTES=0,
                              SPLIT_MAX_STREAM_BYTES=0, WEIGHT_FUSED_MAX_FILTER_BYTES=0,
                              GEMM_MAX_PADDING=0)}
#: (forward and grad-input variant, grad-weight variant) each path runs, by dtype
VARIANTS = {("fused", np.float32): ("fused", "fused"), ("fused", np.float64): ("fused", "fused"),
            ("split", np.float32): ("split", "unfused"),
            ("split", np.float64): ("split", "unfused"),
            ("unfused", np.float32): ("unfused", "unfused"),
            ("unfused_blas", np.float32): ("unfused_blas", "unfused"),
            ("unfused_blas", np.float64): ("unfused_blas", "unfused")}


def _run(op, algorithm, p, dtype, x, w, dy, backend="numba"):
    """(result, plan) of ``op`` by ``algorithm`` on ``p`` on ``backend``, through the
    public call and traced (``ran_plan``)."""
    pads = (p.pad_top, p.pad_bottom, p.pad_left, p.pad_right)
    if pads[0] != pads[1] or pads[2] != pads[3]:
        # asymmetric padding has no public spelling: the plan run on the kernel
        plan = _plan.make(op, p, dtype, algorithm, backend)
        shape = {"conv2d": p.output_shape, "conv2d_input": p.input_shape,
                 "conv2d_weight": p.weight_shape}[op]
        out = np.empty(shape, dtype)
        args = {"conv2d": (x, w), "conv2d_input": (dy, w), "conv2d_weight": (x, dy)}[op]
        return ran_plan(lambda: _plan.run(plan, *args, p, out) or out, op=op,
                        algorithm=algorithm)
    kw = dict(padding=(pads[0], pads[2]), algorithm=algorithm, backend=backend)
    call = {"conv2d": lambda: fastconv.conv2d(x, w, **kw),
            "conv2d_input": lambda: fastconv.conv2d_input(x.shape, w, dy, **kw),
            "conv2d_weight": lambda: fastconv.conv2d_weight(x, w.shape, dy, **kw)}[op]
    return ran_plan(call, op=op, algorithm=algorithm)


def _reference(op, p, x, w, dy):
    out = np.empty({"conv2d": p.output_shape, "conv2d_input": p.input_shape,
                    "conv2d_weight": p.weight_shape}[op])
    args = {"conv2d": (x, w), "conv2d_input": (dy, w), "conv2d_weight": (x, dy)}[op]
    _plan.run(_plan.make(op, p, np.float64, "reference"), *args, p, out)
    return out


@pytest.mark.parametrize("path,dtype", sorted(VARIANTS, key=lambda k: (k[0], k[1].__name__)),
                         ids=lambda v: v if isinstance(v, str) else v.__name__)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_edge_tiles_and_padding(algorithm, dtype, path):
    """H, W in 1..13 (partial tiles, images smaller than a tile), asymmetric padding up
    to 3, C and K in 1..40 and 60..70 (K not a multiple of the thread count), and a few
    rows of 16-37 columns with 32-48 channels: forward, grad-input and grad-weight
    against the reference, on each path (checked to be the one that ran)."""
    if path == "split" and fastconv.get_num_threads() < 2:
        pytest.skip("the output channels are shared out only among 2 or more threads")
    want = VARIANTS[(path, dtype)]
    tol = EDGE_TOL[dtype][algorithm]
    parts = set()
    with tuned(**PATHS[path]):
        for seed, case in enumerate(_edge_cases()):
            p = _params(*case)
            assert _plan.supports(algorithm, p)
            x, w, dy = arrays(seed, dtype, p.input_shape, p.weight_shape, p.output_shape)
            for op in OPS:
                got, plan = _run(op, algorithm, p, dtype, x, w, dy)
                assert plan.variant == want[op == "conv2d_weight"], plan
                if plan.variant == "fused" and op == "conv2d_weight":
                    parts.add(plan["parts"])
                if plan.variant == "split":
                    assert plan["filter_slices"] == plan.threads
                assert_close(got, _reference(op, p, x, w, dy), tol,
                             f"{algorithm} {op} {np.dtype(dtype)} {case} {plan!r}")
    if path == "fused":
        # 1, 2 and 4 parts (3: four parts clamped to the three blocks of a small image)
        assert {1, 2, 4} <= parts, f"weight gradient parts met: {parts}"


@pytest.mark.parametrize("backend", sorted({b for a, b in kernel_pairs("conv2d")
                                            if a == "winograd_f4"}))
def test_filter_transformed_on_the_fly(backend):
    """F(4x4,3x3) float32 with the filter transformed per call in the work items
    (Numba's ``_streamed_items``: 64 output channels; Cython's ``wino_streamed``: a
    panel of the 1x1 kernel's width; chunks of 64 input channels), forced on the edge
    cases (channel tails in both, partial tiles, padding) and on 64-130 channels
    (several panels and chunks, whole blocks of the weight's transposes and tails), on
    one thread for its transforms (few tiles) and on all: forward and grad-input
    against the reference, and the same bits on a second call. F(2x2,3x3) and float64
    never stream."""
    tol = EDGE_TOL[np.float32]["winograd_f4"]
    streamed = dict(STREAM_MIN_FILTER_BYTES=0, STREAM_MAX_TILES=2**40)
    with tuned(**streamed):
        assert fastconv.plan("conv2d", (1, 8, 9, 9), (8, 8, 3, 3), padding=1,
                             algorithm="winograd_f2").variant == "fused"
        assert fastconv.plan("conv2d", (1, 8, 9, 9), (8, 8, 3, 3), padding=1,
                             algorithm="winograd_f4", dtype=np.float64).variant == "fused"
    for serial in (2**40, 0):
        with tuned(**streamed, STREAM_SERIAL_TILES=serial):
            for seed, case in enumerate(_edge_cases() + [(2, 130, 9, 9, 70, 1, 1, 1, 1),
                                                           (1, 64, 6, 11, 129, 0, 2, 1, 0)]):
                p = _params(*case)
                x, w, dy = arrays(seed, np.float32, p.input_shape, p.weight_shape,
                                  p.output_shape)
                for op in ("conv2d", "conv2d_input"):
                    got, plan = _run(op, "winograd_f4", p, np.float32, x, w, dy, backend)
                    assert plan.variant == "streamed" and plan["serial"] == bool(serial), plan
                    assert plan.backend == backend, plan
                    assert_close(got, _reference(op, p, x, w, dy), tol,
                                 f"streamed {op} {case}")
                    again, _ = _run(op, "winograd_f4", p, np.float32, x, w, dy, backend)
                    np.testing.assert_array_equal(again, got, err_msg=f"{op} {case}")


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


@pytest.fixture
def one_byte_workspace():
    old = fastconv.get_workspace_limit()
    fastconv.set_workspace_limit(1)
    yield
    fastconv.set_workspace_limit(old)


@pytest.mark.parametrize("path", ["fused", "unfused"])
@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-13), (np.float32, 1e-5)])
def test_workspace_tiling(path, dtype, tol, one_byte_workspace):
    """A workspace limit of one tile's worth gives the same result, tile by tile (one
    image, one GEMM block of tiles at a time), and grad-weight sums its tile batches
    (one tile each)."""
    x, w = arrays(3, dtype, (2, 3, 10, 9), (60, 3, 3, 3))   # 60 channels: the own GEMM, padded
    want = fastconv.conv2d(x, w, padding=1, algorithm="reference")
    dy = np.ones_like(want)
    want_dw = fastconv.conv2d_weight(x, w.shape, dy, padding=1, algorithm="reference")
    unfused = path == "unfused"
    forward = "unfused" if unfused and dtype == np.float32 else \
        "unfused_blas" if unfused else "fused"
    with tuned(**PATHS[path]):
        for algorithm in ALGORITHMS:
            got, plan = ran_plan(lambda: fastconv.conv2d(x, w, padding=1, algorithm=algorithm,
                                                         backend="numba"), variant=forward)
            if unfused:
                assert plan["images"] == 1 and plan["tile_batch"] == plan["gemm_block"][0]
            assert_close(got, want, tol, algorithm)
            got, plan = ran_plan(lambda: fastconv.conv2d_weight(x, w.shape, dy, padding=1,
                                                                algorithm=algorithm,
                                                                backend="numba"),
                                 variant="unfused" if unfused else "fused")
            if unfused:
                assert plan["images"] == 1 and plan["tile_batch"] == 1
            assert_close(got, want_dw, tol, f"{algorithm} conv2d_weight")


@pytest.mark.parametrize("parts", [2, 4])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_weight_gradient_independent_of_threads(algorithm, dtype, parts):
    """The fused weight gradient sums fixed runs of tiles into a fixed number of parts
    and adds those in order: bit-identical on 1 and 2 threads (and close to the
    reference), with 2 parts (the defaults) and 4; the plans differ only in the threads
    they use."""
    if fastconv.get_num_threads() < 2:
        pytest.skip("needs 2 threads")
    x, w = arrays(5, dtype, (3, 6, 30, 29), (7, 6, 3, 3))
    (dy,) = arrays(6, dtype, (3, 7, 30, 29))
    m = int(algorithm[-1])
    threads = fastconv.get_num_threads()
    got, plans = {}, {}
    with tuned(**({"WEIGHT_FOUR_PARTS_TILES": 128} if parts == 4 else {})):
        assert _plan.weight_parts(3 * -(-30 // m) * -(-29 // m)) == parts
        try:
            for n in (1, 2):
                fastconv.set_num_threads(n)
                got[n], plans[n] = ran_plan(
                    lambda: fastconv.conv2d_weight(x, w.shape, dy, padding=1,
                                                   algorithm=algorithm, backend="numba"),
                    variant="fused", parts=parts)
        finally:
            fastconv.set_num_threads(threads)
    assert plans[1]["threads_used"] == 1 and plans[2]["threads_used"] == 2
    assert plans[1]["block_rows"] == plans[2]["block_rows"]
    assert np.array_equal(got[1], got[2])
    want = fastconv.conv2d_weight(x, w.shape, dy, padding=1, algorithm="reference")
    assert_close(got[2], want, EDGE_TOL[dtype][algorithm], algorithm)


def test_supports():
    """Stride 1, dilation 1, groups 1, any kernel size (3x3 blocks); the docstring names
    the limits."""
    ok = _params(1, 4, 8, 8, 4, 1, 1, 1, 1)
    for algorithm in ALGORITHMS:
        assert _plan.supports(algorithm, ok)
        assert _plan.SUPPORTS[algorithm] is _plan.winograd_supports
        for change in [dict(R=5, S=5), dict(R=1, S=7), dict(R=2, S=2)]:
            assert _plan.supports(algorithm, ConvParams(**{**ok.__dict__, **change}))
        for change in [dict(stride_h=2), dict(dil_w=2), dict(groups=2)]:
            assert not _plan.supports(algorithm, ConvParams(**{**ok.__dict__, **change}))
    assert "3x3 blocks" in _plan.winograd_supports.__doc__


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


@pytest.mark.parametrize("backend", ["numba", "cython"])
@pytest.mark.parametrize("path", ["fused", "split"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
def test_blocks_of_whole_images(backend, path, dtype):
    """Images with few tiles share a block (the fused path's ``images`` > 1: one GEMM
    over the tiles of several images, the last group short): forward with a bias, a
    residual and ReLU, and grad-input, against the reference, on both backends."""
    if path == "split" and fastconv.get_num_threads() < 2:
        pytest.skip("the output channels are shared out only among 2 or more threads")
    pytest.importorskip(f"fastconv.kernels.{backend}.winograd")
    for algorithm in ALGORITHMS:
        for N, C, H, W, K in [(7, 24, 7, 6, 20), (5, 17, 3, 9, 33)]:
            p = _params(N, C, H, W, K, 1, 1, 1, 1)
            x, w, dy, b = arrays(N, dtype, p.input_shape, p.weight_shape, p.output_shape,
                                 (K,))
            kw = dict(padding=1, algorithm=algorithm, backend=backend)
            with tuned(**PATHS[path]):
                got, plan = ran_plan(lambda: fastconv.conv2d(x, w, b, residual=dy,
                                                             activation="relu", **kw),
                                     variant=path, backend=backend)
                assert plan["images"] >= 2 and plan["block_rows"] == plan["tiles"][0], plan
                want = fastconv.conv2d(x, w, b, residual=dy, activation="relu", padding=1,
                                       algorithm="reference")
                assert_close(got, want, EDGE_TOL[dtype][algorithm], f"{plan!r}")
                got, plan = ran_plan(lambda: fastconv.conv2d_input(x.shape, w, dy, **kw),
                                     variant=path, backend=backend)
                assert plan["images"] >= 2, plan
                want = fastconv.conv2d_input(x.shape, w, dy, padding=1, algorithm="reference")
                assert_close(got, want, EDGE_TOL[dtype][algorithm], f"{plan!r}")


#: the paths of a channels-last forward: the four above and, float32 F(4x4,3x3) only,
#: the filter transformed on the fly
CL_PATHS = dict(PATHS, streamed=dict(STREAM_MIN_FILTER_BYTES=0, STREAM_MAX_TILES=2**40))


@pytest.mark.parametrize("backend", sorted({b for a, b in kernel_pairs("conv2d")
                                            if a in ALGORITHMS}))
@pytest.mark.parametrize(
    "algorithm,path,dtype",
    [(a, path, dtype) for a in ALGORITHMS
     for path, dtype in sorted(VARIANTS, key=lambda k: (k[0], k[1].__name__))]
    + [("winograd_f4", "streamed", np.float32)],
    ids=lambda v: v if isinstance(v, str) else v.__name__)
def test_forward_channels_last_on_every_path(algorithm, dtype, path, backend):
    """A channels-last input (PyTorch's ``channels_last``) computes channels last on
    every path: the plan that ran has layout "nhwc" and the path's variant, its slabs
    copy channels-last rows and its output transform stores runs of channels. With
    each epilogue, on partial tiles, channel tails and rows shorter and longer than a
    vector: equal to the reference, and bit for bit to the same plan on NCHW data."""
    if path == "split" and fastconv.get_num_threads() < 2:
        pytest.skip("the output channels are shared out only among 2 or more threads")
    pytest.importorskip(f"fastconv.kernels.{backend}.winograd")
    variant = "streamed" if path == "streamed" else VARIANTS[(path, dtype)][0]
    cl = fastconv.to_channels_last
    with tuned(**CL_PATHS[path]):
        for seed, (N, C, H, W, K, pad) in enumerate([(1, 3, 5, 7, 4, 1), (2, 17, 9, 13, 33, 1),
                                                      (3, 40, 6, 6, 20, 0),
                                                      (1, 20, 18, 21, 37, 1),
                                                      (2, 8, 11, 20, 16, 2)]):
            p = _params(N, C, H, W, K, pad, pad, pad, pad)
            x, w, b, r = arrays(seed, dtype, p.input_shape, p.weight_shape, (K,),
                                p.output_shape)
            for bias, res, act in [(None, None, None), (b, r, "relu"), (b, None, "relu6"),
                                   (None, r, None)]:
                kw = dict(padding=pad, algorithm=algorithm, backend=backend, activation=act)
                want, plan = ran_plan(lambda: fastconv.conv2d(x, w, bias, residual=res, **kw),
                                      variant=variant, backend=backend)
                assert plan.layout == "nchw"
                got, plan = ran_plan(lambda: fastconv.conv2d(
                    cl(x), w, bias, residual=None if res is None else cl(res), **kw),
                    variant=variant, backend=backend)
                assert plan.layout == "nhwc" and fastconv.channels_last(got), plan
                np.testing.assert_array_equal(got, want, f"{plan!r}")
                ref = fastconv.conv2d(x, w, bias, residual=res, padding=pad,
                                      activation=act, algorithm="reference")
                assert_close(got, ref, tolerance(dtype, algorithm), f"{plan!r}")


# -- Kernels other than 3x3, as 3x3 blocks (kernels/kernel_blocks.py) --------------------

#: (N, C, H, W, K, R, S, pad_top, pad_bottom, pad_left, pad_right): 5x5, 7x7 and 4x6
#: (2 x 2, 3 x 3 and 2 x 2 blocks), 1x3 and 2x2 (one zero-padded block), 5x3; padding
#: asymmetric, none, and past the kernel (the input gradient's rows beyond x dropped)
BLOCK_CASES = [(1, 5, 9, 11, 6, 5, 5, 2, 2, 2, 2), (2, 3, 10, 7, 4, 7, 7, 3, 1, 0, 4),
               (1, 4, 6, 9, 5, 4, 6, 1, 2, 0, 3), (2, 6, 5, 8, 3, 1, 3, 0, 0, 1, 1),
               (1, 3, 4, 4, 7, 2, 2, 0, 1, 1, 0), (1, 2, 3, 12, 3, 5, 3, 5, 4, 0, 0),
               (1, 17, 8, 8, 20, 5, 5, 0, 0, 0, 0)]


def _kernel_params(N, C, H, W, K, R, S, pt, pb, pl, pr):
    return ConvParams(N, C, H, W, K, R, S, 1, 1, 1, pt, pb, pl, pr, 1, 1,
                      H + pt + pb - R + 1, W + pl + pr - S + 1)


WINOGRAD_BACKENDS = sorted({b for a, b in kernel_pairs("conv2d") if a in ALGORITHMS})


@pytest.mark.parametrize("backend", WINOGRAD_BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: d.__name__)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_kernel_blocks(algorithm, dtype, backend):
    """Kernels other than 3x3 run as 3x3 blocks of the zero-padded kernel: forward,
    grad-input and grad-weight against the reference, each plan that ran naming its
    blocks."""
    groups = set()
    for seed, case in enumerate(BLOCK_CASES):
        p = _kernel_params(*case)
        assert _plan.supports(algorithm, p)
        x, w, dy = arrays(seed, dtype, p.input_shape, p.weight_shape, p.output_shape)
        for op in OPS:
            # one image a group (forward, input gradient), or the whole batch
            with tuned(BLOCKS_CACHE_SHARE=(seed + 1) % 2):
                got, plan = _run(op, algorithm, p, dtype, x, w, dy, backend)
            assert plan.backend == backend
            assert plan["kernel_blocks"] == (-(-p.R // 3), -(-p.S // 3)), plan
            groups.add((op, plan["block_images"] < p.N))
            assert_close(got, _reference(op, p, x, w, dy), tolerance(dtype, algorithm),
                         f"{algorithm} {op} {np.dtype(dtype)} {case} {plan!r}")
    assert {("conv2d", True), ("conv2d_input", True)} <= groups, groups


@pytest.mark.parametrize("backend", WINOGRAD_BACKENDS)
def test_kernel_blocks_channels_last_with_epilogue(backend):
    """A channels-last 5x5 forward stacks its blocks channels last: with bias, residual
    and ReLU, one image at a time (each its part of the residual), bit for bit the NCHW
    plan's result, and equal to the reference."""
    cl = fastconv.to_channels_last
    x, w, b, r = arrays(3, np.float32, (3, 6, 9, 10), (7, 6, 5, 5), (7,), (3, 7, 9, 10))
    kw = dict(padding=2, algorithm="winograd_f4", backend=backend, activation="relu")
    with tuned(BLOCKS_CACHE_SHARE=0):
        want, plan = ran_plan(lambda: fastconv.conv2d(x, w, b, residual=r, **kw),
                              kernel_blocks=(2, 2), block_images=1)
        got, plan = ran_plan(lambda: fastconv.conv2d(cl(x), w, b, residual=cl(r), **kw),
                             kernel_blocks=(2, 2), block_images=1)
    assert plan.layout == "nhwc" and fastconv.channels_last(got), plan
    np.testing.assert_array_equal(got, want)
    ref = fastconv.conv2d(x, w, b, residual=r, padding=2, activation="relu",
                          algorithm="reference")
    assert_close(got, ref, tolerance(np.float32, "winograd_f4"))


@pytest.mark.parametrize("nhwc", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("threads", [1, 2])
def test_kernel_blocks_copies_on_threads_equal_numpy(nhwc, threads, monkeypatch):
    """The stacked input and its fold (the input gradient's) made by the Cython layout
    module on OpenMP's threads are bit for bit NumPy's, for every placement of
    BLOCK_CASES, at sizes over its serial threshold too (a batch of 40 images)."""
    from fastconv.kernels import kernel_blocks as kb
    if kb._layout is None:
        pytest.skip("the Cython backend is not built")
    fastconv.set_num_threads(min(threads, fastconv.get_num_threads()))
    for seed, case in enumerate(BLOCK_CASES):
        for N in (case[0], 40):
            p = _kernel_params(N, *case[1:])
            q = fastconv._geometry.blocked_params(p)
            x, s = arrays(seed, np.float32, p.input_shape, (N, q.C, q.H, q.W))
            xl = fastconv.to_channels_last(x).transpose(0, 2, 3, 1) if nhwc else x
            got = kb.stack_input(xl, p, nhwc).copy()
            out = np.empty(p.input_shape, np.float32)
            kb.fold_input(s, p, out)
            with monkeypatch.context() as m:
                m.setattr(kb, "_layout", None)           # NumPy's copies
                want = kb.stack_input(xl, p, nhwc).copy()
                want_out = np.full(p.input_shape, np.nan, np.float32)
                kb.fold_input(s, p, want_out)
            np.testing.assert_array_equal(got, want, f"{case} N={N}")
            np.testing.assert_array_equal(out, want_out, f"{case} N={N}")


def test_kernel_blocks_kept_with_the_weight():
    """A prepared weight keeps its stacked blocks, and they keep their transformed
    filter: the second call builds nothing. A plain weight changed in place gives the
    new result (its blocks rebuilt, never stale)."""
    x, w = arrays(5, np.float32, (1, 4, 8, 8), (5, 4, 5, 5))
    pw = fastconv.prepare_weight(w)
    first = fastconv.conv2d(x, pw, padding=2, algorithm="winograd_f4")
    blocks = pw.derived[("kernel_blocks",)]
    assert blocks.array.shape == (5, 16, 3, 3) and blocks.derived, blocks
    kept = dict(blocks.derived)
    second = fastconv.conv2d(x, pw, padding=2, algorithm="winograd_f4")
    assert pw.derived[("kernel_blocks",)] is blocks
    assert blocks.derived.keys() == kept.keys()
    assert all(blocks.derived[k] is v for k, v in kept.items())
    np.testing.assert_array_equal(first, second)
    plain = w.copy()
    before = fastconv.conv2d(x, plain, padding=2, algorithm="winograd_f4")
    plain *= 2
    after = fastconv.conv2d(x, plain, padding=2, algorithm="winograd_f4")
    assert_close(after, 2 * before, 1e-6)
