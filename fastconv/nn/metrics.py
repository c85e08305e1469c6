"""Classification metrics on NumPy arrays: accuracy, confusion matrix and AUROC.

``roc_auc`` equals ``sklearn.metrics.roc_auc_score`` (ties included) through the rank
formula (Mann-Whitney U): with average ranks ``r`` of the scores (tied scores share
the mean of their ranks), ``AUC = (sum of r over positives - n_pos (n_pos + 1) / 2)
/ (n_pos * n_neg)``. A tie between a positive and a negative counts one half, as
the trapezoids of the ROC curve do.
"""
import numpy as np

__all__ = ["accuracy", "confusion_matrix", "roc_auc", "predicted_labels", "scores_from_logits",
           "auroc_from_output", "METRICS"]


def predicted_labels(output):
    """Class predictions from a network's output: argmax over classes for (N, K) with
    K > 1; ``output > 0`` (logit threshold) for (N,) or (N, 1)."""
    output = np.asarray(output)
    if output.ndim == 2 and output.shape[1] > 1:
        return output.argmax(axis=1)
    return (output.reshape(-1) > 0).astype(np.int64)


def accuracy(y_true, y_pred_or_output):
    """Fraction of correct predictions. The second argument is either labels (N,) or a
    network output (N, K), whose argmax is taken."""
    y_true = np.asarray(y_true).reshape(-1)
    pred = np.asarray(y_pred_or_output)
    if pred.ndim == 2:
        pred = predicted_labels(pred)
    pred = pred.reshape(-1)
    if pred.shape != y_true.shape:
        raise ValueError(f"accuracy: {y_true.shape[0]} labels but {pred.shape[0]} predictions")
    if y_true.size == 0:
        raise ValueError("accuracy: no samples")
    return float(np.mean(pred == y_true))


def confusion_matrix(y_true, y_pred, num_classes=None):
    """``M[i, j]`` = number of samples of true class ``i`` predicted as ``j`` (as
    ``sklearn.metrics.confusion_matrix`` with labels ``0..num_classes-1``)."""
    y_true = np.asarray(y_true, dtype=np.int64).reshape(-1)
    y_pred = np.asarray(y_pred, dtype=np.int64).reshape(-1)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"confusion_matrix: {y_true.size} labels but {y_pred.size} predictions")
    if num_classes is None:
        num_classes = int(max(y_true.max(initial=-1), y_pred.max(initial=-1))) + 1
    if y_true.size and (min(y_true.min(), y_pred.min()) < 0
                        or max(y_true.max(), y_pred.max()) >= num_classes):
        raise ValueError(f"confusion_matrix: labels must lie in [0, {num_classes})")
    m = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(m, (y_true, y_pred), 1)
    return m


def _average_ranks(x):
    """Ranks 1..n of ``x``, tied values sharing the mean of their ranks."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    # start index of each run of equal values
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    ends = np.r_[starts[1:], xs.size]
    run_rank = (starts + ends + 1) / 2.0         # mean of ranks starts+1 .. ends
    ranks = np.empty(x.size, np.float64)
    ranks[order] = np.repeat(run_rank, ends - starts)
    return ranks


def _binary_auc(y, s, where=""):
    y = np.asarray(y).reshape(-1)
    s = np.asarray(s, dtype=np.float64).reshape(-1)
    if y.shape != s.shape:
        raise ValueError(f"roc_auc{where}: {y.size} labels but {s.size} scores")
    if np.isnan(s).any():
        raise ValueError(f"roc_auc{where}: scores contain NaN")
    values = np.unique(y)
    if not np.all(np.isin(values, (0, 1))):
        raise ValueError(f"roc_auc{where}: labels must be 0/1 (or booleans), got values {values}")
    pos = y == 1
    n_pos = int(pos.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"roc_auc{where}: only one class present in y_true; AUROC is not "
                         f"defined in that case")
    ranks = _average_ranks(s)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_auc(y_true, y_score, average="macro"):
    """Area under the ROC curve.

    Parameters
    ----------
    y_true : array (N,) of 0/1 for a binary task, or (N, L) of 0/1 for a multi-label one
    y_score : array of the same shape: scores, probabilities or logits (any monotone
        function of the probability gives the same AUROC)
    average : 'macro' (mean over labels) or None (one AUROC per label), multi-label only

    Returns
    -------
    float (or an array of L floats when ``average=None``), equal to
    ``sklearn.metrics.roc_auc_score(y_true, y_score, average=average)``.
    """
    y_true = np.asarray(y_true)
    y_score = np.asarray(y_score)
    if y_true.ndim == 2 and y_true.shape[1] == 1:
        y_true = y_true[:, 0]
    if y_score.ndim == 2 and y_score.shape[1] == 1:
        y_score = y_score[:, 0]
    if y_true.ndim == 1:
        return _binary_auc(y_true, y_score)
    if y_true.shape != y_score.shape:
        raise ValueError(f"roc_auc: y_true of shape {y_true.shape} and y_score of shape "
                         f"{y_score.shape} must match for a multi-label task")
    per_label = np.array([_binary_auc(y_true[:, j], y_score[:, j], f" (label {j})")
                          for j in range(y_true.shape[1])])
    if average is None:
        return per_label
    if average != "macro":
        raise ValueError(f"roc_auc: average must be 'macro' or None, got {average!r}")
    return float(per_label.mean())


def scores_from_logits(output, num_classes=None):
    """Scores for AUROC from a network output: the logit for (N,)/(N, 1); for two
    classes (N, 2) the logit difference (monotone in the softmax probability of class
    1); for K > 2 classes the softmax probabilities (N, K), for one-vs-rest."""
    output = np.asarray(output, dtype=np.float64)
    if output.ndim == 1 or output.shape[1] == 1:
        return output.reshape(-1)
    if output.shape[1] == 2:
        return output[:, 1] - output[:, 0]
    z = output - output.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def auroc_from_output(y_true, output):
    """AUROC of a network output against labels: binary (labels (N,) with a 1- or
    2-column output), multi-label (labels (N, L) with a (N, L) output of logits), or
    multi-class one-vs-rest macro (labels (N,) with a (N, K > 2) output)."""
    y_true = np.asarray(y_true)
    if y_true.ndim == 2 and y_true.shape[1] > 1:        # multi-label: per-label logits
        return roc_auc(y_true, np.asarray(output, np.float64))
    scores = scores_from_logits(output)
    if scores.ndim == 2:                                # multi-class: one vs rest
        onehot = (y_true.reshape(-1)[:, None] == np.arange(scores.shape[1])).astype(np.int64)
        return roc_auc(onehot, scores)
    return roc_auc(y_true, scores)


#: metrics by name for :func:`fastconv.nn.fit`: ``f(y_true, network_output) -> float``
METRICS = {"accuracy": accuracy, "auroc": auroc_from_output}
