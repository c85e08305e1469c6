"""``optimize(model)``: a ``fastconv.nn`` model compiled for inference.

The model is lowered once to a flat list of steps over numbered values (``%0`` is the
input): every BatchNorm is folded into the convolution before it (eval statistics, in
float64, then cast back), the bias, the residual add and the ReLU/ReLU6 after a
convolution become part of that convolution's call, each MobileNet-v2 inverted residual
block becomes one fused call (:func:`fastconv.inverted_residual`: its expanded and
depthwise activations never leave the thread's cache), the weights are prepared once
(:func:`fastconv.prepare_weight`), and Dropout disappears. Running the result is a loop
over the steps; each value is released after its last use. From the second call of a
channels-last input shape, a model whose every step has a fixed kernel call replays
those calls, made once, on buffers of its own (:class:`_Replay`).

Activations flow between the steps channels last (PyTorch's ``channels_last`` memory
format, which the functional ops keep) when every convolution of the network computes
in that layout (its plan's ``layout`` is ``"nhwc"``): the input is converted once and
no convolution converts. Otherwise they stay NCHW. ``memory_format=`` forces either.
"""
import math
import threading
import time

import numpy as np

from .. import _config, _plan
from .. import functional as F
from .layers import (AdaptiveAvgPool2d, AvgPool2d, BatchNorm2d, Conv2d, Dropout, Flatten,
                     GlobalAvgPool2d, LeakyReLU, Linear, MaxPool2d, ReLU, ReLU6, Sequential,
                     Sigmoid, _sigmoid)
from .models import InvertedResidual, MobileNetV2, ResNet, _Residual

__all__ = ["optimize", "OptimizedModel"]

_ACTIVATIONS = {ReLU: "relu", ReLU6: "relu6"}


# -- steps -------------------------------------------------------------------------------------


class _Step:
    """One operation: reads values ``srcs``, writes value ``dst``. ``label``: the
    operation's kind, then what it is (``"conv layer1.0.conv2 [64->64 ...] + bn"``).

    ``kernel_call(values, buffers)`` gives ``(fn, args, y)``: the call ``fn(*args)``
    that computes the step's value ``y`` on ``values``, into memory from ``buffers``
    (a new array when None), or ``y`` None where the call returns its value instead
    (made afresh by each call)."""

    def __init__(self, label, srcs, dst):
        self.label, self.srcs, self.dst = label, tuple(srcs), dst

    def run(self, values, buffers=None):
        fn, args, y = self.kernel_call(values, buffers)
        r = fn(*args)
        return r if y is None else y

    def describe(self):
        kind, _, rest = self.label.partition(" ")
        args = ", ".join(f"%{s}" for s in self.srcs[:1 if isinstance(self, _ConvStep) else None])
        return f"%{self.dst} = {kind}({args}) {rest}".rstrip()


def _take(buffers, shape, dtype):
    return _config.empty(shape, dtype) if buffers is None else buffers.take(shape, dtype)


class _ConvStep(_Step):
    def __init__(self, label, src, dst, weight, bias, args, activation, residual):
        super().__init__(label, (src,) if residual is None else (src, residual), dst)
        self.weight, self.bias = F.prepare_weight(weight), bias
        self.args = args                # stride, padding, dilation, groups
        self.activation, self.residual = activation, residual
        self._calls = {}            # (x's and the residual's shapes, strides, dtypes) -> call

    def kernel_call(self, values, buffers):
        x = values[self.srcs[0]]
        res = None if self.residual is None else values[self.residual]
        # one fused call (the kernels apply bias, residual and activation as they store
        # the output), validated and planned once per shapes, strides and dtypes of x and
        # the residual (planned again when the settings a plan depends on change)
        key = (x.shape, x.strides, x.dtype,
               None if res is None else (res.shape, res.strides, res.dtype))
        call = self._calls.get(key)
        if call is None or call.settings != _plan.settings():
            x4, unbatched, nhwc, w, dtype, p, bias, res4 = F._conv2d_check(
                x, self.weight, self.bias, *self.args, self.activation, res)
            if x4 is not x or res4 is not res or unbatched or p.empty:
                return (lambda: F.conv2d(x, self.weight, self.bias, *self.args,
                                         activation=self.activation, residual=res)), (), None
            call = self._calls[key] = F._Conv2dCall(p, dtype, bias, self.activation, nhwc)
            call.bind(self.weight.array)
        out = _take(buffers, call.out_shape, call.dtype)
        kernel = call.kernel_call(x, self.weight.array, res, out)
        return kernel or (call, (x, self.weight.array, res, out), None)


class _BlockStep(_Step):
    """An inverted residual block (MobileNet-v2's) as one fused call
    (:func:`fastconv.inverted_residual`): its convolutions' BatchNorms folded, the
    weights prepared, validated and planned once per input shape, strides and dtype,
    the kernel bound to the weights."""

    def __init__(self, label, src, dst, weights, biases, stride, activation, residual):
        super().__init__(label, (src,), dst)
        self.weights = tuple(None if w is None else F.prepare_weight(w) for w in weights)
        self.arrays = tuple(None if w is None else w.array for w in self.weights)
        # inverted_residual's arguments after the input
        self.args = (self.weights[0], biases[0], self.weights[1], biases[1], self.weights[2],
                     biases[2], stride, activation, residual)
        self.activation = activation
        self._calls = {}            # (x's shape, strides, dtype) -> call

    def kernel_call(self, values, buffers):
        x = values[self.srcs[0]]
        key = (x.shape, x.strides, x.dtype)
        call = self._calls.get(key)
        if call is None or call.settings != _plan.settings():
            x4, unbatched, nhwc, _, biases, dtype, p = F._block_check(x, *self.args)
            if x4 is not x or unbatched or p.empty:
                return F.inverted_residual, (x, *self.args), None
            call = self._calls[key] = F._BlockCall(p, dtype, biases, self.activation, nhwc)
            call.bind(self.arrays)
        out = _take(buffers, call.out_shape, call.dtype)
        return call.kernel_call(x, self.arrays, out) or (call, (x, self.arrays, out), None)


class _PoolStep(_Step):
    """A pooling layer, validated and planned once per input shape, strides and dtype:
    ``check(x)`` gives (x 4-D, whether x was 3-D, the op's call or None for an empty
    result: ``functional._MaxPoolCall``, ``_AdaptiveAvgCall``), ``op(x)`` the op's
    result through the functional API; ``flat``: the result (N, C, 1, 1) as (N, C)."""

    def __init__(self, label, src, dst, check, op, flat=False):
        super().__init__(label, (src,), dst)
        self.check, self.op, self.flat = check, op, flat
        self._calls = {}

    def kernel_call(self, values, buffers):
        x = values[self.srcs[0]]
        key = (x.shape, x.strides, x.dtype)
        call = self._calls.get(key)
        if call is None or call.settings != _plan.settings():
            x4, unbatched, call = self.check(x)
            if x4 is not x or unbatched or call is None:
                return self.op, (x,), None
            self._calls[key] = call
        out = _take(buffers, call.out_shape, call.dtype)
        kernel = call.kernel_call(x, out)
        if kernel is None:                                  # x not in the kernel's layout
            return (lambda: self._shape(call(x, out))), (), None
        fn, args, y = kernel
        return fn, args, self._shape(y)

    def _shape(self, y):
        return y.reshape(y.shape[:2]) if self.flat else y


class _LinearStep(_ConvStep):
    """A Linear layer as a 1x1 convolution of its (N, in) input viewed as (N, in, 1, 1):
    the weight prepared once, the bias added in the kernel's store, on fastconv's
    threads. The channels-last 1x1 kernel streams the weight once per call (NumPy's
    matmul, at one BLAS thread so that its idle workers would not spin through the next
    call's convolutions, took 1.4x as long at N=1 and 2.5x at N=8 on MobileNet-v2's
    1280->1000 with the weight out of cache, AMD EPYC Zen 4)."""

    def __init__(self, label, src, dst, weight, bias):
        super().__init__(label, src, dst, weight[:, :, None, None], bias, (1, 0, 1, 1),
                         None, None)

    def kernel_call(self, values, buffers):
        x = values[self.srcs[0]]
        n_in = self.weight.shape[1]
        if x.ndim != 2 or x.shape[1] != n_in:
            raise ValueError(f"{self.label}: expected input of shape (N, {n_in}), "
                             f"got {x.shape}")
        fn, args, y = super().kernel_call({self.srcs[0]: x[:, :, None, None]}, buffers)
        if y is None:
            return (lambda: fn(*args).reshape(len(x), -1)), (), None
        return fn, args, y.reshape(len(x), -1)


class _FlattenStep(_Step):
    """(N, ...) -> (N, -1): a view of the input where its memory allows (no kernel to
    call), else a copy."""

    def kernel_call(self, values, buffers):
        x = values[self.srcs[0]]
        y = x.reshape(len(x), -1)
        if np.shares_memory(x, y):
            return _nothing, (), y
        return (lambda: y), (), None


def _nothing():
    pass


class _FnStep(_Step):
    def __init__(self, label, srcs, dst, fn):
        super().__init__(label, srcs, dst)
        self.fn = fn

    def kernel_call(self, values, buffers):
        return self.fn, tuple(values[s] for s in self.srcs), None


def _owner(a):
    """The array that owns ``a``'s memory (NumPy points a view's ``base`` at it)."""
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


class _Buffers:
    """The convolutions' output buffers of one thread's calls of a model, reused from
    call to call as ONNX Runtime's arena is: a large output freshly allocated is mapped
    and zeroed page by page by the OS on every call (glibc gives allocations over 32 MB
    their own mapping; MobileNet-v2 at N=8 spent 10-12% of its time there, AMD EPYC
    Zen 4). A buffer returns to the free list when no live value is a view of it any
    more (``hold``/``drop`` count the values whose memory it is), so no step ever
    writes into memory another live value reads."""

    def __init__(self):
        self.free = []                  # flat byte buffers no live value uses
        self.users = {}                 # id(its owner) -> [taken buffer, live values on it]
        self.fresh = []                 # keys taken since the last hold
        self.views = {}                 # (id(owner), shape, dtype) -> the array on it
        self.allocated = 0              # buffers made (stays put once calls repeat)

    def take(self, shape, dtype):
        """A C-contiguous array of ``shape`` and ``dtype`` on the smallest free buffer
        that holds it (a new one if none does)."""
        dtype = np.dtype(dtype)
        nbytes = math.prod(shape) * dtype.itemsize
        best = None
        for i, b in enumerate(self.free):
            if b.nbytes >= nbytes and (best is None or b.nbytes < self.free[best].nbytes):
                best = i
        if best is not None:
            buf = self.free.pop(best)
        else:
            buf = _config.empty(nbytes, np.uint8)
            self.allocated += 1
        key = id(_owner(buf))
        self.users[key] = [buf, 0]
        self.fresh.append(key)
        view = self.views.get((key, shape, dtype))     # a call's shapes repeat: the
        if view is None:                                 # same views every call
            view = self.views[key, shape, dtype] = buf[:nbytes].view(dtype).reshape(shape)
        return view

    def _entry(self, a):
        """The taken buffer whose memory ``a`` is (or views), as [buffer, count]."""
        if not isinstance(a, np.ndarray):
            return None
        owner = _owner(a)
        entry = self.users.get(id(owner))
        return entry if entry is not None and _owner(entry[0]) is owner else None

    def hold(self, value):
        """``value`` (a step's result) is live: its buffer, if it is on one, stays
        taken; buffers taken by the step that it does not view go back."""
        entry = self._entry(value)
        if entry is not None:
            entry[1] += 1
        for key in self.fresh:
            buf, n = self.users[key]
            if n == 0:
                self._release(key, buf)
        self.fresh.clear()

    def drop(self, value):
        """``value`` is dead: its buffer goes back once no live value views it."""
        entry = self._entry(value)
        if entry is not None:
            entry[1] -= 1
            if entry[1] == 0:
                self._release(id(_owner(entry[0])), entry[0])

    def _release(self, key, buf):
        del self.users[key]
        self.free.append(buf)


def _pair(value):
    """A stride, padding or dilation as its (h, w) pair; None for a string padding."""
    if isinstance(value, str):
        return None
    if isinstance(value, (tuple, list)):
        return (int(value[0]), int(value[-1]))
    return (int(value), int(value))


def _relu(x):
    return np.maximum(x, 0)


def _relu6(x):
    return np.clip(x, 0, 6)


def _add(a, b):
    return a + b


# -- lowering ----------------------------------------------------------------------------------


class _Builder:
    def __init__(self, dtype):
        self.dtype = dtype
        self.steps = []
        self.n_values = 1                      # %0: the input

    def _new_value(self):
        self.n_values += 1
        return self.n_values - 1

    def emit(self, label, srcs, fn):
        """A step computing ``fn(*values[srcs])``; returns the value it writes."""
        dst = self._new_value()
        self.steps.append(_FnStep(label, srcs, dst, fn))
        return dst

    def fold(self, name, conv, bn):
        """(weight, bias) of a convolution with the BatchNorm after it folded in
        (float64, then cast): ``w' = w * g / sqrt(v + eps)``,
        ``b' = (b - m) * g / sqrt(v + eps) + beta``."""
        w = conv.weight.data.astype(np.float64)
        b = (np.zeros(conv.out_channels) if conv.bias is None
             else conv.bias.data.astype(np.float64))
        if bn is not None:
            if bn.num_features != conv.out_channels:
                raise ValueError(f"optimize: {name} has {conv.out_channels} output channels, "
                                 f"the BatchNorm2d after it {bn.num_features} features")
            mean = bn._buffers["running_mean"].astype(np.float64)
            var = bn._buffers["running_var"].astype(np.float64)
            gamma = np.ones_like(mean) if bn.weight is None else bn.weight.data.astype(np.float64)
            beta = np.zeros_like(mean) if bn.bias is None else bn.bias.data.astype(np.float64)
            scale = gamma / np.sqrt(var + bn.eps)
            w = w * scale[:, None, None, None]
            b = (b - mean) * scale + beta
        return w.astype(self.dtype), b.astype(self.dtype)

    def conv(self, name, conv, bn, activation, src, residual=None):
        """A convolution with the BatchNorm after it folded in (:meth:`fold`) and the
        activation and residual in its call."""
        w, b = self.fold(name, conv, bn)
        K, Cg, R, S = w.shape
        label = f"conv {name} [{Cg * conv.groups}->{K} {R}x{S} stride={conv.stride} "
        label += f"padding={conv.padding}"
        if conv.groups > 1:
            label += f" groups={conv.groups}"
        if conv.dilation not in (1, (1, 1)):
            label += f" dilation={conv.dilation}"
        label += "]"
        if bn is not None:
            label += " + bn"
        if residual is not None:
            label += f" + residual %{residual}"
        if activation is not None:
            label += f" + {activation}"
        dst = self._new_value()
        self.steps.append(_ConvStep(label, src, dst, w, b,
                                    (conv.stride, conv.padding, conv.dilation, conv.groups),
                                    activation, residual))
        return dst

    def sequence(self, named, src, residual=None):
        """Lower ``[(name, module), ...]`` run in order; a Conv2d takes a BatchNorm and a
        ReLU/ReLU6 right after it into its call, and the last convolution takes
        ``residual`` when nothing follows it."""
        i, x = 0, src
        while i < len(named):
            name, layer = named[i]
            last = i == len(named) - 1
            if isinstance(layer, Conv2d):
                j = i + 1
                bn = None
                if j < len(named) and isinstance(named[j][1], BatchNorm2d):
                    bn, j = named[j][1], j + 1
                act = None
                if j < len(named) and type(named[j][1]) in _ACTIVATIONS:
                    act, j = _ACTIVATIONS[type(named[j][1])], j + 1
                fuse = residual if j == len(named) and act is None else None
                x = self.conv(name, layer, bn, act, x, fuse)
                if fuse is not None:
                    residual = None
                i = j
            else:
                x = self.lower(name, layer, x, residual if last else None)
                if last:
                    residual = None
                i += 1
        return self._then_add(x, residual)

    def lower(self, name, layer, src, residual=None):
        """Lower one module reading value ``src`` (and adding value ``residual`` to its
        output, when given); returns the value it writes."""
        if isinstance(layer, Sequential):
            return self.sequence([(f"{name}.{i}" if name else str(i), m)
                                  for i, m in enumerate(layer)], src, residual)
        if isinstance(layer, (ResNet, MobileNetV2)):
            return self.sequence(layer._named_sequence(), src, residual)
        if isinstance(layer, _Residual):
            shortcut = src if layer.downsample is None else self.lower(
                f"{name}.downsample", layer.downsample, src)
            pairs = layer._pairs()
            h = src
            for k, (conv, bn) in enumerate(pairs, 1):
                final = k == len(pairs)
                h = self.conv(f"{name}.conv{k}", conv, bn, "relu", h,
                              shortcut if final else None)
            return self._then_add(h, residual)
        if isinstance(layer, InvertedResidual):
            fused = self.block(name, layer, src)
            if fused is not None:
                return self._then_add(fused, residual)
            inner = src if layer.use_res_connect else None
            return self._then_add(self.lower(f"{name}.conv", layer.conv, src, inner), residual)
        if isinstance(layer, Conv2d):
            return self.conv(name, layer, None, None, src, residual)
        if isinstance(layer, Dropout):
            return self._then_add(src, residual)
        return self._then_add(self._simple(name, layer, src), residual)

    def block(self, name, layer, src):
        """An InvertedResidual of torchvision's form as one fused step (:class:`_BlockStep`,
        :func:`fastconv.inverted_residual`): [1x1 conv, BN, act], RxR depthwise conv
        (odd R, padding R // 2), BN, act, 1x1 conv, BN, one activation (ReLU or ReLU6)
        for both; the value it writes, or None for a block of another form (lowered
        layer by layer)."""
        parts = list(layer.conv)
        if len(parts) not in (3, 4) or not all(isinstance(m, Sequential) and len(m) == 3
                                                for m in parts[:-2]):
            return None
        convs = [tuple(m) for m in parts[:-2]] + [(parts[-2], parts[-1], None)]
        acts = {type(a) for _, _, a in convs[:-1]}
        if len(acts) != 1 or next(iter(acts)) not in _ACTIVATIONS:
            return None
        for conv, bn, _ in convs:
            if not (isinstance(conv, Conv2d) and isinstance(bn, BatchNorm2d)
                    and _pair(conv.dilation) == (1, 1)):
                return None
        dw = convs[-2][0]
        R, S = dw.kernel_size
        s = _pair(dw.stride)
        if not (R == S and R % 2 == 1 and dw.groups == dw.in_channels == dw.out_channels
                and _pair(dw.padding) == (R // 2, R // 2) and s is not None and s[0] == s[1]):
            return None
        for conv in [c for c, _, _ in convs if c is not dw]:
            if not (conv.kernel_size == (1, 1) and conv.groups == 1
                    and _pair(conv.stride) == (1, 1) and _pair(conv.padding) == (0, 0)):
                return None
        tags = ("expand", "depthwise", "project")[3 - len(convs):]
        folded = [self.fold(f"{name}.{tag}", conv, bn) for tag, (conv, bn, _) in
                  zip(tags, convs)]
        weights = tuple(w for w, _ in folded)
        biases = tuple(b for _, b in folded)
        if len(convs) == 2:
            weights, biases = (None,) + weights, (None,) + biases
        act = _ACTIVATIONS[next(iter(acts))]
        sizes = ([convs[0][0].in_channels] + [dw.out_channels] * (len(convs) == 3)
                 + [convs[-1][0].out_channels])
        label = (f"inverted_residual {name} [{'->'.join(map(str, sizes))} {R}x{R} "
                 f"stride={s[0]}] + bn + {act}")
        if layer.use_res_connect:
            label += f" + residual %{src}"
        dst = self._new_value()
        self.steps.append(_BlockStep(label, src, dst, weights, biases, s[0], act,
                                     layer.use_res_connect))
        return dst

    def _then_add(self, x, residual):
        return x if residual is None else self.emit("add", (x, residual), _add)

    def _simple(self, name, layer, src):
        """A layer without fusion: pooling, reshaping, Linear, a lone BatchNorm or
        activation."""
        label = f"{type(layer).__name__.lower()} {name}"
        if isinstance(layer, MaxPool2d):
            args = (layer.kernel_size, layer.stride, layer.padding, layer.dilation,
                    layer.ceil_mode)
            dst = self._new_value()
            self.steps.append(_PoolStep(
                f"{label} [kernel_size={layer.kernel_size}, stride={layer.stride}, "
                f"padding={layer.padding}]", src, dst,
                lambda x: F._max_pool_check(x, *args),
                lambda x: F.max_pool2d(x, *args)))
            return dst
        if isinstance(layer, AvgPool2d):
            args = layer.args
            return self.emit(label, (src,), lambda x: F.avg_pool2d(x, *args))
        if isinstance(layer, AdaptiveAvgPool2d):
            size = layer.output_size
            dst = self._new_value()
            self.steps.append(_PoolStep(f"{label} [{size}]", src, dst,
                                        lambda x: F._adaptive_avg_check(x, size),
                                        lambda x: F.adaptive_avg_pool2d(x, size)))
            return dst
        if isinstance(layer, GlobalAvgPool2d):
            dst = self._new_value()
            self.steps.append(_PoolStep(label, src, dst, lambda x: F._adaptive_avg_check(x, 1),
                                        lambda x: F.adaptive_avg_pool2d(x, 1).reshape(
                                            x.shape[:2]), flat=True))
            return dst
        if isinstance(layer, Flatten):
            dst = self._new_value()
            self.steps.append(_FlattenStep(label, (src,), dst))
            return dst
        if isinstance(layer, Linear):
            b = None if layer.bias is None else layer.bias.data.astype(self.dtype)
            dst = self._new_value()
            self.steps.append(_LinearStep(f"{label} [{layer.in_features}->"
                                          f"{layer.out_features}]", src, dst,
                                          layer.weight.data.astype(self.dtype), b))
            return dst
        if isinstance(layer, BatchNorm2d):
            mean = layer._buffers["running_mean"].astype(np.float64)
            scale = 1 / np.sqrt(layer._buffers["running_var"].astype(np.float64) + layer.eps)
            shift = -mean * scale
            if layer.affine:
                scale, shift = (scale * layer.weight.data,
                                shift * layer.weight.data + layer.bias.data)
            scale = scale.astype(self.dtype).reshape(1, -1, 1, 1)
            shift = shift.astype(self.dtype).reshape(1, -1, 1, 1)
            return self.emit(label, (src,), lambda x: x * scale + shift)
        if isinstance(layer, ReLU):
            return self.emit(label, (src,), _relu)
        if isinstance(layer, ReLU6):
            return self.emit(label, (src,), _relu6)
        if isinstance(layer, LeakyReLU):
            slope = layer.negative_slope
            return self.emit(label, (src,),
                             lambda x: np.where(x > 0, x, x * x.dtype.type(slope)))
        if isinstance(layer, Sigmoid):
            return self.emit(label, (src,), _sigmoid)
        raise TypeError(f"optimize: no inference lowering for {type(layer).__name__} "
                        f"({name or 'the model'}); supported: Sequential, ResNet, MobileNetV2, "
                        f"BasicBlock, Bottleneck, InvertedResidual, Conv2d, BatchNorm2d, "
                        f"ReLU, ReLU6, LeakyReLU, Sigmoid, MaxPool2d, AvgPool2d, "
                        f"AdaptiveAvgPool2d, GlobalAvgPool2d, Flatten, Dropout, Linear")


class _Replay:
    """One input shape's call of a model as fixed kernel calls: each step's
    ``kernel_call`` made once, on a private :class:`_Buffers` and a private
    channels-last input array, so a call is the input's copy into that array, then
    ``fn(*args)`` per step, then a copy of the output (the caller's). The steps write
    the same buffers in the same order as a call through them would (each value's
    buffer reused only after its last reader), and the plans are those of the call that
    made it: it is remade when :func:`fastconv._plan.settings` changes. Made where
    every step has such a call and the activations flow channels last (MobileNet-v2:
    each step's Python, dict lookups and buffer bookkeeping, in the network's cold
    caches, cost more than the kernels' own arguments)."""

    def __init__(self, steps, frees, n_values, output, shape, dtype):
        N, C, H, W = shape
        buffers = self.buffers = _Buffers()
        self.input = _config.empty((N, H, W, C), dtype)       # the caller's x, copied
        values = [None] * n_values
        values[0] = self.input.transpose(0, 3, 1, 2)
        self.calls = []
        self.settings = _plan.settings()
        for step, free in zip(steps, frees):
            fn, args, y = step.kernel_call(values, buffers)
            if y is None or buffers._entry(y) is None:        # a value made afresh
                raise _NoReplay(step.label)
            self.calls.append((fn, args))
            values[step.dst] = y
            buffers.hold(y)
            for s in free:
                buffers.drop(values[s])
                values[s] = None
        self.output = values[output]
        if buffers._entry(self.output) is None:               # the input itself
            raise _NoReplay("the output")

    def __call__(self, x):
        if F.channels_last(x):
            np.copyto(self.input, x.transpose(0, 2, 3, 1))
        else:
            N, C, H, W = x.shape
            F._swap_layout(np.ascontiguousarray(x).reshape(N, C, H * W),
                           self.input.reshape(N, H * W, C))
        for fn, args in self.calls:
            fn(*args)
        return self.output.copy()


class _NoReplay(Exception):
    """A step whose value a :class:`_Replay` cannot fix in advance."""


# -- the compiled model ----------------------------------------------------------------------


class OptimizedModel:
    """An inference-only callable made by :func:`optimize`: ``model(x)`` takes an
    (N, C, H, W) batch and returns the output (the logits) as a NumPy array.

    Attributes: ``steps`` (the flat list of steps; ``repr`` lists them), ``dtype``.
    It holds copies of the weights: changing the source model afterwards does not
    change it (optimize again). The convolutions' outputs are written into buffers kept
    per Python thread and reused by that thread's next call (as ONNX Runtime's arena:
    no fresh memory to map and zero on each call); they hold about the largest set of
    activations one call had alive at once, until :meth:`release_buffers`. The array a
    call returns is never one of them: it is the caller's.
    """

    def __init__(self, name, dtype, steps, output, n_values, memory_format="auto"):
        self.name, self.dtype, self.steps, self.output = name, dtype, steps, output
        self.memory_format = memory_format
        self._formats = {}                     # input shape -> memory format ("auto")
        last_use = {}
        for k, step in enumerate(steps):
            for s in step.srcs:
                last_use[s] = k
        self._free = [list(dict.fromkeys(s for s in step.srcs if last_use[s] == k
                                         and s != output))
                      for k, step in enumerate(steps)]
        self._n_values = n_values
        self._local = threading.local()           # .buffers: this thread's _Buffers

    def __call__(self, x):
        if not isinstance(x, np.ndarray) or x.ndim != 4:
            raise ValueError(f"{self.name} (optimized): expected an (N, C, H, W) NumPy array, "
                             f"got {type(x).__name__} of shape {np.shape(x)}")
        fmt = self.memory_format
        if fmt == "auto":
            fmt = self._formats.get(x.shape)
            if fmt is None:                   # the first call of this shape decides
                with _plan.trace() as ran:
                    y = self._run(np.ascontiguousarray(x, dtype=self.dtype))
                self._formats[x.shape] = self._format_for(ran)
                return y
        x = x.astype(self.dtype, copy=False)
        if fmt != "channels_last":
            return self._run(np.ascontiguousarray(x))
        replay = self._replay(x.shape)
        if replay is None:
            return self._run(F.to_channels_last(x))
        return replay(x)

    def _replay(self, shape):
        """This thread's :class:`_Replay` for input ``shape`` (channels last), made on
        its first call and again when the settings the plans depend on change; None
        where the model has a step without a fixed kernel call."""
        replays = getattr(self._local, "replays", None)
        if replays is None:
            replays = self._local.replays = {}
        replay = replays.get(shape)
        if replay is None or (replay is not False and replay.settings != _plan.settings()):
            try:
                replay = _Replay(self.steps, self._free, self._n_values, self.output, shape,
                                 self.dtype)
            except _NoReplay:
                replay = False
            replays[shape] = replay
        return replay or None

    def profile(self, x, rounds=5):
        """Where a call's time goes, step by step.

        Calls the model on ``x`` once (to warm up and, under "auto", to decide the memory
        format), then runs it ``rounds`` times one step at a time and returns a list with
        a dict per step: ``label``; ``plan``, the convolution's or fused block's plan
        (None for other steps); ``ms``, the step's median time as the network runs it,
        right after the step before it; and ``repeat_ms``, the median time of the same
        step run again at once, with its weights, data and code still in cache. The gap
        between the sums of the two is what running as a network costs beyond the
        kernels' own speed (docs/benchmarks.md, "Where a network's time goes").
        """
        if rounds < 1:
            raise ValueError(f"profile: rounds must be at least 1, got {rounds}")
        self(x)
        fmt = self.format_for(x.shape)
        x = x.astype(self.dtype, copy=False)
        x = F.to_channels_last(x) if fmt == "channels_last" else np.ascontiguousarray(x)
        plans = []
        times = np.zeros((rounds, len(self.steps), 2))
        buffers = _Buffers()                        # as a call's, reused round to round
        for r in range(-1, rounds):                 # round -1: the plans, untimed
            values = [None] * self._n_values
            values[0] = x
            for k, (step, free) in enumerate(zip(self.steps, self._free)):
                if r < 0:
                    with _plan.trace() as ran:
                        y = values[step.dst] = step.run(values, buffers)
                    convs = [p for p in ran if p.op in ("conv2d", "inverted_residual")]
                    plans.append(convs[-1] if convs else None)
                else:
                    t0 = time.perf_counter()
                    y = values[step.dst] = step.run(values, buffers)
                    t1 = time.perf_counter()
                    step.run(values, buffers)
                    times[r, k] = t1 - t0, time.perf_counter() - t1
                buffers.hold(y)
                for s in free:
                    buffers.drop(values[s])
                    values[s] = None
        ms = np.median(times, axis=0) * 1e3
        return [dict(label=step.label, plan=plan, ms=float(a), repeat_ms=float(b))
                for step, plan, (a, b) in zip(self.steps, plans, ms)]

    def format_for(self, shape):
        """The memory format the activations of an input of ``shape`` flow in:
        ``memory_format`` unless "auto", else as decided by the first call of that shape
        (None before it)."""
        if self.memory_format != "auto":
            return self.memory_format
        return self._formats.get(tuple(shape))

    def _format_for(self, ran):
        """"channels_last" if every convolution that ran (plans ``ran``) has a kernel
        that computes it channels last, else "contiguous"."""
        convs = [p for p in ran if p.op == "conv2d"]
        native = all(_plan.make("conv2d", p.geometry, np.dtype(p.dtype),
                                layout="nhwc").layout == "nhwc" for p in convs)
        return "channels_last" if convs and native else "contiguous"

    def _buffers(self):
        buffers = getattr(self._local, "buffers", None)
        if buffers is None:
            buffers = self._local.buffers = _Buffers()
        return buffers

    def release_buffers(self):
        """Free the calling thread's reused output buffers (the next call makes them
        again)."""
        self._local.buffers = None
        self._local.replays = None

    def _run(self, x):
        buffers = self._buffers()
        values = [None] * self._n_values
        values[0] = x
        try:
            for step, free in zip(self.steps, self._free):
                y = values[step.dst] = step.run(values, buffers)
                buffers.hold(y)
                for s in free:
                    buffers.drop(values[s])
                    values[s] = None
        except BaseException:
            self._local.buffers = None            # the failed call's counts: start afresh
            raise
        y = values[self.output]
        if buffers._entry(y) is None:
            return y
        out = y.copy()                            # the caller's own, and the buffer back
        buffers.drop(y)
        return out

    def __repr__(self):
        n_conv = sum(type(s) is _ConvStep for s in self.steps)
        n_block = sum(type(s) is _BlockStep for s in self.steps)
        lines = [f"  {s.describe()}" for s in self.steps]
        blocks = f", {n_block} fused blocks" if n_block else ""
        return (f"OptimizedModel({self.name}, {self.dtype.name}, {len(self.steps)} steps, "
                f"{n_conv} convolutions{blocks}; %0 is the input, %{self.output} the "
                f"output:\n"
                + "\n".join(lines) + "\n)")


def optimize(model, memory_format="auto"):
    """Compile a ``fastconv.nn`` model for inference.

    BatchNorm layers are folded into the convolution before them (with their running
    statistics, computed in float64), each convolution's bias, residual add and
    ReLU/ReLU6 are applied in its call, weights are prepared once
    (:func:`fastconv.prepare_weight`), Dropout is dropped, and the graph runs as a flat
    list of steps.

    Parameters
    ----------
    model : fastconv.nn.Module
        A model of :mod:`fastconv.nn.models` (``resnet18``, ``resnet50``,
        ``mobilenet_v2``, ...) or a ``Sequential`` of fastconv.nn layers, with its
        weights loaded. Its mode does not matter: the result is always eval mode.
    memory_format : "auto", "channels_last" or "contiguous"
        The layout of the activations between steps. "auto": channels last when every
        convolution of the network computes in that layout for the input's shape
        (decided by the first call of each shape, which runs NCHW), else NCHW
        (``f.format_for(shape)`` says which).

    Returns
    -------
    OptimizedModel
        ``f(x)``: (N, C, H, W) NumPy array, cast to the model's dtype (float32 unless
        cast) -> output array, equal to ``model.eval()(x)`` within floating-point
        rounding. ``repr(f)`` lists the fused steps.

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv import nn
    >>> f = nn.optimize(nn.models.resnet18(num_classes=10))
    >>> f(np.zeros((1, 3, 64, 64), np.float32)).shape
    (1, 10)
    """
    params = model.parameters()
    dtype = np.dtype(params[0].data.dtype if params else np.float32)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"optimize: the model's parameters are {dtype}; expected float32 "
                        f"or float64")
    if memory_format not in ("auto", "channels_last", "contiguous"):
        raise ValueError(f"optimize: memory_format must be 'auto', 'channels_last' or "
                         f"'contiguous', got {memory_format!r}")
    builder = _Builder(dtype)
    out = builder.lower("", model, 0)
    return OptimizedModel(type(model).__name__, dtype, builder.steps, out, builder.n_values,
                          memory_format)
