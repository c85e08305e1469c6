"""Shared test setup: tolerances, the Hypothesis profile, strategies that build only
valid geometries, and one checker that compares every output of an op with the
reference."""
import contextlib
import functools
import json
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

# The kernels' register blocks follow the CPU's vector registers (fastconv._machine): the
# suite plans with the 16-register (AVX2) table on every CPU, so what the tests expect of
# a plan holds on any machine CI lands on, and its kernels compile in seconds (AVX-512's
# 1 x 14 x 32 block took 46 s to compile on Zen 3, its 2 x 7 x 32 block 62 s, against 14 s
# for the whole first direct call with the 16-register blocks);
# tests/test_vector_registers.py runs the 32-register (AVX-512) table in a process of its own.
os.environ.setdefault("FASTCONV_VECTOR_REGISTERS", "16")

import fastconv  # noqa: E402
from fastconv import _dispatch, _plan, _tuning  # noqa: E402

# -- Hypothesis: profiles, and a count of the examples each run executed ------------------
# ``default``: each test's own number of examples, derandomised in CI. ``ci-boundscheck``:
# derandomised, at most BOUNDED_EXAMPLES examples per test whatever the test asks for
# (the cheap second pass CI runs with bounds-checked kernels, .ci/run). Choose one with
# ``--hypothesis-profile NAME`` or ``HYPOTHESIS_PROFILE=NAME``.

_COMMON = dict(deadline=None, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
#: the most examples a test runs under a bounded profile: {profile: cap}
BOUNDED_EXAMPLES = {"ci-boundscheck": 10}
settings.register_profile("default", derandomize=bool(os.environ.get("CI")), **_COMMON)
settings.register_profile("ci-boundscheck", derandomize=True,
                          max_examples=BOUNDED_EXAMPLES["ci-boundscheck"], **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def _profile():
    """The Hypothesis profile in use (``--hypothesis-profile`` loads after this file)."""
    current = getattr(settings, "get_current_profile_name", None)
    return current() if current else os.environ.get("HYPOTHESIS_PROFILE", "default")


_chosen = []


def pytest_configure(config):
    _chosen.append(_profile())      # after --hypothesis-profile has loaded its choice


@pytest.fixture(autouse=True)
def _keep_hypothesis_profile():
    """Every test ends under the profile chosen for the run: PyTorch's test helpers
    (imported by test_opinfo.py's OpInfo database) load their own Hypothesis profile
    (``pytorch_ci`` under CI: 200 ms deadlines) when imported."""
    yield
    if _chosen and _profile() != _chosen[0]:
        settings.load_profile(_chosen[0])


def pytest_addoption(parser):
    parser.addoption("--property-tests-only", action="store_true",
                     help="run only the Hypothesis (property) tests of the files given")


#: examples run per Hypothesis test (``file::function``)
_examples = {}


def _counting(fn, key):
    """Count the calls Hypothesis makes of a test's body (its ``inner_test``, which
    Hypothesis documents as replaceable): one per example, shrinking included."""
    inner = fn.hypothesis.inner_test
    if getattr(inner, "_fastconv_counted", False):
        return

    def counted(*args, **kwargs):
        _examples[key] = _examples.get(key, 0) + 1
        return inner(*args, **kwargs)

    counted._fastconv_counted = True
    functools.update_wrapper(counted, inner)
    fn.hypothesis.inner_test = counted


def pytest_collection_modifyitems(config, items):
    """Count examples; under a bounded profile cap each test's examples (a test's own
    ``@settings(max_examples=...)`` wins over a profile otherwise); with
    ``--property-tests-only`` deselect the tests that are not Hypothesis tests."""
    cap = BOUNDED_EXAMPLES.get(_profile())
    keep, drop = [], []
    for item in items:
        fn = getattr(getattr(item, "obj", None), "__func__", getattr(item, "obj", None))
        if not getattr(fn, "is_hypothesis_test", False):
            (drop if config.getoption("--property-tests-only") else keep).append(item)
            continue
        keep.append(item)
        _counting(fn, f"{item.path.name}::{fn.__name__}")
        if cap is not None:
            own = fn._hypothesis_internal_use_settings    # read by Hypothesis at each call
            if own.max_examples > cap:
                fn._hypothesis_internal_use_settings = settings(own, max_examples=cap)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def _boundschecks():
    """``{backend: whether its kernels run with bounds checks}`` in this process."""
    from fastconv.kernels import cython as cy
    from fastconv.kernels.numba import _jit
    state = {"numba": _jit.BOUNDSCHECK}
    if cy.available() is None:
        state["cython"] = cy.boundscheck()
    return state


def pytest_report_header(config):
    return "bounds-checked kernels: " + ", ".join(
        f"{backend} {'yes' if on else 'no'}" for backend, on in _boundschecks().items())


def pytest_sessionstart(session):
    """``FASTCONV_REQUIRE_BOUNDSCHECK=numba,cython`` (.ci/run's second pass): stop at once
    unless those backends' kernels run with bounds checks."""
    wanted = [b for b in os.environ.get("FASTCONV_REQUIRE_BOUNDSCHECK", "").split(",") if b]
    state = _boundschecks()
    missing = [b for b in wanted if not state.get(b)]
    if missing:
        raise pytest.UsageError(
            f"FASTCONV_REQUIRE_BOUNDSCHECK={','.join(wanted)}: the kernels of "
            f"{', '.join(missing)} run without bounds checks here ({state}); set "
            f"NUMBA_BOUNDSCHECK=1 / build with FASTCONV_CYTHON_BOUNDSCHECK=1")


def pytest_sessionfinish(session):
    """Under pytest-xdist, a worker hands its example counts to the controller."""
    if hasattr(session.config, "workeroutput"):
        session.config.workeroutput["fastconv_examples"] = json.dumps(_examples)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """Under pytest-xdist, the controller adds up the counts its workers ran."""
    for key, n in json.loads(getattr(node, "workeroutput", {}).get("fastconv_examples", "{}")
                             ).items():
        _examples[key] = _examples.get(key, 0) + n


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """How many examples the property tests ran, per file and in all; also written as
    JSON to ``$FASTCONV_CASE_COUNTS`` when set (.ci/run reports it)."""
    per_file = {}
    for key, n in _examples.items():
        name = key.split("::")[0]
        tests, examples = per_file.get(name, (0, 0))
        per_file[name] = (tests + 1, examples + n)
    stats = terminalreporter.stats
    ran = sum(len(stats.get(k, [])) for k in ("passed", "failed", "xfailed", "xpassed"))
    total = sum(_examples.values())
    tr = terminalreporter
    tr.section("examples run (Hypothesis)")
    tr.write_line(f"profile {_profile()}: {total} examples in {len(_examples)} property "
                  f"tests; {ran} tests run in all")
    for name, (tests, examples) in sorted(per_file.items()):
        tr.write_line(f"  {name}: {examples} examples in {tests} tests")
    out = os.environ.get("FASTCONV_CASE_COUNTS")
    if out:
        Path(out).write_text(json.dumps(dict(
            profile=_profile(), examples=total, property_tests=len(_examples), tests_run=ran,
            per_file={k: dict(tests=t, examples=e) for k, (t, e) in per_file.items()},
            per_test=_examples), indent=1) + "\n")


@pytest.fixture(autouse=True)
def _restore_thread_count():
    """Every test starts with the machine's thread count: a test that changes it (the
    CLI's ``--threads`` defaults to 1) must not leave later tests on one thread, where
    the kernels' parallel paths would go untested."""
    n = fastconv.get_num_threads()
    yield
    if fastconv.get_num_threads() != n:
        fastconv.set_num_threads(n)


@pytest.fixture(autouse=True)
def _restore_backend():
    """Every test starts and ends with the process default ``backend="auto"``, whatever
    a test passed to ``fastconv.set_backend``."""
    before = fastconv.get_backend()
    yield
    fastconv.set_backend(before)


def auto_backend(op, algorithm, variant=None):
    """The backend ``backend="auto"`` runs ``algorithm`` of ``op`` on, by the documented
    rule (docs/cython.md): Cython where it is available and has the kernel, and the
    ``variant`` the rules choose among every backend's (Numba's plan; Cython's ``lanes``
    stands in for Numba's ``row``), else Numba (``_plan._backend_for_variant``)."""
    if algorithm == "reference":
        return "numpy"
    if ("cython" in _dispatch.available_backends()
            and (op, algorithm) in _dispatch._MANIFESTS["cython"].KERNELS):
        have = _dispatch.variants(op, algorithm, "cython")
        if variant is None or have is None or variant in have:
            return "cython"
        if op == "conv2d" and variant == "row":
            return "cython"                     # its lanes stands in for it
    return "numba"


#: thresholds the whole suite runs with, over ``fastconv._tuning``'s defaults: the rule
#: that sends Winograd to its unfused path on 16-register CPUs also depends on the L3's
#: size, so the suite turns it off (what the tests expect of a plan, and the variants they
#: force through thresholds, hold on any machine); tests/test_selection.py checks the rule
#: with a fixed L3
SUITE_TUNING = {"UNFUSED_BELOW_REGISTERS": 0}


def _suite_tuning():
    _tuning.reset()
    for name, value in SUITE_TUNING.items():
        _tuning.set(name, value)


@pytest.fixture(autouse=True)
def _reset_tuning():
    """Every test starts and ends with the suite's thresholds (``fastconv._tuning``'s
    defaults but :data:`SUITE_TUNING`), whatever a test that forced a path set and
    however it ended."""
    _suite_tuning()
    yield
    _suite_tuning()


@pytest.fixture(autouse=True)
def _no_remembered_winners(monkeypatch):
    """No autotuned winner from disk steers ``algorithm="auto"``: the JIT cache's
    neighbour ``autotune.json`` may hold winners tuned on another run (the rules are
    what the tests check); autotuning is off unless a test turns it on."""
    monkeypatch.setattr(_plan, "_tuned", {})
    monkeypatch.setattr(_plan, "_autotune_enabled", False)


@contextlib.contextmanager
def tuned(**values):
    """Thresholds of ``fastconv._tuning`` set to ``values`` inside the block and put back
    after (also when the block raises; blocks nest); ``_reset_tuning`` resets them all
    after each test besides. Plans are memoised per tuning generation, so the new
    values apply to the next call. Hypothesis tests use this inside the test body (a
    function-scoped fixture would not reset per example)."""
    before = {}
    try:
        for name, value in values.items():
            old = _tuning.get(name)                 # an unknown name raises here
            _tuning.set(name, value)
            before[name] = old
        yield
    finally:
        for name, value in before.items():
            _tuning.set(name, value)


def ran_plan(call, **want):
    """Run ``call()`` and check the plan it ran last (``fastconv.trace_plans``) has each
    attribute or blocking value in ``want`` (e.g. ``variant="lanes"``, ``parts=2``);
    returns (result, plan)."""
    with fastconv.trace_plans() as ran:
        result = call()
    assert ran, "no plan ran"
    plan = ran[-1]
    for name, value in want.items():
        got = getattr(plan, name) if name in ("op", "algorithm", "backend", "variant",
                                              "threads", "dtype") else plan[name]
        assert got == value, f"{name}: ran {got!r}, forced {value!r}: {plan!r}"
    return result, plan


def blas_rows_round_alike():
    """Whether the OpenBLAS that NumPy and SciPy load gives a row of a GEMM's result the
    same bits whatever the GEMM's row count. Not with its AVX2 kernels (cores "Haswell"
    and "Zen"; measured on AMD Zen 3: rows at the edge of a block sum in another order);
    yes with its AVX-512 kernels (SkylakeX, on Intel Xeon and AMD Zen 4/5)."""
    from threadpoolctl import threadpool_info
    cores = {i.get("architecture") for i in threadpool_info() if i["internal_api"] == "openblas"}
    return not cores & {"Haswell", "Zen"}


def on_one_thread(fn):
    """``fn()`` run with fastconv on one thread (the thread count restored after)."""
    n = fastconv.get_num_threads()
    try:
        fastconv.set_num_threads(1)
        return fn()
    finally:
        fastconv.set_num_threads(n)


# -- Tolerances: max |got - want| / max(|want|), per dtype and algorithm ---------------------
# Winograd's transforms lose precision with the tile size (Lavin & Gray 2016): measured
# on C=256 layers, F(2x2,3x3) about 2e-6 and F(4x4,3x3) about 4e-5 of the output's
# magnitude in float32, hence its looser entries.
TOLERANCE = {
    (np.float32, "default"): 1e-5,
    (np.float64, "default"): 1e-12,
    (np.float32, "winograd_f2"): 1e-5,
    (np.float32, "winograd_f4"): 1e-4,
    (np.float64, "winograd_f2"): 1e-12,
    (np.float64, "winograd_f4"): 1e-11,
}
# the bar against PyTorch: relative to the largest magnitude of PyTorch's output
TORCH_TOLERANCE = {np.float32: 1e-4, np.float64: 1e-10}

DTYPES = (np.float32, np.float64)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def tolerance(dtype, algorithm):
    dtype = np.dtype(dtype).type
    return TOLERANCE.get((dtype, algorithm), TOLERANCE[(dtype, "default")])


def assert_close(got, want, tol, what=""):
    """max |got - want| <= tol * max(|want|, tiny); NaN/Inf must sit in the same places."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    finite = np.isfinite(want)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"{what}: NaN placement")
    np.testing.assert_array_equal(got[~finite & ~np.isnan(want)], want[~finite & ~np.isnan(want)],
                                  err_msg=f"{what}: Inf placement")
    scale = max(np.abs(want[finite]).max(initial=0.0), 1e-30)
    err = np.abs(got[finite] - want[finite]).max(initial=0.0) / scale
    assert err <= tol, f"{what}: relative error {err:.3g} > {tol:.1g}"


def kernel_pairs(op):
    """The registered (algorithm, backend) pairs of op other than the reference."""
    return [ab for ab in fastconv.algorithms(op) if ab[0] != "reference"]


# -- Strategies ---------------------------------------------------------------------------

# geometry limits of algorithms that do not handle every convolution (see
# fastconv._plan.SUPPORTS); test_registry checks they are exactly those rules
LIMITS = {
    "winograd_f2": dict(stride=1, dilation=1, groups=1),
    "winograd_f4": dict(stride=1, dilation=1, groups=1),
}


@st.composite
def conv_cases(draw, algorithm=None, max_channels=20, max_hw=24, max_n=4):
    """A valid conv2d geometry: dict of N, C, H, W, K, R, S, stride, padding, dilation,
    groups, plus the ConvParams it makes."""
    lim = LIMITS.get(algorithm, {})
    groups = lim.get("groups") or draw(st.sampled_from([1, 1, 1, 2, 3, 4]))
    C = groups * draw(st.integers(1, max_channels // groups))
    K = groups * draw(st.integers(1, max_channels // groups))
    R = lim.get("kernel") or draw(st.integers(1, 5))
    S = lim.get("kernel") or draw(st.integers(1, 5))
    stride = (lim.get("stride") or draw(st.integers(1, 3)), lim.get("stride") or draw(st.integers(1, 3)))
    dilation = (lim.get("dilation") or draw(st.integers(1, 2)),
                lim.get("dilation") or draw(st.integers(1, 2)))
    kinds = ["pair", "valid"] + (["same"] if stride == (1, 1) else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "pair":
        padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
        pad_total = (2 * padding[0], 2 * padding[1])
    elif kind == "same":
        padding, pad_total = "same", (dilation[0] * (R - 1), dilation[1] * (S - 1))
    else:
        padding, pad_total = "valid", (0, 0)
    # smallest input whose output is at least 1x1
    H = draw(st.integers(max(1, dilation[0] * (R - 1) + 1 - pad_total[0]), max_hw))
    W = draw(st.integers(max(1, dilation[1] * (S - 1) + 1 - pad_total[1]), max_hw))
    N = draw(st.integers(1, max_n))
    case = dict(N=N, C=C, H=H, W=W, K=K, R=R, S=S, stride=stride, padding=padding,
                dilation=dilation, groups=groups)
    case["params"] = fastconv._geometry.conv_params(
        "test", (N, C, H, W), (K, C // groups, R, S), stride, padding, dilation, groups)
    return case


@st.composite
def pool_cases(draw, max_pool=True, max_hw=16):
    """A valid pooling geometry (dilation only for max pooling)."""
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride = draw(st.one_of(st.none(), st.tuples(st.integers(1, 3), st.integers(1, 3))))
    padding = (draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2))) if max_pool else (1, 1)
    # at least one output, and (size >= dilation) every window reaches into the input
    H = draw(st.integers(max(dilation[0], dilation[0] * (kh - 1) + 1 - 2 * padding[0]), max_hw))
    W = draw(st.integers(max(dilation[1], dilation[1] * (kw - 1) + 1 - 2 * padding[1]), max_hw))
    return dict(N=draw(st.integers(1, 3)), C=draw(st.integers(1, 5)), H=H, W=W,
                kernel_size=(kh, kw), stride=stride, padding=padding, dilation=dilation,
                ceil_mode=draw(st.booleans()))


def numerical_grad(f, a, eps=1e-6):
    """Central differences of the scalar ``f()`` with respect to every entry of ``a``
    (perturbed in place and restored)."""
    g = np.zeros_like(a)
    for i in np.ndindex(a.shape):
        old = a[i]
        a[i] = old + eps
        up = f()
        a[i] = old - eps
        down = f()
        a[i] = old
        g[i] = (up - down) / (2 * eps)
    return g


def arrays(seed, dtype, *shapes):
    """Standard-normal arrays of the given shapes (fixed seed)."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype) for s in shapes]


def conv_args(case):
    return dict(stride=case["stride"], padding=case["padding"], dilation=case["dilation"],
                groups=case["groups"])


def conv_outputs(case, x, w, dy, algorithm, backend,
                 ops=("conv2d", "conv2d_input", "conv2d_weight")):
    """Output, grad-input and grad-weight (of ``ops``) of one (algorithm, backend); None
    where the algorithm does not register that op. Each call is checked to have run a plan of
    that op, algorithm and backend (``fastconv.trace_plans``)."""
    kw = conv_args(case)
    results = {}
    for op, call in [
        ("conv2d", lambda **a: fastconv.conv2d(x, w, **kw, **a)),
        ("conv2d_input", lambda **a: fastconv.conv2d_input(x.shape, w, dy, **kw, **a)),
        ("conv2d_weight", lambda **a: fastconv.conv2d_weight(x, w.shape, dy, **kw, **a)),
    ]:
        if op not in ops:
            continue
        if (op, algorithm, backend) not in _dispatch.REGISTRY:
            results[op] = None
            continue
        results[op], _ = ran_plan(lambda: call(algorithm=algorithm, backend=backend),
                                  op=op, algorithm=algorithm, backend=backend)
    return results


@pytest.fixture
def shared_data():
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent")
    return SHARED_DATA


def torch_or_skip():
    return pytest.importorskip("torch", reason="PyTorch is not installed: "
                               "pip install torch==2.13.0 for the PyTorch comparisons")
