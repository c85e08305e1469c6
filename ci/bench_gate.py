"""Performance regression gate: fails on a real slowdown, not on noise.

Each case (an op, an algorithm, a layer) is timed interleaved with an *anchor*, a
fixed run of fastconv's FMA probe (pure arithmetic, independent of which BLAS kernels
load), and scored as the median over rounds of ``time(case) / time(anchor)``. Machine
speed and background load scale both, so the score moves little when only the
machine changes. A case regresses when its score
exceeds the baseline's by more than the tolerance, *and* still does when measured
again from scratch (a transient load spike does not survive the second look).

    python ci/bench_gate.py run --out results.json          # measure
    python ci/bench_gate.py compare results.json ci/baseline.json
    python ci/bench_gate.py check ci/baseline.json           # measure, compare, re-check failures
"""
import argparse
import json
import platform
import sys

import fastconv  # noqa: I001  (first: it sets OpenBLAS/OpenMP thread settings)
import numpy as np

from fastconv.bench import _CHAINS, _LANES, _compiled_probe, interleaved, layer

ANCHOR_ITERATIONS = 200_000  # about 2 ms on the machine the baseline was recorded on
#: (name, op, algorithm, layer, batch); small enough for the whole gate to take ~1 min
CASES = [
    ("conv_fwd_im2col_res4", "conv2d", "im2col", "resnet50_res4_3x3", 1),
    ("conv_fwd_winograd_f4_res4", "conv2d", "winograd_f4", "resnet50_res4_3x3", 1),
    ("conv_fwd_direct_res3", "conv2d", "direct", "resnet50_res3_3x3", 1),
    ("conv_fwd_auto_cifar", "conv2d", "auto", "cifar_3x3", 8),
    ("conv_bwd_input_auto_res4", "conv2d_input", "auto", "resnet50_res4_3x3", 1),
    ("conv_bwd_weight_auto_res4", "conv2d_weight", "auto", "resnet50_res4_3x3", 1),
    ("conv_fwd_auto_conv1", "conv2d", "auto", "resnet50_conv1", 1),
    ("max_pool_fwd", "max_pool2d", "auto", "resnet50_res2_3x3", 8),
]


def _case_fn(op, algorithm, layer_name, N):
    L = layer(layer_name)
    rng = np.random.default_rng(0)
    xs, ws = L.shapes(N)
    x, w = rng.standard_normal(xs, dtype=np.float32), rng.standard_normal(ws, dtype=np.float32)
    kw = dict(stride=L.stride, padding=L.pad, algorithm=algorithm)
    if op == "conv2d":
        return lambda: fastconv.conv2d(x, w, **kw)
    dy = fastconv.conv2d(x, w, stride=L.stride, padding=L.pad)
    if op == "conv2d_input":
        return lambda: fastconv.conv2d_input(x.shape, w, dy, **kw)
    if op == "conv2d_weight":
        return lambda: fastconv.conv2d_weight(x, w.shape, dy, **kw)
    return lambda: fastconv.max_pool2d(x, 3, 2, 1, algorithm=algorithm)


def _available(op, algorithm):
    return algorithm == "auto" or any(a == algorithm for a, _ in fastconv.algorithms(op))


def measure(names=None, rounds=9):
    """Score of each case: median of per-round time(case) / time(anchor)."""
    probe = _compiled_probe()
    x, y = np.full(_LANES, 0.999, np.float32), np.full(_LANES, 0.001, np.float32)
    sink = np.zeros(1, np.float32)
    scores = {}
    for name, op, algorithm, layer_name, N in CASES:
        if (names and name not in names) or not _available(op, algorithm):
            continue
        t = interleaved({"case": _case_fn(op, algorithm, layer_name, N),
                         "anchor": lambda: probe(ANCHOR_ITERATIONS, x, y, sink)},
                        rounds=rounds, warmup=1, min_time=0.02)
        ratios = t["case"] / t["anchor"]
        scores[name] = dict(score=float(np.median(ratios)),
                            spread=float(np.median(np.abs(ratios / np.median(ratios) - 1))))
    return scores


def compare(results, baseline, tolerance):
    """Names of cases slower than the baseline by more than the tolerance (widened by
    the measured spread of both runs)."""
    slow = []
    for name, new in results.get("scores", results).items():
        old = baseline.get("scores", baseline).get(name)
        if old is None:
            continue
        # noisy runs get more room, up to double the tolerance's room at most
        allowed = 1 + tolerance + min(tolerance, 2 * (new["spread"] + old["spread"]))
        change = new["score"] / old["score"]
        flag = "SLOWER" if change > allowed else "ok"
        print(f"{name:30s} {old['score']:9.3f} -> {new['score']:9.3f}  x{change:5.2f} "
              f"(allowed x{allowed:4.2f})  {flag}")
        if change > allowed:
            slow.append(name)
    return slow


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run")
    run.add_argument("--out", required=True)
    cmp_ = sub.add_parser("compare")
    cmp_.add_argument("results")
    cmp_.add_argument("baseline")
    chk = sub.add_parser("check")
    chk.add_argument("baseline")
    for p in (run, chk):
        p.add_argument("--threads", type=int, default=2)
        p.add_argument("--rounds", type=int, default=9)
    for p in (cmp_, chk):
        p.add_argument("--tolerance", type=float, default=0.25)
    args = ap.parse_args(argv)
    if args.cmd in ("run", "check"):
        fastconv.set_num_threads(min(args.threads, fastconv.get_num_threads()))
    if args.cmd == "run":
        record = dict(threads=fastconv.get_num_threads(), machine=platform.machine(),
                      scores=measure(rounds=args.rounds))
        with open(args.out, "w") as f:
            json.dump(record, f, indent=1, sort_keys=True)
        print(json.dumps(record, indent=1, sort_keys=True))
        return 0
    baseline = json.load(open(args.baseline))
    if args.cmd == "compare":
        return 1 if compare(json.load(open(args.results)), baseline, args.tolerance) else 0
    slow = compare(measure(rounds=args.rounds), baseline, args.tolerance)
    if slow:
        print(f"re-measuring {len(slow)} slower case(s) from scratch")
        slow = compare(measure(slow, rounds=2 * args.rounds), baseline, args.tolerance)
    print("regression gate:", "FAILED: " + ", ".join(slow) if slow else "passed")
    return 1 if slow else 0


if __name__ == "__main__":
    sys.exit(main())
