"""Reports built only from stored run records: figures, tables, and where every number came from.

``build_report(records, out_dir)`` writes

* ``report.html``: one self-contained page (figures embedded as data URIs, no scripts, no
  external resources), and
* ``report.md`` with ``figures/*.png`` beside it,

each figure with a caption saying what it shows. The content, per problem:

1. sensitivity: the final metric against the initial learning rate (log axis), one line per
   method, mean over seeds with a min-max band, LRs where a seed diverged marked with x;
2. learning-rate trajectories: ``effective_lr`` over steps for several initial LRs (seed of
   lowest number), one panel per method: does the method forget its initial LR?
3. loss and distance-to-optimum curves over steps at each method's best initial LR;
   where the records hold two-pass refined runs (:mod:`lrlab.bench.refinement`), pass 1's
   gradient norms above the schedule pass 2 derived from them;

and across problems:

4. the robustness table (width in decades of the initial-LR range within a tolerance of the best
   run of any method) and the best-tuned result per method and problem;
5. time to target (per-problem targets; a run that never reaches it shows as inf) and the
   performance profile over it;
6. provenance: every run's id, config, status and the library versions.

The report never runs anything: it reads records (see :mod:`lrlab.bench.metrics` for the
definitions of every number).
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lrlab.bench import metrics
from lrlab.bench._markdown import escape_markdown
from lrlab.bench._paths import confined, safe_file_stem
from lrlab.bench.spec import Goal, RunRecord, RunStatus, canonical_json

__all__ = ["MetricChoice", "ReportFiles", "build_report", "default_metric_choice"]


@dataclass(frozen=True, slots=True)
class MetricChoice:
    """Which final metric a problem is judged by, and in which direction."""

    metric: str
    goal: Goal


@dataclass(frozen=True, slots=True)
class ReportFiles:
    html: Path
    markdown: Path
    figures: list[Path] = field(default_factory=list)


def default_metric_choice(problem: str, records: Sequence[RunRecord]) -> MetricChoice:
    """The registered problem's headline metric if known, else the final training loss."""
    try:
        from lrlab.bench.problems import get_problem

        info = get_problem(problem).info
        if any(info.metric in r.final for r in records):
            return MetricChoice(info.metric, Goal(info.goal))
    except Exception:  # an unknown or unimportable problem falls back to the loss
        pass
    return MetricChoice("final_loss", Goal.MINIMIZE)


@dataclass
class _Figure:
    name: str
    caption: str
    png: bytes


def _label(record: RunRecord) -> str:
    tags = record.config.tags or {}
    return str(tags.get("label") or record.config.method)


_LINESTYLES = ("-", "--", "-.", ":")
_MARKERS = ("o", "s", "^", "D")


def _styles(methods: Sequence[str]) -> dict[str, dict[str, str]]:
    """One look per method, the same in every figure of a report: ten colours, then the same
    colours with another line style and marker (the default cycle repeats after ten lines, so
    two of eleven methods would be indistinguishable)."""
    palette = [f"C{i}" for i in range(10)]
    return {
        method: {
            "color": palette[index % 10],
            "linestyle": _LINESTYLES[(index // 10) % len(_LINESTYLES)],
            "marker": _MARKERS[(index // 10) % len(_MARKERS)],
        }
        for index, method in enumerate(sorted(methods))
    }


def _legend(axis: Any, entries: int) -> None:
    """Inside the axes for a few entries; beside it when many would hide the data."""
    if entries <= 5:
        axis.legend(fontsize=8)
    else:
        axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.{digits}g}"


def _pyplot():
    import matplotlib

    # headless: never open a window, whatever the user's default backend
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(figure: object) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")  # type: ignore[attr-defined]
    _pyplot().close(figure)  # type: ignore[arg-type]
    return buffer.getvalue()


def _log_friendly(values: Sequence[float]) -> bool:
    finite = [v for v in values if math.isfinite(v)]
    return bool(finite) and min(finite) > 0 and max(finite) / min(finite) > 20


def _sensitivity_figure(
    problem: str,
    records: Sequence[RunRecord],
    choice: MetricChoice,
    styles: Mapping[str, Mapping[str, str]],
) -> _Figure | None:
    plt = _pyplot()

    all_points = metrics.sensitivity(records, choice.metric)
    points = [p for p in all_points if p.lr is not None and p.lr > 0]
    # methods run without an initial LR (learning-rate-free at their defaults): one value each,
    # drawn across the whole LR axis so the tuned methods' curves can be read against it
    untuned = [p for p in all_points if p.lr is None]
    if not points:
        return None
    figure, axis = plt.subplots(figsize=(6.4, 4.0), layout="constrained")
    by_method: dict[str, list[metrics.SensitivityPoint]] = defaultdict(list)
    for point in points:
        by_method[point.method].append(point)
    all_values = [p.mean for p in points]
    finite_values = [v for v in all_values if math.isfinite(v)]
    top = max(finite_values) if finite_values else 1.0
    for method, method_points in sorted(by_method.items()):
        method_points.sort(key=lambda p: p.lr)  # type: ignore[arg-type, return-value]
        lrs = [p.lr for p in method_points]
        means = [p.mean for p in method_points]
        line = axis.plot(lrs, means, label=method, **styles.get(method, {"marker": "o"}))[0]
        axis.fill_between(
            lrs,
            [p.minimum for p in method_points],
            [p.maximum for p in method_points],
            alpha=0.15,
            color=line.get_color(),
        )
        diverged = [p.lr for p in method_points if p.diverged]
        if diverged:
            axis.scatter(diverged, [top] * len(diverged), marker="x", s=60, color=line.get_color())
    for point in untuned:
        style = dict(styles.get(point.method, {}))
        style.pop("marker", None)
        style["linestyle"] = ":"
        axis.axhline(point.mean, label=f"{point.method} (no LR to tune)", lw=1.4, **style)
        if math.isfinite(point.minimum) and point.maximum > point.minimum:
            axis.axhspan(point.minimum, point.maximum, alpha=0.07, color=style.get("color"))
        all_values.append(point.mean)
    axis.set_xscale("log")
    if _log_friendly(all_values):
        axis.set_yscale("log")
    axis.set_xlabel("initial learning rate")
    axis.set_ylabel(
        f"final {choice.metric} ({'lower' if choice.goal is Goal.MINIMIZE else 'higher'} is better)"
    )
    axis.set_title(problem)
    axis.grid(alpha=0.3, which="both")
    _legend(axis, len(by_method) + len(untuned))
    seeds = max(p.seeds for p in points)
    return _Figure(
        f"{problem}-sensitivity",
        f"{problem}: final {choice.metric} against the initial learning rate, mean over up to "
        f"{seeds} seeds (band: min to max over seeds). x marks an initial LR at which at least "
        "one seed diverged (plotted at the top of the axis; the mean is over the seeds that "
        "finished)."
        + (
            " Dotted horizontal lines: methods run without an initial LR (their defaults), "
            "mean and min-max band over seeds."
            if untuned
            else ""
        ),
        _png(figure),
    )


def _first_seed_runs(records: Sequence[RunRecord]) -> dict[tuple[str, float | None], RunRecord]:
    chosen: dict[tuple[str, float | None], RunRecord] = {}
    for record in sorted(records, key=lambda r: r.config.seed):
        chosen.setdefault((_label(record), record.config.lr), record)
    return chosen


def _trajectory_figure(problem: str, records: Sequence[RunRecord]) -> _Figure | None:
    plt = _pyplot()

    runs = _first_seed_runs(records)
    methods = sorted({method for method, _ in runs})
    if not methods or not any(r.steps for r in runs.values()):
        return None
    columns = min(3, len(methods))
    rows = math.ceil(len(methods) / columns)
    figure, axes = plt.subplots(
        rows,
        columns,
        figsize=(4.2 * columns, 3.0 * rows),
        squeeze=False,
        sharey=True,
        layout="constrained",  # keeps a row's titles clear of the x labels of the row above
    )
    colormap = plt.get_cmap("viridis")
    # None (a method run at its defaults, without an initial LR) comes first, drawn in black
    lrs: list[float | None] = sorted({lr for _, lr in runs if lr is not None})
    if any(lr is None for _, lr in runs):
        lrs.insert(0, None)
    for index, method in enumerate(methods):
        axis = axes[index // columns][index % columns]
        for lr_index, lr in enumerate(lrs):
            record = runs.get((method, lr))
            if record is None or not record.steps:
                continue
            steps = [row["step"] for row in record.steps if row.get("effective_lr", 0) > 0]
            values = [row["effective_lr"] for row in record.steps if row.get("effective_lr", 0) > 0]
            if lr is None:
                axis.plot(steps, values, color="black", label="default")
                continue
            color = colormap(lr_index / max(1, len(lrs) - 1))
            axis.plot(steps, values, color=color, label=f"{lr:.3g}")
        axis.set_yscale("log")
        axis.set_title(method, fontsize=9)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    for index in range(len(methods), rows * columns):
        axes[index // columns][index % columns].axis("off")
    axes[0][0].set_ylabel("effective learning rate")
    handles: dict[str, object] = {}
    for axis in axes.flat:  # one legend for all panels: no panel has every initial LR
        for handle, label in zip(*axis.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    figure.legend(
        list(handles.values()),
        list(handles),
        title="initial LR",
        fontsize=7,
        title_fontsize=7,
        loc="outside right upper",
    )
    return _Figure(
        f"{problem}-lr-trajectories",
        f"{problem}: the step size each method actually applied (effective_lr) over the steps, "
        "one line per initial LR (lowest-numbered seed). Lines that meet show a method that "
        "forgets its initial LR; parallel lines show one that keeps it.",
        _png(figure),
    )


def _curves_figure(
    problem: str,
    records: Sequence[RunRecord],
    choice: MetricChoice,
    styles: Mapping[str, Mapping[str, str]],
) -> _Figure | None:
    plt = _pyplot()

    best = metrics.best_tuned(records, choice.metric, choice.goal)
    runs = _first_seed_runs(records)
    chosen = {m: runs.get((m, lr)) for (p, m), (lr, _) in best.items() if p == problem}
    chosen = {m: r for m, r in chosen.items() if r is not None and r.steps}
    if not chosen:
        return None
    keys = ["loss"] + (
        ["distance_to_optimum"]
        if any("distance_to_optimum" in r.steps[0] for r in chosen.values())
        else []
    )
    figure, axes = plt.subplots(
        1, len(keys), figsize=(5.2 * len(keys), 3.6), squeeze=False, layout="constrained"
    )
    for axis, key in zip(axes[0], keys, strict=True):
        for method, record in sorted(chosen.items()):
            steps = [row["step"] for row in record.steps if key in row]
            values = [row[key] for row in record.steps if key in row]
            style = {k: v for k, v in styles.get(method, {}).items() if k != "marker"}
            axis.plot(steps, values, label=f"{method} (lr {_fmt(record.config.lr, 2)})", **style)
        if _log_friendly([row[key] for r in chosen.values() for row in r.steps if key in row]):
            axis.set_yscale("log")
        axis.set_xlabel("step")
        axis.set_ylabel(key.replace("_", " "))
        axis.grid(alpha=0.3)
    _legend(axes[0][-1], len(chosen))
    return _Figure(
        f"{problem}-curves",
        f"{problem}: training loss"
        + (" and distance to the optimum" if len(keys) > 1 else "")
        + " over steps, each method at its best initial LR (best mean final "
        f"{choice.metric} over seeds; lowest-numbered seed shown).",
        _png(figure),
    )


def _refinement_figure(
    problem: str, records: Sequence[RunRecord], choice: MetricChoice
) -> _Figure | None:
    """Two-pass methods (:mod:`lrlab.bench.refinement`): pass 1's gradient norms above the
    schedule pass 2 derived from them, one column per two-pass method, at its best initial LR."""
    from lrlab.bench import refinement

    by_id = {r.run_id: r for r in records}
    pairs: dict[str, list[tuple[RunRecord, RunRecord]]] = defaultdict(list)
    for record in records:
        tags = record.config.tags or {}
        first = by_id.get(str(tags.get("refined_from", "")))
        multipliers = record.config.schedule_kwargs.get("multipliers")
        if tags.get("pass") == 2 and first is not None and first.steps and multipliers:
            pairs[_label(record)].append((first, record))
    if not pairs:
        return None
    best = metrics.best_tuned(records, choice.metric, choice.goal)
    chosen: dict[str, tuple[RunRecord, RunRecord]] = {}
    for label, candidates in sorted(pairs.items()):
        best_lr = best.get((problem, label), (None, math.nan))[0]
        at_best = [c for c in candidates if c[1].config.lr == best_lr] or candidates
        chosen[label] = min(at_best, key=lambda c: (c[1].config.seed, c[1].config.lr or 0.0))
    plt = _pyplot()
    figure, axes = plt.subplots(
        2, len(chosen), figsize=(5.2 * len(chosen), 5.8), squeeze=False, sharex="col"
    )
    for column, (label, (first, second)) in enumerate(chosen.items()):
        method = refinement.TWO_PASS_METHODS.get(str(second.config.tags.get("two_pass")))
        norm = refinement.NORM_OF_KIND[method.kind if method is not None else "sgd"]
        rows = [row for row in first.steps if math.isfinite(row.get(norm, math.nan))]
        steps = [row["step"] for row in rows]
        norms = [row[norm] for row in rows]
        top = axes[0][column]
        top.plot(steps, norms, color="0.65", lw=0.7, label=f"pass 1 {norm}")
        if len(norms) >= 2:
            top.plot(steps, refinement.smoothed_norms(norms), color="C0", lw=1.6, label="smoothed")
        if _log_friendly(norms):
            top.set_yscale("log")
        top.set_title(
            f"{label}: lr {_fmt(second.config.lr, 3)}, seed {second.config.seed}", fontsize=9
        )
        top.set_ylabel("gradient norm")
        top.grid(alpha=0.3)
        top.legend(fontsize=7)
        bottom = axes[1][column]
        multipliers = list(second.config.schedule_kwargs["multipliers"])  # type: ignore[arg-type]
        total = first.config.steps
        one = metrics.final_value(first, choice.metric)
        two = metrics.final_value(second, choice.metric)
        bottom.plot(
            range(1, len(multipliers) + 1),
            multipliers,
            color="C3",
            label=f"pass 2, refined (final {_fmt(two)})",
        )
        bottom.plot(
            range(1, total + 1),
            [1 - t / total for t in range(total)],
            "--",
            color="0.35",
            label=f"pass 1, linear decay (final {_fmt(one)})",
        )
        bottom.set_xlabel("step")
        bottom.set_ylabel("multiplier of the peak LR")
        bottom.set_ylim(-0.03, 1.05)
        bottom.grid(alpha=0.3)
        bottom.legend(fontsize=7)
    return _Figure(
        f"{problem}-refinement",
        f"{problem}: schedules refined from a previous run (two-pass methods). Top: the gradient "
        "norms pass 1 logged under linear decay (grey: per step; blue: median-smoothed, "
        f"tau = {refinement.DEFAULT_SMOOTHING:g}, what the refinement weighs): L2 norms for "
        "refined-sgd (weights 1/||g||^2), L1 norms for refined-adam (weights 1/||g||_1). "
        "Bottom: the schedule pass 2 ran, as a multiplier of the same peak LR, against pass 1's "
        "linear decay: large norms give small rates, so large early norms make a warm-up emerge. "
        "Each method at its best initial LR (best mean final "
        f"{choice.metric} over seeds), lowest-numbered seed; the legend gives both passes' final "
        f"{choice.metric}.",
        _png(figure),
    )


def _profile_figure(
    profile: Mapping[str, list[float]],
    taus: Sequence[float],
    styles: Mapping[str, Mapping[str, str]],
) -> _Figure:
    plt = _pyplot()

    figure, axis = plt.subplots(figsize=(6.4, 4.0), layout="constrained")
    for method, values in sorted(profile.items()):
        style = {k: v for k, v in styles.get(method, {}).items() if k != "marker"}
        axis.step(taus, values, where="post", label=method, **style)
    axis.set_xscale("log")
    axis.set_ylim(-0.02, 1.02)
    axis.set_xlabel("tau (time relative to the fastest method on each problem)")
    axis.set_ylabel("fraction of problems")
    axis.grid(alpha=0.3, which="both")
    _legend(axis, len(profile))
    return _Figure(
        "performance-profile",
        "Performance profile over time to target (Dolan-Moré): for each method, the fraction of "
        "problems on which it reaches the problem's target within tau times the steps of the "
        "fastest method, each method at its best initial LR (median over seeds).",
        _png(figure),
    )


def _default_targets(
    records: Sequence[RunRecord], choices: Mapping[str, MetricChoice], tolerance: float
) -> dict[str, float]:
    """Per problem: within ``tolerance`` (relative) of the best training loss of any run."""
    targets: dict[str, float] = {}
    for problem in choices:
        losses = [
            row["loss"]
            for r in records
            if r.config.problem == problem and r.status is RunStatus.FINISHED
            for row in r.steps[-1:]
            if "loss" in row
        ]
        finite = [v for v in losses if math.isfinite(v)]
        if finite:
            best = min(finite)
            targets[problem] = best + tolerance * abs(best)
    return targets


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> tuple[str, str]:
    markdown = ["| " + " | ".join(map(escape_markdown, header)) + " |"]
    markdown += ["|" + " --- |" * len(header)]
    markdown += ["| " + " | ".join(map(escape_markdown, row)) + " |" for row in rows]
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return "\n".join(
        markdown
    ), f"<table><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>"


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 70rem; color: #222; }
figure { margin: 1.5rem 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.9rem; color: #444; max-width: 60rem; }
table { border-collapse: collapse; font-size: 0.85rem; margin: 1rem 0; }
th, td { border: 1px solid #ccc; padding: 0.2rem 0.5rem; text-align: left; }
th { background: #f3f3f3; } code { font-size: 0.85rem; }
"""


def build_report(
    records: Sequence[RunRecord],
    out_dir: Path | str,
    *,
    title: str = "lrlab report",
    metric_choice: Callable[[str, Sequence[RunRecord]], MetricChoice] = default_metric_choice,
    targets: Mapping[str, float] | None = None,
    tolerance: float = 0.1,
    taus: Sequence[float] | None = None,
) -> ReportFiles:
    """Write ``report.html``, ``report.md`` and ``figures/`` for ``records`` into ``out_dir``.

    Args:
        records: the runs (from the store).
        out_dir: output directory (created).
        title: page title.
        metric_choice: the headline metric and goal of a problem.
        targets: per-problem targets of the training loss for time to target (default: within
            ``tolerance`` of the best final training loss of any run on that problem).
        tolerance: relative tolerance of the robustness width and of the default targets.
        taus: the performance profile's tau grid (default: 1 to 100, log-spaced).
    """
    if not records:
        raise ValueError("records is empty: nothing to report (is the store empty?)")
    out = Path(out_dir)
    figures_dir = out / "figures"
    figures_dir.mkdir(parents=True, exist_ok=True)
    taus = list(taus) if taus is not None else [10 ** (k / 20) for k in range(41)]
    by_problem: dict[str, list[RunRecord]] = defaultdict(list)
    for record in records:
        by_problem[record.config.problem].append(record)
    choices = {p: metric_choice(p, rs) for p, rs in sorted(by_problem.items())}
    targets = (
        dict(targets) if targets is not None else _default_targets(records, choices, tolerance)
    )

    md: list[str] = [f"# {title}", ""]
    body: list[str] = [f"<h1>{html.escape(title)}</h1>"]
    statuses = defaultdict(int)
    for record in records:
        statuses[record.status.value] += 1
    summary = (
        f"{len(records)} runs on {len(by_problem)} problems: "
        + ", ".join(f"{n} {s}" for s, n in sorted(statuses.items()))
        + ". Every number below is computed from these stored runs (see Provenance)."
    )
    md += [summary, ""]
    body.append(f"<p>{html.escape(summary)}</p>")
    written: list[Path] = []

    def emit(figure: _Figure | None) -> None:
        if figure is None:
            return
        # the name holds a problem name from the store: never a path out of figures/
        path = confined(figures_dir, f"{safe_file_stem(figure.name)}.png")
        path.write_bytes(figure.png)
        written.append(path)
        md.extend(
            [
                f"![{escape_markdown(figure.name)}](figures/{path.name})",
                "",
                f"*{escape_markdown(figure.caption)}*",
                "",
            ]
        )
        encoded = base64.b64encode(figure.png).decode()
        body.append(
            f'<figure><img alt="{html.escape(figure.name)}" '
            f'src="data:image/png;base64,{encoded}"><figcaption>{html.escape(figure.caption)}'
            "</figcaption></figure>"
        )

    styles = _styles(sorted({_label(r) for r in records}))
    for problem, problem_records in sorted(by_problem.items()):
        choice = choices[problem]
        md += [
            f"## {escape_markdown(problem)}",
            "",
            f"Headline metric: `{choice.metric}` ({choice.goal.value}).",
            "",
        ]
        body.append(
            f"<h2>{html.escape(problem)}</h2><p>Headline metric: "
            f"<code>{html.escape(choice.metric)}</code> ({choice.goal.value}).</p>"
        )
        emit(_sensitivity_figure(problem, problem_records, choice, styles))
        emit(_trajectory_figure(problem, problem_records))
        emit(_curves_figure(problem, problem_records, choice, styles))
        emit(_refinement_figure(problem, problem_records, choice))

    # robustness and best-tuned results
    rows = []
    for problem, problem_records in sorted(by_problem.items()):
        choice = choices[problem]
        widths = metrics.robustness_width(
            problem_records, choice.metric, choice.goal, tolerance=tolerance
        )
        best = metrics.best_tuned(problem_records, choice.metric, choice.goal)
        for (p, method), width in sorted(widths.items()):
            lr, value = best.get((p, method), (None, math.nan))
            rows.append([p, method, choice.metric, f"{width:g}", _fmt(lr, 3), _fmt(value)])
    table_md, table_html = _table(
        [
            "problem",
            "method",
            "metric",
            "robust width (decades)",
            "best initial LR",
            "best mean final",
        ],
        rows,
    )
    caption = (
        f"Robustness: the width in decades of the initial-LR range over which a method's "
        f"mean final metric stays within {tolerance:.0%} of the best run of any method "
        "(no diverged seed allowed), and the best-tuned result."
    )
    md += ["## Robustness to the initial learning rate", "", caption, "", table_md, ""]
    body += [
        "<h2>Robustness to the initial learning rate</h2>",
        f"<p>{html.escape(caption)}</p>",
        table_html,
    ]

    # time to target and performance profile
    if targets:
        times = metrics.times_to_target(records, "loss", targets, Goal.MINIMIZE)
        methods = sorted(times)
        rows = [
            [problem, _fmt(targets[problem])]
            + [_fmt(times[m].get(problem, math.inf)) for m in methods]
            for problem in sorted(targets)
        ]
        table_md, table_html = _table(["problem", "loss target", *methods], rows)
        caption = (
            "Time to target: steps until the training loss first reaches the problem's "
            "target (median over seeds, best initial LR per method; inf: never)."
        )
        md += ["## Time to target", "", caption, "", table_md, ""]
        body += ["<h2>Time to target</h2>", f"<p>{html.escape(caption)}</p>", table_html]
        emit(_profile_figure(metrics.performance_profile(times, taus), taus, styles))

    # provenance
    versions = sorted({canonical_json(r.versions) for r in records})
    rows = [
        [
            r.run_id[:12],
            r.config.problem,
            _label(r),
            _fmt(r.config.lr, 3),
            str(r.config.seed),
            str(r.config.steps),
            r.status.value,
            canonical_json(dict(r.config.method_kwargs)),
            f"{r.wall_time_s:.2f}",
        ]
        for r in sorted(
            records, key=lambda r: (r.config.problem, _label(r), r.config.lr or 0.0, r.config.seed)
        )
    ]
    table_md, table_html = _table(
        [
            "run id",
            "problem",
            "method",
            "initial LR",
            "seed",
            "steps",
            "status",
            "method kwargs",
            "wall s",
        ],
        rows,
    )
    md += [
        "## Provenance",
        "",
        "Library versions: " + "; ".join(f"`{v}`" for v in versions),
        "",
        table_md,
        "",
    ]
    body += [
        "<h2>Provenance</h2>",
        "<p>Library versions: "
        + "; ".join(f"<code>{html.escape(v)}</code>" for v in versions)
        + "</p>",
        table_html,
    ]

    markdown_path = out / "report.md"
    markdown_path.write_text("\n".join(md))
    html_path = out / "report.html"
    html_path.write_text(
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        + "\n".join(body)
        + "</body></html>\n"
    )
    return ReportFiles(html=html_path, markdown=markdown_path, figures=written)
