"""The reference's convolutions checked by hand-computed cases and by central finite
differences (its pooling: test_pool.py)."""
import numpy as np
import pytest

import fastconv
from fastconv import reference
from fastconv._geometry import conv_params

from conftest import arrays, numerical_grad


def test_vertical_sobel_over_a_4x4_image():
    # image with a vertical edge: two dark columns, two bright columns
    x = np.array([[0, 0, 10, 10]] * 4, np.float64).reshape(1, 1, 4, 4)
    sobel = np.array([[1, 0, -1], [2, 0, -2], [1, 0, -1]], np.float64).reshape(1, 1, 3, 3)
    # each 3x3 window sees columns (0, 0, 10) or (0, 10, 10): sum(row weights)*(-10) = -40
    want = np.full((1, 1, 2, 2), -40.0)
    p = conv_params("t", x.shape, sobel.shape)
    out = np.empty(p.output_shape)
    reference.conv2d(x, sobel, p, out)
    np.testing.assert_array_equal(out, want)
    np.testing.assert_array_equal(fastconv.conv2d(x, sobel), want)


def test_sobel_with_padding_one():
    x = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)
    sobel = np.array([[1, 0, -1], [2, 0, -2], [1, 0, -1]], np.float64).reshape(1, 1, 3, 3)
    # top-left output: window rows -1..1, cols -1..1 -> only x[0:2, 0:2] = [[0,1],[4,5]]
    # weights there: [[0,-2],[0,-1]] -> 1*(-2) + 5*(-1) = -7
    out = fastconv.conv2d(x, sobel, padding=1, algorithm="reference")
    assert out[0, 0, 0, 0] == -7.0
    assert out.shape == (1, 1, 4, 4)


@pytest.mark.parametrize("geometry", [
    dict(stride=1, padding=0, dilation=1, groups=1),
    dict(stride=2, padding=1, dilation=1, groups=2),
    dict(stride=1, padding="same", dilation=(2, 1), groups=1),
    dict(stride=(2, 3), padding=(2, 0), dilation=(1, 2), groups=1),
])
def test_conv_gradients_by_finite_differences(geometry):
    x, w, g = arrays(3, np.float64, (2, 4, 7, 6), (4, 4 // geometry["groups"], 3, 2), (1,))
    p = conv_params("t", x.shape, w.shape, **geometry)
    (dy,) = arrays(4, np.float64, p.output_shape)
    out = np.empty(p.output_shape)

    def loss():  # <dy, conv(x, w)>: its gradients are conv2d_input and conv2d_weight
        reference.conv2d(x, w, p, out)
        return float((out * dy).sum())

    dx = np.empty(x.shape)
    reference.conv2d_input(dy, w, p, dx)
    dw = np.empty(w.shape)
    reference.conv2d_weight(x, dy, p, dw)
    np.testing.assert_allclose(dx, numerical_grad(loss, x), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(dw, numerical_grad(loss, w), rtol=1e-6, atol=1e-7)
    # bias: d<dy, y + b>/db_k = sum of dy over n, p, q
    np.testing.assert_allclose(reference.conv2d_bias(dy), dy.sum(axis=(0, 2, 3)))
