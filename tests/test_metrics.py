"""fastconv.nn.metrics: accuracy, confusion matrix, and AUROC equal to scikit-learn's
(ties included)."""
import numpy as np
import pytest

from fastconv import nn
from fastconv.nn.metrics import auroc_from_output

sk = pytest.importorskip("sklearn.metrics", reason="scikit-learn not installed: no reference")


def test_accuracy():
    assert nn.accuracy([0, 1, 2, 2], [0, 1, 1, 2]) == 0.75
    logits = np.array([[2.0, 1.0], [0.0, 3.0], [5.0, -1.0]])
    assert nn.accuracy([0, 1, 1], logits) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="3 labels but 2 predictions"):
        nn.accuracy([0, 1, 1], [0, 1])


def test_confusion_matrix():
    rng = np.random.default_rng(0)
    t, p = rng.integers(0, 4, 50), rng.integers(0, 4, 50)
    np.testing.assert_array_equal(nn.confusion_matrix(t, p, 4),
                                  sk.confusion_matrix(t, p, labels=range(4)))
    assert nn.confusion_matrix([0, 1], [1, 1], num_classes=3).shape == (3, 3)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("levels", [None, 3, 10])
def test_binary_auroc_matches_sklearn(seed, levels):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 60)
    y[:2] = [0, 1]
    s = rng.standard_normal(60) + y
    if levels:                                    # heavy ties
        s = np.round(s * levels / 4) / levels
    assert nn.roc_auc(y, s) == pytest.approx(sk.roc_auc_score(y, s), abs=1e-12)


def test_auroc_edge_cases():
    assert nn.roc_auc([0, 1], [0.5, 0.5]) == 0.5            # all tied
    assert nn.roc_auc([0, 0, 1], [0.1, 0.2, 0.3]) == 1.0
    assert nn.roc_auc([1, 1, 0], [0.1, 0.2, 0.3]) == 0.0
    assert nn.roc_auc(np.array([False, True]), [1, 2]) == 1.0
    with pytest.raises(ValueError, match="only one class"):
        nn.roc_auc([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="must be 0/1"):
        nn.roc_auc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="NaN"):
        nn.roc_auc([0, 1], [np.nan, 0.2])


@pytest.mark.parametrize("seed", range(3))
def test_multilabel_macro_auroc_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, (40, 4))
    y[:2] = [[0] * 4, [1] * 4]
    s = np.round(rng.standard_normal((40, 4)) + y, 1)
    assert nn.roc_auc(y, s) == pytest.approx(sk.roc_auc_score(y, s, average="macro"), abs=1e-12)
    np.testing.assert_allclose(nn.roc_auc(y, s, average=None),
                               sk.roc_auc_score(y, s, average=None), atol=1e-12)
    assert auroc_from_output(y, s) == pytest.approx(nn.roc_auc(y, s))


def test_auroc_from_network_outputs():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 50)
    y[:2] = [0, 1]
    logits = rng.standard_normal((50, 2))
    p1 = np.exp(logits[:, 1]) / np.exp(logits).sum(1)
    assert auroc_from_output(y, logits) == pytest.approx(sk.roc_auc_score(y, p1), abs=1e-12)
    assert auroc_from_output(y, logits[:, 1:]) == pytest.approx(
        sk.roc_auc_score(y, logits[:, 1]), abs=1e-12)
    y3 = rng.integers(0, 3, 50)
    y3[:3] = [0, 1, 2]
    l3 = rng.standard_normal((50, 3))
    prob = np.exp(l3) / np.exp(l3).sum(1, keepdims=True)
    assert auroc_from_output(y3, l3) == pytest.approx(
        sk.roc_auc_score(y3, prob, multi_class="ovr", average="macro"), abs=1e-12)
