"""The study-file schema: what a sweep runs, read from TOML and expanded into run configs.

A :class:`Study` says what to run; :meth:`Study.configs` expands it into
:class:`~lrlab.bench.spec.RunConfig`\\ s (which :func:`lrlab.bench.sweep.run_sweep` runs).

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
width and default targets), ``width_reference`` (method labels, e.g. ``["sgd", "adam"]``: the
robustness width counts initial LRs within ``tolerance`` of the best *tuned* result of these
methods instead of the best run of any method), ``targets`` (problem -> training-loss target
of time to target), ``figures`` (a subset of :data:`FIGURE_KINDS` to show in the study's docs page),
``combine_parts`` (true: one report and one set of tables over all parts, for a study whose
parts only split the work so that they can run apart), ``leaderboard`` (true: the tables open
with the per-(method, problem) leaderboard of :mod:`lrlab.bench.leaderboard`).

**Quick variant** (``[quick]``, run by ``lrlab study NAME --quick``): a smaller version of the
study for a first look. Its keys override the study's top-level keys (its parts and problems
excepted), and it names its own ``problems`` or ``[[quick.parts]]``::

    [quick]
    seeds = 2
    lrs = "1e-6:1e2:5"
    problems = [{ name = "iris_logreg", steps = 100 }]
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import math
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lrlab.bench._paths import STUDY_NAME_PATTERN, OutputPathError, check_study_name
from lrlab.bench.refinement import PASS_ONE_SCHEDULE, two_pass_method
from lrlab.bench.spec import KwargValue, ProblemInfo, RunConfig, variant_label

if TYPE_CHECKING:
    from lrlab.optim import MethodSpec

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "FIGURE_KINDS",
    "REPORT_KEYS",
    "MethodEntry",
    "ProblemEntry",
    "Study",
    "StudyError",
    "load_study",
    "make_config",
    "parse_lrs",
    "parse_seeds",
    "tomllib",
    "variant_label",
]

REPORT_KEYS = (
    "metric",
    "tolerance",
    "width_reference",
    "targets",
    "figures",
    "combine_parts",
    "leaderboard",
)
"""Keys of a study's ``report`` table, read by :mod:`lrlab.bench.study`."""


class StudyError(ValueError):
    """A study (file, preset or command line) that cannot be expanded; says what and where."""


# -- grids --------------------------------------------------------------------------------------


def _clean(value: float) -> float:
    """Round to 12 significant digits, so grid values (and run ids) do not depend on libm."""
    return float(f"{value:.12g}")


MAX_AXIS = 1_000_000
"""The most values one grid axis (LRs, seeds) may have: checked before it is built."""


def _check_axis(count: int, what: str) -> None:
    if count > MAX_AXIS:
        raise StudyError(f"{what} has {count:,} values, more than {MAX_AXIS:,}")


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
            _check_axis(count, f"learning-rate grid {text!r}")
            if count == 1:
                return (_clean(low),)
            a, b = math.log10(low), math.log10(high)
            values = tuple(_clean(10 ** (a + (b - a) * k / (count - 1))) for k in range(count))
        else:
            values = tuple(_clean(float(part)) for part in text.split(",") if part.strip())
    except StudyError:
        raise
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
            _check_axis(int(text), f"seeds {text!r}")
            seeds = tuple(range(int(text)))
    except StudyError:
        raise
    except ValueError:
        seeds = ()
    if not seeds or any(s < 0 for s in seeds):
        raise StudyError(
            f"bad seeds {text!r}: use a count N >= 1 (seeds 0..N-1) or a comma list of "
            "non-negative integers (0,3,7)"
        )
    return seeds


# -- configs ------------------------------------------------------------------------------------


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
    if lr_argument is not None and lr_argument not in inspect.signature(method_spec.cls).parameters:
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
    quick: Study | None = None
    """The study's quick variant (its ``[quick]`` table), run by ``lrlab study NAME --quick``."""

    def part(self, name: str) -> Study:
        """The part called ``name``.

        Raises:
            StudyError: no such part (the message lists the parts there are).
        """
        for part in self.parts:
            if part.name == name:
                return part
        names = ", ".join(p.name for p in self.parts) or "none (the study has no parts)"
        raise StudyError(f"study {self.name!r} has no part {name!r}; its parts: {names}")

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
        if "quick" in data:
            return cls._with_quick(data, source)
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
    def _with_quick(cls, data: Mapping[str, Any], source: str) -> Study:
        """A study with a ``[quick]`` table: the quick variant is the study's top-level keys
        (not its parts) overridden by the table's, with the table's own ``problems`` or
        ``[[quick.parts]]``."""
        quick = data["quick"]
        here = f"{source}: quick"
        if not isinstance(quick, dict):
            raise StudyError(f"{here}: 'quick' must be a table ([quick])")
        if "quick" in quick:
            raise StudyError(f"{here}: a quick variant cannot have its own 'quick'")
        if "problems" not in quick and "parts" not in quick:
            raise StudyError(f"{here}: needs its own 'problems' or [[quick.parts]]")
        shared = {k: v for k, v in data.items() if k not in ("quick", "parts", "problems")}
        variant = cls.from_mapping({**shared, **quick}, source=here)
        full = cls.from_mapping({k: v for k, v in data.items() if k != "quick"}, source=source)
        return dataclasses.replace(full, quick=variant)

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
    reference = _typed(options, "width_reference", list, here, [])
    if "width_reference" in options and (
        not reference or not all(isinstance(m, str) and m for m in reference)
    ):
        raise StudyError(
            f"{here}: 'width_reference' must be a non-empty list of method labels, "
            f"got {reference!r}"
        )
    _typed(options, "combine_parts", bool, here, False)
    _typed(options, "leaderboard", bool, here, False)
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
