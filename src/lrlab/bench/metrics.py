"""Pure functions over run records: the numbers the reports show.

Input contract: a sequence of :class:`~lrlab.bench.spec.RunRecord` (from the store). Nothing here
runs a model, touches the store or draws a figure; every function is deterministic.

Definitions (each is what the corresponding report table or figure shows):

* **final value** of a run for a metric: ``record.final[metric]``; a diverged or failed run has
  no usable value and counts as failing every tolerance and target.
* **sensitivity**: per (problem, method, initial LR), the mean, standard deviation, minimum and
  maximum of the final value over the seeds that finished, and how many seeds diverged.
* **robustness width** (the "how much tuning does it need" number): per problem, the best final
  value of *any single run of any method* is the reference. An initial LR *qualifies* for a
  method when no seed diverged or failed and the mean final value over seeds is within the
  tolerance of the reference (relative: ``|v - best| <= tol * |best|``; absolute:
  ``|v - best| <= tol``, on the worse side only). The width is the longest run of consecutive
  qualifying grid LRs times the grid spacing in decades, so one qualifying LR on a one-per-decade
  grid is 1 decade and none is 0.
* **time to target**: the first step at which a run's metric reaches the target (``<=`` for
  metrics to minimise, ``>=`` to maximise), looked up in the per-step rows when the metric is
  logged every step, else in the evaluation rows. A run that never reaches it has time ``inf``.
* **performance profile** (Dolan & Moré, 2002; as in AlgoPerf's scoring): for each problem ``p``
  and method ``m`` a time ``t_pm`` (the median over seeds); ratio ``r_pm = t_pm / min_m t_pm``;
  ``rho_m(tau)`` = fraction of problems with ``r_pm <= tau``. A problem no method solves counts
  as unsolved for every method.
* **bootstrap confidence interval** of a mean over seeds (Efron & Tibshirani, 1993, ch. 13, the
  percentile interval): draw ``B`` resamples of the ``n`` seed values with replacement, take
  each resample's mean ``m_b``; the interval at level ``1 - alpha`` is the ``alpha/2`` and
  ``1 - alpha/2`` empirical quantiles of ``m_1..m_B`` (numpy's default linear interpolation).
  The generator is seeded (:data:`BOOTSTRAP_SEED`), so a report is the same every time it is
  built. With one seed the interval is the single value; with few seeds it is narrower than the
  true 95 % interval (it cannot reach beyond the observed minimum and maximum), which the report
  says next to every table that shows it.
* **divergence rate** of a method on a problem: the fraction of its runs (every initial LR and
  seed that was swept) that diverged or failed.
* **result at defaults**: the runs of a method with no initial LR given (``lr`` None: the
  method's own default) or with the initial LR equal to the default of the method's LR argument
  (Adam's 1e-3, D-Adaptation's 1.0); see :func:`is_default_run`.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from lrlab.bench.spec import Goal, RunRecord, RunStatus, run_label

__all__ = [
    "BOOTSTRAP_RESAMPLES",
    "BOOTSTRAP_SEED",
    "CONFIDENCE_LEVEL",
    "SensitivityPoint",
    "best_tuned",
    "bootstrap_interval",
    "default_lr",
    "divergence_rate",
    "final_value",
    "final_values",
    "intervals_overlap",
    "is_default_run",
    "performance_profile",
    "robustness_width",
    "sensitivity",
    "time_to_target",
    "times_to_target",
]


def final_value(record: RunRecord, metric: str) -> float:
    """The run's final value of ``metric``; NaN for a diverged/failed run or a missing metric."""
    if record.status is not RunStatus.FINISHED:
        return math.nan
    value = record.final.get(metric, math.nan)
    return float(value) if value is not None else math.nan


def _is_better_or_equal(value: float, reference: float, goal: Goal) -> bool:
    return value <= reference if goal is Goal.MINIMIZE else value >= reference


#: two means closer than this (relative) are the same result: the mean of the same seed values
#: summed in another order differs in the last bits ((0.975 + 0.9778) / 2 against
#: (0.9667 + 0.9861) / 2: both 1406 / 1440, two different floats)
SAME_VALUE_RTOL = 1e-12


def same_value(a: float, b: float) -> bool:
    """``a`` and ``b`` are the same result up to rounding (:data:`SAME_VALUE_RTOL`)."""
    return abs(a - b) <= SAME_VALUE_RTOL * max(1.0, abs(a), abs(b))


def strictly_better(value: float, reference: float, goal: Goal) -> bool:
    """``value`` beats ``reference`` by more than rounding."""
    if same_value(value, reference):
        return False
    return value < reference if goal is Goal.MINIMIZE else value > reference


@dataclass(frozen=True, slots=True)
class SensitivityPoint:
    """Final-value statistics of one (problem, method, initial LR) over seeds."""

    problem: str
    method: str
    lr: float | None
    mean: float
    std: float
    minimum: float
    maximum: float
    seeds: int
    diverged: int
    """Seeds that diverged or failed (no final value)."""


def _method_label(record: RunRecord) -> str:
    return run_label(record.config)


def sensitivity(records: Iterable[RunRecord], metric: str) -> list[SensitivityPoint]:
    """Mean and spread of the final metric per (problem, method, initial LR), sorted."""
    grouped: dict[tuple[str, str, float | None], list[float]] = defaultdict(list)
    for record in records:
        key = (record.config.problem, _method_label(record), record.config.lr)
        grouped[key].append(final_value(record, metric))
    points = []
    for (problem, method, lr), values in grouped.items():
        good = [v for v in values if math.isfinite(v)]
        points.append(
            SensitivityPoint(
                problem=problem,
                method=method,
                lr=lr,
                mean=statistics.fmean(good) if good else math.nan,
                std=statistics.pstdev(good) if len(good) > 1 else 0.0 if good else math.nan,
                minimum=min(good) if good else math.nan,
                maximum=max(good) if good else math.nan,
                seeds=len(values),
                diverged=len(values) - len(good),
            )
        )
    return sorted(points, key=lambda p: (p.problem, p.method, -math.inf if p.lr is None else p.lr))


def _within(value: float, best: float, goal: Goal, tolerance: float, relative: bool) -> bool:
    if not math.isfinite(value):
        return False
    gap = value - best if goal is Goal.MINIMIZE else best - value
    allowed = tolerance * abs(best) if relative else tolerance
    # a value exactly on the boundary qualifies despite rounding (1.1 - 1.0 > 0.1 in floats)
    return gap <= allowed + 1e-12 * max(1.0, abs(best))


def _grid_spacing_decades(lrs: Sequence[float]) -> float:
    logs = sorted({math.log10(lr) for lr in lrs})
    if len(logs) < 2:
        return 1.0
    return statistics.median(b - a for a, b in itertools.pairwise(logs))


def robustness_width(
    records: Iterable[RunRecord],
    metric: str,
    goal: Goal,
    *,
    tolerance: float,
    relative: bool = True,
    reference_methods: Sequence[str] | None = None,
) -> dict[tuple[str, str], float]:
    """Width in decades of the initial-LR range within ``tolerance`` of a reference value.

    The reference of a problem is the best final value of any run on it, or, with
    ``reference_methods`` (method labels, e.g. ``("sgd", "adam")``), the best *tuned* result
    of those methods: the best mean over seeds at one initial LR at which no seed diverged
    (:func:`best_tuned`), so "as good as tuned SGD/Adam" rather than "as good as the luckiest
    run of any method".

    Returns ``{(problem, method): width}``. Methods without an initial LR (``lr`` None) get 0.

    Raises:
        ValueError: ``reference_methods`` is given but none of them has a finished setting on
            a problem (the message names the problem and the methods it holds).
    """
    records = list(records)
    points = sensitivity(records, metric)
    best: dict[str, float] = {}
    if reference_methods is None:
        for record in records:
            value = final_value(record, metric)
            if not math.isfinite(value):
                continue
            problem = record.config.problem
            if problem not in best or _is_better_or_equal(value, best[problem], goal):
                best[problem] = value
    else:
        wanted = set(reference_methods)
        for (problem, method), (_, value) in best_tuned(records, metric, goal).items():
            if method in wanted and (
                problem not in best or _is_better_or_equal(value, best[problem], goal)
            ):
                best[problem] = value
        for problem in sorted({point.problem for point in points} - set(best)):
            held = sorted({point.method for point in points if point.problem == problem})
            raise ValueError(
                f"robustness reference: none of {sorted(wanted)} has a finished setting on "
                f"{problem!r}; methods there: {held}"
            )
    by_method: dict[tuple[str, str], list[SensitivityPoint]] = defaultdict(list)
    for point in points:
        by_method[(point.problem, point.method)].append(point)
    widths = {}
    for (problem, method), method_points in by_method.items():
        grid = [p for p in method_points if p.lr is not None and p.lr > 0]
        if not grid or problem not in best:
            widths[(problem, method)] = 0.0
            continue
        grid.sort(key=lambda p: p.lr)  # type: ignore[arg-type, return-value]
        spacing = _grid_spacing_decades([p.lr for p in grid])  # type: ignore[misc]
        longest = current = 0
        for point in grid:
            ok = point.diverged == 0 and _within(
                point.mean, best[problem], goal, tolerance, relative
            )
            current = current + 1 if ok else 0
            longest = max(longest, current)
        widths[(problem, method)] = longest * spacing
    return widths


def best_tuned(
    records: Iterable[RunRecord], metric: str, goal: Goal
) -> dict[tuple[str, str], tuple[float | None, float]]:
    """Per (problem, method): the initial LR with the best mean final value, and that value.

    An LR at which any seed diverged is not eligible.
    """
    chosen: dict[tuple[str, str], tuple[float | None, float]] = {}
    for point in sensitivity(records, metric):
        if point.diverged or not math.isfinite(point.mean):
            continue
        key = (point.problem, point.method)
        if key not in chosen or strictly_better(point.mean, chosen[key][1], goal):
            chosen[key] = (point.lr, point.mean)
    return chosen


def time_to_target(record: RunRecord, metric: str, target: float, goal: Goal) -> float:
    """First step at which ``metric`` reaches ``target``; ``inf`` if never (or diverged first)."""
    rows: Sequence[Mapping[str, float]] = (
        record.steps if record.steps and metric in record.steps[0] else record.evals
    )
    for row in rows:
        value = row.get(metric)
        if value is None or not math.isfinite(value):
            continue
        if _is_better_or_equal(float(value), target, goal):
            return float(row["step"])
    return math.inf


def times_to_target(
    records: Iterable[RunRecord],
    metric: str,
    targets: Mapping[str, float],
    goal: Goal,
) -> dict[str, dict[str, float]]:
    """``{method: {problem: median time over seeds}}`` for the best initial LR of each method.

    For each (problem, method) the initial LR with the smallest median time is used: the
    performance profile then compares methods each at its own best setting. A median over seeds
    is ``inf`` when more than half of the seeds never reach the target.
    """
    grouped: dict[tuple[str, str, float | None], list[float]] = defaultdict(list)
    for record in records:
        problem = record.config.problem
        if problem not in targets:
            continue
        key = (problem, _method_label(record), record.config.lr)
        grouped[key].append(time_to_target(record, metric, targets[problem], goal))
    result: dict[str, dict[str, float]] = defaultdict(dict)
    for (problem, method, _), times in grouped.items():
        median = statistics.median(times)
        previous = result[method].get(problem, math.inf)
        result[method][problem] = min(previous, median)
    return dict(result)


def performance_profile(
    times: Mapping[str, Mapping[str, float]], taus: Sequence[float]
) -> dict[str, list[float]]:
    """Dolan-Moré profile: ``{method: [rho(tau) for tau in taus]}``.

    ``times`` is ``{method: {problem: time}}``; a missing entry counts as ``inf``. Problems are
    the union over methods. Times must be positive (steps start at 1 for the first update; a time
    of 0 is treated as the smallest positive time to keep the ratio defined).
    """
    methods = sorted(times)
    problems = sorted({problem for per in times.values() for problem in per})
    if not problems:
        return {method: [0.0 for _ in taus] for method in methods}
    profile: dict[str, list[float]] = {}
    fastest = {}
    for problem in problems:
        finite = [times[m].get(problem, math.inf) for m in methods]
        finite = [max(t, 1e-12) for t in finite if math.isfinite(t)]
        fastest[problem] = min(finite) if finite else math.inf
    for method in methods:
        ratios = []
        for problem in problems:
            t = times[method].get(problem, math.inf)
            if not math.isfinite(t) or not math.isfinite(fastest[problem]):
                ratios.append(math.inf)
            else:
                ratios.append(max(t, 1e-12) / fastest[problem])
        profile[method] = [sum(r <= tau for r in ratios) / len(problems) for tau in taus]
    return profile


CONFIDENCE_LEVEL = 0.95
"""The level of every confidence interval in the reports."""
BOOTSTRAP_RESAMPLES = 10_000
"""Resamples per bootstrap interval: enough that the interval's ends move by well under the
printed precision from one generator seed to another."""
BOOTSTRAP_SEED = 0
"""The seed of the bootstrap's generator (``numpy.random.default_rng``)."""


def final_values(
    records: Iterable[RunRecord], metric: str
) -> dict[tuple[str, str, float | None], list[float]]:
    """``{(problem, method label, initial LR): [final value per seed, by seed]}``; NaN for a
    seed that diverged or failed."""
    grouped: dict[tuple[str, str, float | None], list[tuple[int, float]]] = defaultdict(list)
    for record in records:
        key = (record.config.problem, _method_label(record), record.config.lr)
        grouped[key].append((record.config.seed, final_value(record, metric)))
    return {key: [value for _, value in sorted(pairs)] for key, pairs in grouped.items()}


def bootstrap_interval(
    values: Sequence[float],
    *,
    level: float = CONFIDENCE_LEVEL,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (see the module docstring).

    Raises:
        ValueError: ``values`` is empty or holds a non-finite value, ``level`` is not in (0, 1),
            or ``resamples`` is below 1.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples!r}")
    sample = np.asarray(values, dtype=np.float64)
    if sample.ndim != 1 or sample.size == 0:
        raise ValueError(f"values must be a non-empty sequence of numbers, got {values!r}")
    if not np.all(np.isfinite(sample)):
        raise ValueError(f"values must be finite (drop diverged seeds first), got {values!r}")
    if sample.size == 1 or np.all(sample == sample[0]):
        return float(sample[0]), float(sample[0])
    generator = np.random.default_rng(seed)
    indices = generator.integers(0, sample.size, size=(resamples, sample.size))
    means = sample[indices].mean(axis=1)
    alpha = 1.0 - level
    low, high = np.quantile(means, [alpha / 2, 1.0 - alpha / 2])
    # a mean of resampled values lies in [min, max]; clamp away the summation's rounding
    # (three times 0.95 averages to 0.9499999999999998)
    smallest, largest = float(sample.min()), float(sample.max())
    return min(max(float(low), smallest), largest), min(max(float(high), smallest), largest)


def intervals_overlap(first: tuple[float, float], second: tuple[float, float]) -> bool:
    """Whether two closed intervals ``(low, high)`` share at least one point."""
    return first[0] <= second[1] and second[0] <= first[1]


def divergence_rate(records: Iterable[RunRecord]) -> dict[tuple[str, str], float]:
    """``{(problem, method label): fraction of its runs that diverged or failed}``."""
    counts: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for record in records:
        entry = counts[(record.config.problem, _method_label(record))]
        entry[0] += record.status is not RunStatus.FINISHED
        entry[1] += 1
    return {key: bad / total for key, (bad, total) in counts.items()}


@functools.cache
def default_lr(method: str) -> float | None:
    """The default of a registered method's LR argument (Adam: 1e-3); None when the method has
    no LR argument, its default is None, or ``method`` is not registered."""
    try:
        import lrlab.optim as lo

        spec = lo.spec(method)
    except (KeyError, ValueError):
        return None
    if spec.lr_argument is None:
        return None
    parameter = inspect.signature(spec.cls.__init__).parameters.get(spec.lr_argument)
    if parameter is None or not isinstance(parameter.default, (int, float)):
        return None
    return float(parameter.default)


def is_default_run(record: RunRecord) -> bool:
    """Whether the run used its method's default step size: no initial LR given, or the initial
    LR equal (to 1e-9 relative) to the default of the method's own LR argument. A run whose
    ``lr`` went to another argument (``lr_argument="d0"``) is at defaults only with ``lr`` None."""
    lr = record.config.lr
    if lr is None:
        return True
    if record.config.lr_argument is not None:
        return False
    default = default_lr(record.config.method)
    return default is not None and math.isclose(lr, default, rel_tol=1e-9)
