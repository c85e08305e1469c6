"""Ready-made networks: torchvision's ResNet-18, ResNet-50 and MobileNet-v2, and the
two small networks of the ``fastconv train`` command line.

The large models have torchvision's structure and parameter names (``conv1.weight``,
``bn1.running_mean``, ``layer1.0.downsample.0.weight``, ``features.1.conv.0.0.weight``,
``classifier.1.bias``, ...), so a trained torchvision model comes over by its
``state_dict``, with no torchvision on the fastconv side::

    # PyTorch side
    torch.save(torchvision.models.resnet18(weights="DEFAULT").state_dict(), "r18.pth")

    # fastconv side (torch installed, or arrays saved with numpy.savez)
    from fastconv import nn
    model = nn.models.resnet18()
    model.load_state_dict(nn.load_torch("r18.pth"))
    logits = nn.optimize(model)(images)          # (N, 3, 224, 224) float32 -> (N, 1000)

Every model trains too (``forward``/``backward`` like any ``fastconv.nn`` layer).
"""
import numpy as np

from .layers import (AdaptiveAvgPool2d, BatchNorm2d, Conv2d, Dropout, Flatten,
                     GlobalAvgPool2d, Linear, MaxPool2d, Module, ReLU, ReLU6, Sequential)

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "resnet18", "resnet50", "InvertedResidual",
           "MobileNetV2", "mobilenet_v2", "conv_bn_act", "seed_cnn", "gap_cnn"]


def conv_bn_act(in_channels, out_channels, kernel_size=3, stride=1, groups=1,
                activation=ReLU6, rng=None):
    """Conv (no bias, padding ``(k-1)//2``) -> BatchNorm -> activation, as
    torchvision's ``Conv2dNormActivation``: a Sequential named ``0``, ``1``, ``2``."""
    return Sequential(Conv2d(in_channels, out_channels, kernel_size, stride,
                             (kernel_size - 1) // 2, groups=groups, bias=False, rng=rng),
                      BatchNorm2d(out_channels), activation())


class _Chain(Module):
    """A model that runs its ``_named_sequence()`` of (name, layer) in order forward and
    in reverse order backward (``fastconv.nn.optimize`` reads the same sequence)."""

    def _named_sequence(self):
        raise NotImplementedError

    def forward(self, x):
        for _, layer in self._named_sequence():
            x = layer(x)
        return x

    def backward(self, grad_output):
        g = grad_output
        for _, layer in reversed(self._named_sequence()):
            g = layer.backward(g)
        return g


# -- ResNet ------------------------------------------------------------------------------------


class _Residual(Module):
    """``relu(body(x) + shortcut(x))``: the shared forward/backward of ResNet's blocks.
    ``body`` lists the (conv, bn) pairs; a ReLU follows each pair but the last."""

    def _pairs(self):
        raise NotImplementedError

    def forward(self, x):
        pairs = self._pairs()
        self._masks = []
        h = x
        for i, (conv, bn) in enumerate(pairs):
            h = bn(conv(h))
            if i < len(pairs) - 1:
                self._masks.append(h > 0)
                h = h * self._masks[-1]
        h = h + (x if self.downsample is None else self.downsample(x))
        self._masks.append(h > 0)
        return h * self._masks[-1]

    def backward(self, grad_output):
        g = grad_output * self._masks[-1]
        shortcut = g if self.downsample is None else self.downsample.backward(g)
        pairs = self._pairs()
        for i in reversed(range(len(pairs))):
            conv, bn = pairs[i]
            if i < len(pairs) - 1:
                g = g * self._masks[i]
            g = conv.backward(bn.backward(g))
        return g + shortcut


def _downsample(inplanes, outplanes, stride, rng):
    """torchvision's shortcut: 1x1 conv with stride, then BatchNorm (``downsample.0/1``)."""
    return Sequential(Conv2d(inplanes, outplanes, 1, stride, bias=False, rng=rng),
                      BatchNorm2d(outplanes))


class BasicBlock(_Residual):
    """ResNet-18/34's block: 3x3 conv (stride) -> BN -> ReLU -> 3x3 conv -> BN, plus
    the shortcut (identity, or ``downsample``: 1x1 conv with stride + BN), then ReLU."""

    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, rng=None):
        super().__init__()
        self.conv1 = self._modules["conv1"] = Conv2d(inplanes, planes, 3, stride, 1,
                                                     bias=False, rng=rng)
        self.bn1 = self._modules["bn1"] = BatchNorm2d(planes)
        self.relu = self._modules["relu"] = ReLU()
        self.conv2 = self._modules["conv2"] = Conv2d(planes, planes, 3, 1, 1, bias=False, rng=rng)
        self.bn2 = self._modules["bn2"] = BatchNorm2d(planes)
        self.downsample = downsample
        if downsample is not None:
            self._modules["downsample"] = downsample

    def _pairs(self):
        return [(self.conv1, self.bn1), (self.conv2, self.bn2)]


class Bottleneck(_Residual):
    """ResNet-50's block (torchvision's "v1.5": the stride on the 3x3 conv): 1x1 conv
    -> BN -> ReLU -> 3x3 conv (stride) -> BN -> ReLU -> 1x1 conv to ``4*planes`` -> BN,
    plus the shortcut, then ReLU."""

    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, rng=None):
        super().__init__()
        out = planes * self.expansion
        m = self._modules
        self.conv1 = m["conv1"] = Conv2d(inplanes, planes, 1, bias=False, rng=rng)
        self.bn1 = m["bn1"] = BatchNorm2d(planes)
        self.conv2 = m["conv2"] = Conv2d(planes, planes, 3, stride, 1, bias=False, rng=rng)
        self.bn2 = m["bn2"] = BatchNorm2d(planes)
        self.conv3 = m["conv3"] = Conv2d(planes, out, 1, bias=False, rng=rng)
        self.bn3 = m["bn3"] = BatchNorm2d(out)
        self.relu = m["relu"] = ReLU()
        self.downsample = downsample
        if downsample is not None:
            m["downsample"] = downsample

    def _pairs(self):
        return [(self.conv1, self.bn1), (self.conv2, self.bn2), (self.conv3, self.bn3)]


class ResNet(_Chain):
    """torchvision's ResNet: 7x7/2 conv -> BN -> ReLU -> 3x3/2 max-pool -> four stages
    (``layer1``..``layer4``, 64/128/256/512 planes, stride 2 from the second on) ->
    adaptive average pool -> ``fc``. Input (N, 3, H, W), H and W at least 32
    (224 for ImageNet weights); output (N, num_classes) logits."""

    def __init__(self, block, layers, num_classes=1000, rng=None):
        super().__init__()
        rng = np.random.default_rng(rng)
        m = self._modules
        self.conv1 = m["conv1"] = Conv2d(3, 64, 7, 2, 3, bias=False, rng=rng)
        self.bn1 = m["bn1"] = BatchNorm2d(64)
        self.relu = m["relu"] = ReLU()
        self.maxpool = m["maxpool"] = MaxPool2d(3, 2, 1)
        inplanes = 64
        self.stages = []
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers)):
            stride = 1 if i == 0 else 2
            blocks = []
            for j in range(n):
                s = stride if j == 0 else 1
                down = None
                if s != 1 or inplanes != planes * block.expansion:
                    down = _downsample(inplanes, planes * block.expansion, s, rng)
                blocks.append(block(inplanes, planes, s, down, rng=rng))
                inplanes = planes * block.expansion
            stage = m[f"layer{i + 1}"] = Sequential(*blocks)
            setattr(self, f"layer{i + 1}", stage)
            self.stages.append(stage)
        self.avgpool = m["avgpool"] = AdaptiveAvgPool2d((1, 1))
        self._flatten = Flatten()
        self.fc = m["fc"] = Linear(512 * block.expansion, num_classes, rng=rng)
        self.num_classes = num_classes

    def _named_sequence(self):
        """(name, layer) in the order the forward pass runs them."""
        return ([("conv1", self.conv1), ("bn1", self.bn1), ("relu", self.relu),
                 ("maxpool", self.maxpool)]
                + [(f"layer{i + 1}", s) for i, s in enumerate(self.stages)]
                + [("avgpool", self.avgpool), ("flatten", self._flatten), ("fc", self.fc)])


def resnet18(num_classes=1000, rng=None):
    """ResNet-18 (He et al. 2016), torchvision's structure and names; random He init
    (``rng``: seed or Generator). Load trained weights with ``load_state_dict``."""
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes, rng)


def resnet50(num_classes=1000, rng=None):
    """ResNet-50 (bottleneck blocks, stride on the 3x3 conv as torchvision's v1.5),
    torchvision's structure and names; random He init."""
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes, rng)


# -- MobileNet-v2 --------------------------------------------------------------------------------


class InvertedResidual(Module):
    """MobileNet-v2's block, as torchvision's: ``conv`` = [1x1 expansion conv-BN-ReLU6
    (when ``expand_ratio != 1``)], 3x3 depthwise conv-BN-ReLU6 (stride), 1x1 projection
    conv, BN; plus the input when stride is 1 and the channel count is unchanged."""

    def __init__(self, inp, oup, stride, expand_ratio, rng=None):
        super().__init__()
        hidden = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers = [conv_bn_act(inp, hidden, 1, rng=rng)] if expand_ratio != 1 else []
        layers += [conv_bn_act(hidden, hidden, 3, stride, groups=hidden, rng=rng),
                   Conv2d(hidden, oup, 1, bias=False, rng=rng), BatchNorm2d(oup)]
        self.conv = self._modules["conv"] = Sequential(*layers)

    def forward(self, x):
        y = self.conv(x)
        return x + y if self.use_res_connect else y

    def backward(self, grad_output):
        g = self.conv.backward(grad_output)
        return g + grad_output if self.use_res_connect else g

    def extra_repr(self):
        return f"use_res_connect={self.use_res_connect}"


class MobileNetV2(_Chain):
    """torchvision's MobileNet-v2 (Sandler et al. 2018, width 1.0): ``features`` (stem
    3x3/2 conv-BN-ReLU6, 17 inverted residual blocks, 1x1 conv to 1280 channels), global
    average pooling, ``classifier`` (Dropout(0.2), Linear). Output (N, num_classes)."""

    # expansion t, output channels c, repeats n, first stride s (torchvision's table)
    SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
               (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, num_classes=1000, dropout=0.2, rng=None):
        super().__init__()
        rng = np.random.default_rng(rng)
        features = [conv_bn_act(3, 32, 3, 2, rng=rng)]
        cin = 32
        for t, c, n, s in self.SETTING:
            for i in range(n):
                features.append(InvertedResidual(cin, c, s if i == 0 else 1, t, rng=rng))
                cin = c
        features.append(conv_bn_act(cin, 1280, 1, rng=rng))
        self.features = self._modules["features"] = Sequential(*features)
        self._pool = GlobalAvgPool2d()
        self.classifier = self._modules["classifier"] = Sequential(
            Dropout(dropout, rng=rng), Linear(1280, num_classes, rng=rng))
        self.num_classes = num_classes

    def _named_sequence(self):
        """(name, layer) in the order the forward pass runs them."""
        return [("features", self.features), ("pool", self._pool),
                ("classifier", self.classifier)]


def mobilenet_v2(num_classes=1000, rng=None):
    """MobileNet-v2 (width 1.0), torchvision's structure and names; random init."""
    return MobileNetV2(num_classes, rng=rng)


# -- the command line's small networks -----------------------------------------------------------


def seed_cnn(input_shape=(1, 28, 28), num_classes=10, rng=None):
    """The classic "CNN from scratch" MNIST network (``fastconv train --model seed``):
    conv 3x3 with 8 filters, no bias -> max-pool 2 -> flatten -> linear to the classes.
    ``input_shape``: (C, H, W) of one image."""
    rng = np.random.default_rng(rng)
    C, H, W = input_shape
    P, Q = (H - 2) // 2, (W - 2) // 2
    return Sequential(Conv2d(C, 8, 3, bias=False, rng=rng), MaxPool2d(2), Flatten(),
                      Linear(8 * P * Q, num_classes, rng=rng))


def gap_cnn(input_shape=(1, 28, 28), num_classes=2, rng=None):
    """``fastconv train --model gap``: three conv 3x3 (padding 1, no bias) + BatchNorm +
    ReLU blocks with 16, 32, 64 filters, max-pool 2 after the first two, then global
    average pooling and a linear layer (so class activation maps apply)."""
    rng = np.random.default_rng(rng)
    C = input_shape[0]
    return Sequential(
        Conv2d(C, 16, 3, padding=1, bias=False, rng=rng), BatchNorm2d(16), ReLU(), MaxPool2d(2),
        Conv2d(16, 32, 3, padding=1, bias=False, rng=rng), BatchNorm2d(32), ReLU(), MaxPool2d(2),
        Conv2d(32, 64, 3, padding=1, bias=False, rng=rng), BatchNorm2d(64), ReLU(),
        GlobalAvgPool2d(), Linear(64, num_classes, rng=rng))
