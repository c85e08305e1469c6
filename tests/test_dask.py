"""fastconv.dask: convolution and pooling over Dask arrays equal the in-memory result
under random chunkings along N, C, H and W; prediction reads a memmap block by block;
data-parallel training on a real LocalCluster (2 worker processes, started here)
matches single-process training, also when a worker dies in the middle of a step."""
import copy
import os
import sys

import numpy as np
import pytest

da = pytest.importorskip("dask.array",
                         reason="Dask is not installed: pip install \"fastconv[dask]\"")
distributed = pytest.importorskip("distributed",
                                  reason="dask.distributed is not installed: "
                                         "pip install \"fastconv[dask]\"")
import cloudpickle  # noqa: E402  (a dependency of distributed)
from dask.diagnostics import ProgressBar  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import fastconv  # noqa: E402
import fastconv.dask as fd  # noqa: E402
from fastconv import nn  # noqa: E402
from fastconv.data import load_digits  # noqa: E402

from conftest import (DTYPES, arrays, assert_close, conv_args, conv_cases,  # noqa: E402
                      pool_cases, tolerance, tuned)

# the workers unpickle this module's classes (the loss that kills a worker) by value
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def client():
    """A real cluster: 2 worker processes of 1 thread (kernels on 1 thread too: 2 cores
    here), sharing this process's JIT cache (they load the compiled kernels instead
    of compiling them)."""
    env = {"FASTCONV_CACHE_DIR": fastconv._config.CACHE_DIR, "NUMBA_NUM_THREADS": "1"}
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None, env=env) as cluster, \
            distributed.Client(cluster, set_as_default=False) as c:
        c.wait_for_workers(2, timeout=60)
        yield c


@st.composite
def chunkings(draw, shape, max_cuts=3):
    """Random chunks along every axis of ``shape``: uneven, and down to one element
    (smaller than any halo)."""
    def axis(size):
        cuts = []
        if size > 1:
            cuts = sorted(draw(st.sets(st.integers(1, size - 1), max_size=max_cuts)))
        bounds = [0, *cuts, size]
        return tuple(b - a for a, b in zip(bounds, bounds[1:]))
    return tuple(axis(n) for n in shape)


#: thresholds of fastconv._tuning under which ``auto`` plans the small test arrays as it
#: plans large ones: direct (rather than im2col) for few output channels, Winograd
#: F(4x4) for few channels and small images, and (last) Winograd's unfused path
RULES = [{}, dict(DIRECT_MIN_OUTPUTS=1, WINOGRAD_MIN_CHANNELS=1, F4_MIN_IMAGE=1),
         dict(DIRECT_MIN_OUTPUTS=1, WINOGRAD_MIN_CHANNELS=1, F4_MIN_IMAGE=1,
              FUSED_MAX_FILTER_BYTES=0)]


def ran_blocks(y):
    """``y`` computed on the calling thread, and the plans its blocks ran."""
    with fastconv.trace_plans() as ran:
        got = y.compute(scheduler="sync")
    return got, ran


@settings(max_examples=40)
@given(data=st.data(), dtype=st.sampled_from(DTYPES), bias=st.booleans(),
       algorithm=st.sampled_from(["auto", "auto", "direct", "winograd_f2", "winograd_f4"]),
       rules=st.sampled_from(RULES))
def test_conv2d_equals_in_memory_bit_for_bit_for_any_chunking(data, dtype, bias, algorithm,
                                                             rules):
    """Random geometries (groups, dilation, padding, stride), random chunkings along N, C,
    H and W (uneven, down to one element: smaller than any halo): every block runs the
    whole array's plan, and the result is the in-memory call's with that algorithm,
    bit for bit, in float32 and float64; and the plain in-memory call's (algorithm
    ``auto``) whenever its plan is one that splits exactly, else within tolerance."""
    case = data.draw(conv_cases(None if algorithm in ("auto", "direct") else algorithm,
                                max_channels=8, max_hw=14, max_n=3))
    p = case["params"]
    x, w, b = arrays(1, dtype, p.input_shape, p.weight_shape, (p.K,))
    b = b if bias else None
    chunks = data.draw(chunkings(x.shape))
    kw = dict(conv_args(case), algorithm=algorithm)
    with tuned(**rules):
        xd = da.from_array(x, chunks=chunks)
        plan = fd.plan(xd, w, **kw)
        y = fd.conv2d(xd, w, b, **kw)
        got, ran = ran_blocks(y)
        # fastconv.dask's auto plans on Numba (whose blocks split exactly): in memory too
        memory = fastconv.plan("conv2d", x.shape, w.shape, **kw, dtype=dtype, backend="numba")
        want = fastconv.conv2d(x, w, b, **dict(kw, algorithm=plan.algorithm),
                               backend=plan.backend)
        auto = fastconv.conv2d(x, w, b, **kw, backend="numba")
    assert {(r.algorithm, r.backend) for r in ran} == {(plan.algorithm, plan.backend)}
    if algorithm != "auto":
        assert plan.algorithm == algorithm
    assert y.shape == want.shape and y.dtype == want.dtype and y.chunks[0] == chunks[0]
    if not fd_exact(plan):        # forced Winograd: its unfused path, several images a
        # GEMM, or a kernel other than 3x3 (its blocks)
        assert algorithm != "auto" and (plan.variant.startswith("unfused")
                                         or plan["images"] > 1
                                         or plan.get("kernel_blocks") is not None), plan
        assert_close(got, want, tolerance(dtype, plan.algorithm), f"chunks {chunks}")
        return
    if plan.algorithm.startswith("winograd"):          # the fused path's blocks of rows
        assert len(y.chunks[3]) == 1
        rows = 2 * (1 + plan.algorithm.endswith("f4")) * plan["block_rows"]
        assert all(c % rows == 0 for c in y.chunks[2][:-1]), y.chunks
    np.testing.assert_array_equal(got, want, err_msg=f"{plan}, chunks {chunks}")
    if memory.algorithm == plan.algorithm:
        np.testing.assert_array_equal(got, auto, err_msg=f"{memory}, chunks {chunks}")
    else:   # im2col or Winograd's unfused path in memory, or Winograd and W chunked
        assert algorithm == "auto" and plan.algorithm == "direct"
        assert not fd_exact(memory) or len(chunks[3]) > 1, memory
        assert_close(got, auto, tolerance(dtype, memory.algorithm), f"chunks {chunks}")


def fd_exact(plan):
    """Whether fastconv.dask splits ``plan`` exactly (direct, Winograd's fused path with
    one image per GEMM on a 3x3 kernel)."""
    return plan.backend == "numba" and (plan.algorithm == "direct" or (
        plan.algorithm.startswith("winograd") and plan.variant in ("fused", "split")
        and plan["images"] == 1 and plan.get("kernel_blocks") is None))


@settings(max_examples=25)
@given(case=pool_cases(max_pool=True, max_hw=12), data=st.data(), dtype=st.sampled_from(DTYPES))
def test_max_pool2d_equals_in_memory_bit_for_bit(case, data, dtype):
    (x,) = arrays(2, dtype, (case["N"], case["C"], case["H"], case["W"]))
    chunks = data.draw(chunkings(x.shape))
    args = {k: case[k] for k in ("kernel_size", "stride", "padding", "dilation", "ceil_mode")}
    y = fd.max_pool2d(da.from_array(x, chunks=chunks), **args)
    np.testing.assert_array_equal(y.compute(scheduler="sync"), fastconv.max_pool2d(x, **args),
                                  err_msg=f"chunks {chunks}")


@settings(max_examples=25)
@given(case=pool_cases(max_pool=False, max_hw=12), data=st.data(), dtype=st.sampled_from(DTYPES),
       count_include_pad=st.booleans(), divisor=st.sampled_from([None, None, 3, -2]))
def test_avg_pool2d_equals_in_memory_bit_for_bit(case, data, dtype, count_include_pad, divisor):
    (x,) = arrays(3, dtype, (case["N"], case["C"], case["H"], case["W"]))
    chunks = data.draw(chunkings(x.shape))
    args = {k: case[k] for k in ("kernel_size", "stride", "padding", "ceil_mode")}
    args.update(count_include_pad=count_include_pad, divisor_override=divisor)
    y = fd.avg_pool2d(da.from_array(x, chunks=chunks), **args)
    np.testing.assert_array_equal(y.compute(scheduler="sync"), fastconv.avg_pool2d(x, **args),
                                  err_msg=f"chunks {chunks}")


@settings(max_examples=10)
@given(data=st.data(), dtype=st.sampled_from(DTYPES),
       size=st.tuples(st.integers(1, 7), st.one_of(st.none(), st.integers(1, 5))))
def test_adaptive_avg_pool2d_equals_in_memory_bit_for_bit(data, dtype, size):
    (x,) = arrays(4, dtype, (3, 4, 9, 7))
    chunks = data.draw(chunkings(x.shape))
    y = fd.adaptive_avg_pool2d(da.from_array(x, chunks=chunks), size)
    assert y.chunks[:2] == chunks[:2]
    np.testing.assert_array_equal(y.compute(scheduler="sync"),
                                  fastconv.adaptive_avg_pool2d(x, size))


def test_batch_blocks_are_the_in_memory_call_and_chunks_follow_the_stride():
    """A block of images is the in-memory call on those images by the plan's
    algorithm (im2col in memory, 4 output channels: direct here)."""
    x, w = arrays(5, np.float32, (5, 3, 12, 10), (4, 3, 3, 3))
    xd = da.from_array(x, chunks=(2, 3, 12, 10))
    y = fd.conv2d(xd, w, padding="same")
    assert fastconv.plan("conv2d", x.shape, w.shape, padding="same").algorithm == "im2col"
    assert fd.plan(xd, w, padding="same").algorithm == "direct"
    for n0, n1 in [(0, 2), (2, 4), (4, 5)]:
        np.testing.assert_array_equal(
            y[n0:n1].compute(), fastconv.conv2d(x[n0:n1], w, padding="same", algorithm="direct"))
    spatial = da.from_array(x, chunks=(5, 3, (4, 4, 4), (5, 5)))
    assert fd.conv2d(spatial, w, padding="same").chunks[2:] == ((4, 4, 4), (5, 5))
    assert fd.conv2d(spatial, w, stride=2, padding=1).chunks[2:] == ((2, 2, 2), (3, 2))
    assert fd.max_pool2d(spatial, 2).chunks[2:] == ((2, 2, 2), (3, 2))
    # unbatched input, as fastconv.conv2d takes it
    np.testing.assert_array_equal(fd.conv2d(xd[0], w, padding=1).compute(),
                                  fastconv.conv2d(x[0], w, padding=1, algorithm="direct"))


def test_weight_enters_the_graph_once():
    """One task holds the weight; every block's task refers to it by key, and carries
    only a few ints of its own (distributed sends each task on its own)."""
    (w,) = arrays(7, np.float32, (64, 64, 3, 3))            # 147 KB
    for chunks in [(1, 64, 6, 6), (2, 16, 3, 6)]:           # 8 blocks; 8, channels gathered
        x = da.ones((8, 64, 6, 6), chunks=chunks, dtype=np.float32)
        graph = dict(fd.conv2d(x, w, padding=1).__dask_graph__())
        sizes = sorted(len(cloudpickle.dumps(task)) for key, task in graph.items()
                       if key not in x.__dask_graph__())
        assert sizes[-1] >= w.nbytes and sizes[-2] < 2000, \
            f"task sizes {sizes[-3:]} for a {w.nbytes}-byte weight"


def test_channel_chunks_are_gathered_or_summed_on_request():
    x, w, wg, b = arrays(8, np.float64, (2, 6, 9, 9), (5, 6, 3, 3), (6, 2, 3, 3), (5,))
    xd = da.from_array(x, chunks=(1, (1, 2, 3), 4, 5))
    kw = dict(stride=2, padding=1)
    # default: the 3 channel chunks gathered into one block, summed in the in-memory order
    got, ran = ran_blocks(fd.conv2d(xd, w, b, **kw))
    assert {r.geometry.C for r in ran} == {6}
    np.testing.assert_array_equal(
        got, fastconv.conv2d(x, w, b, **kw, algorithm=fd.plan(xd, w, **kw).algorithm))
    # on request: a partial convolution per channel chunk, summed in a tree
    tree = fd.conv2d(xd, w, b, **kw, split_channels=True)
    assert tree.chunks[1] == (5,)
    got, ran = ran_blocks(tree)
    assert {r.geometry.C for r in ran} == {1, 2, 3}
    assert_close(got, fastconv.conv2d(x, w, b, **kw), 1e-12)
    # groups: chunks rounded to whole groups, each block convolving its own
    yg = fd.conv2d(xd, wg, groups=3)
    assert sum(yg.chunks[1]) == 6 and all(c % 2 == 0 for c in yg.chunks[1])
    np.testing.assert_array_equal(
        yg.compute(), fastconv.conv2d(x, wg, groups=3,
                                      algorithm=fd.plan(xd, wg, groups=3).algorithm))
    with pytest.raises(ValueError, match=r"split_channels=True .*needs groups=1, got groups=3"):
        fd.conv2d(xd, wg, groups=3, split_channels=True)


@pytest.mark.parametrize("algorithm", ["auto", "winograd_f4", "winograd_f2", "direct", "im2col"])
def test_the_whole_arrays_plan_runs_in_every_block(algorithm):
    """A layer ``auto`` runs by Winograd F(4x4) in memory (16 channels, 20 x 20), in
    chunks of whole rows: every block runs the plan of the whole array, forced or not;
    exactly the in-memory result but for a forced im2col (BLAS's rounding depends on
    the GEMM's size)."""
    x, w = arrays(13, np.float32, (2, 16, 20, 20), (16, 16, 3, 3))
    xd = da.from_array(x, chunks=(1, 8, 7, 20))
    plan = fd.plan(xd, w, padding=1, algorithm=algorithm)
    assert plan.algorithm == ("winograd_f4" if algorithm == "auto" else algorithm)
    y = fd.conv2d(xd, w, padding=1, algorithm=algorithm)
    got, ran = ran_blocks(y)
    assert len(ran) == np.prod(y.numblocks) > 1
    assert {r.algorithm for r in ran} == {plan.algorithm}
    want = fastconv.conv2d(x, w, padding=1, algorithm=algorithm, backend="numba")
    if algorithm == "im2col":
        assert_close(got, want, tolerance(np.float32, "im2col"))
    else:
        np.testing.assert_array_equal(got, want)
    if plan.algorithm.startswith("winograd"):       # whole rows, blocks of tile rows
        assert {r.variant for r in ran} == {plan.variant} and len(y.chunks[3]) == 1
        assert {r["block_rows"] for r in ran} == {plan["block_rows"]}
    # chunked along W: auto runs direct (Winograd's blocks would be whole rows); a
    # forced Winograd gathers bands of whole rows
    columns = xd.rechunk({3: (9, 11)})
    if algorithm in ("auto", "direct"):
        assert fd.plan(columns, w, padding=1, algorithm=algorithm).algorithm == "direct"
    elif algorithm != "im2col":
        assert fd.conv2d(columns, w, padding=1, algorithm=algorithm).chunks[3] == (20,)


def test_bad_input_names_the_problem():
    x, w = arrays(9, np.float32, (2, 4, 8, 8), (3, 4, 3, 3))
    xd = da.from_array(x, chunks=(1, 4, 4, 4))
    with pytest.raises(TypeError, match="dask.array.Array, got ndarray.*fastconv.conv2d"):
        fd.conv2d(x, w)
    with pytest.raises(ValueError, match=r"expects input with 6 channels.*\(2, 4, 8, 8\)"):
        fd.conv2d(xd, np.zeros((3, 6, 3, 3), np.float32))
    with pytest.raises(TypeError, match="float32 and float64"):
        fd.max_pool2d(xd.astype(np.int32), 2)
    with pytest.raises(ValueError, match="unknown chunk sizes along axis 0"):
        fd.avg_pool2d(xd[xd[:, 0, 0, 0] > 0], 2)
    with pytest.raises(ValueError, match="return_indices"):
        fd.max_pool2d(xd, 2, return_indices=True)
    with pytest.raises(ValueError, match="output would be 0x0"):
        fd.conv2d(xd, np.zeros((3, 4, 9, 9), np.float32))


def test_conv2d_on_the_cluster(client):
    """On worker processes of one kernel thread each (the driver plans on 2): the
    in-memory result bit for bit, by direct and by Winograd's fused path."""
    x, w, b = arrays(10, np.float64, (3, 4, 16, 16), (6, 4, 3, 3), (6,))
    xd = da.from_array(x, chunks=(2, 2, 5, 7))
    kw = dict(padding=1, stride=(1, 2))
    got = client.compute(fd.conv2d(xd, w, b, **kw)).result()
    np.testing.assert_array_equal(got, fastconv.conv2d(x, w, b, **kw, algorithm="direct"))
    x, w = arrays(14, np.float32, (2, 16, 20, 20), (16, 16, 3, 3))
    xd = da.from_array(x, chunks=(1, 16, 9, 20))
    assert fd.plan(xd, w, padding=1).algorithm == "winograd_f4"
    got = client.compute(fd.conv2d(xd, w, padding=1)).result()
    np.testing.assert_array_equal(got, fastconv.conv2d(x, w, padding=1, backend="numba"))


# -- prediction ------------------------------------------------------------------------------------


def small_cnn(seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, rng=rng, dtype=dtype), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 16, 10, rng=rng, dtype=dtype))


class Reads:
    """An array that records the rows of every read (what ``da.from_array`` asks)."""

    def __init__(self, a):
        self.a, self.shape, self.dtype, self.ndim = a, a.shape, a.dtype, a.ndim
        self.rows = []

    def __getitem__(self, key):
        out = self.a[key]
        self.rows.append(out.shape[0])
        return out


def test_predict_reads_a_memmap_block_by_block(tmp_path, capsys):
    model = small_cnn()
    (X,) = arrays(11, np.float32, (50, 1, 8, 8))
    np.save(tmp_path / "x.npy", X)
    source = Reads(np.load(tmp_path / "x.npy", mmap_mode="r"))
    y = fd.predict(model, da.from_array(source, chunks=(10, 1, 8, 8)), batch_size=16)
    assert y.shape == (50, 10) and y.chunks[0] == (16, 16, 16, 2)
    assert max(source.rows, default=0) == 0, "read before compute"
    with ProgressBar():
        got = y.compute(scheduler="threads")
    assert "100% Completed" in capsys.readouterr().out
    assert 0 < max(source.rows) <= 16
    np.testing.assert_array_equal(got, nn.predict(model, X, batch_size=16))
    assert model.training, "the caller's model keeps its mode"


def test_predict_on_the_cluster_with_progress(client, capsys):
    model = small_cnn(1)
    (X,) = arrays(12, np.float32, (40, 1, 8, 8))
    future = client.compute(fd.predict(model, da.from_array(X, chunks=(8, 1, 8, 8))))
    with client.as_current():
        distributed.progress(future)
    assert "100% Completed" in capsys.readouterr().out
    np.testing.assert_array_equal(future.result(), nn.predict(model, X, batch_size=8))


# -- data-parallel training ----------------------------------------------------------------------


def digits(n=197):
    X, y = load_digits()
    return X[:n].astype(np.float64), y[:n]


def train_pair(client, loss, **kwargs):
    """The same float64 network trained by fastconv.nn.fit and by fastconv.dask.fit."""
    X, y = digits()
    single = small_cnn(2, np.float64)
    spread = copy.deepcopy(single)
    args = dict(epochs=2, batch_size=64, seed=3, verbose=False)
    h1 = nn.fit(single, X, y, nn.CrossEntropyLoss(),
                nn.SGD(single.parameters(), lr=0.1, momentum=0.9), **args)
    h2 = fd.fit(spread, X, y, loss, nn.SGD(spread.parameters(), lr=0.1, momentum=0.9),
                client, **args, **kwargs)
    return single, spread, h1, h2


def assert_same_parameters(a, b, tol=1e-12):
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert_close(q.data, p.data, tol, name)


def test_fit_matches_single_process_and_checkpoints(client, tmp_path):
    path = tmp_path / "model.npz"
    single, spread, h1, h2 = train_pair(client, nn.CrossEntropyLoss(), checkpoint=path)
    assert_same_parameters(single, spread)
    np.testing.assert_allclose(h2["loss"], h1["loss"], rtol=1e-12)
    assert h2["accuracy"] == h1["accuracy"]
    assert nn.read_metadata(path)["epoch"] == 2
    saved = small_cnn(5, np.float64)
    saved.load(path)
    assert_same_parameters(spread, saved, 0)


def test_fit_averages_batchnorm_running_means_over_shards(client):
    """BatchNorm normalises each shard by its own statistics (documented); its running
    mean, averaged over the shards by their sizes, is the whole batch's."""
    X, y = digits(41)                                     # one step, shards of 21 and 20
    rng = np.random.default_rng(6)
    single = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, rng=rng, dtype=np.float64),
                           nn.BatchNorm2d(4, dtype=np.float64), nn.ReLU(), nn.Flatten(),
                           nn.Linear(4 * 64, 10, rng=rng, dtype=np.float64))
    spread = copy.deepcopy(single)
    args = dict(epochs=1, batch_size=41, shuffle=False, verbose=False)
    nn.fit(single, X, y, nn.CrossEntropyLoss(), nn.SGD(single.parameters(), lr=0.1), **args)
    fd.fit(spread, X, y, nn.CrossEntropyLoss(), nn.SGD(spread.parameters(), lr=0.1), client,
           **args)
    want, got = single.state_dict()["1.running_mean"], spread.state_dict()["1.running_mean"]
    assert np.abs(want).max() > 1e-3
    assert_close(got, want, 1e-12, "running mean")


class ExitOnce(nn.CrossEntropyLoss):
    """Kills the worker process running it, once, at its replica's ``at``-th call (a
    step in the middle of the first epoch): whichever worker removes ``flag`` first."""

    def __init__(self, flag, at):
        self.flag, self.at, self.calls = str(flag), at, 0

    def forward(self, logits, labels):
        self.calls += 1
        if self.calls >= self.at:
            try:
                os.unlink(self.flag)
            except FileNotFoundError:
                pass
            else:
                os._exit(1)
        return super().forward(logits, labels)


def test_fit_survives_a_worker_dying_mid_step(client, tmp_path):
    flag = tmp_path / "kill"
    flag.touch()
    before = set(client.nthreads())
    single, spread, h1, h2 = train_pair(client, ExitOnce(flag, at=2))
    assert not flag.exists(), "no worker was killed"
    client.wait_for_workers(2, timeout=60)
    assert set(client.nthreads()) != before, "the nanny should have restarted the worker"
    assert_same_parameters(single, spread)
    np.testing.assert_allclose(h2["loss"], h1["loss"], rtol=1e-12)


def test_fit_fails_clearly_when_the_cluster_gives_up(client, tmp_path):
    flag = tmp_path / "kill"
    flag.touch()
    X, y = digits(64)
    model = small_cnn(4, np.float64)
    start = model.state_dict()
    scheduler = client.cluster.scheduler
    # the scheduler gives a task up after 0 lost workers instead of 3, and fit does not
    # retry: one dead worker fails the step. Dask reports it as KilledWorker (the step's
    # task) or as a cancelled future (when the dead worker took the only copy the
    # scheduler knew of a scattered input); both are the cluster giving up
    allowed, scheduler.allowed_failures = scheduler.allowed_failures, 0
    try:
        with pytest.raises(RuntimeError, match=r"step 1 \(epoch 1, images 0 to 31\) failed "
                                               r"on the cluster \(1 attempt, (KilledWorker|"
                                               r"FutureCancelledError|CancelledError)"):
            fd.fit(model, X, y, ExitOnce(flag, at=1), nn.SGD(model.parameters(), lr=0.1),
                   client, batch_size=32, verbose=False, retries=0)
    finally:
        scheduler.allowed_failures = allowed
        client.wait_for_workers(2, timeout=60)
    for name, value in model.state_dict().items():       # nothing was applied
        np.testing.assert_array_equal(value, start[name])


def test_fit_refuses_what_it_cannot_use(client):
    X, y = digits(8)
    model = small_cnn()
    with pytest.raises(TypeError, match="distributed.Client"):
        fd.fit(model, X, y, nn.CrossEntropyLoss(), nn.SGD(model.parameters()), "tcp://x:1")
    with pytest.raises(ValueError, match="8 inputs but 7 targets"):
        fd.fit(model, X, y[:7], nn.CrossEntropyLoss(), nn.SGD(model.parameters()), client)
