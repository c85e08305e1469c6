"""The layer table x the registry x the ops, as pytest-benchmark cases (see conftest.py).

    pytest benchmarks/test_bench_layers.py --benchmark-only --benchmark-group-by=group
"""
from conftest import warm

from fastconv import bench


def test_layer(benchmark, record, layer_case, request):
    L, op, N, algorithm, backend = layer_case
    operands = bench.layer_operands(L, N)
    benchmark.group = f"{L.name} {op} N={N}"
    if algorithm == "torch":
        torch = request.getfixturevalue("torch_module")
        fn, plan = bench.torch_layer_fn(torch, op, L, operands), "PyTorch"
    else:
        fn, _, p = bench.layer_fn(op, L, N, algorithm, backend, operands)
        plan = repr(p)
    benchmark(warm(fn))
    record(operands[0].flops, plan)
