"""conv2d's fused epilogue, ``activation(conv + bias + residual)``: every algorithm and
backend on random geometries, and every variant forced (checked to have run), with
every combination of bias, residual and activation, against the reference; and its
validation.

The kernels take the epilogue's arrays always (zero-size when absent) and the
activation as an int, so these calls compile nothing the other tests do not."""
import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastconv
from fastconv import _dispatch, _plan, reference
from fastconv._geometry import conv_params
from fastconv.kernels import epilogue, layouts

from conftest import (DTYPES, TORCH_TOLERANCE, arrays, assert_close, conv_args, conv_cases,
                      kernel_pairs, tolerance, torch_or_skip, tuned)

#: (bias, residual, activation): all twelve
COMBOS = list(itertools.product((False, True), (False, True), epilogue.ACTIVATIONS))


def _operands(seed, dtype, p):
    """x, w scaled so that outputs reach past relu6's 6 on both sides; bias; residual."""
    x, w, b, r = arrays(seed, dtype, p.input_shape, p.weight_shape, (p.K,), p.output_shape)
    scale = dtype(3 / np.sqrt(p.C // p.groups * p.R * p.S))
    return x * dtype(3), w * scale, b * dtype(3), r * dtype(3)


def _every_combo(run, p, dtype, x, w, b, r, tol, what):
    """``run(bias, residual, activation)`` against the reference for all of COMBOS."""
    for has_b, has_r, act in COMBOS:
        bias, res = (b if has_b else None), (r if has_r else None)
        want = np.empty(p.output_shape, np.float64)
        reference.conv2d(x, w, p, want, epilogue.make(np.float64, bias, res, act))
        got = run(bias, res, act)
        assert_close(got, want, tol, f"{what} bias={has_b} residual={has_r} act={act}")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("algorithm,backend", kernel_pairs("conv2d"))
@settings(max_examples=6)
@given(data=st.data())
def test_every_algorithm(algorithm, backend, dtype, data):
    """Random geometries (groups, depthwise, pointwise, stride, dilation, padding) by each
    (algorithm, backend), checked to be the one that ran."""
    case = data.draw(conv_cases(algorithm, max_channels=12, max_hw=20, max_n=3))
    p = case["params"]
    x, w, b, r = _operands(data.draw(st.integers(0, 99)), dtype, p)
    kw = conv_args(case)

    def run(bias, res, act):
        with fastconv.trace_plans() as ran:
            y = fastconv.conv2d(x, w, bias, **kw, activation=act, residual=res,
                                algorithm=algorithm, backend=backend)
        assert (ran[-1].algorithm, ran[-1].backend) == (algorithm, backend)
        return y

    _every_combo(run, p, dtype, x, w, b, r, tolerance(dtype, algorithm),
                 f"{algorithm}/{backend} {p}")


def _forced_run(plan, p, x, w):
    """``run`` for _every_combo that runs ``plan`` itself, traced: it must be the plan."""
    def run(bias, res, act):
        y = np.empty(p.output_shape, x.dtype)
        ep = epilogue.make(x.dtype, bias, None if res is None else res, act)
        with fastconv.trace_plans() as ran:
            _plan.run(plan, x, w, p, y, ep)
        assert ran == [plan]
        return y
    return run


#: the lanes blocks of the table the tests plan with (tests/conftest.py): one row (1 x 4
#: with 16 vector registers, 1 x 14 with 32), two rows (2 x 2, 2 x 7)
ONE_ROW, TWO_ROWS = layouts.LANES_BLOCKS

# direct's cores forced as autotune forces them (float32), on shapes where each
# store path runs: flat (stride 1 and 2), row, the one-row lanes block (transposed row
# stores) and the two-row one (element stores: rows one pixel short of the one-row
# block), with a channel tail
DIRECT_FORCED = [
    ("flat", (2, 5, 7, 9, 20, 3, 3), dict(padding=1)),
    ("flat", (1, 4, 12, 13, 14, 3, 3), dict(stride=2, padding=1)),
    ("row", (2, 3, 9, 21, 20, 3, 3), dict(stride=2, padding=(1, 0), dilation=(1, 2))),
    ("lanes", (1, 16, 6, 17, 40, 3, 3), dict(padding=1)),
    ("lanes", (2, 5, 7, ONE_ROW[1] - 1, 24, 3, 3), dict(padding=1)),
    ("lanes", (1, 8, 9, 31, 36, 3, 3), dict(stride=2, padding=1, groups=2)),
]


#: every forced core on each backend that runs it (Cython's lanes stands in for row)
DIRECT_FORCED_RUNS = [(backend, core, shape, kw) for core, shape, kw in DIRECT_FORCED
                      for backend in sorted({b for a, b in kernel_pairs("conv2d")
                                             if a == "direct"})
                      if core in (_dispatch.variants("conv2d", "direct", backend)
                                  or (core,))]


@pytest.mark.parametrize("backend,core,shape,kw", DIRECT_FORCED_RUNS)
def test_direct_cores(backend, core, shape, kw):
    N, C, H, W, K, R, S = shape
    p = conv_params("t", (N, C, H, W), (K, C // kw.get("groups", 1), R, S), kw.get("stride", 1),
                    kw.get("padding", 0), kw.get("dilation", 1), kw.get("groups", 1))
    plan = _plan._forced(_plan.make("conv2d", p, np.float32, "direct", backend), core)
    assert plan is not None and (plan.backend, plan.variant) == (backend, core)
    x, w, b, r = _operands(0, np.float32, p)
    _every_combo(_forced_run(plan, p, x, w), p, np.float32, x, w, b, r,
                 tolerance(np.float32, "direct"), f"direct {core} {p}")


# direct's other variants, by the rules (and LANES_STREAM_MIN_WEIGHT for the streamed
# kernel on a small weight, on rows of the two-row block): (variant, dtype, input,
# weight, conv2d keywords, tuning)
DIRECT_RULES = [
    ("lanes_streamed", np.float32, (2, 70, 7, TWO_ROWS[1]), (40, 70, 3, 3), dict(padding=1),
     dict(LANES_STREAM_MIN_WEIGHT=0)),
    ("pointwise", np.float32, (3, 20, 5, 6), (70, 20, 1, 1), {}, {}),
    ("pointwise", np.float32, (2, 12, 4, 5), (18, 4, 1, 1), dict(groups=3), {}),
    ("depthwise", np.float32, (2, 6, 19, 21), (12, 1, 3, 3), dict(groups=6, padding=1), {}),
    ("depthwise", np.float64, (1, 5, 11, 9), (5, 1, 3, 5), dict(groups=5, stride=2,
                                                               padding=(1, 2)), {}),
    ("row", np.float64, (2, 4, 9, 20), (17, 4, 3, 3), dict(padding=1), {}),
]


@pytest.mark.parametrize("variant,dtype,xs,ws,kw,tune", DIRECT_RULES,
                         ids=[f"{v[0]}-{np.dtype(v[1]).name}-{i}"
                              for i, v in enumerate(DIRECT_RULES)])
def test_direct_variants(variant, dtype, xs, ws, kw, tune):
    _rules_case("direct", "numba", variant, dtype, xs, ws, kw, tune)


def _rules_case(algorithm, backend, variant, dtype, xs, ws, kw, tune, **blocking):
    """The public call, with the tuning ``tune``, runs ``variant`` (its blocking values
    passing the predicates ``blocking``) and matches the reference for every
    combination."""
    p = conv_params("t", xs, ws, kw.get("stride", 1), kw.get("padding", 0),
                    kw.get("dilation", 1), kw.get("groups", 1))
    x, w, b, r = _operands(1, dtype, p)

    def run(bias, res, act):
        with fastconv.trace_plans() as ran:
            y = fastconv.conv2d(x, w, bias, **kw, activation=act, residual=res,
                                algorithm=algorithm, backend=backend)
        plan = ran[-1]
        assert (plan.algorithm, plan.backend, plan.variant) == (algorithm, backend, variant)
        for name, check in blocking.items():            # a predicate of the value
            assert check(plan[name]), plan
        return y

    with tuned(**tune):
        _every_combo(run, p, dtype, x, w, b, r, tolerance(dtype, algorithm),
                     f"{algorithm}/{backend} {variant} {p}")


# Winograd's forward paths (test_winograd's tunings) on rows shorter than a vector
# (stored tile by tile) and longer (a channels-last slab, block transposes)
WINOGRAD_PATHS = {
    "fused": dict(FUSED_MAX_FILTER_BYTES=2**40),
    "split": dict(FUSED_MAX_FILTER_BYTES=0, SPLIT_MAX_SLICE_BYTES=2**40, SPLIT_MIN_TILES=0),
    "unfused": dict(FUSED_MAX_FILTER_BYTES=0, SPLIT_MAX_SLICE_BYTES=0,
                    SPLIT_MAX_STREAM_BYTES=0, GEMM_MAX_PADDING=2**40),
    "unfused_blas": dict(FUSED_MAX_FILTER_BYTES=0, SPLIT_MAX_SLICE_BYTES=0,
                         SPLIT_MAX_STREAM_BYTES=0, GEMM_MAX_PADDING=0),
    "streamed": dict(STREAM_MIN_FILTER_BYTES=0, STREAM_MAX_TILES=2**40),
}
WINOGRAD_CASES = [(variant, algorithm, dtype)
                  for variant in WINOGRAD_PATHS
                  for algorithm in ("winograd_f2", "winograd_f4")
                  for dtype in DTYPES
                  if not (variant in ("unfused", "streamed") and dtype == np.float64)
                  and not (variant == "streamed" and algorithm == "winograd_f2")]


@pytest.mark.parametrize("variant,algorithm,dtype", WINOGRAD_CASES,
                         ids=lambda v: getattr(v, "__name__", v))
def test_winograd_variants(variant, algorithm, dtype):
    """Each forward path on each backend that runs it (``_dispatch.variants``)."""
    if variant == "split" and fastconv.get_num_threads() < 2:
        pytest.skip("the output channels are shared out only among 2 or more threads")
    backends = [b for a, b in kernel_pairs("conv2d") if a == algorithm
                and variant in (_dispatch.variants("conv2d", algorithm, b) or (variant,))]
    assert backends, (variant, algorithm)
    for backend in backends:
        for xs, ws, pad in [((2, 6, 9, 8), (10, 6, 3, 3), (1, 0)),       # Q < 8: tile stores
                            ((1, 5, 7, 21), (19, 5, 3, 3), 1)]:          # Q >= 16: slabs
            _rules_case(algorithm, backend, variant, dtype, xs, ws, dict(padding=pad),
                        WINOGRAD_PATHS[variant])


IM2COL_CASES = [   # (variant, input, weight, conv2d keywords, workspace limit, tile check)
    ("tiled", (3, 4, 9, 8), (6, 2, 3, 2), dict(groups=2, padding=1, stride=(2, 1)), None,
     lambda t: t == (3, 5)),                        # several whole images: a copy
    ("tiled", (1, 4, 9, 8), (6, 4, 3, 3), dict(padding=1), None,
     lambda t: t == (1, 9)),                        # one whole image: GEMM into NCHW
    ("tiled", (2, 4, 9, 8), (6, 4, 3, 3), dict(padding=1), 5_000,
     lambda t: t[0] == 1 and t[1] < 9),             # bands of rows
    ("image_gemm", (1, 6, 5, 7), (10, 3, 1, 1), dict(groups=2), None, None),
    ("image_gemm", (2, 6, 9, 7), (10, 3, 1, 1), dict(groups=2, stride=(2, 3)), None, None),
    ("batch_gemm", (3, 6, 5, 7), (10, 6, 1, 1), {}, None, None),
]


#: (case, backend) pairs: Cython's forward has no ``batch_gemm`` (it runs
#: ``image_gemm``, whose panels span small images)
IM2COL_RUNS = [case + (backend,) for case in IM2COL_CASES
               for backend in sorted({b for a, b in kernel_pairs("conv2d") if a == "im2col"})
               if not (case[0] == "batch_gemm" and backend == "cython")]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("variant,xs,ws,kw,limit,tile,backend", IM2COL_RUNS)
def test_im2col_variants(variant, xs, ws, kw, limit, tile, dtype, backend):
    old = fastconv.get_workspace_limit()
    try:
        if limit is not None:
            fastconv.set_workspace_limit(limit)
        _rules_case("im2col", backend, variant, dtype, xs, ws, kw, {},
                    **({} if tile is None else {"tile": tile}))
    finally:
        fastconv.set_workspace_limit(old)


def test_strided_residual_unbatched_and_nan():
    """A residual that is a view (not contiguous), a 3-D (unbatched) call, and NaN
    through both activations (as torch.relu and relu6 keep it)."""
    x, w, b = arrays(3, np.float32, (1, 4, 6, 7), (5, 4, 3, 3), (5,))
    big = arrays(4, np.float32, (1, 5, 4, 10))[0]
    res = big[:, :, :, ::2]                                   # (1, 5, 4, 5), strided
    got = fastconv.conv2d(x, w, b, activation="relu6", residual=res)
    want = fastconv.conv2d(x, w, b, activation="relu6", residual=np.ascontiguousarray(res),
                           algorithm="reference")
    assert_close(got, want, 1e-5, "strided residual")
    got3 = fastconv.conv2d(x[0], w, b, activation="relu", residual=res[0])
    assert got3.shape == (5, 4, 5)
    assert_close(got3, fastconv.conv2d(x, w, b, activation="relu", residual=res,
                                       algorithm="reference")[0], 1e-5, "unbatched")
    res = res.copy()
    res[0, 1, 2, 3] = np.nan
    for act in ("relu", "relu6"):
        y = fastconv.conv2d(x, w, activation=act, residual=res)
        assert np.isnan(y[0, 1, 2, 3]) and np.isnan(y).sum() == 1


def test_validation():
    """Errors name the shapes and the allowed activations."""
    x, w = arrays(0, np.float32, (2, 3, 6, 6), (4, 3, 3, 3))
    with pytest.raises(ValueError, match=r"residual of shape \(2, 4, 6, 6\) does not match "
                                         r"the output shape \(2, 4, 4, 4\)"):
        fastconv.conv2d(x, w, residual=np.zeros((2, 4, 6, 6), np.float32))
    with pytest.raises(ValueError, match=r"residual of shape \(2, 4, 4, 4\) does not match "
                                         r"the output shape \(4, 4, 4\)"):
        fastconv.conv2d(x[0], w, residual=np.zeros((2, 4, 4, 4), np.float32))
    with pytest.raises(TypeError, match="residual float64"):
        fastconv.conv2d(x, w, residual=np.zeros((2, 4, 4, 4)))
    with pytest.raises(ValueError, match="activation must be None, 'relu' or 'relu6', got 'gelu'"):
        fastconv.conv2d(x, w, activation="gelu")
    with pytest.raises(ValueError, match="activation"):
        fastconv.conv2d(x, w, activation=np.maximum)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_networks_fused_match_pytorch(name, monkeypatch):
    """``networks.fastconv_forward`` (weights prepared once, activations channels last,
    bias, residual adds and ReLU/ReLU6 fused into the convolutions) equals the same
    network in PyTorch within 1e-4 of the largest logit, and the plain sequence (NCHW,
    weight arrays, NumPy's activations and adds)."""
    torch = torch_or_skip()
    from fastconv import networks
    spec = networks.build(name)
    x = arrays(0, np.float32, (1,) + spec["input"])[0]
    prepared = []
    real_prepare = fastconv.prepare_weight
    monkeypatch.setattr(fastconv, "prepare_weight",
                        lambda w: prepared.append(w.shape) or real_prepare(w))
    fast = networks.fastconv_forward(spec)
    assert len(prepared) == len(networks.convs(spec))      # every weight, once, up front
    with fastconv.trace_plans() as ran:
        fused = fast(x)
    assert len(prepared) == len(networks.convs(spec))
    convs = [p for p in ran if p.op == "conv2d"]
    assert convs and all(p.layout == "nhwc" for p in convs), convs
    with fastconv.trace_plans() as ran:
        plain = networks.fastconv_forward(spec, fused=False, prepared=False,
                                          channels_last=False)(x)
    assert all(p.layout == "nchw" for p in ran if p.op == "conv2d")
    with torch.no_grad():
        want = networks.torch_module(spec)(torch.from_numpy(x)).numpy()
    scale = np.abs(want).max()
    assert np.abs(fused - want).max() <= TORCH_TOLERANCE[np.float32] * scale
    assert np.abs(fused - plain).max() <= TORCH_TOLERANCE[np.float32] * scale
