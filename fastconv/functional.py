"""Convolution and pooling on NumPy arrays with ``torch.nn.functional`` semantics.

Every function here does the same three things: validate and normalise the
arguments (through ``fastconv._geometry``), plan the call (``fastconv._plan``),
and call it on C-contiguous arrays with a freshly allocated output. Arrays are NCHW,
float32 or float64; a channels-last array (PyTorch's ``channels_last`` memory format:
:func:`channels_last`) gives a channels-last result, computed in that layout where the
plan's kernel does (``plan.layout == "nhwc"``: docs/channels_last.md) and converted
both ways where it does not; a 3-D ``(C, H, W)`` input is treated as a batch of one and the
result has no batch axis either. Pair arguments (stride, padding, dilation, kernel_size,
output_padding) take an int or a tuple or list of 1 or 2 ints, as in PyTorch. An empty
batch (``N = 0``), or a convolution's empty channel axis, gives PyTorch's empty result
(zeros for the weight gradient) without calling a kernel.
"""
import functools
import importlib

import numpy as np

from . import _config, _dispatch, _plan
from ._config import get_num_threads
from ._geometry import (MEMO_SIZE, PoolParams, adaptive_output_size, adaptive_windows,
                        avg_pool_args, block_params, check_dtype, check_epilogue, check_grad_output, check_memory,
                        conv_params, int_tuple, pool_params, transpose_params)
from .kernels import epilogue as _epilogue
from .kernels.weight_cache import PreparedWeight

__all__ = [
    "prepare_weight", "channels_last", "to_channels_last", "conv2d", "conv2d_input", "conv2d_weight", "conv_transpose2d", "max_pool2d",
    "max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward", "adaptive_avg_pool2d",
    "inverted_residual",
]


def _contiguous(op, name, a):
    """``a`` C-contiguous; a copy is checked first (a broadcast view may be huge)."""
    a = np.asarray(a)
    if a.flags.c_contiguous:
        return a
    check_memory(op, (f"a contiguous copy of {name}", a.shape, a.dtype.itemsize))
    if channels_last(a):                            # (N, H*W, C) -> (N, C, H*W)
        N, C, H, W = a.shape
        out = _config.empty(a.shape, a.dtype)
        _swap_layout(a.transpose(0, 2, 3, 1).reshape(N, H * W, C), out.reshape(N, C, H * W))
        return out
    return np.ascontiguousarray(a)


def _swap_layout(src, dst):
    """dst[n, s, r] = src[n, r, s] (both C-contiguous, 3-D): an NCHW <-> channels-last
    copy, by the Cython backend's tiled transpose where it is built (float32, float64),
    else NumPy's copy."""
    layout = _layout_module()
    if layout is not None and src.dtype in (np.float32, np.float64):
        layout.transpose_planes(src, dst, get_num_threads())
    else:
        np.copyto(dst, src.transpose(0, 2, 1))


@functools.lru_cache(maxsize=1)
def _layout_module():
    """``fastconv.kernels.cython.layout``, or None where the Cython backend is not built."""
    if "cython" not in _dispatch.available_backends():
        return None
    return importlib.import_module("fastconv.kernels.cython.layout")


def channels_last(a):
    """Whether ``a`` is in PyTorch's ``channels_last`` memory format: a 4-D (N, C, H, W)
    array whose data is a C-contiguous (N, H, W, C) buffer, i.e. ``a.transpose(0, 2, 3,
    1)`` is C-contiguous, and ``a`` is not C-contiguous itself (an array that is both,
    as when C == 1 or H == W == 1, counts as NCHW, as in PyTorch)."""
    return (a.ndim == 4 and not a.flags.c_contiguous
            and a.transpose(0, 2, 3, 1).flags.c_contiguous)


def to_channels_last(a):
    """``a`` (N, C, H, W) as a channels-last array of the same values (a copy unless it
    is one already): ``np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)``."""
    a = np.asarray(a)
    if a.ndim != 4:
        raise ValueError(f"to_channels_last: expected an (N, C, H, W) array, got shape {a.shape}")
    if a.transpose(0, 2, 3, 1).flags.c_contiguous:
        return a
    N, C, H, W = a.shape
    out = _config.empty((N, H, W, C), a.dtype)
    _swap_layout(np.ascontiguousarray(a).reshape(N, C, H * W), out.reshape(N, H * W, C))
    return out.transpose(0, 3, 1, 2)


def _layout_of(a, nhwc):
    """The result ``a`` (C-contiguous NCHW) in the caller's layout: channels-last (a
    converting copy) when the caller's input was (``nhwc``)."""
    return to_channels_last(a) if nhwc else a


def _batched(op, name, a, keep_channels_last=False):
    """(4-D array, whether the caller passed 3-D): C-contiguous, or with
    ``keep_channels_last`` a channels-last array as it is."""
    a = np.asarray(a)
    if a.ndim == 3:
        return _contiguous(op, name, a[None]), True
    if a.ndim == 4:
        if keep_channels_last and channels_last(a):
            return a, False
        return _contiguous(op, name, a), False
    raise ValueError(f"{op}: expected {name} of shape (N, C, H, W) or (C, H, W), "
                     f"got shape {a.shape}")


def _size(op, name, size, unbatched):
    """A 4-D size tuple from a 3-D or 4-D one."""
    size = int_tuple(op, name, size)
    if len(size) == 3 and unbatched:
        return (1,) + size
    if len(size) != 4:
        raise ValueError(f"{op}: expected {name} of length 4 (N, C, H, W), got {size}")
    return size


def _weight(op, weight):
    """The weight's C-contiguous array: a :class:`PreparedWeight`'s own copy, whose
    derived layouts the kernels keep with it."""
    if isinstance(weight, PreparedWeight):
        return weight.array
    return _contiguous(op, "weight", weight)


def prepare_weight(weight):
    """A weight prepared once for many calls (:class:`PreparedWeight`): a private
    read-only copy, with every layout or transformed filter the kernels derive from it
    kept with it, reused with no check and no copy. Use it for weights that stay the
    same between calls (inference); prepare again after changing the weight."""
    return PreparedWeight(weight)


def _unbatch(a, unbatched):
    return a[0] if unbatched else a


def _conv_room(op, p, dtype, out_shape, plan):
    """MemoryError (``_geometry.check_memory``) unless the result, of ``out_shape``, and
    the workspace of ``plan`` fit: one zero-padded input image (direct's layout holds at
    least one), the stacked input of a kernel's 3x3 blocks (``kernel_blocks``) for its
    group of images, or for the reference the whole zero-padded input and its result in
    float64."""
    padded = (p.N, p.C, p.H + p.pad_top + p.pad_bottom, p.W + p.pad_left + p.pad_right)
    if plan.algorithm == "reference":
        check_memory(op, ("output", out_shape, dtype.itemsize),
                     ("the reference's float64 zero-padded input", padded, 8),
                     ("its float64 result", out_shape, 8))
    elif plan.get("kernel_blocks") is not None:
        br, bs = plan["kernel_blocks"]
        check_memory(op, ("output", out_shape, dtype.itemsize),
                     ("the stacked input of the kernel's 3x3 blocks (workspace)",
                      (plan["block_images"], p.C * br * bs, p.P + 2, p.Q + 2), dtype.itemsize))
    else:
        check_memory(op, ("output", out_shape, dtype.itemsize),
                     ("a zero-padded input image (workspace)", (1,) + padded[1:], dtype.itemsize))


def _check_bias(op, bias, K, dtype):
    if bias is None:
        return None
    bias = np.asarray(bias)
    if bias.shape != (K,):
        raise ValueError(f"{op}: bias of shape {bias.shape} does not match the K={K} "
                         f"output channels; expected shape ({K},)")
    return bias


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
           activation=None, residual=None, algorithm="auto", backend="auto"):
    """2-D cross-correlation, as ``torch.nn.functional.conv2d``, optionally followed by
    a residual add and an activation fused into the kernel's store:
    ``activation(conv2d(input, weight, bias) + residual)``.

    Parameters
    ----------
    input : ndarray, shape (N, C, H, W) or (C, H, W)
    weight : ndarray or PreparedWeight, shape (K, C/groups, R, S)
    bias : ndarray, shape (K,), optional
    stride, dilation : int or (int, int)
    padding : int, (int, int), 'same' or 'valid'
        'same' pads so that P = H and Q = W (stride 1 only); an odd total padding puts
        the extra row/column at the bottom/right, as PyTorch does.
    groups : int
        Input and output channels are split into this many groups; both C and K must
        be divisible by it.
    activation : None, 'relu' or 'relu6'
        Applied last, as ``torch.relu`` / ``torch.nn.functional.relu6`` (NaN stays NaN).
    residual : ndarray, shape (N, K, P, Q) (or (K, P, Q) for 3-D input), optional
        Added to the result (after the bias, before the activation): a ResNet block's
        shortcut. Same dtype as the input.
    algorithm, backend : str
        A pair from ``fastconv.algorithms("conv2d")``, or ``"auto"``.

    Returns
    -------
    ndarray, shape (N, K, P, Q) (or (K, P, Q) for 3-D input), the input's dtype.

    Fused epilogue
    --------------
    Bias, residual and activation are applied by every algorithm's kernel as it stores
    each block of the output (while the block is in cache), not by passes over the
    whole output afterwards: ``conv2d(x, w, b, activation="relu", residual=r)`` equals
    ``np.maximum(conv2d(x, w) + b[:, None, None] + r, 0)`` and reads and writes the
    output once. The result is the reference's (``algorithm="reference"``).

    Shape
    -----
    ``P = floor((H + 2*pad_h - dil_h*(R-1) - 1) / stride_h) + 1``, likewise Q.

    Notes
    -----
    NaN and Inf propagate as in PyTorch, except under the Winograd algorithms
    (Lavin & Gray 2016), whose transforms mix a whole output tile: a non-finite input
    makes every output of the tiles that read it NaN, and an infinite weight makes NaN
    the outputs of its channel that the reference makes +-Inf.

    Examples
    --------
    >>> import numpy as np, fastconv
    >>> x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    >>> sobel = np.array([[[[1, 0, -1], [2, 0, -2], [1, 0, -1]]]], np.float32)
    >>> fastconv.conv2d(x, sobel)
    array([[[[-8., -8.],
             [-8., -8.]]]], dtype=float32)
    """
    args = (stride, padding, dilation, groups, activation, algorithm, backend)
    key = _call_key(input, weight, bias, residual, args)
    prepared = type(weight) is PreparedWeight
    calls = weight.calls if prepared else _CONV2D_CALLS
    if key is not None:
        call = calls.get(key)
        if call is not None:                        # validated and planned before
            return call(input, weight.array if prepared else weight, residual)
    x, unbatched, nhwc, w, dtype, p, b, r = _conv2d_check(
        input, weight, bias, stride, padding, dilation, groups, activation, residual)
    if p.empty:
        _plan.check_names("conv2d", algorithm, backend)
        return _unbatch(np.zeros(p.output_shape, dtype), unbatched)
    call = _Conv2dCall(p, dtype, b, activation, nhwc, algorithm, backend)
    if (key is not None and x is input and (prepared or w is weight) and r is residual
            and (bias is None or call.ep.bias is bias)):
        # a later call with an equal key would pass the same arrays to the same kernel
        if prepared:
            call.bind(w)
        if len(calls) >= (PREPARED_CALLS if prepared else ARRAY_CALLS):
            calls.clear()
        calls[key] = call
    return _unbatch(call(x, w, r), unbatched)


#: conv2d's calls on plain arrays that passed the checks, by :func:`_call_key`: a call
#: with an equal key skips validation and planning, whose outcome the key decides. Up to
#: ARRAY_CALLS kept (each holds its bias array); a prepared weight keeps its own
#: (``PreparedWeight.calls``, bound to it: :meth:`_Conv2dCall.bind`), up to
#: PREPARED_CALLS of them.
_CONV2D_CALLS = {}
ARRAY_CALLS = 1024
PREPARED_CALLS = 16


def _call_key(input, weight, bias, residual, args):
    """The key of a conv2d call in its memo: everything validation and planning read
    (the arrays' shapes, strides and dtypes, the other arguments, the bias's identity,
    held by the memo's entry so that no other array takes its id, and
    :func:`fastconv._plan.settings`); None for a call that takes the full path each
    time: 3-D input, arrays that are not exactly ``np.ndarray``, or arguments other
    than ints, strings, tuples of ints and None (a bool or float is not let through
    where an int equal to it was)."""
    if type(input) is not np.ndarray or input.ndim != 4 or not _plain_args(args):
        return None
    if type(weight) is np.ndarray:
        wk = (weight.shape, weight.strides, weight.dtype)
    elif type(weight) is PreparedWeight:
        wk = None                                   # the key of its own memo
    else:
        return None
    if bias is None:
        bk = None
    elif type(bias) is np.ndarray:
        bk = (id(bias), bias.shape, bias.strides, bias.dtype)
    else:
        return None
    if residual is None:
        rk = None
    elif type(residual) is np.ndarray:
        rk = (residual.shape, residual.strides, residual.dtype)
    else:
        return None
    return (input.shape, input.strides, input.dtype, wk, bk, rk, args, _plan.settings())


def _plain_args(args):
    """Whether each of ``args`` is an int, a str, None or a tuple of ints: the
    arguments a memo's key may hold (a bool, float or NumPy integer takes the full path,
    where the checks treat it as they do)."""
    for a in args:
        t = type(a)
        if t is tuple:
            for e in a:
                if type(e) is not int:
                    return False
        elif t is not int and t is not str and a is not None:
            return False
    return True


#: conv2d_input's and conv2d_weight's calls on arrays that passed the checks, by
#: :func:`_grad_key`: (plan, geometry, dtype, whether the result is made channels last)
#: of the call, which the key decides, so that an equal call (each training step's)
#: skips validation and planning. Up to MEMO_SIZE kept.
_GRAD_CALLS = {}


def _grad_key(op, a, dy, size, args):
    """The key of a conv2d_input (``a`` the weight, ``size`` the input's) or
    conv2d_weight (``a`` the input, ``size`` the weight's) call on grad_output ``dy``
    in ``_GRAD_CALLS``: what validation and planning read (both arrays' shapes, strides
    and dtypes, the size, the other arguments, :func:`fastconv._plan.settings`); None
    for a call that takes the full path each time: arrays that are not exactly 4-D
    ``np.ndarray`` (a prepared weight's included), a size that is not a tuple of ints,
    other arguments as :func:`_plain_args` refuses."""
    if (type(a) is not np.ndarray or type(dy) is not np.ndarray or a.ndim != 4
            or dy.ndim != 4 or type(size) is not tuple or not _plain_args(args + (size,))):
        return None
    return (op, a.shape, a.strides, a.dtype, dy.shape, dy.strides, dy.dtype, size, args,
            _plan.settings())


def _remembered_grad(op, a, dy, size, args):
    """(key, result): the call's :func:`_grad_key`, and its result when an equal call
    was remembered (the kernel run straight away on ``a`` and ``dy``), else None."""
    key = _grad_key(op, a, dy, size, args)
    hit = None if key is None else _GRAD_CALLS.get(key)
    if hit is None:
        return key, None
    plan, p, dtype, nhwc = hit                      # validated and planned before
    if op == "conv2d_input":
        out = _config.empty(p.input_shape, dtype)
        _plan.run(plan, dy, a, p, out)
    else:
        out = _config.empty(p.weight_shape, dtype)
        _plan.run(plan, a, dy, p, out)
    return key, _layout_of(out, nhwc)


def _remember_grad(key, call):
    if len(_GRAD_CALLS) >= MEMO_SIZE:
        _GRAD_CALLS.clear()
    _GRAD_CALLS[key] = call


def _conv2d_check(input, weight, bias, stride, padding, dilation, groups, activation,
                  residual):
    """conv2d's validation: (x 4-D, whether the caller passed 3-D, whether x is
    channels-last, the weight's array, dtype, geometry, bias, residual 4-D)."""
    x, unbatched = _batched("conv2d", "input", input, keep_channels_last=True)
    nhwc = channels_last(x)
    w = _weight("conv2d", weight)
    dtype = check_dtype("conv2d", input=x, weight=w, bias=bias, residual=residual)
    p = conv_params("conv2d", x.shape, w.shape, stride, padding, dilation, groups)
    bias = _check_bias("conv2d", bias, p.K, dtype)
    residual = check_epilogue("conv2d", p, residual, activation, unbatched)
    return x, unbatched, nhwc, w, dtype, p, bias, residual


#: (geometry, dtype, layout, algorithm, backend, _plan.settings()) -> (plan, output
#: shape) of a conv2d call: what _plan.make gives for them (networks call the same
#: geometries again and again; up to MEMO_SIZE kept, as the geometry checks' memos)
_CONV2D_PLANS = {}


class _Conv2dCall:
    """conv2d's plan, memory check and epilogue for one validated geometry ``p``,
    ``dtype``, bias, activation and input layout (``nhwc``; what :func:`_conv2d_check`
    returned, p not empty), made once; ``call(x, w, residual)`` allocates the output
    and runs the kernel (the result 4-D, in x's layout), for arrays of the shapes,
    strides and dtype validated. :func:`conv2d` makes one per call; ``nn.optimize``'s
    steps keep one per input shape and call it on every forward pass, while
    ``settings`` equals :func:`fastconv._plan.settings` (the plan's inputs beyond the
    call), with the kernel bound to their weight (:meth:`bind`)."""

    __slots__ = ("plan", "p", "dtype", "nhwc", "out_shape", "ep", "settings", "bound")

    def __init__(self, p, dtype, bias, activation, nhwc, algorithm="auto", backend="auto"):
        self.settings = _plan.settings()
        key = (p, dtype, nhwc, algorithm, backend, self.settings)
        planned = _CONV2D_PLANS.get(key)
        if planned is None:
            plan = _plan.make("conv2d", p, dtype, algorithm, backend,
                              _plan.conv2d_layout(p, algorithm, "nhwc" if nhwc else "nchw"))
            # computed channels last: out (N, P, Q, K), handed back as an NCHW-shaped view
            out_shape = (p.N, p.P, p.Q, p.K) if plan.layout == "nhwc" else p.output_shape
            if len(_CONV2D_PLANS) >= MEMO_SIZE:
                _CONV2D_PLANS.clear()
            planned = _CONV2D_PLANS[key] = plan, out_shape
        self.plan, self.out_shape = planned
        _conv_room("conv2d", p, dtype, p.output_shape, self.plan)
        self.p, self.dtype, self.nhwc = p, dtype, nhwc
        self.ep = _epilogue.make(dtype, bias, None, activation)
        self.bound = None

    def bind(self, w):
        """Bind the kernel to weight ``w``, for a caller that passes this same weight,
        never modified, to every call (``nn.optimize``'s prepared weights): the weight's
        layout and the kernel's arguments are then found once, here, not on each call
        (about 3 us a call of the 1x1 and depthwise channels-last kernels, whose layers
        are many and small in MobileNet-v2). Where the backend has no bound form of the
        plan's kernel, calls run as before."""
        if self.plan.layout == "nhwc":
            # the kernel's module loaded first: its bound form lives beside it
            _dispatch.kernel(self.plan.op, self.plan.algorithm, self.plan.backend)
            bind = _dispatch.binder(self.plan.op, self.plan.algorithm, self.plan.backend)
            self.bound = None if bind is None else bind(self.plan, w, self.p, self.ep)

    def __call__(self, x, w, residual=None, out=None):
        """``out``: where the kernel writes, a C-contiguous array of ``out_shape`` and
        ``dtype`` that no input overlaps (``nn.optimize``'s reused buffers); by default
        a new one. ``w``: the weight :meth:`bind` was given, if it was called."""
        plan, ep = self.plan, self.ep
        if out is None:
            out = _config.empty(self.out_shape, self.dtype)
        call = self.kernel_call(x, w, residual, out)
        if call is not None:
            fn, args, y = call
            fn(*args)
            return y
        # a layout converted around the kernel
        if plan.layout == "nhwc":                   # a residual not channels last: copied
            fn, args, y = self.kernel_call(x, w, to_channels_last(residual), out)
            fn(*args)
            return y
        if self.nhwc:                               # no kernel computes it channels last
            x = _contiguous("conv2d", "input", x)
        if residual is not None:
            ep = _epilogue.Epilogue(ep.bias, _contiguous("conv2d", "residual",
                                                         residual).reshape(-1), ep.act)
        _plan.run(plan, x, w, self.p, out, ep)
        return _layout_of(out, self.nhwc)

    def kernel_call(self, x, w, residual, out):
        """``(fn, args, y)``: the kernel call ``fn(*args)`` that computes this call on
        ``x``, ``w`` and ``residual`` into ``out`` (as :meth:`__call__`'s), and ``y``,
        the result, a view of ``out``; None where a layout must be converted around the
        kernel (x, the residual or the result not in the plan's layout).
        ``nn.optimize`` replays such calls on the same arrays."""
        plan, ep = self.plan, self.ep
        if plan.layout == "nhwc":                   # computed channels last, as it is
            if residual is not None:
                residual = residual.transpose(0, 2, 3, 1)
                if not residual.flags.c_contiguous:
                    return None
                residual = residual.reshape(-1)
            xl, y = x.transpose(0, 2, 3, 1), out.transpose(0, 3, 1, 2)
            if self.bound is not None:
                return (_plan.run_bound, (plan, self.bound, xl, out,
                                          ep.residual if residual is None else residual), y)
            if residual is not None:
                ep = _epilogue.Epilogue(ep.bias, residual, ep.act)
            return _plan.run, (plan, xl, w, self.p, out, ep), y
        if self.nhwc or not (residual is None or residual.flags.c_contiguous):
            return None
        if residual is not None:
            ep = _epilogue.Epilogue(ep.bias, residual.reshape(-1), ep.act)
        return _plan.run, (plan, x, w, self.p, out, ep), out


def conv2d_input(input_size, weight, grad_output, stride=1, padding=0, dilation=1, groups=1,
                 *, algorithm="auto", backend="auto"):
    """Gradient of ``conv2d`` with respect to its input, as ``torch.nn.grad.conv2d_input``.

    Parameters
    ----------
    input_size : tuple of int
        Shape (N, C, H, W) of the forward pass's input ((C, H, W) if ``grad_output``
        is 3-D).
    weight : ndarray or PreparedWeight, shape (K, C/groups, R, S)
    grad_output : ndarray, shape (N, K, P, Q) or (K, P, Q)
    stride, padding, dilation, groups, algorithm, backend : as in :func:`conv2d`.

    Returns
    -------
    ndarray of shape ``input_size``.

    Notes
    -----
    A non-finite weight makes NaN the pixels its tap reaches, as in PyTorch; direct and
    Winograd compute the gradient as a convolution of zero-padded ``grad_output``, so
    there it also reaches the pixels within the kernel's extent of the border, which the
    reference leaves finite (0 x NaN). im2col and direct's depthwise scatter do not.
    """
    key, y = _remembered_grad("conv2d_input", weight, grad_output, input_size,
                              (stride, padding, dilation, groups, algorithm, backend))
    if y is not None:
        return y
    nhwc = channels_last(np.asarray(grad_output))
    dy, unbatched = _batched("conv2d_input", "grad_output", grad_output)
    w = _weight("conv2d_input", weight)
    dtype = check_dtype("conv2d_input", weight=w, grad_output=dy)
    size = _size("conv2d_input", "input_size", input_size, unbatched)
    p = conv_params("conv2d_input", size, w.shape, stride, padding, dilation, groups)
    check_grad_output("conv2d_input", p, dy.shape)
    if p.empty:
        _plan.check_names("conv2d_input", algorithm, backend)
        return _unbatch(np.zeros(p.input_shape, dtype), unbatched)
    plan = _plan.make("conv2d_input", p, dtype, algorithm, backend)
    _conv_room("conv2d_input", p, dtype, p.input_shape, plan)
    if key is not None and dy is grad_output and w is weight:
        # a later call with an equal key would pass the same arrays to the same kernel
        _remember_grad(key, (plan, p, dtype, nhwc))
    out = _config.empty(p.input_shape, dtype)
    _plan.run(plan, dy, w, p, out)
    return _unbatch(_layout_of(out, nhwc), unbatched)


def conv2d_weight(input, weight_size, grad_output, stride=1, padding=0, dilation=1, groups=1,
                  *, algorithm="auto", backend="auto"):
    """Gradient of ``conv2d`` with respect to its weight, as ``torch.nn.grad.conv2d_weight``.

    Parameters
    ----------
    input : ndarray, shape (N, C, H, W) or (C, H, W)
    weight_size : tuple of int
        Shape (K, C/groups, R, S) of the weight.
    grad_output : ndarray, shape (N, K, P, Q) or (K, P, Q)
    stride, padding, dilation, groups, algorithm, backend : as in :func:`conv2d`.

    Returns
    -------
    ndarray of shape ``weight_size``. The bias gradient is ``grad_output.sum((0, 2, 3))``.
    """
    key, y = _remembered_grad("conv2d_weight", input, grad_output, weight_size,
                              (stride, padding, dilation, groups, algorithm, backend))
    if y is not None:
        return y
    x, unbatched = _batched("conv2d_weight", "input", input)
    dy, dy_unbatched = _batched("conv2d_weight", "grad_output", grad_output)
    if unbatched != dy_unbatched:
        raise ValueError(f"conv2d_weight: input of shape {np.shape(input)} and grad_output of "
                         f"shape {np.shape(grad_output)} must both be 3-D or both 4-D")
    dtype = check_dtype("conv2d_weight", input=x, grad_output=dy)
    size = int_tuple("conv2d_weight", "weight_size", weight_size)
    p = conv_params("conv2d_weight", x.shape, size, stride, padding, dilation, groups)
    check_grad_output("conv2d_weight", p, dy.shape)
    if p.empty:
        _plan.check_names("conv2d_weight", algorithm, backend)
        check_memory("conv2d_weight", ("output", p.weight_shape, dtype.itemsize))
        return np.zeros(p.weight_shape, dtype)
    plan = _plan.make("conv2d_weight", p, dtype, algorithm, backend)
    _conv_room("conv2d_weight", p, dtype, p.weight_shape, plan)
    if key is not None and x is input and dy is grad_output:
        _remember_grad(key, (plan, p, dtype, False))
    out = _config.empty(p.weight_shape, dtype)
    _plan.run(plan, x, dy, p, out)
    return out


def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0,
                     groups=1, dilation=1, *, algorithm="auto", backend="auto"):
    """Transposed convolution, as ``torch.nn.functional.conv_transpose2d``.

    Parameters
    ----------
    input : ndarray, shape (N, C_in, H, W) or (C_in, H, W)
    weight : ndarray or PreparedWeight, shape (C_in, C_out/groups, R, S)
    bias : ndarray, shape (C_out,), optional
    stride, padding, dilation : int or (int, int)
    output_padding : int or (int, int)
        Extra rows/columns at the bottom/right of the output; smaller than the
        stride or the dilation.
    groups : int

    Returns
    -------
    ndarray, shape (N, C_out, H_out, W_out) with
    ``H_out = (H - 1)*stride_h - 2*pad_h + dil_h*(R - 1) + output_padding_h + 1``.

    Notes
    -----
    It is the gradient of ``conv2d`` with respect to its input, computed by the
    ``conv2d_input`` kernels (hence ``algorithm=`` takes those names).
    """
    op = "conv_transpose2d"
    x, unbatched = _batched(op, "input", input)
    w = _weight(op, weight)
    dtype = check_dtype(op, input=x, weight=w, bias=bias)
    p = transpose_params(op, x.shape, w.shape, stride, padding, output_padding, groups,
                         dilation)
    bias = _check_bias(op, bias, p.C, dtype)
    try:               # its kernels are conv2d_input's: errors name both ops
        if p.empty:
            _plan.check_names("conv2d_input", algorithm, backend)
            return _unbatch(np.zeros(p.input_shape, dtype), unbatched)
        plan = _plan.make("conv2d_input", p, dtype, algorithm, backend)
    except ValueError as e:
        raise ValueError(str(e).replace("conv2d_input:", f"{op} (conv2d_input's kernels):", 1)) \
            from None
    _conv_room(op, p, dtype, p.input_shape, plan)
    H, W = x.shape[2:]
    if (p.P, p.Q) != (H, W):
        # output_padding >= stride (allowed when < dilation): the forward conv of the
        # output size has more rows than the input; those rows carry zero gradient.
        x = np.pad(x, ((0, 0), (0, 0), (0, p.P - H), (0, p.Q - W)))
    out = _config.empty(p.input_shape, dtype)
    _plan.run(plan, x, w, p, out)
    if bias is not None:
        out += bias.reshape(1, -1, 1, 1)
    return _unbatch(out, unbatched)


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False, *, algorithm="auto", backend="auto"):
    """2-D max pooling, as ``torch.nn.functional.max_pool2d``.

    Parameters
    ----------
    input : ndarray, shape (N, C, H, W) or (C, H, W)
    kernel_size : int or (int, int)
    stride : int or (int, int), optional
        Defaults to ``kernel_size``.
    padding : int or (int, int)
        Implicit -inf padding, at most half the kernel size.
    dilation : int or (int, int)
    ceil_mode : bool
        Round the output size up; a window must still start inside the input or the
        left padding.
    return_indices : bool
        Also return, for each output, the flat index ``h*W + w`` of the maximum in its
        input plane (int64), the input of :func:`max_pool2d_backward`. Without it the
        kernels compute the values alone (on the Intel Xeon ``rocketlake``, ResNet's
        3x3/2 pooling of 64x112x112: 1.03 -> 0.78 ms on Cython, 3.4 -> 1.9 ms on Numba;
        Cython's, separable at stride 2 since, 0.38 ms).

    Shape
    -----
    ``P = floor((H + 2*pad_h - dil_h*(kernel_h-1) - 1) / stride_h) + 1`` (ceil in ceil mode).

    Notes
    -----
    A NaN in a window makes its output NaN. Ties pick the first maximum in scan order.
    """
    if not return_indices:
        x, unbatched, call = _max_pool_check(input, kernel_size, stride, padding, dilation,
                                             ceil_mode, algorithm, backend)
        if call is None:
            p = pool_params("max_pool2d", x.shape, kernel_size, stride, padding, dilation,
                            ceil_mode)
            return _unbatch(np.zeros(p.output_shape, x.dtype), unbatched)
        return _unbatch(call(x), unbatched)
    # with indices (planes' flat positions, for the backward): computed NCHW
    nhwc = channels_last(np.asarray(input))
    x, unbatched = _batched("max_pool2d", "input", input)
    dtype = check_dtype("max_pool2d", input=x)
    p = pool_params("max_pool2d", x.shape, kernel_size, stride, padding, dilation, ceil_mode)
    if p.empty:
        _plan.check_names("max_pool2d", algorithm, backend)
        out, indices = np.zeros(p.output_shape, dtype), np.zeros(p.output_shape, np.int64)
        return _unbatch(out, unbatched), _unbatch(indices, unbatched)
    plan = _plan.make("max_pool2d", p, dtype, algorithm, backend, "nchw")
    check_memory("max_pool2d", ("output", p.output_shape, dtype.itemsize),
                 ("indices", p.output_shape, 8))
    out = _config.empty(p.output_shape, dtype)
    indices = _config.empty(p.output_shape, np.int64)
    _plan.run(plan, x, p, out, indices)
    return (_unbatch(_layout_of(out, nhwc), unbatched),
            _unbatch(_layout_of(indices, nhwc), unbatched))


def _max_pool_check(input, kernel_size, stride, padding, dilation, ceil_mode,
                    algorithm="auto", backend="auto"):
    """max_pool2d's validation, values only: (x 4-D, whether the caller passed 3-D, the
    :class:`_MaxPoolCall` for it, or None for an empty result)."""
    x, unbatched = _batched("max_pool2d", "input", input, keep_channels_last=True)
    dtype = check_dtype("max_pool2d", input=x)
    p = pool_params("max_pool2d", x.shape, kernel_size, stride, padding, dilation, ceil_mode)
    if p.empty:
        _plan.check_names("max_pool2d", algorithm, backend)
        return x, unbatched, None
    return x, unbatched, _MaxPoolCall(p, dtype, channels_last(x), algorithm, backend)


class _PoolCall:
    """A pooling op's plan for one validated input shape, dtype and layout (``nhwc``),
    made once; ``call(x)`` runs it on such an input (4-D, not empty; the result in x's
    layout). ``nn.optimize``'s pooling steps keep one per input. The kernel takes
    ``(plan, x, *before, out, *after)``."""

    __slots__ = ("plan", "before", "after", "out_shape", "dtype", "nhwc", "settings")

    def __init__(self, op, p, shape, dtype, nhwc, algorithm, backend, before, after):
        self.settings = _plan.settings()
        self.plan = _plan.make(op, p, dtype, algorithm, backend, "nhwc" if nhwc else "nchw")
        N, C, P, Q = shape                                  # the output's
        self.out_shape = (N, P, Q, C) if self.plan.layout == "nhwc" else shape
        self.before, self.after = before, after
        self.dtype, self.nhwc = dtype, nhwc

    def __call__(self, x, out=None):
        """``out``: where the kernel writes (C-contiguous, ``out_shape``), by default a
        new array."""
        if out is None:
            out = _config.empty(self.out_shape, self.dtype)
        if self.plan.layout != "nhwc" and self.nhwc:
            x = _contiguous(self.plan.op, "input", x)
        fn, args, y = self.kernel_call(x, out)
        fn(*args)
        return y if self.plan.layout == "nhwc" else _layout_of(y, self.nhwc)

    def kernel_call(self, x, out):
        """``(fn, args, y)``, or None for x not in the plan's layout (as
        :meth:`_Conv2dCall.kernel_call`)."""
        y = out
        if self.plan.layout == "nhwc":              # computed channels last, as it is
            x, y = x.transpose(0, 2, 3, 1), out.transpose(0, 3, 1, 2)
        if not x.flags.c_contiguous:
            return None
        return _plan.run, (self.plan, x, *self.before, out, *self.after), y


class _MaxPoolCall(_PoolCall):
    """max_pool2d's (values only) :class:`_PoolCall`."""

    __slots__ = ()

    def __init__(self, p, dtype, nhwc, algorithm="auto", backend="auto"):
        check_memory("max_pool2d", ("output", p.output_shape, dtype.itemsize))
        super().__init__("max_pool2d", p, p.output_shape, dtype, nhwc, algorithm, backend,
                         (p,), (None,))


def max_pool2d_backward(grad_output, indices, input_shape, *, algorithm="auto", backend="auto"):
    """Gradient of :func:`max_pool2d` with respect to its input.

    Parameters
    ----------
    grad_output : ndarray, shape (N, C, P, Q) or (C, P, Q)
    indices : ndarray of int, same shape
        As returned by ``max_pool2d(..., return_indices=True)``.
    input_shape : tuple of int
        Shape of the forward pass's input.

    Returns
    -------
    ndarray of shape ``input_shape``: each output gradient added at its index.
    """
    op = "max_pool2d_backward"
    dy, unbatched = _batched(op, "grad_output", grad_output)
    dtype = check_dtype(op, grad_output=dy)
    idx = np.asarray(indices)
    if not np.issubdtype(idx.dtype, np.integer):
        raise TypeError(f"{op}: indices must be integers, got dtype {idx.dtype}")
    if idx.shape != np.shape(grad_output):
        raise ValueError(f"{op}: indices of shape {idx.shape} must match grad_output "
                         f"of shape {np.shape(grad_output)}")
    idx = np.ascontiguousarray(idx.reshape(dy.shape), dtype=np.int64)
    N, C, H, W = _size(op, "input_shape", input_shape, unbatched)
    if min(C, H, W) < 1:
        raise ValueError(f"{op}: input_shape {tuple(input_shape)} has an empty channel, row "
                         f"or column axis; only the batch axis (N) may be 0")
    if (N, C) != dy.shape[:2]:
        raise ValueError(f"{op}: grad_output of shape {np.shape(grad_output)} does not match "
                         f"input_shape {tuple(input_shape)} in batch and channels")
    check_memory(op, ("output", (N, C, H, W), dtype.itemsize))
    if dy.size == 0:
        _plan.check_names("max_pool2d_backward", algorithm, backend)
        return _unbatch(np.zeros((N, C, H, W), dtype), unbatched)
    if idx.min() < 0 or idx.max() >= H * W:
        raise ValueError(f"{op}: indices must lie in [0, H*W) = [0, {H * W}) for input_shape "
                         f"{tuple(input_shape)}, got values in [{idx.min()}, {idx.max()}]")
    # only the plane size (H, W) and the output size (P, Q) matter here
    p = PoolParams(N, C, H, W, 1, 1, 1, 1, 0, 0, 1, 1, dy.shape[2], dy.shape[3])
    plan = _plan.make(op, p, dtype, algorithm, backend)
    out = _config.empty((N, C, H, W), dtype)
    _plan.run(plan, dy, idx, p, out)
    return _unbatch(out, unbatched)


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False,
               count_include_pad=True, divisor_override=None, *, algorithm="auto",
               backend="auto"):
    """2-D average pooling, as ``torch.nn.functional.avg_pool2d``.

    Parameters
    ----------
    input : ndarray, shape (N, C, H, W) or (C, H, W)
    kernel_size : int or (int, int)
    stride : int or (int, int), optional
        Defaults to ``kernel_size``.
    padding : int or (int, int)
        Implicit zero padding, at most half the kernel size.
    ceil_mode : bool
    count_include_pad : bool
        Divide by the window size including padding (but never the ceil-mode
        overhang past the padding), or by the number of input values in it.
    divisor_override : int, optional
        Divide every window's sum by this instead.

    Shape
    -----
    ``P = floor((H + 2*pad_h - kernel_h) / stride_h) + 1`` (ceil in ceil mode).
    """
    nhwc = channels_last(np.asarray(input))
    x, unbatched = _batched("avg_pool2d", "input", input)
    dtype = check_dtype("avg_pool2d", input=x)
    p = pool_params("avg_pool2d", x.shape, kernel_size, stride, padding, 1, ceil_mode)
    cip, div = avg_pool_args("avg_pool2d", count_include_pad, divisor_override)
    if p.empty:
        _plan.check_names("avg_pool2d", algorithm, backend)
        return _unbatch(np.zeros(p.output_shape, dtype), unbatched)
    # kernels take a positive divisor (0: none); a negative one negates the result
    negate, div = div < 0, abs(div)
    plan = _plan.make("avg_pool2d", p, dtype, algorithm, backend)
    check_memory("avg_pool2d", ("output", p.output_shape, dtype.itemsize))
    out = _config.empty(p.output_shape, dtype)
    _plan.run(plan, x, p, cip, div, out)
    if negate:
        np.negative(out, out=out)
    return _unbatch(_layout_of(out, nhwc), unbatched)


def avg_pool2d_backward(grad_output, input_shape, kernel_size, stride=None, padding=0,
                        ceil_mode=False, count_include_pad=True, divisor_override=None, *,
                        algorithm="auto", backend="auto"):
    """Gradient of :func:`avg_pool2d` with respect to its input.

    The pooling arguments are those of the forward call; ``input_shape`` is the
    forward input's shape and ``grad_output`` must have the forward output's shape.
    """
    op = "avg_pool2d_backward"
    dy, unbatched = _batched(op, "grad_output", grad_output)
    dtype = check_dtype(op, grad_output=dy)
    size = _size(op, "input_shape", input_shape, unbatched)
    check_memory(op, ("output", size, dtype.itemsize))
    p = pool_params(op, size, kernel_size, stride, padding, 1, ceil_mode)
    if dy.shape != p.output_shape:
        raise ValueError(f"{op}: grad_output of shape {np.shape(grad_output)} does not match "
                         f"the pooling output shape {p.output_shape} of input_shape {size}")
    cip, div = avg_pool_args(op, count_include_pad, divisor_override)
    if p.empty:
        _plan.check_names("avg_pool2d_backward", algorithm, backend)
        return _unbatch(np.zeros(size, dtype), unbatched)
    negate, div = div < 0, abs(div)        # as in avg_pool2d
    plan = _plan.make(op, p, dtype, algorithm, backend)
    out = _config.empty(size, dtype)
    _plan.run(plan, dy, p, cip, div, out)
    if negate:
        np.negative(out, out=out)
    return _unbatch(out, unbatched)


def adaptive_avg_pool2d(input, output_size, *, algorithm="auto", backend="auto"):
    """Adaptive average pooling, as ``torch.nn.functional.adaptive_avg_pool2d``.

    Output row ``i`` averages input rows ``floor(i*H/P)`` to ``ceil((i+1)*H/P) - 1``;
    likewise columns. ``output_size`` is an int or a pair; ``None`` in it keeps the
    input's size along that axis.
    """
    x, unbatched, call = _adaptive_avg_check(input, output_size, algorithm, backend)
    if call is None:
        size = adaptive_output_size("adaptive_avg_pool2d", x.shape, output_size)
        return _unbatch(np.zeros(x.shape[:2] + size, x.dtype), unbatched)
    return _unbatch(call(x), unbatched)


def _adaptive_avg_check(input, output_size, algorithm="auto", backend="auto"):
    """adaptive_avg_pool2d's validation: (x 4-D, whether the caller passed 3-D, the
    :class:`_AdaptiveAvgCall` for it, or None for an empty result)."""
    op = "adaptive_avg_pool2d"
    x, unbatched = _batched(op, "input", input, keep_channels_last=True)
    dtype = check_dtype(op, input=x)
    P, Q = adaptive_output_size(op, x.shape, output_size)
    check_memory(op, ("output", x.shape[:2] + (P, Q), dtype.itemsize),
                 ("window bounds", (2 * (P + Q),), 8))
    if min(x.shape[:2] + (P, Q)) == 0:
        _plan.check_names(op, algorithm, backend)
        return x, unbatched, None
    return x, unbatched, _AdaptiveAvgCall(x.shape, dtype, (P, Q), channels_last(x), algorithm,
                                          backend)


class _AdaptiveAvgCall(_PoolCall):
    """adaptive_avg_pool2d's :class:`_PoolCall`, its windows found once (a global pool
    after the last convolution took 0.10 ms in MobileNet-v2 through the whole function,
    25 us of it the kernel, AMD EPYC Zen 4)."""

    __slots__ = ()

    def __init__(self, shape, dtype, size, nhwc, algorithm="auto", backend="auto"):
        (N, C, H, W), (P, Q) = shape, size
        windows = adaptive_windows(H, P), adaptive_windows(W, Q)
        super().__init__("adaptive_avg_pool2d", None, (N, C, P, Q), dtype, nhwc, algorithm,
                         backend, windows, ())


def inverted_residual(input, expand_weight, expand_bias, depthwise_weight, depthwise_bias,
                      project_weight, project_bias, stride=1, activation="relu6",
                      residual=False, *, algorithm="auto", backend="auto"):
    """MobileNet-v2's inverted residual block in one call, its three convolutions fused:

    ``h = act(conv2d(input, expand_weight, expand_bias))`` (skipped when
    ``expand_weight`` is None), ``h = act(conv2d(h, depthwise_weight, depthwise_bias,
    stride, padding=R // 2, groups=E))``, ``out = conv2d(h, project_weight,
    project_bias)``, plus ``input`` when ``residual``.

    The kernels (``algorithm="direct"``, both backends, channels last) compute the
    output a band of rows at a time, the band's expanded input and depthwise output
    kept in the thread's cache: the two wide intermediate activations are never
    written to memory in full, as they are by three ``conv2d`` calls (whose results
    these equal: the same sums in the same order). ``nn.optimize`` runs MobileNet-v2's
    blocks through it. Inference only: it has no backward (training runs the block's
    layers, ``fastconv.nn.models.InvertedResidual``).

    Parameters
    ----------
    input : ndarray, shape (N, C, H, W) or (C, H, W); channels last or not
    expand_weight : ndarray or PreparedWeight, shape (E, C, 1, 1), or None
    expand_bias : ndarray, shape (E,), or None (None without an expansion)
    depthwise_weight : ndarray or PreparedWeight, shape (E, 1, R, R), R odd
    depthwise_bias : ndarray, shape (E,), or None
    project_weight : ndarray or PreparedWeight, shape (K, E, 1, 1)
    project_bias : ndarray, shape (K,), or None
    stride : int
        The depthwise convolution's (both axes).
    activation : 'relu6', 'relu' or None
        After the expansion and after the depthwise convolution (not the projection).
    residual : bool
        Add the input to the output (stride 1, K = C only).
    algorithm, backend : str
        A pair from ``fastconv.algorithms("inverted_residual")``, or ``"auto"``.

    Returns
    -------
    ndarray, shape (N, K, P, Q) (or (K, P, Q) for 3-D input), in the input's layout
    and dtype; ``P = (H - 1) // stride + 1``, likewise Q.

    Notes
    -----
    NaN and Inf propagate as in PyTorch. The fused kernels skip the depthwise taps
    outside the input, where PyTorch multiplies the zero padding (``0 x Inf`` is NaN):
    with a non-finite depthwise weight they run the block as its three convolutions
    instead, the depthwise one on the zero-padded expanded input.
    """
    x, unbatched, nhwc, weights, biases, dtype, p = _block_check(
        input, expand_weight, expand_bias, depthwise_weight, depthwise_bias, project_weight,
        project_bias, stride, activation, residual)
    if p.empty:
        _plan.check_names("inverted_residual", algorithm, backend)
        return _unbatch(np.zeros(p.output_shape, dtype), unbatched)
    call = _BlockCall(p, dtype, biases, activation, nhwc, algorithm, backend)
    return _unbatch(call(x, weights), unbatched)


def _block_check(input, expand_weight, expand_bias, depthwise_weight, depthwise_bias,
                 project_weight, project_bias, stride, activation, residual):
    """inverted_residual's validation: (x 4-D, whether the caller passed 3-D, whether x
    is channels-last, the weights' arrays (expansion or None, depthwise, projection),
    their biases, dtype, geometry)."""
    op = "inverted_residual"
    x, unbatched = _batched(op, "input", input, keep_channels_last=True)
    nhwc = channels_last(x)
    if expand_weight is None and expand_bias is not None:
        raise ValueError(f"{op}: expand_bias given without expand_weight")
    we = None if expand_weight is None else _weight(op, expand_weight)
    wd, wp = _weight(op, depthwise_weight), _weight(op, project_weight)
    dtype = check_dtype(op, input=x, expand_weight=we, expand_bias=expand_bias,
                        depthwise_weight=wd, depthwise_bias=depthwise_bias,
                        project_weight=wp, project_bias=project_bias)
    p = block_params(op, x.shape, None if we is None else we.shape, wd.shape, wp.shape,
                     stride, residual)
    if not (activation is None or (isinstance(activation, str)
                                   and activation in _epilogue.ACTIVATIONS)):
        raise ValueError(f"{op}: activation must be None, 'relu' or 'relu6', "
                         f"got {activation!r}")
    biases = (_check_bias(op, expand_bias, p.E, dtype), _check_bias(op, depthwise_bias, p.E, dtype),
              _check_bias(op, project_bias, p.K, dtype))
    return x, unbatched, nhwc, (we, wd, wp), biases, dtype, p


class _BlockCall:
    """inverted_residual's plan and memory check for one validated geometry ``p``,
    ``dtype``, biases, activation and input layout, made once (as :class:`_Conv2dCall`
    is for conv2d); ``call(x, weights)`` runs it (the result 4-D, in x's layout).
    ``nn.optimize`` keeps one per input shape, bound to its weights (:meth:`bind`)."""

    __slots__ = ("plan", "p", "dtype", "nhwc", "out_shape", "biases", "act", "settings",
                 "bound")

    def __init__(self, p, dtype, biases, activation, nhwc, algorithm="auto", backend="auto"):
        op = "inverted_residual"
        self.settings = _plan.settings()
        self.plan = _plan.make(op, p, dtype, algorithm, backend, "nhwc")
        check_memory(op, ("output", p.output_shape, dtype.itemsize),
                     *([("the reference's float64 expanded input", (p.N, p.E, p.H, p.W), 8)]
                       if self.plan.algorithm == "reference" else []))
        self.p, self.dtype, self.nhwc = p, dtype, nhwc
        self.out_shape = ((p.N, p.P, p.Q, p.K) if self.plan.layout == "nhwc"
                          else p.output_shape)
        empty = _epilogue.none(dtype).bias
        self.biases = tuple(empty if b is None else np.ascontiguousarray(b, dtype)
                            for b in biases)
        self.act = _epilogue.ACTIVATIONS[activation]
        self.bound = None

    def bind(self, weights):
        """Bind the kernel to ``weights`` (passed, never modified, to every call), where
        its backend has a bound form (the Cython kernel's ``bind_inverted_residual``)."""
        if self.plan.layout == "nhwc":
            _dispatch.kernel(self.plan.op, self.plan.algorithm, self.plan.backend)
            bind = _dispatch.binder(self.plan.op, self.plan.algorithm, self.plan.backend)
            self.bound = None if bind is None else bind(self.plan, weights, self.biases,
                                                        self.p, self.act)

    def __call__(self, x, weights, out=None):
        """``out``: where the kernel writes (C-contiguous, ``out_shape``, overlapping no
        input), by default a new array."""
        op, plan = "inverted_residual", self.plan
        if out is None:
            out = _config.empty(self.out_shape, self.dtype)
        if plan.layout == "nhwc" and not self.nhwc:   # the kernels compute channels last
            fn, args, y = self.kernel_call(to_channels_last(x), weights, out)
            fn(*args)
            return _contiguous(op, "output", y)
        if plan.layout != "nhwc" and self.nhwc:
            x = _contiguous(op, "input", x)
        fn, args, y = self.kernel_call(x, weights, out)
        fn(*args)
        return _layout_of(y, self.nhwc)

    def kernel_call(self, x, weights, out):
        """``(fn, args, y)``: the kernel call ``fn(*args)`` that computes this call on
        ``x`` into ``out``, and ``y``, the result, a view of ``out``; None for x not in
        the plan's layout (as :meth:`_Conv2dCall.kernel_call`)."""
        plan = self.plan
        if plan.layout == "nhwc":
            xl, y = x.transpose(0, 2, 3, 1), out.transpose(0, 3, 1, 2)
            if not xl.flags.c_contiguous:
                return None
            if self.bound is not None:
                return _plan.run_bound, (plan, self.bound, xl, out), y
            return _plan.run, (plan, xl, weights, self.biases, self.p, out, self.act), y
        if not x.flags.c_contiguous:
            return None
        return _plan.run, (plan, x, weights, self.biases, self.p, out, self.act), out
