"""fastconv.nn: float64 central finite-difference checks of every layer and loss
(input gradient and parameter gradients), optimiser steps against hand-computed
values and torch.optim, save/load, fit/evaluate/predict and class activation maps."""
import numpy as np
import pytest

from fastconv import nn

from conftest import numerical_grad

TOL = 1e-6          # relative error of analytic vs numerical gradients in float64


def rel_err(a, b):
    return np.abs(a - b).max() / max(np.abs(b).max(), 1e-12)


def check_layer(layer, x, seed=0):
    """Check d(sum(y * r))/dx and d/dparams for a random projection r."""
    layer.astype(np.float64)
    x = x.astype(np.float64)
    r = np.random.default_rng(seed + 100).standard_normal(layer.forward(x).shape)

    def f():
        return float(np.sum(layer.forward(x) * r))

    layer.zero_grad()
    layer.forward(x)
    dx = layer.backward(r)
    assert dx.shape == x.shape and dx.dtype == np.float64
    assert rel_err(dx, numerical_grad(f, x)) < TOL, "input gradient"
    for name, p in layer.named_parameters():
        analytic = p.grad.copy()
        assert rel_err(analytic, numerical_grad(f, p.data)) < TOL, f"gradient of {name}"


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


# -- layers --------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [
    dict(stride=1, padding=0),
    dict(stride=2, padding=1),
    dict(stride=1, padding=1, dilation=2, groups=2),
])
def test_conv2d_gradients(kwargs):
    layer = nn.Conv2d(4, 6, 3, rng=0, **kwargs)
    layer.bias.data[...] = rand(6, seed=3)
    check_layer(layer, rand(2, 4, 6, 7))


def test_conv2d_passes_algorithm_through():
    x = rand(1, 2, 5, 5)
    a = nn.Conv2d(2, 3, 3, rng=0, algorithm="reference", dtype=np.float64)
    b = nn.Conv2d(2, 3, 3, rng=0, algorithm="im2col", backend="numba", dtype=np.float64)
    np.testing.assert_allclose(a(x), b(x), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="no kernel"):
        nn.Conv2d(2, 3, 3, algorithm="nonexistent", dtype=np.float64)(x)


def test_linear_gradients():
    check_layer(nn.Linear(5, 3, rng=0), rand(4, 5))


@pytest.mark.parametrize("layer", [nn.ReLU(), nn.ReLU6(), nn.LeakyReLU(0.1), nn.Sigmoid(),
                                   nn.Flatten()], ids=lambda m: type(m).__name__)
def test_activation_gradients(layer):
    x = rand(3, 2, 4, 4) * 4             # some values past ReLU6's 6
    x[np.abs(x) < 1e-3] = 0.5            # keep away from the kinks
    x[np.abs(x - 6) < 1e-3] = 5.5
    check_layer(layer, x)


@pytest.mark.parametrize("layer", [nn.MaxPool2d(2), nn.MaxPool2d(3, 2, padding=1),
                                   nn.AvgPool2d(2), nn.AvgPool2d(3, 2, padding=1,
                                                                 count_include_pad=False),
                                   nn.GlobalAvgPool2d(), nn.AdaptiveAvgPool2d((4, 5)),
                                   nn.AdaptiveAvgPool2d(1)], ids=repr)
def test_pooling_gradients(layer):
    # distinct values so that max pooling's argmax is stable under the perturbation
    x = np.random.default_rng(1).permutation(2 * 3 * 6 * 6).reshape(2, 3, 6, 6) * 0.01
    check_layer(layer, x)


@pytest.mark.parametrize("make, channels", [
    (lambda: nn.BasicBlock(3, 4, 2, nn.Sequential(nn.Conv2d(3, 4, 1, 2, bias=False),
                                                  nn.BatchNorm2d(4)), rng=0), 3),
    (lambda: nn.Bottleneck(8, 2, 1, rng=0), 8),
    (lambda: _wide_expansion(nn.InvertedResidual(3, 3, 1, 2, rng=0)), 3),
    (lambda: nn.InvertedResidual(3, 5, 2, 1, rng=0), 3)],
    ids=["basic-downsample", "bottleneck", "inverted-residual", "inverted-stride2"])
def test_residual_block_gradients(make, channels):
    """The blocks of nn.models (training-mode BatchNorm), residual path included."""
    check_layer(make(), rand(2, channels, 5, 5))


def _wide_expansion(block):
    """Scale 3 on the expansion's BatchNorm, so that ReLU6 clips at 6: otherwise the
    depthwise conv's BatchNorm normalises that scale away, and its gradient is too
    small for finite differences."""
    block.conv[0][1].weight.data[...] = 3.0
    return block


@pytest.mark.parametrize("training", [True, False])
def test_batchnorm_gradients(training):
    layer = nn.BatchNorm2d(3)
    layer.astype(np.float64)
    layer.weight.data[...] = [0.5, 1.5, -1.0]
    layer.bias.data[...] = [0.1, -0.2, 0.3]
    layer._buffers["running_mean"][...] = [0.1, 0.0, -0.1]
    layer._buffers["running_var"][...] = [1.5, 0.7, 1.0]
    layer.momentum = 0.0                 # keep the running statistics fixed while checking
    layer.train(training)
    check_layer(layer, rand(4, 3, 3, 3))


def test_batchnorm_matches_torch():
    torch = pytest.importorskip("torch", reason="torch not installed: no PyTorch comparison")
    x = rand(4, 3, 5, 5)
    ours = nn.BatchNorm2d(3).astype(np.float64)
    ref = torch.nn.BatchNorm2d(3).double()
    np.testing.assert_allclose(ours(x), ref(torch.from_numpy(x)).detach().numpy(), atol=1e-10)
    np.testing.assert_allclose(ours._buffers["running_var"], ref.running_var.numpy(), atol=1e-10)
    ours.eval(), ref.eval()
    np.testing.assert_allclose(ours(x), ref(torch.from_numpy(x)).detach().numpy(), atol=1e-10)


def test_dropout():
    d = nn.Dropout(0.5, rng=0)
    x = np.ones((1000,))
    y = d(x)
    assert set(np.unique(y)) <= {0.0, 2.0} and 0.4 < np.mean(y == 0) < 0.6
    np.testing.assert_array_equal(d.backward(np.ones_like(x)), y)
    d.eval()
    assert d(x) is x


def test_sequential_gradients():
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, bias=False, rng=0), nn.BatchNorm2d(4),
                          nn.ReLU(),
                          nn.MaxPool2d(2), nn.Conv2d(4, 5, 3, padding=1, rng=1), nn.ReLU(),
                          nn.GlobalAvgPool2d(), nn.Linear(5, 3, rng=2))
    x = rand(3, 2, 6, 6)
    check_layer(model, x)
    # input_grad=False skips the first layer's input gradient but not its parameters'
    model.zero_grad()
    model.forward(x)
    assert model.backward(np.ones((3, 3)), input_grad=False) is None
    assert np.abs(model[0].weight.grad).sum() > 0


def test_initialisation_scales():
    w = nn.he_normal((64, 32, 3, 3), rng=0)
    assert w.dtype == np.float32 and abs(w.std() - np.sqrt(2 / (32 * 9))) < 0.01
    g = nn.glorot_uniform((300, 200), rng=0)
    a = np.sqrt(6 / 500)
    assert np.abs(g).max() <= a and abs(g.std() - a / np.sqrt(3)) < 0.005
    with pytest.raises(ValueError, match="unknown init"):
        nn.Linear(2, 2, init="bogus")


# -- losses --------------------------------------------------------------------------------


def check_loss(loss, pred, target):
    pred = pred.astype(np.float64)
    loss.forward(pred, target)
    g = loss.backward()
    assert g.shape == pred.shape
    assert rel_err(g, numerical_grad(lambda: loss.forward(pred, target), pred)) < TOL


def test_cross_entropy():
    logits, labels = rand(5, 4), np.array([0, 3, 1, 1, 2])
    check_loss(nn.CrossEntropyLoss(), logits, labels)
    torch = pytest.importorskip("torch", reason="torch not installed: no PyTorch comparison")
    want = torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels))
    assert abs(nn.CrossEntropyLoss()(logits, labels) - want.item()) < 1e-12


def test_cross_entropy_is_stable():
    logits = np.array([[1000.0, 0.0, -1000.0], [-1e4, 1e4, 0.0]])
    loss = nn.CrossEntropyLoss()
    assert loss(logits, np.array([0, 1])) == 0.0
    assert abs(loss(logits, np.array([1, 0])) - (1000 + 2e4) / 2) < 1e-9
    assert np.isfinite(loss.backward()).all()
    with pytest.raises(ValueError, match="labels must lie"):
        loss(logits, np.array([0, 3]))


@pytest.mark.parametrize("shape", [(6,), (6, 1), (6, 3)])
@pytest.mark.parametrize("pos_weight", [None, 2.5])
def test_bce_with_logits(shape, pos_weight):
    x = rand(*shape) * 3
    y = (np.random.default_rng(4).random(shape) > 0.5).astype(np.float64)
    check_loss(nn.BCEWithLogitsLoss(pos_weight), x, y)
    torch = pytest.importorskip("torch", reason="torch not installed: no PyTorch comparison")
    pw = None if pos_weight is None else torch.tensor(pos_weight, dtype=torch.float64)
    want = torch.nn.BCEWithLogitsLoss(pos_weight=pw)(torch.from_numpy(x), torch.from_numpy(y))
    assert abs(nn.BCEWithLogitsLoss(pos_weight)(x, y) - want.item()) < 1e-12


def test_bce_is_stable():
    loss = nn.BCEWithLogitsLoss()
    assert loss(np.array([800.0, -800.0]), np.array([1.0, 0.0])) == 0.0
    assert abs(loss(np.array([800.0]), np.array([0.0])) - 800.0) < 1e-9


def test_mse():
    check_loss(nn.MSELoss(), rand(3, 4), rand(3, 4, seed=1))
    assert nn.MSELoss()(np.array([1.0, 3.0]), np.array([0.0, 1.0])) == 2.5


# -- optimisers ------------------------------------------------------------------------------


def one_param(value, grad):
    p = nn.Parameter(np.array(value, np.float64))
    p.grad[...] = grad
    return p


def test_sgd_hand_computed():
    p = one_param([1.0, -2.0], [0.5, 1.0])
    opt = nn.SGD([p], lr=0.1, momentum=0.9, weight_decay=0.01)
    opt.step()          # g = grad + 0.01 p = [0.51, 0.98]; b = g; p -= 0.1 b
    np.testing.assert_allclose(p.data, [1 - 0.051, -2 - 0.098])
    p.grad[...] = [0.5, 1.0]
    g2 = np.array([0.5, 1.0]) + 0.01 * p.data
    b2 = 0.9 * np.array([0.51, 0.98]) + g2
    want = p.data - 0.1 * b2
    opt.step()
    np.testing.assert_allclose(p.data, want)


def test_sgd_nesterov_hand_computed():
    p = one_param([1.0], [2.0])
    opt = nn.SGD([p], lr=0.1, momentum=0.5, nesterov=True)
    opt.step()                           # b = 2; g = 2 + 0.5*2 = 3
    np.testing.assert_allclose(p.data, [0.7])
    opt.step()                           # b = 0.5*2 + 2 = 3; g = 2 + 1.5 = 3.5
    np.testing.assert_allclose(p.data, [0.35])


def test_adam_hand_computed():
    p = one_param([1.0], [2.0])
    opt = nn.Adam([p], lr=0.1, betas=(0.9, 0.99), eps=0.0)
    opt.step()                           # m_hat = 2, v_hat = 4: step lr * 2 / 2
    np.testing.assert_allclose(p.data, [0.9])
    p.grad[...] = [-1.0]
    opt.step()
    m = 0.9 * 0.2 + 0.1 * -1
    v = 0.99 * 0.04 + 0.01 * 1
    want = 0.9 - 0.1 * (m / (1 - 0.81)) / np.sqrt(v / (1 - 0.99 ** 2))
    np.testing.assert_allclose(p.data, [want])


@pytest.mark.parametrize("name,kwargs", [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9, weight_decay=0.01)),
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True)),
    ("SGD", dict(lr=0.1, momentum=0.9, dampening=0.3)),
    ("Adam", dict(lr=0.01)),
    ("Adam", dict(lr=0.01, betas=(0.8, 0.9), weight_decay=0.1)),
])
def test_optimisers_match_torch(name, kwargs):
    torch = pytest.importorskip("torch", reason="torch not installed: no torch.optim comparison")
    rng = np.random.default_rng(0)
    start = rng.standard_normal((3, 4))
    grads = rng.standard_normal((5, 3, 4))
    p = nn.Parameter(start.copy())
    ours = getattr(nn, name)([p], **kwargs)
    tp = torch.nn.Parameter(torch.from_numpy(start.copy()))
    ref = getattr(torch.optim, name)([tp], **kwargs)
    for g in grads:
        p.grad[...] = g
        ours.step()
        tp.grad = torch.from_numpy(g.copy())
        ref.step()
        np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=1e-12, atol=1e-14)


# -- save / load ----------------------------------------------------------------------------


def small_model(seed=0):
    return nn.Sequential(nn.Conv2d(1, 4, 3, rng=seed), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.GlobalAvgPool2d(), nn.Linear(4, 3, rng=seed + 1))


def test_state_dict_names():
    """PyTorch's names and order: each module's parameters, then its buffers."""
    assert list(small_model().state_dict()) == [
        "0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var",
        "1.num_batches_tracked", "4.weight", "4.bias"]


def test_save_load_round_trip(tmp_path):
    a, b = small_model(0), small_model(5)
    a[1]._buffers["running_mean"][...] = [1, 2, 3, 4]
    path = tmp_path / "model.npz"
    a.save(path, metadata={"architecture": "small", "n": 3})
    assert [p.name for p in tmp_path.iterdir()] == ["model.npz"]     # no temp file left
    assert b.load(path) == {"architecture": "small", "n": 3}
    assert nn.read_metadata(path)["n"] == 3
    for k, v in a.state_dict().items():
        np.testing.assert_array_equal(b.state_dict()[k], v)
    x = rand(2, 1, 5, 5).astype(np.float32)
    a.eval(), b.eval()
    np.testing.assert_array_equal(a(x), b(x))


def test_load_mismatch_errors(tmp_path):
    path = tmp_path / "model.npz"
    small_model().save(path)
    other = nn.Sequential(nn.Conv2d(1, 5, 3), nn.BatchNorm2d(5), nn.ReLU(), nn.GlobalAvgPool2d(),
                          nn.Linear(5, 3), nn.ReLU(), nn.Linear(3, 2))
    with pytest.raises(ValueError) as e:
        other.load(path)
    msg = str(e.value)
    assert "model.npz" in msg
    assert "0.weight: model has shape (5, 1, 3, 3), file has (4, 1, 3, 3)" in msg
    assert "missing from the state: 6.weight, 6.bias" in msg
    with pytest.raises(FileNotFoundError, match="no model file"):
        other.load(tmp_path / "absent.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable"):
        small_model().load(tmp_path / "junk.npz")


def test_load_unexpected_names():
    model = nn.Sequential(nn.Linear(2, 2))
    state = model.state_dict()
    state["9.weight"] = np.zeros(1)
    with pytest.raises(ValueError, match="not in the model: 9.weight"):
        model.load_state_dict(state)
    model.load_state_dict(state, strict=False)


# -- fit / evaluate / predict -------------------------------------------------------------


def blobs(n=200, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    X = rng.standard_normal((n, 1, 4, 4)).astype(np.float32) * 0.5
    X[:, 0, :2, :2] += (2 * y - 1)[:, None, None]
    return X, y


def test_fit_learns_and_is_reproducible():
    X, y = blobs()
    hists = []
    for _ in range(2):
        model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, rng=0), nn.ReLU(),
                              nn.GlobalAvgPool2d(), nn.Linear(4, 2, rng=1))
        hists.append(nn.fit(model, X, y, nn.CrossEntropyLoss(), nn.Adam(model.parameters(), 0.05),
                            epochs=4, batch_size=16, validation_data=(X, y),
                            metrics=("accuracy", "auroc"), seed=3, verbose=False))
    h = hists[0]
    assert set(h) == {"loss", "accuracy", "auroc", "seconds", "val_loss", "val_accuracy",
                      "val_auroc"}
    assert len(h["loss"]) == 4 and h["loss"][-1] < h["loss"][0]
    assert h["val_accuracy"][-1] > 0.9
    assert h["loss"] == hists[1]["loss"]
    res = nn.evaluate(model, X, y, nn.CrossEntropyLoss(), metrics=("accuracy",))
    assert res["accuracy"] > 0.9 and res["loss"] == pytest.approx(hists[1]["val_loss"][-1])
    assert nn.predict(model, X, batch_size=7).shape == (len(X), 2)


def test_fit_progress_bar(capsys):
    X, y = blobs(40)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2, rng=0))
    nn.fit(model, X, y, nn.CrossEntropyLoss(), nn.SGD(model.parameters(), 0.1), epochs=1,
           batch_size=8, verbose=True)
    assert "epoch 1/1" in capsys.readouterr().err
    nn.fit(model, X, y, nn.CrossEntropyLoss(), nn.SGD(model.parameters(), 0.1), epochs=1,
           batch_size=8, verbose=False)
    assert capsys.readouterr().err == ""


# -- class activation maps ---------------------------------------------------------------------


def test_class_activation_map():
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1, rng=0), nn.ReLU(), nn.MaxPool2d(2),
                          nn.GlobalAvgPool2d(), nn.Linear(3, 2, rng=1)).astype(np.float64)
    x = rand(1, 8, 8)
    cam = nn.class_activation_map(model, x, 1)
    assert cam.shape == (8, 8)
    # the map's mean equals the class logit minus the bias (Zhou et al., eq. 1-2),
    # before upsampling; bilinear upsampling by 2 keeps the mean only approximately
    feats = model[2](model[1](model[0](x[None])))
    small = np.einsum("k,khw->hw", model[4].weight.data[1], feats[0])
    logit = model(x[None])[0, 1] - model[4].bias.data[1]
    assert np.isclose(small.mean(), logit)
    assert np.allclose(nn.bilinear_resize(small, (4, 4)), small)
    batch = nn.class_activation_map(model, np.stack([x, x]), [1, 1])
    np.testing.assert_allclose(batch[0], cam)
    with pytest.raises(ValueError, match="GlobalAvgPool2d then Linear"):
        nn.class_activation_map(nn.Sequential(nn.Flatten(), nn.Linear(64, 2)), x, 0)


def test_bilinear_resize_matches_torch():
    torch = pytest.importorskip("torch", reason="torch not installed: no PyTorch comparison")
    m = rand(2, 3, 4)
    want = torch.nn.functional.interpolate(torch.from_numpy(m)[None], size=(9, 7),
                                           mode="bilinear", align_corners=False)[0].numpy()
    np.testing.assert_allclose(nn.bilinear_resize(m, (9, 7)), want, atol=1e-12)


def test_pictures(tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib not installed (the plot extra)")
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1, rng=0), nn.ReLU(),
                          nn.GlobalAvgPool2d(), nn.Linear(3, 2, rng=1))
    x = rand(1, 8, 8).astype(np.float32)
    nn.save_cam_overlay(x, nn.class_activation_map(model, x, 0), tmp_path / "cam.png", "t")
    nn.save_feature_maps(model, x, 1, tmp_path / "maps.png")
    nn.save_filters(model[0], tmp_path / "filters.png")
    for name in ("cam.png", "maps.png", "filters.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_training_matches_torch():
    """The seed network trained a few SGD steps from the same weights on the same
    batches ends with the same weights as in PyTorch."""
    torch = pytest.importorskip("torch", reason="torch not installed: no PyTorch comparison")
    rng = np.random.default_rng(0)
    X = rng.random((12, 1, 10, 10))
    y = rng.integers(0, 10, 12)
    ours = nn.Sequential(nn.Conv2d(1, 8, 3, bias=False, rng=0), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(8 * 4 * 4, 10, rng=1)).astype(np.float64)
    ref = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, bias=False), torch.nn.MaxPool2d(2),
                              torch.nn.Flatten(), torch.nn.Linear(8 * 4 * 4, 10)).double()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            p.copy_(torch.from_numpy(ours.state_dict()[name]))
    nn.fit(ours, X, y, nn.CrossEntropyLoss(), nn.SGD(ours.parameters(), lr=0.1, momentum=0.9),
           epochs=1, batch_size=4, shuffle=False, metrics=None, verbose=False)
    opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    for i in range(0, 12, 4):
        loss = torch.nn.functional.cross_entropy(ref(torch.from_numpy(X[i:i + 4])),
                                                 torch.from_numpy(y[i:i + 4]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    for name, p in ref.named_parameters():
        np.testing.assert_allclose(ours.state_dict()[name], p.detach().numpy(), atol=1e-10)
