"""Optimisers with PyTorch's update rules (``torch.optim.SGD`` and ``torch.optim.Adam``),
updating ``Parameter.data`` in place from ``Parameter.grad``."""
import numpy as np

__all__ = ["Optimizer", "SGD", "Adam"]


class Optimizer:
    def __init__(self, params, lr):
        self.params = list(params)
        if not self.params:
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")
        if not lr > 0:
            raise ValueError(f"{type(self).__name__}: lr must be positive, got {lr!r}")
        self.lr = lr

    def zero_grad(self):
        for p in self.params:
            p.grad.fill(0)

    def step(self):
        raise NotImplementedError


class SGD(Optimizer):
    """Stochastic gradient descent, as ``torch.optim.SGD``::

        g = grad + weight_decay * p
        b = g (first step), else momentum * b + (1 - dampening) * g
        g = g + momentum * b   if nesterov   else   b      (when momentum > 0)
        p = p - lr * g
    """

    def __init__(self, params, lr=0.01, momentum=0.0, dampening=0.0, nesterov=False,
                 weight_decay=0.0):
        super().__init__(params, lr)
        if momentum < 0 or weight_decay < 0:
            raise ValueError(f"SGD: momentum and weight_decay must be >= 0, got "
                             f"{momentum!r}, {weight_decay!r}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("SGD: Nesterov momentum needs momentum > 0 and dampening 0")
        self.momentum, self.dampening = momentum, dampening
        self.nesterov, self.weight_decay = nesterov, weight_decay
        self._bufs = [None] * len(self.params)

    def step(self):
        lr, mom, wd = self.lr, self.momentum, self.weight_decay
        for i, p in enumerate(self.params):
            g = p.grad
            if wd:
                g = g + wd * p.data
            if mom:
                b = self._bufs[i]
                if b is None:
                    b = self._bufs[i] = g.copy()
                else:
                    b *= mom
                    b += (1 - self.dampening) * g
                g = g + mom * b if self.nesterov else b
            p.data -= lr * g


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015), as ``torch.optim.Adam`` (L2 ``weight_decay`` added to
    the gradient, no AMSGrad)::

        m = b1 m + (1 - b1) g;   v = b2 v + (1 - b2) g^2
        p = p - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, lr)
        b1, b2 = betas
        if not (0 <= b1 < 1 and 0 <= b2 < 1) or eps < 0 or weight_decay < 0:
            raise ValueError(f"Adam: need 0 <= betas < 1, eps >= 0, weight_decay >= 0; got "
                             f"betas={betas!r}, eps={eps!r}, weight_decay={weight_decay!r}")
        self.betas, self.eps, self.weight_decay = (b1, b2), eps, weight_decay
        self.t = 0
        self._m = [np.zeros_like(p.data) for p in self.params]
        self._v = [np.zeros_like(p.data) for p in self.params]

    def step(self):
        self.t += 1
        b1, b2 = self.betas
        bc1 = 1 - b1 ** self.t
        bc2_sqrt = np.sqrt(1 - b2 ** self.t)
        step_size = self.lr / bc1
        for p, m, v in zip(self.params, self._m, self._v):
            g = p.grad
            if self.weight_decay:
                g = g + self.weight_decay * p.data
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * g * g
            denom = np.sqrt(v) / bc2_sqrt + self.eps
            p.data -= (step_size * m / denom).astype(p.data.dtype, copy=False)
