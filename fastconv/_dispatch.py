"""The registry of kernels and the one place that picks one.

``REGISTRY[(op, algorithm, backend)]`` is a kernel with the op's signature (the same
for every algorithm, see ``fastconv.reference`` for the specification of each):

    conv2d               (x, w, p: ConvParams, out)
    conv2d_input         (dy, w, p: ConvParams, out)
    conv2d_weight        (x, dy, p: ConvParams, out)
    max_pool2d           (x, p: PoolParams, out, indices)
    max_pool2d_backward  (dy, indices, p: PoolParams, out)
    avg_pool2d           (x, p: PoolParams, count_include_pad, divisor_override, out)
    avg_pool2d_backward  (dy, p: PoolParams, count_include_pad, divisor_override, out)
    adaptive_avg_pool2d  (x, h_windows, w_windows, out)

``SUPPORTS[(algorithm, backend)]``, where present, says which geometries an algorithm
handles (e.g. Winograd: 3x3, stride 1, dilation 1, groups 1); algorithms without an
entry handle every valid geometry.

Tests and benchmarks loop over this registry: a kernel registered is a kernel tested.
"""
import json
import os
import platform
import tempfile
import warnings

import numpy as np

from . import _config, reference
from .kernels.numba import direct as nb_direct
from .kernels.numba import im2col as nb_im2col
from .kernels.numba import pool as nb_pool
from .kernels.numba import winograd as nb_winograd

REGISTRY = {
    ("conv2d", "reference", "numpy"): reference.conv2d,
    ("conv2d_input", "reference", "numpy"): reference.conv2d_input,
    ("conv2d_weight", "reference", "numpy"): reference.conv2d_weight,
    ("max_pool2d", "reference", "numpy"): reference.max_pool2d,
    ("max_pool2d_backward", "reference", "numpy"): reference.max_pool2d_backward,
    ("avg_pool2d", "reference", "numpy"): reference.avg_pool2d,
    ("avg_pool2d_backward", "reference", "numpy"): reference.avg_pool2d_backward,
    ("adaptive_avg_pool2d", "reference", "numpy"): reference.adaptive_avg_pool2d,
    ("conv2d", "im2col", "numba"): nb_im2col.conv2d,
    ("conv2d_input", "im2col", "numba"): nb_im2col.conv2d_input,
    ("conv2d_weight", "im2col", "numba"): nb_im2col.conv2d_weight,
    ("conv2d", "direct", "numba"): nb_direct.conv2d,
    ("conv2d_input", "direct", "numba"): nb_direct.conv2d_input,
    ("conv2d_weight", "direct", "numba"): nb_direct.conv2d_weight,
    ("max_pool2d", "direct", "numba"): nb_pool.max_pool2d,
    ("max_pool2d_backward", "direct", "numba"): nb_pool.max_pool2d_backward,
    ("avg_pool2d", "direct", "numba"): nb_pool.avg_pool2d,
    ("avg_pool2d_backward", "direct", "numba"): nb_pool.avg_pool2d_backward,
    ("adaptive_avg_pool2d", "direct", "numba"): nb_pool.adaptive_avg_pool2d,
    ("conv2d", "winograd_f2", "numba"): nb_winograd.conv2d_f2,
    ("conv2d_input", "winograd_f2", "numba"): nb_winograd.conv2d_input_f2,
    ("conv2d", "winograd_f4", "numba"): nb_winograd.conv2d_f4,
    ("conv2d_input", "winograd_f4", "numba"): nb_winograd.conv2d_input_f4,
    ("conv2d_weight", "winograd_f2", "numba"): nb_winograd.conv2d_weight_f2,
    ("conv2d_weight", "winograd_f4", "numba"): nb_winograd.conv2d_weight_f4,
}

SUPPORTS = {
    ("winograd_f2", "numba"): nb_winograd.supports,
    ("winograd_f4", "numba"): nb_winograd.supports,
}

OPS = tuple(dict.fromkeys(op for op, _, _ in REGISTRY))
_PAIRS = {op: [(a, b) for o, a, b in REGISTRY if o == op] for op in OPS}
CONV_OPS = ("conv2d", "conv2d_input", "conv2d_weight")


def algorithms(op):
    """The registered ``(algorithm, backend)`` pairs for ``op``, e.g.
    ``fastconv.algorithms("conv2d")`` -> ``[('reference', 'numpy'), ('im2col', 'numba'), ...]``.
    Every pair is accepted by the op's ``algorithm=`` and ``backend=`` arguments."""
    if op not in _PAIRS:
        raise ValueError(f"algorithms: unknown op {op!r}; ops are {', '.join(OPS)}")
    return list(_PAIRS[op])


def supports(algorithm, backend, p):
    """Whether ``(algorithm, backend)`` handles the geometry ``p``."""
    rule = SUPPORTS.get((algorithm, backend))
    return rule is None or rule(p)


# -- The selection rules: what ``auto`` runs when nothing was autotuned -----------------


# Measured with benchmarks/bench_conv.py --algorithms (float32, 1 and 2 threads, N=1
# and 8, OpenBLAS's AVX-512 kernels; figures in the issue notes):
# - 3x3 stride-1 layers with >= 16 channels: Winograd F(4x4,3x3) from 20x20 outputs
#   per image (res2/res3/VGG/CIFAR: 1.3-3x PyTorch forward). For forward and grad-input
#   from 100 outputs per channel over the batch: F4 too (F4 at res4 and C=192 N=1,
#   1.64-1.95x against F2's 1.27-1.73x; with a transformed filter of 16 MiB or more and
#   few tiles, F4 transforms the filter on the fly: VGG conv5_2 N=1, 1 / 2 threads,
#   1.58 / 1.35x forward and 1.86 / 1.53x grad-input, against F2's 1.45 / 1.36x and
#   1.52 / 1.41x; res5 N=8 1.46-1.54 / 1.27-1.28x and 1.66-1.70 / 1.44x). The weight
#   gradient takes F2 from 100 outputs when F4 does not reach 20x20 (14x14 at N=8: F2
#   1.2-1.5x against F4's 0.7-1.4x). Below 100 outputs: direct, for the forward and
#   grad-input where its lanes kernel's blocks fit (rows of 7, 2 rows; res5 at N=1, 1 /
#   2 threads: 1.29 / 1.14x PyTorch forward, 1.24 / 1.23x grad-input, against im2col's
#   1.08 / 1.11x and 1.18 / 1.19x, F2's 1.22 / 1.00x and 1.16 / 1.03x, F4's 0.71-0.85x),
#   else im2col; for the weight gradient always (res5 N=1: 2.7 / 1.3 ms against F2's
#   2.9 / 1.9 and im2col's 5.6 / 4.6; 4x4 to 9x9 images of 16-256 channels: 1.2-2.9x
#   im2col's speed, but for two small ones on 2 threads, 0.73x and 0.90x).
# - 1x1 stride-1: one GEMM, im2col (1.6-2.8x); for the float32 forward of batches of at
#   least 4 images of fewer than 100 pixels, with at least 4 times as many input as
#   output channels and at least 64 of those: direct's pointwise GEMM (its weight blocked
#   once, the pixels read in place; im2col copies the batch channels-first and back).
#   Against im2col, 2 / 1 threads: res5 1x1 (2048->512, 7x7) N=8 1.21 / 0.98x, N=4
#   1.12 / 0.99x, N=16 1.11 / 0.99x, N=32 1.09 / 1.02x, 3x3 planes N=8 1.23 / 1.08x;
#   1024->256 7x7 N=8 1.34 / 1.06x. Not where it measured slower: N=1 (0.71 / 0.89x)
#   and 2, C < 4K (512->2048 7x7 0.97 / 0.94x, 256->256 0.83 / 1.06x), K < 64 (0.43x),
#   14x14 and larger planes (0.84-0.94x; res2 1x1 at 56x56 0.60-0.81x).
# - forward of layers with few inputs per output (C*R*S < 256, e.g. the 7x7 RGB stem)
#   and at least 16 output channels, and depthwise layers: direct. Also the forward of
#   stride-2 layers (not 1x1) with at least 16 output channels: direct (res3 3x3/2:
#   1.03x PyTorch at N=1 against im2col's 0.75x; other 3x3/2 layers 1.0-1.4x faster
#   than im2col; 1x1 stride 2 stays with im2col, where direct is 0.4-0.5x as fast).
# - grad-weight of those stride-2 layers (at least 256 inputs per output): direct (res3
#   3x3/2 at N=1 and 8, 1 and 2 threads: 1.12-1.25x PyTorch; 3x3/2 on 28x28 inputs at
#   N=1 and 2: 1.03-1.14x against im2col's 0.69-0.78x; on 14x14 inputs at N=8: 0.95x /
#   1.29x (1 / 2 threads) against 0.96x / 0.70x, at N=1: 2.9-4.3x against 0.8-1.9x).
#   Everything else, and grad-input of those: im2col.
WINOGRAD_MIN_CHANNELS = 16      # C and K: below, the transforms outweigh the saving
F4_MIN_IMAGE = 400              # P*Q from which F(4x4,3x3) beats F(2x2,3x3)
F2_MIN_OUTPUTS = 100            # N*P*Q from which F(2x2,3x3) beats im2col
DIRECT_MAX_PATCH = 256          # C/groups*R*S below which direct beats im2col forward
POINTWISE_MIN_IMAGES = 4        # direct's pointwise forward: from this many images,
POINTWISE_MAX_IMAGE = 100       # of fewer pixels than this,
POINTWISE_MIN_REDUCTION = 4     # with C >= this * K,
POINTWISE_MIN_OUTPUTS = 64      # and K >= this (its blocks of output channels)


def _auto(op, p, dtype=None):
    """The algorithm ``auto`` prefers for ``op`` on geometry ``p`` and ``dtype`` (None:
    not known) (the rules above)."""
    if op not in CONV_OPS:
        return "direct"
    if p.pointwise:
        pointwise = (op == "conv2d" and dtype is not None and np.dtype(dtype) == np.float32
                     and p.groups == 1 and p.N >= POINTWISE_MIN_IMAGES
                     and p.P * p.Q < POINTWISE_MAX_IMAGE and p.K >= POINTWISE_MIN_OUTPUTS
                     and p.C >= POINTWISE_MIN_REDUCTION * p.K)
        return "direct" if pointwise else "im2col"
    if p.groups > 1 and p.groups == p.C == p.K:
        return "direct"
    if supports("winograd_f4", "numba", p) and min(p.C, p.K) >= WINOGRAD_MIN_CHANNELS:
        image, outputs = p.P * p.Q, p.N * p.P * p.Q
        if image >= F4_MIN_IMAGE:
            return "winograd_f4"
        if outputs < F2_MIN_OUTPUTS:
            lanes = nb_direct._lanes_block(p.P, p.Q) is not None
            return "direct" if op == "conv2d_weight" or lanes else "im2col"
        return "winograd_f2" if op == "conv2d_weight" else "winograd_f4"
    if p.K // p.groups < 16:                          # direct: 16 output channels in registers
        return "im2col"
    patch = (p.C // p.groups) * p.R * p.S
    stride2 = p.stride_h == p.stride_w == 2 and p.dil_h == p.dil_w == 1 and p.R > 1 and p.S > 1
    if op == "conv2d" and (patch < DIRECT_MAX_PATCH or stride2):
        return "direct"
    if op == "conv2d_weight" and stride2 and patch >= DIRECT_MAX_PATCH:
        return "direct"
    return "im2col"


# -- Autotuning: time the candidates once per geometry, remember the winner -------------

_tuned = None             # key -> [algorithm, backend], loaded from disk on first use
_autotune_enabled = False


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _tune_file():
    return os.path.join(os.path.dirname(_config.CACHE_DIR.rstrip(os.sep)), "autotune.json")


def _key(op, p, dtype):
    """Autotune key: op, geometry, dtype, thread count and CPU."""
    return "|".join([op, ",".join(map(str, p.as_tuple())), np.dtype(dtype).name,
                     str(_config.get_num_threads()), _CPU])


def _load_tuned():
    global _tuned
    if _tuned is None:
        try:
            with open(_tune_file()) as f:
                _tuned = json.load(f)
        except (OSError, ValueError):
            _tuned = {}
    return _tuned


def _save_tuned():
    path = _tune_file()
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=os.path.dirname(path), delete=False,
                                         suffix=".tmp") as f:
            json.dump(_tuned, f, indent=0, sort_keys=True)
        os.replace(f.name, path)
    except OSError as exc:
        warnings.warn(f"fastconv: could not save autotune results to {path!r}: {exc}",
                      RuntimeWarning, stacklevel=3)


def _operands(op, p, dtype):
    """Random operands for timing ``op`` on geometry ``p`` (never the user's arrays)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(p.input_shape).astype(dtype)
    w = rng.standard_normal(p.weight_shape).astype(dtype)
    dy = rng.standard_normal(p.output_shape).astype(dtype)
    if op == "conv2d":
        return x, w, np.empty(p.output_shape, dtype)
    if op == "conv2d_input":
        return dy, w, np.empty(p.input_shape, dtype)
    return x, dy, np.empty(p.weight_shape, dtype)


def tune(op, p, dtype, rounds=3):
    """Time every registered candidate (but the reference) of conv ``op`` on geometry
    ``p``, interleaved; remember the fastest in memory and on disk; return it."""
    from .bench import interleaved
    if op not in CONV_OPS:
        raise ValueError(f"autotune: only {', '.join(CONV_OPS)} are tuned, got {op!r}")
    a, b, out = _operands(op, p, dtype)
    candidates = {(alg, be): REGISTRY[(op, alg, be)] for alg, be in _PAIRS[op]
                  if alg != "reference" and supports(alg, be, p)}
    times = interleaved({k: (lambda fn=fn: fn(a, b, p, out)) for k, fn in candidates.items()},
                        rounds=rounds, warmup=1)
    best = min(times, key=lambda k: np.median(times[k]))
    _load_tuned()[_key(op, p, dtype)] = list(best)
    _save_tuned()
    return best


def autotune(enable=True):
    """Switch autotuning on or off for ``algorithm="auto"`` (off by default).

    When on, the first conv2d, conv2d_input or conv2d_weight call of each geometry,
    dtype and thread count times the registered algorithms on random data (like
    cuDNN's benchmark mode) and every later ``auto`` call uses the fastest. Winners
    persist in ``autotune.json`` beside the JIT cache, keyed also by CPU, and are used
    even when tuning is off; an explicit ``algorithm=`` always wins.
    """
    global _autotune_enabled
    _autotune_enabled = bool(enable)


def select(op, algorithm, backend, p, dtype=None):
    """The kernel for ``op`` given the user's ``algorithm=``/``backend=``, the
    geometry ``p`` and the dtype. ``"auto"`` for either lets the tuned choice or the
    rules choose."""
    pairs = _PAIRS.get(op) or algorithms(op)
    if (algorithm == "auto" and backend == "auto" and dtype is not None and op in CONV_OPS
            and (_autotune_enabled or _load_tuned())):
        tuned = _load_tuned().get(_key(op, p, dtype))
        if tuned is None and _autotune_enabled:
            tuned = tune(op, p, dtype)
        if tuned is not None and tuple(tuned) in pairs and supports(*tuned, p):
            return REGISTRY[(op, *tuned)]
    if algorithm == "auto":
        preferred = _auto(op, p, dtype)
        candidates = [(a, b) for a, b in pairs if backend in ("auto", b) and supports(a, b, p)]
        candidates.sort(key=lambda ab: (ab[0] != preferred, ab[0] == "reference"))
    else:
        candidates = [(a, b) for a, b in pairs if a == algorithm and backend in ("auto", b)]
    if not candidates:
        valid = ", ".join(f"(algorithm={a!r}, backend={b!r})" for a, b in pairs)
        raise ValueError(
            f"{op}: no kernel for algorithm={algorithm!r}, backend={backend!r}; "
            f"registered: {valid}, and 'auto' for either")
    algorithm, backend = candidates[0]
    if not supports(algorithm, backend, p):
        raise ValueError(
            f"{op}: algorithm={algorithm!r} (backend={backend!r}) does not handle this "
            f"geometry: {p}; {SUPPORTS[(algorithm, backend)].__doc__}")
    return REGISTRY[(op, algorithm, backend)]


_CPU = _cpu_name()
