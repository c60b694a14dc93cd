"""The answer a report opens with: a leaderboard, a robustness table and a generated verdict.

Everything here is computed from run records (no model is run, nothing is drawn); the numbers
underneath are :mod:`lrlab.bench.metrics`'. The rules, as the report states them:

**Metric and direction.** Each problem is judged by one final metric (:class:`MetricChoice`);
whether it is better small or large comes from :func:`metric_goal`, the one place that decides
it.

**Leaderboard** (methods x problems). Per (problem, method) the *best-tuned setting* is the
initial LR, among those at which every seed finished, with the best mean final metric over seeds
(:func:`lrlab.bench.metrics.best_tuned`); the cell shows that mean with its 95 % percentile
bootstrap interval over the seeds (:func:`lrlab.bench.metrics.bootstrap_interval`, 10,000
resamples, seeded). Rank rule, per problem: methods ordered by that mean, best first; equal means
share a rank (1, 2, 2, 4); a method with no setting at which every seed finished has no rank
(shown as ``diverged``) and comes last. A method is *tied with the best* when its interval
overlaps the interval of a rank-1 method. Methods are listed by mean rank over the problems they
ran on, an unranked cell counting as last place (the number of methods on that problem); then by
the number of first places and by name.

**Robustness** per (problem, method): the robust width in decades (initial-LR range within the
tolerance of the best run of any method, :func:`lrlab.bench.metrics.robustness_width`), the
divergence rate over every run swept (:func:`lrlab.bench.metrics.divergence_rate`) and the result
at defaults (:func:`lrlab.bench.metrics.is_default_run`; mean over seeds, ``diverged`` when any
seed did not finish).

**Verdict.** The reference is *tuned Adam* (the best-tuned result of ``adam`` or ``adamw`` run
without extra arguments, whichever was tried at more initial LRs; else the best tuned result of
any method). A method at
its defaults is *within x %* of it on a problem when every default seed finished and its mean is
at most ``x`` % worse (relative to the reference's magnitude). The most reliable method with no
tuning is the one within on the most problems, ties broken by the smaller median shortfall, then
by name.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from lrlab._registry import UnknownNameError
from lrlab.bench import metrics
from lrlab.bench.spec import METRIC_GOALS, Goal, RunRecord, RunStatus, metric_goals, run_label
from lrlab.bench.tables import Table, format_number

__all__ = [
    "Leaderboard",
    "LeaderboardCell",
    "MetricChoice",
    "RobustnessCell",
    "Verdict",
    "available_metrics",
    "baseline_method",
    "check_metric",
    "check_problems",
    "default_metric_choice",
    "group_variants",
    "leaderboard",
    "leaderboard_table",
    "method_label",
    "metric_goal",
    "robustness",
    "robustness_table",
    "summarize",
    "verdict",
]


def method_label(record: RunRecord) -> str:
    """The name a run is reported under (:func:`lrlab.bench.spec.run_label`)."""
    return run_label(record.config)


def group_variants(records: Sequence[RunRecord]) -> list[RunRecord]:
    """``records`` with each run relabelled to its leaderboard row
    (:func:`lrlab.bench.leaderboard.method_group`): a learning-rate-free method swept over its
    initial estimate (label ``dadapt-adam[d0=lr]``) and the same method at its defaults become
    one method, as in the leaderboard's tables. Records already in their row are kept as they
    are."""
    from lrlab.bench.leaderboard import method_group

    grouped = []
    for record in records:
        group = method_group(record.config)
        if group == run_label(record.config):
            grouped.append(record)
            continue
        config = dataclasses.replace(record.config, tags={**record.config.tags, "label": group})
        grouped.append(dataclasses.replace(record, config=config))
    return grouped


# -- metric and direction -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MetricChoice:
    """Which final metric a problem is judged by, and in which direction."""

    metric: str
    goal: Goal


def metric_goal(problem: str, metric: str, records: Sequence[RunRecord] = ()) -> Goal:
    """Whether ``metric`` is better small or large on ``problem``: the one place that decides it.

    In order: the direction the runs stored (``RunRecord.goals``, written by the runner from the
    problem's declaration); the problem registry (:func:`lrlab.bench.spec.metric_goals`); for an
    unregistered problem, the table of the shipped metrics' directions
    (:data:`lrlab.bench.spec.METRIC_GOALS`). Never guessed from a metric's name.

    Raises:
        ValueError: nothing knows the direction of ``metric``; the message lists the metrics
            whose direction is known.
    """
    for record in records:
        goal = record.goal_of(metric)
        if goal is not None:
            return goal
    try:
        from lrlab.bench.problems import get_problem

        known = metric_goals(get_problem(problem).info)
    except KeyError:  # not a registered problem (a hand-made store): the shipped metrics' table
        known = dict(METRIC_GOALS)
    for record in records:
        known.update(record.goals)
    if metric in known:
        return known[metric]
    raise ValueError(
        f"metric {metric!r} of problem {problem!r} has no known direction; metrics with one: "
        f"{', '.join(sorted(known)) or 'none'}"
    )


def default_metric_choice(problem: str, records: Sequence[RunRecord]) -> MetricChoice:
    """The problem's headline metric (as the runs stored it, else as the registry declares it)
    if the runs recorded it, else the final training loss."""
    stored = sorted({r.metric for r in records if r.metric})
    headline: str | None = stored[0] if len(stored) == 1 else None
    if headline is None:
        try:
            from lrlab.bench.problems import get_problem

            headline = get_problem(problem).info.metric
        except KeyError:
            headline = None
    if headline is not None and any(headline in r.final for r in records):
        return MetricChoice(headline, metric_goal(problem, headline, records))
    return MetricChoice("final_loss", Goal.MINIMIZE)


def available_metrics(records: Sequence[RunRecord]) -> dict[str, list[str]]:
    """``{problem: sorted final metrics its finished runs recorded}`` (numeric entries only)."""
    found: dict[str, set[str]] = defaultdict(set)
    for record in records:
        found[record.config.problem]  # a problem with no finished run still appears
        if record.status is RunStatus.FINISHED:
            found[record.config.problem].update(
                k for k, v in record.final.items() if isinstance(v, (int, float))
            )
    return {problem: sorted(names) for problem, names in sorted(found.items())}


def _closest_first(name: str, valid: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, valid, n=3, cutoff=0.6)
    ordered = close + [v for v in valid if v not in close]
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return hint + ": valid names are " + ", ".join(ordered)


def check_metric(records: Sequence[RunRecord], metric: str) -> None:
    """Raise :class:`UnknownNameError` (naming the valid metrics) unless every problem in
    ``records`` with a finished run recorded ``metric`` (a selection where no run finished
    passes: there is nothing to check against)."""
    per_problem = available_metrics(records)
    valid = sorted({name for names in per_problem.values() for name in names})
    if not valid:
        return  # no run finished: nothing to check against, and every cell says so
    if metric not in valid:
        raise UnknownNameError(f"unknown metric {metric!r}{_closest_first(metric, valid)}")
    missing = [p for p, names in per_problem.items() if names and metric not in names]
    if missing:
        raise UnknownNameError(
            f"metric {metric!r} is not recorded for "
            + "; ".join(f"{p} (its metrics: {', '.join(per_problem[p])})" for p in missing)
            + "; choose those problems out or pick a metric they share"
        )


def check_problems(records: Sequence[RunRecord], problems: Sequence[str]) -> None:
    """Raise :class:`UnknownNameError` for the first of ``problems`` no record is about, naming
    the problems that are there."""
    valid = sorted({r.config.problem for r in records})
    for problem in problems:
        if problem not in valid:
            raise UnknownNameError(
                f"no runs of problem {problem!r} in the store{_closest_first(problem, valid)}"
            )


# -- formatting ---------------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 4) -> str:
    """A number for a table: ``digits`` significant digits; ``-`` for None."""
    return format_number(value, f".{digits}g", missing="-")


def _interval_text(mean: float, low: float, high: float) -> str:
    return f"{fmt(mean)} [{fmt(low)}, {fmt(high)}]"


def _direction(goal: Goal) -> str:
    return "lower is better" if goal is Goal.MINIMIZE else "higher is better"


def _percent(value: float) -> str:
    return f"{100 * value:.0f} %"


# -- leaderboard --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LeaderboardCell:
    """One (problem, method) of the leaderboard (see the module docstring for the rules)."""

    problem: str
    method: str
    lr: float | None
    """The best-tuned initial LR (None: the method's own default, no LR given)."""
    values: tuple[float, ...]
    """Final metric per seed at that LR (empty: no LR at which every seed finished)."""
    mean: float
    low: float
    high: float
    rank: int | None
    """1 = best; None: no LR at which every seed finished."""
    tied: bool
    """The interval overlaps a rank-1 method's interval (False for the rank-1 methods)."""


@dataclass(frozen=True, slots=True)
class Leaderboard:
    problems: list[str]
    methods: list[str]
    """In leaderboard order (mean rank, then first places, then name)."""
    choices: dict[str, MetricChoice]
    cells: dict[tuple[str, str], LeaderboardCell]
    mean_rank: dict[str, float]
    level: float
    resamples: int


def _better(a: float, b: float, goal: Goal) -> bool:
    return a < b if goal is Goal.MINIMIZE else a > b


def leaderboard(
    records: Sequence[RunRecord],
    choices: Mapping[str, MetricChoice],
    *,
    level: float = metrics.CONFIDENCE_LEVEL,
    resamples: int = metrics.BOOTSTRAP_RESAMPLES,
    seed: int = metrics.BOOTSTRAP_SEED,
) -> Leaderboard:
    """The leaderboard of ``records``, each problem judged by ``choices[problem]``."""
    by_problem: dict[str, list[RunRecord]] = defaultdict(list)
    for record in records:
        by_problem[record.config.problem].append(record)
    cells: dict[tuple[str, str], LeaderboardCell] = {}
    for problem, problem_records in sorted(by_problem.items()):
        choice = choices[problem]
        best = metrics.best_tuned(problem_records, choice.metric, choice.goal)
        values = metrics.final_values(problem_records, choice.metric)
        methods = sorted({method_label(r) for r in problem_records})
        scored: dict[str, tuple[float | None, tuple[float, ...], float, float, float]] = {}
        for method in methods:
            if (problem, method) not in best:
                continue
            lr, mean = best[(problem, method)]
            seeds = tuple(values[(problem, method, lr)])
            low, high = metrics.bootstrap_interval(
                seeds, level=level, resamples=resamples, seed=seed
            )
            scored[method] = (lr, seeds, mean, low, high)
        # rank = 1 + the number of methods strictly better (beyond rounding: the same seed
        # values summed in another order give means that differ in the last bits)
        ranks: dict[str, int] = {
            method: 1
            + sum(
                metrics.strictly_better(scored[other][2], scored[method][2], choice.goal)
                for other in scored
            )
            for method in scored
        }
        order = sorted(scored, key=lambda m: (ranks[m], m))
        leaders = [m for m in order if ranks[m] == 1]
        for method in methods:
            if method in scored:
                lr, seeds, mean, low, high = scored[method]
                tied = ranks[method] != 1 and any(
                    metrics.intervals_overlap((low, high), scored[leader][3:5])
                    for leader in leaders
                )
                cells[(problem, method)] = LeaderboardCell(
                    problem, method, lr, seeds, mean, low, high, ranks[method], tied
                )
            else:
                cells[(problem, method)] = LeaderboardCell(
                    problem, method, None, (), math.nan, math.nan, math.nan, None, False
                )
    problems = sorted(by_problem)
    all_methods = sorted({method for _, method in cells})
    mean_rank: dict[str, float] = {}
    firsts: dict[str, int] = {}
    for method in all_methods:
        ranks_here = []
        for problem in problems:
            cell = cells.get((problem, method))
            if cell is None:
                continue  # not run on this problem
            last = sum(1 for p, _ in cells if p == problem)
            ranks_here.append(cell.rank if cell.rank is not None else last)
        mean_rank[method] = statistics.fmean(ranks_here)
        firsts[method] = sum(1 for (_, m), c in cells.items() if m == method and c.rank == 1)
    ordered = sorted(all_methods, key=lambda m: (mean_rank[m], -firsts[m], m))
    return Leaderboard(
        problems=problems,
        methods=ordered,
        choices={p: choices[p] for p in problems},
        cells=cells,
        mean_rank=mean_rank,
        level=level,
        resamples=resamples,
    )


def leaderboard_table(board: Leaderboard) -> Table:
    """Methods (rows, leaderboard order) x problems: ``rank: mean [low, high]``; ``=`` after
    the rank marks a tie with the best; the best cell of each problem emphasised."""
    header = ["method", "mean rank"] + [
        f"{p} ({board.choices[p].metric}, {_direction(board.choices[p].goal)})"
        for p in board.problems
    ]
    rows: list[list[str]] = []
    emphasis: set[tuple[int, int]] = set()
    data: list[dict[str, object]] = []
    for r, method in enumerate(board.methods):
        row = [method, f"{board.mean_rank[method]:.2f}"]
        for k, problem in enumerate(board.problems):
            cell = board.cells.get((problem, method))
            if cell is None:
                row.append("not run")
                continue
            if cell.rank is None:
                row.append("diverged")
            else:
                mark = "=" if cell.tied else ""
                row.append(f"{cell.rank}{mark}: {_interval_text(cell.mean, cell.low, cell.high)}")
                if cell.rank == 1:
                    emphasis.add((r, k + 2))
            data.append(
                {
                    "problem": problem,
                    "method": method,
                    "metric": board.choices[problem].metric,
                    "goal": board.choices[problem].goal.value,
                    "rank": cell.rank,
                    "tied_with_best": cell.tied,
                    "best_lr": cell.lr,
                    "mean": None if cell.rank is None else cell.mean,
                    "ci_low": None if cell.rank is None else cell.low,
                    "ci_high": None if cell.rank is None else cell.high,
                    "seeds": len(cell.values),
                    "mean_rank": board.mean_rank[method],
                }
            )
        rows.append(row)
    seeds = sorted({len(c.values) for c in board.cells.values() if c.values})
    seed_text = f"{seeds[0]}" if len(seeds) == 1 else f"{seeds[0]} to {seeds[-1]}" if seeds else "0"
    caption = (
        "Each cell: rank on that problem, then the best-tuned result (the initial LR at which "
        "every seed finished with the best mean final metric) as mean over "
        f"{seed_text} seeds [{_percent(board.level)} percentile bootstrap interval, "
        f"{board.resamples:,} resamples, seeded]. Rank: by that mean, best first, equal means "
        "share a rank. '=' after the rank: the interval overlaps the best method's, so the two "
        "are not told apart by these seeds. Bold: rank 1. 'diverged': no initial LR at which "
        "every seed finished. Rows by mean rank over the problems (an unranked cell counts as "
        "last place). With few seeds the bootstrap interval is narrower than a true 95 % "
        "interval: read overlaps as ties, not as proofs of difference."
    )
    return Table("leaderboard", "Leaderboard", caption, header, rows, frozenset(emphasis), data)


# -- robustness ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RobustnessCell:
    problem: str
    method: str
    width: float
    """Robust width in decades."""
    divergence_rate: float
    default_lr: float | None
    """The initial LR of the default runs (None: run without one); nan: no default runs."""
    default_values: tuple[float, ...]
    """Final metric per seed at defaults (NaN: that seed diverged); empty: not run at defaults."""

    @property
    def default_finished(self) -> bool:
        return bool(self.default_values) and all(math.isfinite(v) for v in self.default_values)

    @property
    def default_mean(self) -> float:
        """Mean at defaults; NaN when not run at defaults or any default seed diverged."""
        return statistics.fmean(self.default_values) if self.default_finished else math.nan


def robustness(
    records: Sequence[RunRecord], choices: Mapping[str, MetricChoice], *, tolerance: float
) -> dict[tuple[str, str], RobustnessCell]:
    """Per (problem, method): robust width, divergence rate, result at defaults."""
    by_problem: dict[str, list[RunRecord]] = defaultdict(list)
    for record in records:
        by_problem[record.config.problem].append(record)
    rates = metrics.divergence_rate(records)
    cells: dict[tuple[str, str], RobustnessCell] = {}
    for problem, problem_records in sorted(by_problem.items()):
        choice = choices[problem]
        widths = metrics.robustness_width(
            problem_records, choice.metric, choice.goal, tolerance=tolerance
        )
        defaults: dict[str, dict[float | None, list[tuple[int, float]]]] = defaultdict(
            lambda: defaultdict(list)
        )
        for record in problem_records:
            if metrics.is_default_run(record):
                defaults[method_label(record)][record.config.lr].append(
                    (record.config.seed, metrics.final_value(record, choice.metric))
                )
        for method in sorted({method_label(r) for r in problem_records}):
            settings = defaults.get(method, {})
            # a run with no LR given is the method's own default; prefer it to an explicit LR
            explicit = sorted(lr for lr in settings if lr is not None)
            lr_key = None if None in settings else explicit[0] if explicit else math.nan
            pairs = sorted(settings.get(lr_key, [])) if settings else []
            cells[(problem, method)] = RobustnessCell(
                problem=problem,
                method=method,
                width=widths.get((problem, method), 0.0),
                divergence_rate=rates.get((problem, method), 0.0),
                default_lr=lr_key if settings else math.nan,
                default_values=tuple(v for _, v in pairs),
            )
    return cells


def robustness_table(
    cells: Mapping[tuple[str, str], RobustnessCell],
    choices: Mapping[str, MetricChoice],
    methods: Sequence[str],
    *,
    tolerance: float,
) -> Table:
    """Methods (rows, in ``methods`` order) x problems: width, divergence rate, at defaults."""
    problems = sorted({p for p, _ in cells})
    header = ["method", "mean width (decades)", "runs diverged", *problems]
    rows: list[list[str]] = []
    data: list[dict[str, object]] = []
    for method in methods:
        mine = [cells[(p, method)] for p in problems if (p, method) in cells]
        if not mine:
            continue
        row = [
            method,
            f"{statistics.fmean(c.width for c in mine):.2g}",
            _percent(statistics.fmean(c.divergence_rate for c in mine)),
        ]
        for problem in problems:
            cell = cells.get((problem, method))
            if cell is None:
                row.append("not run")
                continue
            if not cell.default_values:
                default = "not run at defaults"
            elif not cell.default_finished:
                default = "diverged at defaults"
            else:
                default = f"at defaults {fmt(cell.default_mean)}"
            row.append(f"{cell.width:.2g} dec; {_percent(cell.divergence_rate)} div.; {default}")
            data.append(
                {
                    "problem": problem,
                    "method": method,
                    "metric": choices[problem].metric,
                    "robust_width_decades": cell.width,
                    "divergence_rate": cell.divergence_rate,
                    "default_lr": None
                    if cell.default_lr is None or math.isnan(cell.default_lr)
                    else cell.default_lr,
                    "default_mean": None if not cell.default_finished else cell.default_mean,
                    "default_seeds": len(cell.default_values),
                    "default_diverged": sum(not math.isfinite(v) for v in cell.default_values),
                }
            )
        rows.append(row)
    caption = (
        "Per problem: the robust width (decades of initial LR over which the mean final metric "
        f"stays within {_percent(tolerance)} of the best run of any method, no seed diverged), the "
        "share of the method's runs (every initial LR and seed swept) that diverged or failed, "
        "and the mean final metric at the method's defaults (no initial LR given, or the "
        "default of its LR argument). Summary columns: mean width and mean divergence share "
        "over problems."
    )
    return Table("robustness", "Robustness", caption, header, rows, frozenset(), data)


# -- verdict ------------------------------------------------------------------------------------


def baseline_method(records: Sequence[RunRecord]) -> str | None:
    """The label of tuned Adam: runs of ``adam`` or ``adamw`` with no extra arguments; of those,
    the one tried at the most initial LRs (the most tuned), ``adam`` on a tie."""
    tried: dict[str, set[float]] = defaultdict(set)
    for record in records:
        if record.config.method in ("adam", "adamw") and not record.config.method_kwargs:
            tried[method_label(record)].update([record.config.lr] if record.config.lr else [])
    if not tried:
        return None
    return min(tried, key=lambda label: (-len(tried[label]), label != "adam", label))


def _shortfall(value: float, reference: float, goal: Goal) -> float:
    """How much worse ``value`` is than ``reference``, relative to its magnitude (0: as good
    or better)."""
    gap = value - reference if goal is Goal.MINIMIZE else reference - value
    scale = abs(reference) if reference != 0 else 1.0
    return max(0.0, gap / scale)


@dataclass(frozen=True, slots=True)
class Verdict:
    text: str
    reliable_method: str | None
    """The most reliable method with no tuning (None: no method ran at its defaults)."""
    within: int
    problems: int
    baseline: str | None
    best_tuned_method: str | None


def verdict(
    board: Leaderboard,
    robust: Mapping[tuple[str, str], RobustnessCell],
    records: Sequence[RunRecord],
    *,
    tolerance: float,
) -> Verdict:
    """The generated verdict (see the module docstring for the rules)."""
    baseline = baseline_method(records)
    references: dict[str, float] = {}
    for problem in board.problems:
        if baseline is not None:
            cell = board.cells.get((problem, baseline))
            if cell is not None and cell.rank is not None:
                references[problem] = cell.mean
        else:
            leaders = [c for (p, _), c in board.cells.items() if p == problem and c.rank == 1]
            if leaders:
                references[problem] = leaders[0].mean
    reference_name = f"tuned {baseline}" if baseline else "the best tuned method"
    sentences: list[str] = []
    reliable: str | None = None
    within_count = 0
    candidates: list[tuple[int, float, str]] = []
    for method in board.methods:
        shortfalls = []
        within = 0
        ran_default = False
        for problem, reference in references.items():
            default = robust.get((problem, method))
            if default is None or not default.default_values:
                shortfalls.append(math.inf)
                continue
            ran_default = True
            if not default.default_finished:
                shortfalls.append(math.inf)
                continue
            gap = _shortfall(default.default_mean, reference, board.choices[problem].goal)
            shortfalls.append(gap)
            within += gap <= tolerance + 1e-12
        if ran_default:
            candidates.append((-within, statistics.median(shortfalls), method))
    if candidates and references:
        negative_within, median_gap, reliable = min(candidates)
        within_count = -negative_within
        median_text = (
            f"median shortfall {_percent(median_gap)}"
            if math.isfinite(median_gap)
            else "diverged or not run at defaults on most problems"
        )
        sentences.append(
            f"With no tuning, the most reliable method here was {reliable}: at its defaults it "
            f"came within {_percent(tolerance)} of {reference_name} on {within_count} of "
            f"{len(references)} problems ({median_text})."
        )
    elif not candidates:
        sentences.append(
            "No method was run at its defaults here, so there is no verdict on working "
            "without tuning."
        )
    else:
        sentences.append(
            f"No problem has a finished {reference_name} result to compare the defaults with."
        )
    best_tuned_method = board.methods[0] if board.methods else None
    if best_tuned_method is not None:
        firsts = sum(
            1
            for p in board.problems
            if (c := board.cells.get((p, best_tuned_method))) and c.rank == 1
        )
        level = sum(
            1
            for p in board.problems
            if (c := board.cells.get((p, best_tuned_method))) and (c.rank == 1 or c.tied)
        )
        sentences.append(
            f"Tuned, {best_tuned_method} ranked best overall (mean rank "
            f"{board.mean_rank[best_tuned_method]:.2f}; first on {firsts} and first or tied "
            f"with the first on {level} of {len(board.problems)} problems)."
        )
    widths: dict[str, list[float]] = defaultdict(list)
    rates: dict[str, list[float]] = defaultdict(list)
    for (_, method), robust_cell in robust.items():
        widths[method].append(robust_cell.width)
        rates[method].append(robust_cell.divergence_rate)
    if widths:
        widest = min(widths, key=lambda m: (-statistics.fmean(widths[m]), m))
        mean_width = statistics.fmean(widths[widest])
        if mean_width > 0:
            sentences.append(
                f"The least sensitive to the initial LR was {widest} ({mean_width:.2g} "
                f"decade{'' if mean_width == 1 else 's'} "
                f"within {_percent(tolerance)} of the best run, on average over problems)."
            )
        fragile = min(rates, key=lambda m: (-statistics.fmean(rates[m]), m))
        rate = statistics.fmean(rates[fragile])
        if rate > 0:
            sentences.append(
                f"The most fragile was {fragile}: {_percent(rate)} of its runs diverged or failed."
            )
    return Verdict(
        text=" ".join(sentences),
        reliable_method=reliable,
        within=within_count,
        problems=len(references),
        baseline=baseline,
        best_tuned_method=best_tuned_method,
    )


def summarize(
    records: Sequence[RunRecord],
    choices: Mapping[str, MetricChoice],
    *,
    tolerance: float,
) -> tuple[Leaderboard, dict[tuple[str, str], RobustnessCell], Verdict]:
    """The leaderboard, the robustness cells and the verdict of ``records`` in one call."""
    board = leaderboard(records, choices)
    robust = robustness(records, choices, tolerance=tolerance)
    return board, robust, verdict(board, robust, records, tolerance=tolerance)
