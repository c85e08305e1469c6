"""Hostile input, fuzzed: every public function called with arbitrary arguments.

Each example starts from a small plausible call and applies a few *mutations*: wrong
ndim, zero-size axes, huge or negative strides, paddings and dilations, mismatched
groups, integer/bool/float16/complex/object arrays and plain lists, channels-last,
non-contiguous,
negatively strided, Fortran-ordered, read-only and broadcast views, NaN and Inf,
kernels larger than the padded input, absurd sizes, wrong argument types, unknown
algorithm and backend names. The call must then either

- return what the reference returns for the same arguments (``algorithm="reference"``,
  plain NumPy), or
- raise ValueError or TypeError whose message names the op (the same error the
  reference raises; an explicit algorithm may also refuse a geometry it does not
  handle), or MemoryError naming the op, at once, when the output or the workspace
  cannot fit in memory.

Examples per test: ``FASTCONV_FUZZ_EXAMPLES`` (default 250, 2,500 calls over the ten
tests: about 20 s with a warm JIT cache). Derandomised in CI by conftest's profile;
``pytest tests/test_fuzz.py --hypothesis-show-statistics`` shows how the calls ended
(answered like the reference, refused with ValueError/TypeError, MemoryError).
"""
import math
import os
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

import fastconv
from fastconv import _dispatch

EXAMPLES = int(os.environ.get("FASTCONV_FUZZ_EXAMPLES", "250"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])
ERRORS = (ValueError, TypeError, MemoryError)
#: a MemoryError must come at once, before anything large is allocated
MEMORY_ERROR_SECONDS = 2.0

# -- hostile values -------------------------------------------------------------------------

HUGE = [2**31, 2**40, 2**62, 2**63 - 1, 2**63, 2**64, 10**18, 10**30]
BAD_DTYPES = [np.float16, np.int32, np.int64, np.uint8, np.bool_, np.complex64, object]


def ints(lo, hi, wild=True):
    """Small ints in [lo, hi] (NumPy's too); when ``wild``, sometimes huge or negative."""
    small = st.integers(lo, hi)
    if not wild:
        return st.one_of(small, small, small, small.map(np.int64))
    return st.one_of(small, small, small, small, small, small,
                     st.sampled_from(HUGE), st.sampled_from([-(2**63), -(2**40), -1, 0]),
                     small.map(np.int64), small.map(np.int32))


def junk():
    """Things that are not ints or pairs of ints."""
    return st.sampled_from([1.5, 2.0, float("nan"), float("inf"), True, False, np.bool_(True),
                            "2", "same", "valid", "full", b"1", None, (), (1, 2, 3), [1, 2, 3, 4],
                            (1.0, 2.0), ("1", 1), object(), np.array([1, 2]), np.float32(2),
                            complex(1, 1), {"h": 1}])


def pair_arg(lo, hi, wild=True):
    """A stride/padding/dilation-like argument: an int, a 1- or 2-tuple or list, or
    (``wild``) junk."""
    one = ints(lo, hi, wild)
    forms = [one, one, one, st.tuples(one), st.tuples(one, one),
             st.lists(one, min_size=2, max_size=2)]
    return st.one_of(*forms, junk()) if wild else st.one_of(*forms)


def maybe(draw, p):
    """True with probability about p (shrinks towards False)."""
    return draw(st.integers(0, 99)) < 100 * p


@st.composite
def values(draw, shape, dtype):
    """An array of ``shape``: scaled normal values, sometimes with NaN/Inf sprinkled
    in, in ``dtype``."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from([1.0, 1.0, 1e-3, 1e3]))
    a = np.array(rng.standard_normal(shape) * scale)
    if a.size and maybe(draw, 0.15):
        kind = draw(st.sampled_from(["nan", "inf", "-inf", "mixed"]))
        mask = np.array(rng.random(shape)) < draw(st.sampled_from([0.05, 0.3, 1.0]))
        fill = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf}.get(kind)
        if fill is None:
            a[mask] = rng.choice([np.nan, np.inf, -np.inf], size=int(mask.sum()))
        else:
            a[mask] = fill
    return a.astype(dtype)


@st.composite
def hostile(draw, a, wild=True, allow_dtype=True):
    """``a`` (an ndarray) as a caller might pass it: another layout with the same values
    (channels last, non-contiguous, negative strides, Fortran order, read-only,
    broadcast, a plain list), and when ``wild`` another dtype, or not an array at all."""
    if wild and allow_dtype and maybe(draw, 0.1):
        dt = draw(st.sampled_from(BAD_DTYPES))
        with np.errstate(invalid="ignore", over="ignore"):
            a = a.astype(dt)
    layouts = ["c"] * 4 + ["channels_last"] * 2 + ["strided", "negative", "fortran",
                                                    "readonly", "broadcast", "list"]
    layout = draw(st.sampled_from(layouts + (["scalar", "none"] if wild else [])))
    if layout == "strided" and a.ndim:
        big = np.zeros(tuple(2 * d for d in a.shape) or (1,), a.dtype)
        view = big[tuple(slice(None, None, 2) for _ in a.shape)]
        view[...] = a
        return view
    if layout == "negative" and a.ndim:
        axis = draw(st.integers(0, a.ndim - 1))
        return np.flip(np.flip(a, axis).copy(), axis)
    if layout == "channels_last" and a.ndim == 4:
        return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    if layout == "fortran":
        return np.asfortranarray(a)
    if layout == "readonly":
        a = a.copy()
        a.setflags(write=False)
        return a
    if layout == "broadcast" and a.ndim and a.size:
        # same shape, one row repeated (zero strides, read-only): compare against its copy
        first = a[(slice(None),) * (a.ndim - 1) + (slice(0, 1),)]
        return np.broadcast_to(first, a.shape)
    if layout == "list" and a.size <= 2000 and a.dtype != object:
        return a.tolist()
    if layout == "scalar":
        return draw(st.sampled_from([1.0, np.float32(1), 0, "x"]))
    if layout == "none":
        return None
    return a


def reshape_hostile(draw, shape):
    """A shape with the wrong number of dimensions, or an axis set to 0."""
    kind = draw(st.sampled_from(["ndim", "zero", "zero", "big"]))
    shape = list(shape)
    if kind == "ndim":
        n = draw(st.sampled_from([0, 1, 2, 5]))
        return tuple(shape[:n]) + (1,) * max(0, n - len(shape))
    i = draw(st.integers(0, len(shape) - 1))
    shape[i] = 0 if kind == "zero" else draw(st.integers(9, 40))
    return tuple(shape)


def names(op, wild=True):
    """algorithm= and backend= values: registered, 'auto', or (``wild``) bogus."""
    registered = sorted({a for a, _ in fastconv.algorithms(op)})
    backends = sorted({b for _, b in fastconv.algorithms(op)})
    bogus_alg = ["fft", "", None, 3, ("direct",)] if wild else []
    alg = st.sampled_from(["auto"] * 4 + registered + bogus_alg)
    backend = st.sampled_from(["auto"] * 8 + backends + (["cuda", None] if wild else []))
    return alg, backend


# -- calling and judging -----------------------------------------------------------------------


def call(fn, *args, **kwargs):
    """(result, None) or (None, exception), and the seconds it took."""
    t0 = time.perf_counter()
    try:
        return fn(*args, **kwargs), None, time.perf_counter() - t0
    except Exception as exc:  # noqa: BLE001 - judged by the caller
        return None, exc, time.perf_counter() - t0


def _as_list(result):
    return list(result) if isinstance(result, tuple) else [result]


def _finite_close(got, want, tol, what):
    """Same shape; NaN and +-Inf exactly where the reference has them; finite values
    within ``tol`` of the largest finite magnitude."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != reference {want.shape}"
    if got.dtype.kind in "iu":
        np.testing.assert_array_equal(got, want, err_msg=what)
        return
    g, w = got.astype(np.float64), want.astype(np.float64)
    np.testing.assert_array_equal(np.isnan(g), np.isnan(w), err_msg=f"{what}: NaN placement")
    inf = np.isinf(w)
    np.testing.assert_array_equal(g[inf], w[inf], err_msg=f"{what}: Inf placement")
    fin = np.isfinite(w)
    scale = max(np.abs(w[fin]).max(initial=0.0), 1e-30)
    err = np.abs(g[fin] - w[fin]).max(initial=0.0) / scale
    assert err <= tol, f"{what}: relative error {err:.3g} > {tol:.1g}"


def _winograd_close(got, want, tol, what):
    """Winograd mixes a whole output tile, so a non-finite input spreads NaN over the
    tiles that read it (documented in conv2d): where the reference is not finite the
    result must not be either; where both are finite they agree."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != reference {want.shape}"
    assert not np.isfinite(got[~np.isfinite(want)]).any(), f"{what}: lost a NaN/Inf"
    both = np.isfinite(got) & np.isfinite(want)
    scale = max(np.abs(want[both]).max(initial=0.0), 1e-30)
    err = np.abs(got[both] - want[both]).max(initial=0.0) / scale
    assert err <= tol, f"{what}: relative error {err:.3g} > {tol:.1g}"


def _spreads_non_finite(plan):
    """Plans whose NaN/Inf may reach outputs the reference leaves finite: Winograd (its
    transforms mix a tile; documented in conv2d), and direct's input gradient but its
    depthwise scatter, whose convolution of zero-padded dy meets a non-finite weight
    with the padding's zeros (documented in conv2d_input)."""
    return plan.algorithm.startswith("winograd") or (
        plan.op == "conv2d_input" and plan.algorithm == "direct"
        and plan.variant != "depthwise_scatter")


def judge(op, fn, args, kwargs, algorithm_kw="algorithm"):
    """Call ``fn(*args, **kwargs)`` and the reference; assert the contract (module doc);
    the outcome is recorded as a Hypothesis event (``--hypothesis-show-statistics``)."""
    outcome = _judge(op, fn, args, kwargs, algorithm_kw)
    event(f"outcome: {outcome}")
    return outcome


def _judge(op, fn, args, kwargs, algorithm_kw):
    with fastconv.trace_plans() as ran:
        got, exc, seconds = call(fn, *args, **kwargs)
    ref_kwargs = {**kwargs, algorithm_kw: "reference", "backend": "auto"}
    want, ref_exc, _ = call(fn, *args, **ref_kwargs)
    note(f"{op}: got {type(exc).__name__ if exc else 'a result'}: {exc}; "
         f"reference: {type(ref_exc).__name__ if ref_exc else 'a result'}: {ref_exc}")
    if exc is not None:
        assert isinstance(exc, ERRORS), f"{op} raised {type(exc).__name__}: {exc}"
        assert op in str(exc), f"{op}: the message does not name the op: {exc}"
        if isinstance(exc, MemoryError):
            assert seconds < MEMORY_ERROR_SECONDS, f"{op}: MemoryError after {seconds:.1f} s"
            return "memory"
        if ref_exc is None:
            # only the choice of kernel may fail where the reference answers
            text = str(exc)
            assert ("algorithm" in text or "backend" in text), \
                f"{op} raised {type(exc).__name__} ({exc}) but the reference answered"
            return "refused"
        return "error"
    if ref_exc is not None:
        # the reference's workspace (float64, the whole padded input) may not fit
        assert isinstance(ref_exc, MemoryError), \
            f"{op} answered but the reference raised {type(ref_exc).__name__}: {ref_exc}"
        return "answered"
    got, want = _as_list(got), _as_list(want)
    assert len(got) == len(want)
    winograd = any(_spreads_non_finite(pl) for pl in ran)
    for i, (g, w) in enumerate(zip(got, want)):
        assert isinstance(g, np.ndarray) and g.dtype == w.dtype, \
            f"{op} output {i}: {type(g).__name__} {getattr(g, 'dtype', '')} != {w.dtype}"
        tol = 1e-4 if w.dtype == np.float32 else 1e-10
        what = f"{op} output {i} ({', '.join(f'{p.algorithm}/{p.variant}' for p in ran)})"
        (_winograd_close if winograd and w.dtype.kind == "f" else _finite_close)(g, w, tol, what)
    return "answered"


# -- convolutions ---------------------------------------------------------------------------------


@st.composite
def conv_call(draw, op):
    """(args, kwargs) of a conv op: a small geometry (half the time valid-looking,
    half the time ``wild``: hostile values and shapes mixed in)."""
    wild = maybe(draw, 0.5)
    groups = draw(st.sampled_from([1, 1, 1, 2, 3]))
    N = draw(st.integers(0, 3))
    C = groups * draw(st.integers(0 if maybe(draw, 0.05) else 1, 3))
    K = groups * draw(st.integers(1, 3))
    H, W = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    R, S = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    dtype = draw(st.sampled_from([np.float32, np.float32, np.float64]))
    kw = {}
    if maybe(draw, 0.7):
        kw["stride"] = draw(pair_arg(1, 3, wild)) if maybe(draw, 0.3) else draw(st.integers(1, 3))
    if maybe(draw, 0.7):
        kw["padding"] = (draw(pair_arg(0, 3, wild)) if maybe(draw, 0.3) else
                         draw(st.sampled_from([0, 1, 2, "same", "valid", (1, 0)])))
    if maybe(draw, 0.4):
        kw["dilation"] = draw(pair_arg(1, 2, wild)) if maybe(draw, 0.3) else draw(st.integers(1, 2))
    if groups > 1 or maybe(draw, 0.2):
        kw["groups"] = draw(st.one_of(ints(0, 4), junk())) if wild and maybe(draw, 0.3) else groups
    x_shape, w_shape = (N, C, H, W), (K, C // groups, R, S)
    if op == "conv_transpose2d":
        w_shape = (C, K // groups, R, S)
        if maybe(draw, 0.4):
            kw["output_padding"] = (draw(pair_arg(0, 2, wild)) if maybe(draw, 0.3) else
                                    draw(st.integers(0, 2)))
        if isinstance(kw.get("padding"), str) and maybe(draw, 0.8):
            kw["padding"] = 1
    if wild and maybe(draw, 0.2):
        x_shape = reshape_hostile(draw, x_shape)
    if wild and maybe(draw, 0.15):
        w_shape = reshape_hostile(draw, w_shape)
    x = draw(values(x_shape, dtype))
    w = draw(values(w_shape, dtype))
    if op in ("conv2d", "conv_transpose2d") and maybe(draw, 0.3):
        axis = 0 if op == "conv2d" else 1
        out_channels = w_shape[axis] * (groups if axis else 1) if len(w_shape) > axis else 1
        if wild and maybe(draw, 0.2):
            out_channels += 1
        kw["bias"] = draw(hostile(draw(values((out_channels,), dtype)), wild))
    if maybe(draw, 0.2):
        x = x[0] if x.ndim == 4 and x.shape[0] == 1 else x     # unbatched 3-D input
    alg, backend = names("conv2d_input" if op == "conv_transpose2d" else op, wild)
    kw["algorithm"], kw["backend"] = draw(alg), draw(backend)
    x = draw(hostile(x, wild))
    w = draw(hostile(w, wild))
    if op in ("conv2d", "conv_transpose2d"):
        return (x, w), kw
    # the backward ops take a size and a grad_output of the forward's output shape
    fwd = {k: v for k, v in kw.items() if k in ("stride", "padding", "dilation", "groups")}
    try:
        y_shape = fastconv.plan("conv2d", np.shape(x) if np.ndim(x) == 4 else (1,) + np.shape(x),
                                np.shape(w), **fwd).geometry.output_shape
        if np.ndim(x) == 3:
            y_shape = y_shape[1:]
    except Exception:  # noqa: BLE001 - an invalid geometry: any grad_output will do
        y_shape = (N, K, 2, 2)
    if math.prod(y_shape) > 20_000 or max(y_shape, default=0) > 10_000:   # huge padding
        y_shape = (N, K, 2, 2)
    if wild and maybe(draw, 0.15):
        y_shape = reshape_hostile(draw, y_shape)
    dy = draw(hostile(draw(values(tuple(y_shape), dtype)), wild))
    size = np.shape(x) if op == "conv2d_input" else np.shape(w)
    if wild and maybe(draw, 0.3):
        size = draw(st.one_of(st.just(tuple(size)[:-1]), st.just(tuple(size) + (1,)),
                              st.tuples(*[ints(0, 12) for _ in size]),
                              st.just([float(s) for s in size]), junk()))
    if op == "conv2d_input":
        return (size, w, dy), kw
    return (x, size, dy), kw


CONV_OPS = ["conv2d", "conv2d_input", "conv2d_weight", "conv_transpose2d"]


@pytest.mark.parametrize("op", CONV_OPS)
@FUZZ
@given(data=st.data())
def test_conv_ops_answer_like_the_reference_or_refuse_clearly(op, data):
    args, kwargs = data.draw(conv_call(op))
    judge(op, getattr(fastconv, op), args, kwargs)


# -- pooling ----------------------------------------------------------------------------------------


@st.composite
def pool_geometry(draw, max_pool):
    """(shape, dtype, kwargs, wild) of a pooling call, half the time ``wild``."""
    wild = maybe(draw, 0.5)
    N, C = draw(st.integers(0, 3)), draw(st.integers(1, 3))
    H, W = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    dtype = draw(st.sampled_from([np.float32, np.float32, np.float64]))
    kernel = draw(pair_arg(1, 4, wild)) if maybe(draw, 0.3) else draw(st.integers(1, 4))
    kw = dict(kernel_size=kernel)
    if maybe(draw, 0.6):
        kw["stride"] = draw(st.one_of(st.none(), pair_arg(1, 3, wild), st.just(())))
    if maybe(draw, 0.5):
        kw["padding"] = draw(pair_arg(0, 2, wild)) if maybe(draw, 0.3) else draw(st.integers(0, 1))
    if max_pool and maybe(draw, 0.3):
        kw["dilation"] = draw(pair_arg(1, 2, wild)) if maybe(draw, 0.3) else draw(st.integers(1, 2))
    if maybe(draw, 0.4):
        kw["ceil_mode"] = draw(st.sampled_from([True, False] + ([1, None, np.bool_(True)]
                                                                if wild else [])))
    shape = (N, C, H, W)
    if wild and maybe(draw, 0.2):
        shape = reshape_hostile(draw, shape)
    return shape, dtype, kw, wild


def _pool_kw_for(op, kw):
    return {k: v for k, v in kw.items() if k in ("kernel_size", "stride", "padding", "dilation",
                                                 "ceil_mode", "count_include_pad",
                                                 "divisor_override")}


@FUZZ
@given(data=st.data())
def test_max_pool2d_answers_like_the_reference_or_refuses_clearly(data):
    shape, dtype, kw, wild = data.draw(pool_geometry(True))
    x = data.draw(hostile(data.draw(values(shape, dtype)), wild))
    kw["return_indices"] = data.draw(st.booleans())
    alg, backend = names("max_pool2d", wild)
    kw["algorithm"], kw["backend"] = data.draw(alg), data.draw(backend)
    judge("max_pool2d", fastconv.max_pool2d, (x,), kw)


@FUZZ
@given(data=st.data())
def test_avg_pool2d_answers_like_the_reference_or_refuses_clearly(data):
    shape, dtype, kw, wild = data.draw(pool_geometry(False))
    x = data.draw(hostile(data.draw(values(shape, dtype)), wild))
    if maybe(data.draw, 0.4):
        kw["count_include_pad"] = data.draw(st.sampled_from([True, False] + ([0, "yes"] if wild
                                                                            else [])))
    if maybe(data.draw, 0.3):
        kw["divisor_override"] = data.draw(st.one_of(ints(-3, 5, wild), junk()) if wild
                                           else st.integers(1, 5))
    alg, backend = names("avg_pool2d", wild)
    kw["algorithm"], kw["backend"] = data.draw(alg), data.draw(backend)
    judge("avg_pool2d", fastconv.avg_pool2d, (x,), kw)


def _forward_pool(fn, x, kw):
    """The forward's output (and indices) on a clean copy of ``x``, or None."""
    try:
        return fn(np.ascontiguousarray(np.asarray(x, np.float64)), **kw)
    except Exception:  # noqa: BLE001
        return None


@FUZZ
@given(data=st.data())
def test_max_pool2d_backward_answers_like_the_reference_or_refuses_clearly(data):
    shape, dtype, kw, wild = data.draw(pool_geometry(True))
    x = data.draw(values(shape, dtype))
    fwd = _forward_pool(fastconv.max_pool2d, x, dict(_pool_kw_for("max_pool2d", kw),
                                                     return_indices=True))
    if fwd is None:                          # an invalid forward: any indices will do
        y_shape = data.draw(st.tuples(*[st.integers(0, 4)] * 4))
        idx = np.zeros(y_shape, np.int64)
    else:
        y_shape, idx = fwd[0].shape, fwd[1]
    dy = data.draw(hostile(data.draw(values(y_shape, dtype)), wild))
    mutation = data.draw(st.sampled_from(["none", "layout"] + (["range", "dtype", "shape"]
                                                                 if wild else [])))
    if mutation == "range" and idx.size:
        idx = idx.copy()
        idx.flat[data.draw(st.integers(0, idx.size - 1))] = data.draw(
            st.sampled_from([-1, 2**40, np.iinfo(np.int64).max, np.prod(shape[-2:], dtype=int)]))
    elif mutation == "dtype":
        idx = idx.astype(data.draw(st.sampled_from([np.int32, np.uint8, np.float32, np.bool_,
                                                    object])))
    elif mutation == "shape":
        idx = idx.reshape(-1)
    elif mutation == "layout":
        idx = data.draw(hostile(idx, wild, allow_dtype=False))
    input_shape = shape
    if wild and maybe(data.draw, 0.2):
        input_shape = data.draw(st.one_of(st.tuples(*[ints(0, 12)] * 4), junk(),
                                          st.just(tuple(shape)[:3])))
    alg, backend = names("max_pool2d_backward", wild)
    kwargs = dict(algorithm=data.draw(alg), backend=data.draw(backend))
    judge("max_pool2d_backward", fastconv.max_pool2d_backward, (dy, idx, input_shape), kwargs)


@FUZZ
@given(data=st.data())
def test_avg_pool2d_backward_answers_like_the_reference_or_refuses_clearly(data):
    shape, dtype, kw, wild = data.draw(pool_geometry(False))
    if maybe(data.draw, 0.4):
        kw["count_include_pad"] = data.draw(st.sampled_from([True, False] + ([0] if wild else [])))
    if maybe(data.draw, 0.3):
        kw["divisor_override"] = data.draw(st.one_of(ints(-3, 5, wild), junk()) if wild
                                           else st.integers(1, 5))
    x = data.draw(values(shape, dtype))
    y = _forward_pool(fastconv.avg_pool2d, x, _pool_kw_for("avg_pool2d", kw))
    y_shape = y.shape if y is not None else data.draw(st.tuples(*[st.integers(0, 4)] * 4))
    dy = data.draw(hostile(data.draw(values(y_shape, dtype)), wild))
    input_shape = shape
    if wild and maybe(data.draw, 0.2):
        input_shape = data.draw(st.one_of(st.tuples(*[ints(0, 12)] * 4), junk()))
    alg, backend = names("avg_pool2d_backward", wild)
    kw["algorithm"], kw["backend"] = data.draw(alg), data.draw(backend)
    judge("avg_pool2d_backward", fastconv.avg_pool2d_backward, (dy, input_shape), kw)


@FUZZ
@given(data=st.data())
def test_adaptive_avg_pool2d_answers_like_the_reference_or_refuses_clearly(data):
    wild = maybe(data.draw, 0.5)
    N, C = data.draw(st.integers(0, 3)), data.draw(st.integers(0, 3))
    shape = (N, C, data.draw(st.integers(1, 9)), data.draw(st.integers(1, 9)))
    if wild and maybe(data.draw, 0.2):
        shape = reshape_hostile(data.draw, shape)
    dtype = data.draw(st.sampled_from([np.float32, np.float64]))
    x = data.draw(hostile(data.draw(values(shape, dtype)), wild))
    size = st.one_of(st.integers(0, 10), st.none())
    sizes = [st.integers(0, 10), st.tuples(size, size), st.lists(size, min_size=2, max_size=2)]
    if wild:
        sizes += [ints(-2, 10), st.tuples(ints(0, 10), ints(0, 10)), junk()]
    output_size = data.draw(st.one_of(*sizes))
    alg, backend = names("adaptive_avg_pool2d", wild)
    kwargs = dict(algorithm=data.draw(alg), backend=data.draw(backend))
    judge("adaptive_avg_pool2d", fastconv.adaptive_avg_pool2d, (x, output_size), kwargs)


@FUZZ
@given(data=st.data())
def test_inverted_residual_answers_like_the_reference_or_refuses_clearly(data):
    """The block with hostile input (values, layouts, shapes, dtypes) and arguments.
    Its weights' values stay finite: the kernels skip the depthwise taps outside the
    input where the reference multiplies its zero padding (0 x Inf is NaN there), as
    conv2d's channels-last depthwise kernel does."""
    wild = maybe(data.draw, 0.5)
    N, C = data.draw(st.integers(0, 3)), data.draw(st.integers(1, 4))
    E = data.draw(st.one_of(st.none(), st.integers(1, 6)))
    K, R = data.draw(st.integers(1, 4)), data.draw(st.sampled_from([1, 3, 5]))
    H, W = data.draw(st.integers(1, 9)), data.draw(st.integers(1, 9))
    dtype = data.draw(st.sampled_from([np.float32, np.float64]))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    shapes = [(N, C, H, W), None if E is None else (E or C, C, 1, 1), (E or C, 1, R, R),
              (K, E or C, 1, 1)]
    if wild and maybe(data.draw, 0.3):
        i = data.draw(st.sampled_from([0, 1, 2, 3] if E else [0, 2, 3]))
        shapes[i] = reshape_hostile(data.draw, shapes[i])
    x = data.draw(hostile(data.draw(values(shapes[0], dtype)), wild))
    ws = [None if s is None else
          data.draw(hostile(rng.standard_normal(s).astype(dtype), wild, allow_dtype=wild))
          for s in shapes[1:]]
    biases = [None if w is None or not maybe(data.draw, 0.5) else
              data.draw(hostile(rng.standard_normal(np.shape(w)[:1] or (1,)).astype(dtype),
                                wild))
              for w in ws]
    args = (x, ws[0], biases[0], ws[1], biases[1], ws[2], biases[2])
    kwargs = dict(stride=data.draw(ints(1, 3) if wild else st.integers(1, 3)),
                  residual=data.draw(st.one_of(st.booleans(), junk()) if wild else
                                     st.booleans()),
                  activation=data.draw(st.sampled_from([None, "relu", "relu6"]
                                                       + (["gelu", 1] if wild else []))))
    alg, backend = names("inverted_residual", wild)
    kwargs.update(algorithm=data.draw(alg), backend=data.draw(backend))
    judge("inverted_residual", fastconv.inverted_residual, args, kwargs)


# -- plan ---------------------------------------------------------------------------------------------


@FUZZ
@given(data=st.data())
def test_plan_returns_a_runnable_plan_or_refuses_clearly(data):
    op = data.draw(st.sampled_from(list(_dispatch.OPS) + ["conv3d", "", None]))
    shape = st.tuples(*[ints(0, 9)] * 4)
    args = [op, data.draw(st.one_of(shape, shape, junk(), st.tuples(ints(0, 9))))]
    kw = {}
    if op in ("conv2d", "conv2d_input", "conv2d_weight") or maybe(data.draw, 0.2):
        args.append(data.draw(st.one_of(shape, shape, junk(), st.none())))
    for name, strat in [("stride", pair_arg(1, 3)), ("padding", pair_arg(0, 2)),
                        ("dilation", pair_arg(1, 2)), ("groups", ints(1, 3)),
                        ("kernel_size", pair_arg(1, 4)),
                        ("dtype", st.sampled_from([np.float32, np.float64, np.float16, int,
                                                   "float32", None]))]:
        if maybe(data.draw, 0.4):
            kw[name] = data.draw(strat)
    alg, backend = names(op if op in _dispatch.OPS else "conv2d")
    kw["algorithm"], kw["backend"] = data.draw(alg), data.draw(backend)
    plan, exc, seconds = call(fastconv.plan, *args, **kw)
    note(f"plan{tuple(args)} {kw} -> {plan!r} / {exc!r}")
    if exc is not None:
        assert isinstance(exc, ERRORS), f"plan raised {type(exc).__name__}: {exc}"
        assert "plan" in str(exc) or (isinstance(op, str) and op and op in str(exc)), \
            f"plan: the message names neither plan nor the op {op!r}: {exc}"
        return
    assert isinstance(plan, fastconv.Plan) and plan.op == op
    assert (plan.algorithm, plan.backend) in fastconv.algorithms(op)
    if plan.geometry is not None and op in ("conv2d", "conv2d_input", "conv2d_weight"):
        assert fastconv._plan.supports(plan.algorithm, plan.geometry)


def test_direct_strided_input_gradient_keeps_nan_in_place():
    """A NaN weight at the centre tap (which never reads the border's padding) reaches
    only the input-gradient pixels that tap reaches, as in the reference: direct's
    strided input gradient runs one stride-1 correlation per residue class and
    multiplies no inserted zero (a bug this suite found when float64 still inserted
    zeros and turned every pixel NaN)."""
    x = np.random.default_rng(0).standard_normal((1, 3, 4, 4))
    w = np.random.default_rng(1).standard_normal((3, 5, 3, 3))
    w[0, 0, 1, 1] = np.nan
    want = fastconv.conv_transpose2d(x, w, stride=2, algorithm="reference")
    with fastconv.trace_plans() as ran:
        got = fastconv.conv_transpose2d(x, w, stride=2, algorithm="direct")
    assert ran[-1].variant == "phases"
    assert np.isnan(want).any() and not np.isnan(want).all()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))


def test_depthwise_weight_gradient_keeps_nan_in_place():
    """An input NaN that no output reads leaves direct's depthwise weight gradient finite,
    as in the reference (a bug this suite found: blocks past the plane's last row or
    column multiplied it by dy's zeros)."""
    x = np.random.default_rng(0).standard_normal((1, 2, 5, 5)).astype(np.float32)
    x[0, 1, 4, 4] = np.nan                     # read by no output of a 2x2 stride-2 window
    x[0, 0, 0, 0] = np.nan                     # read by tap (0, 0) of output (0, 0)
    dy = np.ones((1, 2, 2, 2), np.float32)
    kw = dict(stride=2, groups=2)
    want = fastconv.conv2d_weight(x, (2, 1, 2, 2), dy, **kw, algorithm="reference")
    with fastconv.trace_plans() as ran:
        got = fastconv.conv2d_weight(x, (2, 1, 2, 2), dy, **kw, algorithm="direct")
    assert ran[-1].variant == "depthwise"
    assert np.isnan(want).sum() == 1
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))


# -- memory: absurd sizes fail at once -------------------------------------------------------------

ABSURD = [
    ("conv2d", lambda: fastconv.conv2d(np.zeros((1, 1, 4, 4), np.float32),
                                       np.zeros((1, 1, 3, 3), np.float32), padding=10**6)),
    ("conv2d", lambda: fastconv.conv2d(np.broadcast_to(np.float32(1), (10**5, 10**5, 8, 8))[:, :, ::-1],
                                       np.zeros((1, 10**5, 1, 1), np.float32))),
    ("conv2d_input", lambda: fastconv.conv2d_input((1, 1, 10**6, 10**6),
                                                   np.zeros((1, 1, 1, 1), np.float32),
                                                   np.zeros((1, 1, 1, 1), np.float32),
                                                   stride=10**6)),
    ("conv2d_weight", lambda: fastconv.conv2d_weight(np.zeros((0, 1, 4, 4), np.float32),
                                                     (10**12, 1, 1, 1),
                                                     np.zeros((0, 10**12, 4, 4), np.float32))),
    ("conv_transpose2d", lambda: fastconv.conv_transpose2d(
        np.zeros((1, 1, 4, 4), np.float32), np.zeros((1, 1, 3, 3), np.float32), stride=10**7)),
    ("max_pool2d_backward", lambda: fastconv.max_pool2d_backward(
        np.zeros((1, 1, 1, 1), np.float32), np.zeros((1, 1, 1, 1), np.int64), (1, 1, 10**7, 10**7))),
    ("avg_pool2d_backward", lambda: fastconv.avg_pool2d_backward(
        np.zeros((1, 1, 1, 1), np.float32), (1, 1, 10**7, 10**7), kernel_size=10**7)),
    ("adaptive_avg_pool2d", lambda: fastconv.adaptive_avg_pool2d(
        np.zeros((1, 1, 4, 4), np.float32), (10**9, 10**9))),
    ("conv2d", lambda: fastconv.conv2d(np.zeros((1, 1, 1, 1), np.float32),
                                       np.zeros((1, 1, 2, 2), np.float32), padding=2**40,
                                       dilation=2**41, algorithm="reference")),
]


@pytest.mark.parametrize("op,fn", ABSURD, ids=[f"{op}-{i}" for i, (op, _) in enumerate(ABSURD)])
def test_an_output_or_workspace_that_cannot_fit_fails_at_once(op, fn):
    t0 = time.perf_counter()
    with pytest.raises(MemoryError) as info:
        fn()
    assert time.perf_counter() - t0 < MEMORY_ERROR_SECONDS
    text = str(info.value)
    assert text.startswith(f"{op}:") and "GiB" in text and "shape" in text, text


def test_the_memory_check_counts_the_stacked_blocks():
    """A kernel run as 3x3 blocks (``kernel_blocks``) counts its stacked input: 4x the
    padded input for a 5x5 kernel."""
    with pytest.raises(MemoryError, match="stacked input of the kernel's 3x3 blocks"):
        fastconv.conv2d(np.zeros((1, 1, 1, 1), np.float32), np.zeros((1, 1, 5, 5), np.float32),
                        padding=2**15, algorithm="winograd_f4")


def test_the_memory_check_passes_what_fits():
    from fastconv._geometry import MEMORY_CHECK_BYTES, check_memory, memory_available
    check_memory("conv2d", ("output", (1, 1, 4, 4), 4))             # small: not even looked at
    available = memory_available()
    assert available is None or available > 0
    if available and available > 4 * MEMORY_CHECK_BYTES:
        check_memory("conv2d", ("output", (MEMORY_CHECK_BYTES // 4 + 1,), 4))
    with pytest.raises(MemoryError, match="no machine"):             # 4 PiB
        check_memory("conv2d", ("output", (2**30, 2**30), 4))
    assert math.prod((2**30, 2**30)) * 4 > 2**50
