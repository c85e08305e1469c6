"""conv2d remembers each call that passed its checks (``functional._call_key``), as
conv2d_input and conv2d_weight do (``functional._grad_key``), and skips validation and
planning for an equal one. These tests show that the shortcut is
taken, and that it never changes an outcome: every call that differs from a remembered
one in anything the checks read gets what it would get in a fresh process."""
import numpy as np
import pytest

import fastconv
from fastconv import functional

rng = np.random.default_rng(0)
X = rng.standard_normal((2, 8, 9, 9)).astype(np.float32)
W = rng.standard_normal((6, 8, 3, 3)).astype(np.float32)
B = rng.standard_normal(6).astype(np.float32)
GOOD = dict(stride=1, padding=(1, 1), dilation=1, groups=1)


def outcome(call):
    """("ok", result) or ("error", exception type, message)."""
    try:
        return ("ok", np.asarray(call()))
    except (TypeError, ValueError) as e:
        return ("error", type(e), str(e))


def same(a, b):
    if a[0] != b[0]:
        return False
    if a[0] == "error":
        return a == b
    return a[1].shape == b[1].shape and a[1].strides == b[1].strides and \
        np.array_equal(a[1], b[1], equal_nan=True)


def test_a_remembered_call_skips_the_checks(monkeypatch):
    """The second equal call runs without validation or planning (both replaced by a
    function that fails here), and gives the reference's answer."""
    x, w, b = X.copy(), W.copy(), B.copy()
    functional._CONV2D_CALLS.clear()
    want = fastconv.conv2d(x, w, b, **GOOD, algorithm="reference")
    functional._CONV2D_CALLS.clear()
    first = fastconv.conv2d(x, w, b, **GOOD)
    assert len(functional._CONV2D_CALLS) == 1

    def boom(*args, **kwargs):
        raise AssertionError("checked again")
    monkeypatch.setattr(functional, "_conv2d_check", boom)
    monkeypatch.setattr(functional, "_Conv2dCall", boom)
    second = fastconv.conv2d(x, w, b, **GOOD)
    np.testing.assert_array_equal(first, second)
    np.testing.assert_allclose(second, want, rtol=1e-4, atol=1e-4)


def test_a_prepared_weight_keeps_its_calls_bound():
    """On a prepared weight, the remembered call is kept with the weight and bound to
    it (the 1x1 channels-last kernel's bound form), and gives the array's answer."""
    x = fastconv.to_channels_last(rng.standard_normal((1, 16, 7, 7)).astype(np.float32))
    w = rng.standard_normal((24, 16, 1, 1)).astype(np.float32)
    b = rng.standard_normal(24).astype(np.float32)
    pw = fastconv.prepare_weight(w)
    want = fastconv.conv2d(x, w, b, activation="relu6")
    for _ in range(2):
        with fastconv.trace_plans() as ran:
            got = fastconv.conv2d(x, pw, b, activation="relu6")
        np.testing.assert_array_equal(got, want)
        assert ran[-1].variant == "nhwc_gemm"
    (call,) = pw.calls.values()
    assert call.bound is not None
    assert not functional._CONV2D_CALLS or all(
        k[3] is not None for k in functional._CONV2D_CALLS)   # not in the arrays' memo


def _variants():
    """(name, call) pairs, each differing from the remembered call conv2d(X, W, B,
    **GOOD) in one thing the checks read; each is fresh arrays made on the call."""
    def with_args(**kw):
        return lambda x, w, b: fastconv.conv2d(x, w, b, **{**GOOD, **kw})

    def reshaped_bias(x, w, b):
        b.shape = (2, 3)                            # the remembered bias's own shape
        return fastconv.conv2d(x, w, b, **GOOD)

    def changed_bias(x, w, b):
        b[:] = 7                                    # in place: read again
        return fastconv.conv2d(x, w, b, **GOOD)

    def changed_weight(x, w, b):
        w[0] = 3
        return fastconv.conv2d(x, w, b, **GOOD)

    class Sub(np.ndarray):
        pass

    return [
        ("stride True", with_args(stride=True)),
        ("stride 1.0", with_args(stride=1.0)),
        ("stride np.int64", with_args(stride=np.int64(1))),
        ("stride (1, 1)", with_args(stride=(1, 1))),
        ("stride [1, 1]", with_args(stride=[1, 1])),
        ("padding 1", with_args(padding=1)),
        ("padding (1.0, 1)", with_args(padding=(1.0, 1))),
        ("padding (1, True)", with_args(padding=(1, True))),
        ("padding [1, 1]", with_args(padding=[1, 1])),
        ("padding 'same'", with_args(padding="same")),
        ("groups True", with_args(groups=True)),
        ("groups 2", with_args(groups=2)),
        ("activation 1", with_args(activation=1)),
        ("activation 'gelu'", with_args(activation="gelu")),
        ("algorithm 'fft'", with_args(algorithm="fft")),
        ("algorithm 'direct'", with_args(algorithm="direct")),
        ("reshaped bias", reshaped_bias),
        ("bias changed in place", changed_bias),
        ("weight changed in place", changed_weight),
        ("float64 bias", lambda x, w, b: fastconv.conv2d(x, w, b.astype(np.float64), **GOOD)),
        ("strided bias", lambda x, w, b: fastconv.conv2d(x, w, np.repeat(b, 2)[::2], **GOOD)),
        ("no bias", lambda x, w, b: fastconv.conv2d(x, w, None, **GOOD)),
        ("bias list", lambda x, w, b: fastconv.conv2d(x, w, list(b), **GOOD)),
        ("strided input", lambda x, w, b: fastconv.conv2d(
            np.repeat(x, 2, axis=3)[..., ::2], w, b, **GOOD)),
        ("channels-last input", lambda x, w, b: fastconv.conv2d(
            fastconv.to_channels_last(x), w, b, **GOOD)),
        ("3-D input", lambda x, w, b: fastconv.conv2d(x[0], w, b, **GOOD)),
        ("input subclass", lambda x, w, b: fastconv.conv2d(x.view(Sub), w, b, **GOOD)),
        ("float64 input", lambda x, w, b: fastconv.conv2d(x.astype(np.float64), w, b, **GOOD)),
        ("strided weight", lambda x, w, b: fastconv.conv2d(
            x, np.repeat(w, 2, axis=0)[::2], b, **GOOD)),
        ("residual", lambda x, w, b: fastconv.conv2d(x, w, b, residual=np.ones((2, 6, 9, 9),
                                                                            np.float32), **GOOD)),
        ("strided residual", lambda x, w, b: fastconv.conv2d(
            x, w, b, residual=np.ones((2, 6, 9, 18), np.float32)[..., ::2], **GOOD)),
        ("residual of the wrong shape", lambda x, w, b: fastconv.conv2d(
            x, w, b, residual=np.ones((2, 6, 9, 8), np.float32), **GOOD)),
    ]


@pytest.mark.parametrize("name,call", _variants(), ids=[n for n, _ in _variants()])
def test_a_remembered_call_never_changes_an_outcome(name, call):
    """The variant's outcome (its result, bitwise, or its error's type and message)
    after the remembered call on the same arrays equals its outcome with nothing
    remembered."""
    def fresh():
        return X.copy(), W.copy(), B.copy()

    functional._CONV2D_CALLS.clear()
    alone = outcome(lambda: call(*fresh()))
    functional._CONV2D_CALLS.clear()
    x, w, b = fresh()
    fastconv.conv2d(x, w, b, **GOOD)                # remembered
    assert len(functional._CONV2D_CALLS) == 1
    after = outcome(lambda: call(x, w, b))
    assert same(after, alone), (after, alone)


# -- conv2d_input and conv2d_weight: _GRAD_CALLS ------------------------------------------

DY = rng.standard_normal((2, 6, 9, 9)).astype(np.float32)
GRAD_ARGS = dict(stride=1, padding=1, dilation=1, groups=1)


def _grads(x, w, dy, **kw):
    """(input gradient, weight gradient) of conv2d(x, w) for grad_output dy."""
    kw = {**GRAD_ARGS, **kw}
    return (fastconv.conv2d_input(x.shape, w, dy, **kw),
            fastconv.conv2d_weight(x, w.shape, dy, **kw))


def test_remembered_gradient_calls_skip_the_checks(monkeypatch):
    """The second equal conv2d_input and conv2d_weight calls run without validation
    or planning (both replaced by a function that fails here), and give the
    reference's answers."""
    x, w, dy = X.copy(), W.copy(), DY.copy()
    want = _grads(x, w, dy, algorithm="reference")
    functional._GRAD_CALLS.clear()
    first = _grads(x, w, dy)
    assert len(functional._GRAD_CALLS) == 2

    def boom(*args, **kwargs):
        raise AssertionError("checked again")
    monkeypatch.setattr(functional, "conv_params", boom)
    monkeypatch.setattr(functional._plan, "make", boom)
    second = _grads(x, w, dy)
    for a, b, ref in zip(first, second, want):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(b, ref, rtol=1e-4, atol=1e-4)


def _grad_variants():
    """(name, call) pairs, each differing from the remembered gradient calls
    ``_grads(X, W, DY)`` in one thing the checks read."""
    def with_args(**kw):
        return lambda x, w, dy: _grads(x, w, dy, **kw)

    def changed_weight(x, w, dy):
        w[0] = 3
        return _grads(x, w, dy)

    def resized(x, w, dy):
        return (fastconv.conv2d_input((2, 8, 10, 10), w, dy, **GRAD_ARGS),
                fastconv.conv2d_weight(x, (6, 8, 3, 2), dy, **GRAD_ARGS))

    return [
        ("stride True", with_args(stride=True)),
        ("stride 2", with_args(stride=2)),
        ("padding 1.0", with_args(padding=1.0)),
        ("padding [1, 1]", with_args(padding=[1, 1])),
        ("padding 0", with_args(padding=0)),
        ("groups 2", with_args(groups=2)),
        ("algorithm 'fft'", with_args(algorithm="fft")),
        ("algorithm 'direct'", with_args(algorithm="direct")),
        ("weight changed in place", changed_weight),
        ("other sizes", resized),
        ("sizes as lists", lambda x, w, dy: (
            fastconv.conv2d_input(list(x.shape), w, dy, **GRAD_ARGS),
            fastconv.conv2d_weight(x, list(w.shape), dy, **GRAD_ARGS))),
        ("channels-last grad_output", lambda x, w, dy: _grads(
            x, w, fastconv.to_channels_last(dy))),
        ("strided grad_output", lambda x, w, dy: _grads(
            x, w, np.repeat(dy, 2, axis=3)[..., ::2])),
        ("grad_output of the wrong shape", lambda x, w, dy: _grads(x, w, dy[:, :, :8])),
        ("float64 grad_output", lambda x, w, dy: _grads(x, w, dy.astype(np.float64))),
        ("3-D arrays", lambda x, w, dy: (
            fastconv.conv2d_input(x.shape[1:], w, dy[0], **GRAD_ARGS),
            fastconv.conv2d_weight(x[0], w.shape, dy[0], **GRAD_ARGS))),
        ("prepared weight", lambda x, w, dy: fastconv.conv2d_input(
            x.shape, fastconv.prepare_weight(w), dy, **GRAD_ARGS)),
    ]


@pytest.mark.parametrize("name,call", _grad_variants(), ids=[n for n, _ in _grad_variants()])
def test_remembered_gradient_calls_never_change_an_outcome(name, call):
    """As for conv2d: each variant's outcome after the remembered gradient calls on
    the same arrays equals its outcome with nothing remembered."""
    def fresh():
        return X.copy(), W.copy(), DY.copy()

    def outcomes(args):
        try:
            results = call(*args)
        except (TypeError, ValueError) as e:
            return [("error", type(e), str(e))]
        return [("ok", np.asarray(r)) for r in _as_tuple(results)]

    functional._GRAD_CALLS.clear()
    alone = outcomes(fresh())
    functional._GRAD_CALLS.clear()
    x, w, dy = fresh()
    _grads(x, w, dy)                                # remembered
    assert len(functional._GRAD_CALLS) == 2
    after = outcomes((x, w, dy))
    assert len(after) == len(alone) and all(same(a, b) for a, b in zip(after, alone)), \
        (after, alone)


def _as_tuple(r):
    return r if isinstance(r, tuple) else (r,)
