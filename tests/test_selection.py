"""Selection: the plans ``fastconv.plan`` returns and the calls run.

The rules (``fastconv._plan``) as a table of layers and the (algorithm, variant) they
get; ``auto`` over many drawn geometries (a registered kernel that handles the
geometry, the plan shown is the plan run, the result right); the thresholds
(``fastconv._tuning``); the ``Plan`` object; planning errors; and autotuning (its
candidate plans, a remembered winner with its variant, winners on disk).
"""
import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastconv
from fastconv import _config, _dispatch, _plan, _tuning
from fastconv._geometry import conv_params, kernel_blocks
from fastconv.kernels import layouts

from conftest import (DTYPES, auto_backend, arrays, assert_close, conv_args, conv_cases, kernel_pairs,
                      ran_plan, tolerance, tuned)

CONV_OPS = ("conv2d", "conv2d_input", "conv2d_weight")
SOURCE = Path(fastconv.__file__).resolve().parent


def _row(op, shape, K, R, want, **kw):
    return pytest.param(op, shape, K, R, kw, want,
                        id=f"{op}-{'x'.join(map(str, shape))}-K{K}-R{R}"
                           + "".join(f"-{k}{v if not isinstance(v, type) else v.__name__}"
                                     for k, v in kw.items()))


f64 = np.float64
#: direct's lanes blocks on the table the tests plan with (tests/conftest.py: 16 vector
#: registers): rows of J2 pixels take the two-row block (2 x 2 x 24; 2 x 7 x 32 with 32
#: registers, res5's 7 x 7), rows under NARROW + 1 pixels no block
J2 = layouts.LANES_BLOCKS[1][1]
NARROW = min(cols for _, cols, _ in layouts.LANES_BLOCKS) - 1
#: a threshold the rows marked with it run under: the BLAS rule off, i.e. the plans of
#: CPUs with 32 vector registers (AVX-512), where direct and Winograd keep the forwards
NO_BLAS = dict(BLAS_BELOW_REGISTERS=0, WINOGRAD_BELOW_REGISTERS=0)

#: (op, input shape, K, R (= S), expected (algorithm, variant), other arguments): what the
#: rules pick, float32 unless said, with what the benchmarks measured fastest (the rules'
#: docstring), on the 16-register table the tests plan with; ``threads``: the variant
#: depends on the thread count; UPPER_CASE: a threshold of ``fastconv._tuning`` set
TABLE = [
    # ResNet-50 1x1: im2col's GEMMs, one per image or one over the batch (planes < 100
    # pixels); direct's pointwise GEMM for res5's C >> K float32 forward
    _row("conv2d", (1, 64, 56, 56), 256, 1, ("im2col", "image_gemm")),
    _row("conv2d", (8, 64, 56, 56), 256, 1, ("im2col", "image_gemm")),
    _row("conv2d", (8, 2048, 7, 7), 512, 1, ("direct", "pointwise")),
    _row("conv2d", (4, 1024, 3, 3), 256, 1, ("direct", "pointwise")),
    # (Cython's forward, and its input gradient on 2+ threads, run image_gemm there:
    # its panels span small images)
    _row("conv2d", (2, 2048, 7, 7), 512, 1, ("im2col", "batch_gemm", "image_gemm")),  # N
    _row("conv2d", (8, 512, 7, 7), 2048, 1, ("im2col", "batch_gemm", "image_gemm")),  # C < 4K
    _row("conv2d", (8, 1024, 14, 14), 256, 1, ("im2col", "image_gemm")),     # 196 pixels
    _row("conv2d", (8, 128, 7, 7), 32, 1, ("im2col", "batch_gemm", "image_gemm")),    # K < 64
    _row("conv2d", (8, 2048, 7, 7), 512, 1, ("im2col", "batch_gemm", "image_gemm"), dtype=f64),
    _row("conv2d_input", (8, 2048, 7, 7), 512, 1, ("im2col", "batch_gemm"), threads=1),
    _row("conv2d_input", (8, 2048, 7, 7), 512, 1, ("im2col", "batch_gemm", "image_gemm"),
         threads=2),
    _row("conv2d_weight", (1, 64, 56, 56), 64, 1, ("im2col", "image_gemm")),
    _row("conv2d_weight", (8, 512, 7, 7), 2048, 1, ("im2col", "batch_gemm")),
    _row("conv2d", (8, 256, 56, 56), 512, 1, ("im2col", "image_gemm"), stride=2),  # downsample
    _row("conv2d_weight", (8, 64, 56, 56), 128, 1, ("im2col", "image_gemm"), stride=2),
    # ResNet 3x3: Winograd F(4x4) from 20x20 outputs per image, F(2x2) for the weight
    # gradient below; fused filters up to 1 MiB, split on 2+ threads, else unfused (the
    # forwards on images under 20x20 outputs: NO_BLAS, see the BLAS rows below)
    _row("conv2d", (1, 64, 56, 56), 64, 3, ("winograd_f4", "fused"), padding=1),
    _row("conv2d_weight", (8, 64, 56, 56), 64, 3, ("winograd_f4", "fused"), padding=1),
    _row("conv2d_weight", (8, 64, 56, 56), 64, 3, ("winograd_f4", "fused"), padding=1,
         dtype=f64),
    _row("conv2d_weight", (3, 128, 28, 28), 128, 3, ("winograd_f4", "fused"), padding=1),
    # one image of 28x28 or 14x14 (under WEIGHT_FUSED_MIN_TILES tiles): unfused
    _row("conv2d_weight", (1, 128, 28, 28), 128, 3, ("winograd_f4", "unfused"), padding=1),
    # a 2.4 MB F(4x4) filter runs fused (FUSED_MAX_FILTER_BYTES); above it, split on 2
    # threads where the slices stay in cache or are read for few blocks, else unfused
    _row("conv2d", (8, 128, 28, 28), 128, 3, ("winograd_f4", "fused"), padding=1, threads=2),
    _row("conv2d", (8, 128, 28, 28), 128, 3, ("winograd_f4", "fused"), padding=1, threads=1),
    _row("conv2d", (2, 128, 28, 28), 192, 3, ("winograd_f4", "unfused"), padding=1, threads=2),
    _row("conv2d", (2, 128, 28, 28), 192, 3, ("winograd_f4", "split"), padding=1, threads=2,
         SPLIT_MAX_STREAM_BYTES=6 * 2**20),
    _row("conv2d", (8, 192, 14, 14), 192, 3, ("winograd_f4", "unfused"), padding=1, threads=2),
    _row("conv2d", (8, 128, 28, 28), 128, 3, ("winograd_f4", "split"), padding=1, threads=2,
         FUSED_MAX_FILTER_BYTES=2**20),
    _row("conv2d", (8, 128, 28, 28), 128, 3, ("winograd_f4", "unfused"), padding=1, threads=1,
         FUSED_MAX_FILTER_BYTES=2**20),
    _row("conv2d", (8, 128, 28, 28), 128, 3, ("winograd_f4", "unfused_blas"), padding=1,
         dtype=f64),
    _row("conv2d_input", (8, 256, 14, 14), 256, 3, ("winograd_f4", "unfused"), padding=1),
    _row("conv2d_weight", (8, 512, 14, 14), 512, 3, ("winograd_f2", "unfused"), padding=1),
    # ... but not on fewer tiles than SPLIT_MIN_TILES (16 here): unfused
    _row("conv2d", (1, 256, 14, 14), 256, 3, ("winograd_f4", "unfused"), padding=1,
         threads=2, **NO_BLAS),
    _row("conv2d_input", (1, 256, 14, 14), 256, 3, ("winograd_f4", "unfused"), padding=1,
         threads=2),
    _row("conv2d", (1, 256, 14, 14), 256, 3, ("winograd_f4", "split"), padding=1, threads=2,
         SPLIT_MIN_TILES=16, SPLIT_MAX_STREAM_BYTES=6 * 2**20, **NO_BLAS),
    _row("conv2d", (1, 256, 14, 14), 256, 3, ("winograd_f4", "unfused"), padding=1, threads=1,
         **NO_BLAS),
    _row("conv2d_weight", (1, 256, 14, 14), 256, 3, ("winograd_f2", "unfused"), padding=1),
    _row("conv2d_weight", (3, 256, 14, 14), 256, 3, ("winograd_f2", "fused"), padding=1),
    _row("conv2d_weight", (1, 256, 14, 14), 256, 3, ("winograd_f2", "unfused"), padding=1,
         dtype=f64),
    # big filters on few tiles: the cached filter (unfused), by default; F(4x4)
    # transforms the filter on the fly where STREAM_MIN_FILTER_BYTES allows
    _row("conv2d", (1, 512, 14, 14), 512, 3, ("winograd_f4", "unfused"), padding=1, **NO_BLAS),
    _row("conv2d", (8, 512, 7, 7), 512, 3, ("winograd_f4", "unfused"), padding=1, **NO_BLAS),
    _row("conv2d_input", (8, 512, 7, 7), 512, 3, ("winograd_f4", "unfused"), padding=1),
    _row("conv2d", (1, 512, 14, 14), 512, 3, ("winograd_f4", "streamed"), padding=1,
         STREAM_MIN_FILTER_BYTES=2**24, **NO_BLAS),
    _row("conv2d", (8, 512, 7, 7), 512, 3, ("winograd_f4", "streamed"), padding=1,
         STREAM_MIN_FILTER_BYTES=2**24, **NO_BLAS),
    _row("conv2d_input", (8, 512, 7, 7), 512, 3, ("winograd_f4", "streamed"), padding=1,
         STREAM_MIN_FILTER_BYTES=2**24),
    _row("conv2d", (4, 512, 7, 7), 512, 3, ("winograd_f4", "streamed"), padding=1,
         STREAM_MIN_FILTER_BYTES=2**24, **NO_BLAS),
    _row("conv2d", (4, 512, 7, 7), 512, 3, ("winograd_f4", "unfused_blas"), padding=1,
         dtype=f64, **NO_BLAS),
    # res5 3x3 at N=1 (49 outputs, 16 tiles): F(2x2,3x3) unfused, float32 grad-input and
    # forward (either layout) from 256 channels in and out; else direct's lanes kernel
    # (its forward: the BLAS rows); rows of 7 hold the one-row block here (1 x 4), the
    # two-row one with 32 registers
    _row("conv2d", (1, 512, 7, 7), 512, 3, ("winograd_f2", "unfused"), padding=1, threads=2,
         layout="nhwc", **NO_BLAS),
    _row("conv2d", (1, 512, 7, 7), 512, 3, ("winograd_f2", "unfused"), padding=1, threads=1,
         **NO_BLAS),
    _row("conv2d", (1, 512, 7, 7), 512, 3, ("winograd_f2", "unfused"), padding=1, threads=2,
         **NO_BLAS),
    _row("conv2d", (1, 512, 7, 7), 256, 3, ("winograd_f2", "unfused"), padding=1, threads=1,
         layout="nhwc", **NO_BLAS),
    _row("conv2d_input", (1, 256, 7, 7), 512, 3, ("winograd_f2", "unfused"), padding=1,
         threads=2),
    _row("conv2d", (1, 128, 7, 7), 128, 3, ("direct", "lanes"), padding=1, **NO_BLAS),
    _row("conv2d", (1, 512, 7, 7), 128, 3, ("direct", "lanes"), padding=1, **NO_BLAS),
    _row("conv2d_input", (1, 512, 7, 7), 512, 3, ("direct", "lanes"), padding=1,
         F2_FEW_MIN_CHANNELS=1024),
    _row("conv2d_weight", (1, 512, 7, 7), 512, 3, ("im2col", "tiled"), padding=1),
    _row("conv2d_weight", (1, 128, 7, 7), 128, 3, ("direct", "blocked"), padding=1),
    _row("conv2d", (1, 512, 7, 7), 512, 3, ("direct", "row"), padding=1, dtype=f64, **NO_BLAS),
    # ... on rows of the two-row block (res5's 7 x 7 with 32 registers; 7 x 2 here), a
    # 9.4 MB weight taken as it is: the streamed kernel
    _row("conv2d_input", (1, 512, 7, J2), 512, 3, ("direct", "lanes_streamed"), padding=1,
         F2_FEW_MIN_CHANNELS=1024),
    _row("conv2d", (1, 512, 7, J2), 512, 3, ("direct", "lanes_streamed"), padding=1,
         F2_FEW_MIN_CHANNELS=1024, **NO_BLAS),
    # rows narrower than every lanes block (6 x 6 with 32 registers; 6 x 1 here): im2col
    _row("conv2d", (1, 64, 6, NARROW), 64, 3, ("im2col", "tiled"), padding=1, **NO_BLAS),
    # stems and stride 2: direct (lanes kernel) forwards, blocked weight gradients
    _row("conv2d", (1, 3, 224, 224), 64, 7, ("direct", "lanes"), stride=2, padding=3),
    _row("conv2d", (1, 3, 224, 224), 64, 7, ("direct", "row"), stride=2, padding=3, dtype=f64),
    _row("conv2d_weight", (8, 3, 224, 224), 64, 7, ("im2col", "patch_gemm"), stride=2,
         padding=3),
    _row("conv2d", (8, 128, 56, 56), 128, 3, ("direct", "lanes"), stride=2, padding=1,
         **NO_BLAS),
    _row("conv2d_weight", (8, 128, 56, 56), 128, 3, ("direct", "blocked"), stride=2,
         padding=1),
    _row("conv2d_weight", (1, 128, 56, 56), 128, 3, ("direct", "blocked"), stride=2,
         padding=1),
    _row("conv2d_weight", (1, 256, 28, 28), 256, 3, ("direct", "blocked"), stride=2,
         padding=1),
    _row("conv2d_weight", (8, 512, 14, 14), 512, 3, ("direct", "blocked"), stride=2,
         padding=1),
    _row("conv2d_input", (8, 128, 56, 56), 128, 3, ("im2col", "tiled"), stride=2, padding=1),
    # with 32 vector registers, stride-2 input gradients of PHASES_MIN_OUTPUTS or
    # PHASES_MIN_CHANNELS run direct's lanes core per residue class; fewer outputs (N =
    # 1) with fewer channels and RGB stems keep im2col
    _row("conv2d_input", (8, 128, 56, 56), 128, 3, ("direct", "phases"), stride=2, padding=1,
         **NO_BLAS),
    _row("conv2d_input", (1, 128, 56, 56), 128, 3, ("direct", "phases"), stride=2, padding=1,
         **NO_BLAS),
    _row("conv2d_input", (1, 512, 14, 14), 1024, 1, ("direct", "phases"), stride=2, **NO_BLAS),
    _row("conv2d_input", (1, 64, 56, 56), 128, 3, ("im2col", "tiled"), stride=2, padding=1,
         **NO_BLAS),
    _row("conv2d_input", (8, 3, 224, 224), 64, 7, ("im2col", "tiled"), stride=2, padding=3,
         **NO_BLAS),
    # the input gradient of a stride-2 layer by direct: one forward per residue class
    # (float32), or the forward on dy with zeros inserted (float64)
    _row("conv2d_input", (8, 128, 56, 56), 128, 3, ("direct", "phases"), stride=2, padding=1,
         algorithm="direct"),
    _row("conv2d_input", (1, 3, 224, 224), 64, 7, ("direct", "phases"), stride=2, padding=3,
         algorithm="direct"),
    _row("conv2d_input", (8, 128, 56, 56), 128, 3, ("direct", "phases"), stride=2, padding=1,
         algorithm="direct", dtype=f64),
    _row("conv2d", (1, 1, 28, 28), 8, 3, ("im2col", "tiled")),
    # forwards and input gradients of larger stride-1 kernels (5x5, 7x7): Winograd on
    # their 3x3 blocks where it saves BLOCKS_MIN_SAVING of the multiply-adds (not 4x4 or
    # 1x7) and the 3x3 rules give the blocks' convolution Winograd (not 3 input
    # channels: 12 stacked)
    _row("conv2d", (1, 32, 28, 28), 64, 5, ("winograd_f4", "fused"), padding=2),
    _row("conv2d", (1, 32, 28, 28), 64, 5, ("winograd_f4", "unfused"), padding=2,
         FUSED_MAX_FILTER_BYTES=2**20),
    _row("conv2d", (8, 64, 28, 28), 64, 7, ("winograd_f4", "unfused"), padding=3),
    _row("conv2d", (1, 32, 28, 28), 64, 4, ("direct", "lanes"), padding=2, **NO_BLAS),
    _row("conv2d", (8, 3, 56, 56), 64, 5, ("direct", "lanes"), padding=2),
    _row("conv2d_input", (8, 32, 28, 28), 64, 5, ("winograd_f4", "fused"), padding=2,
         threads=2),
    _row("conv2d_input", (8, 32, 28, 28), 64, 5, ("winograd_f4", "split"), padding=2,
         threads=2, FUSED_MAX_FILTER_BYTES=2**20),
    # the gradients of 4x4, 7x7, dilated and grouped layers (and 5x5's weight gradient on
    # too few tiles for two partial sums): direct where
    # C/groups fills a vector's lanes (the input gradient at stride 1 as the forward on
    # dy, so not on the BLAS CPUs); RGB inputs keep im2col
    _row("conv2d_input", (8, 32, 28, 28), 64, 4, ("direct", "lanes"), padding=2, **NO_BLAS),
    _row("conv2d_input", (8, 32, 28, 28), 64, 4, ("im2col", "tiled"), padding=2),
    _row("conv2d_input", (8, 3, 56, 56), 64, 5, ("im2col", "tiled"), padding=2, **NO_BLAS),
    _row("conv2d_weight", (8, 32, 28, 28), 64, 5, ("winograd_f4", "fused"), padding=2),
    _row("conv2d_weight", (8, 32, 28, 28), 64, 5, ("direct", "blocked"), padding=2, dtype=f64),
    _row("conv2d", (8, 32, 28, 28), 64, 5, ("winograd_f4", "fused"), padding=2, dtype=f64),
    _row("conv2d", (8, 32, 28, 28), 64, 5, ("winograd_f4", "unfused_blas"), padding=2,
         dtype=f64, FUSED_MAX_FILTER_BYTES=2**20),
    _row("conv2d_weight", (1, 32, 28, 28), 64, 5, ("direct", "blocked"), padding=2),  # 49 tiles
    _row("conv2d_weight", (8, 64, 28, 28), 64, 3, ("direct", "blocked"), padding=2,
         dilation=2),
    _row("conv2d_weight", (8, 3, 224, 224), 32, 3, ("im2col", "patch_gemm"), stride=2,
         padding=1),
    _row("conv2d_weight", (8, 3, 224, 224), 8, 3, ("im2col", "tiled"), stride=2, padding=1),
    # the 16-register rules (these): with fewer vector registers than
    # WINOGRAD_BELOW_REGISTERS, float32 3x3 stride-1 forwards on images under
    # F4_MIN_IMAGE outputs run Winograd, F4 from F4_MIN_IMAGE outputs over the batch,
    # else F2; with fewer than BLAS_BELOW_REGISTERS, the rest of the 3x3 forwards that
    # direct's lanes kernel or Winograd on small images would run (float64 and 3x3
    # stride 2) run im2col's BLAS GEMM (the NO_BLAS rows above: the plans 32 registers
    # keep); gradients, stems and images of F4_MIN_IMAGE outputs or more keep theirs
    _row("conv2d", (1, 256, 14, 14), 256, 3, ("winograd_f2", "unfused"), padding=1, threads=2),
    _row("conv2d", (8, 256, 14, 14), 256, 3, ("winograd_f4", "unfused"), padding=1),
    _row("conv2d", (8, 512, 7, 7), 512, 3, ("winograd_f2", "unfused"), padding=1),
    _row("conv2d", (1, 512, 7, 7), 512, 3, ("winograd_f2", "unfused"), padding=1),  # res5
    _row("conv2d", (1, 256, 14, 14), 256, 3, ("im2col", "tiled"), padding=1,
         WINOGRAD_BELOW_REGISTERS=0),
    _row("conv2d", (1, 512, 7, 7), 512, 3, ("im2col", "tiled"), padding=1, dtype=f64),
    _row("conv2d", (1, 512, 7, J2), 512, 3, ("im2col", "tiled"), padding=1,
         WINOGRAD_BELOW_REGISTERS=0),
    _row("conv2d", (1, 64, 6, 6), 64, 3, ("im2col", "tiled"), padding=1,        # 36 outputs
         WINOGRAD_BELOW_REGISTERS=0),
    _row("conv2d", (8, 128, 56, 56), 128, 3, ("im2col", "tiled"), stride=2, padding=1),
    # VGG-16
    _row("conv2d", (1, 3, 224, 224), 64, 3, ("direct", "lanes"), padding=1),     # conv1_1
    _row("conv2d", (1, 64, 224, 224), 64, 3, ("winograd_f4", "fused"), padding=1),
    _row("conv2d", (1, 256, 56, 56), 256, 3, ("winograd_f4", "unfused"), padding=1),
    _row("conv2d_input", (1, 512, 14, 14), 512, 3, ("winograd_f4", "unfused"), padding=1),
    # MobileNet: depthwise 3x3 (stride 1 and 2), pointwise 1x1, the stride-2 stem
    _row("conv2d", (8, 32, 112, 112), 32, 3, ("direct", "depthwise"), padding=1, groups=32),
    _row("conv2d_input", (8, 32, 112, 112), 32, 3, ("direct", "depthwise"), padding=1,
         groups=32),
    _row("conv2d_weight", (8, 256, 28, 28), 256, 3, ("direct", "depthwise"), padding=1,
         groups=256),
    _row("conv2d", (8, 64, 112, 112), 64, 3, ("direct", "depthwise"), stride=2, padding=1,
         groups=64),
    _row("conv2d_input", (8, 64, 112, 112), 64, 3, ("direct", "depthwise_scatter"), stride=2,
         padding=1, groups=64),
    _row("conv2d", (8, 32, 112, 112), 32, 3, ("direct", "depthwise"), padding=1, groups=32,
         dtype=f64),
    _row("conv2d", (8, 32, 112, 112), 64, 1, ("im2col", "image_gemm")),
    _row("conv2d", (8, 3, 224, 224), 32, 3, ("direct", "lanes"), stride=2, padding=1),
    # explicit algorithms get their own variants
    _row("conv2d", (8, 128, 28, 28), 128, 3, ("im2col", "tiled"), padding=1, algorithm="im2col"),
    _row("conv2d", (8, 128, 28, 28), 128, 3, ("direct", "lanes"), padding=1, algorithm="direct"),
    _row("conv2d", (1, 64, 56, 56), 64, 3, ("winograd_f2", "fused"), padding=1,
         algorithm="winograd_f2"),
    _row("conv2d_weight", (8, 64, 56, 56), 64, 3, ("winograd_f2", "fused"), padding=1,
         algorithm="winograd_f2"),
    _row("conv2d", (1, 64, 56, 56), 256, 1, ("reference", ""), algorithm="reference"),
]


@pytest.mark.parametrize("op,shape,K,R,kw,want", TABLE)
def test_plan_table(op, shape, K, R, kw, want):
    """The rules' plans, on the Numba backend (every variant the selector makes); auto
    runs the same algorithm on the backend of the documented rule, in a variant that
    backend runs."""
    kw = dict(kw)
    threads = kw.pop("threads", None)
    if threads is not None:
        if threads > _config.MAX_THREADS:
            pytest.skip(f"needs {threads} threads")
        fastconv.set_num_threads(threads)
    thresholds = {k: kw.pop(k) for k in list(kw) if k.isupper()}
    with tuned(**thresholds):
        _plan_row(op, shape, K, R, kw, want)


def _plan_row(op, shape, K, R, kw, want):
    """``want``: (algorithm, Numba's variant[, auto's variant where it differs])."""
    want, auto_variant = want[:2], want[-1]
    groups = kw.get("groups", 1)
    shapes = (op, shape, (K, shape[1] // groups, R, R))
    backend = "numpy" if want[0] == "reference" else "numba"
    plan = fastconv.plan(*shapes, **kw, backend=backend)
    assert (plan.algorithm, plan.variant) == want, plan
    assert plan.backend == backend
    assert plan.op == op and plan.dtype == np.dtype(kw.get("dtype", np.float32)).name
    assert plan.threads == fastconv.get_num_threads()
    if kw.get("algorithm", "auto") == "auto":
        assert _plan._algorithm(op, plan.geometry, np.dtype(plan.dtype),
                                plan.layout) == want[0]
    auto = fastconv.plan(*shapes, **kw)
    assert (auto.algorithm, auto.backend) == (want[0], auto_backend(op, *want))
    have = _dispatch.variants(op, want[0], auto.backend)
    assert (auto.variant == auto_variant if have is None or auto_variant in have
            else auto.variant in have)


def test_plan_blocking_of_table_layers():
    """Blocking values the kernels read, for a few layers of the table."""
    res3 = fastconv.plan("conv2d_input", (8, 128, 56, 56), (128, 128, 3, 3), stride=2,
                         padding=1, algorithm="direct")
    assert res3["cores"] == ("lanes",) * 4                # 2 x 2 residue classes, 28 x 28
    assert [r[3] for r in res3["rows"]] == [28, 28]
    stem = fastconv.plan("conv2d_input", (1, 3, 224, 224), (64, 3, 7, 7), stride=2, padding=3,
                         algorithm="direct")
    assert stem["cores"] == ("flat",) * 4                 # 3 channels: flat (lanes_phase)
    # direct's lanes blocks (layouts.LANES_BLOCKS): two rows on rows of J2 (res5's 7 x 7
    # with 32 vector registers; 128 input channels, which F(2x2,3x3) leaves to direct),
    # one row on the stem's 112
    one_row, two_rows = layouts.LANES_BLOCKS
    assert fastconv.plan("conv2d_input", (1, 128, 7, J2), (512, 128, 3, 3),
                         padding=1)["block"] == two_rows
    with tuned(**NO_BLAS):
        assert fastconv.plan("conv2d", (1, 128, 7, J2), (512, 128, 3, 3),
                             padding=1)["block"] == two_rows
    assert fastconv.plan("conv2d", (1, 3, 224, 224), (64, 3, 7, 7), stride=2,
                         padding=3)["block"] == one_row
    wf = fastconv.plan("conv2d_weight", (8, 64, 56, 56), (64, 64, 3, 3), padding=1)
    assert wf["tiles"] == (14, 14) and wf["parts"] == 2                # 1568 tiles
    with tuned(**NO_BLAS, STREAM_MIN_FILTER_BYTES=2**24):     # streamed, on small images
        assert fastconv.plan("conv2d", (1, 512, 14, 14), (512, 512, 3, 3), padding=1,
                             backend="numba")["serial"] is True        # 16 tiles
        assert fastconv.plan("conv2d", (8, 512, 7, 7), (512, 512, 3, 3), padding=1,
                             backend="numba")["serial"] is False       # 32 tiles
    assert fastconv.plan("conv2d", (1, 64, 6, 6), (64, 64, 3, 3), padding=1,
                         dtype=np.float64)["tile"] == (1, 6)


def test_channels_last_bands_of_rows():
    """Cython's channels-last kernel (``nhwc_tiled``) takes bands of output rows of
    about NHWC_BAND_PIXELS pixels (ResNet's 7 x 7: 4 rows), one row where a row holds
    them (a stem's 112 pixels), fewer where the work items (images x bands x panels of
    output channels) would be under two per thread."""
    def band(shape, K, threads=1):
        with tuned(NHWC_BAND_PIXELS=28):
            if threads == 1:
                plan = fastconv.plan("conv2d", shape, (K, shape[1], 3, 3), stride=2,
                                     padding=1, layout="nhwc")
                assert plan.variant == "nhwc_tiled"
                return plan["band"]
            return _plan._nhwc_band(conv_params("t", shape, (K, shape[1], 3, 3), 2, 1, 1, 1),
                                    threads)
    assert band((8, 256, 14, 14), 512) == 4                   # 28 pixels of 7 x 7
    assert band((8, 128, 28, 28), 256) == 2
    assert band((1, 3, 224, 224), 64) == 1
    cols = layouts.GEMM_BLOCK[0]
    assert band((1, 64, 14, 14), cols, threads=2) == 2        # 4 bands for 2 threads
    assert band((2, 64, 14, 14), cols, threads=2) == 4


def test_pointwise_selection_is_float32_only():
    """direct's pointwise forward is float32; float64 keeps im2col. fastconv.plan's dtype
    defaults to float32."""
    args = ("conv2d", (8, 2048, 7, 7), (512, 2048, 1, 1))
    assert fastconv.plan(*args).variant == "pointwise"
    assert fastconv.plan(*args, dtype=np.float32).algorithm == "direct"
    assert fastconv.plan(*args, dtype=np.float64).algorithm == "im2col"
    p = conv_params("t", (8, 2048, 7, 7), (512, 2048, 1, 1))
    assert _plan._algorithm("conv2d", p, np.dtype(np.float64)) == "im2col"


def test_pool_plans():
    for op in ("max_pool2d", "avg_pool2d"):
        plan = fastconv.plan(op, (2, 3, 8, 8), kernel_size=2)
        assert (plan.op, plan.algorithm, plan.backend, plan.variant) == \
            (op, "direct", auto_backend(op, "direct"), "")
        assert fastconv.plan(op, (2, 3, 8, 8), kernel_size=2,
                             algorithm="reference").backend == "numpy"
    x = arrays(0, np.float32, (2, 3, 8, 8))[0]
    _, plan = ran_plan(lambda: fastconv.max_pool2d(x, 2), op="max_pool2d", algorithm="direct")
    assert plan == fastconv.plan("max_pool2d", x.shape, kernel_size=2)


# -- auto over drawn geometries -------------------------------------------------------------

#: thresholds under which auto picks other algorithms and variants on small layers
TUNINGS = {
    "defaults": {},
    "winograd": dict(WINOGRAD_MIN_CHANNELS=1, F2_MIN_OUTPUTS=1, BLAS_BELOW_REGISTERS=0),
    "winograd unfused": dict(WINOGRAD_MIN_CHANNELS=1, F4_MIN_IMAGE=1, FUSED_MAX_FILTER_BYTES=0,
                             SPLIT_MAX_SLICE_BYTES=0, SPLIT_MAX_STREAM_BYTES=0,
                             WEIGHT_FUSED_MAX_FILTER_BYTES=0),
    "winograd streamed": dict(WINOGRAD_MIN_CHANNELS=1, F2_MIN_OUTPUTS=1, F4_MIN_IMAGE=1,
                              STREAM_MIN_FILTER_BYTES=0, STREAM_MAX_TILES=10**6),
    "pointwise": dict(POINTWISE_MIN_IMAGES=1, POINTWISE_MAX_IMAGE=10**9, POINTWISE_MIN_OUTPUTS=1,
                      POINTWISE_MIN_REDUCTION=0),
    "direct": dict(DIRECT_MAX_PATCH=10**9, DIRECT_MIN_OUTPUTS=1, WINOGRAD_MIN_CHANNELS=10**9,
                   BLAS_BELOW_REGISTERS=0,
                   LANES_MIN_PATCH=0, LANES_STREAM_MIN_WEIGHT=0, DIRECT_SLICE_BYTES=1),
    "im2col": dict(DIRECT_MIN_OUTPUTS=10**9, WINOGRAD_MIN_CHANNELS=10**9,
                   WEIGHT_FUSED_MIN_RATIO=0, WEIGHT_FUSED_MIN_CHANNELS=0,
                   POINTWISE_ONE_GEMM_BELOW=10**9),
}


@st.composite
def layers(draw):
    """A geometry: any valid one (``conv_cases``), or a layer of a kind the rules treat
    apart, with channels around auto's thresholds (16 and up): 3x3 stride 1, 1x1,
    depthwise, 3x3 stride 2."""
    kind = draw(st.sampled_from(["any", "3x3", "1x1", "depthwise", "stride2"]))
    if kind == "any":
        return draw(conv_cases(max_channels=draw(st.sampled_from([20, 40]))))
    N, H, W = draw(st.integers(1, 4)), draw(st.integers(3, 20)), draw(st.integers(3, 20))
    C, K = draw(st.sampled_from([16, 17, 24, 40, 64])), draw(st.sampled_from([8, 16, 33, 64]))
    R, stride, padding, groups = 3, 1, draw(st.integers(0, 1)), 1
    if kind == "1x1":
        R, padding, groups = 1, 0, draw(st.sampled_from([1, 1, 2]))
        C, K = C * groups, K * groups
    elif kind == "depthwise":
        groups, K, stride = C, C * draw(st.sampled_from([1, 2])), draw(st.integers(1, 2))
    elif kind == "stride2":
        stride = 2
    case = dict(N=N, C=C, H=H, W=W, K=K, R=R, S=R, stride=(stride, stride),
                padding=(padding, padding), dilation=(1, 1), groups=groups)
    case["params"] = conv_params("t", (N, C, H, W), (K, C // groups, R, R), stride, padding,
                                 1, groups)
    return case


def _call(op, case, x, w, dy, **kw):
    args = conv_args(case)
    if op == "conv2d":
        return fastconv.conv2d(x, w, **args, **kw)
    if op == "conv2d_input":
        return fastconv.conv2d_input(x.shape, w, dy, **args, **kw)
    return fastconv.conv2d_weight(x, w.shape, dy, **args, **kw)


@settings(max_examples=150)
@given(case=layers(), dtype=st.sampled_from(DTYPES), tuning=st.sampled_from(sorted(TUNINGS)))
def test_auto_runs_the_plan_it_shows(case, dtype, tuning):
    """On drawn geometries, under the default and lowered thresholds: ``auto``'s plan
    names a registered (algorithm, backend) that handles the geometry (the rules'
    algorithm), ``fastconv.plan`` is exactly the plan the call runs, and the result
    matches the reference."""
    p = case["params"]
    x, w, dy = arrays(p.N + p.C, dtype, p.input_shape, p.weight_shape, p.output_shape)
    with tuned(**TUNINGS[tuning]):
        for op in CONV_OPS:
            shown = fastconv.plan(op, p.input_shape, p.weight_shape, **conv_args(case),
                                  dtype=dtype)
            assert (shown.algorithm, shown.backend) in kernel_pairs(op), shown
            assert _plan.supports(shown.algorithm, p), shown
            assert shown.algorithm == _plan._algorithm(op, p, np.dtype(dtype))
            with fastconv.trace_plans() as ran:
                got = _call(op, case, x, w, dy)
            assert ran == [shown], f"{op}: showed {shown!r}, ran {ran!r}"
            want = _call(op, case, x, w, dy, algorithm="reference")
            assert_close(got, want, tolerance(dtype, shown.algorithm), f"{op} {shown!r} {p}")


# -- The thresholds --------------------------------------------------------------------------


def test_unfused_winograd_below_registers(monkeypatch):
    """UNFUSED_BELOW_REGISTERS (off in the rest of the suite, tests/conftest.py): on the
    16-register table, float32 Winograd forwards and input gradients run unfused, on 1
    and 2 threads, where a batch of their transformed tiles fits the L3; fused or split
    where it does not (VGG-16's 64 channels on 224x224), where the unfused path would
    multiply by BLAS (K = 32: its own GEMM's columns would pad K by half) and in float64;
    with 32 vector registers, or the rule off, the thresholds' fused and split plans."""
    from fastconv import _machine
    monkeypatch.setattr(_machine, "caches", lambda: {"l1d": 32 * 2**10, "l2": 2**19,
                                                     "l3": 32 * 2**20})
    if _config.MAX_THREADS < 2:
        pytest.skip("needs 2 threads")

    def variant(op, shape, K, threads, dtype=np.float32, algorithm="auto"):
        fastconv.set_num_threads(threads)
        pl = fastconv.plan(op, shape, (K, shape[1], 3, 3), padding=1, dtype=dtype,
                           algorithm=algorithm, backend="numba")
        assert pl.algorithm.startswith("winograd"), pl
        return pl.variant

    cases = [  # op, input, K, threads: the plan with the rule on, and off
        ("conv2d", (1, 64, 56, 56), 64, 1, "unfused", "fused"),
        ("conv2d", (8, 128, 28, 28), 128, 2, "unfused", "fused"),
        ("conv2d_input", (2, 128, 28, 28), 128, 2, "unfused", "fused"),
        ("conv2d", (1, 64, 224, 224), 64, 1, "fused", "fused"),     # 58 MB of tiles
        ("conv2d", (8, 32, 56, 56), 32, 1, "fused", "fused"),       # K = 32: BLAS's
    ]
    for op, shape, K, threads, on, off in cases:
        with tuned(UNFUSED_BELOW_REGISTERS=32):
            assert variant(op, shape, K, threads) == on, (op, shape)
            assert variant(op, shape, K, threads, np.float64, "winograd_f4") != "unfused"
            with monkeypatch.context() as avx512:
                avx512.setattr(_plan, "vector_registers", lambda: 32)
                _tuning.set("UNFUSED_BELOW_REGISTERS", 32)   # a new generation of plans
                assert variant(op, shape, K, threads) == off, (op, shape)
        assert variant(op, shape, K, threads) == off, (op, shape)


def test_set_get_reset():
    default = _tuning.DEFAULTS["F4_MIN_IMAGE"][0]
    assert _tuning.get("F4_MIN_IMAGE") == default
    generation = _tuning.generation
    _tuning.set("F4_MIN_IMAGE", 7)
    assert _tuning.get("F4_MIN_IMAGE") == 7 == _tuning.F4_MIN_IMAGE
    assert _tuning.generation > generation
    _tuning.reset()
    assert all(_tuning.get(n) == d[0] for n, d in _tuning.DEFAULTS.items())


def test_an_unknown_threshold_is_refused():
    for call in (lambda: _tuning.set("F5_MIN_IMAGE", 1), lambda: _tuning.get("F5_MIN_IMAGE")):
        with pytest.raises(ValueError, match="F5_MIN_IMAGE"):
            call()
    with pytest.raises(ValueError, match="F4_MIN_IMAGE"):          # names the known ones
        _tuning.set("F5_MIN_IMAGE", 1)


def test_tuned_puts_every_threshold_back_after_an_error():
    with pytest.raises(RuntimeError):
        with tuned(F4_MIN_IMAGE=1, WEIGHT_SLICES=3):
            assert _tuning.F4_MIN_IMAGE == 1 and _tuning.WEIGHT_SLICES == 3
            with tuned(F4_MIN_IMAGE=2):
                assert _tuning.F4_MIN_IMAGE == 2
            assert _tuning.F4_MIN_IMAGE == 1              # the outer block's value
            raise RuntimeError
    assert _tuning.F4_MIN_IMAGE == _tuning.DEFAULTS["F4_MIN_IMAGE"][0]
    assert _tuning.WEIGHT_SLICES == _tuning.DEFAULTS["WEIGHT_SLICES"][0]
    with pytest.raises(ValueError):
        with tuned(F4_MIN_IMAGE=5, NOT_A_THRESHOLD=1):
            pass
    assert _tuning.F4_MIN_IMAGE == _tuning.DEFAULTS["F4_MIN_IMAGE"][0]


def test_a_changed_threshold_changes_the_plan_at_once():
    """Plans are memoised per tuning generation: a threshold set takes effect on the
    next plan and call, and reset puts the old plan back."""
    args = ("conv2d_weight", (2, 16, 28, 28), (16, 16, 3, 3))
    assert fastconv.plan(*args, padding=1).algorithm == "winograd_f4"      # 784 >= 400
    x, w = arrays(0, np.float32, args[1], args[2])
    dy = arrays(1, np.float32, args[1][:1] + (16, 28, 28))[0]
    with tuned(F4_MIN_IMAGE=10**6):
        assert fastconv.plan(*args, padding=1).algorithm == "winograd_f2"
        ran_plan(lambda: fastconv.conv2d_weight(x, w.shape, dy, padding=1),
                 algorithm="winograd_f2")
    assert fastconv.plan(*args, padding=1).algorithm == "winograd_f4"
    ran_plan(lambda: fastconv.conv2d_weight(x, w.shape, dy, padding=1), algorithm="winograd_f4")
    # blocking thresholds reach the plan's blocking
    im2col = ("conv2d_weight", (2, 3, 64, 64), (64, 3, 3, 3))
    assert fastconv.plan(*im2col, algorithm="im2col")["slices"] == 16
    with tuned(WEIGHT_SLICES=5, WEIGHT_BAND_COLUMNS=64):
        plan = fastconv.plan(*im2col, algorithm="im2col")
        assert plan["slices"] == 5 and plan["band_rows"] == 1
    with tuned(DIRECT_SLICE_BYTES=123):
        assert fastconv.plan("conv2d", (1, 8, 9, 9), (16, 8, 3, 3),
                             algorithm="direct")["slice_bytes"] == 123


def test_conv2d_plans_memo_follows_the_settings():
    """conv2d keeps each geometry's plan (``functional._CONV2D_PLANS``), keyed by what
    the plan depends on beyond the call: a new thread count, threshold or default
    backend gives the plan ``fastconv.plan`` gives, at the next call."""
    from fastconv import functional
    x, w = arrays(0, np.float32, (2, 16, 28, 28), (16, 16, 3, 3))
    call = lambda: fastconv.conv2d(x, w, padding=1, algorithm="direct")   # noqa: E731
    threads, backend = fastconv.get_num_threads(), fastconv.get_backend()
    try:
        for n in (1, 2):
            fastconv.set_num_threads(n)
            ran_plan(call, threads=n)
            assert any(k[0].N == 2 and k[-1][0] == n for k in functional._CONV2D_PLANS)
        slices = fastconv.plan("conv2d", x.shape, w.shape, padding=1,
                               algorithm="direct")["slice_bytes"]
        with tuned(DIRECT_SLICE_BYTES=123):
            ran_plan(call, slice_bytes=123)
        ran_plan(call, slice_bytes=slices)
        for name in ("numba", "cython"):
            if name in _dispatch.available_backends():
                fastconv.set_backend(name)
                ran_plan(call, backend=name)
    finally:
        fastconv.set_num_threads(threads)
        fastconv.set_backend(backend)


def test_every_threshold_is_documented():
    assert _tuning.DEFAULTS
    for name, entry in _tuning.DEFAULTS.items():
        assert name.isupper(), name
        assert isinstance(entry, tuple) and len(entry) == 3, name
        value, unit, why = entry
        assert isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0, name
        assert isinstance(unit, str) and unit.strip(), f"{name}: no unit"
        assert isinstance(why, str) and len(why.strip()) > 10, f"{name}: no reason"
    lines = _tuning.describe().splitlines()
    assert [line.split(" = ")[0] for line in lines] == list(_tuning.DEFAULTS)


def test_every_threshold_is_read_somewhere():
    """Each name in DEFAULTS is read (``_tuning.NAME``, ``t.NAME``) by the selector or a
    kernel: a threshold nothing reads would be tuned in vain."""
    source = "\n".join(path.read_text() for path in SOURCE.rglob("*.py")
                       if path.name != "_tuning.py")
    unread = [n for n in _tuning.DEFAULTS if not re.search(rf"\.{n}\b", source)]
    assert not unread, f"thresholds nothing reads: {unread}"


# -- The Plan object ------------------------------------------------------------------------


def test_plan_is_frozen_hashable_and_readable():
    plan = fastconv.plan("conv2d", (1, 64, 56, 56), (64, 64, 3, 3), padding=1)
    assert (plan.algorithm, plan.variant) == ("winograd_f4", "fused")
    for name in ("variant", "algorithm", "blocking"):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(plan, name, "other")
    text = repr(plan)
    for part in ("conv2d", "winograd_f4", plan.backend, "'fused'", "tiles=(14, 14)", "float32"):
        assert part in text, f"{part!r} not in {text}"
    assert "\n" not in text
    assert plan == fastconv.plan("conv2d", (1, 64, 56, 56), (64, 64, 3, 3), padding=1)
    assert hash(plan) == hash(fastconv.plan("conv2d", (1, 64, 56, 56), (64, 64, 3, 3),
                                            padding=1))
    assert plan != fastconv.plan("conv2d", (1, 64, 56, 56), (64, 64, 3, 3), padding=1,
                                 dtype=np.float64)


def test_plan_blocking_lookup():
    plan = fastconv.plan("conv2d", (1, 64, 56, 56), (64, 64, 3, 3), padding=1)
    assert plan["tiles"] == (14, 14)
    assert plan.get("tiles") == (14, 14) and plan.get("missing", 5) == 5
    with pytest.raises(KeyError) as info:
        plan["missing"]
    message = str(info.value)
    assert "'missing'" in message
    for name, _ in plan.blocking:
        assert name in message, f"{name} not named in {message}"
    pool = fastconv.plan("max_pool2d", (1, 2, 8, 8), kernel_size=2)
    with pytest.raises(KeyError, match="none"):
        pool["tiles"]
    assert "variant" not in repr(pool) and "max_pool2d" in repr(pool)


# -- Planning errors --------------------------------------------------------------------------


def test_an_unavailable_backend_is_named_with_those_available():
    shapes = ((1, 4, 8, 8), (4, 4, 3, 3))
    with pytest.raises(ValueError) as info:
        fastconv.plan("conv2d", *shapes, backend="opencl")
    message = str(info.value)
    assert "'opencl'" in message
    for backend in _dispatch.available_backends():
        assert backend in message, f"{backend} not in {message}"
    x, w = arrays(0, np.float32, *shapes)
    with pytest.raises(ValueError, match="opencl"):
        fastconv.conv2d(x, w, backend="opencl")


def test_a_backend_without_the_algorithm_names_what_is_registered():
    """A backend that is there but has no kernel for the algorithm (NumPy's has only
    the reference): a clear error."""
    shapes = ((1, 4, 8, 8), (4, 4, 3, 3))
    with pytest.raises(ValueError, match=r"no kernel for algorithm='direct', "
                                         r"backend='numpy'; registered: .*'reference'"):
        fastconv.plan("conv2d", *shapes, algorithm="direct", backend="numpy")


def test_an_unknown_algorithm_is_named_with_those_registered():
    with pytest.raises(ValueError) as info:
        fastconv.plan("conv2d", (1, 4, 8, 8), (4, 4, 3, 3), algorithm="fft")
    message = str(info.value)
    assert "'fft'" in message
    for algorithm, backend in fastconv.algorithms("conv2d"):
        assert f"algorithm={algorithm!r}, backend={backend!r}" in message


@pytest.mark.parametrize("algorithm", sorted(_plan.SUPPORTS))
def test_a_limited_algorithm_refuses_a_geometry_it_cannot_run(algorithm):
    for op in CONV_OPS:
        with pytest.raises(ValueError, match=algorithm) as info:
            fastconv.plan(op, (1, 4, 9, 9), (4, 4, 3, 3), stride=2, algorithm=algorithm)
        assert "stride 1" in str(info.value)
    assert fastconv.plan("conv2d", (1, 4, 9, 9), (4, 4, 3, 3), algorithm=algorithm)


def test_plan_argument_errors():
    with pytest.raises(ValueError, match="weight_shape"):
        fastconv.plan("conv2d", (1, 4, 8, 8))
    with pytest.raises(ValueError, match="kernel_size"):
        fastconv.plan("max_pool2d", (1, 4, 8, 8))
    with pytest.raises(ValueError, match="conv3d"):
        fastconv.plan("conv3d", (1, 4, 8, 8), (4, 4, 3, 3))
    with pytest.raises(TypeError, match="int32"):
        fastconv.plan("conv2d", (1, 4, 8, 8), (4, 4, 3, 3), dtype=np.int32)


# -- Autotuning ------------------------------------------------------------------------------

# auto: Winograd (the forward: im2col, by the BLAS rule on the tests' 16-register table)
SMALL = conv_params("t", (2, 16, 9, 9), (16, 16, 3, 3), 1, 1)
# auto: direct (a stem: 72 inputs per output), flat (rows one pixel short of the one-row
# lanes block, too short a patch for the two-row one): 9 x 3 (16 registers), 9 x 13 (32)
ONE = conv_params("t", (1, 8, 9, layouts.LANES_BLOCKS[0][1] - 1), (16, 8, 3, 3), 1, 1)


def _operands(op, p, dtype):
    x, w, dy = arrays(3, dtype, p.input_shape, p.weight_shape, p.output_shape)
    return {"conv2d": (x, w, p.output_shape), "conv2d_input": (dy, w, p.input_shape),
            "conv2d_weight": (x, dy, p.weight_shape)}[op]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", CONV_OPS)
def test_autotune_candidates_each_run_correctly(op, dtype):
    """Every plan autotune may pick: a registered pair that handles the geometry, the
    rules' plan of each pair among them, no two alike, and each one run gives the
    reference's result (direct's forced cores and Winograd's forced variants too)."""
    cands = _plan.candidates(op, SMALL, dtype)
    assert len(set(cands)) == len(cands)
    pairs = [(a, b) for a, b in kernel_pairs(op) if _plan.supports(a, SMALL)]
    assert {(c.algorithm, c.backend) for c in cands} == set(pairs)
    for a, b in pairs:
        assert _plan.make(op, SMALL, dtype, a, b) in cands
    variants = {(c.algorithm, c.variant) for c in cands}
    if dtype == np.float32 and op == "conv2d":
        assert {("direct", v) for v in ("lanes", "flat", "row")} <= variants
    if op != "conv2d_weight" and fastconv.get_num_threads() > 1:
        assert ("winograd_f4", "split") in variants
    if op != "conv2d_weight" and dtype == np.float32:
        assert ("winograd_f4", "streamed") in variants      # few tiles: autotune's only
    a, b, shape = _operands(op, SMALL, dtype)
    want = np.empty(shape, dtype)
    _plan.run(_plan.make(op, SMALL, dtype, "reference"), a, b, SMALL, want)
    for plan in cands:
        got = np.empty(shape, dtype)
        _plan.run(plan, a, b, SMALL, got)
        assert_close(got, want, tolerance(dtype, plan.algorithm), repr(plan))


#: kernels other than 3x3 (Winograd on their 3x3 blocks): 5x5 on a batch the blocks'
#: groups split, and 7x5
BLOCKED = [conv_params("t", (3, 8, 11, 10), (16, 8, 5, 5), 1, 2),
           conv_params("t", (1, 16, 12, 9), (8, 16, 7, 5), 1, (3, 2))]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", CONV_OPS)
def test_autotune_candidates_on_kernel_blocks_run_correctly(op, dtype):
    """Winograd's forced variants on 3x3 blocks of larger kernels keep the blocks'
    blocking (``kernel_blocks``, ``block_images``: without them autotune's first call
    of a 5x5 layer raised KeyError), and each gives the reference's result."""
    for threads in sorted({1, min(2, fastconv._config.MAX_THREADS)}):
        fastconv.set_num_threads(threads)
        for p in BLOCKED:
            cands = _plan.candidates(op, p, dtype)
            wino = [c for c in cands if c.algorithm.startswith("winograd")]
            if op != "conv2d_weight":                   # forced variants too
                assert len({c.variant for c in wino}) >= 2, cands
            a, b, shape = _operands(op, p, dtype)
            want = np.empty(shape, dtype)
            _plan.run(_plan.make(op, p, dtype, "reference"), a, b, p, want)
            for plan in wino:
                assert plan["kernel_blocks"] == kernel_blocks(p), plan
                got = np.empty(shape, dtype)
                _plan.run(plan, a, b, p, got)
                assert_close(got, want, tolerance(dtype, plan.algorithm), repr(plan))


@pytest.mark.parametrize("winner,want", [
    (["direct", "numba", "row"], ("direct", "row")),             # a forced core
    (["direct", "numba", "flat"], ("direct", "flat")),
    (["winograd_f2", "numba", "unfused_blas"], ("winograd_f2", "unfused_blas")),
    (["im2col", "numba", "tiled"], ("im2col", "tiled")),
    (["im2col", "numba"], ("im2col", "tiled")),                  # no variant: the rules'
    # winners that no longer apply give the rules' plan
    (["fft", "numba", ""], ("direct", "flat")),
    (["winograd_f4", "numba", "streamed"], ("winograd_f4", "streamed")),
    (["winograd_f2", "numba", "streamed"], ("direct", "flat")),  # not forcible: F4 only
    (["direct", "cython", "row"], ("direct", "flat")),
])
def test_a_remembered_winner_is_what_runs(monkeypatch, winner, want):
    """A remembered [algorithm, backend, variant] is the plan ``auto`` shows and runs
    (explicit algorithms ignore it); one that no longer applies falls back to the
    rules."""
    x, w = arrays(4, np.float32, ONE.input_shape, ONE.weight_shape)
    rules = fastconv.plan("conv2d", x.shape, w.shape, padding=1)
    assert (rules.algorithm, rules.variant) == ("direct", "flat")      # see ONE
    monkeypatch.setattr(_plan, "_tuned", {_plan._key("conv2d", ONE, np.float32): winner})
    shown = fastconv.plan("conv2d", x.shape, w.shape, padding=1)
    assert (shown.algorithm, shown.variant) == want
    y, ran = ran_plan(lambda: fastconv.conv2d(x, w, padding=1))
    assert ran == shown
    assert_close(y, fastconv.conv2d(x, w, padding=1, algorithm="reference"), 1e-4, repr(ran))
    assert fastconv.plan("conv2d", x.shape, w.shape, padding=1, algorithm="im2col").variant \
        == "tiled"


def test_autotune_in_process_times_the_candidates_and_remembers(monkeypatch, tmp_path):
    """autotune(True): the first auto call of a geometry times the candidates (once),
    remembers [algorithm, backend, variant], and runs that plan; later calls run it
    without timing; autotune(False) still uses it."""
    monkeypatch.setattr(_plan, "_tune_file", lambda: str(tmp_path / "autotune.json"))
    timed = []
    real = _plan.tune
    monkeypatch.setattr(_plan, "tune", lambda *a, **k: timed.append(a[0]) or real(*a, **k))
    x, w = arrays(5, np.float32, SMALL.input_shape, SMALL.weight_shape)
    want = fastconv.conv2d(x, w, padding=1, algorithm="reference")
    try:
        fastconv.autotune(True)
        y1, first = ran_plan(lambda: fastconv.conv2d(x, w, padding=1))
        y2, second = ran_plan(lambda: fastconv.conv2d(x, w, padding=1))
    finally:
        fastconv.autotune(False)
    assert timed == ["conv2d"]
    winner = _plan._tuned[_plan._key("conv2d", SMALL, np.float32)]
    assert isinstance(winner, list) and len(winner) == 3
    assert [first.algorithm, first.backend, first.variant] == winner
    assert first == second
    assert first in _plan.candidates("conv2d", SMALL, np.float32)
    assert json.loads((tmp_path / "autotune.json").read_text()) == _plan._tuned
    assert_close(y1, want, tolerance(np.float32, first.algorithm), repr(first))
    np.testing.assert_array_equal(y1, y2)
    _, third = ran_plan(lambda: fastconv.conv2d(x, w, padding=1))
    assert third == first and timed == ["conv2d"]


def test_autotune_times_once_remembers_on_disk_and_auto_uses_it(tmp_path):
    """In a fresh process: tuning writes the autotune file with the winner [algorithm,
    backend, variant]; a second process with tuning off reads it back, does not time
    again, and runs that plan (variant included). The processes share this one's JIT
    cache (a cache of their own would compile every candidate again, minutes) and use
    their own autotune file (where it sits by default: the next test)."""
    env = dict(os.environ, FASTCONV_CACHE_DIR=_config.CACHE_DIR,
               TUNE_FILE=str(tmp_path / "autotune.json"))
    code = r"""
import json, os, numpy as np, fastconv
from fastconv import _plan
_plan._tune_file = lambda: os.environ["TUNE_FILE"]
x = np.random.rand(2, 8, 12, 12).astype(np.float32); w = np.random.rand(8, 8, 3, 3).astype(np.float32)
p = fastconv._geometry.conv_params("t", x.shape, w.shape, 1, 1)
fastconv.autotune(%s)
calls = []
real = _plan.tune
_plan.tune = lambda *a, **k: calls.append(1) or real(*a, **k)
with fastconv.trace_plans() as ran1:         # the first call also times the candidates
    y1 = fastconv.conv2d(x, w, padding=1)
with fastconv.trace_plans() as ran2:
    y2 = fastconv.conv2d(x, w, padding=1)
ran = ran1[-1:] + ran2
key = _plan._key("conv2d", p, np.float32)
print(json.dumps(dict(calls=len(calls), winner=_plan._load_tuned().get(key),
                      ran=[[r.algorithm, r.backend, r.variant] for r in ran],
                      candidates=[[c.algorithm, c.backend, c.variant]
                                  for c in _plan.candidates("conv2d", p, np.float32)],
                      ok=bool(np.allclose(y1, fastconv.conv2d(x, w, padding=1, algorithm="reference"), rtol=1e-4, atol=1e-4)))))
"""
    first = subprocess.run([sys.executable, "-c", code % "True"], env=env, capture_output=True,
                           text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    r1 = json.loads(first.stdout.strip().splitlines()[-1])
    assert r1["calls"] == 1 and r1["ok"]
    winner = r1["winner"]
    assert isinstance(winner, list) and len(winner) == 3       # [algorithm, backend, variant]
    assert tuple(winner[:2]) in fastconv.algorithms("conv2d")
    assert winner in r1["candidates"]
    assert r1["ran"] == [winner, winner]
    saved = json.loads((tmp_path / "autotune.json").read_text())
    assert list(saved.values()) == [winner]
    second = subprocess.run([sys.executable, "-c", code % "False"], env=env, capture_output=True,
                            text=True, timeout=600)
    assert second.returncode == 0, second.stderr
    r2 = json.loads(second.stdout.strip().splitlines()[-1])
    assert r2["calls"] == 0 and r2["winner"] == winner and r2["ok"]
    assert r2["ran"] == [winner, winner]


def test_trace_sees_only_the_calling_thread():
    """trace_plans collects the calling thread's plans: another thread's calls meanwhile
    are not in it; a nested block sees its own, and the enclosing block sees them too
    (nn.optimize traces its first call inside a user's block)."""
    import threading
    x, w = arrays(6, np.float32, (1, 4, 8, 8), (4, 4, 3, 3))
    with fastconv.trace_plans() as outer:
        worker = threading.Thread(target=lambda: [fastconv.conv2d(x, w, algorithm="im2col")
                                                  for _ in range(3)])
        worker.start()
        worker.join()
        fastconv.conv2d(x, w, algorithm="direct")
        with fastconv.trace_plans() as inner:
            fastconv.max_pool2d(x, 2)
        fastconv.conv2d(x, w, algorithm="reference")
    assert [pl.algorithm for pl in outer] == ["direct", "direct", "reference"]
    assert [pl.op for pl in outer] == ["conv2d", "max_pool2d", "conv2d"]
    assert [pl.op for pl in inner] == ["max_pool2d"]


def test_autotune_file_sits_beside_the_jit_cache(tmp_path):
    """Winners are saved in autotune.json beside the JIT cache directory and read back
    by the next process (no kernel needed: nothing is compiled)."""
    env = dict(os.environ, FASTCONV_CACHE_DIR=str(tmp_path / "jit"))
    save = ("import fastconv, sys\n"
            "from fastconv import _plan\n"
            "_plan._load_tuned()['k'] = ['im2col', 'numba', 'tiled']\n"
            "_plan._save_tuned()\n"
            "assert 'numba' not in sys.modules\n")
    load = "from fastconv import _plan; import json; print(json.dumps(_plan._load_tuned()))"
    for code in (save, load):
        run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, timeout=300)
        assert run.returncode == 0, run.stderr
    assert json.loads((tmp_path / "autotune.json").read_text()) == \
        {"k": ["im2col", "numba", "tiled"]}
    assert json.loads(run.stdout) == {"k": ["im2col", "numba", "tiled"]}


def test_autotune_refuses_pooling_ops():
    with pytest.raises(ValueError, match="conv2d"):
        _plan.tune("max_pool2d", None, np.float32)
