"""Performance regression gate: fails the build on a real slowdown, not on noise.

What it measures. A few small *cases*, each one kernel of the registry (an op, an
algorithm, a backend) on one layer, plus one small network. Each case is timed
interleaved with an *anchor*, a fixed run of fastconv's FMA probe (pure arithmetic,
independent of which BLAS loads), and scored as the median over rounds of
``time(case) / time(anchor)``: the *normalised time*. Times are the process's CPU time
(``time.process_time``), not wall time: on a shared machine wall time also counts the
slices other processes had the cores. Machine speed scales case and anchor alike, so
the score moves little when only the machine's state changes. Within one process the
score repeats to 1-4%; between processes it does not always (under a neighbour's load
memory-bound cases ran up to 2x slower in some processes, all calls alike, while the
anchor did not; direct's kernels ran 1.4-1.8x slower in some processes on an Intel
Xeon), so each measurement takes the best of several fresh processes
(``--processes``). Cases run on one thread by default: on shared 2-core runners a second
thread mostly measures the neighbours (thread scaling is what ``fastconv bench`` is for).

How it decides. Baselines are kept per CPU model in ``ci/baselines/<slug>.json`` (slug:
``fastconv.bench.cpu_slug()``, the model name plus LLVM's core name). A case is
*suspect* when its score exceeds the baseline's by more than the threshold (default
20%), widened by the two scores' standard errors (by at most ``--noise-cap``, 5 points:
a 25% slowdown is always suspect).
A suspect case is measured again from scratch, in new processes, after a pause, up to
``--retries`` (3) times, keeping its best score; it fails only when that is still over
the allowance (load spikes and unlucky processes do not survive a second look; a real
slowdown does). With no baseline for this CPU (or one timed on wall time) the gate
records one (best of 5 processes), passes, and says so.

    python ci/bench_gate.py check                      # measure, compare with ci/baselines/<slug>.json
    python ci/bench_gate.py check --update-baseline    # measure and record the baseline
    python ci/bench_gate.py check --threshold 0.3 --report gate.md
    python ci/bench_gate.py run --out new.json         # measure only
    python ci/bench_gate.py compare new.json old.json  # judge two result files
    python ci/bench_gate.py selftest                   # a kernel made 30% slower must fail, named

Test hook. ``FASTCONV_GATE_SLOWDOWN="PATTERN:FACTOR[,PATTERN:FACTOR]"`` makes the
gate's own timing harness slower for the matching cases (and only there: fastconv
never reads it): after each call it spins for ``(FACTOR - 1)`` times the call's
CPU time (so the case's measured time grows by FACTOR, whatever the load). PATTERN is
an fnmatch pattern on the case name or on its kernel ``op/algorithm/backend``, e.g.
``FASTCONV_GATE_SLOWDOWN=conv2d/direct/numba:1.3``.

Every command writes a Markdown report (``--report PATH``; also appended to
``$GITHUB_STEP_SUMMARY`` when that is set) naming each case's kernel, its old and new
normalised time and the change.
"""
import argparse
import fnmatch
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import fastconv  # noqa: I001  (first: it sets OpenBLAS/OpenMP thread settings)
import numpy as np

from fastconv import bench
from fastconv.bench import _LANES, _compiled_probe, interleaved, layer

HERE = Path(__file__).resolve().parent
BASELINES = HERE / "baselines"
SCHEMA = "fastconv-gate/2"
SLOWDOWN_ENV = "FASTCONV_GATE_SLOWDOWN"
ANCHOR_ITERATIONS = 200_000  # about 1-2 ms of FMAs on the CPUs seen so far
DEFAULT_THRESHOLD = 0.20
#: the most the measured noise may widen the threshold by, in the CLI: with 20%, a
#: slowdown of 25% or more fails whatever the noise (re-measurement handles the rest)
DEFAULT_NOISE_CAP = 0.05
DEFAULT_ROUNDS = 15
DEFAULT_MIN_TIME = 0.01      # seconds each timing repeats its call for
BASELINE_PROCESSES = 5       # fresh processes a recorded baseline takes the best of
#: what the gate times with: the process's CPU time, not wall time. On a shared machine
#: wall time counts the slices other processes had the cores (scores of one case moved
#: 1.5-3x between processes under a load of 4 on 2 cores); CPU time does not.
CLOCK = time.process_time
CLOCK_NAME = "process_time"
CHECK_PROCESSES = 3          # ... and a check, and each re-measurement of a suspect
#: a case's change is also judged against the median change of the others, when there
#: are at least this many (a neighbour's load slows the memory-bound cases together) ...
MIN_PEERS = 4
#: ... unless that median itself is over 1 + this: then every case counts in full
DEFAULT_GLOBAL_THRESHOLD = 0.5
DEFAULT_RETRIES = 3          # re-measurements of a suspect before it fails
RETRY_PAUSE = 10.0           # seconds before each (a neighbour's burst of load may pass)


@dataclass(frozen=True)
class Case:
    name: str
    op: str          # an op of the registry, or "network"
    algorithm: str
    backend: str
    what: str        # a layer of fastconv.bench, or a network of fastconv.networks
    N: int

    @property
    def kernel(self):
        """The kernel the case times: ``op/algorithm/backend`` (networks: ``network/NAME``)."""
        if self.op == "network":
            return f"network/{self.what}"
        return f"{self.op}/{self.algorithm}/{self.backend}"


#: small enough for the whole gate to take well under a minute with a warm JIT cache
CASES = [
    Case("conv_fwd_im2col_res4", "conv2d", "im2col", "numba", "resnet50_res4_3x3", 1),
    Case("conv_fwd_direct_res3", "conv2d", "direct", "numba", "resnet50_res3_3x3", 1),
    Case("conv_fwd_winograd_f4_res4", "conv2d", "winograd_f4", "numba", "resnet50_res4_3x3", 1),
    Case("conv_fwd_winograd_f2_cifar", "conv2d", "winograd_f2", "numba", "cifar_3x3", 1),
    Case("conv_bwd_input_direct_res4", "conv2d_input", "direct", "numba", "resnet50_res4_3x3", 1),
    Case("conv_bwd_weight_im2col_res4", "conv2d_weight", "im2col", "numba", "resnet50_res4_3x3", 1),
    Case("max_pool_fwd_direct", "max_pool2d", "direct", "numba", "resnet50_res2_3x3", 2),
    Case("avg_pool_bwd_direct", "avg_pool2d_backward", "direct", "numba", "resnet50_res2_3x3", 2),
    Case("net_mnist_fwd", "network", "auto", "auto", "mnist", 8),
]


# -- the test hook ------------------------------------------------------------------------


def slowdowns(text=None):
    """``[(pattern, factor)]`` from ``$FASTCONV_GATE_SLOWDOWN`` (or ``text``)."""
    text = os.environ.get(SLOWDOWN_ENV, "") if text is None else text
    out = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        pattern, sep, factor = item.rpartition(":")
        try:
            value = float(factor)
        except ValueError:
            value = None
        if not sep or not pattern or value is None or value < 1:
            raise ValueError(f"{SLOWDOWN_ENV}: expected PATTERN:FACTOR with FACTOR >= 1 "
                             f"(e.g. conv2d/direct/numba:1.3), got {item!r}")
        out.append((pattern, value))
    return out


def slowdown_factor(case, table=None):
    """The factor the hook slows ``case`` by (1.0: not at all)."""
    factor = 1.0
    for pattern, value in (slowdowns() if table is None else table):
        if fnmatch.fnmatchcase(case.kernel, pattern) or fnmatch.fnmatchcase(case.name, pattern):
            factor *= value
    return factor


def _slowed(fn, factor):
    """``fn``, followed by a spin of ``factor - 1`` times its duration, both read on the
    gate's clock (CPU time): the measured time of the call grows by ``factor`` exactly,
    whatever else the machine runs."""
    if factor == 1.0:
        return fn

    def run():
        t0 = CLOCK()
        fn()
        end = CLOCK() + (factor - 1) * (CLOCK() - t0)
        while CLOCK() < end:
            pass
    return run


# -- measuring ----------------------------------------------------------------------------


def case_fn(case, seed=0):
    """``(fn, plan)``: one call of ``case`` on fresh random operands, and its plan
    (a repr; networks: the plans of their convolutions, counted)."""
    rng = np.random.default_rng(seed)
    if case.op == "network":
        fn, _, plans, _ = bench.network_fn(case.what, case.N)
        return fn, ", ".join(f"{k} x{v}" for k, v in bench.plan_summary(plans).items())
    L = layer(case.what)
    xs, ws = L.shapes(case.N)
    x, w = rng.standard_normal(xs, dtype=np.float32), rng.standard_normal(ws, dtype=np.float32)
    kw = dict(algorithm=case.algorithm, backend=case.backend)
    if case.op in bench.CONV_OPS:
        fn, _, plan = bench.layer_fn(case.op, L, case.N, case.algorithm, case.backend,
                                     bench.layer_operands(L, case.N, seed))
        return fn, repr(plan)
    pool = dict(kernel_size=3, stride=2, padding=1)
    y, idx = fastconv.max_pool2d(x, **pool, return_indices=True)
    dy = rng.standard_normal(y.shape, dtype=np.float32)
    calls = {
        "max_pool2d": lambda: fastconv.max_pool2d(x, **pool, **kw),
        "max_pool2d_backward": lambda: fastconv.max_pool2d_backward(dy, idx, x.shape, **kw),
        "avg_pool2d": lambda: fastconv.avg_pool2d(x, **pool, **kw),
        "avg_pool2d_backward": lambda: fastconv.avg_pool2d_backward(dy, x.shape, **pool, **kw),
    }
    fn = calls[case.op]
    with fastconv.trace_plans() as ran:
        fn()
    return fn, repr(ran[-1]) if ran else None


def _available(case):
    if case.op == "network":
        return True
    return (case.algorithm, case.backend) in fastconv.algorithms(case.op)


def _anchor():
    probe = _compiled_probe()
    x, y = np.full(_LANES, 0.999, np.float32), np.full(_LANES, 0.001, np.float32)
    sink = np.zeros(1, np.float32)
    return lambda: probe(ANCHOR_ITERATIONS, x, y, sink)


def standard_error(ratios):
    """Relative standard error of the median of ``ratios``: 1.253 x 1.4826 x their
    median absolute relative deviation / sqrt(rounds) (normal approximation)."""
    ratios = np.asarray(ratios, float)
    med = np.median(ratios)
    mad = np.median(np.abs(ratios / med - 1))
    return float(1.253 * 1.4826 * mad / np.sqrt(len(ratios)))


def measure(cases=None, rounds=DEFAULT_ROUNDS, min_time=DEFAULT_MIN_TIME, seed=0,
            hook=None):
    """``{name: {score, spread, kernel, plan, case_ms, anchor_ms}}`` of each available
    case: score = median over rounds of time(case) / time(anchor); spread = its
    relative standard error. ``hook``: the slowdown table (default: from the env)."""
    anchor = _anchor()
    table = slowdowns() if hook is None else hook
    scores = {}
    for case in cases or CASES:
        if not _available(case):
            continue
        fn, plan = case_fn(case, seed)
        factor = slowdown_factor(case, table)
        t = interleaved({"case": _slowed(fn, factor), "anchor": anchor}, rounds=rounds,
                        warmup=2, min_time=min_time, warmup_time=0.1, clock=CLOCK)
        ratios = t["case"] / t["anchor"]
        scores[case.name] = dict(score=float(np.median(ratios)), spread=standard_error(ratios),
                                 kernel=case.kernel, plan=plan,
                                 case_ms=float(1e3 * np.median(t["case"])),
                                 anchor_ms=float(1e3 * np.median(t["anchor"])))
        if factor != 1.0:
            scores[case.name]["slowdown_hook"] = factor
    return scores


def record(scores, threads, rounds, min_time, **extra):
    """A results (or baseline) file's content."""
    return dict(schema=SCHEMA, created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                slug=bench.cpu_slug(), machine=bench.machine_info(), versions=bench.versions(),
                git=bench.git_commit(), threads=threads,
                settings=dict(rounds=rounds, min_time=min_time, clock=CLOCK_NAME,
                              anchor_iterations=ANCHOR_ITERATIONS),
                hook=os.environ.get(SLOWDOWN_ENV) or None, scores=scores, **extra)


def best_of(measurements):
    """One score per case from several measurements (fresh processes): the lowest
    score, with its spread, and every score in ``measurements``."""
    out = {}
    for name in dict.fromkeys(n for m in measurements for n in m):
        runs = [m[name] for m in measurements if name in m]
        entry = dict(min(runs, key=lambda r: r["score"]))
        entry["measurements"] = [r["score"] for r in runs]
        out[name] = entry
    return out


def _worker_env():
    """The environment of a measuring process: this one's, with the directory this
    process imported fastconv from first on the path (the same fastconv is measured)."""
    env = dict(os.environ)
    root = str(Path(fastconv.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in env.get("PYTHONPATH", "").split(
        os.pathsep) if p])
    return env


def measure_fresh(cases, processes, rounds=DEFAULT_ROUNDS, min_time=DEFAULT_MIN_TIME,
                  seed=0, threads=1):
    """:func:`measure` in ``processes`` fresh Python processes, one after the other (the
    test hook's variable passes to them); :func:`best_of` their scores."""
    runs = []
    for i in range(processes):
        cmd = [sys.executable, str(Path(__file__).resolve()), "_worker", "--threads", str(threads),
               "--rounds", str(rounds), "--min-time", str(min_time), "--seed", str(seed + i),
               "--cases", *[c.name for c in cases]]
        done = subprocess.run(cmd, capture_output=True, text=True, env=_worker_env())
        if done.returncode != 0:
            raise SystemExit(f"bench_gate: a measuring process failed:\n{done.stderr}")
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return best_of(runs)


# -- judging ------------------------------------------------------------------------------


def _scores(results):
    return results.get("scores", results)


def allowance(new, old, threshold, noise_cap=None):
    """The largest new/old score ratio that passes: 1 + threshold, widened by the two
    scores' standard errors, by at most ``noise_cap`` (None: the threshold)."""
    cap = threshold if noise_cap is None else noise_cap
    return 1 + threshold + min(cap, new.get("spread", 0.0) + old.get("spread", 0.0))


def judge(results, baseline, threshold=DEFAULT_THRESHOLD, noise_cap=None,
          global_threshold=DEFAULT_GLOBAL_THRESHOLD):
    """One row per case of either file: name, kernel, old and new score, change, the
    others' median change (``common``), allowed ratio and verdict (``ok``, ``SLOWER``,
    ``new``: not in the baseline, ``missing``: not measured now).

    A case is SLOWER when its change exceeds the allowance both by itself and divided by
    ``common``, the median change of the other cases (when there are at least
    MIN_PEERS of them and it is above 1): a neighbour's load slows every memory-bound
    case together, a regression slows its own kernel. A slowdown of every case together
    counts in full once their median change exceeds ``1 + global_threshold``."""
    new_s, old_s = _scores(results), _scores(baseline)
    changes = {n: new_s[n]["score"] / old_s[n]["score"] for n in new_s if n in old_s}
    overall = float(np.median(list(changes.values()))) if changes else 1.0
    rows = []
    for name in list(dict.fromkeys(list(old_s) + list(new_s))):
        new, old = new_s.get(name), old_s.get(name)
        row = dict(name=name, kernel=(new or old).get("kernel", name),
                   plan=(new or old).get("plan"), old=old and old["score"],
                   new=new and new["score"], change=None, common=None, allowed=None)
        if new is None:
            row["verdict"] = "missing"
        elif old is None:
            row["verdict"] = "new"
        else:
            peers = [c for n, c in changes.items() if n != name]
            common = max(1.0, float(np.median(peers))) if len(peers) >= MIN_PEERS else 1.0
            row["change"] = changes[name]
            row["common"] = common
            row["allowed"] = allowance(new, old, threshold, noise_cap)
            over = row["change"] > row["allowed"]
            alone = row["change"] / common > row["allowed"]
            everything = overall > 1 + global_threshold
            row["verdict"] = "SLOWER" if over and (alone or everything) else "ok"
        rows.append(row)
    return rows


def compare(results, baseline, tolerance=DEFAULT_THRESHOLD, noise_cap=None):
    """Names of cases slower than the baseline by more than the tolerance (widened by
    the measured spread of both runs, at most by ``noise_cap``; None: the tolerance);
    prints one line per judged case."""
    slow = []
    for row in judge(results, baseline, tolerance, noise_cap):
        if row["change"] is None:
            continue
        print(f"{row['name']:30s} {row['old']:9.3f} -> {row['new']:9.3f}  x{row['change']:5.2f} "
              f"(others x{row['common']:4.2f}, allowed x{row['allowed']:4.2f})  {row['verdict']}")
        if row["verdict"] == "SLOWER":
            slow.append(row["name"])
    return slow


def _pct(ratio):
    return "" if ratio is None else f"{100 * (ratio - 1):+.1f}%"


def markdown(rows, title, notes=(), remeasured=None):
    """The report: a title, notes, and a table naming each case's kernel with its old
    and new normalised time and the change."""
    remeasured = remeasured or {}
    lines = [f"## {title}", ""] + [f"- {n}" for n in notes] + [""]
    lines += ["| case | kernel | baseline | new | change | others | allowed | verdict |",
              "|---|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        old = "" if r["old"] is None else f"{r['old']:.3f}"
        new = "" if r["new"] is None else f"{r['new']:.3f}"
        verdict = r["verdict"]
        if r["name"] in remeasured:
            again = ", ".join(f"{s:.3f} ({_pct(s / r['old'])})" for s in remeasured[r["name"]])
            verdict += f" (re-measured: {again})"
        if r["verdict"] == "SLOWER":
            verdict = f"**{verdict}**"
        lines.append(f"| {r['name']} | `{r['kernel']}` | {old} | {new} | {_pct(r['change'])} "
                     f"| {_pct(r['common'])} | {_pct(r['allowed'])} | {verdict} |")
    lines.append("")
    lines.append("Normalised time: the case's CPU time / the FMA probe's, median over "
                 "interleaved rounds (lower is faster). Others: the median change of the "
                 "other cases; a case fails when its change is over the allowance both by "
                 "itself and divided by that (unless all cases together are slower by more "
                 "than the global threshold). Plans: "
                 + "; ".join(f"{r['name']}: `{r['plan']}`" for r in rows if r.get("plan")))
    return "\n".join(lines) + "\n"


def _emit(text, path):
    """Print the report, write it to ``path``, append it to the CI step summary."""
    print(text)
    if path:
        Path(path).write_text(text)
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a") as f:
            f.write(text + "\n")


def _machine_note(rec):
    m = rec.get("machine", {})
    return f"CPU: {m.get('cpu_model')} ({m.get('llvm_cpu')}), {rec.get('threads')} thread(s)"


# -- commands -----------------------------------------------------------------------------


def baseline_path(args):
    if args.baseline:
        return Path(args.baseline)
    return Path(args.baselines_dir) / f"{bench.cpu_slug()}.json"


def _select(names):
    if not names:
        return CASES
    chosen = [c for c in CASES if c.name in names or c.kernel in names]
    if not chosen:
        raise SystemExit(f"bench_gate: no case named {names}; cases: "
                         f"{', '.join(c.name for c in CASES)}")
    return chosen


def _baseline_record(args, cases, threads, why):
    """Record this CPU's baseline (best of BASELINE_PROCESSES processes) and report."""
    path = baseline_path(args)
    if os.environ.get(SLOWDOWN_ENV):
        raise SystemExit(f"bench_gate: refusing to record a baseline with {SLOWDOWN_ENV} set")
    scores = measure_fresh(cases, args.processes or BASELINE_PROCESSES, args.rounds,
                           args.min_time, threads=threads)
    rec = record(scores, threads, args.rounds, args.min_time)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rec, indent=1, sort_keys=True) + "\n")
    rows = judge(rec, {}, args.threshold)
    for r in rows:
        r["verdict"] = "recorded"
    _emit(markdown(rows, f"fastconv performance gate: baseline recorded ({why}), passed",
                   [f"Recorded {path} (best of {args.processes or BASELINE_PROCESSES} "
                    f"processes); commit it to gate later runs on this CPU",
                    _machine_note(rec), f"slug: {rec['slug']}"]), args.report)
    return 0


def check(args):
    """Measure, compare with the baseline, re-measure suspects in fresh processes,
    report; record a baseline when there is none (or ``--update-baseline``)."""
    path, cases = baseline_path(args), _select(args.cases)
    threads = fastconv.get_num_threads()
    if args.update_baseline:
        return _baseline_record(args, cases, threads, "--update-baseline")
    if not path.exists():
        print(f"bench_gate: no baseline for this CPU ({bench.cpu_model()}, slug "
              f"{bench.cpu_slug()}) at {path}: recording one; the gate passes", file=sys.stderr)
        return _baseline_record(args, cases, threads, "no baseline for this CPU yet")
    baseline = json.loads(path.read_text())
    if baseline.get("settings", {}).get("clock", "perf_counter") != CLOCK_NAME:
        print(f"bench_gate: {path} was timed on another clock: recording a new baseline; "
              f"the gate passes", file=sys.stderr)
        return _baseline_record(args, cases, threads, "the baseline was timed on another "
                                "clock (wall time); this gate times CPU time")
    if baseline.get("threads") not in (None, threads):
        raise SystemExit(f"bench_gate: {path} was recorded on {baseline['threads']} thread(s), "
                         f"this run uses {threads}: pass --threads {baseline['threads']} or "
                         f"record a new baseline with --update-baseline")
    processes = args.processes or CHECK_PROCESSES
    scores = measure_fresh(cases, processes, args.rounds, args.min_time, threads=threads)
    results = record(scores, threads, args.rounds, args.min_time)
    rows = judge(results, baseline, args.threshold, args.noise_cap, args.global_threshold)
    remeasured = {}
    for attempt in range(args.retries):
        suspects = [r["name"] for r in rows if r["verdict"] == "SLOWER"]
        if not suspects:
            break
        time.sleep(getattr(args, "retry_pause", RETRY_PAUSE))
        print(f"bench_gate: re-measuring {len(suspects)} suspect case(s) in fresh processes: "
              f"{', '.join(suspects)}", file=sys.stderr)
        again = measure_fresh([c for c in cases if c.name in suspects], processes,
                              args.rounds, args.min_time, seed=100 * (attempt + 1),
                              threads=threads)
        for name, new in again.items():
            remeasured.setdefault(name, []).append(new["score"])
            prev = scores[name]
            scores[name] = dict(min((prev, new), key=lambda e: e["score"]),
                                measurements=prev["measurements"] + new["measurements"])
        rows = judge(results, baseline, args.threshold, args.noise_cap, args.global_threshold)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    failed = [r for r in rows if r["verdict"] == "SLOWER"]
    title = ("fastconv performance gate: FAILED: " + ", ".join(
        f"`{r['kernel']}` ({r['name']}) {_pct(r['change'])}" for r in failed)
        if failed else "fastconv performance gate: passed")
    b = baseline.get("git") or {}
    notes = [_machine_note(results),
             f"baseline: {path} (recorded {baseline.get('created')}, commit "
             f"{(b.get('commit') or 'unknown')[:12]})",
             f"threshold: {100 * args.threshold:.0f}% (widened by the scores' standard errors, "
             f"by at most {100 * args.noise_cap:.0f} points), also against the other cases' "
             f"median change unless that is over {100 * args.global_threshold:.0f}%; each "
             f"score the best of {processes} fresh processes; suspects re-measured up to "
             f"{args.retries} time(s), failing only if still over"]
    if results["hook"]:
        notes.append(f"test hook {SLOWDOWN_ENV}={results['hook']} is set")
    _emit(markdown(rows, title, notes, remeasured), args.report)
    if failed:
        print("regression gate FAILED: " + ", ".join(
            f"{r['kernel']} ({r['name']}) {_pct(r['change'])}, allowed {_pct(r['allowed'])}"
            for r in failed), file=sys.stderr)
    return 1 if failed else 0


def compare_files(args):
    """Judge a results file against a baseline file; report; 1 when a case is slower."""
    new = json.loads(Path(args.results).read_text())
    old = json.loads(Path(args.baseline).read_text())
    rows = judge(new, old, args.threshold, args.noise_cap, args.global_threshold)
    failed = [r for r in rows if r["verdict"] == "SLOWER"]
    title = ("fastconv performance gate: FAILED: " + ", ".join(
        f"`{r['kernel']}` ({r['name']}) {_pct(r['change'])}" for r in failed)
        if failed else "fastconv performance gate: passed")
    _emit(markdown(rows, title, [f"{args.results} against {args.baseline}",
                                 f"threshold: {100 * args.threshold:.0f}% (widened by the "
                                 f"scores' standard errors, by at most "
                                 f"{100 * args.noise_cap:.0f} points)"]), args.report)
    if failed:
        print("regression gate FAILED: " + ", ".join(
            f"{r['kernel']} ({r['name']}) {_pct(r['change'])}" for r in failed), file=sys.stderr)
    return 1 if failed else 0


def run(args):
    """Measure (best of ``--processes`` fresh processes) and write the scores."""
    threads = fastconv.get_num_threads()
    scores = measure_fresh(_select(args.cases), args.processes or CHECK_PROCESSES, args.rounds,
                           args.min_time, threads=threads)
    rec = record(scores, threads, args.rounds, args.min_time)
    Path(args.out).write_text(json.dumps(rec, indent=1, sort_keys=True) + "\n")
    print(json.dumps(rec["scores"], indent=1, sort_keys=True))
    return 0


def _worker(args):
    """One measuring process: :func:`measure` as one line of JSON on stdout."""
    print(json.dumps(measure(_select(args.cases), args.rounds, args.min_time, args.seed)))
    return 0


def selftest(args):
    """The gate catches one kernel made ``--factor`` slower through the test hook and
    names it, in ``check`` and by comparing two result files, while a control case
    passes. The baseline: both cases measured just before, without the hook."""
    target, control = _select([args.target])[0], _select([args.control])[0]
    names = [target.name, control.name]
    hook = f"{target.kernel}:{args.factor}"
    common = dict(cases=names, rounds=args.rounds, min_time=args.min_time,
                  processes=args.processes, threshold=args.threshold, noise_cap=args.noise_cap,
                  global_threshold=args.global_threshold)
    old_env = os.environ.pop(SLOWDOWN_ENV, None)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            base, slow = Path(tmp) / "base.json", Path(tmp) / "slow.json"
            report = Path(tmp) / "report.md"
            run(argparse.Namespace(out=str(base), **common))
            os.environ[SLOWDOWN_ENV] = hook
            run(argparse.Namespace(out=str(slow), **common))
            rc_files = compare_files(argparse.Namespace(results=str(slow), baseline=str(base),
                                                        threshold=args.threshold,
                                                        noise_cap=args.noise_cap,
                                                        global_threshold=args.global_threshold,
                                                        report=None))
            rows = judge(json.loads(slow.read_text()), json.loads(base.read_text()),
                         args.threshold, args.noise_cap, args.global_threshold)
            rc_check = check(argparse.Namespace(baseline=str(base), baselines_dir=None,
                                                update_baseline=False, retries=args.retries,
                                                retry_pause=args.retry_pause,
                                                report=str(report), out=None, **common))
            text = report.read_text()
    finally:
        os.environ.pop(SLOWDOWN_ENV, None)
        if old_env is not None:
            os.environ[SLOWDOWN_ENV] = old_env
    named = f"`{target.kernel}`" in text.splitlines()[0]
    control_ok = all(r["verdict"] == "ok" for r in rows if r["name"] == control.name)
    good = rc_files == 1 and rc_check == 1 and named and control_ok
    print(f"bench_gate selftest: {target.kernel} made {args.factor}x slower by "
          f"{SLOWDOWN_ENV}={hook}: two JSON files compared -> exit {rc_files}; check -> exit "
          f"{rc_check}, kernel named in the report's title: {named}; control case "
          f"{control.name} passed: {control_ok}: {'OK' if good else 'FAILED'}")
    return 0 if good else 1


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog="See docs/benchmarks.md.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    chk = sub.add_parser("check", help="measure and compare with this CPU's baseline")
    chk.add_argument("baseline", nargs="?", help="a baseline file (default: "
                     "BASELINES_DIR/<cpu slug>.json)")
    chk.add_argument("--baselines-dir", default=str(BASELINES))
    chk.add_argument("--update-baseline", action="store_true",
                     help=f"record the baseline from this run (best of {BASELINE_PROCESSES} "
                          f"processes)")
    chk.add_argument("--retries", type=int, default=DEFAULT_RETRIES,
                     help=f"re-measurements of a suspect case before it fails (default "
                          f"{DEFAULT_RETRIES})")
    chk.add_argument("--retry-pause", type=float, default=RETRY_PAUSE,
                     help=f"seconds to wait before each re-measurement (default {RETRY_PAUSE:g})")
    chk.add_argument("--out", help="also write this run's scores here")
    r = sub.add_parser("run", help="measure and write the scores")
    r.add_argument("--out", required=True)
    cmp_ = sub.add_parser("compare", help="judge a results file against a baseline file")
    cmp_.add_argument("results")
    cmp_.add_argument("baseline")
    st = sub.add_parser("selftest", help="check that a kernel made slower fails, named")
    st.add_argument("--target", default="conv_fwd_im2col_res4")
    st.add_argument("--control", default="max_pool_fwd_direct")
    st.add_argument("--factor", type=float, default=1.3)
    st.add_argument("--retries", type=int, default=1)
    st.add_argument("--retry-pause", type=float, default=0.0)
    w = sub.add_parser("_worker", help=argparse.SUPPRESS)
    w.add_argument("--seed", type=int, default=0)
    for p in (chk, r, st, w):
        p.add_argument("--threads", type=int, default=1,
                       help="kernel threads (default 1: steadiest on shared runners)")
        p.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
        p.add_argument("--min-time", type=float, default=DEFAULT_MIN_TIME)
    for p in (chk, r, st):
        p.add_argument("--processes", type=int,
                       help=f"fresh processes per measurement, best taken (default "
                            f"{CHECK_PROCESSES}; {BASELINE_PROCESSES} to record a baseline)")
    for p in (chk, r, w):
        p.add_argument("--cases", nargs="*", help="case names or kernels (default: all)")
    for p in (chk, cmp_, st):
        p.add_argument("--threshold", "--tolerance", type=float, default=DEFAULT_THRESHOLD,
                       help="allowed slowdown as a fraction (default 0.20)")
        p.add_argument("--global-threshold", type=float, default=DEFAULT_GLOBAL_THRESHOLD,
                       help="a slowdown of every case together (their median change) fails "
                            "in full beyond this fraction (default 0.5); below it each case "
                            "is also judged against the others' median change")
        p.add_argument("--noise-cap", type=float, default=DEFAULT_NOISE_CAP,
                       help="the most the scores' standard errors widen the threshold by "
                            "(default 0.05)")
    for p in (chk, cmp_):
        p.add_argument("--report", help="write the Markdown report here (and to "
                       "$GITHUB_STEP_SUMMARY when set)")
    args = ap.parse_args(argv)
    if hasattr(args, "threads"):
        fastconv.set_num_threads(min(args.threads, fastconv.get_num_threads()))
    commands = {"check": check, "run": run, "compare": compare_files, "selftest": selftest,
                "_worker": _worker}
    return commands[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
