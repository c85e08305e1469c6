"""fastconv's convolutions against PyTorch 2.13 CPU on the layers of PERFORMANCE.md (issue 3).

For each layer, pass (forward, grad-input, grad-weight), batch and thread count, runs
PyTorch and fastconv (``auto``, and with ``--algorithms`` each registered algorithm)
interleaved in one process, float32, NCHW arrays in and out (layout changes count on
both sides), and prints the median GFLOP/s of each and the median per-round ratio
PyTorch time / fastconv time (> 1: fastconv faster). Also: the FMA peak measured in
the same run and the direct kernel's share of it on ResNet-50 res3 3x3 with N=8, a
depthwise layer, and (``--accuracy``) each algorithm's error against the float64
reference.

    python benchmarks/bench_conv.py                      # all layers, N=1 and 8, 1 and 2 threads
    python benchmarks/bench_conv.py --threads 2 --batch 8 --passes fwd --algorithms
    python benchmarks/bench_conv.py --accuracy --layers resnet50_res4_3x3
"""
import argparse
import json
import sys

import fastconv  # noqa: I001  (first: it sets OpenBLAS/OpenMP thread settings)
import numpy as np

from fastconv import _plan, reference
from fastconv.bench import LAYERS, ODD_LAYERS, Layer, fma_peak, interleaved, layer, median_ratio

PASSES = {"fwd": "conv2d", "bwd_input": "conv2d_input", "bwd_weight": "conv2d_weight"}
DEPTHWISE = Layer("depthwise_3x3", 256, 28, 256, 3, 1, 1)
#: the layer kinds of the issue on real networks that LAYERS lacks: ResNet's 1x1/2
#: shortcuts, a 3->32 3x3/2 RGB stem, a 5x5 layer, a depthwise 3x3/2
KINDS = [
    Layer("resnet18_down_1x1s2", 64, 56, 128, 1, 2, 0),
    Layer("resnet50_down_1x1s2", 256, 56, 512, 1, 2, 0),
    Layer("rgb_3x3s2_3_32", 3, 224, 32, 3, 2, 1),
    Layer("conv5x5_32_64", 32, 28, 64, 5, 1, 2),
    Layer("depthwise_3x3s2", 144, 56, 144, 3, 2, 1),
]
#: the depthwise layers' groups (one channel each); timed forward only
GROUPS = {DEPTHWISE.name: DEPTHWISE.C, "depthwise_3x3s2": 144}


def fastconv_call(pass_, x, w, dy, L, groups, algorithm):
    kw = dict(stride=L.stride, padding=L.pad, groups=groups, algorithm=algorithm)
    if pass_ == "fwd":
        return lambda: fastconv.conv2d(x, w, **kw)
    if pass_ == "bwd_input":
        return lambda: fastconv.conv2d_input(x.shape, w, dy, **kw)
    return lambda: fastconv.conv2d_weight(x, w.shape, dy, **kw)


def torch_call(torch, pass_, x, w, dy, L, groups):
    tx, tw, tdy = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(dy)
    args = dict(stride=L.stride, padding=L.pad, groups=groups)
    if pass_ == "fwd":
        return lambda: torch.nn.functional.conv2d(tx, tw, None, **args).numpy()
    if pass_ == "bwd_input":
        return lambda: torch.nn.grad.conv2d_input(tx.shape, tw, tdy, **args).numpy()
    return lambda: torch.nn.grad.conv2d_weight(tx, tw.shape, tdy, **args).numpy()


def contenders_for(op, p, with_algorithms):
    names = ["auto"]
    if with_algorithms:
        names += [a for a, b in fastconv.algorithms(op)
                  if a != "reference" and _plan.supports(a, p)]
    return names


def run_layer(torch, L, N, pass_, rounds, with_algorithms, groups=1):
    rng = np.random.default_rng(0)
    weight_shape = (L.K, L.C // groups, L.RS, L.RS)
    x = rng.standard_normal((N, L.C, L.HW, L.HW), dtype=np.float32)
    w = rng.standard_normal(weight_shape, dtype=np.float32)
    p = fastconv._geometry.conv_params(L.name, x.shape, w.shape, L.stride, L.pad, 1, groups)
    dy = rng.standard_normal(p.output_shape, dtype=np.float32)
    op = PASSES[pass_]
    fns = {name: fastconv_call(pass_, x, w, dy, L, groups, name)
           for name in contenders_for(op, p, with_algorithms)}
    if torch is not None:
        fns["torch"] = torch_call(torch, pass_, x, w, dy, L, groups)
    times = interleaved(fns, rounds=rounds, warmup=1, min_time=0.03, warmup_time=0.3)
    row = {name: p.flops / np.median(t) / 1e9 for name, t in times.items()}
    ratios = {name: median_ratio(times, "torch", name) for name in fns if name != "torch"} \
        if torch is not None else {}
    chosen = _plan.make(op, p, np.float32)
    return row, ratios, f"{chosen.algorithm}:{chosen.variant}" if chosen.variant else chosen.algorithm


def accuracy(layers, N=1):
    print("\nAccuracy, float32 against the float64 reference: max |err| / max |output|")
    print(f"{'layer':22s} " + " ".join(f"{a:>12s}" for a in ("im2col", "direct", "winograd_f2", "winograd_f4")))
    results = {}
    for L in layers:
        rng = np.random.default_rng(1)
        xs, ws = L.shapes(N)
        x, w = rng.standard_normal(xs), rng.standard_normal(ws)
        p = L.params(N)
        want = np.empty(p.output_shape)
        reference.conv2d(x, w, p, want)
        scale = np.abs(want).max()
        row = {}
        for alg, backend in fastconv.algorithms("conv2d"):
            if alg == "reference" or not _plan.supports(alg, p):
                continue
            got = fastconv.conv2d(x.astype(np.float32), w.astype(np.float32), stride=L.stride,
                                  padding=L.pad, algorithm=alg, backend=backend)
            row[alg] = float(np.abs(got - want).max() / scale)
        results[L.name] = row
        print(f"{L.name:22s} " + " ".join(
            f"{row[a]:12.1e}" if a in row else f"{'-':>12s}"
            for a in ("im2col", "direct", "winograd_f2", "winograd_f4")), flush=True)
    return results


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--passes", default="fwd,bwd_input,bwd_weight")
    ap.add_argument("--layers", default="",
                    help="comma-separated names (default: all, odd channels, depthwise_3x3 "
                         "and the network kinds: " + ", ".join(L.name for L in KINDS) + ")")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--algorithms", action="store_true", help="also time each algorithm forced")
    ap.add_argument("--accuracy", action="store_true", help="only print the accuracy table")
    ap.add_argument("--json", help="write all figures to this file")
    args = ap.parse_args(argv)
    extra = {L.name: L for L in [DEPTHWISE] + KINDS}
    layers = ([extra[n] if n in extra else layer(n) for n in args.layers.split(",")]
              if args.layers else LAYERS + ODD_LAYERS + [DEPTHWISE] + KINDS)
    if args.accuracy:
        res = accuracy([L for L in layers if L.name not in GROUPS])   # dense layers only
        if args.json:
            json.dump(res, open(args.json, "w"), indent=1)
        return
    try:
        import torch
    except ImportError:
        torch = None
        print("PyTorch not installed: no ratios (pip install torch==2.13.0)", file=sys.stderr)
    record = []
    for threads in map(int, args.threads.split(",")):
        fastconv.set_num_threads(threads)
        if torch is not None:
            torch.set_num_threads(threads)
        peak = fma_peak(threads)
        print(f"\n== {threads} thread(s): FMA peak measured now {peak:.0f} GFLOP/s ==")
        for N in map(int, args.batch.split(",")):
            for pass_ in args.passes.split(","):
                print(f"\n-- {pass_}, N={N}: GFLOP/s (median) and PyTorch time / fastconv time --")
                for L in layers:
                    if L.name in GROUPS and pass_ != "fwd":    # its bar is forward only
                        continue
                    groups = GROUPS.get(L.name, 1)
                    row, ratios, chosen = run_layer(torch, L, N, pass_, args.rounds,
                                                    args.algorithms, groups)
                    cells = "  ".join(f"{k} {v:6.1f}" for k, v in row.items())
                    rcells = "  ".join(f"{k} {v:5.2f}x" for k, v in ratios.items())
                    print(f"{L.name:22s} auto={chosen:12s} {cells}   | {rcells}", flush=True)
                    record.append(dict(threads=threads, N=N, pass_=pass_, layer=L.name,
                                       auto=chosen, gflops=row, ratio=ratios, peak=peak))
        if "fwd" in args.passes.split(","):
            L = layer("resnet50_res3_3x3")
            row, _, _ = run_layer(None, L, 8, "fwd", args.rounds, True)
            peak = fma_peak(threads)
            if "direct" in row:
                print(f"\ndirect forward, {L.name}, N=8: {row['direct']:.0f} GFLOP/s = "
                      f"{100 * row['direct'] / peak:.0f}% of the FMA peak measured now ({peak:.0f})")
                record.append(dict(threads=threads, direct_res3_n8=row["direct"], peak=peak))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(record, f, indent=1)


if __name__ == "__main__":
    main()
