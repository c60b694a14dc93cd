"""The leaderboard's numbers per (method, problem), computed in one place from stored records.

A *method* here is a run label without a trailing ``[ARG=lr]`` (:func:`method_group`): the
runs of one optimizer configuration at every initial LR (or, for a learning-rate-free method,
every initial estimate ``d0``, ``reps_rel``, ...) and at its defaults (``lr`` None: the
constructor's own value). The metric and its direction come from the records themselves
(``RunRecord.metric`` / ``RunRecord.goals``), never from a metric's name.

Per (problem, method) an :class:`Entry` holds:

* ``best`` / ``best_setting`` / ``best_values``: the best mean final metric over the settings
  (LRs, initial estimates, the default) at which no seed diverged or failed, the setting, and
  the per-seed values there (for confidence intervals);
* ``default`` / ``default_values``: the same at the defaults (None when not run, or when a seed
  diverged there: ``default_diverged``);
* ``width``: the robustness width in decades (:func:`lrlab.bench.metrics.robustness_width`: the
  longest run of grid settings within ``tolerance`` of the best run of any method);
* ``divergence_rate``: the share of the method's runs (all settings and seeds) that diverged or
  failed;
* ``steps_to_target`` / ``seconds_to_target``: at the best setting, the median over seeds of the
  first step whose mini-batch training loss reaches the problem's target, and that many steps'
  share of the run's wall time (the record's ``wall_time_s`` times step / steps run, so it
  includes the run's share of set-up and evaluation); ``inf`` when a seed never reaches it;
* ``rank`` / ``default_rank``: the method's place on the problem by ``best`` and by ``default``
  (1 is best; equal values share a rank; a method without a value has none).

The target of a problem is ``targets[problem]`` where given, else the best (lowest) median
final training loss over the (method, setting) pairs, loosened by ``tolerance`` of its
magnitude: "about as well fitted as the best run ends up".
"""

from __future__ import annotations

import math
import re
import statistics
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from lrlab.bench import metrics
from lrlab.bench.spec import Goal, RunConfig, RunRecord, RunStatus, run_label

__all__ = ["Entry", "entries", "method_group", "record_goal", "targets_from_records"]

_LR_ARGUMENT_SUFFIX = re.compile(r"\[[A-Za-z_][A-Za-z0-9_]*=lr\]$")


def method_group(config: RunConfig) -> str:
    """The leaderboard row of a run: its label without a trailing ``[ARG=lr]``."""
    return _LR_ARGUMENT_SUFFIX.sub("", run_label(config))


def record_goal(records: Sequence[RunRecord], metric: str) -> Goal:
    """The direction of ``metric`` as the records stored it.

    Raises:
        ValueError: no record knows it (records written before directions were stored, or a
            metric the problem does not report); the message lists the metrics they know.
    """
    known: dict[str, Goal] = {}
    for record in records:
        known.update(record.goals)
        if metric in record.goals:
            return record.goals[metric]
    raise ValueError(
        f"no stored direction for metric {metric!r}; the records know: "
        f"{', '.join(sorted(known)) or 'none (written before directions were stored)'}"
    )


def _headline(records: Sequence[RunRecord]) -> str:
    names = {r.metric for r in records if r.metric}
    if len(names) != 1:
        raise ValueError(
            f"the records of a problem name {len(names)} headline metrics ({sorted(names)}); "
            "pass metric_choice"
        )
    return names.pop()


@dataclass(frozen=True, slots=True)
class Entry:
    """One (problem, method) cell of the leaderboard (see the module docstring)."""

    problem: str
    method: str
    metric: str
    goal: Goal
    best: float | None
    best_setting: float | None
    best_values: tuple[float, ...]
    default: float | None
    default_values: tuple[float, ...]
    default_diverged: bool
    width: float
    divergence_rate: float
    runs: int
    steps_to_target: float
    seconds_to_target: float
    target: float | None
    rank: int | None
    default_rank: int | None


def targets_from_records(records: Sequence[RunRecord], tolerance: float = 0.1) -> dict[str, float]:
    """Per problem: the best median final training loss over (method, setting), loosened by
    ``tolerance`` of its magnitude (see the module docstring)."""
    losses: dict[tuple[str, str, float | None], list[float]] = defaultdict(list)
    for record in records:
        if record.status is RunStatus.FINISHED:
            value = record.final.get("final_loss")
            if value is not None and math.isfinite(value):
                key = (record.config.problem, method_group(record.config), record.config.lr)
                losses[key].append(float(value))
    best: dict[str, float] = {}
    for (problem, _, _), values in losses.items():
        median = statistics.median(values)
        best[problem] = min(best.get(problem, math.inf), median)
    return {p: v + tolerance * abs(v) for p, v in best.items()}


def _ranks(values: Mapping[str, float | None], goal: Goal) -> dict[str, int | None]:
    """1 + the number of methods strictly better (beyond rounding, so equal means computed in
    another order share a rank); None without a value."""
    present = {m: v for m, v in values.items() if v is not None and math.isfinite(v)}
    return {
        method: (
            None
            if method not in present
            else 1
            + sum(
                metrics.strictly_better(other, present[method], goal) for other in present.values()
            )
        )
        for method in values
    }


def _steps_to(record: RunRecord, target: float) -> float:
    return metrics.time_to_target(record, "loss", target, Goal.MINIMIZE)


def entries(
    records: Sequence[RunRecord],
    *,
    metric_choice: Callable[[str, Sequence[RunRecord]], tuple[str, Goal]] | None = None,
    tolerance: float = 0.1,
    targets: Mapping[str, float] | None = None,
) -> list[Entry]:
    """The leaderboard entries of ``records``, by problem (first seen) and method (sorted).

    Args:
        records: stored runs (any mix of problems, methods, settings and seeds).
        metric_choice: ``(problem, its records) -> (metric, goal)``; default: the records'
            stored headline metric and its stored direction.
        tolerance: relative tolerance of the robustness width and of the default targets.
        targets: training-loss targets by problem (default: :func:`targets_from_records`).
    """
    by_problem: dict[str, list[RunRecord]] = defaultdict(list)
    for record in records:
        by_problem[record.config.problem].append(record)
    all_targets = {**targets_from_records(records, tolerance), **(targets or {})}
    out: list[Entry] = []
    for problem, problem_records in by_problem.items():
        if metric_choice is not None:
            metric, goal = metric_choice(problem, problem_records)
        else:
            metric = _headline(problem_records)
            goal = record_goal(problem_records, metric)
        # regroup by leaderboard row: metrics.* group by run label, so relabel first
        regrouped = [_relabelled(r) for r in problem_records]
        best = metrics.best_tuned(regrouped, metric, goal)
        widths = metrics.robustness_width(regrouped, metric, goal, tolerance=tolerance)
        points = {(p.method, p.lr): p for p in metrics.sensitivity(regrouped, metric)}
        by_method: dict[str, list[RunRecord]] = defaultdict(list)
        for record in regrouped:
            by_method[run_label(record.config)].append(record)
        target = all_targets.get(problem)
        rows: dict[str, dict[str, object]] = {}
        for method in sorted(by_method):
            runs = by_method[method]
            failed = sum(r.status is not RunStatus.FINISHED for r in runs)
            chosen = best.get((problem, method))
            setting = chosen[0] if chosen else None
            at_best = [r for r in runs if chosen and _same(r.config.lr, setting)]
            at_default = [r for r in runs if r.config.lr is None]
            default_point = points.get((method, None))
            default_ok = default_point is not None and default_point.diverged == 0
            steps = [_steps_to(r, target) if target is not None else math.inf for r in at_best]
            seconds = [
                s * r.wall_time_s / max(1, len(r.steps)) if math.isfinite(s) else math.inf
                for s, r in zip(steps, at_best, strict=True)
            ]
            rows[method] = {
                "best": chosen[1] if chosen else None,
                "best_setting": setting,
                "best_values": tuple(metrics.final_value(r, metric) for r in at_best),
                "default": default_point.mean if default_ok and default_point else None,
                "default_values": tuple(metrics.final_value(r, metric) for r in at_default),
                "default_diverged": bool(default_point and default_point.diverged),
                "width": widths.get((problem, method), 0.0),
                "divergence_rate": failed / len(runs),
                "runs": len(runs),
                "steps_to_target": _median(steps),
                "seconds_to_target": _median(seconds),
            }
        ranks = _ranks({m: row["best"] for m, row in rows.items()}, goal)  # type: ignore[misc]
        default_ranks = _ranks({m: row["default"] for m, row in rows.items()}, goal)  # type: ignore[misc]
        for method, row in rows.items():
            out.append(
                Entry(
                    problem=problem,
                    method=method,
                    metric=metric,
                    goal=goal,
                    target=target,
                    rank=ranks[method],
                    default_rank=default_ranks[method],
                    **row,  # type: ignore[arg-type]
                )
            )
    return out


def _same(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=1e-9)


def _median(values: Sequence[float]) -> float:
    if not values:
        return math.inf
    if any(not math.isfinite(v) for v in values):
        return math.inf
    return float(statistics.median(values))


def _relabelled(record: RunRecord) -> RunRecord:
    """``record`` with its label tag set to its leaderboard row (shares everything else)."""
    import dataclasses

    group = method_group(record.config)
    if group == run_label(record.config):
        return record
    config = dataclasses.replace(record.config, tags={**record.config.tags, "label": group})
    return dataclasses.replace(record, config=config)
