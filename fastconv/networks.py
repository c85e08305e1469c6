"""Whole networks for benchmarks, built from fastconv's functional API: a network pays
costs that one layer called again and again hides (weights seen once per pass, layout
conversions, thread hand-offs between small layers).

A network is a spec: a list of weights (BatchNorm folded into a bias; random He-init,
seeded) and the order they run in. ``fastconv_forward(spec)`` runs it as a user of the
functional API would write it for speed: the weights prepared once
(``fastconv.prepare_weight``), the input converted to channels last once
(``fastconv.to_channels_last``; every op keeps the layout), ``fastconv.conv2d`` with the
bias, the residual adds and ReLU/ReLU6 fused into the convolution that precedes them
(``activation=``, ``residual=``), fastconv's pooling and a NumPy matmul head. Each of
those can be turned off (``fused=False``: NumPy's ``maximum``/``clip`` and ``+`` after
the call; ``prepared=False``: plain weight arrays; ``channels_last=False``: NCHW), and
is off on a fastconv without it. ``torch_module(spec)`` is the same network in PyTorch
(eager), with the same weights.
Only the public functional API is used, so the same code runs against any fastconv
version (``benchmarks/ab.py`` compares two).

    from fastconv import networks
    spec = networks.build("resnet18")
    logits = networks.fastconv_forward(spec)(np.random.rand(8, 3, 224, 224).astype(np.float32))
"""
import inspect
import time

import numpy as np

import fastconv


def _conv(rng, name, cin, cout, k, stride=1, pad=None, groups=1, act="relu"):
    w = rng.standard_normal((cout, cin // groups, k, k), dtype=np.float32)
    w *= np.float32(np.sqrt(2.0 / (cin // groups * k * k)))
    b = rng.standard_normal(cout, dtype=np.float32) * np.float32(0.01)
    return dict(name=name, w=w, b=b, stride=stride, padding=k // 2 if pad is None else pad,
                groups=groups, act=act)


def _head(rng, cin, classes=1000):
    w = rng.standard_normal((classes, cin), dtype=np.float32) * np.float32(np.sqrt(1.0 / cin))
    return dict(w=w, b=np.zeros(classes, np.float32))


def resnet(depth, seed=0):
    """ResNet-18 (basic blocks) or ResNet-50 (bottlenecks), torchvision's shapes."""
    rng = np.random.default_rng(seed)
    bottleneck = depth == 50
    counts = {18: (2, 2, 2, 2), 50: (3, 4, 6, 3)}[depth]
    spec = dict(kind="resnet", stem=_conv(rng, "conv1", 3, 64, 7, 2, 3), pool=(3, 2, 1),
                blocks=[])
    cin = 64
    for stage, (n, width) in enumerate(zip(counts, (64, 128, 256, 512))):
        for i in range(n):
            stride = 2 if stage > 0 and i == 0 else 1
            cout = width * 4 if bottleneck else width
            name = f"layer{stage + 1}.{i}"
            if bottleneck:
                convs = [_conv(rng, f"{name}.conv1", cin, width, 1),
                         _conv(rng, f"{name}.conv2", width, width, 3, stride),
                         _conv(rng, f"{name}.conv3", width, cout, 1, act=None)]
            else:
                convs = [_conv(rng, f"{name}.conv1", cin, width, 3, stride),
                         _conv(rng, f"{name}.conv2", width, width, 3, act=None)]
            down = (_conv(rng, f"{name}.downsample", cin, cout, 1, stride, 0, act=None)
                    if stride != 1 or cin != cout else None)
            spec["blocks"].append(dict(convs=convs, down=down, act="relu"))
            cin = cout
    spec["fc"] = _head(rng, cin)
    return spec


def vgg16(seed=0):
    """VGG-16 (configuration D), without its fully connected layers but the last."""
    rng = np.random.default_rng(seed)
    cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
           512, 512, 512, "M"]
    layers, cin, stage, i = [], 3, 1, 1
    for v in cfg:
        if v == "M":
            layers.append("M")
            stage, i = stage + 1, 1
            continue
        layers.append(_conv(rng, f"conv{stage}_{i}", cin, v, 3))
        cin, i = v, i + 1
    return dict(kind="plain", layers=layers, fc=_head(rng, cin))


def mobilenet_v2(seed=0):
    """MobileNet-v2: inverted residuals (expansion 1x1, depthwise 3x3 with stride 2 in
    places, projection 1x1), ReLU6, torchvision's widths and strides."""
    rng = np.random.default_rng(seed)
    setting = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
               (6, 160, 3, 2), (6, 320, 1, 1)]
    spec = dict(kind="mobilenet", stem=_conv(rng, "features.0", 3, 32, 3, 2, 1, act="relu6"),
                blocks=[])
    cin, b = 32, 1
    for t, c, n, s in setting:
        for i in range(n):
            hidden, stride, name = cin * t, s if i == 0 else 1, f"features.{b}"
            convs = ([_conv(rng, f"{name}.expand", cin, hidden, 1, act="relu6")] if t != 1
                     else [])
            convs += [_conv(rng, f"{name}.dw", hidden, hidden, 3, stride, 1, groups=hidden,
                            act="relu6"),
                      _conv(rng, f"{name}.project", hidden, c, 1, act=None)]
            spec["blocks"].append(dict(convs=convs, down=None, act=None,
                                       residual=stride == 1 and cin == c))
            cin, b = c, b + 1
    spec["last"] = _conv(rng, f"features.{b}", cin, 1280, 1, act="relu6")
    spec["fc"] = _head(rng, 1280)
    return spec


def mnist(seed=0):
    """The seed MNIST network: two 5x5 convolutions with max pooling (28 x 28 input)."""
    rng = np.random.default_rng(seed)
    return dict(kind="plain", layers=[_conv(rng, "conv1", 1, 32, 5), "M",
                                      _conv(rng, "conv2", 32, 64, 5), "M"],
                fc=_head(rng, 64, 10), input=(1, 28, 28))


NETWORKS = {"resnet18": lambda: resnet(18), "resnet50": lambda: resnet(50),
            "vgg16": vgg16, "mobilenet_v2": mobilenet_v2, "mnist": mnist}


def build(name):
    """The spec of network ``name`` (one of ``NETWORKS``)."""
    if name not in NETWORKS:
        raise ValueError(f"unknown network {name!r}; known: {', '.join(NETWORKS)}")
    spec = NETWORKS[name]()
    spec.setdefault("input", (3, 224, 224))
    spec["name"] = name
    return spec


def convs(spec):
    """Every convolution of the spec, in order."""
    out = [spec["stem"]] if "stem" in spec else []
    out += [L for L in spec.get("layers", []) if L != "M"]
    for block in spec.get("blocks", []):
        out += block["convs"] + ([block["down"]] if block["down"] is not None else [])
    if "last" in spec:
        out.append(spec["last"])
    return out


# -- fastconv ---------------------------------------------------------------------------

def _fuses():
    """Whether this fastconv's conv2d fuses the residual and activation (``benchmarks/
    ab.py`` runs this file against older versions too)."""
    return "residual" in inspect.signature(fastconv.conv2d).parameters


def fastconv_forward(spec, profile=None, fused=None, prepared=None, channels_last=None):
    """The network as ``forward(x) -> logits`` (x NCHW) on fastconv's functional API.
    With a list ``profile``, each convolution appends (layer, plan, seconds, flops).
    Each option defaults to on when this fastconv has it: ``fused``, the residual add
    and the activation after a convolution in its call, else in NumPy after it;
    ``prepared``, the weights prepared once here; ``channels_last``, x converted to
    channels last on entry and the activations kept so."""
    fused = _fuses() if fused is None else fused
    prepared = hasattr(fastconv, "prepare_weight") if prepared is None else prepared
    channels_last = (hasattr(fastconv, "to_channels_last") if channels_last is None
                     else channels_last)
    weights = {layer["name"]: fastconv.prepare_weight(layer["w"]) if prepared else layer["w"]
               for layer in convs(spec)}

    def conv(layer, x, residual=None, act=None):
        """The layer on x, then + residual, then its activation or ``act``."""
        act = layer["act"] or act
        w = weights[layer["name"]]
        kw = dict(stride=layer["stride"], padding=layer["padding"], groups=layer["groups"])
        if fused:
            kw.update(activation=act, residual=residual)
        if profile is not None:
            t0 = time.perf_counter()
            with fastconv.trace_plans() as ran:
                y = fastconv.conv2d(x, w, layer["b"], **kw)
            seconds = time.perf_counter() - t0
            K, Cg, R, S = layer["w"].shape
            flops = 2 * y.shape[0] * y.shape[2] * y.shape[3] * K * Cg * R * S
            profile.append((layer["name"], ran[-1] if ran else None, seconds, flops))
        else:
            y = fastconv.conv2d(x, w, layer["b"], **kw)
        if fused:
            return y
        if residual is not None:
            y += residual
        if act == "relu":
            np.maximum(y, 0, out=y)
        elif act == "relu6":
            np.clip(y, 0, 6, out=y)
        return y

    def forward(x):
        y = fastconv.to_channels_last(x) if channels_last else x
        y = conv(spec["stem"], y) if "stem" in spec else y
        if spec["kind"] == "resnet":
            y = fastconv.max_pool2d(y, *spec["pool"])
        for layer in spec.get("layers", []):
            y = fastconv.max_pool2d(y, 2, 2) if layer == "M" else conv(layer, y)
        for block in spec.get("blocks", []):
            # the shortcut first: the block's last convolution adds it, then its activation
            if block["down"] is not None:
                shortcut = conv(block["down"], y)
            elif block.get("residual", spec["kind"] == "resnet"):
                shortcut = y
            else:
                shortcut = None
            h = y
            for layer in block["convs"][:-1]:
                h = conv(layer, h)
            y = conv(block["convs"][-1], h, shortcut, block["act"])
        if "last" in spec:
            y = conv(spec["last"], y)
        y = fastconv.adaptive_avg_pool2d(y, 1).reshape(len(x), -1)
        return y @ spec["fc"]["w"].T + spec["fc"]["b"]

    return forward


# -- PyTorch ------------------------------------------------------------------------------

def torch_module(spec, profile=None):
    """The same network as a ``torch.nn.Module`` (eager), with the same weights. With a
    list ``profile``, each convolution, with the residual add and activation after it,
    appends (layer, seconds), as :func:`fastconv_forward`'s profile does."""
    import time

    import torch
    import torch.nn.functional as F

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.params = torch.nn.ParameterList()
            self.index = {}
            for layer in convs(spec) + [dict(name="fc", **spec["fc"])]:
                self.index[layer["name"]] = len(self.params)
                self.params.append(torch.nn.Parameter(torch.from_numpy(layer["w"].copy()),
                                                      requires_grad=False))
                self.params.append(torch.nn.Parameter(torch.from_numpy(layer["b"].copy()),
                                                      requires_grad=False))

        def conv(self, layer, x, residual=None, act=None):
            """The layer on x, then + residual, then its activation or ``act``."""
            if profile is None:
                return self.conv_act(layer, x, residual, act)
            t0 = time.perf_counter()
            y = self.conv_act(layer, x, residual, act)
            profile.append((layer["name"], time.perf_counter() - t0))
            return y

        def conv_act(self, layer, x, residual, act):
            i = self.index[layer["name"]]
            y = F.conv2d(x, self.params[i], self.params[i + 1], layer["stride"],
                         layer["padding"], 1, layer["groups"])
            if residual is not None:
                y = y + residual
            act = layer["act"] or act
            if act == "relu":
                return F.relu(y)
            return F.relu6(y) if act == "relu6" else y

        def forward(self, x):
            y = self.conv(spec["stem"], x) if "stem" in spec else x
            if spec["kind"] == "resnet":
                y = F.max_pool2d(y, *spec["pool"])
            for layer in spec.get("layers", []):
                y = F.max_pool2d(y, 2, 2) if layer == "M" else self.conv(layer, y)
            for block in spec.get("blocks", []):
                # as fastconv_forward: the shortcut first, added by the last convolution
                if block["down"] is not None:
                    shortcut = self.conv(block["down"], y)
                elif block.get("residual", spec["kind"] == "resnet"):
                    shortcut = y
                else:
                    shortcut = None
                h = y
                for layer in block["convs"][:-1]:
                    h = self.conv(layer, h)
                y = self.conv(block["convs"][-1], h, shortcut, block["act"])
            if "last" in spec:
                y = self.conv(spec["last"], y)
            y = F.adaptive_avg_pool2d(y, 1).flatten(1)
            i = self.index["fc"]
            return F.linear(y, self.params[i], self.params[i + 1])

    return Net().eval()
