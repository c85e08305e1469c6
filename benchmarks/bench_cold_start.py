"""Cold start: ``import fastconv`` plus the first ``conv2d`` in a fresh process.

    python benchmarks/bench_cold_start.py [--repeat 5] [--skip-cold] [--importtime]

Each figure is one fresh Python process (``sys.executable``), timed from inside it:
the import, then the first ``fastconv.conv2d`` on a 1x8x28x28 input with a 8x8x3x3
weight (padding 1), on

- ``cython``: ``backend="cython"`` (compiled at install: nothing to compile);
- ``numba cold``: ``backend="numba"`` with an empty JIT cache (``FASTCONV_CACHE_DIR``
  and ``NUMBA_CACHE_DIR`` a new temporary directory): the JIT compile a new user pays;
- ``numba warm``: the same, again, with that cache filled by the cold run.

It prints the median and the range over ``--repeat`` processes (the cold run once per
repeat, each with its own empty cache; ``--skip-cold`` leaves it out: it takes about
10 s a run), the interpreter's own start-up beside them, whether Numba and SciPy's
``scipy.linalg`` package were imported, and the plan that ran. ``--importtime`` adds
the slowest imports under ``import fastconv`` (``python -X importtime``). Not a test:
the issue's target (under 0.3 s for the Cython figure) is for the reader to check.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile

CODE = r"""
import time, sys
t0 = time.perf_counter()
import fastconv
t1 = time.perf_counter()
import numpy as np
x = np.random.default_rng(0).standard_normal((1, 8, 28, 28)).astype(np.float32)
w = np.random.default_rng(1).standard_normal((8, 8, 3, 3)).astype(np.float32)
with fastconv.trace_plans() as ran:
    fastconv.conv2d(x, w, padding=1, backend=sys.argv[1])
t2 = time.perf_counter()
import json
print(json.dumps(dict(imp=t1 - t0, first=t2 - t1, plan=repr(ran[-1]),
                      numba="numba" in sys.modules,
                      scipy_linalg="scipy.linalg" in sys.modules)))
"""


def _run(backend, env=None):
    out = subprocess.run([sys.executable, "-c", CODE, backend], capture_output=True,
                         text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _startup():
    """Seconds of an empty interpreter's start and exit (the floor under every figure)."""
    import time
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.perf_counter() - t


def _fmt(values):
    if len(values) == 1:
        return f"{values[0]:6.3f}"
    return f"{statistics.median(values):6.3f} ({min(values):.3f}-{max(values):.3f})"


def _importtime(top=15):
    """The slowest imports (cumulative) under ``import fastconv``."""
    run = subprocess.run([sys.executable, "-X", "importtime", "-c", "import fastconv"],
                         capture_output=True, text=True, check=True)
    rows = []
    for line in run.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        self_us, cum_us, name = [s.strip() for s in line[len("import time:"):].split("|")]
        rows.append((int(cum_us), int(self_us), name))
    for cum, own, name in sorted(rows, reverse=True)[:top]:
        print(f"  {cum / 1e3:8.1f} ms cumulative {own / 1e3:8.1f} ms self  {name}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--skip-cold", action="store_true", help="no empty-cache Numba run")
    ap.add_argument("--importtime", action="store_true",
                    help="also list the slowest imports under import fastconv")
    args = ap.parse_args(argv)
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    from fastconv.bench import cpu_model
    print(f"CPU: {cpu_model()} ({platform.machine()}), Python {platform.python_version()}")
    rows = {"cython": [], "numba cold": [], "numba warm": []}
    startup = []
    for _ in range(args.repeat):
        startup.append(_startup())
        rows["cython"].append(_run("cython"))
        with tempfile.TemporaryDirectory(prefix="fastconv-cold-") as cache:
            env = dict(os.environ, FASTCONV_CACHE_DIR=cache, NUMBA_CACHE_DIR=cache)
            if args.skip_cold:
                _run("numba", env)                   # fills the cache, not reported
            else:
                rows["numba cold"].append(_run("numba", env))
            rows["numba warm"].append(_run("numba", env))
    print(f"fresh process, {args.repeat} runs each; seconds, median (range)")
    print(f"  interpreter start + exit alone: {_fmt(startup)}")
    print(f"  {'backend':<11} {'import fastconv':<22} {'first conv2d':<22} "
          f"{'import + first':<22} numba  scipy.linalg")
    for name, runs in rows.items():
        if not runs:
            continue
        imp = [r["imp"] for r in runs]
        first = [r["first"] for r in runs]
        total = [r["imp"] + r["first"] for r in runs]
        print(f"  {name:<11} {_fmt(imp):<22} {_fmt(first):<22} {_fmt(total):<22} "
              f"{str(runs[-1]['numba']):<6} {runs[-1]['scipy_linalg']}")
    for name, runs in rows.items():
        if runs:
            print(f"  plan ({name}): {runs[-1]['plan']}")
    if args.importtime:
        print("slowest imports under `import fastconv` (one process):")
        _importtime()


if __name__ == "__main__":
    main()
