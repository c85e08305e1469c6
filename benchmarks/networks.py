"""Whole networks built from fastconv's functional API, for benchmarks: a network
pays costs that one layer called again and again hides (weights seen once per pass,
layout conversions, thread hand-offs between small layers).

Each network is a list of weights (BatchNorm folded into a bias; random He-init,
seeded) and a ``forward(x)`` that runs it with ``fastconv.conv2d`` (bias added by
fastconv), NumPy's ``maximum`` for ReLU and ``+`` for the residual adds, fastconv's
pooling and a NumPy matmul head. Only the public functional API is used, so the same
code runs against any fastconv version (``benchmarks/ab.py`` compares two).

    net = networks.build("resnet18")
    logits = net(np.random.rand(8, 3, 224, 224).astype(np.float32))
"""
import numpy as np

import fastconv


def _conv(rng, cin, cout, k, stride=1, pad=None, groups=1):
    w = rng.standard_normal((cout, cin // groups, k, k), dtype=np.float32)
    w *= np.float32(np.sqrt(2.0 / (cin // groups * k * k)))
    b = (rng.standard_normal(cout, dtype=np.float32) * np.float32(0.01))
    return dict(w=w, b=b, stride=stride, padding=k // 2 if pad is None else pad, groups=groups)


def _apply(layer, x, relu=True, relu6=False):
    y = fastconv.conv2d(x, layer["w"], layer["b"], stride=layer["stride"],
                        padding=layer["padding"], groups=layer["groups"])
    if relu6:
        return np.clip(y, 0, 6, out=y)
    return np.maximum(y, 0, out=y) if relu else y


def _head(rng, cin, classes=1000):
    w = rng.standard_normal((classes, cin), dtype=np.float32) * np.float32(np.sqrt(1.0 / cin))
    return w, np.zeros(classes, np.float32)


def resnet(depth, seed=0):
    """ResNet-18 (basic blocks) or ResNet-50 (bottlenecks), torchvision's shapes."""
    rng = np.random.default_rng(seed)
    bottleneck = depth == 50
    counts = {18: (2, 2, 2, 2), 50: (3, 4, 6, 3)}[depth]
    stem = _conv(rng, 3, 64, 7, 2, 3)
    blocks, cin = [], 64
    for stage, (n, width) in enumerate(zip(counts, (64, 128, 256, 512))):
        for i in range(n):
            stride = 2 if stage > 0 and i == 0 else 1
            cout = width * 4 if bottleneck else width
            if bottleneck:
                convs = [_conv(rng, cin, width, 1), _conv(rng, width, width, 3, stride),
                         _conv(rng, width, cout, 1)]
            else:
                convs = [_conv(rng, cin, width, 3, stride), _conv(rng, width, width, 3)]
            down = _conv(rng, cin, cout, 1, stride, 0) if stride != 1 or cin != cout else None
            blocks.append((convs, down))
            cin = cout
    fc_w, fc_b = _head(rng, cin)

    def forward(x):
        y = _apply(stem, x)
        y = fastconv.max_pool2d(y, 3, 2, 1)
        for convs, down in blocks:
            shortcut = y if down is None else _apply(down, y, relu=False)
            for layer in convs[:-1]:
                y = _apply(layer, y)
            y = _apply(convs[-1], y, relu=False)
            y += shortcut
            np.maximum(y, 0, out=y)
        y = fastconv.adaptive_avg_pool2d(y, 1).reshape(len(x), -1)
        return y @ fc_w.T + fc_b

    return forward


def mobilenet_v2(seed=0):
    """MobileNet-v2: inverted residuals (expansion 1x1, depthwise 3x3, projection 1x1),
    ReLU6, torchvision's widths and strides."""
    rng = np.random.default_rng(seed)
    setting = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
               (6, 160, 3, 2), (6, 320, 1, 1)]
    stem = _conv(rng, 3, 32, 3, 2, 1)
    blocks, cin = [], 32
    for t, c, n, s in setting:
        for i in range(n):
            hidden = cin * t
            expand = _conv(rng, cin, hidden, 1) if t != 1 else None
            dw = _conv(rng, hidden, hidden, 3, s if i == 0 else 1, 1, groups=hidden)
            project = _conv(rng, hidden, c, 1)
            stride = s if i == 0 else 1
            blocks.append((expand, dw, project, stride == 1 and cin == c))
            cin = c
    last = _conv(rng, cin, 1280, 1)
    fc_w, fc_b = _head(rng, 1280)

    def forward(x):
        y = _apply(stem, x, relu6=True)
        for expand, dw, project, residual in blocks:
            h = y if expand is None else _apply(expand, y, relu6=True)
            h = _apply(dw, h, relu6=True)
            h = _apply(project, h, relu=False)
            if residual:
                h += y
            y = h
        y = _apply(last, y, relu6=True)
        y = fastconv.adaptive_avg_pool2d(y, 1).reshape(len(x), -1)
        return y @ fc_w.T + fc_b

    return forward


NETWORKS = {"resnet18": lambda: resnet(18), "resnet50": lambda: resnet(50),
            "mobilenet_v2": mobilenet_v2}


def build(name):
    """The forward function of network ``name`` (one of ``NETWORKS``)."""
    if name not in NETWORKS:
        raise ValueError(f"unknown network {name!r}; known: {', '.join(NETWORKS)}")
    return NETWORKS[name]()
