"""Layers: thin modules that hold parameters and call :mod:`fastconv.functional`.

Every layer has ``forward(x)`` (also ``layer(x)``) and ``backward(grad_output)``,
which returns the gradient with respect to the layer's input and *adds* the
gradients of its parameters to their ``.grad`` (as PyTorch does; an optimiser's
``zero_grad()`` clears them). ``backward`` uses what the last ``forward`` saved, so
call them in pairs. Arrays are NCHW NumPy arrays, float32 by default (pass
``dtype=numpy.float64`` to a layer, or call ``model.astype(numpy.float64)``).

Names in ``state_dict()`` follow PyTorch: ``"0.weight"``, ``"3.running_mean"``, ...
"""
import json
import os
import tempfile

import numpy as np

from .. import functional as F

__all__ = [
    "Parameter", "Module", "Conv2d", "Linear", "ReLU", "ReLU6", "LeakyReLU", "Sigmoid",
    "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "GlobalAvgPool2d", "Flatten", "Dropout",
    "BatchNorm2d", "Sequential", "he_normal", "he_uniform", "glorot_normal", "glorot_uniform",
    "read_metadata", "load_torch",
]

_META_KEY = "__fastconv_metadata__"


# -- initialisation ------------------------------------------------------------------


def _fans(shape):
    """(fan_in, fan_out) of a weight: (out, in) for Linear, (K, C/g, R, S) for Conv2d."""
    receptive = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


def _rng(rng):
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def he_normal(shape, rng=None, dtype=np.float32):
    """He et al. 2015: normal with std ``sqrt(2 / fan_in)`` (for ReLU networks)."""
    fan_in, _ = _fans(shape)
    return (_rng(rng).standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(dtype)


def he_uniform(shape, rng=None, dtype=np.float32):
    """He et al. 2015: uniform on ``[-a, a]``, ``a = sqrt(6 / fan_in)``."""
    fan_in, _ = _fans(shape)
    a = np.sqrt(6.0 / fan_in)
    return _rng(rng).uniform(-a, a, shape).astype(dtype)


def glorot_normal(shape, rng=None, dtype=np.float32):
    """Glorot & Bengio 2010: normal with std ``sqrt(2 / (fan_in + fan_out))``."""
    fan_in, fan_out = _fans(shape)
    return (_rng(rng).standard_normal(shape) * np.sqrt(2.0 / (fan_in + fan_out))).astype(dtype)


def glorot_uniform(shape, rng=None, dtype=np.float32):
    """Glorot & Bengio 2010: uniform on ``[-a, a]``, ``a = sqrt(6 / (fan_in + fan_out))``."""
    fan_in, fan_out = _fans(shape)
    a = np.sqrt(6.0 / (fan_in + fan_out))
    return _rng(rng).uniform(-a, a, shape).astype(dtype)


_INITS = {"he": he_normal, "he_normal": he_normal, "he_uniform": he_uniform,
          "glorot": glorot_uniform, "glorot_uniform": glorot_uniform,
          "glorot_normal": glorot_normal, "xavier": glorot_uniform}


def _init(init, shape, rng, dtype):
    if callable(init):
        return np.asarray(init(shape), dtype=dtype)
    try:
        return _INITS[init](shape, rng, dtype)
    except KeyError:
        raise ValueError(f"unknown init {init!r}; choose one of {sorted(_INITS)} "
                         f"or pass a callable shape -> array") from None


# -- base classes ---------------------------------------------------------------------


def _to_numpy(value):
    """A NumPy array from a NumPy array, a PyTorch tensor (without importing torch;
    bfloat16, which NumPy lacks, read as float32) or anything ``numpy.asarray`` takes."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        value = value.numpy()
    return np.asarray(value)


class Parameter:
    """A trainable array ``data`` and its gradient ``grad`` (same shape and dtype)."""

    __slots__ = ("data", "grad")

    def __init__(self, data):
        self.data = np.ascontiguousarray(data)
        self.grad = np.zeros_like(self.data)

    @property
    def shape(self):
        return self.data.shape

    def __repr__(self):
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype})"


class Module:
    """Base class: parameters in ``_parameters``, non-trainable state (e.g. BatchNorm's
    running statistics) in ``_buffers``, sub-layers in ``_modules``, all in
    insertion order."""

    def __init__(self):
        self._parameters = {}
        self._buffers = {}
        self._modules = {}
        self.training = True

    # forward / backward
    def forward(self, x):
        raise NotImplementedError

    def backward(self, grad_output):
        raise NotImplementedError

    def __call__(self, x):
        return self.forward(x)

    # modes
    def train(self, mode=True):
        """Training mode (Dropout drops, BatchNorm uses batch statistics). Returns self."""
        self.training = bool(mode)
        for m in self._modules.values():
            m.train(mode)
        return self

    def eval(self):
        """Inference mode. Returns self."""
        return self.train(False)

    # parameters and state
    def named_parameters(self, prefix=""):
        for name, p in self._parameters.items():
            yield prefix + name, p
        for mname, m in self._modules.items():
            yield from m.named_parameters(f"{prefix}{mname}.")

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def _named_buffers(self, prefix=""):
        """(name, owner, key) of every floating-point buffer (the running statistics
        that training updates); integer counters such as ``num_batches_tracked`` are
        left out, here but not in ``state_dict``."""
        for name, value in self._buffers.items():
            if np.issubdtype(value.dtype, np.floating):
                yield prefix + name, self, name
        for mname, m in self._modules.items():
            yield from m._named_buffers(f"{prefix}{mname}.")

    def _named_state(self, prefix=""):
        """(name, owner, key, is_parameter) in PyTorch's ``state_dict`` order: each
        module's parameters, then its buffers, then its sub-modules."""
        for name in self._parameters:
            yield prefix + name, self, name, True
        for name in self._buffers:
            yield prefix + name, self, name, False
        for mname, m in self._modules.items():
            yield from m._named_state(f"{prefix}{mname}.")

    def zero_grad(self):
        for p in self.parameters():
            p.grad.fill(0)

    def astype(self, dtype):
        """Cast every parameter and floating-point buffer to ``dtype`` in place (integer
        buffers such as BatchNorm's ``num_batches_tracked`` stay integers). Returns self."""
        for p in self.parameters():
            p.data = np.ascontiguousarray(p.data, dtype=dtype)
            p.grad = np.zeros_like(p.data)
        for _, owner, name in self._named_buffers():
            owner._buffers[name] = owner._buffers[name].astype(dtype)
        return self.train(self.training)          # prepared weights follow the new arrays

    def state_dict(self):
        """``{name: array copy}`` of every parameter and buffer, with PyTorch's names
        and order (``"conv1.weight"``, ``"bn1.running_mean"``, ...)."""
        return {name: (owner._parameters[key].data if is_param else owner._buffers[key]).copy()
                for name, owner, key, is_param in self._named_state()}

    def load_state_dict(self, state, strict=True):
        """Copy arrays from ``state`` into the parameters and buffers.

        ``state`` maps names to NumPy arrays or PyTorch tensors (a ``torch`` model's
        ``state_dict()`` loads as it is: tensors are read with ``.detach().cpu()``).
        Values are cast to the model's dtypes. A BatchNorm's ``num_batches_tracked``
        may be absent (older checkpoints have none), as in PyTorch.

        Raises ``ValueError`` naming every missing, unexpected or wrongly shaped entry
        in one message (``strict=False`` ignores missing and unexpected names, never
        wrong shapes).
        """
        targets = {name: (owner, key, is_param)
                   for name, owner, key, is_param in self._named_state()}
        state = {k: _to_numpy(v) for k, v in state.items() if k != _META_KEY}
        missing = [k for k in targets
                   if k not in state and not k.endswith("num_batches_tracked")]
        unexpected = [k for k in state if k not in targets]
        wrong = []
        for name, (owner, key, is_param) in targets.items():
            if name in state:
                have = (owner._parameters[key].data if is_param else owner._buffers[key]).shape
                got = state[name].shape
                if have != got:
                    wrong.append(f"{name}: model has shape {have}, file has {got}")
        problems = []
        if strict and missing:
            problems.append("missing from the state: " + ", ".join(missing))
        if strict and unexpected:
            problems.append("not in the model: " + ", ".join(unexpected))
        if wrong:
            problems.append("shape mismatch: " + "; ".join(wrong))
        if problems:
            raise ValueError(f"load_state_dict: the state does not match {type(self).__name__}: "
                             + " | ".join(problems))
        for name, (owner, key, is_param) in targets.items():
            if name in state:
                target = owner._parameters[key].data if is_param else owner._buffers[key]
                target[...] = state[name]
        self.train(self.training)                 # prepared weights follow the new values

    def save(self, path, metadata=None):
        """Write ``state_dict()`` (and an optional JSON-able ``metadata`` dict) to an
        ``.npz`` file, atomically: a temporary file in the same folder, then
        ``os.replace``, so a crash never leaves a half-written model."""
        path = os.fspath(path)
        arrays = self.state_dict()
        if metadata is not None:
            arrays[_META_KEY] = np.array(json.dumps(metadata))
        folder = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".fastconv-", suffix=".npz.tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise

    def load(self, path, strict=True):
        """Load parameters and buffers saved by :meth:`save`; names and shapes are
        checked. Returns the metadata dict saved with them (``{}`` if none)."""
        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"load: no model file at {path!r}")
        try:
            with np.load(path, allow_pickle=False) as f:
                state = {k: f[k] for k in f.files}
        except (OSError, ValueError) as e:
            raise ValueError(f"load: {path!r} is not a readable .npz model file ({e})") from e
        meta = state.pop(_META_KEY, None)
        try:
            self.load_state_dict(state, strict=strict)
        except ValueError as e:
            raise ValueError(f"load: {path!r}: {e}") from None
        return {} if meta is None else json.loads(str(meta))

    def extra_repr(self):
        return ""

    def __repr__(self):
        if not self._modules:
            return f"{type(self).__name__}({self.extra_repr()})"
        lines = [f"  ({n}): " + repr(m).replace("\n", "\n  ") for n, m in self._modules.items()]
        return f"{type(self).__name__}(\n" + "\n".join(lines) + "\n)"


def read_metadata(path):
    """The metadata dict stored in a model file by ``Module.save`` (``{}`` if none)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"read_metadata: no model file at {path!r}")
    with np.load(path, allow_pickle=False) as f:
        if _META_KEY not in f.files:
            return {}
        return json.loads(str(f[_META_KEY]))


def load_torch(path):
    """Read a PyTorch checkpoint (``.pt``/``.pth``) as ``{name: numpy array}``, ready
    for ``model.load_state_dict``.

    The file may hold a ``state_dict`` or a dict holding one under ``"state_dict"`` or
    ``"model"`` (as training scripts save them); a ``"module."`` prefix that
    ``torch.nn.DataParallel`` adds to every name is removed. Needs PyTorch (not
    torchvision); the file is read with ``torch.load(..., weights_only=True)``, which
    runs no code from it.

    >>> from fastconv import nn
    >>> model = nn.models.resnet18()                                 # doctest: +SKIP
    >>> model.load_state_dict(nn.load_torch("resnet18-f37072fd.pth"))  # doctest: +SKIP
    """
    try:
        import torch
    except ImportError:
        raise ImportError("load_torch: reading a .pt/.pth checkpoint needs PyTorch "
                          "(pip install torch); without it, save the state_dict on the "
                          "PyTorch side as .npz: numpy.savez(path, **{k: v.numpy() for k, v "
                          "in model.state_dict().items()})") from None
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"load_torch: no checkpoint at {path!r}")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict):
        raise ValueError(f"load_torch: {path!r} holds a {type(obj).__name__}, not a "
                         f"state_dict (save model.state_dict(), not the model)")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return {k: _to_numpy(v) for k, v in obj.items()}


# -- layers with parameters -----------------------------------------------------------


class Conv2d(Module):
    """2-D convolution, as ``torch.nn.Conv2d``; weight (K, C/groups, R, S), He init.

    ``algorithm=`` and ``backend=`` are passed to :func:`fastconv.conv2d` and its two
    gradient functions.

    In eval mode the layer runs on a prepared copy of its weight
    (:func:`fastconv.prepare_weight`), made when ``eval()`` (or ``load_state_dict``) is
    called: its layouts are built once and reused with no per-call check. Change the
    weight in training mode, or call ``eval()`` again after changing it.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 dilation=1, groups=1, bias=True, *, init="he", algorithm="auto",
                 backend="auto", dtype=np.float32, rng=None):
        super().__init__()
        kh, kw = (kernel_size, kernel_size) if np.isscalar(kernel_size) else kernel_size
        shape = (out_channels, in_channels // groups, int(kh), int(kw))
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = (int(kh), int(kw))
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self.algorithm, self.backend = algorithm, backend
        self.weight = self._parameters["weight"] = Parameter(_init(init, shape, rng, dtype))
        self.bias = None
        if bias:
            self.bias = self._parameters["bias"] = Parameter(np.zeros(out_channels, dtype))
        self._x = None
        self._prepared = None

    def train(self, mode=True):
        super().train(mode)
        self._prepared = None if mode else F.prepare_weight(self.weight.data)
        return self

    def forward(self, x):
        self._x = x
        w = self.weight.data if self.training or self._prepared is None else self._prepared
        return F.conv2d(x, w, None if self.bias is None else self.bias.data,
                        self.stride, self.padding, self.dilation, self.groups,
                        algorithm=self.algorithm, backend=self.backend)

    def backward(self, grad_output, input_grad=True):
        """Parameter gradients, and the input gradient unless ``input_grad=False``
        (the first layer of a network needs none)."""
        x, w = self._x, self.weight
        w.grad += F.conv2d_weight(x, w.data.shape, grad_output, self.stride, self.padding,
                                  self.dilation, self.groups, algorithm=self.algorithm,
                                  backend=self.backend)
        if self.bias is not None:
            self.bias.grad += grad_output.sum(axis=(0, 2, 3))
        if not input_grad:
            return None
        return F.conv2d_input(x.shape, w.data, grad_output, self.stride, self.padding,
                              self.dilation, self.groups, algorithm=self.algorithm,
                              backend=self.backend)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, bias={self.bias is not None}")


class Linear(Module):
    """``y = x @ weight.T + bias``; weight (out_features, in_features), Glorot init."""

    def __init__(self, in_features, out_features, bias=True, *, init="glorot",
                 dtype=np.float32, rng=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = self._parameters["weight"] = Parameter(
            _init(init, (out_features, in_features), rng, dtype))
        self.bias = None
        if bias:
            self.bias = self._parameters["bias"] = Parameter(np.zeros(out_features, dtype))
        self._x = None

    def forward(self, x):
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"Linear: expected input of shape (N, {self.in_features}), "
                             f"got {x.shape}")
        self._x = x
        y = x @ self.weight.data.T
        if self.bias is not None:
            y += self.bias.data
        return y

    def backward(self, grad_output, input_grad=True):
        self.weight.grad += grad_output.T @ self._x
        if self.bias is not None:
            self.bias.grad += grad_output.sum(axis=0)
        if not input_grad:
            return None
        return grad_output @ self.weight.data

    def extra_repr(self):
        return f"{self.in_features}, {self.out_features}, bias={self.bias is not None}"


class BatchNorm2d(Module):
    """Batch normalisation over (N, H, W) per channel, as ``torch.nn.BatchNorm2d``:
    batch statistics in training (running variance updated with the unbiased
    estimate), running statistics in eval mode."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, *,
                 dtype=np.float32):
        super().__init__()
        self.num_features, self.eps, self.momentum, self.affine = num_features, eps, momentum, affine
        self.weight = self.bias = None
        if affine:
            self.weight = self._parameters["weight"] = Parameter(np.ones(num_features, dtype))
            self.bias = self._parameters["bias"] = Parameter(np.zeros(num_features, dtype))
        self._buffers["running_mean"] = np.zeros(num_features, dtype)
        self._buffers["running_var"] = np.ones(num_features, dtype)
        # PyTorch's counter of training batches: kept so that state_dict names match
        # torch.nn.BatchNorm2d's; the update uses ``momentum`` (never the count).
        self._buffers["num_batches_tracked"] = np.zeros((), np.int64)
        self._cache = None

    def forward(self, x):
        if x.ndim != 4 or x.shape[1] != self.num_features:
            raise ValueError(f"BatchNorm2d: expected input of shape (N, {self.num_features}, H, W), "
                             f"got {x.shape}")
        if self.training:
            mean = x.mean(axis=(0, 2, 3))
            var = x.var(axis=(0, 2, 3))
            m = x.size // self.num_features
            rm, rv = self._buffers["running_mean"], self._buffers["running_var"]
            rm *= 1 - self.momentum
            rm += self.momentum * mean
            rv *= 1 - self.momentum
            rv += self.momentum * var * (m / max(m - 1, 1))
            self._buffers["num_batches_tracked"] += 1
        else:
            mean, var = self._buffers["running_mean"], self._buffers["running_var"]
        inv_std = 1.0 / np.sqrt(var + self.eps)
        xhat = (x - mean.reshape(1, -1, 1, 1)) * inv_std.reshape(1, -1, 1, 1)
        self._cache = (xhat, inv_std, self.training)
        if not self.affine:
            return xhat.astype(x.dtype, copy=False)
        y = xhat * self.weight.data.reshape(1, -1, 1, 1) + self.bias.data.reshape(1, -1, 1, 1)
        return y.astype(x.dtype, copy=False)

    def backward(self, grad_output):
        xhat, inv_std, training = self._cache
        dy = grad_output
        if self.affine:
            self.weight.grad += (dy * xhat).sum(axis=(0, 2, 3))
            self.bias.grad += dy.sum(axis=(0, 2, 3))
            dxhat = dy * self.weight.data.reshape(1, -1, 1, 1)
        else:
            dxhat = dy
        s = inv_std.reshape(1, -1, 1, 1)
        if not training:
            return (dxhat * s).astype(dy.dtype, copy=False)
        mean_dxhat = dxhat.mean(axis=(0, 2, 3), keepdims=True)
        mean_dxhat_xhat = (dxhat * xhat).mean(axis=(0, 2, 3), keepdims=True)
        return (s * (dxhat - mean_dxhat - xhat * mean_dxhat_xhat)).astype(dy.dtype, copy=False)

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"


# -- activations ------------------------------------------------------------------------


class ReLU(Module):
    def forward(self, x):
        self._mask = x > 0
        return x * self._mask

    def backward(self, grad_output):
        return grad_output * self._mask


class ReLU6(Module):
    """``min(max(x, 0), 6)``, as ``torch.nn.ReLU6`` (MobileNet's activation)."""

    def forward(self, x):
        self._mask = (x > 0) & (x < 6)
        return np.clip(x, 0, 6)

    def backward(self, grad_output):
        return grad_output * self._mask


class LeakyReLU(Module):
    def __init__(self, negative_slope=0.01):
        super().__init__()
        self.negative_slope = negative_slope

    def forward(self, x):
        self._mask = x > 0
        return np.where(self._mask, x, x * x.dtype.type(self.negative_slope))

    def backward(self, grad_output):
        return np.where(self._mask, grad_output,
                        grad_output * grad_output.dtype.type(self.negative_slope))

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}"


def _sigmoid(x):
    """Logistic function without overflow warnings for large |x|."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)


class Sigmoid(Module):
    def forward(self, x):
        self._y = _sigmoid(x)
        return self._y

    def backward(self, grad_output):
        return grad_output * self._y * (1 - self._y)


# -- pooling and reshaping ------------------------------------------------------------------


class MaxPool2d(Module):
    """Max pooling, as ``torch.nn.MaxPool2d``. The argmax indices of the forward pass
    are kept and reused by ``backward``."""

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, *,
                 algorithm="auto", backend="auto"):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.dilation, self.ceil_mode = dilation, ceil_mode
        self.algorithm, self.backend = algorithm, backend

    def forward(self, x):
        self._shape = x.shape
        y, self._indices = F.max_pool2d(x, self.kernel_size, self.stride, self.padding,
                                        self.dilation, self.ceil_mode, True,
                                        algorithm=self.algorithm, backend=self.backend)
        return y

    def backward(self, grad_output):
        return F.max_pool2d_backward(grad_output, self._indices, self._shape,
                                     algorithm=self.algorithm, backend=self.backend)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AvgPool2d(Module):
    """Average pooling, as ``torch.nn.AvgPool2d``."""

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False,
                 count_include_pad=True, divisor_override=None, *, algorithm="auto",
                 backend="auto"):
        super().__init__()
        self.args = (kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
        self.algorithm, self.backend = algorithm, backend

    def forward(self, x):
        self._shape = x.shape
        return F.avg_pool2d(x, *self.args, algorithm=self.algorithm, backend=self.backend)

    def backward(self, grad_output):
        return F.avg_pool2d_backward(grad_output, self._shape, *self.args,
                                     algorithm=self.algorithm, backend=self.backend)

    def extra_repr(self):
        return f"kernel_size={self.args[0]}, stride={self.args[1]}, padding={self.args[2]}"


class GlobalAvgPool2d(Module):
    """Mean over each feature map: (N, C, H, W) -> (N, C) (flattened, ready for a
    ``Linear``; the layout class activation maps expect)."""

    def forward(self, x):
        self._shape = x.shape
        return F.adaptive_avg_pool2d(x, 1).reshape(x.shape[0], x.shape[1])

    def backward(self, grad_output):
        N, C, H, W = self._shape
        return F.avg_pool2d_backward(np.ascontiguousarray(grad_output).reshape(N, C, 1, 1),
                                     self._shape, (H, W))


class AdaptiveAvgPool2d(Module):
    """Adaptive average pooling, as ``torch.nn.AdaptiveAvgPool2d``: (N, C, H, W) ->
    (N, C, oh, ow); output cell ``i`` averages rows ``floor(i*H/oh)`` to
    ``ceil((i+1)*H/oh) - 1`` (columns alike). ``output_size``: int or pair."""

    def __init__(self, output_size, *, algorithm="auto", backend="auto"):
        super().__init__()
        self.output_size = output_size
        self.algorithm, self.backend = algorithm, backend

    def forward(self, x):
        self._shape = x.shape
        return F.adaptive_avg_pool2d(x, self.output_size, algorithm=self.algorithm,
                                     backend=self.backend)

    def backward(self, grad_output):
        N, C, H, W = self._shape
        oh, ow = grad_output.shape[2:]
        grad = np.zeros(self._shape, grad_output.dtype)
        for i in range(oh):
            h0, h1 = i * H // oh, -(-(i + 1) * H // oh)
            for j in range(ow):
                w0, w1 = j * W // ow, -(-(j + 1) * W // ow)
                grad[:, :, h0:h1, w0:w1] += (grad_output[:, :, i:i + 1, j:j + 1]
                                             / ((h1 - h0) * (w1 - w0)))
        return grad

    def extra_repr(self):
        return f"output_size={self.output_size}"


class Flatten(Module):
    """(N, ...) -> (N, prod(...))."""

    def forward(self, x):
        self._shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, grad_output):
        return grad_output.reshape(self._shape)


class Dropout(Module):
    """Inverted dropout: in training, zero each value with probability ``p`` and scale
    the rest by ``1/(1-p)``; identity in eval mode."""

    def __init__(self, p=0.5, rng=None):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"Dropout: p must lie in [0, 1), got {p!r}")
        self.p = p
        self.rng = _rng(rng)
        self._mask = None

    def forward(self, x):
        if not self.training or self.p == 0:
            self._mask = None
            return x
        self._mask = (self.rng.random(x.shape) >= self.p).astype(x.dtype) / x.dtype.type(1 - self.p)
        return x * self._mask

    def backward(self, grad_output):
        return grad_output if self._mask is None else grad_output * self._mask

    def extra_repr(self):
        return f"p={self.p}"


class Sequential(Module):
    """Layers applied in order; ``backward`` runs them in reverse."""

    def __init__(self, *layers):
        super().__init__()
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(f"Sequential: layer {i} is {type(layer).__name__}, not a Module")
            self._modules[str(i)] = layer
        self.layers = list(layers)

    def __getitem__(self, i):
        return self.layers[i]

    def __len__(self):
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    def forward(self, x):
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def backward(self, grad_output, input_grad=True):
        """Back-propagate; ``input_grad=False`` skips the input gradient of the first
        layer when it is a Conv2d or Linear (training never needs it) and returns None."""
        g = grad_output
        layers = self.layers
        for layer in reversed(layers[1:]):
            g = layer.backward(g)
        first = layers[0]
        if not input_grad and isinstance(first, (Conv2d, Linear)):
            return first.backward(g, input_grad=False)
        return first.backward(g)
