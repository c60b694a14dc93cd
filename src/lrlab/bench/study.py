"""Studies: a preset (TOML data) + a hand-written commentary + results generated from a store.

One command runs a study end to end::

    lrlab study NAME [--store FILE] [--docs DIR] [--report-dir DIR] [--workers N] [--no-run]

1. runs the preset's sweep into the store (default ``results/NAME.sqlite``; resumable: runs
   already stored are skipped, so the same command finishes a killed study);
2. builds the full report per part with :func:`lrlab.bench.report.build_report` (HTML,
   Markdown and figures, default ``results/NAME-report/<part>/``);
3. writes ``DIR/NAME.md`` (default ``docs/studies/NAME.md``): the commentary with its
   placeholders filled from the store, then per part the generated tables and the chosen
   figures (copied to ``DIR/NAME/``), then how it was produced (the exact command, the measured
   wall time, the machine, the library versions). No number in it is typed by hand.

**Files of a study** (``NAME`` may also be a path ``FILE.toml``; its commentary is then
``FILE.md`` beside it):

* ``src/lrlab/bench/presets/NAME.toml``: the study, in the format of :mod:`lrlab.bench.studyfile`
  (problems, methods, grids; ``[[parts]]`` for sub-studies with their own grids; per-method
  ``lr_argument``, ``lrs``, ``schedule``; per-problem ``steps``/``kwargs``) plus optional
  ``title`` and ``[report]`` options: ``metric`` (a name, or a table problem -> name; default:
  each problem's headline metric), ``tolerance`` (relative, default 0.1: robustness width and
  default targets), ``targets`` (problem -> training-loss target for time to target),
  ``figures`` (subset of ``["sensitivity", "lr-trajectories", "curves", "refinement",
  "performance-profile"]`` to show in the docs page; the HTML report always has all).
* ``src/lrlab/bench/presets/NAME.md``: the commentary, Markdown written by hand: what the study
  asks, the paper's claims, and the honest comparison. The quick variant (``--quick``) reads
  ``NAME.quick.md`` when it exists (its runs are other runs: a reading of the full study's
  numbers does not hold for them) and writes its own page, ``DIR/NAME-quick.md`` with figures in
  ``DIR/NAME-quick/``, so that it never replaces the full study's page. Numbers come in
  through placeholders ``{{KIND key=value ...}}`` (values with spaces in quotes), filled from
  the store:

  ``{{value part=b problem=iris_logreg method=adam lr=0.001}}``
      the mean over seeds of the final metric of that (problem, method label, initial LR);
      ``stat=`` mean (default), std, min, max, seeds, diverged (seeds that diverged or failed);
      ``metric=`` another final metric; ``lr=`` may be left out when the selection has one LR
      (or none: methods run with ``lr = None``); ``fmt=`` a format spec (default ``.3g``).
  ``{{best ...}}``, ``{{best_lr ...}}``
      the best mean final metric over initial LRs (no diverged seed) and the LR giving it.
  ``{{width ...}}``
      the robustness width in decades (see :mod:`lrlab.bench.metrics`) at the part's tolerance.
  ``{{results}}``, ``{{provenance}}``
      where the generated results and the "how it was produced" sections go (default: after the
      commentary, in that order).

  ``part=`` may be left out when the study has one part (or none). ``method=`` is the run's
  label as the tables show it (``clara-adam(d=0.5106,unit_step=True)``, a preset ``label``, or
  the method name). A placeholder that matches no run, or is ambiguous, is an error, so a doc
  cannot quote a number that is not in the store.

Timing: every sweep invocation that ran something appends its wall time to
``STORE.timing.json``; the doc reports their sum (and says when the study was run in several
invocations), so the time is the one measured, not an estimate.

The placeholders are checked against the study's configs before anything runs
(:func:`check_commentary`: unknown parts, problems or labels fail at once).

Python API: :func:`run_study` (what the command does), :func:`load_study_source`,
:func:`check_commentary`, :func:`render_doc` and :func:`fill_placeholders` for tests and custom
pipelines.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import math
import os
import platform
import re
import shlex
import shutil
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata, resources
from pathlib import Path
from typing import Any, TextIO

from lrlab.bench import metrics
from lrlab.bench._markdown import escape_markdown
from lrlab.bench._paths import check_study_name
from lrlab.bench.refinement import second_pass_configs
from lrlab.bench.spec import Goal, RunRecord, run_label
from lrlab.bench.studyfile import Study, StudyError, load_study
from lrlab.bench.tables import format_number, markdown_table

__all__ = [
    "StudyOutcome",
    "StudySource",
    "check_commentary",
    "fill_placeholders",
    "load_study_source",
    "render_doc",
    "run_study",
]

DEFAULT_TOLERANCE = 0.1


# -- loading ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StudySource:
    """A study and its hand-written commentary."""

    study: Study
    commentary: str
    toml_path: str
    """Where the study came from (``src/lrlab/bench/presets/NAME.toml`` or the given file)."""
    commentary_path: str | None


def load_study_source(name: str) -> StudySource:
    """A shipped preset by name, or a study file ``FILE.toml`` (commentary ``FILE.md``)."""
    if name.endswith(".toml") or os.sep in name or "/" in name:
        path = Path(name)
        study = load_study(path)
        commentary_path = path.with_suffix(".md")
        commentary = commentary_path.read_text() if commentary_path.is_file() else ""
        return StudySource(
            study, commentary, str(path), str(commentary_path) if commentary else None
        )
    from lrlab.bench.presets import load_preset

    study = load_preset(name)
    directory = resources.files("lrlab.bench") / "presets"
    entry = directory / f"{name}.md"
    commentary = entry.read_text() if entry.is_file() else ""
    return StudySource(
        study,
        commentary,
        f"src/lrlab/bench/presets/{name}.toml",
        f"src/lrlab/bench/presets/{name}.md" if commentary else None,
    )


def _quick_commentary(source: StudySource) -> dict[str, Any]:
    """The commentary of the quick variant (``NAME.quick.md``) as fields of a
    :class:`StudySource`, or nothing when the study has none (the main one serves)."""
    if source.commentary_path is None:
        return {}
    if source.toml_path.startswith("src/lrlab/bench/presets/"):
        name = Path(source.toml_path).stem
        entry = resources.files("lrlab.bench") / "presets" / f"{name}.quick.md"
        path = f"src/lrlab/bench/presets/{name}.quick.md"
    else:
        entry = Path(source.toml_path).with_suffix(".quick.md")
        path = str(entry)
    if not entry.is_file():
        return {}
    return {"commentary": entry.read_text(), "commentary_path": path}


def _parts(study: Study) -> list[Study]:
    """The parts of a study as its report shows them: its parts; itself when it has none, or
    when ``report.combine_parts`` asks for one report over all of them (then its problems are
    its parts' problems, in order)."""
    if not study.parts:
        return [study]
    if study.report.get("combine_parts"):
        problems = {p.name: p for part in study.parts for p in part.problems}
        return [dataclasses.replace(study, problems=tuple(problems.values()))]
    return list(study.parts)


def _split(study: Study) -> bool:
    """Whether the report has a section per part."""
    return bool(study.parts) and not study.report.get("combine_parts")


# -- metric choice ------------------------------------------------------------------------------


def _goal_of(problem: str, metric: str, records: Sequence[RunRecord] = ()) -> Goal:
    """The direction of ``metric`` on ``problem``: as the runs stored it, else as the problem
    declares it (:func:`lrlab.bench.summary.metric_goal`, the one place that decides it); never
    guessed from the name.

    Raises:
        StudyError: nothing knows the metric's direction.
    """
    from lrlab.bench.summary import metric_goal

    try:
        return metric_goal(problem, metric, records)
    except ValueError as error:
        raise StudyError(str(error)) from None


def _metric_choice(part: Study) -> Callable[[str, Sequence[RunRecord]], Any]:
    """The ``metric_choice`` for :func:`build_report` from the part's ``report.metric``."""
    from lrlab.bench.report import MetricChoice, default_metric_choice
    from lrlab.bench.summary import check_metric

    option = part.report.get("metric")

    def choose(problem: str, records: Sequence[RunRecord]) -> MetricChoice:
        metric = option.get(problem) if isinstance(option, Mapping) else option
        if metric is None:
            return default_metric_choice(problem, records)
        try:  # a metric the runs did not record: the names they did, not a page of "diverged"
            check_metric(records, metric)
        except KeyError as error:
            raise StudyError(f"report.metric of problem {problem!r}: {error}") from None
        return MetricChoice(metric, _goal_of(problem, metric, records))

    return choose


# -- records ------------------------------------------------------------------------------------


def _part_records(part: Study, store: Any) -> tuple[list[RunRecord], int]:
    """The stored records of a part's runs (two-pass methods: both passes), and how many runs
    the part expects that are not stored."""
    configs = part.configs()
    ids = list(dict.fromkeys(c.run_id for c in configs))
    second = second_pass_configs(configs, store).configs
    ids += [c.run_id for c in second if c.run_id not in set(ids)]
    records: list[RunRecord] = []
    for start in range(0, len(ids), 500):
        records += store.load_records(run_id=ids[start : start + 500])
    return records, len(ids) - len(records)


def _label(record: RunRecord) -> str:
    return run_label(record.config)


# -- placeholders -------------------------------------------------------------------------------

_PLACEHOLDER = re.compile(r"\{\{(.*?)\}\}", re.S)
_KINDS = ("value", "best", "best_lr", "width")
_KEYS = {"part", "problem", "method", "lr", "metric", "stat", "fmt"}
_STATS = ("mean", "std", "min", "max", "seeds", "diverged")


def _same_lr(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=1e-9)


def _format(value: float | None, spec: str) -> str:
    return format_number(value, spec)


def _evaluate_placeholder(
    text: str,
    parts: Mapping[str, Study],
    records: Mapping[str, Sequence[RunRecord]],
) -> str:
    tokens = shlex.split(text)
    if not tokens or tokens[0] not in _KINDS:
        raise StudyError(
            f"placeholder {{{{{text}}}}}: the first word must be one of {', '.join(_KINDS)}, "
            "or results / provenance"
        )
    kind, options = tokens[0], {}
    for token in tokens[1:]:
        key, sep, value = token.partition("=")
        if not sep or key not in _KEYS:
            raise StudyError(
                f"placeholder {{{{{text}}}}}: bad option {token!r}; options are "
                f"{', '.join(sorted(_KEYS))} as key=value"
            )
        options[key] = value
    where = f"placeholder {{{{{text}}}}}"
    for key in ("problem", "method"):
        if key not in options:
            raise StudyError(f"{where}: needs {key}=")
    if "part" in options:
        if options["part"] not in parts:
            raise StudyError(f"{where}: no part {options['part']!r}; parts: {', '.join(parts)}")
        names = [options["part"]]
    else:
        names = [
            name
            for name in parts
            if any(
                r.config.problem == options["problem"] and _label(r) == options["method"]
                for r in records[name]
            )
        ]
        if len(names) > 1:
            raise StudyError(f"{where}: runs in several parts ({', '.join(names)}); add part=")
        if not names:
            raise StudyError(f"{where}: no stored run of that problem and method")
    part = parts[names[0]]
    problem_records = [r for r in records[names[0]] if r.config.problem == options["problem"]]
    selected = [r for r in problem_records if _label(r) == options["method"]]
    if not selected:
        labels = sorted({_label(r) for r in problem_records})
        raise StudyError(
            f"{where}: no stored run of that problem and method; methods there: "
            f"{', '.join(labels) or 'none'}"
        )
    choice = _metric_choice(part)(options["problem"], problem_records)
    metric = options.get("metric", choice.metric)

    def goal() -> Goal:
        # only the kinds that compare runs need the metric's direction: a "value" is a plain
        # mean, also of a metric that has none (final_lr)
        if "metric" in options:
            return _goal_of(options["problem"], metric, selected)
        return choice.goal

    spec = options.get("fmt", ".3g")
    if kind == "value":
        lrs = sorted({r.config.lr for r in selected}, key=lambda v: (v is not None, v or 0.0))
        if "lr" in options:
            wanted = None if options["lr"].lower() == "none" else float(options["lr"])
            selected = [r for r in selected if _same_lr(r.config.lr, wanted)]
            if not selected:
                raise StudyError(f"{where}: no run at that lr; lrs there: {lrs}")
        elif len(lrs) > 1:
            raise StudyError(f"{where}: several initial LRs {lrs}; add lr=")
        (point,) = metrics.sensitivity(selected, metric)
        stat = options.get("stat", "mean")
        if stat not in _STATS:
            raise StudyError(f"{where}: stat must be one of {', '.join(_STATS)}")
        if stat in ("seeds", "diverged"):
            return str(getattr(point, stat))
        by_stat = {"mean": point.mean, "std": point.std, "min": point.minimum, "max": point.maximum}
        return _format(by_stat[stat], spec)
    if kind in ("best", "best_lr"):
        best = metrics.best_tuned(selected, metric, goal())
        selection = (options["problem"], options["method"])
        if selection not in best:
            return "none (every LR diverged)"
        best_lr, best_value = best[selection]
        return _format(best_value, spec) if kind == "best" else _format(best_lr, "g")
    tolerance = float(part.report.get("tolerance", DEFAULT_TOLERANCE))
    widths = metrics.robustness_width(
        problem_records,
        metric,
        goal(),
        tolerance=tolerance,
        reference_methods=part.report.get("width_reference"),
    )
    return _format(widths[(options["problem"], options["method"])], "g")


def check_commentary(source: StudySource) -> list[str]:
    """Problems with the commentary's placeholders found without running anything: unknown
    kinds or options, parts, problems or method labels the study does not have. Empty: fine."""
    parts = {part.name: part for part in _parts(source.study)}
    expected: dict[str, set[tuple[str, str]]] = {
        name: {
            (c.problem, str(label))
            for c in part.configs()
            # a two-pass method's pass 1 names the label its pass 2 will have
            for label in (run_label(c), c.tags.get("refined_label"))
            if label
        }
        for name, part in parts.items()
    }
    problems: list[str] = []
    for match in _PLACEHOLDER.finditer(source.commentary):
        inner = match.group(1).strip()
        if inner in ("results", "provenance"):
            continue
        where = f"{{{{{inner}}}}}"
        try:
            tokens = shlex.split(inner)
        except ValueError as error:
            problems.append(f"{where}: {error}")
            continue
        if not tokens or tokens[0] not in _KINDS:
            problems.append(f"{where}: unknown kind; use {', '.join(_KINDS)}, results, provenance")
            continue
        options = dict(t.partition("=")[::2] for t in tokens[1:])
        bad = [t for t in tokens[1:] if "=" not in t or t.partition("=")[0] not in _KEYS]
        if bad:
            problems.append(f"{where}: bad option {bad[0]!r}")
            continue
        if options.get("stat", "mean") not in _STATS:
            problems.append(f"{where}: stat must be one of {', '.join(_STATS)}")
        if "part" in options and options["part"] not in parts:
            problems.append(f"{where}: no part {options['part']!r}")
            continue
        candidates = [options["part"]] if "part" in options else list(parts)
        key = (options.get("problem", ""), options.get("method", ""))
        found = [name for name in candidates if key in expected[name]]
        if not found:
            problems.append(f"{where}: no run of problem {key[0]!r} with method label {key[1]!r}")
        elif len(found) > 1:
            problems.append(f"{where}: runs in several parts ({', '.join(found)}); add part=")
    return problems


def fill_placeholders(
    text: str,
    parts: Mapping[str, Study],
    records: Mapping[str, Sequence[RunRecord]],
    sections: Mapping[str, str] | None = None,
) -> str:
    """Replace every ``{{...}}`` of the commentary (see the module docstring).

    Args:
        text: the commentary.
        parts: the study's parts by name (a study without parts: itself under its name).
        records: each part's stored records.
        sections: text of ``{{results}}`` and ``{{provenance}}``; a section the text does not
            place is appended at the end.

    Raises:
        StudyError: a placeholder that is malformed, matches no run, or is ambiguous.
    """
    sections = dict(sections or {})
    used: set[str] = set()

    def substitute(match: re.Match[str]) -> str:
        inner = match.group(1).strip()
        if inner in sections:
            used.add(inner)
            return sections[inner]
        return _evaluate_placeholder(inner, parts, records)

    filled = _PLACEHOLDER.sub(substitute, text)
    rest = [sections[name] for name in sections if name not in used]
    return "\n\n".join([filled.rstrip(), *rest]).strip() + "\n"


# -- generated tables ---------------------------------------------------------------------------


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    return markdown_table(header, rows)


def _cell(point: metrics.SensitivityPoint) -> str:
    """``mean ± std`` over the seeds that finished, ``(k/n div)`` when k of n seeds diverged."""
    if point.seeds == point.diverged:
        return f"diverged ({point.seeds}/{point.seeds})"
    text = _format(point.mean, ".3g")
    if point.seeds - point.diverged > 1:
        text += f" ± {_format(point.std, '.2g')}"
    if point.diverged:
        text += f" ({point.diverged}/{point.seeds} div)"
    return text


def _lr_text(lr: float | None) -> str:
    return "default" if lr is None else format(lr, "g")


def _mean_rank(ranks: Sequence[int | None]) -> float:
    present = [r for r in ranks if r is not None]
    return sum(present) / len(present) if present else math.inf


def _of(records: Sequence[RunRecord], problem: str) -> list[RunRecord]:
    return [r for r in records if r.config.problem == problem]


def leaderboard_tables(part: Study, records: Sequence[RunRecord]) -> str:
    """The leaderboard tables of a part (``report.leaderboard``): per method and problem the
    best-tuned result and rank, the result and rank at the defaults, the robustness width and
    divergence rate, and the time to target (:mod:`lrlab.bench.leaderboard`)."""
    from lrlab.bench.leaderboard import entries

    choose = _metric_choice(part)

    def metric_choice(problem: str, problem_records: Sequence[RunRecord]) -> tuple[str, Goal]:
        choice = choose(problem, problem_records)
        return choice.metric, choice.goal

    tolerance = float(part.report.get("tolerance", DEFAULT_TOLERANCE))
    found = entries(
        records,
        metric_choice=metric_choice,
        tolerance=tolerance,
        targets=part.report.get("targets") or None,
    )
    problems = [e.name for e in part.problems if any(x.problem == e.name for x in found)]
    problems += sorted({x.problem for x in found} - set(problems))
    cell = {(x.problem, x.method): x for x in found}
    methods = sorted(
        {x.method for x in found},
        key=lambda m: (_mean_rank([cell[(p, m)].rank for p in problems if (p, m) in cell]), m),
    )
    metric_of = {x.problem: f"{x.metric} ({x.goal.value})" for x in found}

    def row(method: str, text: Callable[[Any], str], rank: Callable[[Any], Any]) -> list[str]:
        cells = [text(cell[(p, method)]) if (p, method) in cell else "-" for p in problems]
        mean = _mean_rank([rank(cell[(p, method)]) for p in problems if (p, method) in cell])
        return [method, *cells, _format(mean, ".1f") if math.isfinite(mean) else "-"]

    def ranked(value: float | None, place: int | None, diverged: bool = False) -> str:
        if value is None:
            return "diverged" if diverged else "-"
        return f"{_format(value, '.3g')} ({place})"

    def seconds(x: Any) -> str:
        if not math.isfinite(x.steps_to_target):
            return "not reached"
        return f"{x.steps_to_target:.0f} ({x.seconds_to_target:.1f} s)"

    header = ["method", *problems, "mean rank"]
    best_rows = [row(m, lambda x: ranked(x.best, x.rank), lambda x: x.rank) for m in methods]
    default_methods = sorted(
        methods,
        key=lambda m: (
            _mean_rank([cell[(p, m)].default_rank for p in problems if (p, m) in cell]),
            m,
        ),
    )
    default_rows = [
        row(
            m,
            lambda x: ranked(x.default, x.default_rank, x.default_diverged),
            lambda x: x.default_rank,
        )
        for m in default_methods
    ]
    width_rows = []
    for method in methods:
        here = [cell[(p, method)] for p in problems if (p, method) in cell]
        runs = sum(x.runs for x in here)
        diverged = sum(x.divergence_rate * x.runs for x in here)
        width_rows.append(
            [method]
            + [
                _format(cell[(p, method)].width, "g") if (p, method) in cell else "-"
                for p in problems
            ]
            + [f"{diverged / runs:.0%}" if runs else "-"]
        )
    time_rows = [
        [method] + [seconds(cell[(p, method)]) if (p, method) in cell else "-" for p in problems]
        for method in methods
    ]
    targets = {x.problem: x.target for x in found}
    # the report's summary (lrlab.bench.summary): its generated verdict and the leaderboard with
    # bootstrap intervals over seeds and ties, on the same records, metrics and tolerance
    from lrlab.bench import summary

    grouped = summary.group_variants(records)
    choices = {p: summary.MetricChoice(*metric_choice(p, _of(grouped, p))) for p in problems}
    board, _, verdict = summary.summarize(grouped, choices, tolerance=tolerance)
    table = summary.leaderboard_table(board)
    return "\n".join(
        [
            f"**Verdict** (generated from the runs): {verdict.text}",
            "",
            f"**{table.title}** with intervals: {table.caption}",
            "",
            table.markdown(),
            "",
            "**Leaderboard, tuned**: per problem the best mean final metric over every setting "
            "a method was run at (initial LRs; for learning-rate-free methods their initial "
            "estimate; and the defaults) at which no seed diverged, and the method's rank on "
            "the problem (1 = best; equal values share a rank). Methods are sorted by their mean "
            "rank. Metrics: " + "; ".join(f"{p}: {metric_of[p]}" for p in problems) + ".",
            "",
            _md_table(header, best_rows),
            "",
            "**With no tuning**: the mean final metric at the method's defaults (its "
            "constructor's own learning rate or initial estimate) and its rank among the "
            "defaults; `diverged`: a seed diverged there.",
            "",
            _md_table(header, default_rows),
            "",
            f"**Robustness**: the width in decades of the longest run of consecutive grid "
            f"settings whose mean final metric is within {tolerance:.0%} of the best run of any "
            "method on the problem (no seed diverged), and the share of all the method's runs "
            "that diverged or failed.",
            "",
            _md_table(["method", *problems, "diverged runs"], width_rows),
            "",
            "**Time to target** at the best setting: the median over seeds of the first step "
            "whose mini-batch training loss reaches the problem's target, and that share of the "
            "run's wall time; `not reached`: a seed never got there. Targets (training loss): "
            + ", ".join(f"{p} {_format(targets[p], '.3g')}" for p in problems)
            + ".",
            "",
            _md_table(["method", *problems], time_rows),
        ]
    )


def part_tables(part: Study, records: Sequence[RunRecord]) -> str:
    """The generated Markdown tables of one part.

    With ``report.leaderboard``: the leaderboard tables (:func:`leaderboard_tables`) only; the
    per-LR tables of every method are in the HTML report.

    A part with one initial LR per method gets one table (problems x methods, final metric).
    A part with an LR grid gets, across problems, the best-tuned result (best initial LR) and
    the robustness width per method, then per problem the full method x LR table.
    """
    if part.report.get("leaderboard"):
        return leaderboard_tables(part, records)
    by_problem: dict[str, list[RunRecord]] = defaultdict(list)
    for record in records:
        by_problem[record.config.problem].append(record)
    choose = _metric_choice(part)
    choices = {p: choose(p, rs) for p, rs in by_problem.items()}
    problems = [e.name for e in part.problems if e.name in by_problem] + sorted(
        set(by_problem) - {e.name for e in part.problems}
    )
    labels = [
        label
        for label in dict.fromkeys(
            [run_label(c) for c in part.configs()] + [_label(r) for r in records]
        )
        if any(_label(r) == label for r in records)
    ]
    points = {
        (p.problem, p.method, p.lr): p
        for problem in problems
        for p in metrics.sensitivity(by_problem[problem], choices[problem].metric)
    }
    lrs_of = defaultdict(set)
    for _problem, label, lr in points:
        lrs_of[label].add(lr)
    seeds = max((p.seeds for p in points.values()), default=0)
    blocks: list[str] = []
    note = (
        f"Cells: mean ± standard deviation over {seeds} seed(s) of the final metric "
        "(seeds that finished); `(k/n div)`: k of n seeds diverged."
        if seeds > 1
        else "Cells: the final metric of the single run; `diverged`: the run diverged."
    )
    if all(len(v) == 1 for v in lrs_of.values()):
        header = [
            "problem",
            "metric",
            *[f"{m} (lr {_lr_text(min(lrs_of[m], key=_key))})" for m in labels],
        ]
        rows = []
        for problem in problems:
            choice = choices[problem]
            row = [problem, f"{choice.metric} ({choice.goal.value})"]
            for label in labels:
                found = [p for (pr, m, _), p in points.items() if pr == problem and m == label]
                row.append(_cell(found[0]) if found else "-")
            rows.append(row)
        blocks += [note, "", _md_table(header, rows)]
        return "\n".join(blocks)

    tolerance = float(part.report.get("tolerance", DEFAULT_TOLERANCE))
    reference = part.report.get("width_reference")
    reference_text = (
        "the best run of any method on the problem"
        if reference is None
        else "the best-tuned result of "
        + " or ".join(f"`{m}`" for m in reference)
        + " on the problem (its best mean over seeds at one initial LR)"
    )
    best_rows, width_rows = [], []
    for label in labels:
        best_row, width_row = [label], [label]
        for problem in problems:
            choice = choices[problem]
            best = metrics.best_tuned(by_problem[problem], choice.metric, choice.goal)
            widths = metrics.robustness_width(
                by_problem[problem],
                choice.metric,
                choice.goal,
                tolerance=tolerance,
                reference_methods=reference,
            )
            if (problem, label) in best:
                lr, value = best[(problem, label)]
                best_row.append(f"{_format(value, '.3g')} (lr {_lr_text(lr)})")
            else:
                best_row.append("-" if (problem, label) not in widths else "all diverged")
            width_row.append(
                _format(widths[(problem, label)], "g") if (problem, label) in widths else "-"
            )
        best_rows.append(best_row)
        width_rows.append(width_row)
    metric_names = sorted({f"{c.metric} ({c.goal.value})" for c in choices.values()})
    blocks += [
        f"**Best-tuned result** per method and problem: the best mean final metric over the "
        f"initial LRs at which no seed diverged, and that LR. Metric: {', '.join(metric_names)}.",
        "",
        _md_table(["method", *problems], best_rows),
        "",
        f"**Robustness width** (decades of initial LR whose mean final metric is within "
        f"{tolerance:.0%} of {reference_text}, no seed diverged).",
        "",
        _md_table(["method", *problems], width_rows),
        "",
        note,
    ]
    for problem in problems:
        choice = choices[problem]
        lrs = sorted({lr for (pr, _, lr) in points if pr == problem}, key=_key)
        rows = []
        for label in labels:
            cells = [points.get((problem, label, lr)) for lr in lrs]
            if all(c is None for c in cells):
                continue
            rows.append([label, *[_cell(c) if c is not None else "-" for c in cells]])
        blocks += [
            "",
            f"*{escape_markdown(problem)}*: final `{choice.metric}` ({choice.goal.value}) by "
            "initial LR.",
            "",
            _md_table(["method", *[f"lr {_lr_text(lr)}" for lr in lrs]], rows),
        ]
    return "\n".join(blocks)


def _key(lr: float | None) -> tuple[bool, float]:
    return (lr is not None, lr or 0.0)


# -- machine, versions, timing ------------------------------------------------------------------


def machine_description() -> str:
    """CPU model, cores available to this process, OS and Python."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        available = os.cpu_count() or 0
    return (
        f"{model}; {available} CPU core(s) available (of {os.cpu_count()}); "
        f"{platform.system()} {platform.release()}; Python {platform.python_version()}"
    )


def library_versions(records: Sequence[RunRecord]) -> list[str]:
    """The versions in the records (lrlab, torch, python) and of the report's libraries."""
    found = sorted(
        {f"{k} {v}" for r in records for k, v in (r.versions or {}).items()},
    )
    for package in ("numpy", "scikit-learn", "matplotlib"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            found.append(f"{package} {metadata.version(package)}")
    return found


def _timing_path(store_path: Path) -> Path:
    return store_path.with_name(store_path.name + ".timing.json")


def _read_timing(store_path: Path) -> list[dict[str, Any]]:
    path = _timing_path(store_path)
    if not path.is_file():
        return []
    try:
        return list(json.loads(path.read_text()).get("sweeps", []))
    except (ValueError, AttributeError):
        return []


def _timing_key(entry: Mapping[str, Any]) -> str:
    return json.dumps({k: v for k, v in entry.items() if k != "merged_from"}, sort_keys=True)


def merge_stores(target: Any, sources: Sequence[str | Path]) -> int:
    """Copy into the open store ``target`` every run of the ``sources`` (store files) that it
    does not hold yet, and append their sweep timings to ``target``'s; returns how many runs
    were copied. Runs are identified by ``run_id``, so merging twice copies nothing new."""
    from lrlab.bench.store import Store

    copied = 0
    timing = _read_timing(Path(target.path))
    for source in sources:
        with Store(source, readonly=True) as other:
            missing = sorted(other.run_ids() - target.run_ids())
            for start in range(0, len(missing), 200):
                for record in other.load_records(run_id=missing[start : start + 200]):
                    target.write(record)
                    copied += 1
        seen = {_timing_key(t) for t in timing}
        for entry in _read_timing(Path(source)):
            if _timing_key(entry) not in seen:
                timing.append({**entry, "merged_from": str(source)})
    if timing:
        _timing_path(Path(target.path)).write_text(json.dumps({"sweeps": timing}, indent=1))
    return copied


# -- the command --------------------------------------------------------------------------------


@dataclass
class StudyOutcome:
    """What :func:`run_study` did and wrote."""

    doc: Path | None
    """The docs page; None when only some parts ran (``parts``) and the store lacks runs of the
    others: the page is written once the store holds them all (run the rest, or ``merge``)."""
    figures: list[Path]
    report_dirs: list[Path]
    store: Path
    runs: int
    """Runs of the study found in the store."""
    missing: int
    """Runs of the study not in the store (0 after a complete sweep)."""
    ran: int
    """Runs executed by this invocation."""
    sweep_wall_time_s: float
    """Wall time of the sweeps that ran the stored runs, summed over invocations."""
    report_wall_time_s: float
    lost: int = 0
    errors: list[str] = field(default_factory=list)
    unfinished: list[tuple[str, int, int]] = field(default_factory=list)
    """Declared parts left out of the page because their runs are not all stored yet:
    ``(part, runs stored, runs of the part)`` (see :func:`run_study`)."""


def _unfinished_parts(study: Study, stored: set[str]) -> list[tuple[str, int, int]]:
    """The declared parts of ``study`` whose runs are not all in ``stored``:
    ``(name, stored, expected)``."""
    unfinished = []
    for part in study.parts:
        ids = {c.run_id for c in part.configs()}
        have = len(ids & stored)
        if have < len(ids):
            unfinished.append((part.name, have, len(ids)))
    return unfinished


def _figure_kind(name: str) -> str:
    for kind in ("lr-trajectories", "performance-profile", "sensitivity", "curves", "refinement"):
        if name.endswith(kind):
            return kind
    return name


def _captions(markdown: str) -> dict[str, str]:
    """figure file name -> caption, from a report.md."""
    found = re.findall(r"!\[[^\]]*\]\(figures/([^)]+)\)\n\n\*(.*?)\*\n", markdown, re.S)
    return dict(found)


def render_doc(
    source: StudySource,
    records: Mapping[str, Sequence[RunRecord]],
    *,
    figures: Mapping[str, Sequence[tuple[str, str]]],
    provenance: Sequence[str],
    command: str | None = None,
) -> str:
    """The Markdown of ``docs/studies/NAME.md``.

    Args:
        source: the study and its commentary.
        records: each part's records.
        figures: per part, ``(relative path, caption)`` of the figures to show.
        provenance: lines of the "how this was produced" section.
        command: the command that wrote the page (default ``lrlab study NAME``).
    """
    study = source.study
    parts = {part.name: part for part in _parts(study)}
    results: list[str] = ["## Results", ""]
    for name, part in parts.items():
        if _split(study):
            title = part.title or part.description or name
            results += [f"### Part {name}: {title}", ""]
            if part.title and part.description:
                results += [part.description, ""]
        if not records[name]:
            results += ["No runs of this part are stored yet.", ""]
            continue
        results += [part_tables(part, records[name]), ""]
        for path, caption in figures.get(name, ()):
            results += [f"![{Path(path).stem}]({path})", "", f"*{caption}*", ""]
    sections = {
        "results": "\n".join(results).rstrip(),
        "provenance": "\n".join(["## How this was produced", "", *provenance]).rstrip(),
    }
    header = [
        f"# Study `{study.name}`: {study.title or study.description}",
        "",
        f"<!-- Generated by `{command or 'lrlab study ' + study.name}` from the store; do not "
        f"edit. Edit {source.toml_path} and {source.commentary_path or 'its commentary .md'} "
        "instead. -->",
        "",
        "",
    ]
    body = fill_placeholders(source.commentary or "", parts, records, sections)
    return "\n".join(header) + body


def run_study(
    name: str,
    *,
    store: str | Path | None = None,
    docs: str | Path = "docs/studies",
    report_dir: str | Path | None = None,
    workers: int | None = None,
    run: bool = True,
    show_progress: bool = True,
    progress: TextIO | None = None,
    command: str | None = None,
    quick: bool = False,
    parts: Sequence[str] = (),
    backend: str = "local",
    address: str | None = None,
    merge: Sequence[str | Path] = (),
) -> StudyOutcome:
    """Run the study ``name`` (preset or ``FILE.toml``) into the store, build its report and
    write its docs page (see the module docstring).

    Args:
        name: a preset name or a study file.
        store: the SQLite store (default ``results/<study name>.sqlite``).
        docs: directory of the docs page (``<docs>/<name>.md``, figures in ``<docs>/<name>/``).
        report_dir: where the full reports go (default ``results/<name>-report``).
        workers: sweep worker processes (default: the CPU count).
        run: False to only rebuild the report and the docs from what is stored.
        show_progress: print the sweep's progress bar.
        progress: stream of the progress bar (default stderr).
        command: the command line to quote in the docs (default: rebuilt from the arguments).
        quick: run the study's quick variant (its ``[quick]`` table) instead; its store and
            reports default to ``results/<name>-quick.sqlite`` / ``results/<name>-quick-report``
            (the docs page keeps the study's name).
        parts: run only these parts (names); the report and the page still cover every part,
            saying which runs are missing. Parts run apart (on other machines, into other
            stores) come together with ``merge``.
        backend: ``local`` (process pool) or ``ray``; ``address``: the Ray cluster's address.
        merge: stores whose runs (and sweep timings) are copied into the store first, e.g.
            the stores of parts run elsewhere; runs already there are kept.

    Raises:
        StudyError: no quick variant, an unknown part, a commentary placeholder that matches no
            run, or a merge source that does not exist.
    """
    from lrlab.bench.executors import check_backend
    from lrlab.bench.report import build_report
    from lrlab.bench.store import Store
    from lrlab.bench.sweep import run_sweep

    source = load_study_source(name)
    if quick:
        if source.study.quick is None:
            raise StudyError(f"study {source.study.name!r} has no quick variant ([quick] table)")
        source = dataclasses.replace(source, study=source.study.quick, **_quick_commentary(source))
    study = source.study
    check_study_name(study.name)  # it names files under results/ and the docs directory
    selected = [study.part(part) for part in parts]  # unknown names fail before anything runs
    problems = check_commentary(source)
    if problems:  # fail before hours of running, not after
        raise StudyError(
            f"commentary {source.commentary_path}: "
            + "; ".join(problems[:5])
            + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else "")
        )
    stem = f"{study.name}-quick" if quick else study.name
    store_path = Path(store) if store is not None else Path("results") / f"{stem}.sqlite"
    report_root = Path(report_dir) if report_dir is not None else Path("results") / f"{stem}-report"
    docs_dir = Path(docs)
    if command is None:
        command = f"lrlab study {name}" + (f" --workers {workers}" if workers else "")
    configs = [c for part in selected for c in part.configs()] if selected else study.configs()
    if run:
        check_backend(backend, address)  # before anything runs (Ray missing, bad address)
    for source_path in merge:
        if not Path(source_path).is_file():
            raise StudyError(f"merge: store {str(source_path)!r} does not exist")
    new_store = not store_path.exists()
    store_path.parent.mkdir(parents=True, exist_ok=True)
    ran = lost = 0
    errors: list[str] = []
    with Store(store_path) as db:
        if merge:
            merge_stores(db, merge)
            new_store = False
        if run:
            timing = [] if new_store else _read_timing(store_path)
            started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
            load = os.getloadavg() if hasattr(os, "getloadavg") else ()
            stored_before = db.count()
            sweep_start = time.perf_counter()

            def record_timing(wall_time_s: float, runs: int, interrupted: bool) -> None:
                if not (runs or new_store):
                    return
                entry: dict[str, Any] = {
                    "started": started,
                    "wall_time_s": wall_time_s,
                    "runs": runs,
                    "workers": workers or os.cpu_count(),
                    "load_average_at_start": list(load),
                    "command": command,
                    "machine": machine_description(),
                    "parts": list(parts),
                }
                if interrupted:
                    entry["interrupted"] = True
                timing.append(entry)
                _timing_path(store_path).write_text(json.dumps({"sweeps": timing}, indent=1))

            try:
                summary = run_sweep(
                    configs,
                    db,
                    backend=backend,
                    workers=workers,
                    address=address,
                    show_progress=show_progress,
                    progress=progress,
                )
            except KeyboardInterrupt:
                # the runs stored so far took this long: keep the measured time for the page
                record_timing(time.perf_counter() - sweep_start, db.count() - stored_before, True)
                raise
            ran = sum(summary.counts.values())
            lost = len(summary.lost)
            errors = summary.errors
            record_timing(summary.wall_time_s, ran, False)
        report_start = time.perf_counter()
        part_by_name = {part.name: part for part in _parts(study)}
        records: dict[str, list[RunRecord]] = {}
        missing = 0
        for part_name, part in part_by_name.items():
            records[part_name], part_missing = _part_records(part, db)
            missing += part_missing
        unfinished = _unfinished_parts(study, db.run_ids()) if missing and not selected else []

    # a part run alone leaves the page as it is until the store holds every part's runs
    partial = bool(selected) and missing > 0
    if unfinished and len(unfinished) < len(study.parts):
        # the page built without --part while a long part is still running: its few runs would
        # rank a handful of methods on its problems, so the part is left out and named instead
        dropped = {
            problem.name for name, _, _ in unfinished for problem in study.part(name).problems
        }
        for part_name in records:
            records[part_name] = [r for r in records[part_name] if r.config.problem not in dropped]
        missing -= sum(expected - have for _, have, expected in unfinished)
    else:
        unfinished = []
    figure_dir = docs_dir / stem
    if figure_dir.is_dir() and not partial:
        for old in figure_dir.glob("*.png"):
            old.unlink()
    copied: list[Path] = []
    shown: dict[str, list[tuple[str, str]]] = {}
    report_dirs: list[Path] = []
    for part_name, part in part_by_name.items():
        if not records[part_name]:
            continue
        out = report_root / part_name if _split(study) else report_root
        files = build_report(
            records[part_name],
            out,
            title=f"{study.name}: {part.title or part.description or part_name}",
            metric_choice=_metric_choice(part),
            targets=part.report.get("targets") or None,
            tolerance=float(part.report.get("tolerance", DEFAULT_TOLERANCE)),
        )
        report_dirs.append(out)
        captions = _captions(files.markdown.read_text())
        wanted = part.report.get("figures", ["sensitivity", "lr-trajectories", "curves"])
        shown[part_name] = []
        for path in files.figures:
            if partial or _figure_kind(path.stem) not in wanted:
                continue
            figure_dir.mkdir(parents=True, exist_ok=True)
            target = figure_dir / (f"{part_name}-{path.name}" if _split(study) else path.name)
            shutil.copyfile(path, target)
            copied.append(target)
            shown[part_name].append((f"{stem}/{target.name}", captions.get(path.name, path.stem)))

    all_records = [r for rs in records.values() for r in rs]
    report_time = time.perf_counter() - report_start
    timing = _read_timing(store_path)
    # the invocations that ran only a part left off the page do not count towards its time
    left_out = {name for name, _, _ in unfinished}
    timing = [t for t in timing if not (t.get("parts") and set(t["parts"]) <= left_out)]
    sweep_time = sum(float(t.get("wall_time_s", 0.0)) for t in timing)
    statuses: dict[str, int] = defaultdict(int)
    for record in all_records:
        statuses[record.status.value] += 1
    run_time = sum(r.wall_time_s for r in all_records)
    # the command that ran the runs (the sweeps' record), and this one if it only rebuilt the page
    sweep_commands = list(dict.fromkeys(str(t.get("command", command)) for t in timing))
    shown_command = " then ".join(f"`{c}`" for c in sweep_commands) or f"`{command}`"
    provenance = [
        f"Command: {shown_command} (from the repository root; the store is "
        f"`{store_path}`, the full HTML reports are in `{report_root}`)"
        + (
            f"; this page was regenerated from the store with `{command}`."
            if sweep_commands and command not in sweep_commands
            else "."
        ),
        "",
        f"Runs: {len(all_records)} stored ("
        + ", ".join(f"{n} {s}" for s, n in sorted(statuses.items()))
        + ")"
        + (f"; {missing} runs of the study are NOT stored yet" if missing else "")
        + ".",
        "",
    ]
    for name, have, expected in unfinished:
        provenance += [
            f"**Not on this page yet: part `{name}`** ({have} of its {expected} runs stored). "
            "A part is left out of every table, figure, verdict and the wall time below until "
            f"all its runs are stored; `{command} --part {name}` finishes it (the store "
            "resumes).",
            "",
        ]
    if timing:
        machines = sorted({str(t.get("machine", "?")) for t in timing})
        loads: list[list[float]] = [
            start_load for t in timing if (start_load := t.get("load_average_at_start"))
        ]
        invocations = len(timing)
        provenance += [
            f"Measured wall time of the sweep: {sweep_time:.0f} s ({sweep_time / 60:.1f} min) "
            + (
                f"in one invocation with {timing[0].get('workers')} worker process(es)"
                if invocations == 1
                else f"summed over {invocations} invocations (the study was resumed"
                + (
                    f"; {sum(bool(t.get('interrupted')) for t in timing)} of them interrupted"
                    if any(t.get("interrupted") for t in timing)
                    else ""
                )
                + ")"
            )
            + f"; the runs themselves took {run_time:.0f} s of worker time in total. Building "
            f"the reports and this page took {report_time:.0f} s.",
            "",
            "Machine: " + "; ".join(machines) + ".",
            "",
        ]
        if loads:
            provenance += [
                "Load average (1, 5, 15 min) when the sweep started: "
                + "; ".join(", ".join(f"{v:.2f}" for v in load) for load in loads)
                + " (a load above the core count means the timing is inflated by other work).",
                "",
            ]
    else:
        provenance += [
            "Wall time: not recorded (the runs were stored by another command than "
            f"`lrlab study`); the runs took {run_time:.0f} s of worker time in total.",
            "",
        ]
    provenance += [
        "Library versions: " + ", ".join(library_versions(all_records)) + ".",
        "",
        "Every number on this page is computed from the stored runs by `lrlab study`; the "
        "exact config of every run (and its id) is in the HTML reports' provenance tables.",
    ]
    doc_path: Path | None = None
    if not partial:
        docs_dir.mkdir(parents=True, exist_ok=True)
        doc_path = docs_dir / f"{stem}.md"
        doc_path.write_text(
            render_doc(source, records, figures=shown, provenance=provenance, command=command)
        )
    return StudyOutcome(
        doc=doc_path,
        figures=copied,
        report_dirs=report_dirs,
        store=store_path,
        runs=len(all_records),
        missing=missing,
        ran=ran,
        sweep_wall_time_s=sweep_time,
        report_wall_time_s=report_time,
        lost=lost,
        errors=errors,
        unfinished=unfinished,
    )
