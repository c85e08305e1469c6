"""The weight cache's bitwise comparison and its hit/miss behaviour."""
import numpy as np
import pytest

from fastconv.kernels import weight_cache
from fastconv.kernels.weight_cache import WeightCache, bitwise_equal


@pytest.mark.parametrize("path", ["same_bytes", "memcmp", "numpy"])
def test_bitwise_equal(path, monkeypatch):
    """Same bits only: NaN equals NaN, -0 differs from 0, a change in the last element is
    seen; the Cython backend's comparison, ctypes' memcmp and the NumPy fallback agree
    (also on non-contiguous arrays, which only NumPy compares)."""
    ran = []
    if path == "same_bytes":
        if weight_cache._same_bytes is None:
            pytest.skip("the Cython backend is not built")
        same = weight_cache._same_bytes
        monkeypatch.setattr(weight_cache, "_same_bytes",
                            lambda a, b, nt: ran.append(nt) or same(a, b, nt))
    else:
        monkeypatch.setattr(weight_cache, "_same_bytes", None)
    if path == "memcmp":
        if weight_cache._memcmp is None:
            pytest.skip("no C library handle")
        memcmp = weight_cache._memcmp
        monkeypatch.setattr(weight_cache, "_memcmp", lambda *a: ran.append(1) or memcmp(*a))
    elif path == "numpy":
        monkeypatch.setattr(weight_cache, "_memcmp", None)
    a = np.random.default_rng(0).standard_normal((64, 32, 3, 3)).astype(np.float32)
    a[1, 2, 0, 0] = np.nan
    b = a.copy()
    assert bitwise_equal(a, b)
    b[-1, -1, -1, -1] = np.nextafter(b[-1, -1, -1, -1], np.float32(np.inf))
    assert not bitwise_equal(a, b)
    z, nz = np.zeros(3), np.zeros(3)
    nz[1] = -0.0
    assert not bitwise_equal(z, nz)
    assert bitwise_equal(a[:, ::2], a[:, ::2].copy())
    assert not bitwise_equal(a[:, 1::2], b[:, 1::2])          # the changed element is in
    assert len(ran) == (0 if path == "numpy" else 3)          # the contiguous pairs


def test_cache_key_is_the_first_element_address():
    """The key's address (the Cython backend's buffer-protocol read, where built) is the
    first element's for views of every kind: strided, reversed, read-only, empty."""
    w = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    ro = w.copy()
    ro.flags.writeable = False
    for v in (w, w[1], w[:, ::2], w[::-1, :, ::-1], w.transpose(0, 2, 3, 1), ro, w[:0]):
        assert WeightCache._key(v)[0] == v.__array_interface__["data"][0]


def test_bitwise_equal_of_a_large_weight_on_every_thread(monkeypatch):
    """From PARALLEL_BYTES, on more than one thread, the comparison is the Cython
    backend's slices at once (``layout.same_bytes``; it ran, counted here): equal bits
    are equal, and a change in any thread's slice, its first or last byte included, is
    seen, as on one thread."""
    import fastconv
    same_bytes = weight_cache._same_bytes
    if same_bytes is None:
        pytest.skip("the Cython backend is not built")
    calls = []
    monkeypatch.setattr(weight_cache, "_same_bytes",
                        lambda a, b, nt: calls.append(nt) or same_bytes(a, b, nt))
    a = np.random.default_rng(1).standard_normal(weight_cache.PARALLEL_BYTES // 4 + 3,
                                                  dtype=np.float32)
    threads = fastconv.get_num_threads()
    fastconv.set_num_threads(2)
    try:
        assert bitwise_equal(a, a.copy())
        part = -(-a.nbytes // 2) // 4                 # the second slice's first element
        for i in (0, part - 1, part, a.size - 1):
            b = a.copy()
            b[i] = -b[i]
            assert not bitwise_equal(a, b), i
            assert not same_bytes(a, b, 3) and not same_bytes(a, b, 1), i
        assert calls == [2] * 5
        fastconv.set_num_threads(1)
        assert bitwise_equal(a, a.copy()) and calls == [2] * 5 + [1]   # one thread: memcmp
    finally:
        fastconv.set_num_threads(threads)


def test_hit_and_in_place_miss():
    cache, builds = WeightCache(), []
    w = np.ones((4, 4), np.float32)

    def build():
        builds.append(w.sum())
        return w * 2

    first = cache.get(w, "k", build)
    assert cache.get(w, "k", build) is first and len(builds) == 1
    w[3, 3] = 5                                   # same array, new contents: rebuilt
    assert cache.get(w, "k", build)[3, 3] == 10 and len(builds) == 2


def test_bounded_in_bytes_one_copy_per_weight():
    """Entries are evicted least recently used first once the bytes (copies and derived
    arrays) pass the bound; several derived arrays of one weight share its one copy."""
    w1, w2 = np.ones((256, 256), np.float32), np.full((256, 256), 2, np.float32)  # 256 KiB each
    cache = WeightCache(max_bytes=3 * w1.nbytes)
    cache.get(w1, "a", lambda: w1 * 2)
    cache.get(w1, "b", lambda: w1 * 3)
    assert len(cache.entries) == 1 and cache._nbytes() == 3 * w1.nbytes
    cache.get(w2, "a", lambda: w2 * 2)               # over the bound: w1's entry goes
    assert list(cache.entries) == [cache._key(w2)] and cache._nbytes() <= cache.max_bytes


def test_a_network_of_weights_fits():
    """The default bound holds more than the 8 weights the cache used to: ResNet-18's 21
    convolutions' derived layouts stay cached (built once over three passes)."""
    cache = WeightCache()
    rng = np.random.default_rng(0)
    weights = [rng.standard_normal((128, 128, 3, 3)).astype(np.float32) for _ in range(21)]
    builds = []
    for _ in range(3):
        for w in weights:
            cache.get(w, "layout", lambda w=w: builds.append(1) or w.copy())
    assert len(builds) == 21


def test_prepared_weight_derives_once_without_a_copy_or_check():
    """A PreparedWeight's derived arrays live with it: built once, never checked against a
    copy (its array is a private read-only copy), gone with it."""
    import fastconv
    w = np.random.default_rng(1).standard_normal((8, 4, 3, 3)).astype(np.float32)
    pw = fastconv.prepare_weight(w)
    assert pw.array is not w and not pw.array.flags.writeable
    w[...] = 0                                        # the caller's array: no effect
    cache, builds = WeightCache(), []
    first = cache.get(pw.array, "k", lambda: builds.append(1) or pw.array * 2)
    assert cache.get(pw.array, "k", lambda: builds.append(1) or pw.array * 2) is first
    assert builds == [1] and not cache.entries and "k" in pw.derived
    with pytest.raises(ValueError, match="prepare_weight"):
        fastconv.prepare_weight(np.ones((3, 3)))


@pytest.mark.parametrize("algorithm", ["direct", "winograd_f4", "im2col"])
def test_prepared_weight_gives_the_arrays_answer(algorithm):
    """conv2d and conv2d_input take a PreparedWeight wherever they take a weight, with the
    same result, and its layouts are kept on it (not in the shared cache)."""
    import fastconv
    from fastconv.kernels import weight_cache as wc
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 32, 14, 14)).astype(np.float32)
    w = rng.standard_normal((32, 32, 3, 3)).astype(np.float32)
    dy = rng.standard_normal((2, 32, 14, 14)).astype(np.float32)
    pw = fastconv.prepare_weight(w)
    for _ in range(2):
        np.testing.assert_array_equal(fastconv.conv2d(x, pw, padding=1, algorithm=algorithm),
                                      fastconv.conv2d(x, w, padding=1, algorithm=algorithm))
        np.testing.assert_array_equal(
            fastconv.conv2d_input(x.shape, pw, dy, padding=1, algorithm=algorithm),
            fastconv.conv2d_input(x.shape, w, dy, padding=1, algorithm=algorithm))
    if algorithm != "im2col":                         # im2col derives nothing from weights
        assert pw.derived
        assert all(wc.prepared(c) is None for c, _ in wc.CACHE.entries.values())
    assert wc.prepared(pw.array) is pw and wc.prepared(w) is None


def test_conv2d_layer_runs_on_a_prepared_weight_in_eval_mode():
    """nn.Conv2d prepares its weight at eval() and again at load_state_dict, so eval-mode
    calls skip the cache's check, and new weights are never missed."""
    from fastconv import nn
    rng = np.random.default_rng(3)
    layer = nn.Conv2d(4, 8, 3, padding=1, rng=rng)
    x = rng.standard_normal((2, 4, 9, 9)).astype(np.float32)
    train_out = layer(x)
    layer.eval()
    assert layer._prepared is not None and layer._prepared.shape == layer.weight.data.shape
    np.testing.assert_array_equal(layer(x), train_out)
    state = layer.state_dict()
    state["weight"] = state["weight"] * 2
    layer.load_state_dict(state)
    np.testing.assert_allclose(layer(x) - layer.bias.data[:, None, None],
                               2 * (train_out - layer.bias.data[:, None, None]), rtol=1e-5,
                               atol=1e-5)
    layer.train()
    assert layer._prepared is None


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_arrays_for_the_kernels_are_cache_line_aligned(dtype):
    """What fastconv allocates for its kernels starts on a cache line (NumPy aligns to 16
    bytes only): ``_config.empty``, the workspaces, every op's result, a prepared
    weight's copy and what the kernels derive from a weight, prepared or not; the result
    is the same as from misaligned inputs."""
    import fastconv
    from fastconv import _config
    weight_cache.CACHE.clear()                 # only what this test derives
    line = _config.ALIGN
    assert line == 64
    for shape in [(0,), (1,), (3, 5), (2, 3, 7, 7)]:
        a = _config.empty(shape, dtype)
        assert a.shape == shape and a.dtype == dtype and a.flags.c_contiguous
        assert a.flags.writeable and (a.size == 0 or a.ctypes.data % line == 0)
    assert _config.empty((2,), object).dtype == object      # no bytes of its own to align
    assert _config.workspace("test.aligned", 100, dtype).ctypes.data % line == 0
    rng = np.random.default_rng(0)
    nbytes = 2 * 16 * 9 * 9 * np.dtype(dtype).itemsize
    raw = np.empty(nbytes + 2 * line, np.uint8)
    start = (8 - raw.ctypes.data) % line                     # 8 bytes past a line
    x = raw[start:start + nbytes].view(dtype).reshape(2, 16, 9, 9)
    x[...] = rng.standard_normal(x.shape)
    assert x.ctypes.data % line != 0                         # a misaligned input
    w = rng.standard_normal((24, 16, 3, 3)).astype(dtype)
    pw = fastconv.prepare_weight(w)
    assert pw.array.ctypes.data % line == 0 and not pw.array.flags.writeable
    outs = [fastconv.conv2d(x, w, padding=1, algorithm=a, backend="cython")
            for a in ("direct", "winograd_f4", "im2col")]
    outs.append(fastconv.conv2d(fastconv.to_channels_last(x), pw, padding=1))
    outs.append(fastconv.max_pool2d(x, 2))
    outs.append(fastconv.conv2d_input(x.shape, w, outs[0], padding=1))
    for k, y in enumerate(outs):
        assert y.ctypes.data % line == 0, k
    want = fastconv.conv2d(np.ascontiguousarray(x), w, padding=1, algorithm="reference")
    for y in outs[:4]:
        np.testing.assert_allclose(y, want, rtol=1e-4 if dtype == np.float32 else 1e-10,
                                   atol=1e-4 if dtype == np.float32 else 1e-10)
    derived = [d for d in pw.derived.values() if isinstance(d, np.ndarray)]
    derived += [d for _, ds in weight_cache.CACHE.entries.values() for d in ds.values()
                if isinstance(d, np.ndarray)]
    assert derived
    assert [d.shape for d in derived if d.flags.c_contiguous and d.ctypes.data % line] == []
