"""Whole networks (fastconv.networks), forward, fastconv against PyTorch (see conftest.py).

    pytest benchmarks/test_bench_networks.py --benchmark-only --fc-networks resnet50 --fc-batch 8
"""
from conftest import warm

from fastconv import bench


def test_network(benchmark, record, network_case, request):
    name, N, engine = network_case
    torch = request.getfixturevalue("torch_module") if engine == "torch" else None
    fn, flops, plans, torch_fn = bench.network_fn(name, N, torch)
    benchmark.group = f"{name} N={N}"
    if engine == "torch":
        fn, summary = torch_fn, "PyTorch"
    else:
        summary = ", ".join(f"{k} x{v}" for k, v in bench.plan_summary(plans).items())
    benchmark(warm(fn))
    record(flops, summary)
    benchmark.extra_info["convolutions"] = len(plans)
