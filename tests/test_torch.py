"""fastconv's convolutions against PyTorch's CPU functions, for every registered
algorithm, on 300 random valid geometries per op in float32 and float64 (skipped
without PyTorch). Pooling against PyTorch: test_pool.py."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastconv
from fastconv import _plan

from conftest import (DTYPES, LIMITS, TORCH_TOLERANCE, arrays, assert_close, conv_args, conv_cases,
                      conv_outputs, torch_or_skip)

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
