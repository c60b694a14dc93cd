"""Sweeps: problems x methods (x method-kwargs grid) x initial LRs x seeds, resumable.

A :class:`Study` says what to run; :meth:`Study.configs` expands it into
:class:`~lrlab.bench.spec.RunConfig`\\ s; :func:`run_sweep` runs those whose ``run_id`` is not in
the store yet, on an executor (:mod:`lrlab.bench.executors`), and writes each record as it
arrives (one transaction per run). Killing a sweep at any point and starting it again finishes
it, with no run lost or duplicated.

A study file (TOML; presets in ``lrlab/bench/presets/`` use the same format)::

    name = "my-study"                 # required
    description = "what it shows"
    lrs = "1e-6:1:7"                  # 7 log-spaced LRs from 1e-6 to 1; or a list [1e-3, 1e-2]
    seeds = 5                         # seeds 0..4; or a list [0, 3]
    steps = 200                       # optional; default: each problem's default_steps
    eval_every = 0                    # optional; 0: evaluate at the start and the end only
    divergence_threshold = 1e6        # optional
    schedule = "linear-decay"         # optional, with schedule_kwargs = {...}
    tags = { study = "my-study" }     # optional free labels (part of every run's identity)
    problems = [                      # names, or tables (each on one line: TOML inline tables)
        "synthetic_rosenbrock",
        { name = "digits_mlp", steps = 300, batch_size = 64, kwargs = { width = 0.5 } },
    ]
    methods = [
        "sgd",
        "adam",
        { name = "clara-sgd", kwargs = { d = 0.02 } },
        { name = "clara-adam", grid = { d = [0.02, 0.1] } },
    ]

A method entry with ``kwargs`` or ``grid`` gets the tag ``label`` (``clara-sgd(d=0.02)``, or the
entry's own ``label``) so reports tell its variants apart. A method entry may set its own
``schedule`` (and ``schedule_kwargs``) in place of the study's: ``{ name = "sgd", schedule =
"cosine-decay" }``, labelled ``sgd+cosine-decay``. The two-pass methods ``refined-sgd`` and
``refined-adam`` (:mod:`lrlab.bench.refinement`) expand to their pass 1 here (the base optimizer
under linear decay, labelled ``sgd+linear-decay``); :func:`run_sweep` adds pass 2. A method
without an LR argument (``spec.lr_argument`` is None) runs once per seed with ``lr = None``.

A method entry may also set ``lr_argument = "d0"`` (the swept LR goes to that constructor
argument instead of the method's own: D-Adaptation Adam with ``d0`` = the initial LR and its
``lr`` left at 1.0; labelled ``dadapt-adam[d0=lr]``) and ``lrs`` (its own LR grid, or ``"none"``:
once per seed with the method's default LR, e.g. learning-rate-free methods at defaults).

**Parts** (sub-studies with different grids in one study). With ``[[parts]]`` tables, the study
runs exactly its parts; every top-level key other than ``name``, ``title`` and ``description`` is
a default of every part, a part sets ``name`` (a token: letters, digits, ``_ . -``; it becomes
the tag ``part``), optional ``title``/``description``, and overrides any key (its ``report``
table is merged key by key)::

    name = "clara"
    seeds = 5
    [[parts]]
    name = "a"
    lrs = [100.0]
    seeds = 1
    problems = [{ name = "synthetic_sphere", kwargs = { clamp = true }, steps = 20 }]
    methods = ["adam"]
    [parts.report]
    metric = "distance_to_optimum"
    [[parts]]
    name = "b"
    lrs = "1e-6:1:7"
    problems = ["iris_logreg"]
    methods = ["sgd", { name = "dadapt-adam", lr_argument = "d0" }]

**Report options** (``[report]`` at the top or per part; read by :mod:`lrlab.bench.study`):
``metric`` (a name, or a table problem -> name), ``tolerance`` (relative, of the robustness
width and default targets), ``targets`` (problem -> training-loss target of time to target),
``figures`` (a subset of :data:`FIGURE_KINDS` to show in the study's docs page).
"""

from __future__ import annotations

import concurrent.futures
import itertools
import math
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from lrlab.bench._paths import STUDY_NAME_PATTERN, OutputPathError, check_study_name
from lrlab.bench.executors import execute, make_executor
from lrlab.bench.refinement import PASS_ONE_SCHEDULE, second_pass_configs, two_pass_method
from lrlab.bench.spec import KwargValue, ProblemInfo, RunConfig, RunRecord, RunStatus
from lrlab.bench.store import Store

if TYPE_CHECKING:
    from lrlab.optim import MethodSpec

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "MethodEntry",
    "ProblemEntry",
    "Progress",
    "Study",
    "StudyError",
    "SweepSummary",
    "load_study",
    "make_config",
    "parse_lrs",
    "parse_seeds",
    "run_sweep",
]

REPORT_KEYS = ("metric", "tolerance", "targets", "figures")
"""Keys of a study's ``report`` table, read by :mod:`lrlab.bench.study`."""


class StudyError(ValueError):
    """A study (file, preset or command line) that cannot be expanded; says what and where."""


# -- grids --------------------------------------------------------------------------------------


def _clean(value: float) -> float:
    """Round to 12 significant digits, so grid values (and run ids) do not depend on libm."""
    return float(f"{value:.12g}")


def parse_lrs(text: str) -> tuple[float, ...]:
    """``"1e-6:1:7"`` -> 7 log-spaced values from 1e-6 to 1 (both included); ``"1e-3,0.1"`` -> a
    list. Every value must be a positive finite number."""
    text = text.strip()
    try:
        if ":" in text:
            low_text, high_text, count_text = text.split(":")
            low, high, count = float(low_text), float(high_text), int(count_text)
            if count < 1 or not (0 < low <= high < math.inf):
                raise ValueError
            if count == 1:
                return (_clean(low),)
            a, b = math.log10(low), math.log10(high)
            values = tuple(_clean(10 ** (a + (b - a) * k / (count - 1))) for k in range(count))
        else:
            values = tuple(_clean(float(part)) for part in text.split(",") if part.strip())
    except ValueError:
        values = ()
    if not values or not all(0 < v < math.inf for v in values):
        raise StudyError(
            f"bad learning-rate grid {text!r}: use LOW:HIGH:COUNT (log-spaced, "
            "0 < LOW <= HIGH, COUNT >= 1, e.g. 1e-6:1:7) or a comma list (1e-3,1e-2)"
        )
    return values


def parse_seeds(text: str) -> tuple[int, ...]:
    """``"5"`` -> seeds 0..4; ``"0,3,7"`` -> those seeds."""
    try:
        if "," in text:
            seeds = tuple(int(part) for part in text.split(",") if part.strip())
        else:
            seeds = tuple(range(int(text)))
    except ValueError:
        seeds = ()
    if not seeds or any(s < 0 for s in seeds):
        raise StudyError(
            f"bad seeds {text!r}: use a count N >= 1 (seeds 0..N-1) or a comma list of "
            "non-negative integers (0,3,7)"
        )
    return seeds


# -- configs ------------------------------------------------------------------------------------


def _format_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_format_value(v) for v in value) + "]"
    return format(value, "g") if isinstance(value, float) else str(value)


def variant_label(method: str, kwargs: Mapping[str, Any]) -> str:
    """``clara-sgd(d=0.02)``: the method name and its non-default kwargs, sorted."""
    if not kwargs:
        return method
    inner = ",".join(f"{k}={_format_value(v)}" for k, v in sorted(kwargs.items()))
    return f"{method}({inner})"


def _problem_info(name: str) -> ProblemInfo:
    from lrlab.bench.problems import get_problem

    try:
        return get_problem(name).info
    except KeyError as error:  # the registry's message lists the valid names
        raise StudyError(str(error)) from None


def _method_spec(name: str) -> MethodSpec:
    import lrlab.optim as lo

    try:
        return lo.spec(name)
    except KeyError as error:
        raise StudyError(str(error)) from None


def make_config(
    *,
    problem: str,
    method: str,
    lr: float | None,
    seed: int,
    steps: int | None = None,
    batch_size: int | None = None,
    problem_kwargs: Mapping[str, KwargValue] | None = None,
    method_kwargs: Mapping[str, KwargValue] | None = None,
    schedule: str | None = None,
    schedule_kwargs: Mapping[str, KwargValue] | None = None,
    eval_every: int = 0,
    divergence_threshold: float = 1e6,
    tags: Mapping[str, Any] | None = None,
    label: str | None = None,
    lr_argument: str | None = None,
) -> RunConfig:
    """A :class:`RunConfig` with the defaults made explicit (so they are part of the id).

    Resolves ``steps`` and ``batch_size`` to the problem's defaults, canonical names for the
    problem and the method, ``lr`` to None for a method without an LR argument, and the tag
    ``label`` for a method with kwargs (see :func:`variant_label`). ``lr_argument`` sends ``lr``
    to that constructor argument instead of the method's own.

    Raises:
        StudyError: unknown problem or method, a non-positive ``steps``, or an ``lr_argument``
            the method's constructor does not take.
    """
    info = _problem_info(problem)
    method_spec = _method_spec(method)
    if lr_argument is not None:
        import inspect

        if lr_argument not in inspect.signature(method_spec.cls).parameters:
            raise StudyError(
                f"lr_argument {lr_argument!r}: method {method_spec.name!r} has no such "
                "constructor argument"
            )
    steps = info.default_steps if steps is None else steps
    if steps < 1:
        raise StudyError(f"steps must be at least 1, got {steps}")
    method_kwargs = dict(method_kwargs or {})
    tags = dict(tags or {})
    if label is not None or method_kwargs:
        tags["label"] = label or variant_label(method_spec.name, method_kwargs)
    return RunConfig(
        problem=info.name,
        method=method_spec.name,
        lr=None if method_spec.lr_argument is None and lr_argument is None else lr,
        seed=seed,
        steps=steps,
        batch_size=info.default_batch_size if batch_size is None else batch_size,
        problem_kwargs=dict(problem_kwargs or {}),
        method_kwargs=method_kwargs,
        schedule=schedule,
        schedule_kwargs=dict(schedule_kwargs or {}),
        eval_every=eval_every,
        divergence_threshold=divergence_threshold,
        tags=tags,
        lr_argument=lr_argument,
    )


@dataclass(frozen=True, kw_only=True)
class ProblemEntry:
    """One problem of a study, with optional per-problem settings."""

    name: str
    kwargs: Mapping[str, KwargValue] = field(default_factory=dict)
    steps: int | None = None
    batch_size: int | None = None


@dataclass(frozen=True, kw_only=True)
class MethodEntry:
    """One method of a study: fixed ``kwargs`` and a ``grid`` (name -> values) expanded as a
    Cartesian product."""

    name: str
    kwargs: Mapping[str, KwargValue] = field(default_factory=dict)
    grid: Mapping[str, Sequence[KwargValue]] = field(default_factory=dict)
    label: str | None = None
    schedule: str | None = None
    """This method's LR schedule, in place of the study's (its label gets ``+<schedule>``)."""
    schedule_kwargs: Mapping[str, KwargValue] = field(default_factory=dict)
    lr_argument: str | None = None
    """The constructor argument that receives the swept LR in place of the method's own (its
    label gets ``[<lr_argument>=lr]``)."""
    lrs: tuple[float | None, ...] | None = None
    """This method's own LR grid (None: the study's; ``(None,)``: once with the default LR)."""

    def variants(self) -> list[dict[str, KwargValue]]:
        keys = sorted(self.grid)
        return [
            {**self.kwargs, **dict(zip(keys, values, strict=True))}
            for values in itertools.product(*(self.grid[k] for k in keys))
        ]


@dataclass(frozen=True, kw_only=True)
class Study:
    """What a sweep runs (see the module docstring for the file format)."""

    name: str
    problems: tuple[ProblemEntry, ...]
    methods: tuple[MethodEntry, ...]
    lrs: tuple[float, ...]
    seeds: tuple[int, ...]
    description: str = ""
    steps: int | None = None
    eval_every: int = 0
    divergence_threshold: float = 1e6
    schedule: str | None = None
    schedule_kwargs: Mapping[str, KwargValue] = field(default_factory=dict)
    tags: Mapping[str, Any] = field(default_factory=dict)
    title: str = ""
    report: Mapping[str, Any] = field(default_factory=dict)
    """Options of the study report (``metric``, ``tolerance``, ``targets``, ``figures``)."""
    parts: tuple[Study, ...] = ()
    """Sub-studies with their own grids (a study with parts runs exactly its parts)."""

    def configs(self) -> list[RunConfig]:
        """Every run of the study, in problem, method, variant, LR, seed order, without
        duplicates (a study with parts: its parts' runs, part by part)."""
        configs: dict[str, RunConfig] = {}
        for part in self.parts:
            for config in part.configs():
                configs.setdefault(config.run_id, config)
        for problem in self.problems:
            for method in self.methods:
                # a two-pass method (refined-sgd) expands to its pass 1; run_sweep adds pass 2
                two_pass = two_pass_method(method.name)
                base = two_pass.base if two_pass is not None else method.name
                has_lr = _method_spec(base).lr_argument is not None or bool(method.lr_argument)
                schedule, schedule_kwargs = self.schedule, self.schedule_kwargs
                if method.schedule is not None or two_pass is not None:
                    schedule = method.schedule or PASS_ONE_SCHEDULE
                    schedule_kwargs = method.schedule_kwargs
                    if two_pass is not None and (schedule != PASS_ONE_SCHEDULE or schedule_kwargs):
                        raise StudyError(
                            f"method {method.name!r} runs pass 1 under {PASS_ONE_SCHEDULE!r} and "
                            "pass 2 under the refined schedule; remove its schedule settings"
                        )
                for kwargs in method.variants():
                    label = method.label
                    if label is not None and len(method.variants()) > 1:
                        label = f"{label}{variant_label('', kwargs)}"
                    tags = self.tags
                    if two_pass is not None:
                        label, tags = two_pass.pass_one(kwargs, label, tags)
                    elif method.schedule is not None and label is None:
                        label = f"{variant_label(base, kwargs)}+{method.schedule}"
                    if method.lr_argument is not None and label is None:
                        label = f"{variant_label(base, kwargs)}[{method.lr_argument}=lr]"
                    lrs = self.lrs if method.lrs is None else method.lrs
                    for lr in lrs if has_lr else (None,):
                        for seed in self.seeds:
                            config = make_config(
                                problem=problem.name,
                                method=base,
                                lr=lr,
                                seed=seed,
                                steps=problem.steps if problem.steps is not None else self.steps,
                                batch_size=problem.batch_size,
                                problem_kwargs=problem.kwargs,
                                method_kwargs=kwargs,
                                schedule=schedule,
                                schedule_kwargs=schedule_kwargs,
                                eval_every=self.eval_every,
                                divergence_threshold=self.divergence_threshold,
                                tags=tags,
                                label=label,
                                lr_argument=method.lr_argument,
                            )
                            configs.setdefault(config.run_id, config)
        return list(configs.values())

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, source: str = "study") -> Study:
        """Validate a parsed TOML study; errors name the key, the value and what is allowed."""
        if "parts" in data:
            return cls._from_parts(data, source)
        allowed = {
            "name",
            "title",
            "report",
            "description",
            "lrs",
            "seeds",
            "steps",
            "eval_every",
            "divergence_threshold",
            "schedule",
            "schedule_kwargs",
            "tags",
            "problems",
            "methods",
        }
        _check_keys(data, allowed, source)
        for key in ("name", "problems", "methods", "lrs", "seeds"):
            if key not in data:
                raise StudyError(f"{source}: missing key {key!r}")
        lr_values = _lr_values(data["lrs"], source)
        seeds = data["seeds"]
        if isinstance(seeds, int) and not isinstance(seeds, bool):
            seed_values = parse_seeds(str(seeds))
        elif isinstance(seeds, list) and seeds and all(isinstance(s, int) for s in seeds):
            seed_values = parse_seeds(",".join(str(s) for s in seeds))
        else:
            raise StudyError(f"{source}: 'seeds' must be a count or a list of integers")
        return cls(
            name=_study_name(data, source),
            description=_typed(data, "description", str, source, ""),
            problems=tuple(_problem_entry(e, source) for e in _entries(data, "problems", source)),
            methods=tuple(_method_entry(e, source) for e in _entries(data, "methods", source)),
            lrs=lr_values,
            seeds=seed_values,
            steps=_typed(data, "steps", int, source, None),
            eval_every=_typed(data, "eval_every", int, source, 0),
            divergence_threshold=float(
                _typed(data, "divergence_threshold", (int, float), source, 1e6)
            ),
            schedule=_typed(data, "schedule", str, source, None),
            schedule_kwargs=_typed(data, "schedule_kwargs", dict, source, {}),
            tags=_typed(data, "tags", dict, source, {}),
            title=_typed(data, "title", str, source, ""),
            report=_report_options(data, source),
        )

    @classmethod
    def _from_parts(cls, data: Mapping[str, Any], source: str) -> Study:
        """A study made of parts: top-level keys are defaults of every part."""
        parts_data = data["parts"]
        if (
            not isinstance(parts_data, list)
            or not parts_data
            or not all(isinstance(p, dict) for p in parts_data)
        ):
            raise StudyError(f"{source}: 'parts' must be a non-empty array of tables ([[parts]])")
        name = _study_name(data, source)
        shared = {
            k: v for k, v in data.items() if k not in ("name", "title", "description", "parts")
        }
        report = _report_options(data, source)
        tags = _typed(data, "tags", dict, source, {})
        parts: list[Study] = []
        for index, part in enumerate(parts_data):
            here = f"{source}: part {part.get('name', index)!r}"
            part_name = _typed(part, "name", str, here)
            if not re.fullmatch(STUDY_NAME_PATTERN, part_name):
                raise StudyError(f"{here}: a part name is letters, digits, '_', '.' or '-'")
            if part_name in {p.name for p in parts}:
                raise StudyError(f"{here}: two parts are named {part_name!r}")
            if "parts" in part:
                raise StudyError(f"{here}: parts cannot have parts")
            merged = {**shared, **part}
            merged["report"] = {**report, **_report_options(part, here)}
            merged["tags"] = {**tags, **_typed(part, "tags", dict, here, {}), "part": part_name}
            parts.append(cls.from_mapping(merged, source=here))
        return cls(
            name=name,
            title=_typed(data, "title", str, source, ""),
            description=_typed(data, "description", str, source, ""),
            problems=(),
            methods=(),
            lrs=(),
            seeds=(),
            tags=tags,
            report=report,
            parts=tuple(parts),
        )


def _lr_values(lrs: Any, where: str, key: str = "lrs") -> tuple[float, ...]:
    if isinstance(lrs, str):
        return parse_lrs(lrs)
    if isinstance(lrs, list) and lrs:
        return parse_lrs(",".join(repr(float(v)) for v in _numbers(lrs, key, where)))
    raise StudyError(f"{where}: {key!r} must be a grid string or a non-empty list")


FIGURE_KINDS = ("sensitivity", "lr-trajectories", "curves", "refinement", "performance-profile")
"""The figure kinds of :func:`lrlab.bench.report.build_report` (``report.figures`` names them)."""


def _report_options(data: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The validated ``report`` table of a study or part (empty when absent)."""
    options = _typed(data, "report", dict, where, {})
    here = f"{where}: report"
    _check_keys(options, set(REPORT_KEYS), here)
    metric = options.get("metric")
    if metric is not None and not (
        isinstance(metric, str)
        or (isinstance(metric, dict) and all(isinstance(v, str) for v in metric.values()))
    ):
        raise StudyError(f"{here}: 'metric' must be a name or a table problem -> name")
    if "tolerance" in options:
        tolerance = _typed(options, "tolerance", (int, float), here)
        if not 0 <= tolerance < math.inf:
            raise StudyError(f"{here}: 'tolerance' must be >= 0, got {tolerance!r}")
    targets = _typed(options, "targets", dict, here, {})
    _numbers(list(targets.values()), "targets", here)
    figures = _typed(options, "figures", list, here, list(FIGURE_KINDS))
    unknown = [f for f in figures if f not in FIGURE_KINDS]
    if unknown:
        raise StudyError(
            f"{here}: unknown figure {unknown[0]!r}; allowed: {', '.join(FIGURE_KINDS)}"
        )
    return dict(options)


def _check_keys(data: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise StudyError(
            f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}"
        )


def _study_name(data: Mapping[str, Any], where: str) -> str:
    """The ``name`` of a study: it names files (``results/NAME.sqlite``), so a strict token."""
    try:
        return check_study_name(_typed(data, "name", str, where))
    except OutputPathError as error:
        raise StudyError(f"{where}: {error}") from None


def _typed(data: Mapping[str, Any], key: str, kind: Any, where: str, default: Any = ...) -> Any:
    if key not in data:
        if default is ...:
            raise StudyError(f"{where}: missing key {key!r}")
        return default
    value = data[key]
    if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise StudyError(f"{where}: {key!r} must be {names}, got {value!r}")
    return value


def _numbers(values: list[Any], key: str, where: str) -> list[float]:
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise StudyError(f"{where}: {key!r} must hold numbers, got {values!r}")
    return values


def _entries(data: Mapping[str, Any], key: str, where: str) -> list[Any]:
    entries = data[key]
    if not isinstance(entries, list) or not entries:
        raise StudyError(f"{where}: {key!r} must be a non-empty list")
    return entries


def _problem_entry(entry: Any, where: str) -> ProblemEntry:
    if isinstance(entry, str):
        return ProblemEntry(name=entry)
    if not isinstance(entry, dict):
        raise StudyError(f"{where}: a problem is a name or a table, got {entry!r}")
    here = f"{where}: problem {entry.get('name', '?')!r}"
    _check_keys(entry, {"name", "kwargs", "steps", "batch_size"}, here)
    return ProblemEntry(
        name=_typed(entry, "name", str, here),
        kwargs=_typed(entry, "kwargs", dict, here, {}),
        steps=_typed(entry, "steps", int, here, None),
        batch_size=_typed(entry, "batch_size", int, here, None),
    )


def _method_entry(entry: Any, where: str) -> MethodEntry:
    if isinstance(entry, str):
        return MethodEntry(name=entry)
    if not isinstance(entry, dict):
        raise StudyError(f"{where}: a method is a name or a table, got {entry!r}")
    here = f"{where}: method {entry.get('name', '?')!r}"
    _check_keys(
        entry,
        {"name", "kwargs", "grid", "label", "schedule", "schedule_kwargs", "lr_argument", "lrs"},
        here,
    )
    lrs = entry.get("lrs")
    if isinstance(lrs, str) and lrs.strip().lower() == "none":
        method_lrs: tuple[float | None, ...] | None = (None,)
    else:
        method_lrs = None if lrs is None else _lr_values(lrs, here)
    grid = _typed(entry, "grid", dict, here, {})
    schedule = _typed(entry, "schedule", str, here, None)
    schedule_kwargs = _typed(entry, "schedule_kwargs", dict, here, {})
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise StudyError(f"{here}: grid {key!r} must be a non-empty list, got {values!r}")
    return MethodEntry(
        name=_typed(entry, "name", str, here),
        kwargs=_typed(entry, "kwargs", dict, here, {}),
        grid=grid,
        label=_typed(entry, "label", str, here, None),
        schedule=schedule,
        schedule_kwargs=schedule_kwargs,
        lr_argument=_typed(entry, "lr_argument", str, here, None),
        lrs=method_lrs,
    )


def load_study(path: str | Path) -> Study:
    """Read a study file (TOML)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise StudyError(f"study file {str(path)!r} does not exist") from None
    except tomllib.TOMLDecodeError as error:
        raise StudyError(f"study file {str(path)!r} is not valid TOML: {error}") from None
    return Study.from_mapping(data, source=str(path))


# -- progress -----------------------------------------------------------------------------------


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


class Progress:
    """A one-line progress bar with ETA and live counts, on ``stream`` (stderr by default).

    On a terminal the line is redrawn in place (at most 5 times a second); otherwise a line is
    printed every ``interval`` seconds and at the end.

    The ETA is the remaining runs at the rate measured since the first ``workers`` runs finished:
    that leaves out the start-up (worker processes importing torch, loading data, the first
    run of each worker), which is paid once, not per run, and counts the runs in flight in
    parallel. Until a second round of runs has finished it is unknown (``ETA ?``); off a
    terminal the first line is printed after ``interval`` seconds, when it usually is known.
    """

    def __init__(
        self,
        total: int,
        *,
        stream: TextIO | None = None,
        interval: float = 10.0,
        workers: int = 1,
        clock: Callable[[], float] = time.perf_counter,
    ):
        self.total = total
        self.counts = {status.value: 0 for status in RunStatus}
        self.lost = 0
        self.workers = max(1, workers)
        self._clock = clock
        self._stream = stream if stream is not None else sys.stderr
        self._tty = bool(getattr(self._stream, "isatty", lambda: False)())
        self._interval = 0.2 if self._tty else interval
        self._start = clock()
        self._last = -math.inf if self._tty else self._start
        self._round_done: float | None = None  # when the first `workers` runs had finished

    @property
    def done(self) -> int:
        return sum(self.counts.values()) + self.lost

    def eta(self) -> float:
        """Seconds until the last run finishes (inf while it cannot be estimated yet)."""
        remaining = self.total - self.done
        if remaining <= 0:
            return 0.0
        first_round = min(self.workers, self.total)
        if self._round_done is None or self.done < 2 * first_round:
            return math.inf
        elapsed = self._clock() - self._round_done
        if elapsed <= 0:
            return math.inf
        return remaining * elapsed / (self.done - first_round)

    def line(self) -> str:
        elapsed = self._clock() - self._start
        done = self.done
        fraction = done / self.total if self.total else 1.0
        eta = self.eta()
        width = 24
        filled = int(width * fraction)
        counts = (
            f"finished {self.counts['finished']}, diverged {self.counts['diverged']}, "
            f"failed {self.counts['failed']}"
        )
        if self.lost:
            counts += f", lost {self.lost}"
        return (
            f"[{'#' * filled}{'.' * (width - filled)}] {done}/{self.total} "
            f"({100 * fraction:.0f}%) {counts} | {_duration(elapsed)} elapsed, "
            f"ETA {_duration(eta) if done < self.total else '0m00s'}"
        )

    def update(self, status: RunStatus | None) -> None:
        """Count one run (None: lost, i.e. its worker died)."""
        if status is None:
            self.lost += 1
        else:
            self.counts[status.value] += 1
        now = self._clock()
        if self._round_done is None and self.done >= min(self.workers, self.total):
            self._round_done = now
        if now - self._last >= self._interval or self.done == self.total:
            self._last = now
            self._draw()

    def _draw(self) -> None:
        if self._tty:
            self._stream.write("\r" + self.line() + "\x1b[K")
        else:
            self._stream.write(self.line() + "\n")
        self._stream.flush()

    def close(self) -> None:
        if self._tty:
            self._stream.write("\n")
            self._stream.flush()


# -- running ------------------------------------------------------------------------------------


@dataclass
class SweepSummary:
    """What :func:`run_sweep` did."""

    total: int
    """Distinct runs in the sweep."""
    skipped: int
    """Runs already in the store, not run again."""
    counts: dict[str, int]
    """Runs executed now, by status."""
    lost: list[RunConfig]
    """Runs whose worker process died (not stored; a new sweep retries them)."""
    errors: list[str]
    """First line of each failed run's error."""
    wall_time_s: float
    not_refined: list[str] = field(default_factory=list)
    """Pass-1 runs of two-pass methods that got no pass 2 (they diverged or failed)."""


def run_sweep(
    configs: Iterable[RunConfig],
    store: Store,
    *,
    backend: str = "local",
    workers: int | None = None,
    address: str | None = None,
    retry_failed: bool = False,
    progress: TextIO | None = None,
    show_progress: bool = True,
    imports: Sequence[str] = (),
) -> SweepSummary:
    """Run every config whose ``run_id`` is not in ``store`` and store each record on arrival.

    Args:
        configs: the runs (duplicates are run once).
        store: where records go; only this process writes it.
        backend: ``local`` (process pool) or ``ray``.
        workers: local processes (default: the CPU count) or CPUs of a local Ray instance.
        address: Ray cluster address (``ray`` backend only).
        retry_failed: also run again the configs stored as ``failed``.
        progress: stream of the progress bar (default stderr).
        show_progress: False to print nothing.
        imports: modules every worker imports before running (they register extra problems or
            methods).

    A worker process that dies (a crash, the OOM killer) breaks a local pool: every run it had
    not finished comes back as an error. Those runs go to a fresh executor, in reverse order
    so that the runs queued behind the culprit get their turn first, as long as a round stores
    at least one run; what is left is reported as ``lost`` (not stored, so a new sweep retries
    it). The runner itself never raises: an exception inside a run is a ``failed`` record.

    Two-pass methods: after the given runs, the pass-2 configs of every pass-1 run among them
    are built from the *stored* pass-1 records (:func:`lrlab.bench.refinement
    .second_pass_configs`) and run the same way, so a sweep killed after pass 1 resumes with
    pass 2 only; the summary counts both passes.
    """
    start = time.perf_counter()
    unique = list({c.run_id: c for c in configs}.values())
    stored = store.run_ids()
    if retry_failed:
        stored -= store.run_ids(status=RunStatus.FAILED)
    todo = [c for c in unique if c.run_id not in stored]
    stream = progress if progress is not None else sys.stderr
    parallel = workers or os.cpu_count() or 1
    bar = Progress(len(todo), stream=stream, workers=parallel) if show_progress else None
    if show_progress:
        stream.write(
            f"{len(unique)} runs: {len(unique) - len(todo)} already in {store.path}, "
            f"{len(todo)} to run\n"
        )
        stream.flush()
    counts = {status.value: 0 for status in RunStatus}
    errors: list[str] = []
    pending = todo
    while pending:
        done_before = sum(counts.values())
        broken: set[str] = set()
        executor = make_executor(backend, workers=workers, address=address)
        try:
            futures = {
                executor.submit(execute, config, tuple(imports)): config for config in pending
            }
            for future in concurrent.futures.as_completed(futures):
                config = futures.pop(future)  # drop the reference: records can be large
                try:
                    record: RunRecord = future.result()
                except Exception:  # the worker died (the runner itself never raises)
                    broken.add(config.run_id)
                    continue
                store.write(record)
                counts[record.status.value] += 1
                if record.error:
                    errors.append(
                        f"{record.config.problem} {record.config.method} "
                        f"lr={record.config.lr if record.config.lr is not None else 'default'} "
                        f"seed={record.config.seed}: "
                        f"{record.error.splitlines()[0]}"
                    )
                if bar is not None:
                    bar.update(record.status)
        finally:
            executor.shutdown(wait=False, cancel_futures=True)
        pending = [c for c in reversed(pending) if c.run_id in broken]
        if sum(counts.values()) == done_before:
            break  # nothing finished in this round: give up on what is left
    if bar is not None:
        for _ in pending:
            bar.update(None)
        bar.close()
    summary = SweepSummary(
        total=len(unique),
        skipped=len(unique) - len(todo),
        counts=counts,
        lost=pending,
        errors=errors,
        wall_time_s=time.perf_counter() - start,
    )
    # two-pass methods (lrlab.bench.refinement): pass 2 is built from the stored pass-1 records
    second = second_pass_configs(unique, store)
    summary.not_refined = second.not_built
    if second.configs:
        if show_progress:
            stream.write(f"pass 2 of the two-pass methods ({len(second.configs)} runs):\n")
        more = run_sweep(
            second.configs,
            store,
            backend=backend,
            workers=workers,
            address=address,
            retry_failed=retry_failed,
            progress=progress,
            show_progress=show_progress,
            imports=imports,
        )
        summary.total += more.total
        summary.skipped += more.skipped
        summary.counts = {k: n + more.counts.get(k, 0) for k, n in summary.counts.items()}
        summary.lost += more.lost
        summary.errors += more.errors
        summary.wall_time_s = time.perf_counter() - start
    return summary
