"""The Numba backend's generated kernels (``fastconv.kernels.numba.codegen``): the one
table of kernels and its names, the lookup, and ``FASTCONV_DEBUG=source``. (Their
results are tested through the ops, against the reference and PyTorch.)"""
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastconv
from fastconv.kernels.numba import codegen

#: fastconv's checkout, for the subprocesses (the one imported here)
ROOT = str(Path(codegen.__file__).resolve().parents[4])


def _run(code, tmp_path, **env):
    """``code`` in a fresh interpreter, in ``tmp_path``, with ``env`` added (values None:
    removed)."""
    full = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [ROOT] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    for k, v in env.items():
        if v is None:
            full.pop(k, None)
        else:
            full[k] = v
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=full,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    return run


LOAD = "from fastconv.kernels.numba import codegen; print(codegen.load().__file__)"


def _assert_holds_every_kernel(text):
    for name in codegen.TABLE.values():
        assert re.search(rf"^def {name}\(", text, re.M), name


def test_debug_source_writes_the_generated_module_to_the_debug_dir(tmp_path):
    out = tmp_path / "gen"
    run = _run(LOAD, tmp_path, FASTCONV_DEBUG="source", FASTCONV_DEBUG_DIR=str(out))
    copy = out / codegen.DEBUG_FILE
    assert copy.is_file()
    assert str(copy) in run.stderr                    # the message says where
    text = copy.read_text()
    assert text == Path(run.stdout.strip().splitlines()[-1]).read_text()  # the compiled one
    _assert_holds_every_kernel(text)
    assert "direct_lanes_1x14_k32_s1" in text and "gemm_6x64" in text


def test_debug_source_default_dir_and_flag_list(tmp_path):
    run = _run(LOAD, tmp_path, FASTCONV_DEBUG="other,source", FASTCONV_DEBUG_DIR=None)
    copy = tmp_path / "fastconv_generated" / codegen.DEBUG_FILE
    assert copy.is_file() and str(copy) in run.stderr
    _assert_holds_every_kernel(copy.read_text())


def test_no_copy_without_the_flag(tmp_path):
    run = _run(LOAD, tmp_path, FASTCONV_DEBUG=None, FASTCONV_DEBUG_DIR=None)
    assert not (tmp_path / "fastconv_generated").exists()
    assert "FASTCONV_DEBUG" not in run.stderr


def test_every_table_entry_is_a_jit_function_of_the_generated_module():
    numba = pytest.importorskip("numba")
    module = codegen.load()
    for (family, values), name in codegen.TABLE.items():
        blocking = dict(zip(codegen.FAMILIES[family].params, values))
        fn = codegen.kernel(family, **blocking)
        assert fn is getattr(module, name)
        assert isinstance(fn, numba.core.dispatcher.Dispatcher), name
        assert fn.py_func.__name__ == name
        assert fn.targetoptions.get("nogil") and fn.targetoptions.get("boundscheck") is False


def test_names_follow_the_scheme():
    names = list(codegen.TABLE.values())
    assert len(set(names)) == len(names)
    for (family, values), name in codegen.TABLE.items():
        spec = codegen.FAMILIES[family]
        assert name == spec.template.format(**dict(zip(spec.params, values)))
        assert name.startswith(family + "_")
        # the blocking part: R x C blocks, pixel runs, k/c/s fields, pairs
        fields = name[len(family) + 1:].split("_")
        assert all(re.fullmatch(r"\d+x\d+|\d+px|[kcs]\d+|\d+pairs", f) for f in fields), name
    assert codegen.kernel_name("direct_lanes", rows=1, cols=14, channels=32,
                               stride=1) == "direct_lanes_1x14_k32_s1"
    assert codegen.kernel_name("gemm", rows=6, cols=64) == "gemm_6x64"
    assert codegen.kernel_name("direct_weight_grad", in_channels=16,
                               channels=16) == "direct_weight_grad_c16_k16"


def test_lookup_errors_name_what_exists():
    with pytest.raises(KeyError, match="families"):
        codegen.kernel_name("no_such_family", rows=1)
    with pytest.raises(TypeError, match="rows, cols"):
        codegen.kernel_name("gemm", rows=6)
    with pytest.raises(KeyError, match="'rows': 6, 'cols': 64"):
        codegen.kernel_name("gemm", rows=5, cols=64)


#: calls that run every generated kernel: (op, input shape, weight shape, dtype,
#: threads, keywords); the kernels are compiled on first run (or loaded from the cache)
RUNS = [
    ("conv2d", (1, 8, 9, 9), (16, 8, 3, 3), np.float64, None, dict(stride=2)),  # row 8, split
    ("conv2d", (1, 8, 20, 20), (16, 8, 3, 3), np.float32, None, dict(stride=3)),  # row 16
    ("conv2d", (1, 8, 6, 6), (16, 8, 3, 3), np.float32, None, dict(padding=1)),   # flat
    ("conv2d", (1, 8, 16, 16), (32, 8, 3, 3), np.float32, None, dict(padding=1)),  # lanes 1x14
    ("conv2d", (1, 8, 32, 32), (32, 8, 3, 3), np.float32, None,
     dict(stride=2, padding=1)),
    ("conv2d", (1, 64, 7, 7), (32, 64, 3, 3), np.float32, None, dict(padding=1)),  # lanes 2x7
    ("conv2d", (1, 64, 13, 13), (32, 64, 3, 3), np.float32, None,
     dict(stride=2, padding=1)),
    ("conv2d", (1, 512, 7, 7), (512, 512, 3, 3), np.float32, None,               # streamed
     dict(padding=1)),
    ("conv2d", (1, 512, 13, 13), (512, 512, 3, 3), np.float32, None,
     dict(stride=2, padding=1)),
    ("conv2d", (4, 256, 5, 5), (64, 256, 1, 1), np.float32, None, {}),           # pointwise
    ("conv2d_weight", (2, 16, 9, 9), (16, 16, 3, 3), np.float32, None, dict(padding=1)),
    ("conv2d_weight", (2, 8, 9, 9), (16, 8, 3, 3), np.float64, None, dict(padding=1)),
    ("conv2d", (1, 8, 11, 11), (8, 1, 3, 3), np.float32, None,                    # depthwise
     dict(padding=1, groups=8)),
    ("conv2d_weight", (2, 8, 11, 11), (8, 1, 3, 3), np.float32, None,
     dict(padding=1, groups=8)),
]
#: (algorithm, runs) of the GEMMs: Winograd's unfused (gemm) and streamed (gemm_acc)
#: products, im2col's weight gradient (patch_gemm, both dtypes)
GEMM_RUNS = [
    ("winograd_f2", ("conv2d", (1, 192, 8, 8), (192, 192, 3, 3), np.float32, 1,
                     dict(padding=1))),
    ("winograd_f4", ("conv2d", (1, 384, 8, 8), (384, 384, 3, 3), np.float32, None,
                     dict(padding=1))),
    ("im2col", ("conv2d_weight", (1, 3, 112, 112), (64, 3, 7, 7), np.float32, None,
                dict(stride=2, padding=3))),
    ("im2col", ("conv2d_weight", (1, 3, 112, 112), (64, 3, 7, 7), np.float64, None,
                dict(stride=2, padding=3))),
]


def _op(op, x, w, dy, algorithm, kw):
    """``op`` by ``algorithm``, on the Numba backend (whose generated kernels these are)."""
    backend = "numpy" if algorithm == "reference" else "numba"
    if op == "conv2d":
        return fastconv.conv2d(x, w, algorithm=algorithm, backend=backend, **kw)
    return fastconv.conv2d_weight(x, w.shape, dy, algorithm=algorithm, backend=backend, **kw)


def test_every_generated_kernel_compiles_and_runs():
    """Each kernel of the table gets compiled (or loaded from the cache) by a call whose
    result matches the reference."""
    rng = np.random.default_rng(0)
    threads = fastconv.get_num_threads()
    for algorithm, (op, xs, ws, dtype, nthreads, kw) in (
            [("direct", r) for r in RUNS] + GEMM_RUNS):
        x = rng.standard_normal(xs).astype(dtype)
        w = rng.standard_normal(ws).astype(dtype)
        dy = rng.standard_normal(fastconv.conv2d(x, w, algorithm="reference", **kw).shape
                                 ).astype(dtype)
        fastconv.set_num_threads(nthreads or threads)
        try:
            got = _op(op, x, w, dy, algorithm, kw)
        finally:
            fastconv.set_num_threads(threads)
        want = _op(op, x, w, dy, "reference", kw)
        err = np.abs(got - want).max() / np.abs(want).max()
        assert err < (1e-4 if dtype == np.float32 else 1e-10), (algorithm, op, xs, ws, kw)
    module = codegen.load()
    idle = [name for name in codegen.TABLE.values() if not getattr(module, name).signatures]
    assert not idle, f"never compiled: {idle}"
