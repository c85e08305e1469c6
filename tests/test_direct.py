"""Kernel-specific tests of the Numba direct convolution: the blocking edges (channel
counts that are not multiples of 16, pixel blocks past the row end, odd sizes), groups
and depthwise, strides with zero insertion, asymmetric padding, and the weight cache.

Each forward core (lanes, lanes_streamed, flat, row), the pointwise GEMM, the depthwise
kernels, the input gradient's residue classes (phases) and the weight gradient's batch
splits: a test that means one of them checks the plan that ran names it (or forces the
core on the plan, as autotune does)."""
import numpy as np
import pytest

import fastconv
from fastconv import _dispatch, _plan
from fastconv._geometry import conv_params
from fastconv.kernels import layouts
from fastconv.kernels.numba import direct

from conftest import arrays, assert_close, kernel_pairs, on_one_thread, ran_plan, tolerance, tuned

OPS = ("conv2d", "conv2d_input", "conv2d_weight")

#: the lanes blocks (rows, pixels per row, output channels) of the table the tests plan
#: with (tests/conftest.py; geometries below follow it, so they hold under either):
#: the one-row block on rows that hold it, the two-row block on shorter rows (16 vector
#: registers: 1 x 4 x 24 and 2 x 2 x 24; 32: 1 x 14 x 32 and 2 x 7 x 32)
ONE_ROW, TWO_ROWS = layouts.LANES_BLOCKS
#: the longest rows the one-row block does not fit (the two-row block does): 3 (16
#: registers), 13 (32)
SHORT = ONE_ROW[1] - 1


def _want(name, value):
    """ran_plan's expectation for a variant (a 'blocked' weight gradient with an int:
    its batch splits; a tuple for phases: their cores)."""
    if isinstance(value, int):
        return dict(variant="blocked", batch_splits=value)
    if isinstance(value, tuple):
        return dict(variant="phases", cores=value)
    return {} if value is None else dict(variant=value)


def _check(dtype, N, C, H, W, K, R, S, stride=1, padding=0, dilation=1, groups=1, seed=0,
           fwd=None, inp=None, wgt=None, block=None, backend="numba"):
    """Forward, grad-input and grad-weight by direct on ``backend`` against the
    reference; ``fwd``, ``inp``, ``wgt``: the variant each must have run (see
    ``_want``), when given; ``block``: the register block the forward's plan names (a
    lanes core's), when given."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((K, C // groups, R, S)).astype(dtype)
    args = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    y, _ = ran_plan(lambda: fastconv.conv2d(x, w, **args, algorithm="direct", backend=backend),
                    op="conv2d", algorithm="direct", **_want("conv2d", fwd),
                    **({} if block is None else dict(block=block)))
    y_ref = fastconv.conv2d(x, w, **args, algorithm="reference")
    tol = tolerance(dtype, "direct")
    assert y.dtype == dtype
    assert_close(y, y_ref, tol, "conv2d")
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx, _ = ran_plan(lambda: fastconv.conv2d_input(x.shape, w, dy, **args, algorithm="direct", backend=backend),
                     op="conv2d_input", algorithm="direct", **_want("conv2d_input", inp))
    assert_close(dx, fastconv.conv2d_input(x.shape, w, dy, **args, algorithm="reference"), tol,
                 "conv2d_input")
    dw, _ = ran_plan(lambda: fastconv.conv2d_weight(x, w.shape, dy, **args, algorithm="direct", backend=backend),
                     op="conv2d_weight", algorithm="direct", **_want("conv2d_weight", wgt))
    assert_close(dw, fastconv.conv2d_weight(x, w.shape, dy, **args, algorithm="reference"), tol,
                 "conv2d_weight")


def _forced(core, N, C, H, W, K, R, S, stride=1, padding=0, dilation=1, groups=1, seed=0,
            backend="numba"):
    """The float32 forward by direct on ``backend`` with its core forced to ``core`` (as
    autotune forces it), against the reference."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = rng.standard_normal((K, C // groups, R, S)).astype(np.float32)
    p = conv_params("t", x.shape, w.shape, stride, padding, dilation, groups)
    plan = _plan._forced(_plan.make("conv2d", p, np.float32, "direct", backend), core)
    assert plan is not None and plan.variant == core, f"{core} cannot be forced on {p}"
    assert plan.backend == backend, plan
    y = np.empty(p.output_shape, np.float32)
    _plan.run(plan, x, w, p, y)
    assert_close(y, fastconv.conv2d(x, w, stride=stride, padding=padding, dilation=dilation,
                                    groups=groups, algorithm="reference"),
                 tolerance(np.float32, "direct"), f"{core} forced on {p}")


# channel counts around the 16-blocks and the 4x4 weight-gradient tiles; first layers
@pytest.mark.parametrize("C,K", [(1, 8), (3, 16), (3, 33), (17, 1), (24, 40), (63, 65),
                                 (70, 60)])
def test_channel_blocking(C, K):
    _check(np.float32, 1, C, 7, 9, K, 3, 3, padding=1)
    if C > 1:                                     # every forward core on the same edges
        for core in ("flat", "row", "lanes"):
            _forced(core, 1, C, 7, 9, K, 3, 3, padding=1)


# row lengths around the 8/16-pixel blocks (overlapped last block, masked short rows)
@pytest.mark.parametrize("H,W", [(1, 1), (5, 7), (9, 15), (11, 17), (4, 33)])
def test_pixel_blocking(H, W):
    _check(np.float32, 2, 5, H, W, 18, 1, 3, padding=(0, 1))
    for core in ("flat", "row") + (("lanes",) if layouts.lanes_block(H, W) else ()):
        _forced(core, 2, 5, H, W, 18, 1, 3, padding=(0, 1))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_strides_dilation_asymmetric_padding(dtype):
    f32 = dtype == np.float32
    _check(dtype, 2, 6, 13, 12, 20, 3, 2, stride=(2, 3), padding=(2, 0), dilation=(1, 2),
           fwd="row", inp=("flat", "", "flat", "flat", "", "flat"))  # dilated: gcd(2, 3) = 1
    _check(dtype, 1, 5, 10, 11, 7, 4, 4, padding="same")           # pad_bottom = pad_top + 1
    _check(dtype, 1, 4, 9, 9, 19, 3, 3, stride=3, padding=4,         # padding > kernel
           inp=("flat",) * 9)                                         # 3 x 3 residue classes
    _check(dtype, 2, 64, 8, 8, 64, 3, 3, padding=1)                # full blocks
    _check(dtype, 2, 7, 15, 14, 9, 4, 3, stride=(2, 3), padding=(1, 2),  # input-grad phases
           inp=("flat",) * 6)
    # a conv1: 9 x 9 outputs hold a 1 x 4 lanes block (AVX2), not 1 x 14 (AVX-512)
    lanes = layouts.lanes_block(9, 9) == layouts.LANES_BLOCKS[0]
    _check(dtype, 1, 3, 17, 17, 16, 7, 7, stride=2, padding=3,
           fwd=("lanes" if lanes else "flat") if f32 else "row")
    # stride-2 conversion: rows of >= 16 column pairs, odd/even padding, cropped columns
    for pad in (0, 1, 2):
        _check(dtype, 1, 2, 9, 41, 17, 3, 4, stride=2, padding=pad)
    _check(dtype, 1, 2, 9, 40, 17, 3, 1, stride=2, padding=0,        # last columns unread
           inp=("flat", "", "flat", ""))                              # classes no tap reaches


def test_flat_pitch():
    """The flat kernel's rows share one zero column as right and left padding (3x3 pad 1:
    Q + 1 columns), and keep both where a read past the row end would meet data (the
    stride-2 phase planes of res3 3x3/2) or there is no left padding to land in."""
    assert layouts.flat_pitch(28, 3, 1, 1, 1, 28) == 29
    assert layouts.flat_pitch(28, 3, 2, 1, 1, 56) == 29
    assert layouts.flat_pitch(28, 3, 1, 1, 0, 30) == 30
    assert layouts.flat_pitch(5, 3, 1, 2, -1, 9) == 9
    _check(np.float32, 2, 5, 6, 28, 20, 3, 3, padding=1, fwd="lanes")   # rows of the 1-row block
    _forced("flat", 2, 5, 6, 28, 20, 3, 3, padding=1)
    # Q = SHORT: rows the two-row lanes block fits, on a short patch (60 inputs): flat
    _check(np.float32, 1, 4, 9, SHORT + 4, 20, 3, 5, padding=(1, 2), dilation=(1, 2),
           fwd="flat")


@pytest.mark.parametrize("backend", sorted({b for a, b in kernel_pairs("conv2d")
                                            if a == "direct"}))
def test_flat_core(backend):
    """The flat core (pixels in the vector lanes) forced on each backend: output channels
    around its blocks of 12 and 4, rows of 1 to 33 columns, stride 2 on phase planes
    (with dilation; rows of one column, where a tap past a plane's last row needs the
    padding row), groups with dilation; and the input gradient of a 7x7/2 RGB stem,
    whose four residue classes it runs (3 output channels each)."""
    for C, K in ((3, 16), (3, 33), (17, 1), (24, 40), (70, 13)):
        _forced("flat", 1, C, 7, 9, K, 3, 3, padding=1, backend=backend)
    for H, W in ((1, 1), (5, 7), (9, 15), (4, 33)):
        _forced("flat", 2, 5, H, W, 18, 1, 3, padding=(0, 1), backend=backend)
    _forced("flat", 3, 5, 28, 28, 24, 3, 3, stride=2, padding=1, backend=backend)
    _forced("flat", 2, 5, 31, 31, 24, 3, 3, stride=2, padding=2, dilation=2, backend=backend)
    _forced("flat", 1, 2, 1, 1, 1, 1, 2, stride=2, padding=(0, 1), dilation=(1, 2),
            backend=backend)
    _forced("flat", 2, 6, 9, 10, 14, 3, 2, padding=(1, 0), dilation=(2, 1), groups=2,
            backend=backend)
    _check(np.float32, 1, 3, 29, 31, 16, 7, 7, stride=2, padding=3, inp=("flat",) * 4,
           backend=backend)


def test_stride2_kernels():
    """Stride 2 float32 (where no lanes kernel fits) runs the flat kernel on four phase
    planes when it wastes fewer lanes than the row kernel (Q = 14: 14 of 16 lanes
    against 14 of 15), else the row kernel (Q = 16 fills its lanes exactly); each of
    the three cores is also forced on each layer."""
    assert _plan.flat_wins(np.dtype(np.float32), 2, 2, 1, 1, 14, 24, 1)
    assert not _plan.flat_wins(np.dtype(np.float32), 2, 2, 1, 1, 16, 32, 1)
    assert not _plan.flat_wins(np.dtype(np.float32), 2, 2, 2, 2, 14, 24, 1)   # zeros inserted
    assert not _plan.flat_wins(np.dtype(np.float64), 1, 1, 1, 1, 14, 24, 1)
    layers = [dict(N=3, C=5, H=28, W=28, K=24, R=3, S=3, stride=2, padding=1),
              dict(N=2, C=5, H=31, W=31, K=24, R=3, S=3, stride=2, padding=2, dilation=2),
              # rows of one column (Wq = 1): a tap past the last row of phase plane
              # (0, 0) read the first column of plane (0, 1), input data, until the
              # planes got a padding row
              dict(N=1, C=2, H=1, W=1, K=1, R=1, S=2, stride=2, padding=(0, 1),
                   dilation=(1, 2)),
              dict(N=2, C=3, H=5, W=3, K=20, R=2, S=2, stride=2, padding=(1, 1),
                   dilation=(1, 2)),
              dict(N=1, C=4, H=32, W=32, K=32, R=3, S=3, stride=2, padding=1)]   # Q = 16
    wants = ["lanes", "lanes", "flat", "flat", "lanes"]
    for layer, fwd in zip(layers, wants):
        _check(np.float32, *(layer.pop(k) for k in "NCHWKRS"), fwd=fwd, **layer)
    for core in ("flat", "row", "lanes"):
        _forced(core, 3, 5, 28, 28, 24, 3, 3, stride=2, padding=1)             # Q = 14
        _forced(core, 1, 4, 32, 32, 32, 3, 3, stride=2, padding=1)             # Q = 16
        _forced(core, 2, 5, 31, 31, 24, 3, 3, stride=2, padding=2, dilation=2)
    _forced("row", 2, 3, 5, 3, 20, 2, 2, stride=2, padding=(1, 1), dilation=(1, 2))
    _forced("row", 1, 2, 1, 1, 1, 1, 2, stride=2, padding=(0, 1), dilation=(1, 2))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_groups_and_depthwise(dtype):
    """Groups through the blocked cores; depthwise layers (C/groups = 1) through the
    depthwise kernels: the input gradient as a forward with the rotated weight when
    K = C at stride 1, else scattered."""
    dw = dict(fwd="depthwise", inp="depthwise", wgt="depthwise")
    scatter = dict(dw, inp="depthwise_scatter")
    _check(dtype, 2, 12, 9, 8, 20, 3, 3, padding=1, groups=4, wgt=2)
    _check(dtype, 2, 32, 9, 8, 32, 3, 3, padding=1, groups=32, **dw)       # depthwise
    _check(dtype, 1, 8, 11, 10, 16, 5, 3, stride=2, padding=(2, 1), groups=8,  # multiplier 2
           **scatter)
    _check(dtype, 1, 6, 10, 9, 6, 2, 2, padding="same", dilation=2, groups=6, **dw)
    # rows of >= 16 columns (vector copies in and out of the tile), P not a multiple of 4
    _check(dtype, 2, 16, 29, 35, 16, 3, 3, padding=1, groups=16, **dw)
    _check(dtype, 1, 4, 33, 40, 8, 3, 5, stride=(2, 3), padding=(1, 2), groups=4, **scatter)
    _check(dtype, 2, 8, 9, 9, 8, 3, 3, stride=2, padding=1, groups=8, **scatter)  # K = C
    # 3x3 read in place: dilation 2 (taps' rows not shared), 5x5, and stride 2 on
    # rows of 7 and 8 blocks (its unrolled, deinterleaved rows)
    _check(dtype, 1, 8, 20, 23, 8, 3, 3, padding=2, dilation=2, groups=8, **dw)
    _check(dtype, 1, 8, 17, 19, 8, 5, 5, padding=2, groups=8, **dw)
    _check(dtype, 2, 16, 56, 37, 16, 3, 3, stride=2, padding=1, groups=16, **scatter)
    _check(dtype, 1, 16, 33, 40, 16, 3, 3, stride=2, padding=1, groups=16, **scatter)


@pytest.mark.parametrize("backend", ["cython", "numba"])
def test_direct_sees_a_weight_changed_in_place(backend):
    """On either backend, the cached weight layouts (the forward's, each input-gradient
    phase's) are not used once the weight changed in place (an optimiser step),
    wherever it changed."""
    if backend not in _dispatch.available_backends():
        pytest.skip(f"the {backend} backend is not available")
    x, w, dy = arrays(2, np.float32, (2, 128, 9, 9), (40, 128, 3, 3), (2, 40, 5, 5))
    kw = dict(padding=1, stride=2, algorithm="direct", backend=backend)
    ref = dict(algorithm="reference", backend="auto")
    for step in range(5):
        # the input gradient first: it alone sees the weight change (a forward first
        # would have replaced the cache's entry)
        with fastconv.trace_plans() as ran:
            dx = fastconv.conv2d_input(x.shape, w, dy, **kw)
            y = fastconv.conv2d(x, w, **kw)
        assert [pl.variant for pl in ran] == ["phases", "lanes"]
        assert_close(dx, fastconv.conv2d_input(x.shape, w, dy, **kw | ref), 1e-5,
                     f"conv2d_input after {step} updates")
        assert_close(y, fastconv.conv2d(x, w, **kw | ref), 1e-5, f"conv2d after {step} updates")
        # in place: same address, shape, strides; the last steps change one tap only,
        # which only some of the input gradient's phases read (the first phase's call
        # checks the whole weight for all of them)
        if step < 3:
            w[step] += 1
        else:
            w[:, :, step - 2, step - 2] += 1


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
    assert direct._weights._nbytes() <= direct._weights.max_bytes


def test_threads_agree():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 16, 10, 10)).astype(np.float32)
    w = rng.standard_normal((32, 16, 3, 3)).astype(np.float32)
    y1 = on_one_thread(lambda: fastconv.conv2d(x, w, padding=1, algorithm="direct"))
    y2 = fastconv.conv2d(x, w, padding=1, algorithm="direct")
    np.testing.assert_array_equal(y1, y2)                 # deterministic across thread counts


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batch_slices(dtype):
    """Forward batches converted and convolved a slice at a time (slices of 1 byte: one
    image per slice); weight gradients with the batch in 1, 3 and 5 splits (1 work
    item: 5 images in 3 parts of 2, 2 and 1) and images added in turn into the blocked
    sums."""
    f32 = dtype == np.float32
    with tuned(DIRECT_SLICE_BYTES=1):
        # rows of SHORT on a short patch (45 inputs): flat
        _check(dtype, 3, 5, 12, SHORT, 18, 3, 3, padding=1, fwd="flat" if f32 else "row",
               wgt=3)
        _check(dtype, 3, 4, 15, 29, 24, 3, 3, stride=2, padding=1, fwd="lanes" if f32 else "row",
               wgt=3)
        _check(dtype, 5, 5, 12, 13, 16, 3, 3, padding=1, wgt=5)
        assert fastconv.plan("conv2d", (5, 5, 12, 13), (16, 5, 3, 3), padding=1, dtype=dtype,
                             algorithm="direct")["slice_bytes"] == 1
    for items, splits in ((3, 3), (1, 1)):
        with tuned(DIRECT_WEIGHT_GRAD_ITEMS=items):
            _check(dtype, 5, 5, 12, 13, 16, 3, 3, padding=1, wgt=splits)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_weight_gradient_threads_agree(dtype):
    """The weight gradient adds the images and batch splits in a fixed order, whatever
    the thread count: the same bits on one thread as on all. Several work items
    (channel tails: 3 x 3 input x output blocks, float32; 5 x 3 float64) in 2 batch
    splits, then one item and 5 images in 5 batch splits."""
    rng = np.random.default_rng(2)

    def grads(N, C, H, K, splits, **kw):
        x = rng.standard_normal((N, C, H, H)).astype(dtype)
        w = (K, C, 3, 3)
        dy = rng.standard_normal(fastconv.conv2d(x, np.zeros(w, dtype), **kw).shape)
        dy = dy.astype(dtype)

        def grad():
            return ran_plan(lambda: fastconv.conv2d_weight(x, w, dy, **kw, algorithm="direct"),
                            variant="blocked", batch_splits=splits)[0]

        one = on_one_thread(grad)
        every = grad()
        np.testing.assert_array_equal(one, every)

    grads(3, 40, 11, 40, 2, stride=2, padding=1)
    grads(5, 5, 12, 16, 5, padding=1)


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
    _check(dtype, 2, 40, 5, 37, 40, 3, 3, padding=1, wgt=2)
    _check(dtype, 1, 64, 6, 35, 64, 3, 3, padding=1, groups=2, wgt=1)
    _check(dtype, 2, 32, 7, 40, 48, 3, 3, stride=2, padding=1, wgt=2)


def test_lanes_kernel():
    """The lanes kernels (output channels in the vector lanes, pixels broadcast; float32,
    stride 1 and 2), the blocks of ``layouts.LANES_BLOCKS``: the one-row block (1 x 4
    pixels with 16 vector registers, 1 x 14 with 32) on rows that hold it, the two-row
    block (2 x 2, 2 x 7) on shorter rows from 256 inputs per output (last blocks of a
    row and of the rows overlapping); rows written by 16 x 16 transposes (one row) or
    element by element (two rows), the last columns of a row masked, element by element
    for a channel tail. A channel tail (K = 40), rows from the two-row block's width to
    20 columns, 2-7 rows, groups, dilation, asymmetric padding, and conv1's shape (3
    input channels, 7x7, stride 2)."""
    f32 = np.dtype(np.float32)
    (M1, J1, _), (M2, J2, _) = ONE_ROW, TWO_ROWS
    assert (M1, M2) == (1, 2) and J2 <= SHORT
    assert _plan.lanes_wins(f32, 2, 2, 1, 1, 28, 28, 1152)       # res3 3x3/2
    assert _plan.lanes_wins(f32, 1, 1, 1, 1, 14, 14, 2304)       # res4 3x3
    assert _plan.lanes_wins(f32, 1, 1, 1, 1, 7, 7, 4608)         # res5 3x3
    assert _plan.lanes_wins(f32, 2, 2, 1, 1, 112, 112, 147)      # conv1
    assert _plan.lanes_wins(f32, 1, 1, 1, 1, 7, SHORT, 4608)     # two rows, long reductions
    assert layouts.lanes_block(7, J1) == layouts.lanes_block(1, 28) == ONE_ROW
    assert layouts.lanes_block(7, SHORT) == layouts.lanes_block(2, J2) == TWO_ROWS
    assert layouts.lanes_block(1, SHORT) is None                 # a single row under J1
    assert layouts.lanes_block(7, J2 - 1) is None                # rows under J2
    assert not _plan.lanes_wins(f32, 1, 1, 1, 1, 7, SHORT, 147)  # two rows, short reductions
    assert not _plan.lanes_wins(f32, 3, 3, 1, 1, 28, 28, 1152)   # stride 3
    assert not _plan.lanes_wins(f32, 1, 1, 1, 1, 7, J2 - 1, 4608)     # rows under J2
    assert not _plan.lanes_wins(f32, 1, 1, 1, 1, 1, SHORT, 4608)      # a single row under J1
    assert not _plan.lanes_wins(f32, 1, 1, 2, 2, 28, 28, 1152)   # zeros inserted
    assert not _plan.lanes_wins(np.dtype(np.float64), 1, 1, 1, 1, 28, 28, 1152)
    with tuned(LANES_MIN_PATCH=10**6):                           # two rows need long patches
        assert not _plan.lanes_wins(f32, 1, 1, 1, 1, 7, SHORT, 4608)
        assert _plan.lanes_wins(f32, 1, 1, 1, 1, 14, 14, 2304)   # one row: any patch
    one, two = dict(fwd="lanes", block=ONE_ROW), dict(fwd="lanes", block=TWO_ROWS)
    # one row: rows of 14-20 columns hold it under either table
    _check(np.float32, 2, 3, 40, 38, 40, 7, 7, stride=2, padding=3, **one)        # Q = 19
    _check(np.float32, 1, 3, 35, 35, 64, 7, 7, stride=2, padding=(3, 2), **one)   # Q = 17
    _check(np.float32, 2, 32, 5, 16, 40, 3, 3, padding=1, **one, inp="lanes")     # Q = 16
    _check(np.float32, 1, 16, 6, 14, 32, 3, 3, padding=1, **one, inp="lanes")     # Q = 14
    _check(np.float32, 1, 16, 3, J1, 32, 3, 3, padding=1, **one, inp="lanes")     # Q = J1
    _check(np.float32, 1, 64, 4, 15, 64, 3, 3, padding=1, groups=2, **one)        # Cg = 32
    _check(np.float32, 2, 32, 9, 29, 40, 3, 3, stride=2, padding=1, **one)        # Q = 15
    _check(np.float32, 1, 36, 7, 32, 33, 3, 3, stride=2, padding=(2, 0), dilation=2, **one)
    _check(np.float32, 1, 30, 6, 18, 32, 3, 3, padding=(0, 2), **one)             # Q = 20
    # two rows: rows of J2 (7 x 7 is res5 with 32 registers) to SHORT columns
    _check(np.float32, 2, 40, 7, J2, 40, 3, 3, padding=1, **two, inp="lanes")     # 7 x J2
    _check(np.float32, 1, 64, 2, SHORT, 72, 3, 3, padding=1, groups=2, **two)     # P = 2
    _check(np.float32, 1, 30, 12, 2 * SHORT - 2, 33, 3, 3, stride=2, padding=(1, 2),
           **two)                                                                # 6 x SHORT
    _check(np.float32, 1, 29, 9, SHORT + 2, 36, 3, 3, padding=(0, 1), dilation=(1, 2),
           **two)                                                                # 7 x SHORT
    _forced("lanes", 2, 5, 7, SHORT, 24, 3, 3, padding=1)        # two rows on a short patch


@pytest.mark.parametrize("backend", sorted({b for a, b in kernel_pairs("conv2d")
                                            if a == "direct"}))
def test_input_gradient_lanes_phases(backend):
    """The stride-2 input gradient's residue classes on the lanes core (C/groups of two
    vectors at least, float32; ``_plan.lanes_phase``), each class's rows and columns
    stored every other one: odd sizes (classes of unequal size), asymmetric padding, a
    channel tail (C = 33), groups with 32 channels each, both row blocks; float64 and
    three channels keep flat."""
    _check(np.float32, 2, 33, 15, 2 * ONE_ROW[1] + 3, 20, 3, 3, stride=2, padding=(1, 0),
           inp=("lanes",) * 4, backend=backend)
    _check(np.float32, 1, 64, 2 * SHORT + 1, 2 * SHORT, 24, 3, 3, stride=2, padding=1,
           groups=2, inp=("lanes",) * 4, backend=backend)
    _check(np.float32, 1, 40, 12, 11, 16, 2, 2, stride=2, padding=0,     # 1 tap per class
           inp=("lanes",) * 4, backend=backend)
    _check(np.float64, 1, 40, 12, 11, 16, 3, 3, stride=2, padding=1,
           inp=("flat",) * 4, backend=backend)
    _check(np.float32, 1, 3, 21, 19, 20, 7, 7, stride=2, padding=3,
           inp=("flat",) * 4, backend=backend)


@pytest.mark.parametrize("backend", sorted({b for a, b in kernel_pairs("conv2d")
                                            if a == "direct"}))
def test_streamed_lanes_kernel(backend):
    """The two-row lanes kernel that lays out the weight per work item (Numba's ``_s``
    kernel; Cython's ``direct_streamed_item``, a block of output channels for every
    image), forced on small weights: input channels in chunks (70 = 64 + 6), a channel
    tail (K = 40), several images per item, groups, stride 2, dilation, asymmetric
    padding, and the input gradient (rotated weight, stride-2 phases); a weight changed
    in place is seen at once (no layout is kept). At res5's channels it is the one the
    plans name where auto runs direct (AVX-512 CPUs, under 1024 channels for
    F2_FEW_MIN_CHANNELS; with fewer vector registers than
    WINOGRAD_BELOW_REGISTERS and BLAS_BELOW_REGISTERS auto runs such forwards on
    Winograd or im2col: test_selection)."""
    J2 = TWO_ROWS[1]                    # rows of the two-row block: 7 x 7 is res5's (32)
    assert _plan.streams_weight(512 * 512 * 9 * 4)                # res5 3x3
    assert not _plan.streams_weight(256 * 256 * 9 * 4)
    assert fastconv.plan("conv2d", (1, 256, 7, J2), (256, 256, 3, 3), padding=1,
                         algorithm="direct").variant == "lanes"
    with tuned(BLAS_BELOW_REGISTERS=0, WINOGRAD_BELOW_REGISTERS=0,
               F2_FEW_MIN_CHANNELS=1024):         # F(2x2,3x3) takes res5's 512 channels
        plan = fastconv.plan("conv2d", (1, 512, 7, J2), (512, 512, 3, 3), padding=1,
                             backend="numba")
    assert (plan.algorithm, plan.variant, plan["block"]) == ("direct", "lanes_streamed",
                                                             TWO_ROWS)
    streamed = dict(fwd="lanes_streamed", inp="lanes_streamed", block=TWO_ROWS)
    with tuned(LANES_STREAM_MIN_WEIGHT=0):
        _check(np.float32, 3, 70, 7, J2, 40, 3, 3, padding=1, **streamed,
               backend=backend)                                            # chunks, K tail
        _check(np.float32, 1, 140, 9, SHORT, 72, 3, 3, padding=(0, 1), groups=2,  # Cg = 70
               **streamed, backend=backend)
        _check(np.float32, 2, 40, 15, 2 * SHORT - 1, 33, 3, 3, stride=2, padding=1,
               fwd="lanes_streamed", block=TWO_ROWS,
               inp=("lanes",) * 4, backend=backend)                   # 8 x SHORT, stride 2
        _check(np.float32, 1, 36, 11, SHORT, 64, 3, 3, padding=(1, 2), dilation=2,
               **streamed, backend=backend)
        _check(np.float32, 1, 30, 8, SHORT - 1, 32, 5, 5, padding=2,
               **streamed, backend=backend)                         # 5 x 5, Q = SHORT - 1
        rng = np.random.default_rng(1)
        x = rng.standard_normal((1, 64, 7, J2)).astype(np.float32)
        w = rng.standard_normal((64, 64, 3, 3)).astype(np.float32)
        ran_plan(lambda: fastconv.conv2d(x, w, padding=1, algorithm="direct",
                                         backend=backend), variant="lanes_streamed")
        w *= -0.5
        got, _ = ran_plan(lambda: fastconv.conv2d(x, w, padding=1, algorithm="direct",
                                                  backend=backend), variant="lanes_streamed")
    assert_close(got, fastconv.conv2d(x, w, padding=1, algorithm="reference"),
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
    # one input channel per group is a depthwise layer (its own kernel)
    y, _ = ran_plan(lambda: fastconv.conv2d(x, w, groups=groups, algorithm="direct"),
                    variant="depthwise" if C == groups else "pointwise")
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


def test_pointwise_is_float32_only():
    """float64 1x1 layers run a blocked core (the pointwise GEMM is float32): Numba's
    row, and Cython's lanes, which stands in for it."""
    x, w = np.ones((2, 24, 5, 7)), np.ones((80, 24, 1, 1))
    cores = [(b, c) for b, c in (("numba", "row"), ("cython", "lanes"))
             if b in _dispatch.available_backends()]
    assert cores, "neither compiled backend is available"
    for backend, core in cores:
        y, _ = ran_plan(lambda: fastconv.conv2d(x, w, algorithm="direct", backend=backend),
                        variant=core)
        np.testing.assert_array_equal(y, np.full((2, 80, 5, 7), 24.0))


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
        ran_plan(lambda: fastconv.conv2d(x, w, algorithm="direct"), variant="pointwise")
        edit()
        assert_close(fastconv.conv2d(x, w, algorithm="direct"),
                     fastconv.conv2d(x, w, algorithm="reference"), 1e-5, "after an edit")


def test_phase_weights_are_cached_per_sub_kernel():
    """One weight array through strided input gradients of different dilations: each
    residue class's sub-kernel (its taps depend on the dilation too) gets its own cached
    layout, not the one the last call left under the same class."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((20, 3, 2, 3)).astype(np.float32)
    for dilation in [(1, 1), (1, 2), (1, 1), (2, 2)]:
        kw = dict(stride=2, dilation=dilation, groups=4)
        x = rng.standard_normal((2, 12, 17, 16)).astype(np.float32)
        dy = rng.standard_normal(fastconv.conv2d(x, w, **kw).shape).astype(np.float32)
        got, _ = ran_plan(lambda: fastconv.conv2d_input(x.shape, w, dy, **kw,
                                                        algorithm="direct"),
                          variant="phases")
        assert_close(got, fastconv.conv2d_input(x.shape, w, dy, **kw, algorithm="reference"),
                     tolerance(np.float32, "direct"), f"dilation {dilation}")
