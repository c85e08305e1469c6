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
from fastconv import _tuning
from fastconv.kernels import layouts
from fastconv.kernels.numba import codegen

from conftest import tuned

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

#: the register blocks of the table this process plans with (tests/conftest.py: the
#: 16-register one; the subprocesses inherit its FASTCONV_VECTOR_REGISTERS):
#: direct's one-row lanes block (rows, pixels, output channels), Winograd's GEMM block
#: (columns, rows)
LANES_ONE_ROW = layouts.LANES_BLOCKS[0]
GEMM_COLS, GEMM_ROWS = layouts.GEMM_BLOCK


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
    M, J, KB = LANES_ONE_ROW
    assert f"direct_lanes_{M}x{J}_k{KB}_s1" in text and f"gemm_{GEMM_ROWS}x{GEMM_COLS}" in text


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
    M, J, KB = LANES_ONE_ROW                      # 1 x 4 x 24 (16 registers), 1 x 14 x 32
    assert codegen.kernel_name("direct_lanes", rows=M, cols=J, channels=KB,
                               stride=1) == f"direct_lanes_{M}x{J}_k{KB}_s1"
    assert codegen.kernel_name("gemm", rows=GEMM_ROWS,
                               cols=GEMM_COLS) == f"gemm_{GEMM_ROWS}x{GEMM_COLS}"
    assert codegen.kernel_name("direct_weight_grad", in_channels=16,
                               channels=16) == "direct_weight_grad_c16_k16"


def test_lookup_errors_name_what_exists():
    with pytest.raises(KeyError, match="families"):
        codegen.kernel_name("no_such_family", rows=1)
    with pytest.raises(TypeError, match="rows, cols"):
        codegen.kernel_name("gemm", rows=6)
    # a block the module does not have: the error names the one it has
    with pytest.raises(KeyError, match=f"'rows': {GEMM_ROWS}, 'cols': {GEMM_COLS}"):
        codegen.kernel_name("gemm", rows=GEMM_ROWS + 1, cols=GEMM_COLS)


def _lanes_runs():
    """Calls that reach every lanes kernel of the table this process plans with (either
    table): per block (M rows, J pixels, KB output channels), M x J outputs (rows too
    short for the blocks before it), stride 1 and 2, on 32 input channels (a 3x3 patch
    of 288 >= LANES_MIN_PATCH, which a two-row block needs); for a two-row block also a
    512 x 512 weight (>= LANES_STREAM_MIN_WEIGHT: the streamed kernel)."""
    assert 32 * 9 >= _tuning.LANES_MIN_PATCH and 512 * 512 * 9 * 4 >= \
        _tuning.LANES_STREAM_MIN_WEIGHT
    runs = []
    for M, J, KB in layouts.LANES_BLOCKS:
        assert layouts.lanes_block(M, J) == (M, J, KB)
        channels = (32, 512) if M > 1 else (32,)           # the streamed kernel: row pairs
        for C in channels:
            K = KB if C == 32 else C
            runs += [("conv2d", (1, C, M, J), (K, C, 3, 3), np.float32, None, dict(padding=1)),
                     ("conv2d", (1, C, 2 * M, 2 * J), (K, C, 3, 3), np.float32, None,
                      dict(stride=2, padding=1))]
    return runs


#: rows one pixel shorter than the one-row lanes block (a two-row block fits them, but
#: not on a short patch): 3 (16 registers), 13 (32)
SHORT = layouts.LANES_BLOCKS[0][1] - 1

#: calls that run every generated kernel: (op, input shape, weight shape, dtype,
#: threads, keywords); the kernels are compiled on first run (or loaded from the cache)
RUNS = [
    ("conv2d", (1, 8, 9, 9), (16, 8, 3, 3), np.float64, None, dict(stride=2)),  # row 8, split
    ("conv2d", (1, 8, 20, 20), (16, 8, 3, 3), np.float32, None, dict(stride=3)),  # row 16
    ("conv2d", (1, 8, SHORT, SHORT), (16, 8, 3, 3), np.float32, None, dict(padding=1)),  # flat
    *_lanes_runs(),                                     # lanes, one and two rows; streamed
    ("conv2d", (4, 256, 5, 5), (64, 256, 1, 1), np.float32, None, {}),           # pointwise
    ("conv2d_weight", (2, 16, 9, 9), (16, 16, 3, 3), np.float32, None, dict(padding=1)),
    ("conv2d_weight", (2, 8, 9, 9), (16, 8, 3, 3), np.float64, None, dict(padding=1)),
    ("conv2d", (1, 8, 11, 11), (8, 1, 3, 3), np.float32, None,                    # depthwise
     dict(padding=1, groups=8)),
    ("conv2d", (1, 16, 11, 11), (16, 1, 3, 3), np.float32, None,                  # its NHWC
     dict(padding=1, groups=16, channels_last=True)),
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
        kw = dict(kw)
        x = rng.standard_normal(xs).astype(dtype)
        if kw.pop("channels_last", False):              # NCHW-shaped, channels-last strides
            x = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
        w = rng.standard_normal(ws).astype(dtype)
        dy = rng.standard_normal(fastconv.conv2d(x, w, algorithm="reference", **kw).shape
                                 ).astype(dtype)
        fastconv.set_num_threads(nthreads or threads)
        try:
            # F(4x4)'s 4 tiles streamed, F(2x2)'s 2.4 MB filter unfused (not fused)
            with tuned(STREAM_MIN_FILTER_BYTES=2**24, FUSED_MAX_FILTER_BYTES=2**20):
                got = _op(op, x, w, dy, algorithm, kw)
        finally:
            fastconv.set_num_threads(threads)
        want = _op(op, x, w, dy, "reference", kw)
        err = np.abs(got - want).max() / np.abs(want).max()
        assert err < (1e-4 if dtype == np.float32 else 1e-10), (algorithm, op, xs, ws, kw)
    module = codegen.load()
    idle = [name for name in codegen.TABLE.values() if not getattr(module, name).signatures]
    assert not idle, f"never compiled: {idle}"
