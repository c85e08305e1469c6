"""The registry: every registered kernel against the NumPy reference over random valid
geometries (forward and both gradients), the algorithms against each other, and the
registry itself (built from the backends' manifests; ``import fastconv`` loads no JIT).

A kernel added to a backend's manifest is tested here without a line of new test code;
algorithms that handle only some geometries draw from those (``conftest.LIMITS``, which
a test below checks are exactly the selector's ``SUPPORTS`` rules).
"""
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastconv
from fastconv import _dispatch, _plan
from fastconv._geometry import ConvParams

from conftest import (DTYPES, LIMITS, arrays, assert_close, conv_cases, conv_outputs,
                      kernel_pairs, tolerance)

CONV_OPS = ("conv2d", "conv2d_input", "conv2d_weight")
CONV_PAIRS = sorted({ab for op in CONV_OPS for ab in kernel_pairs(op)})


# -- Every kernel against the reference ------------------------------------------------------


@pytest.mark.parametrize("algorithm,backend", CONV_PAIRS)
@settings(max_examples=60)
@given(data=st.data(), dtype=st.sampled_from(DTYPES))
def test_conv_kernel_matches_reference(algorithm, backend, data, dtype):
    """Forward, grad-input and grad-weight of each (algorithm, backend), each call
    checked to have run that pair's plan (``conv_outputs``)."""
    case = data.draw(conv_cases(algorithm))
    p = case["params"]
    assert _plan.supports(algorithm, p), f"strategy drew an unsupported case {p}"
    x, w, dy = arrays(p.N * 7 + p.K, dtype, p.input_shape, p.weight_shape, p.output_shape)
    got = conv_outputs(case, x, w, dy, algorithm, backend)
    want = conv_outputs(case, x, w, dy, "reference", "numpy")
    tol = tolerance(dtype, algorithm)
    assert any(v is not None for v in got.values()), f"{algorithm}/{backend} ran no op"
    for op, value in got.items():
        if value is not None:
            assert value.dtype == dtype, f"{op}: dtype {value.dtype} != {dtype}"
            assert_close(value, want[op], tol, f"{op} {algorithm}/{backend} {p}")


def _others(op, algorithm, p):
    """Registered (algorithm, backend) pairs of ``op``, not the reference and not
    ``algorithm``, that handle ``p``."""
    return [(a, b) for a, b in kernel_pairs(op) if a != algorithm and _plan.supports(a, p)]


@pytest.mark.parametrize("algorithm,backend", CONV_PAIRS)
@settings(max_examples=20)
@given(data=st.data())
def test_conv_algorithms_agree_with_each_other(algorithm, backend, data):
    """Each algorithm against another registered algorithm that handles the geometry
    (drawn among them: never itself), float64, for every op: two fast paths that agree
    with each other, not only with the reference."""
    case = data.draw(conv_cases(algorithm))
    p = case["params"]
    x, w, dy = arrays(1, np.float64, p.input_shape, p.weight_shape, p.output_shape)
    got = conv_outputs(case, x, w, dy, algorithm, backend)
    compared = 0
    for op, value in got.items():
        if value is None:
            continue
        others = _others(op, algorithm, p)
        # im2col and direct handle every geometry: a limited algorithm always has them
        assert others, f"{op}: no other algorithm handles {p}"
        other, other_backend = data.draw(st.sampled_from(others), label=f"other for {op}")
        assert other != algorithm
        want = conv_outputs(case, x, w, dy, other, other_backend, ops=(op,))[op]
        tol = max(tolerance(np.float64, algorithm), tolerance(np.float64, other))
        assert_close(value, want, tol, f"{op} {algorithm} vs {other} {p}")
        compared += 1
    assert compared, f"{algorithm}/{backend} was compared on no op"


def _pointwise(N, H, W, groups):
    return fastconv._geometry.conv_params("test", (N, 6, H, W), (10, 6 // groups, 1, 1),
                                          groups=groups)


POINTWISE_CASES = [(a, b, N, HW, groups) for a, b in CONV_PAIRS
                   for N, HW, groups in [(1, (5, 7), 1), (3, (5, 7), 1), (3, (5, 7), 2),
                                         (2, (12, 12), 1), (2, (12, 12), 2)]
                   if _plan.supports(a, _pointwise(N, *HW, groups))]


@pytest.mark.parametrize("algorithm,backend,N,HW,groups", POINTWISE_CASES)
def test_pointwise_layers_match_reference(algorithm, backend, N, HW, groups):
    """1x1 stride-1 layers (rare among the random geometries above) take their own
    paths: one GEMM per image, or one for the whole batch when planes are small."""
    H, W = HW
    params = _pointwise(N, H, W, groups)
    case = dict(N=N, C=6, H=H, W=W, K=10, R=1, S=1, stride=(1, 1), padding=(0, 0),
                dilation=(1, 1), groups=groups, params=params)
    x, w, dy = arrays(N, np.float64, params.input_shape, params.weight_shape, params.output_shape)
    got = conv_outputs(case, x, w, dy, algorithm, backend)
    want = conv_outputs(case, x, w, dy, "reference", "numpy")
    for op, value in got.items():
        if value is not None:
            assert_close(value, want[op], tolerance(np.float64, algorithm), f"{op} {algorithm} {params}")


@pytest.mark.parametrize("algorithm,backend", CONV_PAIRS)
def test_conv_is_deterministic(algorithm, backend):
    x, w = arrays(2, np.float32, (2, 8, 17, 15), (8, 8, 3, 3))
    a = fastconv.conv2d(x, w, padding=1, algorithm=algorithm, backend=backend)
    b = fastconv.conv2d(x, w, padding=1, algorithm=algorithm, backend=backend)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("algorithm,backend", CONV_PAIRS)
def test_weights_changed_in_place_are_never_served_stale(algorithm, backend):
    """Kernels may cache what they derive from a weight; an optimiser step that edits
    the same array in place must still give the new answer (forward and grad-input)."""
    x, w, dy = arrays(7, np.float32, (2, 16, 12, 12), (16, 16, 3, 3), (2, 16, 12, 12))
    kw = dict(padding=1, algorithm=algorithm, backend=backend)
    for _ in range(2):   # the second round finds whatever the first one cached
        for edit in (lambda: w.__imul__(-0.5), lambda: w.__setitem__((3, 5, 1, 2), 7.0)):
            fastconv.conv2d(x, w, **kw)
            fastconv.conv2d_input(x.shape, w, dy, **kw)
            edit()
            assert_close(fastconv.conv2d(x, w, **kw),
                         fastconv.conv2d(x, w, padding=1, algorithm="reference"),
                         tolerance(np.float32, algorithm), f"{algorithm} after an in-place edit")
            assert_close(fastconv.conv2d_input(x.shape, w, dy, **kw),
                         fastconv.conv2d_input(x.shape, w, dy, padding=1, algorithm="reference"),
                         tolerance(np.float32, algorithm), f"{algorithm} grad-input after an edit")


# -- The strategies' limits are the selector's rules -------------------------------------


def _within(limits, p):
    """Whether geometry ``p`` is inside an entry of ``LIMITS``."""
    checks = dict(kernel=(p.R, p.S), stride=(p.stride_h, p.stride_w),
                  dilation=(p.dil_h, p.dil_w), groups=(p.groups,))
    return all(v == want for name, want in limits.items() for v in checks[name])


def test_limits_name_exactly_the_limited_algorithms():
    """LIMITS has an entry for every registered algorithm with a SUPPORTS rule and for
    no other: a new limited algorithm must say which geometries its tests draw."""
    registered = {a for op in CONV_OPS for a, _ in kernel_pairs(op)}
    assert set(LIMITS) == set(_plan.SUPPORTS) & registered
    assert set(_plan.SUPPORTS) <= registered, "a SUPPORTS rule for an unregistered algorithm"


@pytest.mark.parametrize("algorithm", sorted(LIMITS))
@settings(max_examples=200)
@given(data=st.data())
def test_limits_are_the_supports_rule(algorithm, data):
    """Every case drawn for a limited algorithm satisfies its rule; on any drawn
    geometry, and on a drawn case with some of its kernel size, strides, dilations and
    groups changed, the rule accepts exactly those inside the limits."""
    limited = data.draw(conv_cases(algorithm))["params"]
    assert _plan.supports(algorithm, limited), f"drawn for {algorithm}, refused: {limited}"
    anything = data.draw(conv_cases())["params"]
    assert _plan.supports(algorithm, anything) == _within(LIMITS[algorithm], anything), anything
    one, two = st.integers(1, 5), st.integers(1, 3)
    changes = data.draw(st.fixed_dictionaries({}, optional=dict(
        R=one, S=one, stride_h=two, stride_w=two, dil_h=two, dil_w=two,
        groups=st.sampled_from([1, 2, 4]))), label="changes")
    near = ConvParams(**{**limited.__dict__, **changes})
    assert _plan.supports(algorithm, near) == _within(LIMITS[algorithm], near), near


def _just_outside(limits, p):
    """Geometries one step outside each limit of ``limits`` from ``p`` (inside them)."""
    steps = {"kernel": lambda v: [dict(R=v + 1), dict(S=v - 1)],
             "stride": lambda v: [dict(stride_h=v + 1), dict(stride_w=v + 1)],
             "dilation": lambda v: [dict(dil_h=v + 1), dict(dil_w=v + 1)],
             "groups": lambda v: [dict(groups=v * 2)]}
    return [ConvParams(**{**p.__dict__, **change}) for name, v in limits.items()
            for change in steps[name](v)]


@pytest.mark.parametrize("algorithm", sorted(LIMITS))
def test_a_geometry_just_outside_the_limits_is_refused(algorithm):
    lim = LIMITS[algorithm]
    k = lim.get("kernel", 3)
    inside = fastconv._geometry.conv_params("t", (1, 4, 8, 8), (4, 4 // lim["groups"], k, k),
                                            lim["stride"], 1, lim["dilation"], lim["groups"])
    assert _plan.supports(algorithm, inside)
    outside = _just_outside(lim, inside)
    assert len(outside) == 2 * ("kernel" in lim) + 5
    for p in outside:
        assert not _plan.supports(algorithm, p), f"{algorithm} accepts {p}"
        assert not _within(lim, p)


# -- The registry ----------------------------------------------------------------------------


def test_registry_is_built_from_the_manifests():
    """REGISTRY: the reference for every op, and each available backend's manifest
    entries, nothing else; pairs() and algorithms() read it."""
    want = {(op, "reference", "numpy") for op in _dispatch.OPS}
    for name in _dispatch.available_backends():
        if name != "numpy":
            manifest = _dispatch._MANIFESTS[name]
            want |= {(op, a, name) for op, a in manifest.KERNELS}
    assert set(_dispatch.REGISTRY) == want
    assert len(_dispatch.REGISTRY) == len(want), "a kernel registered twice"
    for op in _dispatch.OPS:
        assert fastconv.algorithms(op) == list(_dispatch.pairs(op))
        assert [(a, b) for o, a, b in _dispatch.REGISTRY if o == op] == fastconv.algorithms(op)
    assert _dispatch.available_backends()[-1] == "numpy"
    assert set(_dispatch.available_backends()) - {"numpy"} <= set(_dispatch.PREFERENCE)


def test_every_registered_kernel_loads():
    for op, algorithm, backend in _dispatch.REGISTRY:
        assert callable(_dispatch.kernel(op, algorithm, backend)), (op, algorithm, backend)
    with pytest.raises(ValueError, match="no kernel"):
        _dispatch.kernel("conv2d", "fft", "numba")


def test_every_listed_pair_is_accepted():
    """algorithms(op) lists only pairs its op's algorithm=/backend= accept, and each
    call runs that pair's plan."""
    x, w = arrays(0, np.float32, (1, 2, 6, 6), (2, 2, 3, 3))
    calls = {"conv2d": lambda **a: fastconv.conv2d(x, w, padding=1, **a),
             "max_pool2d": lambda **a: fastconv.max_pool2d(x, 2, **a),
             "avg_pool2d": lambda **a: fastconv.avg_pool2d(x, 2, **a)}
    for op, call in calls.items():
        for algorithm, backend in fastconv.algorithms(op):
            with fastconv.trace_plans() as ran:
                call(algorithm=algorithm, backend=backend)
            assert [(pl.op, pl.algorithm, pl.backend) for pl in ran] == [(op, algorithm, backend)]
    assert ("reference", "numpy") in fastconv.algorithms("conv2d_weight")


def _python(code):
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    return run.stdout


def test_import_and_planning_do_not_load_numba():
    """``import fastconv`` and planning read the manifests only; the first Numba kernel
    run loads Numba (auto's Cython kernels do not)."""
    _python("import sys, fastconv\n"
            "assert 'numba' not in sys.modules, 'import fastconv imported numba'\n"
            "fastconv.plan('conv2d', (1, 64, 56, 56), (64, 64, 3, 3), padding=1)\n"
            "fastconv.plan('max_pool2d', (1, 4, 8, 8), kernel_size=2)\n"
            "assert 'numba' not in sys.modules, 'planning imported numba'\n")
    if "numba" in _dispatch.available_backends():
        _python("import sys, numpy as np, fastconv\n"
                "fastconv.max_pool2d(np.zeros((1, 1, 4, 4), np.float32), 2)\n"
                "assert ('numba' in sys.modules) == (fastconv.plan('max_pool2d', (1, 1, 4, 4), "
                "kernel_size=2).backend == 'numba')\n"
                "fastconv.max_pool2d(np.zeros((1, 1, 4, 4), np.float32), 2, backend='numba')\n"
                "assert 'numba' in sys.modules\n")


# -- The process default backend: set_backend, FASTCONV_BACKEND ------------------------------


def test_set_backend_sets_the_default_and_a_call_still_wins():
    x, w = arrays(0, np.float32, (1, 4, 8, 8), (4, 4, 3, 3))
    assert fastconv.get_backend() == "auto"
    for name in _dispatch.available_backends():
        fastconv.set_backend(name)
        assert fastconv.get_backend() == name
        with fastconv.trace_plans() as ran:
            fastconv.conv2d(x, w, padding=1)
            fastconv.max_pool2d(x, 2)
        assert [p.backend for p in ran] == [name, name]
        other = "numpy" if name != "numpy" else _dispatch.available_backends()[0]
        assert fastconv.plan("conv2d", x.shape, w.shape, backend=other).backend == other
    fastconv.set_backend("auto")
    assert fastconv.plan("conv2d", x.shape, w.shape, algorithm="reference").backend == "numpy"


@pytest.mark.parametrize("bad", ["bogus", "NUMBA", "", None, 1])
def test_set_backend_refuses_what_is_not_available(bad):
    names = ", ".join(_dispatch.available_backends())
    with pytest.raises(ValueError, match=rf"set_backend: .*{bad!r}.*available: {names}, or 'auto'"):
        fastconv.set_backend(bad)
    assert fastconv.get_backend() == "auto"


def test_fastconv_backend_environment_variable():
    env = dict(os.environ)
    for name in _dispatch.available_backends():
        env["FASTCONV_BACKEND"] = name.upper()
        run = subprocess.run([sys.executable, "-c", "import fastconv; print(fastconv.get_backend())"],
                             capture_output=True, text=True, timeout=300, env=env)
        assert run.returncode == 0 and run.stdout.strip() == name, run.stderr
    env["FASTCONV_BACKEND"] = "fortran"
    run = subprocess.run([sys.executable, "-c", "import fastconv"], capture_output=True,
                         text=True, timeout=300, env=env)
    assert run.returncode != 0
    assert ("FASTCONV_BACKEND: unknown or unavailable backend 'fortran'; available: "
            + ", ".join(_dispatch.available_backends())) in run.stderr
