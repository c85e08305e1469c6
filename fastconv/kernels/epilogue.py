"""The epilogue a forward convolution applies in its kernels' stores:
``out = activation(conv + bias + residual)``.

Kernels receive an :class:`Epilogue` as their last argument (``kernel(plan, x, w, p,
out, epilogue)``). Its arrays are always present, zero-size when absent, and the
activation is an int code, so every kernel is compiled once per dtype whichever parts
a call uses: ``bias`` (K,), ``residual`` the output's (N, K, P, Q) values flattened
(C order), ``act`` one of :data:`ACTIVATIONS`' codes. ``NaN`` passes through both
activations, as in PyTorch.
"""
from typing import NamedTuple

import numpy as np

#: activation name -> the code kernels branch on
ACTIVATIONS = {None: 0, "relu": 1, "relu6": 2}


class Epilogue(NamedTuple):
    """bias (K,) or zero-size; residual flat (N*K*P*Q,) or zero-size; act code."""
    bias: np.ndarray
    residual: np.ndarray
    act: int

    @property
    def empty(self):
        """Whether the epilogue leaves the convolution's values as they are."""
        return self.bias.size == 0 and self.residual.size == 0 and self.act == 0

    def images(self, n0, n1, per_image):
        """The epilogue of images [n0, n1) of the batch (``per_image`` = K*P*Q): its
        residual cut to them, for a kernel that runs on a slice of the batch."""
        if self.residual.size == 0:
            return self
        return self._replace(residual=self.residual[n0 * per_image:n1 * per_image])


_NONE = {}


def none(dtype):
    """The epilogue that changes nothing, for ``dtype``."""
    dtype = np.dtype(dtype)
    ep = _NONE.get(dtype)
    if ep is None:
        ep = _NONE[dtype] = Epilogue(np.empty(0, dtype), np.empty(0, dtype), 0)
    return ep


def make(dtype, bias=None, residual=None, activation=None):
    """The :class:`Epilogue` of validated ``bias``, ``residual`` (C-contiguous, the
    output's shape) and ``activation`` (a key of :data:`ACTIVATIONS`)."""
    base = none(dtype)
    return Epilogue(base.bias if bias is None else np.ascontiguousarray(bias, dtype),
                    base.residual if residual is None else residual.reshape(-1),
                    ACTIVATIONS[activation])


def apply(y, ep):
    """``y`` (N, K, P, Q) with the epilogue applied in NumPy, in place: the reference's
    (and the definition of the result)."""
    if ep.bias.size:
        y += ep.bias.reshape(1, -1, 1, 1)
    if ep.residual.size:
        y += ep.residual.reshape(y.shape)
    if ep.act == 1:
        np.maximum(y, 0, out=y)                     # NaN stays NaN
    elif ep.act == 2:
        np.clip(y, 0, 6, out=y)
    return y
