"""Behaviour users rely on beyond the numbers: array layouts, unbatched input, threads,
the JIT cache directory, concurrent calls (workspace tiling: test_im2col.py and
test_winograd.py; autotuning: test_selection.py)."""
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


@pytest.mark.parametrize("backend", ["numba", "cython"])
@pytest.mark.parametrize("stride", [7, 2**40])
def test_a_stride_past_the_input_gives_one_output(backend, stride):
    """A stride longer than the padded input: one output row and column, and the right
    gradients (the fuzzer once found the input gradient sizing a buffer by the stride)."""
    x, w, dy = arrays(3, np.float32, (2, 3, 5, 6), (4, 3, 2, 2), (2, 4, 1, 1))
    for op, args in [("conv2d", (x, w)), ("conv2d_input", (x.shape, w, dy)),
                     ("conv2d_weight", (x, w.shape, dy))]:
        got = getattr(fastconv, op)(*args, stride=stride, padding=1, backend=backend)
        want = getattr(fastconv, op)(*args, stride=stride, padding=1, algorithm="reference")
        assert_close(got, want, 1e-5, f"{op} stride={stride}")


def test_pool_stride_defaults_to_kernel_size():
    np.testing.assert_array_equal(fastconv.max_pool2d(x, 3), fastconv.max_pool2d(x, 3, 3))


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
