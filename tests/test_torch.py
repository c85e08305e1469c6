"""fastconv against PyTorch's CPU functions, for every registered algorithm, on 300
random valid geometries per op in float32 and float64 (skipped without PyTorch)."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastconv
from fastconv import _dispatch, _plan

from conftest import (DTYPES, LIMITS, TORCH_TOLERANCE, arrays, assert_close, conv_args, conv_cases,
                      conv_outputs, pool_cases, torch_or_skip)

torch = torch_or_skip()
F = torch.nn.functional
torch.set_num_threads(2)

EXAMPLES = settings(max_examples=300)


def _t(a, grad=False):
    return torch.tensor(a, requires_grad=grad)


def _np(t):
    return t.detach().numpy()


def _conv_pairs(p):
    """(algorithm, backend) pairs registered for any conv op that handle geometry p."""
    return sorted({(a, b) for op in ("conv2d", "conv2d_input", "conv2d_weight")
                   for a, b in fastconv.algorithms(op) if _plan.supports(a, p)})


def _torch_conv(case, x, w, b, dy):
    """PyTorch's output, grad-input, grad-weight and grad-bias."""
    tx, tw, tb = _t(x, True), _t(w, True), _t(b, True)
    y = F.conv2d(tx, tw, tb, **conv_args(case))
    y.backward(_t(dy))
    return _np(y), _np(tx.grad), _np(tw.grad), _np(tb.grad)


@EXAMPLES
@given(case=conv_cases())
def test_conv2d_and_gradients_match_torch(case):
    p = case["params"]
    for dtype in DTYPES:
        x, w, b, dy = arrays(p.N + 31 * p.C, dtype, p.input_shape, p.weight_shape, (p.K,),
                             p.output_shape)
        y_t, dx_t, dw_t, db_t = _torch_conv(case, x, w, b, dy)
        tol = TORCH_TOLERANCE[dtype]
        for algorithm, backend in _conv_pairs(p):
            got = conv_outputs(case, x, w, dy, algorithm, backend)
            what = f"{algorithm}/{backend} {dtype.__name__} {p}"
            if got["conv2d"] is not None:
                y = fastconv.conv2d(x, w, b, **conv_args(case), algorithm=algorithm, backend=backend)
                assert_close(y, y_t, tol, f"conv2d {what}")
                assert_close(got["conv2d"], y_t - b.reshape(1, -1, 1, 1), 10 * tol,
                             f"conv2d without bias {what}")
            if got["conv2d_input"] is not None:
                assert_close(got["conv2d_input"], dx_t, tol, f"conv2d_input {what}")
            if got["conv2d_weight"] is not None:
                assert_close(got["conv2d_weight"], dw_t, tol, f"conv2d_weight {what}")
        # the reference's bias gradient
        assert_close(fastconv.reference.conv2d_bias(dy), db_t, tol, "conv2d_bias")


@pytest.mark.parametrize("algorithm", sorted(LIMITS))
@EXAMPLES
@given(data=st.data())
def test_limited_algorithms_match_torch(algorithm, data):
    """Algorithms limited to some geometries (Winograd) get 300 cases of their own."""
    pairs = [(a, b) for a, b in fastconv.algorithms("conv2d") if a == algorithm]
    if not pairs:
        pytest.skip(f"{algorithm} is not registered")
    case = data.draw(conv_cases(algorithm))
    p = case["params"]
    for dtype in DTYPES:
        x, w, b, dy = arrays(p.N + p.C, dtype, p.input_shape, p.weight_shape, (p.K,),
                             p.output_shape)
        y_t, dx_t, dw_t, _ = _torch_conv(case, x, w, b, dy)
        tol = TORCH_TOLERANCE[dtype]
        for _, backend in pairs:
            got = conv_outputs(case, x, w, dy, algorithm, backend)
            for op, want in (("conv2d", y_t - b.reshape(1, -1, 1, 1)), ("conv2d_input", dx_t),
                             ("conv2d_weight", dw_t)):
                if got[op] is not None:
                    assert_close(got[op], want, 10 * tol if op == "conv2d" else tol,
                                 f"{op} {algorithm} {dtype.__name__} {p}")


@st.composite
def transpose_cases(draw):
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    C_in = groups * draw(st.integers(1, 6))
    C_out = groups * draw(st.integers(1, 6))
    R, S = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    output_padding = tuple(draw(st.integers(0, max(s, d) - 1)) for s, d in zip(stride, dilation))
    H, W = draw(st.integers(1, 10)), draw(st.integers(1, 10))
    # padding small enough that the output is not empty
    padding = tuple(draw(st.integers(0, max(0, min(2, ((n - 1) * s + d * (k - 1) + op) // 2))))
                    for n, s, d, k, op in zip((H, W), stride, dilation, (R, S), output_padding))
    return dict(N=draw(st.integers(1, 3)), C_in=C_in, C_out=C_out, H=H, W=W, R=R, S=S,
                stride=stride, padding=padding, output_padding=output_padding,
                dilation=dilation, groups=groups)


@EXAMPLES
@given(c=transpose_cases())
def test_conv_transpose2d_matches_torch(c):
    args = dict(stride=c["stride"], padding=c["padding"], output_padding=c["output_padding"],
                groups=c["groups"], dilation=c["dilation"])
    for dtype in DTYPES:
        x, w, b = arrays(c["H"] * c["W"], dtype, (c["N"], c["C_in"], c["H"], c["W"]),
                         (c["C_in"], c["C_out"] // c["groups"], c["R"], c["S"]), (c["C_out"],))
        want = _np(F.conv_transpose2d(_t(x), _t(w), _t(b), **args))
        for algorithm, backend in fastconv.algorithms("conv2d_input"):
            p = fastconv._geometry.conv_params("t", want.shape, w.shape, c["stride"],
                                               c["padding"], c["dilation"], c["groups"])
            if _plan.supports(algorithm, p):
                got = fastconv.conv_transpose2d(x, w, b, **args, algorithm=algorithm, backend=backend)
                assert_close(got, want, TORCH_TOLERANCE[dtype],
                             f"conv_transpose2d {algorithm} {dtype.__name__} {c}")


@EXAMPLES
@given(case=pool_cases(max_pool=True))
def test_max_pool2d_and_backward_match_torch(case):
    args = {k: case[k] for k in ("kernel_size", "stride", "padding", "dilation", "ceil_mode")}
    args["stride"] = args["stride"] or None
    for dtype in DTYPES:
        x, = arrays(case["H"] * 7 + case["W"], dtype, (case["N"], case["C"], case["H"], case["W"]))
        tx = _t(x, True)
        y_t, idx_t = F.max_pool2d(tx, **args, return_indices=True)
        dy, = arrays(1, dtype, tuple(y_t.shape))
        (dx_t,) = torch.autograd.grad(y_t, tx, _t(dy))
        for algorithm, backend in fastconv.algorithms("max_pool2d"):
            y, idx = fastconv.max_pool2d(x, **args, return_indices=True, algorithm=algorithm,
                                         backend=backend)
            np.testing.assert_array_equal(y, _np(y_t))
            np.testing.assert_array_equal(idx, idx_t.numpy())
        for algorithm, backend in fastconv.algorithms("max_pool2d_backward"):
            dx = fastconv.max_pool2d_backward(dy, idx, x.shape, algorithm=algorithm, backend=backend)
            assert_close(dx, _np(dx_t), TORCH_TOLERANCE[dtype], f"max_pool2d_backward {algorithm}")


@EXAMPLES
@given(case=pool_cases(max_pool=False), count_include_pad=st.booleans(),
       divisor_override=st.sampled_from([None, 1, 2, 5]))
def test_avg_pool2d_and_backward_match_torch(case, count_include_pad, divisor_override):
    args = dict(kernel_size=case["kernel_size"], stride=case["stride"] or None,
                padding=case["padding"], ceil_mode=case["ceil_mode"],
                count_include_pad=count_include_pad, divisor_override=divisor_override)
    for dtype in DTYPES:
        x, = arrays(case["H"] + case["W"], dtype, (case["N"], case["C"], case["H"], case["W"]))
        tx = _t(x, True)
        y_t = F.avg_pool2d(tx, **args)
        dy, = arrays(2, dtype, tuple(y_t.shape))
        (dx_t,) = torch.autograd.grad(y_t, tx, _t(dy))
        tol = TORCH_TOLERANCE[dtype]
        for algorithm, backend in fastconv.algorithms("avg_pool2d"):
            assert_close(fastconv.avg_pool2d(x, **args, algorithm=algorithm, backend=backend),
                         _np(y_t), tol, f"avg_pool2d {algorithm}")
        for algorithm, backend in fastconv.algorithms("avg_pool2d_backward"):
            dx = fastconv.avg_pool2d_backward(dy, x.shape, **args, algorithm=algorithm,
                                              backend=backend)
            assert_close(dx, _np(dx_t), tol, f"avg_pool2d_backward {algorithm}")


@EXAMPLES
@given(H=st.integers(1, 24), W=st.integers(1, 24),
       out=st.tuples(st.one_of(st.none(), st.integers(1, 12)), st.one_of(st.none(), st.integers(1, 12))))
def test_adaptive_avg_pool2d_matches_torch(H, W, out):
    for dtype in DTYPES:
        x, = arrays(H * W, dtype, (2, 3, H, W))
        want = _np(F.adaptive_avg_pool2d(_t(x), out))
        for algorithm, backend in fastconv.algorithms("adaptive_avg_pool2d"):
            assert_close(fastconv.adaptive_avg_pool2d(x, out, algorithm=algorithm, backend=backend),
                         want, TORCH_TOLERANCE[dtype], f"adaptive_avg_pool2d {algorithm} {out}")


def test_padding_same_with_even_kernel_matches_torch():
    """'same' with an even dilated kernel pads one more at the bottom/right."""
    x, w = arrays(0, np.float64, (2, 3, 7, 8), (4, 3, 4, 2))
    p = fastconv._geometry.conv_params("t", x.shape, w.shape, 1, "same", (1, 3))
    assert (p.pad_top, p.pad_bottom, p.pad_left, p.pad_right) == (1, 2, 1, 2)
    for algorithm, backend in fastconv.algorithms("conv2d"):
        if not _plan.supports(algorithm, p):
            continue
        assert_close(fastconv.conv2d(x, w, padding="same", dilation=(1, 3), algorithm=algorithm,
                                     backend=backend),
                     _np(F.conv2d(_t(x), _t(w), padding="same", dilation=(1, 3))), 1e-12, "same")


def test_nan_and_inf_propagate_as_in_torch():
    x, w = arrays(4, np.float32, (1, 2, 6, 6), (3, 2, 3, 3))
    x[0, 0, 2, 3], x[0, 1, 4, 1] = np.nan, np.inf
    want = _np(F.conv2d(_t(x), _t(w), padding=1))
    for algorithm, backend in fastconv.algorithms("conv2d"):
        got = fastconv.conv2d(x, w, padding=1, algorithm=algorithm, backend=backend)
        if algorithm.startswith("winograd"):
            # the transforms mix a whole tile: a NaN or Inf input makes every output of
            # its tiles NaN (a superset of PyTorch's non-finite outputs), never finite
            assert not np.isfinite(got[~np.isfinite(want)]).any()
            continue
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
    for algorithm, backend in fastconv.algorithms("max_pool2d"):
        got, idx = fastconv.max_pool2d(x, 2, return_indices=True, algorithm=algorithm, backend=backend)
        want_y, want_idx = F.max_pool2d(_t(x), 2, return_indices=True)
        np.testing.assert_array_equal(got, _np(want_y))
        np.testing.assert_array_equal(idx, want_idx.numpy())
    for algorithm, backend in fastconv.algorithms("avg_pool2d"):
        assert_close(fastconv.avg_pool2d(x, 3, 1, 1, algorithm=algorithm, backend=backend),
                     _np(F.avg_pool2d(_t(x), 3, 1, 1)), 1e-6, "avg_pool2d with NaN and Inf")


@pytest.mark.parametrize("H,kernel,stride,padding", [
    (5, 2, 2, 1),   # ceil adds a window that would start in the right padding: dropped
    (6, 3, 2, 1),   # ceil adds a window that starts inside the input: kept
    (4, 3, 3, 0),   # the extra window holds one input column
    (1, 2, 2, 1),   # one pixel, all but one tap padding
    (7, 4, 3, 2),   # pad = kernel/2
])
def test_ceil_mode_edge_cases_match_torch(H, kernel, stride, padding):
    x, = arrays(H, np.float64, (1, 2, H, H + 1))
    tx = _t(x)
    for ceil_mode in (False, True):
        y_t, i_t = F.max_pool2d(tx, kernel, stride, padding, ceil_mode=ceil_mode, return_indices=True)
        a_t = F.avg_pool2d(tx, kernel, stride, padding, ceil_mode=ceil_mode)
        a_t_nopad = F.avg_pool2d(tx, kernel, stride, padding, ceil_mode=ceil_mode,
                                 count_include_pad=False)
        for algorithm, backend in fastconv.algorithms("max_pool2d"):
            y, i = fastconv.max_pool2d(x, kernel, stride, padding, ceil_mode=ceil_mode,
                                       return_indices=True, algorithm=algorithm, backend=backend)
            np.testing.assert_array_equal(y, _np(y_t))
            np.testing.assert_array_equal(i, i_t.numpy())
        for algorithm, backend in fastconv.algorithms("avg_pool2d"):
            for cip, want in ((True, a_t), (False, a_t_nopad)):
                assert_close(fastconv.avg_pool2d(x, kernel, stride, padding, ceil_mode=ceil_mode,
                                                 count_include_pad=cip, algorithm=algorithm,
                                                 backend=backend),
                             _np(want), 1e-12, f"avg_pool2d ceil_mode {cip}")
