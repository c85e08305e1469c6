"""A ``fastconv.nn`` model over Dask arrays (:func:`predict`) and data-parallel training
on a ``dask.distributed`` cluster (:func:`fit`).

How a training step is synchronised
-----------------------------------
The process that calls :func:`fit` (the driver) holds the model and the optimiser, as
``fastconv.nn.fit`` does. The model and the loss go to every worker once; each worker
thread keeps its own copy (a replica). For each global batch:

1. the driver broadcasts the parameters and buffers, as one flat vector, to every
   worker (``client.scatter(..., broadcast=True)``);
2. the batch is split into contiguous shards, one per worker; worker ``k`` loads the
   vector into its replica, runs forward, loss and backward on its ``n_k`` samples and
   returns ``n_k`` times its gradient (and its loss, its buffers, its outputs);
3. the shards' results are summed in a binary tree of tasks on the workers (the
   scheduler moves them between workers) and the driver divides by ``n``: the
   gradient of the mean loss over the whole batch, as single-process training
   computes it (the losses are means over the batch);
4. the driver's optimiser steps.

Every replica loads the same vector before computing, so no worker's parameters can
drift from another's; a worker holds nothing between steps that the driver does not.
A worker that dies mid-step is handled by Dask: its shard runs again on another
worker (or on the restarted one) from the same vector, and the step's result is the
one it would have been. If the cluster cannot finish a step ``retries + 1`` times, fit
stops with a RuntimeError naming the step; the model then holds the parameters after
the last completed step (and the checkpoint, if any, those after the last epoch).
"""
import copy
import threading
import time
import uuid
import weakref

import dask
import dask.array as da
import numpy as np

from ..nn.layers import Module, Sequential
from ..nn.train import _check_xy, _metric_fns, _model_dtype, end_epoch

__all__ = ["predict", "fit"]

_local = threading.local()


def _replica(obj):
    """This thread's own deep copy of ``obj`` (a model or a loss shipped to a worker):
    fastconv's layers keep what ``backward`` needs on themselves, so two threads must
    never run one object at once."""
    cache = _local.__dict__.setdefault("replicas", weakref.WeakKeyDictionary())
    rep = cache.get(obj)
    if rep is None:
        rep = cache[obj] = copy.deepcopy(obj)
    return rep


def _check_model(op, model):
    if not isinstance(model, Module):
        raise TypeError(f"{op}: model must be a fastconv.nn.Module, got {type(model).__name__}")


# -- prediction --------------------------------------------------------------------------


def _predict_block(xb, model, dtype):
    return _replica(model).forward(np.asarray(xb, dtype))


def predict(model, X, batch_size=None):
    """The outputs of ``model`` (in eval mode) for a Dask array, block by block, lazily.

    Parameters
    ----------
    model : fastconv.nn.Module
        Copied and put in eval mode (the caller's model is not changed); the copy
        enters the task graph once.
    X : dask.array.Array, shape (N, ...)
        For example ``da.from_array(np.load(path, mmap_mode="r"), chunks=(256, -1, -1, -1))``
        or ``da.from_zarr(store)``: each block is read when it is computed.
    batch_size : int, optional
        Rechunk the batch axis to this many images per block (default: keep the
        input's chunks). The other axes become one chunk each.

    Returns
    -------
    dask.array.Array, shape (N, ...) of the model's output
        Lazy: compute it, or store it (``da.store``, ``to_zarr``), under a progress
        bar: ``dask.diagnostics.ProgressBar()`` with the local scheduler,
        ``distributed.progress(y.persist())`` with a client. Each task holds one
        block of the batch and its activations, so memory is bounded by the chunk
        size times the number of tasks running at once.

    Notes
    -----
    Each block's outputs equal ``fastconv.nn.predict`` on those images. The output
    shape is found by running the model on one zero image when the graph is built.
    """
    op = "fastconv.dask.predict"
    _check_model(op, model)
    if not isinstance(X, da.Array):
        raise TypeError(f"{op}: X must be a dask.array.Array, got {type(X).__name__}; for "
                        f"in-memory arrays use fastconv.nn.predict")
    if X.ndim < 2:
        raise ValueError(f"{op}: expected X of shape (N, ...) with at least 2 axes, got "
                         f"shape {X.shape}")
    if any(np.isnan(X.shape)):
        raise ValueError(f"{op}: X of shape {X.shape} has unknown chunk sizes; call "
                         f"X.compute_chunk_sizes() first")
    if batch_size is not None and (not isinstance(batch_size, (int, np.integer))
                                   or isinstance(batch_size, bool) or batch_size < 1):
        raise ValueError(f"{op}: batch_size must be a positive int or None, got "
                         f"{batch_size!r}")
    chunks = {axis: -1 for axis in range(1, X.ndim)}
    if batch_size is not None:
        chunks[0] = int(batch_size)
    X = X.rechunk(chunks)
    dtype = _model_dtype(model)
    m = copy.deepcopy(model).eval()
    probe = m.forward(np.zeros((1,) + X.shape[1:], dtype))
    m_key = dask.delayed(m, name=f"fastconv-model-{uuid.uuid4().hex}", traverse=False)
    out_ndim = probe.ndim
    extra = {}
    if out_ndim < X.ndim:
        extra["drop_axis"] = list(range(out_ndim, X.ndim))
    elif out_ndim > X.ndim:
        extra["new_axis"] = list(range(X.ndim, out_ndim))
    return X.map_blocks(_predict_block, m_key, dtype,
                        chunks=(X.chunks[0],) + tuple((n,) for n in probe.shape[1:]),
                        dtype=probe.dtype, meta=np.empty((0,) * out_ndim, probe.dtype),
                        **extra)


# -- data-parallel training ----------------------------------------------------------------


class _Layout:
    """Where each parameter and buffer of a model sits in one flat vector: the
    parameters in ``named_parameters`` order, then the buffers (BatchNorm's running
    statistics); gradients take the parameters' part of the layout."""

    def __init__(self, model):
        arrays = self._state(model)
        dtypes = {a.dtype for a in arrays}
        if len(dtypes) != 1:
            raise TypeError(f"fastconv.dask.fit: the model's parameters and buffers must "
                            f"share one dtype, got {sorted(map(str, dtypes))}; cast it "
                            f"with model.astype(...) first")
        self.dtype = arrays[0].dtype
        self.n_params = len(model.parameters())
        self.has_buffers = len(arrays) > self.n_params
        self.offsets = np.cumsum([0] + [a.size for a in arrays])

    @staticmethod
    def _state(model):
        return ([p.data for p in model.parameters()]
                + [owner._buffers[b] for _, owner, b in model._named_buffers()])

    @staticmethod
    def _buffers(model):
        return [owner._buffers[b] for _, owner, b in model._named_buffers()]

    def state(self, model):
        return np.concatenate([a.ravel() for a in self._state(model)])

    def grads(self, model):
        return np.concatenate([p.grad.ravel() for p in model.parameters()])

    def buffers(self, model):
        return np.concatenate([a.ravel() for a in self._buffers(model)] +
                              [np.zeros(0, self.dtype)])

    def _load(self, targets, vector, first):
        base = self.offsets[first]
        for k, t in enumerate(targets, first):
            t[...] = vector[self.offsets[k] - base:self.offsets[k + 1] - base].reshape(t.shape)

    def load_state(self, model, vector):
        self._load(self._state(model), vector, 0)

    def load_grads(self, model, vector):
        self._load([p.grad for p in model.parameters()], vector, 0)

    def load_buffers(self, model, vector):
        self._load(self._buffers(model), vector, self.n_params)


def _shard_step(model, loss, state, xb, yb, layout):
    """On a worker: ``n_k`` times the gradient of ``loss`` on the shard ``(xb, yb)`` at
    the parameters ``state``, with ``n_k`` times the loss and the buffers, and the
    outputs."""
    m, lf = _replica(model), _replica(loss)
    layout.load_state(m, state)
    m.train()
    m.zero_grad()
    out = m.forward(xb)
    value = lf.forward(out, yb)
    g = lf.backward()
    if isinstance(m, Sequential):
        m.backward(g, input_grad=False)
    else:
        m.backward(g)
    n = len(xb)
    scale = layout.dtype.type(n)             # a float32 vector stays float32
    return {"n": n, "loss": value * n, "grads": layout.grads(m) * scale,
            "buffers": layout.buffers(m) * scale, "outputs": [out]}


def _add(a, b):
    """Two shards' results added (outputs kept in shard order)."""
    return {"n": a["n"] + b["n"], "loss": a["loss"] + b["loss"],
            "grads": a["grads"] + b["grads"], "buffers": a["buffers"] + b["buffers"],
            "outputs": a["outputs"] + b["outputs"]}


def _tree_sum(client, futures):
    """The results of ``futures`` added pairwise by tasks on the workers:
    ``((a + b) + (c + d)) + ...``."""
    while len(futures) > 1:
        futures = [client.submit(_add, futures[k], futures[k + 1], pure=False)
                   if k + 1 < len(futures) else futures[k]
                   for k in range(0, len(futures), 2)]
    return futures[0]


def _cluster_errors():
    import distributed
    return (distributed.KilledWorker, distributed.CancelledError, distributed.TimeoutError,
            OSError)


def _global_step(client, model_f, loss_f, layout, state, xb, yb, wait):
    """One step's summed shard results, from the workers the cluster has now."""
    workers = sorted(client.nthreads())
    if not workers:
        client.wait_for_workers(1, timeout=wait)
        workers = sorted(client.nthreads())
    state_f = client.scatter(state, broadcast=True, hash=False)
    shards = np.array_split(np.arange(len(xb)), min(len(workers), len(xb)))
    futures = [client.submit(_shard_step, model_f, loss_f, state_f, xb[s], yb[s], layout,
                             workers=[w], allow_other_workers=True, pure=False)
               for s, w in zip(shards, workers)]
    return _tree_sum(client, futures).result()


def fit(model, X, y, loss, optimizer, client, epochs=1, batch_size=32, validation_data=None,
        metrics=("accuracy",), shuffle=True, seed=None, verbose=True, checkpoint=None,
        retries=2, worker_timeout=60):
    """Train ``model`` as :func:`fastconv.nn.fit` does, each global batch split over the
    workers of a Dask cluster.

    Parameters
    ----------
    model, X, y, loss, optimizer, epochs, batch_size, validation_data, metrics, shuffle, seed
        As in :func:`fastconv.nn.fit`; the same seed gives the same batches. ``X`` may
        be a ``.npy`` memmap: only each batch is read. ``optimizer`` steps on the
        driver, on ``model.parameters()``.
    client : distributed.Client
        The cluster. Each batch is split into one contiguous shard per worker present
        at that step (workers may come and go between steps).
    verbose : bool
        A tqdm progress bar per epoch, as :func:`fastconv.nn.fit`.
    checkpoint : str or path, optional
        Save the model there after each epoch (``Module.save``, atomically), with
        metadata ``{"epoch", "epochs", "steps", "loss"}``. Load it with
        ``model.load(path)`` and call ``fit`` again for the remaining epochs to resume
        (the optimiser's momentum or moments are not saved).
    retries : int
        How many times a step is run again when the cluster fails it (a worker lost
        with a shard's data, a connection closed) beyond Dask's own task retries.
    worker_timeout : float
        Seconds to wait for a worker when the cluster has none.

    Returns
    -------
    dict of lists, as :func:`fastconv.nn.fit`: ``loss``, each metric, ``val_*`` with
    validation data, and ``seconds`` per epoch.

    Raises
    ------
    RuntimeError
        When a step fails ``retries + 1`` times; the message names the step. The model
        holds the parameters after the last completed step.

    Notes
    -----
    With the same seed and batches, the parameters equal single-process training's up
    to float rounding: each worker returns ``n_k`` times the mean gradient of its
    shard, and the driver divides their sum by ``n``. Two things differ by design:
    BatchNorm normalises each shard by the shard's own statistics (no sync-BN; the
    running statistics are the shards' weighted mean, exact for the running mean, not
    for the running variance), and Dropout draws its masks from each replica's
    generator. Per step the driver sends the parameters to every worker and receives
    one summed gradient: about ``2 x workers x parameter bytes`` on the network.
    """
    op = "fastconv.dask.fit"
    _check_model(op, model)
    try:
        import distributed
    except ImportError as e:                                  # pragma: no cover
        raise ImportError(f"{op} needs dask.distributed: pip install \"fastconv[dask]\"") from e
    if not isinstance(client, distributed.Client):
        raise TypeError(f"{op}: client must be a distributed.Client, got "
                        f"{type(client).__name__}")
    _check_xy(X, y, op)
    if batch_size < 1 or epochs < 0:
        raise ValueError(f"{op}: batch_size must be >= 1 and epochs >= 0, got "
                         f"{batch_size!r}, {epochs!r}")
    if not isinstance(retries, int) or retries < 0:
        raise ValueError(f"{op}: retries must be an int >= 0, got {retries!r}")
    if not isinstance(X, np.ndarray):
        X = np.asarray(X)
    y = np.asarray(y)
    dtype = _model_dtype(model)
    layout = _Layout(model)
    fns = _metric_fns(metrics)
    rng = np.random.default_rng(seed)
    N = len(X)
    history = {"loss": [], **{k: [] for k in fns}, "seconds": []}
    if validation_data is not None:
        history["val_loss"] = []
        history.update({f"val_{k}": [] for k in fns})
    tqdm = None
    if verbose:
        from tqdm.auto import tqdm

    errors = _cluster_errors()
    model_f = client.scatter(model, broadcast=True, hash=False)
    loss_f = client.scatter(loss, broadcast=True, hash=False)
    step = 0
    for epoch in range(epochs):
        order = rng.permutation(N) if shuffle else np.arange(N)
        ye = y[order]
        outputs = None
        total = 0.0
        bar = None if tqdm is None else tqdm(total=N, desc=f"epoch {epoch + 1}/{epochs}",
                                             unit="img", leave=True, dynamic_ncols=True)
        t0 = time.perf_counter()
        for i in range(0, N, batch_size):
            idx = order[i:i + batch_size]
            xb = np.asarray(X[idx], dtype)
            yb = ye[i:i + batch_size]
            state = layout.state(model)
            for attempt in range(retries + 1):
                try:
                    res = _global_step(client, model_f, loss_f, layout, state, xb, yb,
                                       worker_timeout)
                    break
                except errors as e:
                    # a lost worker can take the only copy the scheduler knows of the
                    # model and loss scattered at the start ("lost dependencies"): the
                    # next attempt runs on fresh copies
                    if attempt < retries:
                        model_f = client.scatter(model, broadcast=True, hash=False)
                        loss_f = client.scatter(loss, broadcast=True, hash=False)
                    if attempt == retries:
                        saved = (f"; the checkpoint {str(checkpoint)!r} holds the model after "
                                 f"epoch {epoch}" if checkpoint is not None and epoch else "")
                        raise RuntimeError(
                            f"{op}: step {step + 1} (epoch {epoch + 1}, images {i} to "
                            f"{i + len(idx) - 1}) failed on the cluster ({retries + 1} attempt"
                            f"{'s' if retries else ''}, {type(e).__name__}: {e}); the model "
                            f"holds the parameters "
                            f"after step {step}{saved}") from e
            n = layout.dtype.type(res["n"])
            layout.load_grads(model, res["grads"] / n)
            if layout.has_buffers:
                layout.load_buffers(model, res["buffers"] / n)
            optimizer.step()
            step += 1
            total += res["loss"]
            out = np.concatenate(res["outputs"])
            if outputs is None:
                outputs = np.empty((N,) + out.shape[1:], out.dtype)
            outputs[i:i + len(idx)] = out
            if bar is not None:
                bar.update(len(idx))
                bar.set_postfix(loss=f"{total / (i + len(idx)):.4f}", refresh=False)
        history["seconds"].append(time.perf_counter() - t0)
        post = end_epoch(history, model, loss, fns, total / N, ye, outputs, validation_data,
                         batch_size)
        if checkpoint is not None:
            model.save(checkpoint, metadata={"epoch": epoch + 1, "epochs": epochs,
                                             "steps": step, "loss": history["loss"][-1]})
        if bar is not None:
            bar.set_postfix(post, refresh=False)
            bar.close()
    return history
