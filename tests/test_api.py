"""Behaviour users rely on beyond the numbers: array layouts, unbatched input, threads,
workspace tiling, the JIT cache directory, concurrent calls."""
import json
import os
import subprocess
import sys
import threading
import warnings

import numpy as np
import pytest
from threadpoolctl import threadpool_info

import fastconv

from conftest import arrays, assert_close

x, w = arrays(0, np.float32, (3, 4, 11, 9), (6, 4, 3, 3))


@pytest.mark.parametrize("algorithm,backend", fastconv.algorithms("conv2d"))
def test_noncontiguous_and_fortran_inputs_give_the_same_answer(algorithm, backend):
    want = fastconv.conv2d(x, w, padding=1, algorithm=algorithm, backend=backend)
    fortran = np.asfortranarray(x)
    strided = np.zeros((3, 8, 11, 18), np.float32)
    strided[:, ::2, :, ::2] = x
    for variant in (fortran, strided[:, ::2, :, ::2], x[::-1][::-1]):
        np.testing.assert_array_equal(
            fastconv.conv2d(variant, np.asfortranarray(w), padding=1, algorithm=algorithm,
                            backend=backend), want)


def test_unbatched_input():
    assert fastconv.conv2d(x[0], w, padding=1).shape == (6, 11, 9)
    np.testing.assert_array_equal(fastconv.conv2d(x[0], w, padding=1),
                                  fastconv.conv2d(x[:1], w, padding=1)[0])
    y, idx = fastconv.max_pool2d(x[1], 2, return_indices=True)
    assert y.shape == idx.shape == (4, 5, 4)
    assert fastconv.max_pool2d_backward(y, idx, x[1].shape).shape == x[1].shape
    assert fastconv.avg_pool2d(x[1], 3).shape == (4, 3, 3)
    assert fastconv.avg_pool2d_backward(fastconv.avg_pool2d(x[1], 3), x[1].shape, 3).shape == x[1].shape
    assert fastconv.adaptive_avg_pool2d(x[1], 1).shape == (4, 1, 1)
    dy = fastconv.conv2d(x[0], w)
    assert fastconv.conv2d_input(x[0].shape, w, dy).shape == x[0].shape
    assert fastconv.conv2d_weight(x[0], w.shape, dy).shape == w.shape
    assert fastconv.conv_transpose2d(dy, w).shape == x[0].shape


def test_arguments_as_lists_and_numpy_ints():
    a = fastconv.conv2d(x, w, stride=[2, 1], padding=[1, 0], dilation=np.int64(1))
    b = fastconv.conv2d(x, w, stride=(2, 1), padding=(1, 0))
    np.testing.assert_array_equal(a, b)


def test_pool_stride_defaults_to_kernel_size():
    np.testing.assert_array_equal(fastconv.max_pool2d(x, 3), fastconv.max_pool2d(x, 3, 3))


@pytest.mark.parametrize("limit", [1, 4096, 40_000, 10**6])
def test_workspace_tiling_gives_the_same_answer(limit):
    """Tiny bounds force row bands of one image; middle ones several images per tile."""
    big_x, big_w = arrays(1, np.float64, (5, 3, 13, 12), (4, 3, 3, 2))
    p_args = dict(stride=(2, 1), padding=1, dilation=(1, 2))
    want = fastconv.conv2d(big_x, big_w, **p_args, algorithm="reference")
    dy = np.ones_like(want)
    dx_ref = fastconv.conv2d_input(big_x.shape, big_w, dy, **p_args, algorithm="reference")
    dw_ref = fastconv.conv2d_weight(big_x, big_w.shape, dy, **p_args, algorithm="reference")
    old = fastconv.get_workspace_limit()
    try:
        fastconv.set_workspace_limit(limit)
        assert_close(fastconv.conv2d(big_x, big_w, **p_args, algorithm="im2col"), want, 1e-12, "fwd")
        assert_close(fastconv.conv2d_input(big_x.shape, big_w, dy, **p_args, algorithm="im2col"),
                     dx_ref, 1e-12, "grad-input")
        assert_close(fastconv.conv2d_weight(big_x, big_w.shape, dy, **p_args, algorithm="im2col"),
                     dw_ref, 1e-12, "grad-weight")
    finally:
        fastconv.set_workspace_limit(old)


def _blas_threads():
    return {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}


def test_set_num_threads_reaches_numba_and_blas():
    old = fastconv.get_num_threads()
    try:
        fastconv.set_num_threads(1)
        assert fastconv.get_num_threads() == 1
        assert _blas_threads() == {1}
        want = fastconv.conv2d(x, w, padding=1)
        fastconv.set_num_threads(old)
        assert fastconv.get_num_threads() == old
        assert _blas_threads() == {old}
        np.testing.assert_allclose(fastconv.conv2d(x, w, padding=1), want, rtol=1e-5, atol=1e-5)
    finally:
        fastconv.set_num_threads(old)


def _in_threads(work, n):
    """Run ``work`` in ``n`` Python threads at once; re-raise the first error."""
    errors = []

    def run():
        try:
            work()
        except Exception as exc:  # reported below, with the failing thread's error
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_concurrent_calls_from_python_threads():
    want = fastconv.conv2d(x, w, padding=1)
    want_pool = fastconv.max_pool2d(x, 2)
    results = []

    def work():
        for _ in range(5):
            results.append((fastconv.conv2d(x, w, padding=1), fastconv.max_pool2d(x, 2)))

    _in_threads(work, 4)
    assert len(results) == 20
    for y, pooled in results:
        np.testing.assert_array_equal(y, want)
        np.testing.assert_array_equal(pooled, want_pool)


def test_unwritable_cache_dir_falls_back_with_a_warning(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    env = dict(os.environ, FASTCONV_CACHE_DIR=str(blocker / "cache"))
    code = ("import warnings; warnings.simplefilter('always');\n"
            "import fastconv, fastconv._config as c; print(c.CACHE_DIR)")
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    assert "cannot write the JIT cache directory" in run.stderr
    assert str(blocker) not in run.stdout.strip()


def test_cache_dir_is_configurable(tmp_path):
    env = dict(os.environ, FASTCONV_CACHE_DIR=str(tmp_path / "jit"))
    code = "import fastconv._config as c; print(c.CACHE_DIR)"
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=300)
    with warnings.catch_warnings():
        assert run.stdout.strip() == str(tmp_path / "jit"), run.stderr


def test_autotune_times_once_remembers_on_disk_and_auto_uses_it(tmp_path):
    """In a fresh process with its own cache: tuning writes autotune.json, a second
    process with tuning off reads the winner back and does not time again."""
    env = dict(os.environ, FASTCONV_CACHE_DIR=str(tmp_path / "jit"))
    code = r"""
import json, numpy as np, fastconv
from fastconv import _plan
x = np.random.rand(2, 8, 12, 12).astype(np.float32); w = np.random.rand(8, 8, 3, 3).astype(np.float32)
p = fastconv._geometry.conv_params("t", x.shape, w.shape, 1, 1)
fastconv.autotune(%s)
calls = []
real = _plan.tune
_plan.tune = lambda *a, **k: calls.append(1) or real(*a, **k)
y1 = fastconv.conv2d(x, w, padding=1); y2 = fastconv.conv2d(x, w, padding=1)
key = _plan._key("conv2d", p, np.float32)
print(json.dumps(dict(calls=len(calls), winner=_plan._load_tuned().get(key),
                      ok=bool(np.allclose(y1, fastconv.conv2d(x, w, padding=1, algorithm="reference"), rtol=1e-4, atol=1e-4)))))
"""
    first = subprocess.run([sys.executable, "-c", code % "True"], env=env, capture_output=True,
                           text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    r1 = json.loads(first.stdout.strip().splitlines()[-1])
    assert r1["calls"] == 1 and r1["ok"]
    assert tuple(r1["winner"][:2]) in fastconv.algorithms("conv2d")  # [algorithm, backend, variant]
    assert (tmp_path / "autotune.json").exists()
    second = subprocess.run([sys.executable, "-c", code % "False"], env=env, capture_output=True,
                            text=True, timeout=600)
    assert second.returncode == 0, second.stderr
    r2 = json.loads(second.stdout.strip().splitlines()[-1])
    assert r2["calls"] == 0 and r2["winner"] == r1["winner"] and r2["ok"]


def test_blas_held_at_one_thread_inside_kernels_and_restored_after():
    """Kernels that call BLAS from each Numba thread (fused Winograd) hold BLAS at one
    thread meanwhile, also when Python threads overlap, and restore the user's count."""
    from fastconv._config import single_threaded_blas
    before = _blas_threads()
    with single_threaded_blas():
        assert _blas_threads() == {1}
        with single_threaded_blas():
            assert _blas_threads() == {1}
        assert _blas_threads() == {1}
    assert _blas_threads() == before
    xw, ww = arrays(5, np.float32, (2, 16, 20, 20), (16, 16, 3, 3))
    want = fastconv.conv2d(xw, ww, padding=1, algorithm="reference")

    def work():
        for _ in range(5):
            assert_close(fastconv.conv2d(xw, ww, padding=1, algorithm="winograd_f4"), want,
                         1e-4, "winograd_f4 from a Python thread")

    _in_threads(work, 3)
    assert _blas_threads() == before
