"""The Numba backend's generated kernels: register-tiled loops written out as Python
source, one function per block size, compiled by Numba.

Numba reaches near-peak FMA throughput on this kind of kernel only when the register
block is plain scalar locals and LLVM's SLP vectorizer packs them into vector
registers (see /work/shared/PERFORMANCE.md). So the inner bodies are written out here
as Python source, saved to a file in fastconv's JIT cache directory (so ``cache=True``
works: Numba caches only functions that live in a file) and imported. The file name
carries a hash of the source and of the modules whose functions the kernels call, so a
changed generator or callee never meets a stale file or a stale cache entry.

Compile these functions with ``numba.core.config.SLP_VECTORIZE = 1`` (``_threads.run``
does, around their first call only). They are serial over a range ``[it0, it1)`` of
work items, run on threads by ``_threads.run`` (the functions release the GIL). A
``prange`` here compiled slower and vectorised worse (parfor lowering reshapes the
loop nest before SLP sees it).

Two details the vectorizer needs (checked with ``inspect_asm()``: the hot loops are
``vmovups`` + ``vfmadd231ps mem{1to16}, %zmm``): array offsets are ``np.uint64``, so Numba
emits no negative-index wraparound selects (with them SLP gathered the loads), and the
vector lanes are consecutive elements of one array (lanes over strided elements became
``vgatherqps`` + shuffles, much slower).

The package
-----------
``__init__.py``  the name scheme (``FAMILIES``), the one table of the kernels the module
                 holds (``TABLE``), the lookup (``kernel``, ``kernel_name``), and the
                 module's assembly, writing and loading (``source``, ``load``)
``direct.py``    generators of direct convolution's kernels: row, flat, lanes, lanes
                 streamed, weight gradient, depthwise and its weight gradient, and the
                 stride-2 column phase split of the forward's input layout
``gemm.py``      generators of the GEMMs: gemm, gemm_acc (Winograd), patch_gemm
                 (im2col's weight gradient) and direct's pointwise forward built on it
``emit.py``      emit helpers both share (zeroed accumulators, the 16 x 16 transposed
                 store of a channels-last buffer)

The blockings come from ``fastconv.kernels.layouts``, which the planner uses too.

Names
-----
A generated function is named by its family, then its blocking, so that a reader can
decode it and another backend (Cython) gives the same kernel the same name::

    <family>_<blocking fields>

    {R}x{C}    a register block of R rows x C columns: output rows x pixels per row
               (direct_lanes, depthwise), or rows x columns of a GEMM (gemm, gemm_acc,
               patch_gemm; the columns are the vector lanes)
    {n}px      a run of n output pixels: of one row (direct_row), of the flattened
               padded grid (direct_flat), of the batch (direct_pointwise: its GEMM rows)
    k{n}       output channels per block
    c{n}       input channels per block (the vector lanes of direct_weight_grad)
    s{n}       the column stride the kernel is built for
    {n}pairs   column pairs per chunk (split_stride2)

The families and their blocking keywords (in name order)::

    direct_row              pixels, channels              direct.py's "row" core
    direct_flat             pixels, channels              its "flat" core
    direct_lanes            rows, cols, channels, stride  its "lanes" core
    direct_lanes_streamed   rows, cols, channels, stride  its "lanes_streamed" core
    direct_pointwise        pixels, channels              its "pointwise" variant
    direct_weight_grad      in_channels, channels         its weight gradient
    depthwise               rows, cols                    its "depthwise" variant
    depthwise_weight_grad   rows, cols
    depthwise_nhwc          pixels, channels              its "depthwise_nhwc" variant
    split_stride2           pairs                         its stride-2 input layout
    gemm                    rows, cols                    Winograd's unfused products
    gemm_acc                rows, cols                    Winograd's streamed filter
    patch_gemm              rows, cols                    im2col's weight gradient

The kernels generated (``TABLE``; the generated file's header lists them too), with
the names they had before this scheme::

    direct_row_8px_k16                    fwd_8
    direct_row_16px_k16                   fwd_16
    direct_flat_32px_k12                  flat_32_12
    direct_lanes_1x14_k32_s1              lanes_1x14_32_1
    direct_lanes_1x14_k32_s2              lanes_1x14_32_2
    direct_lanes_2x7_k32_s1               lanes_2x7_32_1
    direct_lanes_2x7_k32_s2               lanes_2x7_32_2
    direct_lanes_streamed_2x7_k32_s1      lanes_2x7_32_1_s
    direct_lanes_streamed_2x7_k32_s2      lanes_2x7_32_2_s
    direct_weight_grad_c16_k16            bww_16
    direct_weight_grad_c8_k16             bww_8
    split_stride2_8pairs                  phase2_8
    depthwise_4x16                        dw_16_4
    depthwise_weight_grad_4x16            dww_16_4
    depthwise_nhwc_8px_c16                (new)
    gemm_6x64                             gemm_64_6
    gemm_acc_6x64                         gemm_acc_64_6
    patch_gemm_6x64                       patch_gemm_64_6
    patch_gemm_6x32                       patch_gemm_32_6
    direct_pointwise_6px_k64              pointwise_64_6

Looking kernels up
------------------
Callers never build names: they name the family and the blocking, and the table gives
the function (a ``KeyError`` names the blockings that exist when the module has no such
kernel)::

    from fastconv.kernels.numba import codegen
    fn = codegen.kernel("direct_lanes", rows=1, cols=14, channels=32, stride=1)
    codegen.kernel_name("gemm", rows=6, cols=64)      # 'gemm_6x64', without Numba
    codegen.TABLE[("gemm", (6, 64))]                  # the same; values in keyword order

Reading the generated source: ``FASTCONV_DEBUG=source``
--------------------------------------------------------
With the environment variable ``FASTCONV_DEBUG`` set to ``source`` (or a comma-separated
list holding it), loading the kernels also writes their source to
``$FASTCONV_DEBUG_DIR/numba_kernels.py`` (default directory: ``./fastconv_generated``,
relative to the working directory) and prints a line to stderr saying where. That copy
is the module Numba compiles (which lives, under a hashed name, in the JIT cache's
``generated/`` directory), byte for byte, under a name that does not change with it.
"""
import hashlib
import importlib
import importlib.util
import os
import pathlib
import sys
from typing import Callable, NamedTuple

from ...._config import CACHE_DIR
from ...layouts import (BWW_LANES, DW_BLOCK, DW_NHWC_BLOCK, DY_BLOCK, FLAT_BLOCKS, FWD_BLOCKS, GEMM_BLOCK,
                        LANES_BLOCKS, LANES_STRIDES, PAIRS, PATCH_GEMM_BLOCKS)
from . import direct, gemm


class Family(NamedTuple):
    """A family of generated kernels: its blocking keywords (in name order), its name
    template, and its generator ``emit(name, **blocking) -> source``."""
    params: tuple
    template: str
    emit: Callable


def _direct_pointwise(name, pixels, channels):
    # calls the patch GEMM of the same block (pixels = its rows, channels = its columns)
    return gemm.pointwise(name, pixels, channels,
                          kernel_name("patch_gemm", rows=pixels, cols=channels))


#: family -> Family: the name scheme (see the module docstring)
FAMILIES = {
    "direct_row": Family(("pixels", "channels"), "direct_row_{pixels}px_k{channels}",
                         direct.row),
    "direct_flat": Family(("pixels", "channels"), "direct_flat_{pixels}px_k{channels}",
                          direct.flat),
    "direct_lanes": Family(("rows", "cols", "channels", "stride"),
                           "direct_lanes_{rows}x{cols}_k{channels}_s{stride}", direct.lanes),
    "direct_lanes_streamed": Family(("rows", "cols", "channels", "stride"),
                                    "direct_lanes_streamed_{rows}x{cols}_k{channels}_s{stride}",
                                    direct.lanes_streamed),
    "direct_pointwise": Family(("pixels", "channels"),
                               "direct_pointwise_{pixels}px_k{channels}", _direct_pointwise),
    "direct_weight_grad": Family(("in_channels", "channels"),
                                 "direct_weight_grad_c{in_channels}_k{channels}",
                                 direct.weight_grad),
    "depthwise": Family(("rows", "cols"), "depthwise_{rows}x{cols}", direct.depthwise),
    "depthwise_weight_grad": Family(("rows", "cols"), "depthwise_weight_grad_{rows}x{cols}",
                                    direct.depthwise_weight_grad),
    "depthwise_nhwc": Family(("pixels", "channels"), "depthwise_nhwc_{pixels}px_c{channels}",
                             direct.depthwise_nhwc),
    "split_stride2": Family(("pairs",), "split_stride2_{pairs}pairs", direct.split_stride2),
    "gemm": Family(("rows", "cols"), "gemm_{rows}x{cols}", gemm.gemm),
    "gemm_acc": Family(("rows", "cols"), "gemm_acc_{rows}x{cols}", gemm.gemm_acc),
    "patch_gemm": Family(("rows", "cols"), "patch_gemm_{rows}x{cols}", gemm.patch_gemm),
}

#: output channels per block of direct's row kernel (its blocked weight, ``direct.py``)
ROW_CHANNELS = 16


def _blockings():
    """(family, blocking) of every kernel of the generated module, in the module's order,
    from the blocking constants of ``fastconv.kernels.layouts``."""
    for J in FWD_BLOCKS:
        yield "direct_row", dict(pixels=J, channels=ROW_CHANNELS)
    for J, KB in FLAT_BLOCKS:
        yield "direct_flat", dict(pixels=J, channels=KB)
    for M, J, KB in LANES_BLOCKS:
        for sw in LANES_STRIDES:
            yield "direct_lanes", dict(rows=M, cols=J, channels=KB, stride=sw)
    for M, J, KB in LANES_BLOCKS:
        if M > 1:                       # the streamed kernel exists for row pairs only
            for sw in LANES_STRIDES:
                yield "direct_lanes_streamed", dict(rows=M, cols=J, channels=KB, stride=sw)
    for L in BWW_LANES:
        yield "direct_weight_grad", dict(in_channels=L, channels=DY_BLOCK)
    yield "split_stride2", dict(pairs=PAIRS)
    J, M = DW_BLOCK
    yield "depthwise", dict(rows=M, cols=J)
    yield "depthwise_weight_grad", dict(rows=M, cols=J)
    J, M = DW_NHWC_BLOCK
    yield "depthwise_nhwc", dict(pixels=M, channels=J)
    J, TB = GEMM_BLOCK
    yield "gemm", dict(rows=TB, cols=J)
    yield "gemm_acc", dict(rows=TB, cols=J)
    for J, TB in PATCH_GEMM_BLOCKS:
        yield "patch_gemm", dict(rows=TB, cols=J)
    J, TB = PATCH_GEMM_BLOCKS[0]
    yield "direct_pointwise", dict(pixels=TB, channels=J)


def _key(family, blocking):
    spec = FAMILIES.get(family)
    if spec is None:
        raise KeyError(f"no generated kernel family {family!r} (families: "
                       f"{', '.join(FAMILIES)})")
    if set(blocking) != set(spec.params):
        raise TypeError(f"{family} kernels take the blocking keywords "
                        f"{', '.join(spec.params)}; got {', '.join(blocking) or 'none'}")
    return family, tuple(blocking[p] for p in spec.params)


#: (family, blocking values in ``FAMILIES[family].params`` order) -> the generated
#: function's name, for every kernel of the generated module, in the module's order
TABLE = {}
for _family, _blocking in _blockings():
    TABLE[_key(_family, _blocking)] = FAMILIES[_family].template.format(**_blocking)
del _family, _blocking


def kernel_name(family, **blocking):
    """The name of the generated function of ``family`` for ``blocking`` (the family's
    keywords, all of them), e.g. ``kernel_name("gemm", rows=6, cols=64) == "gemm_6x64"``;
    ``KeyError`` when the module has no such kernel. Needs neither Numba nor the module."""
    key = _key(family, blocking)
    try:
        return TABLE[key]
    except KeyError:
        have = [dict(zip(FAMILIES[family].params, v)) for f, v in TABLE if f == family]
        raise KeyError(f"no generated {family} kernel for {blocking}; generated: "
                       f"{have}") from None


def kernel(family, **blocking):
    """The compiled generated kernel (a Numba dispatcher) of ``family`` for ``blocking``:
    ``kernel("direct_lanes", rows=1, cols=14, channels=32, stride=1)``. Loads the module
    on first use (see ``load``)."""
    return getattr(load(), kernel_name(family, **blocking))


_HEADER = '''\
# generated by fastconv.kernels.numba.codegen: do not edit
{index}
import numpy as np
from fastconv.kernels.numba._epilogue import put as ep_put, run as ep_run
from fastconv.kernels.numba._epilogue import run_channels as ep_channels
from fastconv.kernels.numba._jit import jit
from fastconv.kernels.numba._layout import channels_last_block, w_block
from fastconv.kernels.numba._ranges import valid_range
from fastconv.kernels.numba._transpose import transpose_block, transpose_block_n
'''


def _header():
    """The module's imports, after an index of its kernels (family and blocking -> name)."""
    lines = ["# kernels (family: blocking -> function; names: fastconv.kernels.numba.codegen):"]
    for (family, values), name in TABLE.items():
        blocking = ", ".join(f"{p}={v}" for p, v in zip(FAMILIES[family].params, values))
        lines.append(f"#   {family}: {blocking} -> {name}")
    return _HEADER.format(index="\n".join(lines))


def source():
    """The generated module's source: the header, then every kernel of ``TABLE``."""
    parts = [_header()]
    for (family, values), name in TABLE.items():
        spec = FAMILIES[family]
        parts.append(spec.emit(name, **dict(zip(spec.params, values))))
    return "\n\n".join(parts)


_module = None

#: the modules the generated kernels call into (``_HEADER``)
_CALLED_MODULES = ("fastconv.kernels.numba._epilogue", "fastconv.kernels.numba._jit",
                   "fastconv.kernels.numba._layout",
                   "fastconv.kernels.numba._ranges", "fastconv.kernels.numba._transpose")

#: the readable copy's file name (``FASTCONV_DEBUG=source``)
DEBUG_FILE = "numba_kernels.py"


def _write(path, text):
    """Write ``text`` to ``path`` atomically (concurrent processes write the same bytes)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _debug_copy(src, path):
    """With ``FASTCONV_DEBUG=source``: ``src`` (the module at ``path``) also to
    ``$FASTCONV_DEBUG_DIR/numba_kernels.py`` (default ``./fastconv_generated``)."""
    flags = os.environ.get("FASTCONV_DEBUG", "").replace(",", " ").split()
    if "source" not in flags:
        return
    folder = os.path.abspath(os.environ.get("FASTCONV_DEBUG_DIR") or "fastconv_generated")
    os.makedirs(folder, exist_ok=True)
    target = os.path.join(folder, DEBUG_FILE)
    _write(target, src)
    print(f"fastconv: FASTCONV_DEBUG=source: the generated Numba kernels are in {target} "
          f"(compiled from {path})", file=sys.stderr)


def load():
    """The generated module (written to the cache directory on first use)."""
    global _module
    if _module is not None:
        return _module
    src = source()
    # Numba's cache is keyed by the generated file, so its name must change with the
    # modules whose functions the kernels call too (Numba does not look into those)
    deps = [pathlib.Path(importlib.import_module(m).__file__).read_text()
            for m in _CALLED_MODULES]
    digest = hashlib.sha1("".join([src] + deps).encode()).hexdigest()[:12]
    name = f"fastconv_numba_kernels_{digest}"
    folder = os.path.join(CACHE_DIR, "generated")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name + ".py")
    if not os.path.exists(path):
        _write(path, src)
    _debug_copy(src, path)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    _module = module
    return module
