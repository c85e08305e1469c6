"""Kernel-specific tests of the Numba direct convolution: the blocking edges (channel
counts that are not multiples of 16, pixel blocks past the row end, odd sizes), groups
and depthwise, strides with zero insertion, asymmetric padding, and the weight cache."""
import numpy as np
import pytest

import fastconv
from fastconv.kernels.numba import direct

from conftest import assert_close, on_one_thread, tolerance

OPS = ("conv2d", "conv2d_input", "conv2d_weight")


def _check(dtype, N, C, H, W, K, R, S, stride=1, padding=0, dilation=1, groups=1, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((K, C // groups, R, S)).astype(dtype)
    args = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    y = fastconv.conv2d(x, w, **args, algorithm="direct")
    y_ref = fastconv.conv2d(x, w, **args, algorithm="reference")
    tol = tolerance(dtype, "direct")
    assert y.dtype == dtype
    assert_close(y, y_ref, tol, "conv2d")
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = fastconv.conv2d_input(x.shape, w, dy, **args, algorithm="direct")
    assert_close(dx, fastconv.conv2d_input(x.shape, w, dy, **args, algorithm="reference"), tol,
                 "conv2d_input")
    dw = fastconv.conv2d_weight(x, w.shape, dy, **args, algorithm="direct")
    assert_close(dw, fastconv.conv2d_weight(x, w.shape, dy, **args, algorithm="reference"), tol,
                 "conv2d_weight")


# channel counts around the 16-blocks and the 4x4 weight-gradient tiles; first layers
@pytest.mark.parametrize("C,K", [(1, 8), (3, 16), (3, 33), (17, 1), (24, 40), (63, 65),
                                 (70, 60)])
def test_channel_blocking(C, K):
    _check(np.float32, 1, C, 7, 9, K, 3, 3, padding=1)


# row lengths around the 8/16-pixel blocks (overlapped last block, masked short rows)
@pytest.mark.parametrize("H,W", [(1, 1), (5, 7), (9, 15), (11, 17), (4, 33)])
def test_pixel_blocking(H, W):
    _check(np.float32, 2, 5, H, W, 18, 1, 3, padding=(0, 1))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_strides_dilation_asymmetric_padding(dtype):
    _check(dtype, 2, 6, 13, 12, 20, 3, 2, stride=(2, 3), padding=(2, 0), dilation=(1, 2))
    _check(dtype, 1, 5, 10, 11, 7, 4, 4, padding="same")           # pad_bottom = pad_top + 1
    _check(dtype, 1, 4, 9, 9, 19, 3, 3, stride=3, padding=4)        # padding > kernel
    _check(dtype, 2, 64, 8, 8, 64, 3, 3, padding=1)                # full blocks
    _check(dtype, 2, 7, 15, 14, 9, 4, 3, stride=(2, 3), padding=(1, 2))   # input-grad phases
    _check(dtype, 1, 3, 17, 17, 16, 7, 7, stride=2, padding=3)       # a conv1
    # stride-2 conversion: rows of >= 16 column pairs, odd/even padding, cropped columns
    for pad in (0, 1, 2):
        _check(dtype, 1, 2, 9, 41, 17, 3, 4, stride=2, padding=pad)
    _check(dtype, 1, 2, 9, 40, 17, 3, 1, stride=2, padding=0)        # last columns unread


def test_flat_pitch():
    """The flat kernel's rows share one zero column as right and left padding (3x3 pad 1:
    Q + 1 columns), and keep both where a read past the row end would meet data (the
    stride-2 phase planes of res3 3x3/2) or there is no left padding to land in."""
    assert direct._flat_pitch(28, 3, 1, 1, 1, 28) == 29
    assert direct._flat_pitch(28, 3, 2, 1, 1, 56) == 29
    assert direct._flat_pitch(28, 3, 1, 1, 0, 30) == 30
    assert direct._flat_pitch(5, 3, 1, 2, -1, 9) == 9
    _check(np.float32, 2, 5, 6, 28, 20, 3, 3, padding=1)
    _check(np.float32, 1, 4, 9, 11, 20, 3, 5, padding=(1, 2), dilation=(1, 2))


def test_stride2_kernels():
    """Stride 2 float32 runs the flat kernel on four phase planes when it wastes fewer
    lanes than the row kernel (Q = 14: 14 of 16 lanes against 14 of 15), else the row
    kernel (Q = 16 fills its lanes exactly)."""
    assert direct._flat_wins(np.dtype(np.float32), 2, 2, 1, 1, 14, 24, 1)
    assert not direct._flat_wins(np.dtype(np.float32), 2, 2, 1, 1, 16, 32, 1)
    _check(np.float32, 3, 5, 28, 28, 24, 3, 3, stride=2, padding=1)
    _check(np.float32, 2, 5, 31, 31, 24, 3, 3, stride=2, padding=2, dilation=2)
    # rows of one column (Wq = 1): a tap past the last row of phase plane (0, 0) read
    # the first column of plane (0, 1), input data, until the planes got a padding row
    _check(np.float32, 1, 2, 1, 1, 1, 1, 2, stride=2, padding=(0, 1), dilation=(1, 2))
    _check(np.float32, 2, 3, 5, 3, 20, 2, 2, stride=2, padding=(1, 1), dilation=(1, 2))
    _check(np.float32, 1, 4, 32, 32, 32, 3, 3, stride=2, padding=1)  # Q = 16: row kernel


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_groups_and_depthwise(dtype):
    _check(dtype, 2, 12, 9, 8, 20, 3, 3, padding=1, groups=4)
    _check(dtype, 2, 32, 9, 8, 32, 3, 3, padding=1, groups=32)       # depthwise
    _check(dtype, 1, 8, 11, 10, 16, 5, 3, stride=2, padding=(2, 1), groups=8)  # multiplier 2
    _check(dtype, 1, 6, 10, 9, 6, 2, 2, padding="same", dilation=2, groups=6)
    # rows of >= 16 columns (vector copies in and out of the tile), P not a multiple of 4
    _check(dtype, 2, 16, 29, 35, 16, 3, 3, padding=1, groups=16)
    _check(dtype, 1, 4, 33, 40, 8, 3, 5, stride=(2, 3), padding=(1, 2), groups=4)


def test_weight_cache_sees_in_place_changes():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 20, 8, 8)).astype(np.float32)
    w = rng.standard_normal((24, 20, 3, 3)).astype(np.float32)
    y1 = fastconv.conv2d(x, w, padding=1, algorithm="direct")
    np.testing.assert_array_equal(y1, fastconv.conv2d(x, w, padding=1, algorithm="direct"))
    w[3, 5, 1, 1] += 1.0                                  # an optimiser step, in place
    y2 = fastconv.conv2d(x, w, padding=1, algorithm="direct")
    assert_close(y2, fastconv.conv2d(x, w, padding=1, algorithm="reference"), 1e-5, "after update")
    w -= 0.5
    dy = np.ones_like(y2)
    dx = fastconv.conv2d_input(x.shape, w, dy, padding=1, algorithm="direct")
    assert_close(dx, fastconv.conv2d_input(x.shape, w, dy, padding=1, algorithm="reference"), 1e-5,
                 "grad input after update")
    # a new array at a recycled address with other contents
    del w
    w2 = rng.standard_normal((24, 20, 3, 3)).astype(np.float32)
    assert_close(fastconv.conv2d(x, w2, padding=1, algorithm="direct"),
                 fastconv.conv2d(x, w2, padding=1, algorithm="reference"), 1e-5, "new weight")
    assert len(direct._weights.entries) <= direct._weights.size


def test_threads_agree():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 16, 10, 10)).astype(np.float32)
    w = rng.standard_normal((32, 16, 3, 3)).astype(np.float32)
    y1 = on_one_thread(lambda: fastconv.conv2d(x, w, padding=1, algorithm="direct"))
    y2 = fastconv.conv2d(x, w, padding=1, algorithm="direct")
    np.testing.assert_array_equal(y1, y2)                 # deterministic across thread counts


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batch_slices(monkeypatch, dtype):
    """Forward batches converted and convolved a slice at a time (one image per slice);
    weight gradients with batch splits of 1 and 2 images (1 work item: splits of the
    5 images into 3 parts) and images added in turn into the blocked sums."""
    monkeypatch.setattr(direct, "_L2_IMAGES", 1)
    _check(dtype, 3, 5, 12, 13, 18, 3, 3, padding=1)
    _check(dtype, 3, 4, 15, 29, 24, 3, 3, stride=2, padding=1)
    _check(dtype, 5, 5, 12, 13, 16, 3, 3, padding=1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_weight_gradient_threads_agree(dtype):
    """The weight gradient adds the images and batch splits in a fixed order, whatever
    the thread count: the same bits on one thread as on all. Several work items
    (channel tails: 3 x 3 input x output blocks, written straight into the gradient),
    then one item and 5 images in 5 batch splits."""
    rng = np.random.default_rng(2)

    def grads(N, C, H, K, **kw):
        x = rng.standard_normal((N, C, H, H)).astype(dtype)
        w = (K, C, 3, 3)
        dy = rng.standard_normal(fastconv.conv2d(x, np.zeros(w, dtype), **kw).shape)
        dy = dy.astype(dtype)
        one = on_one_thread(lambda: fastconv.conv2d_weight(x, w, dy, **kw, algorithm="direct"))
        every = fastconv.conv2d_weight(x, w, dy, **kw, algorithm="direct")
        np.testing.assert_array_equal(one, every)

    grads(3, 40, 11, 40, stride=2, padding=1)
    grads(5, 5, 12, 16, padding=1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_transpose_block(dtype):
    """The register transpose of the layout conversions: an L x L block between offsets
    and row strides of two flat arrays, nothing else written."""
    import numba
    from fastconv.kernels.numba._transpose import lanes, transpose_block

    @numba.njit
    def run(src, so, ss, dst, do, ds):
        transpose_block(src, so, ss, dst, do, ds)

    L = lanes(np.dtype(dtype))
    src = np.arange(L * 40, dtype=dtype)
    dst = np.full(L * (L + 9) + 7, -1, dtype)
    run(src, 3, 40, dst, 7, L + 9)
    want = np.full_like(dst, -1)
    for j in range(L):                      # row j of dst: column j of the source block
        want[7 + j * (L + 9):7 + j * (L + 9) + L] = src[3 + j:3 + j + L * 40:40]
    assert np.array_equal(dst, want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_transpose_block_n(dtype):
    """The masked transpose (the lanes kernel's last columns of a row): only the first n
    elements of each destination row written."""
    import numba
    from fastconv.kernels.numba._transpose import lanes, transpose_block_n

    @numba.njit
    def run(src, so, ss, dst, do, ds, n):
        transpose_block_n(src, so, ss, dst, do, ds, n)

    L = lanes(np.dtype(dtype))
    src = np.arange(L * 40, dtype=dtype)
    for n in (1, L - 2, L):
        dst = np.full(L * (L + 9) + 7, -1, dtype)
        run(src, 3, 40, dst, 7, L + 9, n)
        want = np.full_like(dst, -1)
        for j in range(L):
            want[7 + j * (L + 9):7 + j * (L + 9) + n] = src[3 + j:3 + j + n * 40:40]
        assert np.array_equal(dst, want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_weight_gradient_layout_transposes(dtype):
    """Rows of at least one vector of columns and full 16-channel blocks take the block
    transposes in the weight gradient's conversions (the last block of a row
    overlapping the one before), with a channel tail, groups and stride 2 beside."""
    _check(dtype, 2, 40, 5, 37, 40, 3, 3, padding=1)
    _check(dtype, 1, 64, 6, 35, 64, 3, 3, padding=1, groups=2)
    _check(dtype, 2, 32, 7, 40, 48, 3, 3, stride=2, padding=1)


def test_lanes_kernel():
    """The lanes kernels (output channels in the vector lanes, pixels broadcast; float32,
    stride 1 and 2): 1 x 14 pixels on rows of 14 or more, 2 x 7 on shorter rows from 256
    inputs per output (last blocks of a row and of the rows overlapping); rows written by
    16 x 16 transposes, the last columns of a row masked, element by element for a
    channel tail. A channel tail (K = 40: 32 + 8), rows of 7-20 columns, 2-7 rows,
    groups, dilation, asymmetric padding, and conv1's shape (3 input channels, 7x7,
    stride 2)."""
    f32 = np.dtype(np.float32)
    assert direct._lanes_wins(f32, 2, 2, 1, 1, 28, 28, 1152)       # res3 3x3/2
    assert direct._lanes_wins(f32, 1, 1, 1, 1, 14, 14, 2304)       # res4 3x3
    assert direct._lanes_wins(f32, 1, 1, 1, 1, 7, 7, 4608)         # res5 3x3
    assert direct._lanes_wins(f32, 2, 2, 1, 1, 112, 112, 147)      # conv1
    assert direct._lanes_block(7, 7) == (2, 7, 32)
    assert direct._lanes_block(7, 14) == (1, 14, 32)
    assert not direct._lanes_wins(f32, 1, 1, 1, 1, 7, 7, 147)      # 2 x 7, short reductions
    assert not direct._lanes_wins(f32, 3, 3, 1, 1, 28, 28, 1152)   # stride 3
    assert not direct._lanes_wins(f32, 1, 1, 1, 1, 7, 6, 4608)     # rows under 7
    assert not direct._lanes_wins(f32, 1, 1, 1, 1, 1, 9, 4608)     # a single row of 9
    assert not direct._lanes_wins(np.dtype(np.float64), 1, 1, 1, 1, 28, 28, 1152)
    _check(np.float32, 2, 3, 40, 38, 40, 7, 7, stride=2, padding=3)       # Q = 19
    _check(np.float32, 1, 3, 35, 35, 64, 7, 7, stride=2, padding=(3, 2))  # Q = 17
    _check(np.float32, 2, 32, 5, 16, 40, 3, 3, padding=1)                 # Q = 16
    _check(np.float32, 1, 16, 6, 14, 32, 3, 3, padding=1)                 # Q = 14
    _check(np.float32, 1, 64, 4, 15, 64, 3, 3, padding=1, groups=2)       # Q = 15, Cg = 32
    _check(np.float32, 2, 32, 9, 29, 40, 3, 3, stride=2, padding=1)       # Q = 15
    _check(np.float32, 1, 36, 7, 32, 33, 3, 3, stride=2, padding=(2, 0), dilation=2)
    _check(np.float32, 1, 30, 6, 18, 32, 3, 3, padding=(0, 2))            # Q = 20
    _check(np.float32, 2, 40, 7, 7, 40, 3, 3, padding=1)                  # 2 x 7: res5-like
    _check(np.float32, 1, 64, 2, 11, 72, 3, 3, padding=1, groups=2)       # P = 2, Q = 11
    _check(np.float32, 1, 30, 12, 19, 33, 3, 3, stride=2, padding=(1, 2))  # 6 x 10, stride 2
    _check(np.float32, 1, 29, 9, 13, 36, 3, 3, padding=(0, 1), dilation=(1, 2))  # 7 x 9


def test_streamed_lanes_kernel(monkeypatch):
    """The 2 x 7 lanes kernel that lays out the weight per work item (``_s``), forced on
    small weights: input channels in chunks (70 = 64 + 6), a channel tail (K = 40),
    several images per item, groups, stride 2, dilation, asymmetric padding, and the
    input gradient (rotated weight, stride-2 phases); a weight changed in place is
    seen at once (no layout is kept). At res5's size it is the one auto runs."""
    assert direct._streams_weight(512 * 512 * 9 * 4)                # res5 3x3
    assert not direct._streams_weight(256 * 256 * 9 * 4)
    monkeypatch.setattr(direct, "STREAM_MIN_WEIGHT", 0)
    _check(np.float32, 3, 70, 7, 7, 40, 3, 3, padding=1)                  # chunks, K tail
    _check(np.float32, 1, 140, 9, 10, 72, 3, 3, padding=(0, 1), groups=2)  # Cg = 70
    _check(np.float32, 2, 40, 15, 17, 33, 3, 3, stride=2, padding=1)      # 8 x 9, stride 2
    _check(np.float32, 1, 36, 11, 13, 64, 3, 3, padding=(1, 2), dilation=2)
    _check(np.float32, 1, 30, 8, 12, 32, 5, 5, padding=2)                 # 5 x 5, Q = 12
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 64, 7, 7)).astype(np.float32)
    w = rng.standard_normal((64, 64, 3, 3)).astype(np.float32)
    fastconv.conv2d(x, w, padding=1, algorithm="direct")
    w *= -0.5
    assert_close(fastconv.conv2d(x, w, padding=1, algorithm="direct"),
                 fastconv.conv2d(x, w, padding=1, algorithm="reference"),
                 tolerance(np.float32, "direct"), "after an in-place change")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_blocked_weight_layout(dtype):
    """The blocked weight layouts (block transposes where a block of output channels is
    whole, element by element at the tails) against their definition, for the forward and
    the rotated input-gradient weight: channel tails, groups, 1x1 to 7x7 filters."""
    rng = np.random.default_rng(5)
    for K, Cg, R, S, G, KB in [(40, 20, 3, 3, 1, 32), (24, 10, 3, 3, 2, 12), (70, 33, 5, 5, 1, 16),
                               (16, 3, 7, 7, 1, 16), (64, 2, 1, 1, 4, 16), (33, 17, 2, 3, 1, 32)]:
        w = rng.standard_normal((K, Cg, R, S)).astype(dtype)
        for flip in (False, True):
            Kgf, Cgf = (Cg, K // G) if flip else (K // G, Cg)    # the forward's counts
            Kb = -(-Kgf // KB)
            wb = np.full(G * Kb * Cgf * R * S * KB, np.nan, dtype)
            direct._w_blocked(w.reshape(-1), wb, G, Kgf, Kb, Cgf, R, S, flip, KB)
            want = np.zeros((G, Kb * KB, Cgf, R, S), dtype)
            for g in range(G):
                if flip:                  # w[g*Cgf + c, k, R-1-r, S-1-s]
                    want[g, :Kgf] = w[g * Cgf:(g + 1) * Cgf, :, ::-1, ::-1].transpose(1, 0, 2, 3)
                else:
                    want[g, :Kgf] = w[g * Kgf:(g + 1) * Kgf]
            want = want.reshape(G, Kb, KB, Cgf, R, S).transpose(0, 1, 3, 4, 5, 2)
            np.testing.assert_array_equal(wb, want.reshape(-1), err_msg=f"{K, Cg, R, S, G, KB, flip}")


# -- The pointwise forward (float32 1x1, stride 1, no padding): a GEMM on the batch's pixels


def _pointwise(N, C, H, W, K, groups=1, seed=0):
    """The pointwise path's forward against the reference, on all threads and on one
    (the same bits: each output is summed in one order whatever the work items)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = rng.standard_normal((K, C // groups, 1, 1)).astype(np.float32)
    p = fastconv._geometry.conv_params("t", x.shape, w.shape, groups=groups)
    assert p.pointwise
    y = fastconv.conv2d(x, w, groups=groups, algorithm="direct")
    want = fastconv.conv2d(x.astype(np.float64), w.astype(np.float64), groups=groups,
                           algorithm="reference")
    assert y.dtype == np.float32
    assert_close(y, want, tolerance(np.float32, "direct"), f"pointwise {x.shape} {w.shape}")
    one = on_one_thread(lambda: fastconv.conv2d(x, w, groups=groups, algorithm="direct"))
    np.testing.assert_array_equal(one, y)


# input channels around the 6 x 64 GEMM's and the transposes' 16; output channels around
# the 64-channel weight blocks and their 16-channel stores (tails stored element-wise);
# 3 x 5 planes: fewer pixels than a 16-pixel transpose, rows not a multiple of 6
@pytest.mark.parametrize("C", list(range(1, 41)) + list(range(60, 71)))
def test_pointwise_channels(C):
    _pointwise(1, C, 3, 5, [1, 16, 63, 64, 65, 100, 128, 130][C % 8], seed=C)


# pixel counts: one pixel; odd planes; images split across the row chunks of the work
# items and their 6-row blocks (N*H*W not a multiple of 6, chunks crossing images)
@pytest.mark.parametrize("N,H,W", [(1, 1, 1), (1, 7, 7), (3, 5, 7), (2, 17, 19), (8, 7, 7),
                                   (5, 13, 11), (1, 31, 33)])
def test_pointwise_pixels(N, H, W):
    _pointwise(N, 24, H, W, 80)


def test_pointwise_groups():
    _pointwise(2, 12, 5, 5, 9, groups=3)
    _pointwise(3, 128, 7, 5, 130, groups=2)                     # 65 outputs per group
    _pointwise(1, 66, 4, 9, 6, groups=6)                         # 11 inputs, 1 output each


def test_pointwise_weight_changed_in_place():
    """The cached weight layout is compared with the weight while the product runs; after
    an in-place edit that run is repeated with a fresh layout."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 70, 5, 7)).astype(np.float32)
    w = rng.standard_normal((90, 70, 1, 1)).astype(np.float32)
    for edit in (lambda: w.__imul__(-0.5), lambda: w.__setitem__((89, 69, 0, 0), 7.0)):
        fastconv.conv2d(x, w, algorithm="direct")
        edit()
        assert_close(fastconv.conv2d(x, w, algorithm="direct"),
                     fastconv.conv2d(x, w, algorithm="reference"), 1e-5, "after an edit")
