"""The report's figures, drawn from run records with matplotlib (headless).

Conventions every figure follows:

* **One look per method**: a colour, a marker and a line style (:func:`method_styles`). A
  registered method keeps the same look in every report (its place in the registry picks it);
  the scheme has 320 distinct combinations, so every registered method gets its own.
* **Diverged runs are never drawn inside the data range**: an initial LR at which any seed
  diverged is marked with ``x`` in a strip *above* the axes (the strip is outside the y limits,
  which are set from the finished runs only), with its own legend entry. An accuracy plot
  therefore never shows a diverged run as a perfect score.
* **Small multiples**: with more than :data:`SINGLE_AXIS_MAX` methods, one panel per method, the
  other methods drawn faintly in grey behind it, shared axes.
* **Loss curves** are smoothed with a bias-corrected exponential moving average
  (:func:`ema`); the raw mean over seeds is drawn faintly behind, the band is the min-max over
  seeds of the smoothed curves. Step axes have integer ticks.
* **Files**: every figure is written as SVG and PDF (vector) and as a 200-dpi PNG
  (:func:`save`); the HTML page embeds the PNG.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lrlab.bench import metrics
from lrlab.bench._paths import confined, safe_file_stem
from lrlab.bench.spec import Goal, RunRecord, RunStatus
from lrlab.bench.summary import MetricChoice, fmt, method_label

__all__ = [
    "DIVERGED_LABEL",
    "FORMATS",
    "PNG_DPI",
    "SINGLE_AXIS_MAX",
    "Figure",
    "curves_figure",
    "ema",
    "method_styles",
    "profile_figure",
    "refinement_figure",
    "save",
    "sensitivity_figure",
    "trajectory_figure",
]

PNG_DPI = 200
FORMATS = ("png", "svg", "pdf")
SINGLE_AXIS_MAX = 5
"""Up to this many methods share one axis; more get one panel each."""
DIVERGED_LABEL = "diverged (at least one seed): marked above the axes"

# the tab10 colours with its grey swapped for a dark indigo (grey is the colour of the context
# lines behind a small-multiple panel), written out so a user's rcParams cannot change them
_COLOURS = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#393b79",
    "#bcbd22",
    "#17becf",
)
_LINESTYLES = ("-", "--", "-.", ":")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
_SLOTS = len(_COLOURS) * len(_LINESTYLES) * len(_MARKERS)  # 320 distinct looks
_CONTEXT = "0.72"  # the other methods, behind a small-multiple panel


@dataclass
class Figure:
    """A drawn figure (a matplotlib ``Figure``), its file stem and caption."""

    name: str
    caption: str
    figure: Any


def _slot_style(slot: int) -> dict[str, str]:
    # slot = a + 40 b (a < 40): (colour, line style) determine a, the marker (a + b) % 8 then
    # determines b, so the 320 slots give 320 different looks
    return {
        "color": _COLOURS[slot % 10],
        "linestyle": _LINESTYLES[(slot // 10) % 4],
        "marker": _MARKERS[(slot + slot // 40) % 8],
    }


def method_styles(labels: Sequence[str]) -> dict[str, dict[str, str]]:
    """``{label: {"color", "linestyle", "marker"}}``, all different for up to 320 labels.

    A registered method name takes the slot of its place in the registry, so it looks the same
    in every report; another label (``Adam_CLARA_us``) takes the slot its name hashes to, or the
    next free one.
    """
    try:
        import lrlab.optim as lo

        registered = {name: index for index, name in enumerate(lo.names())}
    except Exception:  # pragma: no cover - the registry always imports
        registered = {}
    used: set[int] = set()
    slots: dict[str, int] = {}
    unique = sorted(set(labels))
    for label in unique:
        if label in registered:
            slots[label] = registered[label] % _SLOTS
            used.add(slots[label])
    for label in unique:
        if label in slots:
            continue
        slot = int(hashlib.sha256(label.encode()).hexdigest(), 16) % _SLOTS
        for _ in range(_SLOTS):
            if slot not in used:
                break
            slot = (slot + 1) % _SLOTS
        slots[label] = slot
        used.add(slot)
    return {label: _slot_style(slots[label]) for label in unique}


def ema(values: Sequence[float], weight: float) -> list[float]:
    """Bias-corrected exponential moving average: ``s_t = w s_{t-1} + (1 - w) x_t``, ``s_0 =
    0``, reported as ``s_t / (1 - w^t)`` so the first values are not pulled towards zero."""
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"weight must be in [0, 1), got {weight!r}")
    smoothed, state, power = [], 0.0, 1.0
    for value in values:
        state = weight * state + (1.0 - weight) * value
        power *= weight
        smoothed.append(state / (1.0 - power))
    return smoothed


def ema_weight(length: int) -> float:
    """The smoothing weight for a curve of ``length`` steps: a span of 5 % of the run (at least
    one step), ``w = 1 - 2 / (span + 1)``."""
    span = max(1.0, length / 20)
    return 1.0 - 2.0 / (span + 1.0)


def _pyplot() -> Any:
    import matplotlib

    # headless: never open a window, whatever the user's default backend
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(figure: Figure, directory: Path) -> dict[str, Path]:
    """Write ``figure`` as ``NAME.svg``, ``NAME.pdf`` and ``NAME.png`` (200 dpi) into
    ``directory``, close it, and return ``{format: path}``. The files carry no date, so the same
    records give the same bytes."""
    plt = _pyplot()
    import matplotlib

    paths = {}
    with matplotlib.rc_context({"svg.hashsalt": "lrlab", "svg.fonttype": "none"}):
        for index, kind in enumerate(FORMATS):
            if index == 1:
                # the first save placed every panel; the others reuse that layout instead of
                # solving it again (about a third of a save's time on a grid of panels)
                figure.figure.set_layout_engine("none")
            # the name holds a problem name from the store: never a path out of the directory
            path = confined(directory, f"{safe_file_stem(figure.name)}.{kind}")
            figure.figure.savefig(
                path,
                format=kind,
                dpi=PNG_DPI,
                metadata={"Software": None} if kind == "png" else {"Creator": None, "Date": None},
            )
            paths[kind] = path
    plt.close(figure.figure)
    return paths


def _integer_steps(axis: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    axis.xaxis.set_major_locator(MaxNLocator(integer=True))


def _log_friendly(values: Sequence[float]) -> bool:
    finite = [v for v in values if math.isfinite(v)]
    return bool(finite) and min(finite) > 0 and max(finite) / min(finite) > 20


def _set_limits(axis: Any, values: Sequence[float], log: bool) -> None:
    """y limits from the finished runs' values only, with a 5 % margin (in log space on a log
    axis): whatever is drawn above them is outside the data range."""
    finite = [v for v in values if math.isfinite(v) and (v > 0 or not log)]
    if not finite:
        return
    low, high = min(finite), max(finite)
    if log:
        a, b = math.log10(low), math.log10(high)
        margin = 0.05 * (b - a) if b > a else 0.5
        axis.set_ylim(10 ** (a - margin), 10 ** (b + margin))
    else:
        margin = 0.05 * (high - low) if high > low else max(abs(high) * 0.05, 1e-3)
        axis.set_ylim(low - margin, high + margin)


_STRIP_POINTS = 7.0
"""Distance in points from the top of the axes to the first row of diverged markers."""
_ROW_POINTS = 8.0


def _above_axes(axis: Any, row: int) -> Any:
    """A transform whose x is data and whose y = 1 is ``row`` marker rows above the axes' top."""
    from matplotlib import transforms

    blended = transforms.blended_transform_factory(axis.transData, axis.transAxes)
    return transforms.offset_copy(
        blended, fig=axis.figure, y=_STRIP_POINTS + _ROW_POINTS * row, units="points"
    )


def _mark_diverged(axis: Any, lrs: Sequence[float], row: int, color: str) -> None:
    if lrs:
        axis.plot(
            lrs,
            [1.0] * len(lrs),
            linestyle="none",
            marker="x",
            markersize=6,
            markeredgewidth=1.5,
            color=color,
            transform=_above_axes(axis, row),
            clip_on=False,
            gid="diverged",
        )


def _diverged_handle() -> Any:
    from matplotlib.lines import Line2D

    return Line2D(
        [],
        [],
        linestyle="none",
        marker="x",
        color="black",
        markeredgewidth=1.5,
        label=DIVERGED_LABEL,
    )


def _draw_context(axis: Any, series: Sequence[tuple[Sequence[float], Sequence[float]]]) -> None:
    """The other methods behind a panel, thin and grey, as one collection (thirty separate
    lines in each of thirty panels cost most of a figure's drawing time)."""
    from matplotlib.collections import LineCollection

    segments = [list(zip(x, y, strict=True)) for x, y in series if len(x) > 1]
    if segments:
        axis.add_collection(
            LineCollection(segments, colors=_CONTEXT, linewidths=0.7, zorder=1), autolim=True
        )
        axis.autoscale_view()


def _label_bottoms(axes: Any, label: str) -> None:
    """The x label and tick labels on the lowest visible panel of every column only (the panels
    of a column share their x limits, see :func:`_same_limits`)."""
    for column in range(axes.shape[1]):
        visible = [row for row in range(axes.shape[0]) if axes[row][column].axison]
        for row in visible:
            axes[row][column].xaxis.set_tick_params(labelbottom=row == visible[-1])
        if visible:
            axes[visible[-1]][column].set_xlabel(label)


def _same_limits(panels: Sequence[Any], *, x: bool, y: bool) -> None:
    """Give the visible ``panels`` the union of their x and/or y limits, and y tick labels only
    in the first column. This is what matplotlib's shared axes do, without their cost: a shared
    axis measures every sibling's tick labels when it places its own, which on a grid of 30
    panels took most of a figure's drawing time."""
    visible = [panel for panel in panels if panel.axison]
    if not visible:
        return
    for wanted, get, put in (
        (x, "get_xlim", "set_xlim"),
        (y, "get_ylim", "set_ylim"),
    ):
        if wanted:
            limits = [getattr(panel, get)() for panel in visible]
            low = min(min(a, b) for a, b in limits)
            high = max(max(a, b) for a, b in limits)
            for panel in visible:
                getattr(panel, put)(low, high)
    if y:
        for panel in visible:
            first_column = panel.get_subplotspec().colspan.start == 0
            panel.yaxis.set_tick_params(labelleft=first_column)


def _final(metric: str) -> str:
    """``final test_accuracy``, but ``final_loss`` alone (not ``final final_loss``)."""
    return metric if metric.startswith("final") else f"final {metric}"


def _direction(goal: Goal) -> str:
    return "lower is better" if goal is Goal.MINIMIZE else "higher is better"


def _grid(count: int, columns: int = 4) -> tuple[int, int]:
    columns = max(1, min(columns, count))
    return math.ceil(count / columns), columns


# -- sensitivity --------------------------------------------------------------------------------


def sensitivity_figure(
    problem: str,
    records: Sequence[RunRecord],
    choice: MetricChoice,
    styles: Mapping[str, Mapping[str, str]],
) -> Figure | None:
    """Final metric against the initial LR: mean over seeds with the min-max band at every LR
    where all seeds finished; ``x`` above the axes where any seed diverged."""
    plt = _pyplot()
    points = metrics.sensitivity(records, choice.metric)
    tuned: dict[str, list[metrics.SensitivityPoint]] = defaultdict(list)
    untuned: dict[str, metrics.SensitivityPoint] = {}
    for point in points:
        if point.lr is None:
            untuned[point.method] = point
        elif point.lr > 0:
            tuned[point.method].append(point)
    if not tuned:
        return None
    methods = sorted(set(tuned) | set(untuned))
    finished = [p for p in points if p.diverged == 0 and math.isfinite(p.mean)]
    values = [v for p in finished for v in (p.mean, p.minimum, p.maximum)]
    log = _log_friendly(values)
    lrs_all = sorted({p.lr for ps in tuned.values() for p in ps if p.lr is not None})
    middle = math.sqrt(lrs_all[0] * lrs_all[-1])
    small = len(methods) > SINGLE_AXIS_MAX
    rows, columns = _grid(len(methods)) if small else (1, 1)
    figure, axes = plt.subplots(
        rows,
        columns,
        figsize=(3.3 * columns + (0 if small else 3.2), 2.7 * rows + (0.5 if small else 1.3)),
        squeeze=False,
        layout="constrained",
    )

    def draw(axis: Any, method: str, style: Mapping[str, str], row: int, label: bool) -> None:
        good = sorted((p for p in tuned.get(method, []) if p.diverged == 0), key=_lr_key)
        if good:
            lrs = [p.lr for p in good]
            axis.plot(lrs, [p.mean for p in good], label=method if label else None, **style)
            axis.fill_between(
                lrs,
                [p.minimum for p in good],
                [p.maximum for p in good],
                alpha=0.15,
                color=style["color"],
                linewidth=0,
            )
        bad = sorted(p.lr for p in tuned.get(method, []) if p.diverged and p.lr is not None)
        if method in untuned:
            point = untuned[method]
            if point.diverged == 0 and math.isfinite(point.mean):
                axis.axhline(
                    point.mean,
                    color=style["color"],
                    linestyle=":",
                    lw=1.4,
                    label=f"{method} (defaults, no LR)" if label else None,
                )
            else:
                bad.append(middle)  # diverged at its defaults: marked mid-axis in the strip
        _mark_diverged(axis, bad, row, style["color"])

    if small:
        for index, method in enumerate(methods):
            axis = axes[index // columns][index % columns]
            context: list[tuple[list[float], list[float]]] = []
            for other in methods:
                good = sorted((p for p in tuned.get(other, []) if p.diverged == 0), key=_lr_key)
                if other != method and good:
                    context.append(([_lr_key(p) for p in good], [p.mean for p in good]))
            _draw_context(axis, context)
            draw(axis, method, styles.get(method, _slot_style(0)), 0, label=False)
            axis.set_title(method, fontsize=9, pad=_STRIP_POINTS + _ROW_POINTS + 4)
        for index in range(len(methods), rows * columns):
            axes[index // columns][index % columns].axis("off")
        handles = _legend_proxies(
            [("mean over seeds", "-", "black"), ("other methods", "-", _CONTEXT)]
            + ([("run at its defaults (no initial LR)", ":", "black")] if untuned else [])
        )
        figure.legend(
            handles=[*handles, _diverged_handle()], loc="outside lower center", ncols=3, fontsize=8
        )
        figure.suptitle(
            f"{problem}: {_final(choice.metric)} ({_direction(choice.goal)})", fontsize=10
        )
    else:
        axis = axes[0][0]
        diverging = [
            m
            for m in methods
            if any(p.diverged for p in tuned.get(m, [])) or (m in untuned and untuned[m].diverged)
        ]
        for method in methods:
            row = diverging.index(method) if method in diverging else 0
            draw(axis, method, styles.get(method, _slot_style(0)), row, label=True)
        handles, _ = axis.get_legend_handles_labels()
        if diverging:
            handles.append(_diverged_handle())
        axis.legend(
            handles=handles,
            fontsize=7,
            loc="upper left",
            bbox_to_anchor=(1.02, 1.0),
            borderaxespad=0,
        )
        axis.set_title(
            f"{problem}", fontsize=10, pad=_STRIP_POINTS + _ROW_POINTS * max(1, len(diverging)) + 4
        )
        axis.set_ylabel(f"{_final(choice.metric)} ({_direction(choice.goal)})")
    for axis in axes.flat:
        if not axis.axison:
            continue
        axis.set_xscale("log")
        if log:
            axis.set_yscale("log")
        # minor ticks and grid lines only on a single axis: on a grid of panels they cost more
        # than they show
        axis.grid(alpha=0.3, which="major" if small else "both")
        if small:
            axis.minorticks_off()
    _label_bottoms(axes, "initial learning rate")
    untuned_values = [p.mean for p in untuned.values() if p.diverged == 0]
    for axis in axes.flat:
        if axis.axison:
            _set_limits(axis, values + untuned_values, log)
            axis.set_xlim(lrs_all[0] / 1.5, lrs_all[-1] * 1.5)
    _same_limits(list(axes.flat), x=False, y=True)  # the labels; the limits are already equal
    seeds = max(p.seeds for p in points)
    return Figure(
        f"{problem}-sensitivity",
        f"{problem}: {_final(choice.metric)} ({_direction(choice.goal)}) against the initial "
        f"learning rate; line: mean over the {seeds} seeds, band: min to max over seeds, drawn "
        "only at initial LRs where every seed finished. x above the axes (outside the data "
        "range): at least one seed diverged at that initial LR (so no mean is drawn there)."
        + (
            " For a learning-rate-free method swept over its initial estimate (d0 and alike), "
            "the x axis is that estimate."
            if any(r.config.lr_argument for r in records)
            else ""
        )
        + (
            " One panel per method; grey: the other methods' means."
            + (" Dotted: a method run at its defaults, without an initial LR." if untuned else "")
            if small
            else " Dotted horizontal lines: methods run at their defaults, without an initial LR."
            if untuned
            else ""
        ),
        figure,
    )


def _lr_key(point: metrics.SensitivityPoint) -> float:
    return point.lr if point.lr is not None else 0.0


def _legend_proxies(entries: Sequence[tuple[str, str, str]]) -> list[Any]:
    from matplotlib.lines import Line2D

    return [
        Line2D([], [], linestyle=ls, color=c, label=label)  # type: ignore[arg-type]
        for label, ls, c in entries
    ]


# -- learning-rate trajectories -----------------------------------------------------------------


def _first_seed_runs(records: Sequence[RunRecord]) -> dict[tuple[str, float | None], RunRecord]:
    chosen: dict[tuple[str, float | None], RunRecord] = {}
    for record in sorted(records, key=lambda r: r.config.seed):
        chosen.setdefault((method_label(record), record.config.lr), record)
    return chosen


def trajectory_figure(problem: str, records: Sequence[RunRecord]) -> Figure | None:
    """``effective_lr`` over steps, one panel per method, one line per initial LR."""
    plt = _pyplot()
    runs = _first_seed_runs(records)
    methods = sorted({method for method, _ in runs})
    if not methods or not any(r.steps for r in runs.values()):
        return None
    rows, columns = _grid(len(methods), 3)
    figure, axes = plt.subplots(
        rows,
        columns,
        figsize=(4.2 * columns, 3.0 * rows),
        squeeze=False,
        layout="constrained",  # keeps a row's titles clear of the x labels of the row above
    )
    colormap = plt.get_cmap("viridis")
    # None (a method run at its defaults, without an initial LR) comes first, drawn in black
    lrs: list[float | None] = [*sorted({lr for _, lr in runs if lr is not None})]
    if any(lr is None for _, lr in runs):
        lrs.insert(0, None)
    for index, method in enumerate(methods):
        axis = axes[index // columns][index % columns]
        for lr_index, lr in enumerate(lrs):
            record = runs.get((method, lr))
            if record is None or not record.steps:
                continue
            rows_used = [row for row in record.steps if row.get("effective_lr", 0) > 0]
            steps = [row["step"] for row in rows_used]
            values = [row["effective_lr"] for row in rows_used]
            if lr is None:
                axis.plot(steps, values, color="black", label="default")
                continue
            color = colormap(lr_index / max(1, len(lrs) - 1))
            axis.plot(steps, values, color=color, label=f"{lr:.3g}")
        axis.set_yscale("log")
        axis.set_title(method, fontsize=9)
        axis.set_xlabel("step")
        _integer_steps(axis)
        axis.grid(alpha=0.3)
    for index in range(len(methods), rows * columns):
        axes[index // columns][index % columns].axis("off")
    if len(methods) > 3:
        for axis in axes.flat:
            axis.minorticks_off()
    _same_limits(list(axes.flat), x=False, y=True)
    for row in axes:
        row[0].set_ylabel("effective learning rate")
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
    return Figure(
        f"{problem}-lr-trajectories",
        f"{problem}: the step size each method actually applied (effective_lr) over the steps, "
        "one line per initial LR (lowest-numbered seed). Lines that meet show a method that "
        "forgets its initial LR; parallel lines show one that keeps it. A run that diverged "
        "ends where it diverged.",
        figure,
    )


# -- training curves ----------------------------------------------------------------------------


def _seed_matrix(runs: Sequence[RunRecord], key: str) -> tuple[list[float], list[list[float]]]:
    """Steps and per-seed values of ``key``, cut to the steps every seed logged."""
    series = []
    for record in runs:
        rows = [row for row in record.steps if key in row and math.isfinite(row[key])]
        series.append(([row["step"] for row in rows], [row[key] for row in rows]))
    length = min((len(s[1]) for s in series), default=0)
    if length == 0:
        return [], []
    return series[0][0][:length], [values[:length] for _, values in series]


def curves_figure(
    problem: str,
    records: Sequence[RunRecord],
    choice: MetricChoice,
    styles: Mapping[str, Mapping[str, str]],
    keys: Sequence[str] = ("loss",),
) -> Figure | None:
    """Per-step ``keys`` (training loss, distance to the optimum) over steps: one block of
    panels per key, one panel per method at its best-tuned initial LR: the EMA-smoothed mean over
    seeds, the raw mean faintly, the min-max band of the smoothed seeds; the other methods'
    smoothed means in grey."""
    plt = _pyplot()
    best = metrics.best_tuned(records, choice.metric, choice.goal)
    methods = sorted({method_label(r) for r in records})
    runs_of: dict[str, tuple[float | None, list[RunRecord]]] = {}
    for method in methods:
        if (problem, method) in best:
            lr = best[(problem, method)][0]
            runs_of[method] = (
                lr,
                [
                    r
                    for r in records
                    if method_label(r) == method
                    and r.config.lr == lr
                    and r.status is RunStatus.FINISHED
                ],
            )
    curves: dict[str, dict[str, tuple[list[float], list[list[float]]]]] = {}
    for key in keys:
        curves[key] = {}
        for method, (_, runs) in runs_of.items():
            steps, matrix = _seed_matrix(runs, key)
            if steps:
                curves[key][method] = (steps, matrix)
    keys = [key for key in keys if curves[key]]
    if not keys:
        return None
    block_rows, columns = _grid(len(methods))
    figure, axes = plt.subplots(
        block_rows * len(keys),
        columns,
        figsize=(3.3 * columns, 2.6 * block_rows * len(keys) + 0.6),
        squeeze=False,
        layout="constrained",
    )
    weights = set()
    for block, key in enumerate(keys):
        panels = [axes[block * block_rows + i // columns][i % columns] for i in range(len(methods))]
        smoothed: dict[str, tuple[list[float], list[list[float]], list[float]]] = {}
        for method, (steps, matrix) in curves[key].items():
            weight = ema_weight(len(steps))
            weights.add(weight)
            seeds_smooth = [ema(values, weight) for values in matrix]
            mean = [sum(column) / len(column) for column in zip(*seeds_smooth, strict=True)]
            smoothed[method] = (steps, seeds_smooth, mean)
        values = [v for _, matrix in curves[key].values() for row in matrix for v in row]
        log = _log_friendly(values)
        for method, axis in zip(methods, panels, strict=True):
            if log:
                axis.set_yscale("log")
            _draw_context(
                axis,
                [(steps, mean) for other, (steps, _, mean) in smoothed.items() if other != method],
            )
            style = styles.get(method, _slot_style(0))
            _integer_steps(axis)
            axis.grid(alpha=0.3)
            if method not in smoothed:
                axis.text(
                    0.5,
                    0.5,
                    "no initial LR at which\nevery seed finished",
                    ha="center",
                    va="center",
                    transform=axis.transAxes,
                    fontsize=8,
                    color=style["color"],
                )
                axis.set_title(method, fontsize=9)
                continue
            steps, seeds_smooth, mean = smoothed[method]
            matrix = curves[key][method][1]
            raw_mean = [sum(column) / len(column) for column in zip(*matrix, strict=True)]
            axis.plot(steps, raw_mean, color=style["color"], lw=0.6, alpha=0.3, zorder=2)
            axis.fill_between(
                steps,
                [min(column) for column in zip(*seeds_smooth, strict=True)],
                [max(column) for column in zip(*seeds_smooth, strict=True)],
                color=style["color"],
                alpha=0.2,
                linewidth=0,
                zorder=2,
            )
            axis.plot(
                steps, mean, color=style["color"], linestyle=style["linestyle"], lw=1.6, zorder=3
            )
            lr, runs = runs_of[method]
            argument = (runs[0].config.lr_argument if runs else None) or "lr"  # d0 for a d0 sweep
            axis.set_title(
                f"{method} ({argument} {fmt(lr, 2) if lr is not None else 'default'})", fontsize=9
            )
        for row in range(block_rows):
            axes[block * block_rows + row][0].set_ylabel(key.replace("_", " "))
        for index in range(len(methods), block_rows * columns):
            axes[block * block_rows + index // columns][index % columns].axis("off")
        if len(methods) > SINGLE_AXIS_MAX:
            for panel in panels:
                panel.minorticks_off()
        _same_limits(panels, x=False, y=True)
    _same_limits(list(axes.flat), x=True, y=False)
    _label_bottoms(axes, "step")
    handles = _legend_proxies(
        [
            ("EMA-smoothed mean over seeds", "-", "black"),
            ("raw mean (faint)", "-", "0.8"),
            ("other methods (smoothed)", "-", _CONTEXT),
        ]
    )
    from matplotlib.patches import Patch

    handles.append(Patch(color="black", alpha=0.2, label="min-max over seeds (smoothed)"))
    figure.legend(handles=handles, loc="outside lower center", ncols=4, fontsize=7)
    what = " and ".join("training loss" if key == "loss" else key.replace("_", " ") for key in keys)
    weight_text = ", ".join(f"{w:.2f}" for w in sorted(weights))
    return Figure(
        f"{problem}-curves",
        f"{problem}: {what} over steps"
        + (" (one block of panels each)" if len(keys) > 1 else "")
        + ", one panel per method at its best initial LR (best mean final "
        f"{choice.metric} over seeds, every seed finished). Bold: the mean over seeds smoothed "
        f"with a bias-corrected exponential moving average (weight {weight_text}; 0: not "
        "smoothed); faint: the raw mean; band: min to max over seeds of the smoothed curves; "
        "grey: the other methods' smoothed means.",
        figure,
    )


# -- two-pass refinement ------------------------------------------------------------------------


def refinement_figure(
    problem: str, records: Sequence[RunRecord], choice: MetricChoice
) -> Figure | None:
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
            pairs[method_label(record)].append((first, record))
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
        2,
        len(chosen),
        figsize=(5.2 * len(chosen), 5.8),
        squeeze=False,
        sharex="col",
        layout="constrained",
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
            f"{label}: lr {fmt(second.config.lr, 3)}, seed {second.config.seed}", fontsize=9
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
            label=f"pass 2, refined (final {fmt(two)})",
        )
        bottom.plot(
            range(1, total + 1),
            [1 - t / total for t in range(total)],
            "--",
            color="0.35",
            label=f"pass 1, linear decay (final {fmt(one)})",
        )
        bottom.set_xlabel("step")
        _integer_steps(bottom)
        bottom.set_ylabel("multiplier of the peak LR")
        bottom.set_ylim(-0.03, 1.05)
        bottom.grid(alpha=0.3)
        bottom.legend(fontsize=7)
    return Figure(
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
        figure,
    )


# -- performance profile ------------------------------------------------------------------------


def profile_figure(
    profile: Mapping[str, list[float]],
    taus: Sequence[float],
    styles: Mapping[str, Mapping[str, str]],
) -> Figure:
    """The Dolan-Moré performance profile, one step line per method (its own look)."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(7.4, 4.2), layout="constrained")
    every = max(1, len(taus) // 8)
    for index, (method, values) in enumerate(sorted(profile.items())):
        style = styles.get(method, _slot_style(0))
        axis.step(
            taus,
            values,
            where="post",
            label=method,
            # staggered, so that methods with the same profile do not hide each other's markers
            markevery=(index % every, every),
            markersize=4,
            **style,
        )
    axis.set_xscale("log")
    axis.set_ylim(-0.02, 1.02)
    axis.set_xlabel("tau (time relative to the fastest method on each problem)")
    axis.set_ylabel("fraction of problems")
    axis.grid(alpha=0.3, which="both")
    axis.legend(
        fontsize=7,
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
        borderaxespad=0,
        ncols=1 if len(profile) <= 16 else 2,
    )
    return Figure(
        "performance-profile",
        "Performance profile over time to target (Dolan-Moré): for each method, the fraction of "
        "problems on which it reaches the problem's target within tau times the steps of the "
        "fastest method, each method at its best initial LR (median over seeds).",
        figure,
    )
