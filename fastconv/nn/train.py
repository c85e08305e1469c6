"""A training loop in the spirit of Keras's ``fit``: ``fit``, ``evaluate``, ``predict``.

The per-step path is kept lean for batch size 1, where Python overhead dominates:
the training set is permuted once per epoch (so every batch is a contiguous view),
the network outputs of the epoch go into one preallocated array (training metrics
are computed from it at the end of the epoch), and the progress bar's text is
refreshed a few times a second, not at every step.
"""
import time

import numpy as np

from .layers import Sequential
from .metrics import METRICS

__all__ = ["fit", "evaluate", "predict"]


def _metric_fns(metrics):
    if metrics is None:
        return {}
    if isinstance(metrics, dict):
        return dict(metrics)
    if isinstance(metrics, str) or callable(metrics):
        metrics = (metrics,)
    fns = {}
    for m in metrics:
        if callable(m):
            fns[getattr(m, "__name__", "metric")] = m
        elif m in METRICS:
            fns[m] = METRICS[m]
        else:
            raise ValueError(f"unknown metric {m!r}; choose from {sorted(METRICS)} or pass "
                             f"a callable f(y_true, output) -> float")
    return fns


def _safe(fn, y, out):
    try:
        return float(fn(y, out))
    except ValueError:                     # e.g. AUROC on a batch with one class
        return float("nan")


def _model_dtype(model):
    params = model.parameters()
    return params[0].data.dtype if params else np.float32


def _check_xy(X, y, what):
    if len(X) != len(y):
        raise ValueError(f"{what}: {len(X)} inputs but {len(y)} targets")
    if len(X) == 0:
        raise ValueError(f"{what}: no samples")


def predict(model, X, batch_size=256):
    """The network's outputs for ``X`` in eval mode (restored to the previous mode
    afterwards), batch by batch."""
    was_training = model.training
    model.eval()
    try:
        X = np.asarray(X, dtype=_model_dtype(model))
        outs = [model.forward(X[i:i + batch_size]) for i in range(0, len(X), batch_size)]
    finally:
        model.train(was_training)
    return np.concatenate(outs)


def evaluate(model, X, y, loss=None, metrics=("accuracy",), batch_size=256):
    """``{"loss": ..., metric: ...}`` on ``(X, y)`` in eval mode (no loss entry when
    ``loss`` is None)."""
    _check_xy(X, y, "evaluate")
    y = np.asarray(y)
    out = predict(model, X, batch_size)
    result = {}
    if loss is not None:
        result["loss"] = loss.forward(out, y)
    for name, fn in _metric_fns(metrics).items():
        result[name] = _safe(fn, y, out)
    return result


def end_epoch(history, model, loss, fns, mean_loss, y, outputs, validation_data, batch_size):
    """Record an epoch's loss, metrics (on its training outputs) and, with validation
    data, their validation values in ``history``; return them as progress-bar text."""
    history["loss"].append(mean_loss)
    post = {"loss": f"{mean_loss:.4f}"}
    for name, fn in fns.items():
        history[name].append(_safe(fn, y, outputs))
        post[name] = f"{history[name][-1]:.4f}"
    if validation_data is not None:
        Xv, yv = validation_data
        res = evaluate(model, Xv, yv, loss, fns, batch_size=max(batch_size, 256))
        history["val_loss"].append(res["loss"])
        post["val_loss"] = f"{res['loss']:.4f}"
        for name in fns:
            history[f"val_{name}"].append(res[name])
            post[f"val_{name}"] = f"{res[name]:.4f}"
    return post


def fit(model, X, y, loss, optimizer, epochs=1, batch_size=32, validation_data=None,
        metrics=("accuracy",), shuffle=True, seed=None, verbose=True):
    """Train ``model`` on ``(X, y)`` by mini-batch gradient descent.

    Parameters
    ----------
    model : fastconv.nn.Module
    X : ndarray (N, C, H, W) (or (N, D)); cast to the model's dtype
    y : ndarray of targets (integer labels for CrossEntropyLoss)
    loss : a fastconv.nn loss
    optimizer : a fastconv.nn optimiser over ``model.parameters()``
    epochs, batch_size : int
    validation_data : (X_val, y_val), optional; evaluated after each epoch
    metrics : names from ``fastconv.nn.metrics.METRICS`` ('accuracy', 'auroc') or
        callables ``f(y_true, output)``; computed on the epoch's training outputs
        (as Keras does: the network changes during the epoch) and on the validation data
    shuffle : bool; seed : int or None, for the shuffling
    verbose : bool; a tqdm progress bar per epoch with the running loss, and the
        epoch's metrics at its end. False is silent.

    Returns
    -------
    dict of lists, one entry per epoch: ``loss``, each metric, ``val_loss`` and
    ``val_<metric>`` with validation data, and ``seconds`` (training time per epoch,
    excluding validation).
    """
    _check_xy(X, y, "fit")
    if batch_size < 1 or epochs < 0:
        raise ValueError(f"fit: batch_size must be >= 1 and epochs >= 0, got "
                         f"{batch_size!r}, {epochs!r}")
    X = np.asarray(X, dtype=_model_dtype(model))
    y = np.asarray(y)
    fns = _metric_fns(metrics)
    rng = np.random.default_rng(seed)
    N = len(X)
    sequential = isinstance(model, Sequential)
    history = {"loss": [], **{k: [] for k in fns}, "seconds": []}
    if validation_data is not None:
        history["val_loss"] = []
        history.update({f"val_{k}": [] for k in fns})
    tqdm = None
    if verbose:
        from tqdm.auto import tqdm

    forward, backward = model.forward, model.backward
    loss_forward, loss_backward = loss.forward, loss.backward
    zero_grad, step = optimizer.zero_grad, optimizer.step

    for epoch in range(epochs):
        model.train()
        if shuffle:
            perm = rng.permutation(N)
            Xe, ye = X[perm], y[perm]
        else:
            Xe, ye = X, y
        outputs = None
        total = 0.0
        bar = None
        if tqdm is not None:
            bar = tqdm(total=N, desc=f"epoch {epoch + 1}/{epochs}", unit="img",
                       leave=True, dynamic_ncols=True)
        last_refresh = t0 = time.perf_counter()
        pending = 0
        for i in range(0, N, batch_size):
            xb, yb = Xe[i:i + batch_size], ye[i:i + batch_size]
            out = forward(xb)
            total += loss_forward(out, yb) * len(xb)
            zero_grad()
            if sequential:
                backward(loss_backward(), input_grad=False)
            else:
                backward(loss_backward())
            step()
            if outputs is None:
                outputs = np.empty((N,) + out.shape[1:], out.dtype)
            outputs[i:i + batch_size] = out
            if bar is not None:
                pending += len(xb)
                now = time.perf_counter()
                if now - last_refresh > 0.25:
                    bar.set_postfix(loss=f"{total / (i + len(xb)):.4f}", refresh=False)
                    bar.update(pending)
                    pending, last_refresh = 0, now
        seconds = time.perf_counter() - t0
        history["seconds"].append(seconds)
        post = end_epoch(history, model, loss, fns, total / N, ye, outputs, validation_data,
                         batch_size)
        if bar is not None:
            bar.set_postfix(post, refresh=False)
            bar.update(pending)
            bar.close()
    return history
