"""The benchmark harness shared by ``benchmarks/``, ``ci/`` and the CLI.

Timings on a shared machine are noisy, so every comparison is *interleaved*: one
round runs each contender once, in a rotating order, and the report is the median
time of each and the median of the per-round ratios. Absolute figures are quoted as
GFLOP/s of the direct algorithm's multiply-adds (``ConvParams.flops``), so Winograd's
figure is "effective" GFLOP/s.

Also here: the facts a benchmark record carries (:func:`machine_info`,
:func:`versions`, :func:`git_commit`), and ``fastconv bench`` (:func:`main`): the layer
table x the registry x the ops, and whole networks, against PyTorch and the FMA peak
measured in the same run, as a table, JSON and a PNG (docs/benchmarks.md).
"""
import json
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np

from . import _machine
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


#: glibc's largest dynamic mmap threshold (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit)
_MMAP_THRESHOLD_MAX = 32 << 20
_steady = False


def steady_heap():
    """Put this process's allocator in the state a long-running program's is in, once.

    glibc's malloc serves each block of 128 KiB or more with fresh pages from mmap, so
    every call that allocates one pays a page fault per 4 KiB it touches, until the
    process frees such a block: malloc then raises that threshold to the freed size
    (up to 32 MiB) and reuses its heap. Which state a benchmark process is in depends
    on what it happened to free before: PyTorch's 3->32 3x3/2 RGB stem, N=1, 1 thread,
    ran in 1.6-2.0 ms in one process and 0.2-0.4 ms in another (AMD EPYC Zen 4), its
    output and reorder buffers faulted in afresh on every call or not. Freeing one block
    of just under 32 MiB puts every contender in the steady state at once. Called by
    :func:`interleaved` and the benchmark workers; no effect with other allocators."""
    global _steady
    if not _steady:
        block = np.empty(_MMAP_THRESHOLD_MAX - (1 << 16), np.uint8)
        del block
        _steady = True


def interleaved(contenders, rounds=7, warmup=1, min_time=0.0, warmup_time=0.0,
                clock=time.perf_counter, settle=0.0):
    """Time each callable in ``contenders`` (a dict name -> fn) ``rounds`` times,
    interleaved in rotating order; return dict name -> array of seconds.

    ``warmup`` untimed rounds come first, repeated until ``warmup_time`` seconds have
    passed (the first calls of a shape run slow for a while here: fresh workspace
    pages, threads waking, caches). With ``min_time``, each timing repeats its call
    until that many seconds have passed and reports the mean per call (for calls much
    shorter than the timer's resolution or the scheduler's noise). ``clock``: what the
    timings read (default wall time; ``time.process_time``, the process's CPU time,
    leaves out the time other processes had the cores, see ci/bench_gate.py). With
    ``settle``, each timing first runs its call untimed for that many seconds: after
    another contender ran, a kernel's first calls run slow (on the Intel Xeon VM
    ``rocketlake`` 1.5-2x for about 30 ms, even after a pure-Python loop), which
    would count against whichever contender the rotation puts after another. The
    process's allocator is first put in its steady state (:func:`steady_heap`)."""
    steady_heap()
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
            while time.perf_counter() - t0 < settle:
                fn()
            t0 = clock()
            while True:
                fn()
                calls += 1
                elapsed = clock() - t0
                if elapsed >= min_time:
                    break
            times[name].append(elapsed / calls)
    return {name: np.array(t) for name, t in times.items()}


def median_ratio(times, numerator, denominator):
    """Median over rounds of times[numerator] / times[denominator] (same round)."""
    return float(np.median(times[numerator] / times[denominator]))


# -- FMA peak probe -----------------------------------------------------------------
# 12 independent chains of vector-wide float32 FMAs (written as scalar locals, which
# LLVM's SLP vectorizer packs into vector FMAs): enough chains in flight to cover the FMA
# latency on both pipes, few enough (12 accumulators) to stay in 16 registers. The peak
# probe's chains are as wide as the CPU's vectors (``_machine.float32_lanes``; 16-wide
# chains on an AVX2 CPU need 24 ymm accumulators, and spill to half the peak). Flop
# count: 2 per FMA.

_CHAINS = 12
#: lanes of the fixed workload the CI gate's anchor runs (its baselines were recorded with it)
_LANES = 16


def _probe_source(lanes):
    names = [f"a{c}_{l}" for c in range(_CHAINS) for l in range(lanes)]
    lines = ["def _fma_probe(n, x, y, out):"]
    lines += [f"    {v} = np.float32({i % 7})" for i, v in enumerate(names)]
    lines += ["    for _ in range(n):"]
    lines += [f"        {v} = {v} * x[{i % lanes}] + y[{i % lanes}]" for i, v in enumerate(names)]
    lines += ["    out[0] = " + " + ".join(names)]
    return "\n".join(lines)


_probes = {}


def _compiled_probe(lanes=_LANES):
    """The FMA probe with chains of ``lanes`` float32 lanes, compiled once per process."""
    if lanes not in _probes:
        from numba.core import config

        from .kernels.numba._jit import jit
        namespace = {"np": np}
        exec(_probe_source(lanes), namespace)
        old = config.SLP_VECTORIZE
        config.SLP_VECTORIZE = True  # only for this function's compilation
        try:
            fn = jit(fastmath=True, cache=False)(namespace["_fma_probe"])
            fn.compile("(int64, float32[::1], float32[::1], float32[::1])")
        finally:
            config.SLP_VECTORIZE = old
        _probes[lanes] = fn
    return _probes[lanes]


def fma_peak(threads=None, seconds=0.2):
    """Measured float32 FMA throughput of this machine in GFLOP/s, on ``threads``
    threads (default: fastconv's thread count), running one probe per thread."""
    from concurrent.futures import ThreadPoolExecutor

    from ._config import get_num_threads
    threads = threads or get_num_threads()
    from ._machine import float32_lanes
    lanes = float32_lanes()
    probe = _compiled_probe(lanes)
    x = np.full(lanes, 0.999, np.float32)
    y = np.full(lanes, 0.001, np.float32)
    out = np.zeros(1, np.float32)
    probe(1, x, y, out)     # compiled (or loaded) first: not timed by the calibration
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
            best = max(best, threads * n * _CHAINS * lanes * 2 / elapsed / 1e9)
    return best


# -- What a record says about the machine and the software ------------------------------


def cpu_model():
    """The CPU's model name (``/proc/cpuinfo``; else what ``platform`` knows)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def llvm_cpu():
    """LLVM's name for this core (what Numba compiles for), e.g. ``'znver4'``; None when
    llvmlite is not installed."""
    try:
        import llvmlite.binding as llvm
        return llvm.get_host_cpu_name()
    except Exception:  # noqa: BLE001 - a record without it is still a record
        return None


#: /proc/cpuinfo flags worth naming beside a figure (vector width, FMA, matrix units)
_VECTOR_FLAGS = re.compile(r"^(sse4_2|avx|avx2|fma|f16c|avx512\w*|avx_vnni|amx\w*|sve\w*|neon|asimd)$")


def vector_features():
    """The vector instruction sets this CPU has: NumPy's runtime-detected features
    (``AVX2``, ``AVX512F``, ...) where NumPy exposes them, else /proc/cpuinfo's flags."""
    try:
        try:
            from numpy._core._multiarray_umath import __cpu_features__ as feats
        except ImportError:                                    # NumPy < 2
            from numpy.core._multiarray_umath import __cpu_features__ as feats
        found = [name for name, on in feats.items() if on]
        if found:
            return found
    except ImportError:
        pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return sorted(v for v in line.split(":", 1)[1].split() if _VECTOR_FLAGS.match(v))
    except OSError:
        pass
    return []


def machine_info():
    """CPU model, LLVM's core name, vector features and registers, caches, cores, and
    fastconv's threads."""
    from ._config import MAX_THREADS, get_num_threads
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    flags = []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    flags = sorted(v for v in line.split(":", 1)[1].split() if _VECTOR_FLAGS.match(v))
                    break
    except OSError:
        pass
    return dict(cpu_model=cpu_model(), llvm_cpu=llvm_cpu(), vector_features=vector_features(),
                vector_registers=_machine.vector_registers(), caches=_machine.caches(),
                cpu_flags=flags, logical_cores=os.cpu_count(), usable_cores=usable,
                fastconv_max_threads=MAX_THREADS, fastconv_threads=get_num_threads(),
                machine=platform.machine(), system=platform.platform(),
                python=platform.python_version())


def versions():
    """Versions of fastconv and the libraries its figures depend on (None: not
    installed), and the BLAS that NumPy loaded."""
    from importlib import metadata

    from . import __version__
    out = {"fastconv": __version__}
    for dist in ("numpy", "scipy", "numba", "llvmlite", "threadpoolctl", "torch", "matplotlib"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    try:
        from threadpoolctl import threadpool_info
        out["blas"] = [dict(internal_api=i.get("internal_api"), version=i.get("version"),
                            architecture=i.get("architecture"), threads=i.get("num_threads"))
                       for i in threadpool_info() if i.get("user_api") == "blas"]
    except Exception:  # noqa: BLE001
        out["blas"] = None
    return out


def git_commit(path=None):
    """``{"commit": sha, "dirty": bool}`` of the git checkout fastconv is imported from,
    or None when it is not in one (an installed copy). ``dirty``: tracked files differ
    from the commit."""
    here = os.path.dirname(os.path.abspath(path or __file__))
    try:
        def git(*args):
            return subprocess.run(["git", "-C", here, *args], capture_output=True, text=True,
                                  timeout=10, check=True).stdout.strip()
        # a tracked fastconv/ only: a venv inside some other repository is not a checkout
        git("ls-files", "--error-unmatch", os.path.basename(__file__))
        sha = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": sha, "dirty": dirty}


def environment():
    """The environment variables that change timings (thread counts, BLAS core type,
    Numba's CPU and flags, fastconv's settings)."""
    keep = re.compile(r"^(OMP_|OPENBLAS_|MKL_|NUMBA_|FASTCONV_|KMP_)")
    return {k: v for k, v in sorted(os.environ.items()) if keep.match(k)}


def cpu_slug(model=None, core=None):
    """A file-name slug for this CPU: its model name without trademarks, frequencies
    and filler, plus LLVM's core name (VMs often report a generic model such as
    'Intel(R) Xeon(R) Processor'): ``'intel-xeon-processor-rocketlake'``."""
    model = cpu_model() if model is None else model
    core = llvm_cpu() if core is None else core
    text = re.sub(r"\((r|tm|c)\)|\bcpu\b|@.*$|\d+-core processor", " ", model.lower())
    words = re.findall(r"[a-z0-9]+", text)
    if core and core not in words and core != "generic":
        words.append(core)
    return "-".join(words) or "unknown-cpu"


# -- fastconv bench ------------------------------------------------------------------------

CONV_OPS = ("conv2d", "conv2d_input", "conv2d_weight")
#: ``--quick``: a handful of small layers (3x3 on a small image, a 3x3 with many channels
#: on 14x14, ResNet's 1x1 reduction), forward only, and the MNIST network
QUICK_LAYERS = ("cifar_3x3", "resnet50_res4_3x3", "resnet50_res5_1x1")
QUICK_OPS = ("conv2d",)
QUICK_NETWORKS = ("mnist",)
#: the default without ``--quick``: every layer of the table, each op, two networks
DEFAULT_NETWORKS = ("resnet18", "mobilenet_v2")


def _conv_call(op, x, w, dy, kw):
    from . import functional as F
    if op == "conv2d":
        return lambda **a: F.conv2d(x, w, **kw, **a)
    if op == "conv2d_input":
        return lambda **a: F.conv2d_input(x.shape, w, dy, **kw, **a)
    return lambda **a: F.conv2d_weight(x, w.shape, dy, **kw, **a)


def layer_operands(L, N, seed=0):
    """Random float32 input, weight and output gradient of layer ``L`` at batch ``N``."""
    rng = np.random.default_rng(seed)
    p = L.params(N)
    x = rng.standard_normal(p.input_shape, dtype=np.float32)
    w = rng.standard_normal(p.weight_shape, dtype=np.float32)
    dy = rng.standard_normal(p.output_shape, dtype=np.float32)
    return p, x, w, dy


def layer_contenders(op, p, algorithms=None, backends=None):
    """The (algorithm, backend) pairs ``fastconv bench`` times for conv ``op`` on ``p``:
    ``("auto", "auto")`` and each registered pair but the reference that handles ``p``,
    narrowed to ``algorithms`` and ``backends`` when given."""
    from . import _plan
    from ._dispatch import pairs
    out = []
    if algorithms is None or "auto" in algorithms:
        if backends is None:
            out.append(("auto", "auto"))
        else:
            out += [("auto", b) for b in backends]
    for a, b in pairs(op):
        if a == "reference" and (algorithms is None or "reference" not in algorithms):
            continue
        if (algorithms is not None and a not in algorithms) or \
                (backends is not None and b not in backends):
            continue
        if _plan.supports(a, p):
            out.append((a, b))
    return out


def layer_fn(op, L, N, algorithm="auto", backend="auto", operands=None):
    """``(fn, flops, plan)``: a call of conv ``op`` on layer ``L`` at batch ``N`` by
    ``algorithm``/``backend``, its FLOPs and the plan it runs."""
    from . import _plan
    p, x, w, dy = operands or layer_operands(L, N)
    kw = dict(stride=L.stride, padding=L.pad)
    call = _conv_call(op, x, w, dy, kw)
    plan = _plan.make(op, p, np.float32, algorithm, backend)
    return (lambda: call(algorithm=algorithm, backend=backend)), p.flops, plan


def torch_layer_fn(torch, op, L, operands):
    """The same conv ``op`` in PyTorch (NCHW NumPy in and out, as fastconv)."""
    p, x, w, dy = operands
    tx, tw, tdy = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(dy)
    kw = dict(stride=L.stride, padding=L.pad)
    if op == "conv2d":
        return lambda: torch.nn.functional.conv2d(tx, tw, None, **kw).numpy()
    if op == "conv2d_input":
        return lambda: torch.nn.grad.conv2d_input(tx.shape, tw, tdy, **kw).numpy()
    return lambda: torch.nn.grad.conv2d_weight(tx, tw.shape, tdy, **kw).numpy()


def network_fn(name, N, torch=None):
    """``(fn, flops, plans, torch_fn)``: one forward pass of network ``name``
    (``fastconv.networks``) at batch ``N``, its convolutions' FLOPs, the plan of each
    convolution, and the same pass in PyTorch (None without ``torch``)."""
    from . import networks
    spec = networks.build(name)
    x = np.random.default_rng(0).standard_normal((N,) + tuple(spec["input"]), dtype=np.float32)
    profile = []
    networks.fastconv_forward(spec, profile=profile)(x)
    flops = sum(f for *_, f in profile)
    plans = [(layer_name, repr(plan)) for layer_name, plan, _, _ in profile]
    forward = networks.fastconv_forward(spec)
    torch_fn = None
    if torch is not None:
        module, tx = networks.torch_module(spec), torch.from_numpy(x)

        def torch_fn():
            with torch.no_grad():
                return module(tx).numpy()
    return (lambda: forward(x)), flops, plans, torch_fn


def _import_torch(use):
    if not use:
        return None
    try:
        import torch
    except ImportError:
        return None
    return torch


def _split(values, known, what):
    """Comma- or space-separated names, each one of ``known`` (``all``: every one)."""
    names = [v for item in values for v in item.replace(",", " ").split()] if values else []
    if names == ["all"]:
        return list(known)
    if names == ["none"]:
        return []
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"bench: unknown {what} {', '.join(map(repr, unknown))}; known: "
                         f"{', '.join(known)} (or 'all')")
    return names


def plan_summary(plans):
    """``{"algorithm:variant": count}`` of a network's plans (their reprs)."""
    counts = {}
    for _, text in plans:
        m = re.match(r"Plan\(\w+: (\w+)/\w+(?:, variant='(\w+)')?", text)
        key = (m.group(1) + (f":{m.group(2)}" if m.group(2) else "")) if m else text
        counts[key] = counts.get(key, 0) + 1
    return counts


def run(layers=(), networks=(), ops=CONV_OPS, algorithms=None, backends=None, threads=None,
        batches=(1,), rounds=5, min_time=0.02, warmup_time=0.2, use_torch=True,
        progress=True, peak_seconds=0.2, settle=0.03):
    """Time every case; return the record ``fastconv bench`` prints and writes.

    One *group* is one layer, op, batch and thread count (or one network, batch and
    thread count); its contenders (``auto``, each registered algorithm that handles it,
    and PyTorch when installed) are timed interleaved, so their ratios come from the
    same machine state. The FMA peak is measured once per thread count, in this run.
    Each timing first runs its contender untimed for ``settle`` seconds
    (:func:`interleaved`).
    """
    import fastconv
    torch = _import_torch(use_torch)
    threads = list(threads or [fastconv.get_num_threads()])
    groups = [("layer", L, op, N, t) for t in threads for N in batches for L in layers
              for op in ops]
    groups += [("network", name, None, N, t) for t in threads for N in batches
               for name in networks]
    record = dict(schema="fastconv-bench/1", created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  machine=machine_info(), versions=versions(), git=git_commit(),
                  environment=environment(),
                  settings=dict(layers=[L.name for L in layers], networks=list(networks),
                                ops=list(ops), algorithms=algorithms, backends=backends,
                                threads=threads, batches=list(batches), rounds=rounds,
                                min_time=min_time, settle=settle,
                                torch=torch is not None),
                  peak_gflops={}, results=[])
    try:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(groups), desc="fastconv bench", unit="case", disable=not progress,
                   file=sys.stderr, dynamic_ncols=True)
    except ImportError:                        # pragma: no cover - tqdm is a dependency
        bar = None
    n_before = fastconv.get_num_threads()
    torch_before = torch.get_num_threads() if torch is not None else None
    try:
        for kind, what, op, N, t in groups:
            fastconv.set_num_threads(t)
            if torch is not None:
                torch.set_num_threads(t)
            if t not in record["peak_gflops"]:
                if bar is not None:
                    bar.set_description(f"FMA peak, {t} thread(s)")
                record["peak_gflops"][t] = fma_peak(t, seconds=peak_seconds)
            peak = record["peak_gflops"][t]
            label = what.name if kind == "layer" else what
            if bar is not None:
                bar.set_description(f"{label} {op or 'forward'} N={N} t={t}")
            fns, info = {}, {}
            if kind == "layer":
                operands = layer_operands(what, N)
                for a, b in layer_contenders(op, operands[0], algorithms, backends):
                    fn, flops, plan = layer_fn(op, what, N, a, b, operands)
                    key = "auto" if (a, b) == ("auto", "auto") else f"{a}/{b}"
                    fns[key], info[key] = fn, dict(algorithm=a, backend=b, plan=plan, flops=flops)
                if torch is not None:
                    fns["torch"] = torch_layer_fn(torch, op, what, operands)
                    info["torch"] = dict(algorithm="torch", backend="pytorch", plan=None,
                                         flops=operands[0].flops)
            else:
                fn, flops, plans, torch_fn = network_fn(what, N, torch)
                fns["auto"] = fn
                info["auto"] = dict(algorithm="auto", backend="auto", plans=plans, flops=flops)
                if torch_fn is not None:
                    fns["torch"], info["torch"] = torch_fn, dict(algorithm="torch",
                                                                 backend="pytorch", flops=flops)
            if not fns:                 # no chosen algorithm handles this layer
                if bar is not None:
                    bar.update(1)
                continue
            times = interleaved(fns, rounds=rounds, warmup=1, min_time=min_time,
                                warmup_time=warmup_time, settle=settle)
            for key, t_s in times.items():
                meta = info[key]
                median = float(np.median(t_s))
                gflops = meta["flops"] / median / 1e9
                row = dict(kind=kind, case=label, op=op or "forward", N=N, threads=t,
                           algorithm=meta["algorithm"], backend=meta["backend"],
                           flops=int(meta["flops"]), median_s=median,
                           times_s=[float(v) for v in t_s], gflops=gflops,
                           percent_of_peak=100 * gflops / peak if peak else None,
                           speedup_vs_torch=(median_ratio(times, "torch", key)
                                             if "torch" in times and key != "torch" else None))
                plan = meta.get("plan")
                if plan is not None:
                    row.update(plan=repr(plan), plan_algorithm=plan.algorithm,
                               plan_backend=plan.backend, variant=plan.variant)
                elif "plans" in meta:
                    row.update(plans=meta["plans"], plan_summary=plan_summary(meta["plans"]))
                record["results"].append(row)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        fastconv.set_num_threads(n_before)
        if torch is not None:
            torch.set_num_threads(torch_before)
    record["peak_gflops"] = {str(k): v for k, v in record["peak_gflops"].items()}
    return record


def _what_ran(row):
    if row["algorithm"] == "torch":
        return "PyTorch"
    if "plan_summary" in row:
        return ", ".join(f"{k} x{v}" for k, v in sorted(row["plan_summary"].items(),
                                                         key=lambda kv: -kv[1])[:3])
    name = row["plan_algorithm"] + (f":{row['variant']}" if row.get("variant") else "")
    return name


def table(record):
    """The record's results as a fixed-width text table (one line per contender)."""
    m = record["machine"]
    peaks = ", ".join(f"{t} thread(s) {v:.0f}" for t, v in record["peak_gflops"].items())
    lines = [f"{m['cpu_model']} ({m['llvm_cpu']}), {m['usable_cores']} cores; FMA peak "
             f"measured in this run: {peaks} GFLOP/s; float32; medians of "
             f"{record['settings']['rounds']} interleaved rounds (noisy on a shared machine)"]
    head = (f"{'case':22s} {'op':13s} {'N':>3s} {'thr':>3s} {'algorithm':20s} "
            f"{'ran':28s} {'ms':>9s} {'GFLOP/s':>8s} {'%peak':>6s} {'vs torch':>8s}")
    lines += [head, "-" * len(head)]
    previous = None
    for r in record["results"]:
        group = (r["case"], r["op"], r["N"], r["threads"])
        if previous is not None and group != previous:
            lines.append("")
        previous = group
        alg = r["algorithm"] if r["backend"] in ("auto", "pytorch") else f"{r['algorithm']}/{r['backend']}"
        speed = f"{r['speedup_vs_torch']:7.2f}x" if r["speedup_vs_torch"] is not None else f"{'':8s}"
        pct = f"{r['percent_of_peak']:6.1f}" if r["percent_of_peak"] is not None else f"{'':6s}"
        lines.append(f"{r['case'][:22]:22s} {r['op']:13s} {r['N']:3d} {r['threads']:3d} "
                     f"{alg[:20]:20s} {_what_ran(r)[:28]:28s} {1e3 * r['median_s']:9.3f} "
                     f"{r['gflops']:8.1f} {pct} {speed}")
    if any(r["speedup_vs_torch"] is not None for r in record["results"]):
        lines.append("vs torch: median over rounds of PyTorch's time / this time (> 1: faster "
                     "than PyTorch)")
    return "\n".join(lines)


def plot(record, path):
    """A PNG of each case by algorithm: speed-up over PyTorch when PyTorch ran, else
    GFLOP/s as % of the FMA peak measured in the same run. One panel per thread count."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [r for r in record["results"] if r["algorithm"] != "torch"]
    vs_torch = all(r["speedup_vs_torch"] is not None for r in rows) and bool(rows)
    metric = "speedup_vs_torch" if vs_torch else "percent_of_peak"
    threads = sorted({r["threads"] for r in rows})
    cases = list(dict.fromkeys((r["case"], r["op"], r["N"]) for r in rows))
    algs = list(dict.fromkeys(r["algorithm"] if r["backend"] in ("auto", "pytorch")
                              else f"{r['algorithm']}/{r['backend']}" for r in rows))
    width = max(6.0, 0.25 * len(cases) * max(1, len(algs)) + 2)
    fig, axes = plt.subplots(len(threads) or 1, 1, figsize=(min(width, 40), 4.2 * max(1, len(threads))),
                             squeeze=False)
    bar_w = 0.8 / max(1, len(algs))
    for ax, t in zip(axes[:, 0], threads):
        for j, alg in enumerate(algs):
            xs, ys = [], []
            for i, c in enumerate(cases):
                for r in rows:
                    name = r["algorithm"] if r["backend"] in ("auto", "pytorch") else \
                        f"{r['algorithm']}/{r['backend']}"
                    if (r["case"], r["op"], r["N"]) == c and r["threads"] == t and name == alg:
                        xs.append(i + (j - (len(algs) - 1) / 2) * bar_w)
                        ys.append(r[metric])
            ax.bar(xs, ys, bar_w, label=alg)
        if vs_torch:
            ax.axhline(1.0, color="black", lw=0.8)
        ax.set_xticks(range(len(cases)))
        ax.set_xticklabels([f"{c}\n{op} N={N}" for c, op, N in cases], rotation=30, ha="right",
                           fontsize=7)
        ax.set_ylabel("speed-up over PyTorch (x)" if vs_torch else "% of FMA peak")
        peak = record["peak_gflops"].get(str(t))
        ax.set_title(f"{record['machine']['cpu_model']}, {t} thread(s)"
                     + ("" if vs_torch else f", FMA peak {peak:.0f} GFLOP/s"), fontsize=9)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return metric


def add_arguments(ap):
    """``fastconv bench``'s options, on the argparse parser ``ap``."""
    from ._dispatch import pairs
    from .networks import NETWORKS
    known_algs = sorted({a for op in CONV_OPS for a, _ in pairs(op)} | {"auto"})
    from ._engines import ENGINES, MODELS
    ap.add_argument("--model", metavar="NAME", choices=MODELS,
                    help=f"time a whole model ({', '.join(MODELS)}): "
                         f"fastconv.nn.optimize of fastconv.nn.models.NAME against PyTorch "
                         f"eager, ONNX Runtime and OpenVINO where installed, each in a "
                         f"process of its own, interleaved (default batch sizes 1 and 8, "
                         f"0.2 s a timing; fastconv._engines)")
    ap.add_argument("--engines", nargs="+", metavar="NAME", choices=ENGINES,
                    help=f"with --model: {', '.join(ENGINES)} (default: nn.optimize, torch, "
                         f"onnxruntime, openvino)")
    ap.add_argument("--quick", action="store_true",
                    help=f"a handful of layers ({', '.join(QUICK_LAYERS)}), forward only, and "
                         f"the {', '.join(QUICK_NETWORKS)} network, 3 rounds: about a minute "
                         f"with a warm JIT cache")
    ap.add_argument("--layers", nargs="*", metavar="NAME",
                    help="layers of fastconv.bench.LAYERS/ODD_LAYERS ('all'; 'none'); "
                         "default: all of LAYERS")
    ap.add_argument("--networks", nargs="*", metavar="NAME",
                    help=f"networks of fastconv.networks: {', '.join(NETWORKS)} ('all'; "
                         f"'none'); default: {', '.join(DEFAULT_NETWORKS)}")
    ap.add_argument("--ops", nargs="*", metavar="OP",
                    help=f"{', '.join(CONV_OPS)} (default: all three)")
    ap.add_argument("--algorithms", nargs="*", metavar="NAME",
                    help=f"{', '.join(known_algs)} (default: auto and every registered one but "
                         f"the reference)")
    ap.add_argument("--backends", nargs="*", metavar="NAME",
                    help="backends of the registry, e.g. numba (default: every available one)")
    ap.add_argument("--threads", nargs="*", type=int, metavar="T",
                    help="thread counts (default: fastconv's, i.e. the usable cores)")
    ap.add_argument("--batch", nargs="*", type=int, metavar="N", help="batch sizes (default: 1)")
    ap.add_argument("--rounds", type=int, help="interleaved rounds per case (default 5; 3 quick)")
    ap.add_argument("--min-time", type=float,
                    help="seconds each timing repeats its call for (default 0.02; 0.2 "
                         "with --model)")
    ap.add_argument("--settle", type=float, default=0.03,
                    help="seconds each timing first runs its call untimed (default 0.03); "
                         "longer outlasts the threads the contender before left polling "
                         "(BLAS's, OpenMP's, PyTorch's): with 0.3, ResNet-50 res3's 3x3/2 "
                         "input gradient on 2 threads measured Numba/Cython 0.94 against "
                         "0.83-0.89 (AMD EPYC Zen 3)")
    ap.add_argument("--no-torch", action="store_true", help="do not time PyTorch")
    ap.add_argument("--json", metavar="PATH", help="write the record (machine, versions, "
                    "commit, every case with its plan) as JSON here")
    ap.add_argument("--plot", metavar="PATH", help="write a PNG here: speed-up over PyTorch, "
                    "or %% of the FMA peak without PyTorch, by layer and algorithm (matplotlib)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    ap.add_argument("--quiet", action="store_true", help="no table")


def run_cli(args):
    """``fastconv bench`` with parsed ``args``; returns the exit status."""
    if args.model:
        from ._engines import run_model
        return run_model(args)
    if args.engines:
        raise ValueError("--engines goes with --model")
    if args.min_time is None:
        args.min_time = 0.02
    from ._dispatch import available_backends, pairs
    from .networks import NETWORKS
    all_layers = {L.name: L for L in LAYERS + ODD_LAYERS}
    if args.quick:
        layer_names = _split(args.layers, all_layers, "layer") if args.layers is not None \
            else list(QUICK_LAYERS)
        nets = _split(args.networks, NETWORKS, "network") if args.networks is not None \
            else list(QUICK_NETWORKS)
        ops = _split(args.ops, CONV_OPS, "op") if args.ops is not None else list(QUICK_OPS)
        rounds = args.rounds or 3
    else:
        layer_names = _split(args.layers, all_layers, "layer") if args.layers is not None \
            else [L.name for L in LAYERS]
        nets = _split(args.networks, NETWORKS, "network") if args.networks is not None \
            else list(DEFAULT_NETWORKS)
        ops = _split(args.ops, CONV_OPS, "op") if args.ops is not None else list(CONV_OPS)
        rounds = args.rounds or 5
    known_algs = sorted({a for op in CONV_OPS for a, _ in pairs(op)} | {"auto"})
    algorithms = _split(args.algorithms, known_algs, "algorithm") if args.algorithms else None
    backends = _split(args.backends, available_backends(), "backend") if args.backends else None
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise ValueError("--plot needs matplotlib: pip install 'fastconv[plot]'") from None
    record = run([all_layers[n] for n in layer_names], nets, ops, algorithms, backends,
                 args.threads, args.batch or [1], rounds, args.min_time,
                 use_torch=not args.no_torch, progress=not args.no_progress,
                 settle=args.settle)
    if not args.quiet:
        print(table(record))
        if not record["settings"]["torch"] and not args.no_torch:
            print("(PyTorch is not installed: no speed-ups; pip install torch==2.13.0)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(record, f, indent=1)
        print(f"JSON written to {args.json}")
    if args.plot:
        metric = plot(record, args.plot)
        print(f"plot ({'speed-up over PyTorch' if metric == 'speedup_vs_torch' else '% of FMA peak'})"
              f" written to {args.plot}")
    return 0


def main(argv=None):
    """``python -m fastconv.bench`` = ``fastconv bench``."""
    import argparse
    ap = argparse.ArgumentParser(prog="fastconv bench", description=__doc__.split("\n\n")[0])
    add_arguments(ap)
    return run_cli(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
