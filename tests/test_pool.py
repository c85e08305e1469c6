"""Pooling: max (values, indices, gradient), average (count_include_pad,
divisor_override, gradient) and adaptive average, every registered kernel against the
reference over random geometries (ceil_mode, padding, dilation), NaN and Inf, the
reference by hand and by finite differences, and both against PyTorch (skipped without
it)."""
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import fastconv
from fastconv import reference
from fastconv._geometry import pool_params

from conftest import (DTYPES, TORCH_TOLERANCE, arrays, assert_close, kernel_pairs,
                      numerical_grad, pool_cases, ran_plan, tolerance)

EXAMPLES = settings(max_examples=300)


def _torch():
    torch = pytest.importorskip("torch", reason="PyTorch is not installed: "
                                "pip install torch==2.13.0 for the PyTorch comparisons")
    torch.set_num_threads(2)
    return torch


def _max_args(case):
    return {k: case[k] for k in ("kernel_size", "stride", "padding", "dilation", "ceil_mode")}


def _with_nan(x, data, dtype):
    """``x`` with a few NaN and Inf drawn into it (or none)."""
    for value in data.draw(st.lists(st.sampled_from([np.nan, np.inf, -np.inf]), max_size=3),
                           label="non-finite values"):
        i = data.draw(st.integers(0, x.size - 1), label="where")
        x.reshape(-1)[i] = dtype(value)
    return x


# -- Every kernel against the reference ------------------------------------------------------


@pytest.mark.parametrize("algorithm,backend", kernel_pairs("max_pool2d"))
@settings(max_examples=80)
@given(case=pool_cases(max_pool=True), dtype=st.sampled_from(DTYPES), data=st.data())
def test_max_pool_kernel_matches_reference(algorithm, backend, case, dtype, data):
    """Values and indices exactly (NaN wins its window, the first maximum's index, NaN
    and Inf drawn in), values alone (no indices asked for) likewise, and the gradient of
    every registered backward kernel."""
    (x,) = arrays(case["H"] * 3 + case["W"], dtype, (case["N"], case["C"], case["H"], case["W"]))
    x = _with_nan(x, data, dtype)
    args = _max_args(case)
    (y, idx), _ = ran_plan(lambda: fastconv.max_pool2d(x, **args, return_indices=True,
                                                       algorithm=algorithm, backend=backend),
                           op="max_pool2d", algorithm=algorithm, backend=backend)
    y_ref, idx_ref = fastconv.max_pool2d(x, **args, return_indices=True, algorithm="reference")
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(idx, idx_ref)
    assert y.dtype == dtype and idx.dtype == np.int64
    # without return_indices the kernels take their values-only path
    y_only, _ = ran_plan(lambda: fastconv.max_pool2d(x, **args, algorithm=algorithm,
                                                     backend=backend),
                         op="max_pool2d", algorithm=algorithm, backend=backend)
    np.testing.assert_array_equal(y_only, y_ref)
    (dy,) = arrays(5, dtype, y.shape)
    dx_ref = fastconv.max_pool2d_backward(dy, idx, x.shape, algorithm="reference")
    for bwd_alg, bwd_backend in kernel_pairs("max_pool2d_backward"):
        dx, _ = ran_plan(lambda: fastconv.max_pool2d_backward(dy, idx, x.shape, algorithm=bwd_alg,
                                                              backend=bwd_backend),
                         op="max_pool2d_backward", algorithm=bwd_alg, backend=bwd_backend)
        assert_close(dx, dx_ref, tolerance(dtype, bwd_alg), "max_pool2d_backward")


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # inf - inf
@pytest.mark.parametrize("algorithm,backend", kernel_pairs("avg_pool2d"))
@settings(max_examples=80)
@given(case=pool_cases(max_pool=False), dtype=st.sampled_from(DTYPES),
       count_include_pad=st.booleans(), divisor_override=st.sampled_from([None, 1, 3]),
       data=st.data())
def test_avg_pool_kernel_matches_reference(algorithm, backend, case, dtype, count_include_pad,
                                           divisor_override, data):
    (x,) = arrays(case["H"] + case["W"], dtype, (case["N"], case["C"], case["H"], case["W"]))
    x = _with_nan(x, data, dtype)
    args = dict(kernel_size=case["kernel_size"], stride=case["stride"], padding=case["padding"],
                ceil_mode=case["ceil_mode"], count_include_pad=count_include_pad,
                divisor_override=divisor_override)
    y, _ = ran_plan(lambda: fastconv.avg_pool2d(x, **args, algorithm=algorithm, backend=backend),
                    op="avg_pool2d", algorithm=algorithm, backend=backend)
    assert_close(y, fastconv.avg_pool2d(x, **args, algorithm="reference"),
                 tolerance(dtype, algorithm), "avg_pool2d")
    (dy,) = arrays(3, dtype, y.shape)
    for bwd_alg, bwd_backend in kernel_pairs("avg_pool2d_backward"):
        dx, _ = ran_plan(lambda: fastconv.avg_pool2d_backward(dy, x.shape, **args,
                                                              algorithm=bwd_alg,
                                                              backend=bwd_backend),
                         op="avg_pool2d_backward", algorithm=bwd_alg, backend=bwd_backend)
        assert_close(dx, fastconv.avg_pool2d_backward(dy, x.shape, **args, algorithm="reference"),
                     tolerance(dtype, bwd_alg), "avg_pool2d_backward")


@pytest.mark.parametrize("algorithm,backend", kernel_pairs("adaptive_avg_pool2d"))
@settings(max_examples=40)
@given(H=st.integers(1, 20), W=st.integers(1, 20), P=st.integers(1, 9), Q=st.integers(1, 9),
       dtype=st.sampled_from(DTYPES))
def test_adaptive_avg_pool_kernel_matches_reference(algorithm, backend, H, W, P, Q, dtype):
    (x,) = arrays(H * W, dtype, (2, 3, H, W))
    y, _ = ran_plan(lambda: fastconv.adaptive_avg_pool2d(x, (P, Q), algorithm=algorithm,
                                                         backend=backend),
                    op="adaptive_avg_pool2d", algorithm=algorithm, backend=backend)
    assert y.shape == (2, 3, P, Q)
    assert_close(y, fastconv.adaptive_avg_pool2d(x, (P, Q), algorithm="reference"),
                 tolerance(dtype, algorithm), "adaptive_avg_pool2d")


# -- The reference by hand and by finite differences -----------------------------------------


def test_max_pool_2x2_by_hand():
    x = np.array([[1, 3, 2, 0], [4, 2, 1, 5], [0, 1, 7, 6], [2, 9, 3, 3]], np.float64)
    x = x.reshape(1, 1, 4, 4)
    y, idx = fastconv.max_pool2d(x, 2, return_indices=True, algorithm="reference")
    np.testing.assert_array_equal(y[0, 0], [[4, 5], [9, 7]])
    np.testing.assert_array_equal(idx[0, 0], [[4, 7], [13, 10]])  # flat h*4 + w
    dx = fastconv.max_pool2d_backward(np.ones_like(y), idx, x.shape, algorithm="reference")
    want = np.zeros((4, 4))
    want[1, 0] = want[1, 3] = want[3, 1] = want[2, 2] = 1
    np.testing.assert_array_equal(dx[0, 0], want)


def test_max_pool_nan_wins_by_hand():
    """A NaN is the maximum of its window and its index is the NaN's (as PyTorch)."""
    x = np.array([[1, np.nan, 2, 0], [4, 2, 1, 5]], np.float64).reshape(1, 1, 2, 4)
    for algorithm, backend in fastconv.algorithms("max_pool2d"):
        y, idx = fastconv.max_pool2d(x, 2, return_indices=True, algorithm=algorithm,
                                     backend=backend)
        assert np.isnan(y[0, 0, 0, 0]) and y[0, 0, 0, 1] == 5
        np.testing.assert_array_equal(idx[0, 0, 0], [1, 7])
        y = fastconv.max_pool2d(x, 2, algorithm=algorithm, backend=backend)
        assert np.isnan(y[0, 0, 0, 0]) and y[0, 0, 0, 1] == 5


def test_avg_pool_by_hand():
    x = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)
    y = fastconv.avg_pool2d(x, 2, algorithm="reference")
    np.testing.assert_array_equal(y[0, 0], [[2.5, 4.5], [10.5, 12.5]])
    # padding 1, count_include_pad: corner window holds x[0,0]=0 and three pads
    y = fastconv.avg_pool2d(x, 2, padding=1, algorithm="reference")
    assert y[0, 0, 0, 0] == 0.0 and y[0, 0, 0, 1] == (1 + 2) / 4
    y = fastconv.avg_pool2d(x, 2, padding=1, count_include_pad=False, algorithm="reference")
    assert y[0, 0, 0, 1] == (1 + 2) / 2
    # divisor_override divides every window's sum by itself, padding or not
    for algorithm, backend in fastconv.algorithms("avg_pool2d"):
        for count_include_pad in (True, False):
            y = fastconv.avg_pool2d(x, 2, padding=1, divisor_override=2, algorithm=algorithm,
                                    backend=backend, count_include_pad=count_include_pad)
            assert y[0, 0, 0, 1] == (1 + 2) / 2                 # rows -1..0, columns 1..2
            assert y[0, 0, 1, 1] == (5 + 6 + 9 + 10) / 2        # rows 1..2, columns 1..2


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pool_gradients_by_finite_differences(kind):
    # distinct, well separated values: no ties and no max switch within eps
    rng = np.random.default_rng(0)
    x = rng.permutation(2 * 3 * 7 * 6).astype(np.float64).reshape(2, 3, 7, 6) / 10
    p = pool_params("t", x.shape, (3, 2), (2, 1), (1, 1), 1, True)
    (dy,) = arrays(5, np.float64, p.output_shape)
    out, idx = np.empty(p.output_shape), np.empty(p.output_shape, np.int64)

    def loss():
        if kind == "max":
            reference.max_pool2d(x, p, out, idx)
        else:
            reference.avg_pool2d(x, p, False, 0, out)
        return float((out * dy).sum())

    loss()
    dx = np.empty(x.shape)
    if kind == "max":
        reference.max_pool2d_backward(dy, idx, p, dx)
    else:
        reference.avg_pool2d_backward(dy, p, False, 0, dx)
    np.testing.assert_allclose(dx, numerical_grad(loss, x), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("algorithm,backend", kernel_pairs("adaptive_avg_pool2d"))
@settings(max_examples=30)
@given(N=st.integers(1, 3), C=st.integers(2, 40), H=st.integers(1, 12), W=st.integers(1, 12),
       P=st.integers(1, 6), Q=st.integers(1, 6), dtype=st.sampled_from(DTYPES))
def test_adaptive_avg_pool_channels_last(algorithm, backend, N, C, H, W, P, Q, dtype):
    """A channels-last input is pooled in that layout (the plan says "nhwc"), into a
    result in the caller's layout with the NCHW call's bits (the same sums in the same
    order) and the reference's values."""
    assume(H * W > 1)                       # H = W = 1: the array counts as NCHW
    (x,) = arrays(N * C + H * W, dtype, (N, C, H, W))
    xl = fastconv.to_channels_last(x)
    with fastconv.trace_plans() as ran:
        y = fastconv.adaptive_avg_pool2d(xl, (P, Q), algorithm=algorithm, backend=backend)
    assert (ran[-1].backend, ran[-1].layout) == (backend, "nhwc"), ran[-1]
    assert y.shape == (N, C, P, Q)
    assert P * Q == 1 or fastconv.channels_last(y)
    np.testing.assert_array_equal(
        y, fastconv.adaptive_avg_pool2d(x, (P, Q), algorithm=algorithm, backend=backend))
    assert_close(y, fastconv.adaptive_avg_pool2d(x, (P, Q), algorithm="reference"),
                 tolerance(dtype, algorithm), "adaptive_avg_pool2d channels last")


def test_adaptive_avg_pool_windows_by_hand():
    x = np.arange(5, dtype=np.float64).reshape(1, 1, 1, 5)
    # 5 -> 3: windows [0,2), [1,4), [3,5)
    y = fastconv.adaptive_avg_pool2d(x, (1, 3), algorithm="reference")
    np.testing.assert_allclose(y[0, 0, 0], [0.5, 2.0, 3.5])


# -- Against PyTorch --------------------------------------------------------------------------


@EXAMPLES
@given(case=pool_cases(max_pool=True))
def test_max_pool2d_and_backward_match_torch(case):
    torch = _torch()
    F = torch.nn.functional
    args = _max_args(case)
    args["stride"] = args["stride"] or None
    for dtype in DTYPES:
        x, = arrays(case["H"] * 7 + case["W"], dtype, (case["N"], case["C"], case["H"], case["W"]))
        tx = torch.tensor(x, requires_grad=True)
        y_t, idx_t = F.max_pool2d(tx, **args, return_indices=True)
        dy, = arrays(1, dtype, tuple(y_t.shape))
        (dx_t,) = torch.autograd.grad(y_t, tx, torch.tensor(dy))
        for algorithm, backend in fastconv.algorithms("max_pool2d"):
            y, idx = fastconv.max_pool2d(x, **args, return_indices=True, algorithm=algorithm,
                                         backend=backend)
            np.testing.assert_array_equal(y, y_t.detach().numpy())
            np.testing.assert_array_equal(idx, idx_t.numpy())
        for algorithm, backend in fastconv.algorithms("max_pool2d_backward"):
            dx = fastconv.max_pool2d_backward(dy, idx, x.shape, algorithm=algorithm, backend=backend)
            assert_close(dx, dx_t.numpy(), TORCH_TOLERANCE[dtype], f"max_pool2d_backward {algorithm}")


@EXAMPLES
@given(case=pool_cases(max_pool=False), count_include_pad=st.booleans(),
       divisor_override=st.sampled_from([None, 1, 2, 5]))
def test_avg_pool2d_and_backward_match_torch(case, count_include_pad, divisor_override):
    torch = _torch()
    F = torch.nn.functional
    args = dict(kernel_size=case["kernel_size"], stride=case["stride"] or None,
                padding=case["padding"], ceil_mode=case["ceil_mode"],
                count_include_pad=count_include_pad, divisor_override=divisor_override)
    for dtype in DTYPES:
        x, = arrays(case["H"] + case["W"], dtype, (case["N"], case["C"], case["H"], case["W"]))
        tx = torch.tensor(x, requires_grad=True)
        y_t = F.avg_pool2d(tx, **args)
        dy, = arrays(2, dtype, tuple(y_t.shape))
        (dx_t,) = torch.autograd.grad(y_t, tx, torch.tensor(dy))
        tol = TORCH_TOLERANCE[dtype]
        for algorithm, backend in fastconv.algorithms("avg_pool2d"):
            assert_close(fastconv.avg_pool2d(x, **args, algorithm=algorithm, backend=backend),
                         y_t.detach().numpy(), tol, f"avg_pool2d {algorithm}")
        for algorithm, backend in fastconv.algorithms("avg_pool2d_backward"):
            dx = fastconv.avg_pool2d_backward(dy, x.shape, **args, algorithm=algorithm,
                                              backend=backend)
            assert_close(dx, dx_t.numpy(), tol, f"avg_pool2d_backward {algorithm}")


@EXAMPLES
@given(H=st.integers(1, 24), W=st.integers(1, 24),
       out=st.tuples(st.one_of(st.none(), st.integers(1, 12)), st.one_of(st.none(), st.integers(1, 12))))
def test_adaptive_avg_pool2d_matches_torch(H, W, out):
    torch = _torch()
    for dtype in DTYPES:
        x, = arrays(H * W, dtype, (2, 3, H, W))
        want = torch.nn.functional.adaptive_avg_pool2d(torch.tensor(x), out).numpy()
        for algorithm, backend in fastconv.algorithms("adaptive_avg_pool2d"):
            assert_close(fastconv.adaptive_avg_pool2d(x, out, algorithm=algorithm, backend=backend),
                         want, TORCH_TOLERANCE[dtype], f"adaptive_avg_pool2d {algorithm} {out}")


def test_nan_and_inf_propagate_as_in_torch():
    torch = _torch()
    F = torch.nn.functional
    x, = arrays(4, np.float32, (1, 2, 6, 6))
    x[0, 0, 2, 3], x[0, 1, 4, 1] = np.nan, np.inf
    tx = torch.tensor(x)
    want_y, want_idx = F.max_pool2d(tx, 2, return_indices=True)
    for algorithm, backend in fastconv.algorithms("max_pool2d"):
        got, idx = fastconv.max_pool2d(x, 2, return_indices=True, algorithm=algorithm, backend=backend)
        np.testing.assert_array_equal(got, want_y.numpy())
        np.testing.assert_array_equal(idx, want_idx.numpy())
    for algorithm, backend in fastconv.algorithms("avg_pool2d"):
        assert_close(fastconv.avg_pool2d(x, 3, 1, 1, algorithm=algorithm, backend=backend),
                     F.avg_pool2d(tx, 3, 1, 1).numpy(), 1e-6, "avg_pool2d with NaN and Inf")


@pytest.mark.parametrize("H,kernel,stride,padding", [
    (5, 2, 2, 1),   # ceil adds a window that would start in the right padding: dropped
    (6, 3, 2, 1),   # ceil adds a window that starts inside the input: kept
    (4, 3, 3, 0),   # the extra window holds one input column
    (1, 2, 2, 1),   # one pixel, all but one tap padding
    (7, 4, 3, 2),   # pad = kernel/2
])
def test_ceil_mode_edge_cases_match_torch(H, kernel, stride, padding):
    torch = _torch()
    F = torch.nn.functional
    x, = arrays(H, np.float64, (1, 2, H, H + 1))
    tx = torch.tensor(x)
    for ceil_mode in (False, True):
        y_t, i_t = F.max_pool2d(tx, kernel, stride, padding, ceil_mode=ceil_mode, return_indices=True)
        a_t = F.avg_pool2d(tx, kernel, stride, padding, ceil_mode=ceil_mode)
        a_t_nopad = F.avg_pool2d(tx, kernel, stride, padding, ceil_mode=ceil_mode,
                                 count_include_pad=False)
        for algorithm, backend in fastconv.algorithms("max_pool2d"):
            y, i = fastconv.max_pool2d(x, kernel, stride, padding, ceil_mode=ceil_mode,
                                       return_indices=True, algorithm=algorithm, backend=backend)
            np.testing.assert_array_equal(y, y_t.numpy())
            np.testing.assert_array_equal(i, i_t.numpy())
        for algorithm, backend in fastconv.algorithms("avg_pool2d"):
            for cip, want in ((True, a_t), (False, a_t_nopad)):
                assert_close(fastconv.avg_pool2d(x, kernel, stride, padding, ceil_mode=ceil_mode,
                                                 count_include_pad=cip, algorithm=algorithm,
                                                 backend=backend),
                             want.numpy(), 1e-12, f"avg_pool2d ceil_mode {cip}")
