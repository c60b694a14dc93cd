"""The ``lrlab`` command line: list, run, sweep, report, export, refine, study, demo, completion.

Every subcommand is a function ``_cmd_<name>(args) -> int`` registered in :func:`build_parser`.
Bad input exits with code 2 and a message naming the argument and the allowed values; a sweep
whose runs diverge or fail still exits 0 (those are results), one whose worker died exits 1.

Conventions: every list option takes its values space- or comma-separated (``--methods sgd,adam``
is ``--methods sgd adam``); a concept has one flag name in every subcommand (a renamed flag keeps
its old spelling as a hidden alias); ``lrlab --version`` prints the version; ``lrlab completion
bash|zsh`` prints a shell completion script.

Errors are one line, never a traceback: stores and output paths are checked before any run is
computed (a directory where a file is needed, a file where a directory is needed, an unwritable
place, a damaged store or another application's database); numbers are checked by argparse
(finite, in range). A sweep or study larger than ``$LRLAB_MAX_RUNS`` runs (default 100,000) is
refused before its grid is built. An unexpected error prints one ``internal error`` line;
``LRLAB_TRACEBACK=1`` shows its traceback instead.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["build_parser", "main"]

DEFAULT_LRS = "1e-6:1:7"
REPORT_TOLERANCE = 0.1
"""Relative tolerance of ``lrlab report``'s robustness widths and verdict."""
MAX_RUNS_ENV = "LRLAB_MAX_RUNS"
DEFAULT_MAX_RUNS = 100_000
"""The largest sweep (number of runs) started without raising the cap (``$LRLAB_MAX_RUNS``)."""


class _UsageError(Exception):
    """Bad command-line input: reported as ``lrlab <command>: error: ...``, exit code 2."""


# -- argument types -----------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def _nonnegative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    """A finite number > 0 (NaN, infinities, zero and negatives are refused)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def _fraction(text: str) -> float:
    """A number in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}")
    return value


def _study_name(text: str) -> str:
    from lrlab.bench._paths import OutputPathError, check_study_name

    try:
        return check_study_name(text)
    except OutputPathError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def max_runs() -> int:
    """The cap on the number of runs of one sweep: ``$LRLAB_MAX_RUNS`` or
    :data:`DEFAULT_MAX_RUNS`."""
    text = os.environ.get(MAX_RUNS_ENV, "")
    try:
        value = int(text) if text.strip() else DEFAULT_MAX_RUNS
    except ValueError:
        raise _UsageError(
            f"{MAX_RUNS_ENV}={text!r}: expected a whole number of runs >= 1"
        ) from None
    if value < 1:
        raise _UsageError(f"{MAX_RUNS_ENV}={text!r}: expected a whole number of runs >= 1")
    return value


def _too_many_runs(runs: int, what: str) -> str:
    return (
        f"{what} has {runs:,} runs, more than the cap of {max_runs():,}; make the grid smaller "
        f"or raise the cap with {MAX_RUNS_ENV}={runs} (the environment variable)"
    )


def _check_cap(runs: int, what: str) -> None:
    """For argument types: an :class:`argparse.ArgumentTypeError` past the cap."""
    try:
        if runs > max_runs():
            raise argparse.ArgumentTypeError(_too_many_runs(runs, what))
    except _UsageError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _lr(text: str) -> float | None:
    if text.lower() == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(
            f"expected a positive number or 'none' (the method's default), got {text!r}"
        )
    return value


def _lr_grid(text: str) -> tuple[float, ...]:
    from lrlab.bench.sweep import StudyError, parse_lrs

    count = text.strip().rpartition(":")[2] if ":" in text else ""
    if count.strip().isdigit():  # before building the grid
        _check_cap(int(count), f"the grid {text!r}")
    try:
        return parse_lrs(text)
    except StudyError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _seeds(text: str) -> tuple[int, ...]:
    from lrlab.bench.sweep import StudyError, parse_seeds

    if text.strip().isdigit():  # before building the list
        _check_cap(int(text), f"--seeds {text}")
    try:
        return parse_seeds(text)
    except StudyError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


class _ListAction(argparse.Action):
    """``nargs="+"`` whose values may also be comma-separated: ``a,b c`` -> ``[a, b, c]``."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        tokens = [values] if isinstance(values, str) else list(values or [])
        items = [item.strip() for token in tokens for item in str(token).split(",")]
        items = [item for item in items if item]
        if not items:
            raise argparse.ArgumentError(self, "expected at least one name")
        setattr(namespace, self.dest, items)


class _JoinedAction(argparse.Action):
    """``nargs="+"`` parsed as one comma list: ``--lrs 0.1 0.01`` is ``--lrs 0.1,0.01``."""

    def __init__(self, *args: Any, parse: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._parse = parse

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        tokens = [values] if isinstance(values, str) else [str(v) for v in values or []]
        try:
            setattr(namespace, self.dest, self._parse(",".join(tokens)))
        except argparse.ArgumentTypeError as error:
            raise argparse.ArgumentError(self, str(error)) from None


def _kwarg(text: str) -> tuple[str, Any]:
    """``NAME=VALUE`` with VALUE read as TOML (``0.1``, ``true``, ``[0.9, 0.99]``) or a string."""
    from lrlab.bench.sweep import tomllib

    name, sep, value = text.partition("=")
    if not sep or not name.strip().isidentifier():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value
    return name.strip(), parsed


def _import_plugins(modules: Sequence[str]) -> None:
    """Import the ``--import`` modules (they register extra problems or methods)."""
    import importlib

    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as error:
            raise _UsageError(f"argument --import: cannot import {module!r}: {error}") from None


# -- name checks --------------------------------------------------------------------------------


def _check_problems(names: Sequence[str], option: str) -> None:
    from lrlab.bench.problems import get_problem

    for name in names:
        try:
            get_problem(name)
        except KeyError as error:
            raise _UsageError(f"argument {option}: {error}") from None


def _output_file(path: str, option: str) -> Path:
    """``path`` checked to be writable as a file, before any work is done."""
    from lrlab.bench._paths import OutputPathError, check_output_file

    try:
        return check_output_file(path, "file")
    except OutputPathError as error:
        raise _UsageError(f"argument {option}: {error}") from None


def _output_dir(path: str, option: str) -> Path:
    """``path`` checked to be usable as an output directory, before any work is done."""
    from lrlab.bench._paths import OutputPathError, check_output_dir

    try:
        return check_output_dir(path, "directory")
    except OutputPathError as error:
        raise _UsageError(f"argument {option}: {error}") from None


def _writable_store(path: str | Path, option: str = "--store") -> Any:
    """The store at ``path`` opened for writing (created if missing), checked to be an lrlab
    store in a writable place before any run is computed."""
    from lrlab.bench.store import Store, StoreError

    _output_file(str(path), option)
    try:
        return Store(path)
    except StoreError as error:
        raise _UsageError(f"argument {option}: {error}") from None


def _check_methods(names: Sequence[str], option: str) -> None:
    import lrlab.optim as lo

    for name in names:
        try:
            lo.spec(name)
        except KeyError as error:
            raise _UsageError(f"argument {option}: {error}") from None


def _open_store(path: str) -> Any:
    """The store at ``path``, read-only."""
    from lrlab.bench.store import Store, StoreError

    if Path(path).is_dir():
        raise _UsageError(f"argument --store: {path!r} is a directory, not a store file")
    if not Path(path).is_file():
        raise _UsageError(f"argument --store: no store at {path!r} (run `lrlab sweep` first)")
    try:
        return Store(path, readonly=True)
    except StoreError as error:
        raise _UsageError(f"argument --store: {error}") from None


# -- list ---------------------------------------------------------------------------------------


def _list_methods() -> list[dict[str, Any]]:
    import lrlab.optim as lo

    rows = []
    for name in lo.names():
        spec = lo.spec(name)
        needs = [
            flag
            for flag in ("needs_loss", "needs_closure", "needs_example_index")
            if getattr(spec, flag)
        ]
        rows.append(
            {
                "name": name,
                "family": spec.family,
                "confidence": spec.confidence,
                "needs": needs,
                "summary": spec.summary,
            }
        )
    return rows


def _cmd_list(args: argparse.Namespace) -> int:
    if args.what == "methods":
        rows = _list_methods()
        family_width = max(len(r["family"]) for r in rows)
        lines = [
            f"{r['family']:<{family_width}} {r['summary']}"
            + (f" [{', '.join(r['needs'])}]" if r["needs"] else "")
            for r in rows
        ]
    elif args.what == "problems":
        from lrlab.bench.problems import get_problem, problem_names

        rows = []
        for name in problem_names():
            info = get_problem(name).info
            rows.append(
                {
                    "name": name,
                    "kind": info.kind,
                    "metric": info.metric,
                    "goal": info.goal.value,
                    "default_steps": info.default_steps,
                    "default_batch_size": info.default_batch_size,
                    "summary": info.summary,
                }
            )
        lines = [f"{r['kind']:<10} {r['metric']:<20} {r['summary']}" for r in rows]
    else:
        from lrlab.bench.presets import load_preset, preset_names

        rows = []
        for name in preset_names():
            study = load_preset(name)
            rows.append({"name": name, "description": study.description})
        lines = [r["description"] for r in rows]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max((len(r["name"]) for r in rows), default=0)
    for row, line in zip(rows, lines, strict=True):
        print(f"{row['name']:<{width}}  {line}")
    return 0


# -- run ----------------------------------------------------------------------------------------


def _lr_text(method: str, lr: float | None) -> str:
    """How a run's initial LR reads: ``lr=0.1``, ``lr=default (0.001)``, or ``no LR argument``
    for a method that sets its own step size (never ``lr=None``)."""
    import inspect

    import lrlab.optim as lo

    if lr is not None:
        return f"lr={lr:g}"
    try:
        method_spec = lo.spec(method)
    except KeyError:
        return "lr=default"
    if method_spec.lr_argument is None:
        return "no LR argument"
    parameter = inspect.signature(method_spec.cls).parameters.get(method_spec.lr_argument)
    if parameter is None or parameter.default is inspect.Parameter.empty:
        return "lr=default"
    return f"lr=default ({parameter.default:g})"


def _summary(record: Any) -> str:
    config = record.config
    lines = [
        f"{config.problem} / {config.method} / {_lr_text(config.method, config.lr)} / "
        f"seed={config.seed}: "
        f"{record.status.value} after {len(record.steps)} of {config.steps} steps "
        f"({record.wall_time_s:.2f} s)",
        f"run_id {record.run_id}",
    ]
    if record.diverged_at_step is not None:
        lines.append(f"diverged at step {record.diverged_at_step}")
    if record.error:
        lines.append(f"error: {record.error.splitlines()[0]}")
    if record.steps:
        first, last = record.steps[0], record.steps[-1]
        lines.append(
            f"loss {first['loss']:.6g} -> {last['loss']:.6g}; "
            f"effective_lr {first['effective_lr']:.4g} -> {last['effective_lr']:.4g}"
        )
    for key, value in record.final.items():
        lines.append(f"  {key:<24} {value:.6g}")
    return "\n".join(lines)


def _cmd_run(args: argparse.Namespace) -> int:
    import torch

    from lrlab.bench.runner import run
    from lrlab.bench.store import StoreError, record_to_dict
    from lrlab.bench.sweep import make_config

    _import_plugins(args.imports)
    _check_problems([args.problem], "--problem")
    _check_methods([args.method], "--method")
    if args.lr is not None:
        import lrlab.optim as lo

        if lo.spec(args.method).lr_argument is None:
            raise _UsageError(
                f"argument --lr: method {args.method!r} has no learning-rate argument (it sets "
                "its own step size); leave --lr out"
            )
    if args.schedule is not None:
        from lrlab.bench.runner import schedule_names

        allowed = schedule_names()
        if args.schedule not in allowed:
            raise _UsageError(
                f"argument --schedule: unknown schedule {args.schedule!r}; "
                f"allowed: {', '.join(allowed)}"
            )
    torch.set_num_threads(args.threads)
    config = make_config(
        problem=args.problem,
        method=args.method,
        lr=args.lr,
        seed=args.seed,
        steps=args.steps,
        batch_size=args.batch_size,
        problem_kwargs=dict(args.problem_kwargs),
        method_kwargs=dict(args.method_kwargs),
        schedule=args.schedule,
        schedule_kwargs=dict(args.schedule_kwargs),
        eval_every=args.eval_every,
        divergence_threshold=args.divergence_threshold,
    )
    # the store is opened and checked BEFORE computing, so a run is never computed and then
    # lost to a store that turns out to be unusable
    store = _writable_store(args.store) if args.store else None
    try:
        record = run(config)
        if store is not None:
            try:
                store.write(record)
            except StoreError as error:
                print(json.dumps(record_to_dict(record)))  # the computed run, not lost
                raise _UsageError(
                    f"argument --store: {error} (the record is printed above)"
                ) from None
    finally:
        if store is not None:
            store.close()
    if args.json:
        print(json.dumps(record_to_dict(record), indent=1))
    else:
        print(_summary(record))
        if args.store:
            print(f"stored in {args.store}")
    return 1 if record.error else 0


# -- sweep --------------------------------------------------------------------------------------


def _study_from_args(args: argparse.Namespace) -> Any:
    import dataclasses

    from lrlab.bench.sweep import MethodEntry, ProblemEntry, Study, StudyError, load_study

    if args.preset is not None:
        from lrlab.bench.presets import load_preset

        try:
            study = load_preset(args.preset)
        except StudyError as error:
            raise _UsageError(f"argument --preset: {error}") from None
    elif args.study is not None:
        try:
            study = load_study(args.study)
        except StudyError as error:
            raise _UsageError(f"argument --study: {error}") from None
    else:
        missing = [
            option
            for option, value in (("--problems", args.problems), ("--methods", args.methods))
            if not value
        ]
        if missing:
            raise _UsageError(
                f"the following arguments are required without --preset or --study: "
                f"{', '.join(missing)}"
            )
        study = Study(
            name=args.name or "sweep",
            problems=(),
            methods=(),
            lrs=args.lrs or _lr_grid(DEFAULT_LRS),
            seeds=args.seeds or (0,),
        )
    changes: dict[str, Any] = {}
    if args.problems:
        _check_problems(args.problems, "--problems")
        changes["problems"] = tuple(ProblemEntry(name=n) for n in args.problems)
    if args.methods:
        _check_methods(args.methods, "--methods")
        changes["methods"] = tuple(MethodEntry(name=n) for n in args.methods)
    if args.lrs:
        changes["lrs"] = args.lrs
    if args.seeds:
        changes["seeds"] = args.seeds
    if args.steps:
        changes["steps"] = args.steps
        changes["problems"] = tuple(
            dataclasses.replace(p, steps=None) for p in changes.get("problems", study.problems)
        )
    if args.name:
        changes["name"] = args.name
    if study.parts:  # a study of parts: the overrides apply to every part
        part_changes = {k: v for k, v in changes.items() if k != "name"}
        changes = {k: v for k, v in changes.items() if k == "name"}
        changes["parts"] = tuple(dataclasses.replace(p, **part_changes) for p in study.parts)
    return dataclasses.replace(study, **changes)


def _grid_size(study: Any) -> int:
    """The number of runs of ``study`` (an upper bound: duplicates counted), without building
    them, so a huge grid is refused before it fills the memory."""
    if study.parts:
        return sum(_grid_size(part) for part in study.parts)
    variants = 0
    for method in study.methods:
        kinds = math.prod(len(values) for values in method.grid.values()) if method.grid else 1
        lrs = study.lrs if method.lrs is None else method.lrs
        variants += kinds * max(len(lrs), 1)
    return len(study.problems) * variants * max(len(study.seeds), 1)


def _cmd_sweep(args: argparse.Namespace) -> int:
    from lrlab.bench.executors import ExecutorError, check_backend
    from lrlab.bench.sweep import StudyError, run_sweep

    if args.ray_address is not None and args.backend != "ray":
        raise _UsageError("argument --ray-address: only allowed with --backend ray")
    max_runs()  # a bad $LRLAB_MAX_RUNS is reported before anything else
    _import_plugins(args.imports)
    study = _study_from_args(args)
    size = _grid_size(study)
    if size > max_runs():
        raise _UsageError(_too_many_runs(size, f"the sweep {study.name!r}"))
    try:
        configs = study.configs()
    except StudyError as error:
        raise _UsageError(str(error)) from None
    store_path = Path(args.store or f"results/{study.name}.sqlite")
    if args.dry_run:
        from lrlab.bench.refinement import is_pass_one

        firsts = sum(map(is_pass_one, configs))
        extra = f" (then up to {firsts} pass-2 runs of two-pass methods)" if firsts else ""
        print(f"{study.name}: {len(configs)} runs -> {store_path}{extra}")
        return 0
    try:
        check_backend(args.backend, args.ray_address)
    except ExecutorError as error:
        option = "--ray-address" if args.ray_address is not None else "--backend"
        raise _UsageError(f"argument {option}: {error}") from None
    store = _writable_store(store_path)
    with store:
        try:
            summary = run_sweep(
                configs,
                store,
                backend=args.backend,
                workers=args.workers,
                address=args.ray_address,
                retry_failed=args.retry_failed,
                show_progress=not args.quiet,
                imports=args.imports,
            )
        except ExecutorError as error:
            option = "--ray-address" if args.ray_address is not None else "--backend"
            raise _UsageError(f"argument {option}: {error}") from None
        except KeyboardInterrupt:
            print(
                f"\ninterrupted: {store.count()} runs are stored in {store_path}; "
                "run the same command again to resume",
                file=sys.stderr,
            )
            return 130
        totals = store.status_counts()
    counts = ", ".join(f"{n} {status}" for status, n in summary.counts.items())
    print(
        f"{study.name}: {summary.total} runs, {summary.skipped} already stored; ran "
        f"{sum(summary.counts.values())} ({counts}) in {summary.wall_time_s:.1f} s"
    )
    for line in summary.errors[:5]:
        print(f"  failed: {line}")
    if len(summary.errors) > 5:
        print(f"  ... and {len(summary.errors) - 5} more failed runs")
    stored = ", ".join(f"{n} {status}" for status, n in totals.items())
    print(f"Results: {store_path} ({stored})")
    print(f"  table:  lrlab report --store {store_path}")
    print(f"  pandas: lrlab.bench.store.Store({str(store_path)!r}).dataframe('runs')")
    if summary.lost:
        print(
            f"{len(summary.lost)} runs were lost because a worker process died; run the same "
            "command again to retry them",
            file=sys.stderr,
        )
        return 1
    return 0


# -- report and export --------------------------------------------------------------------------


def _headline(problem: str, records: Sequence[Any]) -> tuple[str, str]:
    from lrlab.bench.report import default_metric_choice

    choice = default_metric_choice(problem, records)
    return choice.metric, choice.goal.value


def _format_cell(point: Any) -> str:
    if point.seeds == point.diverged:
        return "diverged"
    text = f"{point.mean:.3g}"
    return f"{text} ({point.diverged}x)" if point.diverged else text


def report_table(records: Sequence[Any], metric: str | None = None) -> str:
    """A text table per problem: mean final metric over seeds per method (rows) x LR (columns);
    ``(kx)``: k seeds diverged or failed."""
    from collections import defaultdict

    from lrlab.bench.metrics import sensitivity

    by_problem: dict[str, list[Any]] = defaultdict(list)
    for record in records:
        by_problem[record.config.problem].append(record)
    blocks = []
    for problem, rows in sorted(by_problem.items()):
        name, goal = (metric, "") if metric else _headline(problem, rows)
        points = sensitivity(rows, name)
        lrs = sorted({p.lr for p in points}, key=lambda v: (v is None, v or 0.0))
        methods = list(dict.fromkeys(p.method for p in points))
        cells = {(p.method, p.lr): _format_cell(p) for p in points}
        width = max(len(m) for m in (*methods, "method"))
        header = [f"{'lr=' + format(lr, 'g') if lr is not None else 'default':>14}" for lr in lrs]
        seeds = max(p.seeds for p in points)
        lines = [
            f"{problem}: final {name}{f' ({goal})' if goal else ''}, mean over {seeds} "
            "seed(s); (kx) = k seeds diverged or failed",
            f"{'method':<{width}} " + " ".join(header),
        ]
        for method in methods:
            row = [f"{cells.get((method, lr), '-'):>14}" for lr in lrs]
            lines.append(f"{method:<{width}} " + " ".join(row))
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _cmd_report(args: argparse.Namespace) -> int:
    from lrlab._registry import UnknownNameError
    from lrlab.bench import summary

    if args.report_dir:
        _output_dir(args.report_dir, "--report-dir")
    filters = {}
    if args.problems:
        filters["problem"] = args.problems
    with _open_store(args.store) as store:
        records = store.load_records(**filters)
        if args.problems:
            stored = sorted({row["problem"] for row in store.query()})
            missing = [p for p in args.problems if p not in stored]
            if missing:
                raise _UsageError(
                    f"argument --problems: no runs of {', '.join(map(repr, missing))} in "
                    f"{args.store!r}; its problems are: {', '.join(stored) or '(none)'}"
                )
    if not records:
        raise _UsageError(f"argument --store: no runs in {args.store!r} match")
    records = summary.group_variants(records)  # a d0 sweep and its defaults: one method
    if args.metric:
        try:
            summary.check_metric(records, args.metric)
        except UnknownNameError as error:
            raise _UsageError(f"argument --metric: {error}") from None
    choose = _report_metric_choice(args.metric)
    problems = sorted({r.config.problem for r in records})
    try:
        choices = {p: choose(p, [r for r in records if r.config.problem == p]) for p in problems}
    except ValueError as error:  # a metric whose direction nothing knows
        raise _UsageError(f"argument --metric: {error}") from None
    print(report_table(records, args.metric))
    board, _, verdict = summary.summarize(records, choices, tolerance=REPORT_TOLERANCE)
    print("\nLeaderboard (rank: mean [95 % bootstrap interval]; * best; = tied with the best):")
    print(summary.leaderboard_table(board).text())
    if args.report_dir:
        from lrlab.bench.report import build_report

        files = build_report(
            records, args.report_dir, metric_choice=choose, tolerance=REPORT_TOLERANCE
        )
        print(f"\nReport: {files.html} and {files.markdown}")
    # last, so that `make demo` ends with the answer
    print(f"\nVerdict: {verdict.text}")
    return 0


def _report_metric_choice(metric: str | None) -> Any:
    """The report's metric per problem: ``metric`` for every problem, else the headline."""
    from lrlab.bench.summary import MetricChoice, default_metric_choice, metric_goal

    if metric is None:
        return default_metric_choice

    def choose(problem: str, records: Sequence[Any]) -> MetricChoice:
        return MetricChoice(metric, metric_goal(problem, metric, records))

    return choose


def _cmd_export(args: argparse.Namespace) -> int:
    from lrlab.bench.store import StoreError

    _output_file(args.out, "--out")
    with _open_store(args.store) as store:
        try:
            out = store.export(args.out, table=args.table)
        except StoreError as error:
            raise _UsageError(f"argument --out: {error}") from None
    print(f"wrote {out}")
    return 0


def _cmd_refine(args: argparse.Namespace) -> int:
    from lrlab.bench.refinement import refine_stored_run

    if args.out:
        _output_file(args.out, "--out")
    with _open_store(args.store) as store:
        try:
            text = refine_stored_run(
                store,
                args.run_id,
                kind=args.kind,
                length=args.length,
                smoothing=args.smoothing,
                out=args.out,
            )
        except ValueError as error:
            raise _UsageError(str(error)) from None
    print(text)
    return 0


# -- study --------------------------------------------------------------------------------------


def _cmd_study(args: argparse.Namespace) -> int:
    from lrlab.bench.executors import ExecutorError
    from lrlab.bench.store import StoreError
    from lrlab.bench.study import load_study_source, run_study
    from lrlab.bench.sweep import StudyError

    if args.store:
        _output_file(args.store, "--store")
    _output_dir(args.docs, "--docs")
    if args.report_dir:
        _output_dir(args.report_dir, "--report-dir")
    try:  # the grid cap (of the whole study, its quick variant is smaller), before run_study
        size = 0 if args.quick else _grid_size(load_study_source(args.name).study)
    except StudyError:
        size = 0  # reported by run_study
    if size > max_runs():
        raise _UsageError(_too_many_runs(size, f"the study {args.name!r}"))
    command = f"lrlab study {args.name}" + (" --quick" if args.quick else "")
    for option, value in (
        *(("--part", part) for part in args.part or ()),
        ("--backend", args.backend if args.backend != "local" else None),
        ("--address", args.address),
        *(("--merge", path) for path in args.merge or ()),
        ("--store", args.store),
        ("--docs", args.docs if args.docs != "docs/studies" else None),
        ("--report-dir", args.report_dir),
        ("--workers", args.workers),
    ):
        if value is not None:
            command += f" {option} {value}"
    try:
        outcome = run_study(
            args.name,
            store=args.store,
            docs=args.docs,
            report_dir=args.report_dir,
            workers=args.workers,
            run=not args.no_run,
            show_progress=not args.quiet,
            command=command,
            quick=args.quick,
            parts=args.part or (),
            backend=args.backend,
            address=args.address,
            merge=args.merge or (),
        )
    except (StudyError, StoreError) as error:
        raise _UsageError(str(error)) from None
    except ExecutorError as error:
        raise _UsageError(f"argument --backend/--address: {error}") from None
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command again to resume", file=sys.stderr)
        return 130
    print(
        f"{args.name}: {outcome.runs} runs stored ({outcome.ran} run now"
        + (f", {outcome.missing} missing" if outcome.missing else "")
        + f"); sweep wall time {outcome.sweep_wall_time_s:.1f} s, report "
        f"{outcome.report_wall_time_s:.1f} s"
    )
    for line in outcome.errors[:5]:
        print(f"  failed: {line}")
    if outcome.doc is None:
        print("Docs: not written yet (the store lacks the other parts' runs; run them, or --merge)")
    else:
        print(
            f"Docs: {outcome.doc} ({len(outcome.figures)} figures in {outcome.doc.with_suffix('')})"
        )
    for directory in outcome.report_dirs:
        print(f"Report: {directory / 'report.html'}")
    return 1 if outcome.lost else 0


# -- demo ---------------------------------------------------------------------------------------


def _cmd_demo(args: argparse.Namespace) -> int:
    import torch

    from lrlab.bench.demo import format_table, run_demo

    torch.set_num_threads(1)
    if args.lr is None:
        raise _UsageError("argument --lr: the demo needs a number (its point is a bad initial LR)")
    results = run_demo(initial_lr=args.lr, steps=args.steps)
    print(f"Small MLP, {args.steps} full-batch steps from initial learning rate {args.lr:g}:")
    print(format_table(results))
    return 0


# -- completion ---------------------------------------------------------------------------------


def _cmd_completion(args: argparse.Namespace) -> int:
    from lrlab.bench.completion import completion_script

    print(completion_script(build_parser(), args.shell), end="")
    return 0


# -- parser -------------------------------------------------------------------------------------


def _alias(parser: argparse.ArgumentParser, old: str, dest: str, **kwargs: Any) -> None:
    """Keep a renamed flag's old spelling working, hidden from ``--help``."""
    parser.add_argument(old, dest=dest, help=argparse.SUPPRESS, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    from lrlab import __version__
    from lrlab.bench.executors import BACKENDS

    parser = argparse.ArgumentParser(
        prog="lrlab",
        description="lrlab: online learning-rate adaptation for PyTorch, and a lab to compare "
        "the methods (list, run, sweep, report, export, refine, study, demo, completion).",
        epilog="List options take their values space- or comma-separated (--methods sgd,adam).",
    )
    parser.add_argument("--version", action="version", version=f"lrlab {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    listing = commands.add_parser("list", help="list registered methods, problems or presets")
    listing.add_argument(
        "what", nargs="?", default="methods", choices=["methods", "problems", "presets"]
    )
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(handler=_cmd_list)

    one = commands.add_parser("run", help="one training run; prints a summary (or --json)")
    one.add_argument("--problem", required=True, help="problem name (lrlab list problems)")
    one.add_argument("--method", required=True, help="method name (lrlab list methods)")
    one.add_argument("--lr", type=_lr, default=None, help="initial LR (default: the method's own)")
    one.add_argument("--seed", type=_nonnegative_int, default=0)
    one.add_argument("--steps", type=_positive_int, help="default: the problem's")
    one.add_argument("--batch-size", type=_positive_int, help="default: the problem's")
    one.add_argument("--eval-every", type=_nonnegative_int, default=0)
    one.add_argument(
        "--divergence-threshold",
        type=_positive_float,
        default=1e6,
        help="a loss above this (or non-finite) ends the run as diverged",
    )
    for kind in ("problem", "method", "schedule"):
        one.add_argument(
            f"--{kind}-kwargs",
            type=_kwarg,
            nargs="+",
            default=[],
            metavar="NAME=VALUE",
            help=f"{kind} arguments (values read as TOML: 0.1, true, [0.9, 0.99], text)",
        )
    one.add_argument("--schedule", help="an LR schedule from lrlab.schedules")
    one.add_argument("--threads", type=_positive_int, default=1, help="torch threads")
    one.add_argument("--store", help="also write the record into this store")
    one.add_argument("--json", action="store_true", help="print the whole record as JSON")
    one.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="a module that registers extra problems or methods (repeatable)",
    )
    one.set_defaults(handler=_cmd_run)

    sweep = commands.add_parser(
        "sweep",
        help="problems x methods x LRs x seeds, resumable",
        description="Run a sweep into a SQLite store; runs already stored are skipped, so "
        "running the same command again resumes a killed sweep. --problems/--methods/--lrs/"
        "--seeds/--steps override the preset's or study's values.",
    )
    source = sweep.add_mutually_exclusive_group()
    source.add_argument("--preset", help="a shipped study (lrlab list presets)")
    source.add_argument("--study", help="a study file (TOML)")
    sweep.add_argument(
        "--problems",
        nargs="+",
        action=_ListAction,
        metavar="PROBLEM",
        help="problem names (lrlab list problems)",
    )
    sweep.add_argument(
        "--methods",
        nargs="+",
        action=_ListAction,
        metavar="METHOD",
        help="method names (lrlab list methods)",
    )
    sweep.add_argument(
        "--lrs",
        nargs="+",
        action=_JoinedAction,
        parse=_lr_grid,
        metavar="LR",
        help=f"LOW:HIGH:COUNT log-spaced, or a list of LRs (default {DEFAULT_LRS})",
    )
    sweep.add_argument(
        "--seeds",
        nargs="+",
        action=_JoinedAction,
        parse=_seeds,
        metavar="SEED",
        help="a count N (seeds 0..N-1) or a list of seeds (0 3)",
    )
    sweep.add_argument("--steps", type=_positive_int, help="steps of every run")
    sweep.add_argument(
        "--name", type=_study_name, help="study name (default store results/NAME.sqlite)"
    )
    sweep.add_argument("--store", help="SQLite file (default results/<study name>.sqlite)")
    sweep.add_argument(
        "--workers", type=_positive_int, help="worker processes (default: the CPU count)"
    )
    sweep.add_argument(
        "--backend",
        choices=BACKENDS,
        default="local",
        help="local processes (default) or Ray (pip install 'lrlab[ray]')",
    )
    sweep.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="a running Ray cluster: auto, HOST:PORT or ray://HOST:PORT (default: start a "
        "local instance with --workers CPUs)",
    )
    sweep.add_argument("--retry-failed", action="store_true", help="run stored failed runs again")
    sweep.add_argument("--dry-run", action="store_true", help="count the runs and stop")
    sweep.add_argument("--quiet", action="store_true", help="no progress bar")
    sweep.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="a module that registers extra problems or methods, imported by the driver and "
        "by every worker (repeatable)",
    )
    sweep.set_defaults(handler=_cmd_sweep)

    report = commands.add_parser("report", help="final metric per method x LR from a store")
    report.add_argument("--store", required=True)
    report.add_argument(
        "--problems", nargs="+", action=_ListAction, metavar="PROBLEM", help="only these"
    )
    report.add_argument("--metric", help="default: each problem's headline metric")
    report.add_argument(
        "--report-dir",
        metavar="DIR",
        help="also write the HTML/Markdown report into this directory (as `lrlab study` does)",
    )
    _alias(report, "--out", "report_dir")
    report.set_defaults(handler=_cmd_report)

    export = commands.add_parser("export", help="a store's table as CSV or Parquet")
    export.add_argument("--store", required=True)
    export.add_argument("--table", choices=["runs", "steps", "evals"], default="runs")
    export.add_argument("--out", required=True, help="file.csv or file.parquet")
    export.set_defaults(handler=_cmd_export)

    refine = commands.add_parser(
        "refine",
        help="the schedule refined from a stored run's gradient norms",
        description="Print (and with --out save) the schedule of 'When, Why and How Much?' "
        "refined from the per-step gradient norms a stored run logged: L2 norms for SGD "
        "(--kind sgd), L1 norms for the Adam family (--kind adam).",
    )
    refine.add_argument("--store", required=True)
    refine.add_argument("--run-id", required=True, help="a run id or a unique prefix of it")
    refine.add_argument(
        "--kind",
        choices=["sgd", "adam"],
        help="default: the run's two-pass method's, else adam for a method named *adam*, else sgd",
    )
    refine.add_argument("--length", type=_positive_int, help="steps (default: the run's)")
    refine.add_argument("--smoothing", type=_fraction, default=0.1, help="median filter, in [0, 1)")
    refine.add_argument("--out", help="also write the schedule to a .json or .csv file")
    refine.set_defaults(handler=_cmd_refine)

    study = commands.add_parser(
        "study",
        help="run a study (preset) and write its report and docs page",
        description="Run a study's sweep into a store (resumable), build its HTML report and "
        "write DOCS/NAME.md: the preset's commentary with the tables and figures generated "
        "from the store, the command, the measured wall time, the machine and the versions.",
    )
    study.add_argument("name", help="a preset (lrlab list presets) or a study file FILE.toml")
    study.add_argument("--store", help="SQLite file (default results/<name>.sqlite)")
    study.add_argument("--docs", default="docs/studies", help="docs directory (docs/studies)")
    study.add_argument("--report-dir", help="full reports (default results/<name>-report)")
    study.add_argument(
        "--workers", type=_positive_int, help="worker processes (default: the CPU count)"
    )
    study.add_argument("--no-run", action="store_true", help="only rebuild report and docs")
    study.add_argument(
        "--quick", action="store_true", help="the study's quick variant (store NAME-quick)"
    )
    study.add_argument("--part", action="append", help="run only this part (repeatable)")
    study.add_argument("--backend", choices=BACKENDS, default="local", help="executor backend")
    study.add_argument(
        "--address", "--ray-address", dest="address", help="Ray cluster address (--backend ray)"
    )
    study.add_argument(
        "--merge", action="append", help="copy the runs of this store in first (repeatable)"
    )
    study.add_argument("--quiet", action="store_true", help="no progress bar")
    study.set_defaults(handler=_cmd_study)

    demo = commands.add_parser("demo", help="adaptive vs fixed LR from a bad initial LR")
    demo.add_argument("--lr", type=_positive_float, default=1e-4, help="initial learning rate")
    demo.add_argument("--steps", type=_positive_int, default=600, help="training steps")
    demo.set_defaults(handler=_cmd_demo)

    completion = commands.add_parser(
        "completion",
        help="print a shell completion script (bash or zsh)",
        description="Print a completion script for subcommands, flags and the registered "
        "method, problem and preset names. bash: `source <(lrlab completion bash)` (or save it "
        "under ~/.local/share/bash-completion/completions/lrlab); zsh: `source <(lrlab "
        "completion zsh)` in ~/.zshrc. Generate it again after registering plugins.",
    )
    completion.add_argument("shell", choices=["bash", "zsh"])
    completion.set_defaults(handler=_cmd_completion)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the subcommand; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse: --help (0) or a usage error (2)
        return int(exit_.code or 0)
    try:
        return int(args.handler(args))
    except _UsageError as error:
        print(f"lrlab {args.command}: error: {error}", file=sys.stderr)
        return 2
    except (BrokenPipeError, ModuleNotFoundError):
        raise  # lrlab.__main__ ends these quietly / with the missing extra's install line
    except Exception as error:  # one clear line, never a traceback
        return _report_failure(args.command, error)


def _report_failure(command: str, error: Exception) -> int:
    """Print one line for an error that reached the top: a store or output path that cannot
    be used (exit 2), a file system error (exit 1) or, with a hint to get the traceback, an
    internal error (exit 1). ``LRLAB_TRACEBACK=1`` re-raises instead."""
    import sqlite3

    from lrlab.bench._paths import OutputPathError
    from lrlab.bench.store import StoreError

    if os.environ.get("LRLAB_TRACEBACK", "") not in ("", "0"):
        raise error
    if isinstance(error, (StoreError, OutputPathError)):
        print(f"lrlab {command}: error: {error}", file=sys.stderr)
        return 2
    if isinstance(error, OSError):
        where = f" {error.filename!r}" if error.filename else ""
        reason = error.strerror or str(error)
        print(f"lrlab {command}: error: cannot use{where}: {reason}", file=sys.stderr)
        return 1
    if isinstance(error, sqlite3.Error):
        print(f"lrlab {command}: error: store: {error}", file=sys.stderr)
        return 1
    if isinstance(error, MemoryError):
        print(f"lrlab {command}: error: out of memory", file=sys.stderr)
        return 1
    print(
        f"lrlab {command}: internal error: {type(error).__name__}: {error} (please report it; "
        "LRLAB_TRACEBACK=1 shows the traceback)",
        file=sys.stderr,
    )
    return 1
