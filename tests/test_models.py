"""fastconv.nn.models against PyTorch modules with torchvision's structure and names
(written here: torchvision is not needed), state_dict loading and its errors,
load_torch, and nn.optimize.

Outputs must equal PyTorch's within 1e-4 of the largest |logit| (issue 14)."""
import numpy as np
import pytest

import fastconv
from fastconv import nn

TOL = 1e-4


# -- PyTorch mirrors of torchvision's ResNet and MobileNet-v2 --------------------------------


def torch_models():
    """The mirror classes, built only when torch is importable."""
    torch = pytest.importorskip("torch", reason="torch not installed: no PyTorch mirror models")
    tnn = torch.nn

    def downsample(inp, out, stride):
        return tnn.Sequential(tnn.Conv2d(inp, out, 1, stride, bias=False), tnn.BatchNorm2d(out))

    class BasicBlock(tnn.Module):
        expansion = 1

        def __init__(self, inp, planes, stride, down):
            super().__init__()
            self.conv1 = tnn.Conv2d(inp, planes, 3, stride, 1, bias=False)
            self.bn1 = tnn.BatchNorm2d(planes)
            self.relu = tnn.ReLU()
            self.conv2 = tnn.Conv2d(planes, planes, 3, 1, 1, bias=False)
            self.bn2 = tnn.BatchNorm2d(planes)
            self.downsample = down

        def forward(self, x):
            y = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
            return self.relu(y + (x if self.downsample is None else self.downsample(x)))

    class Bottleneck(tnn.Module):
        expansion = 4

        def __init__(self, inp, planes, stride, down):
            super().__init__()
            self.conv1 = tnn.Conv2d(inp, planes, 1, bias=False)
            self.bn1 = tnn.BatchNorm2d(planes)
            self.conv2 = tnn.Conv2d(planes, planes, 3, stride, 1, bias=False)
            self.bn2 = tnn.BatchNorm2d(planes)
            self.conv3 = tnn.Conv2d(planes, planes * 4, 1, bias=False)
            self.bn3 = tnn.BatchNorm2d(planes * 4)
            self.relu = tnn.ReLU()
            self.downsample = down

        def forward(self, x):
            y = self.relu(self.bn1(self.conv1(x)))
            y = self.relu(self.bn2(self.conv2(y)))
            y = self.bn3(self.conv3(y))
            return self.relu(y + (x if self.downsample is None else self.downsample(x)))

    class ResNet(tnn.Module):
        def __init__(self, block, layers, num_classes):
            super().__init__()
            self.conv1 = tnn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.bn1 = tnn.BatchNorm2d(64)
            self.relu = tnn.ReLU()
            self.maxpool = tnn.MaxPool2d(3, 2, 1)
            inp = 64
            for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers)):
                blocks = []
                for j in range(n):
                    s = 2 if i > 0 and j == 0 else 1
                    out = planes * block.expansion
                    down = downsample(inp, out, s) if s != 1 or inp != out else None
                    blocks.append(block(inp, planes, s, down))
                    inp = out
                setattr(self, f"layer{i + 1}", tnn.Sequential(*blocks))
            self.avgpool = tnn.AdaptiveAvgPool2d((1, 1))
            self.fc = tnn.Linear(512 * block.expansion, num_classes)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(self.avgpool(x), 1))

    def conv_bn_act(inp, out, k=3, stride=1, groups=1):
        return tnn.Sequential(tnn.Conv2d(inp, out, k, stride, (k - 1) // 2, groups=groups,
                                         bias=False), tnn.BatchNorm2d(out), tnn.ReLU6())

    class InvertedResidual(tnn.Module):
        def __init__(self, inp, oup, stride, t):
            super().__init__()
            hidden = int(round(inp * t))
            self.use_res_connect = stride == 1 and inp == oup
            layers = [conv_bn_act(inp, hidden, 1)] if t != 1 else []
            layers += [conv_bn_act(hidden, hidden, 3, stride, hidden),
                       tnn.Conv2d(hidden, oup, 1, 1, 0, bias=False), tnn.BatchNorm2d(oup)]
            self.conv = tnn.Sequential(*layers)

        def forward(self, x):
            return x + self.conv(x) if self.use_res_connect else self.conv(x)

    class MobileNetV2(tnn.Module):
        def __init__(self, num_classes):
            super().__init__()
            setting = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                       (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
            features, inp = [conv_bn_act(3, 32, stride=2)], 32
            for t, c, n, s in setting:
                for i in range(n):
                    features.append(InvertedResidual(inp, c, s if i == 0 else 1, t))
                    inp = c
            features.append(conv_bn_act(inp, 1280, 1))
            self.features = tnn.Sequential(*features)
            self.classifier = tnn.Sequential(tnn.Dropout(0.2), tnn.Linear(1280, num_classes))

        def forward(self, x):
            x = tnn.functional.adaptive_avg_pool2d(self.features(x), (1, 1))
            return self.classifier(torch.flatten(x, 1))

    return torch, {
        "resnet18": lambda k: ResNet(BasicBlock, (2, 2, 2, 2), k),
        "resnet50": lambda k: ResNet(Bottleneck, (3, 4, 6, 3), k),
        "mobilenet_v2": lambda k: MobileNetV2(k),
    }


def randomised(torch, module, seed=0):
    """``module`` in eval mode with random BatchNorm statistics and affine parameters
    (non-trivial running mean and variance, so that folding them is tested)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.2)
                m.num_batches_tracked.fill_(7)
            elif isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g)
                               * (2.0 / m.weight[0].numel()) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return module.eval()


# -- torchvision names and outputs --------------------------------------------------------------


def test_resnet18_default_state_dict_matches_torchvision_names():
    """1000 classes by default; the same names, in the same order, with the same shapes
    as the torchvision-structured PyTorch model, whose state_dict loads as it is."""
    torch, mirrors = torch_models()
    ref = mirrors["resnet18"](1000)
    ours = nn.models.resnet18()
    theirs = ref.state_dict()
    assert list(ours.state_dict()) == list(theirs)
    assert {k: v.shape for k, v in ours.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in theirs.items()}
    for name in ("conv1.weight", "bn1.running_mean", "bn1.num_batches_tracked",
                 "layer1.0.conv1.weight", "layer1.0.bn1.running_var",
                 "layer2.0.downsample.0.weight", "layer2.0.downsample.1.running_var",
                 "fc.weight", "fc.bias"):
        assert name in ours.state_dict()
    ours.load_state_dict(theirs)                                  # torch tensors
    np.testing.assert_array_equal(ours.state_dict()["fc.weight"], theirs["fc.weight"].numpy())
    assert ours.state_dict()["fc.weight"].shape == (1000, 512)


@pytest.mark.parametrize("name, size", [("resnet18", 64), ("resnet50", 32),
                                        ("mobilenet_v2", 32)])
def test_model_matches_torch(name, size):
    """Loaded with a PyTorch state_dict, the eval-mode model and ``nn.optimize(model)``
    both give PyTorch's logits within 1e-4 of the largest |logit|."""
    torch, mirrors = torch_models()
    ref = randomised(torch, mirrors[name](10))
    model = getattr(nn.models, name)(num_classes=10)
    assert list(model.state_dict()) == list(ref.state_dict())
    model.load_state_dict(ref.state_dict())
    x = np.random.default_rng(1).standard_normal((2, 3, size, size)).astype(np.float32)
    with torch.no_grad():
        expected = ref(torch.from_numpy(x)).numpy()
    tol = TOL * np.abs(expected).max()
    fast = nn.optimize(model)
    got = fast(x)
    assert got.shape == (2, 10) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=0, atol=tol)
    # the second call runs in the memory format the first chose (MobileNet-v2: channels
    # last, every convolution computing so)
    np.testing.assert_allclose(fast(x), expected, rtol=0, atol=tol)
    if name == "mobilenet_v2" and ("conv2d", "direct", "numba") in fastconv._dispatch.REGISTRY:
        assert fast.format_for(x.shape) == "channels_last"
    np.testing.assert_allclose(model.eval()(x), expected, rtol=0, atol=tol)
    text = repr(fast)
    assert "+ bn" in text and "batchnorm" not in text            # every BN folded
    if name == "resnet18":
        assert ("= conv(%3) layer1.0.conv2 [64->64 3x3 stride=1 padding=1] + bn + residual %2 "
                "+ relu\n") in text
        assert text.count("conv(") == 20 and "add(" not in text   # 17 + 3 downsample convs
    if name == "mobilenet_v2":                  # each block one fused call
        assert ("%4 = inverted_residual(%3) features.3 [24->144->24 3x3 stride=1] + bn + relu6 "
                "+ residual %3\n") in text
        assert "= inverted_residual(%1) features.1 [32->16 3x3 stride=1] + bn + relu6\n" in text
        assert text.count("inverted_residual(") == 17 and text.count("conv(") == 2
        assert "dropout" not in text and "add(" not in text


# -- state_dict errors, load_torch --------------------------------------------------------------


def test_load_state_dict_names_every_problem():
    model = nn.models.resnet18(num_classes=10)
    state = model.state_dict()
    del state["layer1.0.conv1.weight"], state["bn1.running_mean"]
    state["fc.weight"] = np.zeros((1000, 512), np.float32)
    state["layer2.0.downsample.1.running_var"] = np.ones(3, np.float32)
    state["head.weight"] = np.zeros(2)
    with pytest.raises(ValueError) as e:
        model.load_state_dict(state)
    msg = str(e.value)
    assert "missing from the state: bn1.running_mean, layer1.0.conv1.weight" in msg
    assert "not in the model: head.weight" in msg
    assert "fc.weight: model has shape (10, 512), file has (1000, 512)" in msg
    assert "layer2.0.downsample.1.running_var: model has shape (128,), file has (3,)" in msg
    with pytest.raises(ValueError, match="fc.weight: model has shape"):
        model.load_state_dict(state, strict=False)                # shapes always checked


def test_num_batches_tracked_optional_and_counted():
    """Older checkpoints have no num_batches_tracked: still a strict load; training
    counts batches as PyTorch does, and the counter stays an integer under astype."""
    bn = nn.BatchNorm2d(3)
    state = {k: v for k, v in bn.state_dict().items() if k != "num_batches_tracked"}
    bn.load_state_dict(state)
    bn(np.ones((2, 3, 2, 2), np.float32))
    bn.astype(np.float64)
    assert bn.state_dict()["num_batches_tracked"] == 1
    assert bn.state_dict()["num_batches_tracked"].dtype == np.int64


def test_load_torch_round_trip(tmp_path):
    torch = pytest.importorskip("torch", reason="torch not installed: load_torch reads .pt")
    ref = randomised(torch, torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4)))
    ours = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))
    plain, wrapped = tmp_path / "plain.pt", tmp_path / "wrapped.pth"
    torch.save(ref.state_dict(), plain)
    torch.save({"epoch": 3, "state_dict": {"module." + k: v for k, v in ref.state_dict().items()}},
               wrapped)
    for path in (plain, wrapped):
        state = nn.load_torch(path)
        assert list(state) == list(ref.state_dict())
        assert all(isinstance(v, np.ndarray) for v in state.values())
        ours.load_state_dict(state)
        for k, v in ref.state_dict().items():
            np.testing.assert_array_equal(ours.state_dict()[k], v.numpy())
    half = {k: v.to(torch.bfloat16) if v.is_floating_point() else v
            for k, v in ref.state_dict().items()}                # NumPy has no bfloat16
    ours.load_state_dict(half)
    np.testing.assert_array_equal(ours.state_dict()["0.weight"], half["0.weight"].float().numpy())
    torch.save(ref, tmp_path / "whole.pt")
    with pytest.raises(Exception):                               # weights_only refuses a model
        nn.load_torch(tmp_path / "whole.pt")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        nn.load_torch(tmp_path / "absent.pt")


# -- optimize on the small networks -------------------------------------------------------------


def test_optimize_small_networks_and_errors():
    """The command line's networks are in nn.models (the same weights for a seed), and
    optimize equals their eval-mode forward."""
    from fastconv import cli
    x = np.random.default_rng(0).random((3, 1, 12, 12), dtype=np.float32)
    for build in (nn.models.seed_cnn, nn.models.gap_cnn):
        model = build((1, 12, 12), 3, rng=4)
        for m in model:
            if isinstance(m, nn.BatchNorm2d):
                m._buffers["running_mean"][...] = np.linspace(-0.2, 0.3, m.num_features)
                m._buffers["running_var"][...] = np.linspace(0.5, 2.0, m.num_features)
        name = "seed" if build is nn.models.seed_cnn else "gap"
        np.testing.assert_array_equal(cli.build_model(name, (1, 12, 12), 3, seed=4)[0].weight.data,
                                      model[0].weight.data)
        expected = model.eval()(x)
        np.testing.assert_allclose(nn.optimize(model)(x), expected, rtol=0,
                                   atol=1e-5 * np.abs(expected).max())
    with pytest.raises(ValueError, match=r"expected an \(N, C, H, W\).*shape \(1, 12, 12\)"):
        nn.optimize(model)(x[0])

    class Weird(nn.Module):
        pass
    with pytest.raises(TypeError, match=r"no inference lowering for Weird \(1\)"):
        nn.optimize(nn.Sequential(nn.Conv2d(1, 2, 3), Weird()))
    with pytest.raises(ValueError, match="optimize: 0 has 2 output channels, the BatchNorm2d "
                                         "after it 3 features"):
        nn.optimize(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(3)))


def test_optimize_validates_each_convolution_once_per_input_shape(monkeypatch):
    """An optimized model's convolutions run conv2d's checks on the first call of an
    input shape (and layout) only; later calls of that shape go straight to plan and
    kernel with the same results; a new shape (a new batch size) is checked again, as
    is one its layers cannot take."""
    from fastconv import functional as F
    from fastconv.nn.optimize import _ConvStep
    model = nn.models.resnet18(num_classes=10, rng=0)
    fast = nn.optimize(model, memory_format="contiguous")
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    expected = model.eval()(x)
    checks = []
    real = F._conv2d_check
    monkeypatch.setattr(F, "_conv2d_check", lambda *a: checks.append(a) or real(*a))
    n_conv = sum(isinstance(s, _ConvStep) for s in fast.steps)
    assert n_conv == 21             # the 7x7 stem, 16 3x3, 3 1x1 shortcuts, the fc layer
    first = fast(x)
    assert len(checks) == n_conv
    again = fast(x)
    assert len(checks) == n_conv                 # no check on the same shapes
    np.testing.assert_array_equal(again, first)
    np.testing.assert_allclose(first, expected, rtol=0, atol=1e-4 * np.abs(first).max())
    one = fast(x[:1])
    assert len(checks) == 2 * n_conv             # a new batch size: checked again
    np.testing.assert_array_equal(fast(x[:1]), one)
    np.testing.assert_allclose(one, first[:1], rtol=0, atol=1e-4 * np.abs(first).max())
    assert len(checks) == 2 * n_conv
    with pytest.raises(ValueError, match="expects input with 3 channels"):
        fast(np.zeros((1, 4, 32, 32), np.float32))


def test_optimized_model_plans_again_when_a_setting_changes():
    """An optimized model keeps each convolution's plan between calls, and makes it
    again when a setting the plan depends on changes (here the thread count): the plans
    traced name the new count, and the output is unchanged."""
    from fastconv import _config
    if _config.MAX_THREADS < 2:
        pytest.skip("needs 2 threads (NUMBA_NUM_THREADS)")
    fast = nn.optimize(nn.models.resnet18(num_classes=10, rng=0))
    x = np.random.default_rng(3).standard_normal((1, 3, 32, 32)).astype(np.float32)
    fast(x)                                  # the first call of a shape decides its layout
    before = fastconv.get_num_threads()
    try:
        outputs = []
        for n in (2, 1, 2):
            fastconv.set_num_threads(n)
            with fastconv.trace_plans() as ran:
                outputs.append(fast(x))
            assert {p.threads for p in ran if p.op == "conv2d"} == {n}
    finally:
        fastconv.set_num_threads(before)
    np.testing.assert_array_equal(outputs[2], outputs[0])
    np.testing.assert_allclose(outputs[1], outputs[0], rtol=0,
                               atol=1e-5 * np.abs(outputs[0]).max())


def test_optimized_model_profile():
    """``OptimizedModel.profile`` times every step of the model, as the network runs it
    and repeated at once: one entry per step in order, the plan each convolution ran
    (the plans a plain call traces), positive times; the model's output is unchanged."""
    from fastconv.nn.optimize import _ConvStep
    model = nn.models.resnet18(num_classes=10, rng=0)
    fast = nn.optimize(model)
    x = np.random.default_rng(2).standard_normal((1, 3, 32, 32)).astype(np.float32)
    fast(x)                                  # the first call of a shape decides its layout
    before = fast(x)
    rows = fast.profile(x, rounds=2)
    assert [r["label"] for r in rows] == [s.label for s in fast.steps]
    with fastconv.trace_plans() as ran:
        np.testing.assert_array_equal(fast(x), before)
    convs = [p for p in ran if p.op == "conv2d"]
    profiled = [r["plan"] for r in rows if r["plan"] is not None]
    assert len(profiled) == len(convs) == sum(isinstance(s, _ConvStep) for s in fast.steps)
    assert [(p.algorithm, p.backend, p.variant, p.layout) for p in profiled] == \
        [(p.algorithm, p.backend, p.variant, p.layout) for p in convs]
    for row, step in zip(rows, fast.steps):
        assert (row["plan"] is None) == (not isinstance(step, _ConvStep))
        assert row["ms"] > 0 and row["repeat_ms"] > 0
    with pytest.raises(ValueError, match="rounds must be at least 1"):
        fast.profile(x, rounds=0)


def test_optimized_model_reuses_its_output_buffers():
    """An optimized model writes its convolutions' outputs into buffers kept per thread:
    after the first call of a shape a call makes no new one, though every convolution
    wrote into one (the buffers number fewer than the convolutions); the outputs are
    bitwise the same call after call, and an array a call returned is the caller's (a
    later call leaves it as it was). A value that views a buffer keeps it from reuse: a
    Flatten straight after a convolution feeds the Linear correctly."""
    from fastconv.nn.optimize import _BlockStep, _ConvStep
    model = nn.models.mobilenet_v2(num_classes=10, rng=0)
    fast = nn.optimize(model)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
    first = fast(x)                             # NCHW; decides the layout
    second = fast(x)                            # channels last: buffers of its own shapes
    # the channels-last calls replay fixed kernel calls on the buffers of their own
    made = fast._replay(x.shape).buffers.allocated
    n_conv = sum(isinstance(s, (_ConvStep, _BlockStep)) for s in fast.steps)
    assert 0 < made < n_conv
    kept = second.copy()
    for _ in range(2):
        np.testing.assert_array_equal(fast(x), second)
    assert fast._replay(x.shape).buffers.allocated == made
    fast(2 * x)
    np.testing.assert_array_equal(second, kept)
    np.testing.assert_allclose(second, first, rtol=0, atol=1e-4 * np.abs(first).max())
    np.testing.assert_allclose(second, model.eval()(x), rtol=0,
                               atol=1e-4 * np.abs(first).max())
    fast.release_buffers()
    np.testing.assert_array_equal(fast(x), second)

    head = nn.Sequential(nn.Conv2d(3, 4, 3, rng=0), nn.Flatten(), nn.Linear(4 * 6 * 6, 5, rng=1))
    fast = nn.optimize(head)
    for _ in range(3):
        x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
        np.testing.assert_allclose(fast(x), head.eval()(x), rtol=1e-5, atol=1e-5)
    assert fast._buffers().allocated == 2       # the Linear's output not on the view's


def test_optimized_model_binds_its_channels_last_kernels(monkeypatch):
    """An optimized model runs MobileNet-v2's 17 inverted residual blocks as fused
    calls and its 1x1 and depthwise channels-last convolutions by the Cython kernels
    bound to each step's weights (``_Conv2dCall.bind``, ``_BlockCall.bind``): every
    such call holds a bound kernel and runs it (the rest run their plans as usual), bit
    for bit as the unbound kernels; after a change of thread count the new plans are
    bound again."""
    from fastconv import _dispatch, _plan
    from fastconv.nn.optimize import _BlockStep, _ConvStep
    if "cython" not in _dispatch.available_backends():
        pytest.skip("the Cython backend is not built here")
    model = nn.models.mobilenet_v2(num_classes=10, rng=0)
    fast = nn.optimize(model)
    x = np.random.default_rng(5).standard_normal((2, 3, 32, 32)).astype(np.float32)
    fast(x)                                     # decides the layout: channels last
    runs = []
    real_run_bound = _plan.run_bound

    def counted(plan, bound, *args):
        runs.append(plan.variant)
        real_run_bound(plan, bound, *args)
    monkeypatch.setattr(_plan, "run_bound", counted)

    def calls():
        return [(s, c) for s in fast.steps if isinstance(s, (_ConvStep, _BlockStep))
                for c in s._calls.values() if c.settings == _plan.settings()]

    def weights(step):
        return step.arrays if isinstance(step, _BlockStep) else step.weight.array

    with_bound_form = {("cython", "nhwc_gemm"), ("cython", "depthwise_nhwc"),
                       ("cython", "fused")}
    threads = fastconv.get_num_threads()
    try:
        for n in sorted({1, 2, threads}):
            fastconv.set_num_threads(n)
            runs.clear()
            with fastconv.trace_plans() as ran:
                y = fast(x)
            eligible = [q.variant for q in ran if (q.backend, q.variant) in with_bound_form]
            assert eligible and sorted(runs) == sorted(eligible)
            assert [q.op for q in ran].count("inverted_residual") == eligible.count("fused") == 17
            for _, c in calls():
                assert (c.bound is not None) == ((c.plan.backend, c.plan.variant)
                                                 in with_bound_form), c.plan
            np.testing.assert_allclose(y, model.eval()(x), rtol=0, atol=1e-4 * np.abs(y).max())
            for _, c in calls():
                c.bound = None                  # the same plans, unbound
            fast.release_buffers()              # the replay of the bound calls too
            runs.clear()
            np.testing.assert_array_equal(fast(x), y)
            assert not runs
            for s, c in calls():
                c.bind(weights(s))
            fast.release_buffers()
    finally:
        fastconv.set_num_threads(threads)


def test_optimized_model_from_several_threads():
    """Python threads calling one optimized model at once each get their own buffers
    and the same results as one thread alone."""
    import threading
    model = nn.models.resnet18(num_classes=10, rng=0)
    fast = nn.optimize(model)
    xs = [np.random.default_rng(s).standard_normal((1, 3, 32, 32)).astype(np.float32)
          for s in range(4)]
    fast(xs[0])                                 # the first call of the shape decides
    want = [fast(x) for x in xs]
    got, errors = {}, []

    def work(i):
        try:
            for _ in range(3):
                got[i] = fast(xs[i])
                np.testing.assert_array_equal(got[i], want[i])
        except Exception as e:                  # noqa: BLE001  (reported below)
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(got) == 4


def test_optimized_global_pool_is_checked_once_per_input_shape(monkeypatch):
    """The global average pool before the classifier runs adaptive_avg_pool2d's checks
    on the first call of an input shape only, then its kept plan (the same result)."""
    from fastconv import functional as F
    model = nn.models.mobilenet_v2(num_classes=10, rng=0)
    fast = nn.optimize(model)
    x = np.random.default_rng(6).standard_normal((2, 3, 64, 64)).astype(np.float32)
    fast(x)                                     # decides the layout: channels last
    checks = []
    real = F._adaptive_avg_check
    monkeypatch.setattr(F, "_adaptive_avg_check", lambda *a: checks.append(a) or real(*a))
    with fastconv.trace_plans() as ran:
        first = fast(x)
    assert len(checks) == 1 and [p.op for p in ran].count("adaptive_avg_pool2d") == 1
    np.testing.assert_array_equal(fast(x), first)
    assert len(checks) == 1
    np.testing.assert_allclose(first, model.eval()(x), rtol=0, atol=1e-4 * np.abs(first).max())


@pytest.mark.parametrize("name", ["mobilenet_v2", "resnet18"])
def test_optimized_model_replays_its_kernel_calls(name, monkeypatch):
    """From the second call of a channels-last input shape, an optimized model whose
    every step has a fixed kernel call replays those calls (no step is asked for its
    call again): bit for bit the step-by-step run, on every input (the input copied in
    on each call, whether NCHW or channels-last), the returned arrays the caller's (a
    later call leaves them as they were); a new shape makes a replay of its own."""
    from fastconv.nn.optimize import _Replay
    model = getattr(nn.models, name)(num_classes=10, rng=0)
    fast = nn.optimize(model)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
    fast(x)                                     # NCHW; decides the layout: channels last
    assert fast.format_for(x.shape) == "channels_last"
    first = fast(x)                             # makes the replay, then runs it
    replay = fast._replay(x.shape)
    assert isinstance(replay, _Replay) and len(replay.calls) == len(fast.steps)
    asked = []
    real = {cls: cls.kernel_call for cls in {type(s) for s in fast.steps}}
    for cls, fn in real.items():
        monkeypatch.setattr(cls, "kernel_call",
                            lambda self, *a, _fn=fn: asked.append(self) or _fn(self, *a))
    outs = []
    for xi in (x, 2 * x, fastconv.to_channels_last(-x)):
        outs.append(fast(xi))
        assert not asked                        # replayed: no step was asked
        np.testing.assert_array_equal(outs[-1], fast._run(fastconv.to_channels_last(xi)))
        assert asked                            # (the step-by-step run asked them)
        asked.clear()
    np.testing.assert_array_equal(outs[0], first)
    np.testing.assert_array_equal(first, fast(x))
    np.testing.assert_array_equal(outs[1], fast(2 * x))           # still the caller's
    np.testing.assert_allclose(outs[2], model.eval()(-x), rtol=0,
                               atol=1e-4 * np.abs(outs[2]).max())
    fast(x[:1])
    assert fast._replay(x[:1].shape) is not replay
    assert fast._replay(x.shape) is replay


def test_optimized_model_without_fixed_calls_runs_step_by_step():
    """A model with a step whose value is made afresh by each call (a LeakyReLU, which
    no convolution takes into its call) gets no replay, and runs step by step, correctly,
    call after call."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3, rng=0), nn.LeakyReLU(0.1),
                          nn.Conv2d(8, 4, 1, rng=1))
    fast = nn.optimize(model, memory_format="channels_last")
    x = np.random.default_rng(8).standard_normal((2, 3, 9, 9)).astype(np.float32)
    for _ in range(3):
        np.testing.assert_allclose(fast(x), model.eval()(x), rtol=1e-5, atol=1e-5)
    assert fast._replay(x.shape) is None
