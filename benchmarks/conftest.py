"""pytest-benchmark suites: the layer table x the registry x the ops, and the networks.

Not part of the test run (``testpaths = ["tests"]``); run them with

    pytest benchmarks/ --benchmark-only                                # the default set
    pytest benchmarks/ --benchmark-only --benchmark-json=out.json       # every figure as JSON
    pytest benchmarks/ --benchmark-only --fc-layers all --fc-batch 1 8 --fc-networks all

Each case records in ``extra_info``: GFLOP/s (the direct algorithm's multiply-adds x 2
per second of the median time), % of the FMA peak measured at the start of the session
(``fastconv.bench.fma_peak``), the plan that ran, the thread count and the CPU.

Options (defaults keep a run to a few minutes with a warm JIT cache):

    --fc-layers NAME...      layers of fastconv.bench (default: cifar_3x3 resnet50_res4_3x3
                             resnet50_res5_1x1; 'all': LAYERS and ODD_LAYERS)
    --fc-ops OP...           conv2d conv2d_input conv2d_weight (default: all three)
    --fc-algorithms NAME...  auto and registered algorithms (default: auto and every one
                             but the reference)
    --fc-batch N...          batch sizes (default: 1)
    --fc-networks NAME...    networks of fastconv.networks (default: mnist resnet18; 'none')
    --fc-threads T           fastconv's threads (default: all)
    --fc-no-torch            no PyTorch cases (default: PyTorch too when installed)
"""
import numpy as np
import pytest

import fastconv
from fastconv import bench
from fastconv.networks import NETWORKS

DEFAULT_LAYERS = ("cifar_3x3", "resnet50_res4_3x3", "resnet50_res5_1x1")
DEFAULT_NETWORKS = ("mnist", "resnet18")
ALL_LAYERS = {L.name: L for L in bench.LAYERS + bench.ODD_LAYERS}


def pytest_addoption(parser):
    g = parser.getgroup("fastconv benchmarks")
    g.addoption("--fc-layers", nargs="+", default=list(DEFAULT_LAYERS))
    g.addoption("--fc-ops", nargs="+", default=list(bench.CONV_OPS))
    g.addoption("--fc-algorithms", nargs="+", default=None)
    g.addoption("--fc-batch", nargs="+", type=int, default=[1])
    g.addoption("--fc-networks", nargs="+", default=list(DEFAULT_NETWORKS))
    g.addoption("--fc-threads", type=int, default=None)
    g.addoption("--fc-no-torch", action="store_true")


def _names(values, known, what):
    if values == ["all"]:
        return list(known)
    if values == ["none"]:
        return []
    unknown = [v for v in values if v not in known]
    if unknown:
        raise pytest.UsageError(f"unknown {what} {unknown}; known: {', '.join(known)}")
    return values


def _torch(config):
    if config.getoption("--fc-no-torch"):
        return None
    try:
        import torch
    except ImportError:
        return None
    return torch


def pytest_configure(config):
    threads = config.getoption("--fc-threads")
    if threads:
        fastconv.set_num_threads(threads)
    torch = _torch(config)
    if torch is not None:
        torch.set_num_threads(fastconv.get_num_threads())


def pytest_generate_tests(metafunc):
    config = metafunc.config
    if "layer_case" in metafunc.fixturenames:
        layers = _names(config.getoption("--fc-layers"), ALL_LAYERS, "layer")
        ops = _names(config.getoption("--fc-ops"), bench.CONV_OPS, "op")
        algorithms = config.getoption("--fc-algorithms")
        cases, ids = [], []
        for N in config.getoption("--fc-batch"):
            for name in layers:
                L = ALL_LAYERS[name]
                for op in ops:
                    pairs = bench.layer_contenders(op, L.params(N), algorithms)
                    if _torch(config) is not None and (algorithms is None or "torch" in algorithms):
                        pairs.append(("torch", "pytorch"))
                    for a, b in pairs:
                        cases.append((L, op, N, a, b))
                        ids.append(f"{name}-{op}-N{N}-{a}" + ("" if b in ("auto", "pytorch")
                                                               else f"/{b}"))
        metafunc.parametrize("layer_case", cases, ids=ids)
    if "network_case" in metafunc.fixturenames:
        nets = _names(config.getoption("--fc-networks"), NETWORKS, "network")
        cases = [(name, N, engine) for N in config.getoption("--fc-batch") for name in nets
                 for engine in (["fastconv"] + (["torch"] if _torch(config) is not None else []))]
        metafunc.parametrize("network_case", cases,
                             ids=[f"{n}-N{N}-{e}" for n, N, e in cases])


@pytest.fixture(scope="session")
def peak():
    """The FMA peak in GFLOP/s on fastconv's threads, measured once per session."""
    return bench.fma_peak(fastconv.get_num_threads())


@pytest.fixture(scope="session")
def torch_module(request):
    torch = _torch(request.config)
    if torch is None:
        pytest.skip("PyTorch is not installed (pip install torch==2.13.0)")
    return torch


@pytest.fixture
def record(benchmark, peak):
    """``record(flops, plan)`` after ``benchmark(...)``: GFLOP/s, % of peak and the
    plan into ``benchmark.extra_info``."""
    machine = bench.machine_info()

    def record_(flops, plan):
        stats = getattr(benchmark, "stats", None)
        median = stats.stats.median if stats is not None else None
        gflops = flops / median / 1e9 if median else None
        benchmark.extra_info.update(
            gflops=gflops, percent_of_peak=100 * gflops / peak if gflops else None,
            fma_peak_gflops=peak, flops=int(flops), plan=plan,
            threads=fastconv.get_num_threads(), cpu=machine["cpu_model"],
            llvm_cpu=machine["llvm_cpu"])
    return record_


def warm(fn, calls=2):
    """Call ``fn`` a few times untimed (JIT compilation, first-touch of workspaces)."""
    for _ in range(calls):
        fn()
    return fn


np.seterr(all="ignore")
