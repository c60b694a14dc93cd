"""Reports built only from stored run records: the answer first, then figures, tables, and where
every number came from.

``build_report(records, out_dir)`` writes

* ``report.html``: one self-contained page (figures embedded as 100-dpi PNG data URIs, no
  scripts, no external resources; each caption links the figure's files beside it);
* ``report.md``, the same content in Markdown (studies take their tables and captions from it);
* ``figures/NAME.svg``, ``NAME.pdf`` (vector) and ``NAME.png`` (200 dpi) for every figure;
* ``tables/NAME.csv`` (numbers in long form) and ``NAME.tex`` (booktabs) for every table.

The page, in order:

1. **Summary**: the generated verdict, the leaderboard (methods x problems: rank and best-tuned
   result with a 95 % bootstrap interval over seeds, ties with the best marked) and the
   robustness table (robust width, divergence rate, result at defaults); the rules are in
   :mod:`lrlab.bench.summary`;
2. a table of contents;
3. per problem (figure conventions in :mod:`lrlab.bench.figures`): sensitivity (final metric
   against the initial LR), learning-rate trajectories, training curves at each method's best
   initial LR (and the distance to the optimum where known), two-pass refinement schedules;
4. best-tuned settings, time to target and the performance profile;
5. provenance: every run's id, config, status and the library versions.

The report never runs anything: it reads records (see :mod:`lrlab.bench.metrics` for the
definitions of every number).
"""

from __future__ import annotations

import base64
import html
import io
import math
import re
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lrlab.bench import figures as figs
from lrlab.bench import metrics, summary
from lrlab.bench._markdown import escape_markdown
from lrlab.bench.spec import Goal, RunRecord, RunStatus, canonical_json
from lrlab.bench.summary import MetricChoice, default_metric_choice, fmt, method_label
from lrlab.bench.tables import Table

__all__ = ["MetricChoice", "ReportFiles", "build_report", "default_metric_choice"]


@dataclass(frozen=True, slots=True)
class ReportFiles:
    """What :func:`build_report` wrote."""

    html: Path
    markdown: Path
    figures: list[Path] = field(default_factory=list)
    """The PNG of every figure, in page order."""
    vector_figures: list[Path] = field(default_factory=list)
    """The SVG and PDF of every figure."""
    tables: list[Path] = field(default_factory=list)
    """The CSV and LaTeX file of every table."""
    verdict: str = ""
    """The generated verdict the page opens with."""


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


def _anchor(title: str) -> str:
    """A heading's anchor as GitHub makes it: lower case, punctuation dropped, spaces to ``-``."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 74rem; color: #222; }
figure { margin: 1.5rem 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption, .caption { font-size: 0.9rem; color: #444; max-width: 62rem; }
table { border-collapse: collapse; font-size: 0.85rem; margin: 1rem 0; }
th, td { border: 1px solid #ccc; padding: 0.2rem 0.5rem; text-align: left; }
th { background: #f3f3f3; } code { font-size: 0.85rem; }
.verdict { font-size: 1.1rem; background: #f6f8fa; border-left: 4px solid #2c7be5;
  padding: 0.6rem 1rem; max-width: 62rem; }
nav ul { columns: 2; }
"""


def _screen_png(path: Path) -> bytes:
    """The figure at 100 pixels per inch for the page (half the 200-dpi file in each direction):
    a page with many panel grids stays a few megabytes; the full-resolution PNG and the vector
    files sit beside it, linked from the caption."""
    from PIL import Image

    with Image.open(path) as image:
        small = image.convert("RGB").resize(
            (max(1, image.width // 2), max(1, image.height // 2)), Image.Resampling.LANCZOS
        )
    buffer = io.BytesIO()
    small.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


class _Page:
    """The report in both formats at once, so the Markdown and the HTML never disagree."""

    def __init__(self, title: str, figures_dir: Path, tables_dir: Path) -> None:
        self.md: list[str] = [f"# {title}", ""]
        self.body: list[str] = [f"<h1>{html.escape(title)}</h1>"]
        self.figures_dir = figures_dir
        self.tables_dir = tables_dir
        self.pngs: list[Path] = []
        self.vectors: list[Path] = []
        self.table_files: list[Path] = []
        self.sections: list[tuple[str, str, int]] = []
        """(anchor, title, level) of every heading after the summary, for the contents."""

    def heading(self, title: str, level: int = 2, *, listed: bool = True) -> None:
        anchor = _anchor(title)
        if listed:
            self.sections.append((anchor, title, level))
        self.md += ["#" * level + f" {escape_markdown(title)}", ""]
        self.body.append(f'<h{level} id="{html.escape(anchor)}">{html.escape(title)}</h{level}>')

    def paragraph(self, text: str, css: str = "") -> None:
        self.md += [escape_markdown(text), ""]
        attribute = f' class="{css}"' if css else ""
        self.body.append(f"<p{attribute}>{html.escape(text)}</p>")

    def table(self, table: Table, level: int = 2, *, listed: bool = True) -> None:
        self.heading(table.title, level, listed=listed)
        for kind, text in (("csv", table.csv()), ("tex", table.latex())):
            path = self.tables_dir / f"{table.name}.{kind}"
            path.write_text(text)
            self.table_files.append(path)
        files = f"tables/{table.name}.csv, tables/{table.name}.tex"
        self.md += [
            escape_markdown(table.caption),
            "",
            table.markdown(),
            "",
            f"Files: `{files}`.",
            "",
        ]
        self.body += [
            f'<p class="caption">{html.escape(table.caption)}</p>',
            table.html(),
            f'<p class="caption">Files: <code>{html.escape(files)}</code>.</p>',
        ]

    def figure(self, figure: figs.Figure | None) -> None:
        if figure is None:
            return
        paths = figs.save(figure, self.figures_dir)
        self.pngs.append(paths["png"])
        self.vectors += [paths["svg"], paths["pdf"]]
        name = paths["png"].stem  # the file stem: safe characters only
        self.md += [
            f"![{escape_markdown(name)}](figures/{name}.png)",
            "",
            f"*{escape_markdown(figure.caption)}*",
            "",
            f"Vector: [SVG](figures/{name}.svg), [PDF](figures/{name}.pdf).",
            "",
        ]
        encoded = base64.b64encode(_screen_png(paths["png"])).decode()
        links = ", ".join(
            f'<a href="figures/{html.escape(name)}.{kind}">{kind.upper()}</a>'
            for kind in ("svg", "pdf", "png")
        )
        self.body.append(
            f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{encoded}">'
            f"<figcaption>{html.escape(figure.caption)} Files: {links} (200 dpi)."
            "</figcaption></figure>"
        )

    def contents_at(self, md_index: int, body_index: int) -> None:
        """Insert the table of contents (of every heading written since) at these positions."""
        md = ["## Contents", ""] + [
            "  " * (level - 2) + f"- [{escape_markdown(title)}](#{anchor})"
            for anchor, title, level in self.sections
        ]
        items = "".join(
            f'<li><a href="#{html.escape(anchor)}">{html.escape(title)}</a></li>'
            for anchor, title, level in self.sections
            if level == 2
        )
        self.md[md_index:md_index] = [*md, ""]
        self.body.insert(body_index, f'<nav><h2 id="contents">Contents</h2><ul>{items}</ul></nav>')


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
    """Write ``report.html``, ``report.md``, ``figures/`` and ``tables/`` for ``records``.

    Args:
        records: the runs (from the store).
        out_dir: output directory (created).
        title: page title.
        metric_choice: the headline metric and goal of a problem.
        targets: per-problem targets of the training loss for time to target (default: within
            ``tolerance`` of the best final training loss of any run on that problem).
        tolerance: relative tolerance of the robustness width, the verdict and the default
            targets.
        taus: the performance profile's tau grid (default: 1 to 100, log-spaced).

    Raises:
        ValueError: ``records`` is empty or ``tolerance`` is not a finite number >= 0.
        lrlab.bench.problems.UnknownNameError: a problem's chosen metric is not among the final
            metrics its finished runs recorded (the message lists those).
    """
    if not records:
        raise ValueError("records is empty: nothing to report (is the store empty?)")
    if not (isinstance(tolerance, (int, float)) and math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"tolerance must be a finite number >= 0, got {tolerance!r}")
    # one row per method: a learning-rate-free method's initial-estimate sweep joins its defaults
    records = summary.group_variants(records)
    out = Path(out_dir)
    figures_dir = out / "figures"
    tables_dir = out / "tables"
    by_problem: dict[str, list[RunRecord]] = defaultdict(list)
    for record in records:
        by_problem[record.config.problem].append(record)
    choices = {p: metric_choice(p, rs) for p, rs in sorted(by_problem.items())}
    for problem, choice in choices.items():
        summary.check_metric(by_problem[problem], choice.metric)
    figures_dir.mkdir(parents=True, exist_ok=True)
    tables_dir.mkdir(parents=True, exist_ok=True)
    taus = list(taus) if taus is not None else [10 ** (k / 20) for k in range(41)]
    targets = (
        dict(targets) if targets is not None else _default_targets(records, choices, tolerance)
    )

    page = _Page(title, figures_dir, tables_dir)
    statuses: dict[str, int] = defaultdict(int)
    for record in records:
        statuses[record.status.value] += 1
    page.paragraph(
        f"{len(records)} runs on {len(by_problem)} problems: "
        + ", ".join(f"{n} {s}" for s, n in sorted(statuses.items()))
        + ". Every number below is computed from these stored runs (see Provenance)."
    )

    # 1. the answer: verdict, leaderboard, robustness
    board, robust, verdict = summary.summarize(records, choices, tolerance=tolerance)
    page.heading("Summary", listed=False)
    page.paragraph(verdict.text, css="verdict")
    page.table(summary.leaderboard_table(board), level=3, listed=False)
    page.table(
        summary.robustness_table(robust, choices, board.methods, tolerance=tolerance),
        level=3,
        listed=False,
    )
    contents_md, contents_body = len(page.md), len(page.body)

    # 2. per problem: the figures
    styles = figs.method_styles(sorted({method_label(r) for r in records}))
    for problem, problem_records in sorted(by_problem.items()):
        choice = choices[problem]
        page.heading(problem)
        page.paragraph(f"Headline metric: {choice.metric} ({choice.goal.value}).")
        page.figure(figs.sensitivity_figure(problem, problem_records, choice, styles))
        page.figure(figs.trajectory_figure(problem, problem_records))
        distance = any("distance_to_optimum" in r.steps[0] for r in problem_records if r.steps)
        keys = ("loss", "distance_to_optimum") if distance else ("loss",)
        page.figure(figs.curves_figure(problem, problem_records, choice, styles, keys))
        page.figure(figs.refinement_figure(problem, problem_records, choice))

    # 3. best-tuned settings per problem and method
    rows, data = [], []
    for problem, choice in choices.items():
        for method in board.methods:
            cell = board.cells.get((problem, method))
            if cell is None:
                continue
            width = robust[(problem, method)].width
            rows.append(
                [problem, method, choice.metric, f"{width:g}", fmt(cell.lr, 3), fmt(cell.mean)]
            )
            data.append(
                {
                    "problem": problem,
                    "method": method,
                    "metric": choice.metric,
                    "goal": choice.goal.value,
                    "robust_width_decades": width,
                    "best_lr": cell.lr,
                    "best_mean": None if cell.rank is None else cell.mean,
                }
            )
    page.table(
        Table(
            "best-tuned",
            "Best-tuned settings",
            f"Per problem and method: the robust width in decades (initial LRs whose mean final "
            f"metric stays within {tolerance * 100:.0f} % of the best run of any method, no seed "
            "diverged), the best initial LR (every seed finished) and its mean final metric "
            "('-' / nan: no initial LR at which every seed finished).",
            [
                "problem",
                "method",
                "metric",
                "robust width (decades)",
                "best initial LR",
                "best mean final",
            ],
            rows,
            data=data,
        )
    )

    # 4. time to target and performance profile
    if targets:
        times = metrics.times_to_target(records, "loss", targets, Goal.MINIMIZE)
        methods = sorted(times)
        rows = [
            [problem, fmt(targets[problem])]
            + [fmt(times[m].get(problem, math.inf)) for m in methods]
            for problem in sorted(targets)
        ]
        page.table(
            Table(
                "time-to-target",
                "Time to target",
                "Steps until the training loss first reaches the problem's target (median over "
                "seeds, best initial LR per method; inf: never).",
                ["problem", "loss target", *methods],
                rows,
            )
        )
        page.figure(figs.profile_figure(metrics.performance_profile(times, taus), taus, styles))

    # 5. provenance
    versions = sorted({canonical_json(r.versions) for r in records})
    rows = [
        [
            r.run_id[:12],
            r.config.problem,
            method_label(r),
            fmt(r.config.lr, 3),
            str(r.config.seed),
            str(r.config.steps),
            r.status.value,
            canonical_json(dict(r.config.method_kwargs)),
            f"{r.wall_time_s:.2f}",
        ]
        for r in sorted(
            records,
            key=lambda r: (r.config.problem, method_label(r), r.config.lr or 0.0, r.config.seed),
        )
    ]
    page.table(
        Table(
            "provenance",
            "Provenance",
            "Library versions: " + "; ".join(versions) + ". Every run, its id and config.",
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
    )
    page.contents_at(contents_md, contents_body)

    markdown_path = out / "report.md"
    markdown_path.write_text("\n".join(page.md))
    html_path = out / "report.html"
    html_path.write_text(
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        + "\n".join(page.body)
        + "</body></html>\n"
    )
    return ReportFiles(
        html=html_path,
        markdown=markdown_path,
        figures=page.pngs,
        vector_figures=page.vectors,
        tables=page.table_files,
        verdict=verdict.text,
    )
