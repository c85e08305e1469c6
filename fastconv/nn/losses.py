"""Losses: ``loss(prediction, target)`` returns the mean loss as a float and keeps
what ``loss.backward()`` needs to return the gradient with respect to the
prediction (same shape and dtype as the prediction)."""
import numpy as np

__all__ = ["Loss", "CrossEntropyLoss", "BCEWithLogitsLoss", "MSELoss"]


class Loss:
    def __call__(self, prediction, target):
        return self.forward(prediction, target)

    def forward(self, prediction, target):
        raise NotImplementedError

    def backward(self):
        raise NotImplementedError


class CrossEntropyLoss(Loss):
    # logits and labels are NumPy arrays (ndarray attributes are used without conversion:
    # this runs once per training step)
    """Softmax cross-entropy from logits (N, K) and integer labels (N,), mean over the
    batch, as ``torch.nn.CrossEntropyLoss``. Computed through log-sum-exp with the
    row maximum subtracted, so large logits neither overflow nor lose precision."""

    def forward(self, logits, labels):
        if logits.ndim != 2 or labels.shape != (logits.shape[0],):
            raise ValueError(f"CrossEntropyLoss: expected logits (N, K) and labels (N,), got "
                             f"{np.shape(logits)} and {np.shape(labels)}")
        if labels.dtype.kind not in "iu":
            raise TypeError(f"CrossEntropyLoss: labels must be integers, got {labels.dtype}")
        N, K = logits.shape
        if N and (labels.min() < 0 or labels.max() >= K):
            raise ValueError(f"CrossEntropyLoss: labels must lie in [0, {K}), got values in "
                             f"[{labels.min()}, {labels.max()}]")
        z = logits - logits.max(axis=1, keepdims=True)
        e = np.exp(z)
        s = e.sum(axis=1, keepdims=True)
        rows = np.arange(N)
        e /= s
        self._probs, self._labels, self._rows = e, labels, rows
        return float(np.mean(np.log(s[:, 0]) - z[rows, labels]))

    def backward(self):
        g = self._probs.copy()
        g[self._rows, self._labels] -= 1
        g /= g.shape[0]
        return g


def _log1p_exp_neg_abs(x):
    return np.log1p(np.exp(-np.abs(x)))


class BCEWithLogitsLoss(Loss):
    """Binary cross-entropy from logits, mean over every element, as
    ``torch.nn.BCEWithLogitsLoss``: binary (logits (N,) or (N, 1)) or multi-label
    (logits (N, L) and 0/1 targets of the same shape).

    ``loss = max(x, 0) - x*y + log(1 + exp(-|x|))``, stable for any ``x``.
    ``pos_weight`` (scalar or (L,)) multiplies the positive term, as in PyTorch.
    """

    def __init__(self, pos_weight=None):
        self.pos_weight = pos_weight

    def forward(self, logits, targets):
        x = np.asarray(logits)
        y = np.asarray(targets)
        if y.shape != x.shape and y.size == x.size:
            y = y.reshape(x.shape)
        if y.shape != x.shape:
            raise ValueError(f"BCEWithLogitsLoss: targets of shape {y.shape} do not match "
                             f"logits of shape {x.shape}")
        y = y.astype(x.dtype, copy=False)
        soft = _log1p_exp_neg_abs(x)
        if self.pos_weight is None:
            loss = np.maximum(x, 0) - x * y + soft
        else:
            pw = np.asarray(self.pos_weight, x.dtype)
            # (1-y)*x + (1 + (pw-1)*y) * log(1 + exp(-x))
            loss = (1 - y) * x + (1 + (pw - 1) * y) * (soft + np.maximum(-x, 0))
        self._x, self._y = x, y
        return float(loss.mean())

    def backward(self):
        x, y = self._x, self._y
        e = np.exp(-np.abs(x))
        sig = np.where(x >= 0, 1 / (1 + e), e / (1 + e))
        if self.pos_weight is None:
            g = sig - y
        else:
            pw = np.asarray(self.pos_weight, x.dtype)
            g = (1 - y) * sig - pw * y * (1 - sig)
        return (g / x.size).astype(x.dtype, copy=False)


class MSELoss(Loss):
    """Mean squared error over every element."""

    def forward(self, prediction, target):
        x = np.asarray(prediction)
        y = np.asarray(target)
        if y.shape != x.shape:
            raise ValueError(f"MSELoss: target of shape {y.shape} does not match prediction "
                             f"of shape {x.shape}")
        self._diff = x - y.astype(x.dtype, copy=False)
        return float(np.mean(self._diff ** 2))

    def backward(self):
        return self._diff * (2.0 / self._diff.size)
