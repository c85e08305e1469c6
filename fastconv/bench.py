"""The benchmark harness shared by ``benchmarks/``, ``ci/`` and the CLI.

Timings on a shared machine are noisy, so every comparison is *interleaved*: one
round runs each contender once, in a rotating order, and the report is the median
time of each and the median of the per-round ratios. Absolute figures are quoted as
GFLOP/s of the direct algorithm's multiply-adds (``ConvParams.flops``), so Winograd's
figure is "effective" GFLOP/s.
"""
import time
from dataclasses import dataclass

import numpy as np

from ._geometry import conv_params


@dataclass(frozen=True)
class Layer:
    name: str
    C: int
    HW: int
    K: int
    RS: int
    stride: int
    pad: int

    def shapes(self, N):
        return (N, self.C, self.HW, self.HW), (self.K, self.C, self.RS, self.RS)

    def params(self, N):
        x, w = self.shapes(N)
        return conv_params(self.name, x, w, self.stride, self.pad)


#: the layers of ../shared/PERFORMANCE.md
LAYERS = [
    Layer("resnet50_conv1", 3, 224, 64, 7, 2, 3),
    Layer("resnet50_res2_3x3", 64, 56, 64, 3, 1, 1),
    Layer("resnet50_res2_1x1", 64, 56, 256, 1, 1, 0),
    Layer("resnet50_res3_3x3s2", 128, 56, 128, 3, 2, 1),
    Layer("resnet50_res3_3x3", 128, 28, 128, 3, 1, 1),
    Layer("resnet50_res4_3x3", 256, 14, 256, 3, 1, 1),
    Layer("resnet50_res5_3x3", 512, 7, 512, 3, 1, 1),
    Layer("resnet50_res5_1x1", 2048, 7, 512, 1, 1, 0),
    Layer("vgg16_conv1_2", 64, 224, 64, 3, 1, 1),
    Layer("vgg16_conv3_2", 256, 56, 256, 3, 1, 1),
    Layer("vgg16_conv4_2", 512, 28, 512, 3, 1, 1),
    Layer("vgg16_conv5_2", 512, 14, 512, 3, 1, 1),
    Layer("cifar_3x3", 64, 32, 64, 3, 1, 1),
]

#: channel counts that are not multiples of 16, as real networks have them
ODD_LAYERS = [
    Layer("odd_c24_k48", 24, 56, 48, 3, 1, 1),
    Layer("odd_c96_k160", 96, 28, 160, 3, 1, 1),
    Layer("odd_c192_k192", 192, 14, 192, 3, 1, 1),
]


def layer(name):
    for entry in LAYERS + ODD_LAYERS:
        if entry.name == name:
            return entry
    raise ValueError(f"unknown layer {name!r}; known: {', '.join(e.name for e in LAYERS + ODD_LAYERS)}")


def interleaved(contenders, rounds=7, warmup=1, min_time=0.0, warmup_time=0.0):
    """Time each callable in ``contenders`` (a dict name -> fn) ``rounds`` times,
    interleaved in rotating order; return dict name -> array of seconds.

    ``warmup`` untimed rounds come first, repeated until ``warmup_time`` seconds have
    passed (the first calls of a shape run slow for a while here: fresh workspace
    pages, threads waking, caches). With ``min_time``, each timing repeats its call
    until that many seconds have passed and reports the mean per call (for calls much
    shorter than the timer's resolution or the scheduler's noise)."""
    names = list(contenders)
    t0 = time.perf_counter()
    done = 0
    while done < warmup or time.perf_counter() - t0 < warmup_time:
        for name in names:
            contenders[name]()
        done += 1
    times = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            fn, calls = contenders[name], 0
            t0 = time.perf_counter()
            while True:
                fn()
                calls += 1
                elapsed = time.perf_counter() - t0
                if elapsed >= min_time:
                    break
            times[name].append(elapsed / calls)
    return {name: np.array(t) for name, t in times.items()}


def median_ratio(times, numerator, denominator):
    """Median over rounds of times[numerator] / times[denominator] (same round)."""
    return float(np.median(times[numerator] / times[denominator]))


# -- FMA peak probe -----------------------------------------------------------------
# 12 independent chains of 16-wide float32 FMAs (written as scalar locals, which LLVM's
# SLP vectorizer packs into vector FMAs): enough chains in flight to cover the FMA
# latency on both pipes. Flop count: 2 per FMA.

_CHAINS, _LANES = 12, 16


def _probe_source():
    names = [f"a{c}_{l}" for c in range(_CHAINS) for l in range(_LANES)]
    lines = ["def _fma_probe(n, x, y, out):"]
    lines += [f"    {v} = np.float32({i % 7})" for i, v in enumerate(names)]
    lines += ["    for _ in range(n):"]
    lines += [f"        {v} = {v} * x[{i % _LANES}] + y[{i % _LANES}]" for i, v in enumerate(names)]
    lines += ["    out[0] = " + " + ".join(names)]
    return "\n".join(lines)


_probe = None


def _compiled_probe():
    global _probe
    if _probe is None:
        from numba.core import config

        from .kernels.numba._jit import jit
        namespace = {"np": np}
        exec(_probe_source(), namespace)
        old = config.SLP_VECTORIZE
        config.SLP_VECTORIZE = True  # only for this function's compilation
        try:
            fn = jit(fastmath=True, cache=False)(namespace["_fma_probe"])
            fn.compile("(int64, float32[::1], float32[::1], float32[::1])")
        finally:
            config.SLP_VECTORIZE = old
        _probe = fn
    return _probe


def fma_peak(threads=None, seconds=0.2):
    """Measured float32 FMA throughput of this machine in GFLOP/s, on ``threads``
    threads (default: fastconv's thread count), running one probe per thread."""
    from concurrent.futures import ThreadPoolExecutor

    from ._config import get_num_threads
    threads = threads or get_num_threads()
    probe = _compiled_probe()
    x = np.full(_LANES, 0.999, np.float32)
    y = np.full(_LANES, 0.001, np.float32)
    out = np.zeros(1, np.float32)
    n = 1000
    while True:  # calibrate the iteration count on one thread
        t0 = time.perf_counter()
        probe(n, x, y, out)
        if time.perf_counter() - t0 > seconds / 4:
            break
        n *= 4
    best = 0.0
    with ThreadPoolExecutor(threads) as pool:  # the probe releases the GIL (nogil)
        for _ in range(3):
            t0 = time.perf_counter()
            list(pool.map(lambda _: probe(n, x, y, np.zeros(1, np.float32)), range(threads)))
            elapsed = time.perf_counter() - t0
            best = max(best, threads * n * _CHAINS * _LANES * 2 / elapsed / 1e9)
    return best
