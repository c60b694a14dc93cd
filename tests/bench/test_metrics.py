"""Metrics on hand-made records: every number here is computed by hand in the comments."""

from __future__ import annotations

import math

import pytest

from lrlab.bench.metrics import (
    best_tuned,
    final_value,
    performance_profile,
    robustness_width,
    sensitivity,
    time_to_target,
    times_to_target,
)
from lrlab.bench.spec import Goal, RunConfig, RunRecord, RunStatus


def record(problem, method, lr, seed, value, *, status=RunStatus.FINISHED, losses=()):
    config = RunConfig(problem=problem, method=method, lr=lr, seed=seed, steps=len(losses) or 1)
    steps = [{"step": float(i + 1), "loss": loss} for i, loss in enumerate(losses)]
    return RunRecord(
        run_id=config.run_id,
        config=config,
        status=status,
        steps=steps,
        evals=[],
        final={"loss": value} if status is RunStatus.FINISHED else {},
    )


def test_final_value_of_a_diverged_run_is_nan() -> None:
    assert final_value(record("p", "a", 0.1, 0, 1.0), "loss") == 1.0
    assert math.isnan(final_value(record("p", "a", 0.1, 0, 1.0, status=RunStatus.DIVERGED), "loss"))


def test_sensitivity_mean_spread_and_diverged_count() -> None:
    records = [
        record("p", "a", 0.1, 0, 1.0),
        record("p", "a", 0.1, 1, 3.0),
        record("p", "a", 0.1, 2, 0.0, status=RunStatus.DIVERGED),
    ]
    (point,) = sensitivity(records, "loss")
    assert (point.mean, point.std, point.minimum, point.maximum) == (2.0, 1.0, 1.0, 3.0)
    assert (point.seeds, point.diverged) == (3, 1)


def _grid(method, values, diverged_at=()):
    lrs = [1e-4, 1e-3, 1e-2, 1e-1, 1.0]
    out = []
    for lr, value in zip(lrs, values, strict=True):
        status = RunStatus.DIVERGED if lr in diverged_at else RunStatus.FINISHED
        out.append(record("p", method, lr, 0, value, status=status))
    return out


def test_robustness_width_in_decades() -> None:
    # best run of any method: 1.0 (method b at 1e-2). Tolerance 10 % relative -> <= 1.1 qualifies.
    records = [
        *_grid("a", [5.0, 1.05, 1.1, 1.09, 9.0]),  # 1e-3, 1e-2, 1e-1 qualify: 3 decades
        *_grid("b", [1.05, 2.0, 1.0, 1.08, 1.0], diverged_at=(1.0,)),  # longest run: 2 (1e-2,1e-1)
        *_grid("c", [7.0, 7.0, 7.0, 7.0, 7.0]),  # none
    ]
    widths = robustness_width(records, "loss", Goal.MINIMIZE, tolerance=0.1)
    assert widths == {("p", "a"): 3.0, ("p", "b"): 2.0, ("p", "c"): 0.0}
    # absolute tolerance for an accuracy-like metric to maximise: best 1.09 (a) ... use 9.0 (a)
    widths_max = robustness_width(records, "loss", Goal.MAXIMIZE, tolerance=2.0, relative=False)
    assert widths_max[("p", "c")] == 5.0  # 7.0 is within 2 of the best 9.0 everywhere
    assert widths_max[("p", "a")] == 1.0


def test_best_tuned_skips_diverged_lrs() -> None:
    records = _grid("b", [1.05, 2.0, 1.0, 1.08, 0.5], diverged_at=(1.0,))
    assert best_tuned(records, "loss", Goal.MINIMIZE) == {("p", "b"): (1e-2, 1.0)}


def test_time_to_target_and_never() -> None:
    run = record("p", "a", 0.1, 0, 0.1, losses=[3.0, 2.0, 0.9, 0.5])
    assert time_to_target(run, "loss", 1.0, Goal.MINIMIZE) == 3.0
    assert time_to_target(run, "loss", 0.1, Goal.MINIMIZE) == math.inf


def test_times_to_target_uses_median_over_seeds_and_best_lr() -> None:
    records = [
        record("p", "a", 0.1, 0, 0.0, losses=[2.0, 0.5]),  # 2
        record("p", "a", 0.1, 1, 0.0, losses=[0.5]),  # 1
        record("p", "a", 0.1, 2, 0.0, losses=[2.0, 2.0, 2.0, 0.5]),  # 4 -> median 2
        record("p", "a", 1.0, 0, 0.0, losses=[2.0, 2.0, 2.0]),  # never -> inf
    ]
    assert times_to_target(records, "loss", {"p": 1.0}, Goal.MINIMIZE) == {"a": {"p": 2.0}}


def test_performance_profile_by_hand() -> None:
    times = {
        "a": {"p1": 10.0, "p2": 40.0, "p3": math.inf},
        "b": {"p1": 20.0, "p2": 20.0, "p3": 30.0},
    }
    # ratios a: p1 1, p2 2, p3 inf ; b: p1 2, p2 1, p3 1
    profile = performance_profile(times, [1.0, 1.5, 2.0, 10.0])
    assert profile["a"] == pytest.approx([1 / 3, 1 / 3, 2 / 3, 2 / 3])
    assert profile["b"] == pytest.approx([2 / 3, 2 / 3, 1.0, 1.0])
    # a problem nobody solves counts against everyone
    profile = performance_profile({"a": {"p": math.inf}, "b": {}}, [1.0, 100.0])
    assert profile == {"a": [0.0, 0.0], "b": [0.0, 0.0]}
