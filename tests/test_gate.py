"""The regression gate's decision rule (ci/bench_gate.py), on made-up scores."""
import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location(
    "bench_gate", Path(__file__).resolve().parents[1] / "ci" / "bench_gate.py")
gate = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gate)


def _scores(**kw):
    return {"scores": {k: dict(score=v[0], spread=v[1]) for k, v in kw.items()}}


def test_a_real_slowdown_fails_and_noise_does_not():
    baseline = _scores(a=(1.0, 0.01), b=(2.0, 0.01), c=(1.0, 0.01))
    results = _scores(a=(1.5, 0.01), b=(2.2, 0.01), c=(0.5, 0.01))   # a: 50% slower
    assert gate.compare(results, baseline, tolerance=0.25) == ["a"]


def test_noisy_measurements_widen_the_allowance_but_only_so_far():
    baseline = _scores(a=(1.0, 0.10))
    assert gate.compare(_scores(a=(1.4, 0.10)), baseline, 0.25) == []      # within noise
    assert gate.compare(_scores(a=(1.6, 0.90)), baseline, 0.25) == ["a"]   # capped room


def test_cases_missing_from_the_baseline_are_not_judged():
    assert gate.compare(_scores(new_case=(9.0, 0.0)), _scores(a=(1.0, 0.0)), 0.25) == []
