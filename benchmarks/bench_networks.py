"""Whole networks: fastconv's functional API against PyTorch eager, ONNX Runtime and
OpenVINO, with the same weights (issue 13's yardstick).

The ``fastconv`` engine is ``fastconv.networks.fastconv_forward``: weights prepared
once, the input converted to channels last once, bias, residual and activation fused
into each convolution. ``torch`` is PyTorch eager as a user writes it (NCHW);
``torch_cl`` the same module and input in PyTorch's ``channels_last`` memory format.

Networks from ``fastconv/networks.py`` (BatchNorm folded, random He-init weights,
float32). The ``nn.optimize`` engine runs the same weights through
``fastconv.nn.optimize(fastconv.nn.models.<network>())`` (ResNet-18/50, MobileNet-v2:
the weights loaded by ``load_state_dict``, each bias as a BatchNorm that optimize folds
back). Each engine runs in its own process, all alive for the whole run; the driver
asks them in turn to time one forward pass (rotating which goes first, with a pause
between engines so that no engine's idle threads spin into the next one's turn; ONNX
Runtime's spinning is off), round by round,
and reports each engine's median and the median per-round ratio engine time /
fastconv time (> 1: fastconv faster). Outputs are checked against fastconv's once per
network. PyTorch, ONNX Runtime and OpenVINO are optional: an engine that is not
installed is skipped (ONNX Runtime and OpenVINO run the ONNX export of the PyTorch
network; OpenVINO with ``INFERENCE_PRECISION_HINT=f32``, since it defaults to bf16 on
CPUs with AMX).

``--layers`` adds a per-layer breakdown of fastconv's time in the network (warmed, the
median of ``--rounds`` passes): each convolution, the plan it ran, its GFLOP/s and % of
the FMA peak measured in the same run, beside PyTorch's time for the same layer in its
network, the two engines' passes interleaved, and the median per-pass ratio. ``--steps`` lists
``nn.optimize``'s steps, each timed as the network runs it and again repeated at once
(``OptimizedModel.profile``), and ONNX Runtime's nodes as its profiler times them.

    python benchmarks/bench_networks.py                        # resnet18, resnet50, mobilenet_v2; N=1, 8; 2 and 1 threads
    python benchmarks/bench_networks.py --networks resnet18 --batch 1 --threads 2 --layers
    python benchmarks/bench_networks.py --networks resnet50 --batch 1 --threads 2 \
        --engines fastconv nn.optimize onnxruntime --rounds 5 --steps
"""
import argparse
import json

from fastconv._engines import ENGINES, MODELS, ask, available, compare, format_header, \
    format_row, machine, start, stop


def _print_steps(procs, name, N, threads, rounds):
    """``--steps``: nn.optimize's steps (each in the network, then repeated at once) and
    ONNX Runtime's nodes, with their sums; returns them for the JSON."""
    req = dict(network=name, N=N, threads=threads, what="steps", rounds=rounds)
    out = dict(network=name, N=N, threads=threads)
    if "nn.optimize" in procs and name in MODELS:
        rows = ask(procs["nn.optimize"], req)["steps"]
        net, rep = sum(r[2] for r in rows), sum(r[3] for r in rows)
        print(f"\n{name} N={N}, {threads} thread(s): nn.optimize step by step, median ms "
              f"in the network / repeated at once: {net:.2f} / {rep:.2f} "
              f"(the network costs {net - rep:.2f} ms more, {net / rep - 1:.0%})")
        for label, plan, ms, again in rows:
            print(f"  {ms:8.3f} {again:8.3f}  {label[:64]:64s} {plan}")
        out["nn.optimize"] = rows
    if "onnxruntime" in procs:
        rows = ask(procs["onnxruntime"], req)["steps"]
        print(f"\n{name} N={N}, {threads} thread(s): ONNX Runtime node by node (its "
              f"profiler), median ms: {sum(r[3] for r in rows):.2f} in all")
        for node, op, shapes, ms in rows:
            print(f"  {ms:8.3f}  {op:18s} {shapes}")
        out["onnxruntime"] = rows
    return out


def _print_layers(procs, name, N, threads, rounds):
    """``--layers``: fastconv's time per convolution in the network, its plan, GFLOP/s
    and share of the FMA peak, beside PyTorch's time for the same layer in its network
    (where the torch engine runs): ``rounds`` passes of each, interleaved pass by pass
    (the first engine alternating), each engine's median and the median per-pass
    ratio PyTorch / fastconv; returns them for the JSON."""
    import numpy as np
    req = dict(network=name, N=N, threads=threads, what="layers", rounds=1)
    engines = ["fastconv"] + (["torch"] if "torch" in procs else [])
    reps = {e: [] for e in engines}
    for r in range(rounds):
        for e in engines[r % len(engines):] + engines[:r % len(engines)]:
            reps[e].append(ask(procs[e], req))
    passes = {e: {} for e in engines}          # engine -> layer -> seconds per pass
    for e in engines:
        for rep in reps[e]:
            for row in rep["layers"]:
                passes[e].setdefault(row[0], []).append(row[-1][0])
    info = {row[0]: row[1:3] for row in reps["fastconv"][0]["layers"]}    # plan, flops
    ours = {k: (*info[k], np.array(t)) for k, t in passes["fastconv"].items()}
    theirs = {k: np.array(t) for k, t in passes.get("torch", {}).items()}
    peak = reps["fastconv"][0]["peak"]
    print(f"\n{name} N={N}, {threads} thread(s): fastconv per layer, median of {rounds} "
          f"passes (FMA peak {peak:.0f} GFLOP/s measured now); PyTorch's same layer with "
          f"the residual add and activation after it, its passes interleaved with "
          f"fastconv's, and the median per-pass ratio PyTorch / fastconv")
    total = sum(float(np.median(t)) for _, _, t in ours.values())
    slower, layers = [], []
    for layer, (plan, flops, t) in ours.items():
        seconds = float(np.median(t))
        gf = flops / seconds / 1e9
        vs = f"{'-':>11s} {'-':>5s}"
        if layer in theirs:
            ratio = float(np.median(theirs[layer] / t))
            vs = f"{np.median(theirs[layer]) * 1e3:8.3f} ms {ratio:5.2f}"
            if ratio < 1:
                slower.append(f"{layer} ({ratio:.2f})")
        print(f"  {layer:24s} {seconds * 1e3:8.3f} ms {seconds / total:6.1%} {vs} "
              f"{gf:7.1f} GFLOP/s {gf / peak:6.1%}  {plan}")
        layers.append([layer, plan, flops, seconds])
    if theirs:
        print(f"  sum {total * 1e3:.2f} ms, PyTorch's "
              f"{sum(float(np.median(t)) for t in theirs.values()) * 1e3:.2f} ms; slower "
              f"than PyTorch's: {', '.join(slower) or 'none'}")
    return dict(network=name, N=N, threads=threads, layers=layers, peak=peak,
                torch_layers={k: float(np.median(t)) for k, t in theirs.items()})


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--networks", nargs="+", default=["resnet18", "resnet50", "mobilenet_v2"])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    ap.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--min-time", type=float, default=0.2)
    ap.add_argument("--pause", type=float, default=0.3,
                    help="seconds between engines, for the last one's threads to go idle")
    ap.add_argument("--layers", action="store_true", help="fastconv's per-layer breakdown, beside PyTorch's")
    ap.add_argument("--steps", action="store_true",
                    help="nn.optimize step by step, in the network and repeated at once, and "
                         "ONNX Runtime node by node (its profiler)")
    ap.add_argument("--json", help="write the results to this file")
    args = ap.parse_args(argv)
    engines = [e for e in args.engines if available(e)]
    info = machine()
    print(f"CPU: {info['cpu']} ({info['cores']} cores; {' '.join(info['features'])})")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()))
    skipped = [e for e in args.engines if e not in engines]
    if skipped:
        print(f"not installed, skipped: {', '.join(skipped)}")
    procs = {e: start(e) for e in engines}
    results = []

    def show(row):
        print(format_row(row, engines), flush=True)
        bad = {e: v for e, v in row["max_rel_error"].items() if v > 1e-4}
        if bad:
            print(f"  output differs from {row['ratio_to']}'s: {bad}")
    try:
        for threads in args.threads:
            print("\n" + format_header(engines, threads, args.rounds))
            results += compare(procs, engines, args.networks, args.batch, [threads],
                               args.rounds, args.min_time, args.pause, on_row=show)
            if args.layers and "fastconv" in procs:
                for name in args.networks:
                    for N in args.batch:
                        results.append(_print_layers(procs, name, N, threads, args.rounds))
            if args.steps:
                for name in args.networks:
                    for N in args.batch:
                        results.append(_print_steps(procs, name, N, threads, args.rounds))
    finally:
        for proc in procs.values():
            stop(proc)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(machine=info, results=results), f, indent=1)


if __name__ == "__main__":
    main()
