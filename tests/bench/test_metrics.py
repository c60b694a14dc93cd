"""Metrics on hand-made records: every number here is computed by hand in the comments."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lrlab.bench.metrics import (
    best_tuned,
    bootstrap_interval,
    default_lr,
    divergence_rate,
    final_value,
    final_values,
    intervals_overlap,
    is_default_run,
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


def test_robustness_width_against_tuned_reference_methods() -> None:
    # reference: the best tuned result of "ref" = 1.5 (its 1e-2 mean over two seeds: (1 + 2)/2;
    # its lucky single run 1.0 does not count). 10 % relative -> <= 1.65 qualifies.
    records = [
        record("p", "ref", 1e-2, 0, 1.0),
        record("p", "ref", 1e-2, 1, 2.0),
        record("p", "ref", 1e-1, 0, 3.0),
        record("p", "ref", 1e-1, 1, 3.0),
        *_grid("a", [5.0, 1.6, 1.2, 1.64, 1.7]),  # 1e-3 .. 1e-1 qualify: 3 decades
    ]
    widths = robustness_width(
        records, "loss", Goal.MINIMIZE, tolerance=0.1, reference_methods=["ref"]
    )
    assert widths[("p", "a")] == 3.0
    assert widths[("p", "ref")] == 1.0
    # against the best single run (1.0, <= 1.1) nothing of "a" qualifies
    assert robustness_width(records, "loss", Goal.MINIMIZE, tolerance=0.1)[("p", "a")] == 0.0
    with pytest.raises(ValueError, match=r"none of \['sgd'\] has a finished setting on 'p'"):
        robustness_width(records, "loss", Goal.MINIMIZE, tolerance=0.1, reference_methods=["sgd"])


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


def test_bootstrap_interval_matches_numpy_with_the_same_seed() -> None:
    values = [0.91, 0.95, 0.97, 0.88, 0.93]
    # the percentile bootstrap written out independently: resample indices, means, percentiles
    draws = np.random.default_rng(7).integers(0, 5, size=(4000, 5))
    means = np.array(values)[draws].mean(axis=1)
    expected = np.percentile(means, [5.0, 95.0])
    got = bootstrap_interval(values, level=0.9, resamples=4000, seed=7)
    assert got == pytest.approx(tuple(expected), abs=1e-12)
    # seeded: the same every time; another seed moves it by little
    assert bootstrap_interval(values, level=0.9, resamples=4000, seed=7) == got
    other = bootstrap_interval(values, level=0.9, resamples=4000, seed=8)
    assert other == pytest.approx(got, abs=0.01)
    # wider at a higher level, always inside [min, max], around the mean
    low, high = bootstrap_interval(values)
    assert min(values) <= low <= got[0] <= np.mean(values) <= got[1] <= high <= max(values)


def test_bootstrap_interval_coverage_is_near_its_level() -> None:
    """Over many normal samples of 30, the 95 % interval holds the true mean about 95 % of the
    time (the percentile bootstrap under-covers slightly at this size)."""
    generator = np.random.default_rng(0)
    trials, hits = 300, 0
    for trial in range(trials):
        sample = generator.normal(loc=2.0, scale=1.0, size=30)
        low, high = bootstrap_interval(sample.tolist(), resamples=1000, seed=trial)
        hits += low <= 2.0 <= high
    assert 0.88 <= hits / trials <= 0.99


def test_bootstrap_interval_edge_cases_and_bad_input() -> None:
    assert bootstrap_interval([3.0]) == (3.0, 3.0)
    assert bootstrap_interval([2.0, 2.0, 2.0]) == (2.0, 2.0)
    for bad, match in (([], "non-empty"), ([1.0, math.nan], "finite"), ([1.0, math.inf], "finite")):
        with pytest.raises(ValueError, match=match):
            bootstrap_interval(bad)
    with pytest.raises(ValueError, match="level"):
        bootstrap_interval([1.0, 2.0], level=1.0)
    with pytest.raises(ValueError, match="resamples"):
        bootstrap_interval([1.0, 2.0], resamples=0)


def test_intervals_overlap() -> None:
    assert intervals_overlap((0.0, 1.0), (1.0, 2.0))  # a shared end point counts
    assert intervals_overlap((0.0, 3.0), (1.0, 2.0))
    assert not intervals_overlap((0.0, 0.9), (1.0, 2.0))
    assert not intervals_overlap((1.1, 2.0), (0.0, 1.0))


def test_final_values_and_divergence_rate() -> None:
    records = [
        record("p", "a", 0.1, 1, 3.0),
        record("p", "a", 0.1, 0, 1.0),
        record("p", "a", 0.1, 2, 0.0, status=RunStatus.DIVERGED),
        record("p", "a", 1.0, 0, 0.0, status=RunStatus.FAILED),
    ]
    values = final_values(records, "loss")
    assert values[("p", "a", 0.1)][:2] == [1.0, 3.0]  # by seed
    assert math.isnan(values[("p", "a", 0.1)][2])
    assert divergence_rate(records) == {("p", "a"): 0.5}  # 2 of 4 did not finish


def test_default_runs() -> None:
    assert default_lr("adam") == 1e-3 and default_lr("dadapt-adam") == 1.0
    assert default_lr("sps") is None and default_lr("not-a-method") is None
    assert is_default_run(record("p", "adam", 1e-3, 0, 1.0))
    assert not is_default_run(record("p", "adam", 1e-2, 0, 1.0))
    assert is_default_run(record("p", "anything", None, 0, 1.0))
    assert not is_default_run(record("p", "not-a-method", 1e-3, 0, 1.0))
    # an LR given to another argument (D-Adaptation's d0) is not the method's default step
    config = RunConfig(problem="p", method="dadapt-adam", lr=1.0, seed=0, steps=1, lr_argument="d0")
    run = RunRecord(run_id=config.run_id, config=config, status=RunStatus.FINISHED, steps=[],
                    evals=[], final={})  # fmt: skip
    assert not is_default_run(run)
