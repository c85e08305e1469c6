"""fastconv against PyTorch's own conformance samples, and the argument forms PyTorch
accepts.

Part 1 runs every OpInfo ``sample_inputs`` case of PyTorch 2.13
(``torch.testing._internal.common_methods_invocations.op_db``) for conv2d,
conv_transpose2d, max_pool2d, avg_pool2d and adaptive_avg_pool2d, in float32 and
float64, through fastconv: the values (and max_pool2d's indices) must be PyTorch's, and
the input gradients of conv2d (and its weight and bias gradients), max_pool2d and
avg_pool2d autograd's. In float64, conv2d's samples (and their gradients) also run under
every registered algorithm that handles their geometry (in float32 too, the JIT would
add a minute on a cold cache). Every OpInfo ``error_inputs`` case must raise ValueError
or TypeError. Skipped without PyTorch or expecttest (which ``op_db`` needs).

Part 2 needs no PyTorch: 1-tuples for every pair argument, ``stride=()``/``None`` for
pooling, empty batches (``N = 0``) with PyTorch's result shapes, what is refused; and,
when PyTorch is there, the empty results against PyTorch's.
"""
import functools
import inspect
import types

import numpy as np
import pytest

import fastconv
from fastconv import _plan
from fastconv._geometry import conv_params

from conftest import DTYPES, TORCH_TOLERANCE, arrays, assert_close

# -- Part 1: PyTorch's OpInfo samples ------------------------------------------------------

OPS = {  # OpInfo name -> fastconv function (same argument order as torch.nn.functional)
    "nn.functional.conv2d": fastconv.conv2d,
    "nn.functional.conv_transpose2d": fastconv.conv_transpose2d,
    "nn.functional.max_pool2d": fastconv.max_pool2d,
    "nn.functional.avg_pool2d": fastconv.avg_pool2d,
    "nn.functional.adaptive_avg_pool2d": fastconv.adaptive_avg_pool2d,
}
MAX_LISTED = 5                 # at most this many failures are spelled out per assertion
EVERY_ALGORITHM_DTYPE = np.float64   # conv2d samples run under every algorithm in this dtype


def _torch():
    torch = pytest.importorskip("torch", reason="PyTorch is not installed: pip install "
                                "torch==2.13.0 for the OpInfo comparisons")
    pytest.importorskip("expecttest", reason="expecttest is not installed (PyTorch's OpInfo "
                        "database imports it): pip install expecttest")
    return torch


@functools.lru_cache(maxsize=None)
def _opinfo(name):
    from torch.testing._internal.common_methods_invocations import op_db
    found = [op for op in op_db if op.name == name and not op.variant_test_name]
    assert len(found) == 1, f"{len(found)} OpInfos named {name!r} in PyTorch's op_db"
    return found[0]


def _np(value):
    """A sample's argument for fastconv: tensors to arrays, containers element-wise."""
    import torch
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().resolve_conj().numpy()
    if isinstance(value, (tuple, list)):
        return type(value)(_np(v) for v in value)
    if isinstance(value, dict):
        return {k: _np(v) for k, v in value.items()}
    return value


def _describe(sample):
    def short(v):
        return f"tensor{tuple(v.shape)}" if hasattr(v, "shape") and v.ndim else repr(v)
    args = [short(sample.input)] + [short(a) for a in sample.args]
    args += [f"{k}={short(v)}" for k, v in sample.kwargs.items()]
    return f"({', '.join(args)})"


def _report(failures, ran, what):
    listed = "\n".join(failures[:MAX_LISTED])
    more = f"\n... and {len(failures) - MAX_LISTED} more" \
        if len(failures) > MAX_LISTED else ""
    return f"{len(failures)} of {ran} {what} failed:\n{listed}{more}"


def _conv_args(fn, sample, x, w):
    """The bound stride/padding/dilation/groups of a conv2d sample."""
    bound = inspect.signature(fn).bind(x, w, *sample.args[1:], **_np(sample.kwargs))
    bound.apply_defaults()
    return {k: bound.arguments[k] for k in ("stride", "padding", "dilation", "groups")}


def _check_conv2d(torch, sample, tol, algorithms):
    """conv2d's output and its input, weight and bias gradients against PyTorch, with
    ``auto`` and (``algorithms``) every registered algorithm that handles the geometry.
    Returns the ``(op, algorithm, backend)`` results checked."""
    x, w = sample.input, sample.args[0]
    bias = sample.args[1] if len(sample.args) > 1 else sample.kwargs.get("bias")
    want = torch.nn.functional.conv2d(x, *sample.args, **sample.kwargs)
    dy = torch.randn(want.shape, dtype=want.dtype, generator=torch.Generator().manual_seed(0))
    leaves = [t for t in (x, w, bias) if t is not None and t.requires_grad]
    grads = dict(zip(map(id, leaves), torch.autograd.grad(want, leaves, dy)))
    xn, wn, dyn = _np(x), _np(w), _np(dy)
    kw = _conv_args(fastconv.conv2d, sample, xn, wn)
    p = conv_params("conv2d", xn.shape if xn.ndim == 4 else (1,) + xn.shape, wn.shape, **kw)
    checked = []
    for op, call, expected in [
        ("conv2d", lambda **a: fastconv.conv2d(xn, wn, _np(bias), **kw, **a), want),
        ("conv2d_input", lambda **a: fastconv.conv2d_input(xn.shape, wn, dyn, **kw, **a),
         grads.get(id(x))),
        ("conv2d_weight", lambda **a: fastconv.conv2d_weight(xn, wn.shape, dyn, **kw, **a),
         grads.get(id(w))),
    ]:
        if expected is None:
            continue
        pairs = [("auto", "auto")] + [ab for ab in fastconv.algorithms(op)
                                      if algorithms and _plan.supports(ab[0], p)]
        for algorithm, backend in pairs:
            assert_close(call(algorithm=algorithm, backend=backend), _np(expected), tol,
                         f"{op} ({algorithm}, {backend})")
            checked.append((op, algorithm, backend))
    if bias is not None and bias.requires_grad:
        axes = (0, 2, 3) if dyn.ndim == 4 else (1, 2)
        assert_close(dyn.sum(axes), _np(grads[id(bias)]), tol, "bias gradient")
    return checked


def _check_pool(torch, name, sample, tol):
    """A pooling sample's output (max_pool2d: and indices) and, for max_pool2d and
    avg_pool2d, its input gradient against PyTorch's."""
    fn = OPS[name]
    torch_fn = getattr(torch.nn.functional, name.rsplit(".", 1)[1])
    want = torch_fn(sample.input, *sample.args, **sample.kwargs)
    xn, args, kwargs = _np(sample.input), _np(sample.args), _np(sample.kwargs)
    got = fn(xn, *args, **kwargs)
    if isinstance(want, tuple):                          # max_pool2d, return_indices=True
        assert isinstance(got, tuple) and len(got) == 2, "expected (values, indices)"
        assert_close(got[0], _np(want[0]), tol, "values")
        np.testing.assert_array_equal(got[1], _np(want[1]), err_msg="indices")
        want, got = want[0], got[0]
    else:
        assert_close(got, _np(want), tol, "values")
    if not sample.input.requires_grad or name == "nn.functional.adaptive_avg_pool2d":
        return
    dy = torch.randn(want.shape, dtype=want.dtype, generator=torch.Generator().manual_seed(1))
    (dx,) = torch.autograd.grad(want, [sample.input], dy)
    bound = inspect.signature(fn).bind(xn, *args, **kwargs)
    bound.apply_defaults()
    a = bound.arguments
    if name == "nn.functional.max_pool2d":
        _, idx = fn(xn, a["kernel_size"], a["stride"], a["padding"], a["dilation"],
                    a["ceil_mode"], True)
        got_dx = fastconv.max_pool2d_backward(_np(dy), idx, xn.shape)
    else:
        got_dx = fastconv.avg_pool2d_backward(_np(dy), xn.shape, a["kernel_size"], a["stride"],
                                              a["padding"], a["ceil_mode"],
                                              a["count_include_pad"], a["divisor_override"])
    assert_close(got_dx, _np(dx), tol, "input gradient")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name", list(OPS), ids=lambda n: n.rsplit(".", 1)[1])
def test_opinfo_samples_match_pytorch(name, dtype):
    torch = _torch()
    op = _opinfo(name)
    tdtype = getattr(torch, np.dtype(dtype).name)
    tol = TORCH_TOLERANCE[dtype]
    grad = name != "nn.functional.adaptive_avg_pool2d"
    samples = list(op.sample_inputs("cpu", tdtype, requires_grad=grad))
    failures, checked = [], []
    for i, sample in enumerate(samples):
        try:
            if name == "nn.functional.conv2d":
                checked += _check_conv2d(torch, sample, tol,
                                         algorithms=dtype == EVERY_ALGORITHM_DTYPE)
            elif name == "nn.functional.conv_transpose2d":
                want = torch.nn.functional.conv_transpose2d(sample.input, *sample.args,
                                                            **sample.kwargs)
                got = fastconv.conv_transpose2d(_np(sample.input), *_np(sample.args),
                                                **_np(sample.kwargs))
                assert_close(got, _np(want), tol, "values")
            else:
                _check_pool(torch, name, sample, tol)
        except Exception as exc:                         # noqa: BLE001 - reported below
            failures.append(f"sample {i} {_describe(sample)}: {type(exc).__name__}: {exc}")
    assert samples, f"PyTorch's OpInfo {name} gave no samples for {tdtype}"
    assert not failures, _report(failures, len(samples), f"{name} {tdtype} samples")
    if name == "nn.functional.conv2d":
        # every sample ran auto's forward and both gradients; every algorithm ran somewhere
        runs = sum(c[1:] == ("auto", "auto") for c in checked)
        assert runs == 3 * len(samples), f"{runs} auto results for {len(samples)} samples"
        if dtype == EVERY_ALGORITHM_DTYPE:
            registered = {(op, *ab) for op in ("conv2d", "conv2d_input", "conv2d_weight")
                          for ab in fastconv.algorithms(op)}
            assert registered <= set(checked), \
                f"never run on an OpInfo sample: {sorted(registered - set(checked))}"


@pytest.mark.parametrize("name", list(OPS), ids=lambda n: n.rsplit(".", 1)[1])
def test_opinfo_error_inputs_are_refused(name):
    _torch()
    op = _opinfo(name)
    if op.error_inputs_func is None:
        pytest.skip(f"PyTorch's OpInfo {name} defines no error_inputs")
    cases = list(op.error_inputs("cpu"))
    failures = []
    for i, case in enumerate(cases):
        sample = case.sample_input
        try:
            OPS[name](_np(sample.input), *_np(sample.args), **_np(sample.kwargs))
        except (ValueError, TypeError):
            continue
        except Exception as exc:                         # noqa: BLE001 - reported below
            failures.append(f"case {i} {_describe(sample)}: raised {type(exc).__name__}: {exc}"
                            f" (PyTorch: {case.error_type.__name__} {case.error_regex!r})")
        else:
            failures.append(f"case {i} {_describe(sample)}: accepted (PyTorch: "
                            f"{case.error_type.__name__} {case.error_regex!r})")
    assert cases, f"PyTorch's OpInfo {name} gave no error_inputs"
    assert not failures, _report(failures, len(cases), f"{name} error inputs") + \
        "\n(each must raise ValueError or TypeError)"


# -- Part 2: argument forms, without PyTorch -----------------------------------------------

x, w = arrays(0, np.float64, (2, 4, 9, 8), (6, 2, 3, 3))     # groups=2
dy_conv = arrays(1, np.float64, (2, 6, 4, 3))[0]           # stride 2, padding 1, dilation 2
xt, wt = arrays(2, np.float64, (2, 4, 5, 4), (4, 3, 3, 3))   # conv_transpose2d, C_out=6
CONV = dict(stride=2, padding=1, dilation=2, groups=2)

# (op, call taking the pair arguments as keywords, {argument: valid int value})
PAIR_ARGS = [
    ("conv2d", lambda **a: fastconv.conv2d(x, w, groups=2, **a),
     dict(stride=2, padding=1, dilation=2)),
    ("conv2d_input", lambda **a: fastconv.conv2d_input(x.shape, w, dy_conv, **{**CONV, **a}),
     dict(stride=2, padding=1, dilation=2)),
    ("conv2d_weight", lambda **a: fastconv.conv2d_weight(x, w.shape, dy_conv, **{**CONV, **a}),
     dict(stride=2, padding=1, dilation=2)),
    ("conv_transpose2d", lambda **a: fastconv.conv_transpose2d(xt, wt, **{"stride": 2,
                                                                       "groups": 2, **a}),
     dict(stride=2, padding=1, dilation=2, output_padding=1)),
    ("max_pool2d", lambda **a: fastconv.max_pool2d(x, **{"kernel_size": 3, **a}),
     dict(kernel_size=3, stride=2, padding=1, dilation=2)),
    ("avg_pool2d", lambda **a: fastconv.avg_pool2d(x, **{"kernel_size": 3, **a}),
     dict(kernel_size=3, stride=2, padding=1)),
    ("avg_pool2d_backward",
     lambda **a: fastconv.avg_pool2d_backward(np.ones((2, 4, 4, 3)), x.shape, **{
         "kernel_size": 3, "stride": 2, "padding": 0, **a}),
     dict(kernel_size=3, stride=2, padding=0)),
]


@pytest.mark.parametrize("op,call,args", PAIR_ARGS, ids=[c[0] for c in PAIR_ARGS])
def test_one_element_tuples_mean_the_pair(op, call, args):
    """PyTorch reads ``(v,)`` and ``[v]`` as ``(v, v)`` for every pair argument."""
    for name, v in args.items():
        want = call(**{name: v})
        for form in [(v,), [v], (v, v), (np.int64(v),)]:
            got = call(**{name: form})
            np.testing.assert_array_equal(got, want, err_msg=f"{op}: {name}={form!r}")


@pytest.mark.parametrize("op,call,args", PAIR_ARGS, ids=[c[0] for c in PAIR_ARGS])
def test_pair_arguments_of_other_lengths_and_types_are_refused(op, call, args):
    for name in args:
        for bad, exc in [((), ValueError), ((1, 1, 1), ValueError), (True, TypeError),
                         ((True,), TypeError), (2.0, TypeError), ((1, 2.0), TypeError),
                         (None, TypeError), ("2", TypeError)]:
            if bad is None and name == "stride" and "pool" in op:
                continue                                 # pooling: stride=None is the default
            if bad == () and name == "stride" and "pool" in op:
                continue
            if isinstance(bad, str) and name == "padding" and op.startswith("conv2d"):
                exc = ValueError                         # conv2d's padding takes 'same'/'valid'
            with pytest.raises(exc, match=name):
                call(**{name: bad})


@pytest.mark.parametrize("op", ["max_pool2d", "avg_pool2d"])
def test_pool_stride_empty_tuple_and_none_mean_kernel_size(op):
    call = getattr(fastconv, op)
    want = call(x, (3, 2), (3, 2))
    for stride in [(), [], None]:
        np.testing.assert_array_equal(call(x, (3, 2), stride), want, err_msg=f"{stride!r}")
    dy = np.ones((2, 4, 3, 4))
    want = fastconv.avg_pool2d_backward(dy, x.shape, (3, 2), (3, 2))
    for stride in [(), [], None]:
        np.testing.assert_array_equal(fastconv.avg_pool2d_backward(dy, x.shape, (3, 2), stride),
                                      want, err_msg=f"avg_pool2d_backward {stride!r}")


def test_adaptive_output_size_forms():
    """An int, a pair, None for the input's size; a 1-tuple is refused (as PyTorch)."""
    np.testing.assert_array_equal(fastconv.adaptive_avg_pool2d(x, 3),
                                  fastconv.adaptive_avg_pool2d(x, (3, 3)))
    np.testing.assert_array_equal(fastconv.adaptive_avg_pool2d(x, [np.int64(3), None]),
                                  fastconv.adaptive_avg_pool2d(x, (3, 8)))
    assert fastconv.adaptive_avg_pool2d(x, 0).shape == (2, 4, 0, 0)
    assert fastconv.adaptive_avg_pool2d(x, (0, None)).shape == (2, 4, 0, 8)
    for bad, exc in [((3,), ValueError), ((), ValueError), ((1, 2, 3), ValueError),
                     ((-1, 0), ValueError), (True, TypeError), (3.0, TypeError),
                     ((3.0, 2), TypeError), (None, TypeError)]:
        with pytest.raises(exc, match="output_size"):
            fastconv.adaptive_avg_pool2d(x, bad)


def test_flags_and_divisor_take_what_pytorch_takes():
    np.testing.assert_array_equal(fastconv.avg_pool2d(x, 2, divisor_override=-3),
                                  -fastconv.avg_pool2d(x, 2, divisor_override=3))
    dy = np.ones((2, 4, 4, 4))
    np.testing.assert_array_equal(
        fastconv.avg_pool2d_backward(dy, x.shape, 2, divisor_override=-3),
        -fastconv.avg_pool2d_backward(dy, x.shape, 2, divisor_override=3))
    for kwargs, exc, word in [
        (dict(divisor_override=0), ValueError, "divisor_override"),
        (dict(divisor_override=2.0), TypeError, "divisor_override"),
        (dict(divisor_override=True), TypeError, "divisor_override"),
        (dict(ceil_mode=1), TypeError, "ceil_mode"),
        (dict(ceil_mode=None), TypeError, "ceil_mode"),
        (dict(count_include_pad=0), TypeError, "count_include_pad"),
    ]:
        with pytest.raises(exc, match=word):
            fastconv.avg_pool2d(x, 2, **kwargs)
    with pytest.raises(TypeError, match="ceil_mode"):
        fastconv.max_pool2d(x, 2, ceil_mode=1)
    for groups, exc in [(True, TypeError), (2.0, TypeError), (None, TypeError),
                        (0, ValueError), (-1, ValueError)]:
        with pytest.raises(exc, match="groups"):
            fastconv.conv2d(x, w, groups=groups)
        with pytest.raises(exc, match="groups"):
            fastconv.conv_transpose2d(xt, wt, groups=groups)


def test_validation_memo_tells_apart_equal_values_of_other_types():
    """2 == 2.0 == True-ish: the memoised checks must not let 2.0 or True through after
    2 or 1 passed."""
    fastconv.conv2d(x, w, stride=2, groups=2)
    fastconv.conv2d(x, w, stride=1, groups=2)
    fastconv.max_pool2d(x, 2, ceil_mode=True)
    with pytest.raises(TypeError, match="stride"):
        fastconv.conv2d(x, w, stride=2.0, groups=2)
    with pytest.raises(TypeError, match="stride"):
        fastconv.conv2d(x, w, stride=True, groups=2)
    with pytest.raises(TypeError, match="stride"):
        fastconv.conv2d(x, w, stride=(True, 1), groups=2)
    with pytest.raises(TypeError, match="groups"):
        fastconv.conv2d(x, w, groups=2.0)
    with pytest.raises(TypeError, match="ceil_mode"):
        fastconv.max_pool2d(x, 2, ceil_mode=1)


# Empty batches: (name, fastconv call on an N=0 batch, PyTorch's result shape,
# the same call in PyTorch, given th.F = torch.nn.functional, th.grad = torch.nn.grad
# and th.t = torch.from_numpy; None where PyTorch has no such function)
e = np.zeros((0, 4, 9, 8))                  # empty batches
e32, w32 = e.astype(np.float32), w.astype(np.float32)
dy0, et = np.zeros((0, 6, 4, 3)), np.zeros((0, 4, 5, 4))
b6 = np.zeros(6)
xc0, wc0, dyc0 = np.zeros((2, 0, 9, 8)), np.zeros((6, 0, 3, 3)), np.zeros((2, 0, 7, 6))
EMPTY = [
    ("conv2d", lambda: fastconv.conv2d(e, w, b6, **CONV), (0, 6, 4, 3),
     lambda th: th.F.conv2d(th.t(e), th.t(w), th.t(b6), **CONV)),
    ("conv2d float32 same", lambda: fastconv.conv2d(e32, w32, padding="same", groups=2),
     (0, 6, 9, 8), lambda th: th.F.conv2d(th.t(e32), th.t(w32), padding="same", groups=2)),
    ("conv2d_input", lambda: fastconv.conv2d_input(e.shape, w, dy0, **CONV), (0, 4, 9, 8),
     lambda th: th.grad.conv2d_input(e.shape, th.t(w), th.t(dy0), **CONV)),
    ("conv2d_weight", lambda: fastconv.conv2d_weight(e, w.shape, dy0, **CONV), (6, 2, 3, 3),
     lambda th: th.grad.conv2d_weight(th.t(e), w.shape, th.t(dy0), **CONV)),
    ("conv_transpose2d", lambda: fastconv.conv_transpose2d(et, wt, b6, 2, 1, 1, 2, 2),
     (0, 6, 12, 10), lambda th: th.F.conv_transpose2d(th.t(et), th.t(wt), th.t(b6), 2, 1, 1, 2, 2)),
    ("max_pool2d", lambda: fastconv.max_pool2d(e, 3, 2, 1, 2, True), (0, 4, 4, 4),
     lambda th: th.F.max_pool2d(th.t(e), 3, 2, 1, 2, True)),
    ("max_pool2d indices", lambda: fastconv.max_pool2d(e, 3, return_indices=True)[1],
     (0, 4, 3, 2), lambda th: th.F.max_pool2d(th.t(e), 3, return_indices=True)[1]),
    ("max_pool2d_backward", lambda: fastconv.max_pool2d_backward(
        np.zeros((0, 4, 3, 2)), np.zeros((0, 4, 3, 2), np.int64), e.shape), (0, 4, 9, 8), None),
    ("avg_pool2d", lambda: fastconv.avg_pool2d(e, (3,), (), (1,), True, False, -2),
     (0, 4, 4, 3), lambda th: th.F.avg_pool2d(th.t(e), (3,), (), (1,), True, False, -2)),
    ("avg_pool2d_backward", lambda: fastconv.avg_pool2d_backward(np.zeros((0, 4, 3, 2)),
                                                                 e.shape, 3), (0, 4, 9, 8), None),
    ("adaptive_avg_pool2d", lambda: fastconv.adaptive_avg_pool2d(e, (5, None)), (0, 4, 5, 8),
     lambda th: th.F.adaptive_avg_pool2d(th.t(e), (5, None))),
    # a convolution's empty channel axis: PyTorch gives an output without channels
    ("conv2d C=0", lambda: fastconv.conv2d(xc0, wc0, b6), (2, 0, 7, 6),
     lambda th: th.F.conv2d(th.t(xc0), th.t(wc0), th.t(b6))),
    ("conv2d C=0 unbatched", lambda: fastconv.conv2d(xc0[0], wc0), (0, 7, 6),
     lambda th: th.F.conv2d(th.t(xc0[0]), th.t(wc0))),
    ("conv2d_input C=0", lambda: fastconv.conv2d_input(xc0.shape, wc0, dyc0), (2, 0, 9, 8),
     lambda th: th.grad.conv2d_input(xc0.shape, th.t(wc0), th.t(dyc0))),
    ("conv2d_weight C=0", lambda: fastconv.conv2d_weight(xc0, wc0.shape, dyc0), (6, 0, 3, 3),
     lambda th: th.grad.conv2d_weight(th.t(xc0), wc0.shape, th.t(dyc0))),
    ("adaptive_avg_pool2d C=0", lambda: fastconv.adaptive_avg_pool2d(xc0, 3), (2, 0, 3, 3),
     lambda th: th.F.adaptive_avg_pool2d(th.t(xc0), 3)),
]


def _no_kernels(monkeypatch):
    """Make planning and running any kernel raise: an empty result must not reach one."""
    def boom(*args, **kwargs):
        raise AssertionError("a kernel was called for an empty result")
    monkeypatch.setattr(_plan, "make", boom)
    monkeypatch.setattr(_plan, "run", boom)


@pytest.mark.parametrize("name,call,shape,torch_call", EMPTY, ids=[c[0] for c in EMPTY])
def test_empty_batch_gives_pytorchs_shape_without_a_kernel(name, call, shape, torch_call,
                                                           monkeypatch):
    _no_kernels(monkeypatch)
    got = call()
    assert got.shape == shape, f"{name}: shape {got.shape}, PyTorch's is {shape}"
    assert not got.any(), f"{name}: nonzero entries in an empty result / zero gradient"
    if name.startswith("conv2d_weight") and got.size:
        assert got.dtype == w.dtype


@pytest.mark.parametrize("name,call,shape,torch_call",
                         [c for c in EMPTY if c[3] is not None],
                         ids=[c[0] for c in EMPTY if c[3] is not None])
def test_empty_batch_matches_pytorch(name, call, shape, torch_call):
    torch = pytest.importorskip("torch", reason="PyTorch is not installed: pip install "
                                "torch==2.13.0 for the PyTorch comparisons")
    th = types.SimpleNamespace(F=torch.nn.functional, grad=torch.nn.grad,
                               t=lambda a: torch.from_numpy(np.ascontiguousarray(a)))
    want = torch_call(th)
    got = call()
    assert tuple(want.shape) == got.shape == shape
    assert str(want.dtype) == f"torch.{got.dtype}"
    np.testing.assert_array_equal(got, want.numpy())


REFUSED_EMPTY = [  # PyTorch refuses these too
    ("conv2d H=0", lambda: fastconv.conv2d(np.zeros((2, 4, 0, 8)), w, groups=2), "no rows"),
    ("conv2d N=0 H=0", lambda: fastconv.conv2d(np.zeros((0, 4, 0, 8)), w, groups=2), "no rows"),
    ("conv2d K=0", lambda: fastconv.conv2d(x, np.zeros((0, 4, 3, 3))), "K=0"),
    ("conv2d R=0", lambda: fastconv.conv2d(x, np.zeros((6, 4, 0, 3))), "kernel"),
    ("conv2d N=0 too small", lambda: fastconv.conv2d(np.zeros((0, 4, 2, 2)), w, groups=2),
     "empty"),
    ("conv2d N=0 channels", lambda: fastconv.conv2d(np.zeros((0, 3, 9, 8)), w, groups=2),
     "channels"),
    ("conv2d_input N=0 grad shape", lambda: fastconv.conv2d_input(
        e.shape, w, np.zeros((0, 6, 5, 5)), groups=2), "grad_output"),
    ("conv_transpose2d C_in=0", lambda: fastconv.conv_transpose2d(
        np.zeros((2, 0, 5, 4)), np.zeros((0, 3, 3, 3))), "only the batch"),
    ("conv_transpose2d C_out=0", lambda: fastconv.conv_transpose2d(
        xt, np.zeros((4, 0, 3, 3))), "only the batch"),
    ("conv_transpose2d H=0", lambda: fastconv.conv_transpose2d(
        np.zeros((2, 4, 0, 4)), wt), "only the batch"),
    ("max_pool2d C=0", lambda: fastconv.max_pool2d(np.zeros((2, 0, 9, 8)), 2), "only the batch"),
    ("max_pool2d unbatched C=0", lambda: fastconv.max_pool2d(np.zeros((0, 9, 8)), 2),
     "only the batch"),
    ("max_pool2d W=0", lambda: fastconv.max_pool2d(np.zeros((0, 4, 9, 0)), 2), "only the batch"),
    ("max_pool2d N=0 too small", lambda: fastconv.max_pool2d(np.zeros((0, 4, 1, 1)), 2),
     "empty"),
    ("avg_pool2d N=0 padding", lambda: fastconv.avg_pool2d(e, 2, padding=2), "half"),
    ("avg_pool2d_backward N=0 shape", lambda: fastconv.avg_pool2d_backward(
        np.zeros((0, 4, 3, 3)), e.shape, 3), "grad_output"),
    ("max_pool2d_backward C=0", lambda: fastconv.max_pool2d_backward(
        np.zeros((2, 0, 3, 3)), np.zeros((2, 0, 3, 3), np.int64), (2, 0, 9, 8)), "only the batch"),
    ("adaptive H=0", lambda: fastconv.adaptive_avg_pool2d(np.zeros((2, 4, 0, 8)), 2), "no rows"),
]


@pytest.mark.parametrize("name,call,word", REFUSED_EMPTY, ids=[c[0] for c in REFUSED_EMPTY])
def test_empty_axes_pytorch_refuses_are_refused(name, call, word):
    with pytest.raises(ValueError, match=word):
        call()
