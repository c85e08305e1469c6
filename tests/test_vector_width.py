"""By default the generated kernels compile to the widest FMA the CPU has (512-bit on
AVX-512 CPUs, Intel's included, where LLVM prefers 256-bit vectors unless told
otherwise), and a CPU with AVX2 but no AVX-512 still gets correct, AVX2-wide kernels.

Each check compiles in a fresh process with an empty JIT cache, so the assembly read is
that of the target asked for."""
import json
import os
import subprocess
import sys

import pytest

CODE = r"""
import json, re, numpy as np, fastconv
import fastconv.kernels.layouts
from fastconv.kernels.numba import codegen
rng = np.random.default_rng(0)
x = rng.standard_normal((1, 32, 16, 16)).astype(np.float32)
w = rng.standard_normal((32, 32, 3, 3)).astype(np.float32)
with fastconv.trace_plans() as ran:
    y = fastconv.conv2d(x, w, padding=1, algorithm="direct", backend="numba")
want = fastconv.conv2d(x, w, padding=1, algorithm="reference")
M, J, KB = fastconv.kernels.layouts.LANES_BLOCKS[0]
fn = codegen.kernel("direct_lanes", rows=M, cols=J, channels=KB, stride=1)
asm = "\n".join(fn.inspect_asm().values())
print(json.dumps(dict(variant=ran[-1].variant, err=float(np.abs(y - want).max() / np.abs(want).max()),
                      zmm=len(re.findall(r"vfmadd\w+\s[^\n]*zmm", asm)),
                      ymm=len(re.findall(r"vfmadd\w+\s[^\n]*ymm", asm)))))
"""


def _features():
    try:
        import llvmlite.binding as ll
    except ImportError:
        pytest.skip("llvmlite (Numba) is not installed")
    return ll.get_host_cpu_features()


def _run(tmp_path, base=None, **env):
    full = dict(os.environ if base is None else base,
                FASTCONV_CACHE_DIR=str(tmp_path / "jit"), **env)
    out = subprocess.run([sys.executable, "-c", CODE], env=full, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_avx512_cpus_get_512_bit_fmas(tmp_path):
    if not _features().get("avx512f"):
        pytest.skip("this CPU has no AVX-512")
    env = {k: v for k, v in os.environ.items() if k != "FASTCONV_VECTOR_WIDTH"}
    r = _run(tmp_path, env, FASTCONV_VECTOR_REGISTERS="32")         # the default width
    assert r["variant"] == "lanes" and r["err"] < 1e-5
    assert r["zmm"] >= 28 and r["ymm"] == 0, r          # 14 pixels x 2 vectors of 16 channels


def test_an_avx2_cpu_gets_correct_256_bit_kernels(tmp_path):
    """Compiled for Haswell (AVX2 + FMA, no AVX-512) through Numba's target settings."""
    if not _features().get("avx2") or not _features().get("fma"):
        pytest.skip("this CPU cannot run AVX2 code")
    haswell = ("+64bit,+avx,+avx2,+bmi,+bmi2,+cmov,+cx16,+f16c,+fma,+fxsr,+lzcnt,+mmx,"
               "+movbe,+popcnt,+sse,+sse2,+sse3,+sse4.1,+sse4.2,+ssse3,+xsave,-avx512f")
    r = _run(tmp_path, NUMBA_CPU_NAME="haswell", NUMBA_CPU_FEATURES=haswell,
             FASTCONV_VECTOR_REGISTERS="16")
    assert r["variant"] == "lanes" and r["err"] < 1e-5
    assert r["zmm"] == 0 and r["ymm"] >= 12, r          # 4 pixels x 3 vectors of 8 channels
