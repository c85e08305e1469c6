"""Every plan autotune may pick against the one the rules pick: where does the selector
leave speed behind on this CPU?

For each layer, batch size and pass, the candidates of ``fastconv._plan.candidates``
(each registered algorithm on each backend, with the variants autotune forces) are
timed interleaved beside ``auto``'s plan, in one process, on random data. Printed: the
cells where a candidate ran more than ``--min-gain`` times faster than auto's plan.
The selector's thresholds (``fastconv/_tuning.py``) were measured on particular CPUs;
this is how to check them on another (then confirm a finding in separate processes with
``benchmarks/ab.py`` before changing a rule: one process's timings are noisy).

    python benchmarks/bench_plans.py --threads 1 2 --batch 1 8
    python benchmarks/bench_plans.py --layers resnet50_res3_3x3 128/28/192/3/1/1 --json plans.json
"""
import fastconv  # noqa: I001  (first: it sets OpenBLAS/OpenMP thread settings)
import argparse
import json

import numpy as np

from ab import PASSES, _layer
from bench_conv import KINDS
from fastconv import _plan
from fastconv._geometry import conv_params
from fastconv.bench import LAYERS, ODD_LAYERS, cpu_model, interleaved

OPS = dict(zip(PASSES, ("conv2d", "conv2d_input", "conv2d_weight")))


def _name(plan):
    return f"{plan.algorithm}:{plan.variant or '-'}:{plan.backend}"


def time_cell(L, N, op, rounds, min_time, groups=1):
    """{"auto": auto's plan, "times": {plan name: median ms}} of every candidate of
    ``op`` on layer ``L`` at batch ``N`` (auto's plan among them)."""
    x, w = L.shapes(N)
    p = conv_params(L.name, x, (w[0], w[1] // groups) + w[2:], L.stride, L.pad,
                    groups=groups)
    auto = _plan.make(op, p, np.float32)
    plans = _plan.candidates(op, p, np.float32)
    if auto not in plans:
        plans = [auto] + plans
    a, b, out = _plan._operands(op, p, np.float32)
    times = interleaved({_name(pl): (lambda pl=pl: _plan.run(pl, a, b, p, out))
                         for pl in plans}, rounds=rounds, warmup=1, min_time=min_time)
    return {"auto": _name(auto),
            "times": {k: float(np.median(v)) * 1e3 for k, v in times.items()}}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--passes", nargs="+", default=list(PASSES), choices=PASSES)
    ap.add_argument("--layers", nargs="*", help="layer names or C/HW/K/RS/stride/pad "
                    "geometries (default: the layer table's, without the depthwise ones)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--min-time", type=float, default=0.02,
                    help="seconds each timing repeats its call for")
    ap.add_argument("--min-gain", type=float, default=1.1,
                    help="print cells where a candidate is this much faster than auto's")
    ap.add_argument("--json", help="write every cell's timings to this file")
    args = ap.parse_args(argv)
    layers = ([_layer(n) for n in args.layers] if args.layers
              else [(L, 1) for L in LAYERS + ODD_LAYERS + KINDS if "depthwise" not in L.name])
    print(f"CPU: {cpu_model()}; candidates against auto's plan, median ms, {args.rounds} "
          f"rounds interleaved; cells with a candidate {args.min_gain}x faster:", flush=True)
    cells = []
    for threads in args.threads:
        fastconv.set_num_threads(threads)
        for L, groups in layers:
            for N in args.batch:
                for pass_ in args.passes:
                    cell = time_cell(L, N, OPS[pass_], args.rounds, args.min_time, groups)
                    cell.update(layer=L.name, N=N, threads=threads, **{"pass": pass_})
                    cells.append(cell)
                    t = cell["times"]
                    best = min(t, key=t.get)
                    gain = t[cell["auto"]] / t[best]
                    if gain >= args.min_gain:
                        print(f"t={threads} N={N} {pass_:10s} {L.name:22s} auto "
                              f"{cell['auto']:30s} {t[cell['auto']]:8.3f}  best {best:30s} "
                              f"{t[best]:8.3f}  {gain:.2f}x", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cpu": cpu_model(), "cells": cells}, f, indent=1)
    return cells


if __name__ == "__main__":
    main()
