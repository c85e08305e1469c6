"""Two fastconv checkouts against each other, interleaved: did a change make anything
slower?

One worker process per checkout (``PYTHONPATH`` set to it) stays up for the whole run;
the driver asks them in turn to time the same case, alternating which goes first, so
both see the same machine state. Reported per case: each side's median time and the
median over rounds of old/new (> 1: the new checkout is faster).

Cases: every layer of ``fastconv.bench.LAYERS`` or those ``--layers`` names (a name,
or a geometry ``C/HW/K/RS/stride/pad``, with ``/groups`` after it for a grouped or
depthwise layer; forward, grad-input, grad-weight, ``auto``), and whole networks from
``fastconv/networks.py`` (forward), at the given batch sizes and thread counts. Only
the public API is called, so any two versions compare.

    python benchmarks/ab.py --old ../old --new . --threads 1 2 --batch 1 8
    python benchmarks/ab.py --old ../old --new . --networks resnet18 mobilenet_v2 --no-layers
"""
import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PASSES = ("fwd", "bwd_input", "bwd_weight")


# -- worker: runs inside one checkout ------------------------------------------------------

def _layer(name):
    """(layer, groups): a layer of ``fastconv.bench`` by name, or one given as
    ``C/HW/K/RS/stride/pad`` or ``C/HW/K/RS/stride/pad/groups`` (``3/224/32/3/2/1``:
    the 3->32 3x3/2 stem; ``144/56/144/3/1/1/144``: a depthwise layer)."""
    from fastconv.bench import Layer, layer
    if "/" not in name:
        return layer(name), 1
    values = [int(v) for v in name.split("/")]
    return Layer(name, *values[:6]), values[6] if len(values) > 6 else 1


def _serve():
    import numpy as np

    import fastconv
    from fastconv.bench import layer

    # the allocator's steady state on either side (fastconv.bench.steady_heap, which an
    # older checkout may lack): a freed block of just under 32 MiB
    block = np.empty((32 << 20) - (1 << 16), np.uint8)
    del block

    # the networks of the new checkout, run on either side (they use the public API only)
    import importlib.util
    spec_ = importlib.util.spec_from_file_location("ab_networks", os.environ["AB_NETWORKS"])
    networks = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(networks)

    prepared = {}

    def prepare(case):
        kind, name, pass_, N = case["kind"], case["name"], case.get("pass"), case["N"]
        rng = np.random.default_rng(0)
        if kind == "network":
            spec = networks.build(name)
            net = networks.fastconv_forward(spec)
            x = rng.standard_normal((N,) + spec["input"], dtype=np.float32)
            return lambda: net(x)
        L, groups = _layer(name)
        xs, ws = L.shapes(N)
        x = rng.standard_normal(xs, dtype=np.float32)
        w = rng.standard_normal((ws[0], ws[1] // groups) + ws[2:], dtype=np.float32)
        kw = dict(stride=L.stride, padding=L.pad, groups=groups)
        dy = rng.standard_normal(fastconv.conv2d(x, w, **kw).shape, dtype=np.float32)
        if pass_ == "fwd":
            return lambda: fastconv.conv2d(x, w, **kw)
        if pass_ == "bwd_input":
            return lambda: fastconv.conv2d_input(x.shape, w, dy, **kw)
        return lambda: fastconv.conv2d_weight(x, w.shape, dy, **kw)

    print(json.dumps({"ready": fastconv.__file__}), flush=True)
    for line in sys.stdin:
        case = json.loads(line)
        fastconv.set_num_threads(case["threads"])
        key = json.dumps(case, sort_keys=True)
        if key not in prepared:
            prepared.clear()                    # one case's arrays at a time
            prepared[key] = prepare(case)
            for _ in range(2):                  # compile, fault in the workspace
                prepared[key]()
        fn, calls, t0 = prepared[key], 0, time.perf_counter()
        while True:
            fn()
            calls += 1
            elapsed = time.perf_counter() - t0
            if elapsed >= case["min_time"]:
                break
        print(json.dumps({"seconds": elapsed / calls}), flush=True)


# -- driver ------------------------------------------------------------------------------

def _worker(checkout, networks):
    env = dict(os.environ, PYTHONPATH=os.path.abspath(checkout), AB_NETWORKS=networks)
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve"], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            cwd=os.path.abspath(checkout))
    ready = json.loads(proc.stdout.readline())
    return proc, ready["ready"]


def main(argv=None):
    import numpy as np
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--old", help="the baseline checkout")
    ap.add_argument("--new", default=os.path.dirname(HERE), help="the changed checkout")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--min-time", type=float, default=0.05,
                    help="seconds each timing repeats its call for")
    ap.add_argument("--layers", nargs="*", help="layer names or C/HW/K/RS/stride/pad[/groups] "
                    "geometries (default: every layer)")
    ap.add_argument("--no-layers", action="store_true")
    ap.add_argument("--passes", nargs="+", default=list(PASSES), choices=PASSES)
    ap.add_argument("--networks", nargs="*", default=[], help="networks to run forward")
    ap.add_argument("--json", help="write every timing to this file")
    args = ap.parse_args(argv)
    if args.serve:
        return _serve()
    from fastconv._engines import ask  # the workers' line protocol (the driver's side)
    if not args.old:
        ap.error("--old is required")
    sys.path.insert(0, os.path.abspath(args.new))
    from fastconv.bench import LAYERS, cpu_model

    cases = []
    names = [] if args.no_layers else (args.layers or [L.name for L in LAYERS])
    for threads in args.threads:
        for N in args.batch:
            cases += [dict(kind="network", name=n, N=N, threads=threads) for n in args.networks]
            cases += [dict(kind="layer", name=n, N=N, threads=threads, **{"pass": p})
                      for n in names for p in args.passes]
    networks = os.path.join(os.path.abspath(args.new), "fastconv", "networks.py")
    old, old_file = _worker(args.old, networks)
    new, new_file = _worker(args.new, networks)
    print(f"CPU: {cpu_model()}; old: {old_file}; new: {new_file}; {args.rounds} rounds, "
          f"interleaved (the first side alternates)", flush=True)
    print(f"{'case':44s} {'old ms':>9s} {'new ms':>9s} {'old/new':>8s}")
    results = []
    for case in cases:
        case = dict(case, min_time=args.min_time)
        t_old, t_new = [], []
        for r in range(args.rounds):
            order = [(old, t_old), (new, t_new)]
            for proc, times in (order if r % 2 == 0 else order[::-1]):
                times.append(ask(proc, case)["seconds"])
        t_old, t_new = np.array(t_old), np.array(t_new)
        ratio = float(np.median(t_old / t_new))
        label = (f"{case['name']} N={case['N']} t={case['threads']}"
                 + (f" {case['pass']}" if case["kind"] == "layer" else ""))
        print(f"{label:44s} {np.median(t_old) * 1e3:9.3f} {np.median(t_new) * 1e3:9.3f} "
              f"{ratio:8.3f}", flush=True)
        results.append(dict(case, old=t_old.tolist(), new=t_new.tolist(), ratio=ratio))
    for proc in (old, new):
        proc.stdin.close()
        proc.wait()
        proc.stdout.close()
    ratios = np.array([r["ratio"] for r in results])
    print(f"\nmedian old/new over {len(ratios)} cases: {np.median(ratios):.3f} "
          f"(min {ratios.min():.3f}, max {ratios.max():.3f})")
    for kind in ("network", "layer"):
        sub = [r["ratio"] for r in results if r["kind"] == kind]
        if sub:
            print(f"  {kind}s: median {np.median(sub):.3f} over {len(sub)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(cpu=cpu_model(), old=old_file, new=new_file, results=results), f, indent=1)


if __name__ == "__main__":
    main()
