"""The register blocks follow the CPU's vector registers (``fastconv._machine``,
``fastconv.kernels.layouts``): 32 with AVX-512, 16 with AVX2. The rest of the suite
plans with the 16-register table on every CPU (tests/conftest.py: its kernels compile
fast); this file runs the 32-register table, the one AVX-512 CPUs get, in a process of
its own: every kernel whose blocks it changes (direct's lanes kernels, one and two rows,
stride 1 and 2, streamed; the flat kernel of the strided input gradient; Winograd's
GEMM; the patch GEMM of im2col's weight gradient and of direct's pointwise forward),
forward and both gradients, against the reference. Its kernels are the slow ones to
compile (about a minute each for the lanes kernels on Zen 3, 7 minutes in all), so it
is marked ``avx512_blocks``, which the suite's default run leaves out (pyproject.toml)
and .ci/run runs on its own: ``python -m pytest -m avx512_blocks``."""
import json
import os
import subprocess
import sys

import pytest

from fastconv import _machine
from fastconv.kernels import layouts

CODE = r"""
import json, numpy as np, fastconv
from fastconv import _tuning
from fastconv.kernels import layouts
rng = np.random.default_rng(0)
report = dict(tables=[layouts.LANES_BLOCKS, layouts.FLAT_BLOCKS, layouts.GEMM_BLOCK,
                      layouts.PATCH_GEMM_BLOCKS], cases=[])

def check(op, algorithm, N, C, H, W, K, R, **kw):
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = rng.standard_normal((K, C // kw.get("groups", 1), R, R)).astype(np.float32)
    y = fastconv.conv2d(x, w, **kw, algorithm="reference")
    dy = rng.standard_normal(y.shape).astype(np.float32)
    be = lambda a: "auto" if a == "reference" else "numba"          # the blocks are Numba's
    call = {"conv2d": lambda a: fastconv.conv2d(x, w, **kw, algorithm=a, backend=be(a)),
            "conv2d_input": lambda a: fastconv.conv2d_input(x.shape, w, dy, **kw, algorithm=a,
                                                            backend=be(a)),
            "conv2d_weight": lambda a: fastconv.conv2d_weight(x, w.shape, dy, **kw, algorithm=a,
                                                              backend=be(a))}[op]
    with fastconv.trace_plans() as ran:
        got = call(algorithm)
    want = call("reference")
    err = float(np.abs(got - want).max() / np.abs(want).max())
    plan = ran[-1]
    report["cases"].append(dict(op=op, variant=plan.variant,
                                block=dict(plan.blocking).get("block"), err=err))

check("conv2d", "direct", 2, 32, 9, 17, 40, 3, padding=1)                 # lanes, 1 row
check("conv2d", "direct", 1, 32, 8, 9, 24, 3, padding=1)             # lanes, 2 rows
check("conv2d", "direct", 1, 16, 15, 31, 24, 3, stride=2, padding=1)      # lanes, stride 2
check("conv2d_input", "direct", 2, 24, 9, 16, 32, 3, padding=1)           # lanes on dy
check("conv2d_input", "direct", 2, 20, 11, 12, 28, 3, stride=2, padding=1)  # flat phases
check("conv2d_weight", "direct", 2, 20, 9, 9, 28, 3, padding=1)
for name in ("FUSED_MAX_FILTER_BYTES", "SPLIT_MAX_SLICE_BYTES", "SPLIT_MAX_STREAM_BYTES"):
    _tuning.set(name, 0)                                                  # unfused: the GEMM
check("conv2d", "winograd_f4", 2, 24, 10, 10, 64, 3, padding=1)
check("conv2d_input", "winograd_f2", 2, 64, 10, 10, 24, 3, padding=1)
_tuning.reset()
check("conv2d_weight", "im2col", 2, 2, 20, 20, 72, 3, padding=1)          # patch GEMM
check("conv2d", "direct", 4, 256, 5, 5, 64, 1)                             # pointwise
_tuning.set("LANES_STREAM_MIN_WEIGHT", 0)
check("conv2d", "direct", 1, 32, 8, 9, 24, 3, padding=1)             # streamed, 2 rows
print(json.dumps(report))
"""


@pytest.mark.avx512_blocks
def test_the_avx512_table_runs_every_blocked_kernel_correctly():
    env = dict(os.environ, FASTCONV_VECTOR_REGISTERS="32")
    out = subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    lanes, flat, gemm, patch = report["tables"]
    assert lanes == [[1, 14, 32], [2, 7, 32]] and flat == [[32, 12]] and gemm == [64, 6]
    assert patch == [[64, 6], [32, 6]]
    ran = [(c["op"], c["variant"], c["block"] and tuple(c["block"])) for c in report["cases"]]
    assert ran == [
        ("conv2d", "lanes", (1, 14, 32)), ("conv2d", "lanes", (2, 7, 32)),
        ("conv2d", "lanes", (1, 14, 32)), ("conv2d_input", "lanes", (1, 14, 32)),
        ("conv2d_input", "phases", None), ("conv2d_weight", "blocked", None),
        ("conv2d", "unfused", None), ("conv2d_input", "unfused", None),
        ("conv2d_weight", "patch_gemm", (6, 64)), ("conv2d", "pointwise", (6, 64)),
        ("conv2d", "lanes_streamed", (2, 7, 32))], ran
    for case in report["cases"]:
        assert case["err"] < 1e-4, case


def test_the_register_count_comes_from_the_cpu_or_the_override():
    assert os.environ["FASTCONV_VECTOR_REGISTERS"] == "16"        # tests/conftest.py
    assert _machine.vector_registers() == 16
    code = ("from fastconv import _machine; import numpy as np;"
            "from numpy._core._multiarray_umath import __cpu_features__ as f;"
            "print(_machine.vector_registers(), bool(f.get('AVX512F')))")
    env = {k: v for k, v in os.environ.items() if k != "FASTCONV_VECTOR_REGISTERS"}
    got, avx512 = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                                 text=True, check=True).stdout.split()
    assert int(got) == (32 if avx512 == "True" else 16)
    bad = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(env, FASTCONV_VECTOR_REGISTERS="24"))
    assert bad.returncode != 0 and "FASTCONV_VECTOR_REGISTERS='24'" in bad.stderr
    assert layouts.LANES_BLOCKS[0] == (1, 4, 24)
