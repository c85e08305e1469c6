"""Geometry of convolution and pooling: notation, parameters, output sizes, checks.

Notation (used everywhere in fastconv)::

    input   (N, C, H, W)        batch, input channels, height, width
    weight  (K, C/groups, R, S) output channels, input channels per group, kernel h, w
    output  (N, K, P, Q)        batch, output channels, output height, width

Stride, padding and dilation are ``(h, w)`` pairs. Padding is stored per side
(``pad_top``, ``pad_bottom``, ``pad_left``, ``pad_right``) because ``padding='same'``
with an even effective kernel pads one more row/column at the bottom/right, as
PyTorch does. Kernels only need the top/left offsets and the output size:

    input row  h = p * stride_h - pad_top  + r * dil_h
    input col  w = q * stride_w - pad_left + s * dil_w
    P = floor((H + pad_top + pad_bottom - dil_h * (R - 1) - 1) / stride_h) + 1

Arguments take the forms PyTorch takes: a pair is an int, a 1-tuple or a 2-tuple (or
list) of ints (NumPy integers too, never bools); pooling's ``stride`` may be ``None``
or ``()`` for the kernel size. Only the batch axis may be empty (``N = 0``), and a
convolution's channel axis (``C = 0``, weight ``(K, 0, R, S)``), as in PyTorch: the
result is then empty (PyTorch's shape) and no kernel runs (``ConvParams.empty``,
``PoolParams.empty``; ``fastconv.functional`` returns before picking a kernel).

Every check raises ``ValueError``/``TypeError`` with a message that names the op and
the shapes or values involved. Kernels never validate: only what passed these
checks reaches them. One more check runs after them, before anything is allocated:
:func:`check_memory` raises ``MemoryError`` (naming the op, the shapes and the bytes)
when a call's output and workspace cannot fit in the memory available, instead of
letting an overcommitted allocation page in until the OOM killer ends the process.
"""
from __future__ import annotations

import functools
import itertools
import math
import operator
import os
from dataclasses import dataclass, replace

import numpy as np

SUPPORTED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _int(value):
    """``value`` as an int if it is an integer (Python's, NumPy's, anything with
    ``__index__``) but not a bool; else None."""
    if isinstance(value, (bool, np.bool_)):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def int_tuple(op, name, value):
    """A size argument (``input_size``, ``weight_size``, ``input_shape``: a tuple, list
    or 1-D array of ints) as a tuple of ints; TypeError naming ``op`` otherwise."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__") or \
            (isinstance(value, np.ndarray) and value.ndim != 1):
        raise TypeError(f"{op}: {name} must be a tuple of ints, got {value!r}")
    out = tuple(_int(d) for d in value)
    if None in out:
        raise TypeError(f"{op}: {name} must be a tuple of ints, got {value!r}")
    return out


def _int64(op, name, value, given):
    """``value``, unless it does not fit the kernels' 64-bit integers (ValueError)."""
    if not -2**63 <= value < 2**63:
        raise ValueError(f"{op}: {name} must fit in a 64-bit integer, got {given!r}")
    return value


def pair(value, name, op):
    """Normalise an int, a 1-tuple or a pair of ints to a tuple ``(h, w)``, as PyTorch
    reads them (a 1-tuple ``(v,)`` means ``(v, v)``)."""
    single = _int(value)
    if single is not None:
        _int64(op, name, single, value)
        return (single, single)
    if isinstance(value, (tuple, list)):
        if len(value) not in (1, 2):
            raise ValueError(f"{op}: {name} must be an int or a tuple of 1 or 2 ints, "
                             f"got {value!r} of length {len(value)}")
        items = [_int(v) for v in value]
        if None not in items:
            for v in items:
                _int64(op, name, v, value)
            return (items[0], items[-1])
    raise TypeError(f"{op}: {name} must be an int or a tuple of 1 or 2 ints, got {value!r}")


def flag(value, name, op):
    """A bool argument (``ceil_mode``, ``count_include_pad``): PyTorch takes no ints."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{op}: {name} must be True or False, got {value!r}")
    return bool(value)


def check_dtype(op, **arrays):
    """All arrays share one supported floating dtype; return it."""
    dtype = None
    for name, a in arrays.items():
        if a is None:
            continue
        dt = a.dtype if type(a) is np.ndarray else np.asarray(a).dtype
        if dt not in SUPPORTED_DTYPES:
            raise TypeError(
                f"{op}: {name} has dtype {dt}, but only float32 and float64 are supported; "
                f"cast it first, e.g. {name}.astype(numpy.float32)"
            )
        if dtype is None:
            dtype = dt
        elif dt != dtype:
            given = ", ".join(f"{n} {np.asarray(a).dtype}" for n, a in arrays.items()
                              if a is not None)
            raise TypeError(
                f"{op}: arrays must share one dtype, got {given}; cast them with .astype(...)"
            )
    return dtype


def out_size(size, pad_total, kernel, stride, dilation):
    """Convolution output size along one axis (floor mode)."""
    return (size + pad_total - dilation * (kernel - 1) - 1) // stride + 1


@dataclass(frozen=True)
class ConvParams:
    """Normalised geometry of one 2-D convolution (see the module docstring)."""

    N: int
    C: int
    H: int
    W: int
    K: int
    R: int
    S: int
    groups: int
    stride_h: int
    stride_w: int
    pad_top: int
    pad_bottom: int
    pad_left: int
    pad_right: int
    dil_h: int
    dil_w: int
    P: int
    Q: int

    @property
    def input_shape(self):
        return (self.N, self.C, self.H, self.W)

    @property
    def weight_shape(self):
        return (self.K, self.C // self.groups, self.R, self.S)

    @property
    def output_shape(self):
        # PyTorch: an input without channels gives an output without channels
        return (self.N, self.K if self.C else 0, self.P, self.Q)

    @property
    def empty(self):
        """No images or no input channels: the result is empty (the weight gradient
        zero) and no kernel may run."""
        return self.N == 0 or self.C == 0

    @property
    def padded(self):
        """Whether any side is padded."""
        return bool(self.pad_top or self.pad_bottom or self.pad_left or self.pad_right)

    @property
    def pointwise(self):
        """1x1 kernel, stride 1, no padding: the input planes already are the patch
        matrix (dilation is then irrelevant)."""
        return self.R == self.S == self.stride_h == self.stride_w == 1 and not self.padded

    @property
    def flops(self):
        """Multiply-adds x 2 of the forward pass (also of each backward pass)."""
        return 2 * self.N * self.K * self.P * self.Q * (self.C // self.groups) * self.R * self.S

    def transposed(self):
        """A :attr:`pointwise` layer's geometry with C and K swapped: its input gradient
        is the forward of this geometry on dy, with the weight read transposed."""
        return replace(self, C=self.K, K=self.C)

    def as_tuple(self):
        """The integers kernels take, in one fixed order (see ``kernel_args``)."""
        return (self.N, self.C, self.H, self.W, self.K, self.R, self.S, self.groups,
                self.stride_h, self.stride_w, self.pad_top, self.pad_left,
                self.dil_h, self.dil_w, self.P, self.Q)


def kernel_blocks(p: ConvParams):
    """(rows, columns) of 3x3 blocks that tile the kernel of ``p`` zero-padded to a
    multiple of 3 (bottom and right): (1, 1) for 3x3, (2, 2) for 5x5 (6x6)."""
    return -(-p.R // 3), -(-p.S // 3)


def blocked_params(p: ConvParams):
    """The 3x3 convolution that computes the stride-1, undilated, one-group ``p`` from
    its kernel's 3x3 blocks (:func:`kernel_blocks`): block (i, j) reads the input
    shifted by (3i, 3j) from the padded origin, so the input of block ``b = i*bs + j``
    is channels ``b*C ..`` of a stacked input of ``P + 2`` x ``Q + 2`` pixels (no
    padding, zeros where the shift leaves x), and the output is ``p``'s:

        stacked[n, b*C + c, u, v] = x[n, c, u + 3i - pad_top, v + 3j - pad_left]
        y = conv3x3(stacked, weight blocks stacked the same way)
    """
    br, bs = kernel_blocks(p)
    return ConvParams(p.N, p.C * br * bs, p.P + 2, p.Q + 2, p.K, 3, 3, 1, 1, 1, 0, 0, 0, 0,
                      1, 1, p.P, p.Q)


def _shape(a):
    return tuple(int(d) for d in a)


def _hashable(value):
    return tuple(value) if isinstance(value, list) else value


def _typed(value):
    """A memo key that tells apart what Python counts as equal (``2``, ``2.0``,
    ``True``): only one of them may be a valid argument."""
    kind = type(value)
    if kind is int or kind is str or value is None:        # the common case, bare
        return value
    if kind is tuple or kind is list:
        if kind is tuple:
            for v in value:
                if type(v) is not int:
                    break
            else:
                return value                # a shape: bare too (no pair holds a type)
        return kind, tuple(map(_typed, value))
    return kind, value


MEMO_SIZE = 4096


def _memoised(check):
    """Geometry checks are pure functions of small arguments: remember up to
    ``MEMO_SIZE`` results (training calls the same shapes every step; a full memo
    starts over), keyed by the arguments' types as well as their values. Errors are
    not remembered; unhashable arguments skip the memo."""
    memo = {}

    @functools.wraps(check)
    def front(op, *args, **kwargs):
        key = (op, _typed(args), _typed(tuple(sorted(kwargs.items()))) if kwargs else ())
        try:
            return memo[key]
        except KeyError:
            hashable = True
        except TypeError:
            hashable = False
        result = check(op, *map(_hashable, args), **{k: _hashable(v) for k, v in kwargs.items()})
        if hashable:
            if len(memo) >= MEMO_SIZE:
                memo.clear()
            memo[key] = result
        return result

    front.cache_clear = memo.clear
    return front


@_memoised
def _check_indexable(op, what, shape):
    """ValueError naming ``op`` when an array of ``shape`` could not exist in NumPy even
    empty: its nonzero sides multiply past what an index reaches (float64 elements; a
    zero batch with a huge plane, say)."""
    if math.prod(max(d, 1) for d in shape) * 8 >= 2**63:
        raise ValueError(f"{op}: the {what} would have shape {tuple(shape)}, more elements "
                         f"than NumPy can index; check the strides, paddings and sizes")


@_memoised
def conv_params(op, input_shape, weight_shape, stride=1, padding=0, dilation=1, groups=1):
    """Validate a convolution's arguments and return its :class:`ConvParams`.

    ``input_shape`` is 4-D ``(N, C, H, W)``; ``weight_shape`` is ``(K, C/groups, R, S)``.
    ``padding`` is an int, a 1-tuple or pair, ``'same'`` or ``'valid'``. The same check
    serves the forward pass and both backward passes. ``N`` and ``C`` may be 0 (then
    ``p.empty``: see :attr:`ConvParams.empty`), as in PyTorch; no other axis may.
    """
    input_shape, weight_shape = _shape(input_shape), _shape(weight_shape)
    if len(input_shape) != 4:
        raise ValueError(
            f"{op}: expected input of shape (N, C, H, W) or (C, H, W), got shape {input_shape}"
        )
    if len(weight_shape) != 4:
        raise ValueError(
            f"{op}: expected weight of shape (K, C/groups, R, S), got shape {weight_shape}"
        )
    g = _int(groups)
    if g is None:
        raise TypeError(f"{op}: groups must be an int, got {groups!r}")
    if g < 1:
        raise ValueError(f"{op}: groups must be a positive int, got {groups!r}")
    groups = _int64(op, "groups", g, groups)
    if min(input_shape + weight_shape) < 0:
        raise ValueError(f"{op}: negative size in input shape {input_shape} or weight shape "
                         f"{weight_shape}")
    N, C, H, W = input_shape
    K, Cg, R, S = weight_shape
    if H < 1 or W < 1:
        raise ValueError(
            f"{op}: input of shape {input_shape} has no rows or no columns; only the batch "
            f"(N) and channel (C) axes may be 0"
        )
    if K < 1:
        raise ValueError(f"{op}: weight of shape {weight_shape} has no output channels (K=0)")
    if R < 1 or S < 1:
        raise ValueError(
            f"{op}: weight of shape {weight_shape} has an empty kernel ({R}x{S}); the kernel "
            f"size must be positive"
        )
    if K % groups:
        raise ValueError(
            f"{op}: weight of shape {weight_shape} has K={K} output channels, "
            f"which is not divisible by groups={groups}"
        )
    if Cg * groups != C:
        raise ValueError(
            f"{op}: weight of shape {weight_shape} expects input with {Cg * groups} channels "
            f"(groups={groups}), got input of shape {input_shape}"
        )
    sh, sw = pair(stride, "stride", op)
    dh, dw = pair(dilation, "dilation", op)
    if sh < 1 or sw < 1:
        raise ValueError(f"{op}: stride must be positive, got stride={stride!r}")
    if dh < 1 or dw < 1:
        raise ValueError(f"{op}: dilation must be positive, got dilation={dilation!r}")
    if isinstance(padding, str):
        if padding == "valid":
            pt = pb = pl = pr = 0
        elif padding == "same":
            if (sh, sw) != (1, 1):
                raise ValueError(
                    f"{op}: padding='same' is not supported for strided convolutions, "
                    f"got stride={stride!r}"
                )
            # total padding d*(k-1); the odd extra row/column goes at the bottom/right
            th, tw = dh * (R - 1), dw * (S - 1)
            pt, pl = th // 2, tw // 2
            pb, pr = th - pt, tw - pl
        else:
            raise ValueError(
                f"{op}: padding must be an int, a tuple of 1 or 2 ints, 'same' or 'valid', "
                f"got {padding!r}"
            )
    else:
        ph, pw = pair(padding, "padding", op)
        if ph < 0 or pw < 0:
            raise ValueError(f"{op}: padding must be non-negative, got padding={padding!r}")
        pt = pb = ph
        pl = pr = pw
    P = out_size(H, pt + pb, R, sh, dh)
    Q = out_size(W, pl + pr, S, sw, dw)
    if P < 1 or Q < 1:
        raise ValueError(
            f"{op}: output would be {P}x{Q}, which is empty: input of shape {input_shape}, "
            f"padded by ({pt}+{pb}, {pl}+{pr}), is smaller than the dilated kernel "
            f"({dh * (R - 1) + 1}x{dw * (S - 1) + 1}) of weight {weight_shape}"
        )
    # a stride longer than the padded input gives one output row (column), as a stride
    # of the padded extent does: clamped to that (but not below 2: a stride-2 layer keeps
    # its stride-2 plan), so that no kernel sizes a buffer or a loop by it (the input
    # gradient's stride phases)
    sh, sw = min(sh, max(2, H + pt + pb)), min(sw, max(2, W + pl + pr))
    params = ConvParams(N, C, H, W, K, R, S, groups, sh, sw, pt, pb, pl, pr, dh, dw, P, Q)
    for what in ("input", "output"):
        _check_indexable(op, what, getattr(params, what + "_shape"))
    return params


def check_grad_output(op, p: ConvParams, grad_output_shape):
    """The gradient of the output must have the output's shape."""
    if _shape(grad_output_shape) != p.output_shape:
        raise ValueError(
            f"{op}: grad_output of shape {_shape(grad_output_shape)} does not match the "
            f"output shape {p.output_shape} of input {p.input_shape} and weight {p.weight_shape}"
        )


#: the activations conv2d's fused epilogue applies (``activation=``)
ACTIVATIONS = (None, "relu", "relu6")


def check_epilogue(op, p: ConvParams, residual, activation, unbatched=False):
    """Validate conv2d's ``activation=`` and the shape of ``residual=`` (the output's,
    (N, K, P, Q), or (K, P, Q) for a 3-D input; its dtype is checked with the other
    arrays'); return the residual as a 4-D array, or None."""
    if not (activation is None or (isinstance(activation, str) and activation in ACTIVATIONS)):
        raise ValueError(f"{op}: activation must be None, 'relu' or 'relu6', got {activation!r}")
    if residual is None:
        return None
    residual = np.asarray(residual)
    want = p.output_shape[1:] if unbatched else p.output_shape
    if residual.shape != want:
        raise ValueError(
            f"{op}: residual of shape {residual.shape} does not match the output shape "
            f"{want} of input {p.input_shape[1:] if unbatched else p.input_shape} and "
            f"weight {p.weight_shape}; it is added to the output, so it must have its shape")
    return residual[None] if unbatched else residual


@dataclass(frozen=True)
class BlockParams:
    """Normalised geometry of an inverted residual block (``fastconv.inverted_residual``,
    MobileNet-v2's): input (N, C, H, W); a 1x1 expansion to E channels (``expand``
    False: none, E = C); an R x R depthwise convolution, stride ``stride``, padding
    R // 2, output (N, E, P, Q); a 1x1 projection to K channels; the input added to
    the result when ``residual`` (stride 1, K = C)."""

    N: int
    C: int
    H: int
    W: int
    E: int
    K: int
    R: int
    stride: int
    P: int
    Q: int
    expand: bool
    residual: bool

    @property
    def pad(self):
        return self.R // 2

    @property
    def input_shape(self):
        return (self.N, self.C, self.H, self.W)

    @property
    def output_shape(self):
        return (self.N, self.K, self.P, self.Q)

    @property
    def empty(self):
        """No images: the result is empty and no kernel may run."""
        return self.N == 0

    def convs(self):
        """The block's convolutions' :class:`ConvParams` in order (expansion, if any;
        depthwise; projection)."""
        N, C, H, W, E = self.N, self.C, self.H, self.W, self.E
        s, pad = self.stride, self.pad
        dw = ConvParams(N, E, H, W, E, self.R, self.R, E, s, s, pad, pad, pad, pad, 1, 1,
                        self.P, self.Q)
        project = ConvParams(N, E, self.P, self.Q, self.K, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1,
                             self.P, self.Q)
        if not self.expand:
            return (dw, project)
        return (ConvParams(N, C, H, W, E, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, H, W), dw, project)


@_memoised
def block_params(op, input_shape, expand_shape, depthwise_shape, project_shape, stride=1,
                 residual=False):
    """Validate an inverted residual block's shapes and return its :class:`BlockParams`:
    input (N, C, H, W); expansion weight (E, C, 1, 1) or None; depthwise weight
    (E, 1, R, R), R odd; projection weight (K, E, 1, 1); ``residual`` only where the
    output has the input's shape (stride 1, K = C)."""
    input_shape = _shape(input_shape)
    if len(input_shape) != 4:
        raise ValueError(f"{op}: expected input of shape (N, C, H, W) or (C, H, W), "
                         f"got shape {input_shape}")
    N, C, H, W = input_shape
    if N < 0 or min(C, H, W) < 1:
        raise ValueError(f"{op}: input of shape {input_shape} has an empty channel, row or "
                         f"column axis; only the batch axis (N) may be 0")
    depthwise_shape, project_shape = _shape(depthwise_shape), _shape(project_shape)
    if len(depthwise_shape) != 4 or depthwise_shape[1] != 1 or depthwise_shape[0] < 1:
        raise ValueError(f"{op}: expected depthwise_weight of shape (E, 1, R, R), got "
                         f"{depthwise_shape}")
    E, _, R, S = depthwise_shape
    if R != S or R % 2 == 0:
        raise ValueError(f"{op}: depthwise_weight of shape {depthwise_shape} must be square "
                         f"and odd (R x R, padding R // 2), got {R}x{S}")
    if expand_shape is None:
        if E != C:
            raise ValueError(f"{op}: without an expansion, depthwise_weight {depthwise_shape} "
                             f"must have the input's C={C} channels (input {input_shape})")
    elif _shape(expand_shape) != (E, C, 1, 1):
        raise ValueError(f"{op}: expand_weight of shape {_shape(expand_shape)} does not "
                         f"match input {input_shape} and depthwise_weight {depthwise_shape}; "
                         f"expected ({E}, {C}, 1, 1)")
    if len(project_shape) != 4 or project_shape[1:] != (E, 1, 1) or project_shape[0] < 1:
        raise ValueError(f"{op}: project_weight of shape {project_shape} does not match "
                         f"depthwise_weight {depthwise_shape}; expected (K, {E}, 1, 1)")
    K = project_shape[0]
    given, stride = stride, _int(stride)
    if stride is None or stride < 1:
        raise ValueError(f"{op}: stride must be a positive int, got {given!r}")
    _int64(op, "stride", stride, given)
    residual = flag(residual, "residual", op)
    P, Q = out_size(H, 2 * (R // 2), R, stride, 1), out_size(W, 2 * (R // 2), R, stride, 1)
    if residual and (P, Q, K) != (H, W, C):
        raise ValueError(f"{op}: residual=True adds the input {input_shape} to the output "
                         f"{(N, K, P, Q)}: it needs stride 1 and project_weight's K equal "
                         f"to C")
    params = BlockParams(N, C, H, W, E, K, R, stride, P, Q, expand_shape is not None,
                         residual)
    for what, shape in (("input", input_shape), ("expanded input", (N, E, H, W)),
                        ("output", params.output_shape)):
        _check_indexable(op, what, shape)
    return params


@dataclass(frozen=True)
class PoolParams:
    """Normalised geometry of one 2-D pooling window sweep."""

    N: int
    C: int
    H: int
    W: int
    kernel_h: int
    kernel_w: int
    stride_h: int
    stride_w: int
    pad_h: int
    pad_w: int
    dil_h: int
    dil_w: int
    P: int
    Q: int

    @property
    def input_shape(self):
        return (self.N, self.C, self.H, self.W)

    @property
    def output_shape(self):
        return (self.N, self.C, self.P, self.Q)

    @property
    def empty(self):
        """No images: the result is empty and no kernel may run."""
        return self.N == 0

    def as_tuple(self):
        return (self.N, self.C, self.H, self.W, self.kernel_h, self.kernel_w,
                self.stride_h, self.stride_w, self.pad_h, self.pad_w,
                self.dil_h, self.dil_w, self.P, self.Q)


def pool_out_size(size, kernel, stride, pad, dilation, ceil_mode):
    """PyTorch's pooling output size: floor or ceil, and the last window must start
    inside the input or the left padding."""
    span = size + 2 * pad - dilation * (kernel - 1) - 1
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _window_reads_input(start, k, d, size):
    """Whether a pooling window whose tap ``a`` reads ``start + a*d`` (``a < k``) reads
    some position in ``[0, size)``: its first tap at or after 0 is inside (exact in
    Python integers, without listing the taps: kernel sizes may be huge)."""
    a = max(0, -(start // d))                   # smallest a with start + a*d >= 0
    return a < k and start + a * d < size


@_memoised
def pool_params(op, input_shape, kernel_size, stride=None, padding=0, dilation=1,
                ceil_mode=False):
    """Validate a pooling's arguments and return its :class:`PoolParams`.

    ``stride`` ``None`` or ``()`` means the kernel size, as in PyTorch. The batch axis
    may be empty (``N = 0``: ``p.empty``); the others may not.
    """
    input_shape = _shape(input_shape)
    if len(input_shape) != 4:
        raise ValueError(
            f"{op}: expected input of shape (N, C, H, W) or (C, H, W), got shape {input_shape}"
        )
    if min(input_shape[1:]) < 1 or input_shape[0] < 0:
        raise ValueError(
            f"{op}: input of shape {input_shape} has an empty channel, row or column axis; "
            f"only the batch axis (N) may be 0"
        )
    N, C, H, W = input_shape
    kh, kw = pair(kernel_size, "kernel_size", op)
    if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0):
        stride = (kh, kw)
    sh, sw = pair(stride, "stride", op)
    ph, pw = pair(padding, "padding", op)
    dh, dw = pair(dilation, "dilation", op)
    ceil_mode = flag(ceil_mode, "ceil_mode", op)
    if kh < 1 or kw < 1:
        raise ValueError(f"{op}: kernel_size must be positive, got kernel_size={kernel_size!r}")
    if sh < 1 or sw < 1:
        raise ValueError(f"{op}: stride must be positive, got stride={stride!r}")
    if dh < 1 or dw < 1:
        raise ValueError(f"{op}: dilation must be positive, got dilation={dilation!r}")
    if ph < 0 or pw < 0:
        raise ValueError(f"{op}: padding must be non-negative, got padding={padding!r}")
    if ph > kh // 2 or pw > kw // 2:
        raise ValueError(
            f"{op}: padding must be at most half the kernel size, got padding={(ph, pw)} "
            f"for kernel_size={(kh, kw)}"
        )
    P = pool_out_size(H, kh, sh, ph, dh, ceil_mode)
    Q = pool_out_size(W, kw, sw, pw, dw, ceil_mode)
    if P < 1 or Q < 1:
        raise ValueError(
            f"{op}: output would be {P}x{Q}, which is empty: input of shape {input_shape} "
            f"with kernel_size={(kh, kw)}, stride={(sh, sw)}, padding={(ph, pw)}, "
            f"dilation={(dh, dw)}"
        )
    for axis, size, k, s, pad, d, out in (("rows", H, kh, sh, ph, dh, P), ("columns", W, kw, sw, pw, dw, Q)):
        # a window starting inside the input reads it: only those starting in the
        # padding (at most pad/stride + 1 on each side) need a look
        edge = itertools.chain(range(min(out, -(-pad // s))),
                               range(max(-(-pad // s), -(-(size + pad) // s)), out))
        if not all(_window_reads_input(i * s - pad, k, d, size) for i in edge):
            raise ValueError(
                f"{op}: a pooling window covers only padding along the {axis}: input of shape "
                f"{input_shape} with kernel_size={(kh, kw)}, stride={(sh, sw)}, "
                f"padding={(ph, pw)}, dilation={(dh, dw)}; use less padding or dilation")
    params = PoolParams(N, C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, P, Q)
    _check_indexable(op, "output", params.output_shape)
    return params


def avg_pool_args(op, count_include_pad, divisor_override):
    """``(count_include_pad, divisor)`` of an average pooling: ``divisor`` is 0 for
    none, else a nonzero int, negative ones too (PyTorch divides by them)."""
    count_include_pad = flag(count_include_pad, "count_include_pad", op)
    if divisor_override is None:
        return count_include_pad, 0
    div = _int(divisor_override)
    if div is None:
        raise TypeError(f"{op}: divisor_override must be an int or None, "
                        f"got {divisor_override!r}")
    if div == 0:
        raise ValueError(f"{op}: divisor_override must not be zero")
    # the kernels divide by |divisor| (a 64-bit integer) and negate after: -2**63 has none
    if div == -2**63:
        raise ValueError(f"{op}: divisor_override must be above -2**63 (its magnitude a "
                         f"64-bit integer), got {divisor_override!r}")
    return count_include_pad, _int64(op, "divisor_override", div, divisor_override)


def adaptive_output_size(op, input_shape, output_size):
    """Validate an adaptive pooling's arguments; return its output size ``(P, Q)``.

    ``output_size`` is an int or a pair of ints, where ``None`` keeps the input's size
    along that axis (a 1-tuple is refused, as in PyTorch). 0 gives an empty output; so
    do ``N = 0`` and ``C = 0``; the input must have rows and columns.
    """
    input_shape = _shape(input_shape)
    if len(input_shape) != 4:
        raise ValueError(
            f"{op}: expected input of shape (N, C, H, W) or (C, H, W), got shape {input_shape}"
        )
    if input_shape[2] < 1 or input_shape[3] < 1:
        raise ValueError(
            f"{op}: input of shape {input_shape} has no rows or no columns; only the batch "
            f"(N) and channel (C) axes may be 0"
        )
    single = _int(output_size)
    if single is not None:
        sizes = (single, single)
    elif isinstance(output_size, (tuple, list)) and len(output_size) == 2:
        sizes = tuple(input_shape[2 + i] if v is None else _int(v)
                      for i, v in enumerate(output_size))
        if None in sizes:
            raise TypeError(f"{op}: output_size must be an int or a pair of ints or None, "
                            f"got {output_size!r}")
    elif isinstance(output_size, (tuple, list)):
        raise ValueError(f"{op}: output_size must be an int or a pair of 2 values, got "
                         f"{output_size!r} of length {len(output_size)}")
    else:
        raise TypeError(f"{op}: output_size must be an int or a pair of ints or None, "
                        f"got {output_size!r}")
    if min(sizes) < 0:
        raise ValueError(f"{op}: output_size must be non-negative, got {output_size!r}")
    return sizes


@functools.lru_cache(maxsize=256)
def adaptive_windows(size, out):
    """Start and end (exclusive) of each adaptive pooling window along one axis:
    ``start = floor(i * size / out)``, ``end = ceil((i + 1) * size / out)``; int64,
    read-only, made once per (size, out)."""
    i = np.arange(out, dtype=np.int64)
    starts = (i * size) // out
    ends = -((-(i + 1) * size) // out)
    starts.flags.writeable = ends.flags.writeable = False
    return starts, ends


def transpose_output_size(op, size, kernel, stride, pad, dilation, output_padding):
    """Output size of a transposed convolution along one axis."""
    out = (size - 1) * stride - 2 * pad + dilation * (kernel - 1) + output_padding + 1
    if out < 1:
        raise ValueError(f"{op}: output size would be {out}, which is empty")
    return out


@_memoised
def transpose_params(op, input_shape, weight_shape, stride=1, padding=0, output_padding=0,
                     groups=1, dilation=1):
    """Validate a transposed convolution's arguments (PyTorch's order) and return the
    :class:`ConvParams` of the convolution it is the input gradient of: its input is
    the transposed convolution's output ``(N, C_out, H_out, W_out)``, its output
    ``(P, Q)`` at least the given input's ``(H, W)`` (more when ``output_padding`` is
    not smaller than the stride). Only the batch axis may be empty (``p.empty``).
    """
    input_shape, weight_shape = _shape(input_shape), _shape(weight_shape)
    if len(input_shape) != 4:
        raise ValueError(f"{op}: expected input of shape (N, C_in, H, W) or (C_in, H, W), "
                         f"got shape {input_shape}")
    if len(weight_shape) != 4:
        raise ValueError(f"{op}: expected weight of shape (C_in, C_out/groups, R, S), "
                         f"got shape {weight_shape}")
    if min(weight_shape) < 1 or min(input_shape[1:]) < 1:
        raise ValueError(f"{op}: input of shape {input_shape} and weight of shape "
                         f"{weight_shape}: only the batch axis (N) may be 0")
    if input_shape[1] != weight_shape[0]:
        raise ValueError(f"{op}: weight of shape {weight_shape} expects input with "
                         f"{weight_shape[0]} channels, got input of shape {input_shape}")
    if isinstance(padding, str):
        raise TypeError(f"{op}: padding must be an int or a tuple of 1 or 2 ints, got "
                        f"{padding!r} ('same' and 'valid' are conv2d's only)")
    (sh, sw), (ph, pw) = pair(stride, "stride", op), pair(padding, "padding", op)
    (dh, dw), (oh, ow) = pair(dilation, "dilation", op), pair(output_padding, "output_padding", op)
    if min(sh, sw, dh, dw) < 1 or min(ph, pw, oh, ow) < 0:
        raise ValueError(f"{op}: stride and dilation must be positive and padding and "
                         f"output_padding non-negative, got stride={stride!r}, "
                         f"dilation={dilation!r}, padding={padding!r}, "
                         f"output_padding={output_padding!r}")
    if not (oh < sh or oh < dh) or not (ow < sw or ow < dw):
        raise ValueError(f"{op}: output_padding must be smaller than either stride or "
                         f"dilation, got output_padding={(oh, ow)}, stride={(sh, sw)}, "
                         f"dilation={(dh, dw)}")
    g = _int(groups)
    if g is None:
        raise TypeError(f"{op}: groups must be an int, got {groups!r}")
    if g < 1 or weight_shape[0] % g:
        raise ValueError(f"{op}: groups={groups!r} must be a positive divisor of the "
                         f"{weight_shape[0]} input channels of weight {weight_shape}")
    N, _, H, W = input_shape
    C_out = weight_shape[1] * g
    H_out = transpose_output_size(op, H, weight_shape[2], sh, ph, dh, oh)
    W_out = transpose_output_size(op, W, weight_shape[3], sw, pw, dw, ow)
    return conv_params(op, (N, C_out, H_out, W_out), weight_shape, (sh, sw), (ph, pw),
                       (dh, dw), g)


# -- Memory: fail before allocating what cannot fit -------------------------------------

#: below this many bytes of output and workspace a call is not checked (reading the
#: available memory costs tens of microseconds; small calls must not pay it)
MEMORY_CHECK_BYTES = 256 * 2**20
#: refused whatever the machine says: no NumPy array of this size fits any machine
MEMORY_MAX_BYTES = 2**50


def _read_int(path):
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def memory_available():
    """Bytes this process can still allocate, as far as is known: the smallest of
    ``MemAvailable`` (``/proc/meminfo``), the cgroup's ``memory.max`` less
    ``memory.current`` (containers) and ``RLIMIT_AS``; None when none is known."""
    limits = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    limits.append(int(line.split()[1]) * 1024)
                    break
    except (OSError, ValueError, IndexError):
        pass
    cap, used = _read_int("/sys/fs/cgroup/memory.max"), _read_int("/sys/fs/cgroup/memory.current")
    if cap is not None and used is not None:
        limits.append(max(0, cap - used))
    try:
        import resource
        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
        if soft != resource.RLIM_INFINITY:
            limits.append(soft)
    except (ImportError, OSError, ValueError):
        pass
    if not limits and hasattr(os, "sysconf"):
        try:
            limits.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (OSError, ValueError):
            pass
    return min(limits) if limits else None


def _gib(nbytes):
    return f"{nbytes / 2**30:.3g} GiB"


def check_memory(op, *needs):
    """Raise ``MemoryError`` naming ``op`` when the arrays a call will allocate, each
    ``(what, shape, itemsize)``, need more memory than is available (or than any
    machine has), before any of them is allocated. Called by ``fastconv.functional``
    after validation and planning; calls under ``MEMORY_CHECK_BYTES`` pass at once."""
    total = sum(math.prod(shape) * itemsize for _, shape, itemsize in needs)
    if total <= MEMORY_CHECK_BYTES:
        return
    available = MEMORY_MAX_BYTES if total > MEMORY_MAX_BYTES else memory_available()
    if available is None or total <= available:
        return
    parts = " and ".join(f"{what} of shape {tuple(shape)} ({_gib(math.prod(shape) * itemsize)})"
                         for what, shape, itemsize in needs)
    where = ("no machine has that much" if available == MEMORY_MAX_BYTES
             else f"only {_gib(available)} is available")
    raise MemoryError(f"{op}: {parts} would need {_gib(total)} of memory; {where}. "
                      f"Check the sizes, strides, paddings and dilations, or split the batch")


__all__ = [
    "ConvParams", "PoolParams", "check_memory", "memory_available", "int_tuple", "conv_params", "pool_params", "transpose_params",
    "check_dtype", "check_grad_output", "pair", "flag", "out_size", "pool_out_size",
    "avg_pool_args", "adaptive_output_size", "adaptive_windows", "transpose_output_size",
    "SUPPORTED_DTYPES",
]
