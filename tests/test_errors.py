"""Bad input gets a ValueError or TypeError whose message names what was wrong."""
import numpy as np
import pytest

import fastconv
from fastconv import _plan

x4 = np.zeros((2, 4, 8, 8), np.float32)
w4 = np.zeros((6, 4, 3, 3), np.float32)

CASES = [
    # (call, exception, words the message must contain)
    (lambda: fastconv.conv2d(np.zeros((8, 8), np.float32), w4), ValueError, ["(8, 8)", "(N, C, H, W)"]),
    (lambda: fastconv.conv2d(x4, np.zeros((6, 4, 3), np.float32)), ValueError, ["(6, 4, 3)"]),
    (lambda: fastconv.conv2d(x4, np.zeros((6, 3, 3, 3), np.float32)), ValueError,
     ["(6, 3, 3, 3)", "(2, 4, 8, 8)", "3 channels"]),
    (lambda: fastconv.conv2d(x4, np.zeros((8, 2, 3, 3), np.float32), groups=4), ValueError,
     ["groups=4", "8 channels", "(2, 4, 8, 8)"]),
    (lambda: fastconv.conv2d(x4, np.zeros((6, 1, 3, 3), np.float32), groups=4), ValueError,
     ["K=6", "groups=4"]),
    (lambda: fastconv.conv2d(x4, w4, stride=0), ValueError, ["stride", "0"]),
    (lambda: fastconv.conv2d(x4, w4, stride=(1, -2)), ValueError, ["stride", "-2"]),
    (lambda: fastconv.conv2d(x4, w4, dilation=0), ValueError, ["dilation"]),
    (lambda: fastconv.conv2d(x4, w4, padding=-1), ValueError, ["padding", "-1"]),
    (lambda: fastconv.conv2d(x4, w4, padding="full"), ValueError, ["'full'", "same", "valid"]),
    (lambda: fastconv.conv2d(x4, w4, stride=2, padding="same"), ValueError, ["same", "stride"]),
    (lambda: fastconv.conv2d(x4, np.zeros((6, 4, 9, 9), np.float32)), ValueError,
     ["(2, 4, 8, 8)", "(6, 4, 9, 9)", "empty"]),
    (lambda: fastconv.conv2d(x4, w4.astype(np.float64)), TypeError, ["float32", "float64", "astype"]),
    (lambda: fastconv.conv2d(x4.astype(np.int32), w4.astype(np.int32)), TypeError,
     ["int32", "astype(numpy.float32)"]),
    (lambda: fastconv.conv2d(x4.astype(np.float16), w4.astype(np.float16)), TypeError, ["float16"]),
    (lambda: fastconv.conv2d(x4, w4, bias=np.zeros(5, np.float32)), ValueError, ["(5,)", "K=6"]),
    (lambda: fastconv.conv2d(x4, w4, bias=np.zeros(6)), TypeError, ["bias", "float64"]),
    (lambda: fastconv.conv2d(x4, w4, stride=1.5), TypeError, ["stride", "1.5"]),
    (lambda: fastconv.conv2d(x4, w4, algorithm="fft"), ValueError, ["'fft'", "im2col", "reference"]),
    (lambda: fastconv.conv2d(x4, w4, backend="cuda"), ValueError, ["'cuda'", "numba"]),
    (lambda: fastconv.conv2d_input((2, 4, 8, 8), w4, np.zeros((2, 6, 5, 5), np.float32)), ValueError,
     ["(2, 6, 5, 5)", "(2, 6, 6, 6)"]),
    (lambda: fastconv.conv2d_weight(x4, (6, 4, 3, 3), np.zeros((2, 6, 6, 7), np.float32)), ValueError,
     ["(2, 6, 6, 7)"]),
    (lambda: fastconv.conv2d_input((2, 4, 8), w4, np.zeros((2, 6, 6, 6), np.float32)), ValueError,
     ["input_size", "(2, 4, 8)"]),
    (lambda: fastconv.conv_transpose2d(x4, np.zeros((3, 2, 3, 3), np.float32)), ValueError,
     ["(3, 2, 3, 3)", "(2, 4, 8, 8)"]),
    (lambda: fastconv.conv_transpose2d(x4, np.zeros((4, 2, 3, 3), np.float32), stride=2,
                                       output_padding=2), ValueError, ["output_padding", "stride"]),
    (lambda: fastconv.max_pool2d(x4, 2, padding=2), ValueError, ["half", "kernel_size=(2, 2)"]),
    (lambda: fastconv.max_pool2d(x4, 0), ValueError, ["kernel_size"]),
    (lambda: fastconv.max_pool2d(x4, 3, stride=0), ValueError, ["stride"]),
    (lambda: fastconv.max_pool2d(x4, 9), ValueError, ["empty", "(2, 4, 8, 8)"]),
    (lambda: fastconv.max_pool2d(np.zeros((1, 1, 1, 1), np.float32), (1, 2), None, (0, 1), (1, 2)),
     ValueError, ["only padding"]),
    (lambda: fastconv.max_pool2d(x4.astype(np.int64), 2), TypeError, ["int64"]),
    (lambda: fastconv.avg_pool2d(x4, 3, padding=2), ValueError, ["half"]),
    (lambda: fastconv.avg_pool2d(x4, 2, divisor_override=0), ValueError, ["divisor_override"]),
    (lambda: fastconv.avg_pool2d(x4, 2, divisor_override=-2**63), ValueError,
     ["divisor_override", "-2**63"]),
    (lambda: fastconv.avg_pool2d_backward(np.zeros((2, 4, 4, 4), np.float32), x4.shape, 2,
                                          divisor_override=-2**63), ValueError,
     ["divisor_override"]),
    (lambda: fastconv.avg_pool2d_backward(np.zeros((2, 4, 3, 3), np.float32), x4.shape, 2),
     ValueError, ["(2, 4, 3, 3)", "(2, 4, 4, 4)"]),
    (lambda: fastconv.max_pool2d_backward(np.zeros((2, 4, 4, 4), np.float32),
                                          np.full((2, 4, 4, 4), 64), x4.shape),
     ValueError, ["[0, 64)", "64"]),
    (lambda: fastconv.max_pool2d_backward(np.zeros((2, 4, 4, 4), np.float32),
                                          np.full((2, 4, 4, 4), -1), x4.shape),
     ValueError, ["-1"]),
    (lambda: fastconv.max_pool2d_backward(np.zeros((2, 4, 4, 4), np.float32),
                                          np.zeros((2, 4, 4, 4), np.float32), x4.shape),
     TypeError, ["indices", "float32"]),
    (lambda: fastconv.max_pool2d_backward(np.zeros((2, 4, 4, 4), np.float32),
                                          np.zeros((2, 4, 4, 3), np.int64), x4.shape),
     ValueError, ["(2, 4, 4, 3)"]),
    (lambda: fastconv.adaptive_avg_pool2d(x4, (-1, 2)), ValueError, ["output_size", "-1"]),
    (lambda: fastconv.algorithms("conv3d"), ValueError, ["conv3d", "conv2d"]),
    (lambda: fastconv.set_num_threads(0), ValueError, ["n"]),
    (lambda: fastconv.set_num_threads(10_000), ValueError, ["NUMBA_NUM_THREADS"]),
    (lambda: fastconv.set_workspace_limit(-1), ValueError, ["workspace"]),
]


@pytest.mark.parametrize("call,exc,words", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_bad_input_gets_a_clear_error(call, exc, words):
    with pytest.raises(exc) as info:
        call()
    for word in words:
        assert word in str(info.value), f"{word!r} not in message: {info.value}"


LIMITED = [(a, b) for a, b in fastconv.algorithms("conv2d") if a in _plan.SUPPORTS]


@pytest.mark.parametrize("algorithm,backend", LIMITED)
def test_forcing_an_algorithm_on_a_geometry_it_cannot_handle(algorithm, backend):
    x, w = np.zeros((1, 2, 9, 9), np.float32), np.zeros((2, 2, 5, 5), np.float32)
    dy = np.zeros((1, 2, 3, 3), np.float32)
    for call in (lambda: fastconv.conv2d(x, w, stride=2, algorithm=algorithm, backend=backend),
                 lambda: fastconv.conv2d_input(x.shape, w, dy, stride=2, algorithm=algorithm,
                                               backend=backend),
                 lambda: fastconv.conv2d_weight(x, w.shape, dy, stride=2, algorithm=algorithm,
                                                backend=backend)):
        with pytest.raises(ValueError, match=algorithm):
            call()
